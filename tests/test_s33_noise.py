"""A new user's first hour on an 80-column terminal: what the happy path (the sample run) prints, and the lines
that said a thing twice, or left out the main answer for a column that never changes. Each test failed before its
fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fdl_cli.report import PlainTable
from tests.cli_run import REPO, fdl_in_process
from tests.test_s16_tty import ANSI, left_out

SAMPLE = REPO / "sample_checkpoints"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four checkpoints of the sample run: MF from step 5, at chance accuracy there, as in the whole run."""
    out = tmp_path_factory.mktemp("noise") / "sample.fdl.h5"
    done = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,50,1000", "-o", out)
    assert done.returncode == 0, done.stderr
    return out


def test_classify_names_the_first_mf_step_once(sample: Path) -> None:
    """The sample run read "MF from step 5 to the end (first MF checkpoint: step 5)": step 5 twice in a line, under
    the trajectory's "5–1000: MF" and above "at step 5, the first MF checkpoint, ..."."""
    lines = fdl_in_process("classify", sample).stderr.splitlines()
    assert "MF from step 5 to the end" in lines
    assert not any("(first MF checkpoint" in line for line in lines)
    assert sum("at step 5, the first MF checkpoint, the accuracy is 0.096" in line for line in lines) == 1


def test_a_sweep_on_a_narrow_terminal_keeps_d_lr_and_the_accuracy(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fdl classify a.h5 b.h5 c.h5` at 80 columns kept C (10 in every row) and left out D_LR and acc, the columns
    a sweep is read by (and its `down the rows:` line describes), as `fdl report` keeps them."""
    stores = ["a.h5", "b.h5", "c.h5"]
    for name in stores:
        shutil.copy(sample, tmp_path / name)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, whatever stderr is
    monkeypatch.setenv("COLUMNS", "60")
    text = ANSI.sub("", fdl_in_process("classify", *stores, cwd=tmp_path).stderr)
    header = text.splitlines()[0].split()
    assert {"store", "regime", "D_LR", "acc"} <= set(header) and "C" not in header, text
    hidden = left_out(text)
    assert "C" in hidden and "D_LR" not in hidden and "acc" not in hidden, hidden


@pytest.mark.parametrize(("hidden", "words"), [(1, "shows it,"), (2, "shows them,")])
def test_the_left_out_line_agrees_with_the_number_of_columns(hidden: int, words: str) -> None:
    """One column left out (`fdl compare`'s Δ Π̂(C) at 80 columns) read "a terminal 90 columns wide shows them"."""
    headers = ["step", "aaaaaa", "bbbbbb"]
    table = PlainTable.fitted(headers, ["right"] * 3, [["1", "2", "3"]], max_width=21 if hidden == 1 else 12)
    assert len(table.hidden) == hidden
    note = table.left_out_note("--format csv", "--json")
    assert note is not None and words in note, note
