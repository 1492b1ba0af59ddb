"""Session 24, review of the session's default feature layer (the input of the nn.Linear whose output the
model's outputs are) and of resuming a store whose layer was the default of an earlier fdl.

Found wrong, and fixed:

- outputs made by adding in place onto an earlier nn.Linear's output (`y = wide(x); y += head(h); return y`, a
  wide-and-deep or residual regression head) share that Linear's memory: the default became `wide:input`, the
  model's raw inputs, where every fdl before took `head:input`, with a note calling `wide` the head. A Linear's
  output written to in place after it returned is no longer taken as the outputs' (a note says so: an in-place
  LoRA head, `y = base(h); y += lora_b(lora_a(h))`, is the other way round);
- a resume of a store analysed at another layer than this run's default (the last nn.Linear to run, the default
  of an fdl before this session, for a model whose outputs are another Linear's) was refused with a fix that
  only offered to add the new default beside the stored layer; it now says the default moved and that
  `--layer STORED` goes on as the store was analysed.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest

from tests.cli_run import fdl_in_process, model_file
from tests.test_s24_arch import _checkpoints

MODELS = '''
import torch
from torch import nn


class WideDeep(nn.Module):
    """A wide part (a Linear of the inputs) plus a deep head, summed in place into the wide part's output."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(4, 3)
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.wide(x)
        y += self.head(torch.relu(self.body(x)))
        return y


class Monitored(nn.Module):
    """A Linear on the body's first features runs after the head (a monitor kept aside, not returned)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.monitor = nn.Linear(8, 1)

    def forward(self, x):
        h1 = torch.relu(self.fc1(x))
        y = self.head(torch.relu(self.fc2(h1)))
        self.monitored = self.monitor(h1)
        return y


def build(name):
    torch.manual_seed(0)
    return globals()[name]()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModuleType]:
    folder = tmp_path_factory.mktemp("rev2")
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    return folder, model_file(folder, MODELS)


def _analyze(folder: Path, run: Path, name: str, *extra: str) -> tuple[int, str, Path]:
    store = folder / f"{name}.h5"
    done = fdl_in_process("analyze", run, "--model", f"{folder}/model.py:build", "--model-kwargs",
                          json.dumps({"name": name}), "--probe", folder / "probe.npz", "-o", store, "--device", "cpu",
                          *extra)
    return done.returncode, done.stderr, store


def _stored_layers(store: Path) -> list[str]:
    with h5py.File(store, "r") as handle:
        return sorted(handle["checkpoints/step_0/probe"])


def test_outputs_added_in_place_onto_an_earlier_linears_output_keep_the_last_linear_to_run(
    models: tuple[Path, ModuleType],
) -> None:
    """`y = wide(x); y += head(...)`: the outputs are the memory of `wide`'s output, written over. `wide`'s input is
    the probe itself; the default was `wide:input`, said in a note as the head's, where it is `head:input`."""
    from fdl_cli.extract import default_layer
    from fdl_cli.inspection import inspect_checkpoint

    folder, module = models
    said: list[str] = []
    sample = np.zeros((1, 4), np.float32)
    spec = default_layer(module.build("WideDeep").eval(), sample=sample, note=said.append, warn=said.append)
    assert spec.label == "head:input"
    assert said == ["the model's outputs are the output of nn.Linear 'wide' written over in place after it ran (y = "
                    "wide(x); y += ...): the features are the input of the last nn.Linear to run, head:input (--layer "
                    "wide:input for the other)"]
    run = _checkpoints(folder, module, "WideDeep")
    code, err, store = _analyze(folder, run, "WideDeep", "--overwrite")
    assert code == 0, err
    assert "not of the last one to run" not in err and "warning" not in err, err
    assert "note: the model's outputs are the output of nn.Linear 'wide' written over in place" in " ".join(err.split())
    assert _stored_layers(store) == ["head:input"]
    listed = inspect_checkpoint(checkpoint=str(run / "step_0.pt"), model_spec=f"{folder}/model.py:build",
                                model_kwargs=json.dumps({"name": "WideDeep"}), probe_spec=str(folder / "probe.npz"))
    assert listed["default_layer"] == "head:input"
    assert str(listed["default_basis"]).startswith("the last nn.Linear to run")


def test_a_linear_after_the_head_left_untouched_is_still_passed_over_for_the_head(
    models: tuple[Path, ModuleType],
) -> None:
    """The session's choice stands where the head's output is returned as it is: the monitor runs last, the
    features are the head's input (the check of in-place writes takes nothing from it)."""
    from fdl_cli.extract import default_layer

    folder, module = models
    said: list[str] = []
    spec = default_layer(module.build("Monitored").eval(), sample=np.zeros((1, 4), np.float32), note=said.append)
    assert spec.label == "head:input"
    assert len(said) == 1 and "not of the last one to run, 'monitor'" in said[0]


def test_a_store_at_the_layer_an_earlier_default_took_is_resumed_with_that_layer_said(
    models: tuple[Path, ModuleType],
) -> None:
    """A store of `Monitored` analysed at `monitor:input` (the last nn.Linear to run: the default of an fdl before
    this session), resumed without --layer: it goes on at the store's layer, with a note naming this fdl's default
    and how to add it (it was refused, with a fix that offered only to add the new default; later a fix naming
    --layer STORED, the series a resume now keeps: tests/test_s32_layer.py)."""
    folder, module = models
    run = _checkpoints(folder, module, "Monitored", steps=3)
    (run / "step_2.pt").rename(folder / "step_2.pt")
    code, err, store = _analyze(folder, run, "Monitored", "--layer", "monitor:input", "--overwrite")
    assert code == 0, err
    (folder / "step_2.pt").rename(run / "step_2.pt")
    code, err, _store = _analyze(folder, run, "Monitored", "--resume")
    said = " ".join(err.split())
    assert code == 0, err
    assert "note: " + str(store) + " was analysed at the layer monitor:input, and the default feature " \
           "layer is head:input" in said
    assert "the store goes on at monitor:input; --layer monitor:input --layer head:input adds it" in said
    assert "not of the last one to run, 'monitor'" not in said  # the default's own note: another layer's
    with h5py.File(store, "r") as handle:
        assert sorted(handle["checkpoints"]) == ["step_0", "step_1", "step_2"]
    assert _stored_layers(store) == ["monitor:input"]
