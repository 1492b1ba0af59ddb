"""Review of the warning that a layer's features moved though no parameter before it changed.

It named the buffers of the modules whose forward began before the layer's features were taken. Two ways that
was false: a buffer read without its module running (`F.batch_norm` on `self.bn`'s statistics) was never named,
and the warning fell silent where it had spoken before; and a buffer of a module around the layer (the model's own
`temperature`, applied to the logits after the head) was named as moved before the layer, since the model's forward
begins first. The buffers read before the features are taken are what can have moved them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import test_s31_small as small

torch.set_num_threads(1)

MODEL = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)  # read by the forward below, never called
        self.head = nn.Linear(8, 3)
        self.register_buffer("temperature", torch.ones(3))  # on the logits, after the head

    def forward(self, x):
        h = F.batch_norm(self.body(x), self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias)
        return self.head(h) * self.temperature


def build():
    return Net()
"""


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, torch.Tensor]) -> tuple[int, str]:
    """`fdl analyze` at head:input of two checkpoints of MODEL, the second the first with the buffers `change`
    replaced (the run of tests/test_s31_small.py, with this model)."""
    monkeypatch.setattr(small, "MODEL", MODEL)
    return small._run(tmp_path, change)


STATISTICS = {"bn.running_mean": torch.linspace(-3, 3, 8), "bn.running_var": torch.logspace(-3, 3, 8)}


def test_statistics_read_without_their_module_running_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bn's statistics moved the features through F.batch_norm; bn itself never ran: no warning was said."""
    status, err = _run(tmp_path, monkeypatch, STATISTICS)
    assert status == 0, err
    assert "head:input: the features moved from the reference at step 10" in err, err
    assert "only BatchNorm running statistics did (bn)" in err, err


def test_a_buffer_of_the_model_read_after_the_layer_is_not_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's temperature, read after the head, moved beside bn's statistics: it was named as a buffer
    that moved before head:input, and the user told to see whether it should change."""
    status, err = _run(tmp_path, monkeypatch, {**STATISTICS, "temperature": torch.tensor([1.0, 2.0, 3.0])})
    assert status == 0, err
    assert "only BatchNorm running statistics did (bn)" in err, err
    assert "temperature" not in err, err
