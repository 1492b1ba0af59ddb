"""Session 24: `fdl analyze --watch` beside a real trainer (a tiny MLP saving checkpoints every second or so,
by torch.save straight to the final name, to a temporary name then renamed, safetensors, Lightning's names and
last.ckpt, rotation) with `fdl report` run meanwhile. What it found, each test failing before its fix: a
checkpoint the trainer's rotation deleted between a poll and its read, a half-written temporary file renamed to
its final name, and `fdl report` of a store a watch has not written yet. The watch runs in this process (each
poll's sleep replaced by what the trainer does between two polls, then Ctrl-C: `tests.test_prev_walkback`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import pipeline
from fdl_cli.options import AnalyzeOptions
from fdl_cli.progress import NullReporter
from fdl_cli.store import _WriterLock
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored


def _watch(folder: Path, out: Path) -> tuple[Any, NullReporter]:
    reporter = NullReporter()
    summary = pipeline.run_analyze(
        AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=out, anchor_size=100, batch_size=64, device="cpu",
            watch=True, poll_seconds=0.01,
        ),
        reporter=reporter,
    )
    return summary, reporter


def test_a_checkpoint_deleted_between_a_poll_and_its_read_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer keeping its last checkpoints deletes one that a poll found, before fdl reads it: it was an error
    ("no longer exists", fix "re-run discovery; was it deleted?") listed among the failures. It is a note now, not
    a failure, and the next checkpoint is compared with the one before it, as in a run over the files left."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    victim = folder / "step_20.safetensors"
    real = pipeline._rediscover

    def rediscover(*args: Any, **kwargs: Any) -> Any:
        refs = real(*args, **kwargs)
        if any(ref.path == victim for ref in refs):
            victim.unlink()  # the trainer's rotation, right after the poll found it
        return refs

    monkeypatch.setattr(pipeline, "_rediscover", rediscover)
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_20.safetensors", "step_30.safetensors")):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert summary.interrupted and summary.failed == []
    assert reporter.errors == []
    assert [note for note in reporter.notes if "step_20" in note] == [
        f"{victim} (step 20) is gone (deleted or renamed) before it was analysed: skipped, as a run over the files "
        "left would skip it; the next checkpoint is compared with the one before it"]
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {0: None, 10: 0, 30: 10}


def test_a_half_written_temporary_file_renamed_to_its_final_name_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer that saves to a temporary name with a checkpoint suffix, then renames it, paused mid-write for
    longer than the settling time: the temporary file was reported as cut short, and stayed among the summary's
    failures after the rename, though the checkpoint was analysed under its final name. Its failure goes with
    the rename (the same file, now under a name the watch analyses), with a note."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    data = (source / "step_20.safetensors").read_bytes()
    temporary, final = folder / "tmp_step_20.safetensors", folder / "step_20.safetensors"

    def half_written() -> None:
        temporary.write_bytes(data[: len(data) // 2])
        past = time.time() - 60
        os.utime(temporary, (past, past))

    def finished_and_renamed() -> None:
        with temporary.open("ab") as file:
            file.write(data[len(data) // 2:])
        past = time.time() - 30
        os.utime(temporary, (past, past))
        os.replace(temporary, final)

    with _polls(monkeypatch, half_written, finished_and_renamed, lambda: None):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert len(reporter.errors) == 1 and "tmp_step_20.safetensors" in reporter.errors[0]  # said when it was seen
    assert summary.failed == []
    assert f"{temporary}, which failed, was renamed to {final}: analysed under that name" in reporter.notes
    stored = _stored(tmp_path / "s.h5")
    assert sorted(stored) == [0, 10, 20] and stored[20]["path"] == "step_20.safetensors"


def test_report_of_a_store_that_a_running_analyze_has_not_written_yet_says_to_wait(tmp_path: Path) -> None:
    """`fdl report` run beside `fdl analyze --watch` before its first commit said "no fdl store at ..." with the fix
    "run `fdl analyze CKPT_DIR --out ...` first": the command already running. While a live fdl process holds the
    store's lock, the error names it and says to wait for its first checkpoint; without one, the fix says that a
    watch writes the store once it has analysed its first checkpoint."""
    out = tmp_path / "live.h5"
    lock = _WriterLock(out)
    lock.acquire()  # as `fdl analyze` holds it from the start of its writing
    try:
        done = fdl_in_process("report", out)
    finally:
        lock.release()
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"error: no checkpoint is stored in {out} yet: it is being written by pid {os.getpid()}")
    assert "fix: wait until it has stored its first checkpoint, then run this again" in done.stderr
    after = fdl_in_process("report", out)
    assert after.returncode == 1
    assert f"error: no fdl store at {out}" in after.stderr
    assert "(`fdl analyze --watch` writes it once it has analysed its first checkpoint)" in after.stderr


def test_a_half_written_last_ckpt_that_becomes_a_copy_of_a_checkpoint_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning writes `epoch=N-step=S.ckpt`, then `last.ckpt` (the same weights) straight to its name. Read
    while the trainer paused mid-write, `last.ckpt` was reported cut short, and stayed among the summary's
    failures for the rest of the watch, though each later save of it was whole (a copy of that step's
    checkpoint, left out as such): it was tried again only as a checkpoint to analyse. Once it has changed and
    reads as a copy, its failure goes, with a note; said when it was seen, as before."""
    import torch
    from safetensors.torch import load_file

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "probe.npz").write_bytes((source / "probe.npz").read_bytes())
    last = folder / "last.ckpt"

    def save(step: int, *, last_cut: bool) -> None:
        checkpoint = {"state_dict": load_file(str(source / f"step_{step}.safetensors")), "global_step": step}
        past = time.time() - 60
        torch.save(checkpoint, folder / f"epoch={step // 10}-step={step}.ckpt")
        torch.save(checkpoint, last)
        if last_cut:  # as it stood when the trainer paused mid-write
            last.write_bytes(last.read_bytes()[:300])
        for path in (folder / f"epoch={step // 10}-step={step}.ckpt", last):
            os.utime(path, (past, past))
        past += 1  # a later time: the file changed

    def last_whole(step: int) -> None:
        torch.save({"state_dict": load_file(str(source / f"step_{step}.safetensors")), "global_step": step}, last)
        past = time.time() - 30
        os.utime(last, (past, past))

    save(0, last_cut=True)
    with _polls(monkeypatch, lambda: last_whole(0), lambda: save(10, last_cut=True), lambda: last_whole(10),
                lambda: None):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert len(reporter.errors) == 2 and all("last.ckpt" in error for error in reporter.errors)
    assert summary.failed == []
    for step in (0, 10):
        assert (f"{last} changed since it failed, and now holds the same weights and step ({step}) as "
                f"{folder / f'epoch={step // 10}-step={step}.ckpt'}: left out as a copy, no longer failed") in reporter.notes
    assert sorted(_stored(tmp_path / "s.h5")) == [0, 10]


def test_a_checkpoint_deleted_before_it_settled_is_named_in_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer keeping only its last checkpoint, saving more often than the settling time (half a --poll, at
    least 1 s): a poll finds each file still being written, and the next finds it deleted. Those checkpoints
    were never analysed without a word; a note names them, and why."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    fresh = folder / "step_20.safetensors"

    def save_20_now() -> None:
        fresh.write_bytes((source / "step_20.safetensors").read_bytes())  # modified now: not settled yet

    def rotate() -> None:
        fresh.unlink()
        _arrive(source, folder, "step_30.safetensors")

    with _polls(monkeypatch, save_20_now, rotate, lambda: None):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert summary.failed == [] and reporter.errors == []
    assert [note for note in reporter.notes if "deleted" in note] == [
        "deleted before it was analysed, 1 checkpoint the training job removed within 1 s of writing it (--watch "
        f"reads a file once it has not changed for half a --poll, at least 1 s): {fresh} (step 20)"]
    assert {step: record["prev_step"] for step, record in _stored(tmp_path / "s.h5").items()} == {0: None, 10: 0, 30: 10}
