"""torchvision models and a small Fashion-MNIST ResNet for bench_quantize's model table.

    python3 bench_quantize_models.py prepare DIR MODEL...   # writes DIR/MODEL_fp32.pt (+ _state.pt)
    python3 bench_quantize_models.py measure DIR ENGINE THREADS ROUNDS MODEL...  # prints one JSON object

`prepare` builds each torchvision classification model with random weights,
settles its BatchNorm statistics on random data (train-mode forward passes
with the default momentum), and saves it scripted; "small_resnet" is trained
(2 epochs, cached) on Fashion-MNIST. bench_quantize then quantizes the files
with pare. `measure` runs PyTorch's FX graph-mode post-training int8
(prepare_fx/convert_fx, the engine's default qconfig mapping) on the same
calibration batches (DIR/models_data.pt, written by bench_quantize), and
reports, per model: output SQNR of pare's file and of FX against fp32 on the
held-out batch, median latency at batch 1 and 8 of fp32 / pare / FX (taking
turns in this process), and top-1 on the Fashion-MNIST test split for the
trained model. A model FX cannot trace gets "fx_error".
"""

import copy
import gzip
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

DATA = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


class SmallResNet(nn.Module):
    """A ResNet for 1x28x28 inputs built from torchvision's own BasicBlock
    (BatchNorm, in-place ReLU, `out += identity` with a 1x1 downsample)."""

    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        blocks, inplanes = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width))
            blocks += [BasicBlock(inplanes, width, stride, downsample), BasicBlock(width, width)]
            inplanes = width
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fashion_mnist(split):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(f"{DATA}/{prefix}-images-idx3-ubyte.gz") as f:
        images = torch.frombuffer(bytearray(f.read()[16:]), dtype=torch.uint8)
    with gzip.open(f"{DATA}/{prefix}-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8).long()
    # The normalisation pare's examples use (examples/fashion_mnist.hpp).
    return (images.view(-1, 1, 28, 28).float() / 255.0 - 0.2860) / 0.3530, labels


def make(name):
    if name == "small_resnet":
        return SmallResNet()
    return getattr(torchvision.models, name)(num_classes=1000)


def settle_batch_norm(model, batches=4, batch=16, size=64):
    """Random weights leave BatchNorm at mean 0 / var 1; a few train-mode passes
    over random images (default momentum) move its statistics towards what the
    layers produce."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size))
    model.eval()


def train_small_resnet(model, epochs=2):
    """Trains on a GPU where there is one (the weights are what matters here,
    not where they were learnt; the state is cached for later runs)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = fashion_mnist("train")
    x, y = x.to(device), y.to(device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"small_resnet epoch {epoch + 1}/{epochs} on {device}: loss {loss.item():.3f}", file=sys.stderr)
    model.cpu().eval()


def prepare(directory, names):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    for name in names:
        state_path = f"{directory}/{name}_state.pt"
        model = make(name)
        if os.path.exists(state_path):
            model.load_state_dict(torch.load(state_path))
            model.eval()
        elif name == "small_resnet":
            train_small_resnet(model)
        else:
            settle_batch_norm(model)
        torch.save(model.state_dict(), state_path)
        torch.jit.script(model.eval()).save(f"{directory}/{name}_fp32.pt")


def fx_int8(model, calibration, engine):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(engine), (calibration[0],))
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_fx(prepared)


def sqnr_db(ref, approx):
    noise = (ref - approx).pow(2).sum().item()
    return 200.0 if noise == 0 else 10 * math.log10(ref.pow(2).sum().item() / noise)


def medians_ms(models, x, rounds, per_round):
    """Median forward time per model; the models take turns in short rounds.
    Each round starts with the next model: whoever runs right after the
    largest model finds the caches full of its data, so no model may always
    follow the same one."""
    times = {name: [] for name in models}
    order = list(models.items())
    with torch.no_grad():
        for model in models.values():
            for _ in range(3):
                model(x)
        for r in range(rounds):
            for name, model in order[r % len(order):] + order[: r % len(order)]:
                for _ in range(per_round):
                    start = time.perf_counter()
                    model(x)
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def accuracy(model, x, y):
    with torch.no_grad():
        correct = sum((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum().item() for i in range(0, len(x), 500))
    return 100.0 * correct / len(x)


def measure_one(directory, name, engine, rounds, data):
    model = make(name)
    model.load_state_dict(torch.load(f"{directory}/{name}_state.pt"))
    model.eval()
    key = "mnist" if name == "small_resnet" else "images"
    calibration, held_out = data[f"{key}_calibration"], data[f"{key}_held_out"]
    fx, out = None, {}
    try:
        fx = fx_int8(model, list(calibration), engine)
    except Exception as e:  # noqa: BLE001 - FX tracing fails on some models; the table says so
        out["fx_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"

    def loaded():
        """Each runtime as a deployment loads it, never run yet. TorchScript's
        executor specialises a module to the first input shapes it sees (other
        shapes then take a slower fallback), so every measurement starts from
        fresh modules: none is favoured by what ran before."""
        models = {"fp32": torch.jit.freeze(torch.jit.load(f"{directory}/{name}_fp32.pt").eval()),
                  "pare": torch.jit.load(f"{directory}/{name}_pare.pt")}
        if fx is not None:
            # What a deployment of the FX result runs: scripted and frozen (faster than the GraphModule).
            models["fx"] = torch.jit.freeze(torch.jit.script(copy.deepcopy(fx)).eval())
        return models

    with torch.no_grad():
        models = loaded()
        reference = models["fp32"](held_out)
        for runtime in ("pare", "fx"):
            if runtime in models:
                out[f"{runtime}_sqnr_db"] = sqnr_db(reference, models[runtime](held_out))
    shape = held_out.shape[1:]
    for batch, per_round in [(1, 10), (8, 3)]:
        for runtime, ms in medians_ms(loaded(), torch.randn(batch, *shape), rounds, per_round).items():
            out[f"{runtime}_b{batch}_ms"] = ms
    if name == "small_resnet":
        x, y = fashion_mnist("test")
        for runtime, module in loaded().items():
            out[f"{runtime}_top1"] = accuracy(module, x, y)
    return out


def measure(directory, engine, threads, rounds, names):
    torch.backends.quantized.engine = engine
    torch.set_num_threads(threads)
    # Written by bench_quantize itself (torch::pickle_save of a dict): not weights
    # alone, which torch.load refuses by default from PyTorch 2.6 on.
    data = torch.load(f"{directory}/models_data.pt", weights_only=False)
    out = {"engine": engine, "torch": torch.__version__, "torchvision": torchvision.__version__}
    for name in names:
        print(f"measuring {name}...", file=sys.stderr)
        out[name] = measure_one(directory, name, engine, rounds, data)
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3:])
    else:
        measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
