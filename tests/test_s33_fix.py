"""Three gaps of the store's `model_imports` and of the default layer: `python -m fdl_cli` with a module spec of a
package in the current folder recorded and checked none of its modules while `fdl` did; the default layer's graph walk
went through an operation of no derivative as if it applied no weight; and a head run in a reentrant checkpoint made
the default fall back in silence."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.extract import default_layer
from tests.cli_run import fdl_in_process
from tests.test_s33_rev import _CheckpointedPolicy as _ReviewedPolicy
from tests.test_walk_fixes import SMALL, _run_folder

PACKAGE = "s33fixpkg"  # a name of this test's own: the package stays in sys.modules for the in-process runs
MODEL = f"""
import torch
from torch import nn
from {PACKAGE}.layers import act


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 3))
"""
LAYERS = "from torch import nn\n\n\ndef act():\n    return nn.{}()\n"


@pytest.fixture
def package_run(tmp_path: Path) -> Iterator[Path]:
    """_run_folder's run, its model the factory of the package s33fixpkg/ in it (`--model s33fixpkg.model:build`),
    whose model.py imports its activation from s33fixpkg/layers.py; the package out of sys.modules after."""
    _run_folder(tmp_path)
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "model.py").write_text(MODEL)
    (tmp_path / PACKAGE / "layers.py").write_text(LAYERS.format("ReLU"))
    yield tmp_path
    for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
        del sys.modules[name]


def _analyze(root: Path, out: str, *, python_m: bool, monkeypatch: pytest.MonkeyPatch, steps: str = "0,10") -> str:
    """`fdl analyze` of the run with the package's factory, from the run's folder: as `python -m fdl_cli` runs it (the
    current folder first on sys.path) or as the `fdl` script does (not on it). Returns stderr, its lines joined."""
    here = root.resolve()
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    monkeypatch.setattr(sys, "path", [str(root), *path] if python_m else path)
    done = fdl_in_process(
        "analyze",
        "run",
        "--model",
        f"{PACKAGE}.model:build",
        "--probe",
        "probe.npz",
        "--out",
        out,
        "--steps",
        steps,
        *SMALL,
        cwd=root,
    )
    return f"exit {done.returncode}: " + " ".join(done.stderr.split())


def _recorded(store: Path) -> dict[str, str] | None:
    with h5py.File(store, "r") as file:
        value = file.attrs.get("model_imports")
    return None if value is None else json.loads(value)


def test_python_m_records_and_checks_the_current_folders_package_as_fdl_does(
    package_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = package_run
    layers = root / PACKAGE / "layers.py"
    expected = {
        name: hashlib.sha256(file.read_bytes()).hexdigest()
        for name, file in ((PACKAGE, root / PACKAGE / "__init__.py"), (f"{PACKAGE}.layers", layers))
    }
    assert _analyze(root, "m.h5", python_m=True, monkeypatch=monkeypatch).startswith("exit 0")
    assert _analyze(root, "script.h5", python_m=False, monkeypatch=monkeypatch).startswith("exit 0")
    assert _recorded(root / "m.h5") == expected == _recorded(root / "script.h5")
    layers.write_text(LAYERS.format("Tanh"))
    # each store resumed by the other entry point after the edit: refused, as by its own
    for out, python_m in (("script.h5", True), ("m.h5", False)):
        said = _analyze(root, out, python_m=python_m, monkeypatch=monkeypatch, steps="0,10,20")
        assert said.startswith("exit 1: error: the model code ") and "Traceback" not in said
        assert f"{layers} (the module {PACKAGE}.layers, which the model imports) changed since {out} was" in said


class _CheckpointedPolicy(_ReviewedPolicy):
    """test_s33_rev's actor-critic, whose policy head runs inside a reentrant activation checkpoint (a custom autograd
    Function hiding its nn.Linear), its value head as wide as the policy's (no size tells them apart), run last."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Linear(5, 3)


class _FusedPolicy(_CheckpointedPolicy):
    """The policy head's weight applied by torch._addmm_activation (a fused matrix product and ReLU), an operation of
    no derivative on the CPU: its autograd node (torch::autograd::NotImplemented) names no weight product."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch._addmm_activation(self.policy.bias, self.pi(x), self.policy.weight.t())
        return logits / 2.0, self.value(self.vf(x))


def _choice(model: nn.Module) -> tuple[str, list[str]]:
    said: list[str] = []
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checkpoint's "None of the inputs have requires_grad=True"
        spec = default_layer(model.eval(), sample=np.ones((1, 4), np.float32), note=said.append, warn=said.append)
    return spec.label, said


def test_an_operation_of_no_derivative_is_not_walked_through_as_if_it_applied_no_weight() -> None:
    # the walk went through the fused product to pi.0, the trunk's first layer: its input, the probe itself, was taken
    # as the features, with a note that the outputs are computed from pi.0's output
    label, said = _choice(_FusedPolicy())
    assert label == "value:input"  # the rule before the walk: the last nn.Linear to run
    assert said == [
        "the model's outputs (the first element of the tuple its forward returns) could not be traced back through an "
        "operation of no derivative (torch::autograd::NotImplemented, as torch._addmm_activation on the CPU) to the "
        "nn.Linear they are computed from: the features are the input of the last nn.Linear to run, value:input "
        "(--layer NAME:input picks another; `fdl inspect CHECKPOINT` lists the layers)"
    ]


def test_a_head_in_a_reentrant_checkpoint_is_said_not_traced_where_the_last_linear_is_taken() -> None:
    # the default fell back to the value head's input, of the policy's size, without a word
    label, said = _choice(_CheckpointedPolicy())
    assert label == "value:input"
    assert len(said) == 1, said
    assert said[0].startswith(
        "the model's outputs (the first element of the tuple its forward returns) could not be traced back through the "
        "custom autograd Function CheckpointFunctionBackward (a reentrant activation checkpoint"
    )
    assert said[0].endswith(
        "the features are the input of the last nn.Linear to run, value:input (--layer NAME:input picks another; "
        "`fdl inspect CHECKPOINT` lists the layers)"
    )
