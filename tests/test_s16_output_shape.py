"""Outputs with more than one axis per sample (a head at every position): refused with class labels,
analysed with a warning otherwise; a (b, 1, C) or (b, C, 1, 1) head is an ordinary classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process as _fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file

MODEL = '''
import torch
from torch import nn


class PerPosition(nn.Module):
    def __init__(self, positions=7, keep=None):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)
        self.positions = positions
        self.keep = keep

    def forward(self, x):
        out = self.head(torch.relu(self.mix(self.emb(x[:, : self.positions]))))  # (b, T, 5)
        return out if self.keep is None else out[:, self.keep]


def build(positions=7, keep=None):
    return PerPosition(positions, keep)
'''


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    net = model_file(tmp_path, MODEL).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 10):
        torch.save(net.state_dict(), ckpts / f"step_{step}.pt")
        with torch.no_grad():
            net.head.weight.mul_(1.5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (200, 7))
    np.savez(tmp_path / "labels.npz", x=x, y=rng.integers(0, 5, 200))
    np.savez(tmp_path / "targets.npz", x=x, y=rng.normal(size=(200, 35)))
    return tmp_path


def test_class_labels_against_per_position_outputs_are_refused(run: Path) -> None:
    out = run / "run.h5"
    done = _fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", run / "labels.npz", "-o", out)
    assert done.returncode == 1
    assert "the model's outputs have shape (7, 5) per sample" in done.stderr
    assert "flatten into 35 outputs" in done.stderr and "out[:, -1]" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_the_last_position_alone_is_an_ordinary_classifier(run: Path) -> None:
    out = run / "last.h5"
    done = _fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--model-kwargs", '{"keep": -1}',
                "--probe", run / "labels.npz", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert "per sample" not in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["n_outputs"] for r in records] == [5, 5] and records[0]["accuracy"] is not None


def test_a_single_position_axis_is_not_a_sequence(run: Path) -> None:
    out = run / "one.h5"
    done = _fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--model-kwargs", '{"positions": 1}',
                "--probe", run / "labels.npz", "-o", out, "--json")
    assert done.returncode == 0, done.stderr  # outputs (1, 5) per sample: five classes
    assert "per sample" not in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["n_outputs"] == 5


def test_regression_targets_of_the_flattened_width_are_analysed_with_a_warning(run: Path) -> None:
    out = run / "flat.h5"
    done = _fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", run / "targets.npz",
                "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert "outputs have shape (7, 5) per sample, analysed as one vector of 35 outputs" in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["n_outputs"] for r in records] == [35, 35] and records[-1]["r2"] is not None
