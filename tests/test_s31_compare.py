"""`fdl compare` as a researcher running ablations uses it: real tiny runs, every printed number checked
against the stores read with h5py and the between-run overlap recomputed in float64."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.test_report import make_store, run_fdl
from tests.tiny_models import mlp


def _pairs(a: Path, b: Path) -> list[tuple[int, int]]:
    done = run_fdl("compare", a, b, "--no-overlap", "--format", "json")
    assert done.returncode == 0, done.stderr
    return [(step["step_a"], step["step_b"]) for step in json.loads(done.stdout)["steps"]]


def test_runs_saved_midway_between_each_other_pair_every_checkpoint(tmp_path: Path) -> None:
    """A run saved at steps 0, 10, ..., 50 against one saved at 5, 15, ..., 55 matched only 0↔5: each step of
    the second lies midway between two of the first, a tie broken "to the lower" on both sides, so A's 10 chose
    B's 5 while B's 15 chose A's 10, never mutual; the table, the verdict and the note ("If the runs count steps
    differently...") then rested on one pair. Either run as A, every checkpoint of the
    shorter run finds its partner."""
    early = make_store(tmp_path / "early.h5", steps=(0, 10, 20, 30, 40, 50))
    late = make_store(tmp_path / "late.h5", steps=(5, 15, 25, 35, 45, 55), seed=3)
    assert _pairs(early, late) == [(0, 5), (10, 15), (20, 25), (30, 35), (40, 45), (50, 55)]
    assert _pairs(late, early) == [(5, 0), (15, 10), (25, 20), (35, 30), (45, 40), (55, 50)]
    shifted = make_store(tmp_path / "shifted.h5", steps=(5, 15, 25, 35, 45), seed=3)  # one checkpoint fewer
    assert _pairs(early, shifted) == [(0, 5), (10, 15), (20, 25), (30, 35), (40, 45)]
    assert _pairs(shifted, early) == [(5, 0), (15, 10), (25, 20), (35, 30), (45, 40)]
    said = run_fdl("compare", early, late, "--no-overlap").stderr
    assert "only 1 of A's" not in said and "6 steps matched to the nearest step of the other run" in said


# ------------------------------------------------------------------ real tiny runs: a frozen backbone vs a trained net

STEPS = (0, 10, 20, 30, 40)
C = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of one 4-16-3 MLP from the same initialisation: `rich` trains every layer, `lazy` the head only
    (its features are those of initialisation at every step, by construction); each analysed on a train and a
    test probe, and `rich` analysed twice alike."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("s31_runs")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] * x[:, 2] > 0.3).astype(np.int64)
    np.savez(root / "train.npz", x=x, y=y)
    x_test = rng.normal(size=(30, 4)).astype(np.float32)
    np.savez(root / "test.npz", x=x_test, y=(x_test[:, 0] > 0).astype(np.int64))
    stores = {}
    for name in ("rich", "lazy"):
        model = mlp(4, 16, C)
        optimizer = torch.optim.SGD(model[2].parameters() if name == "lazy" else model.parameters(), lr=0.5)
        folder = root / name
        folder.mkdir()
        for step in range(STEPS[-1] + 1):
            if step in STEPS:
                torch.save(model.state_dict(), folder / f"step_{step}.pt")
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for out in (name, f"{name}_again") if name == "rich" else (name,):
            stores[out] = root / f"{out}.h5"
            done = run_fdl("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 16}',
                           "--probe", f"train={root / 'train.npz'}", "--probe", f"test={root / 'test.npz'}",
                           "--out", stores[out])
            assert done.returncode == 0, done.stderr
    return stores


def _series(store: Path, probe: str) -> dict[int, h5py.Group]:
    """The store's checkpoint groups of `probe` (the default layer), by step, read with h5py alone."""
    handle = h5py.File(store, "r")
    groups = {}
    for group in handle["checkpoints"].values():
        (layer,) = list(group[probe])
        groups[int(group.attrs["step"])] = group[probe][layer]
    return groups


def _value(group: h5py.Group, name: str) -> float | None:
    value = group.attrs.get(name)
    return None if value is None or isinstance(value, (str, bytes)) or np.isnan(value) else float(value)


def _overlap(group_a: h5py.Group, group_b: h5py.Group, k: int) -> float:
    """O_k between the two stored top-k eigenfunctions on the anchors: orthonormal bases in float64, ‖QaᵀQb‖²/k."""
    basis_a, _ = np.linalg.qr(np.asarray(group_a["eigenfunctions"], dtype=np.float64)[:, :k])
    basis_b, _ = np.linalg.qr(np.asarray(group_b["eigenfunctions"], dtype=np.float64)[:, :k])
    return float(np.linalg.norm(basis_a.T @ basis_b) ** 2 / k)


@pytest.mark.parametrize("probe", ["train", "test"])
def test_a_frozen_backbone_against_a_trained_net_every_number_recomputed(runs: dict[str, Path], probe: str) -> None:
    done = run_fdl("compare", runs["lazy"], runs["rich"], "--probe", probe, "--overlap-steps", "all", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    lazy, rich = _series(runs["lazy"], probe), _series(runs["rich"], probe)
    assert [(s["step_a"], s["step_b"]) for s in data["steps"]] == [(step, step) for step in STEPS]
    for step in data["steps"]:
        group_a, group_b = lazy[step["step_a"]], rich[step["step_b"]]
        numeric = {name: delta for name, delta in step["differences"].items()
                   if name not in ("regime", "r2_min_output", "r2_outputs")}
        assert "d_lr" in numeric and "cka_init" in numeric
        for name, delta in numeric.items():
            a, b = _value(group_a, name), _value(group_b, name)
            expected = None if a is None or b is None else b - a
            assert delta == (None if expected is None else pytest.approx(expected, abs=1e-12)), (step["step_a"], name)
        assert step["overlap_k"] == C
        assert step["overlap"] == pytest.approx(_overlap(group_a, group_b, C), abs=1e-10)
        # by construction: the lazy run's features are the initialisation's, so the overlap between the runs
        # is the rich run's overlap to its own first checkpoint
        assert step["overlap"] == pytest.approx(_value(group_b, "overlap_init"), abs=1e-6)
        assert _value(group_a, "cka_init") == pytest.approx(1.0, abs=1e-9)
    assert data["moved"] == {"a": False, "b": True}
    # who is richer, and from when: recomputed from the stored D_LR with the documented rule (dlr_tie 0.001)
    d_lr = [(_value(lazy[s], "d_lr"), _value(rich[s], "d_lr")) for s in STEPS]
    last_a, last_b = d_lr[-1]
    richer = "b" if last_b < last_a - 1e-3 else "a" if last_a < last_b - 1e-3 else "equal"
    assert data["richer"] == richer
    if richer != "equal":
        lower = [(a - b if richer == "b" else b - a) > 1e-3 for a, b in d_lr]
        start = next(i for i in range(len(STEPS)) if all(lower[i:]))
        name = "B" if richer == "b" else "A"
        assert data["verdict"].startswith(f"Run {name} is richer than run ")
        assert (f"from step {STEPS[start]} on" if start else "at every matched step") in data["verdict"]


def test_the_same_run_analysed_twice_differs_nowhere(runs: dict[str, Path]) -> None:
    done = run_fdl("compare", runs["rich"], runs["rich_again"], "--probe", "train", "--overlap-steps", "all", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [s["step_a"] for s in data["steps"]] == list(STEPS)
    for step in data["steps"]:
        numeric = [v for name, v in step["differences"].items() if name != "regime" and v is not None]
        assert len(numeric) > 20 and all(v == 0 for v in numeric)
        assert step["overlap"] == pytest.approx(1.0, abs=1e-12)
    assert data["richer"] == "equal" and data["verdict"].startswith("The runs are equally rich (same D_LR)")
    assert data["notes"][0].startswith("stores A and B hold the same checkpoints")


def test_csv_and_markdown_hold_what_json_holds(runs: dict[str, Path]) -> None:
    """stdout holds the table alone (notes and verdict on stderr), one row per matched step, every column of
    the documented set, and each number the JSON's."""
    args = ("compare", runs["lazy"], runs["rich"], "--probe", "test", "--overlap-steps", "all")
    data = json.loads(run_fdl(*args, "--json").stdout)
    done = run_fdl(*args, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == len(STEPS)
    assert list(rows[0])[:5] == ["step_a", "step_b", "exact", "overlap", "overlap_k"]
    assert done.stderr.rstrip().splitlines()[-1] == data["verdict"]
    for row, step in zip(rows, data["steps"], strict=True):
        assert float(row["overlap"]) == step["overlap"]
        for name, delta in step["differences"].items():
            cell = row[f"delta_{name}"]
            assert (cell == "") == (delta is None), name
            if delta is not None and name != "regime":
                assert float(cell) == delta, name
            for side in ("a", "b"):
                value = step[side].get(name)
                assert (row[f"{side}_{name}"] == "") == (value is None), (side, name)
    markdown = run_fdl(*args, "--format", "markdown")
    lines = markdown.stdout.splitlines()
    assert markdown.returncode == 0 and len(lines) == 2 + len(STEPS)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[:1] + lines[2:])
    assert lines[0].count(" | ") == len(rows[0]) - 1


def test_the_series_compared_is_named_in_the_output(runs: dict[str, Path]) -> None:
    """Of stores holding a train and a test probe, `compare --probe test` said "A: lazy.h5 / B: rich.h5" and
    nothing else named the probe compared; nor did `--json`'s records (`--format csv`'s `a_`, `b_` columns) carry
    `probe` and `layer`, which every record of a store of several series carries (DESIGN.md). `--probe train
    --probe-b test` of one store printed "A: rich.h5 / B: rich.h5" over a verdict that one of them is richer."""
    said = run_fdl("compare", runs["lazy"], runs["rich"], "--probe", "test").stderr
    assert f"A: {runs['lazy']} (probe test, layer 2:input)\nB: {runs['rich']} (probe test, layer 2:input)\n" in said
    said = run_fdl("compare", runs["rich"], runs["rich"], "--probe", "train", "--probe-b", "test", "--no-overlap").stderr
    assert f"A: {runs['rich']} (probe train, layer 2:input)\nB: {runs['rich']} (probe test, layer 2:input)\n" in said
    data = json.loads(run_fdl("compare", runs["lazy"], runs["rich"], "--probe", "test", "--json").stdout)
    for step in data["steps"]:
        assert (step["a"]["probe"], step["a"]["layer"], step["b"]["probe"]) == ("test", "2:input", "test")
    rows = list(csv.DictReader(io.StringIO(run_fdl("compare", runs["rich"], runs["rich"], "--probe", "train",
                                                   "--probe-b", "test", "--no-overlap", "--format", "csv").stdout)))
    assert len(rows) == len(STEPS)
    assert {(row["a_probe"], row["a_layer"], row["b_probe"], row["b_layer"]) for row in rows} == {
        ("train", "2:input", "test", "2:input")}


def test_runs_of_other_anchor_sizes_are_refused_with_the_way_to_compare_their_fields(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """An ablation re-analysed with `--anchor-size 20` against a run of the default 60 anchors: the refusal of
    the overlap said "compare runs analysed with the same probe and --anchor-size" alone, not that
    `--no-overlap` compares every field all the same (the refusal of other probes says it)."""
    fewer = tmp_path / "anchors.h5"
    done = run_fdl("analyze", runs["rich"].parent / "rich", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                   '{"hidden": 16}', "--probe", f"train={runs['rich'].parent / 'train.npz'}", "--anchor-size", "20",
                   "--steps", "0,40", "--out", fewer)
    assert done.returncode == 0, done.stderr
    refused = run_fdl("compare", runs["rich"], fewer, "--probe", "train")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    said = " ".join(refused.stderr.split())  # each run's count, by its store (tests/test_s40_docs_audit.py)
    assert f"(A) holds them on 60 anchor points, {fewer} (B) on 20" in said and "--no-overlap" in said
    fields = run_fdl("compare", runs["rich"], fewer, "--probe", "train", "--no-overlap", "--json")
    assert fields.returncode == 0, fields.stderr
    assert [s["step_a"] for s in json.loads(fields.stdout)["steps"]] == [0, 40]
