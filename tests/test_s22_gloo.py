"""How long a rank of a torchrun job waits for the others, and what it says when a wait ends badly.

Twenty-second session: the process group had torch's default timeout (30 minutes for gloo, 10 for nccl), so
a rank done with its block 30 minutes before another (checkpoints of other sizes, a slow disk, rank 0 also
writing the store) failed in the gather at the end of a long run, with gloo's RuntimeError traceback, and
torchrun ended the rank still working. A rank waits a week now (`FDL_TORCHRUN_TIMEOUT` sets it), a wait that
runs out or a rank that stopped is an error that says what and how to resume, and a collective failing on
the way out of a Ctrl-C no longer replaces the interrupt with a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fdl_cli import distributed, signals
from fdl_cli.distributed import World
from fdl_cli.errors import FdlError
from fdl_cli.store import StoreReader
from tests import warm
from tests.cli_run import model_file
from tests.ranks import spawn, torchrun
from tests.test_analyze import fdl
from tests.test_distributed import REPO, _args, _make_run, _stored_steps
from tests.test_s16_rev import _children
from tests.test_s19_rank import _no_traceback_of_fdl

RANK0 = World(rank=0, size=2, local_rank=0)

# -- the wait's bound ------------------------------------------------------------------------------------


def test_a_rank_waits_a_week_unless_told_otherwise() -> None:
    assert distributed.wait_seconds({}) == 7 * 24 * 3600
    assert distributed.wait_seconds({"FDL_TORCHRUN_TIMEOUT": " 90.5 "}) == 90.5
    for bad in ("0", "-3", "soon", "inf", "nan"):
        with pytest.raises(FdlError) as caught:
            distributed.wait_seconds({"FDL_TORCHRUN_TIMEOUT": bad})
        assert caught.value.what == "FDL_TORCHRUN_TIMEOUT is not a number of seconds > 0"
        assert caught.value.got == f"FDL_TORCHRUN_TIMEOUT={bad!r}"
        assert caught.value.alike == "machine"  # the launcher's environment: said once per machine


def _failing(monkeypatch: pytest.MonkeyPatch, name: str, message: str) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(dist, name, fail)


def test_a_wait_that_runs_out_is_an_error_that_says_what_this_rank_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing(monkeypatch, "gather_object", "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
             "unbound_buffer.cc:81] Timed out waiting 604800000ms for recv operation to complete")
    with pytest.raises(FdlError) as caught:
        distributed.gather_to_writer(["entries"], RANK0, "the other ranks to finish their checkpoints")
    assert caught.value.what == ("gave up after waiting 7 days for the other ranks to finish their checkpoints (the "
                                 "longest a rank of a torchrun job waits, FDL_TORCHRUN_TIMEOUT)")
    assert caught.value.got == "Timed out waiting 604800000ms for recv operation to complete"
    assert caught.value.fix is not None and "run the same command again" in caught.value.fix
    assert "FDL_TORCHRUN_TIMEOUT=SECONDS" in caught.value.fix
    assert caught.value.alike == ""  # this rank's own: said naming it


def test_a_rank_that_stopped_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing(monkeypatch, "broadcast_object_list", "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
             "pair.cc:553] Connection closed by peer [127.0.0.1]:35490. This is typically caused by a remote worker "
             "crashing. Check the logs of the remote worker before reporting an error. GLHF!")
    with pytest.raises(FdlError) as caught:
        distributed.broadcast_from_writer(None, World(rank=1, size=2, local_rank=1), "rank 0 to open the store")
    assert caught.value.what.startswith("lost the connection to another rank while waiting for rank 0 to open the "
                                        "store: that rank stopped")
    assert caught.value.got == "Connection closed by peer [127.0.0.1]:35490"


def test_another_backend_error_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing(monkeypatch, "all_gather_object", "Tensors must be contiguous")
    with pytest.raises(RuntimeError, match="^Tensors must be contiguous$"):
        distributed.all_gather(1, RANK0)


def test_a_collective_failing_on_the_way_out_of_a_ctrl_c_leaves_the_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 interrupted while it opened the store still tells the other ranks (sharding's status broadcast, in a
    `finally`): a rank gone already made the broadcast raise gloo's error, which replaced the interrupt (a
    traceback, status 1, instead of "interrupted" and 130)."""
    _failing(monkeypatch, "broadcast_object_list", "[pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    interrupt = signals.Interrupted()
    with pytest.raises(KeyboardInterrupt) as caught:
        try:
            raise interrupt
        finally:
            distributed.broadcast_from_writer(("error", "rank 0 stopped while opening the store", []), RANK0)
    assert caught.value is interrupt


# -- under torchrun --------------------------------------------------------------------------------------

#: rank $SLOW_RANK, at the checkpoint whose `marker` is $SLOW_STEP, marks itself in $FDL_TEST_MARKS (its pid)
#: and takes $SLOW_S seconds; with $HOLD_STEP, rank 0 at that checkpoint waits (up to 120 s) until the store
#: $HOLD_STORE holds the steps $HOLD_STEPS (comma-separated)
SLOW = """
import os
import time
from pathlib import Path

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("marker", torch.zeros(()))

    def forward(self, x):
        rank = os.environ.get("RANK")
        if rank is not None and rank == os.environ.get("SLOW_RANK") and int(self.marker) == int(os.environ["SLOW_STEP"]):
            Path(os.environ["FDL_TEST_MARKS"], str(os.getpid())).touch()
            time.sleep(float(os.environ["SLOW_S"]))
        if rank == "0" and os.environ.get("HOLD_STEP") and int(self.marker) == int(os.environ["HOLD_STEP"]):
            from fdl_cli.store import StoreReader

            wanted = [int(step) for step in os.environ["HOLD_STEPS"].split(",")]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    with StoreReader(os.environ["HOLD_STORE"]) as reader:
                        if reader.steps() == wanted:
                            break
                except Exception:  # not written yet
                    pass
                time.sleep(0.1)
        return self.head(torch.relu(self.hidden(x)))


def build():
    return Net()
"""


def _slow_run(tmp_path: Path) -> list[str]:
    """Six checkpoints (steps 0..50: rank 0's block 0..20, rank 1's 30..50); `fdl analyze`'s arguments."""
    net = model_file(tmp_path, SLOW).build()
    (tmp_path / "ckpts").mkdir()
    for step in range(0, 60, 10):
        net.marker.fill_(step)
        torch.save(net.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
        with torch.no_grad():
            net.hidden.weight.mul_(1.2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(100, 4)).astype(np.float32), y=rng.integers(0, 3, 100))
    (tmp_path / "marks").mkdir()
    return ["analyze", str(tmp_path / "ckpts"), "--model", f"{tmp_path / 'model.py'}:build", "--probe",
            str(tmp_path / "probe.npz"), "-o", str(tmp_path / "s.h5"), "--device", "cpu", "--commit-interval", "0"]


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The slow model's settings: rank 1 slow on step 50, marks in tmp_path/marks."""
    return {"FDL_TEST_MARKS": str(tmp_path / "marks"), "SLOW_RANK": "1", "SLOW_STEP": "50", **env}


def _job(tmp_path: Path, args: list[str], **env: str) -> warm.WarmProcess:
    """The job under torchrun's agent, for a test of a Ctrl-C it hands the ranks or of how it notices one killed."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               **_env(tmp_path, **env)}
    return warm.spawn(  # SIGINT as from a terminal: a warm child takes it as Python does, whatever was inherited
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fdl_cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environ, cwd=str(REPO),
    )


@contextlib.contextmanager
def _ranks(tmp_path: Path, args: list[str], **env: str) -> Iterator[Any]:
    """The job's two ranks run directly and left running (tests/ranks.py's `spawn`: the agent's part, the other
    rank stopped once one failed, played by the test), for a test of what the ranks do when one of them is killed:
    without the agent's two fresh interpreters that import torch. Leaving the block kills the ranks still running."""
    with spawn("-m", "fdl_cli", *args, env=_env(tmp_path, **env)) as job:
        yield job


def _direct(tmp_path: Path, args: list[str], within: float, **env: str) -> str:
    """The job's stderr, its two ranks run directly (tests/ranks.py), once it ended (within `within` s, or the test
    fails and the ranks are killed)."""
    try:
        return torchrun("-m", "fdl_cli", *args, direct=True, env=_env(tmp_path, **env), timeout=within).stderr
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job did not end within {within} s")


def _ended(job: Any, within: float) -> str:
    """The job's stderr, once it ended (within `within` s, or the test fails and the ranks are killed); `job` under
    torchrun's agent (`_job`) or its ranks run directly (`_ranks`)."""
    try:
        if not isinstance(job, warm.WarmProcess):
            job.wait(within)
            return str(job.output()[1])
        return job.communicate(timeout=within)[1]
    except subprocess.TimeoutExpired:
        if not isinstance(job, warm.WarmProcess):
            job.kill()
            pytest.fail(f"the job did not end within {within} s")
        for pid in _children(job.pid):
            os.kill(pid, signal.SIGKILL)
        job.kill()
        job.wait()
        pytest.fail(f"the job did not end within {within} s")


def _steps(out: Path) -> list[int]:
    with StoreReader(out) as reader:
        return sorted(record["step"] for record in reader.records())


def _resumed(tmp_path: Path, args: list[str]) -> None:
    """The same command, as one process: rank 1's part store taken in, every checkpoint stored, no part left."""
    again = fdl(*args)
    assert again.code == 0, again.stderr
    assert "2 checkpoints that a rank of an interrupted torchrun job stored in s.h5.rank-1 were added" in again.stderr
    assert _steps(tmp_path / "s.h5") == [0, 10, 20, 30, 40, 50]
    assert not (tmp_path / "s.h5.rank-1").exists()


def test_a_wait_that_runs_out_under_torchrun_says_so_and_the_same_command_resumes(tmp_path: Path) -> None:
    """Rank 1 still on its last checkpoint when rank 0's wait at the gather runs out (5 s here, a week by default):
    before, torch's 30 minutes applied whatever FDL_TORCHRUN_TIMEOUT said (and their end was a traceback). The wait
    is the test's idle time: 5 s, as the ranks need it only to join and for rank 0 to open the store, both started
    together (the hold below keeps rank 0 out of the gather until rank 1's part holds what the resume asserts).

    Rank 0 holds its last checkpoint until rank 1's part store holds steps 30 and 40, which the resume takes in: its
    wait began as soon as its own block was done, and on a busy machine ran out before the writer's throttle (10 x
    a commit's duration) let rank 1 commit step 40, killed with the job."""
    args = _slow_run(tmp_path)
    began = time.monotonic()
    stderr = _direct(tmp_path, args, 100, FDL_TORCHRUN_TIMEOUT="5", SLOW_S="120", HOLD_STEP="20",
                     HOLD_STORE=str(tmp_path / "s.h5.rank-1"), HOLD_STEPS="30,40")
    assert time.monotonic() - began < 100
    assert ("error on rank 0: gave up after waiting 5 s for the other ranks to finish their checkpoints (the longest "
            "a rank of a torchrun job waits, FDL_TORCHRUN_TIMEOUT)") in stderr.splitlines(), stderr[-4000:]
    assert "  got: Timed out waiting 5000ms for " in stderr
    _no_traceback_of_fdl(stderr)
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr
    assert _steps(tmp_path / "s.h5") == [0, 10, 20]  # rank 0's block, committed before it waited
    _resumed(tmp_path, args)


def _marked_once_stored(tmp_path: Path, job: Any) -> list[Path]:
    """Rank 1's mark (it is on its last checkpoint, step 50), once the store holds rank 0's block and rank 1's part
    store its checkpoints before the last: what a resume takes in. Rank 1 moves on to step 50 as soon as step 40 is
    analysed, and its part commits step 40 only once the writer's throttle allows (10 x a commit's duration, seconds
    on a busy machine): a stop at rank 1's mark alone lost step 40 (killed) or rank 0's step 20 (still analysed)."""
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        marks = list((tmp_path / "marks").iterdir())
        if marks and _stored_steps(tmp_path / "s.h5") == [0, 10, 20] and _stored_steps(tmp_path / "s.h5.rank-1") == [
                30, 40]:
            return marks  # rank 0 has committed its block: it is at the gather, or about to be
        time.sleep(0.1)
    pytest.fail(f"rank 0's block and rank 1's first two checkpoints were not stored: {_ended(job, 1)[-4000:]}")


@pytest.mark.parametrize("stop", ["ctrl-c", "sigkill"])
def test_a_rank_waiting_in_a_collective_ends_at_once_when_the_job_is_stopped(tmp_path: Path, stop: str) -> None:
    """The week-long wait keeps a Ctrl-C prompt (the interrupted rank's exit closes its connections) and a rank
    killed (SIGKILL: the OOM killer) is noticed at once; rank 0, waiting at the gather, said a gloo traceback then."""
    args = _slow_run(tmp_path)
    # a Ctrl-C reaches torchrun's agent, which hands it to the ranks; a rank killed is the ranks' own (rank 0 notices
    # the lost connection, or the agent's SIGTERM ends it): run directly, the test playing the agent's part
    with _ranks(tmp_path, args, SLOW_S="120") if stop == "sigkill" else contextlib.nullcontext(
            _job(tmp_path, args, SLOW_S="120")) as job:
        marks = _marked_once_stored(tmp_path, job)
        began = time.monotonic()
        if stop == "ctrl-c":
            job.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C reaches
        else:
            os.kill(int(marks[0].name), signal.SIGKILL)
        stderr = _ended(job, within=60)
    # not torchrun's 30 s before its SIGKILL; on a machine at load 16 on 2 cores a prompt end took 11 s (torchrun
    # and the ranks ending), so the bound is under the 30 s but not at 10 s
    assert time.monotonic() - began < 25, stderr[-4000:]
    _no_traceback_of_fdl(stderr)
    assert "[rank0]: Traceback" not in stderr, stderr[-4000:]
    if stop == "ctrl-c":
        assert stderr.splitlines().count("interrupted: what was completed is in the store; run the same command "
                                         "again to resume") == 1, stderr[-4000:]
    else:
        # rank 0 said it, unless torchrun's SIGTERM ended it first
        said = [line for line in stderr.splitlines() if line.startswith("error")]
        assert said in ([], ["error on rank 0: lost the connection to another rank while waiting for the other ranks "
                             "to finish their checkpoints: that rank stopped (killed, out of memory, or its machine "
                             "went down)"]), stderr[-4000:]
    assert _steps(tmp_path / "s.h5") == [0, 10, 20]
    _resumed(tmp_path, args)


def test_a_rank_waiting_for_one_that_never_joins_gives_up_when_told(tmp_path: Path) -> None:
    """Rank 1 alone, holding the job's store as torchrun does: it waited torch's 30 minutes, whatever
    FDL_TORCHRUN_TIMEOUT said."""
    run = _make_run(tmp_path / "run")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True", "FDL_TORCHRUN_TIMEOUT": "2"}
    try:
        done = warm.run([sys.executable, "-m", "fdl_cli", *_args(run, tmp_path / "s.h5")], env=env, cwd=REPO,
                        timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("rank 1 waited on for the rank that never joined")
    assert done.returncode == 1, done.stderr[-4000:]
    assert ("error on rank 1: gave up after waiting 2 s for the other ranks to join the job (the longest a rank of a "
            "torchrun job waits, FDL_TORCHRUN_TIMEOUT)") in done.stderr.splitlines(), done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.h5").exists()


def test_under_shard_probe_a_wait_that_runs_out_stops_the_rank_there(tmp_path: Path) -> None:
    """Every rank takes every checkpoint: rank 0's wait for rank 1's slice of step 50 ran out. Taken as a failure of
    rank 0's own run, it went on to the gather, which rank 1 (in the probe's all-reduce) never reached: a second
    wait, named after the gather."""
    args = [*_slow_run(tmp_path), "--shard-probe"]
    began = time.monotonic()
    stderr = _direct(tmp_path, args, 100, FDL_TORCHRUN_TIMEOUT="5", SLOW_S="120")
    assert time.monotonic() - began < 100
    said = [line for line in stderr.splitlines() if line.startswith("error")]
    assert said == ["error on rank 0: gave up after waiting 5 s for the other ranks' probe slices (the longest a "
                    "rank of a torchrun job waits, FDL_TORCHRUN_TIMEOUT)"], stderr[-4000:]
    _no_traceback_of_fdl(stderr)
    assert _steps(tmp_path / "s.h5") == [0, 10, 20, 30, 40]  # every checkpoint before the one rank 1 was slow on
