"""Session 25: a training job's metrics file, `{"losses": ..., "accs": ..., "epoch": 3}`, beside checkpoints that
do not tell their weights' names as a state_dict does.

Session 24 skipped it (test_s24_metrics.py) where the run's other checkpoints named their weights cheaply
(state_dicts, safetensors). Beside HF folders, TorchScript files, modules pickled whole, or one flat
`{**sd, "step": 100}` file (a tie: which of the two holds the weights no file tells), it still failed the run:
"holds another model's weights", or as the reference ("unexpected keys losses, accs"), or took a real
checkpoint's step ("two checkpoints have the same step"). HF folders now name their shards' tensors; elsewhere
discovery asks the model's own keys (--model's factory built on the meta device, else the module of the run's
first other checkpoint). Each test of the fix failed before it; those marked as guards passed before too.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import pipeline
from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.options import AnalyzeOptions
from fdl_cli.progress import NullReporter
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import SMALL
from tests.test_prev_walkback import _arrive, _polls, _stored
from tests.test_s16_ecosystems import STEPS, _analyze, _assert_same_numbers, _notes, _sd
from tests.test_s24_metrics import METRICS, NOTE
from tests.tiny_models import mlp

torch.set_num_threads(1)
THEIRS = "0.bias, 0.weight, 2.bias, ..."


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _with_metrics(folder: Path, epoch: int) -> Path:
    torch.save({**METRICS, "epoch": epoch}, folder / "metrics.pt")
    return folder


def _without_metrics(tmp_path: Path, folder: Path) -> Path:
    """The same run, its metrics file left out: the store it gives is the one expected."""
    plain = shutil.copytree(folder, tmp_path / f"{folder.name}_plain")
    (plain / "metrics.pt").unlink()
    return plain


def _bare(tmp_path: Path, folder: Path, name: str, *extra: str) -> Result:
    """`fdl analyze` without --model (the checkpoints carry their modules), on `_analyze`'s probe."""
    probe = tmp_path / "probe.npz"
    if not probe.exists():
        rng = np.random.default_rng(0)
        np.savez(probe, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 3)
    done = fdl("analyze", folder, "--probe", probe, "--out", tmp_path / name, "--device", "cpu", *SMALL, *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _hf_run(folder: Path, weights_file: str) -> Path:
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        (folder / f"checkpoint-{step}").mkdir()
        if weights_file.endswith(".safetensors"):
            save_file(_sd(index), str(folder / f"checkpoint-{step}" / weights_file))
        else:
            torch.save(_sd(index), folder / f"checkpoint-{step}" / weights_file)
    return folder


def _module_run(folder: Path, form: str) -> Path:
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        if form == "torchscript":
            torch.jit.script(mlp(seed=index)).save(str(folder / f"step_{step}.pt"))
        else:
            torch.save(mlp(seed=index), folder / f"step_{step}.pt")
    return folder


# ------------------------------------------------------------------------------------------- HF folders


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_metrics_beside_hf_folders_is_skipped_at_discovery(tmp_path: Path, weights_file: str) -> None:
    """The folders' weight files name their tensors as a state_dict does: no model needed to tell."""
    folder = _with_metrics(_hf_run(tmp_path / "run", weights_file), 3)
    found = discover_checkpoints([folder])
    assert [ref.path.name for ref in found.checkpoints] == [f"checkpoint-{s}" for s in STEPS]
    assert NOTE.format(THEIRS, folder / "metrics.pt") in found.notes, found.notes


def test_analyze_of_hf_folders_with_their_metrics_file(tmp_path: Path) -> None:
    """Before: "the weights in run/metrics.pt do not fit the model built by --model", the reference, exit 1."""
    folder = _with_metrics(_hf_run(tmp_path / "run", "model.safetensors"), 3)
    plain = _analyze(tmp_path, [_without_metrics(tmp_path, folder)], "plain.h5")
    done = _analyze(tmp_path, [folder], "run.h5")
    assert done.code == 0 and "3 checkpoints analysed →" in done.stderr, done.stderr
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done)
    assert plain.code == 0
    _assert_same_numbers(tmp_path / "run.h5", tmp_path / "plain.h5")


# ------------------------------------------------------------------------------------- modules of their own


@pytest.mark.parametrize("form", ["torchscript", "pickle"])
@pytest.mark.parametrize("epoch", [3, 200, 250])  # first (the reference), a real step's, between two
def test_metrics_beside_modules_is_skipped_with_the_note(tmp_path: Path, form: str, epoch: int) -> None:
    """Told by the module of the run's first checkpoint, loaded as the run loads it (no --model). Before: the
    reference ("holds weights only, and no model was given"), "two checkpoints have the same step 200", or
    "3 checkpoints analysed, 1 failed"."""
    trust = ("--trust-pickle",)  # TorchScript runs its program: trusted like a pickle (test_s25_sec)
    folder = _with_metrics(_module_run(tmp_path / "run", form), epoch)
    plain = _bare(tmp_path, _without_metrics(tmp_path, folder), "plain.h5", *trust)
    done = _bare(tmp_path, folder, "run.h5", *trust)
    assert plain.code == 0, plain.stderr
    assert done.code == 0 and "3 checkpoints analysed →" in done.stderr and "failed" not in done.stderr, done.stderr
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done), done.stderr
    _assert_same_numbers(tmp_path / "run.h5", tmp_path / "plain.h5")


def test_torchscript_with_model_takes_the_keys_of_the_model(tmp_path: Path) -> None:
    """--model given: its factory's model (built on the meta device) tells them; the run is as without the file."""
    folder = _with_metrics(_module_run(tmp_path / "run", "torchscript"), 250)
    done = _analyze(tmp_path, [folder], "run.h5", "--trust-pickle")
    assert done.code == 0 and "3 checkpoints analysed →" in done.stderr, done.stderr
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done)


def test_inspect_of_a_torchscript_run_shows_a_checkpoint_not_the_metrics(tmp_path: Path) -> None:
    """`fdl inspect RUN` showed "tensors of run/metrics.pt", the file of the first step (epoch 3)."""
    folder = _with_metrics(_module_run(tmp_path / "run", "torchscript"), 3)
    done = fdl("inspect", folder, "--trust-pickle")
    assert done.code == 0 and (done.stdout + done.stderr).startswith(f"modules of {folder / 'step_100.pt'}"), done


# ---------------------------------------------------------------------------- one flat dict and the metrics


@pytest.mark.parametrize("epoch", [3, 100])  # 100: the model's own step, which clashed
def test_one_flat_dict_and_the_metrics_are_told_apart_by_the_model(tmp_path: Path, epoch: int) -> None:
    """`{**sd, "step": 100}` and the metrics: both flat dicts beside plain values, one each; --model's keys tell
    which holds the weights. Before: the reference's "unexpected keys losses, accs", or the same-step clash."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({**_sd(1), "step": 100}, folder / "model.pt")
    _with_metrics(folder, epoch)
    plain = _analyze(tmp_path, [_without_metrics(tmp_path, folder)], "plain.h5")
    done = _analyze(tmp_path, [folder], "run.h5")
    assert plain.code == 0, plain.stderr
    assert done.code == 0 and "1 checkpoint analysed →" in done.stderr, done.stderr
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done)
    _assert_same_numbers(tmp_path / "run.h5", tmp_path / "plain.h5")


def test_a_single_safetensors_checkpoint_and_the_metrics(tmp_path: Path) -> None:
    """A guard (it passed before): a safetensors file names its weights in its header."""
    folder = tmp_path / "run"
    folder.mkdir()
    save_file(_sd(1), str(folder / "step_100.safetensors"))
    _with_metrics(folder, 3)
    done = _analyze(tmp_path, [folder], "run.h5")
    assert done.code == 0 and "1 checkpoint analysed →" in done.stderr, done.stderr
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done)


def test_fdl_toml_model_code_runs_once_and_is_said_before(tmp_path: Path) -> None:
    """The factory discovery asks for is the one the run builds with: fdl.toml's model code imported once, its
    note said once, before the code runs (it prints as it is imported)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "net.py").write_text(
        "import torch\nfrom torch import nn\nprint('net.py imported')\n\n"
        "def build():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    (folder / "fdl.toml").write_text('model = "net.py:build"\n')
    torch.save({**_sd(1), "step": 100}, folder / "model.pt")
    _with_metrics(folder, 3)
    done = _bare(tmp_path, folder, "run.h5")  # fdl.toml names the model
    assert done.code == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("note: running the model code")]
    assert len(said) == 1 and (done.stdout + done.stderr).count("net.py imported") == 1, done
    assert NOTE.format(THEIRS, folder / "metrics.pt") in _notes(done)


# --------------------------------------------------------------------------------- another model stays one


def test_another_models_flat_dict_beside_the_run_is_still_an_error(tmp_path: Path) -> None:
    """`{"encoder.weight": ..., "encoder.bias": ..., "step": 250}` shares no name with the run's weights either,
    but its names end as weights' do: another model's checkpoint, the clear error it is, not skipped as metrics
    (session 24 skipped it with the metrics note)."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save({**_sd(index), "step": step}, folder / f"step_{step}.pt")
    torch.save({"encoder.weight": torch.randn(3, 4), "encoder.bias": torch.randn(3), "step": 250},
               folder / "other.pt")
    assert [ref.path.name for ref in discover_checkpoints([folder]).checkpoints] == [
        "step_100.pt", "step_200.pt", "other.pt", "step_300.pt"]
    done = _analyze(tmp_path, [folder], "run.h5")
    assert done.code == 1 and "3 checkpoints analysed, 1 failed" in done.stderr, done.stderr
    assert "this file holds another model's weights" in done.stderr and "skipped other.pt" not in done.stderr


def test_another_models_flat_dict_beside_torchscript_is_not_skipped(tmp_path: Path) -> None:
    """A guard (it failed before too): beside modules, a flat dict of weights' names is no metrics file."""
    folder = _module_run(tmp_path / "run", "torchscript")
    torch.save({"encoder.weight": torch.randn(3, 4), "step": 250}, folder / "other.pt")
    assert [ref.path.name for ref in discover_checkpoints([folder]).checkpoints][2] == "other.pt"
    done = _bare(tmp_path, folder, "run.h5", "--trust-pickle")
    assert done.code == 1 and "failed: " + str(folder / "other.pt") in done.stderr, done.stderr


def _model_keys_asked(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from fdl_cli import checkpoints

    asked: list[Any] = []
    real = checkpoints.model_keys

    def counting(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "model_keys", counting)
    return asked


def test_the_model_is_asked_only_where_the_files_do_not_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of state_dicts with its metrics, or of TorchScript without one: no model built, no file loaded
    for discovery; beside TorchScript, once (the first checkpoint's module)."""
    asked = _model_keys_asked(monkeypatch)
    folder = tmp_path / "sd"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save(_sd(index), folder / f"step_{step}.pt")
    assert _analyze(tmp_path, [_with_metrics(folder, 3)], "sd.h5").code == 0
    assert _bare(tmp_path, _module_run(tmp_path / "ts", "torchscript"), "ts.h5", "--trust-pickle").code == 0
    assert asked == []
    assert _bare(tmp_path, _with_metrics(tmp_path / "ts", 3), "ts2.h5", "--overwrite", "--trust-pickle").code == 0
    assert [[ref.path.name for ref in others] for others in asked] == [[f"step_{s}.pt" for s in STEPS]]


def test_a_factory_that_cannot_be_built_on_meta_leaves_the_file_as_before(tmp_path: Path) -> None:
    """No keys where the factory fails on the meta device (discovery then reads the file as before); a model
    built there gives its state_dict's."""
    from fdl_cli.checkpoints import model_keys

    def build() -> torch.nn.Module:
        model = mlp()
        model.load_state_dict({key: value.to("cpu") for key, value in mlp(seed=2).state_dict().items()})
        torch.ones(2).item()  # no value on the meta device: fails there
        return model

    assert model_keys([], build, {}) is None
    assert model_keys([], lambda: mlp(), {}) == frozenset(_sd(1))


def test_watch_beside_torchscript_skips_the_metrics_file_as_it_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--watch: the metrics file at the epoch of the first step when it starts, then rewritten at that of a
    checkpoint arriving meanwhile (the polls ask the model's keys too): every step stored, nothing failed. Before:
    "two checkpoints have the same step 100" at the start."""
    source = _module_run(tmp_path / "source", "torchscript")
    folder = tmp_path / "run"
    folder.mkdir()
    _arrive(source, folder, "step_100.pt", "step_200.pt")
    _with_metrics(folder, 100)
    past = time.time() - 60
    os.utime(folder / "metrics.pt", (past, past))

    def metrics_and_a_checkpoint() -> None:
        _with_metrics(folder, 300)
        os.utime(folder / "metrics.pt", (past, past))
        _arrive(source, folder, "step_300.pt")

    reporter = NullReporter()
    _bare(tmp_path, source, "source.h5", "--trust-pickle")  # writes the probe
    with _polls(monkeypatch, metrics_and_a_checkpoint, lambda: None):
        summary = pipeline.run_analyze(
            AnalyzeOptions(sources=(str(folder),), probe_specs=(str(tmp_path / "probe.npz"),), out=tmp_path / "w.h5",
                           anchor_size=16, batch_size=16, device="cpu", watch=True, poll_seconds=0.01, trust_pickle=True),
            reporter=reporter,
        )
    assert summary.interrupted and summary.failed == [] and reporter.errors == [], (summary, reporter.warnings)
    assert sorted(_stored(tmp_path / "w.h5")) == list(STEPS)
    assert NOTE.format(THEIRS, folder / "metrics.pt") in reporter.notes, reporter.notes
