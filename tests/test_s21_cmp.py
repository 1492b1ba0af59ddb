"""Session 21: `fdl compare`'s tie tolerance, its loss of a classification probe, and its figures' names.

- compare called a run "richer" over D_LR differences of 1e-4: the float32 and bfloat16 analyses of one run.
- its list of the fields that differ gave `loss: ... +25.61` beside cross_entropy, read as a training loss.
- `compare --layer fc1 --plots D` then `--layer fc2 --plots D` wrote over the same two files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdl_cli import report
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, fdl_in_process
from tests.test_report import SCALARS, make_store

SAMPLE = REPO / "sample_checkpoints"


@pytest.fixture(scope="module")
def sample_float32_bfloat16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample run (a classification probe) at three steps, analysed in float32 and in bfloat16."""
    folder = tmp_path_factory.mktemp("dtypes")
    stores = []
    for dtype in ("float32", "bfloat16"):
        out = folder / f"{dtype}.h5"
        done = fdl_in_process("analyze", SAMPLE, "--steps", "0,100,1000", "--dtype", dtype, "--device", "cpu",
                              "--out", out)
        assert done.returncode == 0, done.stderr
        stores.append(out)
    return stores[0], stores[1]


def test_a_run_analysed_in_bfloat16_is_as_rich_as_in_float32(sample_float32_bfloat16: tuple[Path, Path]) -> None:
    float32, bfloat16 = sample_float32_bfloat16
    done = fdl_in_process("compare", float32, bfloat16, "--json", "--no-overlap")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    gaps = [abs(step["differences"]["d_lr"]) for step in data["steps"]]
    assert max(gaps) > 1e-6 and max(gaps) < report.DLR_TIE  # rounding's: the tie tolerance's case
    assert data["verdict"] == "The runs are equally rich (D_LR within dlr_tie = 0.001) at every matched step."
    assert data["thresholds"] == {"dlr_tie": 0.001, "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8}
    # with no tolerance, the rounding decides as it did
    strict = json.loads(fdl_in_process("compare", float32, bfloat16, "--json", "--no-overlap",
                                       "--threshold", "dlr_tie=0").stdout)
    assert strict["thresholds"] == {"dlr_tie": 0.0, "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8}
    assert " is richer than run " in strict["verdict"]
    table = fdl_in_process("compare", float32, bfloat16, "--no-overlap")
    assert table.returncode == 0 and "thresholds: dlr_tie = 0.001 (" in table.stderr


def _with_d_lr(values: list[float]) -> dict[int, dict[str, object]]:
    return {step: {**scalars, "d_lr": values[i]} for i, (step, scalars) in enumerate(SCALARS.items())}


def test_the_tie_tolerance_decides_the_verdict(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")  # D_LR 0.9, 0.5, 0.125
    near = make_store(tmp_path / "near.h5", seed=3, scalars=_with_d_lr([0.9, 0.5004, 0.1246]))
    far = make_store(tmp_path / "far.h5", seed=3, scalars=_with_d_lr([0.9, 0.5004, 0.123]))
    run_a, run_near, run_far = (report.load_run(path) for path in (a, near, far))
    tied = report.compare_runs(run_a, run_near, overlap=False)
    assert tied.verdict == "The runs are equally rich (D_LR within dlr_tie = 0.001) at every matched step."
    assert tied.thresholds == {"dlr_tie": 0.001, "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8}
    ends = report.compare_runs(run_a, run_far, overlap=False)
    assert ends.verdict.startswith("Run B is richer than run A (lower D_LR) from step 200 on")
    # the user's own tolerance: 0.01 ties 0.125 and 0.123; 1e-4 tells 0.125 and 0.1246 apart
    wide = report.compare_runs(run_a, run_far, overlap=False, thresholds=report.compare_thresholds(["dlr_tie=0.01"]))
    assert wide.verdict.startswith("The runs are equally rich (D_LR within dlr_tie = 0.01)")
    narrow = report.compare_runs(run_a, run_near, overlap=False,
                                 thresholds=report.compare_thresholds(["dlr_tie = 1e-4"]))
    assert narrow.verdict.startswith("Run B is richer than run A (lower D_LR) from step 200 on")
    # the same D_LR at every step says so, as before the tolerance
    assert report.compare_runs(run_a, run_a, overlap=False).verdict == (
        "The runs are equally rich (same D_LR) at every matched step.")


@pytest.mark.parametrize(("value", "said"), [
    ("mf_extra=2", "unknown compare threshold 'mf_extra'"),  # classify's, which compare does not use
    ("cka_static=1.5", "inconsistent thresholds"),  # one compare shares with classify, checked as classify's
    ("dlr_tie=-0.1", "bad threshold 'dlr_tie=-0.1'"),
    ("dlr_tie=nan", "bad threshold 'dlr_tie=nan'"),
    ("dlr_tie", "bad threshold 'dlr_tie'"),
])
def test_a_bad_compare_threshold_is_an_error_of_status_1(tmp_path: Path, value: str, said: str) -> None:
    a = make_store(tmp_path / "a.h5")
    done = fdl_in_process("compare", a, a, "--threshold", value)
    assert done.returncode == 1 and done.stdout == ""
    assert f"error: {said}" in done.stderr and "fix:" in done.stderr and "Traceback" not in done.stderr


def test_the_loss_of_a_classification_probe_is_named_what_it_is(sample_float32_bfloat16: tuple[Path, Path]) -> None:
    float32, bfloat16 = sample_float32_bfloat16
    done = fdl_in_process("compare", float32, bfloat16, "--no-overlap")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # session 24: beyond the table's fields and the regime, the many fields that differ are named on one line
    # (by their --format csv / --json names, with no number to misread); their own lines name the loss
    named = next(line for line in lines if " other fields differ: " in line)
    assert ", loss, " in named and named.split(" (B − A")[0].endswith(", cross_entropy")
    compared = report.compare_runs(report.load_run(float32), report.load_run(bfloat16), overlap=False)
    own = [differs for name, differs, _ in report._field_lines(compared) if name in ("loss", "cross_entropy")]
    assert own[0] is not None and own[0].startswith("loss (MSE(logits, one-hot)): differs at 3 steps, largest B − A ")
    assert own[1] is not None and own[1].startswith("cross_entropy: differs at ")
    assert not any(line.startswith("loss") for line in lines)
    # machine output keeps the field's name
    data = json.loads(fdl_in_process("compare", float32, bfloat16, "--json", "--no-overlap").stdout)
    assert data["steps"][0]["differences"]["loss"] is not None and "loss" in data["steps"][0]["a"]
    csv_header = fdl_in_process("compare", float32, bfloat16, "--format", "csv", "--no-overlap").stdout.splitlines()[0]
    assert ",delta_loss," in csv_header


def test_the_loss_of_a_regression_probe_keeps_its_name(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", seed=3, scalars={step: {**values, "loss": values["loss"] * 2}
                                                         for step, values in SCALARS.items()})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(b), overlap=False))
    assert "loss: differs at 3 steps, largest B − A +1.25" in lines


def _figures(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("compare_"))


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_compares_of_two_layers_into_one_folder_keep_both(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5", layers=("fc1", "fc2"))
    b = make_store(tmp_path / "b.h5", layers=("fc1", "fc2"), seed=5)
    plots = tmp_path / "plots"
    for layer in ("fc1", "fc2"):
        done = fdl_in_process("compare", a, b, "--layer", layer, "--plots", plots)
        assert done.returncode == 0, done.stderr
    assert _figures(plots) == [f"compare_{stem}_train-{layer}.{ext}" for stem in ("k95_utility", "trajectories")
                               for layer in ("fc1", "fc2") for ext in ("png", "svg")]
    listed = json.loads((plots / ".fdl-figures.json").read_text())["files"]
    assert listed["compare_trajectories_train-fc2.png"]["compare"]["series_a"] == "train/fc2"
    assert listed["compare_trajectories_train-fc1.svg"]["compare"]["series_b"] == "train/fc1"
    # store B's series named otherwise: both in the name
    done = fdl_in_process("compare", a, b, "--layer", "fc1", "--layer-b", "fc2", "--plots", plots, "--no-overlap")
    assert done.returncode == 0, done.stderr
    assert (plots / "compare_k95_utility_train-fc1_vs_train-fc2.png").is_file()


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_compare_whose_store_gained_a_series_removes_its_unsuffixed_figures(tmp_path: Path) -> None:
    """The stale-figure removal of the folder's list, across the change of names."""
    store = tmp_path / "a.h5"
    make_store(store)
    plots = tmp_path / "plots"
    assert fdl_in_process("compare", store, store, "--plots", plots).returncode == 0
    assert _figures(plots) == ["compare_k95_utility.png", "compare_k95_utility.svg",
                               "compare_trajectories.png", "compare_trajectories.svg"]
    store.unlink()
    make_store(store, layers=("fc1", "fc2"))
    done = fdl_in_process("compare", store, store, "--layer", "fc1", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert _figures(plots) == ["compare_k95_utility_train-fc1.png", "compare_k95_utility_train-fc1.svg",
                               "compare_trajectories_train-fc1.png", "compare_trajectories_train-fc1.svg"]
    assert "removed 4 figure files an earlier compare of these stores and series wrote" in done.stderr
