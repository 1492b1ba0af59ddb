"""--trust-pickle's one unpickling, reviewed: the weights of a load that read a placeholder are freed once dropped; a
module the pickle names whose own code fails while imported is said as that module's error (not a damaged file, a
placeholder's error or argparse's exit); a stepless `best.pt` of the model pickled whole is named as the copy of its
step, as a state_dict's is."""

from __future__ import annotations

import gc
import importlib
import sys
import weakref
from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import CheckpointRef, load_checkpoint
from tests.test_analyze import fdl
from tests.test_s28_placeholder import TrainConfig, _analyze, _save
from tests.tiny_models import mlp


@pytest.mark.parametrize("pickled", [True, False], ids=["beside a placeholder", "weights only"])
def test_a_checkpoints_weights_are_freed_once_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pickled: bool
) -> None:
    """The error of the class read as a placeholder was kept with its traceback and context, whose frames held
    torch's unpickler and the object read; and `_weight_copies`' search, of every load, called itself through its
    closure: cycles that held a checkpoint's weights in memory after the run was done with them, until the garbage
    collector found them (7 and 4 of 20 models loaded in a row still held)."""
    path = tmp_path / "step_5.pt"
    saved = {"model": {"w": torch.ones(64, 64)}}
    if pickled:
        _save(monkeypatch, path, {**saved, "config": TrainConfig()})
    else:
        torch.save(saved, path)
    ref = CheckpointRef(path=path, step=5, step_source="name", kind="pickle" if pickled else "state_dict")
    gc.disable()
    try:
        loaded = load_checkpoint(ref, trust_pickle=True)
        assert loaded.state_dict is not None
        held = weakref.ref(loaded.state_dict["w"])
        del loaded
        alive = held() is not None
    finally:
        gc.enable()
    assert not alive, "the checkpoint's tensor outlived its last reference"


def _saved_with_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *, then: str,
                       main_class: bool = False) -> Path:
    """`step_5.pt` holding the weights and an object of `Cfg`, a class of the module `name` beside the test (and a
    `__main__.TrainConfig` before it, with `main_class`), whose code is then changed to `then` (as the module reads
    where fdl runs: another environment, another version)."""
    folder = tmp_path / "code"
    folder.mkdir(exist_ok=True)
    source = folder / f"{name}.py"
    source.write_text("class Cfg:\n    lr = 0.1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    saved = {"model": mlp().state_dict(), "cfg": importlib.import_module(name).Cfg()}
    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"config": TrainConfig(), **saved} if main_class else saved)  # its undo: the path too
    source.write_text(f"class Cfg:\n    lr = 0.1\n{then}\n", encoding="utf-8")
    sys.modules.pop(name, None)
    for cached in folder.glob("__pycache__/*"):
        cached.unlink()
    monkeypatch.syspath_prepend(str(folder))
    return path


@pytest.mark.parametrize("before", [False, True], ids=["alone", "after a __main__ class"])
def test_a_module_that_raises_when_imported_is_said_as_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: bool
) -> None:
    """`RuntimeError` from the module's own code was said as a damaged file ("truncated or corrupt, re-copy it"),
    or, after a `__main__` class read as a placeholder, as that class's AttributeError: the error to fix unsaid."""
    name = f"cfg_raises_{'b' if before else 'a'}"
    path = _saved_with_module(tmp_path, monkeypatch, name, then='raise RuntimeError("CUDA_HOME is not set")',
                              main_class=before)
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in said, said
    assert f"cannot unpickle {path}: importing the module {name} (for its class {name}.Cfg) failed" in said, said
    assert "got: RuntimeError: CUDA_HOME is not set" in said, said
    assert "corrupt" not in said and "TrainConfig" not in said, said


def test_a_module_that_exits_when_imported_is_an_error_not_fdls_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training script's top-level argparse, run by the import of its class, parsed fdl's command line: fdl ended
    with status 2 and argparse's usage of `__main__.py`, no word of the checkpoint."""
    path = _saved_with_module(tmp_path, monkeypatch, "cfg_exits",
                              then="import argparse\nargparse.ArgumentParser().parse_args()")
    monkeypatch.setattr(sys, "argv", ["fdl", "inspect", str(path), "--trust-pickle"])  # as a process of fdl's has
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1, said
    assert f"cannot unpickle {path}: importing the module cfg_exits (for its class cfg_exits.Cfg) called sys.exit(2)" \
        in said, said


def test_a_stepless_best_pickled_whole_is_named_as_the_copy_of_its_step(tmp_path: Path) -> None:
    """`torch.save(model, "best.pt")` beside the run's state_dicts was told to be renamed (a second file of step
    100), where a state_dict `best.pt`, or one pickled with a config, is named as step 100's copy."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    torch.save(mlp(seed=100), run / "best.pt")
    done = _analyze(run, tmp_path)
    said = " ".join(done.stderr.split())
    assert done.code == 0, said
    assert "skipped best.pt: no step of its own; the same weights as step_100.pt (step 100), analysed there" in said


def test_torchs_weights_only_switch_is_named_when_it_blocks_trust_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (a cluster's safety default) turns torch's full unpickling into its weights-only
    one: --trust-pickle's load failed with torch's "Can not safely load weights when explicit pickle_module is
    specified", said as a truncated or corrupt file."""
    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"model": mlp().state_dict(), "config": TrainConfig()})
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1 and "corrupt" not in said, said
    assert f"cannot unpickle {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 in the environment" in said, said
    assert "fix: unset TORCH_FORCE_WEIGHTS_ONLY_LOAD" in said, said
