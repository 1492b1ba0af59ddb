"""Session 26: a tiny transformer sequence classifier, as an ML researcher would analyse it. Each test failed
before its fix.

- `--layer NAME:input` of a module called with keyword arguments alone (`self.block(hidden_states=h)`, as
  Hugging Face models call their layers) took the module's *output*, without a word: the hook read the
  positional inputs alone, and fell back on the output when there were none.
- A layer inside an `nn.TransformerEncoder` given a padding mask (`src_key_padding_mask`) in eval mode: torch's
  fast path packs the padded batch into a nested tensor, which the hook could not flatten, and `analyze` blamed
  the probe (`Internal error: NestedTensorImpl doesn't support sizes`, "give the probe inputs the shape ...");
  `fdl inspect --probe` failed alike. The layer's features are now its output padded back to the sequence
  length, as the encoder pads its own output.
- A layer whose output has no batch dimension (a table of positions, `pos(arange(T))`, (T, d)) failed at the
  first batch with "features, outputs and targets of a batch differ in length", naming no layer.
- `fdl inspect` of a model whose forward takes more inputs than x (`forward(ids, mask)`): without `--probe`
  it said to pass `--probe FILE`, which fails the same way; with `--probe` its fix told to save images as
  floats (any TypeError read as a dtype error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from tests import warm
from tests.test_s19_store import fdl

torch.set_num_threads(1)

V, T, D, C = 8, 6, 8, 3

MODEL = f'''
import torch
from torch import nn


class Tfm(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding({V}, {D})
        self.pos = nn.Embedding({T}, {D})
        layer = nn.TransformerEncoderLayer({D}, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.norm = nn.LayerNorm({D})
        self.head = nn.Linear({D}, {C})

    def forward(self, ids, mask):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        h = self.encoder(h, src_key_padding_mask=~mask.bool())
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head(self.norm((h * m).sum(1) / m.sum(1)))


class Inputs(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.module = net

    def forward(self, x):
        return self.module(x[:, 0], x[:, 1])


def masked():
    return Tfm()


def build():
    return Inputs(Tfm())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, hidden_states):
        return torch.relu(self.lin(hidden_states)) * 3


class Keywords(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.block = Block()
        self.head = nn.Linear(4, {C})

    def forward(self, x):
        return self.head(self.block(hidden_states=self.inp(x)))


def keywords():
    return Keywords()


class Other(nn.Module):
    def forward(self, hidden_states=None, extra=None):
        return extra * 2


class Unnamed(Keywords):
    def __init__(self):
        super().__init__()
        self.other = Other()

    def forward(self, x):
        return self.head(self.other(extra=self.inp(x)))


def unnamed():
    return Unnamed()
'''


def _masked_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three checkpoints of the masked transformer (distinct weights), its model file and a stacked probe
    (ids, mask) whose every other row is padded at its end, as a tokenizer pads."""
    model = tmp_path / "model.py"
    model.write_text(MODEL)
    folder = tmp_path / "run"
    folder.mkdir()
    namespace: dict = {}
    exec(compile(MODEL, str(model), "exec"), namespace)  # noqa: S102 - the test's own model code
    for step in (0, 2, 4):
        torch.manual_seed(step)
        net = namespace["masked"]()
        torch.save({"model": net.state_dict(), "optimizer": {}, "step": step}, folder / f"ckpt_{step}.pt")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (40, T))
    mask = np.ones_like(ids)
    mask[::2, -2:] = 0
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.stack([ids, mask], 1), y=rng.integers(0, C, 40))
    return folder, model, probe


def _records(capsys, *argv) -> list[dict]:
    code, out, err = fdl(capsys, "analyze", *argv, "--json", "--top-k", "8")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


# ------------------------------------------------------------------ NAME:input of a module called by keyword


def test_the_input_of_a_module_called_by_keyword_is_its_input(tmp_path: Path, capsys) -> None:
    """`block(hidden_states=h)`: `--layer block:input` is h, `inp`'s output, not block's own output."""
    model = tmp_path / "model.py"
    model.write_text(MODEL)
    namespace: dict = {}
    exec(compile(MODEL, str(model), "exec"), namespace)  # noqa: S102 - the test's own model code
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 1):
        torch.manual_seed(step)
        torch.save(namespace["keywords"]().state_dict(), folder / f"step_{step}.pt")
    probe = tmp_path / "probe.npz"
    rng = np.random.default_rng(1)
    np.savez(probe, x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, C, 32))
    common = (folder, "--model", f"{model}:keywords", "--probe", probe)
    taken = {layer: _records(capsys, *common, "--layer", layer, "--out", tmp_path / f"{layer}.h5")
             for layer in ("block:input", "inp", "block")}
    d_lr = {layer: [record["d_lr"] for record in records] for layer, records in taken.items()}
    assert d_lr["block:input"] == d_lr["inp"]
    assert d_lr["block:input"] != d_lr["block"]
    # called without its first parameter (`other(extra=h)`): no input to tell, refused naming the keywords
    code, _, err = fdl(capsys, "analyze", folder, "--model", f"{model}:unnamed", "--probe", probe, "--layer", "other:input",
                       "--out", tmp_path / "other.h5")
    assert code == 1 and "Traceback" not in err
    assert "layer 'other:input' has no tensor input" in err and "called with keyword arguments alone (extra)" in err


# ------------------------------------------------------------------ layers inside a masked nn.TransformerEncoder


def test_a_layer_inside_a_masked_encoder_is_analysed_padded(tmp_path: Path, capsys) -> None:
    """The last encoder layer's output, padded back to T, is the encoder's own output (no final norm): the
    same numbers; an inner layer gives T·d features too."""
    folder, model, probe = _masked_run(tmp_path)
    common = (folder, "--model", f"{model}:build", "--probe", probe)
    last = _records(capsys, *common, "--layer", "module.encoder.layers.1", "--out", tmp_path / "last.h5")
    whole = _records(capsys, *common, "--layer", "module.encoder", "--out", tmp_path / "whole.h5")
    assert [record["n_features"] for record in last] == [T * D] * 3
    assert [(record["d_lr"], record["cka_init"]) for record in last] == [
        (record["d_lr"], record["cka_init"]) for record in whole]
    inner = _records(capsys, *common, "--layer", "module.encoder.layers.0.linear1", "--out", tmp_path / "inner.h5")
    assert [record["n_features"] for record in inner] == [T * 16] * 3


def test_torch_s_nested_tensor_warning_is_not_shown(tmp_path: Path) -> None:
    """torch warns (once a process) that its nested tensors are a prototype when the encoder packs a padded batch:
    printed amid fdl's progress, of no use to the user. A process of its own, as the warning is once a process."""
    folder, model, probe = _masked_run(tmp_path)
    done = warm.run([sys.executable, "-m", "fdl_cli", "analyze", str(folder), "--model", f"{model}:build",
                     "--probe", str(probe), "--top-k", "8", "--out", str(tmp_path / "s.h5")], timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 checkpoints analysed" in done.stderr and "nested tensors" not in done.stderr


def test_inspect_lists_the_layers_of_a_masked_encoder(tmp_path: Path, capsys) -> None:
    folder, model, probe = _masked_run(tmp_path)
    code, out, err = fdl(capsys, "inspect", folder / "ckpt_0.pt", "--model", f"{model}:build", "--probe", probe,
                         "--json")
    assert code == 0, err
    shapes = {row["name"]: row["output_shape"] for row in json.loads(out)["modules"]}
    assert shapes["module.encoder.layers.0"] == [1, T, D]
    assert shapes["module.encoder.layers.1.linear1"] == [1, T, 16]


# ------------------------------------------------------------------ a layer without a batch dimension


def test_a_layer_without_a_batch_dimension_is_named(tmp_path: Path, capsys) -> None:
    folder, model, probe = _masked_run(tmp_path)
    code, _, err = fdl(capsys, "analyze", folder, "--model", f"{model}:build", "--probe", probe,
                       "--layer", "module.pos", "--out", tmp_path / "pos.h5")
    assert code == 1 and "Traceback" not in err
    assert f"layer 'module.pos' gives {T} rows of features for 1 sample" in err
    assert "first dimension is the batch" in err


# ------------------------------------------------------------------ fdl inspect of forward(ids, mask)


def test_inspect_says_a_model_takes_more_inputs_than_x(tmp_path: Path, capsys) -> None:
    folder, model, probe = _masked_run(tmp_path)
    code, _, err = fdl(capsys, "inspect", folder / "ckpt_0.pt", "--model", f"{model}:masked")
    assert code == 0, err
    assert "the model's forward takes more inputs than x" in err and "x = np.stack([ids, mask], 1)" in err
    assert "cannot be told from its modules" not in err
    code, _, err = fdl(capsys, "inspect", folder / "ckpt_0.pt", "--model", f"{model}:masked", "--probe", probe)
    assert code == 1 and "the model's forward takes more inputs than x" in err
    assert "images" not in err
