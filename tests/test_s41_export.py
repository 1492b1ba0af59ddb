"""`fdl export A B ...` of a store whose arrays turn out damaged: found before the first row, or said to leave the
output incomplete.

Before, damage that shows only when an array is read (data failing its checksum, an array of the wrong rank, one
not finite) was met while the rows were being written: A's rows were already on stdout, the error was that of one
store's export (no word that the table on stdout lacked B's rows, nor the several-store message the same command
gives for damage found when the stores are opened), and JSON stopped mid-array. Now every array is read before the
first row, so such a store is named as any store that cannot be exported, and nothing is written; what can still
fail part-way (a store replaced between that check and its rows, as a running `fdl analyze` commits) says that the
output is incomplete, where it stopped, and, for `--out`, that the file was not written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli import report
from tests.cli_run import fdl_in_process
from tests.test_report import make_store
from tests.test_s12_review import _flip_a_byte_of, _reshaped

STEPS = (0, 100, 200, 300)
DAMAGED = "error: b.h5 is damaged at checkpoint step 200 (train/fc1)"


def _not_finite(store: Path, step: int, name: str) -> None:
    with h5py.File(store, "r+") as handle:
        values = handle[f"checkpoints/step_{step}/train/fc1/{name}"][()]
        values.flat[0] = np.nan
        handle[f"checkpoints/step_{step}/train/fc1/{name}"][...] = values


#: each kind of damage the reader finds only when it reads the array, and what the error says of it
DAMAGE: dict[str, tuple[Callable[[Path, int, str], None], str]] = {
    "checksum": (_flip_a_byte_of, "filter returned failure during read"),
    "rank": (lambda store, step, name: _reshaped(store, step, name, (-1, 1)), "must be 1-D"),
    "not finite": (_not_finite, "are not all finite"),
}


def _stores(folder: Path, damage: str = "checksum", what: str = "eigenvalues") -> Path:
    make_store(folder / "a.h5", steps=STEPS)
    make_store(folder / "b.h5", steps=STEPS, seed=4)
    DAMAGE[damage][0](folder / "b.h5", 200, what)
    return folder


def _export(folder: Path, *args: object) -> Any:
    done = fdl_in_process("export", *args, cwd=folder)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_damage_read_only_with_the_data_is_found_before_the_first_row(tmp_path: Path, damage: str, fmt: str) -> None:
    folder = _stores(tmp_path, damage)
    done = _export(folder, "a.h5", "b.h5", "--what", "eigenvalues", "--format", fmt)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert DAMAGED in done.stderr and DAMAGE[damage][1] in done.stderr
    assert done.stderr.rstrip().endswith("1 store of 2 could not be exported, no output written: fix it or leave it out")


def test_every_damaged_store_is_named_and_an_out_file_is_left_as_it_was(tmp_path: Path) -> None:
    folder = _stores(tmp_path, "checksum", "eigenfunctions")
    make_store(folder / "c.h5", steps=STEPS, seed=7)
    _not_finite(folder / "c.h5", 300, "eigenfunctions")
    out = folder / "out" / "sweep.csv"
    out.parent.mkdir()
    out.write_text("the previous export\n")
    done = _export(folder, "b.h5", "a.h5", "c.h5", "--what", "eigenfunctions", "--out", out)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert DAMAGED in done.stderr
    assert "error: c.h5 is damaged at checkpoint step 300 (train/fc1): its stored eigenfunctions are not all finite" \
        in done.stderr
    assert done.stderr.rstrip().endswith(f"2 stores of 3 could not be exported, {out} not written: fix them or leave "
                                         "them out")
    assert out.read_text() == "the previous export\n" and os.listdir(out.parent) == ["sweep.csv"]


def test_the_trajectories_and_undamaged_steps_still_export(tmp_path: Path) -> None:
    folder = _stores(tmp_path)
    # the trajectories read no array; --steps that leave out the damaged one read none of it
    assert _export(folder, "a.h5", "b.h5", "--what", "trajectories").returncode == 0
    done = _export(folder, "a.h5", "b.h5", "--what", "eigenvalues", "--steps", "0,300")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert {tuple(line.split(",")[:2]) for line in done.stdout.splitlines()[1:]} == {
        (store, step) for store in ("a.h5", "b.h5") for step in ("0", "300")}


@contextlib.contextmanager
def _replaced_when_reopened(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """b.h5 replaced by a damaged copy between the check and the writing of its rows, as a running `fdl analyze`
    commits (a new file renamed over the store): the second opening of b.h5 opens the damaged one."""
    damaged = folder / "damaged.h5"
    shutil.copy(folder / "b.h5", damaged)
    _flip_a_byte_of(damaged, 200, "eigenvalues")
    opened: dict[str, int] = {}
    real = report.opened_run

    @contextlib.contextmanager
    def opening(path: Any, **kwargs: Any) -> Iterator[Any]:
        opened[str(path)] = opened.get(str(path), 0) + 1
        if str(path) == "b.h5" and opened[str(path)] == 2:
            os.replace(damaged, folder / "b.h5")
        with real(path, **kwargs) as run:
            yield run

    monkeypatch.setattr(report, "opened_run", opening)
    yield
    assert opened.get("b.h5") == 2


def test_a_store_that_changed_after_the_check_says_the_csv_on_stdout_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _stores(tmp_path, "checksum", "utility")  # b.h5's eigenvalues are whole until it is replaced
    alone = _export(folder, "a.h5", "--what", "eigenvalues").stdout.splitlines()
    with _replaced_when_reopened(folder, monkeypatch):
        done = _export(folder, "a.h5", "b.h5", "--what", "eigenvalues")
    assert done.returncode == 1
    # a.h5's rows and b.h5's before step 200 went out
    rows = done.stdout.splitlines()
    assert [row.split(",", 1)[1] for row in rows[1:] if row.startswith("a.h5,")] == alone[1:]
    assert {row.split(",")[1] for row in rows[1:] if row.startswith("b.h5,")} == {"0", "100"}
    assert DAMAGED in done.stderr
    assert done.stderr.rstrip().endswith(
        "the CSV on stdout is incomplete: it stops at b.h5 (store 2 of 2), before its step 200, and lacks the rows "
        "from there on (b.h5 changed after the export checked it: a running `fdl analyze` committed to it?)")


def test_json_cut_off_on_stdout_says_it_is_no_whole_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _stores(tmp_path, "checksum", "utility")
    with _replaced_when_reopened(folder, monkeypatch):
        done = _export(folder, "a.h5", "b.h5", "--what", "eigenvalues", "--json")
    assert done.returncode == 1 and done.stdout.startswith("[\n  {\n    \"store\": \"a.h5\"")
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.stdout)
    assert DAMAGED in done.stderr
    assert "the JSON on stdout is cut off, no whole document: it stops at b.h5 (store 2 of 2), before its step 200" \
        in done.stderr


def test_out_file_of_an_export_that_fails_part_way_is_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _stores(tmp_path, "checksum", "utility")
    out = folder / "out" / "sweep.json"
    out.parent.mkdir()
    out.write_text("the previous export\n")
    with _replaced_when_reopened(folder, monkeypatch):
        done = _export(folder, "a.h5", "b.h5", "--what", "eigenvalues", "--json", "--out", out)
    assert (done.returncode, done.stdout) == (1, "")
    assert DAMAGED in done.stderr
    assert done.stderr.rstrip().endswith(
        f"{out} not written (left as it was): the export stopped at b.h5 (store 2 of 2), before its step 200 (b.h5 "
        "changed after the export checked it: a running `fdl analyze` committed to it?)")
    assert out.read_text() == "the previous export\n" and os.listdir(out.parent) == ["sweep.json"]


def test_one_store_damaged_part_way_says_stdout_is_incomplete(tmp_path: Path) -> None:
    folder = _stores(tmp_path)
    done = _export(folder, "b.h5", "--what", "eigenvalues")
    assert done.returncode == 1
    assert {row.split(",")[0] for row in done.stdout.splitlines()[1:]} == {"0", "100"}
    assert DAMAGED in done.stderr
    assert done.stderr.rstrip().endswith(
        "the CSV on stdout is incomplete: it stops before step 200, and lacks the rows from there on")
