"""Session 25, the time figures take to draw.

`fdl report --plots DIR --html FILE` drew each figure six times and laid it out (constrained layout, the most of the
time) three times, plus once more for every title tried while fitting a series' name (`_fit_title`): matplotlib's
savefig draws a figure of a layout engine once without output to lay it out, then again into the file, and
`_fit_title` drew the whole figure for each title it tried, even a title over the panels, whose room (the figure's
width) no layout changes. Each file is now drawn once (the engine alone lays the figure out, as savefig's first draw
did), and a title is fitted by running the layout engine alone, only for a title over axes. The files are the same:
tests/test_s26_figs.py compares them, byte for byte, with savefig's of the same figures drawn anew (this store's
long name among them), and checks each figure keeps its engine after the save.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402

from tests.cheap_figures import cheap_figures  # noqa: E402, F401 - a fixture
from tests.test_report import make_store  # noqa: E402

LONG = "encoder.layers.11.mlp.fc2:input"


@pytest.mark.usefixtures("cheap_figures")  # the save at the end: which files, not their images
def test_fitting_a_series_name_into_the_titles_draws_no_figure_and_lays_out_only_titles_over_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fdl_cli import figures
    from fdl_cli import report as rep

    run = rep.load_run(make_store(tmp_path / "run.h5", layers=(LONG, "fc1")))
    draws: collections.Counter[int] = collections.Counter()
    layouts: collections.Counter[int] = collections.Counter()
    draw, execute = Figure.draw, ConstrainedLayoutEngine.execute

    def counted_draw(self: Figure, renderer: Any) -> None:
        draws[id(self)] += 1
        draw(self, renderer)

    def counted_execute(self: ConstrainedLayoutEngine, figure: Any) -> Any:
        layouts[id(figure)] += 1
        return execute(self, figure)

    monkeypatch.setattr(Figure, "draw", counted_draw)
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", counted_execute)
    drawn = figures._draw_run(run)
    stems = {id(figure): stem for _label, _named, stem, _title, figure in drawn}
    # titles over the panels (the triptych's, the eigenfunctions') fitted without laying out: the figure's width
    # is their room; a title over axes, laid out once a title tried (the spectrum's, too narrow for the long name
    # on the title's line: twice), never drawn
    assert not draws
    tried = {stems[key]: count for key, count in layouts.items()}
    assert tried == {"trajectories_train-fc1": 1, "spectrum_train-fc1": 1,
                     "trajectories_train-encoder.layers.11.mlp.fc2_input": 1,
                     "spectrum_train-encoder.layers.11.mlp.fc2_input": 2}, tried
    # the titles' layouts are those savefig's first draw then runs again: the files are the same (a drawn figure
    # is laid out anew at each file's resolution; test_s26_figs compares this store's long name's files, byte for
    # byte, with savefig's); here, saved as digests (cheap_figures), the files written
    for _label, _named, stem, _title, figure in drawn[:4]:
        figures.save_figure(figure, tmp_path / "plots", stem)
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(
        f"{stem}{suffix}" for _, _, stem, _, _ in drawn[:4] for suffix in (".png", ".svg"))

