"""Defects found by the review of the twelfth session's change set (readers one array at a time,
exports streamed, --overlap-k, shell completion), each as the behaviour that was wrong."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from tests.test_analyze import fdl
from tests.test_report import make_store

STEPS = (0, 100, 200, 300)


def _reshaped(store: Path, step: int, name: str, shape: tuple[int, ...]) -> None:
    """Rewrite one stored array of one checkpoint with the same values in another rank (a store
    written by hand or by another tool: not what fdl writes)."""
    with h5py.File(store, "r+") as file:
        leaf = file[f"checkpoints/step_{step}/train/fc1"]
        data = leaf[name][()]
        del leaf[name]
        leaf.create_dataset(name, data=data.reshape(shape))


@pytest.mark.parametrize(("name", "shape"), [("eigenfunctions", (-1,)), ("eigenvalues", (-1, 1))])
def test_an_array_of_the_wrong_rank_is_a_damaged_checkpoint_for_every_reader(
    tmp_path: Path, name: str, shape: tuple[int, ...]
) -> None:
    """`StoreReader.array` (exports, compare's overlap, the heat map) read a dataset of any rank, which
    `arrays()` refused as damage: `fdl export --what eigenfunctions` died with a TypeError traceback,
    `--what eigenvalues` exited 0 writing rows like `200,1,[0.5]`, and compare blamed the anchors."""
    store = make_store(tmp_path / "run.h5", steps=STEPS)
    intact = make_store(tmp_path / "intact.h5", steps=STEPS)
    _reshaped(store, 200, name, shape)
    damaged = f"error: {store} is damaged at checkpoint step 200 (train/fc1)"
    for fmt in ("csv", "json"):
        result = fdl("export", store, "--what", name, "--format", fmt)
        assert result.code == 1, result.stdout[-300:]
        assert damaged in result.stderr and f"{name} must be" in result.stderr
    npz = fdl("export", store, "--what", name, "--format", "npy", "--out", tmp_path / "e.npz")
    assert npz.code == 1 and damaged in npz.stderr
    if name == "eigenfunctions":
        compared = fdl("compare", intact, store, "--overlap-steps", "all")
        assert compared.code == 1 and "is damaged at checkpoint step 200" in compared.stderr, compared.stderr
        assert "anchor points" not in compared.stderr
