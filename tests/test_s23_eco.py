"""Session 23: a researcher's checkpoints from the common training frameworks (PyTorch Lightning, the
Hugging Face Trainer, a plain loop with an EMA, DDP and torch.compile), written as those frameworks write
them without the frameworks installed. `fdl analyze` must read each at its training step and give a store
equal, dataset by dataset, to one analysed from plain state_dicts of the weights it names. The tests of a
fix failed before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_s16_ecosystems import STEPS, _analyze, _assert_same_numbers, _ema, _notes, _plain, _sd

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _lightning(state_dict: dict[str, torch.Tensor], epoch: int, step: int, **extra: Any) -> dict[str, Any]:
    """The dict Lightning 2.x's Trainer.save_checkpoint() writes for a LightningModule holding the network
    as `self.model`."""
    return {"epoch": epoch, "global_step": step, "pytorch-lightning_version": "2.5.1",
            "state_dict": {f"model.{key}": value for key, value in state_dict.items()},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": step}}},
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"hidden": 8, "lr": 0.01}, **extra}


def _weight_averaging_run(folder: Path) -> None:
    """A run with Lightning's EMAWeightAveraging (WeightAveraging) callback: its on_save_checkpoint moves the
    LightningModule's state to `current_model_state`, puts the averaged model's (its AveragedModel's
    `module.` keys, the prefix cut) under `state_dict` and the AveragedModel's `n_averaged` under
    `averaging_state`; ModelCheckpoint's save_last writes last.ckpt too."""
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        checkpoint = _lightning(_ema(index), index - 1, step,
                                current_model_state={f"model.{key}": value for key, value in _sd(index).items()},
                                averaging_state={"n_averaged": torch.tensor(step)})
        checkpoint["callbacks"] = {"EMAWeightAveraging": {"latest_update_step": step}}
        torch.save(checkpoint, folder / f"epoch={index - 1}-step={step}.ckpt")
        torch.save(checkpoint, folder / "last.ckpt")


def test_lightning_weight_averaging_says_its_state_dict_holds_the_averaged_weights(tmp_path: Path) -> None:
    """With EMAWeightAveraging, `state_dict` holds the EMA's weights and `current_model_state` the trained
    model's. fdl analysed the EMA's while its note said 'fdl analyses the model's own; --weights
    current_model_state analyses that copy (an EMA or teacher copy?)', the other way round."""
    run = tmp_path / "checkpoints"
    _weight_averaging_run(run)
    done = _analyze(tmp_path, [run], "lit.h5")
    assert done.code == 0, done.stderr
    assert ("epoch=0-step=100.ckpt is Lightning's with its WeightAveraging callback, which saves the averaged "
            "weights under 'state_dict' and the trained model's under 'current_model_state': fdl analyses the "
            "averaged ones; --weights current_model_state analyses the trained model's") in _notes(done), done.stderr
    assert not any("an EMA or teacher copy" in note for note in _notes(done)), done.stderr
    _assert_same_numbers(tmp_path / "lit.h5", _plain(tmp_path, "ema", _ema))
    trained = _analyze(tmp_path, [run], "lit_trained.h5", "--weights", "current_model_state")
    assert trained.code == 0, trained.stderr
    _assert_same_numbers(tmp_path / "lit_trained.h5", _plain(tmp_path, "own", _sd))


def test_a_lightning_state_dict_beside_another_copy_keeps_the_copy_note(tmp_path: Path) -> None:
    """Only the callback's layout (`current_model_state` beside `averaging_state`) is read as swapped: an
    EMA a LightningModule keeps in an entry of its own is still the copy, the model's weights its own."""
    run = tmp_path / "checkpoints"
    run.mkdir()
    for index, step in enumerate(STEPS, 1):
        copy = {f"model.{key}": value for key, value in _ema(index).items()}
        torch.save(_lightning(_sd(index), index - 1, step, current_model_state=copy),
                   run / f"epoch={index - 1}-step={step}.ckpt")
    done = _analyze(tmp_path, [run], "lit.h5")
    assert done.code == 0, done.stderr
    assert ("epoch=0-step=100.ckpt also holds weights under 'current_model_state' (an EMA or teacher copy?): fdl "
            "analyses the model's own; --weights current_model_state analyses that copy") in _notes(done), done.stderr
    _assert_same_numbers(tmp_path / "lit.h5", _plain(tmp_path, "own", _sd))


@pytest.mark.parametrize("prefix", ["module._orig_mod.", "_orig_mod.module."])
def test_a_compiled_model_under_ddp_and_ddp_under_compile(tmp_path: Path, prefix: str) -> None:
    """DDP(torch.compile(model)).state_dict() and torch.compile(DDP(model)).state_dict(): both wrappers'
    prefixes are taken off, in either order, from a plain loop's bundle whose step is inside."""
    run = tmp_path / "run"
    run.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save({"model": {prefix + key: value for key, value in _sd(index).items()},
                    "optimizer": {"state": {}, "param_groups": []}, "step": step}, run / f"ckpt_{index}.pt")
    done = _analyze(tmp_path, [run], "run.h5", "--json")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == list(STEPS)
    _assert_same_numbers(tmp_path / "run.h5", _plain(tmp_path, "own", _sd))
