"""Second review of session 14's regime messages: each test but the exact-1 guard is a defect the review found,
failing before its fix."""

from __future__ import annotations

from pathlib import Path

from fdl_cli.regimes import classify_run, describe
from tests.test_regimes import record


def test_mf_to_the_end_before_an_unstored_reference_is_said_to_be_before_it() -> None:
    """`analyze --reference 1232` stopped (killed, or a checkpoint still to come) before the reference's
    place in step order: the stored checkpoints all precede the reference, each measured against it. The
    last ones differ from it and are "MF", and the text read "MF from step 85 to the end", with none of the
    caveat that "MF first at step S" got in the same situation."""
    rows = [record(0, 0.55, 0.50, 30, accuracy=0.061), record(85, 0.8, 0.7, 10, accuracy=0.99),
            record(170, 0.85, 0.75, 10, accuracy=0.99)]
    verdict = classify_run(rows, reference_step=1232)
    assert verdict.regime == "undetermined"
    text = "\n".join(describe(verdict, rows))
    assert ("MF from step 85 to the last checkpoint, all before the reference (step 1232): their movement is "
            "measured against a later checkpoint, so their MF says only that they differ from the reference") in text
    assert "to the end" not in text
    # after the reference, as before
    after = [record(0, 1.0, 1.0, 30), record(10, 0.6, 0.5, 10), record(20, 0.6, 0.5, 10)]
    assert "MF from step 10 to the end" in describe(classify_run(after), after)  # the line, without "(… step 10)"


def test_an_untrained_majority_class_predictor_is_not_said_to_fit_the_probe() -> None:
    """An initialised MLP whose output bias makes it predict the majority class everywhere, on a binary probe
    of 84 % class 0, trained lazily (CKA ≥ 0.9967): accuracy 0.8375 at step 0 is 68 % of the way from 1/C to
    1, and the text said the reference "already fits the probe ... they may have been learned before it; a
    fine-tuning or resumed run", of an untrained network. Its cross-entropy, 0.4845, is 70 % of log 2: a
    function that fits the probe has a cross-entropy well below that of an uninformed guess too."""
    rows = [record(0, 1.0, 1.0, 4, c=2, accuracy=0.8375, cross_entropy=0.4845),
            record(100, 0.9998, 0.9997, 4, c=2, accuracy=0.8375, cross_entropy=0.3951),
            record(300, 0.9967, 0.9989, 3, c=2, accuracy=0.8475, cross_entropy=0.2876)]
    verdict = classify_run(rows)
    assert verdict.regime == "coefficient"
    assert "already fits" not in "\n".join(describe(verdict, rows))
    # a trained reference (a cross-entropy far below log C) still gets the line, its cross-entropy shown
    trained = [{**r, "accuracy": 0.97, "cross_entropy": 0.09} for r in rows]
    assert ("the reference checkpoint (step 0) already fits the probe (accuracy 0.9700, chance 1/C = 0.5000, "
            "cross-entropy 0.090 against log C = 0.693)") in "\n".join(describe(classify_run(trained), trained))


def test_a_mid_run_reference_that_fits_is_not_explained_as_a_fine_tuning_run() -> None:
    """`analyze --reference 150` of a run trained from its initialisation: the checkpoints before step 150 are
    in the store and moved (EF, MF), yet the line under the coefficient verdict said the features "may have
    been learned before it; a fine-tuning or resumed run, or a trained model saved as the first checkpoint"."""
    rows = [record(0, 0.4, 0.3, 30, accuracy=0.35), record(50, 0.8, 0.7, 3, accuracy=0.9),
            record(150, 1.0, 1.0, 3, accuracy=0.943), record(300, 0.9926, 0.99, 3, accuracy=0.98)]
    text = "\n".join(describe(classify_run(rows, reference_step=150), rows))
    assert "already fits the probe" in text
    assert "fine-tuning" not in text
    assert ("they were learned before it: the 2 checkpoints before step 150 are in the store; analyse with the "
            "first checkpoint as the reference, the default, to classify that learning)") in text


def test_the_exact_one_shortcut_needs_every_entry_equal() -> None:
    """613f23c gives CKA and the overlap exactly 1 for equal centered anchors / bases, the first rows
    compared first. Anchors that differ in their last two rows only (their mean, so their centered first
    row, unchanged), or eigenfunctions in one entry, are measured: a check of the first rows or the shapes
    alone would call them the same."""
    import numpy as np

    from fdl_cli.pipeline import _cka, _overlap, _Series

    rng = np.random.default_rng(5)
    anchor = rng.normal(size=(64, 8)) + 20.0  # far from 0, as the twin run's
    eig = rng.normal(size=(64, 6))
    for dtype in ("float64", "float32"):
        a = _Series(anchor=anchor.copy(), eigenfunctions=eig.copy(), cka_dtype=dtype)
        twin = _Series(anchor=anchor.copy(), eigenfunctions=eig.copy(), cka_dtype=dtype)
        assert _cka(a, twin) == 1.0 and _overlap(a, twin, 3) == 1.0
        moved = anchor.copy()
        moved[-1, -1] += 1.0
        moved[-2, -1] -= 1.0
        other = eig.copy()
        other[-1, 0] += 1.0
        b = _Series(anchor=moved, eigenfunctions=other, cka_dtype=dtype)
        assert _cka(a, b) < 1.0 and _overlap(a, b, 3) < 1.0
    # p > m: the m×m Grams are compared, with the same rule
    wide = rng.normal(size=(8, 40))
    moved = wide.copy()
    moved[-1, -1] += 1.0
    moved[-2, -1] -= 1.0
    a, b = _Series(anchor=wide, eigenfunctions=eig[:8]), _Series(anchor=moved, eigenfunctions=eig[:8])
    assert _cka(a, _Series(anchor=wide.copy(), eigenfunctions=eig[:8])) == 1.0 and _cka(a, b) < 1.0


def test_compare_s_lazy_run_note_does_not_print_a_lazy_cka_as_one() -> None:
    """`fdl compare` of a trained-then-lazy run: "Run A's features did not move (CKA to its reference ≥ 0.99
    (lowest 1.0000) ...)" for a lowest CKA of 0.9999996, as a frozen network's exactly-1 reads (f7ad993 fixed
    this in `fdl classify` only); and "left unmatched: 1 checkpoints of A"."""
    from fdl_cli import report

    def compared(step: int, cka: float) -> report.ComparedStep:
        row = {"step": step, "cka_init": cka, "overlap_init": 1.0, "d_lr": 0.1}
        return report.ComparedStep(report.Match(step, step), row, {**row, "cka_init": 0.5, "overlap_init": 0.5}, {}, None)

    note = report._movement_note([compared(0, 1.0), compared(100, 0.9999996090688441)])
    assert "CKA to its reference ≥ 0.99, lowest 1 − 3.9e-07," in note
    assert "CKA to its reference ≥ 0.99, lowest 1.0000," in report._movement_note([compared(0, 1.0), compared(100, 1.0)])
    assert ", lowest 0.9957," in report._movement_note([compared(0, 1.0), compared(100, 0.9957)])


def test_compare_counts_one_unmatched_checkpoint_in_the_singular(tmp_path: Path) -> None:
    """`fdl compare` noted "left unmatched: 1 checkpoints of A" (d5bbc7b fixed "1 checkpoints" in the report only)."""
    from fdl_cli import report
    from tests.test_report import SCALARS, make_store

    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", steps=(*SCALARS, 900), scalars={**SCALARS, 900: SCALARS[max(SCALARS)]})
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert "left unmatched: 0 checkpoints of A, 1 of B (step 900)" in notes
    c = make_store(tmp_path / "c.h5", steps=tuple(SCALARS)[:-1])
    notes = report.compare_runs(report.load_run(a), report.load_run(c), overlap=False).notes
    assert "left unmatched: 1 checkpoint of A (step 200), 0 of B" in notes
