"""Session 21, small fixes: the series in the titles of `fdl compare --plots` figures, distinct names for the
compare figures of two series whose names clean to one, the layer (probe) order a resume is told, and classify's
note on a run whose outputs are constant over the probe. Each test failed before its fix; those marked "guard"
pin what the fix must not break."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fdl_cli import report as rep
from tests.cli_run import fdl_in_process as fdl
from tests.test_report import make_store
from tests.test_s21_zero import _analyze, _checkpoints, _probe

# -- 1. the series compared in the titles of compare's figures ------------------------------------------------------


def _titles(run_a: rep.Run, run_b: rep.Run) -> dict[str, str]:
    from fdl_cli.figures import compare_figures

    comparison = rep.compare_runs(run_a, run_b, overlap=False)
    return {stem: figure.axes[0].get_title() for stem, figure in compare_figures(run_a, run_b, comparison)}


def test_compare_figures_of_stores_of_several_series_name_the_series_in_their_titles(tmp_path: Path) -> None:
    """1. The file names of a compare of stores of several series carry the series, the figures' titles did not
    (a report's HTML titles do): an image opened alone did not say which layer it compared."""
    a = make_store(tmp_path / "a.h5", layers=("fc1", "fc2"))
    b = make_store(tmp_path / "b.h5", layers=("fc1", "fc2"), seed=3)
    same = _titles(rep.load_run(a, layer="fc2"), rep.load_run(b, layer="fc2"))
    assert same == {"compare_trajectories_train-fc2": "feature change over training (train/fc2)",
                    "compare_k95_utility_train-fc2":
                        r"eigenfunctions used by the learned function (k95 of $\hat{\Pi}$) (train/fc2)"}
    other = _titles(rep.load_run(a, layer="fc1"), rep.load_run(b, layer="fc2"))
    assert other["compare_trajectories_train-fc1_vs_train-fc2"] == (
        "feature change over training (A: train/fc1, B: train/fc2)")
    assert other["compare_k95_utility_train-fc1_vs_train-fc2"].endswith(" (A: train/fc1, B: train/fc2)")


def test_compare_figures_of_single_series_stores_keep_their_titles(tmp_path: Path) -> None:
    """1 (guard). Names without the series, titles without it."""
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    assert _titles(rep.load_run(a), rep.load_run(b)) == {
        "compare_trajectories": "feature change over training",
        "compare_k95_utility": r"eigenfunctions used by the learned function (k95 of $\hat{\Pi}$)"}


# -- 2. two series whose names clean to one ------------------------------------------------------------------------


def _names(folder: Path, prefix: str) -> set[str]:
    return {path.name for path in folder.iterdir() if path.name.startswith(prefix)}


def test_compares_of_two_series_cleaned_to_one_name_write_distinct_files(tmp_path: Path) -> None:
    """2. Layers fc:input and fc_input both clean to `_train-fc_input`: the compare of one, then of the other,
    into one folder wrote the same names, the second over the first. Each now takes its place among the store's
    series, `_1` and `_2`, as the store's report names its figures; a compare again removes none of the other's."""
    store = make_store(tmp_path / "run.h5", layers=("fc:input", "fc_input"))
    other = make_store(tmp_path / "other.h5", layers=("fc:input", "fc_input"), seed=4)
    plots = tmp_path / "plots"
    for layer in ("fc:input", "fc_input"):
        done = fdl("compare", store, other, "--layer", layer, "--no-overlap", "--plots", plots)
        assert done.returncode == 0, done.stderr
        assert "removed" not in done.stderr  # the other's are named as left, as any other compare's
    names = {f"compare_{stem}_train-fc_input_{index}.{ext}" for stem in ("trajectories", "k95_utility")
             for index in (1, 2) for ext in ("png", "svg")}
    assert _names(plots, "compare_") == names
    listed = json.loads((plots / ".fdl-figures.json").read_text())["files"]
    assert {name: entry["compare"]["series_a"] for name, entry in listed.items()} == {
        name: "train/fc:input" if "_1." in name else "train/fc_input" for name in names}
    again = fdl("compare", store, other, "--layer", "fc:input", "--no-overlap", "--plots", plots)
    assert again.returncode == 0 and "removed" not in again.stderr
    assert _names(plots, "compare_") == names
    # the store's report gives each series the same place
    assert fdl("report", store, "--format", "csv", "--plots", plots).returncode == 0
    assert {"trajectories_train-fc_input_1.png", "trajectories_train-fc_input_2.png"} <= _names(plots, "traj")
    # store B's series of the other layer: both places in the name
    done = fdl("compare", store, other, "--layer", "fc:input", "--layer-b", "fc_input", "--no-overlap",
               "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert (plots / "compare_trajectories_train-fc_input_1_vs_train-fc_input_2.png").is_file()


def test_a_compare_of_a_series_cleaned_to_one_name_removes_the_figures_it_wrote_unnumbered(tmp_path: Path) -> None:
    """2 (guard). The figures an earlier fdl's compare wrote under the shared name, listed under its series, are
    removed by the compare of the same series now that it writes `_1` (the folder's list, across the names)."""
    import hashlib

    store = make_store(tmp_path / "run.h5", layers=("fc:input", "fc_input"))
    plots = tmp_path / "plots"
    assert fdl("compare", store, store, "--layer", "fc:input", "--no-overlap", "--plots", plots).returncode == 0
    listing = json.loads((plots / ".fdl-figures.json").read_text())
    for name in list(listing["files"]):  # as the fdl before the fix named them
        old = name.replace("_1.", ".")
        (plots / old).write_bytes((plots / name).read_bytes())
        listing["files"][old] = {**listing["files"].pop(name),
                                 "sha256": hashlib.sha256((plots / old).read_bytes()).hexdigest()}
        (plots / name).unlink()
    (plots / ".fdl-figures.json").write_text(json.dumps(listing))
    done = fdl("compare", store, store, "--layer", "fc:input", "--no-overlap", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert "note: removed 4 figure files an earlier compare of these stores and series wrote" in done.stderr
    assert _names(plots, "compare_") == {f"compare_{stem}_train-fc_input_1.{ext}"
                                         for stem in ("trajectories", "k95_utility") for ext in ("png", "svg")}
