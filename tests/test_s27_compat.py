"""Stores written before the twenty-seventh session, read and resumed by this code (h_s27_compat).

An old store's class-label probe has no `chance_accuracy` / `label_entropy` attributes (the code at the session's
start wrote none; its probe attributes are otherwise the same, checked by writing one with each version). Here an
old store is made by writing one with this code and deleting those two attributes with h5py. Resuming such a
store with the same probe file (the same sha256, so the same labels) records them, as a resume records a missing
`zero_one_targets`: before, the probe stayed without them for good and `fdl classify` read 1/C, while analyze's
dominant-class note said classify reads against the labels' shares."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process, model_file

MODEL = ("import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
         "    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))\n")


def _run(tmp_path, steps):
    net = model_file(tmp_path, MODEL).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    for step in steps:
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
        torch.save(net.state_dict(), ckpts / f"step_{step}.pt")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.r_[np.zeros(32, int), np.arange(8) % 3 + 1])  # 32, 3, 3, 2 of 40
    return ckpts


def _analyze(tmp_path, ckpts, out):
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return done


def _chance(out):
    with h5py.File(out, "r") as store:
        attrs = store["probes/probe"].attrs
        return {name: float(attrs[name]) for name in ("chance_accuracy", "label_entropy") if name in attrs}


def _make_old(out):
    with h5py.File(out, "r+") as store:
        for name in ("chance_accuracy", "label_entropy"):
            del store["probes/probe"].attrs[name]


def test_resuming_a_store_written_before_the_probe_s_chance_records_it(tmp_path) -> None:
    ckpts = _run(tmp_path, (0, 10))
    out = tmp_path / "run.h5"
    _analyze(tmp_path, ckpts, out)
    fresh = _chance(out)
    shares = np.array([32, 3, 3, 2]) / 40
    assert fresh == {"chance_accuracy": pytest.approx(0.8), "label_entropy": pytest.approx(-np.sum(shares * np.log(shares)))}
    _make_old(out)
    before = json.loads(fdl_in_process("classify", out, "--json").stdout)["evidence"]
    assert "chance_accuracy" not in before  # not recorded: classify takes 1/C
    _run(tmp_path, (20,))  # one checkpoint more: the resume analyses it alone
    done = _analyze(tmp_path, ckpts, out)
    assert "1 checkpoint analysed, 2 already in the store" in done.stderr, done.stderr
    assert _chance(out) == fresh
    evidence = json.loads(fdl_in_process("classify", out, "--json").stdout)["evidence"]
    assert evidence["chance_accuracy"] == pytest.approx(0.8)


def test_an_old_store_s_chance_is_said_to_be_one_over_c_not_the_probe_s(tmp_path) -> None:
    """Without the probe's chance recorded, classify's line reads the accuracy against 1/C and says so: the bare
    "chance 0.250" of a store written before the probe's chance read as the probe's own chance (here 0.800)."""
    from fdl_cli.regimes import reference_fit

    record = {"accuracy": 0.9, "n_outputs": 4, "cross_entropy": 0.3}
    assert reference_fit(record)[1] == "accuracy 0.9000, chance 1/C = 0.2500, cross-entropy 0.300 against log C = 1.386"
    recorded = reference_fit(record, {"chance_accuracy": 0.8, "label_entropy": 0.7})
    assert recorded[1] == ("accuracy 0.9000, chance 0.8000: the largest class's share of the probe's labels, "
                           "cross-entropy 0.300 against the labels' entropy 0.700")
