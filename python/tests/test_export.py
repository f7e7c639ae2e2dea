import json
import os
import subprocess
import sys

import pytest
import torch

import pare


def test_export_loads_in_stock_torch_and_reproduces_outputs(scripted, tmp_path):
    path = str(tmp_path / "pruned.pt")
    samples = [torch.randn(4, 1, 28, 28), (torch.randn(1, 1, 28, 28),)]
    out, report = pare.Pipeline([
        pare.L1Prune(amount=0.5, scope="global"),
        pare.ExportTorchScript(path, freeze=True, verify_with=samples),
    ]).run(scripted)
    entry = report["export_torchscript"]
    assert entry.metrics["file_bytes"] == os.path.getsize(path)
    assert entry.metrics["max_abs_diff"] <= 1e-5
    assert os.listdir(tmp_path) == ["pruned.pt"]

    # A separate interpreter that never imports pare loads the file and reproduces the outputs.
    x = torch.randn(3, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.load(sys.argv[2]);"
            "torch.save(m(x), sys.argv[3]); assert 'pare' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, env={"PATH": os.environ.get("PATH", "")})
    assert torch.allclose(torch.load(tmp_path / "y.pt"), out(x), atol=1e-6)


def test_report_is_embedded_and_readable(scripted, tmp_path):
    path = str(tmp_path / "m.pt")
    pare.Pipeline([pare.L1Prune(amount=0.2), pare.ExportTorchScript(path)]).run(scripted)
    embedded = json.loads(pare.read_embedded_report(path))
    assert [p["pass"] for p in embedded["passes"]] == ["l1_prune", "export_torchscript"]
    extra = {"pare/report.json": ""}
    torch.jit.load(path, _extra_files=extra)  # stock torch reads the embedded report too
    assert json.loads(extra["pare/report.json"]) == embedded
    report = pare.Report.from_json(pare.read_embedded_report(path))
    assert "l1_prune" in report and "fc1.weight" in str(report)


def test_bad_verification_input_fails_and_writes_nothing(scripted, tmp_path):
    path = tmp_path / "bad.pt"
    with pytest.raises(pare.Error, match="failed on sample input 0"):
        pare.Pipeline([pare.ExportTorchScript(str(path), verify_with=[torch.randn(1, 3, 5, 5)])]).run(scripted)
    assert not path.exists()
    with pytest.raises(ValueError, match="expected tensors or tuples"):
        pare.ExportTorchScript(str(path), verify_with=[object()])


class TurnsNaN(torch.nn.Module):
    """Finite on its first call (the in-memory reference), NaN on every later one."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            return x * float("nan")
        return x


def test_verification_fails_on_nan_where_the_module_is_finite(tmp_path):
    path = tmp_path / "nan.pt"
    with pytest.raises(pare.Error, match="NaN or Inf where the module's output is finite"):
        pare.Pipeline([pare.ExportTorchScript(str(path), verify_with=[torch.ones(2, 3)])]).run(
            torch.jit.script(TurnsNaN()))
    assert not path.exists() and list(tmp_path.iterdir()) == []


class FlattensWithView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).view(-1, 4 * 8 * 8)  # needs contiguous NCHW memory


def test_channels_last_export_stores_nhwc_weights_and_keeps_nchw_where_a_view_needs_it(tmp_path):
    import torchvision
    torch.manual_seed(0)
    model = torch.jit.script(torchvision.models.mobilenet_v2(num_classes=10).eval())
    x, path = torch.randn(2, 3, 64, 64), str(tmp_path / "nhwc.pt")
    _, report = pare.Pipeline([pare.ExportTorchScript(path, freeze=True, channels_last=True, verify_with=[x])]).run(model)
    entry = report["export_torchscript"]
    loaded = torch.jit.load(path)
    weights = [list(n.inputs())[1].toIValue() for n in loaded.graph.findAllNodes("aten::conv2d")]
    assert entry.labels["channels_last"] == "true"
    assert entry.metrics["channels_last_weights"] == len(weights) == 52
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not weights[0].is_contiguous()  # 3x3 over 3 channels (1x1 and depthwise weights are both orders at once)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)

    plain = str(tmp_path / "plain.pt")
    _, report = pare.Pipeline([pare.ExportTorchScript(plain, freeze=True, channels_last=True,
                                                      verify_with=[torch.randn(2, 3, 8, 8)])]).run(
        torch.jit.script(FlattensWithView().eval()))
    assert report["export_torchscript"].labels["channels_last"].startswith("false: the converted module failed")
    assert torch.jit.load(plain)(torch.randn(1, 3, 8, 8)).shape == (1, 256)
    with pytest.raises(ValueError, match="channels_last needs freeze"):
        pare.ExportTorchScript(plain, channels_last=True, verify_with=[torch.randn(2, 3, 8, 8)])
