"""Review of `fdl analyze` beside a rotating trainer: a checkpoint that went away between the scan (or a --watch
poll) and its read is skipped as deleted, with a note and exit 0. Only one that is gone may be: each test failed
before its fix.

- a checkpoint the run may no longer reach for another reason (EACCES: its folder's permissions changed; EIO: the
  disk fails) was skipped as "gone (deleted or renamed)", exit 0, where it failed before: `os.path.lexists` is
  False on any error. Where only the file's own check failed, the run stopped with a traceback;
- a run whose whole folder was deleted after the reference was read (`rm -rf run/`, not a rotation, which keeps
  its folder) skipped every other checkpoint as the rotation's, "1 checkpoint analysed", exit 0.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import checkpoints, pipeline
from tests import warm
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _make_run, _stored

MODEL = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--anchor-size", "100", "--device",
         "cpu")


def _analyze(folder: Path, out: Path, probe: Path) -> Any:
    return fdl_in_process("analyze", folder, "--probe", probe, "--out", out, *MODEL)


@pytest.mark.parametrize(("code", "said"), [(errno.EACCES, "permission denied"), (errno.EIO, "Input/output error")])
def test_a_checkpoint_that_cannot_be_reached_after_the_scan_is_an_error_not_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, said: str
) -> None:
    """After the scan, looking at step 20's file fails with `code` (as for any user where root reads all: each
    stat, lstat and open of it raises): a failure the user must hear of (exit 1), named, never "is gone"."""
    folder = _make_run(tmp_path / "run", [0, 10, 20, 30])
    victim = folder / "step_20.safetensors"
    real_discover, real_stat, real_lstat, real_open = checkpoints.discover_checkpoints, os.stat, os.lstat, open

    def failing(function: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) == str(victim):
                raise OSError(code, os.strerror(code), str(path))
            return function(path, *args, **kwargs)
        return call

    def discover(*args: Any, **kwargs: Any) -> Any:
        found = real_discover(*args, **kwargs)
        monkeypatch.setattr(os, "stat", failing(real_stat))
        monkeypatch.setattr(os, "lstat", failing(real_lstat))
        monkeypatch.setattr(checkpoints, "open", failing(real_open), raising=False)
        return found

    monkeypatch.setattr(checkpoints, "discover_checkpoints", discover)
    done = _analyze(folder, tmp_path / "s.h5", folder / "probe.npz")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "is gone" not in done.stderr
    assert f"error: cannot read the checkpoint {victim}\n  got: {said}" in done.stderr
    assert f"  failed: cannot read the checkpoint {victim}" in done.stderr
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {
        0: None, 10: 0, 30: 10}


@pytest.mark.parametrize("given", ["the folder", "a link to it"])
def test_a_run_whose_folder_is_deleted_after_the_reference_was_read_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """`rm -rf run/` once step 0, the reference, is read: a rotation deletes checkpoints, never their folder, and
    a run over the files left fails ("no checkpoint"). Each checkpoint left fails (exit 1), as before the skip of
    deleted checkpoints; the reference stays stored. The folder given may be a link to the one removed."""
    real_folder = _make_run(tmp_path / "run", [0, 10, 20])
    folder = real_folder
    if given == "a link to it":
        folder = tmp_path / "link"
        folder.symlink_to(real_folder)
    probe = tmp_path / "probe.npz"
    shutil.copyfile(folder / "probe.npz", probe)
    real_load = pipeline._load

    def load(ref: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = real_load(ref, *args, **kwargs)
        if ref.step == 0:
            shutil.rmtree(real_folder)
        return loaded

    monkeypatch.setattr(pipeline, "_load", load)
    done = _analyze(folder, tmp_path / "s.h5", probe)
    assert done.returncode == 1, done.stderr
    assert "is gone" not in done.stderr and "Traceback" not in done.stderr
    assert f"  failed: checkpoint {folder / 'step_10.safetensors'} no longer exists" in done.stderr
    assert f"  failed: {folder / 'step_20.safetensors'} (the same reason as" in done.stderr

    assert sorted(_stored(tmp_path / "s.h5")) == [0]


@pytest.mark.parametrize("copied", ["long ago", "just now"])
def test_a_watch_given_a_copy_of_the_reference_does_not_ask_for_one_when_the_rotation_deletes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copied: str
) -> None:
    """usage.md's advice beside a rotating trainer: copy the reference out of the rotation's reach and give that
    folder too (`fdl analyze run/ saved/ --watch`). Where the run's own file was taken as the reference (`saved`
    sorts after `run`), its deletion noted that the same command run again "needs its file: restore it, or give a
    copy of it among the checkpoints", which the user had done, and which resumes (the copy settled, or still
    being written when the poll looked)."""
    from tests.test_prev_walkback import _arrive, _polls

    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copyfile(folder / "step_0.safetensors", saved / "step_0.safetensors")
    if copied == "long ago":
        os.utime(saved / "step_0.safetensors", (1e9, 1e9))
    out, probe = tmp_path / "s.h5", folder / "probe.npz"

    def rotate(gone: int, new: int) -> None:
        (folder / f"step_{gone}.safetensors").unlink()
        _arrive(source, folder, f"step_{new}.safetensors")

    with _polls(monkeypatch, lambda: rotate(0, 20), lambda: rotate(10, 30)):
        done = fdl_in_process("analyze", folder, saved, "--watch", "--poll", "0.1", "--probe", probe, "--out", out,
                              *MODEL)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert "the reference, is gone" not in done.stderr
    _arrive(source, folder, "step_40.safetensors")
    resumed = fdl_in_process("analyze", folder, saved, "--probe", probe, "--out", out, *MODEL)
    assert resumed.returncode == 0, resumed.stderr
    assert {step: record["prev_step"] for step, record in _stored(out).items()} == {
        0: None, 10: 0, 20: 10, 30: 20, 40: 30}


def test_the_count_of_stored_checkpoints_gone_holds_for_a_store_made_from_another_folder(tmp_path: Path) -> None:
    """A store made with `cd ~/exp; fdl analyze run` records `run/step_N.safetensors`; a resume from elsewhere
    after the rotation deleted steps 0 and 10 counted every stored checkpoint as gone ("without the 3 stored
    checkpoints whose files are gone"), step 20's file there all the same: --overwrite drops 2."""
    import sys

    from tests.cli_run import REPO

    folder = _make_run(tmp_path / "run", [0, 10, 20])
    made = warm.run([sys.executable, "-m", "fdl_cli", "analyze", "run", "--probe", "run/probe.npz", "--out",
                     "s.h5", *MODEL], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert made.returncode == 0, made.stderr
    (folder / "step_0.safetensors").unlink()
    (folder / "step_10.safetensors").unlink()
    shutil.copyfile(_make_run(tmp_path / "source") / "step_30.safetensors", folder / "step_30.safetensors")
    done = _analyze(folder, tmp_path / "s.h5", folder / "probe.npz")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "  got: the store's step 0 is run/step_0.safetensors, which is gone\n" in done.stderr
    assert "starts afresh from the files there now, without the 2 stored checkpoints whose files are gone" in done.stderr


def test_the_refused_resume_names_a_few_of_the_files_given_not_all(tmp_path: Path) -> None:
    """`fdl analyze run/step_*.safetensors` (the shell's list) after the rotation deleted the reference: the fix's
    `fdl analyze SOURCES COPY ...` repeated every file given, a line as long as the run (thousands of checkpoints)."""
    steps = [0, 10, 20, 30, 40, 50]
    folder = _make_run(tmp_path / "run", steps)
    out = tmp_path / "s.h5"
    files = [folder / f"step_{step}.safetensors" for step in steps]
    assert fdl_in_process("analyze", *files, "--probe", folder / "probe.npz", "--out", out, *MODEL).returncode == 0
    files[0].unlink()
    done = fdl_in_process("analyze", *files[1:], "--probe", folder / "probe.npz", "--out", out, *MODEL)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    fix = next(line for line in done.stderr.splitlines() if line.startswith("  fix: "))
    assert f"(`fdl analyze {files[1]} {files[2]} ... COPY ...`, a copy in another folder)" in fix
    assert str(files[5]) not in fix
