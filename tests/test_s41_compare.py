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
from tests.test_s34_fmt import _rows

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


def test_a_delta_column_has_one_format_down_it(runs: tuple[Path, Path]) -> None:
    """Δ D_LR read +1.5e-05 over −0.0001 over +0.0123: a difference the 4 decimals round to zero in two significant
    digits, the others with 4 decimals. A column holding such a difference is in scientific notation in every cell
    (as report's columns that need more decimals are), exact zeros "0"; the others keep their 4 decimals."""
    done = fdl_in_process("compare", *runs, *SAMPLED)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stderr)
    assert [row[2] for row in rows] == ["+1.500e-05", "−1.000e-04", "+1.230e-02", "0", "−2.500e-01"], done.stderr
    assert all(len(row[6]) == 7 and row[6][0] in "+−" and row[6][2] == "." for row in rows), done.stderr  # Δ Π̂(C)
    # one value in a line of text keeps its own rule, as report's lines do
    assert "d_lr: differs at 4 steps, largest B − A −0.2500" in done.stderr.splitlines()
    # machine output keeps the numbers
    data = json.loads(fdl_in_process("compare", *runs, *SAMPLED, "--json").stdout)
    assert [step["differences"]["d_lr"] for step in data["steps"]] == pytest.approx(list(DELTAS), abs=1e-12)


def test_a_delta_column_without_a_tiny_difference_keeps_four_decimals(tmp_path: Path) -> None:
    a_values = [0.9, 0.5, 0.4, 0.3, 0.2]
    a = _store(tmp_path / "a.h5", seed=0, d_lr=a_values)
    b = _store(tmp_path / "b.h5", seed=5, d_lr=[v + d for v, d in zip(a_values, (0.0, -1e-4, 0.0123, 0.0, -0.25),
                                                                       strict=True)])
    rows = _rows(fdl_in_process("compare", a, b).stderr)
    assert [row[2] for row in rows] == ["0", "−0.0001", "+0.0123", "0", "−0.2500"]
