import threading

import pytest
import torch

import pare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="SKIPPED: no CUDA device (CPU-only torch or no GPU visible)")


def test_runner_on_cuda_serves_threads_from_pinned_staging(scripted):
    x = torch.randn(96, 1, 28, 28)
    with torch.no_grad():
        reference = scripted(x)
    pinned = pare.TensorPool(memory="pinned")
    runner = pare.Runner(scripted, device="cuda", pool=pinned, max_batch=32, max_delay=0.002, threads=2)
    assert scripted.conv1.weight.device.type == "cpu"
    wrong = []

    def client(c):
        for i in range(c, 96, 6):
            y = runner.run(x[i:i + 1])
            if y.device.type != "cpu" or not torch.allclose(y, reference[i:i + 1], rtol=1e-3, atol=1e-4):
                wrong.append(i)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert wrong == []
    assert runner.stats().batches < 96
    assert pinned.stats().hits > 0


def test_runner_can_leave_outputs_on_the_gpu(scripted):
    runner = pare.Runner(scripted, device="cuda:0", outputs_on_device=True)
    y = runner.run(torch.randn(2, 1, 28, 28))
    assert y.is_cuda


def test_distill_on_cuda_keeps_masks(scripted):
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    out, report = pare.Pipeline([pare.L1Prune(amount=0.6, scope="global"),
                                 pare.Distill(teacher=scripted, data=data, epochs=2, device="cuda")]).run(scripted)
    assert report["distill"].labels["device"] == "cuda:0"
    assert report["distill"].metrics["samples_per_second"] > 0
    assert out.fc1.weight.device.type == "cpu"
    assert (out.fc1.weight == 0).float().mean().item() > 0.3


def test_cuda_pool_poisons_and_trims():
    pool = pare.TensorPool(memory="cuda", poison=True)
    with pool.acquire([128], torch.float32, "cuda") as t:
        t.fill_(1)
        assert t.is_cuda
        del t
    lease = pool.acquire([128], torch.float32, "cuda")
    assert torch.isnan(lease.tensor).all()
    assert pool.stats().hits == 1
    lease.release()
    assert pool.trim() > 0
