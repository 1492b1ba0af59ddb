"""`fdl analyze` (with and without --watch) beside a training job that rotates, renames and rewrites its
checkpoints. What running it beside a simulated trainer found, each test failing before its fix:

- a checkpoint whose modification time is in the future (an NFS server's clock ahead of this machine's) was never
  analysed by --watch, without a word: a file is read once it has not changed for the settling time, and its age
  said it had just been written for as long as the clocks differed;
- a plain `fdl analyze` of a folder whose checkpoint the training job's rotation deleted between the scan and its
  read failed ("no longer exists", exit 1), where --watch skips it with a note;
- a resume (or a --watch started again) after the rotation deleted the reference checkpoint advised --overwrite,
  which drops every stored checkpoint whose file the rotation deleted, and not the copy of the reference that
  resumes.

The watch runs in this process (each poll's sleep replaced by what the trainer does between two polls, then
Ctrl-C: `tests.test_prev_walkback`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import checkpoints, pipeline
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored

MODEL = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--anchor-size", "100", "--device",
         "cpu")


def _analyze(folder: Path, out: Path, *more: object) -> Any:
    return fdl_in_process("analyze", folder, *more, "--probe", folder / "probe.npz", "--out", out, *MODEL)


def test_a_checkpoint_modified_in_the_future_is_analysed_once_it_stops_changing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An NFS server whose clock is an hour ahead: each new file's time is an hour from now. It is read once two
    polls the settling time apart find it unchanged, with a note (once) saying why its time is not used."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    ahead = time.time() + 3600

    def arrive(name: str) -> None:
        shutil.copyfile(source / name, folder / name)
        os.utime(folder / name, (ahead, ahead))

    with _polls(monkeypatch, lambda: arrive("step_20.safetensors"), lambda: time.sleep(1.05),
                lambda: arrive("step_30.safetensors"), lambda: time.sleep(1.05)):
        done = _analyze(folder, tmp_path / "s.h5", "--watch", "--poll", "0.1")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {
        0: None, 10: 0, 20: 10, 30: 20}
    notes = [line for line in done.stderr.splitlines() if "in the future" in line]
    assert notes == [
        f"note: {folder / 'step_20.safetensors'} was modified 60 min in the future, by this machine's clock (a file "
        "server's clock ahead of it?): --watch reads such a file once it has not changed for 1 s"]


def test_a_checkpoint_deleted_between_the_scan_and_its_read_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training job's rotation deletes step 20 while a plain `fdl analyze` of the folder analyses the steps
    before it: skipped with a note, exit 0, and the next checkpoint compared with the one before it, as in a run
    over the files left (it was an error, "no longer exists", exit 1)."""
    folder = _make_run(tmp_path / "run", [0, 10, 20, 30])
    victim = folder / "step_20.safetensors"
    real = checkpoints.discover_checkpoints

    def discover(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        victim.unlink(missing_ok=True)  # the rotation, right after the scan found it
        return found

    monkeypatch.setattr(checkpoints, "discover_checkpoints", discover)
    done = _analyze(folder, tmp_path / "s.h5")
    assert done.returncode == 0, done.stderr
    assert (f"note: {victim} (step 20) is gone (deleted or renamed) before it was analysed: skipped, as a run over "
            "the files left would skip it; the next checkpoint is compared with the one before it") in done.stderr
    assert "error" not in done.stderr
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {
        0: None, 10: 0, 30: 10}


def test_a_resume_after_the_rotation_deleted_the_reference_names_the_copy_that_resumes(tmp_path: Path) -> None:
    """A Trainer keeping its last 2 checkpoints: steps 0 - 20 stored, then 0 and 10 deleted and 30 written. The
    resume cannot compare step 30 with step 0 (param_dist_init needs its weights): the error says that --overwrite
    would drop the 2 stored checkpoints whose files are gone, and that a copy of step 0's file given beside the
    folder resumes; given so, it does, keeping them."""
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "s.h5"
    assert _analyze(folder, out).returncode == 0
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy2(folder / "step_0.safetensors", kept / "step_0.safetensors")
    (folder / "step_0.safetensors").unlink()
    (folder / "step_10.safetensors").unlink()
    shutil.copyfile(_make_run(tmp_path / "source") / "step_30.safetensors", folder / "step_30.safetensors")
    before = out.read_bytes()
    done = _analyze(folder, out)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"error: {out} was analysed with step 0 as the reference, which none of this run's checkpoints has\n"
        f"  got: the store's step 0 is {folder / 'step_0.safetensors'}, which is gone\n")
    assert ("  fix: restore that checkpoint, or give a copy of its file among the checkpoints (`fdl analyze "
            f"{folder} COPY ...`, a copy in another folder), to add to the store; --overwrite (or another --out) "
            "starts afresh from the files there now, without the 2 stored checkpoints whose files are gone"
            ) in done.stderr
    assert out.read_bytes() == before
    resumed = fdl_in_process("analyze", folder, kept, "--probe", folder / "probe.npz", "--out", out, *MODEL)
    assert resumed.returncode == 0, resumed.stderr
    assert {step: record["prev_step"] for step, record in _stored(out).items()} == {0: None, 10: 0, 20: 10, 30: 20}


def _trainer_folders(folder: Path, flat: Path, steps: list[int]) -> None:
    """A Trainer's checkpoint-N folders (model.safetensors, trainer_state.json) of `flat`'s weights, settled."""
    past = time.time() - 60
    for step in steps:
        saved = folder / f"checkpoint-{step}"
        saved.mkdir()
        shutil.copyfile(flat / f"step_{step}.safetensors", saved / "model.safetensors")
        (saved / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        for path in (saved / "model.safetensors", saved / "trainer_state.json", saved):
            os.utime(path, (past, past))


@pytest.mark.parametrize("watch", [True, False])
def test_a_trainer_folder_read_while_the_rotation_removes_it_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch: bool
) -> None:
    """save_total_limit's rmtree of checkpoint-30 has removed its model.safetensors, not yet the folder, when fdl
    reads it: the folder was an error saying it held another model's weights ("4 missing keys"), listed among the
    failures for the rest of the run (exit 1). It is gone as a deleted file is: skipped with a note."""
    flat = _make_run(tmp_path / "flat")
    folder = tmp_path / "run"
    folder.mkdir()
    _trainer_folders(folder, flat, [0, 10, 20] if watch else [0, 10, 20, 30, 40])
    victim = folder / "checkpoint-30"
    real, rediscover = checkpoints.discover_checkpoints, pipeline._rediscover

    def half_removed(refs: Any) -> None:
        if any(ref.path == victim for ref in refs):
            (victim / "model.safetensors").unlink(missing_ok=True)  # the rmtree, half done when fdl reads it

    def polled(*args: Any, **kwargs: Any) -> Any:  # found by a poll, settled
        refs = rediscover(*args, **kwargs)
        half_removed(refs)
        return refs

    def scanned(*args: Any, **kwargs: Any) -> Any:  # found by the scan
        found = real(*args, **kwargs)
        half_removed(found.checkpoints)
        return found

    if watch:
        monkeypatch.setattr(pipeline, "_rediscover", polled)
    else:
        monkeypatch.setattr(checkpoints, "discover_checkpoints", scanned)
    more = ("--watch", "--poll", "0.1") if watch else ()
    with _polls(monkeypatch, lambda: _trainer_folders(folder, flat, [30]),
                lambda: (shutil.rmtree(victim), _trainer_folders(folder, flat, [40]))):
        done = fdl_in_process("analyze", folder, *more, "--probe", flat / "probe.npz", "--out", tmp_path / "s.h5",
                              *MODEL)
    assert done.returncode == (130 if watch else 0), done.stderr
    assert "error" not in done.stderr and "Traceback" not in done.stderr
    assert (f"note: {victim} (step 30) is gone (deleted or renamed) before it was analysed: skipped, as a run over "
            "the files left would skip it; the next checkpoint is compared with the one before it") in done.stderr
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {
        0: None, 10: 0, 20: 10, 40: 20}


def test_a_watch_whose_reference_the_rotation_deletes_says_what_a_resume_will_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotation deletes step 0, the reference, during the watch: the watch goes on comparing with it (it holds
    its weights), but the same command run again is refused for want of its file, which nothing said until then.
    A note says so once, when the file goes."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])

    def rotate(*gone: int, new: int) -> None:
        for step in gone:
            (folder / f"step_{step}.safetensors").unlink()
        _arrive(source, folder, f"step_{new}.safetensors")

    with _polls(monkeypatch, lambda: rotate(0, new=30), lambda: rotate(10, new=40)):
        done = _analyze(folder, tmp_path / "s.h5", "--watch", "--poll", "0.1")
    assert done.returncode == 130 and "Traceback" not in done.stderr
    notes = [line for line in done.stderr.splitlines() if "the reference" in line]
    assert notes == [
        f"note: {folder / 'step_0.safetensors'} (step 0), the reference, is gone (the training job's rotation?): this "
        "watch still compares with it, but the same command run again needs its file (param_dist_init compares "
        "with its weights): restore it, or give a copy of it among the checkpoints"]
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {
        0: None, 10: 0, 20: 10, 30: 20, 40: 30}
