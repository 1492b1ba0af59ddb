"""Session 19: the evidence of a run analysed with a mid-run --reference counts the checkpoints after it only,
and float 0/1 targets (multi-label) are recorded in the store so that report, compare and classify say what
loss and r2 measure there. Each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from fdl_cli.regimes import classify_run, describe
from tests.cli_run import REPO, fdl
from tests.test_regimes import record

SAMPLE = REPO / "sample_checkpoints"


# -- 1. first_mf_step and mf_since_step after a mid-run reference ------------------------------------------------


def test_first_mf_step_counts_the_checkpoints_after_the_reference_only() -> None:
    """Steps 0–5 before `--reference 100` read MF* (they differ from the trained reference), then EF, then MF:
    `first_mf_step` was 0, an MF step before the reference the verdict is about, beside "MF from step 300"."""
    rows = [record(0, 0.6, 0.5, 1), record(5, 0.62, 0.5, 1), record(100, 1.0, 1.0, 5), record(200, 0.9, 0.8, 30),
            record(300, 0.8, 0.7, 6), record(400, 0.8, 0.7, 6), record(500, 0.8, 0.7, 6)]
    verdict = classify_run(rows, reference_step=100)
    assert verdict.regime == "MF"
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (300, 300)
    assert verdict.as_json()["evidence"]["first_mf_step"] == 300
    lines = describe(verdict, rows)
    assert "MF from step 300 to the end (first MF checkpoint after the reference: step 300)" in lines
    # the trajectory keeps every checkpoint's regime, the MF* ones before the reference too
    assert [(p["step"], p["regime"]) for p in verdict.as_json()["trajectory"]][:2] == [(0, "MF"), (5, "MF")]


def test_mf_since_step_stops_at_an_unstored_reference() -> None:
    """`--reference 100` with no checkpoint stored at step 100 (a run resumed before it was reached, say): MF
    at 0, 50, 200 and 300 made `mf_since_step` 0, across the reference."""
    rows = [record(0, 0.6, 0.5, 5), record(50, 0.7, 0.6, 5), record(200, 0.8, 0.7, 5), record(300, 0.8, 0.7, 5)]
    verdict = classify_run(rows, reference_step=100)
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (200, 200)
    assert "MF from step 200 to the end (first MF checkpoint after the reference: step 200)" in describe(verdict, rows)


def test_no_mf_after_the_reference_says_so_beside_the_mf_before_it() -> None:
    """MF* before the reference, coefficient after it: no MF step in the evidence, and the text names the MF*
    checkpoint as before the reference (not "the run did not stay MF", nor "never became MF")."""
    rows = [record(0, 0.55, 0.5, 8), record(85, 0.8, 0.7, 10), record(1232, 1.0, 1.0, 10),
            record(3000, 0.9966, 0.9989, 10)]
    verdict = classify_run(rows, reference_step=1232)
    assert verdict.regime == "coefficient"
    assert verdict.evidence["first_mf_step"] is None and verdict.evidence["mf_since_step"] is None
    text = "\n".join(describe(verdict, rows))
    assert ("MF first at step 0 (before the reference, step 1232: its movement is measured against a later "
            "checkpoint, so its MF says only that it differs from the reference), and no MF checkpoint after it") in text
    assert "did not stay MF" not in text and "never became MF" not in text


def test_classify_json_and_text_agree_on_the_first_mf_step_after_a_mid_run_reference(tmp_path: Path) -> None:
    """The sample run analysed with `--reference 100`: 0–5 read MF*, 200–300 MF; `--json` said
    `"first_mf_step": 0` and the text "first MF checkpoint: step 0, before the reference"."""
    out = tmp_path / "r.h5"
    done = fdl("analyze", SAMPLE, "--steps", "0,5,100,200,300", "--reference", "100", "-o", out)
    assert done.returncode == 0, done.stderr
    payload = json.loads(fdl("classify", out, "--json").stdout)
    assert payload["regime"] == "MF"
    assert (payload["evidence"]["first_mf_step"], payload["evidence"]["mf_since_step"]) == (200, 200)
    assert [p["regime"] for p in payload["trajectory"]] == ["MF", "MF", "coefficient", "MF", "MF"]
    text = fdl("classify", out).stderr
    assert "MF from step 200 to the end (first MF checkpoint after the reference: step 200)" in text
    assert "first_mf_step = 200, mf_since_step = 200" in text

