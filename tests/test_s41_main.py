"""Forty-first session, the lead's own fixes."""
from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli.store import _write_error
from tests import test_report
from tests.cli_run import fdl_in_process
from tests.test_report import make_store


def test_a_write_error_that_is_not_a_refusal_does_not_blame_the_disk(tmp_path: Path) -> None:
    store, tmp = tmp_path / "run.h5", tmp_path / "run.h5.tmp"
    hdf5 = OSError("Can't synchronously write data (no appropriate function for conversion path)")
    error = _write_error(store, tmp, hdf5, fresh=False)
    assert error.what == f"could not write {store} (the store on disk is unchanged)"
    assert error.got == "OSError: Can't synchronously write data (no appropriate function for conversion path)"
    assert error.fix is not None and "disk space" not in error.fix
    assert error.fix.startswith("choose another --out (a new store), then run again (finished checkpoints are kept)")
    # a refusal the system names keeps its own fix
    full = _write_error(store, tmp, OSError(errno.ENOSPC, "No space left on device"), fresh=True)
    assert full.fix == "free disk space or choose another --out, then run again"


def _rank_zero_at_last(step: int, **kwargs: Any) -> Any:
    """test_report's series, with no eigenfunction stored at its last step (features of rank 0 there)."""
    entry = _ORIGINAL_ENTRY(step, **kwargs)
    if step != test_report.STEPS[-1]:
        return entry
    return dataclasses.replace(entry, eigenvectors=np.zeros((8, 0)), eigenfunctions=np.zeros((test_report.N_PROBE, 0)))


_ORIGINAL_ENTRY = test_report._entry


def test_compare_names_the_steps_where_a_computed_overlap_has_no_value(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The table showed "—" alike at a step --overlap-steps left out and at one where the overlap cannot be
    computed, with no word for the second; and "last" in the overlap line was the last value, not the last step."""
    monkeypatch.setattr(test_report, "_entry", _rank_zero_at_last)
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    first, last = test_report.STEPS[0], test_report.STEPS[-1]
    done = fdl_in_process("compare", a, b)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    n = len(test_report.STEPS)
    assert (f"note: the cross-run overlap is not measured at 1 step of the {n} it was computed at ({last}): the runs "
            "do not both hold eigenfunctions (a run whose features have rank 0 on the probe stores none)") in said
    line = next(line for line in done.stderr.splitlines() if line.startswith("eigenspace overlap A·B"))
    assert line.endswith(f" at step {test_report.STEPS[-2]}"), line
    # JSON: the same note, and the step computed there with no value
    document = json.loads(fdl_in_process("compare", a, b, "--json").stdout)
    assert any(note.startswith("the cross-run overlap is not measured at 1 step") for note in document["notes"])
    assert [(s["overlap_computed"], s["overlap"] is None) for s in document["steps"]][-1] == (True, True)
    assert first in {s["step_a"] for s in document["steps"]}
