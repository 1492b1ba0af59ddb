"""Session 27, an ML engineer's own training run given to `fdl analyze` unchanged: what fdl says of it."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL, SMALL
from tests.tiny_models import mlp


def _probe(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return path


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=0).state_dict(), run / "step_0.pt")
    return run


def _analyze(run: Path, probe: Path | str, out: Path, *extra: str) -> Result:
    result = fdl("analyze", str(run), "--model", MODEL, "--probe", str(probe), "--out", str(out), *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _save_from_a_script(monkeypatch: pytest.MonkeyPatch, path: Path, obj: object, cls: type) -> None:
    """torch.save as `python train.py` does of a class train.py defines: pickled as `__main__.<name>`."""
    cls.__module__, cls.__qualname__ = "__main__", cls.__name__  # a class of the test's own, made for it
    monkeypatch.setattr(sys.modules["__main__"], cls.__qualname__, cls, raising=False)
    torch.save(obj, path)
    monkeypatch.delattr(sys.modules["__main__"], cls.__qualname__)


def test_a_config_object_of_the_training_script_is_read_with_trust_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{"model": sd, "step": N, "config": TrainConfig()}` saved by `python train.py`: without --trust-pickle fdl
    says to pass it, and then said the class "cannot be imported here" and that the files could only be re-saved,
    a dead end. The weights need nothing of the config: it is read as a placeholder, and a note says so."""

    @dataclasses.dataclass
    class TrainConfig:
        lr: float = 0.1
        batch_size: int = 32

    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100):
        sd = {k: v.clone() for k, v in mlp(seed=step).state_dict().items()}
        _save_from_a_script(monkeypatch, run / f"ckpt_{step}.pt", {"model": sd, "step": step, "config": TrainConfig()},
                            TrainConfig)
    probe = _probe(tmp_path / "probe.npz")
    refused = _analyze(run, probe, tmp_path / "a.h5")
    assert refused.code == 1 and "__main__.TrainConfig" in refused.stderr, refused.stderr
    assert "re-run with --trust-pickle" in refused.stderr
    trusted = _analyze(run, probe, tmp_path / "b.h5", "--trust-pickle")
    assert trusted.code == 0, trusted.stderr
    assert "2 checkpoints analysed" in trusted.stderr
    assert "__main__.TrainConfig" in trusted.stderr and "not loaded" in trusted.stderr
    report = fdl("report", str(tmp_path / "b.h5"), "--format", "csv")
    assert [line.split(",")[0] for line in report.stdout.splitlines()[1:]] == ["0", "100"]


def test_a_model_pickled_whole_by_the_training_script_still_needs_its_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A placeholder never stands in for the weights: a module of the script pickled whole (its tensors inside
    the object fdl cannot import) is still the error that says how to import or re-save it."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3, 4))

    run = tmp_path / "run"
    run.mkdir()
    _save_from_a_script(monkeypatch, run / "ckpt_0.pt", {"model": Net(), "step": 0}, Net)
    trusted = _analyze(run, _probe(tmp_path / "probe.npz"), tmp_path / "b.h5", "--trust-pickle")
    assert trusted.code == 1, trusted.stderr
    assert "cannot unpickle" in trusted.stderr and "__main__" in trusted.stderr, trusted.stderr
    assert "PYTHONPATH" in trusted.stderr and "state_dict()" in trusted.stderr


def test_a_folder_of_images_as_the_probe_says_how_to_make_one(tmp_path: Path) -> None:
    """`--probe data/val` (an ImageFolder's class folders of .png) was told to pass `data/val/probe.npz`, a file that
    does not exist: fdl reads no images, and the fix says how to save them as the model sees them."""
    for label in ("cat", "dog"):
        (tmp_path / "val" / label).mkdir(parents=True)
        (tmp_path / "val" / label / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    done = _analyze(_run(tmp_path), tmp_path / "val", tmp_path / "a.h5")
    assert done.code == 1 and "val/probe.npz" not in done.stderr, done.stderr
    assert "images" in done.stderr and "np.savez" in done.stderr and "channels first" in done.stderr
    one = _analyze(tmp_path / "run", tmp_path / "val" / "cat" / "0.png", tmp_path / "a.h5")
    assert one.code == 1 and "images" in one.stderr and "np.savez" in one.stderr, one.stderr


def test_a_table_as_the_probe_says_how_to_convert_it(tmp_path: Path) -> None:
    """A CSV of feature columns and a label column: the error gave only the list of formats."""
    table = tmp_path / "probe.csv"
    table.write_text("f0,f1,f2,f3,label\n" + "0.1,0.2,0.3,0.4,1\n" * 4)
    done = _analyze(_run(tmp_path), table, tmp_path / "a.h5")
    assert done.code == 1, done.stderr
    assert "read_csv" in done.stderr and "np.savez" in done.stderr and "label" in done.stderr, done.stderr


def test_a_folder_holding_the_probe_file_names_it(tmp_path: Path) -> None:
    """`--probe data/` where data/ holds the probe: the fix names the file there, not a made-up probe.npz."""
    (tmp_path / "data").mkdir()
    _probe(tmp_path / "data" / "val_probe.npz")
    done = _analyze(_run(tmp_path), tmp_path / "data", tmp_path / "a.h5")
    assert done.code == 1 and "--probe " + str(tmp_path / "data" / "val_probe.npz") in done.stderr, done.stderr


def test_best_and_last_copies_without_a_step_are_named_as_copies(tmp_path: Path) -> None:
    """`best.pt` and `last.pt` beside `step_*.pt`, raw state_dicts as a custom loop saves them: each was skipped
    "no training step in its metadata or name (rename it ...)", though each is a copy of a step's checkpoint, which
    renaming would only make a second file of that step. The note names the checkpoint it copies."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100, 200):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    torch.save(mlp(seed=100).state_dict(), run / "best.pt")
    torch.save(mlp(seed=200).state_dict(), run / "last.pt")
    torch.save(mlp(seed=7).state_dict(), run / "model_final.pt")  # weights of no step_*.pt
    done = _analyze(run, _probe(tmp_path / "probe.npz"), tmp_path / "a.h5")
    assert done.code == 0 and "3 checkpoints analysed" in done.stderr, done.stderr
    assert "skipped best.pt: no step of its own; the same weights as step_100.pt (step 100)" in done.stderr
    assert "skipped last.pt: no step of its own; the same weights as step_200.pt (step 200)" in done.stderr
    assert "skipped model_final.pt: no training step in its metadata or name" in done.stderr
