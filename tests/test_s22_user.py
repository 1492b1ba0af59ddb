"""A researcher's tiny transformer classifier (session 22): token ids as the probe, an nn.TransformerEncoderLayer
in the model; the papercuts met, each failing before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import model_file
from tests.test_analyze import fdl
from tests.tiny_models import token_mlp

TOKENS = "tests.tiny_models:token_mlp"  # nn.Embedding(11, 8), mean over the sequence, then an MLP


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long messages at 80 columns otherwise


def _run(tmp_path: Path, x: np.ndarray) -> tuple[Path, Path]:
    """Two checkpoints of `token_mlp` as a training loop saves them, and a probe of inputs `x`."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        torch.save({"model": token_mlp(seed=step).state_dict(), "optimizer": {}, "step": step}, run / f"ckpt_{step}.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y=np.arange(len(x)) % 3)
    return run, probe


def test_float_token_ids_are_told_to_be_saved_as_integers(tmp_path: Path) -> None:
    """Token ids saved as float32 (np.stack of float columns, a torch default): the fix said only "give the
    probe inputs the shape and dtype the model's forward expects", with torch's "'indices' ... Long, Int"
    above it; it now says to save x as integers."""
    run, probe = _run(tmp_path, np.random.default_rng(0).integers(0, 11, (20, 6)).astype(np.float32))
    done = fdl("analyze", run, "--model", TOKENS, "--probe", probe, "--out", tmp_path / "s.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert ("x holds floats (float32), but the model looks its input up in an nn.Embedding, which takes integer "
            "token ids: save x as integers, x = x.astype(np.int64)") in done.stderr
    assert not (tmp_path / "s.h5").exists()


def test_token_ids_beyond_the_vocabulary_are_named_with_the_table(tmp_path: Path) -> None:
    """A probe made with another vocabulary size (ids up to 19 for a table of 11): torch's "IndexError: index
    out of range in self" names neither the id nor the table, and the fix was the generic one; it now gives
    the ids' range and the model's nn.Embedding tables."""
    x = np.random.default_rng(0).integers(0, 11, (20, 6))
    x[0, 2] = 19
    run, probe = _run(tmp_path, x)
    done = fdl("analyze", run, "--model", TOKENS, "--probe", probe, "--out", tmp_path / "s.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert f"x's first sample holds token ids from {x[0].min()} to 19, a sequence of 6; the model's nn.Embedding " \
           "tables: embed 11 rows: an nn.Embedding takes ids below its number of rows" in done.stderr


def test_a_later_rows_token_id_beyond_the_vocabulary_names_its_row(tmp_path: Path) -> None:
    """The first sample fits, a later one holds an id outside the table: the batch's error said "see the
    model's own error above" (nothing is above it) and spoke of exported programs and out of memory; it now
    names the ids' range, the row of the highest and the table."""
    x = np.random.default_rng(0).integers(0, 11, (20, 6))
    x[13, 4] = 40
    run, probe = _run(tmp_path, x)
    done = fdl("analyze", run, "--model", TOKENS, "--probe", probe, "--out", tmp_path / "s.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert "the model's forward pass failed on probe rows 0..19" in done.stderr
    assert ("x holds token ids from 0 to 40 (the highest at probe row 13), in sequences of 6; the model's "
            "nn.Embedding tables: embed 11 rows") in done.stderr
    assert "own error above" not in done.stderr


TRANSFORMER = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def build():
    return Net()
"""


def test_inspect_says_a_module_the_forward_pass_did_not_call(tmp_path: Path) -> None:
    """nn.MultiheadAttention uses its out_proj's weights without calling the module: `fdl inspect` listed its
    output shape as "None", and `--layer encoder.self_attn.out_proj` was then refused as "did not run"; the
    listing now says "not called" and why no --layer can hook it (--json keeps null)."""
    module = model_file(tmp_path, TRANSFORMER)
    checkpoint = tmp_path / "ckpt_3.pt"
    torch.save({"model": module.build().state_dict(), "step": 3}, checkpoint)
    done = fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build")
    assert done.code == 0, done.stderr
    row = next(line for line in done.stderr.splitlines() if "encoder.self_attn.out_proj" in line)
    assert "not called" in row and "None" not in row
    assert "not called: the forward pass did not call the module" in done.stderr
    assert "head:input" in done.stderr
    as_json = fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build", "--json")
    shapes = {row["name"]: row["output_shape"] for row in json.loads(as_json.stdout)["modules"]}
    assert shapes["encoder.self_attn.out_proj"] is None and shapes["head"] == [1, 3]


@pytest.mark.parametrize("command", [("report",), ("classify",), ("export", "--what", "eigenvalues"),
                                     ("compare", "other.h5")])
def test_a_run_folder_given_for_the_store_names_the_store_meant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                command: tuple[str, ...]) -> None:
    """`fdl report runs/trained` (the folder of checkpoints, not the store analyze wrote of it) said only click's
    "File 'runs/trained' is a directory."; it now says which file to pass, and whether analyze's default store
    of that folder is here. Still a usage error (exit 2)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "trained").mkdir(parents=True)
    name, *rest = command
    args = (name, "runs/trained", *rest) if name != "compare" else (name, *rest, "runs/trained")
    done = fdl(*args)
    assert done.code == 2 and "Traceback" not in done.stderr
    assert ("'runs/trained' is a folder, not an fdl store: pass the .h5 file that `fdl analyze runs/trained` wrote "
            "(its --out; ./trained.fdl.h5 without one, which is not here)") in done.stderr
    (tmp_path / "trained.fdl.h5").write_bytes(b"")
    assert "wrote: ./trained.fdl.h5 is here" in fdl(*args).stderr


def test_a_folder_of_runs_says_when_it_holds_more_than_the_runs_it_names(tmp_path: Path) -> None:
    """`fdl analyze runs` (a folder of four runs' folders) named three of them, "runs/frozen (7 checkpoints),
    runs/frozen_st (7 checkpoints), runs/pos (2 checkpoints)", as if those were all; it now ends in ", ..."
    when there are more, and names three alone as before."""
    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        (runs / name).mkdir(parents=True)
        torch.save(token_mlp().state_dict(), runs / name / "step_1.pt")
    done = fdl("analyze", runs, "--model", TOKENS, "--out", tmp_path / "s.h5")
    assert done.code == 1 and f"{runs / 'c'} (1 checkpoint)\n" in done.stderr
    (runs / "d").mkdir()
    torch.save(token_mlp().state_dict(), runs / "d" / "step_1.pt")
    done = fdl("analyze", runs, "--model", TOKENS, "--out", tmp_path / "s.h5")
    assert done.code == 1 and f"{runs / 'c'} (1 checkpoint), ...\n" in done.stderr
    assert str(runs / "d") not in done.stderr.split("fix:")[0]
