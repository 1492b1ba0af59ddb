"""`**` in a quoted checkpoint pattern stands for any number of folders (none too), as zsh's and bash's globstar
expand it: `fdl analyze 'run/**/step_*.pt'` takes the checkpoints at every depth under run/, hidden folders left
out. Before, fdl expanded `**` as `*`, one folder deep, and the others were silently not analysed.

Tiny MLPs (tests/tiny_models.py) on a 24-input probe, run in this process."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

SMALL = ("--model", "tests.tiny_models:mlp", "--device", "cpu", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16")


def _stored(store: Path) -> dict[int, str]:
    with h5py.File(store, "r") as handle:
        return {int(name.removeprefix("step_")): handle["checkpoints"][name].attrs["path"] for name in handle["checkpoints"]}


def test_double_star_matches_checkpoints_at_every_depth_but_hidden_folders(tmp_path: Path) -> None:
    np.savez(tmp_path / "probe.npz", x=np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32), y=np.arange(24) % 3)
    places = {0: "run", 10: "run/a", 20: "run/a/b", 30: "run/.partial"}
    for step, folder in places.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        torch.save(mlp(seed=step).state_dict(), tmp_path / folder / f"step_{step}.pt")
    done = fdl_in_process("analyze", "run/**/step_*.pt", "--probe", "probe.npz", "-o", "out.h5", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 checkpoints analysed" in done.stderr
    assert _stored(tmp_path / "out.h5") == {0: "run/step_0.pt", 10: "run/a/step_10.pt", 20: "run/a/b/step_20.pt"}
