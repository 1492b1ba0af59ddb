"""Session 17 numerical review: values the float64 statistics cannot hold, and the sign convention's ties.

An adversarial comparison of every stored measure against a brute-force float64 recomputation (tiny
models whose features are tables chosen per checkpoint) agreed everywhere a float32, float16 or
bfloat16 layer can reach. It found:

- float64 values outside what the statistics hold. A layer computed in float64, or float64 regression
  targets, of magnitude ~1e150 crashed `fdl analyze` with a traceback (OverflowError in the
  participation ratio (tr Σ_c)², ZeroDivisionError in D_LR) or, at 1e200 targets, stored NaN as null
  and k_quality = 1; at ~1e-155 their squares flushed to 0 and a moving, non-zero layer was stored as
  rank 0 with D_LR = 1 (or the targets as constant: Q* ≡ 0, r2 null), with no word.
- the sign convention: an eigenvector whose two largest entries are equal in exact arithmetic (features
  symmetric under swapping two columns) came out of LAPACK a few ulps apart, and the rounding, not the
  documented rule (ties: the first such entry), chose the entry made positive.
"""

from __future__ import annotations

import numpy as np
import pytest

from fdl_cli.moments import MomentAccumulator
from fdl_cli.spectral import measure


@pytest.mark.parametrize("keep", [False, True])  # the p×p route; keep_features with p ≤ n stays on it
@pytest.mark.parametrize(
    "features",
    [
        [[1, 2, 5], [2, 1, 5], [3, 0, 5], [0, 3, 5]],
        [[1, 2, 7], [2, 1, 7], [4, 0, 7], [0, 4, 7], [3, 3, 7]],
    ],
)
def test_sign_convention_takes_the_first_of_entries_tied_in_exact_arithmetic(features, keep: bool) -> None:
    # columns 0 and 1 swap into each other: the second eigenvector is (1, -1, 0)/√2 up to sign, its two
    # largest entries equal; LAPACK returns them a few ulps apart, and the larger (here the second) was
    # made positive. The documented rule makes the first positive.
    feats = np.array(features, dtype=np.float64)
    acc = MomentAccumulator(task="none", keep_features=keep)
    acc.update(feats, np.arange(2.0 * len(feats)).reshape(-1, 2) ** 1.5)
    vectors = measure(acc.moments()).spectrum.eigenvectors
    tied = vectors[:, 1]
    assert abs(abs(tied[0]) - abs(tied[1])) < 1e-14 and abs(tied[2]) < 1e-14  # the premise: an exact tie
    assert tied[0] > 0 > tied[1]
