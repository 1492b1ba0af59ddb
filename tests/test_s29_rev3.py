"""A review of this session's readers of torch.save `.zip` / `.tar` files in a folder scan and of quantized
checkpoints, from the user's side:

- a TorchScript program saved as `.zip` (torch.jit.save's format is a zip) is the TorchScript program it is,
  refused without --trust-pickle as one named `.pt` is, not "a zip archive" to unzip;
- a zip whose first entry is named as torch's but whose central directory cannot be decoded (an entry flagged
  UTF-8 whose name is not) fails as that one checkpoint, the run going on, never a traceback;
- a --model factory that returns the torch.ao-quantized model itself is told to return the float network
  (fdl loads a quantized Linear's packed weights as the float Linear's), not "wrong --model?";
- a torch.distributed.checkpoint folder of a quantize_dynamic'd state_dict reads as its dequantized Linears, as
  the same state_dict saved with torch.save does.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.cli_run import fdl_in_process, model_file
from tests.tiny_models import mlp

MODEL = """\
import warnings

import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def quantized():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(build(), {nn.Linear}, dtype=torch.qint8)
"""


def _said(text: str) -> str:
    return " ".join(text.split())


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    folder = tmp_path / "run"
    folder.mkdir()
    return folder, tmp_path / "probe.npz"


def _analyze(tmp_path: Path, folder: Path, *extra: object, factory: str = "build"):  # type: ignore[no-untyped-def]
    return fdl_in_process("analyze", folder, "--model", f"{tmp_path / 'model.py'}:{factory}", "--probe",
                          tmp_path / "probe.npz", "--out", tmp_path / "run.h5", "--json", *extra)


def _dynamic(seed: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(mlp(seed=seed), {nn.Linear}, dtype=torch.qint8)


def test_a_torchscript_program_named_zip_is_said_to_be_one(tmp_path: Path) -> None:
    folder, _ = _setup(tmp_path)
    torch.save(mlp(seed=1).state_dict(), folder / "step_1.pt")
    torch.jit.save(torch.jit.script(mlp(seed=2)), folder / "step_2.zip")
    done = _analyze(tmp_path, folder)
    said = _said(done.stderr)
    assert "a zip archive" not in said and "unzip" not in said, done.stderr
    assert f"{folder / 'step_2.zip'}: a TorchScript program can run code when loaded" in said, done.stderr
    assert "re-run with --trust-pickle" in said


def _undecodable_directory(path: Path) -> None:
    """`path` (a torch.save zip) with its second central-directory entry flagged UTF-8 and a name ending in a
    byte that is not UTF-8: Python's zipfile raises UnicodeDecodeError on opening it."""
    data = bytearray(path.read_bytes())
    first = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", first + 4)
    data[second + 8:second + 10] = (int.from_bytes(data[second + 8:second + 10], "little") | 0x800).to_bytes(2, "little")
    length = int.from_bytes(data[second + 28:second + 30], "little")
    data[second + 46 + length - 1] = 0xFF
    path.write_bytes(bytes(data))
    try:
        zipfile.ZipFile(path)
    except UnicodeDecodeError:
        return
    raise AssertionError("the damaged zip opened")


def test_a_zip_whose_directory_cannot_be_decoded_fails_as_one_checkpoint(tmp_path: Path) -> None:
    folder, _ = _setup(tmp_path)
    torch.save(mlp(seed=1).state_dict(), folder / "step_1.pt")
    for name in ("step_2.zip", "step_3.pt"):
        torch.save(mlp(seed=2).state_dict(), folder / name)
        _undecodable_directory(folder / name)
    done = _analyze(tmp_path, folder, factory="build")
    said = _said(done.stderr)
    assert "Traceback" not in done.stderr and "UnicodeDecodeError" not in said, done.stderr
    assert done.returncode == 1
    assert "1 checkpoint analysed, 2 failed" in said, done.stderr
    for name in ("step_2.zip", "step_3.pt"):
        assert (f"cannot read the checkpoint {folder / name} got: a zip archive whose central directory is "
                "damaged") in said, done.stderr


def test_a_factory_returning_the_quantized_model_is_told_to_return_the_float_one(tmp_path: Path) -> None:
    folder, _ = _setup(tmp_path)
    torch.save(_dynamic(1).state_dict(), folder / "step_1.pt")
    done = _analyze(tmp_path, folder, factory="quantized")
    said = _said(done.stderr)
    assert done.returncode == 1
    assert "wrong --model" not in said, done.stderr
    assert "the model built by --model is quantized by torch.ao (its Linears hold packed weights: 0, 2)" in said
    assert "have the factory return the float network (before quantize_dynamic or convert)" in said


def test_a_dcp_folder_of_a_dynamically_quantized_state_dict_reads_as_the_torch_save_of_it(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    folder, _ = _setup(tmp_path)
    other = tmp_path / "saved"
    other.mkdir()
    for step in (1, 2):
        state = _dynamic(step).state_dict()
        torch.save(state, other / f"step_{step}.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(state, checkpoint_id=str(folder / f"step_{step}"))
    done = _analyze(tmp_path, folder)
    assert done.returncode == 0, done.stderr
    by_dcp = {record["step"]: record for record in map(json.loads, done.stdout.splitlines())}
    saved = _analyze(tmp_path, other, "--overwrite")
    assert saved.returncode == 0, saved.stderr
    by_save = {record["step"]: record for record in map(json.loads, saved.stdout.splitlines())}
    assert sorted(by_dcp) == [1, 2]
    for step, record in by_save.items():
        for name in ("d_lr", "eff_dim", "param_norm", "accuracy"):
            assert by_dcp[step][name] == record[name], name


def test_a_skipped_npz_whose_directory_cannot_be_decoded_leaves_the_missing_probe_error(tmp_path: Path) -> None:
    """Without --probe, the .npz files the scan skipped are looked into for a probe set: one whose directory
    cannot be decoded is not one, and the error says the probe is missing."""
    folder, _ = _setup(tmp_path)
    torch.save(mlp(seed=1).state_dict(), folder / "step_1.pt")
    torch.save(mlp(seed=2).state_dict(), folder / "data.npz")
    _undecodable_directory(folder / "data.npz")
    done = fdl_in_process("analyze", folder, "--model", f"{tmp_path / 'model.py'}:build", "--out", tmp_path / "o.h5")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert "--probe" in done.stderr


TOKENS_MODEL = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, scaled=False):
        super().__init__()
        self.register_buffer("table", torch.arange(16, dtype=torch.uint8).reshape(4, 4))  # the model's own uint8
        self.fc = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        if scaled:  # a later version of the layer: a learnt per-output scale (LayerScale-like)
            self.head.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.head(torch.relu(self.fc(x + self.table.float().mean())))


def build(scaled=False):
    torch.manual_seed(0)
    return Net(scaled)
"""


def test_a_learnt_scale_the_model_lacks_beside_its_own_uint8_buffer_is_no_scaled_weights(tmp_path: Path) -> None:
    """A checkpoint of a later version of the model (a learnt `head.scale` added) given the older model, which
    holds a uint8 buffer of its own: a mismatch that names the key, not "uint8 weights stored with scales"."""
    folder, probe = _setup(tmp_path)
    module = model_file(tmp_path, TOKENS_MODEL)
    torch.save(module.build(scaled=True).state_dict(), folder / "step_1.pt")
    done = _analyze(tmp_path, folder)
    said = _said(done.stderr)
    assert done.returncode == 1
    assert "stored with scales" not in said, done.stderr
    assert "do not fit the model built by --model got: 1 unexpected key: head.scale" in said, done.stderr
