"""Second review of session 14's regime messages: each test is a defect the review found, failing before its fix."""

from __future__ import annotations

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
    assert "MF from step 10 to the end (first MF checkpoint: step 10)" in "\n".join(describe(classify_run(after), after))

