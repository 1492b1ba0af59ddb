"""Checkpoints as they exist in the wild (session 15): the same weights in the containers training code
saves them in, and the layouts fdl inspect and analyze meet on a researcher's first day."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.test_analyze import fdl
from tests.tiny_models import cnn

MODEL = ("--model", "tests.tiny_models:cnn")


def _weights(index: int) -> dict[str, torch.Tensor]:
    """The tiny CNN's weights moved a little further at each index (BatchNorm's int64 buffer kept)."""
    state = cnn(seed=0).state_dict()
    generator = torch.Generator().manual_seed(index)
    return {k: (v + 0.3 * index * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
            for k, v in state.items()}


# ------------------------------------------------------------------------------------ fdl inspect


def test_inspect_takes_a_checkpoint_whose_name_holds_no_step(tmp_path: Path) -> None:
    """`fdl inspect final.pt` (or step_100/model.pt, or the folder a Trainer's save_model() writes) said
    "cannot tell the training step" and offered --step-regex, an option inspect does not have: the
    modules of a model do not depend on its step."""
    torch.save(_weights(1), tmp_path / "final.pt")
    (tmp_path / "step_100").mkdir()
    torch.save(_weights(2), tmp_path / "step_100" / "model.pt")
    (tmp_path / "saved").mkdir()
    save_file(_weights(3), str(tmp_path / "saved" / "model.safetensors"))
    for checkpoint in (tmp_path / "final.pt", tmp_path / "step_100" / "model.pt", tmp_path / "saved"):
        done = fdl("inspect", checkpoint, *MODEL, "--json")
        assert done.code == 0, done.stderr
        listing = json.loads(done.stdout)
        assert listing["default_layer"] == "5:input"
        assert Path(listing["checkpoint"]) == checkpoint


def test_inspect_a_folder_whose_files_share_an_epoch(tmp_path: Path) -> None:
    """A timm-style folder whose files hold only their epoch, two of them the same: analyze needs
    --step-regex to tell them apart, and said so to inspect too, which takes neither that option nor
    a step: it lists the first file's modules."""
    for step in (0, 20):
        torch.save({"state_dict": _weights(step), "epoch": 0}, tmp_path / f"checkpoint-{step}.pth.tar")
    done = fdl("inspect", tmp_path, *MODEL, "--json")
    assert done.code == 0, done.stderr
    assert Path(json.loads(done.stdout)["checkpoint"]) == tmp_path / "checkpoint-0.pth.tar"


def test_inspect_names_itself_in_the_sub_folder_hint(tmp_path: Path) -> None:
    nested = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    nested.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in _weights(1).items()}, "global_step": 5},
               nested / "epoch=0-step=5.ckpt")
    done = fdl("inspect", tmp_path, *MODEL)
    assert done.code == 1 and "Traceback" not in done.stderr
    assert f"fix: pass the folder that holds them: fdl inspect {nested}" in done.stderr
    assert "loosen --glob" not in done.stderr  # no --glob was given
    assert fdl("inspect", nested, *MODEL).code == 0
