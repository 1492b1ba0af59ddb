"""Review of session 19's `fdl analyze --drop` and the stored `zero_one_targets` caveat (tiny MLPs on the CPU).
Each test failed before its fix: a fix that, followed as written, did not work.

- A store holding one file at two steps, resumed by a command with --redo or --watch: the error said "run the
  same command with --drop ...", and that command was refused ("--drop ... and --redo together").
- A probe of float 0/1 targets in a column, shape (n, 1), for a model of one output: analyze's warning and
  report's caveat said "save the targets as integer labels (y.astype(np.int64))", which gives integer labels
  of shape (n, 1), refused ("integer 'y' of shape (n, 1) is not one-hot ... give y[:, 0]").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _records, damaged, fdl  # noqa: F401 - damaged: a fixture

torch.set_num_threads(1)


# ------------------------------------------------- the stored-twice error's fix, in a command that cannot take --drop


@pytest.mark.parametrize("option", [["--redo", "10"], ["--watch", "--poll", "0.1"]], ids=["redo", "watch"])
def test_the_stored_twice_fix_works_as_written_from_a_redo_or_watch_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damaged: Any,  # noqa: F811
    option: list[str],
) -> None:
    """The fix of a command with --redo (or --watch) named the same command with --drop, which is refused with
    them; it now says to run it without that option first, and that command mends the store."""
    common, run2, out, twenty, _ = damaged(tmp_path)
    base = [*common, "-o", out, "--step-offset", f"{run2}=20"]
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *base, *option)
    flat = " ".join(err.split())
    assert status == 1, flat
    assert f"fix: run the same command without {option[0]}, with --drop 110,120: it removes those steps" in flat, flat
    assert f"keeps every other checkpoint; then run the {option[0]} command (--drop does not go with" in flat, flat
    assert out.read_bytes() == before
    # as written: the same command, without the option, with --drop
    status, _, err = fdl(capsys, "analyze", *base, "--drop", "110,120")
    assert status == 0, err
    assert _records(out) == _records(twenty)


def test_the_stored_twice_fix_of_a_plain_command_is_unchanged(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damaged: Any,  # noqa: F811
) -> None:
    common, run2, out, _, _ = damaged(tmp_path)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20")
    flat = " ".join(err.split())
    assert status == 1 and "fix: run the same command with --drop 110,120: it removes those steps" in flat, flat
    assert "without" not in flat.split("fix:")[1].split(":")[0]


# ------------------------------------------------------ float 0/1 targets in a column: the integer labels' recipe


def _one_output_run(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate((0, 10, 20)):
        save_file(_weights(index, n_out=1), str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=(24, 1)).astype(np.float32)  # a binary classifier's targets, as a float column
    return folder, x, y


def _recipe(message: str) -> str:
    """The expression the message gives for the integer labels, `y...astype(np.int64)...`."""
    found = re.search(r"integer labels \((y[^ ]*?astype\(np\.int64\)[^ ;,]*?)\)", message)
    assert found is not None, message
    return found.group(1)


def test_the_integer_labels_recipe_of_a_float_column_of_0_1_targets_gives_labels_fdl_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """analyze's warning and report's caveat name the expression that makes integer labels; applied to y of
    shape (n, 1) (the shape of one output's targets), it gave labels of shape (n, 1), refused."""
    folder, x, y = _one_output_run(tmp_path)
    probe, out = tmp_path / "probe.npz", tmp_path / "run.h5"
    np.savez(probe, x=x, y=y)
    common = [folder, "--model", MODEL, "--model-kwargs", '{"n_out": 1}', *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--probe", probe, "-o", out)
    flat = " ".join(err.split())
    assert status == 0 and "y holds float 0/1 targets" in flat, flat
    warned = _recipe(flat)
    status, _, err = fdl(capsys, "report", out)
    flat = " ".join(err.split())
    assert status == 0 and "holds float 0/1 targets" in flat, flat
    caveat = _recipe(flat)
    assert "analyse again, into another --out (or with --overwrite: the probe differs)" in flat, flat
    for recipe in {warned, caveat}:
        labels = eval(recipe, {"np": np, "y": y})  # the message's own expression, on the probe's y
        fixed = tmp_path / "labels.npz"
        np.savez(fixed, x=x, y=labels)
        status, _, err = fdl(capsys, "analyze", *common, "--probe", fixed, "-o", tmp_path / "labels.h5", "--overwrite")
        assert status == 0, " ".join(err.split())
        records: list[dict[str, Any]] = _records(tmp_path / "labels.h5")
        assert [record["step"] for record in records] == [0, 10, 20]  # all() over no records would pass
        assert all(record["accuracy"] is not None for record in records)


def test_the_integer_labels_recipe_for_whole_number_targets_in_a_column_gives_labels_fdl_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class labels saved as floats in a column (n, 1) for a model of 3 outputs: refused, with "save them as
    integers: y.astype(np.int64)", which gave integer labels of shape (n, 1), refused in turn."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate((0, 10)):
        save_file(_weights(index), str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=(24, 1)).astype(np.float32)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y=y)
    common = [folder, "--model", MODEL, *SMALL, "-o", tmp_path / "run.h5"]
    status, _, err = fdl(capsys, "analyze", *common, "--probe", probe)
    flat = " ".join(err.split())
    found = re.search(r"save them as integers: (y\S*astype\(np\.int64\))", flat)
    assert status == 1 and found is not None, flat
    fixed = tmp_path / "labels.npz"
    np.savez(fixed, x=x, y=eval(found.group(1), {"np": np, "y": y}))
    status, _, err = fdl(capsys, "analyze", *common, "--probe", fixed)
    assert status == 0, " ".join(err.split())
    records = _records(tmp_path / "run.h5")
    assert [record["step"] for record in records] == [0, 10]  # all() over no records would pass
    assert all(record["accuracy"] is not None for record in records)
