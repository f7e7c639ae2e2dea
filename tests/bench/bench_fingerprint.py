"""What pare.Runner's model fingerprint costs, next to what a user would write
otherwise: torch.jit.save into memory, then hashlib (SHA-256, and MD5).

Run: PYTHONPATH=build/python /usr/bin/python3 tests/bench/bench_fingerprint.py
Models: torchvision's (random weights, scripted) and the example Fashion-MNIST
CNN's architecture. Prints medians of 7 runs and the ratios baseline / pare.
"""

import hashlib
import io
import statistics
import sys
import time

import torch
import torchvision

import pare


class FashionCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = torch.nn.Linear(16 * 7 * 7, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def median_ms(fn, runs=7):
    fn()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def saved_then_hashed(module, algorithm):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return hashlib.new(algorithm, buffer.getbuffer()).hexdigest()


def main():
    torch.set_num_threads(1)
    models = [("fashion_cnn (ours)", FashionCNN)] + [
        (name, getattr(torchvision.models, name)) for name in ("squeezenet1_1", "mobilenet_v2", "resnet18", "densenet121")
    ]
    print(f"{'model':<20} {'MB':>7} {'pare ms':>9} {'save+sha256 ms':>15} {'ratio':>6} {'save+md5 ms':>12} {'ratio':>6}")
    for name, factory in models:
        torch.manual_seed(0)
        module = torch.jit.script(factory().eval())
        megabytes = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e6
        ours = median_ms(lambda: pare.model_fingerprint(module))
        sha = median_ms(lambda: saved_then_hashed(module, "sha256"))
        md5 = median_ms(lambda: saved_then_hashed(module, "md5"))
        print(f"{name:<20} {megabytes:7.1f} {ours:9.1f} {sha:15.1f} {sha / ours:6.2f} {md5:12.1f} {md5 / ours:6.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
