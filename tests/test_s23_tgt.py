"""Probes whose targets are not the plain 10-class case (session 23): labels stored as text."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe
from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

X = np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32)
LABELS = np.arange(24) % 12  # 12 classes: '10' and '11' sort before '2' as text


def _refusal(path: Path) -> str:
    with pytest.raises(ProbeError) as caught:
        load_probe(path)
    return str(caught.value)


def test_numeric_string_labels_are_told_to_keep_their_numbers(tmp_path: Path) -> None:
    """Labels '0'..'11' saved as text: np.unique's numbering (the fix given before) sorts them as text, '10' and
    '11' before '2', so the classes would no longer be the model's outputs 10, 11, 2 and accuracy, cross_entropy
    and loss would read against the wrong outputs. The fix converts the text's numbers, as they are."""
    np.savez(tmp_path / "p.npz", x=X, y=np.array([str(v) for v in LABELS]))
    said = _refusal(tmp_path / "p.npz")
    assert "(class names)" in said and "y = y.astype(np.int64)" in said
    assert "np.unique(y, return_inverse=True)" not in said
    converted = np.array([str(v) for v in LABELS]).astype(np.int64)
    assert (converted == LABELS).all()


def test_named_labels_are_told_to_number_them_in_the_order_of_the_outputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=X, y=np.array(["cat", "dog", "fox"])[LABELS % 3])
    said = _refusal(tmp_path / "p.npz")
    assert "np.unique(y, return_inverse=True)" in said and "model's output" in said


def test_hdf5_variable_length_string_labels_are_named_class_names(tmp_path: Path) -> None:
    """h5py's string_dtype (how h5py and pandas save text) reads as an object array: refused as 'dtype object'
    without the class-names fix the same labels in an npz get."""
    with h5py.File(tmp_path / "p.h5", "w") as handle:
        handle["x"] = X
        handle.create_dataset("y", data=[str(v) for v in LABELS], dtype=h5py.string_dtype())
    said = _refusal(tmp_path / "p.h5")
    assert "(class names)" in said and "e.g. " in said and "y = y.astype(np.int64)" in said


def _binary_run(tmp_path: Path, labels: np.ndarray) -> subprocess.CompletedProcess[str]:
    """`fdl analyze` of two checkpoints of a 4-8-2 MLP on a probe of these labels."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(4, 8, 2, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(len(labels), 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=labels)
    return fdl_in_process("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          '{"n_in": 4, "hidden": 8, "n_out": 2}', "--probe", tmp_path / "probe.npz",
                          "--out", tmp_path / "run.h5")


def test_a_probe_of_one_dominant_class_says_what_a_constant_guess_scores(tmp_path: Path) -> None:
    """99 % class 0 (session 23): a network predicting class 0 everywhere scored accuracy 0.990 and read 'MF from
    step 10' with nothing to say that 0.990 is the majority guess, where classify's near-chance line takes chance
    as 1/C = 0.5. analyze now says what a constant guess scores (accuracy and cross-entropy)."""
    labels = np.zeros(200, dtype=np.int64)
    labels[:2] = 1
    done = _binary_run(tmp_path, labels)
    assert done.returncode == 0, done.stderr
    assert "198 of 200 labels (99.0 %) are class 0" in done.stderr
    entropy = -(0.99 * math.log(0.99) + 0.01 * math.log(0.01))
    assert f"accuracy 0.9900 and cross_entropy {entropy:.3f}" in done.stderr
    assert "1/C = 0.5000" in done.stderr


def test_balanced_classes_get_no_such_note(tmp_path: Path) -> None:
    done = _binary_run(tmp_path, np.arange(200) % 2)
    assert done.returncode == 0, done.stderr
    assert "a constant guess" not in done.stderr


def test_a_layer_narrower_than_the_anchors_keeps_its_overlaps_and_no_warning_says_otherwise(tmp_path: Path) -> None:
    """C = 30 outputs, 20 probe points, a layer of 8 units (C > n > p, session 23): the anchors (20) are no more than
    k = C = 30, and analyze warned that the overlaps 'are not measured there (null)', yet the top-k eigenfunctions
    span at most 8 of the 20 anchor dimensions, so the overlaps were measured (stored, read by classify). The
    warning is for a layer wide enough to span the anchors only."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(4, 8, 30, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.arange(20))
    done = fdl_in_process("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          '{"n_in": 4, "hidden": 8, "n_out": 30}', "--probe", tmp_path / "probe.npz",
                          "--out", tmp_path / "run.h5", "--json")
    assert done.returncode == 0, done.stderr
    records = {r["step"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert records[10]["overlap_init"] is not None and 0.0 < records[10]["overlap_init"] < 1.0
    assert "not measured there (null)" not in done.stderr


def test_integer_regression_targets_of_a_one_output_model_are_told_to_save_floats(tmp_path: Path) -> None:
    """A count (pixels above a threshold: 10..27) as the regression target of a 1-output model, saved as int64, was
    refused as 'class label 27 but the model has 1 output(s)', with a fix about the probe or --model-kwargs only: the
    int dtype is what made them labels, so the fix says to save them as floats."""
    from fdl_cli.probes import validate_probe

    np.savez(tmp_path / "p.npz", x=X, y=np.arange(24) + 4)
    with pytest.raises(ProbeError) as caught:
        validate_probe(load_probe(tmp_path / "p.npz"), n_outputs=1)
    said = str(caught.value)
    assert "has class label 27 but the model has 1 output" in said
    assert "regression targets" in said and "y = y.astype(np.float32)" in said
