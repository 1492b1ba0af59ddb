"""Review of the stop watcher (`signals._Stall`, session 27): `fdl inspect`'s forward pass, and runs in one process.

`fdl inspect --probe` runs the model's forward pass as `analyze` does, but outside `signals.model_code`: a model that
hung there in C kept `fdl inspect` running after SIGTERM until SIGKILL. And each run that entered model code started
a watcher thread and a pipe that outlived it: a program (or a test suite) running fdl's `main` in-process kept one
thread and two file descriptors per run, towards "Too many open files".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# the models of the watcher's own tests, and their fixture `started` (the processes a test starts, killed at its end)
from test_s27_hang import _MODELS, _env, started  # noqa: E402, F401

from tests import warm  # noqa: E402


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    import numpy as np
    from safetensors.torch import save_file
    from tiny_models import mlp

    weights = {name: tensor.clone() for name, tensor in mlp(seed=0).state_dict().items()}
    weights["0.bias"][0] = 7.0  # the mark at which the models of test_s27_hang hang
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "step_2.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(8, 4)).astype(np.float32), y=rng.integers(0, 3, 8))
    (tmp_path / "models.py").write_text(_MODELS)
    return tmp_path


def _stopped_once_stuck(run_dir: Path, processes: list[warm.WarmProcess], argv: list[str]) -> str:
    """Run `argv` (grace 0.5 s), SIGTERM it once the model hangs (its `stuck` file): its stderr, once it ended with 143."""
    with open(run_dir / "err.txt", "wb") as err:
        process = warm.spawn(argv, cwd=run_dir, stdout=subprocess.DEVNULL, stderr=err,
                             env=_env(FDL_STOP_GRACE="0.5"), start_new_session=True)
    processes.append(process)
    deadline = time.monotonic() + 120
    while not (run_dir / "stuck").exists():
        assert process.poll() is None and time.monotonic() < deadline, (run_dir / "err.txt").read_text()
        time.sleep(0.02)
    if "--watch" in argv:
        assert (run_dir / "run.h5.lock").exists()  # held while the model hangs
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("fdl did not end after SIGTERM (killed): " + (run_dir / "err.txt").read_text())
    err_text = (run_dir / "err.txt").read_text()
    assert status == 143 and "Traceback" not in err_text, err_text
    assert "did not return within 0.5 s" in err_text, err_text
    return err_text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
def test_sigterm_ends_fdl_inspect_whose_model_hangs_in_c(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811 - the fixture
    argv = [sys.executable, "-m", "fdl_cli", "inspect", "step_2.safetensors", "--model", "models.py:in_c",
            "--probe", "probe.npz"]
    err_text = _stopped_once_stuck(run_dir, started, argv)
    assert "SIGTERM: the model's forward pass did not return within 0.5 s" in err_text, err_text
    assert err_text.rstrip().endswith("interrupted"), err_text


_IN_PROCESS = r'''
import os, sys, threading
from fdl_cli.cli import main

def run():
    try:
        main(["inspect", "step_2.safetensors", "--model", "models.py:plain", "--probe", "probe.npz"])
    except SystemExit as exc:
        assert not exc.code, exc.code

run()
threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
for _ in range(5):
    run()
print(threading.active_count() - threads, len(os.listdir("/proc/self/fd")) - fds)
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts the open files in /proc")
def test_running_fdl_in_process_again_and_again_keeps_no_thread_or_file_per_run(run_dir: Path) -> None:
    with open(run_dir / "models.py", "a") as models:
        models.write("\n\ndef plain():\n    return nn.Sequential(*_layers())\n")
    (run_dir / "again.py").write_text(_IN_PROCESS)
    done = warm.run([sys.executable, "again.py"], cwd=run_dir, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["0", "0"], done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hang relocks a glibc mutex")
def test_sigterm_ends_a_watch_whose_model_hangs_at_the_reference_leaving_no_lock_file(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811 - the fixture
    """--watch takes the store's lock before the reference's forward pass: the watcher's end left STORE.lock."""
    (run_dir / "ckpts").mkdir()
    (run_dir / "step_2.safetensors").rename(run_dir / "ckpts" / "step_2.safetensors")
    argv = [sys.executable, "-m", "fdl_cli", "analyze", "ckpts", "--watch", "--model", "models.py:in_c", "--probe",
            "probe.npz", "--out", "run.h5", "--anchor-size", "4", "--batch-size", "4"]
    err_text = _stopped_once_stuck(run_dir, started, argv)
    assert not (run_dir / "run.h5.lock").exists(), "the store's lock file was left behind: " + err_text
