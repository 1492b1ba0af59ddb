"""Session 15: a checkpoint holding a copy of its weights beside them (`{"model": ..., "ema": ...}`) was
analysed on the model's own weights without a word that the copy exists; `fdl analyze` now notes it
once, naming the --weights that picks it, and says nothing of optimizer or scaler states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fdl_cli.checkpoints import _weight_copies
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.tiny_models import mlp


def _run(tmp_path: Path, **entries_of_step) -> tuple[Path, Path]:
    folder = tmp_path / "ck"
    folder.mkdir()
    for step in (0, 10):
        model, copy = mlp(4, 8, 3, seed=step), mlp(4, 8, 3, seed=100 + step)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": {"scale": torch.tensor(2.0**16)}, "step": step}
        saved.update({name: copy.state_dict() for name in entries_of_step.get("copies", ())})
        torch.save(saved, folder / f"ckpt_{step}.pt")
    probe = tmp_path / "probe.npz"
    rng = np.random.default_rng(0)
    np.savez(probe, x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    return folder, probe


def _analyze(tmp_path: Path, folder: Path, probe: Path, name: str, weights: str | None = None) -> NullReporter:
    reporter = NullReporter()
    run_analyze(AnalyzeOptions(sources=(str(folder),), model_spec="tests.tiny_models:mlp",
                               model_kwargs={"hidden": 8}, probe_specs=(str(probe),), out=tmp_path / name,
                               device="cpu", weights=weights), reporter=reporter)
    return reporter


def test_an_ema_copy_is_noted_once_with_the_weights_option(tmp_path: Path) -> None:
    folder, probe = _run(tmp_path, copies=("ema",))
    reporter = _analyze(tmp_path, folder, probe, "own.h5")
    copies = [note for note in reporter.notes if "also holds weights" in note]
    assert copies == ["ckpt_0.pt also holds weights under 'ema' (an EMA or teacher copy?): fdl analyses the "
                      "model's own; --weights ema analyses that copy"]
    # the note is right: --weights ema gives other numbers, and no note
    picked = _analyze(tmp_path, folder, probe, "ema.h5", weights="ema")
    assert not [note for note in picked.notes if "also holds weights" in note]
    with StoreReader(tmp_path / "own.h5") as own, StoreReader(tmp_path / "ema.h5") as ema:
        assert [r["param_norm"] for r in own.records()] != [r["param_norm"] for r in ema.records()]


def test_no_note_without_a_copy(tmp_path: Path) -> None:
    folder, probe = _run(tmp_path)
    reporter = _analyze(tmp_path, folder, probe, "own.h5")
    assert not [note for note in reporter.notes if "also holds weights" in note]


def test_weight_copies_names_copies_only() -> None:
    own = mlp(4, 8, 3, seed=0).state_dict()
    teacher = mlp(4, 8, 3, seed=1).state_dict()
    ddp = {f"module.{key}": value for key, value in teacher.items()}
    optimizer = torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1, momentum=0.9).state_dict()
    obj = {"model": own, "model_ema": ddp, "teacher": {"state_dict": teacher}, "optimizer": optimizer,
           "rng": {"cpu": torch.zeros(3)}, "step": 3}
    assert _weight_copies(obj, own) == ("model_ema", "teacher")
    assert _weight_copies({"model": own, "step": 3}, own) == ()
