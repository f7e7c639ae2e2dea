"""pare.QuantizeInt8 / QuantizeInt8Dynamic from Python, on a CNN trained on a Fashion-MNIST subset."""

import copy
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import pare

DATA = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def load(split, limit):
    with gzip.open(f"{DATA}/{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)[: limit * 784]
    with gzip.open(f"{DATA}/{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:limit]
    x = (torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0 - 0.2860) / 0.3530
    return x, torch.tensor(labels, dtype=torch.long)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 49, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = load("train", 3000)
    model = Cnn()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(0, len(x), 64):
        loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_x, test_y = load("t10k", 1000)
    scripted = torch.jit.script(model)
    calibration = [x[i : i + 64] for i in range(0, 256, 64)]
    return scripted, calibration, test_x, test_y


def accuracy(module, x, y):
    with torch.no_grad():
        return 100.0 * (module(x).argmax(1) == y).float().mean().item()


def test_static_int8_in_a_pipeline_exports_a_file_stock_torch_loads(trained, tmp_path):
    scripted, calibration, test_x, test_y = trained
    path = str(tmp_path / "int8.pt")
    seen = []
    pipeline = pare.Pipeline([
        pare.QuantizeInt8(calibration=calibration, observer="histogram", per_channel=True,
                          progress=lambda done, total: seen.append((done, total)), never_slower=False),
        pare.ExportTorchScript(path, freeze=True, verify_with=[test_x[:8]]),
    ])
    module, report = pipeline.run(scripted)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert "quantized::conv2d_relu" in str(module.graph)  # BatchNorm folded, ReLU fused
    assert accuracy(module, test_x, test_y) > accuracy(scripted, test_x, test_y) - 2.0
    entry = report["quantize_int8"]
    assert [layer.name for layer in entry.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(layer.metrics["sqnr_db"] > 10 for layer in entry.layers)
    assert pare.quantization_info(path)["engine"] == pare.available_quantized_engines()[0]
    # A separate interpreter with stock torch and no pare loads and runs the file.
    code = ("import torch; m = torch.jit.load(%r); y = m(torch.randn(4, 1, 28, 28)); "
            "assert y.shape == (4, 10) and y.dtype == torch.float32" % path)
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": os.environ.get("PATH", "")})


def test_observers_and_per_tensor_and_generators(trained):
    scripted, calibration, test_x, test_y = trained
    for observer in ["minmax", "moving_average_minmax", "percentile", "entropy"]:
        module, report = pare.Pipeline([pare.QuantizeInt8(calibration=(b for b in calibration), observer=observer,
                                                          per_channel=False)]).run(scripted)
        assert report["quantize_int8"].labels["sqnr_batch"] == "held-out (last batch)"  # read as a stream
        assert accuracy(module, test_x, test_y) > accuracy(scripted, test_x, test_y) - 2.0, observer


def test_skip_and_bad_arguments(trained):
    scripted, calibration, _, _ = trained
    module, report = pare.Pipeline([pare.QuantizeInt8(calibration=calibration, skip=["fc2"])]).run(scripted)
    assert "aten::linear" in str(module.graph)
    fc2 = [layer for layer in report["quantize_int8"].layers if layer.name == "fc2"][0]
    assert fc2.labels["status"] == "float"
    with pytest.raises(ValueError, match="histogram"):
        pare.QuantizeInt8(calibration=calibration, observer="kl")
    with pytest.raises(pare.InvalidArgument, match="no calibration batches"):
        pare.QuantizeInt8(calibration=[])
    with pytest.raises(TypeError):  # calibration is required, as in C++'s QuantizeInt8Options(calibration)
        pare.QuantizeInt8()
    with pytest.raises(pare.InvalidArgument, match="callable epoch -> iterable"):
        pare.QuantizeInt8(calibration=42)
    bad = [b.clone() for b in calibration]
    bad[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(pare.Error, match="input of conv1"):
        pare.Pipeline([pare.QuantizeInt8(calibration=bad)]).run(scripted)
    with pytest.raises(pare.Error, match="batch 0"):
        pare.Pipeline([pare.QuantizeInt8(calibration=[torch.randn(2, 3, 28, 28)])]).run(scripted)


def test_dynamic_int8(trained, tmp_path):
    scripted, _, test_x, test_y = trained
    path = str(tmp_path / "dynamic.pt")
    module, report = pare.Pipeline([pare.QuantizeInt8Dynamic(), pare.ExportTorchScript(path)]).run(scripted)
    assert str(module.graph).count("quantized::linear_dynamic") == 2
    assert {layer.name: layer.labels["status"] for layer in report["quantize_int8_dynamic"].layers}["conv1"] == "float"
    assert accuracy(module, test_x, test_y) > accuracy(scripted, test_x, test_y) - 2.0
    assert pare.quantization_info(path)["mode"] == "dynamic"


def test_load_quantized_warns_on_another_engine(trained, tmp_path):
    scripted, calibration, _, _ = trained
    engines = pare.available_quantized_engines()
    if len(engines) < 2:
        pytest.skip("one quantized engine only")
    path = str(tmp_path / "int8.pt")
    pare.Pipeline([pare.QuantizeInt8(calibration=calibration, engine=engines[0]),
                   pare.ExportTorchScript(path)]).run(scripted)
    pare.set_quantized_engine(engines[1])
    try:
        with pytest.warns(RuntimeWarning, match=engines[0]):
            pare.load_quantized(path)
    finally:
        pare.set_quantized_engine(engines[0])


def test_a_model_failing_on_the_calibration_data_raises_pare_error(trained):
    scripted, _, _, _ = trained
    wrong = [torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28)]  # three channels for a one-channel CNN
    with pytest.raises(pare.Error, match="QuantizeInt8: calibration batch 0 failed in the float model") as caught:
        pare.Pipeline([pare.QuantizeInt8(calibration=wrong)]).run(scripted)
    assert isinstance(caught.value, RuntimeError)
    assert "Traceback" not in str(caught.value)


def test_constructing_a_pass_leaves_the_engine_alone(trained):
    scripted, calibration, _, _ = trained
    engines = pare.available_quantized_engines()
    if len(engines) < 2:
        pytest.skip(f"one quantized engine only ({engines}); Debian's x86 LibTorch has two or more")
    before = pare.current_quantized_engine()
    other = engines[1] if engines[0] == before else engines[0]
    p = pare.QuantizeInt8(calibration=calibration, engine=other)
    pare.QuantizeInt8Dynamic(engine=other)
    assert pare.current_quantized_engine() == before
    _, report = pare.Pipeline([p]).run(scripted)
    assert report["quantize_int8"].labels["engine"] == other
    assert pare.current_quantized_engine() == before


def test_calibration_files_from_torch_save_and_one_table_of_names(trained, tmp_path):
    _, calibration, _, _ = trained
    torch.save([calibration[0]], tmp_path / "one.pt")
    torch.save(calibration, tmp_path / "many.pt")
    torch.save(torch.cat(calibration), tmp_path / "bare.pt")
    one = pare.load_calibration_file(str(tmp_path / "one.pt"))
    assert len(one) == 1 and torch.equal(one[0][0], calibration[0])
    assert len(pare.load_calibration_file(str(tmp_path / "many.pt"))) == len(calibration)
    bare = pare.load_calibration_file(str(tmp_path / "bare.pt"), batch_size=50)
    assert sum(len(batch[0]) for batch in bare) == sum(len(batch) for batch in calibration)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "many.pt").read_bytes()[:200])
    with pytest.raises(ValueError, match="not a torch.save file"):
        pare.load_calibration_file(str(tmp_path / "cut.pt"))
    for name in pare.observer_names():
        pare.QuantizeInt8(calibration=calibration, observer=name)
    assert "moving_average_minmax" in pare.observer_names() and pare.scope_names() == ["local", "global"]


def with_outlier_channels(scripted, scale=300.0):
    """bn1's channels 0-3 scaled by `scale` (conv1's output after folding), conv2's weights reading
    them by 1/scale: ReLU and max-pooling commute with a positive scale, so the float model is unchanged
    while plain int8 sees one activation range dominated by four channels."""
    model = copy.deepcopy(scripted)
    with torch.no_grad():
        for c in (0, 1, 2, 3):
            model.bn1.weight[c] *= scale
            model.bn1.bias[c] *= scale
            model.conv2.weight[:, c] /= scale
    return model


def test_max_drop_sends_the_outlier_layers_back_to_float(trained):
    scripted, calibration, test_x, test_y = trained
    model = with_outlier_channels(scripted)
    assert abs(accuracy(model, test_x, test_y) - accuracy(scripted, test_x, test_y)) <= 0.11
    evaluate = [(test_x[i : i + 250], test_y[i : i + 250]) for i in range(0, 1000, 250)]
    _, plain = pare.Pipeline([pare.QuantizeInt8(calibration, never_slower=False, evaluate=evaluate)]).run(model)
    plain = plain["quantize_int8"]
    assert plain.metrics["plain_int8_drop"] > 1.0, plain.metrics  # plain int8 breaks a 1-point budget
    assert plain.metrics["layers_float_for_accuracy"] == 0  # evaluate alone measures and changes nothing

    module, report = pare.Pipeline([pare.QuantizeInt8(calibration, never_slower=False, evaluate=evaluate,
                                                      max_drop=1.0)]).run(model)
    entry = report["quantize_int8"]
    assert entry.metrics["accuracy_drop"] <= 1.0, entry.metrics
    assert entry.metrics["layers_int8"] >= 1 and entry.metrics["layers_float_for_accuracy"] >= 1
    assert abs(accuracy(module, test_x, test_y) - entry.metrics["accuracy_int8"]) < 1e-4  # float32 counts
    assert entry.labels["accuracy_fallback"].split(", ")[0] in ("conv1", "conv2")

    # A callable gives the same decision as the labelled batches it computes from.
    _, by_callable = pare.Pipeline([pare.QuantizeInt8(calibration, never_slower=False, max_drop=1.0,
                                                      evaluate=lambda m: accuracy(m, test_x, test_y))]).run(model)
    assert by_callable["quantize_int8"].labels["accuracy_fallback"] == entry.labels["accuracy_fallback"]


def test_max_drop_and_batch_sizes_reject_bad_arguments(trained):
    scripted, calibration, test_x, test_y = trained
    with pytest.raises(ValueError, match="max_drop needs evaluate"):
        pare.QuantizeInt8(calibration, max_drop=1.0)
    with pytest.raises(ValueError, match="max_drop must be a finite number"):
        pare.QuantizeInt8(calibration, max_drop=float("nan"), evaluate=[(test_x[:8], test_y[:8])])
    with pytest.raises(ValueError, match="expected a list of"):
        pare.QuantizeInt8(calibration, max_drop=1.0, evaluate="test set")
    with pytest.raises(ValueError, match="1-D int64"):
        pare.QuantizeInt8(calibration, evaluate=[(test_x[:8], test_y[:8].float())])
    with pytest.raises(ValueError, match="batch_sizes must be positive"):
        pare.QuantizeInt8(calibration, batch_sizes=[8, 0])


@pytest.mark.parametrize("try_dynamic", [True, False])
def test_each_linear_gets_the_fastest_form_and_says_why(trained, try_dynamic):
    scripted, calibration, test_x, test_y = trained
    module, report = pare.Pipeline([pare.QuantizeInt8(calibration, try_dynamic=try_dynamic)]).run(scripted)
    entry = report["quantize_int8"]
    linears = [layer for layer in entry.layers if layer.labels["kind"] == "Linear"]
    assert sorted(layer.name for layer in linears) == ["fc1", "fc2"]
    for layer in linears:
        assert layer.labels["form"] in ("static", "dynamic", "float")
        assert layer.labels["why"]
        assert ("island_dynamic_ms" in layer.metrics) == try_dynamic
    dynamic = sum(layer.labels["form"] == "dynamic" for layer in linears)
    assert entry.metrics["linears_dynamic"] == dynamic
    assert str(module.graph).count("quantized::linear_dynamic") == dynamic
    if not try_dynamic:
        assert dynamic == 0
    assert accuracy(module, test_x, test_y) > accuracy(scripted, test_x, test_y) - 2.0
