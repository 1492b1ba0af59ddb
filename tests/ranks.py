"""Two ranks of a torchrun job, with or without torchrun's agent.

`torchrun --standalone --nproc-per-node 2 ...` is one more Python process that imports torch (its elastic agent,
a few CPU seconds) on top of the two ranks. A test of what fdl does as a rank of a job of two (sharding, rank 0's
store, a refusal met on one rank, the history's rows) runs the ranks directly (`direct=True`) the way the agent
starts them: the variables it sets, `python -u`, a session of their own, one stdout and one stderr shared by both,
the job's store served by this process (TORCHELASTIC_USE_AGENT_STORE, as under --standalone), and the other
rank stopped (SIGTERM to its process group, SIGKILL 30 s later) as soon as one fails, the job's status then 1.
Each rank is a warm process (tests/warm.py): forked from an interpreter that imported torch already, it runs
`python -u ENTRY` as a fresh one would, without the ~3.5 CPU-s of `import torch` per rank. `spawn` starts the same
job and leaves it running, for a test that watches its store or kills it (a kill -9 of the job) as it runs.

A test of torchrun itself or of what the user sees from it (a Ctrl-C or a kill of the job, torchrun's lines, its
exit) keeps the real torchrun (`direct=False`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

from tests import warm

REPO = Path(__file__).resolve().parents[1]
#: torchrun's --monitor-interval and the wait before its SIGKILL of a rank that ignored the SIGTERM
_MONITOR_S = 0.1
_TERM_GRACE_S = 30.0


def torchrun(
    *entry: str,
    direct: bool,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 300,
    stderr: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node=2 ENTRY` (ENTRY: `-m fdl_cli ARGS`, or a script and its arguments),
    with REPO on PYTHONPATH and `stdin` piped in when given; its status, stdout and stderr. With `stderr` (`direct`
    only), the ranks write their stderr to that file as they run, for a test to watch from another thread."""
    environ = _environ(env)
    if not direct:
        assert stderr is None, "stderr= is for direct=True"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *entry]
        return warm.run(command, input=stdin, env=environ, cwd=cwd, timeout=timeout)  # the agent warm, its ranks not
    return _direct(list(entry), environ, stdin, cwd, timeout, stderr)


def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment with REPO on PYTHONPATH, then `env`."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}


def _direct(
    entry: list[str], environ: dict[str, str], stdin: str | None, cwd: Path, timeout: float, stderr: Path | None
) -> subprocess.CompletedProcess[str]:
    with _Job(entry, environ, stdin, cwd, stderr) as job:
        status = job.wait(timeout)
        out, err = job.output()
        return subprocess.CompletedProcess(job.command, status, out, err)


@contextlib.contextmanager
def spawn(*entry: str, env: Mapping[str, str] | None = None, cwd: Path = REPO, stderr: Path | None = None) -> Iterator[_Job]:
    """`torchrun(..., direct=True)` left running, for a test that watches or kills the job as it runs: the two
    ranks as one Popen-like handle (`poll`, `wait`, `kill`, `output`), stdin empty. Leaving the block kills the
    ranks still running and waits for them."""
    environ = _environ(env)
    with _Job(list(entry), environ, None, cwd, stderr) as job:
        yield job


class _Job:
    """The two ranks run directly, with the job's store and their shared stdout and stderr files. The agent's part
    (a failed rank's fellow stopped, the job's status) is played as the test asks: at each `poll` and during `wait`."""

    def __init__(self, entry: list[str], environ: dict[str, str], stdin: str | None, cwd: Path, stderr: Path | None) -> None:
        import torch.distributed as dist

        self._store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
        job = {
            "LOCAL_WORLD_SIZE": "2",
            "WORLD_SIZE": "2",
            "GROUP_RANK": "0",
            "GROUP_WORLD_SIZE": "1",
            "ROLE_NAME": "default",
            "ROLE_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(self._store.port),
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_RUN_ID": uuid.uuid4().hex,
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
            "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "1"),
        }  # torchrun's default for more than one rank
        self.command = [sys.executable, "-u", *entry]
        self._files = contextlib.ExitStack()
        self._out = self._files.enter_context(tempfile.TemporaryFile())
        self._err = self._files.enter_context(open(stderr, "w+b") if stderr is not None else tempfile.TemporaryFile())
        given = self._files.enter_context(tempfile.TemporaryFile())
        if stdin is not None:
            given.write(stdin.encode())
            given.seek(0)
        self.ranks: list[warm.WarmProcess] = []
        try:
            for rank in range(2):
                self.ranks.append(
                    warm.spawn(
                        self.command,
                        env={**environ, **job, "RANK": str(rank), "LOCAL_RANK": str(rank), "ROLE_RANK": str(rank)},
                        stdin=given if stdin is not None else subprocess.DEVNULL,
                        stdout=self._out,
                        stderr=self._err,
                        cwd=str(cwd),
                        start_new_session=True,
                    )
                )
        except BaseException:  # rank 0 not left running, the files not left open
            self.__exit__()
            raise
        self._stop_by: float | None = None

    def __enter__(self) -> _Job:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.kill()
            for rank in self.ranks:
                rank.wait()
        finally:
            self._files.close()
            del self._store

    def poll(self) -> int | None:
        """As torchrun's agent at each look: once a rank failed, SIGTERM to the others (SIGKILL after the grace);
        None while a rank runs, then 0 when every rank succeeded, else 1."""
        # each rank looked at (`all` over a generator stopped at the first one running: rank 1 ended with an error
        # went unseen while rank 0 ran, and rank 0 was never stopped)
        ended = [rank.poll() is not None for rank in self.ranks]
        if all(ended):
            return 0 if all(rank.returncode == 0 for rank in self.ranks) else 1
        now = time.monotonic()
        if any(rank.returncode not in (None, 0) for rank in self.ranks) and self._stop_by is None:
            self._stop_by = now + _TERM_GRACE_S
            self._signal(signal.SIGTERM)
        elif self._stop_by is not None and now > self._stop_by:
            self._signal(signal.SIGKILL)
        return None

    def wait(self, timeout: float) -> int:
        """The job's status once every rank ended; TimeoutExpired past `timeout` s (the ranks left running)."""
        deadline = time.monotonic() + timeout
        while (status := self.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(rank.args) for rank in self.ranks], timeout)
            time.sleep(_MONITOR_S)
        return status

    def kill(self) -> None:
        """SIGKILL to every rank still running (a kill -9 of the job)."""
        self._signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """The ranks' stdout and stderr so far."""
        texts = []
        for file in (self._out, self._err):
            file.seek(0)
            texts.append(warm.decoded(file.read()))
        return texts[0], texts[1]

    def _signal(self, sig: signal.Signals) -> None:
        for rank in self.ranks:
            if rank.poll() is None:
                _signal(rank, sig)


def _signal(rank: warm.WarmProcess, sig: signal.Signals) -> None:
    """`sig` to the rank's process group (its session), as torchrun's agent sends it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rank.pid, sig)
