"""PyTorch's own eager post-training int8, the baseline bench_quantize compares against.

Reads the weights, calibration images and test split bench_quantize wrote
(torch.load of a pickled dict), rebuilds each model with QuantStub/DeQuantStub,
fuses conv+relu and linear+relu, calibrates with the engine's default qconfig
on the same images, and prints one JSON object: accuracy and latency per model.
For a same-process comparison it also loads pare's exported files (fp32 and
int8 TorchScript) with stock torch.jit.load and times them in turns with the
eager models.

    python3 bench_quantize_reference.py DATA.pt ENGINE [NAME=FP32_FILE,INT8_FILE ...]
"""

import copy
import json
import sys

import torch
import torch.ao.quantization as tq
import torch.nn as nn

from bench_quantize_models import medians_ms  # same directory: the one timing loop of both scripts


class Cnn(nn.Module):
    def __init__(self, c1, c2, hidden):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc1, self.relu3, self.fc2 = nn.Linear(c2 * 49, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        self.fusions = [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"]]

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(self.quant(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.dequant(self.fc2(self.relu3(self.fc1(torch.flatten(x, 1)))))


class Mlp(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc1, self.relu1 = nn.Linear(784, width), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(width, width), nn.ReLU()
        self.fc3 = nn.Linear(width, 10)
        self.fusions = [["fc1", "relu1"], ["fc2", "relu2"]]

    def forward(self, x):
        x = self.relu1(self.fc1(torch.flatten(self.quant(x), 1)))
        return self.dequant(self.fc3(self.relu2(self.fc2(x))))


def accuracy(model, images, labels):
    with torch.no_grad():
        correct = sum((model(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum().item()
                      for i in range(0, len(images), 1000))
    return 100.0 * correct / len(images)


def main():
    data = torch.load(sys.argv[1], weights_only=False)  # written by bench_quantize (a pickled dict)
    engine = sys.argv[2]
    files = dict(arg.split("=", 1) for arg in sys.argv[3:])
    torch.backends.quantized.engine = engine
    torch.set_num_threads(int(data["threads"].item()))
    out = {"engine": engine, "qconfig": str(tq.get_default_qconfig(engine))}
    for name in ["cnn", "mlp"]:
        weights = {k[len(name) + 1 :]: v for k, v in data.items() if k.startswith(name + ".")}
        if name == "cnn":
            model = Cnn(weights["conv1.weight"].shape[0], weights["conv2.weight"].shape[0], weights["fc1.weight"].shape[0])
        else:
            model = Mlp(weights["fc1.weight"].shape[0])
        model.load_state_dict(weights)  # strict: every weight must come from the C++ model
        model.eval()
        fp32_model = copy.deepcopy(model)
        fp32 = accuracy(model, data["test_images"], data["test_labels"])
        model.qconfig = tq.get_default_qconfig(engine)
        tq.fuse_modules(model, model.fusions, inplace=True)
        tq.prepare(model, inplace=True)
        with torch.no_grad():
            for batch in data["calibration"].split(64):
                model(batch)
        tq.convert(model, inplace=True)
        out[name] = {"fp32_accuracy": fp32, "int8_accuracy": accuracy(model, data["test_images"], data["test_labels"])}
        timed = {"eager_fp32": fp32_model, "eager_int8": model}
        if name in files:
            pare_int8 = torch.jit.load(files[name].split(",")[1])
            out[name]["pare_int8_accuracy"] = accuracy(pare_int8, data["test_images"], data["test_labels"])
            timed["pare_int8"] = pare_int8
        rounds = int(data["rounds"].item()) if "rounds" in data else 20
        for batch, per_round in [(1, 20), (64, 5)]:
            for key, ms in medians_ms(timed, torch.randn(batch, 1, 28, 28), rounds, per_round).items():
                out[name][f"{key}_b{batch}_ms"] = ms
    print(json.dumps(out))


if __name__ == "__main__":
    main()
