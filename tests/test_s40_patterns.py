"""A store's name given as a quoted pattern that matches files ('runs/*.h5').

fdl expands patterns in analyze's sources, not in store names: the shell does, unquoted. A quoted one reached fdl
as written and was refused with "no file matches this pattern: the shell passes a pattern that matches nothing as
written", which was false (the files were there) and pointed at the wrong fix. Now the error names what it
matches and says to leave it unquoted; a pattern that matches nothing is said as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("patterns")
    done = fdl_in_process("analyze", "sample_checkpoints", "--steps", "0,10", "-o", folder / "a.h5")
    assert done.returncode == 0, done.stderr
    shutil.copyfile(folder / "a.h5", folder / "b.h5")
    return folder


@pytest.mark.parametrize("command", [["classify"], ["export", "--what", "trajectories"], ["report"]])
def test_a_quoted_pattern_that_matches_stores_is_named_with_the_fix(stores: Path, command: list[str]) -> None:
    done = fdl_in_process(*command, "*.h5", cwd=stores)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stdout == "", done.stderr
    assert "error: no fdl store at *.h5" in said
    assert "got: it is a pattern, which matches 2 files (a.h5, b.h5): fdl reads a store from the name given" in said
    assert "fix: write the pattern without quotes, for the shell to expand it into the stores' names" in said
    assert "matches nothing" not in said


def test_a_pattern_that_matches_nothing_and_a_hidden_file_are_as_the_shell_has_them(stores: Path) -> None:
    shutil.copyfile(stores / "a.h5", stores / ".hidden.h5")
    try:
        done = fdl_in_process("report", "z*.h5", cwd=stores)
        assert done.returncode == 1 and "got: no file matches this pattern" in done.stderr, done.stderr
        # `*` leaves a hidden name out, as the shell does: two stores, not three
        done = fdl_in_process("compare", "[ab].h5", "*.h5", cwd=stores)
        assert done.returncode == 1 and "matches 2 files (a.h5, b.h5)" in " ".join(done.stderr.split()), done.stderr
    finally:
        (stores / ".hidden.h5").unlink()
