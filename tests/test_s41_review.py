"""Defects found by session 41's review of session 40's work (the store's low-level writers, compare's table
without the overlap column)."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests import test_report
from tests.cli_run import fdl_in_process
from tests.test_report import make_store


def _fixed_length_sha256(path: Path) -> None:
    """The trajectory's `sha256` rewritten as fixed-length strings, as a script or another tool may write it: it
    reads as ever."""
    with h5py.File(path, "a") as handle:
        group = handle["trajectories/train/fc1"]
        values = [text.encode() for text in group["sha256"].asstr()[()]]
        del group["sha256"]
        group.create_dataset("sha256", data=np.array(values, dtype="S64"), maxshape=(None,), chunks=(256,))


def test_a_resume_rewrites_a_fixed_length_string_trajectory_it_cannot_append_to(tmp_path: Path) -> None:
    """A str trajectory of fixed-length strings passed `_appendable` (h5py's `check_string_dtype` names those
    too), and HDF5 converts no variable-length string into one: every resume of such a store failed ("could not
    write run.h5 ... free disk space"). It is rewritten whole now, as a contiguous or float `step` is."""
    store = make_store(tmp_path / "run.h5", steps=(0, 100))
    _fixed_length_sha256(store)
    before = fdl_in_process("report", store, "--format", "csv")
    assert before.returncode == 0, before.stderr
    make_store(store, steps=(200,))  # a resume: step 200 appended to the trajectories
    after = fdl_in_process("report", store, "--format", "csv")
    assert after.returncode == 0, after.stderr
    rows = list(csv.DictReader(io.StringIO(after.stdout)))
    assert [(row["step"], row["sha256"]) for row in rows] == [(str(step), f"{step:064x}") for step in (0, 100, 200)]


def _rank_zero_entry(step: int, **kwargs: Any) -> Any:
    """test_report's series with no eigenfunction stored (features of rank 0 on the probe: a dead layer)."""
    entry = _ORIGINAL_ENTRY(step, **kwargs)
    return dataclasses.replace(entry, eigenvectors=np.zeros((8, 0)), eigenfunctions=np.zeros((test_report.N_PROBE, 0)))


_ORIGINAL_ENTRY = test_report._entry


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compare_says_why_the_overlap_is_measured_at_no_step(tmp_path: Path, fmt: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/usage.md: "where it is measured at no step (a note says why), the table has no column `overlap A·B`".
    Of two runs that store no eigenfunction at the matched steps, the column was left out and nothing said why
    (the `--json` had `"overlap": null` at every step, no note either)."""
    monkeypatch.setattr(test_report, "_entry", _rank_zero_entry)
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    done = fdl_in_process("compare", a, b, *(["--json"] if fmt == "json" else []))
    assert done.returncode == 0, done.stderr
    if fmt == "json":
        import json

        document = json.loads(done.stdout)
        assert [step["overlap"] for step in document["steps"]] == [None, None, None]
        said = " ".join(document["notes"])
    else:
        assert "overlap A·B" not in done.stderr
        said = " ".join(done.stderr.split())
    assert ("the cross-run overlap is not measured: the runs do not both hold eigenfunctions to compare at any of "
            "the 3 matched steps compared") in said
