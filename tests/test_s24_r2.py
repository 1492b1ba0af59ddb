"""Session 24: the R² of each output of a regression probe of several outputs.

`r2` pools the outputs (1 − Σ_j SSE_j / Σ_j SST_j, docs/measures.md), which hid one badly fitted output: 0.79
pooled over 0.41, 0.80 and 0.93 (the store below). fdl now stores each output's R² (`r2_outputs`, (C,), NaN for
a constant target column), and `fdl report` shows the worst (`worst r2`) and a line of them all, and gives them
in --json. Stores without the dataset (older ones) report, compare and classify as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from fdl_cli.fields import R2_OUTPUT_FIELDS, RECORD_FIELDS
from fdl_cli.spectral import measure
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process, model_file
from tests.test_spectral import stats

MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    # `constant`: the first output varies 5 times less than the others, the last predicts 2.5 everywhere (a zero
    # row of the head, bias 2.5)
    def __init__(self, outputs=4, constant=True):
        super().__init__()
        self.body, self.head = nn.Linear(4, 6), nn.Linear(6, outputs)
        if constant:
            with torch.no_grad():
                self.head.weight[0].mul_(0.2)
                self.head.weight[-1].zero_()
                self.head.bias[-1] = 2.5

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def build(**options):
    return Net(**options)
"""

#: each target column's noise, in units of its output's spread: output 0 fitted badly, 2 well; 3 constant
NOISE = np.array([1.6, 0.5, 0.25, 0.0])


def _float64_r2(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """R² of each column in float64, two passes (the mean first): NaN where the column of y is constant."""
    sse = ((yhat - y) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


# ------------------------------------------------------------------------------------- the measure


@pytest.mark.parametrize("batch", [0, 7])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_r2_per_output_matches_sklearn_and_float64(batch: int, offset: float) -> None:
    """Each output's R² equals sklearn's r2_score(multioutput='raw_values') and a two-pass float64 computation,
    in one batch or several and with targets far from 0 (sums about a shift); a constant target column is NaN
    (sklearn: 1.0 or 0.0, or with force_finite=False nan / -inf: 0/0 either way). The pooled r2 keeps its
    meaning: 1 − ΣSSE/ΣSST, sklearn's 'variance_weighted' where no column is constant."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(61, 5))
    outputs = features @ rng.normal(size=(5, 4)) + offset
    targets = outputs + rng.normal(size=outputs.shape) * outputs.std(axis=0) * NOISE
    targets[:, 3] = 2.5 + offset
    result = measure(stats(features, outputs, targets=targets, batch=batch))
    per_output = result.r2_outputs
    assert per_output is not None and per_output.shape == (4,) and per_output.dtype == np.float64
    expected = r2_score(targets[:, :3], outputs[:, :3], multioutput="raw_values")
    np.testing.assert_allclose(per_output[:3], expected, rtol=1e-9 if offset else 1e-12)
    np.testing.assert_allclose(per_output[:3], _float64_r2(targets, outputs)[:3], rtol=1e-9 if offset else 1e-12)
    assert 0.2 < per_output[0] < 0.5 < per_output[1] < 0.9 < per_output[2] < 1.0
    assert np.isnan(per_output[3])
    # pooled: the constant column's squared error counts in full, over no variance of its own
    sse, sst = ((outputs - targets) ** 2).sum(), ((targets - targets.mean(axis=0)) ** 2).sum()
    assert result.scalars["r2"] == pytest.approx(1.0 - sse / sst, rel=1e-9)
    three = measure(stats(features, outputs[:, :3], targets=targets[:, :3], batch=batch))
    assert three.scalars["r2"] == pytest.approx(
        r2_score(targets[:, :3], outputs[:, :3], multioutput="variance_weighted"), rel=1e-9)
    assert three.scalars["r2"] > per_output[0] + 0.1  # the pooled value sits well above the worst output's
    np.testing.assert_allclose(three.r2_outputs, per_output[:3], rtol=1e-14)


def test_r2_per_output_only_for_several_regression_outputs() -> None:
    """None for one output (r2 is that output's), class labels and a probe without targets; a constant column of
    0 (raw sums) is NaN too, and a perfect fit of the others is exactly 1."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(30, 4))
    outputs = features @ rng.normal(size=(4, 3))
    assert measure(stats(features, outputs[:, :1], targets=outputs[:, :1] + 0.1)).r2_outputs is None
    assert measure(stats(features, outputs, labels=np.arange(30) % 3)).r2_outputs is None
    assert measure(stats(features, outputs)).r2_outputs is None
    targets = outputs.copy()
    targets[:, 1] = 0.0
    values = measure(stats(features, outputs, targets=targets)).r2_outputs
    assert values is not None
    assert values[0] == pytest.approx(1.0, abs=1e-12) and values[2] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(values[1])


# ------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A store of a 4-output regression run (2 checkpoints, the last output constant 2.5 with a target of 2.5),
    the targets and the last checkpoint's outputs computed here."""
    folder = tmp_path_factory.mktemp("r2")
    module = model_file(folder, MODEL)
    (folder / "ck").mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    for step in (0, 10):
        torch.manual_seed(step)
        net = module.build()
        torch.save(net.state_dict(), folder / "ck" / f"step_{step}.pt")
    with torch.no_grad():
        outputs = net(torch.from_numpy(x)).double().numpy()
    assert np.all(outputs[:, 3] == 2.5)
    targets = outputs + rng.normal(size=outputs.shape) * outputs.std(axis=0) * NOISE
    np.savez(folder / "probe.npz", x=x, y=targets)
    store = folder / "run.h5"
    done = fdl_in_process("analyze", folder / "ck", "--model", f"{folder / 'model.py'}:build", "--layer", "body",
                          "--probe", folder / "probe.npz", "-o", store)
    assert done.returncode == 0, done.stderr
    return {"folder": folder, "store": store, "targets": targets, "outputs": outputs}


def _report(*args: object) -> str:
    done = fdl_in_process("report", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_analyze_stores_each_outputs_r2(run: dict) -> None:
    """The store's series group holds r2_outputs (C,) float64 at every checkpoint: sklearn's values at the last
    (the outputs recomputed here in float32, as fdl ran them), NaN for the constant target column."""
    targets, outputs = run["targets"], run["outputs"]
    with h5py.File(run["store"], "r") as handle:
        leaf = handle["checkpoints/step_10/probe/body"]
        stored = leaf["r2_outputs"][()]
        assert leaf["r2_outputs"].dtype == np.float64 and stored.shape == (4,)
        assert "r2_outputs" in handle["checkpoints/step_0/probe/body"]
        assert "r2_outputs" not in handle["trajectories/probe/body"]  # the trajectories are as they were
    expected = r2_score(targets[:, :3], outputs[:, :3], multioutput="raw_values")
    np.testing.assert_allclose(stored[:3], expected, rtol=1e-6)
    np.testing.assert_allclose(stored[:3], _float64_r2(targets, outputs)[:3], rtol=1e-6)
    assert np.isnan(stored[3])
    assert 0.2 < stored[0] < 0.6 < stored[1] < 0.9 < stored[2]


def test_report_json_csv_give_each_outputs_r2_and_the_worst(run: dict) -> None:
    """--json gives each output's R² (null: a constant target column), the smallest and its column, after the
    fields of every record; csv a JSON list in one cell, markdown too."""
    records = json.loads(fdl_in_process("report", run["store"], "--json").stdout)
    assert list(records[-1]) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS]
    last = records[-1]
    with h5py.File(run["store"], "r") as handle:
        stored = handle["checkpoints/step_10/probe/body/r2_outputs"][()]
    assert last["r2_outputs"][:3] == stored[:3].tolist() and last["r2_outputs"][3] is None
    assert last["r2_min"] == stored[0] and last["r2_min_output"] == 0
    # r2 unchanged in meaning: pooled over the outputs, far above the worst one
    targets, outputs = run["targets"], run["outputs"]
    assert last["r2"] == pytest.approx(r2_score(targets[:, :3], outputs[:, :3], multioutput="variance_weighted"),
                                       rel=1e-6)
    assert last["r2"] > last["r2_min"] + 0.3
    csv = fdl_in_process("report", run["store"], "--format", "csv").stdout.splitlines()
    assert csv[0].endswith(",r2_outputs,r2_min,r2_min_output")
    assert csv[-1].endswith(f',"{json.dumps(last["r2_outputs"])}",{last["r2_min"]!r},0')
    markdown = fdl_in_process("report", run["store"], "--format", "markdown").stdout
    assert "| r2_outputs | r2_min | r2_min_output |" in markdown and ", null] |" in markdown


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_report_text_shows_the_worst_output(run: dict) -> None:
    """The table gets a `worst r2` column beside r2 (value and target column), and a line lists each output's R²
    at the last checkpoint, the constant column said so; the HTML page has the line too."""
    text = _report(run["store"])
    head = next(line for line in text.splitlines() if line.startswith("step "))
    assert head.split()[8:11] == ["r2", "worst", "r2"]
    stored = json.loads(fdl_in_process("report", run["store"], "--json").stdout)[-1]
    row = next(line for line in text.splitlines() if line.split()[:1] == ["10"])
    assert row.split()[7:10] == [f"{stored['r2']:.4f}", f"{stored['r2_min']:.4f}", "y0"]
    values = stored["r2_outputs"]
    line = (f"r2 per output at step 10: y0 {values[0]:.4f}, y1 {values[1]:.4f}, y2 {values[2]:.4f}, "
            f"y3 — (constant target); worst y0 (r2 {stored['r2']:.4f} pools them")
    assert line in text
    assert "worst r2 = r2_min (the smallest R² of one output" in text
    page = run["folder"] / "page.html"
    assert fdl_in_process("report", run["store"], "--html", page).returncode == 0
    assert "r2 per output at step 10: y0" in page.read_text()


def test_single_output_and_classes_report_as_before(run: dict, tmp_path: Path) -> None:
    """One output (r2 is its own R²) and class labels: no r2_outputs dataset, records and table as before."""
    folder, x = run["folder"], np.load(run["folder"] / "probe.npz")["x"]
    module = model_file(tmp_path, MODEL)
    for name, outputs, y in (("one", 1, run["targets"][:, :1]), ("classes", 4, np.arange(64) % 4)):
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        kwargs = json.dumps({"outputs": outputs, "constant": False})
        (tmp_path / name).mkdir()
        for step in (0, 10):
            torch.manual_seed(step)
            torch.save(module.build(outputs=outputs, constant=False).state_dict(), tmp_path / name / f"step_{step}.pt")
        store = tmp_path / f"{name}.h5"
        done = fdl_in_process("analyze", tmp_path / name, "--model", f"{folder / 'model.py'}:build", "--model-kwargs",
                              kwargs, "--layer", "body", "--probe", tmp_path / f"{name}.npz", "-o", store)
        assert done.returncode == 0, done.stderr
        with h5py.File(store, "r") as handle:
            assert "r2_outputs" not in handle["checkpoints/step_10/probe/body"]
        records = json.loads(fdl_in_process("report", store, "--json").stdout)
        assert list(records[-1]) == list(RECORD_FIELDS)
        assert (records[-1]["r2"] is None) == (name == "classes")
        text = _report(store)
        assert "worst r2" not in text and "r2 per output" not in text


def _older(run: dict, tmp_path: Path) -> Path:
    """The store as an fdl before r2_outputs wrote it: the same file without the datasets."""
    old = tmp_path / "old.h5"
    shutil.copy(run["store"], old)
    with h5py.File(old, "r+") as handle:
        for step in ("step_0", "step_10"):
            del handle[f"checkpoints/{step}/probe/body/r2_outputs"]
    return old


def test_older_store_reports_compares_and_classifies_as_before(run: dict, tmp_path: Path) -> None:
    """A store without r2_outputs: records of RECORD_FIELDS alone (the pooled r2 as stored), no column nor line,
    no warning; compare against the new store (its side of the per-output fields null) and classify run as they did."""
    old = _older(run, tmp_path)
    new_records = json.loads(fdl_in_process("report", run["store"], "--json").stdout)
    done = fdl_in_process("report", old, "--json")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    records = json.loads(done.stdout)
    assert list(records[-1]) == list(RECORD_FIELDS)
    assert [r["r2"] for r in records] == [r["r2"] for r in new_records]
    text = _report(old)
    assert "worst r2" not in text and "r2 per output" not in text and "warning" not in text
    compared = fdl_in_process("compare", old, run["store"], "--json")
    assert compared.returncode == 0, compared.stderr
    steps = json.loads(compared.stdout)["steps"]
    assert [s["differences"]["r2"] for s in steps] == [0.0, 0.0]
    # session 25: compare gives each run's per-output R² (null for the older store's side, which has none)
    assert list(steps[-1]["a"]) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS] and steps[-1]["a"]["r2_outputs"] is None
    assert steps[-1]["b"]["r2_outputs"] is not None and steps[-1]["differences"]["r2_min"] is None
    classified = fdl_in_process("classify", old, "--json")
    assert classified.returncode == 0, classified.stderr
    verdict = json.loads(classified.stdout)
    assert verdict["evidence"]["final_r2"] == records[-1]["r2"]
    assert json.loads(fdl_in_process("classify", run["store"], "--json").stdout)["regime"] == verdict["regime"]


def test_resuming_an_older_store_adds_r2_outputs_at_new_checkpoints(run: dict, tmp_path: Path) -> None:
    """A resume of an older store stores r2_outputs at the checkpoints it analyses; the older ones stay without
    (null in --json, '—' in the table), and the line names the last checkpoint that has them."""
    old = _older(run, tmp_path)
    folder = run["folder"]
    checkpoints = tmp_path / "ck"
    shutil.copytree(folder / "ck", checkpoints)
    torch.manual_seed(20)
    torch.save(model_file(tmp_path, MODEL).build().state_dict(), checkpoints / "step_20.pt")
    done = fdl_in_process("analyze", checkpoints, "--model", f"{folder / 'model.py'}:build", "--layer", "body",
                          "--probe", folder / "probe.npz", "-o", old)
    assert done.returncode == 0, done.stderr
    records = json.loads(fdl_in_process("report", old, "--json").stdout)
    assert [r["r2_outputs"] is None for r in records] == [True, True, False]
    assert [r["r2_min"] is None for r in records] == [True, True, False]
    assert records[-1]["r2_outputs"][3] is None and records[-1]["r2_min_output"] in (0, 1, 2)
    text = _report(old)
    row = next(line for line in text.splitlines() if line.split()[:1] == ["0"])
    assert "—" in row.split()[8:10]
    assert "r2 per output at step 20: y0" in text


def damaged_r2_outputs(run: dict, tmp_path: Path) -> Path:
    """A copy of the run's store whose last checkpoint's r2_outputs has 3 values, not 4 (a hand-edited store)."""
    edited = tmp_path / "edited.h5"
    shutil.copy(run["store"], edited)
    with h5py.File(edited, "r+") as handle:
        leaf = handle["checkpoints/step_10/probe/body"]
        del leaf["r2_outputs"]
        leaf["r2_outputs"] = np.zeros(3)
    return edited


def test_a_damaged_r2_outputs_reads_as_null_with_a_warning(run: dict, tmp_path: Path) -> None:
    """A dataset of another shape (a hand-edited store) is a reader warning and null; the report goes on."""
    edited = damaged_r2_outputs(run, tmp_path)
    done = fdl_in_process("report", edited, "--json")
    assert done.returncode == 0, done.stderr
    assert "the r2 of each output of probe/body at step 10 has the shape (3,), not (4,)" in done.stderr
    records = json.loads(done.stdout)
    assert records[-1]["r2_outputs"] is None and records[0]["r2_outputs"] is not None
