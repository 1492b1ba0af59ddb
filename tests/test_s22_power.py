"""Session 22, a power user's review (a live training job followed with --watch, a probe added, --redo, --drop,
the store read from Python, torchrun): what it found wrong, each test failing before its fix (tiny MLPs, CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_reliability_inputs import MODEL, SMALL, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _run, fdl

# ------------------------------------------------------------- 1. --drop of a step whose file was deleted


def test_drop_of_a_step_whose_file_is_gone_names_no_redo_that_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user deleted step 10's file and asked --drop 10 to take it out of the store: refused (a store holding
    no file at two steps has nothing to drop), with the fix "to analyse step 10 again use --redo 10", which is
    refused in turn (no checkpoint of this run has step 10). It now says the file is not found, that the store
    keeps step 10 in its place, and that --redo needs the file back."""
    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    (folder / "step_10.safetensors").unlink()
    before = out.read_bytes()
    status, stdout, err = fdl(capsys, "analyze", *common, "--drop", "10")
    flat = " ".join(err.split())
    assert status == 1 and stdout == "" and "Traceback" not in err, flat
    assert f"got: step 10 is the only copy of {folder / 'step_10.safetensors'} in {out}, a file this run does not " \
        "find" in flat, flat
    assert ("step 10's file is not among this run's checkpoints (deleted or moved): the store keeps what it analysed "
            "of it, in its place; to analyse it again, put the file back and use --redo 10;") in flat, flat
    assert "to analyse step 10 again use --redo 10" not in flat, flat
    assert out.read_bytes() == before
    # what the fix says of a resume holds: the store keeps step 10
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0 and "2 already in the store" in err, err
