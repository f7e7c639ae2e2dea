import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pare

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def torch_masks(cnn, prune_fn):
    """Masks torch.nn.utils.prune computes on a copy of the same weights."""
    reference = copy.deepcopy(cnn)
    prune_fn(reference)
    return {f"{name}.weight": getattr(reference, name).weight_mask.bool() for name in LAYERS}


def pare_masks(scripted, **options):
    result = pare.Pipeline([pare.L1Prune(**options)]).run(scripted)
    return result.module, result.report, result.masks


def test_local_unstructured_matches_torch(cnn, scripted):
    expected = torch_masks(cnn, lambda m: [torch_prune.l1_unstructured(getattr(m, n), "weight", amount=0.3) for n in LAYERS])
    _, _, masks = pare_masks(scripted, amount=0.3, scope="local")
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name


def test_global_unstructured_matches_torch(cnn, scripted):
    def prune_global(m):
        torch_prune.global_unstructured([(getattr(m, n), "weight") for n in LAYERS],
                                        pruning_method=torch_prune.L1Unstructured, amount=0.9)
    expected = torch_masks(cnn, prune_global)
    out, report, masks = pare_masks(scripted, amount=0.9, scope="global")
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name
        layer = getattr(out, name.split(".")[0])
        assert torch.equal(layer.weight != 0, mask)
    entry = report["l1_prune"]
    assert entry.total_parameters - entry.total_nonzeros == round(0.9 * entry.total_parameters)


@pytest.mark.parametrize("dim", [0, 1])
def test_structured_matches_ln_structured(cnn, scripted, dim):
    expected = torch_masks(cnn, lambda m: [torch_prune.ln_structured(getattr(m, n), "weight", amount=0.4, n=1, dim=dim) for n in LAYERS])
    _, _, masks = pare_masks(scripted, amount=0.4, scope="local", structured=dim)
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name


def test_include_exclude_and_input_untouched(cnn, scripted):
    before = scripted.fc1.weight.clone()
    out, _, masks = pare_masks(scripted, amount=0.5, include=["fc*"], exclude=["fc2.weight"])
    assert list(masks) == ["fc1.weight"]
    assert torch.equal(scripted.fc1.weight, before)
    assert (out.fc1.weight == 0).sum().item() == round(0.5 * before.numel())
    assert isinstance(out, torch.jit.ScriptModule)
    assert out(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_arguments_raise_clear_errors(scripted):
    with pytest.raises(pare.InvalidArgument, match=r"outside \[0, 1\]"):
        pare.L1Prune(amount=1.5)
    with pytest.raises(pare.InvalidArgument, match="expected one of local, global"):  # the names of pare.scope_names()
        pare.L1Prune(0.5, scope="everywhere")
    with pytest.raises(pare.Error, match="no layer matches"):
        pare.Pipeline([pare.L1Prune(0.5, include=["nope"])]).run(scripted)
    with pytest.raises(pare.InvalidArgument, match="expected a torch.jit.ScriptModule"):
        pare.Pipeline([pare.L1Prune(0.5)]).run(torch.nn.Linear(2, 2))
    with pytest.raises(pare.InvalidArgument, match="expected a pare pass"):
        pare.Pipeline(["prune"])
