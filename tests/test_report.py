"""`fdl report`: table, summary, JSON/CSV/markdown, figures and errors, on small stores built here."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fdl_cli import report
from fdl_cli.fields import RECORD_FIELDS
from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process

STEPS = (0, 100, 200)
#: Per-step scalars of the small run: D_LR falls, the kernel moves, the regime goes lazy -> EF -> MF.
SCALARS: dict[int, dict[str, Any]] = {
    0: {"d_lr": 0.9, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 5, "regime": "coefficient",
        "accuracy": None, "loss": 1.25},
    100: {"d_lr": 0.5, "cka_init": 0.8, "overlap_init": 0.7, "k95_utility": 4, "regime": "EF",
          "accuracy": None, "loss": 0.5},
    200: {"d_lr": 0.125, "cka_init": 0.625, "overlap_init": 0.5, "k95_utility": 2, "regime": "MF",
          "accuracy": None, "loss": 0.0625},
}
N_PROBE, RANK, TOP_K, N_OUTPUTS = 16, 6, 4, 2


def _entry(step: int, *, probe: str, layer: str, seed: int, scalars: dict[str, Any]) -> SeriesEntry:
    rng = np.random.default_rng(seed + step)
    eigenvalues = np.sort(rng.uniform(0.01, 1.0, RANK))[::-1] * 10.0 ** (-np.arange(RANK) * (1 + step / 100))
    quality = rng.dirichlet(np.ones(RANK)) * 0.9
    utility = rng.dirichlet(np.ones(RANK))
    basis, _ = np.linalg.qr(rng.normal(size=(N_PROBE, TOP_K)))
    full = {
        "n_probe": N_PROBE, "n_features": 8, "n_outputs": N_OUTPUTS, "rank": RANK, "eff_dim": 2.5 + step / 100,
        "pi_hat_C": float(utility[:N_OUTPUTS].sum()), "pi_star_C": float(quality[:N_OUTPUTS].sum()),
        "cka_prev": None if step == 0 else 0.9, "param_norm": 1234.5 + step, "r2": 0.5,
        **scalars,
    }
    return SeriesEntry(
        probe=probe, layer=layer, scalars=full, eigenvalues=eigenvalues,
        eigenvectors=rng.normal(size=(8, TOP_K)), eigenfunctions=basis * np.sqrt(N_PROBE),
        utility=utility, quality=quality,
    )


def make_store(
    path: Path, *, steps: Sequence[int] = STEPS, probe_sha: str = "a" * 64, seed: int = 0,
    layers: Sequence[str] = ("fc1",), scalars: dict[int, dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """A small regression run (1-D probe, C = 2) with known scalars, written by the store writer; `options`: the
    recorded `fdl analyze` options (none recorded by default)."""
    x = np.linspace(-1.0, 1.0, N_PROBE)
    probe = ProbeInfo(name="train", sha256=probe_sha, n=N_PROBE, task="regression", n_outputs=N_OUTPUTS,
                      anchor_x=x[:, None], anchor_y=np.sin(3 * x)[:, None])
    provenance = {"model": "model.py:build", "layers": list(layers), "host": "testhost", "fdl_version": "0.1.0",
                  **({"options": options} if options is not None else {})}
    table = scalars or SCALARS
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step in steps:
            series = tuple(
                _entry(step, probe="train", layer=layer, seed=seed + i, scalars=table.get(step, {}))
                for i, layer in enumerate(layers)
            )
            writer.add(CheckpointEntry(step=step, path=f"ckpt/step_{step}.pt", sha256=f"{step:064x}", series=series))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "run.h5")


def run_fdl(*args: str) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS`, in this process: the tests that use it read its exit status, output and files alone."""
    return fdl_in_process(*args)


def render(renderable: Any, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ tables

GOLDEN_TABLE = """\
step     D_LR     CKA₀   overlap₀   k95 Π̂     Π̂(C)   D_ρ       r2     loss   regime
────────────────────────────────────────────────────────────────────────────────────────
   0   0.9000   1.0000     1.0000       5   {p0}   2.5   0.5000   1.2500   coefficient
 100   0.5000   0.8000     0.7000       4   {p1}   3.5   0.5000   0.5000   EF
 200   0.1250   0.6250     0.5000       2   {p2}   4.5   0.5000   0.0625   MF
"""
# (the loss column's decimals one above the other: `column_texts`, 4 of them for 0.0625)
# (a regression probe: r2 in the place of the accuracy, which a regression run does not have)


def test_table_golden_and_fits_100_columns(store: Path) -> None:
    run = report.load_run(store)
    records = run.series[0].records
    text = render(report.render_table(records))
    pis = {f"p{i}": f"{r['pi_hat_C']:.4f}" for i, r in enumerate(records)}
    assert [line.rstrip() for line in text.splitlines()] == [
        line.rstrip() for line in GOLDEN_TABLE.format(**pis).splitlines()
    ]
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 100


def test_the_narrow_table_shows_accuracy_for_classes_and_r2_for_regression() -> None:
    """A regression run's table had an 'acc' column of dashes and no R² (a review's walkthrough)."""
    classes = [{"step": 0, "accuracy": 0.5, "r2": None}, {"step": 1, "accuracy": 0.75, "r2": None}]
    regression = [{"step": 0, "accuracy": None, "r2": 0.25}, {"step": 1, "accuracy": None, "r2": None}]
    assert "accuracy" in report.table_fields(wide=False, records=classes)
    assert "r2" not in report.table_fields(wide=False, records=classes)
    fields = report.table_fields(wide=False, records=regression)
    assert "r2" in fields and "accuracy" not in fields
    assert fields.index("r2") == report.TABLE_FIELDS.index("accuracy")
    assert "accuracy" in report.table_fields(wide=False)  # no records: the classification columns


def test_a_narrow_terminal_gets_fewer_columns_not_a_cut_regime(store: Path) -> None:
    """At 80 columns the 91-column table was cut at the edge, 'regime' first (a review's walkthrough):
    it now leaves out the least needed columns and names them."""
    run = report.load_run(store)
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    report.print_run(console, run)
    text = out.getvalue()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    assert "regime" in header and "loss" not in header and "…" not in text
    assert all(len(line) <= 80 for line in lines if not line.startswith(("columns:", "provenance", "(left")))
    assert "(left out for this terminal's width: loss" in " ".join(text.split())
    assert any(line.rstrip().endswith("coefficient") for line in lines)
    wide_out = io.StringIO()
    report.print_run(Console(file=wide_out, width=120, force_terminal=True, color_system=None), run)
    assert "left out" not in wide_out.getvalue() and "loss" in wide_out.getvalue()


def test_wide_table_shows_every_field(store: Path) -> None:
    records = report.load_run(store).series[0].records
    header = render(report.render_table(records, wide=True), width=1000).splitlines()[0]
    for name in ("n_probe", "param_dist_init", "sha256", "r2", "nc1"):
        assert name in header
    assert "1434" in render(report.render_table(records, wide=True), width=1000)  # param_norm 1434.5, 4 sig. digits


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [("d_lr", 0.00871234, "0.0087"), ("loss", 123456.0, "1.235e+05"), ("rank", 12, "12"),
     ("sha256", "f" * 64, "f" * 12), ("accuracy", None, "—"), ("regime", "MF", "MF")],
)
def test_format_value(name: str, value: Any, shown: str) -> None:
    assert report.format_value(name, value) == shown


# ----------------------------------------------------------------------------------------- summary


def test_summary_regimes_and_largest_changes(store: Path) -> None:
    lines = report.summary_lines(report.summarize(report.load_run(store).series[0].records))
    assert lines[0] == "3 checkpoints, steps 0–200"
    assert lines[1] == "regime: coefficient (0) → EF (100) → MF (200)"
    assert lines[2] == "D_LR changed most between steps 0 and 100: 0.9000 → 0.5000"
    assert lines[3] == "CKA₀ changed most between steps 0 and 100: 1.0000 → 0.8000"
    assert lines[4] == "k95 Π̂ changed most between steps 100 and 200: 4 → 2"
    assert lines[5].startswith("final: D_LR 0.1250, CKA₀ 0.6250, k95 Π̂ 2, regime MF")


def test_summary_of_a_field_that_did_not_change_does_not_say_changed() -> None:
    """A frozen network's CKA₀ read "changed most between steps 0 and 25: 1.0000 → 1.0000"."""
    records = [{"step": s, "cka_init": c, "k95_utility": 9, "d_lr": d}
               for s, c, d in [(0, 1.0, 0.6), (25, 1.0 - 3e-7, 0.5), (50, 1.0 - 1e-7, 0.4)]]
    lines = report.summary_lines(report.summarize(records))
    assert "CKA₀ stayed 1.0000 to the digits shown (its largest change, 3.0e-07, between steps 0 and 25)" in lines
    assert "k95 Π̂ stayed 9 at every checkpoint" in lines
    assert "D_LR changed most between steps 0 and 25: 0.6000 → 0.5000" in lines


def test_summary_of_a_field_that_drifted_in_small_steps_does_not_say_stayed() -> None:
    """A CKA₀ that fell from 1.0000 to 0.9990 by steps of 1e-5 (many checkpoints of a slow run) "stayed
    1.0000 to the digits shown": its largest step between two checkpoints is below the digits, its
    range is not."""
    records = [{"step": 10 * i, "cka_init": 1.0 - 1e-5 * i} for i in range(101)]
    records[3]["cka_init"] = 1.0 - 1e-5 * 3 - 1e-6  # the largest step, 1.1e-5, within 1.0000
    lines = report.summary_lines(report.summarize(records))
    assert not any("stayed" in line for line in lines), lines
    assert "CKA₀ ranged 0.9990 – 1.0000 in steps below the digits shown (the largest, 1.1e-05, between steps 20 " \
           "and 30)" in lines


def test_regime_spans_merge_equal_neighbours() -> None:
    records = [{"step": s, "regime": r} for s, r in [(0, "EF"), (1, "EF"), (2, None), (3, "MF"), (4, "MF")]]
    assert report.regime_spans(records) == [report.RegimeSpan("EF", 0, 1), report.RegimeSpan("MF", 3, 4)]


def test_largest_change_skips_nulls() -> None:
    records = [{"step": 0, "d_lr": 0.5}, {"step": 1, "d_lr": None}, {"step": 2, "d_lr": 0.1}, {"step": 3, "d_lr": 0.0}]
    change = report.largest_change(records, "d_lr")
    assert change is not None and (change.step_before, change.step_after) == (0, 2)
    assert change.delta == pytest.approx(-0.4)


# ------------------------------------------------------------------------------- machine formats


def test_json_and_csv_parse_back_to_the_stored_numbers(store: Path) -> None:
    expected = report.load_run(store).records()
    as_json = run_fdl("report", str(store), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)
    assert parsed == expected
    assert list(parsed[0]) == list(RECORD_FIELDS)
    assert parsed[2]["d_lr"] == 0.125 and parsed[0]["accuracy"] is None and parsed[2]["regime"] == "MF"

    as_csv = run_fdl("report", str(store), "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0]) == list(RECORD_FIELDS)
    for row, record in zip(rows, expected, strict=True):
        for name in RECORD_FIELDS:
            value = record[name]
            if value is None:
                assert row[name] == ""
            elif isinstance(value, float):
                assert float(row[name]) == value  # repr round-trips exactly
            else:
                assert row[name] == str(value)


def test_markdown_has_every_field(store: Path) -> None:
    text = report.records_to_markdown(report.load_run(store).records())
    lines = text.splitlines()
    assert lines[0] == "| " + " | ".join(RECORD_FIELDS) + " |"
    assert len(lines) == 2 + len(STEPS)
    assert "| 200 | ckpt/step_200.pt |" in lines[-1]


def test_machine_output_is_alone_on_stdout(store: Path) -> None:
    result = run_fdl("report", str(store), "--format", "json")
    json.loads(result.stdout)  # nothing but the document
    table = run_fdl("report", str(store))
    assert table.returncode == 0 and table.stdout == ""
    assert "regime: coefficient (0) → EF (100) → MF (200)" in table.stderr
    assert "coefficient" in table.stderr and "D_LR" in table.stderr


def test_several_series_carry_probe_and_layer(tmp_path: Path) -> None:
    path = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))
    records = report.load_run(path).records()
    assert len(records) == 2 * len(STEPS)
    assert {(r["probe"], r["layer"]) for r in records} == {("train", "fc1"), ("train", "fc2")}
    assert list(json.loads(report.records_to_json(records))[0])[-2:] == ["probe", "layer"]
    one = report.load_run(path, layer="fc2")
    assert [s.layer for s in one.series] == ["fc2"]
    with pytest.raises(report.StoreError, match="fc9"):
        report.load_run(path, layer="fc9")


# ------------------------------------------------------------------------------------------ errors


def test_missing_and_foreign_files_exit_1_without_traceback(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.h5"
    foreign.write_text("hello")
    for target in (tmp_path / "missing.h5", foreign):
        result = run_fdl("report", str(target))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert str(target) in result.stderr and "error:" in result.stderr
        assert result.stdout == ""


def test_report_imports_no_torch(store: Path) -> None:
    code = (
        "import sys; from fdl_cli.cli import main\n"
        f"sys.argv = ['fdl', 'report', {str(store)!r}, '--format', 'json']\n"
        "status = 0\n"
        "try:\n    status = main()\nexcept SystemExit as exc:\n    status = exc.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # a report that failed early (before it would import anything) passed as well: the report is printed
    assert [record["step"] for record in json.loads(result.stdout)] == [0, 100, 200]


# ----------------------------------------------------------------------------------------- figures


def test_plots_are_valid_png_and_svg(store: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = run_fdl("report", str(store), "--plots", str(plots))
    assert result.returncode == 0, result.stderr
    stems = {"triptych", "trajectories", "spectrum", "eigenfunctions"}
    # and the list of them that the next report into the folder reads (FIGURE_LIST: its stale figures removed)
    assert {p.name for p in plots.iterdir()} == {f"{s}.{ext}" for s in stems for ext in ("png", "svg")} | {
        ".fdl-figures.json"}
    for stem in stems:
        png = (plots / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        svg = (plots / f"{stem}.svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>")
        import xml.etree.ElementTree as ET

        ET.fromstring(svg)  # well-formed XML


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_figure_names_of_several_series_are_portable(tmp_path: Path) -> None:
    """With several series the figures were named spectrum_train-head:input.png: ':' is refused by
    Windows and shown as '/' by macOS's Finder."""
    store = make_store(tmp_path / "two.h5", layers=("head:input", "blocks.0 out"))
    plots = tmp_path / "plots"
    result = run_fdl("report", str(store), "--plots", str(plots), "--layer", "head:input")
    assert result.returncode == 0, result.stderr
    from fdl_cli import report as rep
    from fdl_cli.figures import write_run_figures

    names = {path.name for path in write_run_figures(rep.load_run(store), tmp_path / "all")}
    assert "spectrum_train-head_input.png" in names and "spectrum_train-blocks.0_out.svg" in names
    assert all(re.fullmatch(r"[\w.-]+", name) for name in names), names


def test_select_steps_keeps_first_and_last() -> None:
    from fdl_cli.figures import select_steps

    assert select_steps(list(range(0, 1000, 10)), 5) == [0, 250, 500, 740, 990]
    assert select_steps([3, 7], 5) == [3, 7]


def test_the_table_names_the_field_behind_each_short_header(tmp_path: Path) -> None:
    """The table's headers (D_ρ, CKA₀, k95 Π̂, acc) had no key to the field names of --format json/csv,
    `fdl export` and docs/measures.md, and loss did not say what it measures."""
    from fdl_cli.report import HEADERS, TABLE_FIELDS, column_key, table_fields

    key = column_key(TABLE_FIELDS)
    for name in TABLE_FIELDS:
        if name in HEADERS:
            assert f"{HEADERS[name]} = {name}" in key
    assert "loss = mean squared error" in key
    assert "CKA₋₁ = cka_prev" in column_key(table_fields(wide=True))
    store = make_store(tmp_path / "run.h5")
    done = run_fdl("report", str(store))
    assert done.returncode == 0, done.stderr
    assert "columns: D_LR = d_lr, CKA₀ = cka_init" in done.stdout + done.stderr
