"""Session 23, a visual review of the figures, as a researcher putting them in a paper would judge them.

1. The step axes (trajectories, spectrum, a compare's figures) were linear whatever the steps: the bundled sample run
   (checkpoints 0, 5, 10, ..., 1000) crowded its first ten checkpoints, where the features move most, into the
   first twentieth of the axis. Where the steps span more than two decades the axis is logarithmic (symlog with
   step 0), its ticks labelled as steps.
2. A null value (a field that does not apply at a checkpoint) was dropped and the line drawn across it, as if
   measured there; the x axis ended at the last non-null step. Nulls are gaps now, and the axis covers every step.
   A run whose values are all null drew an empty frame over 0 … 1; it says so, at its step.
3. The legends of the triptych and of the eigenfunctions lay inside a panel, over its curves; they are beside the
   panels now, as the trajectories' is. The triptych's panels had no y label.
4. The compare's k95 axis ticked 1.975, 2.5, ... for a count of eigenfunctions; whole numbers now, from 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from fdl_cli.figures import (  # noqa: E402
    Curves,
    eigenfunction_figure,
    spectrum_heatmap_figure,
    trajectory_figure,
    triptych_figure,
)
from tests.test_report import make_store  # noqa: E402

#: The bundled sample run's steps (sample_checkpoints/).
SAMPLE_STEPS = [0, 5, 10, 15, 20, 30, 40, 50, 65, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500, 600,
                700, 800, 1000]


def _records(steps: list[int], **nulls: list[int]) -> list[dict[str, Any]]:
    """Records falling from 1 over `steps`; a field is None at the steps `nulls` lists for it."""
    out = []
    for i, step in enumerate(steps):
        value = 1.0 - i / (2 * len(steps))
        out.append({"step": step, **{name: None if step in nulls.get(name, ()) else value
                                     for name in ("d_lr", "cka_init", "overlap_init")}})
    return out


def _tick_labels(ax: Any) -> list[str]:
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]


# -- 1. log step axes -----------------------------------------------------------------------------------------------


def test_a_run_whose_steps_span_decades_is_drawn_on_a_log_step_axis() -> None:
    (ax,) = trajectory_figure([("run.h5", _records(SAMPLE_STEPS))]).axes
    assert ax.get_xscale() == "symlog"  # step 0 drawn, linear up to step 5
    assert ax.xaxis.get_transform().linthresh == 5.0
    labels = _tick_labels(ax)
    assert labels == ["0", "10", "100", "1000"]  # as steps; no label "1" where no checkpoint is below 5
    # without step 0: a plain log axis; powers of ten from 10 000 as 10^n
    (ax,) = trajectory_figure([("run.h5", _records([10, 100, 1000, 10_000, 100_000]))]).axes
    assert ax.get_xscale() == "log"
    assert _tick_labels(ax) == ["10", "100", "1000", r"$10^{4}$", r"$10^{5}$"]
    # a run of even steps, or of two decades at most, keeps the linear axis
    for steps in ([0, 100, 200, 300], [0, 10, 100, 1000], [500]):
        assert trajectory_figure([("run.h5", _records(steps))]).axes[0].get_xscale() == "linear", steps


def test_the_spectrum_heat_map_shares_the_log_step_axis_with_geometric_columns() -> None:
    from matplotlib.collections import QuadMesh

    steps = [10, 100, 1000, 10_000]
    figure = spectrum_heatmap_figure(steps, [10.0 ** -np.arange(6.0)] * len(steps))
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    mesh = next(artist for artist in ax.get_children() if isinstance(artist, QuadMesh))
    # each column reaches halfway to its neighbours as drawn: the geometric middle on a log axis
    np.testing.assert_allclose(mesh.get_coordinates()[0, :, 0], [10, 10**1.5, 10**2.5, 10**3.5, 10_000])
    sample = spectrum_heatmap_figure(SAMPLE_STEPS, [10.0 ** -np.arange(6.0)] * len(SAMPLE_STEPS)).axes[0]
    assert sample.get_xscale() == "symlog" and _tick_labels(sample) == ["0", "10", "100", "1000"]
    np.testing.assert_array_equal(sample.xaxis.get_minor_locator().locs, SAMPLE_STEPS)  # still marked


def test_compare_figures_use_the_log_step_axis_and_whole_k95_ticks(tmp_path: Path) -> None:
    from fdl_cli import report as rep
    from fdl_cli.figures import compare_figures

    steps = [0, 10, 100, 1000, 10_000]
    scalars = {step: {"d_lr": 0.5, "cka_init": 0.9, "overlap_init": 0.8, "k95_utility": 2 + (step > 100)}
               for step in steps}
    a = rep.load_run(make_store(tmp_path / "a.h5", steps=steps, scalars=scalars))
    b = rep.load_run(make_store(tmp_path / "b.h5", steps=steps, scalars=scalars, seed=1))
    drawn = dict(compare_figures(a, b, rep.compare_runs(a, b)))
    for figure in drawn.values():
        assert figure.axes[0].get_xscale() == "symlog"
    ax = drawn["compare_k95_utility"].axes[0]
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    ticks = [tick for tick in ax.get_yticks() if low <= tick <= high]
    assert low == 0 and high > 3 and all(float(tick).is_integer() for tick in ticks), ticks
    assert "eigenfunctions" in ax.get_ylabel()


# -- 2. nulls -------------------------------------------------------------------------------------------------------


def test_a_null_value_is_a_gap_and_the_axis_covers_every_step() -> None:
    steps = [0, 100, 200, 300, 400]
    (ax,) = trajectory_figure([("run.h5", _records(steps, d_lr=[200, 400]))]).axes
    d_lr = next(line for line in ax.get_lines() if "(d_lr)" in line.get_label())
    np.testing.assert_array_equal(d_lr.get_xdata(), steps)  # was [0, 100, 300]: the line ran across step 200
    assert np.isnan(d_lr.get_ydata()[2]) and np.isnan(d_lr.get_ydata()[4])
    low, high = ax.get_xlim()
    assert low < 0 and high > 400  # step 400, null but a checkpoint of the run, inside the axis


def test_a_value_between_two_nulls_keeps_its_marker_among_many_points() -> None:
    steps = list(range(0, 4000, 10))  # 400 points: markers every 25th
    records = _records(steps, d_lr=[10, 30])
    (ax,) = trajectory_figure([("run.h5", records)]).axes
    d_lr = next(line for line in ax.get_lines() if "(d_lr)" in line.get_label())
    every = d_lr.get_markevery()
    assert 2 in list(every)  # step 20, alone between two nulls: no line shows it, its marker does
    assert len(list(every)) < 40


def test_a_run_of_null_values_says_so_at_its_step() -> None:
    (ax,) = trajectory_figure([("run.h5", _records([500], d_lr=[500], cka_init=[500], overlap_init=[500]))]).axes
    texts = [t.get_text() for t in ax.findobj(Text)]
    assert any("no D_LR, CKA or overlap" in text for text in texts)
    low, high = ax.get_xlim()
    assert low < 500 < high and list(ax.get_xticks()) == [500]  # was the empty range 0 … 1


# -- 3. legends beside the panels -----------------------------------------------------------------------------------


def _assert_legend_off_every_panel(figure: Any) -> None:
    figure.canvas.draw()
    assert len(figure.legends) == 1 and all(ax.get_legend() is None for ax in figure.axes)
    box = figure.legends[0].get_window_extent()
    for ax in figure.axes:
        assert not box.overlaps(ax.get_window_extent())
    assert figure.bbox.contains(box.x1 - 1, box.y0 + 1)


def test_the_triptych_legend_lies_beside_the_panels_and_each_panel_says_its_y() -> None:
    curves = [Curves(step=step, eigenvalues=np.logspace(0, -6, 20), quality=np.full(20, 0.04),
                     utility=np.full(20, 0.05)) for step in (0, 100, 1000)]
    figure = triptych_figure(curves, n_outputs=3)
    _assert_legend_off_every_panel(figure)
    assert "k = C = 3" in [t.get_text() for t in figure.legends[0].get_texts()]
    assert [bool(ax.get_ylabel()) for ax in figure.axes] == [True, True, True]


@pytest.mark.parametrize("panels", [1, 3])
def test_the_eigenfunction_legend_lies_beside_the_panels(panels: int) -> None:
    x = np.linspace(-1, 1, 16)
    entries = [(step, np.random.default_rng(step).normal(size=(16, 4))) for step in range(panels)]
    figure = eigenfunction_figure(x, entries, y=np.sin(3 * x))
    _assert_legend_off_every_panel(figure)
    assert [t.get_text() for t in figure.legends[0].get_texts()][1:] == ["$e_{1}$", "$e_{2}$", "$e_{3}$", "$e_{4}$"]
    assert figure.axes[0].get_window_extent().width > 200  # one panel: not squeezed by the legend
