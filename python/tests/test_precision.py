import pytest
import torch

import pare

torchvision = pytest.importorskip("torchvision")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="SKIPPED: no CUDA device (CPU-only torch or no GPU visible)")


def relative_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_bf16_resnet18_keeps_fc_in_fp32_and_exports_for_stock_torch(tmp_path):
    torch.manual_seed(0)
    model = torch.jit.script(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    path = str(tmp_path / "resnet18_bf16.pt")
    out, report = pare.Pipeline([pare.ConvertPrecision(torch.bfloat16, keep_fp32=["fc"]),
                                 pare.ExportTorchScript(path, verify_with=[x])]).run(model)
    assert out.conv1.weight.dtype == torch.bfloat16
    assert getattr(out.layer4, "1").bn2.weight.dtype == torch.bfloat16
    assert out.fc.weight.dtype == torch.float32
    assert model.conv1.weight.dtype == torch.float32  # the input module is untouched
    entry = report["convert_precision"]
    assert entry.labels["kept_fp32"] == "fc"
    assert entry.metrics["bytes_after"] < 0.51 * entry.metrics["bytes_before"]
    with torch.no_grad():
        converted = out(x)
        reloaded = torch.jit.load(path)(x)  # stock torch, no pare involved
    assert converted.dtype == torch.float32
    assert relative_error(converted, reference) < 5e-2
    assert torch.equal(reloaded, converted)


def test_convert_precision_rejects_fp32_and_unknown_layers(scripted):
    with pytest.raises(ValueError, match="expected torch::kHalf"):
        pare.ConvertPrecision(torch.float32)
    with pytest.raises(ValueError, match="matches no submodule"):
        pare.Pipeline([pare.ConvertPrecision(torch.float16, keep_fp32=["head"])]).run(scripted)


@needs_cuda
def test_fp16_on_the_gpu_tracks_fp32(scripted):
    model = scripted.cuda()
    x = torch.randn(64, 1, 28, 28, device="cuda")
    with torch.no_grad():
        reference = model(x)
    out, _ = pare.Pipeline([pare.ConvertPrecision(torch.float16, keep_fp32=["fc2"], channels_last=True)]).run(model)
    with torch.no_grad():
        y = out(x)
    assert out.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert y.is_cuda and y.dtype == torch.float32
    assert relative_error(y, reference) < 5e-3
