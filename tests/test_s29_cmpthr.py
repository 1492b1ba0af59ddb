"""`fdl compare` says whether each run's features moved by the movement thresholds in force, as `fdl classify`.

Compare's verdict judged movement by classify's defaults (cka_static 0.99, overlap_static 0.95) and refused
`--threshold cka_static=...`: under `fdl classify --threshold cka_static=0.98` a run whose lowest CKA is 0.985 is
coefficient, while compare, on the same store, said it alone "learned features". Compare now takes the three
movement thresholds (classify's names, ranges and checks), prints and lists in `--json` every threshold in force,
and `--json` says in a word whether each run's features moved at the matched steps (`"moved"`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import make_store
from tests.test_s29_rev2 import _store  # a store of given steps with given columns of scalars

#: A run whose CKA to its reference ends at 0.985: moved under cka_static 0.99, static under 0.98.
NEAR = {"d_lr": [0.3, 0.2, 0.1], "cka_init": [1.0, 0.99, 0.985], "overlap_init": [1.0, 0.99, 0.98]}
#: A frozen backbone: its features never move.
FROZEN = {"d_lr": [0.9, 0.6, 0.4], "cka_init": [1.0, 1.0, 1.0], "overlap_init": [1.0, 1.0, 1.0]}
DEFAULTS = {"dlr_tie": 0.001, "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8}


def _compared(a: Path, b: Path, *args: str) -> dict[str, Any]:
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _regime(store: Path, *args: str) -> str:
    done = fdl_in_process("classify", store, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["regime"]


def test_classify_and_compare_agree_on_a_run_under_the_same_cka_static(tmp_path: Path) -> None:
    near, frozen = _store(tmp_path / "near.h5", 3, NEAR), _store(tmp_path / "frozen.h5", 0, FROZEN)
    # classify's defaults: the 0.985 moved, and compare says so
    assert _regime(near) != "coefficient"
    verdict = _compared(near, frozen)["verdict"]
    assert ("Of the two runs, only A's features moved (CKA to its reference down to 0.9850): A learned features, "
            "B did not.") in verdict, verdict
    # the same override: classify calls it coefficient, and compare says its features did not move
    override = ("--threshold", "cka_static=0.98")
    assert _regime(near, *override) == "coefficient"
    verdict = _compared(near, frozen, *override)["verdict"]
    assert "A learned features" not in verdict, verdict
    assert ("Run A's features did not move (at every matched step CKA to its reference ≥ 0.98, lowest 0.9850, and "
            "top-C overlap ≥ 0.95, lowest 0.9800): its D_LR is that of its reference checkpoint's features, not of "
            "features learned in these steps, a lazy (coefficient) run") in verdict, verdict
    # the human output prints the thresholds in force beside the verdict
    done = fdl_in_process("compare", near, frozen, "--no-overlap", *override)
    assert done.returncode == 0, done.stderr
    assert "cka_static = 0.98, overlap_static = 0.95, overlap_moved = 0.8" in done.stdout + done.stderr


def test_compare_json_lists_every_threshold_in_force_and_which_runs_moved(tmp_path: Path) -> None:
    near, frozen = _store(tmp_path / "near.h5", 3, NEAR), _store(tmp_path / "frozen.h5", 0, FROZEN)
    data = _compared(near, frozen)
    assert data["thresholds"] == DEFAULTS
    assert data["moved"] == {"a": True, "b": False}
    data = _compared(near, frozen, "--threshold", "cka_static=0.98", "--threshold", "dlr_tie=0.002")
    assert data["thresholds"] == {**DEFAULTS, "cka_static": 0.98, "dlr_tie": 0.002}
    assert data["moved"] == {"a": False, "b": False}
    # an overlap between overlap_moved and overlap_static under a static CKA moved; below overlap_moved it is a
    # conflict (classify: undetermined), neither moved nor static
    rotated = _store(tmp_path / "rotated.h5", 3, {**FROZEN, "overlap_init": [1.0, 0.9, 0.85]})
    assert _compared(rotated, frozen)["moved"] == {"a": True, "b": False}
    assert _compared(rotated, frozen, "--threshold", "overlap_moved=0.92")["moved"] == {"a": None, "b": False}


def test_moved_is_null_where_the_matched_steps_cannot_tell(tmp_path: Path) -> None:
    frozen = _store(tmp_path / "frozen.h5", 0, FROZEN)
    # a single matched checkpoint (the reference's CKA to itself is no evidence); moved there, it moved
    single = _store(tmp_path / "single.h5", 3, {"d_lr": [0.3], "cka_init": [1.0], "overlap_init": [1.0]}, steps=(0,))
    assert _compared(single, single)["moved"] == {"a": None, "b": None}
    # no measure at a matched step (a dead layer) makes no static run
    dead = _store(tmp_path / "dead.h5", 3, {**FROZEN, "cka_init": [1.0, 1.0, None], "overlap_init": [1.0, 1.0, None]})
    assert _compared(dead, frozen)["moved"] == {"a": None, "b": False}
    # static at the matched steps, moved at a checkpoint the other run does not match
    longer = _store(tmp_path / "longer.h5", 3, {"d_lr": [0.9, 0.6, 0.1, 0.05], "cka_init": [1.0, 1.0, 1.0, 0.5],
                                                 "overlap_init": [1.0, 1.0, 1.0, 0.4]}, steps=(0, 100, 200, 300))
    assert _compared(longer, frozen)["moved"] == {"a": None, "b": False}
    moved = _store(tmp_path / "moved.h5", 0, {})
    assert _compared(frozen, moved)["moved"] == {"a": False, "b": True}


@pytest.mark.parametrize(("given", "meant", "value"), [("mf_extra=2", "mf_extra", "2"),
                                                         ("Final-Window=x", "final_window", "VALUE")])
def test_compare_refuses_the_thresholds_of_classify_it_does_not_use(tmp_path: Path, given: str, meant: str,
                                                                     value: str) -> None:
    store = make_store(tmp_path / "run.h5")
    done = fdl_in_process("compare", store, store, "--threshold", given)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    said = " ".join(done.stderr.split())
    name = given.partition("=")[0]
    assert f"error: unknown compare threshold {name!r}: {meant} is a threshold of fdl classify, not of fdl compare" \
        in said
    assert ("got: fdl compare's thresholds: dlr_tie (default 0.001), cka_static (default 0.99), overlap_static "
            "(default 0.95), overlap_moved (default 0.8)") in said
    assert (f"fix: pass it to fdl classify (--threshold {meant}={value}); fdl compare takes --threshold NAME=VALUE "
            "with one of those names") in said


@pytest.mark.parametrize("given", ["cka_static=1.5", "overlap_moved=0.97", "overlap_static=abc"])
def test_compare_checks_a_movement_threshold_as_classify_does(tmp_path: Path, given: str) -> None:
    store = make_store(tmp_path / "run.h5")
    compared = fdl_in_process("compare", store, store, "--threshold", given)
    classified = fdl_in_process("classify", store, "--threshold", given)
    assert compared.returncode == classified.returncode == 1 and "error: " in compared.stderr
    assert compared.stderr == classified.stderr
