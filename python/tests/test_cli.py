"""End-to-end tests of the `pare` command line: the installed binary on real model files."""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import pare

from conftest import FashionCNN


def cli_path():
    path = os.environ.get("PARE_CLI") or shutil.which("pare")
    if not path:
        pytest.skip("set PARE_CLI to the installed pare binary (ctest does)")
    return path


def pare_cli(*args):
    return subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True, timeout=300)


def fashion_images(directory, count):
    with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz")) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: count * 784]
    return ((torch.from_numpy(raw.copy()).float() / 255 - 0.286) / 0.353).reshape(count, 1, 28, 28)


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion_mnist_dir=os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = torch.jit.script(FashionCNN().eval())
    model.save(str(d / "model.pt"))
    images = fashion_images(fashion_mnist_dir, 256)
    torch.save(list(images.split(32)), d / "calib.pt")
    (d / "notes.txt").write_text("not a model")
    return d


def one_line_error(result, expected):
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pare: ") and expected in result.stderr, result.stderr


def test_compress_prunes_and_writes_report(files):
    out, report = files / "pruned.pt", files / "report.json"
    result = pare_cli("compress", files / "model.pt", "-o", out, "--prune", "0.5", "--scope", "global", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "l1_prune" in result.stdout and "export_torchscript" in result.stdout
    entry = json.loads(report.read_text())["passes"][0]
    assert entry["pass"] == "l1_prune" and entry["total_sparsity"] == pytest.approx(0.5, abs=1e-4)
    x = torch.randn(2, 1, 28, 28)
    assert torch.jit.load(str(out))(x).shape == (2, 10)


def test_compress_int8_loads_in_stock_torch(files):
    out = files / "int8.pt"
    # --never-slower false: which islands stay int8 must not depend on this run's timings.
    result = pare_cli("compress", files / "model.pt", "-o", out, "--int8", "--calib", files / "calib.pt", "--observer", "minmax",
                      "--never-slower", "false")
    assert result.returncode == 0, result.stderr
    assert "calibrating" in result.stderr  # the progress bar
    float_model, int8_model = torch.jit.load(str(files / "model.pt")), torch.jit.load(str(out))
    x = fashion_images(os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), 64)
    agreement = (float_model(x).argmax(1) == int8_model(x).argmax(1)).float().mean().item()
    assert agreement > 0.9
    assert "quantized: yes" in pare_cli("inspect", out).stdout


def test_bench_prints_ratios_and_json(files):
    table = pare_cli("bench", files / "model.pt", files / "int8.pt", "--input", "1x1x28x28", "--batch", "1,8", "--seconds", "0.2")
    assert table.returncode == 0, table.stderr
    assert "p50 ratio" in table.stdout and table.stdout.count("int8.pt") == 2
    data = json.loads(pare_cli("bench", files / "model.pt", files / "pruned.pt", "--batch", "1,4", "--threads", "1,2",
                               "--seconds", "0.1", "--json").stdout)
    assert len(data) == 8
    assert all(row["p50_ratio"] == 1.0 for row in data[:4])
    assert all(row["p50_ms"] > 0 and row["samples_per_second"] > 0 for row in data)
    # Ten rounds: each cell's time in ten slices, each of at least one timed call.
    data = json.loads(pare_cli("bench", files / "model.pt", files / "pruned.pt", "--seconds", "0.05", "--rounds", "10",
                               "--json").stdout)
    assert len(data) == 2 and all(row["calls"] >= 10 for row in data)


def test_bench_open_loop_accounts_for_every_request(files):
    # A queue of one at 4000 requests/s: most requests are refused, none is lost.
    result = pare_cli("bench", files / "model.pt", "--rate", "4000", "--max-batch", "8", "--max-queue", "1",
                      "--seconds", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["offered_rate"] == 4000 and row["sent"] > 0
    assert row["succeeded"] + row["rejected"] + row["timeouts"] + row["failed"] == row["sent"]
    assert row["rejected"] > 0 and row["failed"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    table = pare_cli("bench", files / "model.pt", "--rate", "200", "--timeout", "1", "--seconds", "0.2")
    assert table.returncode == 0 and "p99.9 ms" in table.stdout and "timeouts" in table.stdout
    one_line_error(pare_cli("bench", files / "model.pt", "--rate", "100", "--timeout", "-1"), "--timeout must be in")


def test_inspect_shows_layers_and_embedded_report(files):
    plain = pare_cli("inspect", files / "model.pt")
    assert plain.returncode == 0 and "fc1.weight" in plain.stdout and "pare report: none" in plain.stdout
    pruned = pare_cli("inspect", files / "pruned.pt").stdout
    assert "50.0" in pruned and "pare report (embedded)" in pruned and "l1_prune" in pruned


def test_python_module_runs_the_same_code(files):
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "pare", "inspect", str(files / "pruned.pt")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == pare_cli("inspect", files / "pruned.pt").stdout


def test_bad_inputs_give_one_line_errors(files):
    one_line_error(pare_cli("inspect", files / "missing.pt"), "no such file")
    one_line_error(pare_cli("inspect", files / "notes.txt"), "is not a TorchScript file")
    one_line_error(pare_cli("bench", files / "model.pt", "--input", "1x3x32x32", "--seconds", "0.1"), "rejected its input")
    one_line_error(pare_cli("bench", files / "model.pt", "--input", "1xAx28"), "is not valid")
    one_line_error(pare_cli("bench", files / "model.pt", "--rounds", "0"), "rounds must be in [1, 100]")
    one_line_error(pare_cli("compress", files / "model.pt", "-o", files / "x.pt", "--int8", "--dynamic", "--calib",
                            files / "calib.pt"), "contradict")
    one_line_error(pare_cli("compress", files / "model.pt", "-o", files / "x.pt", "--prune", "0.5", "--observer", "minmax"),
                   "need --int8")
    one_line_error(pare_cli("compress", files / "model.pt", "-o", files / "x.pt", "--prune", "1.5"), "outside [0, 1]")
    one_line_error(pare_cli("compress", files / "model.pt", "-o", files / "x.pt", "--int8", "--calib", files / "notes.txt"),
                   "not a torch.save file")
    one_line_error(pare_cli("compress", files / "model.pt"), "--output is required")
    one_line_error(pare_cli("frobnicate"), "frobnicate")
    assert not (files / "x.pt").exists()


def test_compress_takes_one_batch_calibration_lists_and_every_library_observer(files, tmp_path):
    images = fashion_images(os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), 64)
    torch.save([images[:32]], tmp_path / "one.pt")  # stock torch pickles a one-element list with APPEND
    torch.save(images, tmp_path / "bare.pt")
    for calib, observer in [("one.pt", "moving_average_minmax"), ("bare.pt", "entropy")]:
        out = tmp_path / f"{observer}.pt"
        result = pare_cli("compress", files / "model.pt", "-o", out, "--int8", "--calib", tmp_path / calib,
                          "--observer", observer)
        assert result.returncode == 0, result.stderr
        assert pare.quantization_info(str(out))["mode"] == "static"
    one_line_error(pare_cli("compress", files / "model.pt", "-o", tmp_path / "x.pt", "--int8", "--calib",
                            tmp_path / "one.pt", "--observer", "moving_average"), "moving_average_minmax")


def test_compress_fsyncs_the_file_before_and_the_directory_after_the_rename(files, tmp_path):
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed (Debian package strace)")
    out, trace = tmp_path / "durable.pt", tmp_path / "trace.txt"
    result = subprocess.run([strace, "-f", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(trace), cli_path(),
                             "compress", str(files / "model.pt"), "-o", str(out), "--prune", "0.5"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    calls = [line for line in trace.read_text().splitlines() if "fsync(" in line or "rename" in line]
    renamed = [i for i, line in enumerate(calls) if "rename" in line and f'"{out}"' in line]
    assert len(renamed) == 1, calls
    assert any("fsync(" in line for line in calls[:renamed[0]]), calls  # the new file's bytes are on disk first
    assert any("fsync(" in line for line in calls[renamed[0] + 1:]), calls  # then the directory entry
