"""Part stores of torchrun jobs read, checked and kept while another process writes the same part
(`fdl_cli/sharding.py`, `_take_in_rank_parts`), after `tests/test_s23_race.py`.

A resume read a part's `.json` sidecar (the files its rank compared its block with) before it took the part's lock; a
rank of another job on the same --out (its rank 0 gone) could write the part and its sidecar afresh in between, and the
take-in then checked the new part's checkpoints against the old sidecar: taken in, although computed from other files.
A part its rank removed between the listing and the lock was warned of as "left as it is" and kept; and --overwrite
warned of a part it keeps (a rank still writes it) in the resume's words, "remove it if it is not needed".
Each test puts the other writer where the lock is free, with separate file descriptors in this process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fdl_cli import sharding
from fdl_cli.store import _WriterLock
from tests.test_distributed import _part_with, _resume
from tests.test_s22_dist2 import _sidecars
from tests.test_s23_race import _OtherRank, _reference, stored  # noqa: F401 - `stored`: the fixture

#: a reference file that this run's is not: what the other job's rank compared its block with
OTHER_REFERENCE = (0, "f" * 64)


def test_a_part_is_checked_against_the_sidecar_read_under_its_lock(
    stored: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A killed job's part holds step 10, compared with this run's step 0 (its sidecar says so): a resume takes it in.
    Between the resume's reading of that sidecar and its taking the part's lock, a rank of another job (another
    reference file) writes part 1 afresh, sidecar and all, and ends. The take-in checks the part it holds against the
    sidecar beside it now: step 10, computed from another reference, is analysed again, not taken in."""
    run, full = stored
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _part_with(full, out, [0])
    _part_with(full, part, [10])
    sharding._write_rank_part_origin(part, _reference(run), _reference(run))  # as the killed job's rank wrote it
    others: list[Path] = []
    acquire = _WriterLock.acquire

    def other_job_then_acquire(lock: _WriterLock) -> None:
        if lock.store == part and not others:
            others.append(part)  # once: the other rank takes this lock too
            _OtherRank(full, part, OTHER_REFERENCE).close()  # it ends (its rank 0 gone: the part is left)
        acquire(lock)

    monkeypatch.setattr(_WriterLock, "acquire", other_job_then_acquire)
    summary, _, reporter = _resume(run, out, steps=(0, 10))
    assert len(others) == 1
    assert summary.analysed == [10] and summary.already == [0], (summary.analysed, summary.already, reporter.notes)
    assert not any("were added to s.h5" in note for note in reporter.notes), reporter.notes
    assert _sidecars(tmp_path) == []  # its one checkpoint is of another reference's run: the part has served


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "overwrite"])
def test_a_part_that_its_rank_removes_before_the_lock_is_taken_is_no_warning(
    stored: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume: bool  # noqa: F811
) -> None:
    """Between the resume's finding part 1 and its taking the part's lock, the rank that wrote it (its job's rank 0 has
    stored its checkpoint and closed the store) removes it, holding the lock. The resume finds nothing to take in and
    says nothing of the part (it warned that the part, gone, "was left as it is"); nor is it kept (which kept this
    job's rank 1 from opening a part of its own). --overwrite, which removes parts unread, says nothing either."""
    run, full = stored
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _part_with(full, out, [0, 10])
    _part_with(full, part, [10])
    sharding._write_rank_part_origin(part, _reference(run), _reference(run))
    served = [sharding._file_identity(part)]
    acquire = _WriterLock.acquire

    def rank_ends_then_acquire(lock: _WriterLock) -> None:
        if lock.store == part and served:
            sharding._remove_served_part(part, served.pop())  # takes the lock itself
        acquire(lock)

    monkeypatch.setattr(_WriterLock, "acquire", rank_ends_then_acquire)
    summary, _, reporter = _resume(run, out, steps=(0, 10), resume=resume)
    assert not served
    assert sorted(summary.already if resume else summary.analysed) == [0, 10]
    assert not any("rank-1" in message for message in [*reporter.warnings, *reporter.notes]), reporter.warnings
    assert _sidecars(tmp_path) == []


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_kept_part_says_why_and_what_to_do(stored: tuple[Path, Path], tmp_path: Path, resume: bool) -> None:  # noqa: F811
    """--overwrite and a resume's take-in keep a part whose lock a rank still running holds. The warning says so in
    its own words (both read "left as it is ...; remove it if it is not needed", inviting removal of a part being written):
    what (kept), why (another fdl process, probably a rank of another torchrun job, is writing it: which one) and what
    to do (wait for it to end, or stop it, then run again)."""
    run, full = stored
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    other = _OtherRank(full, part, _reference(run))
    try:
        _, _, reporter = _resume(run, out, steps=(0, 10), resume=resume)
    finally:
        other.close()
    about = [warning for warning in reporter.warnings if str(part) in warning]
    assert len(about) == 1, reporter.warnings
    assert about[0].startswith(
        f"{part} is kept: another fdl process is writing it, probably a rank of another torchrun job on this --out: "
        f"pid {os.getpid()} on host "
    ), about
    assert about[0].endswith("; wait for that process to end, or stop it, then run again"), about
    assert "remove it" not in about[0]
