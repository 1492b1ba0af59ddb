"""`fdl compare` of a run against the same run analysed at a subset of its checkpoints (`--steps`, `--every`):
cka_prev / overlap_prev compare each checkpoint with the one before it among those analysed, so at a step whose
previous checkpoint differs between the stores (prev_step) their B − A is no difference of training. compare
read it as one ("cka_prev: differs at 1 step, largest B − A ..."); it now leaves those steps out of the two
fields and says so."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture (checkpoints 0, 10, 20, 30)


@pytest.fixture(scope="module")
def stores(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("s33_prev")
    whole, subset = root / "whole.h5", root / "subset.h5"
    assert analyze(run, whole).code == 0
    assert analyze(run, subset, "--steps", "0,10,30").code == 0  # step 30 compared with 10, not 20
    return whole, subset


def test_text_leaves_out_steps_whose_previous_checkpoints_differ(stores: tuple[Path, Path]) -> None:
    done = fdl_in_process("compare", *stores, "--no-overlap")
    assert done.returncode == 0, done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "cka_prev: differs" not in said and "overlap_prev: differs" not in said
    assert (
        "cka_prev, overlap_prev: compared at 2 of 3 matched steps; at 1 step the runs' previous checkpoints "
        "differ (at step 30: A's is step 20, B's step 10)"
    ) in said


def test_json_and_csv_carry_the_steps_left_out(stores: tuple[Path, Path]) -> None:
    done = fdl_in_process("compare", *stores, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["prev_step_differs"] == [{"step_a": 30, "step_b": 30, "a": 20, "b": 10}]
    by_step = {step["step_a"]: step for step in data["steps"]}
    assert by_step[30]["differences"]["cka_prev"] is None and by_step[30]["differences"]["overlap_prev"] is None
    assert by_step[30]["a"]["cka_prev"] != by_step[30]["b"]["cka_prev"]  # each run's own value is kept
    assert by_step[10]["differences"]["cka_prev"] == 0  # the same previous checkpoint (0): compared
    assert by_step[30]["differences"]["d_lr"] == 0  # the other fields as before

    done = fdl_in_process("compare", *stores, "--no-overlap", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = {int(row["step_a"]): row for row in csv.DictReader(io.StringIO(done.stdout))}
    assert (rows[30]["a_prev_step"], rows[30]["b_prev_step"], rows[30]["delta_cka_prev"]) == ("20", "10", "")
    assert (rows[10]["a_prev_step"], rows[10]["b_prev_step"]) == ("0", "0")


def test_runs_whose_previous_checkpoints_agree_are_compared_as_before(stores: tuple[Path, Path]) -> None:
    whole = stores[0]
    done = fdl_in_process("compare", whole, whole, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert "prev_step_differs" not in data
    assert [step["differences"]["cka_prev"] for step in data["steps"]] == [None, 0, 0, 0]
    done = fdl_in_process("compare", whole, whole, "--no-overlap", "--format", "csv")
    assert "a_prev_step" not in done.stdout.splitlines()[0]
