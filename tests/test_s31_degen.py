"""Degenerate layers that made `fdl` read numbers that do not measure what they seem to: a reference checkpoint
whose features have rank below the overlaps' k (constant features at initialisation), and a layer of p ≤ C units,
whose D_LR the formula fixes whatever was learned. What `fdl analyze` and `fdl classify` say of each, checked
against the brute-force float64 reference of tests/reference.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.reference import reference_measures
from tests.tiny_models import mlp

STEPS = (0, 10, 20)


def _run(root: Path, hidden: int, *, constant_reference: bool = False, equal_reference: bool = False) -> Path:
    """A 4-`hidden`-3 ReLU MLP trained 20 SGD steps on a 3-class probe (checkpoints 0, 10, 20). With
    `constant_reference`, step 0 holds a first layer of zero weights and bias 1: every hidden unit is 1 on
    every input, features of rank 1 (uncentered), and the later checkpoints are of full rank. With `equal_reference`,
    every hidden unit of step 0 is the first (equal rows, no bias): features of rank 1 that vary over the probe."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "probe.npz", x=x, y=y)
    (root / "ckpts").mkdir()
    model = mlp(4, hidden, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            state = {name: value.clone() for name, value in model.state_dict().items()}
            if step == 0 and constant_reference:
                state["0.weight"][:] = 0.0
                state["0.bias"][:] = 1.0
            if step == 0 and equal_reference:
                state["0.weight"][:] = state["0.weight"][:1].clone()
                state["0.bias"][:] = 0.0
            torch.save(state, root / "ckpts" / f"step_{step}.pt")
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    done = fdl_in_process("analyze", root / "ckpts", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": hidden, "n_out": 3}), "--probe", root / "probe.npz",
                          "-o", root / "run.h5")
    assert done.returncode == 0, done.stderr
    (root / "analyze.txt").write_text(done.stderr)
    return root


def _brute(root: Path, hidden: int, step: int):
    """The brute-force measures of one checkpoint: features (the head's input) and outputs from the file."""
    model = mlp(4, hidden, 3)
    model.load_state_dict(torch.load(root / "ckpts" / f"step_{step}.pt"))
    x = torch.from_numpy(np.load(root / "probe.npz")["x"])
    with torch.no_grad():
        features = model[1](model[0](x)).double().numpy()
        outputs = model(x).double().numpy()
    return reference_measures(features, outputs, labels=np.load(root / "probe.npz")["y"])


def _classify(root: Path) -> tuple[str, dict]:
    text = fdl_in_process("classify", root / "run.h5")
    as_json = fdl_in_process("classify", root / "run.h5", "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    return text.stdout + text.stderr, json.loads(as_json.stdout)


def _records(root: Path) -> dict[int, dict]:
    done = fdl_in_process("report", root / "run.h5", "--json")
    assert done.returncode == 0, done.stderr
    return {int(record["step"]): record for record in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def constant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("constant"), 8, constant_reference=True)


def test_rank_deficient_reference_is_warned_once_with_its_rank_and_k(constant: Path) -> None:
    brute = _brute(constant, 8, 0)
    assert brute.scalars["rank"] == 1  # constant features: one uncentered eigenfunction, the constant
    warned = [line for line in (constant / "analyze.txt").read_text().splitlines()
              if "overlaps' k" in line and "reference" in line]
    assert len(warned) == 1, (constant / "analyze.txt").read_text()
    assert "rank 1" in warned[0] and "k = 3" in warned[0] and "top 1" in warned[0], warned[0]


def test_the_overlap_is_taken_at_the_reference_rank_as_the_brute_force_one(constant: Path) -> None:
    # What the note says is so: overlap_init at step 20 is O_1 (the top eigenfunction alone), not O_3
    records = _records(constant)
    first, last = _brute(constant, 8, 0), _brute(constant, 8, 20)
    assert last.scalars["rank"] >= 3
    a, b = first.eigenfunctions[:, :1], last.eigenfunctions[:, :1]
    n = a.shape[0]
    o1 = float(np.sum((a.T @ b / n) ** 2))
    assert records[20]["overlap_init"] == pytest.approx(o1, rel=1e-6)
    assert records[20]["cka_init"] is None  # constant reference: CKA 0/0, so the move rests on the overlap alone


def test_classify_names_the_reference_rank_and_k_and_keeps_the_verdict(constant: Path) -> None:
    text, verdict = _classify(constant)
    assert verdict["regime"] == "MF"  # regimes.md does not make it undetermined: a caveat, not a new verdict
    low = verdict["evidence"]["low_rank_reference"]
    assert (low["step"], low["rank"], low["k"], low["overlap_k"]) == (0, 1, 1, 3), low
    assert "rank 1" in low["note"] and "k = 1" in low["note"] and "cka_init is null" in low["note"], low
    assert low["note"] in text, text


def test_a_rank_one_reference_of_varying_features_gets_the_note_and_its_trivial_d_lr(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _run(tmp_path_factory.mktemp("equal"), 8, equal_reference=True)
    brute = _brute(root, 8, 0)
    # centered rank 1: a linear head's outputs span that one direction, so D_LR is 0 by the formula at initialisation
    assert brute.scalars["rank"] == 1 and brute.scalars["feature_pr"] == pytest.approx(1.0, abs=1e-12)
    assert brute.scalars["d_lr"] == pytest.approx(0.0, abs=1e-9)
    assert _records(root)[0]["d_lr"] == pytest.approx(brute.scalars["d_lr"], abs=1e-9)
    warned = [line for line in (root / "analyze.txt").read_text().splitlines() if "overlaps' k" in line]
    assert len(warned) == 1 and "rank 1" in warned[0] and "k = 1, not 3" in warned[0], warned
    text, verdict = _classify(root)
    low = verdict["evidence"]["low_rank_reference"]
    assert (low["rank"], low["k"], low["overlap_k"]) == (1, 1, 3), low
    assert "cka_init is null" not in low["note"] and "D_LR 0.0000 there" in low["note"], low  # CKA measured here
    assert low["note"] in text, text


@pytest.fixture(scope="module", params=[1, 2])
def narrow(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    return request.param, _run(tmp_path_factory.mktemp(f"p{request.param}"), request.param)


def test_narrow_layer_note_says_d_lr_is_fixed_by_the_width(narrow: tuple[int, Path]) -> None:
    width, root = narrow
    records = _records(root)
    brute = _brute(root, width, 0)
    # At initialisation already: the reference's D_LR is that of the formula on p ≤ C units
    assert records[0]["d_lr"] == pytest.approx(brute.scalars["d_lr"], abs=1e-9)
    assert brute.scalars["dlr_alignment"] == pytest.approx(1.0, abs=1e-9)
    bound = 1 - 1 / math.sqrt(width)
    assert brute.scalars["d_lr"] == pytest.approx(1 - math.sqrt(brute.scalars["feature_pr"] / width), abs=1e-9)
    assert brute.scalars["d_lr"] <= bound + 1e-12
    text, verdict = _classify(root)
    note = verdict["evidence"]["narrow_layer"]
    assert "D_LR" in note, note
    if width == 1:
        assert "D_LR = 0 by the formula" in note, note
    else:
        assert f"≤ 1 − 1/√p = {bound:.3f}" in note and f"{records[0]['d_lr']:.4f} at the reference" in note, note
    said = [line for line in text.splitlines() if "D_LR" in line and ("p = " in line or "unit" in line)]
    assert said, text
    # and the overlaps: every one at k ≤ p, said by analyze once and by classify, not as a degenerate reference
    warned = [line for line in (root / "analyze.txt").read_text().splitlines() if "overlaps' k" in line]
    unit = "unit" if width == 1 else "units"
    assert len(warned) == 1 and f"the layer has {width} {unit}" in warned[0] and f"k ≤ {width}" in warned[0], warned
    low = verdict["evidence"]["low_rank_reference"]
    assert f"k ≤ {width} at every checkpoint" in low["note"] and "degenerate" not in low["note"], low
