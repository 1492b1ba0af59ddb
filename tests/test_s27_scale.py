"""Shapes at the edges: a model of many outputs (a classifier of thousands of classes, a language model's
vocabulary) needs C×C float64 sums of its outputs' products; a run whose outputs alone cannot fit is refused
up front, saying so, where it passed the check and was killed by the system or ran out of memory mid-run
with a fix (--batch-size, --layer, --anchor-size) that could not help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import resources
from tests.cli_run import fdl_in_process, model_file

MODEL = '''
import torch
from torch import nn


def build(outputs=600):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, outputs))
'''


def _run(tmp_path: Path, outputs: int, labels: bool) -> tuple[Path, Path]:
    net = model_file(tmp_path, MODEL).build(outputs)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(net.state_dict(), ckpts / "step_0.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    if labels:
        np.savez(tmp_path / "probe.npz", x=x, y=np.arange(40) % 5)  # 5 of the classes present
    else:
        np.savez(tmp_path / "probe.npz", x=x)
    return ckpts, tmp_path / "probe.npz"


@pytest.mark.parametrize("labels", [False, True])
def test_outputs_too_many_for_the_memory_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labels: bool
) -> None:
    # C = 600: the outputs' (C+1)² sums alone take 2.9 MB; the p = 4 layer and its anchors ~10 kB. A machine
    # with 2 MB available (patched) cannot hold them.
    ckpts, probe = _run(tmp_path, 600, labels)
    monkeypatch.setattr(resources, "available_host_bytes", lambda *_args, **_kw: 2_000_000)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--model-kwargs",
                          '{"outputs": 600}', "--probe", probe, "-o", out, "--device", "cpu")
    assert done.returncode == 1, done.stderr
    assert "error: this analysis needs at least " in done.stderr
    assert "the outputs' C×C sums of products (C = 600)" in done.stderr
    assert "the model has 600 outputs" in done.stderr and "fewer outputs" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()


def test_the_outputs_needs_are_counted_per_layer_with_class_sums() -> None:
    plain = resources.layer_needs("head", 4, 40, 40, probe="probe", anchor_copies=0, outputs=600)
    classes = resources.layer_needs("head", 4, 40, 40, probe="probe", anchor_copies=0, outputs=600, task="classes")
    regression = resources.layer_needs("head", 4, 40, 40, probe="probe", anchor_copies=0, outputs=600,
                                       task="regression")
    layer = 8 * (5**2 + 4**2) + 8 * (2 * 4**2 + 1 + 6 * 4 + 2 * 4**2)  # the sums; the decomposition (p = 4)
    # the (w+1)² products of [Ŷ | Y] (w = C, or 2C with regression targets), the host copies of Σŷŷᵀ (and with
    # targets of Σŷyᵀ and Σyyᵀ: tests/test_s27_outputs.py measures them)
    assert sum(need.bytes for need in plain) == layer + 8 * (601**2 + 600**2)
    assert sum(need.bytes for need in regression) == layer + 8 * (1201**2 + 3 * 600**2)
    # class labels: + the C×(C+1) class sums of the outputs
    assert sum(need.bytes for need in classes) == layer + 8 * (601**2 + 600 * 601 + 3 * 600**2)


def test_pi_at_c_never_exceeds_one_on_a_probe_of_one_sample(tmp_path: Path) -> None:
    """docs/measures.md: Π*(k), Π̂(k) lie in [0, 1]. On a probe of one sample the single eigenfunction carries
    all of both functions and the rounding of Q_1 gave pi_star_C = pi_hat_C = 1.0000000000000004."""
    import json

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(net.state_dict(), ckpts / "step_0.pt")
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.zeros(1, dtype=np.int64))
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))\n")
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    shown = fdl_in_process("report", out, "--format", "json")
    (record,) = json.loads(shown.stdout)
    assert record["pi_star_C"] == pytest.approx(1.0, abs=1e-12) and record["pi_star_C"] <= 1.0
    assert record["pi_hat_C"] == pytest.approx(1.0, abs=1e-12) and record["pi_hat_C"] <= 1.0
