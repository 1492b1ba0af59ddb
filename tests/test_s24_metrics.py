"""Session 24: a training job's metrics file beside its checkpoints, `{"losses": ..., "accs": ..., "epoch": 3}`.

Read as a flat state_dict with plain values beside it (`{**sd, "step": 5}`, test_s24_loader.py) it failed the run
("unexpected keys losses, accs"; "holds another model's weights"), took the step of its epoch from a real
checkpoint ("two checkpoints have the same step"), and was the file `fdl inspect RUN` showed. Such a dict whose
tensors share no name with the weights of the run's other checkpoints is skipped with a note now; a model of raw
parameters saved so (`{"W": ..., "a": ..., "step": 5}`) is still read. Each test of the fix failed before it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import SameStepError, discover_checkpoints
from tests.test_analyze import fdl
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored
from tests.test_s16_ecosystems import STEPS, _analyze, _assert_same_numbers, _notes, _plain, _sd
from tests.test_s24_watch import _watch

torch.set_num_threads(1)

METRICS = {"losses": torch.randn(50), "accs": torch.rand(50), "epoch": 3}
NOTE = ("skipped metrics.pt: tensors (accs, losses) beside plain values (epoch) that share no name with the weights "
        "of the run's other checkpoints ({}): a training job's metrics or state, not this model's weights; if they "
        "are a model's, analyse it alone (fdl analyze {} ...)")


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _run(folder: Path, make: Any, metrics: dict[str, Any] = METRICS) -> Path:
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save(make(index, step), folder / f"step_{step}.pt")
    torch.save(metrics, folder / "metrics.pt")
    return folder


FORMS = {
    "state_dict": lambda index, step: _sd(index),
    "flat_with_step": lambda index, step: {**_sd(index), "step": step},
    "training_loop": lambda index, step: {"model": _sd(index), "optimizer": {"state": {}}, "step": step},
    "lightning": lambda index, step: {"state_dict": {f"model.{k}": v for k, v in _sd(index).items()}, "step": step},
    "ddp_flat": lambda index, step: {**{f"module.{k}": v for k, v in _sd(index).items()}, "step": step},
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("epoch", [3, 200])  # 200: the step of step_200.pt, which it took
def test_metrics_beside_checkpoints_is_skipped_with_a_note(tmp_path: Path, form: str, epoch: int) -> None:
    folder = _run(tmp_path / "run", FORMS[form], {**METRICS, "epoch": epoch})
    found = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints] == [(f"step_{s}.pt", s) for s in STEPS]
    theirs = "model.0.bias, model.0.weight, model.2.bias, ..." if form == "lightning" else "0.bias, 0.weight, 2.bias, ..."
    assert NOTE.format(theirs, folder / "metrics.pt") in found.notes, found.notes


@pytest.mark.parametrize("form", ["state_dict", "flat_with_step"])
def test_analyze_of_a_run_with_its_metrics_file_exits_0_with_the_plain_numbers(tmp_path: Path, form: str) -> None:
    """Before: "3 checkpoints analysed, 1 failed" (epoch 3) or "two checkpoints have the same step 200", exit 1."""
    folder = _run(tmp_path / "run", FORMS[form], {**METRICS, "epoch": 200})
    plain = _plain(tmp_path, "plain", _sd)
    done = _analyze(tmp_path, [folder], "run.h5")
    assert done.code == 0, done.stderr
    assert "3 checkpoints analysed →" in done.stderr and "failed" not in done.stderr, done.stderr
    assert any(note.startswith("skipped metrics.pt: tensors (accs, losses) beside plain values") for note in _notes(done))
    _assert_same_numbers(tmp_path / "run.h5", plain)


def test_inspect_of_the_run_shows_a_checkpoint_not_the_metrics(tmp_path: Path) -> None:
    """`fdl inspect RUN` shows the first step's file: the metrics file, at its epoch 3, came first. Given alone,
    `fdl inspect metrics.pt` still lists its tensors (a flat dict is a model's weights as far as one file tells)."""
    folder = _run(tmp_path / "run", FORMS["state_dict"])
    done = fdl("inspect", folder)
    assert done.code == 0 and (done.stdout + done.stderr).startswith(f"tensors of {folder / 'step_100.pt'}"), done
    alone = fdl("inspect", folder / "metrics.pt")
    shown = alone.stdout + alone.stderr
    assert alone.code == 0 and "losses" in shown and "step: 3 (from its metadata's epoch)" in shown, shown


def test_raw_parameter_models_saved_with_a_step_are_still_read(tmp_path: Path) -> None:
    """`{"W": ..., "a": ..., "step": s}` (a model whose state_dict keys are W and a), with and without an
    all-tensor file of the same names beside them, and one holding an extra name: all read, the metrics skipped."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for step in STEPS:
        torch.save({"W": torch.randn(4, 8), "a": torch.randn(8), "step": step}, folder / f"m{step}.pt")
    torch.save(METRICS, folder / "metrics.pt")
    found = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints] == [(f"m{s}.pt", s) for s in STEPS]
    assert NOTE.format("W, a", folder / "metrics.pt") in found.notes, found.notes
    torch.save({"W": torch.randn(4, 8), "a": torch.randn(8)}, folder / "step_0.pt")
    torch.save({"W": torch.randn(4, 8), "b": torch.randn(8), "step": 400}, folder / "m400.pt")
    found = discover_checkpoints([folder])
    assert [ref.step for ref in found.checkpoints] == [0, *STEPS, 400]


def test_an_all_tensor_dict_stays_a_checkpoint(tmp_path: Path) -> None:
    """A guard of the behaviour kept: tensors only (`{"losses": ..., "accs": ...}`) are a state_dict, as before."""
    folder = _run(tmp_path / "run", FORMS["state_dict"], {"losses": torch.randn(50), "accs": torch.rand(50)})
    (folder / "metrics.pt").rename(folder / "metrics_7.pt")
    found = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints][0] == ("metrics_7.pt", 7)


def test_one_flat_dict_and_one_metrics_file_of_one_step_still_clash(tmp_path: Path) -> None:
    """Two flat dicts and nothing else: which holds the weights no file tells, without the model; the clash is
    the error it was, naming both files (the fix: --glob)."""
    folder = tmp_path / "two"
    folder.mkdir()
    torch.save({**_sd(1), "step": 3}, folder / "model.pt")
    torch.save(METRICS, folder / "metrics.pt")
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints([folder])
    assert "two checkpoints have the same step 3" in caught.value.message and "--glob" in (caught.value.fix or "")


def test_watch_skips_a_metrics_file_written_during_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A metrics file beside the safetensors checkpoints when --watch starts (a note) and rewritten during it, at
    the epoch of a stored step (skipped, as an optimizer.pt written meanwhile is, without a note): no failure."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    torch.save({**METRICS, "epoch": 0}, folder / "metrics.pt")

    def metrics_and_a_checkpoint() -> None:
        torch.save({**METRICS, "epoch": 10}, folder / "metrics.pt")
        os.utime(folder / "metrics.pt", (time.time() - 60, time.time() - 60))  # settled, as `_arrive` leaves one
        _arrive(source, folder, "step_20.safetensors")

    with _polls(monkeypatch, metrics_and_a_checkpoint, lambda: None):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert summary.interrupted and summary.failed == [] and reporter.errors == []
    assert sorted(_stored(tmp_path / "s.h5")) == [0, 10, 20]
    assert any(note.startswith("skipped metrics.pt: tensors (accs, losses)") for note in reporter.notes), reporter.notes


def test_safetensors_keys_count_as_the_run_weights(tmp_path: Path) -> None:
    """A run of safetensors files: their header's names are the weights the metrics file is compared with."""
    folder = tmp_path / "st"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        save_file(_sd(index), str(folder / f"step_{step}.safetensors"))
    torch.save(METRICS, folder / "metrics.pt")
    found = discover_checkpoints([folder])
    assert [ref.path.name for ref in found.checkpoints] == [f"step_{s}.safetensors" for s in STEPS]
    assert NOTE.format("0.bias, 0.weight, 2.bias, ...", folder / "metrics.pt") in found.notes, found.notes
