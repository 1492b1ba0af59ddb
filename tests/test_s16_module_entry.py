"""`torch.save({"model": model, "ema": ema, "epoch": e})`: whole modules pickled in a dict (YOLOv5's layout,
and many a training script's) are analysed with --trust-pickle as a `torch.save(model)` file is; they said
"holds no model state_dict" before."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process as _fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.tiny_models import mlp

NAMES_FILES = ("path", "sha256")


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    model, ema = mlp(), mlp()
    for name in ("modules", "plain", "plain_ema"):
        (tmp_path / name).mkdir()
    for step in (0, 10, 20):
        torch.save({"epoch": step, "model": model, "ema": ema, "optimizer": None}, tmp_path / "modules" / f"ck_{step}.pt")
        torch.save(model.state_dict(), tmp_path / "plain" / f"ck_{step}.pt")
        torch.save(ema.state_dict(), tmp_path / "plain_ema" / f"ck_{step}.pt")
        with torch.no_grad():
            model[0].weight.mul_(1.3)
            ema[0].weight.copy_(0.5 * ema[0].weight + 0.5 * model[0].weight)
        ema = copy.deepcopy(ema)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(120, 4)).astype(np.float32), y=rng.integers(0, 3, 120))
    return tmp_path


def _records(store: Path) -> list[dict]:
    with StoreReader(store) as reader:
        return [{k: v for k, v in r.items() if k not in NAMES_FILES} for r in reader.records()]


def test_a_module_in_the_dict_is_the_model_and_its_numbers_are_the_plain_ones(runs: Path) -> None:
    probe = runs / "probe.npz"
    done = _fdl("analyze", runs / "modules", "--probe", probe, "-o", runs / "m.h5", "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert "also holds weights under 'ema'" in done.stderr and "'model'" not in done.stderr.split("note:")[1]
    assert _fdl("analyze", runs / "plain", "--model", "tests.tiny_models:mlp", "--probe", probe,
                "-o", runs / "p.h5").returncode == 0
    got, want = _records(runs / "m.h5"), _records(runs / "p.h5")
    assert [r["step"] for r in got] == [0, 10, 20]
    assert got == want

    done = _fdl("analyze", runs / "modules", "--model", "tests.tiny_models:mlp", "--weights", "ema", "--probe", probe,
                "-o", runs / "e.h5", "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert _fdl("analyze", runs / "plain_ema", "--model", "tests.tiny_models:mlp", "--probe", probe,
                "-o", runs / "pe.h5").returncode == 0
    assert _records(runs / "e.h5") == _records(runs / "pe.h5")


def test_without_trust_pickle_the_modules_are_refused(runs: Path) -> None:
    done = _fdl("analyze", runs / "modules", "--model", "tests.tiny_models:mlp", "--probe", runs / "probe.npz",
                "-o", runs / "m.h5")
    assert done.returncode == 1
    assert "pickled Python object" in done.stderr and "--trust-pickle" in done.stderr
    assert not (runs / "m.h5").exists()
