"""CKA's constant-anchor check, with the anchors' energies summed row by row (`pipeline._squared_frobenius`).

The check reads ‖A − a₀‖² and ‖A − mean‖² of the anchors (padded float64 rows when owned, contiguous
otherwise, the m×m Gram route for p > m); CKA is null where the anchors are constant, and spectral.cka's
value otherwise, on odd shapes."""

from __future__ import annotations

import numpy as np
import pytest

from fdl_cli.pipeline import _cka, _constant_anchors, _float64_copy, _Series
from fdl_cli.spectral import cka


def _series(anchor: np.ndarray, *, owned: bool) -> _Series:
    held = _float64_copy(anchor) if owned else np.ascontiguousarray(anchor, dtype=np.float64)
    return _Series(anchor=held, eigenfunctions=np.zeros((anchor.shape[0], 1)), owned=owned)


@pytest.mark.parametrize("shape", [(37, 5), (64, 64), (5, 37), (3, 1), (300, 17)])
@pytest.mark.parametrize("owned", [True, False])
def test_constant_anchors_give_null_cka_and_moving_ones_spectral_value(shape: tuple[int, int], owned: bool) -> None:
    m, p = shape
    rng = np.random.default_rng(m * 100 + p)
    moving = (rng.standard_normal(shape) * 3 + 1e3).astype(np.float32)
    other = (moving + rng.standard_normal(shape).astype(np.float32)).astype(np.float32)
    # every row the same, far from 0: constant features (a dead layer's bias), CKA 0/0
    constant = np.repeat((rng.standard_normal((1, p)) * 5 + 1e4).astype(np.float32), m, axis=0)
    dead, a, b = _series(constant, owned=owned), _series(moving, owned=owned), _series(other, owned=owned)
    assert _constant_anchors(dead) and not _constant_anchors(a) and not _constant_anchors(b)
    assert _cka(dead, a) is None and _cka(a, dead) is None
    value = _cka(a, b)
    expected = cka(moving.astype(np.float64), other.astype(np.float64))
    assert value is not None and expected is not None
    assert value == pytest.approx(expected, rel=1e-12)


def test_one_row_moved_by_a_little_is_not_constant() -> None:
    """Anchors equal but for one entry of one row, moved by 1e-3 of the values' size: spread far above the
    rounding of the centering (1e-12 of the energy), so CKA is measured, on padded rows as on contiguous."""
    base = np.repeat(np.linspace(1.0, 2.0, 24, dtype=np.float32)[None, :], 40, axis=0)
    moved = base.copy()
    moved[7, 3] += np.float32(1e-3)
    for owned in (True, False):
        series = _series(moved, owned=owned)
        assert not _constant_anchors(series)
        assert _constant_anchors(_series(base, owned=owned))
