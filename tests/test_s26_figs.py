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
from tests.cheap_figures import shared_mathtext  # noqa: E402, F401 - a fixture
from tests.test_report import SCALARS, _entry, make_store  # noqa: E402

#: the TeX texts of the figures these tests render parsed once for all their renderers (the same bytes)
pytestmark = pytest.mark.usefixtures("shared_mathtext")

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


@pytest.fixture(scope="module")
def decades(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A regression run of two series over decades of steps (log step axes, eigenfunctions) whose long name's series
    is written as `fdl report --plots DIR --html FILE` writes it (`_write_listed`, then `page_figures` of the figures
    drawn), and compared with a store of that layer alone, whose figures are saved as `fdl compare --plots DIR` saves
    them, the draws and layouts of each figure counted while they are written. Drawn once for the two tests that read
    it: test_each_figure_file_is_drawn_and_laid_out_once counts the draws, test_files_are_those_savefig_writes
    compares the files with savefig's (each figure file drawn once more was a second of CPU)."""
    from fdl_cli import figures
    from fdl_cli import report as rep

    folder = tmp_path_factory.mktemp("decades")
    store = make_store(folder / "run.h5", steps=DECADES, layers=(LONG, "fc1"))
    run, one = rep.load_run(store), rep.load_run(store, layer=LONG)  # one: of the long name, fitted into the titles
    other = rep.load_run(make_store(folder / "other.h5", seed=7, layers=(LONG,)))
    comparison = rep.compare_runs(one, other, overlap=False)
    every = figures._draw_run(run)
    label = one.series[0].label
    # fc1's figures are of the kinds the long name's are and go through the same saving: made and counted, not drawn
    drawn = [entry for entry in every if entry[0] == label]
    compared = figures.compare_figures(one, other, comparison)  # its titles fitted (laid out) before the counts
    with pytest.MonkeyPatch.context() as monkeypatch:
        draws, layouts = _counted(monkeypatch)
        figures._write_listed(folder / "plots", ("report", str(run.path)),
                              ((stem, figure) for _label, _named, stem, _title, figure in drawn), [])
        page = figures.page_figures(one, drawn)
        counted = {"report": (dict(draws), dict(layouts))}
        draws.clear()
        layouts.clear()
        for stem, figure in compared:
            figures.save_figure(figure, folder / "compare", stem)
        counted["compare"] = (dict(draws), dict(layouts))
    files = [(stem, figure, folder / "plots", image) for (_label, _named, stem, _title, figure), (_, image)
             in zip(drawn, page[label], strict=True)]
    files += [(stem, figure, folder / "compare", figures.png_bytes(figure)) for stem, figure in compared]
    return {"one": one, "other": other, "comparison": comparison, "every": every, "drawn": drawn, "page": page,
            "compared": compared, "counted": counted, "files": files}


def test_each_figure_file_is_drawn_and_laid_out_once(decades: dict[str, Any]) -> None:
    drawn, compared = decades["drawn"], decades["compared"]
    stems = {id(figure): stem for _label, _named, stem, _title, figure in drawn}
    assert sorted(stem.split("_train")[0] for stem in stems.values()) == [
        "eigenfunctions", "spectrum", "trajectories", "triptych"]
    # three files a figure (PNG, SVG, the page's PNG): one draw and one layout each (savefig's own: two draws)
    draws, layouts = decades["counted"]["report"]
    every = dict.fromkeys(stems.values(), 3)
    assert {stems[key]: count for key, count in draws.items()} == every
    assert {stems[key]: count for key, count in layouts.items()} == every
    assert len(decades["page"][decades["one"].series[0].label]) == 4
    for _label, _named, _stem, _title, figure in drawn:  # the figure as it was: its engine, Figure's own draw
        assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)
        assert "draw" not in vars(figure)

    # a compare's figures alike
    names = {id(figure): stem for stem, figure in compared}
    draws, layouts = decades["counted"]["compare"]
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
def test_files_are_those_savefig_writes(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    from fdl_cli import figures
    from fdl_cli import report as rep

    if kind == "regression":  # log step axes, eigenfunctions, a long series name fitted into the titles (`decades`)
        decades = request.getfixturevalue("decades")
        one, other, comparison = decades["one"], decades["other"], decades["comparison"]
        every = [stem for _label, _named, stem, _title, _figure in decades["every"]]
        every += [stem for stem, _figure in decades["compared"]]
        files = decades["files"]  # (stem, figure, folder, page PNG) of the long name's series, then of the compare
    else:
        store = classification_store(tmp_path / "run.h5")
        one = rep.load_run(store)
        other = rep.load_run(classification_store(tmp_path / "other.h5", steps=(0, 50, 100, 200)))
        comparison = rep.compare_runs(one, other, overlap=False)
        ours = [(stem, figure) for stem, _title, figure in figures.run_figures(one)]
        ours += figures.compare_figures(one, other, comparison)
        every = [stem for stem, _figure in ours]
        files = []
        for stem, figure in ours:
            figures.save_figure(figure, tmp_path / "ours", stem)
            assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine), stem  # set aside for the draw
            files.append((stem, figure, tmp_path / "ours", figures.png_bytes(figure)))
    kinds = {stem.split("_train")[0] for stem in every}
    expected = {"triptych", "trajectories", "spectrum", "compare_trajectories", "compare_k95_utility"}
    assert kinds == (expected | {"eigenfunctions"} if kind == "regression" else expected)
    assert len(every) == (4 * 2 if kind == "regression" else 3) + 2  # every series' figures, then the compare's
    # The files compared: of every kind; of the regression, its long name's series' (test_s25_fig: its names fitted
    # into the titles, the spectrum's on a line of its own), fc1's being of the same kinds (each figure compared is
    # drawn nine times: its three files, and savefig's six of it drawn anew)
    assert {stem.split("_train")[0] for stem, _figure, _folder, _page in files} == kinds
    theirs = [(stem, figure) for stem, _title, figure in figures.run_figures(one)]
    theirs += figures.compare_figures(one, other, comparison)  # the same figures drawn anew, for savefig alone
    for (stem, figure, folder, page), (same, again) in zip(files, theirs, strict=True):
        assert stem == same
        assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine), stem  # set aside for the draw
        plain_png, plain_svg, plain_page = _plain(again)
        assert (folder / f"{stem}.svg").read_bytes() == plain_svg, stem
        shapes = []
        for mine, plain in (((folder / f"{stem}.png").read_bytes(), plain_png), (page, plain_page)):
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
