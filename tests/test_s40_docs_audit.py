"""An audit of what docs/usage.md and README.md say of `fdl report` and `fdl compare`, tried for real.

- On a narrow terminal the line under a table names the commands that show every column. Of a store of several
  series, those commands lacked the series shown (`fdl export run.h5 --what trajectories`, `fdl compare a.h5 b.h5
  2>&1 | less -S`), and so failed ("holds several series"), and compare's dropped the options that change what it
  shows (`--no-overlap`, `--overlap-steps`, `--threshold`).
- `fdl compare` warned "the two runs were analysed with different options (layers: A 4:input vs B 4:input, 2)" of
  two series of the same layer, one store holding another layer too: that layer takes no part in the comparison,
  and the warning that the field differences "mix these analysis choices with differences in training" was false.
  The layers compared are what counts: warned of where they differ (`--layer-b`), `layer: A fc1 vs B fc2`.
- compare's figure drew the overlap A·B with a gap at each matched step `--overlap-steps` did not choose.
- `fdl compare --no-overlap` kept the column `overlap A·B`, a dash in every row, and a narrow terminal kept it
  before the fields that hold numbers (Δ overlap₀ left out for a column of dashes).
- Runs analysed with another `--anchor-size` were refused with "got: 500 and 100 anchor points": which run holds
  which, to analyse again, was not said.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import make_store


def _said(stderr: str) -> str:
    """What fdl printed, the lines a terminal's width wrapped joined again."""
    return " ".join(stderr.split())


def _header(stderr: str) -> str:
    """The compare table's header line, without the terminal's styles."""
    return next(line for line in re.sub(r"\x1b\[[0-9;]*m", "", stderr).splitlines() if line.startswith("step A"))


def _backticked(text: str, start: str) -> str:
    """The command in backticks in `text` that begins with `start`."""
    begin = text.index("`" + start) + 1
    return text[begin:text.index("`", begin)]


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr taken for a terminal 60 columns wide (rich reads both variables)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "60")


def test_a_narrow_report_of_several_series_names_commands_that_run(tmp_path: Path, narrow: None) -> None:
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    done = fdl_in_process("report", store, "--layer", "fc2")
    assert done.returncode == 0, done.stderr
    said = _said(done.stderr)
    assert "left out for this terminal's width" in said
    export = _backticked(said, "fdl export")
    assert export == f"fdl export {store} --what trajectories --probe train --layer fc2"
    wide = _backticked(said, "fdl report")
    assert wide.startswith(f"fdl report {store} --probe train --layer fc2 --wide")
    # the command named runs: export writes that series
    ran = fdl_in_process(*shlex.split(export)[1:])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[1].endswith(",train,fc2")


def test_a_narrow_report_of_one_series_names_the_plain_commands(tmp_path: Path, narrow: None) -> None:
    store = make_store(tmp_path / "run.h5")
    said = _said(fdl_in_process("report", store).stderr)
    assert _backticked(said, "fdl export") == f"fdl export {store} --what trajectories"
    assert _backticked(said, "fdl report").startswith(f"fdl report {store} --wide")


def test_a_narrow_compare_names_the_command_with_its_options(tmp_path: Path, narrow: None) -> None:
    a = make_store(tmp_path / "a.h5", layers=("fc1", "fc2"))
    b = make_store(tmp_path / "b.h5", layers=("fc1", "fc2"), seed=1)
    given = ["--layer", "fc1", "--layer-b", "fc2", "--no-overlap", "--threshold", "dlr_tie=0.01"]
    done = fdl_in_process("compare", a, b, *given)
    assert done.returncode == 0, done.stderr
    said = _said(done.stderr)
    assert "left out for this terminal's width" in said
    hint = _backticked(said, "fdl compare")
    assert hint == f"fdl compare {a} {b} {' '.join(given)} 2>&1 | less -S"
    # the command named runs, and compares what this one did
    ran = fdl_in_process(*shlex.split(hint.removesuffix(" 2>&1 | less -S"))[1:])
    assert ran.returncode == 0, ran.stderr
    assert "dlr_tie = 0.01" in _said(ran.stderr)


def test_a_narrow_compare_keeps_overlap_steps_and_leaves_defaults_out(tmp_path: Path, narrow: None) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", seed=1)
    assert _backticked(_said(fdl_in_process("compare", a, b).stderr), "fdl compare") == (
        f"fdl compare {a} {b} 2>&1 | less -S")
    said = _said(fdl_in_process("compare", a, b, "--overlap-steps", "all").stderr)
    assert _backticked(said, "fdl compare") == f"fdl compare {a} {b} --overlap-steps all 2>&1 | less -S"


def test_compare_warns_of_the_layers_compared_not_of_another_the_store_holds(tmp_path: Path) -> None:
    one = make_store(tmp_path / "one.h5")
    two = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"), seed=1)
    done = fdl_in_process("compare", one, two, "--layer", "fc1", "--no-overlap")
    assert done.returncode == 0, done.stderr
    assert "analysed with different options" not in done.stderr
    document = json.loads(fdl_in_process("compare", one, two, "--layer", "fc1", "--no-overlap", "--json").stdout)
    assert document["option_differences"] == []
    # the layers compared differ: that is said, as the layer's name
    done = fdl_in_process("compare", one, two, "--layer", "fc1", "--layer-b", "fc2", "--no-overlap")
    assert done.returncode == 0, done.stderr
    assert "analysed with different options (layer: A fc1 vs B fc2); their field differences" in _said(done.stderr)
    document = json.loads(fdl_in_process("compare", one, two, "--layer", "fc1", "--layer-b", "fc2", "--no-overlap",
                                         "--json").stdout)
    assert document["option_differences"] == [{"option": "layer", "a": "fc1", "b": "fc2"}]


def test_the_compare_figure_draws_the_overlap_where_computed_without_gaps_between(tmp_path: Path) -> None:
    """`--overlap-steps N` (20 by default) computes the overlap A·B at N matched steps: the others were drawn as
    gaps, the line of a run of 25 checkpoints broken in five places, as a field that does not apply is drawn."""
    from fdl_cli import report
    from fdl_cli.figures import compare_figures

    steps = tuple(range(0, 90, 10))
    a = report.load_run(make_store(tmp_path / "a.h5", steps=steps))
    b = report.load_run(make_store(tmp_path / "b.h5", steps=steps, seed=1))
    comparison = report.compare_runs(a, b, overlap_steps=3)
    computed = [c.match.step_a for c in comparison.steps if c.overlap is not None]
    assert computed == [0, 40, 80]
    figures = dict(compare_figures(a, b, comparison))
    line = next(line for line in figures["compare_trajectories"].axes[0].get_lines()
                if line.get_label() == "overlap A·B")
    assert list(line.get_xdata()) == computed
    assert all(value == value for value in line.get_ydata())  # no NaN: no gap


def test_compare_without_the_overlap_has_no_column_of_dashes(tmp_path: Path, narrow: None) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", seed=1)
    done = fdl_in_process("compare", a, b, "--no-overlap")
    assert done.returncode == 0, done.stderr
    header = _header(done.stderr)
    assert "overlap A·B" not in header and "Δ D_LR" in header
    assert "overlap A·B" not in _said(done.stderr)
    # with the overlap, the column stays, and is kept on a narrow terminal
    done = fdl_in_process("compare", a, b)
    header = _header(done.stderr)
    assert header.rstrip().endswith("overlap A·B")


def test_runs_of_other_anchor_counts_are_refused_naming_each_store_s(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import test_report

    a = make_store(tmp_path / "a.h5")
    monkeypatch.setattr(test_report, "N_PROBE", 8)  # the same probe file, its eigenfunctions on 8 anchor points
    b = make_store(tmp_path / "b.h5", seed=1)
    done = fdl_in_process("compare", a, b)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = _said(done.stderr)
    assert f"got: {a} (A) holds them on 16 anchor points, {b} (B) on 8" in said
    assert "--anchor-size" in said and "--no-overlap" in said
