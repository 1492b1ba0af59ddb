"""`**` in a quoted checkpoint pattern stands for any number of folders (none too), as zsh's and bash's globstar
expand it: `fdl analyze 'run/**/step_*.pt'` takes the checkpoints at every depth under run/, hidden folders left
out. Before, fdl expanded `**` as `*`, one folder deep, and the others were silently not analysed.

Tiny MLPs (tests/tiny_models.py) on a 24-input probe, run in this process."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
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


def test_a_source_that_cannot_be_looked_at_is_taken_as_the_path_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed folder above a name holding `*` (EACCES from lstat): not a pattern expanded to nothing, but the path
    given, which the reading then reports as what it is. ENOENT and ENOTDIR make a pattern."""
    from fdl_cli import checkpoints

    def lstat(path: str, errno_value: int = errno.EACCES) -> None:
        raise OSError(errno_value, os.strerror(errno_value), path)

    monkeypatch.setattr(checkpoints.os, "lstat", lstat)
    assert not checkpoints.is_pattern("closed/step_*.pt")
    assert checkpoints.expand_sources(["closed/step_*.pt"], missing_ok=False) == ["closed/step_*.pt"]
    for value in (errno.ENOENT, errno.ENOTDIR):
        monkeypatch.setattr(checkpoints.os, "lstat", lambda path, value=value: lstat(path, value))
        assert checkpoints.is_pattern("closed/step_*.pt")
