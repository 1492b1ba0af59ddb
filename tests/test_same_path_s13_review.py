"""A store written with relative checkpoint paths and resumed from another working directory: a file
of this run that was rewritten is "changed since analysed", not "another run's store" (whose fix, "give
this run its own --out", misleads: it is this run's store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdl_cli.pipeline import _same_path


def test_a_relative_recorded_path_resumed_from_another_folder_is_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj" / "run").mkdir(parents=True)
    (tmp_path / "proj" / "run" / "step_5.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # analysed from tmp_path/proj as `fdl analyze run`, resumed from tmp_path
    assert _same_path("run/step_5.pt", Path("proj/run/step_5.pt"))
    assert _same_path("./run/../run/step_5.pt", tmp_path / "proj" / "run" / "step_5.pt")
    # another run's files are still other files
    assert not _same_path("a/step_5.pt", Path("proj/run/step_5.pt"))
    assert not _same_path("other/run/step_5.pt", Path("proj/run/step_5.pt"))
    assert not _same_path(str(tmp_path / "a" / "run" / "step_5.pt"), Path("proj/run/step_5.pt"))
