"""Session 26's final review: each test failed before its fix.

- The check that a `--layer`'s output has a batch dimension first (`extract.forward_one_shapes`) compared the
  layer's rows with the rows of the model's *outputs*, not of the one sample it ran: a classifier whose forward
  ends in `.squeeze()` (outputs (C,) for one sample) had its sound default layer blamed, "layer 'module.4:input' gives
  1 rows of features for 10 sample: its output has no batch dimension first".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.test_s19_store import fdl

torch.set_num_threads(1)

SQUEEZED = '''
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.module(x).squeeze()


def build():
    return Net()
'''


def test_a_squeezed_output_is_not_blamed_on_a_sound_layer(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "model.py").write_text(SQUEEZED)
    torch.manual_seed(0)
    for step in (0, 1):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        torch.save(net.state_dict(), folder / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(12, 4)).astype(np.float32), y=rng.integers(0, 3, 12))
    code, _, err = fdl(capsys, "analyze", folder, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe,
                       "--out", tmp_path / "run.h5")
    # the layer, (1, 8) for the one sample, has its batch dimension: the model's outputs (3,) lost theirs
    assert "rows of features" not in err and "its output has no batch dimension" not in err
    # the outputs' own lack is said (tests/test_s26_squeeze.py)
    assert code == 1 and "Traceback" not in err and err.startswith(
        "error: the model's outputs have no batch dimension first: shape (3,) for a batch of 1 sample\n")


UNARGUED = '''
import torch
from torch import nn


class Bias(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(4))

    def forward(self):
        return self.b


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = Bias()
        self.module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.module(x + self.bias())


def build():
    return Net()
'''


def test_a_module_called_with_no_argument_is_said_so(tmp_path: Path, capsys) -> None:
    """`--layer bias:input` of a module called as `self.bias()`: no input at all, not "called with keyword
    arguments alone (none)"."""
    (tmp_path / "model.py").write_text(UNARGUED)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save({**{f"module.{k}": v for k, v in net.state_dict().items()}, "bias.b": torch.zeros(4)},
               tmp_path / "step_0.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(12, 4)).astype(np.float32), y=rng.integers(0, 3, 12))
    code, _, err = fdl(capsys, "analyze", tmp_path / "step_0.pt", "--model", f"{tmp_path / 'model.py'}:build",
                       "--probe", tmp_path / "probe.npz", "--layer", "bias:input", "--out", tmp_path / "run.h5")
    assert code == 1 and "Traceback" not in err
    assert "error: layer 'bias:input' has no tensor input to take features from" in err
    assert "got: the module was called with no argument\n" in err
    assert "keyword arguments alone" not in err
