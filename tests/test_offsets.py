"""Features and outputs far from zero (a large mean against their spread): the centered measures keep
their digits.

The statistics used to be sums about 0, so every centered quantity (Σφφᵀ/n − μμᵀ, the output
covariance behind D_LR's r_Ŷ, NC1's within-class scatter, the loss against regression targets)
lost eps·(mean/std)² of relative precision: at mean/std ~ 10⁴ a trained-like network's weak output
directions vanished from r_Ŷ and D_LR moved in its second digit (an independent check found
output_rank 4 against 9, d_lr 0.3391 against 0.3302). Large means occur in practice: ReLU features
of a network with large biases, "massive activation" channels of transformers, regression targets
in physical units. The sums are now taken about the first batch's means (`spectral.Moments`).

Each test compares the torch path of `fdl`'s accumulator with the brute-force float64 reference
(explicit centering, n×n eigendecomposition) on float32 features, as a model gives them.
"""

from __future__ import annotations

import numpy as np
import pytest

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import measure

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.reference import reference_measures
except ImportError:  # pragma: no cover
    from reference import reference_measures  # type: ignore[no-redef]

import torch

#: n = 600: two batches of `_moments` (the second summed about the first's means), and the reference's n×n
#: eigendecompositions ~15x cheaper than at 1500; without the shift the same measures lose the same digits
N, P, C = 600, 16, 4


def _probe(offset: float, *, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 features: a spread decaying over 6 decades around a mean of `offset` (per-column
    multiples of it); logits that are a linear readout (plus offset) with weak directions, like a
    trained network's; labels following the strongest directions; regression targets near the
    outputs, with their own offset."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(0, -3, P)  # eigenvalues from 1 down to 1e-6
    base = rng.normal(size=(N, P)) * spread
    means = offset * (1.0 + rng.uniform(size=P))
    features = (base + means).astype(np.float32)
    centered = features.astype(np.float64) - features.astype(np.float64).mean(0)
    readout = rng.normal(size=(P, C)) * np.array([1.0, 0.3, 1e-2, 1e-3])
    logits = (centered @ readout + offset * np.linspace(1.0, 2.0, C)).astype(np.float32)
    labels = np.argmax(centered[:, :C] + 0.3 * rng.normal(size=(N, C)), axis=1)
    targets = logits.astype(np.float64) + 1e-3 * rng.normal(size=(N, C)) + 0.5
    return {"features": features, "outputs": logits, "labels": labels, "targets": targets}


def _moments(probe: dict[str, np.ndarray], task: str):  # noqa: ANN202 - Moments
    accumulator = MomentAccumulator(task=task)
    y = probe["labels"] if task == "classes" else probe["targets"]
    for start in range(0, N, 512):
        stop = min(start + 512, N)
        accumulator.update(
            torch.from_numpy(probe["features"][start:stop]),
            torch.from_numpy(probe["outputs"][start:stop]),
            torch.from_numpy(y[start:stop]),
        )
    return accumulator.moments()


def _reference(probe: dict[str, np.ndarray], task: str, center: bool):  # noqa: ANN202 - Reference
    features, outputs = probe["features"].astype(np.float64), probe["outputs"].astype(np.float64)
    if task == "classes":
        return reference_measures(features, outputs, labels=probe["labels"], center=center)
    return reference_measures(features, outputs, targets=probe["targets"], center=center)


@pytest.mark.parametrize("offset", [1e2, 1e4])
@pytest.mark.parametrize("task", ["classes", "regression"])
def test_centered_measures_keep_their_digits_far_from_zero(offset: float, task: str) -> None:
    probe = _probe(offset)
    moments = _moments(probe, task)
    for center in (False, True):
        got, want = measure(moments, center=center), _reference(probe, task, center)
        for name in ("d_lr", "dlr_alignment", "feature_pr", "nc1", "loss", "r2"):
            if want.scalars[name] is None:
                assert got.scalars[name] is None, name
                continue
            assert got.scalars[name] == pytest.approx(want.scalars[name], rel=1e-8), (name, center)
        assert got.scalars["output_rank"] == want.scalars["output_rank"], center
        if center:
            # every centered eigenvalue, down to 1e-6 of the largest, and the shares of Q̂ and Q*
            assert got.rank == want.scalars["rank"] == P
            np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-8)
            for name in ("eff_dim", "eff_dim_utility", "eff_dim_quality", "pi_hat_C", "pi_star_C"):
                assert got.scalars[name] == pytest.approx(want.scalars[name], rel=1e-7), name
            for name in ("k90_utility", "k95_utility", "k99_utility", "k90_quality", "k95_quality", "k99_quality"):
                assert got.scalars[name] == want.scalars[name], name
        else:
            # the uncentered spectrum is dominated by the mean: its top eigenvalue, to rounding
            assert got.eigenvalues[0] == pytest.approx(want.eigenvalues[0], rel=1e-12)


def test_uncentered_sums_are_recovered_from_the_shifted_ones() -> None:
    """moments.unshifted() gives the plain sums Σφφᵀ, Σφŷᵀ, class sums ... about 0."""
    probe = _probe(1e3, seed=1)
    f, o = probe["features"].astype(np.float64), probe["outputs"].astype(np.float64)
    raw = _moments(probe, "classes").unshifted()
    np.testing.assert_allclose(raw.sum_ff, f.T @ f, rtol=1e-14)
    np.testing.assert_allclose(raw.sum_fo, f.T @ o, rtol=1e-14)
    np.testing.assert_allclose(raw.sum_oo, o.T @ o, rtol=1e-14)
    np.testing.assert_allclose(raw.sum_f, f.sum(0), rtol=1e-14)
    np.testing.assert_allclose(raw.class_sum_f, np.stack([f[probe["labels"] == c].sum(0) for c in range(C)]), rtol=1e-14)
    assert raw.shift_f is None and raw.shift_o is None and raw.shift_y is None


class _Shifted(torch.nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def test_the_anchors_self_norm_behind_cka_keeps_its_digits_far_from_zero() -> None:
    """CKA's self-norm ‖A_cᵀA_c‖_F comes from the pass's anchor sums (no extra m×p×p product); about
    0 it lost eps·(mean/std)² as well (5e-9 relative at mean/std ~ 10², 7e-5 at 10⁴, by the
    independent check)."""
    from fdl_cli.extract import LayerSpec, extract
    from fdl_cli.pipeline import _anchor_self_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, P), torch.nn.Tanh(), _Shifted(1e4), torch.nn.Linear(P, C)).eval()
    x = np.random.default_rng(2).normal(size=(700, 6)).astype(np.float32)
    result = extract(model, [LayerSpec("3", use_input=True)], x, None, task="none", device=torch.device("cpu"),
                     batch_size=128, anchor_size=300)["3:input"]
    anchors = result.anchor_features.astype(np.float64)
    assert anchors.shape == (300, P) and anchors.mean() > 9e3
    centered = anchors - anchors.mean(0)
    want = float(np.linalg.norm(centered.T @ centered))
    assert _anchor_self_norm(result.anchor_moment, result.anchor_features, "float64") == pytest.approx(want, rel=1e-10)
