"""Session 19, what a researcher takes away: `fdl export`, `fdl report --format csv|json|markdown`, `--plots`.

Each numbered test failed before its fix; the round-trip test pins the CSV/markdown conventions the README
now writes down (null an empty cell, booleans `True`/`False`, quoted paths)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli.fields import FLOAT_FIELDS, INT_FIELDS, RECORD_FIELDS
from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter
from tests.test_report import N_OUTPUTS, N_PROBE, SCALARS, STEPS, _entry, make_store, run_fdl

# -- 1. a stored array holding NaN or infinity ------------------------------------------------------------------


@pytest.fixture
def non_finite(tmp_path: Path) -> Path:
    """A store whose step-100 eigenvalues and eigenfunctions hold NaN and infinity (fdl writes none: damage)."""
    store = make_store(tmp_path / "run.h5")
    with h5py.File(store, "a") as handle:
        leaf = handle["checkpoints/step_100/train/fc1"]
        for name in ("eigenvalues", "eigenfunctions"):
            values = leaf[name][()]
            values.flat[0], values.flat[1] = np.nan, np.inf
            leaf[name][...] = values
    return store


@pytest.mark.parametrize("what", ["eigenvalues", "eigenfunctions"])
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_of_a_non_finite_stored_array_is_an_error_naming_the_step(non_finite: Path, what: str,
                                                                           fmt: str) -> None:
    """JSON ended in a ValueError traceback ("Out of range float values are not JSON compliant"); CSV exited 0
    with the bare tokens `nan` and `inf`, which every reader takes for numbers."""
    done = run_fdl("export", str(non_finite), "--what", what, "--format", fmt)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{non_finite} is damaged at checkpoint step 100 (train/fc1): its stored {what} are not all finite" \
        in done.stderr
    assert "2 of " in done.stderr and "--redo 100" in done.stderr
    assert "nan" not in done.stdout.lower() and "inf" not in done.stdout.lower()
    # step 0, before the damage, went out as it does for any damaged store met part-way
    assert done.stdout.startswith("[\n  {\n    \"step\": 0" if fmt == "json" else "step,")


def test_export_of_a_non_finite_array_leaves_an_out_file_as_it_was(non_finite: Path, tmp_path: Path) -> None:
    """--out (csv) and --format npy: the file is replaced only by a whole export, so here not at all."""
    for fmt, out in (("csv", tmp_path / "ev.csv"), ("npy", tmp_path / "ev.npz")):
        out.write_text("before\n")
        done = run_fdl("export", str(non_finite), "--what", "eigenvalues", "--format", fmt, "--out", str(out))
        assert done.returncode == 1 and "step 100" in done.stderr, done.stderr
        assert out.read_text() == "before\n"
    # the undamaged steps still export alone
    done = run_fdl("export", str(non_finite), "--what", "eigenvalues", "--steps", "0,200")
    assert done.returncode == 0, done.stderr
    assert {row["step"] for row in csv.DictReader(io.StringIO(done.stdout))} == {"0", "200"}


# -- 2. export --what trajectories of a probe of float 0/1 targets ----------------------------------------------


def test_export_trajectories_says_what_loss_and_r2_measure_for_float_zero_one_targets(tmp_path: Path) -> None:
    """The exported loss and r2 of such a probe compare logits with 0/1; report's table, HTML, compare and classify
    said so, and its --format csv carried `zero_one_targets`, but `fdl export --what trajectories` said nothing."""
    store = make_store(tmp_path / "run.h5")
    plain = run_fdl("export", str(store), "--what", "trajectories")
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    with h5py.File(store, "a") as handle:
        handle["probes/train"].attrs["zero_one_targets"] = np.True_
    for fmt in ("csv", "json"):
        done = run_fdl("export", str(store), "--what", "trajectories", "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith("note: probe 'train' holds float 0/1 targets"), done.stderr
        assert "loss and r2 do not measure its fit" in done.stderr
    assert done.stdout == run_fdl("export", str(store), "--what", "trajectories", "--format", "json").stdout
    # the arrays of the eigen-decomposition need no caveat
    assert run_fdl("export", str(store), "--what", "utility").stderr == ""


# -- 3. the trajectories figure's axes ----------------------------------------------------------------------------


def test_trajectories_figure_labels_its_value_axis_and_names_the_fields() -> None:
    """The y axis had no label, and the legend named no record field (d_lr, cka_init, overlap_init)."""
    from fdl_cli.figures import trajectory_figure

    records = [{"step": 0, "d_lr": 0.9, "cka_init": 1.0, "overlap_init": 1.0},
               {"step": 100, "d_lr": 0.5, "cka_init": 0.8, "overlap_init": 0.7}]
    for figure in (trajectory_figure([("run.h5", records)]),
                   trajectory_figure([("A", records), ("B", records)], cross_overlap=[(0, 1.0), (100, 0.5)])):
        (ax,) = figure.axes
        assert ax.get_ylabel() == "value (each in [0, 1], no unit)" and ax.get_xlabel() == "step"
        labels = ax.get_legend_handles_labels()[1]
        for field in ("d_lr", "cka_init", "overlap_init"):
            assert sum(f"({field})" in label for label in labels) == len(labels) // 3, labels


# -- the conventions of the CSV and markdown a researcher reads back --------------------------------------------

ODD = 'runs/lr 0.1, "wd" |x/step_{}.pt'


def test_csv_and_markdown_read_back_to_the_stored_values_with_odd_paths(tmp_path: Path) -> None:
    """csv module and numpy: ints, floats (repr, exact), null = empty cell, booleans True/False, a path with a
    comma, a quote and a pipe quoted (CSV) or escaped (markdown); JSON true/false/null, no NaN token."""
    store = tmp_path / "odd.h5"
    x = np.linspace(-1.0, 1.0, N_PROBE)
    probe = ProbeInfo(name="train", sha256="a" * 64, n=N_PROBE, task="regression", n_outputs=N_OUTPUTS,
                      anchor_x=x[:, None], anchor_y=np.sin(3 * x)[:, None], zero_one_targets=True)
    with StoreWriter(store, provenance={"model": "m.py:build", "layers": ["fc1"]}, probes=[probe]) as writer:
        for step in STEPS:
            entry = _entry(step, probe="train", layer="fc1", seed=0, scalars=SCALARS.get(step, {}))
            writer.add(CheckpointEntry(step=step, path=ODD.format(step), sha256=f"{step:064x}", series=(entry,)))
    with h5py.File(store) as handle:
        trajectory = handle["trajectories/train/fc1"]
        stored = {name: trajectory[name][()] for name in RECORD_FIELDS if name in trajectory}

    def want(name: str, i: int) -> object:
        value = stored[name][i]
        if isinstance(value, bytes):
            return value.decode() or None
        return None if not math.isfinite(value) else (int(value) if name in INT_FIELDS else float(value))

    as_json = run_fdl("report", str(store), "--format", "json").stdout
    assert "NaN" not in as_json and "Infinity" not in as_json
    rows = list(csv.DictReader(io.StringIO(run_fdl("report", str(store), "--format", "csv").stdout)))
    exported = list(csv.DictReader(io.StringIO(run_fdl("export", str(store), "--what", "trajectories").stdout)))
    for records, booleans in ((json.loads(as_json), (True,)), (rows, ("True",)), (exported, None)):
        assert len(records) == len(STEPS)  # a loop over no records would pass
        for i, record in enumerate(records):
            for name in RECORD_FIELDS:
                value = record[name]
                if isinstance(value, str) and name in INT_FIELDS | FLOAT_FIELDS:
                    value = None if value == "" else (int(value) if name in INT_FIELDS else float(value))
                assert value == want(name, i), (name, i, value)
            assert booleans is None or record["zero_one_targets"] in booleans
    assert rows[0]["path"] == ODD.format(0) and rows[0]["cka_prev"] == "" and rows[0]["accuracy"] == ""
    # numpy reads an array export (numbers alone) with its types; a path's quoted comma is beyond genfromtxt
    table = np.genfromtxt(io.StringIO(run_fdl("export", str(store), "--what", "eigenvalues").stdout),
                          delimiter=",", names=True, dtype=None)
    assert [table.dtype[name].kind for name in ("step", "k", "eigenvalues")] == ["i", "i", "f"]
    with h5py.File(store) as handle:
        assert table["eigenvalues"][table["step"] == 100].tolist() == \
            handle["checkpoints/step_100/train/fc1/eigenvalues"][()].tolist()
    markdown = run_fdl("report", str(store), "--format", "markdown").stdout.splitlines()
    assert all(line.replace("\\|", "").count("|") == len(RECORD_FIELDS) + 2 for line in markdown)
    assert '| runs/lr 0.1, "wd" \\|x/step_0.pt |' in markdown[2] and markdown[2].endswith("| True |")


# -- 4. a line break in a path -----------------------------------------------------------------------------------


def test_markdown_keeps_a_row_a_checkpoint_when_a_path_holds_a_line_break() -> None:
    """`--format markdown` (report and compare) wrote the line break as it is, ending the table's row inside the
    path: the rest of the record became a line outside the table."""
    from fdl_cli.report import records_to_markdown

    records = [{"step": step, "path": f"runs/a\nb\r\nc|d/step_{step}.pt", "d_lr": 0.5} for step in (0, 10)]
    lines = records_to_markdown(records).splitlines()
    assert len(lines) == 2 + len(records)
    assert lines[2].startswith("| 0 | runs/a<br>b<br>c\\|d/step_0.pt | ")
    assert all(line.startswith("| ") and line.endswith(" |") for line in [lines[0], *lines[2:]])


def test_figures_of_two_series_whose_names_clean_alike_are_not_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers `fc:input` and `fc_input` both cleaned to `_p-fc_input`: the second series' figures were written
    over the first's, in silence. Each now takes its place among the series; names that differ stay as they were."""
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from fdl_cli import figures

    drawn: dict[str, Figure] = {}  # a figure a series (run_figures names the series in it)
    monkeypatch.setattr(figures, "series_figures",
                        lambda run, series: [("triptych", "t", drawn.setdefault(series.layer, Figure()))])
    series = [SimpleNamespace(probe="p", layer=layer, label=f"p/{layer}") for layer in ("fc:input", "fc_input", "out")]
    stems = [(stem, figure) for stem, _, figure in figures.run_figures(SimpleNamespace(series=series))]
    assert stems == [("triptych_p-fc_input_1", drawn["fc:input"]), ("triptych_p-fc_input_2", drawn["fc_input"]),
                     ("triptych_p-out", drawn["out"])]
    assert len({stem for stem, _ in stems}) == 3


def test_a_figure_cut_short_while_written_leaves_the_one_before(tmp_path: Path) -> None:
    """`save_figure` wrote the PNG in place: a run stopped while matplotlib wrote it left a cut-off image over
    the last good one. It is now written beside and renamed once whole; a failure leaves the old file and
    no temporary one."""
    from matplotlib.figure import Figure

    from fdl_cli.figures import save_figure

    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    png, svg = save_figure(figure, tmp_path, "trajectories")
    before = png.read_bytes()
    assert before.startswith(b"\x89PNG")

    def cut_short(path: Any, **_: Any) -> None:
        Path(path).write_bytes(b"\x89PNG cut")
        raise KeyboardInterrupt

    figure.savefig = cut_short  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        save_figure(figure, tmp_path, "trajectories")
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectories.png", "trajectories.svg"]
