"""Session 27, small user-facing gaps: a corrupt checkpoint's own error hidden behind "no checkpoints found" by the
probe beside it, a text-label probe's "got" that repeated its first line, a regression report's key that spoke of
labels, and `fdl inspect --trust-pickle` silent on the placeholders `fdl analyze` notes."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL, SMALL
from tests.tiny_models import mlp


def _said(result: Result) -> str:
    return " ".join(result.stderr.split())


def _probe_pt(path: Path) -> Path:
    torch.save({"x": torch.randn(24, 4), "y": torch.randint(0, 3, (24,))}, path)
    return path


def _truncated(path: Path) -> Path:
    torch.save(mlp(seed=0).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _analyze(source: Path, probe: Path, out: Path, *extra: str) -> Result:
    result = fdl("analyze", source, "--model", MODEL, "--probe", probe, "--out", out, *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ------------------------------------------------------------------- 1. the corrupt checkpoint's own error


@pytest.mark.parametrize("probe_given", [True, False])
def test_a_folder_of_one_corrupt_checkpoint_and_its_probe_says_what_is_wrong_with_the_checkpoint(
    tmp_path: Path, probe_given: bool
) -> None:
    """run/step_1.pt cut short beside run/probe.pt: the error was "no checkpoints found in run", got "skipped
    probe.pt: a probe set", which named neither step_1.pt nor what was wrong with it. The checkpoint's own error
    leads, and what else was skipped is still said."""
    run = tmp_path / "run"
    run.mkdir()
    _truncated(run / "step_1.pt")
    probe = _probe_pt(run / "probe.pt")
    done = _analyze(run, probe if probe_given else _probe_pt(tmp_path / "other.pt"), tmp_path / "s.h5")
    said = _said(done)
    assert done.code == 1
    assert said.startswith(f"error: cannot read the checkpoint {run / 'step_1.pt'}"), said
    assert "cut short" in said and "fix: re-save or re-copy it" in said
    assert "no checkpoints found" not in said
    assert "skipped probe.pt: a probe set (x, y), not model weights" in said
    assert not (tmp_path / "s.h5").exists()


def test_a_damaged_dcp_folder_beside_a_probe_says_what_is_wrong_with_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process saves it all
        dcp.save({"model": mlp(seed=0).state_dict(), "step": 1}, checkpoint_id=str(run / "step-1"))
    (run / "step-1" / ".metadata").write_bytes(b"\x80\x04not a pickle")
    done = _analyze(run, _probe_pt(run / "probe.pt"), tmp_path / "s.h5")
    said = _said(done)
    assert done.code == 1 and ".metadata is not a readable pickle" in said and str(run / "step-1") in said, said
    assert "no checkpoints found" not in said and "skipped probe.pt" in said


def test_a_corrupt_checkpoint_beside_a_good_one_is_still_one_failed_of_two(tmp_path: Path) -> None:
    """Unchanged: with one checkpoint to analyse, the corrupt one is a failed checkpoint, the other analysed."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=0).state_dict(), run / "step_0.pt")
    _truncated(run / "step_1.pt")
    done = _analyze(run, _probe_pt(run / "probe.pt"), tmp_path / "s.h5", "--json")
    assert done.code == 1 and [record["step"] for record in done.records] == [0]
    assert "cut short" in done.stderr and "no checkpoints found" not in done.stderr


# ------------------------------------------------------------------------------- 2. text labels' "got"


def test_text_labels_got_line_shows_the_names_not_the_dtype_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=0).state_dict(), run / "step_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.zeros((6, 4), np.float32), y=np.array(["cat", "dog", "cat", "bird", "dog", "cat"]))
    done = _analyze(run, probe, tmp_path / "s.h5")
    lines = done.stderr.splitlines()
    assert done.code == 1 and lines[0] == f"error: the probe {probe}: 'y' has dtype <U4 (class names)", lines
    assert lines[1] == "  got: e.g. 'cat', 'dog', 'bird' (3 distinct names)", lines


# ---------------------------------------------------------------------------- 3. the columns' key of loss


def _store(tmp_path: Path, y: np.ndarray) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 1):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32), y=y)
    out = tmp_path / "s.h5"
    assert _analyze(run, probe, out).code == 0
    return out


def _key(store: Path, *extra: str) -> str:
    report = fdl("report", store, *extra)
    assert report.code == 0, report.stderr
    return next(line for line in report.stderr.splitlines() if line.startswith("columns: "))


def test_a_regression_report_explains_loss_against_the_targets(tmp_path: Path) -> None:
    key = _key(_store(tmp_path, np.random.default_rng(1).normal(size=(24, 3))))
    assert "loss = mean squared error per output of the raw outputs against the targets" in key, key
    assert "labels" not in key


def test_a_classification_report_explains_loss_against_the_one_hot_labels(tmp_path: Path) -> None:
    # the narrow table shows CE in place of a classification's loss: --wide shows both
    key = _key(_store(tmp_path, np.arange(24) % 3), "--wide")
    assert "loss = mean squared error per output of the raw outputs against the one-hot labels" in key, key
    assert "targets" not in key


# ------------------------------------------------------------------ 4. inspect's note of the placeholders


def test_inspect_trust_pickle_notes_the_objects_read_as_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{"model": sd, "config": TrainConfig()}` saved by `python train.py`: analyze --trust-pickle notes that
    `__main__.TrainConfig` was read as a placeholder; inspect said nothing of it."""

    @dataclasses.dataclass
    class TrainConfig:
        lr: float = 0.1

    TrainConfig.__module__, TrainConfig.__qualname__ = "__main__", "TrainConfig"
    monkeypatch.setattr(sys.modules["__main__"], "TrainConfig", TrainConfig, raising=False)
    torch.save({"model": mlp(seed=0).state_dict(), "step": 5, "config": TrainConfig()}, tmp_path / "ckpt_5.pt")
    monkeypatch.delattr(sys.modules["__main__"], "TrainConfig")
    note = "note: ckpt_5.pt holds objects of classes that cannot be imported here (__main__.TrainConfig;"
    for extra in ((), ("--model", MODEL)):
        listed = fdl("inspect", tmp_path / "ckpt_5.pt", "--trust-pickle", *extra)
        assert listed.code == 0 and note in _said(listed), listed.stderr
        as_json = fdl("inspect", tmp_path / "ckpt_5.pt", "--trust-pickle", "--json", *extra)
        assert as_json.code == 0 and json.loads(as_json.stdout)["not_loaded"] == ["__main__.TrainConfig"]
    torch.save({"model": mlp(seed=0).state_dict(), "step": 5}, tmp_path / "ckpt_5.pt")
    bare = fdl("inspect", tmp_path / "ckpt_5.pt", "--trust-pickle", "--json")
    assert json.loads(bare.stdout)["not_loaded"] == [] and "placeholders" not in bare.stderr
