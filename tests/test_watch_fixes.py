"""`fdl analyze --watch` following a live training job (found by exercising it against real trainers).

Each test runs --watch in this process: each poll's sleep is replaced by what the trainer does
between two polls (`tests.test_prev_walkback._polls`), then Ctrl-C.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fdl_cli.errors import CheckpointError
from tests.test_prev_walkback import _analyze, _arrive, _make_run, _polls, _stored

torch.set_num_threads(1)


def _source_and_empty_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run's checkpoints to save from (`source`), and the folder a trainer saves them into, its probe only."""
    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(source / "probe.npz", folder / "probe.npz")
    return source, folder


def test_watch_keeps_to_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps selects the checkpoints that appear while watching too (all of them were analysed)."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors", "step_40.safetensors")):
        _, records = _analyze(folder, out, watch=True, poll_seconds=0.01, steps=(0, 20))
    assert [r["step"] for r in records] == [0, 20]
    assert sorted(_stored(out)) == [0, 20]


def test_watch_keeps_to_every(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--every N keeps every N-th checkpoint in step order among those that appear while watching."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors", "step_40.safetensors",
                                             "step_50.safetensors", "step_60.safetensors")):
        _, records = _analyze(folder, out, watch=True, poll_seconds=0.01, every=2)
    assert sorted(_stored(out)) == [0, 20, 40, 60]
    assert [r["step"] for r in records] == [0, 20, 40, 60]


def test_watch_compares_with_a_rotated_away_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer that keeps the reference and its last checkpoint only (rotation) deletes the previous
    checkpoint's file before the next one is analysed: the next is still compared with it, as in one
    run over all the files, not with the reference."""
    expected = _stored_of(tmp_path, _make_run(tmp_path / "whole", [0, 10, 20, 30]))
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])

    def rotate(step: int) -> None:
        _arrive(source, folder, f"step_{step}.safetensors")
        (folder / f"step_{step - 10}.safetensors").unlink()

    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: rotate(20), lambda: rotate(30)):
        _, records = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    stored = _stored(out)
    assert [stored[step]["prev_step"] for step in (10, 20, 30)] == [0, 10, 20]
    for step in (10, 20, 30):
        assert stored[step]["cka_prev"] == pytest.approx(expected[step]["cka_prev"], rel=1e-9)


def _stored_of(tmp_path: Path, folder: Path) -> dict[int, dict[str, object]]:
    out = tmp_path / f"{folder.name}.h5"
    _analyze(folder, out)
    return _stored(out)


def _half_written(source: Path, staging: Path, step: int, suffix: str) -> str:
    """In `staging`: step_<step><suffix> as a trainer leaves it while it writes, cut short, settled
    (the trainer paused for longer than --watch's settling time), and full_<step><suffix>, what it
    becomes."""
    data = (source / f"step_{step}.safetensors").read_bytes()
    if suffix == ".pt":
        buffer = io.BytesIO()
        torch.save(load_file(str(source / f"step_{step}.safetensors")), buffer)
        data = buffer.getvalue()
    name = f"step_{step}{suffix}"
    (staging / name).write_bytes(data[: len(data) - 40])  # the header whole, the tensor data cut short
    past = time.time() - 60
    os.utime(staging / name, (past, past))
    (staging / f"full_{step}{suffix}").write_bytes(data)
    return name


def _finish_into(staging: Path, folder: Path, step: int, suffix: str) -> None:
    (staging / f"full_{step}{suffix}").replace(folder / f"step_{step}{suffix}")
    past = time.time() - 30
    os.utime(folder / f"step_{step}{suffix}", (past, past))


def test_watch_reads_a_half_written_checkpoint_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint the trainer is still writing when --watch starts is a bad checkpoint; once the
    trainer has finished it (it changed) --watch analyses it (it was missed for the rest of the watch
    and the run ended with exit 1), and its stored successor is compared with it."""
    expected = _stored_of(tmp_path, _make_run(tmp_path / "whole", [0, 10, 20, 30]))
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    staging = tmp_path / "staging"
    staging.mkdir()
    out = tmp_path / "s.h5"
    name = _half_written(source, staging, 20, ".pt")
    (staging / name).replace(folder / name)
    with _polls(
        monkeypatch,
        lambda: _arrive(source, folder, "step_30.safetensors"),
        lambda: _finish_into(staging, folder, 20, ".pt"),
    ):
        summary, _ = _analyze(folder, out, watch=True, poll_seconds=0.01)
    stored = _stored(out)
    assert sorted(stored) == [0, 10, 20, 30]
    assert summary.failed == []
    assert [stored[step]["prev_step"] for step in (10, 20, 30)] == [0, 10, 20]
    for step in (20, 30):
        assert stored[step]["cka_prev"] == pytest.approx(expected[step]["cka_prev"], rel=1e-9)



def test_watch_waits_for_the_first_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--watch started with the training job, before its first checkpoint (or while the first is
    being written) failed: "no checkpoints found" / "cannot read", exit 1. It waits, as for later ones."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [])

    def half_written() -> None:
        data = (source / "step_0.safetensors").read_bytes()
        (folder / "step_0.safetensors").write_bytes(data[: len(data) // 2])

    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: None, half_written,
                lambda: _arrive(source, folder, "step_0.safetensors", "step_10.safetensors")):
        summary, records = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted and not summary.failed
    assert [r["step"] for r in records] == [0, 10] and sorted(_stored(out)) == [0, 10]
    # Without --watch an empty folder is still an error at once.
    empty = _make_run(tmp_path / "empty", [])
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        _analyze(empty, tmp_path / "e.h5")
    # Ctrl-C while waiting: no store is made.
    with _polls(monkeypatch), pytest.raises(KeyboardInterrupt):
        _analyze(empty, tmp_path / "w.h5", watch=True, poll_seconds=0.01)
    assert not (tmp_path / "w.h5").exists()


def test_a_checkpoint_that_arrives_late_updates_its_successor_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 20 arriving after 30 gives 30 a new previous checkpoint: 30 is updated (its record printed
    again with the new values), not counted as analysed twice ("5 checkpoints analysed" for 4)."""
    expected = _stored_of(tmp_path, _make_run(tmp_path / "whole", [0, 10, 20, 30]))
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors"),
                lambda: _arrive(source, folder, "step_20.safetensors")):
        summary, records = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert sorted(summary.analysed) == [0, 10, 20, 30] and summary.refreshed == [30]
    assert "4 checkpoints analysed" in summary.message() and "1 updated" in summary.message()
    assert [r["step"] for r in records] == [0, 10, 30, 20, 30]
    stored = _stored(out)
    assert stored[30]["prev_step"] == 20 and records[-1]["cka_prev"] == stored[30]["cka_prev"]
    assert stored[30]["cka_prev"] == pytest.approx(expected[30]["cka_prev"], rel=1e-12)


def test_a_corrupt_checkpoint_that_appears_while_watching_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated file that appeared during --watch was dropped without a word (not listed, exit 0). It
    is reported once settled, and analysed when the trainer writes it again."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])

    def corrupt() -> None:
        data = (source / "step_20.safetensors").read_bytes()
        (folder / "step_20.safetensors").write_bytes(data[: len(data) // 2])
        past = time.time() - 60
        os.utime(folder / "step_20.safetensors", (past, past))

    out = tmp_path / "s.h5"
    with _polls(monkeypatch, corrupt, lambda: None):
        summary, records = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert [Path(path).name for path, _ in summary.failed] == ["step_20.safetensors"]
    assert "truncated" in summary.failed[0][1] and [r["step"] for r in records] == [0, 10]
    # Written again, whole: analysed, and no longer listed as failed.
    with _polls(monkeypatch, corrupt, lambda: _arrive(source, folder, "step_20.safetensors")):
        summary, records = _analyze(folder, tmp_path / "t.h5", watch=True, poll_seconds=0.01)
    assert not summary.failed and [r["step"] for r in records] == [0, 10, 20]


def test_watch_waits_for_a_step_that_steps_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--watch --steps 0,20` before step 20 was written failed at the start ("--steps asks for step(s)
    20 which no checkpoint has"); it is waited for, as any checkpoint is while watching."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    with pytest.raises(CheckpointError, match="--steps asks for step"):
        _analyze(folder, tmp_path / "now.h5", steps=(0, 20))
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_20.safetensors", "step_30.safetensors")):
        summary, records = _analyze(folder, out, watch=True, poll_seconds=0.01, steps=(0, 20))
    assert summary.interrupted and [r["step"] for r in records] == [0, 20] and sorted(_stored(out)) == [0, 20]
    assert _stored(out)[20]["prev_step"] == 0  # "previous" among the checkpoints analysed (--steps), as at the start


def _lfs_pointer(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 123456\n")
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def test_watch_reports_an_unreadable_file_while_waiting_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose only checkpoint cannot be read (a Git LFS pointer): without --watch an error at
    once; --watch waited for ever without a word (and --strict did not stop). It is reported while
    waiting, once, and listed in the summary when a readable checkpoint arrives."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [])
    _lfs_pointer(folder, "step_0.pt")
    (folder / "notes.txt").write_text("x")

    def analyze(out: Path, **options: object) -> tuple[object, NullReporter]:
        reporter = NullReporter()
        summary = run_analyze(
            AnalyzeOptions(
                sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
                probe_specs=(str(folder / "probe.npz"),), out=out, anchor_size=100, batch_size=64, device="cpu",
                watch=True, poll_seconds=0.01, **options,  # type: ignore[arg-type]
            ),
            reporter=reporter,
        )
        return summary, reporter

    with _polls(monkeypatch, lambda: None), pytest.raises(KeyboardInterrupt):
        analyze(tmp_path / "a.h5")
    # --strict stops at it, as without --watch
    with _polls(monkeypatch, lambda: None), pytest.raises((CheckpointError, KeyboardInterrupt)) as stopped:
        analyze(tmp_path / "b.h5", strict=True)
    assert isinstance(stopped.value, CheckpointError) and "--strict" in stopped.value.message
    with _polls(monkeypatch, lambda: None, lambda: None, lambda: _arrive(source, folder, "step_10.safetensors")):
        summary, reporter = analyze(tmp_path / "c.h5")
    errors = [e for e in reporter.errors if "step_0.pt" in e]
    assert len(errors) == 1 and "LFS" in errors[0]
    assert [Path(p).name for p, _ in summary.failed] == ["step_0.pt"]  # type: ignore[attr-defined]
    assert sum("notes.txt" in n for n in reporter.notes) == 1  # said before the wait, not again after


def test_watch_keeps_to_every_when_old_files_are_rotated_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--every 2 counts positions among the steps seen, not among the files left: a trainer deleting
    its oldest checkpoint (keep the last K) shifted them, and 10 and 30 were analysed (0, 20, 40 are
    every 2nd)."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    past = time.time() - 60
    for path in folder.glob("*.safetensors"):
        os.utime(path, (past, past))

    def rotate(step: int) -> None:
        _arrive(source, folder, f"step_{step}.safetensors")
        (folder / f"step_{step - 30}.safetensors").unlink()

    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: rotate(30), lambda: rotate(40), lambda: rotate(50)):
        _, records = _analyze(folder, out, watch=True, poll_seconds=0.01, every=2)
    assert sorted(_stored(out)) == [0, 20, 40]
    assert [r["step"] for r in records] == [0, 20, 40]


def test_watch_waits_for_a_step_of_steps_not_written_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--watch --steps 0,20 while the trainer is at step 10 failed ("--steps asks for step(s) 20 which
    no checkpoint has"), at the start or, started before training, when step 0 arrived: it waits."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_20.safetensors", "step_30.safetensors")):
        _, records = _analyze(folder, tmp_path / "a.h5", watch=True, poll_seconds=0.01, steps=(0, 20))
    assert [r["step"] for r in records] == [0, 20] and sorted(_stored(tmp_path / "a.h5")) == [0, 20]
    empty = _make_run(tmp_path / "empty", [])
    with _polls(monkeypatch, lambda: _arrive(source, empty, "step_0.safetensors"),
                lambda: _arrive(source, empty, "step_10.safetensors", "step_20.safetensors")):
        _, records = _analyze(empty, tmp_path / "b.h5", watch=True, poll_seconds=0.01, steps=(0, 20))
    assert [r["step"] for r in records] == [0, 20]
    # Without --watch a step that no checkpoint has is still an error at once.
    with pytest.raises(CheckpointError, match="--steps asks for step"):
        _analyze(folder.parent / "run", tmp_path / "c.h5", steps=(0, 70))


def _watch_warnings(folder: Path, out: Path) -> tuple[list[int], list[str]]:
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    reporter, records = NullReporter(), []
    run_analyze(
        AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder.parent / "source" / "probe.npz"),), out=out, anchor_size=100, batch_size=64,
            device="cpu", watch=True, poll_seconds=0.01,
        ),
        reporter=reporter,
        on_record=records.append,
    )
    return [r["step"] for r in records], reporter.warnings


def test_watch_is_quiet_while_a_file_of_the_same_step_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning rewrites last.ckpt beside epoch=N-step=M.ckpt: a poll that reads it while it is being
    written finds two files of one step whose weights differ, and warned "two checkpoints have the same
    step" (and skipped the poll). A file modified within the settling time is waited for, silently."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])

    def rewriting() -> None:
        _arrive(source, folder, "step_20.safetensors")
        (folder / "last-20.safetensors").write_bytes((source / "step_10.safetensors").read_bytes())  # mtime: now

    def rewritten() -> None:
        _arrive(source, folder, "step_20.safetensors")
        shutil.copyfile(source / "step_20.safetensors", folder / "last-20.safetensors")
        past = time.time() - 60
        os.utime(folder / "last-20.safetensors", (past, past))

    with _polls(monkeypatch, rewriting, rewritten):
        steps, warnings = _watch_warnings(folder, tmp_path / "s.h5")
    assert steps == [0, 10, 20]
    assert warnings == []


def test_watch_warns_once_while_a_poll_cannot_go_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lasting problem (two settled files of one step with other weights; the folder moved away) was
    warned at every poll, every 10 s for as long as it lasted. It is warned once, with its fix and what
    it stops, and again only when it comes back after a poll that went through."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    moved = tmp_path / "moved"

    def conflict() -> None:
        _arrive(source, folder, "step_20.safetensors")
        shutil.copyfile(source / "step_10.safetensors", folder / "copy-20.safetensors")
        past = time.time() - 60
        os.utime(folder / "copy-20.safetensors", (past, past))

    with _polls(
        monkeypatch, conflict, lambda: None, lambda: None,
        lambda: (folder / "copy-20.safetensors").unlink(),
        lambda: folder.rename(moved), lambda: None, lambda: None,
        lambda: (moved.rename(folder), _arrive(source, folder, "step_30.safetensors")),
        conflict,
    ):
        steps, warnings = _watch_warnings(folder, tmp_path / "s.h5")
    assert steps == [0, 10, 20, 30]
    same_step = [w for w in warnings if "same step 20" in w]
    assert len(same_step) == 2  # once, and once more when it came back
    assert "no new checkpoint is analysed until it is resolved" in same_step[0] and "fix:" in same_step[0]
    gone = [w for w in warnings if "same step" not in w]
    assert len(gone) == 1 and gone[0].startswith("watching: ") and str(folder) in gone[0]


def test_watch_waits_for_the_folder_a_trainer_makes_at_its_first_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning makes lightning_logs/version_N/checkpoints at its first save: --watch started before
    it stopped at once ("no such checkpoint file or folder"). It says the folder does not exist yet and
    waits for it; without --watch a missing folder is still an error."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "logs" / "version_0" / "checkpoints"

    def first_save() -> None:
        folder.mkdir(parents=True)
        _arrive(source, folder, "step_0.safetensors", "step_10.safetensors")

    reporter, records = NullReporter(), []
    options = dict(sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
                   probe_specs=(str(source / "probe.npz"),), anchor_size=100, batch_size=64, device="cpu")
    with _polls(monkeypatch, lambda: None, first_save):
        run_analyze(AnalyzeOptions(out=tmp_path / "a.h5", watch=True, poll_seconds=0.01, **options),  # type: ignore[arg-type]
                    reporter=reporter, on_record=records.append)
    assert [r["step"] for r in records] == [0, 10]
    assert f"{folder} does not exist yet" in reporter.notes
    assert any(note.startswith(f"waiting for a checkpoint in {folder}") for note in reporter.notes)
    with pytest.raises(CheckpointError, match="no such checkpoint file or folder"):
        run_analyze(AnalyzeOptions(out=tmp_path / "b.h5", sources=(str(tmp_path / "nowhere"),),
                                   **{k: v for k, v in options.items() if k != "sources"}),  # type: ignore[arg-type]
                    reporter=NullReporter())


def test_watch_of_a_folder_whose_checkpoints_go_to_a_sub_folder_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--watch on a Lightning default_root_dir: the checkpoints land three levels down, which is not
    searched; it waited for ever without a word. It stops as analyze without --watch does, naming the
    sub-folder to pass."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source = _make_run(tmp_path / "source")
    root = tmp_path / "root"
    root.mkdir()
    nested = root / "lightning_logs" / "version_0" / "checkpoints"

    def first_save() -> None:
        nested.mkdir(parents=True)
        _arrive(source, nested, "step_0.safetensors")

    with _polls(monkeypatch, lambda: None, first_save, lambda: None), \
            pytest.raises((CheckpointError, KeyboardInterrupt)) as stopped:
        run_analyze(AnalyzeOptions(
            sources=(str(root),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(source / "probe.npz"),), out=tmp_path / "a.h5", anchor_size=100, batch_size=64,
            device="cpu", watch=True, poll_seconds=0.01,
        ), reporter=NullReporter())
    assert isinstance(stopped.value, CheckpointError)  # not Ctrl-C after the last poll: it waited on
    message = stopped.value.message
    assert "checkpoints in sub-folders, which are not searched" in message
    assert f"fdl analyze {nested} ..." in message


def test_watch_of_one_file_rewritten_at_every_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer that keeps one file (last.pt, its step inside) and rewrites it at every save: --watch
    analysed each save but compared it with nothing (prev_step null, cka_prev null), the previous save's
    file being the same path; and a rewrite in progress was read at once. Each save is compared with the
    one before, as in one run over separate files, and a file being rewritten is waited for."""
    expected = _stored_of(tmp_path, _make_run(tmp_path / "whole", [0, 10, 20]))
    source, folder = _source_and_empty_run(tmp_path)

    def save(step: int, *, settled: bool = True) -> None:
        state = load_file(str(source / f"step_{step}.safetensors"))
        torch.save({"step": step, "state_dict": state}, folder / "last.pt")
        if settled:
            past = time.time() - 60
            os.utime(folder / "last.pt", (past, past))

    save(0)
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: save(10, settled=False), lambda: save(10), lambda: save(20)):
        summary, records = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert [r["step"] for r in records] == [0, 10, 20] and not summary.failed
    stored = _stored(out)
    assert [stored[step]["prev_step"] for step in (0, 10, 20)] == [None, 0, 10]
    for step in (10, 20):
        for name in ("cka_prev", "overlap_prev", "cka_init", "d_lr"):
            assert stored[step][name] == pytest.approx(expected[step][name], rel=1e-9), (step, name)


def test_watch_of_a_rolling_file_then_a_late_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored checkpoint kept in step order whose file now holds a later save (one rolling last.pt)
    cannot be read again: a checkpoint arriving late, before it, was compared with it by reading the
    file, found another file's hash and ended the watch ("changed since it was analysed"). It compares
    with the nearest checkpoint whose series are at hand, and the stored one after it is updated."""
    source, folder = _source_and_empty_run(tmp_path)

    def save(step: int) -> None:
        torch.save({"step": step, "state_dict": load_file(str(source / f"step_{step}.safetensors"))}, folder / "last.pt")
        past = time.time() - 60
        os.utime(folder / "last.pt", (past, past))

    save(0)
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: save(10), lambda: save(30),
                lambda: _arrive(source, folder, "step_20.safetensors"), lambda: save(40)):
        summary, _ = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted and not summary.failed
    stored = _stored(out)
    assert sorted(stored) == [0, 10, 20, 30, 40]
    assert {step: stored[step]["prev_step"] for step in (10, 20, 30)} == {10: 0, 20: 0, 30: 20}
    expected = _stored_of(tmp_path, _make_run(tmp_path / "whole", [0, 20, 30]))
    for step in (20, 30):
        assert stored[step]["cka_prev"] == pytest.approx(expected[step]["cka_prev"], rel=1e-9)


def test_watch_of_a_rotated_run_then_a_late_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation deleted two stored checkpoints' files, then one before them arrived: updating the
    stored checkpoints after it read their deleted files and ended the watch ("no longer exists")."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])

    def rotate_then_late() -> None:
        (folder / "step_10.safetensors").unlink()
        (folder / "step_30.safetensors").unlink()
        _arrive(source, folder, "step_20.safetensors")

    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors", "step_40.safetensors"),
                rotate_then_late, lambda: _arrive(source, folder, "step_50.safetensors")):
        summary, _ = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted and not summary.failed
    stored = _stored(out)
    assert sorted(stored) == [0, 10, 20, 30, 40, 50]
    # 30 and 40 keep the numbers they were stored with (30's file is gone: it cannot be compared again)
    assert {step: stored[step]["prev_step"] for step in (10, 20, 30, 40, 50)} == {10: 0, 20: 0, 30: 10, 40: 30, 50: 40}


def test_watch_waits_for_the_weights_of_a_checkpoint_folder_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Trainer's checkpoint-N folder is made, then its model.safetensors written: a folder's own time
    moves when a file is added, not while one is written, so a weights file that takes longer than the
    settling time to write was read half-written and reported as an error ("truncated"; under --strict
    before the first checkpoint, the end of the watch). The newest file in the folder says when it settled."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source, folder = _source_and_empty_run(tmp_path)
    past = time.time() - 60

    def checkpoint(step: int, *, written: bool = True) -> None:
        inside = folder / f"checkpoint-{step}"
        inside.mkdir(exist_ok=True)
        data = (source / f"step_{step}.safetensors").read_bytes()
        (inside / "model.safetensors").write_bytes(data if written else data[: len(data) // 2])
        if written:
            os.utime(inside / "model.safetensors", (past, past))
        os.utime(inside, (past, past))  # made a while ago; its weights file is written now

    checkpoint(0)
    checkpoint(10)
    reporter, records = NullReporter(), []
    with _polls(monkeypatch, lambda: checkpoint(20, written=False), lambda: checkpoint(20)):
        summary = run_analyze(AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=tmp_path / "s.h5", anchor_size=100, batch_size=64,
            device="cpu", watch=True, poll_seconds=0.01,
        ), reporter=reporter, on_record=records.append)
    assert [r["step"] for r in records] == [0, 10, 20] and not summary.failed
    assert reporter.errors == []
    assert not any("changed since it failed" in note for note in reporter.notes)


def test_watch_waiting_for_its_first_checkpoint_waits_for_a_file_of_the_same_step_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for the first checkpoint read Lightning's last.ckpt while it was being written beside
    the first epoch=N-step=M.ckpt: "two checkpoints have the same step" ended the run (status 1), where
    a poll during the watch waits for it. The wait waits for it too."""
    source, folder = _source_and_empty_run(tmp_path)

    def rewriting() -> None:
        _arrive(source, folder, "step_0.safetensors")
        (folder / "last-0.safetensors").write_bytes((source / "step_10.safetensors").read_bytes())  # mtime: now

    def rewritten() -> None:
        shutil.copyfile(source / "step_0.safetensors", folder / "last-0.safetensors")
        past = time.time() - 60
        os.utime(folder / "last-0.safetensors", (past, past))
        _arrive(source, folder, "step_10.safetensors")

    with _polls(monkeypatch, lambda: None, rewriting, rewritten):
        steps, warnings = _watch_warnings(folder, tmp_path / "s.h5")
    assert steps == [0, 10]
    assert warnings == []
    # Two settled files of one step while waiting: the error a start after them gives, not a wait for ever.
    shutil.rmtree(folder)
    folder.mkdir()

    def conflict() -> None:
        _arrive(source, folder, "step_0.safetensors")
        shutil.copyfile(source / "step_10.safetensors", folder / "last-0.safetensors")
        os.utime(folder / "last-0.safetensors", (time.time() - 60,) * 2)

    with _polls(monkeypatch, conflict), pytest.raises(CheckpointError, match="same step 0"):
        _watch_warnings(folder, tmp_path / "t.h5")


def test_watch_of_a_rolling_file_keeps_a_failed_save_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolling last.pt whose step 20 save failed (NaN weights) and whose next save was good: the
    failure was taken for a file read half-written ("changed since it failed: analysing it again") and
    dropped from the summary, so the watch ended with status 0 and step 20 neither stored nor said."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source, folder = _source_and_empty_run(tmp_path)

    def save(step: int, *, nan: bool = False) -> None:
        state = load_file(str(source / f"step_{step}.safetensors"))
        if nan:
            state["0.weight"][0, 0] = float("nan")
        torch.save({"step": step, "state_dict": state}, folder / "last.pt")
        past = time.time() - 60 + step / 100  # a new modification time at each save
        os.utime(folder / "last.pt", (past, past))

    save(0)
    reporter, records = NullReporter(), []
    with _polls(monkeypatch, lambda: save(10), lambda: save(20, nan=True), lambda: save(30)):
        summary = run_analyze(AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=tmp_path / "s.h5", anchor_size=100, batch_size=64,
            device="cpu", watch=True, poll_seconds=0.01,
        ), reporter=reporter, on_record=records.append)
    assert [r["step"] for r in records] == [0, 10, 30]
    assert {s: r["prev_step"] for s, r in _stored(tmp_path / "s.h5").items()} == {0: None, 10: 0, 30: 10}
    assert len(summary.failed) == 1 and "step 20" in summary.failed[0][0], summary.failed
    assert not any("changed since it failed" in note for note in reporter.notes), reporter.notes


def test_watch_reports_an_analysed_file_rewritten_with_other_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training job restarted into the watched folder rewrites step_0, step_10, ...: --watch ignored
    them (known files) and kept the old run's numbers without a word, where a resume refuses them. Each
    is reported once and listed in the summary; a file only touched (same content) is not."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])

    def restarted() -> None:
        shutil.copyfile(source / "step_20.safetensors", folder / "step_10.safetensors")
        past = time.time() - 60
        os.utime(folder / "step_10.safetensors", (past, past))

    def touched() -> None:
        past = time.time() - 90
        os.utime(folder / "step_0.safetensors", (past, past))

    reporter, records = NullReporter(), []
    with _polls(monkeypatch, restarted, lambda: None, touched, lambda: None):
        summary = run_analyze(
            AnalyzeOptions(
                sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
                probe_specs=(str(folder / "probe.npz"),), out=tmp_path / "s.h5", anchor_size=100, batch_size=64,
                device="cpu", watch=True, poll_seconds=0.01,
            ),
            reporter=reporter,
            on_record=records.append,
        )
    assert [r["step"] for r in records] == [0, 10]
    errors = [e for e in reporter.errors if "changed since it was analysed" in e]
    assert len(errors) == 1 and "step_10.safetensors" in errors[0] and "--overwrite" in errors[0]
    assert [path for path, _ in summary.failed] == [f"{folder / 'step_10.safetensors'} (step 10)"]


def test_watch_on_resume_reports_a_file_stored_before_this_run_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume --watch: a checkpoint stored by an earlier run (not announced by this one) whose file a
    restarted training job rewrites with other weights at the same step is reported as one analysed in
    this run is; its stored numbers are the old file's."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    options = AnalyzeOptions(
        sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
        probe_specs=(str(folder / "probe.npz"),), out=tmp_path / "s.h5", anchor_size=100, batch_size=64,
        device="cpu", poll_seconds=0.01,
    )
    assert not run_analyze(options, reporter=NullReporter()).failed

    def restarted() -> None:
        shutil.copyfile(source / "step_20.safetensors", folder / "step_10.safetensors")
        past = time.time() - 60
        os.utime(folder / "step_10.safetensors", (past, past))

    reporter = NullReporter()
    with _polls(monkeypatch, restarted, lambda: None):
        summary = run_analyze(replace(options, watch=True, resume=True), reporter=reporter)
    errors = [e for e in reporter.errors if "changed since it was analysed" in e]
    assert len(errors) == 1 and "step_10.safetensors" in errors[0], reporter.errors
    assert [path for path, _ in summary.failed] == [f"{folder / 'step_10.safetensors'} (step 10)"]
