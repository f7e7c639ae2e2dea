"""pare.benchmark_models: the C++ benchmark harness from Python, side by side with ratios."""

import json

import pytest
import torch

import pare

from conftest import FashionCNN


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cnn = torch.jit.script(FashionCNN().eval())
    smaller = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval())
    return cnn, smaller


def test_rows_ratios_and_tables(models):
    cnn, smaller = models
    rows = pare.benchmark_models({"cnn": cnn, "linear": smaller}, inputs=[[1, 1, 28, 28]], batches=[1, 4],
                                 duration=0.1, rounds=5, warmup=2)
    assert [(r.model, r.batch) for r in rows] == [("cnn", 1), ("cnn", 4), ("linear", 1), ("linear", 4)]
    for r in rows:
        assert isinstance(r, pare.BenchRow) and r.threads == 1
        assert r.calls >= 5  # each of the 5 slices ends after at least one timed call
        assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms and r.samples_per_second > 0
    assert rows[0].p50_ratio == 1.0 and rows[1].throughput_ratio == 1.0
    assert rows[3].p50_ratio == pytest.approx(rows[3].p50_ms / rows[1].p50_ms)
    assert rows[2].throughput_ratio == pytest.approx(rows[2].samples_per_second / rows[0].samples_per_second)
    table = pare.bench_table(rows)
    assert "p50 ratio" in table and table.count("linear") == 2
    data = json.loads(pare.bench_json(rows))
    assert [d["p50_ms"] for d in data] == [r.p50_ms for r in rows]
    page = pare.bench_html(rows, title="cnn against linear")
    assert page.startswith("<!DOCTYPE html>") and "cnn against linear" in page and "<svg" in page


def test_pairs_keep_their_order_and_the_caller_module_its_mode(models):
    cnn, smaller = models
    cnn.train()
    rows = pare.benchmark_models([("linear", smaller), ("cnn", cnn)], duration=0.02, rounds=2, warmup=0)
    assert [r.model for r in rows] == ["linear", "cnn"]
    assert cnn.training  # measured in eval mode on a copy; the caller's module is untouched
    cnn.eval()


def test_bad_arguments_are_value_errors(models):
    cnn, _ = models
    with pytest.raises(ValueError, match=r"duration must be in \(0, 3600\] seconds"):
        pare.benchmark_models({"cnn": cnn}, duration=0)
    with pytest.raises(ValueError, match="a dict {name: ScriptModule} or a list of"):
        pare.benchmark_models([cnn])
    with pytest.raises(ValueError, match=r"rounds must be in \[1, 100\], got 0"):
        pare.benchmark_models({"cnn": cnn}, rounds=0)
    with pytest.raises(ValueError, match="rejected its input"):
        pare.benchmark_models({"cnn": cnn}, inputs=[[1, 3, 32, 32]], duration=0.02)
    with pytest.raises(ValueError, match="ScriptModule"):
        pare.benchmark_models({"cnn": torch.nn.Linear(2, 2)})
