"""Terminals that cannot show fdl's typography: an ASCII or Latin-1 stderr (PYTHONIOENCODING=ascii, a
LANG=en_US.ISO-8859-1 terminal). fdl's tables and summaries use "─", "₀", "Π̂", "ρ", "Δ", "→", "–"; such a
stream got each as a \\uXXXX escape, six characters for one cell: the table's rule became 540 characters
(wrapped over many lines on a terminal), the headers no longer stood over their columns, and a summary read
"regime: coefficient (0) \\u2192 MF (5\\u20131000)". They get ASCII stand-ins now, measured as written.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_io_fixes import _run_on_ascii_streams
from tests.test_report import make_store


def _ends(line: str) -> list[int]:
    """Where each cell of a table line ends (cells are three or more spaces apart; a header may hold one)."""
    return [match.end() for match in re.finditer(r"\S+(?: \S+)*", line)]


def _table(err: str, header_start: str) -> tuple[str, str, str]:
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    return lines[at], lines[at + 1], lines[at + 2]


def test_report_on_an_ascii_stream_draws_its_table_in_ascii_with_headers_over_their_columns(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5")
    code, _, err = _run_on_ascii_streams("report", str(store))
    assert code == 0, err
    assert "\\u" not in err, err  # no escape stands for a glyph of fdl's own
    header, rule, row = _table(err, "step")
    assert set(rule) == {"-"} and len(rule) >= len(header) and len(rule) >= len(row), err
    assert "CKA0" in header and "Pi^(C)" in header and "D_rho" in header, header
    # every column is right-justified but the regime (the last): each header ends where its numbers end
    assert _ends(header)[:-1] == _ends(row)[:-1], f"{header}\n{row}"
    assert "3 checkpoints, steps 0-200" in err and "regime: coefficient (0) -> EF (100) -> MF (200)" in err, err


def test_compare_on_an_ascii_stream_keeps_its_columns_and_says_its_arrows(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", seed=3)
    code, _, err = _run_on_ascii_streams("compare", str(a), str(b))
    assert code == 0, err
    assert "\\u" not in err, err
    assert "B - A at matched steps" in err
    header, rule, row = _table(err, "step A")
    assert set(rule) == {"-"} and len(rule) >= len(header), err
    assert _ends(header) == _ends(row), f"{header}\n{row}"
