"""Session 25's attacks by a checkpoint folder, analysed with default options (no --trust-pickle).

- A TorchScript program is code: `torch.from_file(path, shared=True)` creates and writes any file the user can,
  in `forward` or in a `__setstate__` that `torch.jit.load` runs, so `fdl inspect` alone ran it. It now loads
  only with --trust-pickle, as a torch.export archive does.
"""

# No `from __future__ import annotations`: TorchScript compiles `_Writes` from its annotations.
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.cli_run import fdl_in_process

torch.set_num_threads(1)
#: torch 2.10+ deprecates torch.jit.script, which writes the program here as users still do
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class _Writes(nn.Module):
    """A TorchScript program that writes the file `marker` when run, as any TorchScript program may."""

    marker: str

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.marker, True, 4, dtype=torch.uint8)
        written.fill_(65)
        return self.fc2(torch.relu(self.fc1(x))) + written.sum().float() * 0


def _scripted_run(tmp_path: Path, marker: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2):
        torch.jit.save(torch.jit.script(_Writes(str(marker))), str(run / f"step_{step}.pt"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(16, 4)).astype(np.float32), y=rng.integers(0, 3, 16))
    return run


def test_a_torchscript_program_runs_only_with_trust_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = _scripted_run(tmp_path, marker)
    probe, out = tmp_path / "probe.npz", tmp_path / "out.h5"
    for args in (("analyze", run, "--probe", probe, "--out", out), ("inspect", run / "step_1.pt")):
        done = fdl_in_process(*args)
        assert done.returncode == 1, done.stderr
        assert "TorchScript" in done.stderr and "--trust-pickle" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not marker.exists()
    done = fdl_in_process("analyze", run, "--probe", probe, "--out", out, "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert "2 checkpoint(s) analysed" in done.stdout + done.stderr
    assert marker.read_bytes() == b"AAAA"  # what it does, once trusted

