"""The text output of `fdl report`, `fdl classify` and `fdl compare` for a person: a table column's numbers one
above the other (a column of 4 significant digits read 0.1234 over 12.35 over 1.2e-05), an accuracy with the same
4 decimals in classify's lines as in the tables (classify said 0.517 of report's 0.5167), and the lines below a
table wrapped at spaces to a terminal's width (the terminal broke them mid-word), never inside a command, and not
at all in a pipe. JSON, CSV and markdown keep their values. Each test failed before its fix."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store
from tests.test_s16_tty import ANSI

#: A classification run (accuracy, CE) whose D_ρ spans seven orders of magnitude, and whose CE 12.3456 sat over 0.5
#: and 0.0625 as "12.35", "0.5", "0.0625"; MF at steps 100 and 200, at an accuracy near chance (1/C = 0.5)
SPREAD: dict[int, dict[str, Any]] = {
    0: {**SCALARS[0], "accuracy": 0.5, "cross_entropy": 12.3456, "eff_dim": 1.2e-5},
    100: {**SCALARS[100], "k95_utility": 2, "regime": "MF", "accuracy": 0.5625, "cross_entropy": 0.5, "eff_dim": 123.456},
    200: {**SCALARS[200], "accuracy": 0.5625, "cross_entropy": 0.0625, "eff_dim": 3.0},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """In a folder whose name makes `fdl report STORE --wide 2>&1 | less -S` wider than 80 columns."""
    folder = tmp_path_factory.mktemp("fmt") / "a_folder_whose_name_is_long_enough"
    folder.mkdir()
    return make_store(folder / "run.h5", scalars=SPREAD)


def _rows(text: str) -> list[list[str]]:
    """The cells of the rows of the first table in `text` (below its rule), split at its 3-space separators."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("─")) + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        rows.append(line.split())
    return rows


def test_a_report_column_has_one_format_down_it(store: Path) -> None:
    """D_ρ of 1.2e-05, 123.5 and 3 (4 significant digits each) is in scientific notation, each cell alike; CE's
    12.3456, 0.5 and 0.0625 have 4 decimals each, their points one above the other (right-justified)."""
    done = fdl_in_process("report", store)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stderr)
    assert [row[6] for row in rows] == ["1.200e-05", "1.235e+02", "3.000e+00"], done.stderr  # D_ρ
    assert [row[8] for row in rows] == ["12.3456", "0.5000", "0.0625"], done.stderr  # CE
    assert [row[7] for row in rows] == ["0.5000", "0.5625", "0.5625"], done.stderr  # acc, as before
    lines = done.stderr.splitlines()
    table = [line for line in lines if line.startswith(("   0 ", " 100 ", " 200 "))]
    assert len({line.rindex(row[8]) + len(row[8]) for line, row in zip(table, rows, strict=True)}) == 1


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([1.25, 0.5, 0.0625], ["1.2500", "0.5000", "0.0625"]),  # the loss of test_report's golden table
        ([2.5, 3.5, 4.5], ["2.5", "3.5", "4.5"]),  # as few decimals as the column needs
        ([3.0, 4.0, None], ["3", "4", "—"]),
        ([2.3, 0.0004], ["2.3000", "0.0004"]),
        ([2.3, 0.00004], ["2.300e+00", "4.000e-05"]),  # 4 decimals would show 0.0000: scientific
        ([1234.5, 99999.0], ["1234", "99999"]),
        ([1234.5, 2e6], ["1.234e+03", "2.000e+06"]),  # a million or more
        ([-1.25, 0.5, -0.0, float("nan")], ["-1.25", "0.50", "0.00", "nan"]),  # no "-0.00", as number_text
    ],
)
def test_a_column_s_rule_comes_from_its_values(values: list[float | None], shown: list[str]) -> None:
    from fdl_cli.report import column_texts

    assert column_texts("loss", values) == shown


def test_a_unit_column_keeps_four_decimals() -> None:
    from fdl_cli.report import column_texts

    assert column_texts("d_lr", [0.9, 1.2e-14, None]) == ["0.9000", "0.0000", "—"]
    assert column_texts("k95_utility", [5, 12]) == ["5", "12"]


def test_machine_output_keeps_its_values(store: Path) -> None:
    """JSON and CSV the numbers themselves, markdown 6 significant digits: as before the tables' rule."""
    rows = json.loads(fdl_in_process("report", store, "--json").stdout)
    assert [row["eff_dim"] for row in rows] == [1.2e-5, 123.456, 3.0]
    assert [row["cross_entropy"] for row in rows] == [12.3456, 0.5, 0.0625]
    table = list(csv.DictReader(io.StringIO(fdl_in_process("report", store, "--format", "csv").stdout)))
    assert [row["eff_dim"] for row in table] == ["1.2e-05", "123.456", "3.0"]
    markdown = fdl_in_process("report", store, "--format", "markdown").stdout
    assert "| 1.2e-05 |" in markdown and "| 123.456 |" in markdown and "| 12.3456 |" in markdown, markdown


def test_classify_says_the_accuracy_with_the_table_s_decimals(store: Path) -> None:
    """classify read "the accuracy is 0.562 (chance 1/C = 0.500)" of the report's 0.5625."""
    text = fdl_in_process("classify", store).stderr
    first = [line for line in text.splitlines() if line.startswith("at step 100, the first MF checkpoint")]
    assert len(first) == 1 and "the accuracy is 0.5625 (chance 1/C = 0.5000)" in first[0], text
    sweep = fdl_in_process("classify", store, store).stderr
    row = next(line for line in sweep.splitlines() if line.startswith(str(store)))
    assert row.split()[-4] == "0.5625", sweep  # the acc column, before r2, MF since and final step


def test_notes_wrap_at_spaces_on_a_terminal_never_in_a_command(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns the "(left out ...)" line and the column key were one line each, which the terminal broke
    mid-word; piped, they stay one line each (what `grep` finds)."""
    piped = fdl_in_process("report", store).stderr
    key = next(line for line in piped.splitlines() if line.startswith("columns: "))
    assert len(key) > 80
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, whatever stderr is
    monkeypatch.setenv("COLUMNS", "80")
    text = ANSI.sub("", fdl_in_process("report", store).stderr)
    command = f"`fdl report {store} --wide 2>&1 | less -S`"  # wider than 80 columns: a line of its own, whole
    assert len(command) > 80
    lines = text.splitlines()
    assert any(command in line for line in lines), text
    assert all(cell_len(line) <= 80 for line in lines if not line.startswith("`fdl ")), text  # (and export's)
    assert " ".join(text.split()).count(" ".join(key.split())) == 1  # the same words, broken at spaces only


@pytest.mark.parametrize(
    ("width", "lines"),
    [
        (12, ["aaa bbb ccc", "`x y z` dd"]),
        (7, ["aaa bbb", "ccc", "`x y z`", "dd"]),
        (3, ["aaa", "bbb", "ccc", "`x y z`", "dd"]),  # a word or command wider than the line: whole
        (80, ["aaa bbb ccc `x y z` dd"]),
    ],
)
def test_word_breaks(width: int, lines: list[str]) -> None:
    from fdl_cli.cli import word_breaks

    text = "aaa bbb ccc `x y z` dd"
    broken = list(text)
    for at in word_breaks(text, width):
        broken[at] = "\n"
    assert "".join(broken).split("\n") == lines
    assert word_breaks("k95 Π̂ = x", 9) == []  # widths in cells: Π̂ is one, two characters
    assert word_breaks("ab\nyy zz", 4) == [5]  # each line of the text anew
