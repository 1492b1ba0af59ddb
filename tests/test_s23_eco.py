"""Session 23: a researcher's checkpoints from the common training frameworks (PyTorch Lightning, the
Hugging Face Trainer, a plain loop with an EMA, DDP and torch.compile), written as those frameworks write
them without the frameworks installed. `fdl analyze` must read each at its training step and give a store
equal, dataset by dataset, to one analysed from plain state_dicts of the weights it names. The tests of a
fix failed before it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_analyze import fdl
from tests.test_io_fixes import SMALL
from tests.test_s16_ecosystems import STEPS, _analyze, _assert_same_numbers, _ema, _notes, _plain, _sd
from tests.test_usability import _probe
from tests.tiny_models import mlp

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


@dataclasses.dataclass
class RunConfig:
    """A config object passed to a LightningModule and kept by save_hyperparameters() (a Hydra user's
    DictConfig likewise): pickled in the checkpoint's `hyper_parameters`."""

    hidden: int = 8
    lr: float = 0.01


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


def _pickled_hparams_run(folder: Path, filename: str = "epoch={epoch}-val_loss={val_loss:.2f}") -> None:
    """ModelCheckpoint(filename=..., save_last=True) of a LightningModule whose hyper-parameters hold a
    config object; by default `{epoch}-{val_loss:.2f}`: names with an epoch and a metric, no step."""
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        checkpoint = _lightning(_sd(index), index - 1, step, hyper_parameters={"config": RunConfig()})
        name = filename.format(epoch=index - 1, step=step, val_loss=1 - index / 10)
        torch.save(checkpoint, folder / f"{name}.ckpt")
        torch.save(checkpoint, folder / "last.ckpt")


def test_a_pickled_lightning_last_ckpt_at_the_last_step_is_skipped_as_its_copy(tmp_path: Path) -> None:
    """Lightning's default names (`epoch=2-step=300.ckpt`) and save_last's last.ckpt, pickling a config
    object: with --trust-pickle last.ckpt is read at its global_step 300, and was refused as 'two
    checkpoints have the same step 300', since files that pickle have no fingerprint to find a copy by.
    Two pickling files at one step are compared whole: the same weights are one checkpoint."""
    run = tmp_path / "checkpoints"
    _pickled_hparams_run(run, "epoch={epoch}-step={step}")
    done = _analyze(tmp_path, [run], "lit.h5", "--trust-pickle", "--json")
    assert done.code == 0, done.stderr
    assert [Path(record["path"]).name for record in done.records] == [
        "epoch=0-step=100.ckpt", "epoch=1-step=200.ckpt", "epoch=2-step=300.ckpt"]
    assert "skipped last.ckpt: same weights and step (300) as epoch=2-step=300.ckpt" in _notes(done), done.stderr
    _assert_same_numbers(tmp_path / "lit.h5", _plain(tmp_path, "own", _sd))


def test_whole_pickled_modules_at_one_step_are_compared_by_their_weights(tmp_path: Path) -> None:
    """YOLOv5's layout, `{"model": the module, "epoch": e}` as best.pt and last.pt: at one epoch the same
    weights are one checkpoint, other weights still two checkpoints at one step (an error)."""
    run = tmp_path / "weights"
    run.mkdir()
    probe = _probe(tmp_path / "probe.npz")
    torch.save({"model": mlp(seed=1), "epoch": 3}, run / "best.pt")
    torch.save({"model": mlp(seed=1), "epoch": 3}, run / "last.pt")
    same = fdl("analyze", run, "--probe", probe, "--out", tmp_path / "same.h5", "--trust-pickle", *SMALL)
    assert same.code == 0, same.stderr
    assert "skipped last.pt: same weights and step (3) as best.pt" in _notes(same), same.stderr
    torch.save({"model": mlp(seed=2), "epoch": 3}, run / "last.pt")
    other = fdl("analyze", run, "--probe", probe, "--out", tmp_path / "other.h5", "--trust-pickle", *SMALL)
    assert other.code == 1 and "two checkpoints have the same step 3" in other.stderr, other.stderr


def test_pickled_lightning_checkpoints_named_by_epoch_are_read_at_their_global_step(tmp_path: Path) -> None:
    """With --trust-pickle, `epoch=2-val_loss=0.70.ckpt` was stored at step 2 (its name's last integer: the
    step keys of a pickling file were read only when its name held none), and last.ckpt, whose name holds no
    integer, at its global_step 300: one run at steps 0, 1, 2 and 300, the last a repeat of the epoch 2
    weights. A number Lightning's name labels `epoch=` is no step: the file's global_step is read."""
    run = tmp_path / "checkpoints"
    _pickled_hparams_run(run)
    refused = _analyze(tmp_path, [run], "refused.h5")
    assert refused.code == 1
    assert "pickled Python object" in refused.stderr and "re-run with --trust-pickle" in refused.stderr, refused.stderr
    done = _analyze(tmp_path, [run], "lit.h5", "--trust-pickle", "--json")
    assert done.code == 0, done.stderr
    assert [(record["step"], Path(record["path"]).name) for record in done.records] == [
        (100, "epoch=0-val_loss=0.90.ckpt"), (200, "epoch=1-val_loss=0.80.ckpt"), (300, "epoch=2-val_loss=0.70.ckpt")]
    assert "skipped last.ckpt: same weights and step (300) as epoch=2-val_loss=0.70.ckpt" in _notes(done), done.stderr
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
