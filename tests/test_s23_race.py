"""Part stores of torchrun jobs removed while another process writes the same part (`fdl_cli/sharding.py`).

Three removals of `RUN.h5.rank-K` (and its `.json` sidecar) did not hold the part's lock: a resume's take-in removed a
part it had taken in just after releasing the part's lock (`_take_in_rank_parts`), a rank at its end removed its own
part after comparing the file's identity, without the lock (`_remove_served_part`), and `--overwrite` removed parts
unread without the lock at all. A rank that writes part K (a rank of another job on the same --out, left running by a
rank 0 that is gone) holds that lock while it writes both files: a removal falling after the release, or between the
identity check and the unlink, deleted that rank's new part and sidecar (its checkpoints no longer durable; a part
left without its sidecar is never taken in). Each test puts the other writer at the point where the lock is free.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdl_cli import sharding
from fdl_cli.checkpoints import sha256_file
from fdl_cli.store import StoreLockedError, StoreReader, StoreWriter, _WriterLock
from tests.test_distributed import _make_run, _part_with, _resume, _single
from tests.test_s22_dist2 import _sidecars


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A run and a store of its steps 0 and 10."""
    root = tmp_path_factory.mktemp("race")
    run = _make_run(root / "run")
    _single(run, root / "full.h5", steps=(0, 10))
    yield run, root / "full.h5"


class _OtherRank:
    """A rank of another job on the same --out writing part K: its part store opened (the part's lock), the sidecar
    written, one checkpoint committed; `close()` as the rank does at the end of its block."""

    def __init__(self, full: Path, part: Path, reference: tuple[int, str]) -> None:
        with StoreReader(full) as reader:
            entry, provenance, probes = reader.entry(10), reader.provenance, list(reader.probes().values())
        self.part = part
        self.writer = StoreWriter(part, provenance=provenance, probes=probes, overwrite=True)
        sharding._write_rank_part_origin(part, reference, None)
        self.writer.add(entry)
        self.writer.flush()
        self.identity = sharding._file_identity(part)

    def close(self) -> None:
        self.writer.close()


def _reference(run: Path) -> tuple[int, str]:
    return 0, sha256_file(run / "step_0.safetensors")


def test_a_part_taken_in_is_removed_before_its_lock_is_released(
    stored: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume takes in a killed job's part (its step 10 is stored already: the part has served) and releases the
    part's lock; another rank opens part 1 afresh at once and commits. Its part and sidecar stay (the take-in's
    removal came after the release, and deleted both)."""
    run, full = stored
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    shutil.copyfile(full, out)
    _part_with(full, part, [10])
    sharding._write_rank_part_origin(part, _reference(run), None)
    others: list[_OtherRank] = []
    release = _WriterLock.release

    def release_then_write(lock: _WriterLock) -> None:
        held = lock._fd is not None
        release(lock)
        if held and lock.store == part and not others:
            others.append(_OtherRank(full, part, _reference(run)))

    monkeypatch.setattr(_WriterLock, "release", release_then_write)
    try:
        summary, _, _ = _resume(run, out, steps=(0, 10))
        assert len(others) == 1
        assert sorted(summary.already) == [0, 10]
        assert part.exists() and sharding._file_identity(part) == others[0].identity  # the other rank's part
        assert sharding._is_rank_part_origin(sharding._rank_part_origin(part))  # and its sidecar
    finally:
        for other in others:
            other.close()
    assert _sidecars(tmp_path) == ["s.h5.rank-1", "s.h5.rank-1.json"]


def test_overwrite_leaves_a_part_that_a_running_rank_writes(stored: tuple[Path, Path], tmp_path: Path) -> None:
    """--overwrite removes a killed job's parts unread; one whose lock a rank still running holds is left, with a
    warning naming it (it was removed under that rank), and taken in or removed by a later run."""
    run, full = stored
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    other = _OtherRank(full, part, _reference(run))
    try:
        summary, _, reporter = _resume(run, out, steps=(0, 10), resume=False)
        assert summary.analysed == [0, 10]
        assert part.exists() and sharding._file_identity(part) == other.identity
        assert sharding._is_rank_part_origin(sharding._rank_part_origin(part))
        assert any(str(part) in warning and "another fdl process" in warning for warning in reporter.warnings), (
            reporter.warnings)
    finally:
        other.close()
    summary, _, _ = _resume(run, out, steps=(0, 10))  # that rank has ended: its part has served
    assert sorted(summary.already) == [0, 10]
    assert _sidecars(tmp_path) == []


def test_a_rank_removes_its_served_part_only_holding_its_lock(
    stored: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank at its end: its part's identity checked, then another job's resume takes the part in (removing it,
    under its lock) and that job's rank 1 writes part 1 afresh, all before the first rank's removal. The other
    rank's part and sidecar stay; holding the lock while it checks and removes, the first rank keeps the other job
    off until its own part is gone."""
    run, full = stored
    part = tmp_path / "s.h5.rank-1"
    mine = _OtherRank(full, part, _reference(run))
    mine.close()
    identity = sharding._file_identity(part)
    others: list[_OtherRank] = []
    refused: list[str] = []
    check = sharding._file_identity

    def check_then_other_job(path: Path) -> tuple[int, ...]:
        seen = check(path)
        if path == part and not others and not refused:
            lock = _WriterLock(part)  # the other job's take-in, removing the part holding its lock
            try:
                lock.acquire()
                sharding._remove_rank_part(part)
                lock.release()
                others.append(_OtherRank(full, part, _reference(run)))
                others[0].close()
            except StoreLockedError as exc:
                refused.append(exc.message)
        return seen

    monkeypatch.setattr(sharding, "_file_identity", check_then_other_job)
    sharding._remove_served_part(part, identity)
    if others:
        assert part.exists() and check(part) == others[0].identity
        assert sharding._is_rank_part_origin(sharding._rank_part_origin(part))
    else:
        assert refused and not part.exists()  # the other job found the lock held: this rank's part is gone
    assert refused, "the rank checked its part's identity without holding the part's lock"
    assert _sidecars(tmp_path) == []
