"""Stored relative checkpoint paths read against the folder they were typed in (the history row's `cwd`).

A relative path names a file only in the folder it was typed in: two runs saved under the same names in two
folders (`a/run/step_10.safetensors`, `b/run/step_10.safetensors`) record the same text. Analysed into one store
from `a`, then resumed from `b`, b's checkpoints were compared against the text alone, which names b's file from
`b`: fdl said a's checkpoints had "changed since they were analysed" and advised `--redo`, which stores b's run's
numbers among a's (or said a's reference had changed, where it is another run's file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from tests.test_s28_relpath import MODEL, SMALL, _fdl
from tests.tiny_models import mlp


def _run(folder: Path, seed: int, steps: tuple[int, ...] = (0, 10, 20)) -> None:
    """folder/run/step_N.safetensors, a tiny MLP from seed + i for the i-th step."""
    (folder / "run").mkdir(parents=True, exist_ok=True)
    for offset, step in enumerate(steps):
        weights = {k: v.contiguous() for k, v in mlp(seed=seed + offset).state_dict().items()}
        save_file(weights, str(folder / "run" / f"step_{step}.safetensors"))


def _two_runs(tmp_path: Path, shared_reference: bool) -> tuple[Path, Path]:
    """tmp/a/run and tmp/b/run (other weights; b's step 0 a copy of a's when `shared_reference`: two fine-tunes
    of one model), tmp/probe.npz, and tmp/s.h5 analysed from tmp/a as `fdl analyze run --out ../s.h5`."""
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 0)
    _run(b, 100)
    if shared_reference:
        shutil.copyfile(a / "run" / "step_0.safetensors", b / "run" / "step_0.safetensors")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    done = _fdl(a, "analyze", "run", "--model", MODEL, "--probe", "../probe.npz", "--out", "../s.h5", *SMALL)
    assert done.returncode == 0, done.stderr
    return a, b


def _resume_from(folder: Path, *more: str) -> str:
    """`fdl analyze run --out ../s.h5` from `folder`, refused: its stderr."""
    done = _fdl(folder, "analyze", "run", "--model", MODEL, "--probe", "../probe.npz", "--out", "../s.h5", *SMALL, *more)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_another_folders_run_under_the_same_names_is_not_called_changed_nor_redone(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path, shared_reference=True)
    err = _resume_from(b)
    assert "holds other files' numbers" in err, err
    assert "changed since" not in err and "--redo" not in err, err
    # the stored file is named where it is: relative to a/, not to this folder
    assert f"run/step_10.safetensors (relative to {a}" in err, err


def test_another_folders_reference_under_the_same_name_is_another_file_not_a_changed_one(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path, shared_reference=False)
    err = _resume_from(b)
    assert "holds other files' numbers" in err, err
    assert "changed since" not in err, err
    assert f"run/step_0.safetensors (relative to {a}" in err, err


def test_a_run_moved_with_its_store_and_changed_is_still_called_changed(tmp_path: Path) -> None:
    """The folder the paths were typed in is gone (renamed with its store): the recorded path is found from the
    folder fdl runs in, the same file, so a checkpoint rewritten there changed (and --redo is the fix)."""
    a, _ = _two_runs(tmp_path, shared_reference=False)
    moved = tmp_path / "moved"
    (tmp_path / "moved").mkdir()
    shutil.move(str(a), str(moved / "a"))
    shutil.move(str(tmp_path / "s.h5"), str(moved / "s.h5"))
    shutil.copyfile(tmp_path / "probe.npz", moved / "probe.npz")
    _run(moved / "a", 50, steps=(10,))
    err = _resume_from(moved / "a")
    assert "1 checkpoint file changed since it was analysed" in err, err
    assert "--redo 10" in err, err


def test_redo_from_another_folders_run_under_the_same_names_is_refused_and_the_store_kept(tmp_path: Path) -> None:
    """--redo analyses a stored checkpoint again from its file: the file its recorded path names where it was typed
    is a's, there still; b's file under that name is another run's, whose numbers --redo stored among a's."""
    a, b = _two_runs(tmp_path, shared_reference=True)
    before = (tmp_path / "s.h5").read_bytes()
    err = _resume_from(b, "--redo", "10,20")
    assert "--redo 10,20: ../s.h5 analysed step 10 from run/step_10.safetensors (relative to " in err, err
    assert f"{a / 'run' / 'step_10.safetensors'}), and this run's step 10 is run/step_10.safetensors, another file" in err
    assert (tmp_path / "s.h5").read_bytes() == before


def test_redo_from_a_copy_of_the_run_goes_on(tmp_path: Path) -> None:
    """A copy of the run (the same files, in another folder) is no other run: --redo reads it."""
    a, _ = _two_runs(tmp_path, shared_reference=False)
    shutil.copytree(a, tmp_path / "copy")
    done = _fdl(tmp_path / "copy", "analyze", "run", "--model", MODEL, "--probe", "../probe.npz", "--out", "../s.h5",
                *SMALL, "--redo", "10")
    assert done.returncode == 0, done.stderr
    assert "(1 of them again: --redo)" in done.stdout + done.stderr, done.stderr
