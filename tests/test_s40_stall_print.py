"""`fdl analyze --json` whose model hangs in C, stopped by SIGTERM while its stdout takes nothing (`signals._Stall`).

The thread that ends such a run commits what was analysed and prints its records: a print to a full pipe nobody reads
(`| less`, scrolled no further) waited for ever, the store's lock held, and no signal could end fdl (the main thread
is stuck, and the thread that reads the signals was the one printing): only SIGKILL did. A reader gone (`| head -1`)
made the print raise, and the store was left unclosed, its lock file behind. The store is closed before the print now,
and a print that takes longer than FDL_STOP_GRACE is given up (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import warm
from tests.test_s27_hang import _argv, _assert_store_kept, _ended, _env, run_dir, started  # noqa: F401 - fixtures


def _full_pipe() -> tuple[int, int]:
    """A pipe of one page, full: a write to it waits until its reader reads, which it never does."""
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 512)
    os.set_blocking(write, True)
    return read, write


def _stopped_with_stdout(
    run_dir: Path,  # noqa: F811
    started: list[warm.WarmProcess],  # noqa: F811
    stdout: int,
    stderr: int | None = None,
    when_stuck: Callable[[], object] = lambda: None,
) -> tuple[int, str]:
    """`fdl analyze --json` with the model that hangs in C at step 2, steps 0 and 1 buffered (no commit before the
    hang: `--commit-interval` an hour), SIGTERM once it hangs (after `when_stuck()`): its status and stderr."""
    argv = [*_argv("in_c")[:-1], "3600"]
    with open(run_dir / "err.txt", "wb") as err:
        process = warm.spawn(argv, cwd=run_dir, stdout=stdout, stderr=err if stderr is None else stderr,
                             env=_env(FDL_STOP_GRACE="0.5"), start_new_session=True)
    started.append(process)
    for _ in range(2400):
        if (run_dir / "stuck").exists():
            break
        assert process.poll() is None, (run_dir / "err.txt").read_text()
        time.sleep(0.05)
    else:
        pytest.fail("the model never hung: " + (run_dir / "err.txt").read_text())
    when_stuck()
    process.send_signal(signal.SIGTERM)
    return _ended(process, run_dir)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex; F_SETPIPE_SZ")
def test_a_stalled_run_ends_though_its_stdout_takes_nothing(run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811
    read, write = _full_pipe()
    try:
        status, err = _stopped_with_stdout(run_dir, started, write)
    finally:
        os.close(read)
        os.close(write)
    assert status == 143, err
    assert "Traceback" not in err and "did not return within 0.5 s" in err, err
    assert "the --json records of the checkpoints stored now were not all printed" in err, err
    assert "2 checkpoints analysed" in err and "run the same command again to resume" in err, err
    _assert_store_kept(run_dir)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
def test_a_stalled_run_whose_stdout_reader_is_gone_closes_its_store(run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811
    read, write = os.pipe()
    os.close(read)  # `| head -1` that has ended: a write raises BrokenPipeError (SIGPIPE ignored)
    try:
        status, err = _stopped_with_stdout(run_dir, started, write)
    finally:
        os.close(write)
    assert status == 143, err
    assert "Traceback" not in err and "2 checkpoints analysed" in err, err
    _assert_store_kept(run_dir)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex; F_SETPIPE_SZ")
def test_a_stalled_run_ends_though_its_stdout_and_stderr_take_nothing(
    run_dir: Path, started: list[warm.WarmProcess]  # noqa: F811
) -> None:
    """`fdl analyze --json 2>&1 | less`, scrolled no further once the model hung: its last words waited for ever."""
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: a page, filled once the model hangs (fdl says notes before)
    drained = []

    def fill() -> None:
        os.set_blocking(read, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read, 65536):
                drained.append(chunk)
        os.set_blocking(write, False)  # the pipe's, fdl's end too: blocking again below
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write, b"x" * 512)
        os.set_blocking(write, True)

    try:
        status, _ = _stopped_with_stdout(run_dir, started, write, write, fill)
    finally:
        os.close(read)
        os.close(write)
    assert status == 143, b"".join(drained)
    _assert_store_kept(run_dir)
