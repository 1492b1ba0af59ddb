"""Session 26: a model whose forward ends in `.squeeze()`, `.flatten()` or `.view(-1)`.

fdl runs the probe's first sample alone before the analysis. On a batch of one sample `.squeeze()` drops the batch
dimension too, and `.flatten()` / `.view(-1)` merge it with the outputs: a classifier's (1, C) became (C,), read as
C samples of one output ("the probe has class label 2 but the model has 1 output"), and a one-output regression
model's (1, 1) became (), which failed with "IndexError: tuple index out of range", said as a probe that does not
fit the model (in `fdl inspect --probe` too, where a classifier's (C,) was listed without a word). Outputs pooled
over the batch (`out.mean(0, keepdim=True)`) gave one row for a batch of many. Each is now refused, naming the
shape and the batch, with the fix; (b,), one output a sample, stays accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.test_s19_store import fdl

torch.set_num_threads(1)

MODELS = '''
from torch import nn


class Tail(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "squeeze":
            return x.squeeze()
        if self.how == "squeeze(-1)":
            return x.squeeze(-1)
        if self.how == "flatten":
            return x.flatten()
        if self.how == "view(-1)":
            return x.view(-1)
        if self.how == "mean(0)":
            return x.mean(0, keepdim=True)
        return x


def build(outputs=3, how="none"):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, outputs), Tail(how))
'''

NO_BATCH = "the model's outputs have no batch dimension first: shape {} for a batch of {}"


def _run(tmp_path: Path, outputs: int, y: np.ndarray) -> tuple[Path, Path, Path]:
    """model.py, a folder of two checkpoints of build(outputs) and a probe of 12 samples with targets `y`."""
    (tmp_path / "model.py").write_text(MODELS, encoding="utf-8")
    folder = tmp_path / "run"
    folder.mkdir()
    torch.manual_seed(0)
    for step in (0, 1):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, outputs))
        torch.save(net.state_dict(), folder / f"step_{step}.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32), y=y)
    return tmp_path / "model.py", folder, probe


def _analyze(capsys, model: Path, folder: Path, probe: Path, out: Path, outputs: int, how: str,
             *more: object) -> tuple[int, str, str]:
    return fdl(capsys, "analyze", folder, "--model", f"{model}:build", "--model-kwargs",
               f'{{"outputs": {outputs}, "how": "{how}"}}', "--probe", probe, "--out", out, *more)


def _labels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 3, 12)


@pytest.mark.parametrize("how", ["squeeze", "flatten", "view(-1)"])
def test_a_classifier_whose_outputs_lose_the_batch_is_refused_so(tmp_path: Path, capsys, how: str) -> None:
    model, folder, probe = _run(tmp_path, 3, _labels())
    code, _, err = _analyze(capsys, model, folder, probe, tmp_path / "out.h5", 3, how)
    assert code == 1 and err.startswith("error: " + NO_BATCH.format("(3,)", "1 sample") + "\n"), err
    assert "class label" not in err and "Traceback" not in err
    assert "drop the .squeeze()" in err and ".squeeze(-1)" in err and "self.module(x).reshape(len(x), -1)" in err
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(("outputs", "said"), [(1, "()"), (2, "(2,)")])
def test_a_regression_model_ending_in_squeeze_is_refused_so(tmp_path: Path, capsys, outputs: int, said: str) -> None:
    y = np.random.default_rng(1).normal(size=(12, outputs) if outputs > 1 else 12).astype(np.float32)
    model, folder, probe = _run(tmp_path, outputs, y)
    code, _, err = _analyze(capsys, model, folder, probe, tmp_path / "out.h5", outputs, "squeeze")
    assert code == 1 and err.startswith("error: " + NO_BATCH.format(said, "1 sample") + "\n"), err
    assert "IndexError" not in err and "does not fit" not in err and "regression targets" not in err


@pytest.mark.parametrize("how", ["squeeze(-1)", "flatten", "view(-1)"])
def test_one_output_a_sample_as_b_is_analysed_as_b_by_1(tmp_path: Path, capsys, how: str) -> None:
    """(b,) is one output a sample: the same numbers as (b, 1), with a last batch of one sample (--batch-size 11)."""
    model, folder, probe = _run(tmp_path, 1, np.random.default_rng(1).normal(size=12).astype(np.float32))
    runs = {}
    for tail in ("none", how):
        out = tmp_path / f"{tail}.h5"
        code, _, err = _analyze(capsys, model, folder, probe, out, 1, tail, "--batch-size", "11")
        assert code == 0, err
        with StoreReader(out) as reader:
            runs[tail] = [(r["step"], r["n_outputs"], r["r2"], r["loss"], r["d_lr"]) for r in reader.records()]
    assert runs[how] == runs["none"] and [row[1] for row in runs[how]] == [1, 1]


def test_outputs_pooled_over_the_batch_are_refused_at_the_batch(tmp_path: Path, capsys) -> None:
    """One sample passes the check (the mean of one row is that row); 12 give one row, which no sample's is."""
    model, folder, probe = _run(tmp_path, 3, _labels())
    code, _, err = _analyze(capsys, model, folder, probe, tmp_path / "out.h5", 3, "mean(0)")
    assert code == 1 and "error: " + NO_BATCH.format("(1, 3)", "12 samples") + "\n" in err, err
    assert "no mean or sum over the batch dimension" in err and "Traceback" not in err
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(("outputs", "said"), [(3, "(3,)"), (1, "()")])
def test_inspect_lists_the_model_then_refuses_its_outputs(tmp_path: Path, capsys, outputs: int, said: str) -> None:
    y = _labels() if outputs > 1 else np.random.default_rng(1).normal(size=12).astype(np.float32)
    model, folder, probe = _run(tmp_path, outputs, y)
    code, out, err = fdl(capsys, "inspect", folder / "step_0.pt", "--model", f"{model}:build", "--model-kwargs",
                         f'{{"outputs": {outputs}, "how": "squeeze"}}', "--probe", probe)
    listing, _, error = err.partition("error: ")
    assert code == 1 and "default feature layer: 2:input (8 features;" in listing, err
    assert error.startswith(NO_BATCH.format(said, "1 sample") + "\n"), err
    assert "IndexError" not in err + out
