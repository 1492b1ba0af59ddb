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

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import NumericalError, ProbeError
from fdl_cli.moments import RANGE_MAX, RANGE_MIN, MomentAccumulator
from fdl_cli.probes import load_probe
from fdl_cli.spectral import measure
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file

RNG = np.random.default_rng(17)
FEATURES = RNG.standard_normal((20, 4))
OUTPUTS = RNG.standard_normal((20, 3))
LABELS = RNG.integers(0, 3, 20)


def _accumulate(features, outputs, targets, *, task: str = "classes", torch_path: bool = False):
    acc = MomentAccumulator(task=task)
    if torch_path:
        features, outputs, targets = (torch.from_numpy(np.asarray(a)) for a in (features, outputs, targets))
    acc.update(features, outputs, targets)
    return acc.moments()


@pytest.mark.parametrize("torch_path", [False, True])
@pytest.mark.parametrize(("exponent", "side"), [(500, "too large"), (-540, "too small"), (-1000, "too small")])
def test_float64_features_outside_the_range_are_refused(exponent: int, side: str, torch_path: bool) -> None:
    # 2**-1000 features: their squares were all 0, so the spectrum was empty (rank 0) with no error
    with pytest.raises(NumericalError, match=f"the features are {side}"):
        measure(_accumulate(FEATURES * 2.0**exponent, OUTPUTS, LABELS, torch_path=torch_path))


@pytest.mark.parametrize("torch_path", [False, True])
def test_float64_outputs_outside_the_range_are_refused(torch_path: bool) -> None:
    with pytest.raises(NumericalError, match="the model's outputs are too large"):
        measure(_accumulate(FEATURES, OUTPUTS * 2.0**600, LABELS, torch_path=torch_path))


@pytest.mark.parametrize(("scale", "side"), [(1e200, "too large"), (1e-200, "too small")])
def test_float64_regression_targets_outside_the_range_are_refused(scale: float, side: str) -> None:
    # 1e200 targets gave NaN qualities (stored as null) and k95_quality = 1; 1e-200 ones Q* ≡ 0, r2 None
    with pytest.raises(NumericalError, match=f"regression targets are {side}"):
        measure(_accumulate(FEATURES, OUTPUTS, RNG.standard_normal((20, 3)) * scale, task="regression"))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])  # read in place, and read whole
@pytest.mark.parametrize(("scale", "side"), [(1e200, "large"), (1e-200, "small")])
def test_probe_with_regression_targets_outside_the_range_is_refused_at_load(
    tmp_path: Path, save, scale: float, side: str
) -> None:
    path = tmp_path / "probe.npz"
    save(path, x=np.zeros((20, 2), np.float32), y=RNG.standard_normal((20, 3)) * scale)
    with pytest.raises(ProbeError, match=f"regression targets 'y' are too {side}"):
        load_probe(path)


def test_the_range_admits_every_float32_value_and_scale_leaves_the_measures() -> None:
    # float32's largest and smallest (subnormal) magnitudes lie inside the range: no model run in
    # float32, float16 or bfloat16 is refused, and the scale-free measures are those of ordinary features
    assert RANGE_MAX > float(np.finfo(np.float32).max) and RANGE_MIN < 2.0**-149
    plain = measure(_accumulate(FEATURES, OUTPUTS, LABELS))
    for exponent in (190, -190):  # float64 features near both ends of the range (|φ| < 4)
        scaled = measure(_accumulate(FEATURES * 2.0**exponent, OUTPUTS, LABELS))
        np.testing.assert_allclose(scaled.eigenvalues, plain.eigenvalues * 4.0**exponent, rtol=1e-12)
        for name in ("d_lr", "feature_pr", "eff_dim", "eff_dim_utility", "nc1", "dlr_alignment"):
            assert scaled.scalars[name] == pytest.approx(plain.scalars[name], rel=1e-12), name
        np.testing.assert_allclose(scaled.utility, plain.utility, rtol=1e-12)


MODEL = """
import torch
from torch import nn


class Scaled(nn.Module):
    # features: an input-indexed table computed in float64 and scaled by 2**exponent (exactly)
    def __init__(self, exponent):
        super().__init__()
        self.table = nn.Parameter(torch.randn(12, 4))
        self.outs = nn.Parameter(torch.randn(12, 3))
        self.feat = nn.Identity()
        self.exponent = exponent

    def forward(self, x):
        index = x.long().reshape(-1)
        self.feat(self.table[index].double() * 2.0 ** self.exponent)
        return self.outs[index]


def build(exponent=0):
    torch.manual_seed(0)
    return Scaled(exponent)
"""


@pytest.mark.parametrize(("exponent", "side"), [(500, "too large"), (-1000, "too small")])
def test_analyze_refuses_a_float64_layer_outside_the_range_with_a_clear_error(
    tmp_path: Path, exponent: int, side: str
) -> None:
    module = model_file(tmp_path, MODEL)
    (tmp_path / "ckpt").mkdir()
    for step in (0, 1):
        torch.save(module.build().state_dict(), tmp_path / "ckpt" / f"step_{step}.pt")
    np.savez(tmp_path / "probe.npz", x=np.arange(12), y=np.arange(12) % 3)
    result = fdl("analyze", tmp_path / "ckpt", "--model", f"{tmp_path / 'model.py'}:build", "--model-kwargs",
                 f'{{"exponent": {exponent}}}', "--layer", "feat", "--probe", tmp_path / "probe.npz",
                 "-o", tmp_path / "run.h5")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr  # 2**500: OverflowError in the participation ratio
    assert f"the features are {side} for fdl's float64 statistics" in result.stderr  # 2**-1000: stored rank 0
    assert "fix: hook a layer of ordinary scale" in result.stderr
    assert not (tmp_path / "run.h5").exists()


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
