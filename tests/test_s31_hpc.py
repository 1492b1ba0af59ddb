"""fdl run by an HPC engineer beside live training jobs: a trainer's keep-last-N rotation deleting a checkpoint
while fdl reads it, and a batch job's log file (stderr not a terminal) in an environment that asks for colour.
Each test failed before its fix (docs/reliability.md, failures 41 and 42)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fdl_cli import checkpoints
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _make_run

ARGS = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--anchor-size", "100")


def _deleted_once_read(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """The trainer's rotation deletes `victim` right after fdl has read its weights, before fdl hashes it."""
    real = checkpoints.load_checkpoint

    def load_then_rotate(ref: Any, **kwargs: Any) -> Any:
        loaded = real(ref, **kwargs)
        if Path(ref.path) == victim:
            victim.unlink()
        return loaded

    monkeypatch.setattr(checkpoints, "load_checkpoint", load_then_rotate)


def _steps(store: Path) -> dict[int, int | None]:
    with StoreReader(store) as reader:
        return {record["step"]: record["prev_step"] for record in reader.records()}


def test_a_checkpoint_deleted_between_its_read_and_its_hash_is_skipped_as_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-last-3 rotation deleting step 30 after fdl loaded it and before it hashed it ended `fdl analyze` with
    a FileNotFoundError traceback, nothing stored; it is the rotation's note, as a file deleted a moment sooner."""
    folder = _make_run(tmp_path / "run")
    victim = folder / "step_30.safetensors"
    _deleted_once_read(monkeypatch, victim)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", folder, *ARGS, "--probe", folder / "probe.npz", "--out", out)
    assert (done.returncode, "Traceback" in done.stderr) == (0, False), done.stderr
    assert f"note: {victim} (step 30) is gone (deleted or renamed) before it was analysed" in done.stderr
    assert _steps(out) == {0: None, 10: 0, 20: 10, 40: 20, 50: 40, 60: 50}


def test_the_reference_deleted_between_its_read_and_its_hash_is_an_fdl_error_and_the_store_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same of the reference (the oldest file: the next the rotation deletes), on a resume: a traceback; now
    the error `analyze` gives of a reference gone, exit 1, the store as it was."""
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "run.h5"
    assert fdl_in_process("analyze", folder, *ARGS, "--probe", folder / "probe.npz", "--out", out).returncode == 0
    before = out.read_bytes()
    _make_run(tmp_path / "later")
    for step in (30, 40):
        (tmp_path / "later" / f"step_{step}.safetensors").rename(folder / f"step_{step}.safetensors")
    victim = folder / "step_0.safetensors"
    _deleted_once_read(monkeypatch, victim)
    done = fdl_in_process("analyze", folder, *ARGS, "--probe", folder / "probe.npz", "--out", out)
    assert (done.returncode, "Traceback" in done.stderr) == (1, False), done.stderr
    assert f"error: checkpoint {victim} no longer exists" in done.stderr
    assert out.read_bytes() == before


def test_a_batch_jobs_log_gets_no_live_progress_display_when_colour_is_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slurm job's stderr is a file; FORCE_COLOR=1 (a request for colour, set by many CI and cluster profiles)
    made rich take it for a terminal, and the live progress bar was redrawn into the log, about 2.8 KB a second
    (a 10 s run of 30 checkpoints: 83 lines of cursor moves, ~10 MB an hour). The log gets what it gets without
    the variable: the summary line, no carriage return, no cursor control."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setenv("FDL_PROGRESS_INTERVAL", "1000")
    folder = _make_run(tmp_path / "run")
    done = fdl_in_process("analyze", folder, *ARGS, "--probe", folder / "probe.npz", "--out", tmp_path / "run.h5")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[?25l" not in done.stderr and "\x1b[2K" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
