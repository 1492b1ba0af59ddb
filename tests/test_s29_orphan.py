"""A rank of a torchrun job whose launcher is killed (SIGKILL: the OOM killer, a scheduler's hard kill) ends too.

torchrun starts each rank in a session of its own, so a SIGKILL of torchrun reached no rank: one waiting in a
collective (or to join the job, at the store torchrun itself served) waited for `FDL_TORCHRUN_TIMEOUT`, a week by
default, with no parent; one still working went on alone to that wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_distributed import REPO, _stored_steps
from tests.test_s16_rev import _children
from tests.test_s22_gloo import _job, _marked_once_stored, _resumed, _slow_run, _steps


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped by the process it was handed to, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a rank ends with its launcher on Linux only")
def test_the_ranks_of_a_torchrun_job_end_when_torchrun_is_killed(tmp_path: Path) -> None:
    """Rank 0 waits at the gather (its block committed), rank 1 is in a forward pass of 120 s; torchrun is SIGKILLed.
    Before, both lived on (rank 1 finished its checkpoint alone, rank 0 waited for it); now both end within seconds
    (60 s allowed: a bound on liveness, not a measure), and the stores hold what they had committed."""
    args = _slow_run(tmp_path)
    job = _job(tmp_path, args, SLOW_S="120")
    ranks: list[int] = []
    try:
        _marked_once_stored(tmp_path, job)
        ranks = _children(job.pid)
        assert len(ranks) == 2, ranks
        job.kill()
        job.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in ranks if _alive(pid)]
        assert not left, f"ranks {left} still running 60 s after torchrun was killed"
    finally:
        _kill_all(ranks)
        if job.poll() is None:
            job.kill()
            job.wait()
        if job.stderr is not None:
            job.stderr.close()
    assert _steps(tmp_path / "s.h5") == [0, 10, 20]  # rank 0's block, committed before it waited
    assert _stored_steps(tmp_path / "s.h5.rank-1") == [30, 40]
    _resumed(tmp_path, args)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a rank ends with its launcher on Linux only")
def test_a_rank_whose_launcher_ended_before_it_joined_says_so_and_ends(tmp_path: Path) -> None:
    """The launcher gone between the rank's start and its arming of the parent's death signal (which then never
    comes): the rank finds its parent changed, says why it stops, and ends by SIGTERM as a rank the launcher's
    death ends, before it waits to join the job."""
    script = (
        "import os, sys\n"
        "from fdl_cli import distributed, signals\n"
        "signals.own_process()\n"
        "signals.started_by = 999999999\n"  # the parent seen at the start, gone since
        "distributed.end_with_launcher(distributed.detect_world())\n"
        "print('still running', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
           "TORCHELASTIC_RUN_ID": "none"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(REPO),
                          timeout=60, start_new_session=True)  # a session of its own, as torchrun starts a rank
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "still running" not in done.stdout
    assert done.stderr.splitlines() == [
        "rank 1: the launcher that started this rank (pid 999999999, torchrun) has ended: this rank stops too"], \
        done.stderr
