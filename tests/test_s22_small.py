"""Session 22's small fixes (tiny MLPs on the CPU). Each test failed before its fix.

- A checkpoint file was hashed twice in one run where the take-in of a killed torchrun job's part stores
  (`sharding._take_in_rank_parts`) had hashed it to check it unchanged and the run then analysed it (the
  checkpoint the part's block was compared with, when not stored): the take-in hashes through `_sha256_once`
  and a load reuses what this run found for the file at the same signature. A part's checkpoint compared
  across one its rank found corrupt, refreshed once that one is analysed, was hashed a third time, and the
  one before it a second: what this run analysed is recorded for the refresh too.
- CKA with features constant over the anchor points (a dead ReLU layer: zero features; constant ones) is 0/0:
  it was stored as 1.0 when both checkpoints' were constant and 0.0 when one was (or as rounding noise of the
  centering, on the Gram route and in `spectral.cka`); now null, with a warning naming the steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import checkpoints
from fdl_cli.spectral import cka
from tests.test_distributed import _part_with
from tests.test_prev_walkback import _analyze, _assert_same, _make_run, _stored, _walked_over_30
from tests.test_reliability_inputs import MODEL, _weights
from tests.test_s19_store import _records, fdl
from tests.test_s20_drop import _hashed

torch.set_num_threads(1)


# ------------------------------------------------------------- each file hashed once a run: part stores taken in


def _part_after_20(folder: Path, source: Path, part: Path, steps: tuple[int, ...]) -> None:
    """The part store a killed torchrun job's rank left: `source`'s `steps`, its block compared with step 20."""
    from fdl_cli.sharding import _write_rank_part_origin

    _part_with(source, part, steps)
    sha = {step: checkpoints.sha256_file(folder / f"step_{step}.safetensors") for step in (0, 20)}
    _write_rank_part_origin(part, (0, sha[0]), (20, sha[20]))


def test_a_part_store_taken_in_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchrun job killed with rank 0's block (10, 20) not stored and rank 1's (30 - 60) in its part, compared
    with step 20's file: the resume checks step 20's file unchanged to take the part in, then analyses 10 and 20.
    Step 20's file was read twice for its hash."""
    folder = _make_run(tmp_path / "run")
    full = tmp_path / "full.h5"
    _analyze(folder, full)
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _analyze(folder, out, steps=(0,))
    _part_after_20(folder, full, part, (30, 40, 50, 60))
    hashed = _hashed(monkeypatch)
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [10, 20] and not part.exists()
    assert sorted(hashed) == sorted(set(hashed)), " ".join(hashed)
    assert "step_20.safetensors" in hashed, hashed
    _assert_same(_stored(full), _stored(out))


def test_a_part_checkpoint_refreshed_across_a_fixed_file_hashes_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 found step 30 corrupt and compared its block (40 - 60) with step 20; 30 is fixed since. The resume
    takes the part in, analyses 10 - 30 and refreshes 40 to compare with 30: 40 was hashed by the take-in and
    again by the refresh, 30 by its analysis and again by the refresh."""
    folder = _make_run(tmp_path / "run")
    walked = _walked_over_30(folder, tmp_path / "walked.h5")  # 40 compared with 20, as rank 1 computed it
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _analyze(folder, out, steps=(0,))
    _part_after_20(folder, walked, part, (40, 50, 60))
    hashed = _hashed(monkeypatch)
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [10, 20, 30] and summary.refreshed == [40], summary
    assert sorted(hashed) == sorted(set(hashed)), " ".join(hashed)
    assert {"step_30.safetensors", "step_40.safetensors"} <= set(hashed), hashed
    fresh = tmp_path / "fresh.h5"
    _analyze(folder, fresh)
    _assert_same(_stored(fresh), _stored(out))


# ------------------------------------------------------------------ CKA of features constant on the anchors: null


def test_cka_of_a_constant_matrix_is_undefined() -> None:
    """0/0 whichever side is constant, the two of them too; a constant that the mean does not reproduce
    exactly (rounding of the centering) as well, on both of `cka`'s routes (p ≤ m and the m×m Grams)."""
    rng = np.random.default_rng(0)
    for width in (6, 80):  # p < m = 50, p > m
        moving = rng.normal(size=(50, width))
        rows = np.tile(rng.normal(size=(1, width)), (50, 1))
        assert np.abs(rows - rows.mean(axis=0)).max() > 0  # the centering leaves rounding
        for constant in (np.zeros((50, width)), rows, np.full((50, width), 0.1)):
            assert cka(constant, moving) is None and cka(moving, constant) is None
            assert cka(constant, constant) is None and cka(constant, rows) is None
        assert cka(moving, moving) == pytest.approx(1.0, abs=1e-12)
        assert 0.0 < cka(moving + 1e-3 * rows, rng.normal(size=(50, width))) < 1.0


def _dead(index: int, how: str, hidden: int) -> dict[str, torch.Tensor]:
    """`_weights(index)` with the ReLU layer dead for every input: zero features, or constant ones."""
    state = _weights(index, hidden=hidden)
    if how == "zero":
        state["0.bias"] = torch.full_like(state["0.bias"], -100.0)
    else:
        state["0.weight"] = torch.zeros_like(state["0.weight"])
        state["0.bias"] = torch.linspace(0.1, 0.9, hidden)
    return state


@pytest.mark.parametrize("hidden", [8, 40], ids=["p<m", "p>m"])
def test_cka_with_a_dead_layer_is_null_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hidden: int
) -> None:
    """Steps 10 and 20 have a dead ReLU layer (zero features, then constant ones), 30 a live one again: CKA with
    10 or 20 was stored as 0.0 (to a live checkpoint) and 1.0 (between the two dead ones), which `classify` reads
    as features that moved, and as features unchanged; with 40 units on 16 anchor points (the m×m Grams) the
    constant features' CKA was the rounding of their centering."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate((0, 10, 20, 30)):
        state = _dead(index, "zero" if step == 10 else "constant", hidden) if step in (10, 20) else _weights(
            index, hidden=hidden)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    out = tmp_path / "run.h5"
    status, _, err = fdl(capsys, "analyze", folder, "--model", MODEL, "--model-kwargs", f'{{"hidden": {hidden}}}',
                         "--probe", probe, "-o", out, "--top-k", "4", "--anchor-size", "16", "--batch-size", "16")
    flat = " ".join(err.split())
    assert status == 0, flat
    records = {r["step"]: r for r in _records(out)}
    assert [(records[s]["cka_init"], records[s]["cka_prev"]) for s in (10, 20)] == [(None, None), (None, None)]
    assert records[30]["cka_prev"] is None  # compared with 20
    assert records[0]["cka_init"] == 1.0 and 0.0 < records[30]["cka_init"] < 1.0
    assert ("probe/2:input: the features are constant over the anchor points (a dead layer?) at steps 10, 20: "
            "CKA with them is 0/0, so cka_init and cka_prev are null there") in flat, flat


def test_a_dead_reference_has_no_cka_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reference's features constant: CKA(F, F) is 0/0 too (it was 1.0, and every later checkpoint's 0.0)."""
    folder = tmp_path / "run"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in _dead(0, "constant", 8).items()}, str(folder / "step_0.safetensors"))
    save_file(_weights(1), str(folder / "step_10.safetensors"))
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    out = tmp_path / "run.h5"
    status, _, err = fdl(capsys, "analyze", folder, "--model", MODEL, "--probe", probe, "-o", out,
                         "--top-k", "4", "--anchor-size", "16", "--batch-size", "16")
    assert status == 0, err
    assert [(r["cka_init"], r["cka_prev"]) for r in _records(out)] == [(None, None), (None, None)]
    assert "at step 0: CKA with them is 0/0" in " ".join(err.split())


# ----------------------------------------------------------- inspect of safetensors: tensors listed by name


def _mixed_dtypes() -> dict[str, torch.Tensor]:
    """A state_dict in its model's order whose modules mix dtypes (a BatchNorm's int64 counter, a float16 head)."""
    return {"features.weight": torch.zeros(4, 3), "features.bias": torch.zeros(4),
            "norm.weight": torch.ones(4), "norm.bias": torch.zeros(4), "norm.running_mean": torch.zeros(4),
            "norm.num_batches_tracked": torch.tensor(7), "head.weight": torch.zeros(2, 4, dtype=torch.float16),
            "head.bias": torch.zeros(2)}


def test_inspect_lists_the_tensors_of_safetensors_by_name_each_module_once(tmp_path: Path) -> None:
    """safetensors stores tensors by dtype size, then name, and loads them in that order: `fdl inspect` listed
    norm.num_batches_tracked (int64) first and head.weight (float16) last, apart from their modules, whose
    names the table showed twice. Now by name, in the table and in --json, for a file and for a folder's shards;
    a torch.save file keeps its writer's order (the model's)."""
    from tests.test_analyze import fdl as run_fdl

    state = _mixed_dtypes()
    path = tmp_path / "step_5.safetensors"
    save_file(state, str(path))
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    names = sorted(state)
    save_file({k: state[k] for k in names[:4]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[4:]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        '{"metadata": {}, "weight_map": {' + ", ".join(
            f'"{k}": "model-0000{1 if i < 4 else 2}-of-00002.safetensors"' for i, k in enumerate(names)) + "}}")
    torch.save(state, tmp_path / "step_5.pt")
    for checkpoint, order in ((path, names), (folder, names), (tmp_path / "step_5.pt", list(state))):
        done = run_fdl("inspect", checkpoint, "--json")
        assert done.code == 0 and "note: no model was given" in done.stderr, done.stderr
        assert [row["name"] for row in json.loads(done.stdout)["tensors"]] == order, checkpoint
    shown = run_fdl("inspect", path)
    modules = [line.split("│")[1].strip() for line in shown.stderr.splitlines() if line.startswith("│")]
    assert [name for name in modules if name] == ["features", "head", "norm"], shown.stderr
