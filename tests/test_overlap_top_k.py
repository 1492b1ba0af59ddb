"""The eigenspace overlaps are O_C whatever --top-k says (SPEC §5: k = C).

`--top-k` chose how many eigenfunctions are stored, and the overlaps were taken over the stored ones
only: with --top-k below C (or the default 64 below C, as for CIFAR-100 or the mod-97 task) the
records held O_K, not SPEC's O_C, and the regime classifier read it as the top-C overlap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from fdl_cli import report
from tests.test_analyze import fdl

C = 4


def _run(tmp_path: Path, seed: int = 0) -> tuple[Path, Path, dict[int, np.ndarray]]:
    """Three checkpoints of a 6-16-C MLP (moved at random) and a probe of 40; their float64 features.
    Another `seed` is another training (its own folder) on the same probe."""
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build():\n"
        f"    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, {C}))\n"
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=rng.integers(0, C, 40))
    folder = tmp_path / ("ckpts" if seed == 0 else f"ckpts{seed}")
    folder.mkdir()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))
    features = {}
    for step in (0, 1, 2):
        if step:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.4 * torch.randn_like(p))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
        with torch.no_grad():
            features[step] = torch.tanh(model[0](torch.from_numpy(x))).double().numpy()
    return folder, tmp_path / "model.py", features


def _top_c(features: np.ndarray) -> np.ndarray:
    """The top-C eigenfunctions' values on the probe: √n × the left singular vectors of F (uncentered)."""
    left, _, _ = np.linalg.svd(features, full_matrices=False)
    return left[:, :C]


def test_overlaps_are_top_C_whatever_top_k(tmp_path: Path) -> None:
    folder, model, features = _run(tmp_path)
    stores = {}
    for top_k in ("2", "64"):
        out = tmp_path / f"k{top_k}.h5"
        assert fdl("analyze", folder, "--model", f"{model}:build", "--probe", tmp_path / "probe.npz",
                   "--out", out, "--top-k", top_k).code == 0
        stores[top_k] = out
    with h5py.File(stores["2"], "r") as small, h5py.File(stores["64"], "r") as full:
        a, b = small["trajectories/probe/2:input"], full["trajectories/probe/2:input"]
        for field in ("overlap_init", "overlap_prev", "regime", "cka_init"):
            np.testing.assert_array_equal(a[field][()], b[field][()], err_msg=field)
        # SPEC §5, independently: mean squared cosine of the principal angles of the top-C spans
        for step, overlap in zip(a["step"][()], a["overlap_init"][()], strict=True):
            expected = float(np.mean(np.cos(subspace_angles(_top_c(features[int(step)]), _top_c(features[0]))) ** 2))
            assert abs(overlap - expected) < 1e-6, (step, overlap, expected)
        assert a["overlap_init"][2] < 0.99  # the features did move: the check is not vacuous
        # the stored eigenfunctions hold at least the top C (and --top-k's 2 more would be fewer)
        group = small["checkpoints/step_1/probe/2:input"]
        assert group["eigenfunctions"].shape == (40, C)
        assert group["eigenvectors"].shape == (16, C)


def _top(features: np.ndarray, k: int) -> np.ndarray:
    left, _, _ = np.linalg.svd(features, full_matrices=False)
    return left[:, :k]


def _analyze(tmp_path: Path, folder: Path, model: Path, out: Path, *args: str) -> Any:
    return fdl("analyze", folder, "--model", f"{model}:build", "--probe", tmp_path / "probe.npz", "--out", out, *args)


def test_overlap_k_sets_the_overlaps_k_and_what_is_stored(tmp_path: Path) -> None:
    folder, model, features = _run(tmp_path)
    out = tmp_path / "k2.h5"
    assert _analyze(tmp_path, folder, model, out, "--top-k", "1", "--overlap-k", "2").code == 0
    with h5py.File(out, "r") as store:
        table = store["trajectories/probe/2:input"]
        for step, overlap in zip(table["step"][()], table["overlap_init"][()], strict=True):
            angles = subspace_angles(_top(features[int(step)], 2), _top(features[0], 2))
            assert abs(overlap - float(np.mean(np.cos(angles) ** 2))) < 1e-6, (step, overlap)
        assert table["overlap_init"][2] < 0.99
        group = store["checkpoints/step_1/probe/2:input"]
        assert group["eigenfunctions"].shape == (40, 2)  # max(--top-k 1, --overlap-k 2)
        options = json.loads(store.attrs["provenance"])["options"]
    assert options["overlap_k"] == 2 and options["top_k"] == 1
    # the same k as C by default: nothing recorded, so stores without the key stay resumable
    default = tmp_path / "default.h5"
    assert _analyze(tmp_path, folder, model, default, "--overlap-k", str(C)).code == 0
    with h5py.File(default, "r") as store:
        assert "overlap_k" not in json.loads(store.attrs["provenance"])["options"]
    # compare takes run A's k: against another training on the same probe, O_2 one way and O_C the other
    _, _, other_features = _run(tmp_path, seed=1)
    other = tmp_path / "other.h5"
    assert _analyze(tmp_path, tmp_path / "ckpts1", model, other).code == 0
    # (the other way, C is asked for but A·B is bounded by the 2 columns `out` stores, and says so)
    full = tmp_path / "full.h5"  # the first training with every column: O_C against the other
    assert _analyze(tmp_path, folder, model, full).code == 0
    for first, second, k, label in ((out, other, 2, "top 2, run A's --overlap-k"), (other, out, 2, "top 2"),
                                    (full, other, C, "top C")):
        with report.opened_run(first) as run_a, report.opened_run(second) as run_b:
            comparison = report.compare_runs(run_a, run_b, overlap_steps=None)
        assert comparison.overlap_label == label
        fewer = [note for note in comparison.notes if note.startswith("the cross-run overlap compares the top")]
        assert fewer == ([f"the cross-run overlap compares the top 2 eigenfunctions, not the top {C}: run B stores 2 "
                          "a checkpoint (its --top-k / --overlap-k, or its rank)"] if first == other else [])
        a_features, b_features = (other_features, features) if first == other else (features, other_features)
        assert [step.overlap_k for step in comparison.steps] == [k] * 3
        assert {row["overlap_k"] for row in json.loads(report.comparison_to_json(comparison))["steps"]} == {k}
        for step in comparison.steps:
            angles = subspace_angles(_top(a_features[step.match.step_a], k), _top(b_features[step.match.step_b], k))
            assert step.overlap == pytest.approx(float(np.mean(np.cos(angles) ** 2)), abs=1e-6)
        assert min(step.overlap for step in comparison.steps) < 0.99  # two trainings: not vacuous
    shown = fdl("compare", out, other)
    assert shown.code == 0 and "eigenspace overlap A·B (top 2, run A's --overlap-k): min" in shown.stderr
    assert "eigenspace overlap A·B (top C): min" in fdl("compare", full, other).stderr


def test_a_store_of_top_k_below_C_written_before_overlap_k_is_not_mixed(tmp_path: Path) -> None:
    """A store analysed when the overlaps were taken over --top-k's columns (here 2 < C = 4) records no
    overlap_k; resuming it now would store O_C beside its O_2. The resume refuses and names the fix."""
    folder, model, _ = _run(tmp_path)
    out = tmp_path / "old.h5"
    assert _analyze(tmp_path, folder, model, out, "--top-k", "2", "--overlap-k", "2", "--steps", "0,1").code == 0
    with h5py.File(out, "r") as store:  # k = min(top_k, C): recorded as the earlier fdl did, not at all
        assert "overlap_k" not in json.loads(store.attrs["provenance"])["options"]
    before = out.read_bytes()
    refused = _analyze(tmp_path, folder, model, out, "--top-k", "2")
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert "options.overlap_k: absent (store) vs 4 (this run)" in refused.stderr
    assert "pass --overlap-k 2 to go on as it was analysed" in refused.stderr
    assert "the store records no overlap_k: they were taken over --top-k" in " ".join(refused.stderr.split())
    assert out.read_bytes() == before
    resumed = _analyze(tmp_path, folder, model, out, "--top-k", "2", "--overlap-k", "2")
    assert resumed.code == 0, resumed.stderr
    with h5py.File(out, "r") as store:
        assert list(store["trajectories/probe/2:input"]["step"][()]) == [0, 1, 2]


def test_overlap_k_in_the_manifest(tmp_path: Path) -> None:
    folder, model, _ = _run(tmp_path)
    (folder / "model.py").write_text(Path(model).read_text())  # an fdl.toml names its folder's model code
    (folder / "fdl.toml").write_text(f'model = "model.py:build"\nprobe = "{tmp_path / "probe.npz"}"\noverlap_k = 3\n')
    out = tmp_path / "m.h5"
    assert fdl("analyze", folder, "--out", out).code == 0
    with h5py.File(out, "r") as store:
        assert json.loads(store.attrs["provenance"])["options"]["overlap_k"] == 3


def test_compare_says_when_the_anchors_bound_the_overlaps_k(tmp_path: Path) -> None:
    folder, model, _ = _run(tmp_path)
    _run(tmp_path, seed=1)
    stores = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for source, out in zip((folder, tmp_path / "ckpts1"), stores, strict=True):
        assert _analyze(tmp_path, source, model, out, "--anchor-size", "3").code == 0
    with report.opened_run(stores[0]) as run_a, report.opened_run(stores[1]) as run_b:
        comparison = report.compare_runs(run_a, run_b, overlap_steps=None)
    # the top C span all 3 anchor points on both sides: the overlap would be 1 whatever the runs did,
    # so it is not measured, and the note says why (it compared "the top 3" and found them equal)
    assert all(step.overlap is None and step.overlap_k is None for step in comparison.steps)
    assert ("the cross-run overlap is not measured: the stores hold the eigenfunctions on 3 distinct anchor points, "
            f"which the top {C} span whole (the overlap would be 1 whatever the features do); analyse with a larger "
            "--anchor-size") in comparison.notes
