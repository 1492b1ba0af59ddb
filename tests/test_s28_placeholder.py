"""--trust-pickle and the classes a checkpoint names that cannot be imported here (read as placeholders): each
file unpickled once, so that what the trusted pickle does when loaded (a `__reduce__` that calls something) is
done once; and a stepless `best.pt` that pickles such a class named as the copy of the step it holds."""

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


def _mark(log: str) -> int:
    """What a trusted pickle runs when loaded (its `_Marker`'s reduce): one line more in `log`."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("unpickled\n")
    return 0


class _Marker:
    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _mark, (self.log,)


@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.1


def _save(monkeypatch: pytest.MonkeyPatch, path: Path, obj: object, *, legacy: bool = False) -> None:
    """torch.save as `python train.py` does: its TrainConfig pickled as `__main__.TrainConfig` (`legacy`: in
    torch's format before 1.6, pickles in a row rather than a zip archive)."""
    monkeypatch.setattr(TrainConfig, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "TrainConfig", TrainConfig, raising=False)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    monkeypatch.undo()


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, config: bool) -> tuple[Path, Path]:
    run, log = tmp_path / "run", tmp_path / "unpickled.log"
    run.mkdir()
    for step in (0, 100):
        saved = {"model": mlp(seed=step).state_dict(), "step": step, "mark": _Marker(log)}
        _save(monkeypatch, run / f"step_{step}.pt", {**saved, "config": TrainConfig()} if config else saved)
    return run, log


def _probe(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return path


def _analyze(run: Path, tmp_path: Path, *extra: str) -> Result:
    done = fdl("analyze", str(run), "--model", MODEL, "--probe", str(_probe(tmp_path / "probe.npz")),
               "--out", str(tmp_path / "a.h5"), *SMALL, "--trust-pickle", *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _lines(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


@pytest.mark.parametrize("config", [True, False], ids=["a class not importable", "all importable"])
def test_analyze_unpickles_each_trusted_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: bool) -> None:
    """A class that cannot be imported (the script's `__main__.TrainConfig`) made fdl unpickle the file a second
    time, with placeholders: what the pickle runs when loaded ran twice, and the load cost twice."""
    run, log = _run(tmp_path, monkeypatch, config=config)
    done = _analyze(run, tmp_path)
    assert done.code == 0, done.stderr
    assert ("__main__.TrainConfig" in done.stderr) == config, done.stderr
    assert _lines(log) == 2, f"2 files unpickled {_lines(log)} times"


@pytest.mark.parametrize("config", [True, False], ids=["a class not importable", "all importable"])
def test_inspect_unpickles_a_trusted_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: bool) -> None:
    run, log = _run(tmp_path, monkeypatch, config=config)
    done = fdl("inspect", str(run / "step_100.pt"), "--trust-pickle")
    assert done.code == 0, done.stderr
    assert ("cannot be imported here (__main__.TrainConfig;" in " ".join(done.stderr.split())) == config, done.stderr
    assert _lines(log) == 1, f"1 file unpickled {_lines(log)} times"


def test_a_legacy_format_file_is_unpickled_once_with_its_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "unpickled.log"
    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"model": mlp().state_dict(), "mark": _Marker(log), "config": TrainConfig()}, legacy=True)
    done = fdl("inspect", str(path), "--trust-pickle")
    assert done.code == 0, done.stderr
    assert "cannot be imported here (__main__.TrainConfig;" in " ".join(done.stderr.split()), done.stderr
    assert _lines(log) == 1, f"unpickled {_lines(log)} times"


def test_weights_in_a_class_that_cannot_be_imported_still_fail_after_one_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule kept: an object of a class that cannot be imported holding tensors is the error, not a placeholder
    (its weights would be lost unsaid); the file is unpickled once to find it out."""
    log = tmp_path / "unpickled.log"
    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"model": mlp().state_dict(), "mark": _Marker(log), "config": TrainConfig(lr=torch.ones(2))})
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1 and f"cannot unpickle {path}: it holds an object whose class cannot be imported here" in said
    assert "__main__" in said and "Traceback" not in said, said
    assert _lines(log) == 1, f"unpickled {_lines(log)} times"


def test_a_stepless_pickled_best_is_named_as_the_copy_of_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`best.pt` saved as `{"model": sd, "config": TrainConfig()}` beside the run's `step_*.pt` state_dicts: skipped
    for want of a step with the advice to rename it (a second file of step 100) and no word that it is step 100's
    weights, which a state_dict `best.pt` gets: --trust-pickle files had no fingerprint in a folder scan."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    log = tmp_path / "unpickled.log"
    _save(monkeypatch, run / "best.pt", {"model": mlp(seed=100).state_dict(), "config": TrainConfig(),
                                         "mark": _Marker(log)})
    done = _analyze(run, tmp_path)
    said = " ".join(done.stderr.split())
    assert done.code == 0, said
    assert "skipped best.pt: no step of its own; the same weights as step_100.pt (step 100), analysed there" in said
    assert _lines(log) == 1, f"best.pt unpickled {_lines(log)} times"


def test_a_stepless_pickled_file_of_other_weights_keeps_its_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    _save(monkeypatch, run / "best.pt", {"model": mlp(seed=7).state_dict(), "config": TrainConfig()})
    done = _analyze(run, tmp_path)
    said = " ".join(done.stderr.split())
    assert done.code == 0 and "skipped best.pt" in said and "the same weights as" not in said, said
