"""Review of the argument-error hints taken together (a choice word without its option, more stores than a command
reads, an alias, a word after `--`, a choice option without its value): the cases where a hint was missing, hid
another or contradicted what the user wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import make_store

CHOICE = "'json' is one of --format's choices: give it as --format json"


def _stores(folder: Path, count: int) -> list[Path]:
    return [make_store(folder / f"run{i}.h5") for i in range(count)]


@pytest.mark.parametrize(("command", "count", "hint"), [
    ("report", 2, "fdl report reads one store: for a row per store, fdl classify STORE..."),
    ("compare", 3, "fdl compare reads two stores: for a row per store, fdl classify STORE..."),
])
def test_an_extra_store_beside_a_choice_word_keeps_the_one_store_hint(
        tmp_path: Path, command: str, count: int, hint: str) -> None:
    # `fdl compare a.h5 b.h5 c.h5 json`: the choice's hint said nothing of c.h5, the store too many
    stores = _stores(tmp_path, count)
    done = fdl_in_process(command, *stores, "json")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert hint in done.stderr and CHOICE in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_choice_word_alone_left_over_gets_the_choice_hint_alone(tmp_path: Path) -> None:
    # the one-store hint is for a store too many: `fdl report run.h5 json csv` gave none
    done = fdl_in_process("report", *_stores(tmp_path, 1), "json", "csv")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert CHOICE in done.stderr and "reads one store" not in done.stderr, done.stderr


def test_a_word_after_double_dash_is_a_store_not_a_choice() -> None:
    # `--` says that what follows is no option: `fdl report -- json` asks for the store json, which is not there
    done = fdl_in_process("report", "--", "json")
    assert (done.returncode, done.stdout) == (1, ""), done
    assert "no fdl store at json" in done.stderr and "choices" not in done.stderr, done.stderr


def test_a_word_after_double_dash_left_over_is_a_store_too_many(tmp_path: Path) -> None:
    done = fdl_in_process("report", *_stores(tmp_path, 1), "--", "json")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "fdl report reads one store" in done.stderr and "choices" not in done.stderr, done.stderr


def test_classify_reads_a_store_named_by_a_choice_after_double_dash(tmp_path: Path) -> None:
    # its several stores: the others shown, then json's own error (exit 1), as for any store that is not there
    done = fdl_in_process("classify", *_stores(tmp_path, 1), "--", "json")
    assert done.returncode == 1, done
    assert "no fdl store at json" in done.stderr and "choices" not in done.stderr, done.stderr


def test_double_dash_as_an_options_value_ends_no_options(tmp_path: Path) -> None:
    # `--layer --` gives --layer the value '--' (click's parser): the json after it is still a word left over
    done = fdl_in_process("report", *_stores(tmp_path, 1), "--layer", "--", "json")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert CHOICE in done.stderr, done.stderr


@pytest.mark.parametrize(("command", "count", "hint"), [
    ("summarize", 2, "fdl summarize reads one store: for a row per store, fdl classify STORE...; or one report per "
                     "store (for s in runs/*.h5; do fdl summarize \"$s\"; done)"),
    ("diff", 3, "fdl diff reads two stores: for a row per store, fdl classify STORE..."),
])
def test_an_alias_given_a_store_too_many_gets_its_commands_hint(
        tmp_path: Path, command: str, count: int, hint: str) -> None:
    # `fdl diff a.h5 b.h5 c.h5` had click's bare "Got unexpected extra argument (c.h5)", `fdl compare` the hint
    done = fdl_in_process(command, *_stores(tmp_path, count))
    assert (done.returncode, done.stdout) == (2, ""), done
    assert hint in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "choices"), [
    (["report", "{store}", "--format"], "one of 'table', 'json', 'csv', 'markdown': give it as --format table"),
    (["export", "{store}", "--what"], "one of 'eigenvalues', 'quality', 'utility', 'eigenfunctions', 'trajectories'"),
    (["classify", "{store}", "--expect"], "one of 'coefficient', 'MF', 'EF'"),
])
def test_a_choice_option_without_its_value_lists_the_choices(tmp_path: Path, args: list[str], choices: str) -> None:
    # `fdl report run.h5 --format` (the value forgotten) said "requires an argument" and not which
    store = str(_stores(tmp_path, 1)[0])
    done = fdl_in_process(*(store if arg == "{store}" else arg for arg in args))
    assert (done.returncode, done.stdout) == (2, ""), done
    assert f"Option '{args[-1]}' requires an argument" in done.stderr and choices in done.stderr, done.stderr
