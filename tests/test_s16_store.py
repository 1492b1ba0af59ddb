"""How `fdl analyze` keeps a store honest (session 16), and the types of `fdl classify`'s thresholds.

1. A stored checkpoint's file overwritten by a copy of another step's file: the copy was skipped as a
   duplicate (its step key says the other step), and the store kept the old numbers of the step without a
   word; `--redo` then said no checkpoint has that step, though its file is there.
2. Damaged arrays (a failed Fletcher-32 checksum) of a stored checkpoint that a resume reads back: the
   checkpoint compared with it was stored with a null cka_prev, and the successor refresh then stopped the
   run naming --redo. Refused now before any checkpoint is analysed.
3. `fdl classify --json` printed the counts mf_extra and final_window as floats (1.0, 3.0), and the text
   output rounded a threshold such as 0.9999999 to "1".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_analyze import analyze, fdl, run  # noqa: F401 - `run` is the module's fixture

# ------------------------------------------------------------------------ 3. classify's thresholds


def _classify(store: Path, *extra: str) -> tuple[int, str, str]:
    done = fdl("classify", str(store), *extra)
    return done.code, done.stdout, done.stderr


@pytest.fixture(scope="module")
def classified(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    store = tmp_path_factory.mktemp("classify") / "s.h5"
    assert analyze(run, store).code == 0
    return store


def test_classify_json_prints_the_count_thresholds_as_integers(classified: Path) -> None:
    code, out, _ = _classify(classified, "--json")
    assert code == 0
    assert ('"thresholds": {"cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8, "mf_extra": 1, '
            '"final_window": 3}') in out
    thresholds = json.loads(out)["thresholds"]
    assert [type(thresholds[name]) for name in thresholds] == [float, float, float, int, int]
    code, out, _ = _classify(classified, "--json", "--threshold", "mf_extra=2", "--threshold", "final_window=5.0",
                             "--threshold", "cka_static=1", "--threshold", "overlap_static=1")
    assert code == 0
    thresholds = json.loads(out)["thresholds"]
    assert thresholds == {"cka_static": 1.0, "overlap_static": 1.0, "overlap_moved": 0.8, "mf_extra": 2,
                          "final_window": 5}
    assert [type(thresholds[name]) for name in thresholds] == [float, float, float, int, int]
    # a fractional mf_extra (k95 ≤ C + 1.5 is k95 ≤ C + 1) is printed as given
    code, out, _ = _classify(classified, "--json", "--threshold", "mf_extra=1.5")
    assert code == 0 and json.loads(out)["thresholds"]["mf_extra"] == 1.5
    assert "C + mf_extra = 4.5" in json.loads(out)["evidence"]["rule"]


def test_classify_text_shows_every_digit_of_a_threshold(classified: Path) -> None:
    code, out, err = _classify(classified, "--threshold", "cka_static=0.9999999", "--threshold", "mf_extra=-0")
    assert code == 0 and out == ""
    assert "thresholds: cka_static = 0.9999999, overlap_static = 0.95, overlap_moved = 0.8, mf_extra = 0, " \
           "final_window = 3\n" in err
    assert "features moved (below 0.9999999 or 0.95)" in err  # the rule said "below 1"
    code, _, err = _classify(classified, "--threshold", "cka_static=1.0000001")
    assert code == 1 and "got: cka_static=1.0000001 is outside [0, 1]" in err  # "cka_static=1 is outside"
