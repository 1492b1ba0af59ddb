"""A first-time user's real training run (digits, a CNN, checkpoints saved the ways people save them), the defects it
met, each pinned by what the user sees."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.cli_run import fdl_in_process


def test_folders_of_one_checkpoint_each_holding_global_steps_are_not_told_to_take_epochs_from_names(tmp_path: Path) -> None:
    """A Lightning-like loop saving `epoch_E/last.ckpt` ({"state_dict": {"model.…"}, "global_step", "epoch"}) from
    epoch 0, the initialisation: its first folder's global_step 0 equals the 0 of its name, and the fix told the
    user `--step-regex 'epoch_(\\d+)/'`, which stores the run at its epochs over the steps its files hold (a compare
    with a run stored by steps then matches step 0 alone). The fix names the folders alone, as the docs say."""
    run = tmp_path / "run"
    for epoch in range(3):
        (run / f"epoch_{epoch}").mkdir(parents=True)
        torch.save(
            {"state_dict": {"model.weight": torch.full((2, 3), float(epoch))}, "global_step": 22 * epoch, "epoch": epoch},
            run / f"epoch_{epoch}" / "last.ckpt",
        )
    done = fdl_in_process("analyze", run, "--out", tmp_path / "run.h5", cwd=tmp_path)
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert (
        f"fix: pass the folders, whose checkpoints hold their steps (global_step): fdl analyze {run}/epoch_* ..." in said
    ), said
    assert "--step-regex" not in said
