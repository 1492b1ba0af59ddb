"""Review of the day's changes: a model pickled whole whose module holds a class of a hostile metaclass; a probe too
small for EF under --center; soft-label wording on targets that are proportions; a binary run's one-hot refusal."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import pickled_model_modules

HOSTILE = """
from torch import nn


class Meta(type):
    def __getattribute__(cls, name):
        if name == "__module__":
            raise RuntimeError("a metaclass that runs code on __module__")
        return super().__getattribute__(name)


class Registry(metaclass=Meta):
    pass


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 3)
"""


@pytest.fixture()
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "s33rv_hostile.py"
    path.write_text(HOSTILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("s33rv_hostile", None)


def test_a_class_whose_metaclass_runs_code_on_its_module_name_is_walked_without_running_it(hostile: Path) -> None:
    """The walk of the pickled model's modules read each class's `__module__` through its metaclass, whose code
    raised: `fdl analyze --trust-pickle` ended in a traceback, before any checkpoint, for a record of provenance."""
    model = importlib.import_module("s33rv_hostile").Net()
    assert pickled_model_modules(model) == {"s33rv_hostile": str(hostile)}
    assert isinstance(model, torch.nn.Module)


def test_a_centered_probe_of_one_more_input_than_the_mf_limit_is_said_too_small(tmp_path: Path) -> None:
    """--center takes the mean out: rank ≤ n − 1, so n = C + mf_extra + 1 = 5 inputs (C = 3) cannot read EF either.
    classify said nothing of the probe there, and its narrow-layer line blamed the layer's 8 units ("its width, or a
    bottleneck before it")."""
    import json

    import numpy as np
    from safetensors.torch import save_file

    from tests.cli_run import fdl_in_process
    from tests.test_reliability_inputs import MODEL, _weights

    (tmp_path / "run").mkdir()
    for step in (0, 10):
        save_file(_weights(step // 10, n_out=3), str(tmp_path / "run" / f"step_{step}.safetensors"))
    x = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.arange(5) % 3)
    done = fdl_in_process("analyze", tmp_path / "run", "--model", MODEL, "--center", "--probe", tmp_path / "probe.npz",
                          "--device", "cpu", "-o", tmp_path / "run.h5")
    assert done.returncode == 0, done.stderr
    text = fdl_in_process("classify", tmp_path / "run.h5")
    said = " ".join((text.stdout + text.stderr).split())
    assert ("k95_utility ≤ rank ≤ n − 1 = 4 (--center) ≤ C + mf_extra = 4: the probe is too small for the rule to "
            "find EF, whatever the layer's 8 units learned; analyse with a probe of more than 5 inputs") in said, said
    assert "bottleneck" not in said, said
    evidence = json.loads(fdl_in_process("classify", tmp_path / "run.h5", "--json").stdout)["evidence"]
    assert "n − 1 = 4 (--center)" in evidence["small_probe"]
