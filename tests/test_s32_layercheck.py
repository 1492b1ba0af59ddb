"""The default feature layer across common architectures: the second forward pass that walks the outputs' autograd
graph (`extract.outputs_made_from`) runs only where no nn.Linear gives the outputs, and walks through a BatchNorm
on the logits whichever kernel computed it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


class CudnnBatchNorm(torch.autograd.Function):
    """An eval-mode BatchNorm whose autograd node is named as cuDNN's is on a GPU (`CudnnBatchNormBackward0`): a
    Function's node takes its class's name. Elementwise, as the CPU kernel's `NativeBatchNormBackward0` is."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:  # type: ignore[override]
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class _BatchNormedLogits(nn.Module):
    """Logits normalised by a BatchNorm1d after the head (as in a projection head), an auxiliary head on the
    input run last."""

    def __init__(self, cudnn: bool) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 3)
        self.bn = nn.BatchNorm1d(3)
        self.aux = nn.Linear(8, 3)
        self.cudnn = cudnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.fc(torch.relu(self.body(x)))
        return (CudnnBatchNorm.apply(z, self.bn) if self.cudnn else self.bn(z)), self.aux(x)


@pytest.mark.parametrize("cudnn", [False, True])
def test_a_batchnorm_on_the_logits_is_walked_through_on_a_gpu_as_on_the_cpu(cudnn: bool) -> None:
    """The walk stopped at every node named Cudnn* or Mkldnn*, a BatchNorm's on a GPU among them: there the
    outputs reached no nn.Linear and the auxiliary head's input, the model's input, was the default; on the CPU
    the head's. The same model now gets the same default layer on either device."""
    torch.manual_seed(0)
    label, said, _ = _choice_and_passes(_BatchNormedLogits(cudnn).eval(), np.ones((1, 8), np.float32))
    assert label == "fc:input", said
    assert len(said) == 1 and "computed from the output of nn.Linear 'fc'" in said[0], said
