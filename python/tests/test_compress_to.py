"""pare.CompressTo (the search against a latency target and an accuracy budget), the
`pare compress --target-speedup` command and PruneChannels' latency target, on a CNN
trained here on Fashion-MNIST."""

import gzip
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import pare

from conftest import FashionCNN


def fashion(directory, split, count):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: count * 784]
    with gzip.open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:count]
    x = ((torch.from_numpy(images.copy()).float() / 255 - 0.286) / 0.353).reshape(count, 1, 28, 28)
    return x, torch.from_numpy(labels.copy()).long()


@pytest.fixture(scope="module")
def trained():
    directory = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    x, y = fashion(directory, "train", 2048)
    tx, ty = fashion(directory, "test", 1000)
    train = list(zip(x.split(128), y.split(128)))
    evaluation = list(zip(tx.split(250), ty.split(250)))
    torch.manual_seed(0)
    model = FashionCNN(32, 64, 128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        for inputs, labels in zip(x.split(64), y.split(64)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    return torch.jit.script(model.eval()), train, evaluation


def top1(module, batches):
    with torch.no_grad():
        correct = sum(int((module(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


def test_compress_to_meets_a_modest_target_and_reports_every_candidate(trained):
    model, train, evaluation = trained
    before = top1(model, evaluation)
    result = pare.Pipeline([pare.CompressTo(train, evaluation, max_drop=2.0, target_speedup=1.5, batch=16,
                                            repeats=5, epochs=1, max_candidates=4)]).run(model)
    entry = result.report.passes[0]
    assert entry.pass_ == "compress_to"
    # Whether 1.5x is reached depends on the host's timing: the verdict must agree with what was measured.
    met = entry.metrics["met"] == 1.0
    drop = entry.metrics["input_accuracy"] - entry.metrics["accuracy"]
    assert met == (entry.metrics["speedup"] >= 1.5 and drop <= 2.0), entry.labels["message"]
    assert entry.labels["message"].startswith("target met" if met else "target not met")
    assert entry.metrics["input_accuracy"] == pytest.approx(before, abs=0.01)
    assert [row.labels["chosen"] for row in entry.layers].count("yes") == 1
    for row in entry.layers:
        assert {"speedup", "latency_ms", "accuracy", "file_bytes"} <= set(row.metrics)
    # The module is the chosen candidate as exported: its accuracy is the one reported.
    assert top1(result.module, evaluation) == pytest.approx(entry.metrics["accuracy"], abs=0.01)
    assert "Latency and accuracy of every candidate" in result.report.to_html()


def test_compress_to_bad_arguments_are_value_errors(trained):
    model, train, evaluation = trained
    with pytest.raises(pare.InvalidArgument, match="target_speedup"):
        pare.CompressTo(train, evaluation, max_drop=1.0)
    with pytest.raises(pare.InvalidArgument, match="not both"):
        pare.CompressTo(train, evaluation, max_drop=1.0, target_speedup=2.0, target_seconds=0.01)
    with pytest.raises(pare.InvalidArgument, match="max_drop"):
        pare.CompressTo(train, evaluation, max_drop=-1.0, target_speedup=2.0)
    with pytest.raises(pare.InvalidArgument, match="not above 1"):
        pare.CompressTo(train, evaluation, max_drop=1.0, target_speedup=0.5)
    with pytest.raises(pare.InvalidArgument, match="pairs"):
        pare.CompressTo([x for x, _ in train], evaluation, max_drop=1.0, target_speedup=2.0)
    with pytest.raises(pare.InvalidArgument, match="no eval batches"):
        pare.CompressTo(train, [], max_drop=1.0, target_speedup=2.0)
    with pytest.raises(pare.InvalidArgument, match="epochs"):
        pare.CompressTo(train, evaluation, max_drop=1.0, target_speedup=2.0, epochs=-1)


def test_prune_channels_latency_target(trained):
    model = trained[0]
    # Whether 1.3x is reached depends on how busy the host is; unit tests do not assert timing. What must hold
    # either way: a returned model is smaller and runs, a miss is the error that says what was measured.
    try:
        pruned, stats = pare.prune_channels(model, 0.0, input_shape=[1, 1, 28, 28], target_speedup=1.3, target_batch=8)
    except pare.RuntimeFailure as miss:
        assert "latency target (1.30x faster at batch 8, 1 thread) was not met" in str(miss)
        assert "no model slower than or missing the target is returned" in str(miss)
    else:
        assert stats.params_after < stats.params_before
        assert pruned(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(pare.InvalidArgument, match="not both"):
        pare.PruneChannels(0.0, target_speedup=2.0, target_seconds=0.01)
    with pytest.raises(pare.InvalidArgument, match="target_seconds"):
        pare.PruneChannels(0.0, target_seconds=-1.0)


def cli_path():
    path = os.environ.get("PARE_CLI") or shutil.which("pare")
    if not path:
        pytest.skip("set PARE_CLI to the installed pare binary (ctest does)")
    return path


def test_cli_compress_to_a_target(trained, tmp_path):
    model, train, evaluation = trained
    model.save(str(tmp_path / "model.pt"))
    torch.save(train, tmp_path / "train.pt")
    torch.save(evaluation, tmp_path / "eval.pt")
    out, report = tmp_path / "small.pt", tmp_path / "report.json"
    result = subprocess.run([cli_path(), "compress", str(tmp_path / "model.pt"), "-o", str(out), "--target-speedup",
                             "1.5", "--max-drop", "2", "--train", str(tmp_path / "train.pt"), "--eval",
                             str(tmp_path / "eval.pt"), "--batch", "16", "--epochs", "1", "--max-candidates", "4",
                             "--report", str(report)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    entry = json.loads(report.read_text())["passes"][0]
    assert entry["pass"] == "compress_to"
    assert ("target met" if entry["metrics"]["met"] == 1.0 else "target not met") in result.stdout
    assert top1(torch.jit.load(str(out)), evaluation) == pytest.approx(entry["metrics"]["accuracy"], abs=0.01)
    bad = subprocess.run([cli_path(), "compress", str(tmp_path / "model.pt"), "-o", str(out), "--target-speedup", "2",
                          "--train", str(tmp_path / "train.pt"), "--eval", str(tmp_path / "eval.pt")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-drop" in bad.stderr
    clash = subprocess.run([cli_path(), "compress", str(tmp_path / "model.pt"), "-o", str(out), "--target-speedup",
                            "2", "--max-drop", "1", "--train", str(tmp_path / "train.pt"), "--eval",
                            str(tmp_path / "eval.pt"), "--channels", "0.5"], capture_output=True, text=True, timeout=60)
    assert clash.returncode == 2 and "--channels" in clash.stderr
