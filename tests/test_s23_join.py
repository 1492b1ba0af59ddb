"""Session 23, join follow-ups: `fdl inspect --model` says what the file's other weights are and when the weights
it lists are an averaged copy, as inspect without a model says; and a torchrun rank whose MASTER_ADDR:MASTER_PORT
is served by something that is no TCPStore gives up joining when FDL_TORCHRUN_TIMEOUT says (it hung in torch's
store client). Each test failed before its fix; those marked "guard" pin what the fix must not break."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.cli_run import fdl_in_process as fdl
from tests.test_io_fixes import MODEL
from tests.test_s16_ecosystems import _mmengine_run, _sd
from tests.test_s23_eco import _weight_averaging_run
from tests.tiny_models import mlp

# -- 1. inspect --model says the file's other weights, and that the weights are an EMA's ---------------------------


def test_inspect_with_a_model_of_lightnings_weight_averaging_says_the_weights_are_the_averaged_ones(
        tmp_path: Path) -> None:
    """1. With --model, inspect listed the modules and said nothing of `current_model_state`, nor that the
    weights put in the model (and analysed) are the averaged ones, which it says without --model."""
    run = tmp_path / "checkpoints"
    _weight_averaging_run(run)
    shown = fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stderr.splitlines()
    assert ("other weights in the file: current_model_state (--weights NAME lists or analyses those instead)"
            in lines), shown.stderr
    assert ("epoch=0-step=100.ckpt is Lightning's with its WeightAveraging callback, which saves the averaged "
            "weights under 'state_dict' and the trained model's under 'current_model_state': fdl analyses the "
            "averaged ones; --weights current_model_state analyses the trained model's") in lines, shown.stderr
    listed = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] == "lightning" and listed["other_weights"] == ["current_model_state"]
    assert listed["default_layer"] == "2:input"  # the listing's own keys as before
    trained = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL, "--weights",
                             "current_model_state", "--json").stdout)
    assert trained["weights_averaged_by"] is None and trained["other_weights"] == []


def test_inspect_with_a_model_of_mmengines_ema_hook_says_the_weights_are_the_emas(tmp_path: Path) -> None:
    """1. mmengine's EMAHook swaps the EMA's weights into state_dict, the trained model's into ema_state_dict."""
    run = tmp_path / "work_dir"
    _mmengine_run(run, ema=True)
    shown = fdl("inspect", run / "epoch_1.pth", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert ("epoch_1.pth is mmengine's with its EMAHook, which saves the EMA's weights under 'state_dict' and the "
            "trained model's under 'ema_state_dict': fdl analyses the EMA's; --weights ema_state_dict analyses the "
            "trained model's") in shown.stderr.splitlines(), shown.stderr
    listed = json.loads(fdl("inspect", run / "epoch_1.pth", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] == "mmengine" and listed["other_weights"] == ["ema_state_dict"]


def test_inspect_with_a_model_beside_an_ema_copy_names_the_copy_and_says_nothing_of_averaged_weights(
        tmp_path: Path) -> None:
    """1. The model's own weights beside an EMA of its own entry: the copy is named, the weights are not averaged;
    (guard) a file without a copy says neither."""
    torch.save({"state_dict": _sd(1), "state_dict_ema": mlp(seed=1).state_dict()}, tmp_path / "ema_7.pt")
    shown = fdl("inspect", tmp_path / "ema_7.pt", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert "other weights in the file: state_dict_ema (--weights NAME" in shown.stderr
    assert "fdl analyses" not in shown.stderr
    listed = json.loads(fdl("inspect", tmp_path / "ema_7.pt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] is None and listed["other_weights"] == ["state_dict_ema"]
    torch.save(_sd(1), tmp_path / "plain_7.pt")
    plain = fdl("inspect", tmp_path / "plain_7.pt", "--model", MODEL)
    assert plain.returncode == 0 and "other weights" not in plain.stderr and "fdl analyses" not in plain.stderr
    listed = json.loads(fdl("inspect", tmp_path / "plain_7.pt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] is None and listed["other_weights"] == []
