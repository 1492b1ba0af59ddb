"""Session 24's reliability review of bad and hostile inputs (tests/test_s24_err.py), each failing before its fix:

- a full disk met by HDF5 itself while a commit writes the store's copy (not by the copy or the fsync, which
  tests/test_store_background.py simulates): h5py raised a RuntimeError, then HDF5's failed close left its
  library in a state that printed dozens of "Exception ignored" tracebacks and could end the process by a
  segmentation fault. A commit now checks the free space of the store's folder before it copies anything;
- a trajectory dataset of a resumed store that cannot be appended to (rewritten by hand with h5py, or by a
  tool that stores datasets contiguous, `h5repack -l CONTI`): the append of the next checkpoint ended in
  h5py's TypeError "Only chunked datasets can be resized", a traceback, and lost the run's checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli import store as store_module
from tests.test_analyze import analyze, fdl, run  # noqa: F401 - `run` is the module's fixture


def _records(path: Path) -> list[dict]:
    done = fdl("report", path, "--format", "json")
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("how", ["contiguous", "float_steps"])
def test_a_resume_rewrites_trajectories_it_cannot_append_to(run: Path, tmp_path: Path, how: str) -> None:  # noqa: F811
    fresh = tmp_path / "fresh.h5"
    assert analyze(run, fresh).code == 0
    store = tmp_path / "run.h5"
    assert analyze(run, store, "--steps", "0,10,20").code == 0
    with h5py.File(store, "r+") as handle:
        series = handle["trajectories/probe/2:input"]
        for name in ("step", "d_lr"):
            values = series[name][()]
            del series[name]
            series[name] = values.astype(np.float64) if how == "float_steps" else values  # contiguous, fixed size
    done = analyze(run, store)
    assert done.code == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert [record["step"] for record in done.records] == [30]
    assert _records(store) == _records(fresh)
    with h5py.File(store, "r") as handle:
        steps = handle["trajectories/probe/2:input/step"]
        assert steps.dtype == np.int64 and steps.maxshape == (None,) and steps[()].tolist() == [0, 10, 20, 30]


def test_a_commit_on_a_full_disk_is_refused_before_hdf5_writes(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    store = tmp_path / "run.h5"
    assert analyze(run, store, "--steps", "0,10").code == 0
    before = store.read_bytes()
    real = os.statvfs
    size = len(before)

    class Full:
        """The store's folder with room for a copy of the store and no more (what HDF5 met on a tmpfs)."""

        def __init__(self, path: str | os.PathLike[str]) -> None:
            stats = real(path)
            self.f_frsize, self.f_bsize, self.f_blocks = 4096, 4096, stats.f_blocks
            self.f_bavail = self.f_bfree = (size + 8192) // 4096

    monkeypatch.setattr(store_module.os, "statvfs", Full)
    opened: list[str] = []
    real_file = h5py.File

    def file(name: str | os.PathLike[str], *args: object, **kwargs: object) -> h5py.File:
        opened.append(Path(name).name)
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(store_module.h5py, "File", file)
    done = analyze(run, store)
    assert done.code == 1
    assert "Traceback" not in done.stderr
    assert f"error: could not write {store} (the store on disk is unchanged)" in done.stderr
    assert "not enough free space" in done.stderr and "fix: free disk space" in done.stderr
    assert not [name for name in opened if ".tmp-" in name]  # refused before HDF5 wrote a copy
    assert done.records == []
    assert store.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.h5"]
