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
