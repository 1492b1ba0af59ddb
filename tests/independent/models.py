"""Tiny factories for the independent check's constructed runs."""

from torch import nn


def mlp(n_in: int = 64, hidden: int = 32, n_out: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 6, n_out: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(channels * 16, 24)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(24, n_out)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.head(self.act3(self.fc(self.flat(x))))


def cnn(channels: int = 6, n_out: int = 10) -> nn.Module:
    return SmallCNN(channels, n_out)


class AddConst(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return x + self.c


def shifted_mlp(offset: float = 100.0) -> nn.Module:
    """An MLP whose hidden features pass through +offset then −offset: `--layer 2` is far from 0."""
    return nn.Sequential(
        nn.Linear(64, 32), nn.Tanh(), AddConst(offset), AddConst(-offset), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def bottleneck() -> nn.Module:
    """64 → 16 → 4 → 10: p = 4 features for C = 10 outputs."""
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 10))
