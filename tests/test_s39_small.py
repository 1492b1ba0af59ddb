"""Small audit findings: D_LR's floor under η < 1 for many classes, k_τ at an exact threshold, and where a
model's keyword arguments came from in the error that rejects them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import Moments, dynamical_low_rank, k_tau, measure


def _collapsed(classes: int) -> Moments:
    """The statistics of collapsed, balanced, isotropic classes: F = Ŷ = one-hot, one sample a class."""
    labels = np.arange(classes)
    onehot = np.eye(classes)
    accumulator = MomentAccumulator(task="classes")
    accumulator.update(onehot, onehot.copy(), labels)
    return accumulator.moments()


def _floor(classes: int, percent: int = 99) -> float:
    """1 − √(⌈η(C−1)⌉/(C−1)), η = percent/100, in integers up to the square root."""
    kept = -(-percent * (classes - 1) // 100)
    return 1.0 - math.sqrt(kept / (classes - 1))


@pytest.mark.parametrize(
    ("classes", "rank", "floor"),
    [(10, 9, 0.0), (100, 99, 0.0), (101, 99, 0.0050126), (200, 198, 0.0025157), (1000, 990, 0.0045147)],
)
def test_collapsed_classes_read_the_floor_of_the_energy_cut_and_zero_under_eta_1(
    classes: int, rank: int, floor: float
) -> None:
    """docs/measures.md: under the default η = 0.99 a flat spectrum of C − 1 output directions keeps
    ⌈η(C−1)⌉ of them, so D_LR of perfectly collapsed classes is 1 − √(⌈η(C−1)⌉/(C−1)), not 0, once C > 100;
    --dlr-energy 1 keeps all of them and reads 0. `measure` (what is stored) at C = 101; the function it calls
    elsewhere, as a full `measure` at C = 1 000 costs ~4 s."""
    moments = _collapsed(classes)
    default = measure(moments).scalars if classes == 101 else vars(dynamical_low_rank(moments))
    assert default["output_rank"] == rank
    assert default["d_lr"] == pytest.approx(_floor(classes), abs=1e-11)
    assert default["d_lr"] == pytest.approx(floor, abs=1e-7)
    every = dynamical_low_rank(moments, energy_share=1.0)
    assert (every.output_rank, every.d_lr) == (classes - 1, pytest.approx(0.0, abs=1e-11))


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
