"""Session 22: a conformance audit of the measures against SPEC.md and docs/measures.md.

Each test checks a clause that no other test held (a mutation of the code survived the suite):
- SPEC §8 / docs Tolerances: a negative eigenvalue below −NEGATIVE_WARN_RTOL·ρ_1 is reported, a smaller one not;
- docs, `feature_pr` / `d_lr` / `rank`: features constant over the probe, whose centering leaves rounding (the Gram
  route's kept features are never shifted), have no centered energy: PR 0, D_LR 1, centered rank 0;
- docs, `quality` / `pi_star_C`: a centered target energy at or below CANCELLATION_RTOL of the shifted trace is 0;
- docs, compare's verdict: runs tied (within dlr_tie) at the last matched step only "end equally rich";
- docs/regimes.md, run rule 5: the final window holds the last moved checkpoints, not the last checkpoints.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fdl_cli import report
from fdl_cli.regimes import classify_run
from fdl_cli.spectral import feature_spectrum, measure
from tests.test_regimes import run
from tests.test_report import SCALARS, make_store
from tests.test_spectral import stats


def test_a_negative_eigenvalue_is_reported_beyond_the_warning_tolerance_only() -> None:
    """SPEC §8: eigenvalues are clipped at 0 with a warning when slightly negative; docs: one below
    −1e-8·ρ_1 is reported (`clipped_eigenvalue`), and none is stored (below the rank cut)."""
    rng = np.random.default_rng(0)
    n = 20
    base = stats(rng.normal(size=(n, 3)), rng.normal(size=(n, 2)))
    for negative, reported in ((-1e-6, -1e-6), (-1e-9, 0.0)):
        moments = replace(base, sum_ff=n * np.diag([2.0, 1.0, 2.0 * negative]), sum_f=np.zeros(3))
        spectrum = feature_spectrum(moments)
        np.testing.assert_allclose(spectrum.eigenvalues, [2.0, 1.0], rtol=1e-14)
        assert spectrum.clipped == pytest.approx(reported, rel=1e-12, abs=0.0)
        assert measure(moments).clipped_eigenvalue == pytest.approx(reported, rel=1e-12, abs=0.0)


def test_constant_features_on_the_gram_route_have_no_centered_energy() -> None:
    """p > n with the features kept (never shifted): a constant 0.1 whose probe mean is not exactly 0.1
    leaves centered rounding of ~1e-17. docs: feature_pr 0.0 when tr Σ_c ≤ CANCELLATION_RTOL·(the shifted
    trace), D_LR 1.0 and A 0.0 with centered features 0, and the centered rank 0 when ρ_1 is at or below
    that floor; the uncentered spectrum keeps the constant direction."""
    n, p = 29, 40
    features = np.full((n, p), 0.1)
    outputs = np.random.default_rng(1).normal(size=(n, 3))
    moments = stats(features, outputs, keep_features=True, batch=7)
    centered = features - moments.sum_f / n
    assert np.any(centered != 0.0)  # the rounding this test is about
    for center in (False, True):
        got = measure(moments, center=center)
        assert got.spectrum.route == "gram"
        assert got.scalars["feature_pr"] == 0.0
        assert got.scalars["d_lr"] == 1.0 and got.scalars["dlr_alignment"] == 0.0
        assert got.scalars["output_rank"] == 3
        assert got.rank == (0 if center else 1)
    np.testing.assert_allclose(measure(moments).eigenvalues, [0.01 * p], rtol=1e-12)


def test_a_centered_target_energy_of_rounding_size_counts_as_zero() -> None:
    """docs, `quality`: under `--center`, E_Y ≤ CANCELLATION_RTOL·(the trace of the targets about the sums'
    shift) is 0: Q* ≡ 0, pi_star_C and k*_quality None, eff_dim_quality 0.0. The accumulator's shift keeps
    such rounding away from its own sums, so the sums are written here: targets of mean (1, 1) whose centered
    energy is a share ε of their raw mean square (what unshifted sums, the library's float32 products, leave)."""
    rng = np.random.default_rng(2)
    n, p = 24, 5
    features = rng.normal(size=(n, p))
    base = stats(features, features[:, :2] @ rng.normal(size=(2, 2)), targets=rng.normal(size=(n, 2)))
    mean = np.ones(2)
    for eps, measured in ((1e-14, False), (1e-3, True)):
        sum_fy = np.outer(base.sum_f, mean) + n * np.sqrt(eps) * 0.1 * rng.normal(size=(p, 2))
        moments = replace(base, shift_f=None, shift_y=None, sum_y=n * mean, sum_fy=sum_fy,
                          sum_yy=n * (np.outer(mean, mean) + eps * np.eye(2)))
        assert moments.shift_f is None and base.shift_f is None  # raw sums throughout
        got = measure(moments, center=True)
        assert got.quality is not None
        if measured:
            assert got.scalars["pi_star_C"] is not None and got.scalars["k95_quality"] is not None
            assert got.quality.sum() > 0.0
        else:
            assert got.scalars["pi_star_C"] is None and got.scalars["k95_quality"] is None
            assert got.scalars["eff_dim_quality"] == 0.0 and not np.any(got.quality)


def test_runs_tied_at_the_last_matched_step_only_end_equally_rich(tmp_path: Path) -> None:
    """docs, compare's verdict: D_LR within dlr_tie at the last matched step, apart before it."""
    a = make_store(tmp_path / "a.h5")  # D_LR 0.9, 0.5, 0.125
    scalars = {step: {**values, "d_lr": d} for (step, values), d in zip(SCALARS.items(), [0.9, 0.4, 0.1255], strict=True)}
    b = make_store(tmp_path / "b.h5", seed=3, scalars=scalars)
    got = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False)
    assert got.verdict == "The runs end equally rich (D_LR within dlr_tie = 0.001 at the last matched step)."


def test_the_final_window_counts_moved_checkpoints_only() -> None:
    """docs/regimes.md, run rule 5: the last `final_window` *moved* checkpoints decide a flip. A static
    checkpoint between them (coefficient) does not push the MF one out of the window: MF, EF, static,
    EF reads undetermined (window MF, EF, EF), where the last three checkpoints alone read EF."""
    rows = run((0.6, 0.5, 5), (0.6, 0.5, 20), (1.0, 1.0, 20), (0.6, 0.5, 20))
    verdict = classify_run(rows)
    assert [step["step"] for step in verdict.evidence["final_window"]] == [10, 20, 40]
    assert verdict.regime == "undetermined" and "flip between MF and EF" in verdict.rule
    assert classify_run(rows[:1] + rows[2:]).regime == "EF"  # without the MF one
