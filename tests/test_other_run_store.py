"""`fdl analyze` into a store of another run is refused with what is the matter: other files.

A researcher copied one run's store and pointed another run at it: fdl refused (right), but said
"12 checkpoint files changed since they were analysed ... the store holds the numbers of the files
they replaced" (and, for the reference, "changed since it was analysed") of files that were never
analysed. The error now names the path the store recorded and this run's other file, and the fix is
another --out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

try:
    from tests.test_report import run_fdl
except ImportError:  # pragma: no cover
    from test_report import run_fdl  # type: ignore[no-redef]

SAMPLE = Path(__file__).resolve().parents[1] / "sample_checkpoints"
STEPS = (0, 5, 10)


def _run(folder: Path, shift: float, *, same_reference: bool = False) -> Path:
    """A run of the sample's checkpoints (moved by `shift`), its model file and probe shared by every run
    (`folder`'s parent), as one project's runs have them."""
    folder.mkdir()
    for name in ("model.py", "probe.npz"):
        if not (folder.parent / name).exists():
            shutil.copy(SAMPLE / name, folder.parent / name)
    for step in STEPS:
        tensors = load_file(SAMPLE / f"step_{step}.safetensors")
        if not (same_reference and step == 0):
            tensors = {key: value + torch.tensor(shift, dtype=value.dtype) for key, value in tensors.items()}
        save_file(tensors, folder / f"step_{step}.safetensors")
    return folder


def _analyze(folder: Path, out: Path) -> tuple[int, str]:
    done = run_fdl("analyze", str(folder), "--model", f"{folder.parent / 'model.py'}:build",
                   "--probe", str(folder.parent / "probe.npz"), "--out", str(out))
    return done.returncode, done.stderr


def test_another_runs_reference_is_named_as_another_file(tmp_path: Path) -> None:
    code, stderr = _analyze(_run(tmp_path / "a", 0.0), tmp_path / "a.h5")
    assert code == 0, stderr
    before = (tmp_path / "a.h5").read_bytes()
    code, stderr = _analyze(_run(tmp_path / "b", 0.01), tmp_path / "a.h5")
    assert code == 1
    assert (f"a.h5 holds other files' numbers: its step 0 was analysed from {tmp_path / 'a' / 'step_0.safetensors'}, "
            f"and this run's step 0 is {tmp_path / 'b' / 'step_0.safetensors'}, another file") in stderr, stderr
    assert "give this run its own --out" in stderr and "changed since" not in stderr
    assert (tmp_path / "a.h5").read_bytes() == before  # nothing lost


def test_another_runs_checkpoints_are_named_as_other_files(tmp_path: Path) -> None:
    """The same reference file (a shared initialisation), other later checkpoints."""
    code, stderr = _analyze(_run(tmp_path / "a", 0.0), tmp_path / "a.h5")
    assert code == 0, stderr
    code, stderr = _analyze(_run(tmp_path / "b", 0.01, same_reference=True), tmp_path / "a.h5")
    assert code == 1
    assert (f"its step 5 was analysed from {tmp_path / 'a' / 'step_5.safetensors'}, and this run's step 5 is "
            f"{tmp_path / 'b' / 'step_5.safetensors'}, another file (and 1 more step so)") in stderr, stderr
    assert "changed since" not in stderr


def test_a_file_of_this_run_rewritten_still_says_changed(tmp_path: Path) -> None:
    run = _run(tmp_path / "a", 0.0)
    code, stderr = _analyze(run, tmp_path / "a.h5")
    assert code == 0, stderr
    tensors = load_file(run / "step_5.safetensors")
    save_file({key: value * 2 for key, value in tensors.items()}, run / "step_5.safetensors")
    code, stderr = _analyze(run, tmp_path / "a.h5")
    assert code == 1
    assert "1 checkpoint file changed since it was analysed" in stderr, stderr
