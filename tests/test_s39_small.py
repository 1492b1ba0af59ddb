"""Small audit findings: k_τ at an exact threshold."""

from __future__ import annotations

import numpy as np

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import Moments, k_tau, measure


def _collapsed(classes: int) -> Moments:
    """The statistics of collapsed, balanced, isotropic classes: F = Ŷ = one-hot, one sample a class."""
    labels = np.arange(classes)
    onehot = np.eye(classes)
    accumulator = MomentAccumulator(task="classes")
    accumulator.update(onehot, onehot.copy(), labels)
    return accumulator.moments()


def test_k_tau_exactly_at_the_threshold_is_not_decided_by_the_rounding_of_the_sums() -> None:
    """C = 20 classes, F = Ŷ = one-hot: every Q̂_k = 1/20, so Π(18) = 0.9 = 0.9·Π(20) exactly and k90 = 18; the
    float64 sums gave Π(18) = 0.9000000000000004 against 0.9·Π(r) = 0.9000000000000005, and k90 = 19."""
    scalars = measure(_collapsed(20)).scalars
    assert (scalars["k90_utility"], scalars["k95_utility"], scalars["k99_utility"]) == (18, 19, 20)
    assert (scalars["k90_quality"], scalars["k95_quality"], scalars["k99_quality"]) == (18, 19, 20)


def test_k_tau_below_the_threshold_by_more_than_rounding_takes_the_next_k() -> None:
    """The tolerance is the sums' rounding (r·eps of Π(r), 6.7e-16 here), not more: 2 ulps short of 0.9 reach it,
    1e-13 short do not."""
    assert k_tau(np.array([0.45, 0.9 - 2.3e-16, 1.0]), 0.9) == 2
    assert k_tau(np.array([0.45, 0.9 - 1e-13, 1.0]), 0.9) == 3
    assert k_tau(np.array([0.3, 0.45 - 1e-13, 0.5]), 0.9) == 3
