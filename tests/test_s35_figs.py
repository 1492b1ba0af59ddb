"""Session 35, the work `fdl report` does for its figures.

`fdl report STORE --plots DIR` read the records from one opening of the store, then opened it anew for each read of
the figures' arrays (the arrays of the chosen steps, the top eigenvalues, the eigenfunctions: three openings a series,
each scanning the store's trajectories again). A commit of `fdl analyze --watch` between them (it replaces the file
whole) gave figures of other arrays than the records' commit. The report now reads everything through one opening.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_report import make_store


@pytest.mark.usefixtures("cheap_figures")  # which arrays the figures hold, not their images
def test_a_reports_figures_are_of_the_commit_its_records_are_of_read_through_one_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fdl_cli import figures
    from fdl_cli.store import StoreReader

    store = make_store(tmp_path / "run.h5")
    expected = tmp_path / "expected"
    assert fdl_in_process("report", store, "--format", "csv", "--plots", expected).returncode == 0

    # `fdl analyze --watch` commits while the report draws: the store replaced whole by one of other arrays
    committed = make_store(tmp_path / "committed.h5", seed=9)
    series_figures = figures.series_figures

    def commit_then_draw(run: Any, series: Any) -> Any:
        if committed.exists():
            os.replace(committed, store)
        return series_figures(run, series)

    monkeypatch.setattr(figures, "series_figures", commit_then_draw)
    openings: list[Path] = []
    opened = StoreReader._open
    monkeypatch.setattr(StoreReader, "_open", lambda reader, path, **kw: openings.append(path) or opened(reader, path, **kw))
    plots = tmp_path / "plots"
    done = fdl_in_process("report", store, "--format", "csv", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert not committed.exists()  # the commit came
    assert openings == [store]  # was 1 + 3 a series: 4
    names = sorted(path.name for path in expected.iterdir() if path.suffix in (".png", ".svg"))
    assert len(names) == 8 and sorted(path.name for path in plots.iterdir() if path.suffix in (".png", ".svg")) == names
    changed = [name for name in names if (plots / name).read_bytes() != (expected / name).read_bytes()]
    assert not changed, changed  # were the triptych, spectrum and eigenfunctions of the committed store
