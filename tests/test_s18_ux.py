"""Small defects of the eighteenth session's usability pass: `fdl inspect FOLDER` took a probe file for its
checkpoint, the renamed-probe hint of a resume contradicted itself for two probes, the memory estimate
left out the anchors' row padding, a store written before `prev_step` warned once a series as if damaged,
and checkpoints before a mid-run --reference were labelled MF / EF without a word."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fdl_cli.store import StoreReader
from tests.cli_run import REPO, fdl
from tests.tiny_models import mlp

SAMPLE = REPO / "sample_checkpoints"
SAMPLE_PROBE = SAMPLE / "probe.npz"


def _probe_dict(n: int = 20) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"x": torch.randn(n, 4, generator=generator), "y": torch.randint(0, 3, (n,), generator=generator)}


# -- 1. a probe file beside the checkpoints is no checkpoint -----------------------------------------------------


def test_inspect_of_a_folder_lists_its_checkpoint_not_the_probe_beside_it(tmp_path: Path) -> None:
    """A folder of `final.pt`-like weights without a step and the probe its fdl.toml names: the probe,
    first by name, was listed as the checkpoint and failed with "unexpected key(s): x, y"."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(mlp(seed=1).state_dict(), folder / "weights.pt")
    torch.save(_probe_dict(), folder / "a_probe.pt")
    (folder / "fdl.toml").write_text('model = "tests.tiny_models:mlp"\nprobe = "a_probe.pt"\n', encoding="utf-8")
    done = fdl("inspect", folder, "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert Path(listed["checkpoint"]).name == "weights.pt"
    assert listed["default_layer"] == "2:input" and listed["default_features"] == 8
    # the probe named alone is not a checkpoint, and the message says what it is
    alone = fdl("inspect", folder / "a_probe.pt", "--model", "tests.tiny_models:mlp")
    assert alone.returncode == 1 and "Traceback" not in alone.stderr
    assert "skipped a_probe.pt: a probe set (x, y), not model weights" in alone.stderr


def test_a_probe_named_like_a_step_is_left_out_of_analyze_and_inspect(tmp_path: Path) -> None:
    """probe_0.pt beside step_0.pt: `analyze` refused "two checkpoints have the same step 0", and
    `inspect` listed the probe, first by path among the step-0 files."""
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), folder / f"step_{step}.pt")
    torch.save(_probe_dict(), folder / "probe_0.pt")
    out = tmp_path / "run.h5"
    done = fdl("analyze", folder, "--model", "tests.tiny_models:mlp", "--probe", folder / "probe_0.pt", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "note: skipped probe_0.pt: a probe set (x, y), not model weights" in done.stderr
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 10]
    listed = fdl("inspect", folder, "--model", "tests.tiny_models:mlp", "--json")
    assert listed.returncode == 0, listed.stderr
    assert Path(json.loads(listed.stdout)["checkpoint"]).name == "step_0.pt"
    # named by the folder's fdl.toml, the probe is not noted at all (as its probe.npz is not)
    (folder / "fdl.toml").write_text('model = "tests.tiny_models:mlp"\nprobe = "probe_0.pt"\n', encoding="utf-8")
    again = fdl("analyze", folder, "-o", tmp_path / "manifest.h5")
    assert again.returncode == 0, again.stderr
    assert "probe_0.pt" not in again.stderr


def test_a_safetensors_probe_is_no_checkpoint_and_weights_still_are(tmp_path: Path) -> None:
    from fdl_cli.checkpoints import discover_checkpoints

    save_file(_probe_dict(), str(tmp_path / "probe.safetensors"))
    save_file({"inputs": torch.zeros(3, 4)}, str(tmp_path / "inputs_only.safetensors"))
    save_file(dict(mlp().state_dict()), str(tmp_path / "step_5.safetensors"))
    torch.save({"x": torch.zeros(2, 2), "weight": torch.zeros(2, 2)}, tmp_path / "step_7.pt")  # x beside weights
    found = discover_checkpoints([tmp_path])
    assert [ref.path.name for ref in found.checkpoints] == ["step_5.safetensors", "step_7.pt"]
    assert "skipped probe.safetensors: a probe set (x, y), not model weights" in found.notes
    assert "skipped inputs_only.safetensors: a probe set (inputs), not model weights" in found.notes
