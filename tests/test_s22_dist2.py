"""What a torchrun job leaves when a rank is killed early, and what a join that times out says.

A rank killed (SIGKILL, the OOM killer) before its first commit left `RUN.h5.rank-K.json` and `RUN.h5.rank-K.lock`
(its part store's sidecar and lock) without a part store: no later run removed them, as it looks for part stores
only. A join of the process group that ran out of time told the user to resume from the part stores, of which
there are none at that point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from fdl_cli import distributed
from fdl_cli.distributed import World
from tests.test_analyze import fdl
from tests.test_distributed import _make_run
from tests.test_s19_rank import _no_traceback_of_fdl
from tests.test_s22_gloo import _ended, _ranks, _slow_run, _steps

ALL = [0, 10, 20, 30, 40, 50]


def _sidecars(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in tmp_path.glob("s.h5.rank-*"))


def test_a_rank_killed_before_its_first_commit_leaves_sidecars_that_the_next_run_removes(tmp_path: Path) -> None:
    """Rank 1 (block 30..50) killed on its first checkpoint: its part store was opened (sidecar written, lock taken)
    but holds nothing yet, so no part file exists. The same command, as one process, removes both."""
    args = _slow_run(tmp_path)
    with _ranks(tmp_path, args, SLOW_STEP="30", SLOW_S="120") as job:  # run directly: no agent's interpreters
        deadline = time.monotonic() + 120
        while not list((tmp_path / "marks").iterdir()) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        marks = list((tmp_path / "marks").iterdir())
        assert marks, _ended(job, 1)  # rank 1 is on the first checkpoint of its block
        os.kill(int(marks[0].name), signal.SIGKILL)
        stderr = _ended(job, within=60)
    _no_traceback_of_fdl(stderr)
    assert _sidecars(tmp_path) == ["s.h5.rank-1.json", "s.h5.rank-1.lock"], stderr[-4000:]
    again = fdl(*args)
    assert again.code == 0, again.stderr
    assert _steps(tmp_path / "s.h5") == ALL
    assert _sidecars(tmp_path) == []


def test_orphan_sidecars_are_removed_only_where_no_rank_holds_them_and_no_part_is_there(tmp_path: Path) -> None:
    """Rank 1's leftovers (sidecar, lock file, a copy of a commit by a process gone) are removed; rank 2's lock is
    held (a rank still running): kept; rank 3 has a part store: nothing of it is touched (a resume reads it);
    rank 4's `.json` is not one a rank wrote: kept."""
    from fdl_cli.sharding import _remove_orphan_sidecars, _write_rank_part_origin
    from fdl_cli.store import _WriterLock

    out = tmp_path / "s.h5"
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    for rank in (1, 2, 3):
        _write_rank_part_origin(tmp_path / f"s.h5.rank-{rank}", (0, "0" * 64), None)
        (tmp_path / f"s.h5.rank-{rank}.lock").write_text("{}")
    (tmp_path / f"s.h5.rank-1.tmp-{gone.pid}").write_bytes(b"half a copy")
    (tmp_path / "s.h5.rank-3").write_bytes(b"a part's data")
    (tmp_path / "s.h5.rank-4.json").write_text('{"mine": 1}')
    held = _WriterLock(tmp_path / "s.h5.rank-2")
    held.acquire()
    try:
        _remove_orphan_sidecars(out)
        assert _sidecars(tmp_path) == ["s.h5.rank-2.json", "s.h5.rank-2.lock", "s.h5.rank-3", "s.h5.rank-3.json",
                                       "s.h5.rank-3.lock", "s.h5.rank-4.json"]
    finally:
        held.release()
    assert (tmp_path / "s.h5.rank-3").read_bytes() == b"a part's data"
    assert (tmp_path / "s.h5.rank-4.json").read_text() == '{"mine": 1}'
    _remove_orphan_sidecars(out)  # rank 2's rank has ended
    assert _sidecars(tmp_path) == ["s.h5.rank-3", "s.h5.rank-3.json", "s.h5.rank-3.lock", "s.h5.rank-4.json"]


def test_overwrite_removes_a_killed_rank_s_part_with_its_lock_file(tmp_path: Path) -> None:
    """A rank killed after a commit left its part, sidecar and lock file: --overwrite removed the part and the sidecar
    unread, and left the lock file."""
    from fdl_cli.sharding import _write_rank_part_origin
    from tests.test_distributed import _resume

    run = _make_run(tmp_path / "run")
    part = tmp_path / "s.h5.rank-1"
    part.write_bytes(b"a killed rank's part")
    _write_rank_part_origin(part, (0, "0" * 64), None)
    (tmp_path / "s.h5.rank-1.lock").write_text("{}")
    summary, _, _ = _resume(run, tmp_path / "s.h5", resume=False)
    assert summary.analysed == [0, 10, 20, 30, 40, 50, 60]
    assert _sidecars(tmp_path) == []


# -- the wait to join the job ----------------------------------------------------------------------------


def test_a_join_that_times_out_says_the_other_ranks_never_arrived(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "it keeps what rank 0 stored and takes in ... part store": nothing is stored before the ranks have joined."""
    timed_out = "[../third_party/gloo/gloo/transport/tcp/pair.cc:1] Timed out waiting 2000ms for the store"
    error = distributed.wait_error(timed_out, "the other ranks to join the job", joining=True)
    assert error is not None and error.fix is not None
    assert error.fix.startswith("the other ranks never arrived: check that all WORLD_SIZE ranks were started and meet "
                                "at the same rendezvous (torchrun's --nnodes, --nproc-per-node and --rdzv-endpoint")
    assert "nothing was stored yet: run the same command again" in error.fix
    assert "FDL_TORCHRUN_TIMEOUT=SECONDS" in error.fix and "part store" not in error.fix
    closed = distributed.wait_error("[pair.cc:1] Connection closed by peer [::1]:1. GLHF!", "the other ranks to "
                                    "join the job", joining=True)
    assert closed is not None and closed.fix == ("see what that rank and torchrun said of it; then nothing was stored "
                                                  "yet: run the same command again")
    later = distributed.wait_error(timed_out, "the other ranks to finish their checkpoints")
    assert later is not None and later.fix is not None and "part store (STORE.rank-K)" in later.fix
    assert distributed.wait_error("Tensors must be contiguous", "the other ranks") is None

    # and that is what joining the process group says
    def join(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(timed_out)

    monkeypatch.setattr(dist, "init_process_group", join)
    monkeypatch.setattr(distributed, "_wait_s", distributed._wait_s)  # restored after the test
    monkeypatch.setenv("FDL_TORCHRUN_TIMEOUT", "2")
    with pytest.raises(distributed.WaitError) as caught:
        distributed.init_process_group(World(rank=1, size=2, local_rank=1), "cpu")
    assert caught.value.what == ("gave up after waiting 2 s for the other ranks to join the job (the longest a rank "
                                 "of a torchrun job waits, FDL_TORCHRUN_TIMEOUT)")
    assert caught.value.fix is not None and caught.value.fix.startswith("the other ranks never arrived")
