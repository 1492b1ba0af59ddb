"""Session 24, three reviewers' items:

- A Hugging Face Trainer saves into `tmp-checkpoint-N/` and renames it `checkpoint-N/` once complete: fdl took the
  folder for a checkpoint, and under --watch analysed one that had settled under the temporary path, which the
  store then recorded although the rename took it away.
- `fdl compare` of a run whose probe has labels against one whose probe has none: the notes said "the same inputs
  with other labels" (--no-overlap) and "the probes differ in their labels only".
- `fdl compare` of two runs whose probes have no targets: a column `Δ acc` of "—" at every step.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import discover_checkpoints
from tests.test_prev_walkback import _polls, _stored
from tests.test_watch_fixes import _source_and_empty_run

torch.set_num_threads(1)


# ------------------------------------------------------------------ a Trainer's tmp-checkpoint-N folder


def _save(source: Path, folder: Path, step: int, name: str) -> Path:
    """A Trainer's save of `step` into `folder/name`, settled (written a minute ago)."""
    inside = folder / name
    inside.mkdir()
    shutil.copyfile(source / f"step_{step}.safetensors", inside / "model.safetensors")
    past = time.time() - 60
    os.utime(inside / "model.safetensors", (past, past))
    os.utime(inside, (past, past))
    return inside


def test_a_trainer_s_unfinished_save_is_skipped_with_a_note(tmp_path: Path) -> None:
    source, folder = _source_and_empty_run(tmp_path)
    _save(source, folder, 0, "checkpoint-0")
    staging = _save(source, folder, 10, "tmp-checkpoint-10")
    discovery = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in discovery.checkpoints] == [("checkpoint-0", 0)]
    note = ("skipped tmp-checkpoint-10: an unfinished save of a Hugging Face Trainer (renamed checkpoint-10 once "
            "complete), not a checkpoint")
    assert note in discovery.notes
    # given by name too (a shell's `run/*`), it is no checkpoint: said so where it is the only one
    assert [ref.step for ref in discover_checkpoints([folder / "checkpoint-0", staging]).checkpoints] == [0]
    from fdl_cli.errors import CheckpointError

    with pytest.raises(CheckpointError) as raised:
        discover_checkpoints([staging])
    assert note.removeprefix("skipped ") in str(raised.value)
    # a folder merely named so, without weights, is not one either; other names stay checkpoints
    (folder / "tmp-checkpoint-x").mkdir()
    _save(source, folder, 20, "my-tmp-checkpoint-20")
    assert [ref.step for ref in discover_checkpoints([folder]).checkpoints] == [0, 20]


def test_watch_analyses_a_trainer_s_save_under_the_name_it_is_renamed_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save settled in tmp-checkpoint-20/ for a poll, then renamed checkpoint-20/: analysed once, the store
    recording checkpoint-20, the path that stays."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter

    source, folder = _source_and_empty_run(tmp_path)
    _save(source, folder, 0, "checkpoint-0")
    _save(source, folder, 10, "checkpoint-10")
    reporter, records = NullReporter(), []
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _save(source, folder, 20, "tmp-checkpoint-20"),
                lambda: (folder / "tmp-checkpoint-20").rename(folder / "checkpoint-20")):
        summary = run_analyze(AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=out, anchor_size=100, batch_size=64,
            device="cpu", watch=True, poll_seconds=0.01,
        ), reporter=reporter, on_record=records.append)
    assert not summary.failed and reporter.errors == [] and reporter.warnings == []
    assert [(Path(r["path"]).name, r["step"]) for r in records] == [
        ("checkpoint-0", 0), ("checkpoint-10", 10), ("checkpoint-20", 20)]
    assert {step: Path(r["path"]).name for step, r in _stored(out).items()} == {0: "checkpoint-0", 10: "checkpoint-10",
                                                                                  20: "checkpoint-20"}
    assert not any("tmp-checkpoint" in text for text in reporter.notes)


# ------------------------------------------------------------------ compare: a probe without labels


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of one checkpoints folder on probes of the same inputs: with labels, without ("bare"), and without
    with an array fdl does not read beside x ("bare2", another file)."""
    from tests.test_s21_zero import _analyze, _checkpoints

    folder = tmp_path_factory.mktemp("labels")
    checkpoints = _checkpoints(folder / "ck", steps=2)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    probes = {"labels": {"x": x, "y": np.arange(50) % 3}, "bare": {"x": x}, "bare2": {"x": x, "mask": np.ones(50)}}
    stores = {}
    for name, arrays in probes.items():
        np.savez(folder / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        done = _analyze(checkpoints, folder / f"{name}.npz", folder / f"{name}.h5")
        assert done.returncode == 0, done.stderr
        stores[name] = folder / f"{name}.h5"
    return stores


def _notes(*args: object) -> list[str]:
    from tests.cli_run import fdl_in_process

    done = fdl_in_process("compare", *args)
    assert done.returncode == 0, done.stderr
    return [" ".join(line.split()) for line in (done.stdout + done.stderr).splitlines() if line.startswith("note: ")]


FIELDS = "the fields measured against the labels (accuracy, loss, r2, cross_entropy, Π*, nc1)"


def test_compare_names_the_run_whose_probe_has_no_labels(labelled: dict[str, Path]) -> None:
    without = _notes(labelled["labels"], labelled["bare"], "--no-overlap")
    assert any(note.startswith("note: the runs were analysed on different probe files (A: 'probe' sha256 ")
               and note.endswith(f"): the same inputs, run B's probe without labels (no y): {FIELDS} are run A's "
                                 "alone, left unmatched") for note in without), without
    assert not any("other labels" in note for note in without)
    overlap = _notes(labelled["bare"], labelled["labels"])
    assert (f"note: the probes hold the same inputs, run A's probe without labels (no y): {FIELDS} are run B's alone, "
            "left unmatched; the overlap compares the same inputs") in overlap
    assert not any("differ in their labels only" in note for note in overlap)
    # neither holds labels: their files differ in what fdl does not read
    neither = _notes(labelled["bare"], labelled["bare2"])
    assert ("note: the probes hold the same inputs, and neither holds labels (no y): every field is measured on the "
            "same data; the overlap compares the same inputs") in neither
    assert any(note.endswith("): the same inputs, and neither holds labels (no y): every field is measured on the same "
                             "data") for note in _notes(labelled["bare"], labelled["bare2"], "--no-overlap"))


# ------------------------------------------------------------------ no targets: no column of "—"


def test_no_target_columns_where_no_probe_has_targets(labelled: dict[str, Path]) -> None:
    """compare of two runs without targets showed a `Δ acc` of "—" at every step, and report an `acc` and a `loss`
    of "—": left out of the human tables (the note says the probe has no targets); csv and json keep them."""
    import csv
    import io
    import json

    from tests.cli_run import fdl_in_process

    def header(*args: object) -> list[str]:
        done = fdl_in_process(*args)
        assert done.returncode == 0, done.stderr
        return next(line for line in (done.stdout + done.stderr).splitlines() if line.startswith("step")).split()

    assert header("compare", labelled["bare"], labelled["bare2"]) == [
        "step", "A", "step", "B", "Δ", "D_LR", "Δ", "CKA₀", "Δ", "overlap₀", "Δ", "k95", "Π̂", "Δ", "Π̂(C)", "overlap",
        "A·B"]
    assert "acc" in header("compare", labelled["labels"], labelled["bare"])  # one run has it: B − A is said "—"
    assert header("report", labelled["bare"]) == ["step", "D_LR", "CKA₀", "overlap₀", "k95", "Π̂", "Π̂(C)", "D_ρ",
                                                  "regime"]
    assert {"acc", "CE"} <= set(header("report", labelled["labels"]))  # labels: acc and the cross-entropy
    report_rows = fdl_in_process("report", labelled["bare"], "--format", "csv").stdout
    assert {"accuracy", "loss"} <= set(next(csv.reader(io.StringIO(report_rows))))
    rows = fdl_in_process("compare", labelled["bare"], labelled["bare2"], "--format", "csv").stdout
    assert {"delta_accuracy", "a_accuracy", "b_accuracy"} <= set(next(csv.reader(io.StringIO(rows))))
    data = json.loads(fdl_in_process("compare", labelled["bare"], labelled["bare2"], "--json").stdout)
    assert data["steps"][0]["differences"]["accuracy"] is None and "accuracy" in data["steps"][0]["a"]
