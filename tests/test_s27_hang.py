"""SIGTERM / Ctrl-C while the model's code does not return (session 27).

`fdl analyze` stops on SIGINT and SIGTERM by raising KeyboardInterrupt in the main thread. Model code
that never gives it back (a C call that does not return on a signal, a hung GPU call; or Python code that
swallows the KeyboardInterrupt) left fdl running until SIGKILL, the store's lock file behind. Model code
that left a thread of its own running made fdl wait for it after saying "interrupted", and the workers of a
model's forked `multiprocessing.Pool` printed fdl's `Interrupted` tracebacks when the pool ended them.

Each test runs a real `python -m fdl_cli analyze` (real signals, the interpreter's real exit; forked from a
zygote that imported torch, tests/warm.py) on six tiny checkpoints; step 2's weights are marked (its first bias
7.0) and its forward pass is where the model hangs. Every wait is on a file the model or fdl writes, bounded;
every child is killed in a finally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fdl_cli.store import StoreReader
from tests import warm

TESTS = Path(__file__).resolve().parent

_MODELS = r'''
import ctypes, multiprocessing, os, sys, threading, time
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def _stuck():
    open(os.path.join(HERE, "stuck"), "w").close()


def _at_step_2(module, mark=True):
    """The forward pass of the marked checkpoint (step 2), unless the test wrote `release`."""
    if float(module[0].bias[0]) != 7.0 or os.path.exists(os.path.join(HERE, "release")):
        return False
    if mark:
        _stuck()
    return True


def _mark_once_in_c(code, line):
    """`stuck` once the main thread has been at `line` of `code` (the hanging C call) for 0.1 s: in C by then.
    Marked before the call, a signal sent at the mark on a loaded machine could come while the thread still ran
    Python on its way there, and stopped it as any interrupted forward pass (no hang to report)."""
    main = threading.main_thread().ident

    def watch():
        while True:
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code is code and frame.f_lineno == line:
                break
            time.sleep(0.005)
        time.sleep(0.1)
        _stuck()

    threading.Thread(target=watch, daemon=True).start()


class InC(nn.Sequential):
    """Hangs in C, where no signal interrupts it: a default pthread mutex locked twice by its holder (the
    GIL released, as a hung GPU or I/O call releases it). Python's signal handler never runs."""

    def forward(self, x):
        if _at_step_2(self, mark=False):
            mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on glibc
            libc = ctypes.CDLL(None)
            libc.pthread_mutex_lock(mutex)
            _mark_once_in_c(sys._getframe().f_code, sys._getframe().f_lineno + 1)
            libc.pthread_mutex_lock(mutex)
        return super().forward(x)


class Swallows(nn.Sequential):
    """Python code that takes the KeyboardInterrupt and goes on waiting (a retry loop with a bare except)."""

    def forward(self, x):
        if _at_step_2(self, mark=False):
            while True:
                try:
                    _stuck()  # marked where a Ctrl-C is taken: one sent at the mark is swallowed too
                    time.sleep(600)
                except BaseException:
                    open(os.path.join(HERE, "swallowed"), "a").write("x")
        return super().forward(x)


class Sleeps(nn.Sequential):
    def forward(self, x):
        if _at_step_2(self):
            time.sleep(600)
        return super().forward(x)


def _sleep(seconds):
    time.sleep(seconds)


class Pool(nn.Sequential):
    """A forked pool whose workers hang; the KeyboardInterrupt ends the `with`, which terminates them."""

    def forward(self, x):
        if _at_step_2(self):
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(_sleep, [600, 600])
        return super().forward(x)


def _layers():
    return (nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def in_c():
    return InC(*_layers())


def swallows():
    return Swallows(*_layers())


def with_thread():
    # a thread of the model's own (a prefetcher, a logger), not a daemon, that never ends
    threading.Thread(target=time.sleep, args=(600,), name="model-prefetch").start()
    return Sleeps(*_layers())


def pool():
    return Pool(*_layers())
'''


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    try:
        from tests.tiny_models import mlp
    except ImportError:  # tests/ is not a package
        from tiny_models import mlp  # type: ignore[no-redef]

    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in range(6):
        weights = {name: tensor + 0.01 * step for name, tensor in mlp(seed=step).state_dict().items()}
        if step == 2:
            weights["0.bias"][0] = 7.0
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    (tmp_path / "models.py").write_text(_MODELS)
    return tmp_path


def _argv(model: str) -> list[str]:
    return [sys.executable, "-m", "fdl_cli", "analyze", "ckpts", "--model", f"models.py:{model}", "--probe",
            "probe.npz", "--out", "run.h5", "--json", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16",
            "--commit-interval", "0"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture
def started(run_dir: Path) -> Iterator[list[warm.WarmProcess]]:
    """The processes a test starts (each in a session of its own), killed with their children at the end."""
    processes: list[warm.WarmProcess] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        try:  # the pool's workers, left in the process group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start(run_dir: Path, started: list[warm.WarmProcess], model: str, **env: str) -> warm.WarmProcess:
    with open(run_dir / "out.txt", "wb") as out, open(run_dir / "err.txt", "wb") as err:
        process = warm.spawn(_argv(model), cwd=run_dir, stdout=out, stderr=err, env=_env(**env),
                             start_new_session=True)
    started.append(process)
    return process


def _wait_for(process: warm.WarmProcess, ready: Path, run_dir: Path) -> None:
    """Until `ready` exists (the model hangs) and steps 0 and 1 are in the store (the writer's scheduler commits
    them while the main thread is stuck; --json prints them only once it goes on)."""
    deadline = time.monotonic() + 120  # generous: the machine may be shared
    while time.monotonic() < deadline:
        assert process.poll() is None, (run_dir / "err.txt").read_text()
        if ready.exists() and (run_dir / "run.h5").exists():
            with StoreReader(run_dir / "run.h5") as reader:
                if reader.steps() == [0, 1]:
                    return
        time.sleep(0.02)
    pytest.fail(f"the model never hung after steps 0 and 1: {(run_dir / 'err.txt').read_text()}")


def _ended(process: warm.WarmProcess, run_dir: Path) -> tuple[int, str]:
    try:
        status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        pytest.fail("fdl did not end after the signal (killed with SIGKILL): " + (run_dir / "err.txt").read_text())
    return status, (run_dir / "err.txt").read_text()


def _assert_store_kept(run_dir: Path) -> None:
    with StoreReader(run_dir / "run.h5") as reader:
        assert reader.steps() == [0, 1] and list(reader.warnings) == []
    assert not (run_dir / "run.h5.lock").exists(), "the store's lock file was left behind"
    assert not list(run_dir.glob("run.h5.tmp-*"))


def _sigterm_once_stuck(run_dir: Path, started: list[warm.WarmProcess], model: str, **env: str) -> str:
    """SIGTERM to `fdl analyze` with `model`, once it hangs at step 2: it ends with 143, says how to resume, and
    keeps steps 0 and 1 (lock and copies gone); its stderr."""
    process = _start(run_dir, started, model, **env)
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    (run_dir / "sent").touch()  # for a model whose pass waits until the signal was sent (test_s28_rev2)
    status, err = _ended(process, run_dir)
    assert status == 143, err
    assert "Traceback" not in err and "run the same command again to resume" in err, err
    _assert_store_kept(run_dir)
    return err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
def test_sigterm_ends_fdl_whose_model_hangs_in_c_keeping_what_was_analysed(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:
    err = _sigterm_once_stuck(run_dir, started, "in_c", FDL_STOP_GRACE="0.5")
    assert "SIGTERM: the model's forward pass of step 2 (" in err and "step_2.safetensors" in err, err
    assert "did not return within 0.5 s" in err and "2 checkpoints analysed" in err, err
    # --json announces what the stopping thread committed (announced means durable)
    assert [json.loads(line)["step"] for line in (run_dir / "out.txt").read_text().splitlines()] == [0, 1]
    # the same command resumes (the model no longer hangs) and completes the store
    (run_dir / "release").touch()
    resumed = warm.run(_argv("in_c"), cwd=run_dir, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in resumed.stdout.splitlines()] == [2, 3, 4, 5]


def test_a_second_ctrl_c_ends_fdl_whose_model_swallows_the_first(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:
    process = _start(run_dir, started, "swallows", FDL_STOP_GRACE="600")  # only the second Ctrl-C can end it
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not (run_dir / "swallowed").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (run_dir / "swallowed").exists(), "the model never took the first Ctrl-C"
    process.send_signal(signal.SIGINT)
    status, err = _ended(process, run_dir)
    assert status == 130, err
    assert "Traceback" not in err
    assert "SIGINT: the model's forward pass of step 2 (" in err and "did not return before a second SIGINT" in err, err
    assert "run the same command again to resume" in err, err
    _assert_store_kept(run_dir)


def test_sigterm_does_not_wait_for_a_thread_the_model_left_running(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:
    err = _sigterm_once_stuck(run_dir, started, "with_thread")
    assert "model-prefetch" in err and "not waited for" in err, err


def test_the_workers_of_a_models_forked_pool_end_quietly_on_sigterm(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:
    err = _sigterm_once_stuck(run_dir, started, "pool")
    # the pool's terminate() sends its workers SIGTERM: they printed fdl's Interrupted traceback each
    assert "Interrupted" not in err, err
