"""Defects found by session 40's review of session 39's work (anchor-class skew notes, `**` patterns)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import expand_sources
from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of one class-sorted probe (4 classes of 30, 40 anchors: classes 0 and 1 alone) at two layers, and
    a second probe, shuffled, at the same two layers: four series."""
    folder = tmp_path_factory.mktemp("skew")
    run = folder / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(4, 8, 4, seed=step).state_dict(), run / f"step_{step}.pt")
    x = np.random.default_rng(1).normal(size=(120, 4)).astype(np.float32)
    labels = np.repeat(np.arange(4), 30)
    np.savez(folder / "sorted.npz", x=x, y=labels)
    np.savez(folder / "shuffled.npz", x=x, y=np.random.default_rng(0).permutation(labels))
    store = folder / "s.h5"
    done = fdl_in_process(
        "analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"n_in": 4, "hidden": 8, "n_out": 4}',
        "--probe", f"a={folder / 'sorted.npz'}", "--probe", f"b={folder / 'shuffled.npz'}",
        "--layer", "2:input", "--layer", "1", "--anchor-size", "40", "--out", store,
    )
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stderr.split()).count("its first 40 of 120 rows") == 1
    return store


@pytest.mark.parametrize("fmt", ["--json", "--format=csv"])
def test_report_beside_its_rows_says_a_probes_anchor_skew_once(two_layers: Path, fmt: str) -> None:
    """report --json / --format csv: the note on a probe's anchors (its rows alike at each layer) was said once a
    series, the same long line twice for the probe's two layers."""
    done = fdl_in_process("report", two_layers, fmt)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert said.count("note: probe 'a': its first 40 of 120 rows") == 1, said
    assert "probe 'b': its first" not in said


def test_consecutive_globstars_are_one_as_in_bash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run/**/**/*.pt` is `run/**/*.pt` in bash 5.2 (globstar): the second `**` went into the links to folders
    that the first had matched (`run/a/up -> ..`), listing every file again under run/a/up/a/up/..."""
    (tmp_path / "run" / "a" / "b").mkdir(parents=True)
    for name in ("run/x.pt", "run/a/y.pt", "run/a/b/z.pt"):
        (tmp_path / name).write_bytes(b"")
    os.symlink("..", tmp_path / "run" / "a" / "up")
    monkeypatch.chdir(tmp_path)
    once = expand_sources(["run/**/*.pt"])
    assert once == ["run/a/b/z.pt", "run/a/up/x.pt", "run/a/y.pt", "run/x.pt"]  # bash's `echo run/**/*.pt`
    assert expand_sources(["run/**/**/*.pt"]) == once
    assert expand_sources(["run/**/**"]) == expand_sources(["run/**"])
