"""The stop watcher (`signals._Stall`) where the model's code gets in its way.

A SIGTERM that the model's code swallowed (a bare `except` around a wait) was forgotten as soon as the main thread
entered model code again: the next forward pass of the same checkpoint, or model code that fdl runs from inside
model code (a forward pass that builds a sub-model with fdl's `build_model`). When that code then hung in C, fdl
hung until SIGKILL, the store's lock left behind. And model code that took Python's wakeup fd (an asyncio loop's
`add_signal_handler`, even one closed again: its removal leaves no wakeup fd at all) made the watcher deaf: a SIGTERM
while a later forward pass hung in C was never seen.

Each test runs a real `python -m fdl_cli analyze` on six tiny checkpoints (the models and helpers of
`test_s27_hang`); step 2's forward pass is where the model misbehaves. Waits are on files, bounded and generous.
"""

from __future__ import annotations

import json
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
    _ended,
    _env,
    _wait_for,
    run_dir,  # noqa: F401 - the fixture
    started,  # noqa: F401 - the fixture
)

from tests import warm  # noqa: E402

_MODELS = r'''
import asyncio, ctypes, os, signal, time
from pathlib import Path
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def _mark(name):
    open(os.path.join(HERE, name), "a").close()


def _marked(name):
    return os.path.exists(os.path.join(HERE, name))


def _at_step_2(module):
    return float(module[0].bias[0]) == 7.0 and not _marked("release")


def _hang_in_c():
    """A default pthread mutex locked twice by its holder (the GIL released): no signal interrupts it."""
    mutex = ctypes.create_string_buffer(64)
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def _swallow_one():
    """Wait, take the KeyboardInterrupt of the signal and go on (a retry loop with a bare except)."""
    try:
        _mark("stuck")  # marked where the signal is taken: one that comes as the mark is made is swallowed too
        time.sleep(600)
    except BaseException:
        _mark("swallowed")


def _layers():
    return (nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class Then(nn.Sequential):
    """Step 2: the first forward pass swallows the signal and returns; the next one hangs in C."""

    def forward(self, x):
        if _at_step_2(self):
            if _marked("swallowed"):
                _hang_in_c()
            _swallow_one()
        return super().forward(x)


def then():
    return Then(*_layers())


class Nested(nn.Sequential):
    """Step 2: the forward pass swallows the signal, then builds a helper with fdl's own `build_model` (model code
    run from model code), whose build hangs in C."""

    def forward(self, x):
        if _at_step_2(self):
            from fdl_cli.checkpoints import CheckpointRef, LoadedCheckpoint, build_model

            _swallow_one()
            ref = CheckpointRef(path=Path("helper.pt"), step=0, step_source="test", kind="state_dict")
            build_model(LoadedCheckpoint(ref=ref, state_dict={}, module=None), factory=_hang_in_c)
        return super().forward(x)


def nested():
    return Nested(*_layers())


class InC(nn.Sequential):
    def forward(self, x):
        if _at_step_2(self):
            _mark("stuck")
            _hang_in_c()
        return super().forward(x)


LOOP = None
HEARD = None


class Usr1(InC):
    """Before step 2: the model signals itself and waits for the handler its build gave its asyncio loop (the
    model's own signal handling, across calls)."""

    def forward(self, x):
        if float(self[0].bias[0]) != 7.0 and not _marked("usr1"):
            os.kill(os.getpid(), signal.SIGUSR1)
            LOOP.run_until_complete(asyncio.wait_for(HEARD.wait(), 60))
            _mark("usr1")
        return super().forward(x)


def open_loop():
    """A build that leaves an asyncio loop with a signal handler (a library's background loop): its socket becomes
    Python's wakeup fd."""
    global LOOP, HEARD
    LOOP = asyncio.new_event_loop()
    HEARD = asyncio.Event()
    LOOP.add_signal_handler(signal.SIGUSR1, HEARD.set)
    return Usr1(*_layers())


async def _serve():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    await asyncio.sleep(0)


def closed_loop():
    """A build that ran an asyncio loop handling SIGTERM, closed again: the loop's close leaves no wakeup fd at all,
    and SIGTERM at its default action."""
    asyncio.run(_serve())
    return InC(*_layers())
'''


def _argv(model: str) -> list[str]:
    return [sys.executable, "-m", "fdl_cli", "analyze", "ckpts", "--model", f"s28models.py:{model}", "--probe",
            "probe.npz", "--out", "run.h5", "--json", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16",
            "--commit-interval", "0"]


def _start(run_dir: Path, started: list[subprocess.Popen[bytes]], model: str,  # noqa: F811
           grace: str = "0.5") -> warm.WarmProcess:
    (run_dir / "s28models.py").write_text(_MODELS)
    with open(run_dir / "out.txt", "wb") as out, open(run_dir / "err.txt", "wb") as err:
        process = warm.spawn(_argv(model), cwd=run_dir, stdout=out, stderr=err, env=_env(FDL_STOP_GRACE=grace),
                             start_new_session=True)
    started.append(process)  # type: ignore[arg-type]  # killed and waited for as a Popen would be
    return process


def _wait_for_file(process: warm.WarmProcess, path: Path, folder: Path) -> None:
    deadline = time.monotonic() + 120  # generous: the machine may be shared
    while not path.exists():
        assert process.poll() is None, (folder / "err.txt").read_text()
        assert time.monotonic() < deadline, f"{path.name} never came: {(folder / 'err.txt').read_text()}"
        time.sleep(0.02)


def _stopped(folder: Path, process: warm.WarmProcess) -> str:
    """fdl ended with 143 and no traceback, steps 0 and 1 kept, no lock or copy left: its stderr."""
    status, err = _ended(process, folder)
    assert status == 143, err
    assert "Traceback" not in err and "run the same command again to resume" in err, err
    _assert_store_kept(folder)
    return err


def _resumes(folder: Path, model: str) -> None:
    (folder / "release").touch()
    resumed = warm.run(_argv(model), cwd=folder, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in resumed.stdout.splitlines()] == [2, 3, 4, 5]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
@pytest.mark.parametrize("model", ["then", "nested"])
def test_a_sigterm_the_model_swallowed_still_stops_fdl_when_its_next_code_hangs(
        run_dir: Path, started: list[subprocess.Popen[bytes]], model: str) -> None:  # noqa: F811
    # no grace runs out: the signal the model swallowed stops fdl as the model's code goes on into fdl's
    process = _start(run_dir, started, model, grace="600")
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    _wait_for_file(process, run_dir / "swallowed", run_dir)
    _stopped(run_dir, process)
    if model == "then":
        _resumes(run_dir, model)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
@pytest.mark.parametrize("model", ["open_loop", "closed_loop"])
def test_sigterm_stops_fdl_whose_model_took_the_wakeup_fd_and_then_hangs_in_c(
        run_dir: Path, started: list[subprocess.Popen[bytes]], model: str) -> None:  # noqa: F811
    process = _start(run_dir, started, model)
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    err = _stopped(run_dir, process)
    assert "SIGTERM: the model's forward pass of step 2 (" in err and "did not return within 0.5 s" in err, err
    if model == "open_loop":
        assert (run_dir / "usr1").exists(), "the model's own asyncio signal handler was never called"
        _resumes(run_dir, model)
