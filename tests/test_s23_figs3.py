"""Session 23, the visual review's third round:

1. A probe without targets (a probe .npz of x alone) left the triptych's Π* panel empty under the ticks of an empty
   log axis (0.9, 1, 2 … 10) and a C guide on a scale of no data; the panel says now that Π* needs targets, with
   no ticks.
2. Long series names (`train/encoder.layers.11.mlp.fc2:input`) in the titles ran past the figure's edge (and over
   the legend beside the axes); a title that does not fit gives the name a line of its own, and a smaller font
   where a line is still too wide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fdl_cli.figures import TARGETLESS, Curves, triptych_figure  # noqa: E402
from tests.cheap_figures import shared_mathtext  # noqa: E402, F401 - a fixture
from tests.test_report import make_store  # noqa: E402

#: the TeX texts of the figures these tests render parsed once for all their renderers (the same bytes)
pytestmark = pytest.mark.usefixtures("shared_mathtext")

K = np.arange(1.0, 65.0)
LONG = "encoder.layers.11.mlp.fc2:input"


# -- 1. the triptych without targets --------------------------------------------------------------------------------


def test_the_triptychs_pi_star_panel_says_it_needs_targets_without_ticks() -> None:
    curves = [Curves(step=100 * i, eigenvalues=K ** -(1.0 + 0.1 * i), quality=None, utility=np.full(64, 1 / 64))
              for i in range(3)]
    figure = triptych_figure(curves, n_outputs=2)
    figure.canvas.draw()
    empty, used = figure.axes[0], figure.axes[1]
    assert [text.get_text() for text in empty.texts] == [TARGETLESS]
    assert "needs targets" in TARGETLESS and "none" in TARGETLESS
    said = empty.texts[0]
    assert (said.get_ha(), said.get_va()) == ("center", "center")
    # no ticks of a scale it does not have (were 0.9, 1, 2 … 10), nor the C guide on it; the others keep theirs
    assert [t.get_text() for t in empty.get_xticklabels() + empty.get_yticklabels() if t.get_text()] == []
    assert list(empty.get_xticks()) == [] and list(empty.get_yticks()) == [] and not empty.lines
    assert "10" in [t.get_text() for t in used.get_xticklabels()] and used.lines
    assert figure.legends and "k = C = 2" in [t.get_text() for t in figure.legends[0].get_texts()]
    # a probe with targets: the panel drawn as before, no such text
    targeted = [Curves(step=c.step, eigenvalues=c.eigenvalues, quality=c.utility, utility=c.utility) for c in curves]
    plain = triptych_figure(targeted, n_outputs=2).axes[0]
    assert not plain.texts and plain.get_xscale() == "log" and len(plain.lines) == 4


# -- 2. long series names in the titles -----------------------------------------------------------------------------


def _titles(figure: Any) -> list[Any]:
    own = getattr(figure, "_suptitle", None)
    return [text for text in [own, *(ax.title for ax in figure.axes)] if text is not None and text.get_text()]


def _assert_inside(figure: Any, label: str) -> None:
    """The title naming `label` lies inside the figure as drawn (an axes' title: within its axes' width, clear of
    the legend beside them), and still names it whole. Laid out and drawn as into a file, without the pixels: where
    each artist lies is all this reads."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    named = [text for text in _titles(figure) if label in text.get_text().replace("\n", " ")]
    assert len(named) == 1, [text.get_text() for text in _titles(figure)]
    box = named[0].get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width and 0 <= box.y0 and box.y1 <= figure.bbox.height, box
    if named[0].axes is not None:
        span = named[0].axes.get_window_extent(renderer)
        assert span.x0 - 1 <= box.x0 and box.x1 <= span.x1 + 1, (box, span)
        for legend in figure.legends:
            assert not box.overlaps(legend.get_window_extent(renderer))


@pytest.mark.parametrize("steps", [(0, 100, 200), (500,)])  # one checkpoint: the eigenfunctions' one panel, 5.6 in
def test_a_long_series_name_keeps_every_report_title_inside_the_figure(tmp_path: Path, steps: tuple[int, ...]) -> None:
    from fdl_cli import report as rep
    from fdl_cli.figures import run_figures

    run = rep.load_run(make_store(tmp_path / "run.h5", steps=steps, layers=(LONG, "fc1")))
    drawn = {stem: figure for stem, _, figure in run_figures(run)}
    for stem in ("triptych", "trajectories", "spectrum", "eigenfunctions"):
        _assert_inside(drawn[f"{stem}_train-encoder.layers.11.mlp.fc2_input"], f"train/{LONG}")
        _assert_inside(drawn[f"{stem}_train-fc1"], "train/fc1")
    # a short name that fits stays on the title's line, in the title's font
    short = drawn["trajectories_train-fc1"].axes[0].title
    assert short.get_text() == "feature change over training (train/fc1)"
    assert short.get_fontsize() == drawn["triptych_train-fc1"].axes[0].title.get_fontsize()  # a panel's, unchanged


def test_long_series_names_keep_the_compare_titles_inside_the_figure(tmp_path: Path) -> None:
    from fdl_cli import report as rep
    from fdl_cli.figures import compare_figures

    other = LONG.replace("11", "10")
    a = rep.load_run(make_store(tmp_path / "a.h5", layers=(LONG, other)), layer=LONG)
    b = rep.load_run(make_store(tmp_path / "b.h5", layers=(LONG, other), seed=1), layer=other)
    for _stem, figure in compare_figures(a, b, rep.compare_runs(a, b)):
        _assert_inside(figure, f"A: train/{LONG}, B: train/{other}")


def test_a_name_too_long_for_a_line_is_drawn_smaller_inside_the_figure(tmp_path: Path) -> None:
    from fdl_cli import report as rep
    from fdl_cli.figures import run_figures

    huge = ".".join(f"block{i}" for i in range(16)) + ":input"  # 100 characters, no space to break at
    drawn = {stem: figure for stem, _, figure in run_figures(rep.load_run(
        make_store(tmp_path / "run.h5", layers=(huge, "fc1"))))}
    figure = next(figure for stem, figure in drawn.items() if stem.startswith("trajectories_train-block0"))
    _assert_inside(figure, f"train/{huge}")
    title = figure.axes[0].title
    assert title.get_text() == f"feature change over training\n(train/{huge})"
    assert title.get_fontsize() < drawn["trajectories_train-fc1"].axes[0].title.get_fontsize()


def test_the_docs_say_the_targetless_panel_and_the_fitted_titles() -> None:
    from tests.test_s16_docs import USAGE

    for said in ("the Π* panel, without ticks, says `Π* needs targets`", "puts the series on a line of its own",
                 "is drawn smaller where a line still\n   does not fit"):
        assert said in USAGE, said
