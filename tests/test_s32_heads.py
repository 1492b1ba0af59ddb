"""Networks that do not end in one plain C-way head, as users bring them.

- An actor-critic returning `(value, policy_logits)`: fdl reads a tuple's first element, so its outputs were the
  value head's one, and the probe's action labels were refused as "class label 2 but the model has 1 output",
  never saying that the outputs were the first of a tuple (nor, with labels 0/1, that the "binary classifier"
  fdl analysed was the value head).
- Labels kept as Python strings (a pandas column's `.values`, dtype object) in an .npz were refused as a file
  "corrupt or not of the format its suffix says", which it is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process as fdl
from tests.cli_run import model_file
from tests.tiny_models import mlp

MODEL = """
import torch
from torch import nn


class ValueFirst(nn.Module):
    def __init__(self, actions=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.policy = nn.Linear(8, actions)
        self.value = nn.Linear(8, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.value(h), self.policy(h)


def three():
    return ValueFirst(3)


def two():
    return ValueFirst(2)
"""


def _run(tmp_path: Path, factory: str, labels: np.ndarray) -> tuple[str, Path]:
    module = model_file(tmp_path, MODEL)
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.manual_seed(0)
    torch.save(getattr(module, factory)().state_dict(), runs / "step_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(len(labels), 4)).astype(np.float32), y=labels)
    return f"{tmp_path / 'model.py'}:{factory}", probe


def test_labels_beyond_a_tuples_first_element_say_the_outputs_are_that_element(tmp_path: Path) -> None:
    model, probe = _run(tmp_path, "three", np.arange(12) % 3)
    out = tmp_path / "s.h5"
    result = fdl("analyze", tmp_path / "runs", "--model", model, "--probe", probe, "-o", out)
    code, err = result.returncode, result.stderr
    assert code == 1 and "Traceback" not in err
    assert "class label 2 but the model has 1 output" in err
    # where the one output comes from, what else the model returned, and the fix
    assert "the first of the 2 elements of the tuple the model returns" in err
    assert "element 1: shape (1, 3)" in err
    assert "return the logits first" in err
    assert not out.exists()


def test_a_binary_note_on_a_tuples_first_element_says_it_is_that_element(tmp_path: Path) -> None:
    model, probe = _run(tmp_path, "two", np.arange(12) % 2)
    result = fdl("analyze", tmp_path / "runs", "--model", model, "--probe", probe, "-o", tmp_path / "s.h5")
    code, err = result.returncode, result.stderr
    assert code == 0, err
    note = next(line for line in err.splitlines() if "binary classifier" in line)
    assert "the first of the 2 elements of the tuple the model returns" in note
    assert "element 1: shape (1, 2)" in note


@pytest.mark.parametrize("key", ["y", "labels"])
def test_labels_saved_as_python_strings_in_an_npz_are_named_not_called_a_corrupt_file(
        tmp_path: Path, key: str) -> None:
    probe = tmp_path / "probe.npz"
    names = np.array(["cat", "dog", "cat", "bird"], dtype=object)  # a pandas column's .values
    np.savez(probe, x=np.zeros((4, 4), np.float32), **{key: names})
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict(), runs / "step_0.pt")
    result = fdl("analyze", runs, "--probe", probe, "-o", tmp_path / "s.h5")
    code, err = result.returncode, result.stderr
    assert code == 1 and "Traceback" not in err
    assert "corrupt" not in err
    assert f"its array {key!r} holds pickled Python objects (dtype object" in err
    assert "class names numbered 0..C-1 in the order of the model's outputs" in err
    assert "allow_pickle" not in err


DICT_MODEL = """
from torch import nn


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.policy = nn.Linear(8, 3)
        self.value = nn.Linear(8, 1)

    def forward(self, x):
        h = self.trunk(x)
        return {"policy": self.policy(h), "value": self.value(h)}


def build():
    return ActorCritic()
"""


def test_a_dict_of_heads_without_logits_shows_each_heads_shape(tmp_path: Path) -> None:
    """{"policy", "value"}: the fix's example picked 'value' (the last nn.Linear's), calling it the logits; the
    shapes now tell the user which entry holds the logits of the probe's classes."""
    module = model_file(tmp_path, DICT_MODEL)
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(module.build().state_dict(), runs / "step_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.zeros((6, 4), np.float32), y=np.arange(6) % 3)
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe, "-o", tmp_path / "s.h5")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "their shapes: 'policy' (1, 3), 'value' (1, 1)" in result.stderr
    assert "of several heads, the one whose outputs the targets are for" in result.stderr


def test_a_tuples_first_element_of_one_output_is_noted_without_labels(tmp_path: Path) -> None:
    """Without targets nothing refused the (value, policy) actor-critic: its run measured the value head, said
    nowhere."""
    model, probe = _run(tmp_path, "three", np.arange(12) % 3)
    np.savez(probe, x=np.zeros((12, 4), np.float32) + np.arange(12, dtype=np.float32)[:, None] / 12)
    result = fdl("analyze", tmp_path / "runs", "--model", model, "--probe", probe, "-o", tmp_path / "s.h5")
    assert result.returncode == 0, result.stderr
    note = next(line for line in result.stderr.splitlines() if "tuple the model returns" in line)
    assert note.startswith("note: the model's one output is the first of the 2 elements of the tuple")
    assert "element 1: shape (1, 3)" in note


@pytest.mark.parametrize("layout", ["dict", "tuple"])
def test_labels_kept_as_a_python_list_in_a_pt_probe_are_read_not_dropped(tmp_path: Path, layout: str) -> None:
    """torch.save({"x": x, "y": labels.tolist()}): the list was left unread, without a word, and the run was
    analysed without targets (no accuracy, no Π*)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(mlp().state_dict(), runs / "step_0.pt")
    (tmp_path / "model.py").write_text("from tests.tiny_models import mlp\n", encoding="utf-8")
    x = torch.randn(9, 4)
    labels = [0, 1, 2] * 3
    probe = tmp_path / "probe.pt"
    torch.save({"x": x, "y": labels} if layout == "dict" else (x, labels), probe)
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:mlp", "--probe", probe, "-o", tmp_path / "s.h5",
                 "--json")
    assert result.returncode == 0, result.stderr
    assert '"accuracy": null' not in result.stdout and '"accuracy": ' in result.stdout


def test_class_names_kept_as_a_python_list_in_a_pt_probe_get_the_text_labels_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(mlp().state_dict(), runs / "step_0.pt")
    (tmp_path / "model.py").write_text("from tests.tiny_models import mlp\n", encoding="utf-8")
    probe = tmp_path / "probe.pt"
    torch.save({"x": torch.randn(6, 4), "y": ["cat", "dog", "bird"] * 2}, probe)
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:mlp", "--probe", probe, "-o", tmp_path / "s.h5")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "(class names)" in result.stderr and "number the classes 0..C-1" in result.stderr
