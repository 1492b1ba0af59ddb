"""The n×n Gram route's memory (p > n): its p × rank eigenvectors divided and signed in place, the centered copy
and the Gram let go once used, the kept features' blocks read before the eigenvectors exist; the numbers those of
the float64 reference (tests/reference.py), and `resources.layer_needs` counting what is left as a lower bound."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fdl_cli import resources, spectral
from fdl_cli.spectral import NonFiniteError, eigenfunctions, feature_spectrum, fix_signs, measure

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.reference import reference_measures
    from tests.test_spectral import assert_matches_reference, make_case, stats
except ImportError:  # pragma: no cover
    from reference import reference_measures  # type: ignore[no-redef]
    from test_spectral import assert_matches_reference, make_case, stats  # type: ignore[no-redef]


def signs_whole(vectors: np.ndarray) -> np.ndarray:
    """The sign rule on the whole p × rank array at once, as `fix_signs` applied it before it worked in blocks."""
    magnitudes = np.abs(vectors)
    rows = np.argmax(magnitudes >= magnitudes.max(axis=0) * (1.0 - spectral.SIGN_TIE_RTOL), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 18])
def test_fix_signs_in_blocks_picks_the_rows_of_the_whole_array(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact ties, ties within SIGN_TIE_RTOL, largest entries negative and zero columns, across block edges:
    the same signs to the bit as the rule on the whole array, in place or as a copy."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 9))
    vectors[[3, 40], 0] = [-2.5, 2.5]  # an exact tie: the first (negative) is made positive
    vectors[[10, 11], 1] = [3.0, -3.0 * (1 - 1e-13)]  # within the tolerance
    vectors[[20, 49], 2] = [-4.0, -4.0]
    vectors[:, 3] = 0.0
    vectors[49, 4] = -9.0  # in the last block only
    vectors[:, 5] = -np.abs(vectors[:, 5])
    monkeypatch.setattr(spectral, "SIGN_BLOCK", block)
    want = signs_whole(vectors)
    copy = fix_signs(vectors)
    assert copy is not vectors and np.array_equal(copy, want)
    owned = vectors.copy(order="F")
    assert fix_signs(owned, in_place=True) is owned
    assert np.array_equal(owned, want)


@pytest.mark.parametrize("center", [False, True])
def test_gram_route_numbers_are_the_reference_and_stored_only_keeps_the_top(
    center: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Gram route in small sign blocks against the brute-force float64 reference; the same bits as in one
    block; `stored_only` (what the pipeline keeps past the anchors' copy) holds the top K, the same eigenfunctions."""
    case = make_case("random", seed=5, n=24, p=60)
    moments = stats(case["features"], case["outputs"], labels=case["labels"], keep_features=True)
    whole = measure(moments, center=center, top_k=5)
    monkeypatch.setattr(spectral, "SIGN_BLOCK", 8)
    blocks = measure(moments, center=center, top_k=5)
    assert blocks.spectrum.route == "gram"
    ref = reference_measures(case["features"], case["outputs"], labels=case["labels"], center=center)
    assert_matches_reference(blocks, ref, case["features"])
    assert np.array_equal(blocks.spectrum.eigenvectors, whole.spectrum.eigenvectors)
    assert blocks.scalars == whole.scalars
    kept = blocks.stored_only()
    assert kept.spectrum.eigenvectors.shape == (60, 5) and np.array_equal(kept.spectrum.eigenvectors, blocks.eigenvectors)
    anchors = case["features"][:10]
    assert np.array_equal(eigenfunctions(anchors, kept.spectrum, k=5), eigenfunctions(anchors, blocks.spectrum, k=5))
    assert kept.scalars == blocks.scalars and np.array_equal(kept.utility, blocks.utility)


def test_gram_decomposition_counts_each_step_and_the_p_by_p_route_is_unchanged() -> None:
    """The Gram route's decomposition need: the larger of forming the Gram (centered n×p + n×n) and decomposing
    it (Gram, eigenvectors, syevd's workspace; the centered copy beside them for the centered spectrum only)."""
    workspace = 1 + 6 * 100 + 2 * 100**2

    def decomposition(p: int, n: int, uncentered: bool) -> int:
        needs = resources.layer_needs("l", p, n, 16, probe="x", anchor_copies=0, uncentered=uncentered)
        return next(need.bytes for need in needs if need.transient == "decomposition")

    assert decomposition(1000, 100, True) == 8 * (1000 * 100 + 100**2)  # p > 3n: forming the Gram is the peak
    assert decomposition(200, 100, True) == 8 * (2 * 100**2 + workspace)  # its decomposition is
    assert decomposition(1000, 100, False) == 8 * (1000 * 100 + 2 * 100**2 + workspace)
    assert decomposition(64, 100, True) == 8 * (3 * 64**2 + 1 + 6 * 64 + 2 * 64**2)  # p ≤ n: as before


@pytest.mark.parametrize("center", [False, True])
def test_gram_route_peak_is_what_the_estimate_counts(center: bool) -> None:
    """numpy's allocations (tracemalloc) over `measure` on the Gram route (n = 40 < TORCH_EIGH_MIN_SIZE: numpy's
    eigh, whose LAPACK workspace tracemalloc does not see): uncentered, the estimate's decomposition need to
    within one sign block; centered, at most it plus the p × rank eigenvectors and one sign block. Before, the centered copy,
    the Gram and three p × rank arrays (|v|, the flipped copy, the eigenvectors) were alive at once: 26 MB."""
    n, p = 40, 20_000
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(n, 8)) @ rng.normal(size=(8, p)) + rng.normal(size=(n, p)), 0.0)
    moments = stats(features, rng.normal(size=(n, 3)), labels=np.arange(n) % 3, keep_features=True)
    feature_spectrum(moments)  # numpy's and the BLAS's first-call allocations, outside the measurement
    tracemalloc.start()
    try:
        got = measure(moments, center=center, top_k=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rank = got.rank
    assert got.spectrum.route == "gram" and rank >= n - 1
    counted = resources.FLOAT64 * resources.gram_decomposition(p, n, uncentered=not center)
    sign_block = (resources.FLOAT64 + 2) * spectral.SIGN_BLOCK  # |v|, its booleans and argmax's copy of them
    if center:  # the eigenvectors are formed from the centered copy, beside it
        assert peak <= counted + resources.FLOAT64 * p * rank + sign_block + 1_000_000
    else:  # formed from the kept features, beside the n×n eigenvectors only: p × rank ≤ the centered n×p
        assert counted <= peak <= counted + sign_block + 1_000_000


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("keep_features", [True, False])
def test_non_finite_features_are_said_before_nc1_runs(keep_features: bool) -> None:
    """NC1 and the centering scale now run before the spectrum: the statistics are still checked first, so
    features that overflowed give fdl's NonFiniteError (the `--dtype` advice), not numpy's SVD failure."""
    case = make_case("random", seed=2, n=12, p=30 if keep_features else 6)
    features = case["features"].copy()
    features[3, 1] = np.inf
    moments = stats(features, case["outputs"], labels=case["labels"], keep_features=keep_features)
    with pytest.raises(NonFiniteError):
        measure(moments)
