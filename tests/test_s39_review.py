"""Defects found reading the code of the --json announce queue, taken-in part records, `**` patterns, model_changes
and the --watch model-code check (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import sharding
from tests import warm
from tests.cli_run import fdl_in_process
from tests.ranks import torchrun
from tests.test_s27_compat import _run as _compat_run
from tests.test_s37_user import _printed_steps, _stored_steps
from tests.test_s38_takenin import _left_by_the_job, stopped_job  # noqa: F401 - the module's fixture, shared


def test_a_ctrl_c_after_a_parts_take_in_committed_leaves_its_records_printed(
    stopped_job: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C (a real SIGINT) once a part's checkpoints are committed into the store, as its part is removed: they
    were stored and the part gone, but never printed (no later run prints them: it finds them stored)."""
    out = tmp_path / "s.h5"
    part, args = _left_by_the_job(stopped_job, out)
    remove = sharding._remove_rank_part

    def removing(path: Path) -> None:
        signal.raise_signal(signal.SIGINT)
        remove(path)

    monkeypatch.setattr(sharding, "_remove_rank_part", removing)
    done = fdl_in_process(*args)
    monkeypatch.undo()
    assert done.returncode == 130, done.stderr
    assert _stored_steps(out) == [0, 10, 20]
    assert _printed_steps(done.stdout) == [10, 20], done.stderr


#: `fdl analyze` as a rank of a torchrun job, rank 0 given a Ctrl-C (a real SIGINT) as it removes a part it took in
_RANK_REMOVING = """
import os, signal, sys
from fdl_cli import cli, sharding
if os.environ["RANK"] == "0":
    remove = sharding._remove_rank_part
    def removing(path):
        signal.raise_signal(signal.SIGINT)
        remove(path)
    sharding._remove_rank_part = removing
cli.main(sys.argv[1:])
"""


def test_a_ctrl_c_of_rank_0_after_a_parts_take_in_committed_leaves_its_records_printed(
    stopped_job: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same under a torchrun job of two ranks: rank 0 takes the part in."""
    out = tmp_path / "s.h5"
    _, args = _left_by_the_job(stopped_job, out)
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(_RANK_REMOVING, encoding="utf-8")
    done = torchrun(str(wrapper), *args, direct=True)
    assert done.returncode != 0
    assert _stored_steps(out) == [0, 10, 20]
    assert sorted(_printed_steps(done.stdout)) == [10, 20], done.stderr[-4000:]


# ------------------------------------------------------------------ `**` and links to folders


def test_double_star_enters_no_link_to_a_folder_as_bash_globstar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's glob went into each link to a folder: a link to the folder above (`run/a/up -> ..`) gave each
    checkpoint again under run/a/up/a/up/..., 40 links deep, and fdl took the deepest path; two such links, a walk
    with no end. bash's globstar takes a link to a folder as one folder, and goes no further through it."""
    from fdl_cli.checkpoints import expand_sources

    (tmp_path / "run/a/s100").mkdir(parents=True)
    for name in ("run/step_0.pt", "run/a/step_10.pt", "run/a/s100/model.pt"):
        (tmp_path / name).touch()
    (tmp_path / "run/a/up").symlink_to("..")
    (tmp_path / "run/latest").symlink_to("a/s100")
    monkeypatch.chdir(tmp_path)
    assert expand_sources(["run/**/*.pt"]) == [  # bash -O globstar's `run/**/*.pt` lists these
        "run/a/s100/model.pt", "run/a/step_10.pt", "run/a/up/step_0.pt", "run/latest/model.pt", "run/step_0.pt"
    ]  # fmt: skip
    assert expand_sources(["missing/**", "run/step_0.pt/**"]) == []
    (tmp_path / "run/a/up2").symlink_to("..")
    assert expand_sources(["run/**/step_*.pt"]) == [
        "run/a/step_10.pt", "run/a/up/step_0.pt", "run/a/up2/step_0.pt", "run/step_0.pt"
    ]  # fmt: skip


# ------------------------------------------------------------------ analyze --json | a reader that reads nothing

#: `fdl analyze` as its process runs it, marking in MARKS each record's print as it begins and each SIGINT or SIGTERM
#: as fdl's held-back handler takes it (the test sends the next signal once the last one was taken)
_MARKING = """
import os, sys
from fdl_cli import cli, signals

def mark(what):
    with open(os.environ["MARKS"], "a") as marks:
        marks.write(what + "\\n")

emit, record = cli._emit_json, signals.Deferred.record

def emitting(obj, stream=None):
    mark("print")
    emit(obj, stream)

def recording(self, signum, frame):
    mark("signal")
    record(self, signum, frame)

cli._emit_json, signals.Deferred.record = emitting, recording
sys.argv[0] = "fdl"
from fdl_cli.__main__ import run
run()
"""


def _marks(path: Path, what: str, count: int, process: Any) -> None:
    """Wait until MARKS holds `count` lines of `what` (the process still running)."""
    for _ in range(1200):
        if path.exists() and path.read_text().split().count(what) >= count:
            return
        assert process.poll() is None, f"ended with {process.returncode} before {count} {what}"
        time.sleep(0.05)
    raise AssertionError(f"no {count} {what} in {path}")


def test_a_second_ctrl_c_ends_a_json_print_that_waits_on_a_pipe_nobody_reads(tmp_path: Path) -> None:
    """`fdl analyze --json | less`, scrolled no further: its stdout's pipe full, the first record's print waits. The
    second Ctrl-C stopped that print, but the way out printed the rest to the same pipe and waited again, as did its
    last flush of what stdout still held: seven Ctrl-Cs in all, the summary lost. What stdout holds or is left to
    print is dropped once a print was stopped so (the store holds every checkpoint)."""
    ckpts = _compat_run(tmp_path, (0, 10, 20))
    marks = tmp_path / "marks"
    (tmp_path / "marking.py").write_text(_MARKING, encoding="utf-8")
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: a page; filled, a print waits
        os.set_blocking(write, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write, b"x" * 512)
        os.set_blocking(write, True)
        process = warm.spawn(
            [sys.executable, tmp_path / "marking.py", "analyze", ckpts, "--model", f"{tmp_path}/model.py:build",
             "--probe", tmp_path / "probe.npz", "-o", tmp_path / "run.h5", "--device", "cpu", "--json"],
            stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ, "MARKS": str(marks)},
        )  # fmt: skip
        os.close(write)
        write = -1
        try:
            _marks(marks, "print", 1, process)
            for count in (1, 2):
                process.send_signal(signal.SIGINT)
                _marks(marks, "signal", count, process)
            try:
                _, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("two Ctrl-Cs, and fdl still waits on the pipe") from None
        finally:
            process.kill()
            process.wait()
    finally:
        os.close(read)
        if write != -1:
            os.close(write)
    assert process.returncode == 130, stderr
    said = stderr.strip().splitlines()
    assert said[-1] == "interrupted: what was completed is in the store; run the same command again to resume", stderr
    assert _stored_steps(tmp_path / "run.h5")[0] == 0


# ------------------------------------------------------------------ analyze --drop stopped in its commit


def test_a_ctrl_c_during_the_drops_commit_says_the_drop_and_prints_the_record_compared_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (a real SIGINT) while `--drop`'s commit runs is held back to its end, then raised by the writer's
    flush: the steps were gone and step 10 compared again, durably, but neither `{"dropped": [...]}` nor step
    10's record was printed, and the summary said no drop."""
    from fdl_cli.store import StoreWriter
    from tests.test_s19_store import _read_by_regex_too, _steps, fdl

    common, _, out, _ = _read_by_regex_too(tmp_path, capsys)
    execute, did = StoreWriter._execute, []

    def executing(self: StoreWriter, plan: Any) -> Any:
        if self._drop_steps and not did:  # the drop's commit, as it begins
            did.append("signalled")
            signal.raise_signal(signal.SIGINT)
        return execute(self, plan)

    monkeypatch.setattr(StoreWriter, "_execute", executing)
    status, stdout, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3", "--json")
    monkeypatch.undo()
    assert status == 130 and did == ["signalled"], err
    assert _steps(out) == [0, 10, 20, 30]
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[0] == {"dropped": [1, 2, 3]}, stdout
    assert [(line["step"], line["prev_step"]) for line in lines[1:]] == [(10, 0)], lines
    assert "3 dropped (--drop 1,2,3)" in err, err
