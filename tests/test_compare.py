"""`fdl compare` / `fdl diff`: alignment by step, differences, cross-run overlap, probe check, verdict."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from fdl_cli import report
from fdl_cli.errors import StoreError
from tests.test_report import N_OUTPUTS, SCALARS, make_store, run_fdl


def test_align_steps_exact_then_mutual_nearest() -> None:
    matches = report.align_steps([0, 100, 200, 300], [0, 110, 190, 1000])
    assert [(m.step_a, m.step_b, m.exact) for m in matches] == [
        (0, 0, True), (100, 110, False), (200, 190, False),
    ]  # 300's nearest (190) is taken by 200, and 1000's nearest (300) is not mutual: both left out
    # 150 of B is nearest to both 100 and 200 of A: paired once, with the nearer (ties -> lower).
    assert [(m.step_a, m.step_b) for m in report.align_steps([100, 200], [150])] == [(100, 150)]
    assert report.align_steps([], [1, 2]) == []


def test_run_against_itself_has_zero_differences_and_overlap_1(tmp_path: Path) -> None:
    path = make_store(tmp_path / "a.h5")
    result = run_fdl("compare", str(path), str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [s["step_a"] for s in data["steps"]] == [0, 100, 200]
    for step in data["steps"]:
        assert step["exact"] is True
        assert step["overlap"] == pytest.approx(1.0, abs=1e-9)
        numeric = [v for v in step["differences"].values() if v is not None]
        assert numeric and all(v == 0 for v in numeric)
        assert step["differences"]["regime"] is None  # same text
    assert data["verdict"] == "The runs are equally rich (same D_LR) at every matched step."
    # the one note: that B is A (tests/test_s28_polish.py)
    assert data["notes"] == [f"A and B are the same store and series ({path}): every difference is zero (was another "
                             "run meant as B?)"]


def test_richer_run_and_from_when(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    lazier = {step: {**values, "d_lr": [0.9, 0.6, 0.7][i]} for i, (step, values) in enumerate(SCALARS.items())}
    b = make_store(tmp_path / "b.h5", steps=(0, 105, 200), seed=7, scalars={0: lazier[0], 105: lazier[100],
                                                                            200: lazier[200]})
    comparison = report.compare_runs(report.load_run(a), report.load_run(b))
    assert [(c.match.step_a, c.match.step_b) for c in comparison.steps] == [(0, 0), (100, 105), (200, 200)]
    assert comparison.notes[0] == "1 step matched to the nearest step of the other run: 100↔105"
    assert comparison.verdict.startswith("Run A is richer than run B (lower D_LR) from step 100 of A and 105 of B on")
    assert comparison.steps[2].differences["d_lr"] == pytest.approx(0.7 - 0.125)
    assert comparison.steps[1].differences["regime"] is None
    overlaps = [c.overlap for c in comparison.steps]
    assert all(o is not None and 0.0 <= o < 0.999 for o in overlaps)  # different random eigenfunctions

    swapped = report.compare_runs(report.load_run(b), report.load_run(a))
    # the step of each run: "from step 105 on" named A's step for the richer run B, which has none
    assert swapped.verdict.startswith("Run B is richer than run A (lower D_LR) from step 105 of A and 100 of B on")


def test_the_verdict_gives_the_gap_and_says_when_a_run_never_moved(tmp_path: Path) -> None:
    """`compare lazy.h5 rich.h5` said "Run B is richer" on a 6 % D_LR gap between a frozen backbone and
    a trained net, without a word that run A's features never moved (a review's walkthrough)."""
    rich = make_store(tmp_path / "rich.h5")
    lazy_scalars = {step: {**values, "d_lr": [0.9, 0.6, 0.133][i], "cka_init": [1.0, 0.9995, 0.999][i],
                           "overlap_init": [1.0, 0.999, 0.998][i], "regime": "coefficient"}
                    for i, (step, values) in enumerate(SCALARS.items())}
    lazy = make_store(tmp_path / "lazy.h5", seed=3, scalars=lazy_scalars)
    verdict = report.compare_runs(report.load_run(lazy), report.load_run(rich), overlap=False).verdict
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 100 on")
    assert "D_LR A 0.1330, B 0.1250, 6% lower)" in verdict
    assert ("Run A's features did not move (at every matched step CKA to its reference ≥ 0.99, lowest 0.9990, and "
            "top-C overlap ≥ 0.95, lowest 0.9980): its D_LR is that of its reference checkpoint's features") in verdict
    assert run_fdl("classify", str(lazy), "--expect", "coefficient").returncode == 0  # as the note says
    assert "Run B's features" not in verdict
    printed = run_fdl("compare", str(lazy), str(rich), "--no-overlap")
    assert printed.returncode == 0 and "Run A's features did not move" in " ".join(printed.stderr.split())


def test_a_run_whose_eigenspace_rotated_under_a_static_cka_is_not_called_lazy(tmp_path: Path) -> None:
    """The note read CKA alone: a run with cka_init >= 0.99 whose top-C overlap fell to 0.5 was called
    "a lazy (coefficient) run; `fdl classify` says so", while classify calls it undetermined (a conflict)."""
    rich = make_store(tmp_path / "rich.h5")
    rotated = {step: {**values, "d_lr": [0.9, 0.6, 0.133][i], "cka_init": [1.0, 0.9995, 0.999][i],
                      "overlap_init": [1.0, 0.7, 0.5][i]} for i, (step, values) in enumerate(SCALARS.items())}
    conflict = make_store(tmp_path / "conflict.h5", seed=3, scalars=rotated)
    verdict = report.compare_runs(report.load_run(conflict), report.load_run(rich), overlap=False).verdict
    assert verdict.startswith("Run B is richer than run A")
    assert "did not move" not in verdict
    classified = run_fdl("classify", str(conflict), "--json")
    assert json.loads(classified.stdout)["regime"] == "undetermined"


def test_the_verdict_quotes_the_last_step_that_has_both_d_lr(tmp_path: Path) -> None:
    """The verdict quoted the last matched step even when its D_LR was null ("D_LR A —", no gap)."""
    a = make_store(tmp_path / "a.h5")
    lazier = {step: {**values, "d_lr": [0.9, 0.6, None][i]} for i, (step, values) in enumerate(SCALARS.items())}
    b = make_store(tmp_path / "b.h5", seed=7, scalars=lazier)
    verdict = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).verdict
    assert verdict.startswith("Run A is richer than run B (lower D_LR) from step 100 on")
    assert "(step 100, the last with both D_LR: D_LR A 0.5000, B 0.6000, 17% lower)" in verdict


def test_mismatched_probes_are_refused(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", probe_sha="b" * 64)
    with pytest.raises(StoreError, match="not analysed on the same probe"):
        report.compare_runs(report.load_run(a), report.load_run(b))
    result = run_fdl("diff", str(a), str(b))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "same probe" in result.stderr and "--no-overlap" in result.stderr
    fields_only = run_fdl("compare", str(a), str(b), "--no-overlap", "--format", "json")
    assert fields_only.returncode == 0, fields_only.stderr
    steps = json.loads(fields_only.stdout)["steps"]
    assert [step["step_a"] for step in steps] == [0, 100, 200]  # all() over no steps would pass
    assert all(step["overlap"] is None for step in steps)


def test_table_output_on_stderr_and_overlay_figures(tmp_path: Path) -> None:
    path = make_store(tmp_path / "a.h5")
    plots = tmp_path / "plots"
    result = run_fdl("compare", str(path), str(path), "--plots", str(plots))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "no field differs at any matched step" in result.stderr
    assert "overlap A·B (top C): min 1.0000" in result.stderr
    for stem in ("compare_trajectories", "compare_k95_utility"):
        assert (plots / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (plots / f"{stem}.svg").read_text()


def test_csv_rows_carry_deltas(tmp_path: Path) -> None:
    path = make_store(tmp_path / "a.h5")
    text = report.comparison_to_text(report.compare_runs(report.load_run(path), report.load_run(path)), "csv")
    header, *rows = text.splitlines()
    assert header.startswith("step_a,step_b,exact,overlap,overlap_k,overlap_computed,delta_n_probe,")
    assert rows[0].split(",")[4] == "2"  # the k of the overlap: C = 2
    assert len(rows) == 3 and rows[0].startswith("0,0,True,")
    # The runs' own values beside their differences (only deltas: no A/B table for a paper), and no
    # difference of prev_step, which is no difference between the runs.
    lazy_scalars = {step: {**values, "d_lr": [0.9, 0.6, 0.133][i]} for i, (step, values) in enumerate(SCALARS.items())}
    other = make_store(tmp_path / "b.h5", seed=3, scalars=lazy_scalars)
    text = report.comparison_to_text(report.compare_runs(report.load_run(path), report.load_run(other)), "csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(float(r["a_d_lr"]), float(r["b_d_lr"])) for r in table] == [(0.9, 0.9), (0.5, 0.6), (0.125, 0.133)]
    assert float(table[2]["delta_d_lr"]) == pytest.approx(0.133 - 0.125)
    assert "delta_prev_step" not in table[0] and "a_prev_step" not in table[0]


def test_overlap_at_a_spread_of_matched_steps(tmp_path: Path) -> None:
    assert report.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert report.spread([1, 2], 5) == [1, 2] and report.spread([1, 2, 3], None) == [1, 2, 3]
    path = make_store(tmp_path / "a.h5")
    with report.opened_run(path) as run:
        comparison = report.compare_runs(run, run, overlap_steps=2)
    assert [c.overlap is not None for c in comparison.steps] == [True, False, True]
    assert "computed at 2 of 3 matched steps" in comparison.notes[-1]


def test_difference_lines_count_steps_in_words() -> None:
    """'differs at 1 steps' read badly in the table's summary."""
    from types import SimpleNamespace

    steps = [SimpleNamespace(differences={"d_lr": 0.25, "regime": "MF → EF"}),
             SimpleNamespace(differences={"d_lr": -0.5})]
    lines = report.difference_lines(SimpleNamespace(steps=steps))  # type: ignore[arg-type]
    assert "d_lr: differs at 2 steps, largest B − A −0.5000" in lines
    assert "regime: differs at 1 step (e.g. MF → EF)" in lines


def test_runs_of_different_numbers_of_outputs_are_compared_with_a_note(tmp_path: Path) -> None:
    """A 10-class classifier against a 1-output regression: D_LR's √r_Ŷ, Π̂(C) and k95 against C are each
    relative to the run's own task. compare said "Run A is richer … 78% lower" with no word of it."""
    a = make_store(tmp_path / "a.h5")
    one = {step: {**values, "n_outputs": 1} for step, values in SCALARS.items()}
    b = make_store(tmp_path / "b.h5", seed=7, scalars=one)
    comparison = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False)
    c_a = N_OUTPUTS
    assert (f"the runs have different numbers of outputs C (A {c_a}, B 1): D_LR (through the output rank r_Ŷ), "
            "Π̂(C), k95 against C and the regimes are each relative to its own task") in " ".join(comparison.notes)
    same = report.compare_runs(report.load_run(a), report.load_run(a), overlap=False)
    assert not any("numbers of outputs" in note for note in same.notes)


def test_json_flag_is_format_json_for_report_and_compare(tmp_path: Path) -> None:
    """analyze, inspect and classify take --json; report and compare took only --format json ("No such
    option: --json")."""
    path = make_store(tmp_path / "a.h5")
    for command in (("report", str(path)), ("compare", str(path), str(path))):
        flag, spelled = run_fdl(*command, "--json"), run_fdl(*command, "--format", "json")
        assert flag.returncode == 0 and spelled.returncode == 0, flag.stderr
        assert json.loads(flag.stdout) == json.loads(spelled.stdout)
        both = run_fdl(*command, "--json", "--format", "csv")
        assert both.returncode == 2 and "--json and --format csv ask for two formats" in both.stderr


def test_csv_and_markdown_comparisons_print_their_notes_on_stderr(tmp_path: Path) -> None:
    """`--format csv|markdown` printed the notes nowhere (JSON holds them): an empty overlap column, or runs of
    different numbers of outputs, came without a word."""
    a = make_store(tmp_path / "a.h5")
    one = {step: {**values, "n_outputs": 1} for step, values in SCALARS.items()}
    b = make_store(tmp_path / "b.h5", seed=7, scalars=one)
    for fmt in ("csv", "markdown"):
        done = run_fdl("compare", str(a), str(b), "--format", fmt, "--no-overlap")
        assert done.returncode == 0, done.stderr
        assert "note: the runs have different numbers of outputs C" in done.stderr
        assert "note:" not in done.stdout
    assert "note:" not in run_fdl("compare", str(a), str(b), "--json", "--no-overlap").stderr
