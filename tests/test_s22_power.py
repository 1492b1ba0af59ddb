"""Session 22, a power user's review (a live training job followed with --watch, a probe added, --redo, --drop,
the store read from Python, torchrun): what it found wrong, each test failing before its fix (tiny MLPs, CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
        "read" in flat, flat
    assert ("step 10's file is not among this run's checkpoints (deleted, moved, or left out of the files or steps "
            "given): the store keeps what it analysed of it, in its place; to analyse it again, put the file back "
            "among them and use --redo 10;") in flat, flat
    assert "to analyse step 10 again use --redo 10" not in flat, flat
    assert out.read_bytes() == before
    # what the fix says of a resume holds: the store keeps step 10
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0 and "2 already in the store" in err, err


# ------------------------------------------- 2. a stored probe under another name, beside a probe to add


def test_a_renamed_probe_beside_one_to_add_names_the_addition_not_a_remaining_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/usage.md's `--probe train=a.npz --probe test=b.npz` on a store whose probe is `probe` (analysed with
    `--probe a.npz`): the fix named `--probe probe=PATH` "(the other differences above remain: probes.test, probe
    test)", as though the run would still be refused; given so, it adds `test`, as the fix now says."""
    folder, probe = _run(tmp_path)
    held_out = tmp_path / "held_out.npz"
    rng = np.random.default_rng(7)
    np.savez(held_out, x=rng.normal(size=(20, 4)).astype(np.float32), y=rng.integers(0, 3, 20))
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--probe", probe)
    assert status == 0, err
    before = out.read_bytes()
    status, stdout, err = fdl(capsys, "analyze", *common, "--probe", f"train={probe}", "--probe", f"test={held_out}")
    flat = " ".join(err.split())
    assert status == 1 and stdout == "" and out.read_bytes() == before, flat
    assert ("fix: this run's probe 'train' is the store's probe 'probe' (the same file, sha256 "
            in flat), flat
    assert ": name it so, --probe probe=PATH, which resumes and adds the probe 'test' to the store; else pass " \
        "--overwrite" in flat, flat
    assert "remain" not in flat, flat
    status, _, err = fdl(capsys, "analyze", *common, "--probe", f"probe={probe}", "--probe", f"test={held_out}")
    assert status == 0 and "adding probe 'test' to the 3 stored checkpoints" in err, err
