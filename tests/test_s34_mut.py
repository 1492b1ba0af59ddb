"""Mutation testing of the HTML page's lines (html.run_page), compare's previous checkpoints (`report.previous_differs`,
`previous_line`) and the too-small-probe line (`regimes.small_probe_line`, `report.small_probe_note`): each test here
failed with a mutant (a term dropped, a branch skipped, a bound moved) that every nearby test let pass, and asserts
what the user reads. Stores are written by tests/test_report.py:make_store; nothing is analysed."""

from __future__ import annotations

import html
import json
from pathlib import Path

from pytest import approx

from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, STEPS, make_store
from tests.test_s34_report import LINE
from tests.test_s34_rev import _chained

#: make_store's scalars on a probe of 3 inputs, too small for EF before its layer of 8 units (tests/test_s34_report.py)
SMALL = {step: {**SCALARS[step], "n_probe": 3} for step in STEPS}


def _said(*args: object) -> str:
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return " ".join((done.stdout + done.stderr).split())


# -------------------------------------------------------------------------------------------------- html.py


def test_the_page_gives_the_run_s_warnings_figures_and_its_lines_on_constant_outputs_and_each_output_s_r2(
    tmp_path: Path,
) -> None:
    """`run_page`: the reader's warnings (escaped, in their own paragraph), the figures drawn for the series, the
    line that D_LR 1.0 at constant outputs is no measurement and the R² of each output, as `fdl report` prints
    them (html.py mutants H23–H26: each dropped, the page still passed every test)."""
    from fdl_cli.html import run_page
    from fdl_cli.report import load_run

    scalars = {step: {**SCALARS[step], "output_rank": 0 if step == 200 else 2} for step in STEPS}
    run = load_run(make_store(tmp_path / "run.h5", scalars=scalars))
    run.series[0].records[-1]["r2_outputs"] = [0.25, 0.75]  # as `StoreReader.records(r2_outputs=True)` reads them
    run.warnings.append("step 100 <damaged> & left out")
    page = run_page(run, figures={run.series[0].label: [("D_LR <trajectory>", b"png")]})
    assert '<p class="warning">step 100 &lt;damaged&gt; &amp; left out</p>' in page
    assert '<img alt="D_LR &lt;trajectory&gt;" src="data:image/png;base64,cG5n">' in page
    text = " ".join(html.unescape(page).split())
    assert "<li>D_LR is 1.0 at step 200 by its degenerate rule, not a measurement: the model's outputs are " in text
    assert (
        "<li>r2 per output at step 200: y0 0.2500, y1 0.7500; worst y0 (r2 0.5000 pools them, each output weighted "
        "by its target variance)</li>"
    ) in text


# ---------------------------------------------------------------------------------------- report.py (compare)


def test_compare_says_where_previous_checkpoints_differ_against_none_and_between_steps_matched_apart(
    tmp_path: Path,
) -> None:
    """Run A analysed at 0, 100, 200 against run B at 100, 200 alone: at 100 A's previous checkpoint is 0, B's none
    (its first), and 0 is no matched step: that differs (mutants: a None side looked up among the matched pairs, or
    a null prev_step beside a null cka_prev taken as unrecorded, compared them). Against B at 1, 201: at 200↔201 A's
    is 100, B's 1, and the line names both steps (mutant: "at step 200" alone); of several such steps it gives
    the first as an example (mutant: "e.g." only from 3)."""
    a = make_store(tmp_path / "a.h5", steps=(0, 100, 200), scalars=_chained((0, 100, 200)))
    later = make_store(tmp_path / "later.h5", steps=(100, 200), scalars=_chained((100, 200)))
    apart = make_store(tmp_path / "apart.h5", steps=(1, 201), scalars=_chained((1, 201)))
    assert (
        "cka_prev, overlap_prev: compared at 1 of 2 matched steps; at 1 step the runs' previous checkpoints differ "
        "(at step 100: A's is step 0, B's none)"
    ) in _said("compare", a, later, "--no-overlap")
    data = json.loads(fdl_in_process("compare", a, later, "--no-overlap", "--json").stdout)
    assert data["prev_step_differs"] == [{"step_a": 100, "step_b": 100, "a": 0, "b": None}]
    assert [step["differences"]["cka_prev"] for step in data["steps"]] == [None, approx(0.01)]
    assert "(at steps 200↔201: A's is step 100, B's step 1)" in _said("compare", a, apart, "--no-overlap")
    # every other checkpoint against every one: two steps differ, and the line gives the first "e.g."
    every = make_store(tmp_path / "every.h5", steps=(0, 10, 20, 30, 40), scalars=_chained((0, 10, 20, 30, 40)))
    half = make_store(tmp_path / "half.h5", steps=(0, 20, 40), scalars=_chained((0, 20, 40)))
    assert (
        "cka_prev, overlap_prev: compared at 1 of 3 matched steps; at 2 steps the runs' previous checkpoints differ "
        "(e.g. at step 20: A's is step 10, B's step 0)"
    ) in _said("compare", every, half, "--no-overlap")


def test_compare_with_a_store_that_recorded_no_prev_step_compares_cka_prev_as_before(tmp_path: Path) -> None:
    """A store written before fdl recorded prev_step (null beside its cka_prev, its overlap_prev null too) cannot
    tell its previous checkpoint: cka_prev is compared (mutant: a null overlap_prev alone took the prev_step for
    recorded, and none, so every step "differed")."""
    old = make_store(tmp_path / "old.h5")  # prev_step and overlap_prev null, cka_prev 0.9 after step 0
    new = make_store(tmp_path / "new.h5", scalars=_chained((0, 100, 200)))
    data = json.loads(fdl_in_process("compare", old, new, "--no-overlap", "--json").stdout)
    assert "prev_step_differs" not in data
    assert [step["differences"]["cka_prev"] for step in data["steps"]] == [None, approx(-0.01), approx(-0.02)]


# ------------------------------------------------------------------------------------- the too-small probe


def test_compare_of_two_runs_of_a_too_small_probe_says_it_once_for_both(tmp_path: Path) -> None:
    """Both runs' probes too small for EF, with the same line: one note for runs A and B, not one each."""
    small = make_store(tmp_path / "small.h5", scalars=SMALL)
    said = _said("compare", small, small)
    assert f"note: runs A and B: {LINE}" in said, said
    assert "run A: k95" not in said and "run B: k95" not in said


def test_a_layer_of_c_plus_mf_extra_units_is_called_narrow_not_its_probe_too_small(tmp_path: Path) -> None:
    """p = C + mf_extra = 3 units on a probe of 3 inputs: the layer caps the rank (`narrow_layer`); the probe line
    is for layers wider than that (mutant: `width < limit` gave both)."""
    narrow = {step: {**SCALARS[step], "n_probe": 3, "n_features": 3} for step in STEPS}
    evidence = json.loads(fdl_in_process("classify", make_store(tmp_path / "n.h5", scalars=narrow), "--json").stdout)[
        "evidence"
    ]
    assert evidence["narrow_layer"].startswith("k95_utility ≤ p = 3 ≤ C + mf_extra = 3: the layer is too narrow")
    assert "small_probe" not in evidence


def test_the_records_of_a_store_flag_only_the_series_whose_probe_is_too_small(tmp_path: Path) -> None:
    """`Run.records()` (report --json, --format csv) of two layers on a probe of 3 inputs, one of 3 units (narrow,
    not the probe's): `small_probe` true for the wide layer's rows, false for the narrow one's (mutants: the field
    only where every series is small, or true for each row)."""
    from fdl_cli.report import load_run

    run = load_run(make_store(tmp_path / "two.h5", layers=("fc1", "fc2"), scalars=SMALL))
    for record in run.series[1].records:
        record["n_features"] = 3
    assert [(row["layer"], row["small_probe"]) for row in run.records()] == [("fc1", True)] * 3 + [("fc2", False)] * 3


def test_export_of_arrays_has_no_regime_column_and_no_small_probe_note(tmp_path: Path) -> None:
    """The note is for the regime column of `--what trajectories` (tests/test_s34_report.py); the eigenvalues have
    none, and their export says nothing of it (mutant: the note for every --what)."""
    small = make_store(tmp_path / "small.h5", scalars=SMALL)
    done = fdl_in_process("export", small, "--what", "eigenvalues")
    assert done.returncode == 0, done.stderr
    assert "too small" not in done.stderr and done.stdout.startswith("step,")


def test_a_run_of_no_outputs_gets_no_small_probe_line(tmp_path: Path) -> None:
    """C = 0 (outputs with no utility to count): no C + mf_extra to bound, so no `small_probe` line even on a probe
    of 1 input (mutant: the C ≥ 1 guard dropped said "C + mf_extra = 1: the probe is too small")."""
    none = {step: {**SCALARS[step], "n_probe": 1, "n_outputs": 0} for step in STEPS}
    done = fdl_in_process("classify", make_store(tmp_path / "none.h5", scalars=none), "--json")
    evidence = json.loads(done.stdout)["evidence"]
    assert "the outputs carry no utility to count" in evidence["rule"]
    assert "small_probe" not in evidence and "too small" not in done.stderr
