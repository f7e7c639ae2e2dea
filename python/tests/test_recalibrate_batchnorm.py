import copy

import pytest
import torch
import torchvision

import pare


def reference_statistics(model, batches):
    """PyTorch's own train-mode BatchNorm with momentum 1, averaged over the batches."""
    model = copy.deepcopy(model).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
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
