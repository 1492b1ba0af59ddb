"""Session 15: interrupting and resuming `fdl analyze` (exit statuses, messages, what is kept)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests import warm
from tests.tiny_models import mlp

REPO = Path(__file__).resolve().parents[1]

PLAIN_MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""

#: A --model factory that signals its own process while Python runs code that `exec()` compiled from a
#: string, as it does for the methods of every dataclass and namedtuple defined while a module is
#: imported (torch defines hundreds): the signal lands in the exec'd code, at a fixed point.
SIGNALLING_MODEL = PLAIN_MODEL.replace(
    "    torch.manual_seed(0)",
    '    exec("import os, signal\\nos.kill(os.getpid(), signal.{signal})\\nfor _ in range(10 ** 6): pass")\n'
    "    torch.manual_seed(0)",
)


def _make_run(root: Path, steps: tuple[int, ...] = (0, 10, 20)) -> Path:
    """Checkpoints (raw state_dicts) of a 4-8-3 MLP and a probe, in `root`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(root / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    folder = root / "ckpts"
    folder.mkdir()
    model = mlp(4, 8, 3)
    for step in steps:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    return folder


def _fdl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m fdl_cli ARGS` in its own interpreter, ended the way a user's shell sees it end."""
    # a warm process (tests/warm.py): Ctrl-C as from a terminal (Python's handler), even when the tests run with
    # SIGINT ignored (a background job), as a fresh one started with SIGINT at its default action
    return warm.run([sys.executable, "-m", "fdl_cli", *args], cwd=cwd, timeout=300,
                    env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_inside_exec_d_code_still_exits_with_the_documented_status(
    tmp_path: Path, name: str, status: int
) -> None:
    """A SIGTERM that arrived while Python ran exec'd code (an import defining a dataclass: about one
    kill in six in the first second of a run) ended fdl by SIGINT, status -2 (130 in a shell) instead
    of 143: CPython remembers a KeyboardInterrupt that left exec'd code and, at exit, kills itself
    with SIGINT whatever sys.exit() said. fdl now raises a subclass of KeyboardInterrupt."""
    folder = _make_run(tmp_path)
    (tmp_path / "model.py").write_text(SIGNALLING_MODEL.replace("{signal}", name))
    result = _fdl("analyze", str(folder), "--model", "model.py:build", "--probe", "probe.npz",
                  "--out", "run.h5", cwd=tmp_path)
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "interrupted" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("run.h5*"))  # nothing was stored, no lock or copy left behind
    # it said "what was completed is in the store", of a store that does not exist
    assert "interrupted: no checkpoint was stored (no store was written); run the same command again" in result.stderr
    assert "is in the store" not in result.stderr


def test_an_overwrite_interrupted_before_its_first_commit_says_the_store_is_as_it_was(tmp_path: Path) -> None:
    """--overwrite replaces the store at its first commit. Stopped before it, the run said "what was
    completed is in the store; run it again without --overwrite to resume": that resumed the old store,
    or was refused as another run's when the options had changed (the usual reason for --overwrite)."""
    folder = _make_run(tmp_path)
    (tmp_path / "model.py").write_text(SIGNALLING_MODEL.replace("{signal}", "SIGTERM"))
    with h5py.File(tmp_path / "run.h5", "w") as handle:  # an HDF5 file: --overwrite replaces it unread
        handle.attrs["format"] = "fdl-store"
    old = (tmp_path / "run.h5").read_bytes()
    result = _fdl("analyze", str(folder), "--model", "model.py:build", "--probe", "probe.npz",
                  "--out", "run.h5", "--overwrite", "--anchor-size", "8", cwd=tmp_path)
    assert result.returncode == 143, result.stderr
    assert (tmp_path / "run.h5").read_bytes() == old
    assert sorted(path.name for path in tmp_path.glob("run.h5*")) == ["run.h5"]
    assert ("interrupted: no checkpoint was stored: the store is as it was (--overwrite replaces it at the first "
            "commit); run the same command again to start afresh") in result.stderr
    assert "without --overwrite" not in result.stderr


def test_the_summary_of_an_interrupted_run_says_what_is_on_disk(tmp_path: Path) -> None:
    """The message of each case, from the summary itself."""
    from fdl_cli.pipeline import AnalyzeSummary, _store_identity

    store = tmp_path / "s.h5"
    assert "no store was written" in AnalyzeSummary(store=store, interrupted=True).message()
    store.write_bytes(b"x")
    before = _store_identity(store)
    resumed = AnalyzeSummary(store=store, interrupted=True, store_before=before).message()
    assert resumed.endswith("interrupted: what was completed is in the store; run the same command again to resume")
    untouched = AnalyzeSummary(store=store, interrupted=True, resume=False, store_before=before).message()
    assert "the store is as it was" in untouched
    # replaced by a commit whose checkpoints were not announced before the interrupt: the old advice
    replacement = tmp_path / "new.h5"
    replacement.write_bytes(b"y")
    replacement.replace(store)
    replaced = AnalyzeSummary(store=store, interrupted=True, resume=False, store_before=before).message()
    assert "run it again without --overwrite to resume" in replaced
    stored = AnalyzeSummary(store=store, analysed=[0], interrupted=True, resume=False, store_before=_store_identity(store))
    assert "run it again without --overwrite to resume" in stored.message()


#: Runs `fdl ARGV` in a fresh interpreter (torch not imported yet) and sends the signal SIG to itself
#: once torch's C++ start-up, `torch._C._c10d_init()` at `import torch.distributed`, calls back into
#: Python: the moment where a Ctrl-C aborted the process.
SIGNAL_IN_TORCH_IMPORT = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as from a terminal
state = {"inside": False, "sent": False}

def profile(frame, event, arg):
    # only a C function's name: getattr on a "return" event's value (a half-built unittest.mock._Call)
    # recursed, and the RecursionError made torch's import fail, hidden by the "interrupted" after it
    name = getattr(arg, "__name__", "") if event.startswith("c_") else ""
    if event in ("c_call", "c_return") and name == "_c10d_init":
        state["inside"] = event == "c_call"
    elif event == "call" and state["inside"] and not state["sent"]:
        state["sent"] = True
        sys.stderr.write("signal sent inside torch._C._c10d_init\n")
        sys.stderr.flush()
        os.kill(os.getpid(), getattr(signal, os.environ["SIG"]))

assert "torch" not in sys.modules
sys.setprofile(profile)
from fdl_cli.cli import main
main(sys.argv[1:])
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed: no _c10d_init")
@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_import_torch_stops_fdl_instead_of_aborting_it(tmp_path: Path, name: str, status: int) -> None:
    """A Ctrl-C or SIGTERM in the first second of `fdl analyze`, while torch's C++ start-up ran Python code,
    aborted the process: "terminate called after throwing an instance of 'python_error'", status 134 (-6),
    no summary (1 of 80 Ctrl-Cs sent in the first 1.6 s). torch is now imported with both signals held
    back, and the signal stops fdl right after the import."""
    folder = _make_run(tmp_path)
    (tmp_path / "model.py").write_text(PLAIN_MODEL)
    result = subprocess.run(  # a real process: the signal is sent during its own `import torch`
        [sys.executable, "-c", SIGNAL_IN_TORCH_IMPORT, "analyze", str(folder), "--model", "model.py:build",
         "--probe", "probe.npz", "--out", "run.h5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "SIG": name},
    )
    assert "signal sent inside torch._C._c10d_init" in result.stderr  # else the test tests nothing
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "terminate called" not in result.stderr
    assert result.stderr.rstrip().endswith("interrupted")
    assert not list(tmp_path.glob("run.h5*"))
