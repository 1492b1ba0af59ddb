"""Every file or folder the reading commands write (--out, --html, --plots) fails as exit 1 with a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_report import make_store, run_fdl


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "run.h5")


def _assert_explained(args: list[str], bad: Path) -> None:
    result = run_fdl(*args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"could not write {bad}" in result.stderr
    assert "got: " in result.stderr and "fix: " in result.stderr


@pytest.mark.parametrize("command", ["report-html", "export-npy", "export-csv"])
def test_missing_folder_of_an_output_file(store: Path, tmp_path: Path, command: str) -> None:
    bad = tmp_path / "missing" / "out.file"
    args = {
        "report-html": ["report", str(store), "--html", str(bad)],
        "export-npy": ["export", str(store), "--what", "eigenvalues", "--format", "npy", "--out", str(bad)],
        "export-csv": ["export", str(store), "--what", "eigenvalues", "--format", "csv", "--out", str(bad)],
    }[command]
    _assert_explained(args, bad)
    assert f"create the folder {bad.parent} first" in run_fdl(*args).stderr
    assert not bad.parent.exists()


@pytest.mark.parametrize("command", ["report", "compare", "export-csv"])
def test_unwritable_output_path(store: Path, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "a_file"  # a file where a folder is needed: refused even for root
    blocker.write_text("not a folder")
    bad = blocker / "out"
    args = {
        "report": ["report", str(store), "--plots", str(bad)],
        "compare": ["compare", str(store), str(store), "--plots", str(bad)],
        "export-csv": ["export", str(store), "--what", "quality", "--format", "csv", "--out", str(bad)],
    }[command]
    _assert_explained(args, bad)


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_plots_folder_is_created_with_its_parents(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "new" / "plots"
    result = run_fdl("report", str(store), "--plots", str(folder))
    assert result.returncode == 0, result.stderr
    assert (folder / "triptych.png").stat().st_size > 0


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_bad_output_path_is_refused_before_anything_is_printed(store: Path, tmp_path: Path, fmt: str) -> None:
    """`fdl report run.h5 --html run.h5` printed the whole table (or the JSON on stdout) and then failed;
    a script reading stdout took that JSON for a finished report."""
    over_store = run_fdl("report", str(store), "--format", fmt, "--html", str(store))
    assert over_store.returncode == 1 and "is an HDF5 file" in over_store.stderr
    assert over_store.stdout == "" and "D_LR" not in over_store.stderr and "step" not in over_store.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for args in (["report", str(store), "--format", fmt, "--plots", str(blocker / "plots")],
                 ["compare", str(store), str(store), "--format", "json" if fmt == "json" else "table",
                  "--plots", str(blocker / "plots")],
                 ["report", str(store), "--format", fmt, "--html", str(tmp_path / "missing" / "r.html")]):
        result = run_fdl(*args)
        assert result.returncode == 1 and "could not write" in result.stderr, args
        assert result.stdout == "" and "D_LR" not in result.stderr, args


@pytest.mark.usefixtures("cheap_figures")  # where the page goes, not its images
def test_a_dangling_link_as_output_is_refused_before_anything_is_printed(store: Path, tmp_path: Path) -> None:
    """The early check looked at the link's own folder: `--html link` to a missing folder, and `--plots
    link` (a folder cannot be made at a link), printed the JSON on stdout and then failed."""
    html = tmp_path / "report.html"
    html.symlink_to(tmp_path / "missing" / "r.html")
    plots = tmp_path / "plots"
    plots.symlink_to(tmp_path / "gone")
    for args in (["report", str(store), "--format", "json", "--html", str(html)],
                 ["report", str(store), "--format", "json", "--plots", str(plots)],
                 ["compare", str(store), str(store), "--format", "json", "--plots", str(plots)]):
        result = run_fdl(*args)
        assert result.returncode == 1 and "could not write" in result.stderr, args
        assert "symbolic link" in result.stderr, args
        assert result.stdout == "", args
    # A link to a file that does not exist yet, in a folder that does: written through the link.
    fine = tmp_path / "fine.html"
    fine.symlink_to(tmp_path / "target.html")
    assert run_fdl("report", str(store), "--html", str(fine)).returncode == 0
    assert (tmp_path / "target.html").stat().st_size > 0


def test_the_fix_names_what_is_in_the_way(store: Path, tmp_path: Path) -> None:
    """A file two levels up was 'create the folder X first' (X cannot be made under a file)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    deep = run_fdl("report", str(store), "--html", str(blocker / "x" / "r.html"))
    assert deep.returncode == 1 and f"fix: {blocker} is a file, not a folder" in deep.stderr
    folder = tmp_path / "a_folder"
    folder.mkdir()
    onto = run_fdl("export", str(store), "--what", "quality", "--format", "csv", "--out", str(folder / "."))
    assert onto.returncode in (1, 2) and "Traceback" not in onto.stderr  # click or fdl says it is a folder
    assert "directory" in onto.stderr or "is a folder" in onto.stderr
    assert str(folder) in onto.stderr and list(folder.iterdir()) == []  # which folder, and nothing written in it
