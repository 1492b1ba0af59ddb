"""The eigenspace overlaps are O_C whatever --top-k says (SPEC §5: k = C).

`--top-k` chose how many eigenfunctions are stored, and the overlaps were taken over the stored ones
only: with --top-k below C (or the default 64 below C, as for CIFAR-100 or the mod-97 task) the
records held O_K, not SPEC's O_C, and the regime classifier read it as the top-C overlap.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.linalg import subspace_angles

from tests.test_analyze import fdl

C = 4


def _run(tmp_path: Path) -> tuple[Path, Path, dict[int, np.ndarray]]:
    """Three checkpoints of a 6-16-C MLP (moved at random) and a probe of 40; their float64 features."""
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build():\n"
        f"    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, {C}))\n"
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=rng.integers(0, C, 40))
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.manual_seed(0)
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
