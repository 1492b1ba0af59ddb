"""The default feature layer across common architectures: the second forward pass that walks the outputs' autograd
graph (`extract.outputs_made_from`) runs only where no nn.Linear gives the outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.extract import default_layer


def _choice_and_passes(model: nn.Module, sample: np.ndarray) -> tuple[str, list[str], int]:
    """The default layer's label, what was said of it, and how many forward passes choosing it made."""
    passes: list[None] = []
    model.register_forward_pre_hook(lambda _module, _args: passes.append(None))
    said: list[str] = []
    spec = default_layer(model, sample=sample, note=said.append, warn=said.append)
    return spec.label, said, len(passes)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))


class _AuxLastScaled(nn.Module):
    """The logits a head's output times a constant; an auxiliary head on an earlier layer runs after it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 3)
        self.aux = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.fc(h) * 2.0, self.aux(h)


@pytest.mark.parametrize(("make", "sample", "label", "passes"), [
    (_mlp, np.ones((1, 8), np.float32), "4:input", 1),
    (_cnn, np.ones((1, 3, 6, 6), np.float32), "6:input", 1),
    # the counter sees the second pass where it is needed: the last nn.Linear to run is the auxiliary head
    (_AuxLastScaled, np.ones((1, 8), np.float32), "fc:input", 2),
])
def test_the_graph_pass_runs_only_where_no_linear_gives_the_outputs(
        make: Callable[[], nn.Module], sample: np.ndarray, label: str, passes: int) -> None:
    """A plain MLP's and CNN's outputs are their last nn.Linear's output: one forward pass chooses the layer, as
    before the second pass existed (analyze's cost for common models does not grow)."""
    torch.manual_seed(0)
    got = _choice_and_passes(make().eval(), sample)
    assert (got[0], got[2]) == (label, passes), got
