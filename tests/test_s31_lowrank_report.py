"""`fdl report` says what `fdl classify` says of a degenerate layer: a reference checkpoint whose features have
rank below the overlaps' k (overlaps taken at a smaller k), and a layer of p ≤ C units whose D_LR the formula
fixes. In the table's text and the HTML page, and as stderr notes beside --json and --format csv (stdout is the
records alone). The stores are tests/test_s31_degen.py's."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_s31_degen import _run


@pytest.fixture(scope="module")
def constant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("constant"), 8, constant_reference=True)


@pytest.fixture(scope="module")
def one_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("p1"), 1)


def _evidence(root: Path) -> dict:
    done = fdl_in_process("classify", root / "run.h5", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["evidence"]


def _notes(root: Path) -> list[str]:
    """classify's words on the store's degenerate layer: its low-rank-reference note, its narrow-layer line."""
    evidence = _evidence(root)
    return [evidence["low_rank_reference"]["note"], *([evidence["narrow_layer"]] if "narrow_layer" in evidence else [])]


def test_report_text_says_the_reference_rank_as_classify_does(constant: Path) -> None:
    note = _notes(constant)[0]
    assert "rank 1" in note and "k = 3" in note, note
    done = fdl_in_process("report", constant / "run.h5")
    assert done.returncode == 0, done.stderr
    assert note in (done.stdout + done.stderr).replace("\n", " "), done.stdout + done.stderr


def test_report_text_says_a_one_unit_layer_d_lr_is_the_formula_s(one_unit: Path) -> None:
    low, narrow = _notes(one_unit)
    assert "D_LR = 0 by the formula" in narrow and "k ≤ 1 at every checkpoint" in low, (low, narrow)
    done = fdl_in_process("report", one_unit / "run.h5")
    said = (done.stdout + done.stderr).replace("\n", " ")
    assert done.returncode == 0 and narrow in said and low in said, said


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_report_html_page_holds_both_notes(one_unit: Path, tmp_path: Path) -> None:
    done = fdl_in_process("report", one_unit / "run.h5", "--html", tmp_path / "page.html")
    assert done.returncode == 0, done.stderr
    page = html.unescape((tmp_path / "page.html").read_text())
    for note in _notes(one_unit):
        assert note in page, note


@pytest.mark.parametrize("fmt", [("--json",), ("--format", "csv")])
def test_report_records_stay_on_stdout_and_the_notes_go_to_stderr(constant: Path, fmt: tuple[str, ...]) -> None:
    done = fdl_in_process("report", constant / "run.h5", *fmt)
    assert done.returncode == 0, done.stderr
    note = _notes(constant)[0]
    assert f"note: {note}" in done.stderr.replace("\n", " "), done.stderr
    assert "overlaps' k" not in done.stdout
    if fmt == ("--json",):
        assert [record["step"] for record in json.loads(done.stdout)] == [0, 10, 20]
    else:
        assert done.stdout.splitlines()[0].startswith("step,")
