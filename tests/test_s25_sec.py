"""Session 25's attacks by a checkpoint folder, analysed with default options (no --trust-pickle).

- A TorchScript program is code: `torch.from_file(path, shared=True)` creates and writes any file the user can,
  in `forward` or in a `__setstate__` that `torch.jit.load` runs, so `fdl inspect` alone ran it. It now loads
  only with --trust-pickle, as a torch.export archive does.
- Escape sequences in a file or tensor name (`ESC[2J`, `ESC]0;title BEL`) reached the terminal raw through rich's
  listings and fdl's notes and errors: they are written `\\x1b` now.
- An HDF5 probe's external storage or external link naming a FIFO hung the read: refused now.
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
    assert "2 checkpoints analysed" in done.stdout + done.stderr
    assert marker.read_bytes() == b"AAAA"  # what it does, once trusted


def test_control_characters_in_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A file or tensor name is the folder's text: its escape sequences (a window title `ESC]0;...BEL`, a cleared
    screen `ESC[2J`, colours) printed raw would rewrite what the terminal shows. fdl writes them `\\x1b`, as it
    writes the bytes of a name that are not UTF-8."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir()
    weights = {"fc\x1b]0;OWNED\x07\x1b[2J.weight": torch.ones(3, 4)}
    save_file(weights, str(run / "step_1\x1b[31m.safetensors"), metadata={"step": "1"})
    (run / "step_2\x1b[8m.pt").write_bytes(b"\x80\x02garbage")  # a bad checkpoint: its error names it
    listed = fdl_in_process("inspect", run / "step_1\x1b[31m.safetensors")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout + listed.stderr and "\x07" not in listed.stderr
    assert "step_1\\x1b[31m.safetensors" in listed.stderr
    assert "fc\\x1b]0;OWNED\\x07\\x1b[2J" in listed.stderr  # the BEL too, which rich dropped (test_s25_e2e)
    refused = fdl_in_process("inspect", run / "step_2\x1b[8m.pt")
    assert refused.returncode == 1
    assert "\x1b" not in refused.stderr and "step_2\\x1b[8m.pt" in refused.stderr, refused.stderr


def test_an_hdf5_probe_read_from_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """External storage or an external link of a probe's naming a FIFO hung the read (Ctrl-C did not end the link's)."""
    import os

    import h5py

    run = _scripted_run(tmp_path, tmp_path / "unused")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    y = np.zeros(16, dtype=np.int64)
    with h5py.File(tmp_path / "stored.h5", "w") as handle:
        handle.create_dataset("x", shape=(16, 4), dtype=np.float32, external=[(str(fifo), 0, h5py.h5f.UNLIMITED)])
        handle["y"] = y
    with h5py.File(tmp_path / "linked.h5", "w") as handle:
        handle["x"] = h5py.ExternalLink("fifo", "/x")  # relative: HDF5 looks beside the probe too
        handle["y"] = y
    for probe in ("stored.h5", "linked.h5"):
        done = fdl_in_process("analyze", run, "--probe", tmp_path / probe, "--out", tmp_path / "out.h5",
                              "--trust-pickle")
        assert done.returncode == 1, done.stderr
        assert f"its 'x' is read from {fifo}, which is no regular file" in done.stderr, done.stderr
