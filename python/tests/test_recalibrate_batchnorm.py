import copy

import pytest
import torch
import torchvision

import pare


def reference_statistics(model, batches):
    """PyTorch's own train-mode BatchNorm with momentum 1, averaged over the batches.

    Only the BatchNorms train: dropout and stochastic depth stay off, as in pare's pass."""
    model = copy.deepcopy(model).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.train()
        bn.momentum = 1.0
    sums = [[torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)] for bn in bns]
    with torch.no_grad():
        for batch in batches:
            model(batch)
            for s, bn in zip(sums, bns):
                s[0] += bn.running_mean
                s[1] += bn.running_var
    return [(m / len(batches), v / len(batches)) for m, v in sums]


def test_scripted_resnet18_statistics_match_pytorch_train_mode():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    batches = [torch.randn(4, 3, 32, 32) * (1 + b) for b in range(2)]
    expected = reference_statistics(model, batches)
    module, report = pare.Pipeline().add(pare.RecalibrateBatchNorm(batches)).run(torch.jit.script(model))
    entry = report["recalibrate_batchnorm"]
    assert entry.metrics["batchnorms"] == 20 and entry.metrics["batches"] == 2
    got = [(b.running_mean, b.running_var) for name, b in module.named_modules() if hasattr(b, "running_var")]
    assert len(got) == len(expected) == 20
    for (gm, gv), (em, ev) in zip(got, expected):
        assert torch.allclose(gm, em, rtol=1e-4, atol=1e-5)
        assert torch.allclose(gv, ev, rtol=1e-4, atol=1e-4)
    # Eval mode is kept: the recalibrated module answers with its new running statistics.
    eager = copy.deepcopy(model)
    for bn, (m, v) in zip([x for x in eager.modules() if hasattr(x, "running_var")], expected):
        bn.running_mean.copy_(m)
        bn.running_var.copy_(v)
    x = torch.randn(2, 3, 32, 32)
    assert not module.training
    assert torch.allclose(module(x), eager(x), rtol=1e-3, atol=1e-4)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="expected at least one batch"):
        pare.RecalibrateBatchNorm([])
    with pytest.raises(ValueError, match="max_batches must be >= 0"):
        pare.RecalibrateBatchNorm([torch.ones(1, 3, 8, 8)], max_batches=-1)


class TwoInputEncoder(torch.nn.Module):
    """A BERT-style encoder as Hugging Face writes it: ids + attention mask, q/k/v Linear, GELU, LayerNorm."""

    def __init__(self, vocab=50, hidden=16, heads=2):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.q, self.k, self.v = (torch.nn.Linear(hidden, hidden) for _ in range(3))
        self.out = torch.nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(hidden, 32), torch.nn.GELU(), torch.nn.Linear(32, hidden))
        self.classify = torch.nn.Linear(hidden, 3)

    def forward(self, ids, mask):
        x = self.embed(ids)
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / self.head_dim ** 0.5
        scores = scores + (1.0 - mask[:, None, None, :].float()) * -1e4
        attended = (scores.softmax(-1) @ split(self.v(x))).transpose(1, 2).reshape(b, t, h)
        x = self.norm1(x + self.out(attended))
        x = self.norm2(x + self.ffn(x))
        return self.classify(x[:, 0])


def small_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


# Residual adds, depthwise convolutions, concatenation, squeeze-excite: scripted and traced.
@pytest.mark.parametrize("make", [torchvision.models.mobilenet_v2, torchvision.models.densenet121,
                                  torchvision.models.efficientnet_b0], ids=["depthwise", "concat", "squeeze_excite"])
@pytest.mark.parametrize("frontend", ["script", "trace"])
def test_torchvision_architectures_match_pytorch_train_mode(make, frontend):
    torch.manual_seed(1)
    model = make(num_classes=10).eval()
    batches = [torch.randn(4, 3, 32, 32) * (1 + b) for b in range(2)]
    expected = reference_statistics(model, batches)
    compiled = torch.jit.script(model) if frontend == "script" else torch.jit.trace(model, batches[0])
    module, report = pare.Pipeline().add(pare.RecalibrateBatchNorm(batches)).run(compiled)
    assert report["recalibrate_batchnorm"].metrics["batchnorms"] == len(expected) > 0
    got = [(b.running_mean, b.running_var) for _, b in module.named_modules() if hasattr(b, "running_var")]
    for (gm, gv), (em, ev) in zip(got, expected):
        assert torch.allclose(gm, em, rtol=1e-3, atol=1e-4)
        assert torch.allclose(gv, ev, rtol=1e-3, atol=1e-3)


# Models without BatchNorm pass through unchanged, a two-input one included.
@pytest.mark.parametrize("frontend", ["vit", "encoder"])
def test_models_without_batchnorm_are_left_as_they_are(frontend):
    torch.manual_seed(2)
    if frontend == "vit":
        model, batches = torch.jit.script(small_vit().eval()), [torch.randn(2, 3, 32, 32)]
        example = (batches[0],)
    else:
        ids, mask = torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
        model, batches = torch.jit.trace(TwoInputEncoder().eval(), (ids, mask)), [(ids, mask)]
        example = (ids, mask)
    module, report = pare.Pipeline().add(pare.RecalibrateBatchNorm(batches)).run(model)
    assert report["recalibrate_batchnorm"].metrics["batchnorms"] == 0
    assert torch.allclose(module(*example), model(*example))
