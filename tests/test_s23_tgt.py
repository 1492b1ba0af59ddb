"""Probes whose targets are not the plain 10-class case (session 23): labels stored as text."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe

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
