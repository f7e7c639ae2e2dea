"""pare.model_fingerprint and pare.Runner keeping models apart in a shared cache,
on torchvision models (random weights) and on a model of our own."""

import io

import pytest
import torch
import torchvision

import pare


def _scripted(factory, seed):
    torch.manual_seed(seed)
    return torch.jit.script(factory().eval())


def test_fingerprints_of_torchvision_models_follow_code_and_weights():
    squeezenet = _scripted(torchvision.models.squeezenet1_1, 0)
    fingerprint = pare.model_fingerprint(squeezenet)
    assert len(fingerprint) == 32 and int(fingerprint, 16) >= 0
    assert pare.model_fingerprint(squeezenet) == fingerprint
    assert pare.model_fingerprint(_scripted(torchvision.models.squeezenet1_1, 1)) != fingerprint  # other weights
    assert pare.model_fingerprint(_scripted(torchvision.models.mobilenet_v3_small, 0)) != fingerprint  # other model
    buffer = io.BytesIO()
    torch.jit.save(squeezenet, buffer)
    buffer.seek(0)
    assert pare.model_fingerprint(torch.jit.load(buffer)) == fingerprint  # a save/load copy
    with torch.no_grad():
        squeezenet.classifier[1].bias[0] += 1e-6
    assert pare.model_fingerprint(squeezenet) != fingerprint
    with pytest.raises(ValueError, match="ScriptModule"):
        pare.model_fingerprint(torchvision.models.squeezenet1_1())


def test_fingerprints_of_quantized_models_cover_the_packed_weights():
    def quantized(seed):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
        return torch.jit.script(torch.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8))

    model = quantized(0)
    fingerprint = pare.model_fingerprint(model)
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    assert pare.model_fingerprint(torch.jit.load(buffer)) == fingerprint
    buffer.seek(0)
    assert pare.model_fingerprint(torch.jit.load(buffer)) == fingerprint  # another process would load the same
    assert pare.model_fingerprint(quantized(1)) != fingerprint  # the weights live only in the packed params


def test_runners_over_two_models_sharing_one_cache_each_get_their_own_results(cnn):
    cache = pare.InferenceCache(capacity_bytes=16 << 20)
    first = torch.jit.script(cnn)
    torch.manual_seed(1)
    second = torch.jit.script(type(cnn)().eval())
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected_first, expected_second = first(x), second(x)
    a, b = pare.Runner(first, cache=cache), pare.Runner(second, cache=cache)
    for _ in range(2):
        assert torch.equal(a(x), expected_first)
        assert torch.equal(b(x), expected_second)
    assert cache.stats().hits == 2 and cache.stats().entries == 2
    named = pare.Runner(second, cache=cache, cache_namespace="cnn@2")
    assert torch.equal(named(x), expected_second)
    assert torch.equal(cache.get(x, key_namespace="cnn@2"), expected_second)


def test_cache_namespaces_and_rejected_entries():
    cache = pare.InferenceCache(capacity_bytes=1 << 20)
    x = torch.randn(8)
    assert torch.equal(cache.get_or_compute(x, lambda t: t * 2, key_namespace="a"), x * 2)
    assert torch.equal(cache.get_or_compute(x, lambda t: t * 3, key_namespace="b"), x * 3)
    assert cache.get(x) is None
    assert cache.erase(x, key_namespace="a") and not cache.erase(x, key_namespace="a")
    cache.put(torch.zeros(128 << 10), torch.ones(1))  # 512 KiB: over a quarter of the capacity
    assert cache.stats().rejected == 1
    assert "pare_cache_rejected_total 1" in cache.to_prometheus()
