"""Session 22, figures of `fdl report`.

- `fdl report STORE --plots DIR --html FILE` drew every figure twice: once for the files, once for the page.
- `fdl report STORE --layer fc1 --plots DIR`, then `--layer fc2` into the same DIR: the figures of one series of a
  store of several were named as a store of one series names them (`triptych.png`), so the second report wrote over
  the first's (and removed its `eigenfunctions` files as stale, when the second drew none).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from tests.cheap_figures import cheap_figures, shared_mathtext  # noqa: F401 - fixtures
from tests.cli_run import fdl_in_process
from tests.test_report import make_store
from tests.test_s20_out import _files, _report_names

#: the TeX texts of the figures these tests render parsed once for all their renderers (the same bytes)
pytestmark = pytest.mark.usefixtures("shared_mathtext")

PAGE_IMAGE = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">')


def _page_images(page: Path) -> list[tuple[str, tuple[int, int]]]:
    """(alt text, PNG width and height) of each figure the page embeds."""
    return [(alt, struct.unpack(">II", base64.b64decode(data)[16:24]))
            for alt, data in PAGE_IMAGE.findall(page.read_text(encoding="utf-8"))]


def test_plots_and_html_draw_each_figure_once_and_write_what_each_alone_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fdl_cli import figures

    store = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))
    alone_plots, alone_page = tmp_path / "alone", tmp_path / "alone.html"
    assert fdl_in_process("report", store, "--plots", alone_plots).returncode == 0
    assert fdl_in_process("report", store, "--html", alone_page).returncode == 0

    drawn: list[str] = []
    series_figures = figures.series_figures
    monkeypatch.setattr(figures, "series_figures",
                        lambda run, series: drawn.append(series.label) or series_figures(run, series))
    plots, page = tmp_path / "both", tmp_path / "both.html"
    done = fdl_in_process("report", store, "--plots", plots, "--html", page)
    assert done.returncode == 0, done.stderr
    assert drawn == ["train/fc1", "train/fc2"]  # was each twice: for the files, then for the page

    # the files: byte for byte those of --plots alone (the page's images are rendered after them)
    assert _files(plots) == _files(alone_plots) == _report_names("_train-fc1", "_train-fc2") | {".fdl-figures.json"}
    assert all((plots / name).read_bytes() == (alone_plots / name).read_bytes() for name in _files(plots))
    # the page: every figure of each series, titled and sized as by --html alone
    images = _page_images(page)
    assert len(images) == 8 and images == _page_images(alone_page)
    # dpi 100, as before; the trajectories 10 in wide since their legend lies beside the axes (test_s22_ux)
    assert {size for _, size in images} == {(1300, 400), (1000, 450), (800, 450), (1260, 360)}


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_reports_of_two_series_into_one_folder_keep_both(tmp_path: Path) -> None:
    store, plots = make_store(tmp_path / "two.h5", layers=("fc1", "fc2")), tmp_path / "plots"
    first = fdl_in_process("report", store, "--layer", "fc1", "--plots", plots)
    assert first.returncode == 0, first.stderr
    assert _files(plots) == _report_names("_train-fc1") | {".fdl-figures.json"}  # was triptych.png, ...
    written = {name: (plots / name).read_bytes() for name in _report_names("_train-fc1")}
    second = fdl_in_process("report", store, "--layer", "fc2", "--plots", plots)
    assert second.returncode == 0, second.stderr
    assert "note:" not in second.stderr  # nothing removed, nothing to name
    assert _files(plots) == _report_names("_train-fc1", "_train-fc2") | {".fdl-figures.json"}
    assert all((plots / name).read_bytes() == data for name, data in written.items())
    listed = json.loads((plots / ".fdl-figures.json").read_text())["files"]
    assert set(listed) == _report_names("_train-fc1", "_train-fc2")
    # the same report again writes its own files again, the other series' stay
    again = fdl_in_process("report", store, "--layer", "fc1", "--plots", plots)
    assert again.returncode == 0 and "note:" not in again.stderr, again.stderr
    assert _files(plots) == _report_names("_train-fc1", "_train-fc2") | {".fdl-figures.json"}
    assert all((plots / name).read_bytes() == data for name, data in written.items())
    # a report of every series writes the same names as the reports of each
    every = fdl_in_process("report", store, "--plots", tmp_path / "every")
    assert every.returncode == 0 and _files(tmp_path / "every") == _files(plots)
    # a store of one series keeps its plain names, selected or not
    one = make_store(tmp_path / "one.h5")
    assert fdl_in_process("report", one, "--layer", "fc1", "--plots", tmp_path / "one").returncode == 0
    assert _files(tmp_path / "one") == _report_names("") | {".fdl-figures.json"}


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_report_of_one_series_still_removes_the_stale_figures_of_its_store(tmp_path: Path) -> None:
    """Stale: the figures of a series no longer in the store, and the plain names of the store's time of one
    series; a report of one series removes those as a report of every series does, never another series'."""
    store, plots = tmp_path / "run.h5", tmp_path / "plots"
    make_store(store)
    assert fdl_in_process("report", store, "--plots", plots).returncode == 0  # plain names: one series
    store.unlink()
    make_store(store, layers=("fc1", "fc2"))
    assert fdl_in_process("report", store, "--layer", "fc2", "--plots", plots).returncode == 0
    assert fdl_in_process("report", store, "--layer", "fc1", "--plots", plots).returncode == 0
    assert _files(plots) == _report_names("_train-fc1", "_train-fc2") | {".fdl-figures.json"}
    store.unlink()
    make_store(store, layers=("fc1", "fc3"))  # fc2 analysed no more
    done = fdl_in_process("report", store, "--layer", "fc3", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert _files(plots) == _report_names("_train-fc1", "_train-fc3") | {".fdl-figures.json"}
    assert f"note: removed 8 figure files an earlier report of this store wrote into {plots}" in done.stderr
    assert set(json.loads((plots / ".fdl-figures.json").read_text())["files"]) == \
        _report_names("_train-fc1", "_train-fc3")
