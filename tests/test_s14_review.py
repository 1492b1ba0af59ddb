"""Review of the fourteenth session's changes: cross_entropy in stores an earlier fdl resumed, and the
epoch note's noisy cases."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.store import StoreReader
from tests.test_cross_entropy import _analyze_cli
from tests.test_distributed import _make_run, _stored


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("s14rev") / "run")


def _as_appended_by_an_earlier_fdl(store: Path, step: int) -> None:
    """What an fdl before cross_entropy leaves when it resumes this fdl's store with a later checkpoint:
    it appends the fields it knows to the trajectories (the cross_entropy dataset stays shorter) and
    writes the new checkpoint group without the attribute (checked with the fdl of 04a6257)."""
    with h5py.File(store, "r+") as handle:
        for probe in handle["checkpoints"][f"step_{step}"].values():
            for leaf in probe.values():
                del leaf.attrs["cross_entropy"]
        for probe in handle["trajectories"].values():
            for layer in probe.values():
                layer["cross_entropy"].resize((layer["step"].shape[0] - 1,))


def test_trajectories_appended_by_an_earlier_fdl_are_not_damage(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "appended.h5"
    _analyze_cli(run, store, "--steps", "0,10,20")
    before = _stored(store)
    _as_appended_by_an_earlier_fdl(store, 20)
    with StoreReader(store) as reader:
        # was: "trajectories of probe/2:input are unreadable (ValueError: fields have different
        # lengths [2, 3]): records rebuilt from the checkpoint groups"
        assert reader.warnings == []
        got = {r["step"]: r["cross_entropy"] for r in reader.records()}
    assert got == {0: before[0]["cross_entropy"], 10: before[10]["cross_entropy"], 20: None}
    _analyze_cli(run, store, "--steps", "0,10,20,30")  # the resume rewrites the trajectories whole
    with h5py.File(store, "r") as handle:
        layer = handle["trajectories"]["probe"]["2:input"]
        assert layer["cross_entropy"].shape == layer["step"].shape == (4,)
        column = layer["cross_entropy"][()]
    assert column[:2].tolist() == [before[0]["cross_entropy"], before[10]["cross_entropy"]]
    assert np.isnan(column[2]) and np.isfinite(column[3])
    with StoreReader(store) as reader:
        assert reader.warnings == []


def _epoch_notes(folder: Path, files: list[tuple[str, dict]]) -> list[str]:
    folder.mkdir()
    for seed, (name, metadata) in enumerate(files):
        weights = {"w": torch.randn(3, generator=torch.Generator().manual_seed(seed))}
        torch.save({"model": weights, **metadata}, folder / name)
    return [note for note in discover_checkpoints([folder]).notes if "epoch" in note]


@pytest.mark.parametrize(
    "files",
    [
        # a number every name shares is no step: --step-regex 'resnet(\d+)_best\.pt' was suggested,
        # which gives resnet18_best.pt step 18 and skips resnet18_last.pt
        [("resnet18_best.pt", {"epoch": 40}), ("resnet18_last.pt", {"epoch": 50})],
        # names counting the epochs from 1, the files from 0: the names number epochs too
        [(f"model_epoch_{epoch + 1}.pt", {"epoch": epoch}) for epoch in (0, 1, 2)],
        # one file: its number may be anything (resnet50.pt was "epoch 90, its name says 50")
        [("resnet50.pt", {"epoch": 90})],
    ],
    ids=["shared-number", "epochs-from-one", "one-file"],
)
def test_no_epoch_note_where_the_names_numbers_are_not_steps(tmp_path: Path, files: list) -> None:
    assert _epoch_notes(tmp_path / "run", files) == []


def test_the_epoch_note_still_comes_where_the_names_hold_the_steps(tmp_path: Path) -> None:
    files = [("ckpt_500.pt", {"epoch": 1}), ("ckpt_1000.pt", {"step": 1000}), ("ckpt_1500.pt", {"epoch": 3})]
    [note] = _epoch_notes(tmp_path / "mixed", files)
    assert "ckpt_500.pt is epoch 1, its name says 500" in note and "--step-regex 'ckpt_(\\d+)\\.pt'" in note
    # names of two shapes: the regex of the first would skip the others; the note names none
    files = [("ckpt_500.pt", {"epoch": 1}), ("model_1000.pt", {"epoch": 2})]
    [note] = _epoch_notes(tmp_path / "shapes", files)
    assert note.endswith("pass --step-regex to take the steps from the names instead")


def test_the_table_keeps_the_loss_of_checkpoints_without_a_cross_entropy() -> None:
    """A store analysed before cross_entropy, then resumed: the table showed a blank CE in place of
    the loss for the earlier checkpoints; both columns now (CE alone once every row has one)."""
    from fdl_cli.report import table_fields

    old = {"accuracy": 0.5, "loss": 0.3, "cross_entropy": None}
    new = {"accuracy": 0.6, "loss": 0.2, "cross_entropy": 1.1}
    fields = table_fields(wide=False, records=[old, new])
    assert fields.index("loss") + 1 == fields.index("cross_entropy")
    assert "loss" not in table_fields(wide=False, records=[new, new]) and "cross_entropy" in table_fields(
        wide=False, records=[new])
    assert "cross_entropy" not in table_fields(wide=False, records=[old])
