"""Session 21, what `fdl export` and `fdl compare --plots` leave behind: a checkpoint without quality in the npy
export, and compare's figures in the folder's list of figures. Each numbered test failed before its fix; those
marked "guard" pin what the fix must not break."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli import report as rep
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process as fdl
from tests.test_report import make_store
from tests.test_s20_out import _files, _report_names

# -- 1. a checkpoint without quality in `--format npy` --------------------------------------------------------------


def test_a_checkpoint_without_quality_has_its_npy_entry_all_nan(tmp_path: Path) -> None:
    """1. Step 100 stores no quality: JSON says null and CSV a row of empty cells, but the `.npz` archive had no
    `step_100` at all, so `archive[f"step_{s}"] for s in archive["steps"]` failed with a KeyError. Now it holds
    NaN, one a k of the checkpoint's rank (the length its eigenvalues and utilities have), as the trajectories'
    archive holds NaN for null."""
    store = make_store(tmp_path / "run.h5")
    with h5py.File(store, "a") as handle:
        del handle["checkpoints/step_100/train/fc1/quality"]
        stored = {step: handle[f"checkpoints/step_{step}/train/fc1/quality"][()] for step in (0, 200)}
        rank = handle["checkpoints/step_100/train/fc1/eigenvalues"].shape[0]
    out = tmp_path / "quality.npz"
    done = fdl("export", store, "--what", "quality", "--format", "npy", "--out", out)
    assert done.returncode == 0, done.stderr
    with np.load(out) as archive:
        assert sorted(archive.files) == ["step_0", "step_100", "step_200", "steps"]
        assert archive["steps"].tolist() == [0, 100, 200]
        missing = archive["step_100"]
        assert missing.dtype == np.float64 and missing.shape == (rank,) and np.isnan(missing).all()
        for step, values in stored.items():
            np.testing.assert_array_equal(archive[f"step_{step}"], values)
    # --steps: the checkpoint without quality among those chosen, still an entry
    done = fdl("export", store, "--what", "quality", "--format", "npy", "--out", out, "--steps", "100,200")
    assert done.returncode == 0, done.stderr
    with np.load(out) as archive:
        assert sorted(archive.files) == ["step_100", "step_200", "steps"] and np.isnan(archive["step_100"]).all()


# -- 2. `fdl compare --plots DIR` in the folder's figure list --------------------------------------------------------

COMPARE_NAMES = {f"{stem}.{ext}" for stem in ("compare_trajectories", "compare_k95_utility") for ext in ("png", "svg")}
#: a compare of layer fc1 of stores of two layers: its names end in the series (tests/test_s21_cmp.py)
COMPARE_FC1_NAMES = {name.replace(".", "_train-fc1.") for name in COMPARE_NAMES}


def _listed(plots: Path) -> dict[str, dict[str, object]]:
    from fdl_cli.figures import FIGURE_LIST

    files: dict[str, dict[str, object]] = json.loads((plots / FIGURE_LIST).read_text())["files"]
    return files


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_compare_lists_its_figures_and_a_report_into_the_folder_keeps_them(tmp_path: Path) -> None:
    """2. `fdl compare --plots DIR` kept no list: its figures were not in DIR/.fdl-figures.json. They are now,
    with their sha256 and the pair of stores and series compared; a report into the same folder keeps them
    listed and in place, and a compare keeps the report's, each without a note of the other's files."""
    plots = tmp_path / "plots"
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    done = fdl("compare", a, b, "--no-overlap", "--format", "csv", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith(f"wrote 4 figure files to {plots}\n")
    import hashlib

    pair = {"a": str(a.resolve()), "series_a": "train/fc1", "b": str(b.resolve()), "series_b": "train/fc1"}
    assert _listed(plots) == {name: {"sha256": hashlib.sha256((plots / name).read_bytes()).hexdigest(),
                                     "compare": pair} for name in COMPARE_NAMES}

    report = fdl("report", a, "--format", "csv", "--plots", plots)
    assert report.returncode == 0, report.stderr
    assert report.stderr == f"wrote 8 figure files to {plots}\n"
    assert _files(plots) == COMPARE_NAMES | _report_names("") | {".fdl-figures.json"}
    listed = _listed(plots)
    assert {name for name, entry in listed.items() if entry.get("compare") == pair} == COMPARE_NAMES
    assert {name for name, entry in listed.items() if entry.get("store") == str(a.resolve())} == _report_names("")

    again = fdl("compare", a, b, "--no-overlap", "--format", "csv", "--plots", plots)
    assert again.returncode == 0, again.stderr
    assert again.stderr.endswith(f"wrote 4 figure files to {plots}\n") and "note:" not in again.stderr
    assert _listed(plots) == listed
    assert _files(plots) == COMPARE_NAMES | _report_names("") | {".fdl-figures.json"}


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_compare_removes_its_own_stale_figures_and_no_others(tmp_path: Path) -> None:
    """2. The folder's list names figures an earlier compare of the same pair and series wrote that this one does
    not write (an fdl that named them otherwise): removed when unchanged, with a note. Those of another pair, of
    another series, or of a report are left, listed; one of the same compare changed since is left, and named."""
    from fdl_cli.figures import FIGURE_LIST, write_compare_figures

    plots = tmp_path / "plots"
    a, b = make_store(tmp_path / "a.h5", layers=("fc1", "fc2")), make_store(tmp_path / "b.h5", layers=("fc1", "fc2"))
    run_a, run_b = rep.load_run(a, layer="fc1"), rep.load_run(b, layer="fc1")
    comparison = rep.compare_runs(run_a, run_b, overlap=False)
    write_compare_figures(run_a, run_b, comparison, plots)
    listed = json.loads((plots / FIGURE_LIST).read_text())
    pair = listed["files"]["compare_trajectories_train-fc1.png"]["compare"]
    import hashlib

    def plant(name: str, owner: dict[str, object]) -> None:
        (plots / name).write_bytes(name.encode())
        listed["files"][name] = {"sha256": hashlib.sha256(name.encode()).hexdigest(), **owner}

    plant("compare_trajectories_old.png", {"compare": pair})  # this compare's, stale
    plant("compare_trajectories_fc2.png", {"compare": {**pair, "series_a": "train/fc2", "series_b": "train/fc2"}})
    plant("compare_trajectories_ab.png", {"compare": {**pair, "b": str(a.resolve())}})  # another pair's
    plant("trajectories.png", {"store": str(a.resolve())})  # a report's
    plant("compare_k95_utility_old.svg", {"compare": pair})
    (plots / "compare_k95_utility_old.svg").write_text("changed since")  # this compare's, changed since
    (plots / FIGURE_LIST).write_text(json.dumps(listed))

    notes: list[str] = []
    write_compare_figures(run_a, run_b, comparison, plots, notes=notes)
    kept = {"compare_trajectories_fc2.png", "compare_trajectories_ab.png", "trajectories.png"}
    assert _files(plots) == COMPARE_FC1_NAMES | kept | {"compare_k95_utility_old.svg", FIGURE_LIST}
    assert set(json.loads((plots / FIGURE_LIST).read_text())["files"]) == COMPARE_FC1_NAMES | kept
    assert notes == [
        f"removed 1 figure file an earlier compare of these stores and series wrote into {plots} that this one "
        "does not write: compare_trajectories_old.png",
        f"{plots} also holds 2 figure files of the compares of {a.resolve()} (train/fc1) vs {a.resolve()} "
        f"(train/fc1), {a.resolve()} (train/fc2) vs {b.resolve()} (train/fc2), left as they are (one folder "
        "per compare keeps each compare's figures apart): compare_trajectories_ab.png, compare_trajectories_fc2.png",
        f"{plots} also holds 1 figure file this compare did not write (not in its .fdl-figures.json: written by an fdl "
        "that kept no such list, or changed since fdl wrote them): compare_k95_utility_old.svg; remove them if they "
        "are stale",
    ]


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_report_never_removes_a_compares_figures_listed_under_its_store(tmp_path: Path) -> None:
    """2 (guard). A compare of a store with itself lists its figures under the pair: the store's next report,
    of one series fewer, removes its own stale figures, never the compare's."""
    plots = tmp_path / "plots"
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    assert fdl("report", store, "--format", "csv", "--plots", plots).returncode == 0
    assert fdl("compare", store, store, "--layer", "fc1", "--format", "csv", "--plots", plots).returncode == 0
    store.unlink()
    make_store(store, layers=("fc1",))
    done = fdl("report", store, "--format", "csv", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert "note: removed 16 figure files an earlier report of this store" in done.stderr
    assert _files(plots) == COMPARE_FC1_NAMES | _report_names("") | {".fdl-figures.json"}
    assert set(_listed(plots)) == COMPARE_FC1_NAMES | _report_names("")


# -- 3. booleans in CSV ---------------------------------------------------------------------------------------------


def test_csv_booleans_read_back_as_the_readme_says(tmp_path: Path) -> None:
    """3 (guard). CSV keeps Python's `True`/`False` (JSON: true/false), a documented format left as it is: the csv
    module reads the strings, NumPy's genfromtxt (dtype=None) booleans, as README says."""
    import csv
    import io

    store = make_store(tmp_path / "a.h5")
    text = fdl("compare", store, store, "--no-overlap", "--format", "csv").stdout
    assert [row["exact"] for row in csv.DictReader(io.StringIO(text))] == ["True"] * 3
    table = np.genfromtxt(io.StringIO(text), delimiter=",", names=True, dtype=None, encoding="utf-8", usecols=(0, 1, 2))
    assert table.dtype["exact"] == np.bool_ and table["exact"].tolist() == [True] * 3
    steps = json.loads(fdl("compare", store, store, "--no-overlap", "--json").stdout)["steps"]
    assert [step["exact"] for step in steps] == [True] * 3
