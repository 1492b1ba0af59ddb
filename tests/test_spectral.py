"""fdl_cli.spectral against the brute-force reference (tests/reference.py), identities, invariances,
degenerate inputs and a last-layer gradient-descent check of the operator (SPEC.md §2-§6)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdl_cli.errors import NumericalError
from fdl_cli.fields import MEASURE_FIELDS
from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import (
    TORCH_EIGH_MIN_SIZE,
    TORCH_PRODUCT_MIN_SIZE,
    CheckpointMeasures,
    Moments,
    _descending_eigh,
    cka,
    dynamical_low_rank,
    eigenfunctions,
    eigenspace_overlap,
    feature_spectrum,
    measure,
)

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.reference import Reference, one_hot, reference_measures
except ImportError:  # pragma: no cover
    from reference import Reference, one_hot, reference_measures  # type: ignore[no-redef]

RTOL = 1e-8
SHARE_ATOL = 1e-12  # shares / cumulative shares in [0, 1] that are 0 in exact arithmetic
N_CLASSES = 4


# ------------------------------------------------------------------------------------------- data


def stats(
    features: np.ndarray,
    outputs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    keep_features: bool = False,
    batch: int = 0,
) -> Moments:
    task = "classes" if labels is not None else "regression" if targets is not None else "none"
    acc = MomentAccumulator(task=task, keep_features=keep_features)
    y = labels if labels is not None else targets
    step = batch or len(features)
    for start in range(0, len(features), step):
        sl = slice(start, start + step)
        acc.update(features[sl], outputs[sl], None if y is None else y[sl])
    return acc.moments()


def make_case(kind: str, seed: int = 0, *, n: int = 48, p: int = 10) -> dict[str, np.ndarray]:
    """A fresh probe (features, outputs, labels or targets) of the given kind."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % N_CLASSES
    rng.shuffle(labels)
    if kind == "random":
        features = rng.normal(size=(n, p)) * np.linspace(2.0, 0.3, p) + 0.5
    elif kind == "lowrank":
        features = rng.normal(size=(n, 3)) @ rng.normal(size=(3, p)) + 0.3
    elif kind == "collapsed":
        features = one_hot(labels, N_CLASSES) @ (2.0 * rng.normal(size=(N_CLASSES, p)))
    elif kind == "regression":
        features = rng.normal(size=(n, p)) * np.linspace(1.5, 0.5, p)
    else:
        raise ValueError(kind)
    weights = rng.normal(size=(p, N_CLASSES))
    outputs = features @ weights + rng.normal(size=N_CLASSES) + 0.1 * rng.normal(size=(n, N_CLASSES))
    case = {"features": features, "outputs": outputs}
    if kind == "regression":
        case["targets"] = features @ rng.normal(size=(p, N_CLASSES)) + 0.3 * rng.normal(size=(n, N_CLASSES))
    else:
        case["labels"] = labels
    return case


def assert_scalars_match(scalars: dict, expected: dict, *, atol: float = SHARE_ATOL) -> None:
    for name, want in expected.items():
        got = scalars[name]
        if want is None or isinstance(want, (int, np.integer)) and not isinstance(want, bool):
            assert got == want, f"{name}: {got} != {want}"
        else:
            assert got is not None, name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=name)


def assert_matches_reference(
    measures: CheckpointMeasures, ref: Reference, features: np.ndarray, *, vectors: bool = True
) -> None:
    assert measures.rank == ref.eigenvalues.size
    np.testing.assert_allclose(measures.eigenvalues, ref.eigenvalues, rtol=RTOL, atol=0)
    if vectors:
        np.testing.assert_allclose(measures.spectrum.eigenvectors, ref.eigenvectors, rtol=RTOL, atol=1e-10)
        values = eigenfunctions(features, measures.spectrum)
        np.testing.assert_allclose(values, ref.eigenfunctions, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(measures.utility, ref.utility, rtol=RTOL, atol=SHARE_ATOL)
    np.testing.assert_allclose(measures.pi_hat, np.cumsum(ref.utility), rtol=RTOL, atol=SHARE_ATOL)
    if ref.quality is None:
        assert measures.quality is None and measures.pi_star is None
    else:
        assert measures.quality is not None and measures.pi_star is not None
        np.testing.assert_allclose(measures.quality, ref.quality, rtol=RTOL, atol=SHARE_ATOL)
        np.testing.assert_allclose(measures.pi_star, np.cumsum(ref.quality), rtol=RTOL, atol=SHARE_ATOL)
    assert_scalars_match(measures.scalars, ref.scalars, atol=1e-10)


def assert_no_nan(measures: CheckpointMeasures) -> None:
    for name, value in measures.scalars.items():
        assert value is None or math.isfinite(value), f"{name} = {value}"
    arrays = [measures.eigenvalues, measures.eigenvectors, measures.utility, measures.pi_hat]
    arrays += [a for a in (measures.quality, measures.pi_star) if a is not None]
    for array in arrays:
        assert np.all(np.isfinite(array))


# --------------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("kind", ["random", "lowrank", "collapsed", "regression"])
def test_every_measure_matches_brute_force(kind: str, center: bool) -> None:
    case = make_case(kind, seed=1)
    y = {k: case[k] for k in ("labels", "targets") if k in case}
    got = measure(stats(case["features"], case["outputs"], **y), center=center)
    ref = reference_measures(case["features"], case["outputs"], center=center, **y)
    assert_matches_reference(got, ref, case["features"])
    assert set(got.scalars) | {"cka_init", "cka_prev", "overlap_init", "overlap_prev", "param_norm",
                               "param_dist_init", "regime", "prev_step"} == set(MEASURE_FIELDS)


@pytest.mark.parametrize("center", [False, True])
def test_quantities_are_not_trivial_on_the_random_case(center: bool) -> None:
    """Guards the reference comparison against comparing two constant answers."""
    case = make_case("random", seed=1)
    got = measure(stats(case["features"], case["outputs"], labels=case["labels"]), center=center)
    assert got.rank == 10
    assert 0.05 < got.scalars["d_lr"] < 0.95
    assert 1 < got.scalars["k90_utility"] <= 10
    assert 0 < got.scalars["nc1"] and 0 < got.scalars["loss"]
    assert 0.0 < got.scalars["pi_star_C"] < 1.0


@pytest.mark.parametrize("dlr_energy", [0.5, 0.9, 1.0])
def test_dlr_energy_share_matches_brute_force(dlr_energy: float) -> None:
    case = make_case("random", seed=2)
    got = dynamical_low_rank(stats(case["features"], case["outputs"]), energy_share=dlr_energy)
    ref = reference_measures(case["features"], case["outputs"], dlr_energy=dlr_energy).scalars
    d, rank, share, pr = (ref[k] for k in ("d_lr", "output_rank", "dlr_alignment", "feature_pr"))
    assert got.output_rank == rank
    np.testing.assert_allclose([got.d_lr, got.alignment, got.participation_ratio], [d, share, pr], rtol=RTOL)


@pytest.mark.parametrize("seed", range(3, 11))
def test_dlr_strict_span_ignores_exactly_redundant_outputs(seed: int) -> None:
    """η = 1 keeps directions with s_i > 1e-10 s_1; an output that is the sum of two others adds none."""
    case = make_case("random", seed=seed)
    outputs = case["outputs"][:, :3].copy()
    outputs = np.concatenate([outputs, outputs[:, :1] + outputs[:, 1:2]], axis=1)
    got = dynamical_low_rank(stats(case["features"], outputs), energy_share=1.0)
    ref = reference_measures(case["features"], outputs, dlr_energy=1.0).scalars
    assert ref["output_rank"] == 3
    assert got.output_rank == 3
    np.testing.assert_allclose(got.d_lr, ref["d_lr"], rtol=RTOL)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("kind", ["random", "lowrank"])
def test_gram_route_when_p_exceeds_n(kind: str, center: bool) -> None:
    case = make_case(kind, seed=4, n=20, p=40)
    gram = measure(stats(case["features"], case["outputs"], labels=case["labels"], keep_features=True),
                   center=center)
    moments = measure(stats(case["features"], case["outputs"], labels=case["labels"]), center=center)
    assert gram.spectrum.route == "gram" and moments.spectrum.route == "moments"
    ref = reference_measures(case["features"], case["outputs"], labels=case["labels"], center=center)
    assert_matches_reference(gram, ref, case["features"])
    # the moments route (p×p, rank ≤ n ≪ p) loses relative accuracy on the trailing eigenvectors only
    assert_matches_reference(moments, ref, case["features"], vectors=False)


@pytest.mark.parametrize("center", [False, True])
def test_gram_route_forms_one_n_by_n_gram(center: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gram route's spectrum hands D_LR its centered Gram's trace and norm: the participation
    ratio and D_LR are those `dynamical_low_rank` computes on its own, bit for bit, and its own
    n×n product is not formed again."""
    import fdl_cli.spectral as spectral

    case = make_case("random", seed=9, n=24, p=50)
    moments = stats(case["features"], case["outputs"], labels=case["labels"], keep_features=True)
    alone = dynamical_low_rank(moments)
    spectrum = feature_spectrum(moments, center=center)
    assert spectrum.route == "gram" and spectrum.covariance_norms is not None
    assert dynamical_low_rank(moments, covariance_norms=spectrum.covariance_norms) == alone

    def formed_again(_moments: Moments) -> tuple[float, float]:
        raise AssertionError("the centered n×n Gram was formed a second time")

    monkeypatch.setattr(spectral, "_centered_covariance_norms", formed_again)
    got = measure(moments, center=center)
    assert got.scalars["feature_pr"] == alone.participation_ratio and got.scalars["d_lr"] == alone.d_lr


@pytest.mark.parametrize("offset", [0.0, 30.0, 1000.0])
def test_gram_route_uncentered_spectrum_of_offset_features(offset: float) -> None:
    """The uncentered Gram FFᵀ/n is built from the centered one (G_c + u1ᵀ + 1uᵀ + ‖μ‖²/n): its
    spectrum matches float64 singular values of F/√n to eps × ρ_1, whatever the mean, and the
    eigenvectors those of the SVD."""
    rng = np.random.default_rng(11)
    n, p = 30, 70
    spread = rng.standard_normal((n, 8)) @ rng.standard_normal((8, p)) + 1e-3 * rng.standard_normal((n, p))
    features = (offset + spread).astype(np.float32)
    outputs = rng.standard_normal((n, 3)).astype(np.float32)
    got = feature_spectrum(stats(features, outputs, keep_features=True), center=False)
    assert got.route == "gram"
    exact = features.astype(np.float64)
    _, singular, right = np.linalg.svd(exact / np.sqrt(n), full_matrices=False)
    values = singular**2
    rank = int(np.sum(values > values[0] * 1e-10))
    assert got.rank == rank
    np.testing.assert_allclose(got.eigenvalues, values[:rank], rtol=1e-9, atol=1e-14 * values[0])
    # the well-separated leading directions agree with the SVD's (up to sign)
    lead = 5
    cosines = np.abs(np.sum(got.eigenvectors[:, :lead] * right[:lead].T, axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-9)


# ------------------------------------------------------------------------------------- identities


@pytest.mark.parametrize("center", [False, True])
def test_utility_sums_to_one_when_outputs_lie_in_the_feature_span(center: bool) -> None:
    case = make_case("random", seed=5)
    outputs = case["features"] @ np.random.default_rng(5).normal(size=(10, 3))
    got = measure(stats(case["features"], outputs), center=center)
    np.testing.assert_allclose(got.utility.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(got.scalars["pi_hat_C"], got.utility[:3].sum(), rtol=1e-12)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("keep_features", [False, True])
def test_eigenfunctions_are_orthonormal_on_the_probe(center: bool, keep_features: bool) -> None:
    case = make_case("lowrank", seed=6, n=12, p=30)
    moments = stats(case["features"], case["outputs"], keep_features=keep_features)
    spectrum = feature_spectrum(moments, center=center)
    values = eigenfunctions(case["features"], spectrum)
    assert values.shape == (12, 3 if center else 4)
    np.testing.assert_allclose(values.T @ values / 12, np.eye(values.shape[1]), atol=1e-10)
    if center:
        np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-10)


def test_sign_convention_largest_entry_positive() -> None:
    case = make_case("random", seed=7)
    for flip in (1.0, -1.0):
        vectors = feature_spectrum(stats(flip * case["features"], case["outputs"])).eigenvectors
        largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
        assert np.all(largest > 0)


def test_dlr_invariant_to_scaling_and_rotation() -> None:
    case = make_case("random", seed=8)
    f, o = case["features"], case["outputs"]
    rotation = np.linalg.qr(np.random.default_rng(8).normal(size=(10, 10)))[0]
    base = dynamical_low_rank(stats(f, o))
    for f2, o2 in ((7.5 * f, o), (f, 0.01 * o), (f @ rotation, o)):
        other = dynamical_low_rank(stats(f2, o2))
        assert other.output_rank == base.output_rank
        np.testing.assert_allclose(
            [other.d_lr, other.alignment, other.participation_ratio],
            [base.d_lr, base.alignment, base.participation_ratio],
            rtol=1e-10,
        )


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_dlr_is_zero_on_collapsed_balanced_isotropic_classes(scale: float) -> None:
    labels = np.arange(40) % 5
    embedding = scale * one_hot(labels, 5)
    got = measure(stats(embedding, embedding.copy(), labels=labels))
    assert got.scalars["output_rank"] == 4
    np.testing.assert_allclose(got.scalars["d_lr"], 0.0, atol=1e-12)
    np.testing.assert_allclose(got.scalars["dlr_alignment"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(got.scalars["feature_pr"], 4.0, rtol=1e-12)
    np.testing.assert_allclose(got.scalars["nc1"], 0.0, atol=1e-12)
    assert got.scalars["accuracy"] == 1.0
    # uncentered: C eigenfunctions (constant + C-1 contrasts) carry everything
    assert got.rank == 5 and got.scalars["k99_quality"] == 5
    np.testing.assert_allclose(got.scalars["pi_star_C"], 1.0, rtol=1e-12)


@pytest.mark.parametrize("seed", [9, 10, 11])
def test_dlr_factorisation(seed: int) -> None:
    case = make_case("random", seed=seed, n=30, p=6)
    got = dynamical_low_rank(stats(case["features"], case["outputs"]))
    np.testing.assert_allclose(
        1.0 - got.d_lr, got.alignment * math.sqrt(got.participation_ratio / got.output_rank), rtol=1e-12
    )


def test_cka_identities() -> None:
    rng = np.random.default_rng(12)
    a = rng.normal(size=(25, 6)) + 3.0
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    assert cka(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cka(a, 4.0 * a @ rotation) == pytest.approx(1.0, abs=1e-12)
    b = rng.normal(size=(25, 40))  # different width, p > m: the Gram branch
    assert cka(a, b) == pytest.approx(cka(a @ rotation * 0.2, b), rel=1e-12)
    assert 0.0 < cka(a, b) < 0.9
    # brute force on the n×n centered Grams
    h = np.eye(25) - 1.0 / 25
    ka, kb = h @ a @ a.T @ h, h @ b @ b.T @ h
    want = np.sum(ka * kb) / (np.linalg.norm(ka) * np.linalg.norm(kb))
    assert cka(a, b) == pytest.approx(want, rel=1e-10)


def test_overlap_identities() -> None:
    case = make_case("random", seed=13)
    spectrum = feature_spectrum(stats(case["features"], case["outputs"]))
    values = eigenfunctions(case["features"], spectrum)
    assert eigenspace_overlap(values, values, k=4) == pytest.approx(1.0, abs=1e-12)
    assert eigenspace_overlap(values, 3.0 * values[:, ::-1], k=10) == pytest.approx(1.0, abs=1e-12)
    other = eigenfunctions(case["features"] ** 2, feature_spectrum(stats(case["features"] ** 2, case["outputs"])))
    # brute force: mean squared cosine of principal angles
    qa, qb = np.linalg.qr(values[:, :3])[0], np.linalg.qr(other[:, :3])[0]
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    assert eigenspace_overlap(values, other, k=3) == pytest.approx(np.mean(cosines**2), rel=1e-10)
    assert eigenspace_overlap(values[:, :0], other, k=3) is None
    # Fewer inputs than k: k vectors on 5 inputs span at most 5 dimensions. Two such subspaces that
    # fill the 5 inputs coincide whatever the features, so the overlap measures nothing there: None
    # (it was 1, which called any run static: tests/test_anchor_degenerate.py). Spanning fewer than the
    # inputs, it is measured, and O(s, s) is 1 (it was d/k before d divided it).
    few = values[:5, :10]
    assert eigenspace_overlap(few, few, k=10) is None
    assert eigenspace_overlap(few, other[:5, :10], k=10) is None
    flat = few[:, :2] @ np.ones((2, 10))  # 10 columns spanning 2 of the 5 dimensions
    assert eigenspace_overlap(flat, flat, k=10) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("center", [False, True])
def test_permuting_probe_samples_changes_nothing(center: bool) -> None:
    case = make_case("random", seed=14)
    perm = np.random.default_rng(14).permutation(48)
    base = measure(stats(case["features"], case["outputs"], labels=case["labels"]), center=center)
    perm_case = {k: v[perm] for k, v in case.items()}
    other = measure(stats(perm_case["features"], perm_case["outputs"], labels=perm_case["labels"]), center=center)
    np.testing.assert_allclose(other.eigenvalues, base.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(other.quality, base.quality, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(other.utility, base.utility, rtol=1e-9, atol=1e-14)
    assert_scalars_match(other.scalars, base.scalars)
    np.testing.assert_allclose(
        eigenfunctions(perm_case["features"], other.spectrum),
        eigenfunctions(case["features"], base.spectrum)[perm],
        atol=1e-9,
    )


# --------------------------------------------------------------------------- property (hypothesis)

SETTINGS = settings(max_examples=12, deadline=None)
seeds = st.integers(0, 2**31 - 1)


@SETTINGS
@given(seed=seeds, scale_f=st.floats(1e-3, 1e3), scale_o=st.floats(1e-3, 1e3))
def test_property_dlr_invariances(seed: int, scale_f: float, scale_o: float) -> None:
    case = make_case("random", seed=seed, n=20, p=5)
    rotation = np.linalg.qr(np.random.default_rng(seed).normal(size=(5, 5)))[0]
    base = dynamical_low_rank(stats(case["features"], case["outputs"]))
    other = dynamical_low_rank(stats(scale_f * case["features"] @ rotation, scale_o * case["outputs"]))
    assert other.output_rank == base.output_rank
    np.testing.assert_allclose([other.d_lr, other.alignment], [base.d_lr, base.alignment], rtol=1e-8, atol=1e-12)
    assert 0.0 <= other.d_lr <= 1.0
    np.testing.assert_allclose(
        1.0 - base.d_lr, base.alignment * math.sqrt(base.participation_ratio / base.output_rank), rtol=1e-10
    )


@SETTINGS
@given(seed=seeds, scale=st.floats(1e-3, 1e3), center=st.booleans())
def test_property_spectrum_scaling_and_rotation(seed: int, scale: float, center: bool) -> None:
    """ρ scales by c², shares/k_τ/eff dims unchanged under F → c F R (R orthogonal)."""
    case = make_case("random", seed=seed, n=20, p=5)
    rotation = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(5, 5)))[0]
    base = measure(stats(case["features"], case["outputs"], labels=case["labels"]), center=center)
    other = measure(stats(scale * case["features"] @ rotation, case["outputs"], labels=case["labels"]),
                    center=center)
    np.testing.assert_allclose(other.eigenvalues, scale**2 * base.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(other.utility, base.utility, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(other.quality, base.quality, rtol=1e-6, atol=1e-10)
    for name in ("rank", "eff_dim", "nc1", "d_lr", "eff_dim_quality", "pi_star_C", "accuracy"):
        np.testing.assert_allclose(other.scalars[name], base.scalars[name], rtol=1e-6, atol=1e-10)


@SETTINGS
@given(seed=seeds, scale=st.floats(1e-2, 1e2))
def test_property_cka_and_overlap(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(15, 4))
    b = rng.normal(size=(15, 7))
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    assert cka(a, a) == pytest.approx(1.0, abs=1e-10)
    assert cka(scale * a @ rotation + 5.0, b) == pytest.approx(cka(a, b), rel=1e-8, abs=1e-12)
    assert cka(a, b) == pytest.approx(cka(b, a), rel=1e-12, abs=1e-15)
    assert 0.0 <= cka(a, b) <= 1.0
    assert eigenspace_overlap(a, scale * a @ rotation, k=4) == pytest.approx(1.0, abs=1e-10)
    assert 0.0 <= eigenspace_overlap(a, b, k=4) <= 1.0


# ------------------------------------------------------------------------------------ degenerate


@pytest.mark.parametrize("center", [False, True])
def test_all_zero_features(center: bool) -> None:
    labels = np.arange(10) % 3
    got = measure(stats(np.zeros((10, 4)), np.random.default_rng(0).normal(size=(10, 3)), labels=labels),
                  center=center)
    assert_no_nan(got)
    assert got.rank == 0 and got.eigenvalues.size == 0 and got.utility.size == 0
    s = got.scalars
    assert (s["d_lr"], s["dlr_alignment"], s["feature_pr"], s["eff_dim"], s["eff_dim_utility"]) == (1, 0, 0, 0, 0)
    assert s["k90_utility"] is None and s["k99_quality"] is None
    assert s["pi_hat_C"] == 0.0 and s["pi_star_C"] == 0.0
    assert s["nc1"] is None  # class means all equal: Σ_B = 0
    assert eigenfunctions(np.zeros((10, 4)), got.spectrum).shape == (10, 0)


@pytest.mark.parametrize("center", [False, True])
def test_constant_features(center: bool) -> None:
    """Rank-1 uncentered, zero once centered: D_LR = 1, alignment 0 (nothing rich can be seen)."""
    features = np.tile([0.1, -0.7, 3.0], (30, 1))
    outputs = np.random.default_rng(1).normal(size=(30, 2))
    got = measure(stats(features, outputs, labels=np.arange(30) % 2), center=center)
    assert_no_nan(got)
    assert got.rank == (0 if center else 1)
    assert got.scalars["d_lr"] == 1.0 and got.scalars["dlr_alignment"] == 0.0


def test_rank_one_features() -> None:
    rng = np.random.default_rng(2)
    features = np.outer(rng.normal(size=30), rng.normal(size=6))
    outputs = rng.normal(size=(30, 3))
    for center in (False, True):
        got = measure(stats(features, outputs), center=center)
        assert_no_nan(got)
        assert got.rank == 1
        ref = reference_measures(features, outputs, center=center)
        assert_scalars_match(got.scalars, ref.scalars, atol=1e-10)


@pytest.mark.parametrize("center", [False, True])
def test_constant_outputs(center: bool) -> None:
    case = make_case("random", seed=15)
    outputs = np.tile([0.1, -0.7, 1.0 / 3.0, 2.9], (48, 1))
    got = measure(stats(case["features"], outputs, labels=case["labels"]), center=center)
    assert_no_nan(got)
    assert got.scalars["output_rank"] == 0 and got.scalars["d_lr"] == 1.0 and got.scalars["dlr_alignment"] == 0.0
    if center:
        assert np.all(got.utility == 0.0) and got.scalars["k90_utility"] is None
        assert got.scalars["eff_dim_utility"] == 0.0


def test_single_class() -> None:
    case = make_case("random", seed=16)
    got = measure(stats(case["features"], case["outputs"], labels=np.zeros(48, dtype=int)), center=True)
    assert_no_nan(got)
    assert got.scalars["nc1"] is None
    # centered one-hot targets of one class are 0: Q* = 0, k_τ undefined
    assert np.all(got.quality == 0.0) and got.scalars["k95_quality"] is None


def test_n_smaller_than_p_moments_route() -> None:
    case = make_case("random", seed=17, n=6, p=20)
    got = measure(stats(case["features"], case["outputs"], labels=case["labels"]))
    assert_no_nan(got)
    assert got.rank == 6


@pytest.mark.parametrize("center", [False, True])
def test_single_sample(center: bool) -> None:
    got = measure(stats(np.array([[1.0, 2.0, -1.0]]), np.array([[0.5, 0.1]]), labels=np.array([0])), center=center)
    assert_no_nan(got)
    assert got.rank == (0 if center else 1)
    assert got.scalars["d_lr"] == 1.0 and got.scalars["output_rank"] == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_torch_inputs(dtype: str) -> None:
    import torch
    case = make_case("random", seed=18, n=24, p=6)
    f16 = torch.tensor(case["features"]).to(getattr(torch, dtype))
    o16 = torch.tensor(case["outputs"]).to(getattr(torch, dtype))
    labels = torch.tensor(case["labels"])
    acc = MomentAccumulator(task="classes")
    acc.update(f16[:10], o16[:10], labels[:10])
    acc.update(f16[10:], o16[10:], labels[10:])
    got = measure(acc.moments())
    assert_no_nan(got)
    # the low-precision values, upcast exactly, are what is measured (in float64)
    want = reference_measures(f16.double().numpy(), o16.double().numpy(), labels=case["labels"])
    assert_scalars_match(got.scalars, want.scalars, atol=1e-10)


def test_non_finite_features_raise() -> None:
    features = np.ones((5, 3))
    features[2, 1] = np.inf
    moments = stats(features, np.ones((5, 2)))
    with pytest.raises(NumericalError, match="non-finite"):
        measure(moments)
    features[2, 1] = np.nan
    with pytest.raises(NumericalError):
        feature_spectrum(stats(features, np.ones((5, 2)), keep_features=True))


# ------------------------------------------------------------------------------- gradient descent


@pytest.mark.parametrize("n, p", [(40, 8), (10, 25)])
def test_last_layer_gradient_descent_decays_each_eigenfunction(n: int, p: int) -> None:
    """Residual of GD on L = (1/2n)‖Fw − y‖² has ⟨e_k, r_t⟩ = (1 − ηρ_k)^t ⟨e_k, r_0⟩ (SPEC.md §2)."""
    rng = np.random.default_rng(19)
    features = rng.normal(size=(n, p)) * np.linspace(1.5, 0.4, p)
    y = rng.normal(size=n)
    got = measure(stats(features, y[:, None], targets=y[:, None], keep_features=p > n))
    basis = eigenfunctions(features, got.spectrum)  # (n, r)
    step = 0.9 / got.eigenvalues[0]
    w = np.zeros(p)
    initial = basis.T @ (features @ w - y) / n
    for t in range(1, 61):
        w -= step * features.T @ (features @ w - y) / n
        if t % 10 == 0:
            component = basis.T @ (features @ w - y) / n
            want = (1.0 - step * got.eigenvalues) ** t * initial
            np.testing.assert_allclose(component, want, rtol=1e-8, atol=1e-12)
    # the part of the residual outside span{e_k} never moves
    residual = features @ w - y
    outside = residual - basis @ (basis.T @ residual / n)
    outside0 = -y - basis @ (basis.T @ -y / n)
    np.testing.assert_allclose(outside, outside0, atol=1e-10)


@pytest.mark.parametrize("size", [TORCH_EIGH_MIN_SIZE - 1, TORCH_EIGH_MIN_SIZE + 72])
def test_descending_eigh_through_either_lapack_is_the_same_decomposition(size: int) -> None:
    """With torch loaded, large matrices go through torch's LAPACK: the same eigenpairs as numpy's."""
    import torch  # noqa: F401 - a hard dependency: missing, the test fails
    rng = np.random.default_rng(size)
    features = np.maximum(rng.normal(size=(3 * size, size)), 0.0) * np.linspace(3.0, 0.1, size)
    matrix = features.T @ features / features.shape[0]
    values, vectors = _descending_eigh(matrix)
    expected = np.linalg.eigh(matrix)
    np.testing.assert_allclose(values, expected[0][::-1], rtol=1e-12, atol=1e-14 * values[0])
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(size), atol=1e-12)
    np.testing.assert_allclose(vectors.T @ matrix @ vectors, np.diag(values), atol=1e-11 * values[0])
    cosines = np.abs(np.sum(vectors * expected[1][:, ::-1], axis=0))  # distinct eigenvalues: up to sign
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)


@pytest.mark.parametrize("size", [TORCH_EIGH_MIN_SIZE - 1, TORCH_EIGH_MIN_SIZE])
def test_an_eigen_decomposition_that_fails_is_a_numerical_error(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """LAPACK's rare non-convergence (numpy's or torch's) becomes a clear NumericalError, not a traceback."""
    import torch

    def fail(*_args: object, **_kwargs: object) -> None:
        raise (torch.linalg.LinAlgError if size >= TORCH_EIGH_MIN_SIZE else np.linalg.LinAlgError)("no convergence")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    monkeypatch.setattr(np.linalg, "eigh", fail)
    with pytest.raises(NumericalError, match="did not converge") as info:
        _descending_eigh(np.eye(size))
    assert "no convergence" in str(info.value)


def test_large_products_through_torch_equal_numpy_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch loaded, large float64 products (the anchors' eigenfunctions) go through torch's
    BLAS, strided column slices included: the same numbers as numpy's to rounding. Read-only arrays,
    reversed views, strides torch cannot take and small products stay with numpy (no warning), and
    nothing is modified."""
    import torch

    from fdl_cli.spectral import _product

    calls: list[tuple[int, ...]] = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: calls.append(array.shape) or from_numpy(array))
    rng = np.random.default_rng(11)
    left = rng.normal(size=(1024, 96))
    right = rng.normal(size=(96, 100))
    before = left.copy(), right.copy()
    record = np.zeros((96, 48), dtype=[("a", "f4"), ("b", "f8")])["b"]  # strides of 12 bytes
    record[:] = right[:, :48]
    cases = {
        "slice": (left, right[:, :48], True),
        "every other column": (left, right[:, ::2], True),
        "reversed rows": (left[::-1], right, False),
        "small": (left[:8], right, False),
        "odd strides": (left, record, False),
    }
    for name, (a, b, through_torch) in cases.items():
        assert (a.shape[0] * a.shape[1] * b.shape[1] >= TORCH_PRODUCT_MIN_SIZE) or not through_torch, name
        calls.clear()
        product = _product(a, b)
        np.testing.assert_allclose(product, a @ b, rtol=1e-13, atol=1e-13, err_msg=name)
        assert bool(calls) == through_torch, name
        # Torch computes it as (bᵀaᵀ)ᵀ (twice as fast at the anchors' shape): handed back C-ordered and
        # owning its values, as numpy's product is, so that it is stored and divided in place as one.
        assert product.flags.c_contiguous and product.flags.owndata and product.flags.writeable, name
    frozen = left.copy()
    frozen.flags.writeable = False
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(_product(frozen, right), frozen @ right)
    assert not calls
    np.testing.assert_array_equal(left, before[0])
    np.testing.assert_array_equal(right, before[1])


def test_symmetrized_through_torch_is_numpys_to_the_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """(M + Mᵀ)/2 through torch (p ≥ TORCH_EIGH_MIN_SIZE, torch loaded) is bit for bit numpy's, on a
    matrix whose mirrored entries differ in their last bits as summed products' do; small, read-only
    and float32 matrices go through numpy (a spy on torch.from_numpy tells the routes apart). The
    input is left alone."""
    import torch

    from fdl_cli.spectral import TORCH_EIGH_MIN_SIZE, _symmetrized

    calls: list[tuple[int, ...]] = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: calls.append(array.shape) or from_numpy(array))
    rng = np.random.default_rng(17)
    for size, through_torch in ((TORCH_EIGH_MIN_SIZE - 1, False), (TORCH_EIGH_MIN_SIZE, True), (300, True)):
        features = rng.normal(size=(700, size))
        matrix = features.T @ features
        matrix += rng.normal(scale=1e-13, size=matrix.shape) * np.abs(matrix)  # not exactly symmetric
        before = matrix.copy()
        calls.clear()
        got = _symmetrized(matrix)
        assert bool(calls) == through_torch, size
        np.testing.assert_array_equal(got, (before + before.T) / 2.0)
        np.testing.assert_array_equal(got, got.T)
        np.testing.assert_array_equal(matrix, before)
    frozen = before.copy()
    frozen.flags.writeable = False
    single = before.astype(np.float32)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(_symmetrized(frozen), (before + before.T) / 2.0)
        np.testing.assert_array_equal(_symmetrized(single), (single + single.T) / 2.0)
    assert not calls


def test_eigenvectors_are_the_same_in_either_memory_order() -> None:
    """The torch route hands the eigenvectors out column-major (one contiguous column each); the
    measures read them as numbers, so a row-major copy gives the same alignments (to BLAS's rounding,
    which differs between the layouts)."""
    import torch  # noqa: F401 - a hard dependency: missing, the test fails

    from fdl_cli.spectral import alignment, feature_spectrum

    rng = np.random.default_rng(19)
    features = np.maximum(rng.normal(size=(2000, 200)), 0.0)
    outputs = features @ rng.normal(size=(200, 4))
    acc = MomentAccumulator()
    acc.update(features, outputs)
    spectrum = feature_spectrum(acc.moments())
    assert spectrum.eigenvectors.flags.f_contiguous
    reference = np.linalg.eigh(features.T @ features / 2000)[1][:, ::-1]
    np.testing.assert_allclose(np.abs(spectrum.eigenvectors[:, :20]), np.abs(reference[:, :20]), atol=1e-8)
    cross = features.T @ outputs / 2000
    row_major = type(spectrum)(**{**spectrum.__dict__, "eigenvectors": np.ascontiguousarray(spectrum.eigenvectors)})
    np.testing.assert_allclose(alignment(spectrum, cross, 1.0), alignment(row_major, cross, 1.0), rtol=1e-12, atol=1e-15)
