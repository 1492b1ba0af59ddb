"""Benchmark networks, importable as `--model benchmarks/models.py:NAME` (seeded, torch only).

- `mlp`: 784 -> 512 -> 512 -> 10 (ReLU); features p = 512 (input of the last Linear).
- `cnn`: a small MNIST-sized CNN (1x28x28): two strided conv layers -> Linear(784, 512) -> Linear(512, 10).
- `resnet18`: a ResNet-18-sized CNN for 3x32x32 inputs (BasicBlocks [2, 2, 2, 2], widths 64..512,
  BatchNorm, ~11.2 M parameters), written here because torchvision is not a dependency; p = 512.
- `proj`: n_in -> p (a random projection and tanh) -> Linear(p, C): a network whose forward pass is
  cheap at any width p and any number of outputs C, for the scale benchmark (bench_scale.py).
"""

from __future__ import annotations

import torch
from torch import nn

#: Input shape (without the batch dimension) of each benchmark model.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (784,), "cnn": (1, 28, 28), "resnet18": (3, 32, 32), "proj": (64,)}


def mlp(width: int = 512, n_in: int = 784, n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out)
    )


def cnn(width: int = 512, n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, width), nn.ReLU(), nn.Linear(width, n_out),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, four stages of two BasicBlocks, global pool, Linear(512, C)."""

    def __init__(self, n_out: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet18(n_out: int = 10, *, seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    return ResNet18(n_out)


def proj(width: int = 512, n_out: int = 10, n_in: int = 64, *, seed: int = 0) -> nn.Sequential:
    """Features p = `width`: tanh of a random projection of the n_in inputs, then Linear(width, n_out)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out))


FACTORIES = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "proj": proj}
