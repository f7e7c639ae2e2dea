"""Pipeline.run's Result, and passes written in Python (subclasses of pare.Pass)
running beside the C++ ones, as docs/pipeline.md teaches."""

import pytest
import torch

import pare


class ScaleWeights(pare.Pass):
    """docs/pipeline.md's example pass: halves every parameter and says so in the report."""

    name = "scale_weights"

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.factor = factor

    def run(self, state: pare.Result, entry: pare.PassReport) -> None:
        with torch.no_grad():
            for parameter in state.module.parameters():
                parameter.mul_(self.factor)
        entry.metrics = {"factor": self.factor}
        entry.labels = {"by": "python"}


def parameters(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_result_has_module_report_and_masks_and_unpacks_as_a_pair(scripted):
    result = pare.Pipeline([pare.L1Prune(0.5)]).run(scripted)
    assert isinstance(result, pare.Result)
    assert isinstance(result.module, torch.jit.ScriptModule)
    assert isinstance(result.report, pare.Report) and "l1_prune" in result.report
    assert set(result.masks) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert all(m.dtype == torch.bool for m in result.masks.values())
    out, report = result
    assert report.to_json() == result.report.to_json()
    assert torch.equal(out.fc1.weight, result.module.fc1.weight)
    kept = result.masks["fc1.weight"]
    assert torch.count_nonzero(result.module.fc1.weight[~kept]) == 0


def test_a_python_pass_runs_between_cpp_passes(scripted):
    before = parameters(scripted)
    pruned = pare.Pipeline([pare.L1Prune(0.5)]).run(scripted)
    result = pare.Pipeline([pare.L1Prune(0.5), ScaleWeights(0.25)]).run(scripted)
    assert [p.pass_ for p in result.report.passes] == ["l1_prune", "scale_weights"]
    entry = result.report["scale_weights"]
    assert entry.metrics == {"factor": 0.25} and entry.labels == {"by": "python"}
    assert entry.total_parameters == pruned.report["l1_prune"].total_parameters  # the pipeline filled the layers
    for name, p in parameters(result.module).items():
        assert torch.allclose(p, parameters(pruned.module)[name] * 0.25), name
    assert set(result.masks) == set(pruned.masks)
    for name, p in parameters(scripted).items():  # the input is never modified
        assert torch.equal(p, before[name]), name
    assert repr(pare.Pipeline([ScaleWeights()])) == "Pipeline([scale_weights])"


def test_a_python_pass_may_replace_the_module_and_defaults_its_name(scripted):
    class Swap(pare.Pass):
        def run(self, state: pare.Result, entry: pare.PassReport) -> None:
            state.module = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))

    result = pare.Pipeline([Swap()]).run(scripted)
    assert Swap().name == "Swap" and "Swap" in result.report
    assert result.module(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert set(dict(result.module.named_parameters())) == {"1.weight", "1.bias"}


def test_a_python_pass_error_passes_through_unchanged(scripted):
    class Fails(pare.Pass):
        def run(self, state: pare.Result, entry: pare.PassReport) -> None:
            raise KeyError("from the pass")

    with pytest.raises(KeyError, match="from the pass"):
        pare.Pipeline([pare.L1Prune(0.5), Fails()]).run(scripted)


def test_a_pass_without_run_or_with_a_bad_name_is_refused(scripted):
    class NoRun(pare.Pass):
        pass

    with pytest.raises(pare.InvalidArgument, match="defines no run"):
        pare.Pipeline([NoRun()])

    class BadName(ScaleWeights):
        name = 3  # type: ignore[assignment]

    with pytest.raises(pare.InvalidArgument, match="name: expected a str"):
        pare.Pipeline([BadName()]).run(scripted)

    class NoInit(pare.Pass):
        def __init__(self) -> None:  # forgets super().__init__()
            pass

        def run(self, state: pare.Result, entry: pare.PassReport) -> None:
            pass

    with pytest.raises(TypeError, match="__init__"):
        NoInit()
