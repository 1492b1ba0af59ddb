"""`fdl compare` as a researcher running ablations uses it: real tiny runs, every printed number checked
against the stores read with h5py and the between-run overlap recomputed in float64."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_report import make_store, run_fdl


def _pairs(a: Path, b: Path) -> list[tuple[int, int]]:
    done = run_fdl("compare", a, b, "--no-overlap", "--format", "json")
    assert done.returncode == 0, done.stderr
    return [(step["step_a"], step["step_b"]) for step in json.loads(done.stdout)["steps"]]


def test_runs_saved_midway_between_each_other_pair_every_checkpoint(tmp_path: Path) -> None:
    """A run saved at steps 0, 10, ..., 50 against one saved at 5, 15, ..., 55 matched only 0↔5: each step of
    the second lies midway between two of the first, a tie broken "to the lower" on both sides, so A's 10 chose
    B's 5 while B's 15 chose A's 10, never mutual; the table, the verdict and the note ("If the runs count steps
    differently...") then rested on one pair. Either run as A, every checkpoint of the
    shorter run finds its partner."""
    early = make_store(tmp_path / "early.h5", steps=(0, 10, 20, 30, 40, 50))
    late = make_store(tmp_path / "late.h5", steps=(5, 15, 25, 35, 45, 55), seed=3)
    assert _pairs(early, late) == [(0, 5), (10, 15), (20, 25), (30, 35), (40, 45), (50, 55)]
    assert _pairs(late, early) == [(5, 0), (15, 10), (25, 20), (35, 30), (45, 40), (55, 50)]
    shifted = make_store(tmp_path / "shifted.h5", steps=(5, 15, 25, 35, 45), seed=3)  # one checkpoint fewer
    assert _pairs(early, shifted) == [(0, 5), (10, 15), (20, 25), (30, 35), (40, 45)]
    assert _pairs(shifted, early) == [(5, 0), (15, 10), (25, 20), (35, 30), (45, 40)]
    said = run_fdl("compare", early, late, "--no-overlap").stderr
    assert "only 1 of A's" not in said and "6 steps matched to the nearest step of the other run" in said
