"""Reproducing an analysis months later: what the store records of how it was computed, and a run (store,
checkpoints and model file) moved to another folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.test_analyze import fdl
from tests.test_s15_redo import _assert_same_store
from tests.test_walk_fixes import SMALL, _run_folder


def _history(store: Path) -> list[dict[str, object]]:
    with h5py.File(store, "r", locking=False) as handle:
        return list(json.loads(handle.attrs["history"]))


def test_history_records_batch_size_threads_numpy_and_probe_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch size and torch's thread count change a float32 model's features and the float64 sums in the
    last bits (docs/reliability.md, "Reproducibility"): a store that did not record them could not be analysed
    again to the same bits. Each invocation's row names them, numpy's version beside torch's, and the probe
    files it read (the provenance holds their sha256 alone)."""
    root = _run_folder(tmp_path)
    monkeypatch.chdir(root)
    threads = torch.get_num_threads()
    first = fdl("analyze", "run", "--model", "model.py:build", "--probe", "probe.npz", "--out", "run.h5",
                "--steps", "0,10", *SMALL)
    assert first.code == 0, first.stderr
    again = fdl("analyze", "run", "--model", "model.py:build", "--probe", "probe.npz", "--out", "run.h5",
                *SMALL[:-1], "5")
    assert again.code == 0, again.stderr
    rows = _history(root / "run.h5")
    assert [row.get("batch_size") for row in rows] == [16, 5]
    assert [row.get("threads") for row in rows] == [threads, threads]
    assert all("blas_threads" in row for row in rows)
    assert [row.get("numpy_version") for row in rows] == [np.__version__] * 2
    with h5py.File(root / "run.h5", "r", locking=False) as handle:
        assert json.loads(handle.attrs["provenance"])["environment"]["numpy_version"] == np.__version__
    assert [row.get("probe_files") for row in rows] == [{"probe": "probe.npz"}] * 2


def test_order_glob_and_resume_give_the_store_of_one_run_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/reliability.md, "Reproducibility": the checkpoints given as a folder, as files in another order, or
    through --glob and analysed in two runs (the second storing a checkpoint before a stored one), give the
    same store to the bit, but for when and where it was computed (`created`, `history`)."""
    root = _run_folder(tmp_path)
    monkeypatch.chdir(root)
    common = ("--model", "model.py:build", "--probe", "probe.npz", *SMALL)
    assert fdl("analyze", "run", *common, "--out", "folder.h5").code == 0
    files = sorted((f"run/{path.name}" for path in (root / "run").iterdir()), reverse=True)
    assert fdl("analyze", *files, *common, "--out", "files.h5").code == 0
    for steps in ("0,20", "0,10,20"):
        done = fdl("analyze", "run", "--glob", "ckpt_step*.pt", "--steps", steps, *common, "--out", "parts.h5")
        assert done.code == 0, done.stderr
    _assert_same_store(root / "files.h5", root / "folder.h5")
    _assert_same_store(root / "parts.h5", root / "folder.h5")


def _moved_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run analysed in a/ (model file, probe, checkpoints and store), then moved whole to b/."""
    (tmp_path / "a").mkdir()
    old = _run_folder(tmp_path / "a")
    done = fdl("analyze", old / "run", "--model", f"{old / 'model.py'}:build", "--probe", old / "probe.npz",
               "--out", old / "run.h5", "--steps", "0,10", *SMALL)
    assert done.code == 0, done.stderr
    new = tmp_path / "b"
    shutil.copytree(old, new)
    return old, new


def test_a_moved_run_resumes_with_its_model_file_at_the_new_place(tmp_path: Path) -> None:
    """An artifact moved whole (the model file with it, byte for byte) was "a different run" to --overwrite,
    for the model file's new absolute path: the stored numbers could only be recomputed, not extended."""
    old, new = _moved_run(tmp_path)
    shutil.rmtree(old)
    resumed = fdl("analyze", new / "run", "--model", f"{new / 'model.py'}:build", "--probe", new / "probe.npz",
                  "--out", new / "run.h5", *SMALL)
    assert resumed.code == 0, resumed.stderr
    assert "different run" not in resumed.stderr
    assert "1 checkpoint analysed, 2 already in the store" in resumed.stderr
    for command in (("report",), ("classify",), ("export", "--what", "trajectories")):
        read = fdl(*command, new / "run.h5")
        assert read.code == 0 and "no longer exists" not in read.stderr, read.stderr


def test_a_copy_of_the_model_file_is_another_run_while_the_recorded_one_is_there(tmp_path: Path) -> None:
    """While the recorded model file exists, another file of the same bytes is another model (its folder's
    other modules may differ): refused as before, the fix naming the recorded file (it said --overwrite alone,
    as for other code)."""
    old, new = _moved_run(tmp_path)
    other = fdl("analyze", new / "run", "--model", f"{new / 'model.py'}:build", "--probe", new / "probe.npz",
                "--out", new / "run.h5", *SMALL)
    assert other.code == 1 and "different run" in other.stderr, other.stderr
    said = " ".join(other.stderr.split())
    assert f"a copy of {old / 'model.py'}, which the store was analysed with and which is still there" in said
    assert f"--model {old / 'model.py'}:build" in said
