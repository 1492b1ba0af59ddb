"""Every CSV (and markdown) fdl writes holds, cell for cell, the value its `--json` holds, encoded by the one rule
docs/usage.md ("CSV") gives: null an empty cell, a boolean `True`/`False`, a float its repr, a list its JSON
text, and a text field with a comma, a quote or a line break (`\\n` or `\\r`) quoted. Markdown rounds floats
to 6 significant digits, those of a list too."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli.fields import number_text
from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter
from tests.cli_run import fdl_in_process
from tests.test_report import N_OUTPUTS, N_PROBE, SCALARS, STEPS, _entry, make_store

#: A layer named with a carriage return alone (which Python's csv module left unquoted, and then could not read
#: back) and a checkpoint path holding a comma, a quote, a pipe and both line breaks
ODD_LAYER = "fc\r1"
ODD_PATH = 'runs/lr 0.1,\r"wd"|\n/step_{}.pt'


def _odd_store(path: Path) -> Path:
    """A regression run of two layers (ODD_LAYER first) whose probe holds float 0/1 targets (a boolean field),
    with each output's R² (a list field, one null) and a loss that is NaN at one step (stored as null)."""
    x = np.linspace(-1.0, 1.0, N_PROBE)
    probe = ProbeInfo(name="train", sha256="a" * 64, n=N_PROBE, task="regression", n_outputs=N_OUTPUTS,
                      anchor_x=x[:, None], anchor_y=np.sin(3 * x)[:, None], zero_one_targets=True)
    provenance = {"model": "model.py:build", "layers": [ODD_LAYER, "fc2"], "fdl_version": "0.1.0"}
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step in STEPS:
            scalars = {**SCALARS[step], "d_lr": 0.1 + 0.2 + step, "loss": float("nan") if step == 100 else 1 / 3}
            series = tuple(
                dataclasses.replace(_entry(step, probe="train", layer=layer, seed=i, scalars=scalars),
                                    r2_outputs=np.array([1 / 7 + step, np.nan]))
                for i, layer in enumerate((ODD_LAYER, "fc2")))
            writer.add(CheckpointEntry(step=step, path=ODD_PATH.format(step), sha256=f"{step:064x}", series=series))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The odd store (in a folder whose name holds a carriage return alone: classify's `store` column) and a
    plain one whose last step (250) matches 200 inexactly (compare's `exact` false)."""
    folder = tmp_path_factory.mktemp("csv") / "sweep\rb"
    folder.mkdir()
    return _odd_store(folder / "odd.h5"), make_store(folder / "plain.h5", steps=(0, 100, 250))


def _out(*args: object) -> str:
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cell(value: Any) -> str:
    """A JSON value as docs/usage.md's CSV rule writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _assert_cells(text: str, expected: list[dict[str, Any]]) -> None:
    """The CSV `text`, read with the csv module, is a header then one row per `expected` row, each cell the
    encoding of the JSON value of its column."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(expected) and expected  # no row would compare nothing
    header = rows[0]
    for row, want in zip(rows[1:], expected, strict=True):
        assert len(row) == len(header)
        assert dict(zip(header, row, strict=True)) == {name: _cell(want[name]) for name in header}


def _compare_rows(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """compare --json's steps as the columns of its CSV name them: delta_F of `differences`, a_F and b_F of
    each run's record."""
    for step in document["steps"]:
        row = {name: step[name] for name in ("step_a", "step_b", "exact", "overlap", "overlap_k", "overlap_computed")}
        row.update((f"delta_{name}", value) for name, value in step["differences"].items())
        row.update((f"{side}_{name}", value) for side in "ab" for name, value in step[side].items())
        yield row


def test_report_csv_holds_its_json(stores: tuple[Path, Path]) -> None:
    odd, _ = stores
    records = json.loads(_out("report", odd, "--json"))
    assert {r["layer"] for r in records} == {ODD_LAYER, "fc2"} and records[0]["zero_one_targets"] is True
    _assert_cells(_out("report", odd, "--format", "csv"), records)


def test_compare_csv_holds_its_json(stores: tuple[Path, Path]) -> None:
    odd, plain = stores
    args = ("compare", odd, plain, "--layer", ODD_LAYER, "--layer-b", "fc1")
    rows = list(_compare_rows(json.loads(_out(*args, "--json"))))
    assert [row["exact"] for row in rows] == [True, True, False]
    _assert_cells(_out(*args, "--format", "csv"), rows)


def test_classify_csv_holds_its_json(stores: tuple[Path, Path]) -> None:
    """Of several stores and of one (whose --json has neither `store` nor `probe_sha256`: the CSV's row of it is
    the several stores' first). `refused_steps` is the steps of --json's `refused_steps` (absent: none, null)."""
    objects = json.loads(_out("classify", *stores, "--json"))
    rows = [{**one["evidence"], "store": one["store"], "regime": one["regime"], "probe_sha256": one["probe_sha256"],
             "refused_steps": [item["step"] for item in one.get("refused_steps", [])] or None}
            for one in objects]
    assert rows[0]["store"] == str(stores[0]) and rows[0]["layer"] == ODD_LAYER
    _assert_cells(_out("classify", *stores, "--format", "csv"), rows)
    one = json.loads(_out("classify", stores[0], "--json"))
    assert one["evidence"] == objects[0]["evidence"]
    _assert_cells(_out("classify", stores[0], "--format", "csv"), rows[:1])


def test_export_trajectories_csv_holds_its_json(stores: tuple[Path, Path]) -> None:
    odd, _ = stores
    columns = json.loads(_out("export", odd, "--layer", ODD_LAYER, "--what", "trajectories", "--format", "json"))
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    assert rows[0]["layer"] == ODD_LAYER and rows[0]["path"] == ODD_PATH.format(0)
    _assert_cells(_out("export", odd, "--layer", ODD_LAYER, "--what", "trajectories"), rows)


@pytest.mark.parametrize("what", ["eigenvalues", "eigenfunctions"])
def test_export_arrays_csv_holds_its_json(stores: tuple[Path, Path], what: str) -> None:
    """A row per value, each ending with the series' probe and layer (a store of several series)."""
    odd, _ = stores
    rows: list[dict[str, Any]] = []
    for item in json.loads(_out("export", odd, "--layer", ODD_LAYER, "--what", what, "--format", "json")):
        tag = {"step": item["step"], "probe": item["probe"], "layer": item["layer"]}
        if what == "eigenvalues":
            rows += [{**tag, "k": k, what: value} for k, value in enumerate(item[what], start=1)]
        else:
            rows += [{**tag, "point": point, "k": k, "value": value}
                     for point, values in enumerate(item[what]) for k, value in enumerate(values, start=1)]
    assert rows[0]["layer"] == ODD_LAYER
    _assert_cells(_out("export", odd, "--layer", ODD_LAYER, "--what", what), rows)


def _markdown_cell(value: Any) -> str:
    """A JSON value as docs/usage.md's markdown rule writes it: floats (a list's too) to 6 significant digits."""
    if isinstance(value, float):
        return number_text(value, ".6g")
    if isinstance(value, list):
        return "[" + ", ".join("null" if v is None else _markdown_cell(v) for v in value) + "]"
    # a backslash before `\ | * ` [ ] < & ~ $` and a `_` not between two letters or digits (docs/usage.md)
    escaped = re.sub(r"([\\|*`\[\]<&~$]|(?<![^\W_])_|_(?![^\W_]))", r"\\\1", _cell(value))
    return re.sub(r"\r\n|\r|\n", "<br>", escaped)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_markdown_holds_the_json_rounded_as_documented(stores: tuple[Path, Path], command: str) -> None:
    odd, plain = stores
    args: tuple[object, ...] = ("report", odd) if command == "report" else (
        "compare", odd, plain, "--layer", ODD_LAYER, "--layer-b", "fc1")
    document = json.loads(_out(*args, "--json"))
    expected = document if command == "report" else list(_compare_rows(document))
    lines = _out(*args, "--format", "markdown").splitlines()
    header, *rows = ([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines)
    assert len(rows) == 1 + len(expected) and set(rows[0]) == {"---"}
    assert any(isinstance(row.get("r2_outputs", row.get("a_r2_outputs")), list) for row in expected)
    for row, want in zip(rows[1:], expected, strict=True):
        assert dict(zip(header, row, strict=True)) == {name: _markdown_cell(want[name]) for name in header}
