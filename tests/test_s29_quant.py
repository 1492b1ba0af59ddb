"""A user who trains in low precision or quantizes points `fdl analyze` and `fdl inspect` at such checkpoints,
with a factory in a model .py file that builds the float32 network:

- float8 (e4m3fn, e5m2) and bfloat16 weights alone load as their values, widened to float32: the numbers are
  those of a float64 forward pass through the same values (tests/reference.py);
- float8 or int8 weights saved with scale tensors beside them (`weight_scale`, `weight_scale_inv`, a scheme's
  own `weight.scale`) are refused, naming the scales and how to dequantize, not as a "wrong --model?";
- torch's quantized tensors (`torch.quantize_per_tensor`, per channel) carry their own scale and zero point:
  they are analysed as `dequantize()` gives them, and so is a `torch.ao.quantization.quantize_dynamic`d model's
  state_dict (its Linear layers' packed weights and biases), with torch.load's weights_only unpickler.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.reference import reference_measures

MODEL = """\
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""


def _net(step: int) -> nn.Sequential:
    """The model.py network with weights of its own for each step."""
    torch.manual_seed(100 + step)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _setup(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    (tmp_path / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "probe.npz", x=x, y=y)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    return folder, tmp_path / "probe.npz", x, y


def _analyze(tmp_path: Path, folder: Path, probe: Path):
    return fdl_in_process("analyze", folder, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe,
                          "--out", tmp_path / "run.h5", "--json")


def _check_against_float64(tmp_path: Path, done, weights: dict[int, dict[str, torch.Tensor]],
                           x: np.ndarray, y: np.ndarray) -> None:
    """The run's records and spectra against a float64 forward pass of `weights` (the values the file stands
    for): features are the ReLU's output, the input of the last Linear."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(json.loads(line)["step"] for line in done.stdout.splitlines() if line.strip()) == sorted(weights)
    with StoreReader(tmp_path / "run.h5") as reader:
        records = {record["step"]: record for record in reader.records()}
        spectra = {step: np.asarray(reader.arrays(step).eigenvalues) for step in records}
    for step, state in weights.items():
        w = {name: value.detach().to(torch.float64).numpy() for name, value in state.items()}
        features = np.maximum(x.astype(np.float64) @ w["0.weight"].T + w["0.bias"], 0.0)
        outputs = features @ w["2.weight"].T + w["2.bias"]
        ref = reference_measures(features, outputs, labels=y)
        np.testing.assert_allclose(spectra[step], ref.eigenvalues[: len(spectra[step])], rtol=1e-5, atol=1e-9)
        for name in ("d_lr", "eff_dim", "accuracy", "cross_entropy", "pi_hat_C"):
            assert records[step][name] == pytest.approx(ref.scalars[name], rel=1e-5), name
        squared = sum(float(np.sum(value**2)) for value in w.values())
        assert records[step]["param_norm"] == pytest.approx(squared, rel=1e-6)


# ------------------------------------------------------------------ low-precision floats without scales: cast


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16])
def test_float8_and_bfloat16_weights_are_analysed_as_their_values(tmp_path: Path, dtype: torch.dtype) -> None:
    folder, probe, x, y = _setup(tmp_path)
    weights = {}
    for step in (0, 10):
        stored = {name: value.to(dtype) for name, value in _net(step).state_dict().items()}
        save_file(stored, folder / f"step_{step}.safetensors")
        weights[step] = stored  # widened exactly by .to(float64) in the reference
    _check_against_float64(tmp_path, _analyze(tmp_path, folder, probe), weights, x, y)


# ------------------------------------------------------------- scales stored beside the weights: refused


def _scaled(kind: str, step: int) -> dict[str, torch.Tensor]:
    state = _net(step).state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not name.endswith("weight"):
            out[name] = value
        elif kind == "int8":  # a user's own scheme: int8 values and a float scale under `.scale`
            scale = value.abs().max() / 127
            out[name], out[name + ".scale"] = torch.round(value / scale).to(torch.int8), scale.reshape(())
        else:  # an FP8 export: weight = stored * scale (or stored / scale_inv)
            scale = value.abs().max() / 448
            out[name] = (value / scale).to(torch.float8_e4m3fn)
            out[name + ("_scale_inv" if kind == "scale_inv" else "_scale")] = (1 / scale if kind == "scale_inv"
                                                                                else scale).reshape(())
    return out


@pytest.mark.parametrize(("kind", "scales"), [("scale", "0.weight_scale, 2.weight_scale"),
                                              ("scale_inv", "0.weight_scale_inv, 2.weight_scale_inv"),
                                              ("int8", "0.weight.scale, 2.weight.scale")])
def test_weights_stored_with_scales_beside_them_are_refused_naming_the_scales(
    tmp_path: Path, kind: str, scales: str
) -> None:
    folder, probe, _, _ = _setup(tmp_path)
    for step in (0, 10):
        save_file(_scaled(kind, step), folder / f"step_{step}.safetensors")
    done = _analyze(tmp_path, folder, probe)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    stored = "int8" if kind == "int8" else "float8_e4m3fn"
    assert f"step_0.safetensors holds {stored} weights stored with scales beside them: {scales}" in done.stderr
    assert "fdl cannot know" in done.stderr  # the scheme (multiply or divide, per tensor or per block)
    assert "dequantize them as your exporter defines" in done.stderr
    assert "wrong --model" not in done.stderr
    assert not (tmp_path / "run.h5").exists() or "2 checkpoints analysed" not in done.stderr


# ------------------------------------------------------- torch's quantized tensors: dequantized, as torch does


def _quantized(value: torch.Tensor, per_channel: bool) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of its quantized tensors
        if per_channel and value.dim() == 2:
            scales = value.abs().amax(dim=1).double() / 127
            return torch.quantize_per_channel(value, scales, torch.zeros(len(value), dtype=torch.long), 0, torch.qint8)
        return torch.quantize_per_tensor(value, value.abs().max().item() / 127, 0, torch.qint8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_tensors_are_analysed_as_their_dequantized_values(tmp_path: Path, per_channel: bool) -> None:
    folder, probe, x, y = _setup(tmp_path)
    weights = {}
    for step in (0, 10):
        stored = {name: _quantized(value, per_channel) for name, value in _net(step).state_dict().items()}
        torch.save(stored, folder / f"step_{step}.pt")
        weights[step] = {name: value.dequantize() for name, value in stored.items()}
    _check_against_float64(tmp_path, _analyze(tmp_path, folder, probe), weights, x, y)


def _dynamic(step: int, dtype: torch.dtype) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(_net(step), {nn.Linear}, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_a_dynamically_quantized_models_state_dict_is_analysed_as_its_dequantized_linears(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    folder, probe, x, y = _setup(tmp_path)
    weights = {}
    for step in (0, 10):
        quantized = _dynamic(step, dtype)
        torch.save(quantized.state_dict(), folder / f"step_{step}.pt")
        weights[step] = {}
        for index in (0, 2):
            weight = quantized[index].weight()
            weights[step][f"{index}.weight"] = weight.dequantize() if weight.is_quantized else weight
            weights[step][f"{index}.bias"] = quantized[index].bias()
    _check_against_float64(tmp_path, _analyze(tmp_path, folder, probe), weights, x, y)


def test_inspect_lists_a_dynamically_quantized_models_weights_and_loads_them_into_the_model(tmp_path: Path) -> None:
    folder, _, _, _ = _setup(tmp_path)
    torch.save(_dynamic(0, torch.qint8).state_dict(), folder / "step_0.pt")
    done = fdl_in_process("inspect", folder / "step_0.pt")
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr  # the human table goes to stderr when stdout is not a terminal
    rows = [line.replace("│", " ").split() for line in shown.splitlines() if "│" in line]
    assert ["0", "weight", "[8,", "4]", "qint8", "32"] in rows
    assert ["2", "weight", "[3,", "8]", "qint8", "24"] in rows
    assert ["bias", "[3]", "float32", "3"] in rows
    assert "scale" not in shown and "zero_point" not in shown and "_packed_params" not in shown
    modules = fdl_in_process("inspect", folder / "step_0.pt", "--model", f"{tmp_path / 'model.py'}:build")
    assert modules.returncode == 0, modules.stderr
    assert "default feature layer: 2:input (8 features" in modules.stdout + modules.stderr


def test_inspect_with_the_model_refuses_float8_weights_with_scales_as_analyze_does(tmp_path: Path) -> None:
    folder, _, _, _ = _setup(tmp_path)
    save_file(_scaled("scale", 0), folder / "step_0.safetensors")
    done = fdl_in_process("inspect", folder / "step_0.safetensors", "--model", f"{tmp_path / 'model.py'}:build")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "holds float8_e4m3fn weights stored with scales beside them: 0.weight_scale, 2.weight_scale" in done.stderr
