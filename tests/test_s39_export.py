"""`fdl export STORE...`: a sweep's stores as one table, each row's first column (a JSON record's first key) `store`.

Before, export took one store: a sweep's CSVs were concatenated by hand, and which rows came from which run was
lost. One store's export is as it was (no `store` column); several give one CSV or JSON, the stores in the order
given, the columns the union of theirs; a store that cannot be exported is an error naming it, and nothing is
written; `--format npy` takes one store.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import h5py
import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import make_store
from tests.test_s31_csv import _odd_store

#: a.h5: one series, steps 0, 100, 200; b.h5: two layers (fc1, fc2), other arrays; c.h5: steps 0, 100 alone,
#: given as "./c.h5" (the path as given is the store's name); r.h5: c.h5 whose store records a refused step 300;
#: odd.h5: a regression of two outputs storing each one's R² (`r2_outputs`), float 0/1 targets, layers "fc\r1", fc2.
A, B, C, R, ODD = "a.h5", "b.h5", "./c.h5", "r.h5", "odd.h5"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("export_several")
    make_store(where / A)
    make_store(where / B, seed=5, layers=("fc1", "fc2"))
    make_store(where / C, steps=(0, 100), seed=3)
    make_store(where / R, steps=(0, 100), seed=3)
    with h5py.File(where / R, "a") as handle:
        handle.attrs["refused"] = json.dumps([{"step": 300, "kind": "weights", "path": "ckpt/step_300.pt"}])
    _odd_store(where / ODD)
    return where


def _export(folder: Path, *args: object) -> Any:
    return fdl_in_process("export", *args, cwd=folder)


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize("what", ["eigenvalues", "eigenfunctions", "trajectories"])
def test_two_stores_csv_is_each_stores_own_rows_after_its_store(folder: Path, what: str) -> None:
    one = {store: _export(folder, store, "--what", what) for store in (A, C)}
    both = _export(folder, A, C, "--what", what)
    assert both.returncode == 0 and both.stderr == "", both.stderr
    rows = _csv(both.stdout)
    singles = {store: _csv(done.stdout) for store, done in one.items()}
    # one store's export has no store column (as before); the table's header is it with `store` first
    assert singles[A][0][0] == "step" and rows[0] == ["store", *singles[A][0]] == ["store", *singles[C][0]]
    # the stores in the order given, each with its own export's rows, named as given ("./c.h5" stays so)
    assert [row[1:] for row in rows[1:] if row[0] == A] == singles[A][1:]
    assert [row[1:] for row in rows[1:] if row[0] == C] == singles[C][1:]
    assert [row[0] for row in rows[1:]] == [A] * (len(singles[A]) - 1) + [C] * (len(singles[C]) - 1)


def test_two_stores_json_keeps_each_layout_with_store_first(folder: Path) -> None:
    # the arrays: an array of records, `store` each one's first key
    records = json.loads(_export(folder, A, C, "--what", "utility", "--json").stdout)
    assert all(list(record)[0] == "store" for record in records)
    for store in (A, C):
        alone = json.loads(_export(folder, store, "--what", "utility", "--json").stdout)
        assert "store" not in alone[0]
        assert [{k: v for k, v in record.items() if k != "store"} for record in records if record["store"] == store] == alone
    # the trajectories: one object of columns, `store` the first, each column the stores' in turn
    columns = json.loads(_export(folder, A, C, "--what", "trajectories", "--format", "json").stdout)
    a, c = (json.loads(_export(folder, store, "--what", "trajectories", "--json").stdout) for store in (A, C))
    assert list(columns) == ["store", *a] and "store" not in a
    assert columns["store"] == [A] * 3 + [C] * 2
    assert all(columns[name] == a[name] + c[name] for name in a)


def test_columns_one_store_lacks_are_empty_in_its_rows(folder: Path) -> None:
    # b.h5 holds two series: its rows end with probe and layer, as its own export's; a.h5's, of its one series, name
    # that series too (session 40: they were empty, and a filter on the layer dropped a.h5's rows)
    table = _csv(_export(folder, A, B, "--what", "eigenvalues", "--layer", "fc1").stdout)
    assert table[0] == ["store", "step", "k", "eigenvalues", "probe", "layer"]
    assert {tuple(row[-2:]) for row in table[1:] if row[0] == A} == {("train", "fc1")}
    alone = _csv(_export(folder, B, "--what", "eigenvalues", "--layer", "fc1").stdout)
    assert [row[1:] for row in table[1:] if row[0] == B] == alone[1:]
    columns = json.loads(_export(folder, A, B, "--what", "trajectories", "--layer", "fc1", "--json").stdout)
    assert list(columns)[-2:] == ["probe", "layer"]
    assert columns["layer"] == ["fc1"] * 6 and columns["probe"] == ["train"] * 6
    records = json.loads(_export(folder, B, A, "--what", "quality", "--layer", "fc1", "--json").stdout)
    assert [(r["store"], r["probe"], r["layer"]) for r in records] == [(B, "train", "fc1")] * 3 + [(A, "train", "fc1")] * 3
    # stores of one series alone keep their columns: no probe or layer
    assert "layer" not in _csv(_export(folder, A, C, "--what", "eigenvalues").stdout)[0]


def test_a_regressions_r2_outputs_are_empty_in_the_other_stores_rows(folder: Path) -> None:
    # odd.h5's own export adds r2_outputs, r2_min and r2_min_output before probe and layer; b.h5's rows have them
    # empty. odd.h5's caveat (its 0/1 targets) is said naming it.
    alone = _export(folder, ODD, "--what", "trajectories", "--layer", "fc2")
    both = _export(folder, B, ODD, "--what", "trajectories", "--layer", "fc2")
    assert both.returncode == 0, both.stderr
    table, own = _csv(both.stdout), _csv(alone.stdout)
    assert table[0] == ["store", *own[0]] and own[0][-5:] == ["r2_outputs", "r2_min", "r2_min_output", "probe", "layer"]
    assert [row[1:] for row in table[1:] if row[0] == ODD] == own[1:]
    at = table[0].index("r2_outputs")
    assert {tuple(row[at : at + 3]) for row in table[1:] if row[0] == B} == {("", "", "")}
    assert alone.stderr.startswith("note: ") and both.stderr == alone.stderr.replace("note: ", "note: odd.h5: ")


def test_a_store_that_cannot_be_exported_is_named_and_nothing_is_written(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.csv"
    out.write_text("what was there\n")
    # missing.h5 is not there; b.h5 holds two series and none is picked
    done = _export(folder, A, "missing.h5", B, "--what", "trajectories", "--out", out)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert "error: missing.h5: no fdl store at missing.h5\n" in done.stderr
    assert "error: b.h5 holds several series; export writes one\n" in done.stderr
    assert "fix: pick one with --probe NAME and/or --layer NAME" in done.stderr
    assert done.stderr.rstrip().endswith(
        f"2 stores of 3 could not be exported, {out} not written: fix them or leave them out"
    )
    assert out.read_text() == "what was there\n" and [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]
    # a series one store lacks: that store named, nothing on stdout
    layer = _export(folder, A, B, "--what", "eigenvalues", "--layer", "fc2")
    assert (layer.returncode, layer.stdout) == (1, ""), layer
    assert "error: a.h5 holds no series for layer='fc2'" in layer.stderr and "b.h5" not in layer.stderr
    assert "Traceback" not in done.stderr + layer.stderr


def test_steps_apply_to_each_store(folder: Path) -> None:
    done = _export(folder, A, C, "--what", "eigenvalues", "--steps", "100")
    assert done.returncode == 0, done.stderr
    assert {(row[0], row[1]) for row in _csv(done.stdout)[1:]} == {(A, "100"), (C, "100")}
    # c.h5 stops at step 100: named, and the table not written
    late = _export(folder, A, C, "--what", "trajectories", "--steps", "0,200")
    assert (late.returncode, late.stdout) == (1, ""), late
    assert "error: ./c.h5: --steps: step 200 is not in c.h5 (train/fc1)" in late.stderr


def test_npy_takes_one_store(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.npz"
    done = _export(folder, A, C, "--what", "eigenvalues", "--format", "npy", "--out", out)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "--format npy exports one store (2 given)" in done.stderr
    assert "--format csv or json" in done.stderr and not out.exists()


def test_each_stores_notes_name_it(folder: Path) -> None:
    alone = _export(folder, R, "--what", "eigenvalues")
    assert alone.stderr.startswith("note: refused: step 300 (NaN or Inf weights"), alone.stderr
    both = _export(folder, A, R, "--what", "eigenvalues")
    assert both.returncode == 0
    assert both.stderr == alone.stderr.replace("note: ", "note: r.h5: ", 1)
