"""Session 24: how fdl finds the model's weights in a checkpoint file.

`torch.save({**model.state_dict(), "step": 5})`, a flat state_dict with a few plain values beside its
tensors, was skipped as "tensors but no model state_dict". It is read as weights now, at the step its
step keys give (as a training-loop dict's are read), and its numbers are the plain state_dict's. The files
that are not weights (a probe, optimizer, scheduler, RNG or EMA state) stay skipped, and a state_dict of
numpy arrays, which fdl does not load, is said to be one. The tests of a fix failed before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import discover_checkpoints, load_checkpoint
from fdl_cli.errors import FdlError
from tests.test_s16_ecosystems import STEPS, _analyze, _assert_same_numbers, _notes, _plain, _sd

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _run(folder: Path, make: Any) -> Path:
    """`make(index, step)` (a checkpoint's object and file name) saved for each of STEPS."""
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        obj, name = make(index, step)
        torch.save(obj, folder / name)
    return folder


@pytest.mark.parametrize(("extra", "source"), [
    (lambda step: {"step": step}, "metadata:step"),
    (lambda step: {"global_step": str(step), "epoch": 1, "lr": 0.1, "arch": "mlp", "best": None}, "metadata:global_step"),
    (lambda step: {"step": step, "best_acc": np.float64(0.5), "amp": True}, "metadata:step"),
])
def test_flat_state_dict_with_plain_values_is_read_as_weights_at_its_step(
        tmp_path: Path, extra: Any, source: str) -> None:
    """Each file named without a step (model_a.pt ...): the step is the file's `step` (or `global_step`, read
    before the epoch as a training-loop dict's), the tensors are the state_dict's alone, and the store's
    numbers are those of plain state_dicts. Each file was skipped as holding no model state_dict."""
    folder = _run(tmp_path / "flat", lambda index, step: ({**_sd(index), **extra(step)}, f"model_{'abc'[index - 1]}.pt"))
    found = discover_checkpoints([folder])
    assert [(ref.step, ref.step_source, ref.kind) for ref in found.checkpoints] == [
        (step, source, "state_dict") for step in STEPS]
    loaded = load_checkpoint(found.checkpoints[0])
    assert loaded.state_dict is not None and list(loaded.state_dict) == list(_sd(1))
    assert all(torch.equal(loaded.state_dict[key], value) for key, value in _sd(1).items())
    assert loaded.metadata[source.split(":")[1]] == STEPS[0]
    plain = _plain(tmp_path, "plain", _sd)
    done = _analyze(tmp_path, [folder], "flat.h5")
    assert done.code == 0, done.stderr
    _assert_same_numbers(tmp_path / "flat.h5", plain)


def test_flat_state_dict_with_only_an_epoch_is_stored_at_its_epochs(tmp_path: Path) -> None:
    """An epoch beside the tensors, and no step: stored at the epochs, with the note a training-loop dict
    holding only an epoch gets (the steps are epochs; --step-regex for the numbers in the names)."""
    folder = _run(tmp_path / "epochs", lambda index, step: ({**_sd(index), "epoch": index}, f"ckpt_{step}.pt"))
    found = discover_checkpoints([folder])
    assert [(ref.step, ref.step_source) for ref in found.checkpoints] == [(1, "metadata:epoch"), (2, "metadata:epoch"),
                                                                          (3, "metadata:epoch")]
    assert any("steps are epochs" in note and "--step-regex" in note for note in found.notes), found.notes


def test_flat_state_dict_of_ddp_or_compiled_model_loses_its_prefixes(tmp_path: Path) -> None:
    """`{**ddp_model.state_dict(), "step": s}`: `module.` (and `_orig_mod.`) go, as for a plain state_dict."""
    folder = _run(tmp_path / "ddp", lambda index, step: (
        {**{f"module._orig_mod.{key}": value for key, value in _sd(index).items()}, "step": step}, f"m{index}.pt"))
    found = discover_checkpoints([folder])
    assert [ref.step for ref in found.checkpoints] == list(STEPS)
    loaded = load_checkpoint(found.checkpoints[2])
    assert loaded.state_dict is not None and sorted(loaded.state_dict) == sorted(_sd(3))
    assert all(torch.equal(loaded.state_dict[key], value) for key, value in _sd(3).items())


@pytest.mark.parametrize("extra", [
    lambda step: {"step": torch.tensor(step)},  # the step as a tensor: read as the step, then an unexpected key
    lambda step: {"step": step, "loss": torch.tensor(0.25)},  # a loss saved without .item()
    lambda step: {"global_step": torch.tensor(step), "epoch": torch.tensor(1), "best_acc": torch.tensor(0.5)},
])
def test_flat_state_dict_beside_scalar_tensors_loads_into_the_model(tmp_path: Path, extra: Any) -> None:
    """Scalar tensors beside a state_dict that the model has no entries for (a step, a loss) are not weights:
    the model's weights are loaded and the numbers are the plain state_dicts'. Before, `analyze` failed on
    "1 unexpected key(s): step" once it had read the file's step from that very key."""
    folder = _run(tmp_path / "scalars", lambda index, step: ({**_sd(index), **extra(step)}, f"model_{'abc'[index - 1]}.pt"))
    assert [ref.step for ref in discover_checkpoints([folder]).checkpoints] == list(STEPS)
    plain = _plain(tmp_path, "plain", _sd)
    done = _analyze(tmp_path, [folder], "scalars.h5")
    assert done.code == 0, done.stderr
    _assert_same_numbers(tmp_path / "scalars.h5", plain)


def test_unexpected_weights_beside_scalars_are_still_refused(tmp_path: Path) -> None:
    """Only scalar tensors are let go: a flat dict whose other tensors the model lacks is still an error naming
    them (here a second layer's weight), and so is a scalar the model lacks beside a weight it lacks."""
    folder = _run(tmp_path / "extra", lambda index, step: (
        {**_sd(index), "extra.weight": torch.ones(2, 2), "loss": torch.tensor(0.5), "step": step}, f"m{index}.pt"))
    done = _analyze(tmp_path, [folder], "extra.h5")
    assert done.code == 1
    assert "do not fit the model" in done.stderr and "unexpected keys: extra.weight, loss" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def _negatives() -> dict[str, Any]:
    """Files beside a run's checkpoints that hold tensors, or plain values, but no model's weights."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    x = torch.randn(12, 4)
    return {
        "probe_a.pt": ({"x": x, "y": torch.arange(12) % 3, "n_classes": 3}, "a probe set (x, y), not model weights"),
        "probe_b.pt": ({"input_ids": torch.zeros(12, 5, dtype=torch.long), "labels": torch.zeros(12, dtype=torch.long),
                        "tokenizer": "gpt2"}, "a probe set (input_ids, labels), not model weights"),
        "adam_a.pt": (optimizer.state_dict(), "optimizer state, no model weights"),
        "sched_a.pt": (torch.optim.lr_scheduler.StepLR(optimizer, 30).state_dict(), "no tensors"),
        # a scheduler's state whose `best` kept the tensor the loss was (ReduceLROnPlateau's of a custom loop)
        "plateau_a.pt": ({"best": torch.tensor(0.3), "mode": "min", "factor": 0.1, "last_epoch": 7},
                         "tensors but no model state_dict"),
        "rng_a.pt": ({"cpu": torch.get_rng_state(), "step": 7}, "tensors but no model state_dict"),
        "rng_b.pt": ({"python": (3, (1, 2), None), "cpu": torch.get_rng_state(), "cuda": [torch.get_rng_state()],
                      "epoch": 2}, "tensors but no model state_dict"),
        "ema_a.pt": ({"decay": 0.999, "num_updates": 10, "shadow_params": [p.detach() for p in model.parameters()],
                      "collected_params": None}, "tensors but no model state_dict"),
        "metrics_a.pt": ({"loss": torch.tensor(0.3), "acc": torch.tensor(0.9), "step": 7},
                         "tensors but no model state_dict"),
    }


def test_probe_optimizer_scheduler_rng_and_ema_state_are_not_read_as_weights(tmp_path: Path) -> None:
    """Each skipped with its note beside the run's one checkpoint (a guard: these were skipped before, and
    the flat dicts read as weights now must not take them in)."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({**_sd(1), "step": 100}, folder / "model.pt")
    negatives = _negatives()
    for name, (obj, _) in negatives.items():
        torch.save(obj, folder / name)
    found = discover_checkpoints([folder])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints] == [("model.pt", 100)]
    for name, (_, said) in negatives.items():
        assert any(note.startswith(f"skipped {name}: {said}") for note in found.notes), (name, found.notes)


def test_probe_beside_a_step_is_read_as_weights_as_in_safetensors(tmp_path: Path) -> None:
    """`{"x": ..., "y": ..., "step": 5}`: a probe is never saved beside a step, so such tensors are weights (a
    model whose parameters are named x and y), as for a safetensors file with a step in its metadata."""
    path = tmp_path / "fact.pt"
    torch.save({"x": torch.randn(6, 6), "y": torch.randn(6, 2), "step": 5}, path)
    found = discover_checkpoints([path])
    assert [(ref.step, ref.step_source) for ref in found.checkpoints] == [(5, "metadata:step")]


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd, "epoch": 3}, lambda sd: {**sd, "step": 3}])
def test_state_dict_of_numpy_arrays_is_said_to_be_one(tmp_path: Path, wrap: Any) -> None:
    """fdl does not load numpy arrays (numpy would read the file's bytes): such a file is refused saying so and
    how to re-save it, not as one with "no tensors (e.g. scheduler/rng state or training args)"."""
    path = tmp_path / "ckpt_3.pt"
    torch.save(wrap({key: value.numpy() for key, value in _sd(1).items()}), path)
    with pytest.raises(FdlError) as caught:
        discover_checkpoints([path])
    text = str(caught.value)
    assert "ckpt_3.pt: a state_dict of numpy arrays (0.weight, 0.bias, 2.weight, ...)" in text, text
    assert "torch.from_numpy" in text, text
    done = _analyze(tmp_path, [path], "np.h5")
    assert done.code == 1 and "a state_dict of numpy arrays" in done.stderr and "Traceback" not in done.stderr


def test_note_for_model_and_ema_names_the_copy_fdl_leaves(tmp_path: Path) -> None:
    """`{"ema": sd2, "model": sd}`: the model's own weights whatever the order of the dict, the EMA named in
    a note (a guard of the documented choice)."""
    folder = _run(tmp_path / "ema", lambda index, step: (
        {"ema": _sd(10 + index), "model": _sd(index), "step": step}, f"c{index}.pt"))
    loaded = load_checkpoint(discover_checkpoints([folder]).checkpoints[0])
    assert loaded.state_dict is not None and all(torch.equal(loaded.state_dict[k], v) for k, v in _sd(1).items())
    assert loaded.other_weights == ("ema",)
    plain = _plain(tmp_path, "plain", _sd)
    done = _analyze(tmp_path, [folder], "ema.h5")
    assert done.code == 0, done.stderr
    _assert_same_numbers(tmp_path / "ema.h5", plain)
    assert any("--weights ema analyses that copy" in note for note in _notes(done)), done.stderr
