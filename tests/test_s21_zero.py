"""Session 21 review: what the reading commands say of targets and outputs that carry no energy, and the fix
for a stored layer left out on resume.

- All-zero float targets were recorded as float 0/1 targets, so report, classify, compare and export said the
  0/1 caveat ("multi-label ..., loss and r2 compare the logit with 0/1") where analyze warned that they carry
  no energy (their quality 0/0).
- A network whose outputs are constant over the probe (a zero head) has D_LR 1.0 by its degenerate rule:
  compare called the other run "richer ... 65% lower" on its strength, and analyze said nothing.
- A store of layers [2:input, 0] resumed with `--layer 2:input` alone was told only "--overwrite / another
  --out", where a left-out probe is told to give it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

MODEL = "tests.tiny_models:mlp"


def _checkpoints(folder: Path, *, head: str = "trained", steps: int = 4) -> Path:
    """`steps` mlp checkpoints; head "zero": a zero last layer (outputs all 0), "constant": a zero weight
    and a bias (outputs the same in every row)."""
    folder.mkdir()
    for step in range(steps):
        model = mlp(4, 8, 3, seed=step)
        if head != "trained":
            with torch.no_grad():
                model[2].weight.zero_()
                model[2].bias.copy_(torch.tensor([1.0, -2.0, 0.5]) if head == "constant" else torch.zeros(3))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    return folder


def _probe(path: Path, y: np.ndarray) -> Path:
    np.savez(path, x=np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), y=y)
    return path


def _analyze(checkpoints: Path, probe: Path, out: Path, *extra: str):
    return fdl_in_process("analyze", checkpoints, "--model", MODEL, "--probe", probe, "-o", out, *extra)


# ------------------------------------------------------------------ a stored layer left out on resume


def test_a_stored_layer_left_out_on_resume_is_named_with_the_layer_list_that_resumes(tmp_path: Path) -> None:
    checkpoints = _checkpoints(tmp_path / "ck", steps=2)
    probe = _probe(tmp_path / "probe.npz", np.arange(50) % 3)
    store = tmp_path / "run.h5"
    done = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert done.returncode == 0, done.stderr
    before = store.read_bytes()
    resumed = _analyze(checkpoints, probe, store, "--layer", "2:input")
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert ("fix: the store also holds the layer '0', at every checkpoint: give it too, with the store's layers in "
            "its order, --layer 2:input --layer 0, to resume; else pass --overwrite to replace it, or another --out "
            "to keep both") in resumed.stderr
    other = _analyze(checkpoints, probe, store, "--layer", "0", "--top-k", "5")
    assert other.returncode == 1
    assert ("the store also holds the layer '2:input', at every checkpoint: give it too, with the store's layers in "
            "its order, --layer 2:input --layer 0 (the other differences above remain: options.top_k)") in other.stderr
    assert store.read_bytes() == before  # nothing stored is lost
    again = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert again.returncode == 0, again.stderr  # what the fix names resumes
