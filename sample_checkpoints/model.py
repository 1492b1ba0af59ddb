"""The model of the sample run: a small MLP on 8×8 digits (64 inputs, 10 classes)."""

from torch import nn


def build(hidden: int = 64, n_classes: int = 10) -> nn.Module:
    """64 → hidden → hidden → n_classes, ReLU; the feature map is the input of the last Linear (module `4`)."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )
