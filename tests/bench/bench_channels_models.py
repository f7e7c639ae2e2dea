"""Writes the models bench_channels measures, as TorchScript files.

usage: bench_channels_models.py OUT_DIR

small_resnet.pt: a ResNet for 1x28x28 Fashion-MNIST images (BatchNorm,
residual blocks, three stages of 2 blocks), untrained; the benchmark trains it.
resnet18.pt, mobilenet_v2.pt, densenet121.pt: torchvision's models with random
weights (nothing is downloaded).
"""

import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, mid=None):
        super().__init__()
        mid = mid or cout  # the width inside the block (what channel removal narrows apart from cout)
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """widths: each stage's residual width; mids: each stage's two blocks' inner widths."""

    def __init__(self, widths=(16, 32, 64), mids=None):
        super().__init__()
        mids = mids or [(w, w) for w in widths]
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, (w, mid) in enumerate(zip(widths, mids)):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2, mid[0]), BasicBlock(w, w, 1, mid[1])]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.script(SmallResNet().eval()).save(os.path.join(out, "small_resnet.pt"))
    for name in ("resnet18", "mobilenet_v2", "densenet121"):
        torch.jit.script(getattr(torchvision.models, name)().eval()).save(os.path.join(out, name + ".pt"))


if __name__ == "__main__":
    main()
