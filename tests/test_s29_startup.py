"""The anchors' distinct inputs, counted exactly: a 64-bit fingerprint a row proves the usual probe of distinct inputs
distinct at a fraction of hashing each row, and any fingerprints alike (repeated inputs, or two different rows whose
fingerprints collide) are settled by the rows' digests, so the count CKA and the overlaps are taken on never drops a
point that differs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fdl_cli import pipeline


def _points(x: np.ndarray, anchor_size: int = 4096) -> int:
    ctx = SimpleNamespace(options=SimpleNamespace(anchor_size=anchor_size), anchor_points={})
    return pipeline._anchor_points(ctx, SimpleNamespace(name="probe", x=x))  # type: ignore[arg-type]


def test_distinct_inputs_are_all_counted() -> None:
    x = np.random.default_rng(0).standard_normal((600, 7)).astype(np.float32)  # 28-byte rows: 32-bit words
    assert _points(x) == 600
    assert _points(x, anchor_size=100) == 100


def test_repeated_inputs_are_counted_once() -> None:
    rows = np.random.default_rng(1).standard_normal((3, 8))
    x = rows[np.arange(300) % 3]  # three inputs, each repeated
    assert _points(x) == 3
    assert _points(np.zeros((5, 3), np.float16)) == 1  # 6-byte rows: fingerprints of bytes


def test_two_inputs_whose_fingerprints_collide_stay_two() -> None:
    """Token ids chosen so that the two rows' fingerprints are equal (w₀·d₀ + w₁·d₁ ≡ 0 mod 2⁶⁴): the rows differ,
    and so they are counted."""
    w = [int(v) for v in pipeline._odd_weights(2)]
    d0 = 1
    d1 = (-d0 * w[0] * pow(w[1], -1, 2**64)) % 2**64
    a = np.array([0, 0], dtype=np.uint64)
    b = np.array([d0, d1], dtype=np.uint64)
    assert int((a * np.array(w, np.uint64)).sum(dtype=np.uint64)) == int((b * np.array(w, np.uint64)).sum(dtype=np.uint64))
    x = np.stack([a, b]).view(np.int64)  # token ids, as fdl reads them
    assert _points(x) == 2
