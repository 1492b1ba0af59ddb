"""Session 21, the lead's small fixes found while reviewing the helpers' reports."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.cli_run import fdl_in_process


def test_a_sharded_checkpoints_index_given_alone_is_named_with_its_folder_to_pass(tmp_path: Path) -> None:
    """`fdl inspect out/checkpoint-10/model.safetensors.index.json` said "text file, not a checkpoint", where
    the folder it indexes is the checkpoint (read whole, its shards by the index)."""
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    weights = {"0.weight": torch.randn(4, 3), "0.bias": torch.randn(4), "2.weight": torch.randn(2, 4)}
    shards = {"0.weight": "model-00001-of-00002.safetensors", "0.bias": "model-00001-of-00002.safetensors",
              "2.weight": "model-00002-of-00002.safetensors"}
    for shard in set(shards.values()):
        save_file({key: value for key, value in weights.items() if shards[key] == shard}, folder / shard)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    for command in ("inspect", "analyze"):
        done = fdl_in_process(command, index)
        assert done.returncode == 1
        assert (f"skipped model.safetensors.index.json: the index of a sharded checkpoint, not one; pass its "
                f"folder, {folder}, which is read as one checkpoint") in " ".join(done.stderr.split())
    listed = fdl_in_process("inspect", folder)  # the folder it names is read: its tensors listed
    assert "total: 24 values in 3 tensors" in listed.stderr and "step: 10" in listed.stderr
