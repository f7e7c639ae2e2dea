"""pare.QuantizeInt8 on torchvision architectures we did not write (small
variants, small inputs, random weights with settled BatchNorm): accuracy
against fp32, every op between entry and exit in int8, and the exported file
loaded by stock torch in a separate interpreter without pare, giving the
same outputs."""

import os
import subprocess
import sys

import pytest
import torch
import torchvision

import pare


def settled(model, shape):
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape))
    return torch.jit.script(model.eval())


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
    "densenet": lambda: torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                    num_classes=10),
}


def sqnr_db(ref, approx):
    return 10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()).item()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_model_int8_runs_in_stock_torch(name, tmp_path):
    shape = (3, 32, 32)
    torch.manual_seed(1)
    scripted = settled(MODELS[name](), shape)
    calibration = [torch.randn(4, *shape) for _ in range(4)]
    path = str(tmp_path / f"{name}_int8.pt")
    module, report = pare.Pipeline([pare.QuantizeInt8(calibration=calibration, never_slower=False),
                                    pare.ExportTorchScript(path)]).run(scripted)
    entry = report["quantize_int8"]
    assert entry.metrics["output_sqnr_db"] > 15, entry.metrics
    graph = str(module.graph)
    assert graph.count("aten::quantize_per_tensor") == 1, graph
    assert graph.count("aten::dequantize") == 1, graph
    assert entry.metrics["float_ops"] == 0, entry.labels["float_ops"]

    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = module(x)
        reference = scripted(x)
    assert sqnr_db(reference, expected) > 15
    torch.save({"x": x, "expected": expected}, str(tmp_path / "io.pt"))
    # Stock torch, no pare on the path: load the file, run it, compare.
    code = ("import torch; d = torch.load(%r); m = torch.jit.load(%r); y = m(d['x']); "
            "assert torch.allclose(y, d['expected'], atol=1e-5), (y - d['expected']).abs().max()"
            % (str(tmp_path / "io.pt"), path))
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": os.environ.get("PATH", "")})


def test_never_slower_reports_each_island():
    torch.manual_seed(2)
    scripted = settled(MODELS["resnet18"](), (3, 32, 32))
    calibration = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    _, report = pare.Pipeline([pare.QuantizeInt8(calibration=calibration)]).run(scripted)
    entry = report["quantize_int8"]
    assert entry.metrics["islands_timed"] == 1  # resnet18 is one int8 island from stem to fc
    assert entry.metrics["layers_int8"] in (0, 21)
    if entry.metrics["layers_int8"] == 21:  # kept int8 only where the file, timed whole, beat float
        assert entry.metrics["file_int8_ms_b2"] < entry.metrics["file_fp32_ms_b2"]
        assert entry.metrics["calibration_int8_ms"] == entry.metrics["file_int8_ms_b2"]


def test_never_slower_times_the_file_at_the_batch_sizes_named():
    torch.manual_seed(3)
    scripted = settled(MODELS["mobilenet_v2"](), (3, 32, 32))
    calibration = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    module, report = pare.Pipeline([pare.QuantizeInt8(calibration=calibration, batch_sizes=[1, 4])]).run(scripted)
    entry = report["quantize_int8"]
    assert entry.metrics["islands_timed"] >= 1
    if entry.metrics["layers_int8"] > 0:
        for b in (1, 4):
            assert entry.metrics[f"file_int8_ms_b{b}"] < entry.metrics[f"file_fp32_ms_b{b}"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert sqnr_db(scripted(x), module(x)) > 15


def test_fold_residual_adds_on_resnet18():
    # LibTorch 2.x (onednn) folds each BasicBlock's `out += identity; relu` into its second conv;
    # 1.13 has no such kernel and folds nothing. Either way the outputs keep their accuracy.
    model = settled(MODELS["resnet18"](), (3, 32, 32))
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    x = torch.randn(4, 3, 32, 32)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"  # the folded ops run only under onednn
    try:
        results = {}
        for fold in (False, True):
            out, report = pare.Pipeline([pare.QuantizeInt8(batches, engine="onednn", never_slower=False,
                                                           fold_residual_adds=fold)]).run(model)
            folded = report["quantize_int8"].metrics["conv_add_fused"]
            assert len(out.graph.findAllNodes("quantized::conv2d_add_relu")) == folded
            results[fold] = (folded, sqnr_db(model(x), out(x)))
    finally:
        torch.backends.quantized.engine = previous
    has_kernel = hasattr(torch.ops.quantized, "conv2d_add_relu")
    assert results[False][0] == 0 and results[True][0] == (8 if has_kernel else 0)
    assert results[True][1] > results[False][1] - 1.0
