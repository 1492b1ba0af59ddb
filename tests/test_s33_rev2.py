"""Review of the store's `model_imports` and the default layer's graph walk: the cases where they were wrong (a head
applying its weight in an operation the walk went through as if it applied none, a damaged `model_imports` that
turned the check off without a word), and an option of one command given before another's name."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.test_s33_imports import LAYERS, _analyze, _helper_run
from tests.test_s33_rev import _choice


class _TwoHeads(nn.Module):
    """An actor-critic whose 3 policy logits come from `head(h)` at a temperature, the value head run last."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.kind = head
        self.bilinear = nn.Bilinear(6, 6, 3)
        self.weight = nn.Parameter(torch.randn(6, 3))
        self.value = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        if self.kind == "bilinear":
            logits = self.bilinear(h, h)
        else:  # a sparse product (a pruned head stored sparse)
            logits = torch.sparse.mm(h.to_sparse(), self.weight)
        self.value(h)
        return logits / 2.0


@pytest.mark.parametrize("head", ["bilinear", "sparse"])
def test_a_head_that_is_no_linear_is_not_walked_through_to_the_trunk(head: str) -> None:
    # nn.Bilinear's node (TrilinearBackward0) and the sparse product's (SparseAddmmBackward0) were taken for operations
    # applying no weight: the walk reached trunk.0 beyond them, and its input, the probe itself, was the features
    torch.manual_seed(0)
    label, said = _choice(_TwoHeads(head).eval(), np.zeros((1, 4), np.float32))
    assert label == "value:input"  # the rule before the walk: the last nn.Linear to run, warned as no source of them
    assert not any("trunk.0" in text for text in said), said
    assert any("no source of the model's 3 outputs" in text for text in said), said


def test_an_option_of_another_command_before_the_command_says_which_takes_it() -> None:
    done = fdl_in_process("--steps", "1", "report", "store.h5")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said
    assert "Did you mean '--help'" not in said
    assert "'--steps' is an option of 'fdl analyze' and 'fdl export', not of 'fdl report' nor of fdl" in said, said
    done = fdl_in_process("--top-k", "4", "compare", "a.h5", "b.h5")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "'--top-k' is an option of 'fdl analyze', not of 'fdl compare'" in said, said


def test_a_damaged_model_imports_is_said_not_taken_for_a_store_without_it(tmp_path: Path) -> None:
    root = _helper_run(tmp_path)
    assert _analyze(root, "--steps", "0")[0] == 0
    with h5py.File(root / "run.h5", "r+") as store:
        store.attrs["model_imports"] = "{not json"
    with StoreReader(root / "run.h5") as reader:
        assert reader.model_imports is None and reader.has_model_imports
        assert any("its model_imports attribute is damaged and was ignored" in text for text in reader.warnings)
    (root / "mylayers.py").write_text(LAYERS.format("Tanh"))
    # not refused (the damage may be the attribute's alone), but not in silence either, and the attribute is kept
    code, said = _analyze(root, "--steps", "0,10")
    assert code == 0, said
    assert (
        f"note: {root / 'run.h5'}'s model_imports attribute is damaged: an edit of the modules its model file "
        "imports (mylayers) is not seen"
    ) in said, said
    with h5py.File(root / "run.h5", "r") as store:
        assert store.attrs["model_imports"] == "{not json"


class _LinearFunction(torch.autograd.Function):
    """torch's own example of a custom autograd Function ("Extending torch.autograd"): a linear layer."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[None, None, None]:
        return None, None, None


class _CustomLinearPolicy(nn.Module):
    """A policy head that is no nn.Linear but a layer of the custom Function above, at a temperature; the value head
    runs last. A learned scale given to a Function (`_Scaled`) applies no weight."""

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
        self.weight = nn.Parameter(torch.randn(3, 6))
        self.bias = nn.Parameter(torch.zeros(3))
        self.scale = nn.Parameter(torch.ones(3))
        self.policy = nn.Linear(6, 3)
        self.value = nn.Linear(6, 1)
        self.scaled = scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        logits = (
            _Scaled.apply(self.policy(h), self.scale) if self.scaled else _LinearFunction.apply(h, self.weight, self.bias)
        )
        self.value(h)
        return logits / 2.0


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def test_a_custom_function_given_a_weight_matrix_is_a_weight_product() -> None:
    # walked through as if it applied none, to trunk.2: the trunk's inner features were taken, with a note saying the
    # outputs are computed from trunk.2's output
    torch.manual_seed(0)
    label, said = _choice(_CustomLinearPolicy().eval(), np.zeros((1, 4), np.float32))
    assert label == "value:input" and not any("trunk.2" in text for text in said), said
    label, said = _choice(_CustomLinearPolicy(scaled=True).eval(), np.zeros((1, 4), np.float32))
    assert label == "policy:input", said
