"""The default feature layer of a model with several heads, where the analysed outputs (a tuple's first element) are
not any nn.Linear's output tensor but computed from one (`policy(h) / T`, `log_softmax(head(h))`) and another head,
on features of its own, runs last (an actor-critic's value on a trunk of its own, an auxiliary head on an earlier
hidden layer): the default was the last nn.Linear to run, the other head's input, so every measure was of features
that the analysed outputs are not read from (said in a warning where that head's size differs from the outputs',
silently where it is the same). The default is now the input of the last nn.Linear whose output the outputs are
computed from; a store analysed at the other head's input by an earlier fdl is resumed at its own layer, with a note.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest

from tests.cli_run import fdl_in_process, model_file
from tests.test_s24_arch import (
    _analyze,
    _assert_store_matches,
    _checkpoints,
    _inspect,
    _references,
    _stored_layer,
    _vector_probe,
)

MODELS = '''
import torch
from torch import nn
import torch.nn.functional as F


class ScaledPolicy(nn.Module):
    """An actor-critic on two trunks: the policy's logits at a temperature, then the value (1 output)."""

    def __init__(self, value_outputs=1):
        super().__init__()
        self.pi = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.vf = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.policy = nn.Linear(6, 3)
        self.value = nn.Linear(5, value_outputs)

    def forward(self, x):
        return self.policy(self.pi(x)) / 2.0, self.value(self.vf(x))


class ScaledPolicyWide(ScaledPolicy):
    """The same with a value head as wide as the policy's: no size tells the heads apart."""

    def __init__(self):
        super().__init__(value_outputs=3)


class LogSoftmaxAux(nn.Module):
    """Log-probabilities of the last hidden layer's head, and an auxiliary head on the first hidden layer."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        h1 = torch.relu(self.fc1(x))
        return F.log_softmax(self.head(torch.relu(self.fc2(h1))), -1), self.aux(h1)


def build(name):
    torch.manual_seed(0)
    return globals()[name]()
'''

HEADS = {"ScaledPolicy": ("policy", "value"), "ScaledPolicyWide": ("policy", "value"), "LogSoftmaxAux": ("head", "aux")}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModuleType]:
    folder = tmp_path_factory.mktemp("s32_layer")
    return folder, model_file(folder, MODELS)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_default_features_are_those_the_analysed_outputs_are_computed_from(
    models: tuple[Path, ModuleType], name: str,
) -> None:
    """Every stored measure against a float64 reference from the input of the head that computes the outputs."""
    folder, module = models
    head, other = HEADS[name]
    probe, x, y = _vector_probe(folder)
    run = _checkpoints(folder, module, name)
    code, err, store = _analyze(folder, run, name, probe)
    assert code == 0, err
    assert _stored_layer(store) == f"{head}:input"
    said = " ".join(err.split())
    assert f"are computed from the output of nn.Linear {head!r}, not of the last one to run, {other!r}: the " \
           f"features are {head}:input" in said, said
    assert "warning" not in said
    listed = _inspect(folder, run, name, probe)  # inspect says what analyze takes
    assert listed["default_layer"] == f"{head}:input"
    refs = _references(module, name, run, x, head, use_input=True)
    _assert_store_matches(store, f"{head}:input", refs, y, rtol=1e-6)


def test_a_store_at_the_layer_an_earlier_default_took_is_resumed_at_it_with_a_note(
    models: tuple[Path, ModuleType],
) -> None:
    """A store of `ScaledPolicy` analysed at `value:input` (the last nn.Linear to run, the default of an earlier fdl),
    resumed without --layer: it goes on at value:input (the checkpoint added there), and a note says that this
    fdl's default is policy:input and how to add it; it was refused."""
    folder, module = models
    probe, _x, _y = _vector_probe(folder)
    run = _checkpoints(folder, module, "ScaledPolicy", steps=3)
    (run / "step_2.pt").rename(folder / "step_2.pt")
    code, err, store = _analyze(folder, run, "ScaledPolicy", probe, "--layer", "value:input")
    assert code == 0, err
    (folder / "step_2.pt").rename(run / "step_2.pt")
    done = fdl_in_process("analyze", run, "--model", f"{folder}/model.py:build", "--model-kwargs",
                          json.dumps({"name": "ScaledPolicy"}), "--probe", probe, "-o", store, "--device", "cpu")
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr
    assert f"note: {store} was analysed at the layer value:input, and the default feature layer is " \
           "policy:input" in said, said
    assert "--layer value:input --layer policy:input adds it beside the stored layer" in said
    with h5py.File(store, "r") as handle:
        assert sorted(handle["checkpoints"]) == ["step_0", "step_1", "step_2"]
        assert sorted(handle["checkpoints/step_2/probe"]) == ["value:input"]


def test_the_pass_that_finds_the_head_keeps_no_activation() -> None:
    """`log_softmax(head(h))` after a stack of Linear + ReLU: the head's input is taken, and the second pass, which
    records the autograd graph, holds no layer's activation once the next layer ran, but the first, which the
    auxiliary head reads (a backward pass would keep each ReLU's output: GBs for a long-context LLM)."""
    import torch
    from torch import nn

    from fdl_cli.extract import default_layer

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
            self.head = nn.Linear(16, 3)
            self.aux = nn.Linear(16, 2)
            self.held: list[bool] = []  # per layer: an earlier layer's activation still alive

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            first, alive = None, []
            for layer in self.layers:
                x = torch.relu(layer(x))
                self.held.append(any(ref() is not None for ref in alive))
                if first is None:
                    first = x  # kept for the auxiliary head
                else:
                    alive.append(weakref.ref(x))
            return torch.log_softmax(self.head(x), -1), self.aux(first)

    model = Stack().eval()
    said: list[str] = []
    assert default_layer(model, sample=np.ones((1, 16), np.float32), note=said.append).label == "head:input"
    assert len(said) == 1 and "computed from the output of nn.Linear 'head'" in said[0]
    assert len(model.held) == 8 and not any(model.held)
