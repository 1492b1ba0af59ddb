"""Two runs a researcher trains and compares: a frozen backbone (lazy) against a network whose features learn.

`fdl compare` ranks the runs by D_LR (richness), which a frozen backbone can win: its fixed features' D_LR
changes with the readout alone, and may end below that of a run whose features moved. The verdict then has to
say which run learned features, not leave "run A is richer" to read as "run A learned more"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from tests.cli_run import fdl_in_process, model_file
from tests.test_report import SCALARS, make_store

ONLY_B = "Of the two runs, only B's features moved"
ONLY_A = "Of the two runs, only A's features moved"


def _verdict_line(stderr: str) -> str:
    """The verdict as printed (the table's last line, wrapped on a narrow terminal: joined)."""
    return " ".join(stderr.split())


def test_a_frozen_run_named_richer_is_not_taken_for_the_one_that_learned_features(tmp_path: Path) -> None:
    """A frozen backbone whose D_LR ends below the learning run's: compare said "Run A is richer" and that A's
    features did not move, and never which run did learn features."""
    lazy_scalars = {step: {**values, "d_lr": [0.9, 0.6, 0.1][i], "cka_init": 1.0, "overlap_init": 1.0,
                           "regime": "coefficient"} for i, (step, values) in enumerate(SCALARS.items())}
    lazy = make_store(tmp_path / "lazy.h5", seed=3, scalars=lazy_scalars)
    rich = make_store(tmp_path / "rich.h5")  # CKA to its reference down to 0.625, top-C overlap to 0.5
    printed = fdl_in_process("compare", lazy, rich, "--no-overlap")
    assert printed.returncode == 0, printed.stderr
    said = _verdict_line(printed.stderr)
    assert "Run A is richer than run B (lower D_LR)" in said and "Run A's features did not move" in said
    assert (f"{ONLY_B} (CKA to its reference down to 0.6250, top-C overlap to 0.5000): B learned features, A did "
            "not; A's lower D_LR comes from its readout of fixed features.") in said
    swapped = json.loads(fdl_in_process("compare", rich, lazy, "--no-overlap", "--json").stdout)
    assert swapped["richer"] == "b" and f"{ONLY_A} (CKA" in swapped["verdict"]  # either order
    assert swapped["verdict"].endswith("A learned features, B did not; B's lower D_LR comes from its readout of "
                                       "fixed features.")


def test_no_such_sentence_when_both_runs_moved_or_neither_did(tmp_path: Path) -> None:
    rich = make_store(tmp_path / "rich.h5")
    other = make_store(tmp_path / "other.h5", seed=5)
    both = json.loads(fdl_in_process("compare", rich, other, "--no-overlap", "--json").stdout)["verdict"]
    assert "features moved" not in both and "did not move" not in both
    frozen = {step: {**values, "cka_init": 1.0, "overlap_init": 1.0, "regime": "coefficient"}
              for step, values in SCALARS.items()}
    lazy = make_store(tmp_path / "lazy.h5", seed=3, scalars=frozen)
    lazy2 = make_store(tmp_path / "lazy2.h5", seed=4, scalars=frozen)
    neither = json.loads(fdl_in_process("compare", lazy, lazy2, "--no-overlap", "--json").stdout)["verdict"]
    assert "Run A's features did not move" in neither and "Run B's features did not move" in neither
    assert "features moved" not in neither


MODEL = """
from torch import nn


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 10))
"""


def _train(folder: Path, build, x: torch.Tensor, y: torch.Tensor, *, frozen: bool, steps: list[int]) -> None:
    """SGD on digits from the same initialisation; `frozen`: the head alone learns (a lazy run by construction)."""
    torch.manual_seed(0)
    model = build()
    folder.mkdir()
    optimiser = torch.optim.SGD(model[4].parameters() if frozen else model.parameters(), lr=0.5)
    for step in range(max(steps) + 1):
        if step in steps:
            torch.save(model.state_dict(), folder / f"step_{step}.pt")
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A frozen-backbone run (3 checkpoints, every 20 steps) and a trained one (4, other steps), digits."""
    root = tmp_path_factory.mktemp("two_runs")
    build = model_file(root, MODEL).build
    digits_x, digits_y = load_digits(return_X_y=True)
    x, y = torch.tensor(digits_x[:200] / 16, dtype=torch.float32), torch.tensor(digits_y[:200])
    np.savez(root / "probe.npz", x=x.numpy(), y=y.numpy())
    _train(root / "lazy", build, x, y, frozen=True, steps=[0, 20, 40])
    _train(root / "rich", build, x, y, frozen=False, steps=[0, 15, 30, 45])
    stores = {}
    for name in ("lazy", "rich"):
        stores[name] = root / f"{name}.h5"
        done = fdl_in_process("analyze", root / name, "--model", f"{root / 'model.py'}:build", "--probe",
                              root / "probe.npz", "--out", stores[name])
        assert done.returncode == 0, done.stderr
    return stores


def test_frozen_backbone_is_coefficient_and_compare_names_the_run_that_learned(runs: dict[str, Path]) -> None:
    assert fdl_in_process("classify", runs["lazy"], "--expect", "coefficient").returncode == 0
    assert fdl_in_process("classify", runs["rich"], "--expect", "coefficient").returncode == 3
    data = json.loads(fdl_in_process("compare", runs["lazy"], runs["rich"], "--json").stdout)
    assert data["richer"] == "b" and "Run A's features did not move" in data["verdict"]
    assert data["verdict"].endswith("B learned features, A did not.")  # B richer too: nothing more to say
    assert ONLY_B in data["verdict"]
    # A's features are its initialisation's at every step, B's start there: the overlap A·B at a matched step
    # is B's own overlap to its step 0
    assert [(s["step_a"], s["step_b"]) for s in data["steps"]] == [(0, 0), (20, 15), (40, 45)]
    for step in data["steps"]:
        assert step["overlap"] == pytest.approx(step["b"]["overlap_init"], abs=1e-6)
        assert step["a"]["cka_init"] == pytest.approx(1.0, abs=1e-12)


def test_export_takes_json_as_report_and_compare_do(tmp_path: Path) -> None:
    """`fdl export run.h5 --what trajectories --json` was "No such option '--json'": the one reading command
    without it, after `report --json` and `compare --json`."""
    store = make_store(tmp_path / "run.h5")
    for what in ("trajectories", "eigenvalues"):
        spelled = fdl_in_process("export", store, "--what", what, "--format", "json")
        short = fdl_in_process("export", store, "--what", what, "--json")
        assert short.returncode == 0, short.stderr
        assert short.stdout == spelled.stdout and json.loads(short.stdout)
    both = fdl_in_process("export", store, "--what", "eigenvalues", "--json", "--format", "csv")
    assert both.returncode == 2 and "--json and --format csv ask for two formats; pass one" in both.stderr
    assert "Traceback" not in both.stderr
