"""Session 19: the evidence of a run analysed with a mid-run --reference counts the checkpoints after it only,
and float 0/1 targets (multi-label) are recorded in the store so that report, compare and classify say what
loss and r2 measure there. Each test failed before its fix."""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.fields import R2_OUTPUT_FIELDS, RECORD_FIELDS
from fdl_cli.regimes import classify_run, describe
from fdl_cli.store import StoreReader
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, model_file
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.test_regimes import record

SAMPLE = REPO / "sample_checkpoints"


# -- 1. first_mf_step and mf_since_step after a mid-run reference ------------------------------------------------


def test_first_mf_step_counts_the_checkpoints_after_the_reference_only() -> None:
    """Steps 0–5 before `--reference 100` read MF* (they differ from the trained reference), then EF, then MF:
    `first_mf_step` was 0, an MF step before the reference the verdict is about, beside "MF from step 300"."""
    rows = [record(0, 0.6, 0.5, 1), record(5, 0.62, 0.5, 1), record(100, 1.0, 1.0, 5), record(200, 0.9, 0.8, 30),
            record(300, 0.8, 0.7, 6), record(400, 0.8, 0.7, 6), record(500, 0.8, 0.7, 6)]
    verdict = classify_run(rows, reference_step=100)
    assert verdict.regime == "MF"
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (300, 300)
    assert verdict.as_json()["evidence"]["first_mf_step"] == 300
    lines = describe(verdict, rows)
    assert "MF from step 300 to the end (first MF checkpoint after the reference: step 300)" in lines
    # the trajectory keeps every checkpoint's regime, the MF* ones before the reference too
    assert [(p["step"], p["regime"]) for p in verdict.as_json()["trajectory"]][:2] == [(0, "MF"), (5, "MF")]


def test_mf_since_step_stops_at_an_unstored_reference() -> None:
    """`--reference 100` with no checkpoint stored at step 100 (a run resumed before it was reached, say): MF
    at 0, 50, 200 and 300 made `mf_since_step` 0, across the reference."""
    rows = [record(0, 0.6, 0.5, 5), record(50, 0.7, 0.6, 5), record(200, 0.8, 0.7, 5), record(300, 0.8, 0.7, 5)]
    verdict = classify_run(rows, reference_step=100)
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (200, 200)
    assert "MF from step 200 to the end (first MF checkpoint after the reference: step 200)" in describe(verdict, rows)


def test_no_mf_after_the_reference_says_so_beside_the_mf_before_it() -> None:
    """MF* before the reference, coefficient after it: no MF step in the evidence, and the text names the MF*
    checkpoint as before the reference (not "the run did not stay MF", nor "never became MF")."""
    rows = [record(0, 0.55, 0.5, 8), record(85, 0.8, 0.7, 10), record(1232, 1.0, 1.0, 10),
            record(3000, 0.9966, 0.9989, 10)]
    verdict = classify_run(rows, reference_step=1232)
    assert verdict.regime == "coefficient"
    assert verdict.evidence["first_mf_step"] is None and verdict.evidence["mf_since_step"] is None
    text = "\n".join(describe(verdict, rows))
    assert ("MF first at step 0 (before the reference, step 1232: its movement is measured against a later "
            "checkpoint, so its MF says only that it differs from the reference), and no MF checkpoint after it") in text
    assert "did not stay MF" not in text and "never became MF" not in text


def test_classify_json_and_text_agree_on_the_first_mf_step_after_a_mid_run_reference(tmp_path: Path) -> None:
    """The sample run analysed with `--reference 100`: 0–5 read MF*, 200–300 MF; `--json` said
    `"first_mf_step": 0` and the text "first MF checkpoint: step 0, before the reference"."""
    out = tmp_path / "r.h5"
    done = fdl("analyze", SAMPLE, "--steps", "0,5,100,200,300", "--reference", "100", "-o", out)
    assert done.returncode == 0, done.stderr
    payload = json.loads(fdl("classify", out, "--json").stdout)
    assert payload["regime"] == "MF"
    assert (payload["evidence"]["first_mf_step"], payload["evidence"]["mf_since_step"]) == (200, 200)
    assert [p["regime"] for p in payload["trajectory"]] == ["MF", "MF", "coefficient", "MF", "MF"]
    text = fdl("classify", out).stderr
    assert "MF from step 200 to the end (first MF checkpoint after the reference: step 200)" in text
    assert "first_mf_step = 200, mf_since_step = 200" in text


# -- 2. float 0/1 targets recorded in the store, and said by report, compare and classify -------------------------

MLP = """
from torch import nn


def build(n_out=3):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, n_out))
"""


def _checkpoints(tmp_path: Path, n_out: int = 3, steps: tuple[int, ...] = (0, 10, 20)) -> tuple[Path, list[str]]:
    """Checkpoints of a tiny MLP whose weights move between steps, and the `--model` options that build it."""
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    module = model_file(tmp_path, MLP)
    torch.manual_seed(0)
    model = module.build(n_out)
    for step in steps:
        torch.save(model.state_dict(), runs / f"step_{step}.pt")
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
    return runs, ["--model", f"{tmp_path / 'model.py'}:build", "--model-kwargs", json.dumps({"n_out": n_out})]


def _probe(path: Path, y: np.ndarray) -> Path:
    np.savez(path, x=np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32), y=y)
    return path


def _multi_hot(n: int = 40, k: int = 3) -> np.ndarray:
    y = (np.random.default_rng(1).random((n, k)) > 0.5).astype(np.float32)
    y[0], y[1] = 0, 1  # a row of no label, a row of every label: multi-label, not one-hot
    return y


CAVEAT = ("probe 'probe' holds float 0/1 targets (multi-label, or a binary classifier's as floats): loss and r2 "
          "compare the raw outputs with 0/1 as they are, and for a model trained with a sigmoid (BCEWithLogitsLoss) "
          "those are logits, so loss and r2 do not measure its fit")


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of three checkpoints analysed on float multi-hot targets (analyze warned)."""
    tmp_path = tmp_path_factory.mktemp("ml")
    runs, model = _checkpoints(tmp_path)
    out = tmp_path / "ml.h5"
    done = fdl("analyze", runs, *model, "--probe", _probe(tmp_path / "ml.npz", _multi_hot()), "-o", out)
    assert done.returncode == 0, done.stderr
    assert "y holds float 0/1 targets with several 1s" in done.stderr
    return out


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_the_store_records_float_0_1_targets(multi_label: Path) -> None:
    with h5py.File(multi_label, "r") as store:
        value = store["probes/probe"].attrs["zero_one_targets"]
    assert isinstance(value, np.bool_) and bool(value) is True
    with StoreReader(multi_label) as reader:
        assert reader.probes()["probe"].zero_one_targets is True and reader.warnings == []


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_report_says_what_loss_and_r2_measure_in_the_table_the_json_and_the_html(multi_label: Path) -> None:
    """The warning was analyze's alone: `fdl report` showed r2 = -3 (logits against 0/1) without a word."""
    table = fdl("report", multi_label)
    assert table.returncode == 0, table.stderr
    assert CAVEAT in _lines(table.stderr)
    records = json.loads(fdl("report", multi_label, "--format", "json").stdout)
    assert [list(record)[-1] for record in records] == ["zero_one_targets"] * 3
    # the multi-label probe has 3 outputs: each record also carries the per-output R² (tests/test_s24_r2.py)
    assert list(records[0])[:-1] == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS]
    assert all(record["zero_one_targets"] is True for record in records)
    rows = list(csv.DictReader(io.StringIO(fdl("report", multi_label, "--format", "csv").stdout)))
    assert [row["zero_one_targets"] for row in rows] == ["True"] * 3
    page = multi_label.with_suffix(".html")
    assert fdl("report", multi_label, "--html", page).returncode == 0
    assert f"<li>{html.escape(CAVEAT)}</li>" in page.read_text(encoding="utf-8")


def test_classify_says_it_above_the_evidence_and_in_its_json(multi_label: Path) -> None:
    lines = _lines(fdl("classify", multi_label).stderr)
    evidence = next(i for i, line in enumerate(lines) if line.startswith("evidence: "))
    assert lines[evidence - 1] == CAVEAT
    assert "final_r2 = " in lines[evidence] and "zero_one_targets" not in lines[evidence]
    payload = json.loads(fdl("classify", multi_label, "--json").stdout)
    assert payload["evidence"]["zero_one_targets"] is True and payload["evidence"]["final_r2"] is not None


def test_compare_says_it_in_a_note_and_in_its_json(multi_label: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    shutil.copyfile(multi_label, other)
    text = fdl("compare", multi_label, other).stderr
    assert "note: " + CAVEAT.replace("probe 'probe' holds", "probe 'probe' of runs A and B holds") in _lines(text)
    payload = json.loads(fdl("compare", multi_label, other, "--json").stdout)
    assert payload["zero_one_targets"] == {"a": True, "b": True}
    assert any("of runs A and B holds float 0/1 targets" in note for note in payload["notes"])
    # one run of them only: named as run B
    with h5py.File(multi_label, "r") as store, h5py.File(other, "r+") as copy:
        assert bool(store["probes/probe"].attrs["zero_one_targets"])
        copy["probes/probe"].attrs["zero_one_targets"] = False
    text = fdl("compare", other, multi_label).stderr
    assert "note: " + CAVEAT.replace("probe 'probe' holds", "probe 'probe' of run B holds") in _lines(text)
    assert json.loads(fdl("compare", other, multi_label, "--json").stdout)["zero_one_targets"] == {"a": False,
                                                                                                  "b": True}


def test_a_float_0_1_column_for_one_output_names_the_binary_classifier_route(tmp_path: Path) -> None:
    runs, model = _checkpoints(tmp_path, n_out=1, steps=(0, 10))
    out = tmp_path / "b.h5"
    probe = _probe(tmp_path / "b.npz", (np.arange(40) % 2).astype(np.float32))
    assert fdl("analyze", runs, *model, "--probe", probe, "-o", out).returncode == 0
    text = fdl("report", out).stderr
    assert (CAVEAT + "; save the targets as integer labels (y.reshape(-1).astype(np.int64)) and analyse again, into "
            "another --out (or with --overwrite: the probe differs), to measure it as a binary classifier (accuracy, "
            "cross_entropy = BCE)") in _lines(text)


def test_other_targets_are_recorded_as_such_and_print_as_before(tmp_path: Path) -> None:
    """Real regression targets: false in the store, and no caveat, field or key anywhere."""
    runs, model = _checkpoints(tmp_path, steps=(0, 10))
    out = tmp_path / "r.h5"
    probe = _probe(tmp_path / "r.npz", np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32))
    assert fdl("analyze", runs, *model, "--probe", probe, "-o", out).returncode == 0
    with h5py.File(out, "r") as store:
        assert bool(store["probes/probe"].attrs["zero_one_targets"]) is False
    _assert_as_before(out)


def _assert_as_before(out: Path) -> None:
    """A store read without the caveat: no line, no JSON field (the outputs of every store before session 19)."""
    report = fdl("report", out)
    assert report.returncode == 0, report.stderr
    assert "0/1 targets" not in report.stderr
    # the stores here have several outputs: the per-output R² fields follow RECORD_FIELDS (tests/test_s24_r2.py)
    assert list(json.loads(fdl("report", out, "--json").stdout)[0]) == [*RECORD_FIELDS, *R2_OUTPUT_FIELDS]
    classify = fdl("classify", out, "--json")
    assert "zero_one_targets" not in json.loads(classify.stdout)["evidence"] and "0/1" not in classify.stderr
    compare = json.loads(fdl("compare", out, out, "--json").stdout)
    assert "zero_one_targets" not in compare and not any("0/1" in note for note in compare["notes"])


def test_an_older_store_reads_as_before_and_a_resume_records_it(tmp_path: Path) -> None:
    """A store written before the attribute (deleted here) reads as it did: no caveat. `fdl analyze` adding a
    checkpoint to it resumes (the probe is the same) and records the attribute with that checkpoint."""
    runs, model = _checkpoints(tmp_path, steps=(0, 10, 20))
    out = tmp_path / "old.h5"
    probe = _probe(tmp_path / "ml.npz", _multi_hot())
    assert fdl("analyze", runs, *model, "--probe", probe, "--steps", "0,10", "-o", out).returncode == 0
    with h5py.File(out, "r+") as store:
        del store["probes/probe"].attrs["zero_one_targets"]
    with StoreReader(out) as reader:
        assert reader.probes()["probe"].zero_one_targets is None and reader.warnings == []
    _assert_as_before(out)
    resumed = fdl("analyze", runs, *model, "--probe", probe, "-o", out)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out, "r") as store:
        assert bool(store["probes/probe"].attrs["zero_one_targets"]) is True
        assert sorted(store["checkpoints"]) == ["step_0", "step_10", "step_20"]
    assert CAVEAT in _lines(fdl("report", out).stderr)


def test_a_damaged_attribute_is_a_warning_and_reads_as_not_recorded(multi_label: Path, tmp_path: Path) -> None:
    out = tmp_path / "damaged.h5"
    shutil.copyfile(multi_label, out)
    with h5py.File(out, "r+") as store:
        store["probes/probe"].attrs["zero_one_targets"] = "yes"
    report = fdl("report", out)
    assert report.returncode == 0, report.stderr
    assert ("warning: probe /probes/probe has zero_one_targets = 'yes', not true or false: ignored (whether its "
            "targets are 0/1 is taken as not recorded)") in " ".join(report.stderr.split())
    assert CAVEAT not in report.stderr
