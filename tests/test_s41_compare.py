"""`fdl compare`'s outputs against each other (session 41's audit): `--json` and `--format csv` told a step the
`--overlap-steps` sample left out from one where the cross-run overlap cannot be computed (both null); the notes
beside `--format csv|markdown` lacked the `thresholds:` line the table and `--json` give; a Δ column of the table
read `+1.5e-05` over `−0.0001`. Each test failed before its fix."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter
from tests.cli_run import fdl_in_process
from tests.test_report import N_OUTPUTS, N_PROBE, _entry

STEPS = (0, 10, 20, 30, 40)
#: run B's D_LR minus run A's at each step: one difference below the table's 4 decimals, one at their last
DELTAS = (1.5e-5, -1e-4, 0.0123, 0.0, -0.25)


def _store(path: Path, *, seed: int, d_lr: list[float], rank_zero: tuple[int, ...] = ()) -> Path:
    """A run of STEPS whose checkpoints at `rank_zero` store no eigenfunction (a layer that died): the cross-run
    overlap cannot be computed there."""
    x = np.linspace(-1.0, 1.0, N_PROBE)
    probe = ProbeInfo(name="train", sha256="a" * 64, n=N_PROBE, task="regression", n_outputs=N_OUTPUTS,
                      anchor_x=x[:, None], anchor_y=np.sin(3 * x)[:, None])
    provenance = {"model": "model.py:build", "layers": ["fc1"], "host": "testhost", "fdl_version": "0.1.0"}
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step, value in zip(STEPS, d_lr, strict=True):
            entry = _entry(step, probe="train", layer="fc1", seed=seed, scalars={"d_lr": value})
            if step in rank_zero:
                entry = dataclasses.replace(entry, eigenfunctions=np.zeros((N_PROBE, 0)), eigenvectors=np.zeros((8, 0)))
            writer.add(CheckpointEntry(step=step, path=f"ckpt/step_{step}.pt", sha256=f"{step:064x}", series=(entry,)))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("s41_compare")
    a_values = [0.9, 0.5, 0.4, 0.3, 0.2]
    a = _store(folder / "a.h5", seed=0, d_lr=a_values)
    b = _store(folder / "b.h5", seed=5, d_lr=[value + delta for value, delta in zip(a_values, DELTAS, strict=True)],
               rank_zero=(40,))
    return a, b


#: --overlap-steps 3 of the 5 steps: 0, 20 and 40, where run B stores no eigenfunction
SAMPLED = ("--overlap-steps", "3")


def test_json_tells_a_step_left_out_of_the_sample_from_one_without_an_overlap(runs: tuple[Path, Path]) -> None:
    done = fdl_in_process("compare", *runs, *SAMPLED, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    got = [(step["step_a"], step["overlap"] is None, step["overlap_computed"]) for step in data["steps"]]
    assert got == [(0, False, True), (10, True, False), (20, False, True), (30, True, False), (40, True, True)]
    # the note's count is that of the steps computed
    assert "eigenspace overlap A·B computed at 3 of 5 matched steps (--overlap-steps all for every one)" in data["notes"]
    keys = list(data["steps"][0])
    assert keys[keys.index("overlap_k") + 1] == "overlap_computed"  # beside the overlap's other keys

    none = json.loads(fdl_in_process("compare", *runs, "--no-overlap", "--json").stdout)
    assert [step["overlap_computed"] for step in none["steps"]] == [False] * 5


def test_csv_and_markdown_carry_the_column_too(runs: tuple[Path, Path]) -> None:
    done = fdl_in_process("compare", *runs, *SAMPLED, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(row["overlap"] == "", row["overlap_computed"]) for row in rows] == [
        (False, "True"), (True, "False"), (False, "True"), (True, "False"), (True, "True")]
    assert list(rows[0])[:6] == ["step_a", "step_b", "exact", "overlap", "overlap_k", "overlap_computed"]
    markdown = fdl_in_process("compare", *runs, *SAMPLED, "--format", "markdown").stdout
    assert markdown.startswith("| step_a | step_b | exact | overlap | overlap_k | overlap_computed | delta_")


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_the_notes_beside_a_table_on_stdout_give_the_thresholds(runs: tuple[Path, Path], fmt: str) -> None:
    """The table and `--json` gave the thresholds in force; `--format csv|markdown` said the verdict without them."""
    given = ("--threshold", "dlr_tie=0.01")
    table = fdl_in_process("compare", *runs, *SAMPLED, *given).stderr.splitlines()
    thresholds = next(line for line in table if line.startswith("thresholds: "))
    assert "dlr_tie = 0.01 (" in thresholds
    done = fdl_in_process("compare", *runs, *SAMPLED, *given, "--format", fmt)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # the notes, the thresholds, then the verdict last, as the table's output ends
    assert lines[-2:] == [thresholds, table[-1]], done.stderr
    assert "thresholds" not in done.stdout  # stdout is the table alone
    if fmt == "csv":
        assert [row["step_a"] for row in csv.DictReader(io.StringIO(done.stdout))] == [str(s) for s in STEPS]
