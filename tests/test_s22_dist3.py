"""A rank's part sidecar and another job's cleanup of orphan sidecars (`_remove_orphan_sidecars`).

A rank wrote `RUN.h5.rank-K.json` before it took its part's lock: a cleanup falling between the two removed the
sidecar of a part about to be written, which was then kept for good as "named like a part". And the sidecar's copy
under way, `RUN.h5.rank-K.json.tmp`, left by a rank killed while writing it, was never removed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from fdl_cli import sharding
from tests.test_s22_dist2 import _sidecars


def _locked(lock: Path) -> bool:
    """Whether some descriptor holds the flock of `lock` (a non-blocking one from another descriptor fails)."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases ours, if it was taken
    return False


def test_a_rank_writes_its_sidecar_holding_its_part_s_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cleanup of another job right after the sidecar is written finds the part's lock held and leaves the sidecar;
    the part itself appears only with its first commit, as before."""
    out = tmp_path / "s.h5"
    part = tmp_path / "s.h5.rank-1"
    write = sharding._write_rank_part_origin
    held: list[bool] = []

    def write_then_clean_up(*args: object) -> None:
        write(*args)  # type: ignore[arg-type]
        held.append(os.path.exists(tmp_path / "s.h5.rank-1.lock") and _locked(tmp_path / "s.h5.rank-1.lock"))
        sharding._remove_orphan_sidecars(out)  # another job's rank 0, on the same store

    monkeypatch.setattr(sharding, "_write_rank_part_origin", write_then_clean_up)
    monkeypatch.setattr(sharding, "_probe_infos", lambda ctx: [])
    monkeypatch.setattr(sharding, "invocation", lambda ctx: None)
    ctx = SimpleNamespace(world=SimpleNamespace(rank=1), options=SimpleNamespace(min_commit_interval=0.0))
    writer = sharding._open_rank_part(ctx, out, {}, (0, "0" * 64), None)  # type: ignore[arg-type]
    assert writer is not None
    try:
        assert held == [True]
        assert not part.exists()  # no part before its first commit
        assert sharding._is_rank_part_origin(tmp_path / "s.h5.rank-1.json")
    finally:
        writer.close()
    assert _sidecars(tmp_path) == ["s.h5.rank-1.json"]  # nothing given: no part, the lock file gone


def test_a_killed_rank_s_copy_of_its_sidecar_is_removed_only_where_no_rank_holds_the_lock(tmp_path: Path) -> None:
    """Rank 1 was killed while writing its sidecar (half of it written), rank 2 just before (an empty copy): both
    copies are removed; rank 3's lock is held (a rank writing it now): kept, until that rank has ended; rank 4's
    `.json.tmp` is not a rank's: kept."""
    from fdl_cli.store import _WriterLock

    out = tmp_path / "s.h5"
    (tmp_path / "s.h5.rank-1.json.tmp").write_text('{"reference": [0, "00')
    (tmp_path / "s.h5.rank-2.json.tmp").write_text("")
    (tmp_path / "s.h5.rank-3.json.tmp").write_text('{"refer')
    (tmp_path / "s.h5.rank-4.json.tmp").write_text("my notes")
    held = _WriterLock(tmp_path / "s.h5.rank-3")
    held.acquire()
    try:
        sharding._remove_orphan_sidecars(out)
        assert _sidecars(tmp_path) == ["s.h5.rank-3.json.tmp", "s.h5.rank-3.lock", "s.h5.rank-4.json.tmp"]
    finally:
        held.release()
    sharding._remove_orphan_sidecars(out)  # rank 3's rank has ended
    assert _sidecars(tmp_path) == ["s.h5.rank-4.json.tmp"]
    assert (tmp_path / "s.h5.rank-4.json.tmp").read_text() == "my notes"
