"""Session 23, a demanding shell user: stdout that cannot be written, and commands fdl suggests with paths.

- machine output to a full disk (`fdl report run.h5 --json > /mnt/full/r.json`, here /dev/full) or to a closed
  stdout (`>&-`) ended in an OSError's (or an AttributeError's) traceback, exit 1 with nothing explained;
  a small output failed only in the interpreter's last flush ("Exception ignored ...", exit 120);
- the commands fdl suggests (`fdl analyze FOLDER` for a folder given as a store, `fdl analyze CKPT_DIR --out
  PATH` for a store that is not there) named a path with a space unquoted, so pasting them ran something else;
- `fdl analyze -` with nothing on stdin said "no checkpoints found in -", "got: nothing".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import warm
from tests.test_analyze import fdl
from tests.test_report import make_store, run_fdl

REPO = Path(__file__).resolve().parents[1]
FULL = Path("/dev/full")
needs_full = pytest.mark.skipif(not FULL.exists(), reason="a device that is always full: Linux's /dev/full")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("s23shell") / "run.h5")


def _with_stdout(stdout: object, *args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` in a fresh process whose stdout is `stdout` (an open file, or None: closed, as `>&-`)."""
    command = [sys.executable, "-m", "fdl_cli", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if stdout is None:  # the shell's `>&-`: Python starts with sys.stdout None
        return subprocess.run(["bash", "-c", 'exec "$@" >&-', "fdl", *command], stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env, check=False)
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, check=False)


COMMANDS = {
    "report --json": ["report", "{store}", "--json"],
    "report --format csv": ["report", "{store}", "--format", "csv"],
    "compare --format json": ["compare", "{store}", "{store}", "--format", "json", "--no-overlap"],
    "export": ["export", "{store}", "--what", "eigenvalues"],
    "classify --json": ["classify", "{store}", "--json"],
    "--version": ["--version"],
    "report --help": ["report", "--help"],
}


@needs_full
@pytest.mark.parametrize("name", COMMANDS)
def test_machine_output_to_a_full_disk_is_an_error_said_in_one_paragraph(store: Path, name: str) -> None:
    args = [arg.format(store=store) for arg in COMMANDS[name]]
    with FULL.open("w") as full:
        done = _with_stdout(full, *args)
    assert done.returncode == 1, done.stderr
    assert "error: could not write to stdout: No space left on device" in done.stderr
    assert "fix: " in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize("name", ["report --json", "export", "classify --json"])
def test_machine_output_to_a_closed_stdout_is_an_error(store: Path, name: str) -> None:
    args = [arg.format(store=store) for arg in COMMANDS[name]]
    done = _with_stdout(None, *args)
    assert done.returncode == 1, done.stderr
    assert "error: could not write to stdout: it is closed" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_table_on_stderr_needs_no_stdout(store: Path) -> None:
    """The report for people goes to stderr: a closed stdout is no error there."""
    done = _with_stdout(None, "report", store)
    assert done.returncode == 0, done.stderr
    assert "d_lr" in done.stderr.lower() or "D_LR" in done.stderr
    # the whole table and its summary, not only a word of the header (or of an error's fix)
    lines = done.stderr.splitlines()
    assert [line.split()[0] for line in lines if line[:4].strip().isdigit()] == ["0", "100", "200"], done.stderr
    assert "3 checkpoints, steps 0–200" in lines and any(line.startswith("final: D_LR ") for line in lines)


@needs_full
def test_analyze_json_to_a_full_disk_keeps_what_it_stored(tmp_path: Path) -> None:
    from tests.test_distributed import _make_run

    run = _make_run(tmp_path / "run")
    out = tmp_path / "run.h5"
    args = ["analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
            "--probe", run / "probe.npz", "--out", out, "--steps", "0,10", "--json"]
    with FULL.open("w") as full:  # a warm child (tests/warm.py): its stdout made anew over the full device
        process = warm.spawn(
            [sys.executable, "-m", "fdl_cli", *map(str, args)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "error: could not write to stdout: No space left on device" in stderr
    assert "Traceback" not in stderr
    again = run_fdl("report", out, "--json")
    assert again.returncode == 0, again.stderr
    assert '"step": 0' in again.stdout  # the first record was committed before its line failed


def test_a_folder_given_as_a_store_is_named_quoted_in_the_command_suggested(tmp_path: Path) -> None:
    folder = tmp_path / "my run"
    folder.mkdir()
    done = run_fdl("report", folder)
    assert done.returncode == 2
    assert f"`fdl analyze '{folder}'`" in done.stderr  # was: `fdl analyze /tmp/.../my run`, two arguments


def test_a_missing_store_is_named_quoted_in_the_command_suggested(tmp_path: Path) -> None:
    missing = tmp_path / "my run.h5"
    done = run_fdl("classify", missing)
    assert done.returncode == 1
    assert f"run `fdl analyze CKPT_DIR --out '{missing}'` first" in done.stderr


def test_analyze_of_an_empty_stdin_says_that_stdin_gave_no_paths(tmp_path: Path) -> None:
    done = fdl("analyze", "-", "--out", str(tmp_path / "run.h5"), stdin="")
    assert done.code == 1
    # was: "no checkpoints found in -" / "got: nothing" / "point at a folder of ... files"
    assert "error: no checkpoints found in the paths read from stdin (-)" in done.stderr
    assert "got: no path on stdin" in done.stderr
    assert "find runs/a -name '*.pt' | fdl analyze -" in done.stderr
