"""Session 15: the step keys of three more training loops are read from a checkpoint's dict. nanoGPT saves
`iter_num`, DeepSpeed `global_steps` (in global_stepN/mp_rank_00_model_states.pt), Megatron `iteration`;
their files' names hold no step (ckpt.pt copied per save, a DeepSpeed folder per step), and the steps
fell back to the names: refused, or read from the wrong number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import discover_checkpoints
from tests.tiny_models import mlp


@pytest.mark.parametrize("key", ["iter_num", "global_steps", "iteration"])
def test_steps_are_read_from_the_loops_keys(tmp_path: Path, key: str) -> None:
    for name, step in (("ckpt_a.pt", 2000), ("ckpt_b.pt", 500), ("ckpt_c.pt", 1000)):
        torch.save({"model": mlp(4, 8, 3, seed=step).state_dict(), key: step, "best_val_loss": 1.5}, tmp_path / name)
    found = discover_checkpoints([tmp_path])
    assert [(ref.path.name, ref.step, ref.step_source) for ref in found.checkpoints] == [
        ("ckpt_b.pt", 500, f"metadata:{key}"), ("ckpt_c.pt", 1000, f"metadata:{key}"),
        ("ckpt_a.pt", 2000, f"metadata:{key}"),
    ]


def test_deepspeed_folders_read_global_steps_without_a_regex(tmp_path: Path) -> None:
    for step in (100, 20):
        folder = tmp_path / f"global_step{step}"
        folder.mkdir()
        torch.save({"module": mlp(4, 8, 3, seed=step).state_dict(), "global_steps": step, "dp_world_size": 1},
                   folder / "mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {}}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    found = discover_checkpoints(sorted(str(path) for path in tmp_path.glob("global_step*/mp_rank_00_model_states.pt")))
    assert [ref.step for ref in found.checkpoints] == [20, 100]


def test_step_wins_over_the_other_keys_and_epoch_comes_last(tmp_path: Path) -> None:
    torch.save({"model": mlp(4, 8, 3).state_dict(), "epoch": 3, "iteration": 700, "step": 701}, tmp_path / "a.pt")
    torch.save({"model": mlp(4, 8, 3, seed=1).state_dict(), "epoch": 4, "iteration": 900}, tmp_path / "b.pt")
    found = discover_checkpoints([tmp_path])
    assert [(ref.step, ref.step_source) for ref in found.checkpoints] == [(701, "metadata:step"),
                                                                         (900, "metadata:iteration")]


def test_a_folder_regex_reads_folder_checkpoints_too(tmp_path: Path) -> None:
    """`--step-regex 'step_(\\d+)/'` read step_100/model.pt but skipped every checkpoint that is itself a
    folder (step_100/ holding model.safetensors): its subject, run/step_100, had no trailing `/`."""
    from safetensors.torch import save_file

    for step in (100, 20):
        folder = tmp_path / f"step_{step}"
        folder.mkdir()
        save_file(mlp(4, 8, 3, seed=step).state_dict(), str(folder / "model.safetensors"))
    found = discover_checkpoints([tmp_path], step_regex=r"step_(\d+)/")
    assert [(ref.path.name, ref.step, ref.step_source) for ref in found.checkpoints] == [
        ("step_20", 20, "step_regex"), ("step_100", 100, "step_regex")]
