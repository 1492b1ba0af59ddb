"""Session 26: what fdl takes for the same checkpoint, with modules' extra states; and the default layer of a head
whose output is written over in place.

Extra states. Discovery compares checkpoints by a cheap fingerprint of their tensors, confirmed by
`weights_digest`: two files of one step whose weights are equal are one checkpoint (the copy skipped with a note),
and equal weights at two steps are reported as identical. A module's extra state that is no tensor (a dict holding
an FP8 or quantization scale, `get_extra_state`) changes the forward as much as a tensor does, but counted for
neither: a file of another scale at the same step was skipped as a copy of the first, and a whole pickled module
with such a state crashed the comparison (AttributeError: 'dict' object has no attribute 'detach'). The digest
now covers the extra states, and is unchanged for a checkpoint without one (the literal below was computed by
the starting commit, 895227d); the store records the sha256 of each file's bytes, which this leaves alone, so an
existing store resumes without analysing anything again.

Default layer. The outputs of a head written over in place after it ran (`out = head(h); out += bias`,
`out.mul_(2)`) counted as `y = wide(x); y += head(h)`: when another nn.Linear ran after the head (an auxiliary
tower's), fdl took that one's input, with a warning that its output is not the outputs' size; and
`out.data = out.data * 2` (new memory) was taken as no Linear's output at all. The head is kept now where no
later nn.Linear gives values of the outputs' size, and the very tensor the head returned is its output. The
tests of a fix failed before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.checkpoints import _fingerprint_tensors, discover_checkpoints, weights_digest
from fdl_cli.errors import SameStepError
from tests.test_analyze import fdl

torch.set_num_threads(1)


class Scaled(nn.Linear):
    """An nn.Linear whose output is multiplied by a scale kept as extra state (as an FP8 or quantized layer's)."""

    def __init__(self, *sizes: int) -> None:
        super().__init__(*sizes)
        self.scale = 1.0

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.scale = state["scale"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def _model(scale: float = 1.0) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Scaled(8, 3))
    model[2].scale = scale
    return model


def _state(scale: float) -> dict[str, Any]:
    state = _model(scale).state_dict()
    assert state["2._extra_state"] == {"scale": scale}
    return state


def test_equal_tensors_of_another_extra_state_at_one_step_are_no_copy(tmp_path: Path) -> None:
    """Before: last.pt was "skipped ...: same weights and step (10) as step_10.pt", its scale 3 never analysed."""
    torch.save({"model": _state(1.0), "step": 10}, tmp_path / "step_10.pt")
    torch.save({"model": _state(3.0), "step": 10}, tmp_path / "last.pt")
    with pytest.raises(SameStepError, match="two checkpoints have the same step 10"):
        discover_checkpoints([tmp_path])


def test_equal_extra_states_at_one_step_are_still_a_copy(tmp_path: Path) -> None:
    """Guard: the same tensors and extra state are one checkpoint, as before."""
    torch.save({"model": _state(3.0), "step": 10}, tmp_path / "step_10.pt")
    torch.save({"model": _state(3.0), "step": 10}, tmp_path / "last.pt")
    found = discover_checkpoints([tmp_path])
    assert [ref.path.name for ref in found.checkpoints] == ["step_10.pt"]
    assert found.notes == ["skipped last.pt: same weights and step (10) as step_10.pt"]


def test_identical_weights_at_two_steps_count_the_extra_state(tmp_path: Path) -> None:
    """Before: step_10.pt and step_20.pt were said to "hold identical weights" though their scales differ."""
    torch.save(_state(1.0), tmp_path / "step_10.pt")
    torch.save(_state(3.0), tmp_path / "step_20.pt")
    torch.save(_state(3.0), tmp_path / "step_30.pt")
    found = discover_checkpoints([tmp_path])
    assert [ref.step for ref in found.checkpoints] == [10, 20, 30]
    assert [(a.name, b.name) for a, b in found.duplicates] == [("step_20.pt", "step_30.pt")]


def test_whole_pickled_modules_with_extra_state_are_compared(tmp_path: Path) -> None:
    """Two whole modules at one step (--trust-pickle): the comparison crashed on the dict extra state; now one of
    another scale is a clash of steps (exit 1, fdl's message) and one of the same scale a copy."""
    probe = tmp_path / "probe.npz"
    rng = np.random.default_rng(0)
    np.savez(probe, x=rng.normal(size=(30, 4)).astype(np.float32), y=np.arange(30) % 3)
    other, same = tmp_path / "other", tmp_path / "same"
    for folder, scale in ((other, 5.0), (same, 1.0)):
        folder.mkdir()
        torch.save(_model(), folder / "step_10.pt")
        torch.save({"model": _model(scale), "global_step": 10}, folder / "last.ckpt")
    clash = fdl("analyze", str(other), "--probe", str(probe), "--out", str(tmp_path / "o.h5"), "--device", "cpu",
                "--trust-pickle")
    assert clash.code == 1 and "Traceback" not in clash.stderr, clash.stderr
    assert "two checkpoints have the same step 10" in clash.stderr, clash.stderr
    found = discover_checkpoints([same], trust_pickle=True)
    assert [ref.path.name for ref in found.checkpoints] == ["step_10.pt"]
    assert found.notes == ["skipped last.ckpt: same weights and step (10) as step_10.pt"]


#: A fixed state_dict without extra state, and its digests computed by the starting commit's code (895227d):
#: unchanged, so nothing of a checkpoint without extra state is compared otherwise than before.
_FIXED = {"fc.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7, "fc.bias": torch.tensor([0.5, -1.0, 2.0]),
          "bn.num_batches_tracked": torch.tensor(3), "half": torch.arange(600, dtype=torch.float16)}
_FIXED_DIGEST = "08dec7799fe713793e7f62f0c2a87a2d09142fc87571f618f38c3f8606528ad1"
_FIXED_FINGERPRINT = "9d59ab4023089efbe6dd3e3f2f5b3b61ccad4a6e245c17bae3bb9abd0dc3f9dc"


def test_the_digests_of_a_checkpoint_without_extra_state_are_unchanged() -> None:
    """Guard (passes at the starting commit): the digests of a checkpoint without extra state are the same."""
    assert weights_digest(_FIXED) == _FIXED_DIGEST
    assert _fingerprint_tensors(_FIXED) == _FIXED_FINGERPRINT


def test_the_digest_counts_the_extra_states() -> None:
    """The extra states count, by value; none given is the digest of the tensors alone."""
    assert weights_digest(_FIXED, {}) == _FIXED_DIGEST
    assert weights_digest(_FIXED, {"m._extra_state": {"scale": 1.0}}) != _FIXED_DIGEST
    assert weights_digest(_FIXED, {"m._extra_state": {"scale": 1.0}}) == weights_digest(
        _FIXED, {"m._extra_state": {"scale": 1.0}})
    assert weights_digest(_FIXED, {"m._extra_state": {"scale": 1.0}}) != weights_digest(
        _FIXED, {"m._extra_state": {"scale": 2.0}})


_MODEL_SOURCE = '''
from tests.test_s26_digest import _model


def build():
    return _model()
'''


def test_a_store_of_extra_state_checkpoints_resumes_analysing_none_again(tmp_path: Path) -> None:
    """Guard: the store records each file's sha256 (its bytes, extra states included), which this leaves alone:
    a resume analyses nothing again (a store made by the starting commit resumed so too)."""
    run = tmp_path / "run"
    run.mkdir()
    for index, step in enumerate((0, 10, 20)):
        state = _state(1.0 + index)
        torch.save({**state, "0.weight": state["0.weight"] + 0.1 * index}, run / f"step_{step}.pt")
    (tmp_path / "model.py").write_text(_MODEL_SOURCE, encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(30, 4)).astype(np.float32), y=np.arange(30) % 3)
    args = ("analyze", str(run), "--model", f"{tmp_path / 'model.py'}:build", "--probe", str(tmp_path / "probe.npz"),
            "--out", str(tmp_path / "s.h5"), "--device", "cpu")
    first, again = fdl(*args), fdl(*args)
    assert first.code == 0 and "3 checkpoints analysed" in first.stderr, first.stderr
    assert again.code == 0 and "0 checkpoints analysed, 3 already in the store" in again.stderr, again.stderr


class _TwoTowers(nn.Module):
    """A head on one tower and an auxiliary nn.Linear (another size) on another, run after the head; the head's
    output changed in place as `how` says before it is returned (with the auxiliary output, or alone)."""

    def __init__(self, how: str, pair: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.tower, self.aux = nn.Linear(4, 5), nn.Linear(5, 2)
        self.bias2 = nn.Parameter(torch.ones(3))
        self.how, self.pair = how, pair

    def forward(self, x: torch.Tensor) -> Any:
        out = self.head(torch.relu(self.body(x)))
        aux = self.aux(torch.relu(self.tower(x)))
        if self.how == "iadd":
            out += self.bias2
        elif self.how == "add_":
            out.add_(1.0)
        elif self.how == "mul_":
            out.mul_(2)
        elif self.how == "data_mul_":
            out.data.mul_(2)
        elif self.how == "data_assign":
            out.data = out.data * 2
        return (out, aux) if self.pair else out


@pytest.mark.parametrize("pair", [True, False])
@pytest.mark.parametrize("how", ["iadd", "add_", "mul_", "data_mul_", "data_assign"])
def test_a_head_written_over_in_place_stays_the_default_layer(how: str, pair: bool) -> None:
    """Before: aux:input (all but data_mul_), with a warning that aux's output is not the outputs' size."""
    from fdl_cli.extract import default_layer

    said: list[str] = []
    spec = default_layer(_TwoTowers(how, pair).eval(), sample=np.zeros((1, 4), np.float32), note=said.append,
                         warn=lambda text: said.append("warning: " + text))
    assert spec.label == "head:input"
    assert len(said) == 1 and not said[0].startswith("warning"), said
    assert "are the output of nn.Linear 'head'" in said[0] and "the features are head:input" in said[0], said
    written = how in ("iadd", "add_", "mul_")
    assert ("written over in place after it ran (out += bias, out.mul_(2)) by no later nn.Linear" in said[0]) is written


class _WideDeepAux(nn.Module):
    """`y = wide(x); y += head(h)`, then an auxiliary nn.Linear of another size: the outputs hold head's output
    added in; the default is head:input, no longer the last Linear to run (aux)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide, self.body, self.head, self.aux = nn.Linear(4, 3), nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.wide(x)
        h = torch.relu(self.body(x))
        y += self.head(h)
        return y, self.aux(torch.relu(self.body(x)))


def test_outputs_added_in_place_take_the_last_linear_of_their_size() -> None:
    from fdl_cli.extract import default_layer

    said: list[str] = []
    spec = default_layer(_WideDeepAux().eval(), sample=np.zeros((1, 4), np.float32), note=said.append,
                         warn=lambda text: said.append("warning: " + text))
    assert spec.label == "head:input"
    assert said == ["the model's outputs (the first element of the tuple its forward returns) are the output of "
                    "nn.Linear 'wide' written over in place after it ran (y = wide(x); y += ...): the features are "
                    "the input of the last nn.Linear of their size to run after it, head:input (--layer wide:input "
                    "for the other)"]
