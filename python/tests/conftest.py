import os

import pytest
import torch


class FashionCNN(torch.nn.Module):
    """The example CNN's architecture, as a Python user would write it."""

    def __init__(self, c1=8, c2=16, hidden=32):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = torch.nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return FashionCNN().eval()


@pytest.fixture
def scripted(cnn):
    return torch.jit.script(cnn)


@pytest.fixture
def fashion_mnist_dir():
    return os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
