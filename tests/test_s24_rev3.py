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
