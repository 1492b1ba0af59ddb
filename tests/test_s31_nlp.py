"""An NLP researcher's first run (session 31): a tiny transformer classifier over token ids, with token and
position embeddings; the papercuts met, each failing before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process, model_file

POSITIONAL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(11, 8)
        self.pos = nn.Embedding(6, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.head(self.encoder(h).mean(1))


def build():
    return Net()
"""


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long messages at 80 columns otherwise


def _run(tmp_path: Path, x: np.ndarray) -> tuple[Path, Path, Path]:
    """A checkpoint of the positional transformer, its model file and a probe of inputs `x`."""
    run = tmp_path / "run"
    run.mkdir()
    net = model_file(tmp_path, POSITIONAL).build()
    torch.save({"model_state_dict": net.state_dict(), "step": 0}, run / "step_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y=np.arange(len(x)) % 3)
    return run, tmp_path / "model.py", probe


def test_token_ids_without_a_sequence_axis_are_not_said_to_be_out_of_the_vocabulary(tmp_path: Path) -> None:
    """x saved as (n,), one id a sample: the model's `ids.shape[1]` fails with "IndexError: tuple index out of
    range", which fdl took for an nn.Embedding's "index out of range in self" and told the user to keep ids
    in 0..4 "below the vocabulary size" and "a sequence of 1" no longer than the table of positions, ids and
    length the model takes; it now names the missing sequence axis."""
    run, model, probe = _run(tmp_path, np.random.default_rng(0).integers(0, 11, 20))
    done = fdl_in_process("analyze", run, "--model", f"{model}:build", "--probe", probe, "--out", tmp_path / "s.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "tuple index out of range" in done.stderr
    assert "below the vocabulary size" not in done.stderr and "a sequence of 1" not in done.stderr
    assert ("x has shape (20,), one value a sample: a model of token sequences takes x of shape (n, L), "
            "L ids a sample") in done.stderr
    assert not (tmp_path / "s.h5").exists()


def test_ids_beyond_the_table_of_positions_still_name_the_tables(tmp_path: Path) -> None:
    """The range hint stays for torch's own "index out of range in self": sequences of 8 for 6 positions."""
    run, model, probe = _run(tmp_path, np.random.default_rng(0).integers(0, 11, (20, 8)))
    done = fdl_in_process("analyze", run, "--model", f"{model}:build", "--probe", probe, "--out", tmp_path / "s.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "a sequence of 8; the model's nn.Embedding tables: tok 11 rows, pos 6 rows" in done.stderr
