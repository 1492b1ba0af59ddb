"""A seed study: several seeds of each configuration, classified, compared and exported together.

- `fdl compare --threshold dlr_tie=0.05` (the seeds' spread, set as the tie) still said the tie was
  "rounding's, as between float32 and bfloat16 analyses", which is the default's reason, not the user's.
- `fdl classify 'runs/lr0.1_*.h5'`, a pattern the shell matched to nothing and passed as written, told the
  user to `fdl analyze CKPT_DIR --out 'runs/lr0.1_*.h5'`: a store named by a glob.
- the numbers of one step agree in report, classify, compare and export (one seed-averaged table from export).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store

# tests/test_report.py's run: steps 0, 100, 200, D_LR 0.9, 0.5, 0.125 (seed 0); another seed differs in the
# arrays, and here in D_LR at the last step.


def _seed(path: Path, seed: int, last_d_lr: float) -> Path:
    scalars = {step: dict(values) for step, values in SCALARS.items()}
    scalars[max(scalars)]["d_lr"] = last_d_lr
    return make_store(path, seed=seed, scalars=scalars)


@pytest.fixture
def seeds(tmp_path: Path) -> list[Path]:
    return [_seed(tmp_path / f"run_s{seed}.h5", seed, d_lr) for seed, d_lr in enumerate((0.125, 0.16, 0.14))]


def test_a_tie_the_user_sets_is_not_called_rounding(seeds: list[Path]) -> None:
    a, b, _ = seeds
    given = fdl_in_process("compare", a, b, "--no-overlap", "--threshold", "dlr_tie=0.05")
    assert given.returncode == 0, given.stderr
    line = next(line for line in given.stderr.splitlines() if line.startswith("thresholds:"))
    assert line.startswith("thresholds: dlr_tie = 0.05 (a D_LR difference up to it is a tie, as given; the default "
                           "0.001 is rounding's); cka_static = 0.99")
    assert "float32" not in line
    assert given.stderr.rstrip().endswith("The runs are equally rich (D_LR within dlr_tie = 0.05) at every matched "
                                          "step.")
    # the default keeps its reason, and a run 0.035 lower is called richer by it
    default = fdl_in_process("compare", a, b, "--no-overlap")
    assert "thresholds: dlr_tie = 0.001 (a D_LR difference up to it is a tie: rounding's, as between float32 and " \
           "bfloat16 analyses)" in default.stderr
    assert "Run A is richer than run B (lower D_LR) from step 200 on" in default.stderr


def test_a_pattern_that_matched_nothing_is_named_as_one(seeds: list[Path], tmp_path: Path) -> None:
    pattern = tmp_path / "lr0.1_*.h5"
    done = fdl_in_process("classify", seeds[0], pattern, "--format", "csv")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"error: {pattern}: no fdl store at {pattern}\n" in done.stderr
    assert "got: no file matches this pattern: the shell passes a pattern that matches nothing as written" \
        in done.stderr
    assert "fdl analyze CKPT_DIR --out" not in done.stderr
    assert f"fix: check the pattern (`ls {pattern}`) and the folder it names" in done.stderr
    # the store that could be read is still listed
    assert [row["store"] for row in csv.DictReader(io.StringIO(done.stdout))] == [str(seeds[0])]


def test_one_step_has_one_d_lr_in_every_command(seeds: list[Path]) -> None:
    a, b, c = seeds
    exported = {}
    for store in seeds:
        done = fdl_in_process("export", store, "--what", "trajectories")
        assert done.returncode == 0, done.stderr
        exported[store] = {int(row["step"]): float(row["d_lr"]) for row in csv.DictReader(io.StringIO(done.stdout))}
    reported = fdl_in_process("report", a, "--format", "csv").stdout
    assert {int(row["step"]): float(row["d_lr"]) for row in csv.DictReader(io.StringIO(reported))} == exported[a]
    swept = list(csv.DictReader(io.StringIO(fdl_in_process("classify", a, b, c, "--format", "csv").stdout)))
    assert [row["store"] for row in swept] == [str(a), str(b), str(c)]
    assert [float(row["final_d_lr"]) for row in swept] == [exported[s][200] for s in seeds] == [0.125, 0.16, 0.14]
    compared = json.loads(fdl_in_process("compare", a, b, "--json", "--no-overlap").stdout)
    assert [(s["step_a"], s["a"]["d_lr"], s["b"]["d_lr"]) for s in compared["steps"]] == [
        (step, exported[a][step], exported[b][step]) for step in (0, 100, 200)]
    # the seed-averaged table usage.md's seed study builds with the csv module
    mean_last = sum(exported[s][200] for s in seeds) / len(seeds)
    assert mean_last == pytest.approx(0.141666, abs=1e-6)


def test_a_sweep_whose_runs_end_at_other_steps_says_so(seeds: list[Path], tmp_path: Path) -> None:
    """A seed that stopped early (or a run still training) has its last checkpoint in the same columns as the
    others' last: the rows then compare other points of training, which a line says, as for other probes."""
    a, b, _ = seeds
    short = make_store(tmp_path / "run_s3.h5", steps=(0, 100), seed=3)
    done = fdl_in_process("classify", a, short, b)
    assert done.returncode == 0, done.stderr
    assert (f"the final steps differ: 200 in {a}, {b}; 100 in {short}: those rows measure other points of "
            "training\n") in done.stderr
    same = fdl_in_process("classify", a, b)
    assert same.returncode == 0 and "final steps differ" not in same.stderr
    # machine output is unchanged: the final_step column says it for each row
    rows = list(csv.DictReader(io.StringIO(fdl_in_process("classify", a, short, b, "--format", "csv").stdout)))
    assert [row["final_step"] for row in rows] == ["200", "100", "200"]


@pytest.mark.parametrize(("command", "hint"), [
    ("report", "fdl report reads one store: for a row per store, fdl classify STORE...; or one report per store"),
    ("compare", "fdl compare reads two stores: for a row per store, fdl classify STORE..."),
])
def test_a_glob_of_stores_given_to_a_command_of_one_says_which_takes_several(
        seeds: list[Path], command: str, hint: str) -> None:
    done = fdl_in_process(command, *seeds)
    assert done.returncode == 2
    assert "Got unexpected extra argument" in done.stderr  # click's own words stay first
    assert hint in done.stderr
    assert done.stdout == ""
