"""A class-sorted probe's anchor warning under torchrun (session 39's check, `probes.anchor_class_skew`): said once
for the job, not once a rank, and recorded in the store as one process records it, whether the ranks share the
checkpoints or, with --shard-probe, the probe's rows (the anchors are the whole probe's first m rows either way)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.ranks import torchrun
from tests.tiny_models import mlp

SAID = "its first 40 of 120 rows, the anchor subset (--anchor-size 40), hold 2 of its 4 classes"


def _args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["analyze", str(folder / "run"), "--model", "tests.tiny_models:mlp", "--model-kwargs",
            '{"n_in": 4, "hidden": 8, "n_out": 4}', "--probe", str(folder / "sorted.npz"), "--anchor-size", "40",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four checkpoints of a tiny MLP and a probe of 4 classes of 30 rows, sorted by class (its first 40 rows hold
    classes 0 and 1), with the store one process makes of them."""
    folder = tmp_path_factory.mktemp("skew_ranks")
    (folder / "run").mkdir()
    for step in (0, 10, 20, 30):
        torch.save(mlp(4, 8, 4, seed=step).state_dict(), folder / "run" / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(120, 4)).astype(np.float32)
    np.savez(folder / "sorted.npz", x=x, y=np.repeat(np.arange(4), 30))
    done = fdl_in_process(*_args(folder, folder / "one.h5"))
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stderr.split()).count(SAID) == 1
    return folder


def _skew(store: Path) -> dict:
    with h5py.File(store, "r") as opened:
        return dict(json.loads(opened["probes/probe"].attrs["anchor_skew"]))


def test_the_job_warns_once_and_records_what_one_process_records(folder: Path) -> None:
    """--shard-probe, where each rank holds a slice of the probe's rows: the check reads the whole probe's labels.
    (Sharing the checkpoints, the ranks validate the same whole probe: the same path, one job of two is enough.)"""
    out = folder / "ranks.h5"
    done = torchrun("-m", "fdl_cli", *_args(folder, out, "--shard-probe"), direct=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert " ".join(done.stderr.split()).count(SAID) == 1, done.stderr[-4000:]
    assert _skew(out) == _skew(folder / "one.h5")
