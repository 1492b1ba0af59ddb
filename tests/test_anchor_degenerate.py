"""Movement measures that an anchor subset too small cannot carry are not stored as 1.

On m anchor points, centered CKA is 1 whatever the features do when m < 3 (the centered anchors of two
points span one direction), and the eigenspace overlap is 1 whenever both top-k bases span all of R^m
(k ≥ m columns of full rank). A researcher's `--anchor-size 2` (or a tiny probe) turned a run whose
features moved (CKA 0.62 on the full anchors) into a confident "coefficient" verdict. Such values are
now null, analyze says so, and the regime is undetermined with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fdl_cli.regimes import Thresholds, feature_movement
from fdl_cli.spectral import eigenspace_overlap
from fdl_cli.store import StoreReader

try:
    from tests.test_report import run_fdl
except ImportError:  # pragma: no cover
    from test_report import run_fdl  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_checkpoints"
MOVEMENT = ("cka_init", "cka_prev", "overlap_init", "overlap_prev")


def _analyze(tmp_path: Path, anchors: int) -> tuple[dict[int, dict], str]:
    out = tmp_path / f"a{anchors}.h5"
    done = run_fdl("analyze", str(SAMPLE), "--steps", "0,5,100,500,1000", "--anchor-size", str(anchors), "--out", str(out))
    assert done.returncode == 0, done.stderr
    with StoreReader(out) as reader:
        return {record["step"]: record for record in reader.records()}, done.stderr


def test_two_anchor_points_measure_no_movement(tmp_path: Path) -> None:
    records, stderr = _analyze(tmp_path, 2)
    assert sorted(records) == [0, 5, 100, 500, 1000]
    for record in records.values():
        assert all(record[name] is None for name in MOVEMENT), record
        assert record["k95_utility"] is not None  # the rest is measured as ever
    assert "CKA on fewer than 3 is 1 whatever the features do" in stderr
    assert "they are not measured there (null)" in stderr
    out = str(tmp_path / "a2.h5")
    verdict = run_fdl("classify", out, "--json")
    assert verdict.returncode == 0, verdict.stderr
    run = json.loads(verdict.stdout)
    assert run["regime"] == "undetermined"  # it said "coefficient: no checkpoint after the reference moved"
    assert "anchor subset too small" in run["evidence"]["rule"]
    expected = run_fdl("classify", out, "--expect", "coefficient")
    assert expected.returncode == 3


def test_anchors_fewer_than_k_keep_cka_and_drop_the_overlaps(tmp_path: Path) -> None:
    small, _ = _analyze(tmp_path, 5)  # 5 points, k = C = 10
    full, _ = _analyze(tmp_path, 4096)
    for step, record in small.items():
        assert record["overlap_init"] is None and record["overlap_prev"] is None
        assert record["cka_init"] is not None
        assert full[step]["overlap_init"] is not None
    assert small[1000]["cka_init"] < 0.99  # the features moved, and CKA on 5 points says so
    verdict = json.loads(run_fdl("classify", str(tmp_path / "a5.h5"), "--json").stdout)
    assert verdict["regime"] == json.loads(run_fdl("classify", str(tmp_path / "a4096.h5"), "--json").stdout)["regime"]


def test_overlap_of_bases_spanning_every_anchor_point_is_null() -> None:
    rng = np.random.default_rng(0)
    m = 6
    a, b = rng.normal(size=(m, 8)), rng.normal(size=(m, 8))
    assert eigenspace_overlap(a, b, k=8) is None  # both span R^6: 1 whatever a and b are
    assert eigenspace_overlap(a, b, k=6) is None
    partial = eigenspace_overlap(a, b, k=3)  # 3 of 6 dimensions: a measurement
    assert partial is not None and 0.0 < partial < 1.0
    low = rng.normal(size=(m, 2)) @ rng.normal(size=(2, 8))  # 8 columns spanning 2 dimensions
    value = eigenspace_overlap(low, low.copy(), k=8)
    assert value is not None and abs(value - 1.0) < 1e-12
    one_side = eigenspace_overlap(a, low, k=8)  # R^6 against a plane: the plane lies inside it
    assert one_side is not None and abs(one_side - 2 / 6) < 1e-12


def test_null_movement_names_the_anchor_subset() -> None:
    movement, reason = feature_movement({"cka_init": None, "overlap_init": None}, Thresholds())
    assert movement == "unknown"
    assert "--anchor-size" in reason and "anchor subset too small" in reason


def test_anchor_inputs_that_repeat_measure_no_movement(tmp_path: Path) -> None:
    """64 anchor rows of only 2 distinct inputs (a probe whose first inputs repeat): CKA is 1 and the top-k
    bases span every distinct point, whatever the features do; they were stored as 1, and classify called a
    run whose features moved coefficient (found by the session 13 review)."""
    import shutil

    with np.load(SAMPLE / "probe.npz") as probe:
        x, y = probe["x"].copy(), probe["y"].copy()
    x[:64] = np.where((np.arange(64) % 2 == 0)[:, None], x[0], x[1])
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 1000):
        shutil.copy(SAMPLE / f"step_{step}.safetensors", run)
    np.savez(tmp_path / "probe.npz", x=x, y=y)
    out = tmp_path / "rep.h5"
    done = run_fdl("analyze", str(run), "--model", f"{SAMPLE / 'model.py'}:build", "--probe", str(tmp_path / "probe.npz"),
                   "--anchor-size", "64", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "hold only 2 distinct ones" in done.stderr, done.stderr
    with StoreReader(out) as reader:
        records = {record["step"]: record for record in reader.records()}
    assert all(records[1000][name] is None for name in MOVEMENT), records[1000]
    assert json.loads(run_fdl("classify", str(out), "--json").stdout)["regime"] == "undetermined"
    # fdl compare of the run with itself: the cross-run overlap on 2 distinct points is not measured either
    # (it printed "eigenspace overlap A·B: min 1.0000, last 1.0000")
    compared = run_fdl("compare", str(out), str(out), "--json")
    assert compared.returncode == 0, compared.stderr
    data = json.loads(compared.stdout)
    assert [step["step_a"] for step in data["steps"]] == [0, 1000]  # all() over no steps would pass
    assert all(step["overlap"] is None for step in data["steps"])
    assert any("on 2 distinct anchor points" in note for note in data["notes"]), data["notes"]
