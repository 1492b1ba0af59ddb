"""Session 26, the draws a figure file takes.

matplotlib's savefig draws a figure of a layout engine (fdl's figures are constrained) twice: once without output, the
engine laying the figure out at its start, then into the file with the layout held. `fdl report --plots DIR --html
FILE` drew each figure six times for its three files (PNG, SVG, the page's PNG). Each file is now drawn once, the engine
laying the figure out at the start of that draw, where savefig's first draw ran it; the files are byte for byte those
of savefig (the PNGs' pixels too, compared decoded), for every figure kind of a regression and a classification run.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402

from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter  # noqa: E402
from tests.test_report import SCALARS, _entry, make_store  # noqa: E402

LONG = "encoder.layers.11.mlp.fc2:input"
#: Steps spanning decades (a symlog step axis, its 10⁴ tick in mathtext) and spectra falling below the ratio limit.
DECADES = (0, 10, 100, 1000, 10000)


def classification_store(path: Path, steps: tuple[int, ...] = (0, 100, 200)) -> Path:
    """A small classification run (no 1-D anchor: no eigenfunction figure), as test_report's regression run."""
    probe = ProbeInfo(name="train", sha256="b" * 64, n=16, task="classes", n_outputs=2)
    provenance = {"model": "model.py:build", "layers": ["fc1"], "host": "testhost", "fdl_version": "0.1.0"}
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step in steps:
            scalars = {**SCALARS.get(step, {}), "accuracy": 0.5 + step / 1000, "regime": None}
            writer.add(CheckpointEntry(step=step, path=f"ckpt/step_{step}.pt", sha256=f"{step:064x}",
                                       series=(_entry(step, probe="train", layer="fc1", seed=3, scalars=scalars),)))
    return path


def _counted(monkeypatch: pytest.MonkeyPatch) -> tuple[collections.Counter[int], collections.Counter[int]]:
    """Counters, by figure id, of Figure.draw and of the constrained layout engine's execute (patched)."""
    counters: list[collections.Counter[int]] = []
    for owner, name, figure_of in ((Figure, "draw", lambda own, _arg: own),
                                   (ConstrainedLayoutEngine, "execute", lambda _own, arg: arg)):
        counter: collections.Counter[int] = collections.Counter()
        original = getattr(owner, name)

        def counted(own: Any, arg: Any, original: Any = original, counter: Any = counter,
                    figure_of: Any = figure_of) -> Any:
            counter[id(figure_of(own, arg))] += 1
            return original(own, arg)

        monkeypatch.setattr(owner, name, counted)
        counters.append(counter)
    return counters[0], counters[1]


def test_each_figure_file_is_drawn_and_laid_out_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fdl_cli import figures
    from fdl_cli import report as rep

    run = rep.load_run(make_store(tmp_path / "run.h5", steps=DECADES))
    drawn = figures._draw_run(run)
    stems = {id(figure): stem for _label, _named, stem, _title, figure in drawn}
    assert sorted(stems.values()) == ["eigenfunctions", "spectrum", "trajectories", "triptych"]
    draws, layouts = _counted(monkeypatch)
    page: dict[str, list[tuple[str, bytes]]] = {}
    figures._write_listed(tmp_path / "plots", ("report", str(run.path)),
                          ((stem, figure) for _label, _named, stem, _title, figure in drawn), [])
    page.update(figures.page_figures(run, drawn))
    # three files a figure (PNG, SVG, the page's PNG): one draw and one layout each (savefig's own: two draws)
    every = dict.fromkeys(stems.values(), 3)
    assert {stems[key]: count for key, count in draws.items()} == every
    assert {stems[key]: count for key, count in layouts.items()} == every
    assert len(page[run.series[0].label]) == 4
    for _label, _named, _stem, _title, figure in drawn:  # the figure as it was: its engine, Figure's own draw
        assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)
        assert "draw" not in vars(figure)

    # a compare's figures alike
    draws.clear()
    layouts.clear()
    other = rep.load_run(make_store(tmp_path / "other.h5", steps=DECADES, seed=5))
    compared = figures.compare_figures(run, other, rep.compare_runs(run, other, overlap=False))
    names = {id(figure): stem for stem, figure in compared}
    for stem, figure in compared:
        figures.save_figure(figure, tmp_path / "compare", stem)
    assert {names[key]: count for key, count in draws.items()} == dict.fromkeys(names.values(), 2)
    assert {names[key]: count for key, count in layouts.items()} == dict.fromkeys(names.values(), 2)


def _plain_png(figure: Figure, dpi: int = 110) -> bytes:
    """The PNG file's bytes (110 dpi; the page's: 100 dpi) of `figure`, by matplotlib's savefig alone."""
    file = io.BytesIO()
    figure.savefig(file, format="png", dpi=dpi)
    return file.getvalue()


def _plain(figure: Figure) -> tuple[bytes, bytes, bytes]:
    """PNG (110 dpi), SVG and the page's PNG (100 dpi) of `figure`, by matplotlib's savefig alone."""
    png = _plain_png(figure)
    svg = io.BytesIO()
    figure.savefig(svg, format="svg", metadata={"Date": None})
    return png, svg.getvalue(), _plain_png(figure, dpi=100)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(matplotlib.image.imread(io.BytesIO(png), format="png"))


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_files_are_those_savefig_writes(tmp_path: Path, kind: str) -> None:
    from fdl_cli import figures
    from fdl_cli import report as rep

    if kind == "regression":  # log step axes, eigenfunctions, a long series name fitted into the titles
        store = make_store(tmp_path / "run.h5", steps=DECADES, layers=(LONG, "fc1"))
    else:
        store = classification_store(tmp_path / "run.h5")
    run = rep.load_run(store)
    # a compare of one series each: of the long name's, in the regression's
    one = rep.load_run(store, layer=LONG) if kind == "regression" else run
    other = rep.load_run(make_store(tmp_path / "other.h5", seed=7, layers=(LONG,)) if kind == "regression"
                         else classification_store(tmp_path / "other.h5", steps=(0, 50, 100, 200)))
    comparison = rep.compare_runs(one, other, overlap=False)
    every = [(stem, figure) for stem, _title, figure in figures.run_figures(run)]
    every += figures.compare_figures(one, other, comparison)
    kinds = {stem.split("_train")[0] for stem, _ in every}
    expected = {"triptych", "trajectories", "spectrum", "compare_trajectories", "compare_k95_utility"}
    assert kinds == (expected | {"eigenfunctions"} if kind == "regression" else expected)
    assert len(every) == (4 * 2 if kind == "regression" else 3) + 2  # every series' figures, then the compare's
    # The files compared: the long name's series' figures (of a regression: every kind, its names fitted into the
    # titles, the spectrum's on a line of its own) and the compare's; the figures of fc1, the regression's other
    # series, are of the same kinds and go through the same saving, so they are not drawn (each figure compared
    # draws nine times: its three files, and savefig's six of the same figure drawn anew).
    ours = [(stem, figure) for stem, figure in every if not stem.endswith("_train-fc1")]
    assert {stem.split("_train")[0] for stem, _ in ours} == kinds
    theirs = [(stem, figure) for stem, _title, figure in figures.run_figures(one)]
    theirs += figures.compare_figures(one, other, comparison)  # the same figures drawn anew, for savefig alone
    for (stem, figure), (same, again) in zip(ours, theirs, strict=True):
        assert stem == same
        png, svg = figures.save_figure(figure, tmp_path / "ours", stem)
        assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine), stem  # set aside for the draw
        page = figures.png_bytes(figure)
        plain_png, plain_svg, plain_page = _plain(again)
        assert svg.read_bytes() == plain_svg, stem
        shapes = []
        for mine, plain in ((png.read_bytes(), plain_png), (page, plain_page)):
            assert mine == plain, stem
            pixels = _pixels(mine)
            assert np.array_equal(pixels, _pixels(plain)), stem
            shapes.append(pixels.shape[:2])
        assert shapes[0] != shapes[1], stem  # two resolutions, each laid out


def test_a_matplotlibrc_of_autolayout_gives_the_figure_no_other_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure is saved without its engine for the draw: a user's figure.autolayout (or constrained_layout.use)
    would have given it one (tight) there, incompatible with the spectrum's colour bar, and a second layout."""
    from fdl_cli import figures
    from fdl_cli import report as rep

    run = rep.load_run(classification_store(tmp_path / "run.h5"))
    with matplotlib.rc_context({"figure.autolayout": True, "figure.constrained_layout.use": True}):
        ours = {stem: figure for stem, _title, figure in figures.run_figures(run)}
        plain = {stem: _plain_png(figure) for stem, _title, figure in figures.run_figures(run)}  # the PNG alone
        draws, layouts = _counted(monkeypatch)
        for stem, figure in ours.items():
            png, _svg = figures.save_figure(figure, tmp_path, stem)
            assert png.read_bytes() == plain[stem], stem
            assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)
    assert sorted(draws.values()) == sorted(layouts.values()) == [2, 2, 2]
