"""Session 24: the machine outputs of `fdl compare`, as a pipeline (jq, a CI gate, csv) reads them.

- `fdl compare --format csv|markdown` printed the notes on stderr but not the verdict, anywhere: a user who
  saved the table (`> diff.csv`) was told which notes apply and never which run is richer, which the table
  format prints last.
- `fdl compare --json` gave the verdict as a sentence alone: a CI gate ("fail unless the new run is the
  richer") had to match English text (`"Run B is richer than run A"`, `"The runs end equally rich"`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from fdl_cli import report
from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store


def _with_d_lr(values: list[float | None]) -> dict[int, dict[str, object]]:
    return {step: {**scalars, "d_lr": values[i]} for i, (step, scalars) in enumerate(SCALARS.items())}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs of three checkpoints (steps 0, 100, 200) whose D_LR is known: `a` (0.9, 0.5, 0.125); `richer` lower
    from step 200 on; `tied` within dlr_tie at every step; `unmeasured` with no D_LR at all."""
    folder = tmp_path_factory.mktemp("mach")
    return {
        "a": make_store(folder / "a.h5"),
        "richer": make_store(folder / "richer.h5", seed=3, scalars=_with_d_lr([0.9, 0.5004, 0.1])),
        "tied": make_store(folder / "tied.h5", seed=3, scalars=_with_d_lr([0.9, 0.5004, 0.1246])),
        "unmeasured": make_store(folder / "unmeasured.h5", seed=3, scalars=_with_d_lr([None, None, None])),
    }


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_compare_as_csv_or_markdown_says_its_verdict_on_stderr(stores: dict[str, Path], fmt: str) -> None:
    done = fdl_in_process("compare", stores["a"], stores["richer"], "--format", fmt, "--no-overlap")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(fdl_in_process("compare", stores["a"], stores["richer"], "--json", "--no-overlap").stdout)[
        "verdict"]
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 200 on")
    # the verdict is the last line on stderr, after the notes, as in the table format; never on stdout
    assert done.stderr.splitlines()[-1] == verdict
    assert "richer" not in done.stdout
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(done.stdout)))
        assert [row[:2] for row in rows] == [["step_a", "step_b"], ["0", "0"], ["100", "100"], ["200", "200"]]
        assert {len(row) for row in rows} == {len(rows[0])}


@pytest.mark.parametrize(("other", "richer"), [("richer", "b"), ("tied", "equal"), ("a", "equal"),
                                               ("unmeasured", None)])
def test_compare_json_names_the_richer_run(stores: dict[str, Path], other: str, richer: str | None) -> None:
    done = fdl_in_process("compare", stores["a"], stores[other], "--json", "--no-overlap")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["richer"] == richer
    swapped = json.loads(fdl_in_process("compare", stores[other], stores["a"], "--json", "--no-overlap").stdout)
    assert swapped["richer"] == {"b": "a"}.get(richer, richer)
    # the key follows the verdict, the sentence it sums up
    keys = list(document)
    assert keys[keys.index("verdict") + 1] == "richer"


def test_the_richer_run_is_that_of_the_sentence(stores: dict[str, Path]) -> None:
    """Python callers get it too: `Comparison.richer`, beside `Comparison.verdict`."""
    run_a, run_b = report.load_run(stores["a"]), report.load_run(stores["richer"])
    comparison = report.compare_runs(run_a, run_b, overlap=False)
    assert comparison.richer == "b" and comparison.verdict.startswith("Run B is richer")
    tied = report.compare_runs(run_a, run_b, overlap=False, thresholds=report.compare_thresholds(["dlr_tie=0.05"]))
    assert tied.richer == "equal" and tied.verdict.startswith("The runs are equally rich (D_LR within dlr_tie = 0.05)")
    assert report.compare_runs(run_b, run_a, overlap=False).richer == "a"
