"""`fdl compare`'s sentences on which run's features moved, held to the numbers they stand on.

The verdict says of a run static at every matched step that it "did not move", is "a lazy (coefficient) run",
and, beside a run that moved, that it "did not" learn features. Each claim was made where it was false:
- a run whose features moved at a checkpoint the other run does not match (a longer run, a finer save
  interval) was called lazy and said not to have learned features, which the span note said were left out;
- a measure missing at some matched steps (CKA null: an anchor subset too small, a dead layer) was said to hold
  "at every matched step", from the one step where it was measured (the reference's own 1.0);
- a matched step where neither measure exists (features constant over the anchors: a layer that died) was
  dropped before the test, so a run that died at its last checkpoint was "a lazy (coefficient) run".
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store

LAZY = "a lazy (coefficient) run"


def _store(path: Path, seed: int, columns: dict[str, list[float | None]], steps=(0, 100, 200)) -> Path:
    """A store of `steps` whose scalars are SCALARS' (step 200's past it) with `columns` in their place."""
    scalars = {step: {**SCALARS.get(step, SCALARS[200]), **{name: values[i] for name, values in columns.items()}}
               for i, step in enumerate(steps)}
    return make_store(path, seed=seed, steps=steps, scalars=scalars)


def _verdict(a: Path, b: Path) -> str:
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["verdict"]


def test_a_run_whose_features_moved_at_an_unmatched_checkpoint_is_not_called_lazy(tmp_path: Path) -> None:
    """Run A, frozen to step 200, moves at step 300, which run B (steps 0-200) does not match: the verdict said
    "a lazy (coefficient) run" and "B learned features, A did not" of it."""
    a = _store(tmp_path / "a.h5", 3, {"d_lr": [0.9, 0.6, 0.1, 0.05], "cka_init": [1.0, 1.0, 1.0, 0.5],
                                       "overlap_init": [1.0, 1.0, 1.0, 0.4]}, steps=(0, 100, 200, 300))
    b = _store(tmp_path / "b.h5", 0, {})  # CKA to its reference down to 0.625, top-C overlap to 0.5
    verdict = _verdict(a, b)
    assert verdict.startswith("Run A is richer than run B"), verdict
    assert LAZY not in verdict and "A did not" not in verdict and "only B's features moved" not in verdict, verdict
    assert ("Run A's features did not move at the matched steps (at every matched step CKA to its reference ≥ 0.99, lowest "
            "1.0000, and top-C overlap ≥ 0.95, lowest 1.0000): its D_LR there is that of its reference "
            "checkpoint's features; they moved at step 300, which no checkpoint of B matches (CKA to its reference "
            "down to 0.5000, top-C overlap to 0.4000).") in verdict, verdict
    # where the unmatched checkpoints did not move either, the run is lazy as before
    still = _store(tmp_path / "still.h5", 3, {"d_lr": [0.9, 0.6, 0.1, 0.05], "cka_init": [1.0] * 4,
                                               "overlap_init": [1.0] * 4}, steps=(0, 100, 200, 300))
    verdict = _verdict(still, b)
    assert LAZY in verdict and "B learned features, A did not; A's lower D_LR comes from" in verdict, verdict


def test_a_measure_missing_at_some_matched_steps_is_not_said_of_every_one(tmp_path: Path) -> None:
    """CKA null at steps 100 and 200 (the overlap static): "at every matched step CKA to its reference ≥ 0.99,
    lowest 1.0000" stood on step 0 alone, the reference's own CKA to itself."""
    a = _store(tmp_path / "a.h5", 3, {"d_lr": [0.9, 0.6, 0.1], "cka_init": [1.0, None, None],
                                       "overlap_init": [1.0, 0.99, 0.98]})
    b = _store(tmp_path / "b.h5", 0, {})
    verdict = _verdict(a, b)
    assert ("Run A's features did not move (at every matched step top-C overlap ≥ 0.95, lowest 0.9800, and CKA "
            "to its reference ≥ 0.99 at the 1 of the 3 matched steps where it is measured, lowest 1.0000): its D_LR "
            "is that of its reference checkpoint's features") in verdict, verdict
    assert "at every matched step CKA" not in verdict


def test_a_matched_step_without_either_measure_is_no_evidence_of_a_lazy_run(tmp_path: Path) -> None:
    """Run A static to step 100, both measures null at step 200 (features constant over the anchors: a layer that
    died, which `fdl classify` calls undetermined): the step was dropped before the test, and A was "a lazy
    (coefficient) run" whose features "did not move" at every matched step, and "did not" learn features."""
    a = _store(tmp_path / "a.h5", 3, {"d_lr": [0.9, 0.6, 0.1], "cka_init": [1.0, 1.0, None],
                                       "overlap_init": [1.0, 1.0, None]})
    b = _store(tmp_path / "b.h5", 0, {})
    verdict = _verdict(a, b)
    assert verdict.startswith("Run A is richer than run B"), verdict
    assert "Run A's features did not move" not in verdict and LAZY not in verdict and "A did not" not in verdict
