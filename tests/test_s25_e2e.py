"""Session 25, a new user's walk through README.md and docs/usage.md on a fresh checkout.

- usage.md's Safety: a folder's names "reach your terminal with control characters written `\\x1b`". rich drops
  BEL, backspace, CR, VT and FF from the strings it prints, so through rich (analyze's errors, progress lines and
  summary, inspect's listing) a file `step_3_<BEL><BS><CR>.pt` was shown as `step_3_.pt`, a name no file has; the
  summary's `failed:` line broke at the CR (`str.splitlines`). Each is written `\\xNN` now, as an ESC is.
- rich turned `:rocket:` in a name into an emoji: `failed: step_🚀_5.pt`, a name no file has.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

torch.set_num_threads(1)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Two checkpoints of tests.tiny_models' mlp, its probe and a model.py naming it."""
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 1):
        torch.save(mlp(seed=step).state_dict(), folder / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.standard_normal((32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    (tmp_path / "model.py").write_text("from tests.tiny_models import mlp as build\n", encoding="utf-8")
    return folder


def _analyze(run: Path, *more: str):
    return fdl_in_process("analyze", run, "--model", f"{run.parent / 'model.py'}:build", "--probe",
                          run.parent / "probe.npz", "--out", run.parent / "run.h5", *more)


def test_control_characters_rich_drops_are_written_as_escapes(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error as met, the progress line of a log and the summary name the file as it is named, each control
    character `\\xNN`, the summary's `failed:` on one line."""
    (run / "step_3_\x07\x08\r.pt").write_bytes(b"garbage" * 10)
    torch.save(mlp(seed=2).state_dict(), run / "step_2_\x07\x0b\x0c.pt")
    monkeypatch.setenv("FDL_PROGRESS_INTERVAL", "0")
    done = _analyze(run, "--step-regex", r"step_(\d+)")
    assert done.returncode == 1, done.stderr
    said = done.stderr
    assert not set("\x07\x08\r\x0b\x0c") & set(said), repr(said)
    shown = f"{run}/step_3_\\x07\\x08\\x0d.pt is a text file, not a checkpoint"
    assert f"error: {shown}\n" in said and f"\n  failed: {shown}\n" in said, said
    assert "last step 2 (step_2_\\x07\\x0b\\x0c.pt)" in said, said
    assert "3 checkpoints analysed, 1 failed" in said, said


def test_a_name_holding_an_emoji_code_is_shown_as_it_is(run: Path) -> None:
    (run / "step_:rocket:_5.pt").write_bytes(b"x")
    done = _analyze(run)
    assert done.returncode == 1, done.stderr
    assert f"\n  failed: {run}/step_:rocket:_5.pt is a text file, not a checkpoint\n" in done.stderr, done.stderr
    assert "\N{ROCKET}" not in done.stderr


def test_inspect_lists_a_tensor_name_with_its_bell(tmp_path: Path) -> None:
    """inspect's table of a file's tensors (rich's Table): the BEL of a window-title sequence is shown too."""
    torch.save({"fc\x1b]0;T\x07.weight": torch.ones(3, 4), "fc\x1b]0;T\x07.bias": torch.ones(3)},
               tmp_path / "step_1.pt")
    listed = fdl_in_process("inspect", tmp_path / "step_1.pt")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stderr and "\x07" not in listed.stderr
    assert "fc\\x1b]0;T\\x07" in listed.stderr, listed.stderr
