"""Input/output defects found in review (third round), each pinned by a test that failed before its fix.

Discovery of odd folder entries (dangling links, link loops, unreadable entries, Git LFS pointers),
stdout kept clean of the model's own prints, output on streams that cannot encode a path, closed
pipes under `--help`, wrong-typed provenance in `classify`, and the accuracy of small messages.
Commands run in-process through the console entry point (`fdl_cli.cli.main`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.errors import CheckpointError
from tests.test_analyze import Result, fdl
from tests.tiny_models import mlp

torch.set_num_threads(1)
SMALL = ("--top-k", "4", "--anchor-size", "16", "--batch-size", "16")
MODEL = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:mlp"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


def _run_folder(root: Path, steps: tuple[int, ...] = (0, 10)) -> Path:
    """A folder of safetensors checkpoints of tiny_models.mlp (4-8-3) and a probe beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        weights = {k: v.contiguous() for k, v in mlp(seed=step).state_dict().items()}
        save_file(weights, str(root / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root.parent / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return root


def _analyze(folder: Path, out: Path, *extra: str) -> Result:
    result = fdl("analyze", str(folder), "--model", MODEL, "--probe", str(folder.parent / "probe.npz"),
                 "--out", str(out), *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ---------------------------------------------------------------- D4: dangling links and link loops


def test_dangling_link_and_link_loop_are_bad_checkpoints_not_tracebacks(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    (folder / "step_7.pt").symlink_to("nowhere.pt")
    (folder / "a.pt").symlink_to("b.pt")
    (folder / "b.pt").symlink_to("a.pt")
    found = discover_checkpoints([folder])
    assert [r.step for r in found.checkpoints] == [0, 10]
    reasons = {path.name: reason for path, reason in found.bad}
    assert set(reasons) == {"step_7.pt", "a.pt", "b.pt"}
    assert "a symbolic link to nowhere.pt, which does not exist" in reasons["step_7.pt"]
    assert "symbolic link loop" in reasons["a.pt"] and "symbolic link loop" in reasons["b.pt"]

    result = _analyze(folder, tmp_path / "s.h5", "--json")
    assert result.code == 1, result.stderr  # the others are analysed, the bad entries reported
    assert [r["step"] for r in result.records] == [0, 10]
    assert "error: " + str(folder / "step_7.pt") + ": cannot read the checkpoint" in result.stderr
    assert "fix: restore the file it points to, or remove the link" in result.stderr
    assert "symbolic link loop" in result.stderr


def test_an_explicit_dangling_link_says_where_it_points(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    (folder / "last.pt").symlink_to("gone.pt")
    with pytest.raises(CheckpointError, match="a symbolic link to gone.pt, which does not exist"):
        discover_checkpoints([folder / "last.pt"])
