"""Defects found by session 40's review of session 39's work (anchor-class skew notes, `**` patterns)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fdl_cli.checkpoints import expand_sources
from tests.cli_run import REPO, fdl_in_process


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample run's steps 0 and 5 analysed on its probe sorted by label (100 anchors: 3 of its 10 classes, the
    audit's case) and on its probe as it is, at two layers each: four series, one probe's anchors skewed."""
    folder = tmp_path_factory.mktemp("skew")
    sample = np.load(REPO / "sample_checkpoints" / "probe.npz")
    order = np.argsort(sample["y"], kind="stable")
    np.savez(folder / "sorted.npz", x=sample["x"][order], y=sample["y"][order])
    store = folder / "s.h5"
    done = fdl_in_process(
        "analyze", REPO / "sample_checkpoints", "--steps", "0,5", "--probe", f"a={folder / 'sorted.npz'}",
        "--probe", f"b={REPO / 'sample_checkpoints' / 'probe.npz'}", "--layer", "4:input", "--layer", "2",
        "--anchor-size", "100", "--out", store,
    )
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stderr.split()).count("its first 100 of 500 rows") == 1
    return store


@pytest.mark.parametrize("fmt", ["--json", "--format=csv"])
def test_report_beside_its_rows_says_a_probes_anchor_skew_once(two_layers: Path, fmt: str) -> None:
    """report --json / --format csv: the note on a probe's anchors (its rows alike at each layer) was said once a
    series, the same long line twice for the probe's two layers."""
    done = fdl_in_process("report", two_layers, fmt)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert said.count("note: probe 'a': its first 100 of 500 rows") == 1, said
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
