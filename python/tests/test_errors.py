"""The exception tree and the exact kind every main entry point raises: a bad
argument is pare.InvalidArgument (a ValueError, never a RuntimeError), a
failure is pare.RuntimeFailure (a RuntimeError, never a ValueError), so
`except RuntimeError` never swallows a caller's mistake."""

import inspect

import pytest
import torch

import pare


def exceptions():
    return [v for v in vars(pare).values() if inspect.isclass(v) and issubclass(v, BaseException)]


def test_one_tree_and_no_class_is_both():
    assert set(exceptions()) == {pare.Error, pare.InvalidArgument, pare.RuntimeFailure, pare.Overloaded, pare.Timeout}
    assert issubclass(pare.Error, Exception)
    assert not issubclass(pare.Error, (ValueError, RuntimeError))
    assert pare.InvalidArgument.__mro__[1:3] == (pare.Error, ValueError)
    assert pare.RuntimeFailure.__mro__[1:3] == (pare.Error, RuntimeError)
    assert issubclass(pare.Overloaded, pare.RuntimeFailure)
    assert issubclass(pare.Timeout, pare.RuntimeFailure) and issubclass(pare.Timeout, TimeoutError)
    for cls in exceptions():
        assert issubclass(cls, pare.Error), cls
        assert not (issubclass(cls, ValueError) and issubclass(cls, RuntimeError)), cls
        assert cls.__module__ == "pare" and cls.__doc__, cls


def expect(kind, call, match=None):
    """`call()` raises exactly `kind` (not a subclass) and nothing of the other branch."""
    with pytest.raises(pare.Error, match=match) as caught:
        call()
    assert type(caught.value) is kind, f"{type(caught.value).__name__}: {caught.value}"
    other = RuntimeError if kind is pare.InvalidArgument else ValueError
    assert not isinstance(caught.value, other)
    return caught.value


def test_bad_arguments_are_invalid_argument(scripted, tmp_path):
    x = torch.randn(1, 1, 28, 28)
    cases = {
        "L1Prune amount": lambda: pare.L1Prune(1.5),
        "L1Prune scope": lambda: pare.L1Prune(0.5, scope="everywhere"),
        "Pipeline.add": lambda: pare.Pipeline([object()]),  # type: ignore[list-item]
        "Pipeline.run module": lambda: pare.Pipeline([pare.L1Prune(0.5)]).run(torch.nn.Linear(2, 2)),
        "ExportTorchScript verify_with": lambda: pare.ExportTorchScript("m.pt", verify_with=3),
        "QuantizeInt8 observer": lambda: pare.QuantizeInt8([x], observer="nope"),
        "QuantizeInt8 calibration": lambda: pare.Pipeline([pare.QuantizeInt8([])]).run(scripted),
        "PruneChannels amount": lambda: pare.PruneChannels(2.0),
        "prune_channels norm": lambda: pare.prune_channels(scripted, 0.5, norm="l3"),
        "RecalibrateBatchNorm": lambda: pare.RecalibrateBatchNorm([]),
        "ConvertPrecision dtype": lambda: pare.ConvertPrecision(torch.int8),
        "Distill optimizer": lambda: pare.Distill(scripted, [(x, torch.tensor([0]))], optimizer="nope"),
        "distillation_loss": lambda: pare.distillation_loss(torch.randn(2, 3), torch.randn(2, 4)),
        "InferenceCache ttl": lambda: pare.InferenceCache(ttl=-1),
        "TensorPool memory": lambda: pare.TensorPool(memory="disk"),
        "Runner module": lambda: pare.Runner(torch.nn.Linear(2, 2)),
        "Runner max_delay": lambda: pare.Runner(scripted, max_delay=-1.0),
        "Runner hint": lambda: pare.Runner(scripted, hint="fastest"),  # type: ignore[arg-type]
        "benchmark_models": lambda: pare.benchmark_models({"cnn": scripted}, duration=0),
        "Report.from_json": lambda: pare.Report.from_json("{not json"),
        "Report[]": lambda: pare.Report()["l1_prune"],
        "set_quantized_engine": lambda: pare.set_quantized_engine("abacus"),
        "model_fingerprint": lambda: pare.model_fingerprint(torch.nn.Linear(2, 2)),
    }
    for label, call in cases.items():
        try:
            expect(pare.InvalidArgument, call)
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from None
        except pytest.fail.Exception as e:
            raise AssertionError(f"{label}: {e}") from None


def test_runner_timeout_argument_is_invalid_argument(scripted):
    with pare.Runner(scripted) as runner:
        expect(pare.InvalidArgument, lambda: runner.run(torch.randn(1, 1, 28, 28), timeout=-1.0), "timeout")


def test_failures_are_runtime_failure(scripted, tmp_path):
    wrong = torch.randn(1, 3, 28, 28)  # three channels for a one-channel CNN
    with pare.Runner(scripted) as runner:
        expect(pare.RuntimeFailure, lambda: runner.run(wrong))
    expect(pare.RuntimeFailure, lambda: pare.Pipeline([pare.QuantizeInt8([wrong])]).run(scripted), "failed")
    expect(pare.RuntimeFailure, lambda: pare.Pipeline([pare.ExportTorchScript(str(tmp_path / "no" / "m.pt"))]).run(scripted))


def test_a_closed_runner_is_runtime_failure(scripted):
    runner = pare.Runner(scripted)
    runner.close()
    expect(pare.RuntimeFailure, lambda: runner.run(torch.randn(1, 1, 28, 28)), "closed")
