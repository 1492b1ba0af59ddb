"""Review of session 19's `fdl analyze --drop` and the stored `zero_one_targets` caveat (tiny MLPs on the CPU).
Each test failed before its fix: a fix that, followed as written, did not work.

- A store holding one file at two steps, resumed by a command with --redo or --watch: the error said "run the
  same command with --drop ...", and that command was refused ("--drop ... and --redo together").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_reliability_inputs import _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _damaged, _records, fdl

torch.set_num_threads(1)


# ------------------------------------------------- the stored-twice error's fix, in a command that cannot take --drop


@pytest.mark.parametrize("option", [["--redo", "10"], ["--watch", "--poll", "0.1"]], ids=["redo", "watch"])
def test_the_stored_twice_fix_works_as_written_from_a_redo_or_watch_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    """The fix of a command with --redo (or --watch) named the same command with --drop, which is refused with
    them; it now says to run it without that option first, and that command mends the store."""
    common, run2, out, twenty, _ = _damaged(tmp_path, capsys)
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


def test_the_stored_twice_fix_of_a_plain_command_is_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common, run2, out, _, _ = _damaged(tmp_path, capsys)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20")
    flat = " ".join(err.split())
    assert status == 1 and "fix: run the same command with --drop 110,120: it removes those steps" in flat, flat
    assert "without" not in flat.split("fix:")[1].split(":")[0]
