"""Session 25: a module's extra state (`get_extra_state`/`set_extra_state`) in a checkpoint's state_dict.

`model.state_dict()` holds `<module>._extra_state`, any picklable value (a dict here; TransformerEngine's FP8
metadata). Discovery skipped such a file as "tensors but no model state_dict", and `--model` loading failed with
a traceback (AttributeError: 'dict' object has no attribute 'shape') on the model's own extra state. The extra
states are loaded through `load_state_dict` now (the module's `set_extra_state` gets the stored value), and kept
out of the tensor-only checks; a BytesIO extra state (not readable with weights_only) needs --trust-pickle, and
fdl says why. The tests of a fix failed before it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints, load_checkpoint
from tests.test_analyze import fdl
from tests.test_io_fixes import SMALL
from tests.test_s16_ecosystems import STEPS, _assert_same_numbers, _plain, _sd

torch.set_num_threads(1)

#: tests.tiny_models.mlp whose ReLU keeps an extra state, which its forward does not use: the same numbers.
#: set_extra_state writes what it was given to seen.jsonl beside this file.
_SOURCE = '''
import io
import json
from pathlib import Path

import torch
from torch import nn

SEEN = Path(__file__).with_name("seen.jsonl")


class ScaledReLU(nn.ReLU):
    def __init__(self, as_bytes=False):
        super().__init__()
        self.scale, self.as_bytes = 1.0, as_bytes

    def get_extra_state(self):
        if self.as_bytes:
            buffer = io.BytesIO()
            torch.save({"scale": self.scale}, buffer)
            return buffer
        return {"scale": self.scale}

    def set_extra_state(self, state):
        if isinstance(state, io.BytesIO):
            state.seek(0)
            state = torch.load(state)
        with open(SEEN, "a") as handle:
            handle.write(json.dumps(state) + "\\n")
        self.scale = state["scale"]


def build(as_bytes=False, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), ScaledReLU(as_bytes), nn.Linear(8, 3))
'''


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "model.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(_SOURCE, encoding="utf-8")
    return path


def _with_extra(index: int, value: Any) -> dict[str, Any]:
    """`_sd(index)` (tiny_models.mlp's weights) as the model with extra state saves it: `1._extra_state` added."""
    state = _sd(index)
    return {"0.weight": state["0.weight"], "0.bias": state["0.bias"], "1._extra_state": value,
            "2.weight": state["2.weight"], "2.bias": state["2.bias"]}


def _run(tmp_path: Path, make: Any, name: str = "run") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save(make(index), folder / f"step_{step}.pt")
    return folder


def _analyze(tmp_path: Path, folder: Path, model: Path, name: str, *extra: str) -> Any:
    probe = tmp_path / "probe.npz"
    if not probe.exists():
        rng = np.random.default_rng(0)
        np.savez(probe, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 3)
    done = fdl("analyze", str(folder), "--model", f"{model}:build", "--probe", str(probe), "--out",
               str(tmp_path / name), "--device", "cpu", *SMALL, *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _seen(model: Path) -> list[Any]:
    seen = model.with_name("seen.jsonl")
    return [json.loads(line) for line in seen.read_text().splitlines()] if seen.exists() else []


def test_a_state_dict_with_extra_state_is_discovered_and_loaded(tmp_path: Path) -> None:
    """Each file was skipped as "tensors but no model state_dict"; it is a state_dict at its step now, the
    extra state kept apart from the tensors (same names, prefixes stripped with them)."""
    folder = _run(tmp_path, lambda index: {f"module.{k}": v for k, v in _with_extra(index, {"scale": index}).items()})
    found = discover_checkpoints([folder])
    assert [(ref.step, ref.kind) for ref in found.checkpoints] == [(step, "state_dict") for step in STEPS]
    loaded = load_checkpoint(found.checkpoints[1])
    assert loaded.state_dict is not None and sorted(loaded.state_dict) == sorted(_sd(2))
    assert all(torch.equal(loaded.state_dict[key], value) for key, value in _sd(2).items())
    assert loaded.extra_state == {"1._extra_state": {"scale": 2}}


def test_analyze_loads_the_extra_state_and_stores_the_plain_numbers(tmp_path: Path) -> None:
    """`fdl analyze --model` exits 0, every module's set_extra_state gets the stored value, and the numbers are
    those of the same weights without the extra state (a forward that does not use it)."""
    model = _model_file(tmp_path)
    folder = _run(tmp_path, lambda index: _with_extra(index, {"scale": 2.0 + index}))
    done = _analyze(tmp_path, folder, model, "extra.h5")
    assert done.code == 0, done.stderr
    assert {state["scale"] for state in _seen(model)} == {3.0, 4.0, 5.0}  # each stored value (the first, twice)
    _assert_same_numbers(tmp_path / "extra.h5", _plain(tmp_path, "plain", _sd))


def test_a_checkpoint_without_the_models_extra_state_is_a_clear_error(tmp_path: Path) -> None:
    """A safetensors file holds tensors only: the model's own extra state made `--model` loading a traceback."""
    model = _model_file(tmp_path)
    folder = tmp_path / "st"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        save_file(_sd(index), folder / f"step_{step}.safetensors")
    done = _analyze(tmp_path, folder, model, "st.h5")
    assert done.code == 1
    assert "1 missing key: 1._extra_state" in done.stderr, done.stderr
    assert "keep extra state (get_extra_state) that the file lacks" in done.stderr, done.stderr


def test_a_bytesio_extra_state_needs_trust_pickle_and_says_why(tmp_path: Path) -> None:
    """torch.load(weights_only=True) cannot read an io.BytesIO: fdl refuses the file, says the extra state is the
    pickled object, and with --trust-pickle loads it (set_extra_state given the buffer's value)."""
    model = _model_file(tmp_path)
    def bytes_state(index: int) -> dict[str, Any]:
        buffer = io.BytesIO()
        torch.save({"scale": float(index)}, buffer)
        return _with_extra(index, buffer)

    folder = _run(tmp_path, bytes_state)
    refused = _analyze(tmp_path, folder, model, "refused.h5")
    assert refused.code == 1
    assert "pickled Python object (_io.BytesIO)" in refused.stderr, refused.stderr
    assert "extra state, get_extra_state(), saved as io.BytesIO" in refused.stderr, refused.stderr
    done = _analyze(tmp_path, folder, model, "trusted.h5", "--trust-pickle")
    assert done.code == 0, done.stderr
    assert {state["scale"] for state in _seen(model)} == {1.0, 2.0, 3.0}
    _assert_same_numbers(tmp_path / "trusted.h5", _plain(tmp_path, "plain", _sd))
