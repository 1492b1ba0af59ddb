"""Under torchrun each message is said once: rank 0 says what every rank meets alike, a rank names
itself for what may be its own, and every rank still exits with the refusal's status.

Every rank of `torchrun --nproc-per-node N -m fdl_cli analyze` printed every refusal (N times); a
refusal that one rank met alone before any work left the others waiting; a warning of a rank's own
checkpoints (other than rank 0's) was never shown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import distributed
from fdl_cli.distributed import World, agree_on_refusal, voice
from fdl_cli.errors import FdlError, ProbeError
from tests import warm
from tests.ranks import torchrun
from tests.test_analyze import fdl
from tests.test_distributed import REPO, _args, _make_run

TWO = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


def _torchrun(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc-per-node 2 -m fdl_cli ARGS`, with `stdin` piped in when given (as from `find ... |`): the two
    ranks started as torchrun starts them, without its agent (`tests.ranks`); what is said is fdl's alone."""
    return torchrun("-m", "fdl_cli", *args, direct=True, stdin=stdin, timeout=240)


def _torchrun_model(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """`fdl analyze` of a small run under torchrun (2 ranks) with the model file `source` (its `build`)."""
    run = _make_run(tmp_path / "run")
    (tmp_path / "model.py").write_text(source)
    args = _args(run, tmp_path / "s.h5")
    args[args.index("--model") + 1] = f"{tmp_path / 'model.py'}:build"
    return _torchrun(*args)


def _no_traceback_of_fdl(stderr: str) -> None:
    """torchrun prints its own ChildFailedError traceback when a rank fails; none of fdl's frames may."""
    assert f'File "{REPO / "fdl_cli"}' not in stderr, stderr[-4000:]


# -- which rank speaks --------------------------------------------------------------------------------


def test_one_rank_speaks_for_what_every_rank_meets_alike() -> None:
    one = World()
    assert voice("", one) == "" and voice("job", one) == "" and voice("machine", one) == ""
    rank0, rank1 = World(rank=0, size=2, local_rank=0), World(rank=1, size=2, local_rank=1)
    assert voice("job", rank0) == "" and voice("job", rank1) is None
    # an error not known to be alike is said by each rank that meets it, naming it
    assert voice("", rank0) == "rank 0" and voice("", rank1) == "rank 1"
    # alike on a machine: its local rank 0 says it (rank 2 of a second machine too)
    second_machine = World(rank=2, size=4, local_rank=0, local_size=2)
    assert voice("machine", second_machine) == "" and voice("job", second_machine) is None
    assert voice("machine", World(rank=3, size=4, local_rank=1, local_size=2)) is None


def _agreed(monkeypatch: pytest.MonkeyPatch, reports: list, rank: int, error: FdlError | None) -> FdlError | None:
    """What `agree_on_refusal` raises on `rank` when the ranks' reports are `reports` (no process group)."""
    monkeypatch.setattr(distributed, "all_gather", lambda payload, world: reports)
    try:
        agree_on_refusal(error, World(rank=rank, size=len(reports), local_rank=rank))
    except FdlError as exc:
        return exc
    return None


def test_a_refusal_before_any_work_is_agreed_and_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = ("probe file p.npz not found", None, "check the --probe path")
    assert _agreed(monkeypatch, [None, None], 0, None) is None
    # every rank alike: each raises its own, unchanged (its class kept); rank 0 alone says it
    for rank in (0, 1):
        own = ProbeError(missing[0], fix=missing[2])
        raised = _agreed(monkeypatch, [missing, missing], rank, own)
        assert raised is own and raised.alike == "job" and raised.what == missing[0]
    # rank 1 alone: every rank stops with it, rank 0 says it naming rank 1
    raised = _agreed(monkeypatch, [None, missing], 0, None)
    assert raised is not None and raised.alike == "job"
    assert raised.message == "probe file p.npz not found (on rank 1)\n  fix: check the --probe path"
    raised = _agreed(monkeypatch, [None, missing], 1, ProbeError(missing[0], fix=missing[2]))
    assert raised is not None and raised.alike == "job" and raised.what.endswith("(on rank 1)")
    # ranks 1 and 2 of 3
    raised = _agreed(monkeypatch, [None, missing, missing], 0, None)
    assert raised is not None and raised.what.endswith("(on ranks 1, 2)")
    # another refusal on rank 1 than rank 0's: rank 0 says its own, rank 1 its own, naming itself
    other = ("unknown layer 'x'", None, None)
    raised = _agreed(monkeypatch, [missing, other], 0, ProbeError(missing[0], fix=missing[2]))
    assert raised is not None and raised.alike == "job" and raised.what == missing[0] + " (on rank 0)"
    raised = _agreed(monkeypatch, [missing, other], 1, FdlError(other[0]))
    assert raised is not None and raised.alike == "" and raised.what == other[0]


# -- the command line, as a rank of a torchrun job ----------------------------------------------------


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, environ: dict[str, str] = TWO) -> None:
    for name, value in {**environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "QUIET_EXIT_GRACE", 0.01)


def test_a_usage_error_is_said_by_rank_0_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_rank(monkeypatch, 1)
    quiet = fdl("analyze", "run", "--bogus")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (2, "", "")
    _as_rank(monkeypatch, 0)
    said = fdl("analyze", "run", "--bogus")
    assert said.code == 2 and "No such option '--bogus'" in said.stderr


def test_an_explicit_gpu_refused_on_a_machine_is_said_by_its_local_rank_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _make_run(tmp_path / "run")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = ("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", run / "probe.npz",
            "--out", tmp_path / "s.h5", "--device", "cuda:1")
    _as_rank(monkeypatch, 1)
    quiet = fdl(*args)
    assert (quiet.code, quiet.stderr) == (1, "")
    _as_rank(monkeypatch, 0)
    said = fdl(*args)
    assert said.code == 1 and said.stderr.startswith("error: --device cuda:1 under torchrun puts every rank")
    # without LOCAL_WORLD_SIZE no rank knows which share its machine: each says it, naming itself
    _as_rank(monkeypatch, 1, {"WORLD_SIZE": "2"})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    named = fdl(*args)
    assert named.code == 1 and named.stderr.startswith("error on rank 1: --device cuda:1 under torchrun")
    assert not (tmp_path / "s.h5").exists()


QUIET_EXIT = """
import sys
import time

from fdl_cli.distributed import exit_quietly

wait = time.sleep


def waiting(seconds):
    print("waiting", flush=True)  # its handlers are in place
    wait(seconds)


time.sleep = waiting
exit_quietly(int(sys.argv[1]), grace=float(sys.argv[2]))
"""


def test_a_quiet_rank_exits_with_the_refusals_status_when_the_launcher_ends_it() -> None:
    """torchrun ends the other ranks (SIGTERM) once rank 0 has exited after saying the refusal."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    waiting = subprocess.Popen([sys.executable, "-c", QUIET_EXIT, "1", "60"], stdout=subprocess.PIPE, text=True,
                               env=env)
    assert waiting.stdout is not None and waiting.stdout.readline() == "waiting\n"
    began = time.monotonic()
    waiting.send_signal(signal.SIGTERM)
    assert waiting.wait(timeout=30) == 1 and time.monotonic() - began < 30
    # no launcher to end it: it exits with the status once the wait is over
    done = subprocess.run([sys.executable, "-c", QUIET_EXIT, "2", "0.01"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2 and done.stderr == ""


# -- under torchrun, 2 ranks on the CPU ---------------------------------------------------------------


def test_a_refusal_every_rank_meets_is_printed_once(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "run")
    args = _args(run, tmp_path / "s.h5")
    args[args.index("--probe") + 1] = str(tmp_path / "nope.npz")
    done = _torchrun(*args)
    assert done.returncode == 1, done.stderr[-4000:]
    assert done.stderr.count(f"error: probe file {tmp_path / 'nope.npz'} not found") == 1, done.stderr[-4000:]
    assert done.stderr.count("  fix: check the --probe path") == 1
    assert "on rank" not in done.stderr and "(on rank" not in done.stderr
    # what rank 0 notes of the folder, once too
    assert done.stderr.count("note: skipped 1 file without a checkpoint suffix") == 1
    _no_traceback_of_fdl(done.stderr)
    assert done.stdout == "" and not (tmp_path / "s.h5").exists()


RANK_1_MODEL = """
import os

import torch
from torch import nn

if os.environ.get("RANK") == "1":
    raise RuntimeError("this machine lacks a module the model needs")


def build(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def test_a_refusal_one_rank_meets_alone_is_printed_once_naming_it(tmp_path: Path) -> None:
    """Rank 1 cannot import the model file (its machine lacks a module): rank 0 went on and waited for
    it in the process group, and rank 1's message did not say it was rank 1's alone."""
    done = _torchrun_model(tmp_path, RANK_1_MODEL)
    assert done.returncode == 1, done.stderr[-4000:]
    assert done.stderr.count("RuntimeError: this machine lacks a module the model needs") == 1, done.stderr[-4000:]
    assert done.stderr.count(f"importing {tmp_path / 'model.py'} failed (on rank 1)") == 1
    _no_traceback_of_fdl(done.stderr)
    assert not (tmp_path / "s.h5").exists()


LOW_RANK_MODEL = """
import os

import torch
from torch import nn

if os.environ.get("RANK") == "1":
    # rank 1 alone warns of every negative eigenvalue it clips, however small: warnings of its own
    import fdl_cli.spectral

    fdl_cli.spectral.NEGATIVE_WARN_RTOL = -1.0


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 3))  # 16 features of rank 4
"""


def test_what_one_rank_meets_on_its_own_checkpoints_is_said_naming_it(tmp_path: Path) -> None:
    """Rank 1's block is steps 30 and 40 (of 0..40): its warnings are said by rank 0, naming rank 1 (they
    were never shown); its checkpoint whose weights do not fit is said once and fails the run."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "model.py").write_text(LOW_RANK_MODEL)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    for index in range(5):
        state = {k: (v + 0.2 * index * torch.randn(v.shape, generator=generator)).contiguous()
                 for k, v in net.state_dict().items()}
        save_file(state, str(run / f"step_{index * 10}.safetensors"))
    save_file({"0.weight": torch.zeros(16, 5)}, str(run / "step_40.safetensors"))  # found, then fails to load
    rng = np.random.default_rng(0)
    np.savez(run / "probe.npz", x=rng.normal(size=(100, 4)).astype(np.float32), y=rng.integers(0, 3, size=100))
    done = _torchrun("analyze", str(run), "--model", f"{tmp_path / 'model.py'}:build", "--probe", str(run / "probe.npz"),
                     "--out", str(tmp_path / "s.h5"), "--device", "cpu")
    assert done.returncode == 1, done.stderr[-4000:]
    assert done.stderr.count("warning: rank 1: step 30, probe/1:input: clipped a negative eigenvalue") == 1, \
        done.stderr[-4000:]
    assert "warning: step 30" not in done.stderr  # rank 0 clips none as large
    failed = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and "step_40.safetensors" in failed[0], done.stderr[-4000:]
    assert done.stderr.count("4 checkpoints analysed, 1 failed") == 1
    _no_traceback_of_fdl(done.stderr)


def test_watch_under_torchrun_is_refused_before_waiting_for_a_checkpoint(tmp_path: Path) -> None:
    """It was refused once a checkpoint had been found: on an empty folder every rank waited for one first."""
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    done = warm.run([sys.executable, "-m", "fdl_cli", "analyze", str(tmp_path / "empty"), "--watch", "--poll",
                     "0.1", "--probe", str(tmp_path / "p.npz"), "--device", "cpu"], env=env, cwd=REPO, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: --watch cannot run under torchrun"), done.stderr
