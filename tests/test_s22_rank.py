"""A Ctrl-C of a torchrun job ends every rank, also one waiting for the others to join the process group.

Twenty-second session: a rank that had checked its inputs waited in `init_process_group` for the other
ranks, and one of them, still checking its own (importing the model file), was stopped by the Ctrl-C
torchrun hands every rank: it never came, and the waiting rank's Python handler could run only once the
wait ended (gloo's 30 minutes): torchrun SIGKILLed it 30 s later, and rank 0, when it was the one waiting,
never said "interrupted".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from tests import warm
from tests.test_distributed import REPO, _args, _make_run
from tests.test_s19_rank import _no_traceback_of_fdl

#: The bound of a safety net, far below gloo's 30 minutes and torchrun's 30 s before its SIGKILL.
EXITS_WITHIN_S = 20.0


@pytest.mark.parametrize(("rank", "said"), [(0, 1), (1, 0)], ids=["rank-0", "rank-1"])
def test_a_ctrl_c_ends_a_rank_waiting_for_a_rank_that_never_joins(tmp_path: Path, rank: int, said: int) -> None:
    """One rank of two, the other one never coming (as a rank a Ctrl-C stopped before it joined): this test holds
    the job's store as torchrun does, sees the rank wait in it, and hands it the Ctrl-C."""
    returncode, stderr = _signalled_while_joining(tmp_path, rank)
    assert returncode == 130, stderr[-4000:]
    assert stderr.splitlines().count("interrupted") == said, stderr[-4000:]  # rank 0 says it for the job
    _no_traceback_of_fdl(stderr)
    assert "Traceback" not in stderr, stderr[-4000:]
    assert not (tmp_path / "s.h5").exists()


def _signalled_while_joining(tmp_path: Path, rank: int, *, model: str = "tests.tiny_models:mlp",
                             signum: int = signal.SIGINT) -> tuple[int, str]:
    """Rank `rank` of two runs `fdl analyze` (`--model model`), joins the job's store this test holds, and is sent
    `signum` while it waits for the other rank, which never comes: its status and stderr (a failure when it has not
    exited within `EXITS_WITHIN_S`)."""
    run = _make_run(tmp_path / "run")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    before = store.num_keys()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    args = [model if arg == "tests.tiny_models:mlp" else arg for arg in _args(run, tmp_path / "s.h5")]
    job = warm.spawn([sys.executable, "-m", "fdl_cli", *args], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 120
        while store.num_keys() == before and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.poll() is None and store.num_keys() > before, job.communicate()  # it joined, and waits
        time.sleep(0.5)  # inside the wait for rank 1 - rank
        job.send_signal(signum)
        try:
            _, stderr = job.communicate(timeout=EXITS_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {rank} waiting for the process group did not exit within {EXITS_WITHIN_S} s of "
                        f"signal {signum}")
    finally:
        job.kill()
        job.wait()
    return job.returncode, stderr
