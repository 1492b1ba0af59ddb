"""Session 24's review of checkpoints that loaded or were skipped without a word (tests/test_s24_dtype.py),
each failing before its fix:

- weights stored as integers, booleans or complex numbers where the model's are floating point were cast
  by load_state_dict without a word (complex ones with torch's "Casting complex values" UserWarning), and
  `fdl analyze` measured the cast values and exited 0. Such a checkpoint is now a bad one, named with the
  tensors, their dtype and the model's; the run's other checkpoints are analysed. Half, bfloat16, double
  and float8 weights still load (cast to the model's dtype), and so do integer buffers (BatchNorm's
  num_batches_tracked);
- a sub-folder named like a checkpoint file (`step_2.pt/`, Lightning's DeepSpeed `epoch=0-step=10.ckpt/`)
  was passed over by the folder's scan without a word. It is now a bad checkpoint that says what it is
  (a DeepSpeed folder: how to convert it to one file fdl reads);
- a folder given beside others that is empty was a note, and with --steps or --every nothing at all: it is
  now a warning, whatever selects the steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.cli_run import fdl_in_process
from tests.tiny_models import cnn, mlp

MLP = "tests.tiny_models:mlp"


def _probe(folder: Path, shape: tuple[int, ...] = (4,)) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, *shape)).astype(np.float32)
    path = folder / "probe.npz"
    np.savez(path, x=x, y=(x.reshape(24, -1)[:, 0] > 0).astype(np.int64))
    return path


def _trained(seed: int) -> dict[str, torch.Tensor]:
    """An MLP's state_dict that differs from step to step (no "identical weights" warning)."""
    return mlp(4, 8, 3, seed=seed).state_dict()


def _analyze(tmp_path: Path, *sources: Path, model: str = MLP, probe: Path | None = None, extra: tuple[str, ...] = ()):
    return fdl_in_process("analyze", *sources, "--model", model, "--probe", probe or _probe(tmp_path),
                          "--out", tmp_path / "run.h5", "--json", *extra)


def _steps(stdout: str) -> list[int]:
    return [json.loads(line)["step"] for line in stdout.splitlines() if line.strip()]


def _run(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 10):
        torch.save(_trained(step), folder / f"step_{step}.pt")
    return folder


# ------------------------------------------------------------------------- weights that are not floating point


@pytest.mark.parametrize(("dtype", "saved_as"), [(torch.int32, "safetensors"), (torch.bool, "pt"),
                                                 (torch.complex64, "pt"), (torch.int64, "safetensors")])
def test_weights_that_are_not_floating_point_make_a_bad_checkpoint(
    tmp_path: Path, dtype: torch.dtype, saved_as: str
) -> None:
    folder = _run(tmp_path)
    state = {name: (value * 100 if dtype != torch.bool else value > 0).to(dtype)
             for name, value in _trained(20).items()}
    bad = folder / f"step_20.{saved_as}"
    if saved_as == "safetensors":
        save_file(state, bad)
    else:
        torch.save(state, bad)
    torch.save(_trained(30), folder / "step_30.pt")
    done = _analyze(tmp_path, folder)
    assert done.returncode == 1, done.stderr
    assert _steps(done.stdout) == [0, 10, 30]  # the others analysed
    shown = str(dtype).removeprefix("torch.")
    said = done.stderr
    assert f"{bad} holds weights that are not floating point where the model's are" in said
    assert all(f"{name} ({shown}; the model's float32)" in said for name in state)
    assert "fix: re-save the checkpoint from the trained model's floating-point weights" in said
    assert "3 checkpoints analysed, 1 failed" in said
    assert f"  failed: {bad} holds weights that are not floating point" in said
    assert "Casting complex values" not in said and "Traceback" not in said


def test_one_integer_buffer_in_place_of_a_float_one_is_named(tmp_path: Path) -> None:
    """A float weight stored as an integer beside float ones (a cast by hand, a rounding bug) is named alone."""
    folder = _run(tmp_path)
    state = _trained(20)
    state["2.bias"] = state["2.bias"].round().to(torch.int64)
    torch.save(state, folder / "step_20.pt")
    done = _analyze(tmp_path, folder)
    assert done.returncode == 1
    assert _steps(done.stdout) == [0, 10]
    assert "2.bias (int64; the model's float32)" in done.stderr
    assert "0.weight (" not in done.stderr


def test_the_model_dtype_named_is_that_of_the_run(tmp_path: Path) -> None:
    """--dtype bfloat16: the model the weights go into is bfloat16, and the message says so."""
    folder = _run(tmp_path)
    torch.save({name: value.to(torch.int32) for name, value in _trained(20).items()}, folder / "step_20.pt")
    done = _analyze(tmp_path, folder, extra=("--dtype", "bfloat16"))
    assert done.returncode == 1
    assert _steps(done.stdout) == [0, 10]
    assert "0.weight (int32; the model's bfloat16)" in done.stderr


def test_a_reference_checkpoint_that_is_not_floating_point_stops_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({name: value.to(torch.complex64) for name, value in _trained(0).items()}, folder / "step_0.pt")
    torch.save(_trained(10), folder / "step_10.pt")
    done = _analyze(tmp_path, folder)
    assert done.returncode == 1
    assert _steps(done.stdout) == []
    assert "step_0.pt holds weights that are not floating point" in done.stderr
    assert "(complex64; the model's float32)" in done.stderr
    assert "Casting complex values" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn])
def test_floating_point_weights_of_another_precision_still_load(tmp_path: Path, dtype: torch.dtype) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 10):
        save_file({name: value.to(dtype) for name, value in _trained(step).items()},
                  folder / f"step_{step}.safetensors")
    done = _analyze(tmp_path, folder)
    assert done.returncode == 0, done.stderr
    assert _steps(done.stdout) == [0, 10]


def test_integer_buffers_of_the_model_still_load(tmp_path: Path) -> None:
    """BatchNorm's num_batches_tracked is int64 in the model and in the file: not a weight cast."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 10):
        state = cnn(seed=step).state_dict()
        assert state["1.num_batches_tracked"].dtype == torch.int64
        torch.save(state, folder / f"step_{step}.pt")
    done = _analyze(tmp_path, folder, model="tests.tiny_models:cnn", probe=_probe(tmp_path, (1, 5, 5)))
    assert done.returncode == 0, done.stderr
    assert _steps(done.stdout) == [0, 10]


def test_many_tensors_are_counted_and_integer_buffers_are_not_named(tmp_path: Path) -> None:
    from fdl_cli.checkpoints import _load_strict
    from fdl_cli.errors import CheckpointError

    state = {name: value.to(torch.int16) for name, value in cnn(seed=1).state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        _load_strict(cnn(), state, tmp_path / "step_1.pt")
    message = caught.value.message
    floating = [name for name, value in cnn().state_dict().items() if value.is_floating_point()]
    assert message.startswith(f"{tmp_path / 'step_1.pt'} holds weights that are not floating point where the "
                              f"model's are: {floating[0]} (int16; the model's float32), ")
    assert f", ... ({len(floating)} tensors)" in message and len(floating) > 4
    assert "num_batches_tracked" not in message  # int64 in the model: an int16 one is cast as before


# ------------------------------------------------------------------------- folders named like a checkpoint


def _lightning_deepspeed(folder: Path, step: int) -> Path:
    """Lightning's DeepSpeed strategy's save: a folder named like the .ckpt file, DeepSpeed's layout inside."""
    saved = folder / f"epoch=0-step={step}.ckpt"
    (saved / "checkpoint").mkdir(parents=True)
    torch.save({"module": {f"model.{name}": value for name, value in _trained(step).items()}, "global_steps": step},
               saved / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, saved / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (saved / "latest").write_text("checkpoint")
    (saved / "zero_to_fp32.py").write_text("# DeepSpeed's conversion script\n")
    return saved


def test_a_folder_named_like_a_checkpoint_is_a_bad_checkpoint(tmp_path: Path) -> None:
    folder = _run(tmp_path)
    odd = folder / "step_2.pt"
    odd.mkdir()
    (odd / "data.pkl").write_bytes(b"\x80\x04.")
    done = _analyze(tmp_path, folder)
    assert done.returncode == 1, done.stderr
    assert _steps(done.stdout) == [0, 10]
    assert f"error: {odd} is a folder named like a checkpoint file, not a checkpoint fdl reads" in done.stderr
    assert "2 checkpoints analysed, 1 failed" in done.stderr
    assert f"  failed: {odd} is a folder named like a checkpoint file" in done.stderr


def test_lightning_deepspeed_folders_say_what_they_are_and_how_to_convert_them(tmp_path: Path) -> None:
    folder = _run(tmp_path)
    saved = _lightning_deepspeed(folder, 20)
    done = _analyze(tmp_path, folder)
    assert done.returncode == 1, done.stderr
    assert _steps(done.stdout) == [0, 10]
    said = " ".join(done.stderr.split())
    assert f"error: {saved} is a DeepSpeed checkpoint folder" in said
    assert "got: checkpoint/mp_rank_00_model_states.pt in it, and no file of the whole model's weights" in said
    assert (f"convert_zero_checkpoint_to_fp32_state_dict as convert; convert('{saved}', "
            f"'{folder / 'epoch=0-step=20.pt'}')") in said
    assert f"python {saved / 'zero_to_fp32.py'} {saved} OUTPUT" in said
    assert "2 checkpoints analysed, 1 failed" in said


def test_a_deepspeed_folder_given_or_alone_is_that_error(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    saved = _lightning_deepspeed(folder, 20)
    for source in (saved, folder):
        done = _analyze(tmp_path, source)
        assert done.returncode == 1
        assert done.stderr.count(f"error: {saved} is a DeepSpeed checkpoint folder") == 1, done.stderr
        assert "no checkpoints found" not in done.stderr and "Traceback" not in done.stderr


def test_global_step_folders_without_a_checkpoint_name_are_read_as_before(tmp_path: Path) -> None:
    """DeepSpeed's own global_stepN/ folders are not named like a checkpoint: their model states file is read
    (tests/test_s15_step_keys.py), and a scan of the folder above them is not a bad checkpoint."""
    from fdl_cli.checkpoints import discover_checkpoints

    for step in (10, 20):
        sub = tmp_path / f"global_step{step}"
        sub.mkdir()
        torch.save({"module": _trained(step), "global_steps": step}, sub / "mp_rank_00_model_states.pt")
    torch.save(_trained(0), tmp_path / "step_0.pt")
    found = discover_checkpoints([tmp_path])
    assert [ref.path.name for ref in found.checkpoints] == ["step_0.pt"] and found.bad == []


@pytest.mark.parametrize("selection", [(), ("--steps", "0,10"), ("--every", "1")])
def test_an_empty_folder_given_beside_others_is_a_warning(tmp_path: Path, selection: tuple[str, ...]) -> None:
    folder = _run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _analyze(tmp_path, folder, empty, extra=selection)
    assert done.returncode == 0, done.stderr
    assert _steps(done.stdout) == [0, 10]
    assert f"warning: no checkpoint found in {empty}: the folder is empty" in done.stderr
