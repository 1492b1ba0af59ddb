"""Review of the last changes to the default feature layer, the ASCII stand-ins and the usage hints: the cases where
they were wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fdl_cli.errors import ProbeError
from fdl_cli.extract import default_layer
from fdl_cli.probes import load_probe


def _choice(model: nn.Module, sample: np.ndarray) -> tuple[str, list[str]]:
    said: list[str] = []
    spec = default_layer(model, sample=sample, note=said.append, warn=said.append)
    return spec.label, said


class _CheckpointedPolicy(nn.Module):
    """An actor-critic whose policy head runs inside a reentrant activation checkpoint (a custom autograd Function:
    the nn.Linear inside it runs with gradients off, no node of its own in the graph), then at a temperature; the
    value head runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.pi = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.vf = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.policy = nn.Linear(6, 3)
        self.value = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return checkpoint(self.policy, self.pi(x), use_reentrant=True) / 2.0, self.value(self.vf(x))


def test_a_head_hidden_in_an_autograd_function_is_not_taken_for_the_linear_before_it() -> None:
    # the graph walk went through the checkpoint's node to pi.0, the trunk's first layer: its input, the probe itself,
    # was taken as the features, with a note saying the outputs are computed from pi.0's output
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checkpoint's "None of the inputs have requires_grad=True"
        label, said = _choice(_CheckpointedPolicy().eval(), np.zeros((1, 4), np.float32))
    assert label != "pi.0:input"
    assert not any("pi.0" in text for text in said)
    # the rule before the walk stands: the last nn.Linear to run, warned as no source of the 3 outputs
    assert label == "value:input"
    assert any("no source of the model's 3 outputs" in text for text in said), said


class _RoundedOverFrozenTrunk(_CheckpointedPolicy):
    """The policy's logits rounded by a straight-through estimator (a custom autograd Function applying no weight),
    on a trunk run under torch.no_grad (frozen features): the trunk's nn.Linear run with no node in the graph, but
    not inside the Function."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = self.pi(x)
        return _StraightThrough.apply(self.policy(h)) / 2.0, self.value(self.vf(x))


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.round()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def test_a_function_applying_no_weight_is_walked_through_beside_a_frozen_trunk() -> None:
    torch.manual_seed(0)
    label, said = _choice(_RoundedOverFrozenTrunk().eval(), np.ones((1, 4), np.float32))
    assert label == "policy:input"
    assert any("computed from the output of nn.Linear 'policy'" in text for text in said), said


class _InPlaceInput(nn.Module):
    """An actor-critic that scales its input in place (`x.mul_`, `x -= mean`) before two trunks; the value head, as
    wide as the policy's, runs last: no size tells the heads apart."""

    def __init__(self) -> None:
        super().__init__()
        self.pi = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.vf = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.policy = nn.Linear(6, 3)
        self.value = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x.mul_(0.5)
        return self.policy(self.pi(x)) / 2.0, self.value(self.vf(x))


def test_a_model_writing_in_place_into_its_input_gets_the_policy_head() -> None:
    # the graph pass gave up (an in-place write into a leaf that requires grad), and the last nn.Linear to run, the
    # value head of the policy's size, was taken without a word: the value trunk's features analysed as the policy's
    torch.manual_seed(0)
    label, said = _choice(_InPlaceInput().eval(), np.ones((1, 4), np.float32))
    assert label == "policy:input"
    assert any("computed from the output of nn.Linear 'policy'" in text for text in said), said


def test_labels_kept_as_a_list_of_tensors_are_said_as_such(tmp_path: Path) -> None:
    # `list(labels)` of a tensor: its items are 0-dim tensors, said "items of mixed types: Tensor", with a fix,
    # torch.tensor(y), that fails for a list of batches (1-D tensors of several lengths)
    probe = tmp_path / "probe.pt"
    torch.save({"x": torch.randn(6, 4), "y": list(torch.tensor([0, 1, 2] * 2))}, probe)
    with pytest.raises(ProbeError) as caught:
        load_probe(probe)
    assert "mixed" not in (caught.value.got or "")
    assert caught.value.got == "items that are tensors, not numbers"
    assert "torch.stack(y)" in (caught.value.fix or "") and "torch.cat(y)" in (caught.value.fix or "")
