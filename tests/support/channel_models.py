"""Writes the models the channel pruning tests run on, as TorchScript files.

usage: channel_models.py OUT_DIR

torchvision's resnet18 (residual adds), mobilenet_v2 (depthwise convs),
squeezenet1_1 and densenet121 (concatenation), scripted with random weights
(seeded; nothing is downloaded), plus two small models with an op whose
channel mapping pare does not know: a channel shuffle (a view with hard-coded
sizes) in one part of the network, and one where every group is behind such ops.
"""

import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class ChannelShuffleNet(nn.Module):
    """conv1's channels go through a channel shuffle; conv2 and conv3 are plain."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, 8, h, w)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class AllBlockedNet(nn.Module):
    """Every conv output is reshaped by hard-coded sizes; the classifier is the output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.fc(x.view(-1, 4 * 8 * 8))


def randomize_batch_norm(model):
    # Non-trivial statistics and affine terms, as a trained model would have.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    models = {
        "resnet18": torchvision.models.resnet18(num_classes=10),
        "mobilenet_v2": torchvision.models.mobilenet_v2(num_classes=10),
        "squeezenet1_1": torchvision.models.squeezenet1_1(num_classes=10),
        "densenet121": torchvision.models.densenet121(num_classes=10),
        "channel_shuffle": ChannelShuffleNet(),
        "all_blocked": AllBlockedNet(),
    }
    with torch.no_grad():
        for name, model in models.items():
            torch.jit.script(randomize_batch_norm(model).eval()).save(os.path.join(out, name + ".pt"))


if __name__ == "__main__":
    main()
