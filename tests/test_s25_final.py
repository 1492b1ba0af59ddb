"""Session 25's closing review: what the session's change let escape as a traceback.

Discovery asks the run's model for its state_dict keys (`checkpoints.model_keys`, built on the meta device) where
a metrics file sits beside checkpoints that tell no weights' names of their own. A model whose state_dict reads
its values (a state_dict hook, `get_extra_state`) cannot give them on the meta device: that RuntimeError escaped
`fdl analyze` as a traceback, where the run before the change analysed the checkpoint and named the metrics file
as failed. Such a model tells no keys: discovery goes on as without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.cli_run import fdl_in_process, model_file

#: a model whose state_dict hook reads a weight's value (`.item()`, which a meta tensor cannot give)
MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)
        self._register_state_dict_hook(Net._check)

    @staticmethod
    def _check(module, state, prefix, local_metadata):
        assert float(state[prefix + "head.weight"].abs().sum()) >= 0
        return state

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def build():
    return Net()
'''


def test_a_model_whose_state_dict_reads_values_leaves_the_metrics_file_to_fail_as_before(tmp_path: Path) -> None:
    module = model_file(tmp_path, MODEL)
    (tmp_path / "ck").mkdir()
    torch.manual_seed(0)
    torch.save({**module.build().state_dict(), "step": 0}, tmp_path / "ck" / "step_0.pt")
    torch.save({"losses": torch.randn(5), "epoch": 3}, tmp_path / "ck" / "metrics.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32),
             y=rng.normal(size=(32, 2)).astype(np.float32))
    done = fdl_in_process("analyze", tmp_path / "ck", "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          tmp_path / "probe.npz", "--layer", "body", "--out", tmp_path / "run.h5")
    assert "Traceback" not in done.stderr and "meta tensors" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, done.stderr[-2000:]
    assert "1 checkpoint analysed, 1 failed" in done.stderr
    assert "failed: the weights in " in done.stderr and "metrics.pt do not fit the model built by --model" in done.stderr
    assert "1 unexpected key: losses" in done.stderr
