"""Pure rule tests of fdl_cli.regimes: thresholds, overrides, each rule firing, the JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from fdl_cli.errors import FdlError
from fdl_cli.regimes import (
    NOTE,
    Thresholds,
    checkpoint_regime,
    classify_run,
    describe,
    entered_mf,
    feature_movement,
)


def record(step: int, cka: float | None, overlap: float | None, k95: int | None = 5, c: int = 10, **extra: Any) -> dict:
    return {"step": step, "cka_init": cka, "overlap_init": overlap, "k95_utility": k95, "n_outputs": c, **extra}


def run(*rows: tuple[float, float, int]) -> list[dict]:
    """Reference at step 0, then one record per (cka, overlap, k95) at steps 10, 20, ..."""
    return [record(0, 1.0, 1.0, 1)] + [record(10 * (i + 1), *row) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------- thresholds


def test_defaults_are_the_calibrated_values() -> None:
    assert Thresholds().as_dict() == {
        "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.80, "mf_extra": 1.0, "final_window": 3.0,
    }


def test_overrides_from_strings_and_mapping() -> None:
    th = Thresholds.with_overrides(["cka_static=0.9", " mf_extra = 2"])
    assert (th.cka_static, th.mf_extra, th.overlap_static) == (0.9, 2.0, 0.95)
    assert Thresholds.with_overrides({"final_window": 1}).final_window == 1.0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("nope=1", "unknown threshold 'nope'"),
        ("cka_static", "bad threshold"),
        ("cka_static=abc", "bad threshold"),
        ("cka_static=nan", "bad threshold"),
        ("cka_static=1.5", "outside [0, 1]"),
        ("overlap_moved=0.99", "overlap_moved=0.99 is above overlap_static=0.95"),
        ("final_window=0", "whole number"),
        ("mf_extra=-1", "mf_extra"),
    ],
)
def test_bad_overrides_are_clear_errors(text: str, words: str) -> None:
    with pytest.raises(FdlError) as info:
        Thresholds.with_overrides([text])
    assert words in info.value.message


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(FdlError) as info:
        Thresholds.with_overrides(["cka=0.9"])
    assert "cka_static" in info.value.message and "fix:" in info.value.message


# ------------------------------------------------------------------------------------ one checkpoint


@pytest.mark.parametrize(
    ("cka", "overlap", "k95", "c", "regime", "movement"),
    [
        (1.0, 1.0, 40, 10, "coefficient", "static"),  # nothing moved: k95 does not matter
        (0.995, 0.96, 40, 10, "coefficient", "static"),
        (0.98, 0.99, 5, 10, "MF", "moved"),  # CKA moved, overlap static: moved (not a conflict)
        (0.995, 0.9, 5, 10, "MF", "moved"),  # overlap slightly below static: moved
        (0.6, 0.5, 11, 10, "MF", "moved"),  # C + 1 (the constant direction) is still MF
        (0.6, 0.5, 12, 10, "EF", "moved"),
        (0.6, 0.5, 3, 1, "EF", "moved"),  # regression, C = 1: limit 2
        (0.999, 0.5, 5, 10, "undetermined", "conflict"),  # kernel static, eigenspace rotated
        (None, None, 5, 10, "undetermined", "unknown"),
        (0.6, 0.5, None, 10, "undetermined", "moved"),
        (None, 0.5, 5, 10, "MF", "moved"),  # one measure is enough
    ],
)
def test_checkpoint_rules(cka: Any, overlap: Any, k95: Any, c: int, regime: str, movement: str) -> None:
    verdict = checkpoint_regime(record(5, cka, overlap, k95, c))
    assert (verdict.regime, verdict.movement) == (regime, movement)
    assert verdict.rule


def test_reference_checkpoint_is_coefficient_by_definition() -> None:
    verdict = checkpoint_regime(record(0, None, None, None), reference=True)
    assert verdict.regime == "coefficient" and "reference" in verdict.rule


def test_mf_extra_moves_the_mf_ef_boundary() -> None:
    rec = record(5, 0.5, 0.5, 14)
    assert checkpoint_regime(rec).regime == "EF"
    assert checkpoint_regime(rec, Thresholds(mf_extra=4)).regime == "MF"


def test_movement_reason_names_the_numbers() -> None:
    movement, reason = feature_movement(record(5, 0.5, 0.25), Thresholds())
    assert movement == "moved" and "0.5" in reason and "0.25" in reason


# --------------------------------------------------------------------------------------- whole run


def test_coefficient_when_nothing_after_the_reference_moved() -> None:
    verdict = classify_run(run((1.0, 1.0, 30), (0.999, 0.99, 30)))
    assert verdict.regime == "coefficient"
    assert verdict.evidence["min_cka_init"] == 0.999 and "no checkpoint after the reference moved" in verdict.rule


def test_mf_and_when_it_became_mf() -> None:
    verdict = classify_run(run((0.999, 0.999, 1), (0.9, 0.8, 14), (0.7, 0.6, 10), (0.6, 0.5, 9), (0.6, 0.5, 9)))
    assert verdict.regime == "MF"
    assert [p["regime"] for p in verdict.as_json()["trajectory"]] == ["coefficient", "coefficient", "EF", "MF", "MF", "MF"]
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (30, 30)


def test_ef() -> None:
    verdict = classify_run(run((0.9, 0.8, 3), (0.8, 0.6, 20), (0.8, 0.6, 20), (0.8, 0.6, 20)))
    assert verdict.regime == "EF" and verdict.evidence["final_k95_utility"] == 20
    assert verdict.evidence["mf_since_step"] is None


def test_only_the_reference_is_undetermined() -> None:
    verdict = classify_run([record(0, 1.0, 1.0, 1)])
    assert verdict.regime == "undetermined" and "no checkpoint after the reference" in verdict.rule
    assert classify_run([]).regime == "undetermined"


def test_final_conflict_is_undetermined() -> None:
    verdict = classify_run(run((0.7, 0.6, 5), (0.999, 0.5, 5)))
    assert verdict.regime == "undetermined" and "CKA says static" in verdict.rule


def test_moved_then_back_to_reference_is_undetermined() -> None:
    verdict = classify_run(run((0.7, 0.6, 5), (1.0, 1.0, 5)))
    assert verdict.regime == "undetermined" and "back at the reference" in verdict.rule


def test_flip_between_mf_and_ef_in_the_final_window_is_undetermined() -> None:
    verdict = classify_run(run((0.6, 0.5, 5), (0.6, 0.5, 20), (0.6, 0.5, 5)))
    assert verdict.regime == "undetermined" and "flip between MF and EF" in verdict.rule
    # a window of 1 only looks at the final checkpoint
    assert classify_run(run((0.6, 0.5, 5), (0.6, 0.5, 20), (0.6, 0.5, 5)), Thresholds(final_window=1)).regime == "MF"


def test_an_old_flip_outside_the_window_does_not_matter() -> None:
    verdict = classify_run(run((0.6, 0.5, 20), (0.6, 0.5, 5), (0.6, 0.5, 5), (0.6, 0.5, 5)))
    assert verdict.regime == "MF"


def test_overrides_change_every_checkpoint_and_the_stored_regime_is_ignored() -> None:
    rows = run((0.97, 0.97, 5), (0.96, 0.96, 5))
    for row in rows:
        row["regime"] = "EF"  # stale stored verdict
    assert classify_run(rows).regime == "MF"
    relaxed = classify_run(rows, Thresholds.with_overrides(["cka_static=0.9", "overlap_static=0.9"]))
    assert relaxed.regime == "coefficient"
    assert [p["regime"] for p in relaxed.as_json()["trajectory"]] == ["coefficient"] * 3


def test_reference_step_other_than_the_first() -> None:
    rows = [record(0, 0.5, 0.5, 5), record(10, 1.0, 1.0, 1), record(20, 0.5, 0.4, 30)]
    verdict = classify_run(rows, reference_step=10)
    assert verdict.regime == "EF" and verdict.evidence["reference_step"] == 10
    assert [p["regime"] for p in verdict.as_json()["trajectory"]] == ["MF", "coefficient", "EF"]


def test_records_are_sorted_by_step() -> None:
    rows = run((0.6, 0.5, 20), (0.6, 0.5, 5), (0.6, 0.5, 5), (0.6, 0.5, 5))
    assert classify_run(list(reversed(rows))).regime == "MF"


def test_json_shape_is_strict_json() -> None:
    payload = classify_run(run((0.6, 0.5, 5))).as_json()
    assert set(payload) == {"regime", "evidence", "thresholds", "trajectory"}
    assert payload["thresholds"] == Thresholds().as_dict()
    assert payload["trajectory"] == [{"step": 0, "regime": "coefficient"}, {"step": 10, "regime": "MF"}]
    assert {"rule", "final_step", "final_cka_init", "final_k95_utility", "min_cka_init"} <= set(payload["evidence"])
    json.dumps(payload, allow_nan=False)


def test_describe_says_when_mf_came_at_chance_accuracy() -> None:
    """The sample run is "MF from step 5" at 9.6 % accuracy on ten classes, k95 of Π̂ = 1: a nearly
    constant function lies on one eigenfunction. A walkthrough read it as a function learned early; the
    text now says so (printed only: no rule depends on it)."""
    early = [record(0, 1.0, 1.0, 1, accuracy=0.1), record(10, 0.6, 0.5, 1, accuracy=0.11),
             record(20, 0.6, 0.5, 5, accuracy=0.8), record(30, 0.6, 0.5, 5, accuracy=0.9)]
    verdict = classify_run(early)
    assert verdict.regime == "MF" and verdict.evidence["first_mf_step"] == 10
    text = "\n".join(describe(verdict, early))
    assert ("at step 10, the first MF checkpoint, the accuracy is 0.1100 (chance 1/C = 0.1000) and k95 of Π̂ is 1: the "
            "network's function is still nearly constant") in text
    assert "nearly constant" not in "\n".join(describe(verdict))  # without the records: nothing to say
    learned = [dict(r, accuracy=0.9) if r["step"] == 10 else r for r in early]
    assert "nearly constant" not in "\n".join(describe(classify_run(learned), learned))
    regression = [dict(r, accuracy=None) for r in early]
    assert "nearly constant" not in "\n".join(describe(classify_run(regression), regression))


def test_describe_names_trajectory_thresholds_and_note_and_never_judges() -> None:
    text = "\n".join(describe(classify_run(run((0.999, 0.999, 1), (0.6, 0.5, 5), (0.6, 0.5, 5)))))
    assert "regime: MF" in text and "0–10: coefficient | 20–30: MF" in text
    assert "MF from step 20" in text and "cka_static = 0.99" in text and NOTE in text
    assert "good" not in text.replace("not whether the model is good", "")
    assert "bad" not in text


def test_entered_mf_when_the_run_leaves_mf() -> None:
    verdicts = classify_run(run((0.6, 0.5, 5), (0.6, 0.5, 30))).trajectory
    assert entered_mf(verdicts) == (10, None)


def test_regimes_imports_no_torch_h5py_click_or_rich() -> None:
    code = "import sys, fdl_cli.regimes; print([m for m in ('torch','h5py','click','rich') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("middle", "words"), [
    ((None, None, 5), "step 10 is not: cka_init and overlap_init are null"),
    ((0.999, 0.5, 5), "step 10 is not: "),
])
def test_static_at_the_end_with_an_unmeasured_or_conflicting_checkpoint_does_not_say_moved(
    middle: tuple[Any, Any, int], words: str
) -> None:
    """A checkpoint that is not static but not measured as moved (no cka_init/overlap_init, or the two
    disagree) before a static final one: the rule said "features moved (from step 10)"."""
    verdict = classify_run(run(middle, (0.999, 0.999, 5)))
    assert verdict.regime == "undetermined"
    assert words in verdict.rule and "moved" not in verdict.rule.split(":")[0]
