"""The centered feature spectrum keeps every eigenvalue above SPEC §2's cut ρ_1·1e-10.

The cancellation floor (CANCELLATION_RTOL × the trace about the sums' shift) is there to call a
spectrum that is rounding noise of centering (constant features) degenerate, rank 0. It used to cut
every eigenvalue below it as well, and that floor can lie far above ρ_1·1e-10:

- Gram route (p > n): the kept features are never shifted, so the floor is 1e-12 × the raw mean
  square of the features. ReLU features + 1000 on 40 probe points put it at 5.8e-6·ρ_1 and dropped a
  resolved eigenvalue (4.5e-6·ρ_1) that carried 2 % of the target energy (rank 38 against 39,
  k95_quality 31 against 35): explicit centering of the kept features has no such cancellation.
- moments route without a shift point (every column's mean under 4 standard deviations): the trace
  about 0 can be ~200 ρ_1, and a resolved eigenvalue at 1.7e-10·ρ_1 was dropped.

Constant features stay degenerate (rank 0) on both routes.
"""

from __future__ import annotations

import numpy as np
import pytest

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import RANK_RTOL, measure


def _moments(features: np.ndarray, outputs: np.ndarray, labels: np.ndarray, *, keep: bool, batch: int = 16):
    acc = MomentAccumulator(task="classes", keep_features=keep)
    for start in range(0, len(features), batch):
        stop = start + batch
        acc.update(features[start:stop], outputs[start:stop], labels[start:stop])
    return acc.moments()


def _reference_rank(features: np.ndarray) -> tuple[int, np.ndarray]:
    centered = features.astype(np.float64) - features.astype(np.float64).mean(0)
    values = np.linalg.svd(centered, compute_uv=False) ** 2 / len(features)
    return int(np.sum(values > values[0] * RANK_RTOL)), values


def test_gram_route_keeps_small_eigenvalues_of_offset_features() -> None:
    rng = np.random.default_rng(0)
    n, p = 40, 64
    white = rng.standard_normal((n, 10))
    white -= white.mean(0)
    white = np.linalg.qr(white)[0] * np.sqrt(n)
    scales = np.ones(10)
    scales[-1] = 5e-3  # variance 2.5e-5: above SPEC's cut, under the old floor 1e-12·1000²·p
    directions = np.linalg.qr(rng.standard_normal((p, 10)))[0]
    features = (1000.0 + (white * scales) @ directions.T).astype(np.float32)
    outputs = rng.standard_normal((n, 3)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    rank, values = _reference_rank(features)
    # the premise: a resolved eigenvalue lies between SPEC's cut and the old floor
    floor = 1e-12 * float(np.sum(features.astype(np.float64) ** 2)) / n
    assert np.any((values > values[0] * RANK_RTOL) & (values <= floor))
    result = measure(_moments(features, outputs, labels, keep=True), center=True)
    assert result.spectrum.route == "gram"
    assert result.scalars["rank"] == rank
    np.testing.assert_allclose(result.spectrum.eigenvalues, values[:rank], rtol=1e-6, atol=1e-12 * values[0])


def test_moments_route_without_shift_keeps_eigenvalues_above_the_rank_cut() -> None:
    rng = np.random.default_rng(0)
    n, p = 1000, 16
    white = rng.standard_normal((n, p))
    white -= white.mean(0)
    white = np.linalg.qr(white)[0] * np.sqrt(n)
    scales = np.ones(p)
    scales[-1] = 1.3e-5  # variance 1.7e-10 against 1
    # a rotation spreading each direction evenly over the columns (Hadamard): every column's std is ~0.97
    rotation = np.array([[1.0]])
    while rotation.shape[0] < p:
        rotation = np.block([[rotation, rotation], [rotation, -rotation]])
    rotation /= np.sqrt(p)
    features = (3.5 + (white * scales) @ rotation.T).astype(np.float32)  # mean 3.6 std: no shift point
    outputs = rng.standard_normal((n, 3)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    rank, values = _reference_rank(features)
    assert rank == p
    moments = _moments(features, outputs, labels, keep=False, batch=250)
    assert moments.shift_f is None
    result = measure(moments, center=True)
    assert result.scalars["rank"] == rank
    # centering about 0 leaves an absolute error ~eps × the trace about 0 (~3e-14 here)
    np.testing.assert_allclose(result.spectrum.eigenvalues, values, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("keep", [True, False])
def test_constant_features_stay_rank_zero_when_centered(keep: bool) -> None:
    rng = np.random.default_rng(1)
    n, p = 40, 64 if keep else 16
    features = np.tile((rng.standard_normal(p) * 1000.0).astype(np.float32), (n, 1))
    outputs = rng.standard_normal((n, 3)).astype(np.float32)
    result = measure(_moments(features, outputs, rng.integers(0, 3, n), keep=keep), center=True)
    assert result.scalars["rank"] == 0
    assert result.scalars["d_lr"] == 1.0
