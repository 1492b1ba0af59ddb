"""Tiny nn.Module factories for tests (seeded, a few hundred parameters, CPU-fast).

Every factory is importable as a ``--model`` spec, e.g. ``tests.tiny_models:mlp``.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int = 4, hidden: int = 8, n_out: int = 3, *, seed: int = 0) -> nn.Sequential:
    """Linear(n_in, hidden) -> ReLU -> Linear(hidden, n_out); input (batch, n_in), output (batch, n_out)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def slow_mlp(n_in: int = 4, hidden: int = 8, n_out: int = 3, *, seed: int = 0, delay: float = 0.05) -> nn.Sequential:
    """`mlp` (the same weights and numbers) whose every forward pass first sleeps `delay` seconds: a run
    that lasts long enough for a signal sent after its first record to land in the middle of it, even
    when a loaded machine's fsync holds the first commit back."""
    import time

    model = mlp(n_in, hidden, n_out, seed=seed)
    model.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return model


def cnn(channels: int = 1, width: int = 4, n_out: int = 3, *, seed: int = 0) -> nn.Sequential:
    """Conv(3x3) -> BatchNorm -> ReLU -> global average pool -> Linear; input (batch, channels, H, W).

    The BatchNorm gives integer buffers (``num_batches_tracked``) in the state_dict.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, width, kernel_size=3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, n_out),
    )


class TokenMLP(nn.Module):
    """Token ids (batch, seq) int64 -> embedding -> mean over the sequence -> ReLU MLP -> (batch, n_out)."""

    def __init__(self, vocab: int = 11, dim: int = 8, n_out: int = 3, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.hidden(self.embed(tokens).mean(dim=1)))
        return self.head(features)


def token_mlp(vocab: int = 11, dim: int = 8, n_out: int = 3, *, seed: int = 0) -> TokenMLP:
    """Factory form of :class:`TokenMLP`."""
    return TokenMLP(vocab, dim, n_out, seed=seed)
