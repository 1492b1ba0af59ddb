"""Session 26, a second review of the session's changes (special files refused, the Ctrl-C held back during a
commit, figures saved with one draw, the step types StoreReader takes): what it found wrong. Figures under a
matplotlibrc's `savefig.bbox: tight` were no longer savefig's; `StoreReader.entry` refused a step `array` took;
reliability.md numbered two failures 39."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fdl_cli.store import StoreReader  # noqa: E402
from tests.cheap_figures import shared_mathtext  # noqa: E402, F401 - a fixture
from tests.test_report import make_store  # noqa: E402
from tests.test_s26_figs import _plain, classification_store  # noqa: E402

#: the TeX texts of the figures these tests render parsed once for all their renderers (the same bytes)
pytestmark = pytest.mark.usefixtures("shared_mathtext")

# ------------------------------------------------------------------ figures under a matplotlibrc's savefig.bbox


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_a_matplotlibrc_of_savefig_bbox_tight_gives_savefigs_files(tmp_path: Path, kind: str) -> None:
    """`savefig.bbox: tight` makes savefig draw first to find the box, then lay out and draw into the file: the
    figure laid out in fdl's one draw, after the box was taken, gave other bytes (and pixels) than savefig's."""
    from fdl_cli import figures
    from fdl_cli import report as rep

    store = (make_store(tmp_path / "run.h5", steps=(0, 10, 100)) if kind == "regression"
             else classification_store(tmp_path / "run.h5"))
    with matplotlib.rc_context({"savefig.bbox": "tight"}):
        ours = [(stem, figure) for stem, _title, figure in figures.run_figures(rep.load_run(store))]
        theirs = [figure for _stem, _title, figure in figures.run_figures(rep.load_run(store))]
        for (stem, figure), again in zip(ours, theirs, strict=True):
            png, svg = figures.save_figure(figure, tmp_path / "ours", stem)
            plain_png, plain_svg, plain_page = _plain(again)
            assert (png.read_bytes(), svg.read_bytes(), figures.png_bytes(figure)) == (
                plain_png, plain_svg, plain_page), stem
    assert len(ours) == (4 if kind == "regression" else 3)


# ------------------------------------------------------------------ StoreReader's steps


def test_entry_takes_the_steps_array_takes(tmp_path: Path) -> None:
    """store.md: a float of an integer (a float64 column's 50.0) is the step it equals. `array`, `arrays` and
    `computed_by` took 50.0; `entry` raised CheckpointEntry's bare ValueError ('checkpoint step must be an int')."""
    store = make_store(tmp_path / "run.h5", steps=(0, 50, 100))
    with StoreReader(store) as run:
        wanted = run.entry(50)
        for step in (50.0, np.float64(50.0), np.float32(50.0), np.int64(50), np.int32(50), np.uint8(50)):
            entry = run.entry(step)  # type: ignore[arg-type]
            assert type(entry.step) is int and entry.step == 50, step
            assert entry.sha256 == wanted.sha256 and entry.computed_by == wanted.computed_by
            assert np.array_equal(entry.series[0].eigenvalues, wanted.series[0].eigenvalues)
            assert np.array_equal(run.array(step, "eigenvalues"), wanted.series[0].eigenvalues)  # type: ignore[arg-type]


# ------------------------------------------------------------------ reliability.md's numbered failures


def test_reliability_md_numbers_each_failure_once_in_one_list() -> None:
    """Two merges of this session each added a failure 39 (the Ctrl-C in a commit, the special files); store.md's
    "failure 39" is the Ctrl-C's."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    block = text.split("Failures found and fixed:", 1)[1].split("\n## ", 1)[0].strip("\n")
    numbers = [int(line.split(".", 1)[0]) for line in block.splitlines() if line[:1].isdigit()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert block.split("\n39. ", 1)[1].startswith("A Ctrl-C or SIGTERM that arrived while HDF5 wrote")
    assert block.split("\n40. ", 1)[1].startswith("Special files (a named pipe, /dev/zero, a socket)")
