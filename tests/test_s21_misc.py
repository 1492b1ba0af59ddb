"""Small gaps the twenty-first session closed: a report's figures of several series name their series in the
drawn figure, compare's note on devices reads the history of the series compared, and a threshold of the other
command is named as such."""

from __future__ import annotations

from pathlib import Path

from tests.test_report import make_store


def _drawn_titles(figure: object) -> list[str]:
    """The figure's own title and its panels' titles, as drawn in its PNG and SVG."""
    suptitle = getattr(figure, "_suptitle", None)
    return ([suptitle.get_text()] if suptitle is not None else []) + [
        ax.get_title() for ax in figure.axes if ax.get_title()]  # type: ignore[attr-defined]


def test_a_reports_figures_of_several_series_name_the_series_in_the_drawn_figure(tmp_path: Path) -> None:
    """The HTML titles and the file names carried `train/fc1`, the PNG and SVG did not: a figure opened alone
    did not say which series it drew. One series: the figures stay as they were (no series to tell apart)."""
    from fdl_cli import report as rep
    from fdl_cli.figures import run_figures

    figures = run_figures(rep.load_run(make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))))
    assert {stem for stem, _, _ in figures} == {f"{kind}_train-{layer}" for layer in ("fc1", "fc2") for kind in
                                                 ("triptych", "trajectories", "spectrum", "eigenfunctions")}
    for stem, title, figure in figures:
        label = "train/" + stem.rpartition("-")[2]
        assert title.endswith(f" ({label})")
        drawn = _drawn_titles(figure)
        assert sum(label in text for text in drawn) == 1, (stem, drawn)
        assert not any(("fc2" if label.endswith("fc1") else "fc1") in text for text in drawn)
    trajectories = dict((stem, figure) for stem, _, figure in figures)["trajectories_train-fc2"]
    assert trajectories.axes[0].get_title() == "feature change over training (train/fc2)"
    triptych = dict((stem, figure) for stem, _, figure in figures)["triptych_train-fc1"]
    assert triptych._suptitle.get_text() == "train/fc1"  # over the three panels, whose titles stay theirs

    for stem, _, figure in run_figures(rep.load_run(make_store(tmp_path / "one.h5"))):
        assert not any("train/fc1" in text for text in _drawn_titles(figure)), stem
