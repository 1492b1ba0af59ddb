"""Session 25: the R² of each output of a regression of several outputs beyond `fdl report`.

Session 24 stored each output's R² (`r2_outputs`) and gave it in `fdl report` alone: `r2` pools the outputs, 0.79
over 0.41, 0.80 and 0.93, so a badly fitted output hid from `fdl analyze --json`, `fdl compare`, `fdl export`,
`fdl classify` and `StoreReader.records()`. Each now carries `r2_outputs`, `r2_min` and `r2_min_output` as
`fdl report --json` names them, for a regression of C > 1 outputs only.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from fdl_cli.fields import R2_OUTPUT_FIELDS, RECORD_FIELDS
from fdl_cli.regimes import classify_run
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process, model_file
from tests.test_s24_r2 import MODEL

#: each target column's noise in units of its output's spread: run A fits output 0 badly, run B output 2;
#: the last output is constant 2.5 (its target too: no R², null)
NOISE = {"a": np.array([1.6, 0.5, 0.25, 0.0]), "b": np.array([0.25, 0.5, 1.6, 0.0])}


def _ok(*args: object) -> str:
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two stores of the same 4-output checkpoints (steps 0, 10) against targets of other noise (run A's worst
    output y0, run B's y2), the --json lines analyze printed, the targets and each checkpoint's outputs."""
    folder = tmp_path_factory.mktemp("r2")
    module = model_file(folder, MODEL)
    (folder / "ck").mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    outputs = {}
    for step in (0, 10):
        torch.manual_seed(step)
        net = module.build()
        torch.save(net.state_dict(), folder / "ck" / f"step_{step}.pt")
        with torch.no_grad():
            outputs[step] = net(torch.from_numpy(x)).double().numpy()
    spread = outputs[10].std(axis=0)
    found: dict[str, object] = {"folder": folder, "outputs": outputs}
    for name, noise in NOISE.items():
        targets = outputs[10] + rng.normal(size=outputs[10].shape) * spread * noise
        np.savez(folder / f"{name}.npz", x=x, y=targets)
        store = folder / f"{name}.h5"
        lines = _ok("analyze", folder / "ck", "--model", f"{folder / 'model.py'}:build", "--layer", "body",
                    "--probe", folder / f"{name}.npz", "-o", store, "--json")
        found[name] = {"store": store, "targets": targets, "lines": lines}
    return found


def _sklearn(runs: dict, name: str, step: int) -> np.ndarray:
    """sklearn's R² of each output (the constant last output left out: 0/0)."""
    return r2_score(runs[name]["targets"][:, :3], runs["outputs"][step][:, :3], multioutput="raw_values")


def test_analyze_json_records_carry_each_outputs_r2(runs: dict) -> None:
    """analyze --json: every line a record (nothing else on stdout) with report's per-output fields after the
    record fields, sklearn's values, null for the constant target column, the worst and its column."""
    lines = runs["a"]["lines"].splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 10]
    for record in records:
        assert list(record) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS]
        np.testing.assert_allclose(record["r2_outputs"][:3], _sklearn(runs, "a", record["step"]), rtol=1e-6)
        assert record["r2_outputs"][3] is None
    last = records[-1]
    assert last["r2_min"] == min(last["r2_outputs"][:3]) and last["r2_min_output"] == 0
    assert last["r2"] > last["r2_min"] + 0.3  # the pooled r2 hides the badly fitted output
    reported = json.loads(_ok("report", runs["a"]["store"], "--json"))
    assert [{k: r[k] for k in R2_OUTPUT_FIELDS} for r in reported] == [{k: r[k] for k in R2_OUTPUT_FIELDS}
                                                                         for r in records]


def test_store_reader_records_with_r2_outputs(runs: dict) -> None:
    """StoreReader.records(r2_outputs=True) gives report's --json fields; records() without it is as before;
    classify_run on those records gives the final checkpoint's worst output in its evidence."""
    reported = json.loads(_ok("report", runs["a"]["store"], "--json"))
    with StoreReader(runs["a"]["store"]) as reader:
        plain = reader.records()
        records = reader.records(r2_outputs=True)
    assert list(plain[-1]) == list(RECORD_FIELDS)
    assert records == reported
    evidence = classify_run(records).evidence
    assert evidence["final_r2_min"] == reported[-1]["r2_min"] and evidence["final_r2_min_output"] == 0
    assert evidence["final_r2_outputs"] == reported[-1]["r2_outputs"]


def test_compare_shows_the_worst_output_change(runs: dict) -> None:
    """compare: --json gives each run's per-output fields and B − A of each (the worst output's column as
    '0 → 2'); CSV and markdown their columns, the list as JSON text; the table a Δ worst r2 column and a line
    of the worst output's change."""
    a, b = runs["a"]["store"], runs["b"]["store"]
    compared = json.loads(_ok("compare", a, b, "--json"))
    last = compared["steps"][-1]
    assert list(last["a"]) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS] and list(last["b"]) == list(last["a"])
    np.testing.assert_allclose(last["a"]["r2_outputs"][:3], _sklearn(runs, "a", 10), rtol=1e-6)
    np.testing.assert_allclose(last["b"]["r2_outputs"][:3], _sklearn(runs, "b", 10), rtol=1e-6)
    assert (last["a"]["r2_min_output"], last["b"]["r2_min_output"]) == (0, 2)
    differences = last["differences"]
    assert differences["r2_min"] == last["b"]["r2_min"] - last["a"]["r2_min"]
    assert differences["r2_min_output"] == "0 → 2"
    assert differences["r2_outputs"][:3] == [vb - va for va, vb in zip(last["a"]["r2_outputs"][:3],
                                                                        last["b"]["r2_outputs"][:3], strict=True)]
    assert differences["r2_outputs"][3] is None
    done = fdl_in_process("compare", a, b, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))  # stdout holds the CSV alone (notes on stderr)
    assert len(rows) == 2
    assert json.loads(rows[-1]["a_r2_outputs"]) == last["a"]["r2_outputs"]
    assert json.loads(rows[-1]["delta_r2_outputs"]) == differences["r2_outputs"]
    assert float(rows[-1]["delta_r2_min"]) == differences["r2_min"] and rows[-1]["b_r2_min_output"] == "2"
    markdown = _ok("compare", a, b, "--format", "markdown")
    assert "| delta_r2_outputs |" in markdown and ", null] |" in markdown
    text = fdl_in_process("compare", a, b)
    output = text.stdout + text.stderr
    head = next(line for line in output.splitlines() if line.lstrip().startswith("step A"))
    assert "Δ worst r2" in head and "Δ r2" in head
    row = next(line for line in output.splitlines() if line.split()[:2] == ["10", "10"])
    delta = differences["r2_min"]
    assert ("+" if delta > 0 else "−") + f"{abs(delta):.4f}" in row.split()
    assert "r2_min_output: differs at 1 step (e.g. 0 → 2)" in output  # at step 0 both worst at y0
    assert "r2_min: differs at 2 steps, largest B − A" in output


def test_export_trajectories_carry_each_outputs_r2(runs: dict, tmp_path: Path) -> None:
    """export --what trajectories: JSON columns and CSV columns after the record fields (the list as JSON text,
    as report's CSV), npy `r2_outputs` (checkpoints, C) with NaN for null, `r2_min`, `r2_min_output`."""
    store = runs["a"]["store"]
    reported = json.loads(_ok("report", store, "--json"))
    columns = json.loads(_ok("export", store, "--what", "trajectories", "--format", "json"))
    assert list(columns) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS]
    for name in R2_OUTPUT_FIELDS:
        assert columns[name] == [r[name] for r in reported]
    rows = list(csv.DictReader(io.StringIO(_ok("export", store, "--what", "trajectories"))))
    assert [json.loads(row["r2_outputs"]) for row in rows] == columns["r2_outputs"]
    assert [float(row["r2_min"]) for row in rows] == columns["r2_min"]
    archive = np.load(_npz(store, tmp_path))
    assert archive["r2_outputs"].shape == (2, 4) and np.isnan(archive["r2_outputs"][:, 3]).all()
    np.testing.assert_array_equal(archive["r2_outputs"][:, :3], [r[:3] for r in columns["r2_outputs"]])
    assert archive["r2_min"].tolist() == columns["r2_min"] and archive["r2_min_output"].tolist() == [0.0, 0.0]


def _npz(store: Path, folder: Path) -> Path:
    out = folder / f"{store.stem}.npz"
    _ok("export", store, "--what", "trajectories", "--format", "npy", "--out", out)
    return out


def test_classify_gives_the_worst_output_in_its_evidence(runs: dict) -> None:
    """classify --json: the final checkpoint's per-output fields beside final_r2; the text evidence the worst."""
    reported = json.loads(_ok("report", runs["b"]["store"], "--json"))[-1]
    evidence = json.loads(_ok("classify", runs["b"]["store"], "--json"))["evidence"]
    assert evidence["final_r2"] == reported["r2"]
    assert evidence["final_r2_outputs"] == reported["r2_outputs"]
    assert (evidence["final_r2_min"], evidence["final_r2_min_output"]) == (reported["r2_min"], 2)
    done = fdl_in_process("classify", runs["b"]["store"])
    evidence_line = next(line for line in done.stderr.splitlines() if line.startswith("evidence: "))
    assert f"final_r2_min = {reported['r2_min']:.4g}, final_r2_min_output = 2" in evidence_line
    assert "final_r2_outputs" not in evidence_line


@pytest.mark.parametrize("kind", ["one", "classes"])
def test_one_output_and_classes_unchanged(runs: dict, tmp_path: Path, kind: str) -> None:
    """One output (r2 is its own R²) and class labels: no per-output fields in analyze --json, compare, export,
    classify nor StoreReader.records(r2_outputs=True)."""
    folder, x = runs["folder"], np.load(runs["folder"] / "a.npz")["x"]
    module = model_file(tmp_path, MODEL)
    outputs, y = (1, runs["a"]["targets"][:, :1]) if kind == "one" else (4, np.arange(64) % 4)
    np.savez(tmp_path / "probe.npz", x=x, y=y)
    (tmp_path / "ck").mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        torch.save(module.build(outputs=outputs, constant=False).state_dict(), tmp_path / "ck" / f"step_{step}.pt")
    store = tmp_path / "run.h5"
    lines = _ok("analyze", tmp_path / "ck", "--model", f"{folder / 'model.py'}:build", "--model-kwargs",
                json.dumps({"outputs": outputs, "constant": False}), "--layer", "body", "--probe",
                tmp_path / "probe.npz", "-o", store, "--json")
    assert [list(json.loads(line)) for line in lines.splitlines()] == [list(RECORD_FIELDS)] * 2
    last = json.loads(_ok("compare", store, store, "--json"))["steps"][-1]
    assert list(last["a"]) == list(RECORD_FIELDS) and "r2_min" not in last["differences"]
    assert list(json.loads(_ok("export", store, "--what", "trajectories", "--format", "json"))) == list(RECORD_FIELDS)
    evidence = json.loads(_ok("classify", store, "--json"))["evidence"]
    assert not any(key.startswith("final_r2_") for key in evidence)
    with StoreReader(store) as reader:
        assert list(reader.records(r2_outputs=True)[-1]) == list(RECORD_FIELDS)
