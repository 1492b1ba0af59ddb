"""Smoke test of examples/overlap_ties.py (the near-tie study of docs/regimes.md) on its --fast runs (~10 s).

Three constructed runs, built, analysed and classified through the real command line: a lazy linear map
on near-tied inputs (`syn_tie995_C1_e01`), a linear net trained past a near-tie at C = 10
(`swap_trained_C10`, the crossing) and one stopped mid-swap (`swap_trained_C1_97_short`). The values are
the study's (docs/regimes.md, "Why a note and not a rule"): the current rules misread the lazy run, a
rule that judges the overlap past a tie on either side (A) fixes it but reads the crossing coefficient,
one that needs the tie on both sides (C) keeps the crossing MF but reads the mid-swap run coefficient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn  # noqa: F401 - a dev dependency: missing, the test fails
import torch  # noqa: F401 - a hard dependency: missing, the test fails

from tests import warm

REPO = Path(__file__).resolve().parents[1]


def _example(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
    # a warm child (tests/warm.py): a real process, exit status and streams its own, without its own `import torch`;
    # its `fdl analyze` and `fdl classify` answered in it (tests/example_run.py), not by 6 more interpreters
    return warm.run(
        [sys.executable, "-m", "tests.example_run", "examples.overlap_ties", *args], cwd=REPO, env=env, timeout=300
    )


def test_fast_runs_reproduce_the_study(tmp_path: Path) -> None:
    done = _example("--fast", "--out", str(tmp_path), "--json", str(tmp_path / "ties.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ties.json").read_text())
    runs = {run["run"]: run for run in result["runs"]}
    assert list(runs) == ["syn_tie995_C1_e01", "swap_trained_C1_97_short", "swap_trained_C10"]

    lazy, crossing, mid_swap = runs["syn_tie995_C1_e01"], runs["swap_trained_C10"], runs["swap_trained_C1_97_short"]
    # the lazy tied run: misread now (the top-1 overlap fell while CKA stayed ≥ 0.99), coefficient under A and C
    assert lazy["known"] == "coefficient" and lazy["C"] == 1
    assert lazy["verdicts"]["now"] == "MF"
    assert lazy["verdicts"]["A0.2"] == lazy["verdicts"]["C0.2"] == "coefficient"
    assert lazy["verdicts"]["D0.2"] == "undetermined"
    last = lazy["checkpoints"][-1]
    assert last["cka_init"] == pytest.approx(0.9950, abs=5e-4) and last["overlap_init"] == pytest.approx(0.8108, abs=5e-4)
    assert last["gap_ref"] == pytest.approx(0.071, abs=1e-3) and last["gap"] == pytest.approx(0.190, abs=1e-3)
    assert last["wider"]["0.2"]["k"] == 2 and last["wider"]["0.2"]["overlap"] == pytest.approx(0.9979, abs=5e-4)
    # `fdl classify --json` gave the same note: a near-tie on both sides, the same k′ and overlap past it
    tie = lazy["overlap_tie"]
    assert tie["near_tie"] is True and tie["wider_k"] == 2
    assert tie["wider_overlap"] == pytest.approx(last["wider"]["0.2"]["overlap"], abs=1e-12)

    # the trained crossing (tied at the reference only): MF now and under C, coefficient under A
    assert crossing["known"] == "moved" and crossing["C"] == 10
    assert crossing["verdicts"]["now"] == crossing["verdicts"]["C0.2"] == "MF"
    assert crossing["verdicts"]["A0.2"] == "coefficient"
    last = crossing["checkpoints"][-1]
    assert last["gap_ref"] == pytest.approx(0.074, abs=1e-3) and last["gap"] == pytest.approx(0.553, abs=1e-3)
    assert last["wider"]["0.2"]["k"] == 11 and last["wider"]["0.2"]["overlap"] > 0.9999
    assert crossing["overlap_tie"]["crossing"] is True and crossing["overlap_tie"]["wider_k"] == 11

    # stopped mid-swap: undetermined now, and C reads it coefficient as it does the lazy run
    assert mid_swap["verdicts"]["now"] == "undetermined" and mid_swap["verdicts"]["C0.2"] == "coefficient"

    summary = result["summary"]
    assert summary["runs"] == 3 and summary["checkpoints_after_reference"] == 21
    assert summary["overlap_alone_checkpoints"] == 9
    assert summary["max_overlap_recomputation_error"] < 1e-9  # the stored overlap_init is eigenspace_overlap's
    # the printed table: one line per run with its verdicts, and the summary
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith(("syn_", "swap_"))}
    assert lines["swap_trained_C10"][3:9] == ["MF", "coef", "coef", "coef", "MF", "MF"]
    assert lines["syn_tie995_C1_e01"][3:9] == ["MF", "coef", "coef", "coef", "coef", "undet"]
    assert "overlap-alone checkpoints (CKA ≥ 0.99, overlap < 0.95): 9 of 21" in done.stdout
    assert "$ fdl analyze" in done.stderr and "$ fdl" not in done.stdout
    assert (tmp_path / "swap_trained_C10.fdl.h5").is_file()


def test_unknown_run_and_bad_seeds_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    done = _example("--only", "no_such_run")  # a process: the script's own status reaches the shell
    assert done.returncode == 2
    assert "no run named no_such_run; runs: syn_tie995_C1_e01," in done.stderr and done.stdout == ""
    # argparse's refusal is the same in any process (SystemExit(2) before any work): here, without a second
    # interpreter; a traceback would be an exception other than SystemExit, failing the test
    from examples.overlap_ties import main

    with pytest.raises(SystemExit) as refused:
        main(["--seeds", "0,x"])
    stderr = capsys.readouterr().err
    assert refused.value.code == 2 and "--seeds takes integers separated by commas" in stderr
    assert "Traceback" not in stderr
