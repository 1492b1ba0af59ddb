"""Session 15: a checkpoint whose hyper-parameters hold a `pathlib` path (a LightningModule's
save_hyperparameters() of `data_dir: Path`) was refused without --trust-pickle as "a pickled Python
object that could run code". A path runs no code: it is rebuilt as the pure path of its string parts.
Anything else under a path's name is refused, and real code still is."""

from __future__ import annotations

import os
import pathlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
import torch

from fdl_cli.checkpoints import _torch_load_safe, discover_checkpoints, load_checkpoint
from fdl_cli.errors import CheckpointError, UnsafeCheckpointError
from tests.tiny_models import mlp


def _lightning(path: Path, hparams: dict, *, zipped: bool = True) -> None:
    state = {f"model.{key}": value for key, value in mlp(4, 8, 3).state_dict().items()}
    torch.save({"state_dict": state, "global_step": 7, "epoch": 0, "hyper_parameters": hparams}, path,
               _use_new_zipfile_serialization=zipped)


@pytest.mark.parametrize("zipped", [True, False])
def test_paths_in_hyper_parameters_load_without_trust_pickle(tmp_path: Path, zipped: bool) -> None:
    path = tmp_path / "epoch=0-step=7.ckpt"
    _lightning(path, {"data_dir": pathlib.PosixPath("/data/digits"), "out": pathlib.PurePosixPath("runs", "a"),
                      "win": pathlib.PureWindowsPath("C:/data"), "lr": 0.1}, zipped=zipped)
    ref = discover_checkpoints([path]).checkpoints[0]
    assert ref.step == 7
    loaded = load_checkpoint(ref)
    assert loaded.state_dict is not None
    assert set(loaded.state_dict) == {f"model.{key}" for key in mlp(4, 8, 3).state_dict()}
    hparams = _torch_load_safe(path)["hyper_parameters"]
    assert hparams["data_dir"] == PurePosixPath("/data/digits") and type(hparams["data_dir"]) is PurePosixPath
    assert hparams["out"] == PurePosixPath("runs/a")
    assert hparams["win"] == PureWindowsPath("C:/data") and hparams["lr"] == 0.1


class _NotAPath:
    """Pickles as pathlib.PosixPath called with an integer: not a path a pickler writes."""

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.PosixPath, (5,))


class _Code:
    def __reduce__(self):  # noqa: ANN204
        return (os.getcwd, ())


def test_a_path_global_with_other_arguments_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    torch.save({"state_dict": mlp(4, 8, 3).state_dict(), "step": 1, "hp": {"p": _NotAPath()}}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(discover_checkpoints([path]).checkpoints[0])
    assert "a pickled path holds parts that are not strings" in str(caught.value.got)


def test_code_beside_a_path_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    torch.save({"state_dict": mlp(4, 8, 3).state_dict(), "step": 1,
                "hp": {"p": pathlib.PosixPath("/x"), "c": _Code()}}, path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(discover_checkpoints([path]).checkpoints[0])
    assert "posix.getcwd" in caught.value.message and "PosixPath" not in caught.value.message
