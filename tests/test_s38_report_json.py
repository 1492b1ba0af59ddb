"""A store whose checkpoints ran two versions of the model code (`fdl analyze --accept-model-change`, its
`model_changes`) says so in the machine output of every command that summarises it, not only in `fdl classify
--json`: each record of `fdl report --format json|csv|markdown` carries the store's `model_changes` (classify's
list, as classify gives it), `fdl compare --json` one list a run (`{"a": [...], "b": null}`), compare's CSV and
`fdl export` a note on stderr, and the `--html` page the table's note. A store without a change prints as before:
no such key or column."""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fdl_cli.html import run_page
from fdl_cli.report import load_run
from tests.cli_run import fdl_in_process
from tests.test_s33_imports import _analyze
from tests.test_walk_fixes import _run_folder

MIXED = "this store mixes model code: from step 20 on its checkpoints ran changed code"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """(a store of steps 0, 10 and 20 whose step 20 ran an edited model file, the same store before that run: steps
    0 and 10 of one code, the store's model_changes as `fdl classify --json` gives them)."""
    root = _run_folder(tmp_path_factory.mktemp("mixed"))
    assert _analyze(root, "--steps", "0,10")[0] == 0
    plain = shutil.copy(root / "run.h5", root / "plain.h5")
    (root / "model.py").write_text((root / "model.py").read_text() + "# a comment only\n")
    code, said = _analyze(root, "--accept-model-change")
    assert code == 0, said
    verdict = fdl_in_process("classify", root / "run.h5", "--json")
    assert verdict.returncode == 0, verdict.stderr
    changes = json.loads(verdict.stdout)["model_changes"]
    assert [change["from_step"] for change in changes] == [20]
    return root / "run.h5", Path(plain), changes


def _said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join(done.stderr.split())


def test_report_json_records_carry_the_model_changes_as_classify_gives_them(stores: tuple[Path, Path, list]) -> None:
    mixed, plain, changes = stores
    done = fdl_in_process("report", mixed, "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)  # stdout is the JSON alone
    assert [record["step"] for record in records] == [0, 10, 20]
    assert all(record["model_changes"] == changes for record in records)
    assert list(records[0])[-1] == "model_changes"  # last, after every field a store without a change has
    assert f"note: {MIXED}" in _said(done)  # the note stays beside it

    before = fdl_in_process("report", plain, "--json")
    assert before.returncode == 0 and "mixes model code" not in before.stderr
    kept = json.loads(before.stdout)
    assert [list(record) for record in kept] == [list(record)[:-1] for record in records[:2]]  # no key: as before


def test_report_csv_and_markdown_end_with_a_model_changes_column(stores: tuple[Path, Path, list]) -> None:
    mixed, plain, changes = stores
    done = fdl_in_process("report", mixed, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [row["step"] for row in rows] == ["0", "10", "20"]
    assert list(rows[0])[-1] == "model_changes" and all(json.loads(row["model_changes"]) == changes for row in rows)
    assert f"note: {MIXED}" in _said(done)
    assert "model_changes" not in fdl_in_process("report", plain, "--format", "csv").stdout

    table = fdl_in_process("report", mixed, "--format", "markdown").stdout.splitlines()
    assert table[0].endswith("| model_changes |") and "from\\_step" not in table[2]  # `from_step`: within a word
    cell = table[2].rsplit(" | ", 1)[1].removesuffix(" |")
    assert json.loads(cell.replace("\\", "")) == changes  # the JSON text, its `[`, `]` backslashed
    assert "model_changes" not in fdl_in_process("report", plain, "--format", "markdown").stdout


def test_compare_json_gives_each_runs_model_changes(stores: tuple[Path, Path, list]) -> None:
    mixed, plain, changes = stores
    for a, b, expected in ((mixed, plain, {"a": changes, "b": None}), (plain, mixed, {"a": None, "b": changes})):
        done = fdl_in_process("compare", a, b, "--json", "--no-overlap")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["model_changes"] == expected
        run = "run A" if a == mixed else "run B"
        assert f"note: {run} ({mixed}): {MIXED}" in _said(done) and "note: run A (" + str(plain) not in done.stderr
    same = fdl_in_process("compare", plain, plain, "--json", "--no-overlap")
    assert same.returncode == 0 and "model_changes" not in json.loads(same.stdout) and "mixes" not in same.stderr


def test_compare_csv_and_table_and_export_say_it_on_stderr(stores: tuple[Path, Path, list]) -> None:
    mixed, plain, _ = stores
    as_csv = fdl_in_process("compare", mixed, plain, "--format", "csv", "--no-overlap")
    assert as_csv.returncode == 0 and "model_changes" not in as_csv.stdout  # its rows are the matched steps'
    assert f"note: run A ({mixed}): {MIXED}" in _said(as_csv)
    table = fdl_in_process("compare", mixed, mixed, "--no-overlap")
    assert table.returncode == 0 and f"note: runs A and B ({mixed}): {MIXED}" in _said(table)
    exported = fdl_in_process("export", mixed, "--what", "trajectories")
    assert exported.returncode == 0 and "model_changes" not in exported.stdout
    assert f"note: {MIXED}" in _said(exported)
    assert "mixes" not in fdl_in_process("export", plain, "--what", "trajectories").stderr


def test_the_html_page_says_it_as_the_table_does(stores: tuple[Path, Path, list]) -> None:
    mixed, plain, _ = stores
    said = [
        " ".join(html.unescape(run_page(load_run(store, history=True), with_figures=False)).split())
        for store in (mixed, plain)
    ]
    assert f"note: {MIXED}" in said[0] and "mixes model code" not in said[1]


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_a_classify_sweeps_csv_and_markdown_end_with_model_changes_where_a_store_has_them(
        stores: tuple[Path, Path, list], fmt: str) -> None:
    """Session 40: `fdl classify STORE... --format csv|markdown` had no such column (its --json had the list)."""
    mixed, plain, changes = stores
    done = fdl_in_process("classify", plain, mixed, "--format", fmt)
    assert done.returncode == 0, done.stderr
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(done.stdout)))
        assert rows[0][-1] == "model_changes"
        assert rows[1][-1] == "" and json.loads(rows[2][-1]) == changes
    else:
        lines = done.stdout.splitlines()
        assert lines[0].rstrip(" |").endswith("model_changes")
        assert lines[2].strip().strip("|").split("|")[-1].strip() == "" and '"from_step": 20' in lines[3]
    alone = fdl_in_process("classify", plain, plain, "--format", fmt)  # no store mixes code: no column
    assert alone.returncode == 0 and "model_changes" not in alone.stdout, alone.stderr
