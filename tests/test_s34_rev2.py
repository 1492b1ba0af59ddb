"""Review of `fdl analyze --accept-model-change` and the Gram route's in-place work (tests/test_s34_accept.py,
tests/test_s34_gram.py): what the store and the notes say when a resume across a change of the model's code fills in
a step below one stored by the old code."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from tests.test_analyze import fdl
from tests.test_s33_imports import _analyze
from tests.test_walk_fixes import _run_folder

FLAG = "--accept-model-change"


def test_a_step_filled_in_below_a_stored_one_is_not_said_to_run_the_new_code_and_a_second_change_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps 0 and 20 stored, the model file edited, then step 10 analysed with the flag: step 20 still holds the
    old code's numbers, so the note must not say every checkpoint from step 10 on ran the new code. Then a second
    edit and a new checkpoint: the store lists both changes, oldest first, and the note names both."""
    monkeypatch.setenv("COLUMNS", "1000")  # the note on one line
    root = _run_folder(tmp_path)
    assert _analyze(root, "--steps", "0,20")[0] == 0
    (root / "model.py").write_text((root / "model.py").read_text() + "# a comment only\n")
    code, said = _analyze(root, FLAG)
    assert code == 0, said
    with h5py.File(root / "run.h5", "r") as handle:
        (change,) = json.loads(handle.attrs["model_changes"])
    assert change["from_step"] == 10 and change["kept_old"] == [20]
    for command in ("report", "classify"):
        done = fdl(command, root / "run.h5")
        assert done.code == 0, done.stderr
        (line,) = [line for line in (done.stdout + done.stderr).splitlines() if "mixes model code" in line]
        assert "from step 10 on its checkpoints ran changed code, but for step 20, stored before it (" in line

    torch.manual_seed(30)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save({"model_state_dict": net.state_dict(), "step": 30}, root / "run" / "ckpt_step30.pt")
    (root / "model.py").write_text((root / "model.py").read_text() + "# another comment\n")
    code, said = _analyze(root, FLAG)
    assert code == 0, said
    with h5py.File(root / "run.h5", "r") as handle:
        first, second = json.loads(handle.attrs["model_changes"])
    assert first == change and second["from_step"] == 30 and second["kept_old"] == []
    assert second["changed"][0]["old"] == change["changed"][0]["new"]
    done = fdl("report", root / "run.h5")
    (line,) = [line for line in (done.stdout + done.stderr).splitlines() if "mixes model code" in line]
    assert "but for step 20, stored before it (" in line and "; from step 30 on its checkpoints ran changed code (" in line
