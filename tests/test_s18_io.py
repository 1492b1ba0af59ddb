"""Models and probes of the shapes ML researchers really have (eighteenth session): a transformer on token
ids, forwards returning a dict / tuple / dataclass, a model of several inputs, regression and multi-label
heads, probes of every format with odd label dtypes and sizes. What misled or was missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe
from tests.cli_run import fdl, model_file

MLP = """
from dataclasses import dataclass

import torch
from torch import nn


def build(n_out=3):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, n_out))
"""


def _run(tmp_path: Path, source: str = MLP, n_out: int = 3, factory: str = "build") -> tuple[Path, list[str]]:
    """One checkpoint (step_0.pt) of `factory` in `source`, and the `--model` options that build it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    module = model_file(tmp_path, source)
    torch.manual_seed(0)
    kwargs = {"n_out": n_out}
    torch.save(getattr(module, factory)(**kwargs).state_dict(), runs / "step_0.pt")
    return runs, ["--model", f"{tmp_path / 'model.py'}:{factory}", "--model-kwargs", json.dumps(kwargs)]


def _x(n: int = 12) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def _multi_hot(n: int = 12, k: int = 3) -> np.ndarray:
    """0/1 targets of k labels with rows of none, one and several 1s (multi-label)."""
    y = (np.random.default_rng(1).random((n, k)) > 0.5).astype(np.int64)
    y[0], y[1] = 0, 1  # a row of no label, a row of every label
    return y


# ------------------------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize(("dtype", "word"), [(np.int64, "integer"), (np.uint8, "integer"), (bool, "boolean")])
def test_integer_multi_hot_targets_are_refused_as_multi_label_with_what_fdl_can_measure(
    tmp_path: Path, dtype: type, word: str
) -> None:
    """0/1 labels with several 1s a row were refused as "not one-hot", with no word of multi-label and a fix
    ("give (n,) class labels") that a multi-label probe cannot follow."""
    path = tmp_path / "ml.npz"
    np.savez(path, x=_x(), y=_multi_hot().astype(dtype))
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    text = str(raised.value)
    assert f"{word} 'y' of shape (12, 3) is not one-hot" in text
    assert "several labels per sample (multi-label)?" in text
    assert "fdl has no multi-label task" in text
    assert "y.astype(np.float32)" in text
    assert "loss and r2 then compare the raw outputs (logits) with 0/1" in text


def test_float_multi_hot_targets_are_analysed_with_a_warning_naming_what_loss_and_r2_measure(tmp_path: Path) -> None:
    """Float 0/1 multi-label targets were analysed as regression without a word: a sigmoid model fitting them
    well showed r2 = -1093 (its logits against 0/1) in the report."""
    runs, model = _run(tmp_path, n_out=3)
    probe = tmp_path / "ml.npz"
    np.savez(probe, x=_x(), y=_multi_hot().astype(np.float32))
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert ("warning: probe 'probe': y holds float 0/1 targets with several 1s, or none, in a row (multi-label "
            "targets?), analysed as regression targets of the raw outputs") in result.stderr
    assert "loss and r2 compare the outputs as they are with 0/1" in " ".join(result.stderr.split())
    assert "one-hot" not in result.stderr


def test_a_float_0_1_column_for_one_output_warns_and_names_the_binary_classifier_route(tmp_path: Path) -> None:
    runs, model = _run(tmp_path, n_out=1)
    probe = tmp_path / "b.npz"
    np.savez(probe, x=_x(), y=(np.arange(12) % 2).astype(np.float32))
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert "warning: probe 'probe': y holds float 0/1 targets, analysed as regression targets of the raw output" \
        in text
    assert "save the targets as integer labels (y.astype(np.int64))" in text


@pytest.mark.parametrize("y", [
    np.eye(3, dtype=np.float32)[np.arange(12) % 3],  # a float one-hot matrix: its own warning
    np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32),  # real regression targets
])
def test_other_float_targets_get_no_multi_label_warning(tmp_path: Path, y: np.ndarray) -> None:
    runs, model = _run(tmp_path, n_out=3)
    probe = tmp_path / "t.npz"
    np.savez(probe, x=_x(), y=y)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert "0/1 targets" not in result.stderr
