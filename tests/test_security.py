"""Hostile pickles: every discovery and loading path refuses them and never runs their payload."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import CheckpointRef, discover_checkpoints, load_checkpoint
from fdl_cli.errors import CheckpointError, ProbeError, UnsafeCheckpointError
from fdl_cli.probes import load_probe
from tests.tiny_models import mlp

torch.set_num_threads(1)


class Payload:
    """Runs ``touch MARKER`` when unpickled (if anything ever unpickles it unsafely)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _weights() -> dict[str, torch.Tensor]:
    return dict(mlp().state_dict())


def _layouts(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """One hostile checkpoint per loading path; returns the path each discovery source should use."""
    evil = Payload(marker)
    (tmp_path / "scan").mkdir()
    torch.save({**_weights(), "x": evil}, tmp_path / "scan" / "model_1.pt")  # type: ignore[dict-item]
    torch.save({"model_state_dict": _weights(), "step": 3, "cb": evil}, tmp_path / "loop_3.pt")
    torch.save({"state_dict": _weights(), "extra": [evil]}, tmp_path / "pytorch_4.bin")
    torch.save({"state_dict": _weights(), "hparams": evil}, tmp_path / "light_5.ckpt")
    (tmp_path / "checkpoint-6").mkdir()
    torch.save({**_weights(), "x": evil}, tmp_path / "checkpoint-6" / "pytorch_model.bin")  # type: ignore[dict-item]
    torch.save({**_weights(), "x": evil}, tmp_path / "legacy_7.pt", _use_new_zipfile_serialization=False)  # type: ignore[dict-item]
    with open(tmp_path / "plain_8.pth", "wb") as handle:
        pickle.dump({"w": evil}, handle)
    return {
        "scan": tmp_path / "scan",
        "loop": tmp_path / "loop_3.pt",
        "bin": tmp_path / "pytorch_4.bin",
        "ckpt": tmp_path / "light_5.ckpt",
        "hf": tmp_path / "checkpoint-6",
        "legacy": tmp_path / "legacy_7.pt",
    }


def test_hostile_pickles_refused_everywhere_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    layouts = _layouts(tmp_path, marker)
    for label, source in layouts.items():
        found = discover_checkpoints([source])
        assert [r.kind for r in found.checkpoints] == ["pickle"], label
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint(found.checkpoints[0])
        message = str(err.value)
        assert "--trust-pickle" in message and "could run code" in message, label
        assert "system" in message, label
        assert not marker.exists(), label
    # a pickle with no tensors at all is skipped with a note, and an explicit load is refused too
    with pytest.raises(CheckpointError, match="plain_8.pth"):
        discover_checkpoints([tmp_path / "plain_8.pth"])
    for path in (tmp_path / "plain_8.pth", tmp_path / "loop_3.pt"):
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(CheckpointRef(path=path, step=0, step_source="name", kind="state_dict"))
    whole_folder = discover_checkpoints([tmp_path])
    assert {r.kind for r in whole_folder.checkpoints} == {"pickle"}
    assert any("plain_8.pth" in n for n in whole_folder.notes)
    assert not marker.exists()


def test_hostile_probe_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"x": torch.zeros(3, 2), "y": Payload(marker)}, tmp_path / "probe.pt")
    with pytest.raises(ProbeError, match="probe.pt") as err:
        load_probe(tmp_path / "probe.pt")
    assert "refused" in str(err.value)
    assert not marker.exists()
