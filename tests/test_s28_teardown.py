"""A second signal while fdl ends, after it said "interrupted".

`fdl analyze` stopped by a Ctrl-C (or SIGTERM) commits, closes its store, says "interrupted ... run the same
command again to resume" and exits 130 (143). A second SIGINT or a SIGTERM that came after that, while the
interpreter tore down (atexit handlers: torch's, h5py's; finalisers; module cleanup), ended fdl by the signal
itself (status -2, or -15) or printed a `KeyboardInterrupt` traceback from an atexit handler: fdl's handlers
were gone, Python's default ones back.

Each test runs a real `python -m fdl_cli analyze` (real signals, the interpreter's real exit) on six tiny
checkpoints whose step 2 forward pass waits in Python until the first signal stops it. One test holds the
teardown at a known point with an atexit handler of the model's, which waits on a file (a warm process,
tests/warm.py); the others send a burst of signals from the moment "interrupted" is read off stderr until the
process is gone, so that some land in each part of the teardown (a fresh process, whose atexit handlers run in
the order a user's fdl runs them). Waits are on markers (files, stderr), each bounded generously.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from test_s27_hang import (  # noqa: E402
    _assert_store_kept,
    _env,
    _wait_for,
    run_dir,  # noqa: F401 - the fixture
    started,  # noqa: F401 - the fixture
)

from tests import warm  # noqa: E402

_MODELS = r'''
import atexit, os, sys, time
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def _marked(name):
    return os.path.exists(os.path.join(HERE, name))


class Sleeps(nn.Sequential):
    """Step 2 (its first bias 7.0) waits in Python: the first signal stops the run there."""

    def forward(self, x):
        if float(self[0].bias[0]) == 7.0 and not _marked("release"):
            open(os.path.join(HERE, "stuck"), "w").close()
            time.sleep(600)
        return super().forward(x)


def _layers():
    return (nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def sleeps():
    return Sleeps(*_layers())


def _wait_for_go():
    """Teardown that takes a while (a library's atexit handler flushing a log, a finaliser closing a file)."""
    open(os.path.join(HERE, "teardown"), "w").close()
    end = time.monotonic() + 120
    while not _marked("go") and time.monotonic() < end:
        time.sleep(0.01)


def waits_at_exit():
    atexit.register(_wait_for_go)
    return Sleeps(*_layers())


class _Finaliser:
    """Waits in its finaliser once the interpreter cleans its modules up (past the atexit handlers), where this
    module's globals may be None already: it holds what it calls."""

    def __init__(self):
        self.finalizing, self.exists, self.sleep = sys.is_finalizing, os.path.exists, time.sleep
        self.teardown, self.go = os.path.join(HERE, "teardown"), os.path.join(HERE, "go")

    def __del__(self):
        if self.finalizing():
            open(self.teardown, "w").close()
            for _ in range(12000):  # 120 s at most
                if self.exists(self.go):
                    break
                self.sleep(0.01)


def waits_at_cleanup():
    global KEPT
    KEPT = _Finaliser()
    return Sleeps(*_layers())
'''

_RESUME = "run the same command again to resume"


def _argv(model: str) -> list[str]:
    return [sys.executable, "-m", "fdl_cli", "analyze", "ckpts", "--model", f"teardown_models.py:{model}", "--probe",
            "probe.npz", "--out", "run.h5", "--json", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16",
            "--commit-interval", "0"]


#: `fdl analyze` as a process of its own: a warm one (tests/warm.py), or where the test is about every atexit handler
#: (their order) a fresh one, whose torch is imported after fdl's `signals.own_process` registered its own handler
Process = warm.WarmProcess | subprocess.Popen[bytes]


def _start(folder: Path, started: list[Process], model: str, *, fresh: bool = False) -> Process:  # noqa: F811
    (folder / "teardown_models.py").write_text(_MODELS)
    with open(folder / "out.txt", "wb") as out:
        process = (subprocess.Popen if fresh else warm.spawn)(
            _argv(model), cwd=folder, stdout=out, stderr=subprocess.PIPE, env=_env(), start_new_session=True
        )
    os.set_blocking(process.stderr.fileno(), False)  # type: ignore[union-attr]
    started.append(process)
    return process


def _read(process: Process, said: bytearray) -> bool:
    """What the process wrote to stderr since the last call, appended to `said`; False at its end."""
    try:
        chunk = os.read(process.stderr.fileno(), 65536)  # type: ignore[union-attr]
    except BlockingIOError:
        return True
    said.extend(chunk)
    return bool(chunk)


def _stop_at_step_2(folder: Path, process: Process, first: signal.Signals) -> bytearray:
    """Steps 0 and 1 stored, step 2 waiting: `first` sent; stderr read until fdl says it was interrupted."""
    said = bytearray()
    _wait_for(process, folder / "stuck", folder)
    process.send_signal(first)
    deadline = time.monotonic() + 120  # generous: the machine may be shared
    while _RESUME.encode() not in said:
        assert _read(process, said) and time.monotonic() < deadline, said.decode(errors="replace")
        time.sleep(0.001)
    return said


def _rest(process: Process, said: bytearray) -> str:
    """Everything stderr says up to its end (the process's), once the process is gone."""
    deadline = time.monotonic() + 60
    while _read(process, said):
        assert time.monotonic() < deadline, "stderr never ended: " + said.decode(errors="replace")
        time.sleep(0.01)
    process.stderr.close()  # type: ignore[union-attr]
    return said.decode(errors="replace")


def _assert_ended_as_interrupted(status: int, err: str, expected: int, folder: Path) -> None:
    assert status == expected, f"status {status}, not {expected}: {err}"
    assert "Traceback" not in err and "Exception ignored" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip().endswith("interrupted") or _RESUME in err.splitlines()[-1], err
    _assert_store_kept(folder)


def _resumes(folder: Path, model: str) -> None:
    (folder / "release").touch()
    resumed = warm.run(_argv(model), cwd=folder, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in resumed.stdout.splitlines()] == [2, 3, 4, 5]


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("model", ["waits_at_exit", "waits_at_cleanup"])
def test_a_signal_while_the_interpreter_ends_keeps_the_status_of_the_interrupted_run(
        run_dir: Path, started: list[Process], model: str, second: signal.Signals) -> None:  # noqa: F811
    # held at a known point of the teardown: an atexit handler, then the modules' cleanup (a finaliser)
    process = _start(run_dir, started, model)
    said = _stop_at_step_2(run_dir, process, signal.SIGINT)
    deadline = time.monotonic() + 60
    while not (run_dir / "teardown").exists():  # the teardown is held there: fdl has said all it says
        assert process.poll() is None and time.monotonic() < deadline, said.decode(errors="replace")
        time.sleep(0.005)
    process.send_signal(second)
    if model == "waits_at_cleanup":  # ignored there: the finaliser goes on
        (run_dir / "go").touch()
    try:
        status = process.wait(timeout=60)  # at an atexit handler, it ends without waiting for it
    finally:
        (run_dir / "go").touch()
    _assert_ended_as_interrupted(status, _rest(process, said), 130, run_dir)


@pytest.mark.parametrize(("first", "second", "expected"), [
    (signal.SIGINT, signal.SIGINT, 130),
    (signal.SIGINT, signal.SIGTERM, 130),
    (signal.SIGTERM, signal.SIGINT, 143),
], ids=["SIGINT-SIGINT", "SIGINT-SIGTERM", "SIGTERM-SIGINT"])
def test_signals_all_through_the_teardown_keep_the_status_and_the_store(
        run_dir: Path, started: list[Process],  # noqa: F811
        first: signal.Signals, second: signal.Signals, expected: int) -> None:
    # a fresh process: in a warm one torch's atexit handlers (multiprocessing's, logging's, ...), registered in the
    # zygote before fdl's, run after fdl's last one, where a fresh fdl runs them before it, under fdl's `_ending`
    process = _start(run_dir, started, "sleeps", fresh=True)
    said = _stop_at_step_2(run_dir, process, first)
    # from "interrupted" on, a signal every millisecond or so until the process is gone: they land in the
    # interpreter's exit (sys.exit's unwinding, atexit handlers, module cleanup) wherever it is by then
    sent = 0
    deadline = time.monotonic() + 60
    while process.poll() is None:
        assert time.monotonic() < deadline, "fdl did not end: " + said.decode(errors="replace")
        process.send_signal(second)
        sent += 1
        _read(process, said)
        time.sleep(0.001)
    err = _rest(process, said)
    assert sent > 0
    _assert_ended_as_interrupted(process.returncode, err, expected, run_dir)
    if first == signal.SIGINT and second == signal.SIGINT:
        _resumes(run_dir, "sleeps")


def test_a_signal_as_the_command_ends_in_process_leaves_the_programs_handlers_as_they_were(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A program calling fdl's `main` (here: `signals.installed`, which `main` runs the command in) gets its
    Ctrl-C, and its own handlers back, when the signal comes as the command ends: one during the stop of fdl's
    watcher thread raised fdl's interrupt there, which left fdl's handlers in place after the command."""
    from fdl_cli import signals

    stop = signals._stall.stop

    def stop_after_a_ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here, in the main thread
        stop()

    monkeypatch.setattr(signals._stall, "stop", stop_after_a_ctrl_c)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert before[0] is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt), signals.installed():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
