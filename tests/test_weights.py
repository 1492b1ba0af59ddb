"""--weights: analyse the EMA (or teacher) copy a checkpoint holds beside the model's own weights.

timm saves ``state_dict_ema`` beside ``state_dict``; a LightningModule with an EMA copy holds the
network under ``model.`` and the copy under ``ema.`` in one state_dict. Without --weights fdl analyses
the model's own weights (or, for the two prefixes, refuses to guess); with --weights NAME it analyses
the copy, exactly as if the files held only that copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.store import StoreReader
from tests.cli_run import tiny_model_beside
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL, SMALL
from tests.tiny_models import mlp

STEPS = (0, 10, 20)


def _state(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in mlp(seed=seed).state_dict().items()}


def _runs(root: Path) -> dict[str, Path]:
    """The same EMA weights in four layouts, and a folder holding them alone (the expected numbers)."""
    folders = {name: root / name for name in ("timm", "lightning", "prefixed_safetensors", "alone")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for step in STEPS:
        own, ema = _state(step), _state(100 + step)
        torch.save(
            {"state_dict": own, "state_dict_ema": ema, "epoch": step, "arch": "mlp",
             "args": argparse.Namespace(lr=0.1, model="mlp")},
            folders["timm"] / f"checkpoint-{step}.pth.tar",
        )
        torch.save(
            {"state_dict": {**{f"model.{k}": v for k, v in own.items()}, **{f"ema.{k}": v for k, v in ema.items()}},
             "global_step": step, "epoch": 0},
            folders["lightning"] / f"step={step}.ckpt",
        )
        save_file({**own, **{f"model_ema.module.{k}": v for k, v in ema.items()}},
                  str(folders["prefixed_safetensors"] / f"step_{step}.safetensors"))
        save_file(ema, str(folders["alone"] / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return folders


def _analyze(folder: Path, out: Path, *extra: str) -> Result:
    result = fdl("analyze", str(folder), "--model", MODEL, "--probe", str(folder.parent / "probe.npz"),
                 "--out", str(out), "--json", *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _numbers(records: list[dict]) -> list[dict]:
    skip = {"path", "sha256"}
    return [{k: v for k, v in record.items() if k not in skip} for record in records]


@pytest.mark.parametrize(
    ("layout", "weights"),
    [("timm", "state_dict_ema"), ("lightning", "ema"), ("lightning", "ema."), ("prefixed_safetensors", "model_ema.module")],
)
def test_weights_picks_the_copy_exactly_as_a_file_of_it_alone(tmp_path: Path, layout: str, weights: str) -> None:
    folders = _runs(tmp_path)
    expected = _analyze(folders["alone"], tmp_path / "alone.h5")
    assert expected.code == 0, expected.stderr
    got = _analyze(folders[layout], tmp_path / "got.h5", "--weights", weights)
    assert got.code == 0, got.stderr
    assert [r["step"] for r in got.records] == list(STEPS)
    assert _numbers(got.records) == _numbers(expected.records)
    with StoreReader(tmp_path / "got.h5") as reader:
        assert reader.provenance["options"]["weights"] == weights


def test_without_weights_the_own_weights_are_analysed_or_the_prefixes_named(tmp_path: Path) -> None:
    folders = _runs(tmp_path)
    own = _analyze(folders["timm"], tmp_path / "timm.h5")
    assert own.code == 0, own.stderr
    ema = _analyze(folders["timm"], tmp_path / "ema.h5", "--weights", "state_dict_ema")
    assert _numbers(own.records) != _numbers(ema.records)
    with StoreReader(tmp_path / "timm.h5") as reader:
        assert "weights" not in reader.provenance["options"]  # stores without --weights are as before
    refused = _analyze(folders["lightning"], tmp_path / "l.h5")
    assert refused.code == 1
    assert "holds the model's weights under several prefixes: " in refused.stderr
    assert "'model.'" in refused.stderr and "'ema.'" in refused.stderr
    assert "fix: pick one with --weights (e.g. --weights model), or re-save the copy you mean" in refused.stderr


def test_unknown_weights_name_what_the_checkpoint_holds(tmp_path: Path) -> None:
    folders = _runs(tmp_path)
    result = _analyze(folders["lightning"], tmp_path / "s.h5", "--weights", "teacher")
    assert result.code == 1 and result.records == []
    path = folders["lightning"] / "step=0.ckpt"
    assert (
        f"--weights teacher: {path} has no entry 'teacher' holding a state_dict, and none of its keys starts "
        "with 'teacher.'"
    ) in result.stderr
    assert "got: its keys start with ema. (4), model. (4)" in result.stderr


def test_a_resume_with_other_weights_is_refused(tmp_path: Path) -> None:
    folders = _runs(tmp_path)
    out = tmp_path / "s.h5"
    assert _analyze(folders["timm"], out, "--steps", "0,10", "--weights", "state_dict_ema").code == 0
    before = out.read_bytes()
    mixed = _analyze(folders["timm"], out)
    assert mixed.code == 1 and "weights" in mixed.stderr and mixed.records == []
    assert out.read_bytes() == before
    rest = _analyze(folders["timm"], out, "--weights", "state_dict_ema")
    assert rest.code == 0 and [r["step"] for r in rest.records] == [20]
    # step 20 compared with the stored step 10's EMA weights (read again for its anchors), as in one run
    whole = _analyze(folders["timm"], tmp_path / "whole.h5", "--weights", "state_dict_ema")
    assert _numbers(rest.records) == _numbers(whole.records[2:])
    assert rest.records[0]["prev_step"] == 10 and rest.records[0]["cka_prev"] is not None


def test_weights_of_a_whole_module_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "scripted"
    folder.mkdir()
    torch.jit.save(torch.jit.script(mlp(seed=0)), str(folder / "step_0.pt"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    result = fdl("analyze", str(folder), "--probe", str(tmp_path / "probe.npz"), "--out", str(tmp_path / "s.h5"),
                 *SMALL, "--weights", "ema", "--trust-pickle")  # a TorchScript program is code
    assert result.code == 1 and "Traceback" not in result.stderr
    assert f"--weights ema: {folder / 'step_0.pt'} holds a whole module, whose weights are its own" in result.stderr


def test_inspect_takes_weights_too(tmp_path: Path) -> None:
    folders = _runs(tmp_path)
    checkpoint = folders["lightning"] / "step=10.ckpt"
    refused = fdl("inspect", str(checkpoint), "--model", MODEL, "--json")
    assert refused.code == 1 and "several prefixes" in refused.stderr
    listed = fdl("inspect", str(checkpoint), "--model", MODEL, "--weights", "ema", "--json")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout)["default_layer"]


def test_the_manifest_can_name_the_weights(tmp_path: Path) -> None:
    """fdl.toml's weights = "..." is the run's --weights; --weights on the command line wins."""
    folders = _runs(tmp_path)
    expected = _analyze(folders["alone"], tmp_path / "alone.h5")
    timm = folders["timm"]
    (timm / "fdl.toml").write_text(f'model = "{tiny_model_beside(timm)}"\nprobe = "../probe.npz"\n'
                                   'weights = "state_dict_ema"\n')
    got = fdl("analyze", str(timm), "--out", str(tmp_path / "m.h5"), "--json", *SMALL)
    assert got.code == 0, got.stderr
    assert "ignored" not in got.stderr
    assert _numbers(got.records) == _numbers(expected.records)
    own = fdl("analyze", str(timm), "--out", str(tmp_path / "own.h5"), "--json", *SMALL, "--weights", "state_dict")
    assert own.code == 0 and _numbers(own.records) != _numbers(expected.records)
    lightning = folders["lightning"]
    (lightning / "fdl.toml").write_text(f'model = "{tiny_model_beside(lightning)}"\nweights = "ema"\n')
    listed = fdl("inspect", str(lightning / "step=10.ckpt"), "--json")  # "several prefixes" without it
    assert listed.code == 0, listed.stderr
    (timm / "fdl.toml").write_text(f'model = "{tiny_model_beside(timm)}"\nprobe = "../probe.npz"\nweights = 3\n')
    bad = fdl("analyze", str(timm), "--out", str(tmp_path / "bad.h5"), *SMALL)
    assert bad.code == 1 and f"{timm / 'fdl.toml'}: 'weights' must be a non-empty string" in bad.stderr


def test_identical_weights_are_those_analysed(tmp_path: Path) -> None:
    """Discovery compared the model's own weights even under --weights: two checkpoints with the same
    own weights and different EMA copies were "identical weights" (a warning), and at one step the
    second was dropped as a copy of the first, its EMA weights never analysed."""
    folder = tmp_path / "timm"
    folder.mkdir()
    own = _state(0)
    for step in (0, 10):
        torch.save({"state_dict": own, "state_dict_ema": _state(100 + step), "epoch": step}, folder / f"ckpt-{step}.pth.tar")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    plain = _analyze(folder, tmp_path / "own.h5")
    assert plain.code == 0 and "hold identical weights" in plain.stderr
    ema = _analyze(folder, tmp_path / "ema.h5", "--weights", "state_dict_ema")
    assert ema.code == 0, ema.stderr
    assert "hold identical weights" not in ema.stderr and [r["step"] for r in ema.records] == [0, 10]
    # One step, two files: the same own weights, other EMA weights. Without --weights the second is the
    # same checkpoint (dropped with a note); with it, two different checkpoints claim one step.
    (folder / "ckpt-0.pth.tar").unlink()
    torch.save({"state_dict": own, "state_dict_ema": _state(7), "epoch": 10}, folder / "last.pth.tar")
    plain = _analyze(folder, tmp_path / "own2.h5")
    assert plain.code == 0 and "skipped last.pth.tar: same weights and step (10)" in plain.stderr
    clash = _analyze(folder, tmp_path / "ema2.h5", "--weights", "state_dict_ema")
    assert clash.code == 1 and "two checkpoints have the same step 10" in clash.stderr


def test_a_copy_of_the_last_checkpoint_in_a_run_that_never_moved_is_dropped(tmp_path: Path) -> None:
    """Every checkpoint of a run with lr = 0 holds the same weights; Lightning's last.ckpt beside the
    last one was compared with the first (at another step) and refused as "two checkpoints have the
    same step" instead of being dropped as the copy it is."""
    folder = tmp_path / "still"
    folder.mkdir()
    for step in (0, 10, 20):
        torch.save({"state_dict": _state(0), "global_step": step}, folder / f"step={step}.ckpt")
    torch.save({"state_dict": _state(0), "global_step": 20}, folder / "last.ckpt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    done = _analyze(folder, tmp_path / "still.h5")
    assert done.code == 0, done.stderr
    assert [r["step"] for r in done.records] == [0, 10, 20]
    # the copy is dropped, not the file named by its step (the trainer rewrites last.ckpt at its next save)
    assert "skipped last.ckpt: same weights and step (20) as step=20.ckpt" in done.stderr
    assert [Path(r["path"]).name for r in done.records] == ["step=0.ckpt", "step=10.ckpt", "step=20.ckpt"]
    assert "last.ckpt hold identical weights" not in done.stderr and "step=20.ckpt hold identical weights" in done.stderr


def test_resuming_with_weights_a_store_made_without_says_how_to_resume(tmp_path: Path) -> None:
    """--weights state_dict names what fdl took by itself, but the store recorded no name: refused as
    another run, with a fix that said only --overwrite (losing the store) or another --out."""
    folders = _runs(tmp_path)
    first = _analyze(folders["timm"], tmp_path / "s.h5")
    assert first.code == 0, first.stderr
    again = _analyze(folders["timm"], tmp_path / "s.h5", "--weights", "state_dict")
    assert again.code == 1
    assert "options.weights: absent (store) vs 'state_dict' (this run)" in again.stderr
    assert "the store was analysed without --weights" in again.stderr and "leave --weights out" in again.stderr
    resumed = _analyze(folders["timm"], tmp_path / "s.h5")
    assert resumed.code == 0 and "already in the store" in resumed.stderr
