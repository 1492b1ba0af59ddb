"""What a resume reads of a run copied with its files' times, now that another folder's file under a stored
checkpoint's recorded name is hashed whatever its size and time (tests/test_s30_ci.py, docs/store.md "Changed
files"): the copy resumes, hashing the stored files at each resume while the original is still there, and saying
why; once the original is gone it is compared by size and time again, not hashed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_analyze import fdl
from tests.test_s28_relpath import MODEL, SMALL
from tests.test_s29_rev1 import _run

NOTE = ("note: hashing 3 stored checkpoint files whose recorded path names a file in another folder (this run's is "
        "the same name there), to check they are the files that were analysed")


def _analyze_here() -> tuple[int, str]:
    """`fdl analyze run --out ../s.h5` in this process, from the current folder."""
    done = fdl("analyze", "run", "--model", MODEL, "--probe", "../probe.npz", "--out", "../s.h5", *SMALL)
    return done.code, done.stderr


def test_a_copy_with_its_times_is_hashed_at_each_resume_while_the_original_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, copy = tmp_path / "a", tmp_path / "c"
    _run(original, 0)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    monkeypatch.chdir(original)
    code, err = _analyze_here()
    assert code == 0, err
    shutil.copytree(original, copy)  # each file with its size and modification time, as `cp -a` copies it
    monkeypatch.chdir(copy)
    for _ in range(2):  # the store still names a's files: hashed again, and said so, at every resume
        code, err = _analyze_here()
        assert code == 0, err
        assert NOTE in " ".join(err.split()), err
        assert "0 checkpoints analysed, 3 already in the store" in err, err
    shutil.rmtree(original)  # the recorded path now names the copy's file: its size and time tell
    code, err = _analyze_here()
    assert code == 0, err
    assert "hashing" not in err and "0 checkpoints analysed, 3 already in the store" in err, err
