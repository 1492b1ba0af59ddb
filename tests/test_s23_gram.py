"""Session 23: the Gram route (p > n) keeps the digits of features far from 0 in its cross terms.

The kept features are never shifted; the sums beside them (Σφ, Σφŷᵀ, Σφyᵀ, the class sums) were taken about 0,
so the centered cross terms F_cᵀŶ_c/n = Σφŷᵀ/n − μŷ̄ᵀ lost eps·|mean|/std (D_LR, dlr_alignment, Q̂ and Q* under
`--center`, Π(C), their effective dimensions) and NC1, from Σ(F u)² − Σ_c n_c(μ_c·u)², eps·(mean/std)², or was
None from a mean of ~10⁶ std on (its Σ_B floor was 1e-12 × the features' mean square about 0). Measured (p = 50,
n = 30, float64 features, against `tests/reference.py` on the features less their first row, a subtraction
checked exact; max relative error, normwise for the arrays), before → after:

    offset / spread        1e2       1e4       1e6       1e8
    d_lr, dlr_alignment    6e-15     3e-13     1e-11     3e-9    → ≤ 1.2e-15
    utility (--center)     1e-14     7e-13     9e-11     1e-8    → ≤ 4.2e-15
    quality (--center)     4e-14     6e-12     8e-10     6e-8    → ≤ 1.5e-14
    pi_star_C (--center)   5e-15     2e-12     1e-10     1e-8    → ≤ 1.1e-15
    nc1                    6e-13     3e-9      None      None    → ≤ 1.2e-15

The Gram route now takes its sums about the first batch's means as the p×p route does (`MomentAccumulator`), its
kept features staying as they are. The uncentered Q̂/Q* of features far from 0 are not improved (nor can they be
in float64: they lose eps·(mean/std)² in any float64 Gram, 1e-6 at 1e4 std; the reference as much, checked against
60-digit mpmath) and the p×p route was already at rounding (same table, p = 20).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import Moments, measure
from tests.reference import reference_measures

N, P, C = 30, 50, 3
ARRAYS_RTOL = 1.5e-13  # normwise, per array; measured ≤ 1.5e-14 after, 6.7e-13 – 6e-8 before (1e4 – 1e8)
SCALARS_RTOL = 5e-14  # measured ≤ 5.4e-15 after (any batching), 9e-14 – 1e-8 before, or NC1 None


def _case(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features of spread ~1 (p = 50 > n = 30), outputs on 4 of their directions, 3 classes that move 3 columns,
    regression targets, and a direction to offset the features along (entries ±0.5 – 1.5)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, P)) * np.linspace(2.0, 0.3, P)
    outputs = x[:, :4] @ rng.normal(size=(4, C)) + 0.1 * rng.normal(size=(N, C))
    labels = np.arange(N) % C
    rng.shuffle(labels)
    x[:, :C] += 2.0 * np.eye(C)[labels]
    targets = outputs @ rng.normal(size=(C, C)) + 0.3 * rng.normal(size=(N, C))
    direction = rng.uniform(0.5, 1.5, size=P) * np.where(rng.random(P) < 0.5, -1.0, 1.0)
    return x, outputs, labels, targets, direction


def _moments(features: np.ndarray, outputs: np.ndarray, y: np.ndarray, task: str, *, batch: int,
             as_torch: bool, shards: int = 1) -> Moments:
    parts = []
    for rows in np.array_split(np.arange(N), shards):
        acc = MomentAccumulator(task=task, keep_features=True)
        for start in range(0, len(rows), batch):
            sl = rows[start : start + batch]
            f, o, t = features[sl], outputs[sl], y[sl]
            if as_torch:
                f, o, t = torch.from_numpy(f), torch.from_numpy(o), torch.from_numpy(t)
            acc.update(f, o, t)
        parts.append(acc.moments())
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def _relative(got: object, want: object) -> float:
    if got is None or want is None:
        return 0.0 if got is want else float("inf")
    a, b = np.atleast_1d(np.asarray(got, dtype=float)), np.atleast_1d(np.asarray(want, dtype=float))
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("kind", ["classes", "regression"])
@pytest.mark.parametrize(("batch", "as_torch", "shards"), [(N, False, 1), (7, True, 1), (8, False, 2)],
                         ids=["one-batch", "torch-batches-of-7", "two-shards-merged"])
def test_gram_route_cross_terms_keep_their_digits_far_from_zero(
    kind: str, center: bool, offset: float, batch: int, as_torch: bool, shards: int
) -> None:
    x, outputs, labels, targets, direction = _case(kind)
    features = x + offset * float(np.std(x)) * direction
    exact = features - features[:1]
    assert np.array_equal(exact + features[:1], features)  # the reference's input is the features, exactly shifted
    y = labels if kind == "classes" else targets
    moments = _moments(features, outputs, y, kind, batch=batch, as_torch=as_torch, shards=shards)
    assert moments.features is not None and np.array_equal(moments.features, features)  # kept as they are
    got = measure(moments, center=center)
    assert got.spectrum.route == "gram"
    given = {"labels": labels} if kind == "classes" else {"targets": targets}
    # every field compared here is translation-invariant (centered), so the exactly shifted features give it
    want = reference_measures(exact, outputs, center=True, **given)
    names = ["d_lr", "dlr_alignment", "feature_pr", "nc1"]
    if center:
        names += ["pi_hat_C", "pi_star_C", "eff_dim", "eff_dim_utility", "eff_dim_quality"]
        assert got.rank == want.scalars["rank"]
        assert _relative(got.eigenvalues, want.eigenvalues) <= ARRAYS_RTOL
        assert _relative(got.utility, want.utility) <= ARRAYS_RTOL
        assert _relative(got.quality, want.quality) <= ARRAYS_RTOL
        for tau in ("k90", "k95", "k99"):
            for which in ("quality", "utility"):
                assert got.scalars[f"{tau}_{which}"] == want.scalars[f"{tau}_{which}"], (tau, which)
    assert got.scalars["output_rank"] == want.scalars["output_rank"]
    if kind == "classes":
        assert want.scalars["nc1"] is not None and got.scalars["nc1"] is not None  # was None from 1e6 on
    for name in names:
        assert _relative(got.scalars[name], want.scalars[name]) <= SCALARS_RTOL, (name, got.scalars[name])


def test_gram_route_sums_far_from_zero_are_shifted_and_its_features_kept_as_they_are() -> None:
    x, outputs, labels, _, direction = _case("classes")
    features = x + 1e6 * direction
    moments = _moments(features, outputs, labels, "classes", batch=7, as_torch=True)
    assert moments.shift_f is not None
    np.testing.assert_allclose(moments.shift_f, features[:7].mean(0), rtol=1e-15)
    assert moments.features is not None and np.array_equal(moments.features, features)
    np.testing.assert_allclose(moments.unshifted().sum_fo, features.T @ outputs, rtol=1e-14)


def test_gram_route_near_zero_is_not_shifted() -> None:
    """Features within SHIFT_RATIO std of 0 keep the sums about 0 (the same numbers as before, bit for bit)."""
    x, outputs, labels, _, _ = _case("classes")
    moments = _moments(x, outputs, labels, "classes", batch=N, as_torch=False)
    assert moments.shift_f is None and moments.shift_o is None
    np.testing.assert_array_equal(moments.sum_fo, x.T @ outputs)


def test_kept_features_about_a_shift_merge_with_second_moments() -> None:
    """A shard that kept its features merged with one that summed Σ(φ−a)(φ−a)ᵀ: Σ(φ−a)(φ−a)ᵀ of the kept one is
    taken about its sums' shift (it was Σφφᵀ about 0 beside sums about a), so the merge is the one-pass statistics."""
    x, outputs, labels, _, direction = _case("classes")
    features = x + 1e6 * direction
    kept = MomentAccumulator(task="classes", keep_features=True)
    kept.update(features[:12], outputs[:12], labels[:12])
    summed, whole = MomentAccumulator(task="classes"), MomentAccumulator(task="classes")
    summed.update(features[12:], outputs[12:], labels[12:])
    whole.update(features, outputs, labels)
    merged = kept.moments().merge(summed.moments())
    assert merged.features is None and merged.shift_f is not None
    got, want = measure(merged, center=True), measure(whole.moments(), center=True)
    assert got.rank == want.rank
    assert _relative(got.eigenvalues, want.eigenvalues) <= ARRAYS_RTOL
    for name in ("d_lr", "feature_pr", "nc1", "pi_star_C"):
        assert _relative(got.scalars[name], want.scalars[name]) <= SCALARS_RTOL, name
