"""A checkpoint source that does not exist and holds glob magic (`fdl analyze 'runL/epoch_*'`) is expanded by fdl,
each match taken as if given as an argument, and again at each poll of --watch: a run saving one folder per
checkpoint (Lightning's `runL/epoch_0/last.ckpt`, DeepSpeed's `run/global_step100/`) could not be followed, as
the shell expands `runL/epoch_*` once and fdl took the quoted pattern for a path that did not exist yet.

Tiny MLPs (tests/tiny_models.py) on a 24-input probe; the watch runs in this process, each poll a step of the test
(`_polls`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _arrive, _polls
from tests.tiny_models import mlp

SMALL = ("--model", "tests.tiny_models:mlp", "--device", "cpu", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16")


def _epochs(root: Path, epochs: range, *, steps: bool = True) -> Path:
    """root/probe.npz and root/runL/epoch_E/last.ckpt, a training-loop dict holding global_step 10 E (a state_dict
    alone, no step, without `steps`)."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "probe.npz", x=np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32), y=np.arange(24) % 3)
    for epoch in epochs:
        folder = root / "runL" / f"epoch_{epoch}"
        folder.mkdir(parents=True)
        weights = mlp(seed=epoch).state_dict()
        torch.save(
            {"state_dict": weights, "epoch": epoch, "global_step": 10 * epoch} if steps else weights, folder / "last.ckpt"
        )
    return root / "runL"


def _stored(store: Path) -> dict[int, str]:
    """step -> the checkpoint's path, as the store records it."""
    with h5py.File(store, "r") as handle:
        return {int(name.removeprefix("step_")): handle["checkpoints"][name].attrs["path"] for name in handle["checkpoints"]}


def _said(done: object) -> str:
    return " ".join(done.stderr.split())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("glob")
    _epochs(root, range(3))
    return root


def test_a_quoted_pattern_analyses_what_the_shell_s_expansion_does_into_fdl_h5(root: Path) -> None:
    """The same steps and paths as `fdl analyze runL/epoch_*`; without --out, ./fdl.h5, as several folders give,
    not a store named after the pattern."""
    done = fdl_in_process("analyze", "runL/epoch_*", "--probe", "probe.npz", *SMALL, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "3 checkpoints analysed" in done.stderr
    assert sorted(path.name for path in root.glob("*.h5")) == ["fdl.h5"]
    shell = fdl_in_process(
        "analyze", *(f"runL/epoch_{epoch}" for epoch in range(3)), "--probe", "probe.npz", "-o", "shell.h5", *SMALL, cwd=root
    )
    assert shell.returncode == 0, shell.stderr
    assert (
        _stored(root / "fdl.h5")
        == _stored(root / "shell.h5")
        == {step: f"runL/epoch_{step // 10}/last.ckpt" for step in (0, 10, 20)}
    )


def test_a_pattern_that_matches_nothing_is_an_error_and_an_existing_path_is_taken_literally(root: Path) -> None:
    done = fdl_in_process("analyze", "runL/step_*", "--probe", "probe.npz", *SMALL, cwd=root)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = _said(done)
    assert "error: no checkpoint file or folder matches runL/step_*" in said
    assert "fix: check the pattern" in said and "--watch" in said
    # a folder named with a `*`: read as it is, not as the pattern it would be (which matches every epoch)
    literal = root / "lit" / "epoch_*"
    shutil.copytree(root / "runL" / "epoch_1", literal)
    done = fdl_in_process("analyze", "lit/epoch_*", "--probe", "probe.npz", "-o", "lit.h5", *SMALL, cwd=root)
    assert done.returncode == 0, done.stderr
    assert _stored(root / "lit.h5") == {10: "lit/epoch_*/last.ckpt"}


def test_inspect_refuses_a_pattern(root: Path) -> None:
    done = fdl_in_process("inspect", "runL/epoch_*", cwd=root)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = _said(done)
    assert "error: no such checkpoint file or folder: runL/epoch_*" in said
    assert "fdl inspect reads one checkpoint, and expands no pattern" in said


def test_the_folder_above_one_folder_per_step_tells_the_quoted_pattern_under_watch(tmp_path: Path) -> None:
    """`fdl analyze runL --watch` exits at once: its fix names the pattern quoted, which --watch expands again at
    each poll, with the --step-regex that reads the folders' names where the files hold no step."""
    _epochs(tmp_path, range(2), steps=False)
    done = fdl_in_process("analyze", "runL", "--watch", "--probe", "probe.npz", *SMALL, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert (
        "fix: one folder per step: pass the folders and take the steps from their names: fdl analyze "
        "'runL/epoch_*' --watch --step-regex 'epoch_(\\d+)/' ..."
    ) in _said(done)
    plain = fdl_in_process("analyze", "runL", "--probe", "probe.npz", *SMALL, cwd=tmp_path)
    assert "fdl analyze runL/epoch_* --step-regex" in _said(plain)  # without --watch, the shell's form
    # the pattern itself, without the --step-regex: said at once, where the watch waited for ever
    with pytest.MonkeyPatch.context() as patch, _polls(patch):
        done = fdl_in_process("analyze", "runL/epoch_*", "--watch", "--probe", "probe.npz", *SMALL, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "no training step in its metadata or name" in _said(done)
    assert "fdl analyze 'runL/epoch_*' --watch --step-regex 'epoch_(\\d+)/' ..." in _said(done)


def test_watch_expands_the_pattern_at_each_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started before any folder matches (a note, not "does not exist yet"); the folders of epochs 0 and 1 made
    between polls, then epoch 2's: each analysed as it comes."""
    held = _epochs(tmp_path / "held", range(3))
    run = tmp_path / "runL"
    _epochs(tmp_path, range(0))

    def arrive(*epochs: int) -> None:
        for epoch in epochs:
            (run / f"epoch_{epoch}").mkdir(parents=True)
            _arrive(held / f"epoch_{epoch}", run / f"epoch_{epoch}", "last.ckpt")

    with _polls(monkeypatch, lambda: arrive(0, 1), lambda: None, lambda: arrive(2), lambda: None):
        done = fdl_in_process(
            "analyze", "runL/epoch_*", "--watch", "--poll", "0.1", "--probe", "probe.npz", *SMALL, cwd=tmp_path
        )
    said = _said(done)
    assert done.returncode == 130, said  # stopped by Ctrl-C after the last poll
    assert "note: runL/epoch_* matches nothing yet" in said and "does not exist yet" not in said
    assert "3 checkpoints analysed" in said
    assert _stored(tmp_path / "fdl.h5") == {step: f"runL/epoch_{step // 10}/last.ckpt" for step in (0, 10, 20)}
