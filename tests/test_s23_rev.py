"""Session 23, a review of session 22's changes to the package (`git diff a0e2547..417d103 -- fdl_cli`).

- `fdl inspect` of an eager model holding a TorchScript submodule (`torch.jit.script(nn.Sequential(...))`): inspect
  hooks no module of a TorchScript program, so the scripted modules had no output shape and were listed as `not
  called`, with the line "the forward pass did not call the module": they ran; their shape is unknown. And
  `analyze --layer body` on one said the probe "does not fit the model" (register_forward_hook is not supported on
  ScriptModules): the layer is refused as one no hook can watch.
- `FDL_TORCHRUN_TIMEOUT=86400` ran out as "gave up after waiting 1 days".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import fdl_in_process, model_file

#: torch 2.10+ deprecates torch.jit.script, which the models here use as users' models still do
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

SCRIPTED_BODY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU()))
        self.head = nn.Linear(8, 2)
        self.spare = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.body(x))


def build():
    return Net()
"""


def test_inspect_says_unknown_not_not_called_of_a_scripted_submodule_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("COLUMNS", "1000")
    module = model_file(tmp_path, SCRIPTED_BODY)
    torch.save({"model": module.build().state_dict(), "step": 1}, tmp_path / "step_1.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    done = fdl_in_process("inspect", tmp_path / "step_1.pt", "--model", f"{tmp_path / 'model.py'}:build",
                          "--probe", probe)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in done.stderr.splitlines()
            if line.startswith("│")}
    # the scripted modules ran (head's input is body's output): no hook told their shapes
    assert rows["body"] == rows["body.0"] == rows["body.1"] == "unknown"
    assert rows["head"] == "[1, 2]"
    assert rows["spare"] == "not called"  # the one module the pass did not call is still said so
    assert "not called: the forward pass did not call the module" in done.stderr


def test_a_wait_of_one_day_that_runs_out_says_1_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """`FDL_TORCHRUN_TIMEOUT=86400` (the example usage.md gives, "for a day") ran out as "gave up after waiting 1 days"."""
    import torch.distributed as dist

    from fdl_cli import distributed
    from fdl_cli.errors import FdlError

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("Timed out waiting 86400000ms for recv operation to complete")

    monkeypatch.setattr(dist, "gather_object", fail)
    monkeypatch.setattr(distributed, "_wait_s", 86400.0)
    rank0 = distributed.World(rank=0, size=2, local_rank=0)
    with pytest.raises(FdlError) as caught:
        distributed.gather_to_writer(["entries"], rank0, "the other ranks")
    assert caught.value.what.startswith("gave up after waiting 1 day for the other ranks (")
    monkeypatch.setattr(distributed, "_wait_s", 2 * 86400.0)
    with pytest.raises(FdlError) as caught:
        distributed.gather_to_writer(["entries"], rank0, "the other ranks")
    assert caught.value.what.startswith("gave up after waiting 2 days for the other ranks (")


def test_a_layer_that_is_a_scripted_submodule_is_refused_as_such_not_as_a_probe_misfit(tmp_path: Path) -> None:
    """`--layer body` on a TorchScript submodule said "probe 'probe' (p.npz) does not fit the model", got:
    "register_forward_hook is not supported on ScriptModules": the probe fits; the layer cannot be hooked."""
    import torch

    module = model_file(tmp_path, SCRIPTED_BODY)
    torch.save({"model": module.build().state_dict(), "step": 1}, tmp_path / "step_1.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    common = ("analyze", tmp_path / "step_1.pt", "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe)
    for layer in ("body", "body.0", "body.1:input"):
        done = fdl_in_process(*common, "--layer", layer, "--out", tmp_path / "a.h5")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "does not fit the model" not in done.stderr
        assert (f"--layer {layer!r} is a TorchScript module inside the model (RecursiveScriptModule), which no hook "
                "can watch") in done.stderr
        assert not (tmp_path / "a.h5").exists()
    done = fdl_in_process(*common, "--layer", "head:input", "--out", tmp_path / "b.h5")  # body's output: works
    assert done.returncode == 0, done.stderr
