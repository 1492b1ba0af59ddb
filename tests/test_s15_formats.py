"""Checkpoints as they exist in the wild (session 15): the same weights in the containers training code
saves them in, and the layouts fdl inspect and analyze meet on a researcher's first day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from tests.test_analyze import fdl
from tests.tiny_models import cnn

MODEL = ("--model", "tests.tiny_models:cnn")


def _weights(index: int) -> dict[str, torch.Tensor]:
    """The tiny CNN's parameters moved a little further at each index (BatchNorm's buffers kept)."""
    model = cnn(seed=0)
    generator = torch.Generator().manual_seed(index)
    moved = {k: v + 0.3 * index * torch.randn(v.shape, generator=generator) for k, v in model.named_parameters()}
    return {k: moved.get(k, v).detach().clone() for k, v in model.state_dict().items()}


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


# ------------------------------------------------------------------ one folder per step (--step-regex /)


def _probe(path: Path) -> Path:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(40, 1, 6, 6, generator=generator)
    y = torch.randint(0, 3, (40,), generator=generator)
    torch.save({"x": x, "y": y}, path)
    return path


def _analyze(*sources: object, probe: Path, out: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, dict]:
    done = fdl("analyze", *sources, *MODEL, "--probe", probe, "--out", out, "--device", "cpu", "--json", *extra)
    records = {r["step"]: r for r in done.records} if done.code == 0 else {}
    return done.code, done.stderr, records


def _measures(records: dict) -> dict:
    return {step: {k: v for k, v in r.items() if k not in ("path", "sha256")} for step, r in records.items()}


def test_one_folder_per_step_is_analysed_with_a_folder_regex(tmp_path: Path) -> None:
    """ckpts/step_100/model.pt: the error said "pass the folder that holds them: fdl analyze ckpts/step_0"
    (one checkpoint), the files passed by name said "pass --step-regex 'step_(\\d+)'", and that regex
    then "does not match model.pt": no advice led anywhere. A --step-regex holding / is searched in
    FOLDER/NAME, and each message names the one that works."""
    probe = _probe(tmp_path / "probe.pt")
    flat, ckpts = tmp_path / "flat", tmp_path / "ckpts"
    flat.mkdir()
    for step in (0, 10, 20):
        (ckpts / f"step_{step}").mkdir(parents=True)
        torch.save(_weights(step), ckpts / f"step_{step}" / "model.pt")
        torch.save(_weights(step), flat / f"step_{step}.pt")
    code, err, _ = _analyze(ckpts, probe=probe, out=tmp_path / "a.h5")
    assert code == 1 and "Traceback" not in err
    assert f"fdl analyze {ckpts}/step_* --step-regex 'step_(\\d+)/'" in " ".join(err.split())
    folders = [ckpts / f"step_{step}" for step in (0, 10, 20)]
    code, err, _ = _analyze(*folders, probe=probe, out=tmp_path / "b.h5")  # the folders, without the regex
    assert code == 1 and "--step-regex 'step_(\\d+)/'" in err
    files = [folder / "model.pt" for folder in folders]
    code, err, _ = _analyze(*files, probe=probe, out=tmp_path / "c.h5")
    assert code == 1 and "fix: pass --step-regex 'step_(\\d+)/' to take the step from its folder's name" in err
    _, _, expected = _analyze(flat, probe=probe, out=tmp_path / "flat.h5")
    assert sorted(expected) == [0, 10, 20]
    for sources in (folders, files):
        code, err, got = _analyze(*sources, probe=probe, out=tmp_path / f"{len(err)}.h5",
                                  extra=("--step-regex", "step_(\\d+)/"))
        assert code == 0, err
        assert _measures(got) == _measures(expected)  # the same weights, the same numbers, bit for bit


def test_same_file_name_in_step_folders_names_the_folder_regex(tmp_path: Path) -> None:
    """DeepSpeed's global_step100/mp_rank_00_model_states.pt: every name's number is 00, and the clash's
    advice was --step-regex 'mp_rank_(\\d+)_model_states\\.pt', which reads 00 again. (DeepSpeed's own
    files hold `global_steps`, read since; the clash stays for files of that layout without it.)"""
    probe = _probe(tmp_path / "probe.pt")
    files = []
    for step in (0, 10):
        (tmp_path / f"global_step{step}").mkdir()
        files.append(tmp_path / f"global_step{step}" / "mp_rank_00_model_states.pt")
        torch.save({"module": _weights(step), "dp_world_size": 1}, files[-1])
    code, err, _ = _analyze(*files, probe=probe, out=tmp_path / "a.h5")
    assert code == 1 and "Traceback" not in err
    assert "fix: pass --step-regex 'global_step(\\d+)/' to take the steps from their folders' names" in err
    code, err, got = _analyze(*files, probe=probe, out=tmp_path / "b.h5", extra=("--step-regex", "global_step(\\d+)/"))
    assert code == 0, err
    assert sorted(got) == [0, 10]
    assert got[10]["path"] == str(files[1])


@pytest.mark.parametrize("regex, message", [
    ("step_(\\d+", "--step-regex 'step_(\\d+' is not a valid regular expression"),
    ("step_\\d+", "--step-regex 'step_\\d+' has no capture group around the step"),
    ("epoch_(\\d+)", "--step-regex 'epoch_(\\d+)' does not match model.pt with a group"),
])
def test_a_step_regex_is_quoted_as_typed(tmp_path: Path, regex: str, message: str) -> None:
    """The messages quoted the user's --step-regex with Python's repr: 'step_(\\\\d+)', each backslash
    doubled, a regex that copied back into the shell matches a backslash and a d."""
    torch.save(_weights(0), tmp_path / "model.pt")
    done = fdl("analyze", tmp_path / "model.pt", *MODEL, "--probe", _probe(tmp_path / "probe.pt"),
               "--out", tmp_path / "a.h5", "--step-regex", regex)
    assert done.code == 1 and "Traceback" not in done.stderr
    assert message in done.stderr


# ------------------------------------------------------------------- the same weights, any container


def test_the_same_weights_give_the_same_numbers_in_every_container(tmp_path: Path) -> None:
    """A raw state_dict, a training-loop bundle, DDP's and torch.compile's prefixes, a Lightning .ckpt,
    Trainer checkpoint-N folders and zero-padded safetensors names: one set of numbers, bit for bit."""
    probe = _probe(tmp_path / "probe.pt")
    steps = (0, 10, 20)
    layouts: dict[str, Path] = {}

    def folder(name: str) -> Path:
        layouts[name] = tmp_path / name
        layouts[name].mkdir(parents=True, exist_ok=True)
        return layouts[name]

    for step in steps:
        sd = _weights(step)
        torch.save(sd, folder("plain") / f"step_{step}.pt")
        torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "step": step, "epoch": step // 10},
                   folder("bundle") / f"ckpt_{step // 10}.pt")  # the names hold no step: the metadata does
        torch.save({f"module.{k}": v for k, v in sd.items()}, folder("ddp") / f"step_{step}.pt")
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, folder("compiled") / f"step_{step}.pt")
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": step, "epoch": 0,
                    "hyper_parameters": {"width": 4}}, folder("lightning") / f"epoch=0-step={step}.ckpt")
        save_file(sd, str(folder(f"trainer/checkpoint-{step}") / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / f"trainer/checkpoint-{step}/trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file(sd, str(folder("safetensors") / f"step_{step:06d}.safetensors"))
    layouts["trainer"] = tmp_path / "trainer"
    results = {}
    for name in ("plain", "bundle", "ddp", "compiled", "lightning", "trainer", "safetensors"):
        code, err, records = _analyze(layouts[name], probe=probe, out=tmp_path / f"{name}.h5")
        assert code == 0, (name, err)
        results[name] = _measures(records)
    assert sorted(results["plain"]) == list(steps)
    for name, measures in results.items():
        assert measures == results["plain"], name


def test_half_precision_weights_are_widened_exactly(tmp_path: Path) -> None:
    """float16 / bfloat16 checkpoints run in a float32 model (--dtype): their numbers are those of the
    float32 values the rounded weights widen to, bit for bit (docs/usage.md, "Model")."""
    probe = _probe(tmp_path / "probe.pt")
    for dtype in (torch.float16, torch.bfloat16):
        half, wide = tmp_path / f"{dtype}-half", tmp_path / f"{dtype}-wide"
        half.mkdir()
        wide.mkdir()
        for step in (0, 10):
            rounded = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _weights(step).items()}
            torch.save(rounded, half / f"step_{step}.pt")
            torch.save({k: v.float() if v.is_floating_point() else v for k, v in rounded.items()}, wide / f"step_{step}.pt")
        results = [_analyze(folder, probe=probe, out=tmp_path / f"{folder.name}.h5") for folder in (half, wide)]
        assert all(code == 0 for code, _, _ in results)
        assert _measures(results[0][2]) == _measures(results[1][2]), dtype


# ------------------------------------------------------------------- an unsupported layout, explained


def test_torch_distributed_checkpoint_folders_are_read(tmp_path: Path) -> None:
    """An FSDP run's DCP folders (step_N/__0_0.distcp + .metadata): the run's folder said "no checkpoints
    found, got: nothing", a step folder "not a checkpoint suffix", and a shard given by name "the file
    is truncated or corrupt ... re-copy it". Session 15 named the conversion to run for each folder; since
    session 26 fdl reads them (tests/test_s26_dcp.py): the run, or a step folder, gives the numbers of the
    same weights saved plainly, and a shard given by name says to give its folder."""
    import warnings

    import torch.distributed.checkpoint as dcp

    probe = _probe(tmp_path / "probe.pt")
    run, plain = tmp_path / "run", tmp_path / "plain"
    plain.mkdir()
    for step in (0, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": one process saves it all
            dcp.save({"model": _weights(step), "step": step}, checkpoint_id=str(run / f"step_{step}"))
        torch.save(_weights(step), plain / f"step_{step}.pt")
    code, err, shard = _analyze(run / "step_0" / "__0_0.distcp", probe=probe, out=tmp_path / "a.h5")
    assert code == 1 and "Traceback" not in err and "corrupt" not in err, err
    assert f"give the folder, {run / 'step_0'}" in " ".join(err.split())
    assert not (tmp_path / "a.h5").exists()
    assert [ref.step for ref in discover_checkpoints([run], empty_ok=True, missing_ok=True).checkpoints] == [0, 10]
    inspected = fdl("inspect", run / "step_0", *MODEL)
    assert inspected.code == 0 and "BatchNorm2d" in inspected.stderr, inspected.stderr
    code, err, got = _analyze(run, probe=probe, out=tmp_path / "dcp.h5")
    assert code == 0, err
    _, _, expected = _analyze(plain, probe=probe, out=tmp_path / "plain.h5")
    assert _measures(got) == _measures(expected)
    code, err, one = _analyze(run / "step_10", probe=probe, out=tmp_path / "one.h5")
    assert code == 0 and list(one) == [10], err
