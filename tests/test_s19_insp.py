"""Session 19: `fdl inspect` without a probe fed random floats to a model whose first layer is an
nn.Embedding (its forward pass failed, and the listing only said "pass --probe"); the summary of `fdl
analyze` showed the first line of each failed checkpoint's reason, losing its fix; and the file given as
--probe, taken in by a folder or a glob of the run's files, was noted as a skipped probe set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import checkpoints as ckpts
from fdl_cli.inspection import inspect_checkpoint
from fdl_cli.pipeline import FAILED_SHOWN, AnalyzeSummary
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file
from tests.tiny_models import mlp, token_mlp

# -- 1. inspect feeds token ids to a model whose first layer is an embedding ------------------------------------

TOKEN_MODELS = '''
import torch
from torch import nn


class HeadFirst(nn.Module):
    """The head registered before the embedding: the random input was shaped for the head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.embed = nn.Embedding(11, 8)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(1))


class Functional(nn.Module):
    """Token ids looked up with F.embedding in a parameter: no nn.Embedding says their range."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(11, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(nn.functional.embedding(tokens, self.table).mean(1))


class Flat(nn.Module):
    """A sequence length of its own (5), which no module says."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.head = nn.Linear(5 * 8, 3)

    def forward(self, tokens):
        return self.head(self.embed(tokens).flatten(1))


class Conditioned(nn.Module):
    """An nn.Embedding registered first (a class embedding) that the float input never meets."""

    def __init__(self):
        super().__init__()
        self.label = nn.Embedding(4, 8)
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)) + self.label.weight[0])


def head_first():
    return HeadFirst()


def conditioned():
    return Conditioned()


def functional():
    return Functional()


def flat():
    return Flat()
'''


@pytest.fixture
def token_models(tmp_path: Path) -> Path:
    module = model_file(tmp_path, TOKEN_MODELS)
    torch.manual_seed(0)
    for factory in ("head_first", "functional", "flat", "conditioned"):
        torch.save(getattr(module, factory)().state_dict(), tmp_path / f"{factory}.pt")
    torch.save(token_mlp().state_dict(), tmp_path / "step_0.pt")
    return tmp_path


def test_inspect_without_a_probe_runs_token_ids_through_an_embedding_model(token_models: Path) -> None:
    checkpoint = token_models / "step_0.pt"
    listed = fdl("inspect", checkpoint, "--model", "tests.tiny_models:token_mlp", "--json")
    assert listed.returncode == 0, listed.stderr
    result = json.loads(listed.stdout)
    shapes = {row["name"]: row["output_shape"] for row in result["modules"]}
    assert shapes == {"": [1, 3], "embed": [1, 8, 8], "hidden": [1, 8], "head": [1, 3]}  # the pass ran
    assert result["sample"] == ("random token ids in [0, 11) of shape (1, 8), int64, for the first nn.Embedding "
                                "(embed); --probe FILE runs real ones (and their sequence length)")
    assert (result["default_layer"], result["default_features"]) == ("head:input", 8)
    assert result["default_basis"] == ("the last nn.Linear to run in a forward pass of random token ids "
                                       "(--probe FILE for a real one)")
    shown = fdl("inspect", checkpoint, "--model", "tests.tiny_models:token_mlp")
    assert shown.returncode == 0, shown.stderr
    said = "\nsample: random token ids in [0, 11) of shape (1, 8), int64, for the first nn.Embedding (embed);"
    assert said in shown.stderr
    assert "forward failed" not in shown.stderr


def test_inspect_tries_token_ids_when_random_floats_fail_as_an_embedding_fails(token_models: Path) -> None:
    """The first nn.Linear registered (the head) shaped a float input, which the embedding refused."""
    result = inspect_checkpoint(checkpoint=str(token_models / "head_first.pt"),
                                model_spec=f"{token_models}/model.py:head_first")
    shapes = {row["name"]: row["output_shape"] for row in result["modules"]}
    assert shapes == {"": [1, 3], "head": [1, 3], "embed": [1, 8, 8]}
    assert result["sample"] == ("random token ids in [0, 11) of shape (1, 8), int64, for the first nn.Embedding "
                                "(embed), as a random float input failed on it; --probe FILE runs real ones (and "
                                "their sequence length)")
    assert result["default_basis"].startswith("the last nn.Linear to run in a forward pass of random token ids")


def test_inspect_goes_back_to_floats_when_token_ids_fail_on_a_model_of_float_inputs(token_models: Path) -> None:
    """An embedding registered first need not be where the input goes (before, floats for `body` ran)."""
    result = inspect_checkpoint(checkpoint=str(token_models / "conditioned.pt"),
                                model_spec=f"{token_models}/model.py:conditioned")
    shapes = {row["name"]: row["output_shape"] for row in result["modules"]}
    assert shapes == {"": [1, 3], "label": None, "body": [1, 8], "head": [1, 3]}
    assert result["sample"] == ("a random float input of shape (1, 6), for the first nn.Linear (body), as token ids "
                                "failed on the model; --probe FILE runs a real one")
    assert result["default_layer"] == "head:input"


def test_inspect_says_why_it_needs_a_probe_when_no_random_input_fits(token_models: Path) -> None:
    functional = inspect_checkpoint(checkpoint=str(token_models / "functional.pt"),
                                    model_spec=f"{token_models}/model.py:functional")
    failure = functional["modules"][0]["output_shape"]
    assert failure.startswith("forward failed on a sample of shape (1, 8): RuntimeError: ")
    assert failure.endswith("; the model takes token ids, and has no nn.Embedding that says their range: pass "
                            "--probe FILE (its first input is run)")
    flat = fdl("inspect", token_models / "flat.pt", "--model", f"{token_models}/model.py:flat")
    assert flat.returncode == 0, flat.stderr
    # below the table too: a narrow terminal leaves the output shapes (the model row's failure) out
    lines = flat.stderr.splitlines()
    said = next(line for line in lines if line.startswith("forward failed"))
    assert said.startswith("forward failed on a sample of shape (1, 8): RuntimeError: mat1 and mat2 shapes")
    assert said.endswith("; the shape of the model's input cannot be told from its modules (a sequence length of "
                         "its own?): pass --probe FILE (its first input is run)")
    assert lines[lines.index(said) - 1].startswith("sample: random token ids in [0, 11) of shape (1, 8)")


def test_inspect_with_a_probe_says_the_probe_ran(token_models: Path) -> None:
    np.savez(token_models / "probe.npz", x=np.zeros((4, 5), np.int64), y=np.zeros(4, np.int64))
    result = inspect_checkpoint(checkpoint=str(token_models / "flat.pt"), model_spec=f"{token_models}/model.py:flat",
                                probe_spec=str(token_models / "probe.npz"))
    assert result["modules"][0]["output_shape"] == [1, 3]
    assert result["sample"] == f"the first input of the probe {token_models / 'probe.npz'}, shape (1, 5), torch.int64"


# -- 2. the summary's failed lines carry the whole reason ----------------------------------------------------


def _reason(what: str, got: str, fix: str) -> str:
    return f"{what}\n  got: {got}\n  fix: {fix}"


def test_the_summary_shows_each_whole_reason_and_groups_the_same_reason() -> None:
    other = [(f"run/step_{step}.pt", _reason(f"the weights in run/step_{step}.pt do not fit the model", "(8, 5) vs (8, 4)",
                                             "leave it out"))
             for step in (30, 40, 50)]
    lfs = ("run/step_9.pt (step 9)", _reason("is a Git LFS pointer", "a text file", "git lfs pull"))
    summary = AnalyzeSummary(store=Path("r.h5"), analysed=[0, 10], failed=[other[0], lfs, *other[1:]])
    assert summary.message() == "\n".join([
        "2 checkpoints analysed, 4 failed → r.h5",
        "  failed: the weights in run/step_30.pt do not fit the model",
        "      got: (8, 5) vs (8, 4)",
        "      fix: leave it out",
        "  failed: run/step_40.pt, run/step_50.pt (the same reason as run/step_30.pt)",
        "  failed: run/step_9.pt (step 9): is a Git LFS pointer",
        "      got: a text file",
        "      fix: git lfs pull",
    ])


def test_many_files_of_one_reason_are_counted_past_the_first_named() -> None:
    failed = [(f"s_{step}.pt", "not a checkpoint\n  fix: remove it") for step in range(FAILED_SHOWN + 4)]
    lines = AnalyzeSummary(store=Path("r.h5"), failed=failed).message().splitlines()
    named = ", ".join(f"s_{step}.pt" for step in range(1, FAILED_SHOWN + 1))
    assert lines[1:] == ["  failed: s_0.pt: not a checkpoint", "      fix: remove it",
                         f"  failed: {named} and 3 more (the same reason as s_0.pt)"]


def test_analyze_json_keeps_records_on_stdout_and_whole_reasons_in_the_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    for step in (30, 40):  # another model's weights
        torch.save(mlp(n_in=5, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", tmp_path / "probe.npz",
               "--out", tmp_path / "r.h5", "--device", "cpu", "--json")
    assert done.returncode == 1
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 10]  # records alone
    summary = done.stderr[done.stderr.index("2 checkpoints analysed, 2 failed"):].splitlines()
    assert summary[1] == f"  failed: the weights in {run / 'step_30.pt'} do not fit the model built by --model"
    assert summary[2] == "      got: 1 shape mismatch: 0.weight: checkpoint (8, 5) vs model (8, 4)"
    assert summary[3].startswith(f"      fix: the reference checkpoint {run / 'step_0.pt'} (step 0) fits this model")
    assert summary[4:] == [f"  failed: {run / 'step_40.pt'} (the same reason as {run / 'step_30.pt'})"]


# -- 3. the --probe file among the run's files is skipped without a note -------------------------------------


@pytest.fixture
def run_with_probes(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=generator)
    for name in ("probe.pt", "heldout.pt"):
        torch.save({"x": x, "y": (x[:, 0] > 0).long()}, run / name)
    np.savez(run / "train.npz", x=x.numpy(), y=(x[:, 0] > 0).long().numpy())
    os.symlink(run / "probe.pt", tmp_path / "linked_probe.pt")
    return run


def test_discovery_notes_no_probe_file_given_by_another_path(run_with_probes: Path) -> None:
    run = run_with_probes
    files = sorted(run.glob("*.pt"))
    for probe in (run.parent / "linked_probe.pt", run / ".." / "run" / "probe.pt"):
        found = ckpts.discover_checkpoints(files, probes=[probe])
        assert [ref.step for ref in found.checkpoints] == [0, 10]
        assert found.notes == ["skipped heldout.pt: a probe set (x, y), not model weights"]  # the other probe stays
    scanned = ckpts.discover_checkpoints([run], probes=[run / "train.npz"])
    assert not any("train.npz" in note for note in scanned.notes)
    assert "skipped probe.pt: a probe set (x, y), not model weights" in scanned.notes
    # the probe alone given as the checkpoint is still named for what it is
    with pytest.raises(ckpts.CheckpointError, match="is a probe"):
        ckpts.discover_checkpoints([run / "probe.pt"], probes=[run / "probe.pt"])


def test_analyze_of_a_glob_says_nothing_of_the_probe_it_was_given(run_with_probes: Path) -> None:
    run = run_with_probes
    done = fdl("analyze", *sorted(run.glob("*.pt")), "--model", "tests.tiny_models:mlp",
               "--probe", run.parent / "linked_probe.pt", "--out", run.parent / "r.h5", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "probe.pt" not in done.stderr.replace("heldout.pt", "")
    assert "note: skipped heldout.pt: a probe set (x, y), not model weights" in done.stderr
    assert "2 checkpoints analysed" in done.stderr
