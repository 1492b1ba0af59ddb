"""Session 24 review of the session's probe, report and compare changes; each test failed before its fix.

1. `target` (scikit-learn's name) became a name of y ahead of `labels`, `Y` and `label`: a probe holding `labels`
   and `target` read `target` where it had read `labels`, so a store resumed after the upgrade mixed checkpoints
   measured against the labels with new ones measured against the other array (accuracy 0.958 -> 0.114), with
   nothing but the "not read" note's other name to say so. `target` now comes last: every file that had a y keeps it.
2. The warning over a probe without y whose unread arrays hold one value a sample (the labels saved as `y_test`)
   took `sample_weight`, `ids` and `groups` of an unlabelled probe for targets too, and told the user to save
   `y=sample_weight`. Arrays whose names say what else they are stay in the "not read" note, as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fdl_cli.probes import Y_KEYS, load_probe, unread_targets_warning, unused_note

# -- 1. a file that had a y keeps it -------------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["labels", "Y", "label"])
def test_a_probe_with_target_beside_another_name_of_y_reads_the_name_it_read_before(tmp_path: Path, other: str) -> None:
    x = np.zeros((6, 3), np.float32)
    labels, target = np.arange(6) % 3, np.array([2, 2, 2, 0, 0, 0])
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, **{other: labels}, target=target)
    loaded = load_probe(probe)
    assert loaded.keys == ("x", other)
    assert loaded.y is not None and loaded.y.tolist() == labels.tolist()
    assert unused_note(loaded) == (f"probe 'probe' ({probe}): not read: target; fdl gives the model 'x' alone, "
                                   f"forward(x), and takes '{other}' as the targets (a model of several inputs: "
                                   "docs/usage.md, Probe)")


def test_target_alone_is_still_read_as_y(tmp_path: Path) -> None:
    """scikit-learn's Bunch saved as it is (`data`, `target`): read, as the session made it."""
    probe = tmp_path / "bunch.npz"
    np.savez(probe, data=np.zeros((4, 2), np.float32), target=np.array([0, 1, 1, 0]))
    loaded = load_probe(probe)
    assert loaded.keys == ("data", "target") and loaded.task == "classes" and unused_note(loaded) is None
    assert Y_KEYS[-1] == "target" and "target" in Y_KEYS


# -- 2. the unread-targets warning names arrays that may be targets ---------------------------------------------


def test_per_sample_weights_ids_and_groups_are_no_unread_targets(tmp_path: Path) -> None:
    """An unlabelled probe with a value a sample of other kinds: no warning (and no `y=sample_weight` advice); the
    note names them as the arrays fdl does not read, as it did before the warning."""
    n = 8
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.zeros((n, 3), np.float32), sample_weight=np.ones(n), ids=np.arange(n),
             groups=np.arange(n) % 2, sampleIndex=np.arange(n), fold_id=np.arange(n) % 4, lengths=np.full(n, 3))
    loaded = load_probe(probe)
    assert loaded.unread_targets == ()
    assert unread_targets_warning(loaded) is None
    assert unused_note(loaded) == (f"probe 'probe' ({probe}): not read: sample_weight, ids, groups, sampleIndex, "
                                   "fold_id, lengths; fdl gives the model 'x' alone, forward(x) (a model of several "
                                   "inputs: docs/usage.md, Probe)")


def test_y_test_beside_sample_weights_is_the_one_named(tmp_path: Path) -> None:
    """The labels under another name are still said to be unread, and the advice names them, not the weights."""
    n = 8
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.zeros((n, 3), np.float32), sample_weight=np.ones(n), y_test=np.arange(n) % 2)
    loaded = load_probe(probe)
    assert loaded.unread_targets == ("y_test",)
    warning = unread_targets_warning(loaded)
    assert warning is not None
    assert "y_test, one value a sample, is not read" in warning and "np.savez(FILE, x=x, y=y_test)" in warning
    assert unused_note(loaded) is not None and "not read: sample_weight;" in unused_note(loaded)


# -- 3. compare: the fields beyond the table null in one run only, on one line ------------------------------------


def test_many_other_fields_null_in_one_run_only_are_named_on_one_line(tmp_path: Path) -> None:
    """A run whose store lacks several measures (a probe without targets, a store written before them): each field
    beyond the table got a line "FIELD: null in one run only at ..." (nine for a probe without y), below the
    line that names the other fields that differ in one. The table's fields keep their lines; the others that are
    null in one run only at the same steps are named on one line, as those that differ are."""
    from fdl_cli import report
    from tests.test_report import SCALARS, make_store

    a = make_store(tmp_path / "a.h5")
    missing = {"r2": None, "n_features": None, "eff_dim": None, "pi_star_C": None, "param_norm": None}
    b = make_store(tmp_path / "b.h5", scalars={step: {**values, **missing} for step, values in SCALARS.items()})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(b), overlap=False))
    assert lines == [
        "r2: null in one run only at 3 steps (run B at 3, where run A has a value)",
        "4 other fields null in one run only at 3 steps (run B at 3, where run A has a value): n_features, eff_dim, "
        "pi_star_C, param_norm",
    ]
    # as few as OTHER_FIELDS_IN_FULL keep their lines
    fewer = {"eff_dim": None, "param_norm": None}
    c = make_store(tmp_path / "c.h5", scalars={step: {**values, **fewer} for step, values in SCALARS.items()})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(c), overlap=False))
    assert lines == [f"{name}: null in one run only at 3 steps (run B at 3, where run A has a value)"
                     for name in ("eff_dim", "param_norm")]


def test_the_coverage_note_of_one_matched_step_names_that_step(tmp_path: Path) -> None:
    """A run of one checkpoint against a longer one: the note said "covers steps 200–200 of A (5000–5000 of B), the
    span of the matched steps"."""
    from fdl_cli import report
    from tests.test_report import make_store

    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", steps=(5000,))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert notes[-1] == ("the comparison covers step 200 of A (5000 of B), the only matched step: run A's 2 "
                         "checkpoints before it (steps 0–100) are in neither the table nor the verdict")
    exact = make_store(tmp_path / "c.h5", steps=(100,))
    notes = report.compare_runs(report.load_run(a), report.load_run(exact), overlap=False).notes
    assert notes[-1] == ("the comparison covers step 100, the only matched step: run A's 1 checkpoint before it "
                         "(step 0) and run A's 1 checkpoint after it (step 200) are in neither the table nor the verdict")
