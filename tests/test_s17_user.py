"""What a researcher new to fdl met on real training runs of the seventeenth session (digits MLPs: a
plain loop, a frozen backbone, mean-field and NTK-like nets, BatchNorm/Dropout, torch.compile and
DataParallel checkpoints, safetensors, regression, resumed runs): the messages that misled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import CheckpointError, ModelError
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file

MODEL = """
from torch import nn


def build(n_out=3):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, n_out))
"""


def _run(tmp_path: Path, n_out: int, labels: np.ndarray) -> tuple[Path, list[str], Path]:
    """A one-checkpoint run of MODEL with `n_out` outputs, its `--model` with `--model-kwargs`, and a
    probe of inputs with `labels`."""
    runs = tmp_path / "runs"
    runs.mkdir()
    module = model_file(tmp_path, MODEL)
    torch.manual_seed(0)
    torch.save(module.build(n_out).state_dict(), runs / "step_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(len(labels), 4)).astype(np.float32), y=labels)
    return runs, ["--model", f"{tmp_path / 'model.py'}:build", "--model-kwargs", json.dumps({"n_out": n_out})], probe


def test_labels_numbered_from_one_are_shown_with_their_range_and_the_fix(tmp_path: Path) -> None:
    """Labels 1..3 for a 3-class model said "got: labels 0..3", hiding that they start at 1."""
    runs, model, probe = _run(tmp_path, 3, np.arange(12) % 3 + 1)
    out = tmp_path / "run.h5"
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", out)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: the probe {probe} (probe) has class label 3 but the model has 3 outputs" in result.stderr
    assert "  got: labels 1..3\n" in result.stderr
    assert "fix: the labels run from 1 to 3, the model's classes from 0 to 2: if they are numbered from 1, save y - 1" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_labels_beyond_the_outputs_from_zero_keep_the_plain_advice(tmp_path: Path) -> None:
    runs, model, probe = _run(tmp_path, 3, np.arange(12) % 5)
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", tmp_path / "run.h5")
    assert result.returncode == 1
    assert "  got: labels 0..4\n" in result.stderr
    assert "fix: use the probe that matches this model, or the right --model-kwargs for its output size" \
        in result.stderr


def _mlp() -> torch.nn.Module:
    from collections import OrderedDict

    return torch.nn.Sequential(OrderedDict(body=torch.nn.Linear(4, 8), act=torch.nn.ReLU(),
                                           head=torch.nn.Linear(8, 3)))


@pytest.mark.parametrize(("name", "fix"), [
    ("head:output", "--layer head for its output, --layer head:input for its input"),
    ("body:inputs", "--layer body for its output, --layer body:input for its input"),
])
def test_a_layer_with_a_suffix_fdl_does_not_know_names_the_module(name: str, fix: str) -> None:
    """`--layer head:output` said "no module name is close to it" of a module the model has."""
    from fdl_cli.extract import resolve_layers

    with pytest.raises(ModelError) as caught:
        resolve_layers(_mlp(), [name])
    owner, _, suffix = name.partition(":")
    assert caught.value.what == (f"--layer {name!r}: {owner!r} is a module of the model, but ':{suffix}' is no suffix "
                                 "fdl knows")
    assert caught.value.fix == fix


@pytest.mark.parametrize(("name", "prefix", "fix"), [
    ("_orig_mod.head:input", "_orig_mod.", "--layer head:input"),
    ("module.body", "module.", "--layer body"),
    ("module._orig_mod.act", "module._orig_mod.", "--layer act"),
])
def test_a_layer_named_with_a_wrappers_prefix_gets_the_name_inside(name: str, prefix: str, fix: str) -> None:
    """A name copied from a torch.compile'd model's named_modules() (`_orig_mod.head`) said "no module
    name is close to it", while fdl hooks the network inside, where it is `head`."""
    from fdl_cli.extract import resolve_layers

    with pytest.raises(ModelError) as caught:
        resolve_layers(_mlp(), [name])
    assert caught.value.what == f"unknown layer {name!r}"
    assert caught.value.got is not None and caught.value.got.startswith(f"{prefix!r} is the prefix of a torch.compile")
    assert caught.value.fix == fix
    with pytest.raises(ModelError, match="closest module names: head"):  # other unknown names as before
        resolve_layers(_mlp(), ["haed"])


def test_no_checkpoint_among_many_other_files_says_so_in_one_entry(tmp_path: Path) -> None:
    """`fdl analyze .` in a working folder of 30 other files: the error listed each of them with the
    whole list of suffixes (~100 characters a file), before the line naming the folder to pass."""
    from fdl_cli.checkpoints import discover_checkpoints

    for index in range(30):
        (tmp_path / f"notes_{index:02d}.txt").write_text("x")
    (tmp_path / "runs").mkdir()
    torch.save(_mlp().state_dict(), tmp_path / "runs" / "step_5.pt")
    with pytest.raises(CheckpointError) as caught:
        discover_checkpoints([tmp_path])
    got = caught.value.got
    assert got is not None
    assert got.startswith("skipped 30 files without a checkpoint suffix (.pt, .pth, .bin, .ckpt, .safetensors, "
                          ".pt2, .pth.tar, .pt.tar): notes_00.txt, notes_01.txt, notes_02.txt, notes_03.txt, "
                          "notes_04.txt, notes_05.txt and 24 more; ")
    assert "not a checkpoint suffix" not in got
    assert f"checkpoints in sub-folders, which are not searched: {tmp_path / 'runs'} (1 checkpoint)" in got
    assert len(got) < 400
    # one such file is named as before
    for index in range(1, 30):
        (tmp_path / f"notes_{index:02d}.txt").unlink()
    with pytest.raises(CheckpointError) as one:
        discover_checkpoints([tmp_path])
    assert one.value.got is not None and one.value.got.startswith("skipped notes_00.txt: not a checkpoint suffix (")


def test_a_run_logged_to_a_file_starts_with_its_summary_not_a_blank_line(tmp_path: Path) -> None:
    """stderr a pipe or a log (a batch job): rich's progress display, which shows nothing there, wrote a
    blank line on stopping, before the summary."""
    runs, model, probe = _run(tmp_path, 3, np.arange(12) % 3)
    out = tmp_path / "run.h5"
    result = fdl("analyze", runs, *model, "--probe", probe, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"1 checkpoint analysed → {out}\n"


def test_a_pickled_model_without_the_analysed_layer_is_a_bad_checkpoint_not_a_traceback(tmp_path: Path) -> None:
    """Whole modules pickled by a training script (--trust-pickle). DataParallel's wrapper is taken off,
    as DDP's and torch.compile's are (its network hooked a layer `module.2` at one step, `2` at the next,
    a KeyError traceback); a network under a wrapper fdl does not know, or of another architecture, at
    one step is a bad checkpoint with its reason, and the others are analysed."""
    from collections import OrderedDict

    runs = tmp_path / "runs"
    runs.mkdir()
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save({"model": torch.nn.DataParallel(network), "step": 0}, runs / "ckpt_0.pt")
    torch.save({"model": network, "step": 10}, runs / "ckpt_10.pt")
    torch.save({"model": torch.nn.DataParallel(network), "step": 20}, runs / "ckpt_20.pt")
    held = torch.nn.Sequential(OrderedDict(module=network))  # a wrapper of its own, holding it as `module`
    torch.save({"model": held, "step": 30}, runs / "ckpt_30.pt")
    other = torch.nn.Sequential(OrderedDict(body=torch.nn.Linear(4, 8), act=torch.nn.ReLU(), head=torch.nn.Linear(8, 3)))
    torch.save({"model": other, "step": 40}, runs / "ckpt_40.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32), y=np.arange(12) % 3)
    out = tmp_path / "run.h5"
    result = fdl("analyze", runs, "--probe", probe, "-o", out, "--trust-pickle")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (f"error: the model in {runs / 'ckpt_30.pt'} has no module '2', whose input (2:input) is "
            "analysed at the run's other checkpoints\n  got: the same name under another wrapper: 'module.2' "
            "(a module of the training script's own that holds the network as its 'module' or "
            "'_orig_mod')\n") in result.stderr
    assert (f"error: the model in {runs / 'ckpt_40.pt'} has no module '2', whose input (2:input) is "
            "analysed at the run's other checkpoints\n  got: a model of another architecture (Sequential)\n") \
        in result.stderr
    assert f"3 checkpoints analysed, 2 failed → {out}" in result.stderr
    from fdl_cli.store import StoreReader

    with StoreReader(out) as run:
        assert run.series() == [("probe", "2:input")]
        records = run.records()
        assert [record["step"] for record in records] == [0, 10, 20]
        assert [record["prev_step"] for record in records] == [None, 0, 10]
        assert [record["cka_init"] for record in records[1:]] == [pytest.approx(1.0, abs=1e-12)] * 2
        assert np.array_equal(run.array(0, "eigenvalues"), run.array(20, "eigenvalues"))


def test_a_training_checkpoint_given_as_the_probe_is_named_as_one(tmp_path: Path) -> None:
    """`--probe runs/ckpt_0.pt` (a checkpoint of the plain loop) said "has no inputs, got: keys: none"."""
    from fdl_cli.errors import ProbeError
    from fdl_cli.probes import load_probe

    model = _mlp()
    loop = tmp_path / "ckpt_0.pt"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}}, "step": 0}, loop)
    with pytest.raises(ProbeError) as caught:
        load_probe(loop)
    assert caught.value.what == f"the probe {loop} holds no tensor at its top level"
    assert caught.value.got == "keys: model (OrderedDict), optimizer (dict), step (int); a training checkpoint?"
    assert caught.value.fix is not None and "fdl analyze CKPT_DIR --probe PROBE" in caught.value.fix
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    with pytest.raises(ProbeError) as plain:
        load_probe(weights)
    assert plain.value.got == ("keys: body.bias, body.weight, head.bias, head.weight; the weights of a model: a "
                               "checkpoint given as the probe?")


def test_a_factory_returning_dataparallel_hooks_the_networks_own_names(tmp_path: Path) -> None:
    """A --model factory that returns its network in nn.DataParallel (as a training script builds it)
    is unwrapped like DDP's and torch.compile's: the store names the layer `2:input`, as for the plain
    network, with the same numbers (it stored `module.2:input`)."""
    source = ("import torch\n\ndef net():\n    torch.manual_seed(0)\n"
              "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n\n"
              "def plain():\n    return net()\n\ndef wrapped():\n    return torch.nn.DataParallel(net())\n")
    module = model_file(tmp_path, source)
    runs = tmp_path / "runs"
    runs.mkdir()
    network = module.plain()
    for step in (0, 5):
        torch.save({"model": network.state_dict(), "step": step}, runs / f"ckpt_{step}.pt")
        with torch.no_grad():
            network[0].weight.mul_(1.5)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32), y=np.arange(16) % 3)
    from fdl_cli.store import StoreReader

    stored = []
    for factory in ("plain", "wrapped"):
        out = tmp_path / f"{factory}.h5"
        result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:{factory}", "--probe", probe, "-o", out)
        assert result.returncode == 0, result.stderr
        with StoreReader(out) as run:
            stored.append((run.series(), [(r["step"], r["cka_init"], r["d_lr"]) for r in run.records()],
                           run.array(5, "eigenvalues")))
    assert stored[0][0] == stored[1][0] == [("probe", "2:input")]
    assert stored[0][1] == stored[1][1]
    assert np.array_equal(stored[0][2], stored[1][2])
