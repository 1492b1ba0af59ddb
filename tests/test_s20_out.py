"""Session 20, what `fdl report --plots/--html` and `fdl export` leave behind: stale figure files, the spectrum
heat map's step axis, matplotlib's messages with an unwritable HOME, output options given twice, and a partial
quality export. Each numbered test failed before its fix; those marked "guard" pin what the fix must not break."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli import report as rep
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_report import make_store

# -- 1. stale figure files ----------------------------------------------------------------------------------------


def _files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def _report_names(*suffixes: str, eigenfunctions: bool = True) -> set[str]:
    stems = ["triptych", "trajectories", "spectrum", *(["eigenfunctions"] if eigenfunctions else [])]
    return {f"{stem}{suffix}.{ext}" for stem in stems for suffix in suffixes for ext in ("png", "svg")}


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_report_removes_the_figures_an_earlier_report_wrote_of_series_no_longer_in_the_store(tmp_path: Path) -> None:
    """1. The store analysed again with one layer instead of two: the figures of the two layers stayed beside
    the new ones, and a reader of the folder saw figures of a layer the store no longer holds."""
    plots = tmp_path / "plots"
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    first = fdl_in_process("report", store, "--format", "csv", "--plots", plots)
    assert first.returncode == 0, first.stderr
    assert _files(plots) == _report_names("_train-fc1", "_train-fc2") | {".fdl-figures.json"}

    store.unlink()
    one = make_store(store, layers=("fc1",))  # analysed again, with one layer
    second = fdl_in_process("report", one, "--format", "csv", "--plots", plots)
    assert second.returncode == 0, second.stderr
    assert _files(plots) == _report_names("") | {".fdl-figures.json"}
    assert f"note: removed 16 figure files an earlier report of this store wrote into {plots}" in second.stderr
    assert "eigenfunctions_train-fc1.png, " in second.stderr and " and 10 more\n" in second.stderr
    assert second.stdout == fdl_in_process("report", one, "--format", "csv").stdout  # notes on stderr alone


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_files_fdl_did_not_write_or_that_changed_since_are_never_removed(tmp_path: Path) -> None:
    """1. The rule's safety: only a file the list names, of a figure's name, in the folder itself, holding the
    bytes fdl wrote, is removed; the figure-named files left are named in a note."""
    from fdl_cli.figures import FIGURE_LIST, write_run_figures

    plots = tmp_path / "plots"
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    write_run_figures(rep.load_run(store), plots)
    (plots / "notes.txt").write_text("mine")
    (plots / "spectrum_mine.png").write_bytes(b"mine")  # named as a figure, never listed
    edited = plots / "triptych_train-fc2.svg"
    edited.write_text(edited.read_text() + "<!-- edited -->")  # listed, changed since
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"outside")
    listed = json.loads((plots / FIGURE_LIST).read_text())
    digest = __import__("hashlib").sha256
    mine = str(store.resolve())
    listed["files"]["../outside.png"] = {"sha256": digest(b"outside").hexdigest(), "store": mine}
    listed["files"]["notes.txt"] = {"sha256": digest(b"mine").hexdigest(), "store": mine}
    (plots / FIGURE_LIST).write_text(json.dumps(listed))

    notes: list[str] = []
    store.unlink()
    write_run_figures(rep.load_run(make_store(store, layers=("fc1",))), plots, notes=notes)
    assert outside.read_bytes() == b"outside"
    assert _files(plots) == _report_names("") | {".fdl-figures.json", "notes.txt", "spectrum_mine.png",
                                                  "triptych_train-fc2.svg"}
    assert notes[-1] == (f"{plots} also holds 2 figure files this report did not write (not in its .fdl-figures.json: "
                         "written by an fdl that kept no such list, or changed since fdl wrote them): "
                         "spectrum_mine.png, triptych_train-fc2.svg; remove them if they are stale")
    assert set(json.loads((plots / FIGURE_LIST).read_text())["files"]) == _report_names("")


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_figure_list_fdl_cannot_read_as_its_own_is_left_and_nothing_is_removed(tmp_path: Path) -> None:
    """1 (guard). A file of the list's name that is not fdl's list is neither trusted nor written over."""
    from fdl_cli.figures import FIGURE_LIST, write_run_figures

    plots = tmp_path / "plots"
    write_run_figures(rep.load_run(make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))), plots)
    (plots / FIGURE_LIST).write_text("not json")
    notes: list[str] = []
    write_run_figures(rep.load_run(make_store(tmp_path / "one.h5", layers=("fc1",))), plots, notes=notes)
    assert (plots / FIGURE_LIST).read_text() == "not json"
    assert _files(plots) == _report_names("", "_train-fc1", "_train-fc2") | {FIGURE_LIST}
    assert notes[0].startswith(f"{plots / FIGURE_LIST} is not the figure list fdl writes: it is left as it is")
    assert "also holds 16 figure files" in notes[-1]


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_second_stores_report_into_the_folder_leaves_the_first_stores_figures(tmp_path: Path) -> None:
    """1 (review). Two stores reported into one folder: the second's report removed the first's figures of
    other series, figures the user still wanted, which no report of the second store would write back."""
    from fdl_cli.figures import FIGURE_LIST, write_run_figures

    plots = tmp_path / "plots"
    two = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))
    write_run_figures(rep.load_run(two), plots)
    before = {name: (plots / name).read_bytes() for name in _report_names("_train-fc1", "_train-fc2")}
    notes: list[str] = []
    write_run_figures(rep.load_run(make_store(tmp_path / "one.h5", layers=("fc1",))), plots, notes=notes)
    assert _files(plots) == _report_names("", "_train-fc1", "_train-fc2") | {FIGURE_LIST}
    assert all((plots / name).read_bytes() == data for name, data in before.items())
    assert not any(note.startswith("removed ") for note in notes)
    assert notes == [f"{plots} also holds 16 figure files of the report of {two.resolve()}, left as they are (one "
                     "folder per store keeps each store's figures apart): eigenfunctions_train-fc1.png, "
                     "eigenfunctions_train-fc1.svg, eigenfunctions_train-fc2.png, eigenfunctions_train-fc2.svg, "
                     "spectrum_train-fc1.png, spectrum_train-fc1.svg and 10 more"]
    listed = json.loads((plots / FIGURE_LIST).read_text())["files"]
    assert {name for name, entry in listed.items() if entry["store"] == str(two.resolve())} == set(before)
    # the first store's own next report, now of fc1 alone, removes its figures of fc2 (and of fc1: renamed)
    notes = []
    two.unlink()
    write_run_figures(rep.load_run(make_store(two, layers=("fc1",))), plots, notes=notes)
    assert _files(plots) == _report_names("") | {FIGURE_LIST}
    assert notes == [f"removed 16 figure files an earlier report of this store wrote into {plots} that this one does "
                     "not write: eigenfunctions_train-fc1.png, eigenfunctions_train-fc1.svg, "
                     "eigenfunctions_train-fc2.png, eigenfunctions_train-fc2.svg, spectrum_train-fc1.png, "
                     "spectrum_train-fc1.svg and 10 more"]


# -- 2. the spectrum heat map's step axis ---------------------------------------------------------------------------


def test_the_spectrum_heat_map_places_each_checkpoint_at_its_step() -> None:
    """2. Columns were one per checkpoint, so steps 0, 10, 100 and 1000 were drawn evenly spaced. The x axis is
    now the step (linear, as in the trajectories figure); each column reaches halfway to its neighbours; a k
    above a checkpoint's rank is grey and said so, where white read as the top of the colour scale."""
    from matplotlib.collections import QuadMesh
    from matplotlib.colors import to_rgba
    from matplotlib.text import Text

    from fdl_cli.figures import BEYOND_RANK, spectrum_heatmap_figure

    steps = [0, 10, 100, 1000]
    spectra = [10.0 ** -np.arange(8.0), 10.0 ** -np.arange(8.0), 10.0 ** -np.arange(8.0), 10.0 ** -np.arange(5.0)]
    figure = spectrum_heatmap_figure(steps, spectra)
    ax = figure.axes[0]
    assert ax.get_xlim() == (0.0, 1000.0)
    mesh = next(artist for artist in ax.get_children() if isinstance(artist, QuadMesh))
    np.testing.assert_array_equal(mesh.get_coordinates()[0, :, 0], [0, 5, 55, 550, 1000])
    np.testing.assert_array_equal(mesh.get_coordinates()[:, 0, 1], np.arange(9) + 0.5)
    figure.canvas.draw()
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["0", "200", "400", "600", "800", "1000"]
    # the checkpoints, marked (matplotlib draws no minor tick where a major one is: 0 and 1000 here)
    np.testing.assert_array_equal(ax.xaxis.get_minor_locator().locs, steps)
    colours = mesh.get_facecolors().reshape(8, 4, 4)
    np.testing.assert_allclose(colours[6, 3], to_rgba(BEYOND_RANK))  # k = 7 at step 1000: rank 5
    np.testing.assert_allclose(colours[0, 3], to_rgba(mesh.cmap(1.0)))  # k = 1: log10 1 = 0, the top
    texts = [artist.get_text() for artist in figure.findobj(Text)]
    assert "k above the rank (no eigenvalue kept)" in texts
    assert ax.get_xlabel() == "step (small ticks: the checkpoints)"


def test_the_spectrum_heat_map_of_one_checkpoint_labels_its_step_alone() -> None:
    """2. One checkpoint's column is one step wide, and the axis was labelled 499.4, 499.6, ..., 500.6."""
    from fdl_cli.figures import spectrum_heatmap_figure

    figure = spectrum_heatmap_figure([500], [10.0 ** -np.arange(10.0)])
    figure.canvas.draw()
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["500"]


def test_the_spectrum_heat_map_of_a_thousand_checkpoints_stays_readable_and_small(tmp_path: Path) -> None:
    """2 (guard). 1 000 checkpoints: a few round step labels, no checkpoint marks (a solid bar), and cells
    rasterized in the SVG (64 000 vector cells would be megabytes)."""
    from fdl_cli.figures import save_figure, spectrum_heatmap_figure

    steps = list(range(0, 100_000, 100))
    figure = spectrum_heatmap_figure(steps, [10.0 ** -np.linspace(0, 6, 64)] * len(steps))
    ax = figure.axes[0]
    figure.canvas.draw()
    labels = [tick.get_text() for tick in ax.get_xticklabels() if 0 <= tick.get_position()[0] <= steps[-1]]
    assert 4 <= len(labels) <= 11 and labels[0] == "0"
    assert len(ax.get_xticks(minor=True)) == 0 and ax.get_xlabel() == "step"
    _png, svg = save_figure(figure, tmp_path, "spectrum")
    assert svg.stat().st_size < 400_000


# -- 3. matplotlib's folders with HOME unwritable ------------------------------------------------------------------


def _without_matplotlib_settings(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "HOME")}
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def _report(store: Path, *args: object, env: dict[str, str]) -> tuple[int, str, str]:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "fdl_cli", "report", str(store), *map(str, args)],
                          capture_output=True, text=True, env=env, check=False, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("home", ["under_a_file", "missing"])
def test_with_home_unwritable_the_report_says_nothing_of_matplotlib(tmp_path: Path, home: str) -> None:
    """3. HOME unwritable (a container run as another user): matplotlib warned twice on stderr ("mkdir -p failed
    ...", "Matplotlib created a temporary cache directory ..."); with HOME missing and writable above (as
    root), it made the home folder. fdl now gives matplotlib a folder of its own (a private
    temporary one, removed at exit; since session 27 a per-user one kept in the temporary folder)."""
    store = make_store(tmp_path / "run.h5")
    (tmp_path / "file").write_text("")
    home_path = tmp_path / "file" / "home" if home == "under_a_file" else tmp_path / "nohome"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = _without_matplotlib_settings(HOME=str(home_path), TMPDIR=str(temporary))
    status, stdout, stderr = _report(store, "--format", "csv", "--plots", tmp_path / "plots", env=env)
    assert status == 0, stderr
    assert stderr == f"wrote 8 figure files to {tmp_path / 'plots'}\n"
    assert stdout == fdl_in_process("report", store, "--format", "csv").stdout
    assert not home_path.exists()
    # the font cache kept for the next run (tests/test_s27_small.py), nothing else, in a folder only the user may write
    cache = temporary / f"fdl-mpl-{os.geteuid()}"
    assert [path.name for path in temporary.iterdir()] == [cache.name]
    assert cache.stat().st_mode & 0o777 == 0o700
    fonts = list(cache.glob("fontlist-v*.json"))
    assert len(fonts) == 1
    made = fonts[0].stat().st_mtime_ns
    status, _, stderr = _report(store, "--html", tmp_path / "r.html", "--format", "json", env=env)
    assert status == 0 and stderr == f"wrote {tmp_path / 'r.html'}\n"
    # the second run found the font cache the first made: read, not built again (tests/test_s27_small.py's gap 1,
    # tested on these two runs rather than on two more of its own)
    assert fonts[0].stat().st_mtime_ns == made
    assert not home_path.exists()


def test_a_matplotlib_folder_the_user_set_is_left_to_matplotlib_warnings_and_all(tmp_path: Path) -> None:
    """3 (guard). MPLCONFIGDIR set and unusable is the user's own setting failing: its warning is not hidden."""
    (tmp_path / "file").write_text("")
    env = _without_matplotlib_settings(HOME=str(tmp_path), MPLCONFIGDIR=str(tmp_path / "file" / "mpl"))
    status, _, stderr = _report(make_store(tmp_path / "run.h5"), "--format", "csv", "--plots", tmp_path / "p", env=env)
    assert status == 0
    assert "Matplotlib created a temporary" in stderr


# -- 4. an output option given twice -------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "option", "named"), [
    (["report", "{store}"], ["--html", "{a}.html", "--html", "{b}.html"], "--html"),
    (["report", "{store}"], ["--plots", "{a}", "--plots", "{b}"], "--plots"),
    (["compare", "{store}", "{store}"], ["--plots", "{a}", "--plots", "{b}"], "--plots"),
    (["export", "{store}", "--what", "eigenvalues"], ["-o", "{a}.csv", "--out", "{b}.csv"], "--out/-o"),
    (["analyze", "{ckpts}"], ["--out", "{a}.h5", "-o", "{b}.h5"], "--out/-o"),
])
def test_an_output_option_given_twice_is_a_usage_error_naming_it(
    tmp_path: Path, command: list[str], option: list[str], named: str,
) -> None:
    """4. `--html A.html --html B.html` wrote B alone, in silence (click keeps the last value)."""
    values = {"store": str(make_store(tmp_path / "run.h5")), "ckpts": str(tmp_path / "ckpts"),
              "a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    done = fdl_in_process(*(part.format(**values) for part in [*command, *option]))
    assert done.returncode == 2, done.stderr
    assert f"Error: {named} given twice ('{tmp_path / 'a'}" in done.stderr
    assert "Usage: fdl " in done.stderr and done.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.h5"]


@pytest.mark.usefixtures("cheap_figures")  # which page is written, not its images
def test_the_same_output_given_twice_is_that_output_and_other_options_keep_the_last(tmp_path: Path) -> None:
    """4 (guard). The same path twice is no ambiguity; options that write nothing keep click's last-wins."""
    store = make_store(tmp_path / "run.h5")
    page = tmp_path / "r.html"
    done = fdl_in_process("report", store, "--html", page, "--html", page, "--format", "csv", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert isinstance(json.loads(done.stdout), list)


# -- 5. a partial quality export ------------------------------------------------------------------------------------


def test_a_checkpoint_without_quality_is_null_in_json_and_a_row_of_empty_cells_in_csv(tmp_path: Path) -> None:
    """5. Step 100 stores no quality (an older store, a probe without labels): JSON said null, CSV had no row."""
    store = make_store(tmp_path / "run.h5")
    with h5py.File(store, "a") as handle:
        del handle["checkpoints/step_100/train/fc1/quality"]
    as_json = fdl_in_process("export", store, "--what", "quality", "--format", "json")
    as_csv = fdl_in_process("export", store, "--what", "quality")
    assert as_json.returncode == 0 and as_csv.returncode == 0, as_json.stderr + as_csv.stderr
    from_json = {item["step"]: item["quality"] for item in json.loads(as_json.stdout)}
    assert from_json[100] is None and len(from_json[0]) == len(from_json[200]) == 6

    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row for row in rows if row["step"] == "100"] == [{"step": "100", "k": "", "quality": ""}]
    from_csv: dict[int, list[float] | None] = {}
    for row in rows:
        values = from_csv.setdefault(int(row["step"]), None if row["quality"] == "" else [])
        if values is not None:
            assert int(row["k"]) == len(values) + 1
            values.append(float(row["quality"]))
    assert from_csv == from_json
