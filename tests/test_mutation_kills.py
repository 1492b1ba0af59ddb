"""Outputs checked against independent values where a mutation-testing pass found that a plausible
wrong number went unnoticed by the rest of the suite (each test names the mutant it kills).

Independent values: the float64 brute force of tests/reference.py, hand-computed numbers on tiny
constructed cases, or identities of SPEC.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.moments import MomentAccumulator
from fdl_cli.regimes import Thresholds, checkpoint_regime, feature_movement
from fdl_cli.spectral import Moments, dynamical_low_rank, eigenfunctions, eigenspace_overlap, k_tau, measure
from fdl_cli.store import StoreReader
from tests.reference import reference_measures
from tests.test_analyze import fdl
from tests.tiny_models import mlp


def _stats(features: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None = None) -> Moments:
    acc = MomentAccumulator(task="classes" if labels is not None else "none")
    acc.update(features, outputs, labels)
    return acc.moments()


# ------------------------------------------------------------------------------------- spectral


def test_k_tau_counts_a_cumulative_share_exactly_at_the_threshold() -> None:
    """k_τ = min{k : Π(k) ≥ τ·Π(r)} (SPEC §3): ≥, not >. Exact float cases (×1.0 and ×0.5 are exact).
    Kills `cumulative > tau * cumulative[-1]`."""
    assert k_tau(np.array([0.45, 0.9, 0.95, 1.0]), 0.9) == 2
    assert k_tau(np.array([0.45, 0.9, 0.95, 1.0]), 0.95) == 3
    assert k_tau(np.array([0.3, 0.45, 0.5]), 0.9) == 2  # τ·Π(r) = 0.45, reached at k = 2
    assert k_tau(np.array([1.0, 1.0]), 0.99) == 1


def test_strict_output_span_keeps_a_weak_but_resolved_direction() -> None:
    """η = 1 keeps every output direction with s_i > 1e-10·s_1 above the centering floor (SPEC §4,
    docs/measures.md): a third output direction at ~5e-6 of the others counts, r_Ŷ = 3 as in the brute
    force. Kills an energy cut at λ_1·1e-10 (singular values cut at 1e-5·s_1) instead of λ_1·1e-20."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 6))
    strong = features @ rng.normal(size=(6, 2))
    weak = 5e-6 * rng.normal(size=(40, 1))
    outputs = np.hstack([strong, weak])
    got = dynamical_low_rank(_stats(features, outputs), energy_share=1.0)
    want = reference_measures(features, outputs, dlr_energy=1.0).scalars
    assert want["output_rank"] == 3
    assert got.output_rank == 3
    assert got.d_lr == pytest.approx(want["d_lr"], rel=1e-8)
    assert got.alignment == pytest.approx(want["dlr_alignment"], rel=1e-8)


def test_overlap_of_repeated_inputs_divides_by_the_span_dimension() -> None:
    """O_k = ‖Q_aᵀQ_b‖_F² / d with d the dimension of the spans: k = 4 eigenfunctions on 6 anchor points
    that are 3 points twice span 3 dimensions, so O(s, s) = 1 (3/4 divided by k), and two such spans
    (both inside the 3-dimensional space of repeated vectors) coincide. Kills `/ k` in
    spectral.eigenspace_overlap (used by `fdl compare`)."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    values_a, values_b = np.vstack([a, a]), np.vstack([b, b])
    assert eigenspace_overlap(values_a, values_a, k=4) == pytest.approx(1.0, abs=1e-12)
    assert eigenspace_overlap(values_a, values_b, k=4) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("torch_batch", [False, True])
def test_centered_eigenfunctions_of_features_far_from_zero(torch_batch: bool) -> None:
    """--center with features a thousand standard deviations from 0 (the accumulator shifts its sums
    by the first batch's mean): the spectrum's mean is the probe mean and the Nyström values equal the
    brute force's centered eigenfunctions. Kills `Moments.mean_f` forgetting the shift."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(30, 5)) * np.linspace(2.0, 0.5, 5) + 1000.0
    outputs = features @ rng.normal(size=(5, 3))
    labels = np.arange(30) % 3
    f, o, y = (torch.from_numpy(features), torch.from_numpy(outputs), torch.from_numpy(labels)) if torch_batch else (
        features, outputs, labels)
    acc = MomentAccumulator(task="classes")
    acc.update(f, o, y)
    moments = acc.moments()
    assert moments.shift_f is not None  # the case this test is about
    got = measure(moments, center=True)
    ref = reference_measures(features, outputs, labels=labels, center=True)
    np.testing.assert_allclose(got.spectrum.mean, features.mean(axis=0), rtol=1e-12)
    values = eigenfunctions(features, got.spectrum)
    np.testing.assert_allclose(values, ref.eigenfunctions, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------- regimes


def _record(cka: float, overlap: float, k95: int = 3, c: int = 3) -> dict:
    return {"step": 10, "cka_init": cka, "overlap_init": overlap, "k95_utility": k95, "n_outputs": c}


def test_movement_thresholds_are_inclusive_where_docs_say_at_or_above() -> None:
    """docs/regimes.md: static when cka_init ≥ cka_static and overlap_init ≥ overlap_static; conflict
    when CKA is static and overlap_init < overlap_moved. Values exactly at each default threshold.
    Kills `>` for either static test and `<=` for the conflict test."""
    th = Thresholds()
    assert feature_movement(_record(0.99, 1.0), th)[0] == "static"
    assert feature_movement(_record(1.0, 0.95), th)[0] == "static"
    assert feature_movement(_record(0.99, 0.95), th)[0] == "static"
    assert checkpoint_regime(_record(0.99, 0.95), th).regime == "coefficient"
    # CKA static, overlap exactly at overlap_moved: moved (not beyond doubt), not a conflict
    assert feature_movement(_record(0.995, 0.80), th)[0] == "moved"
    assert checkpoint_regime(_record(0.995, 0.80, k95=4), th).regime == "MF"
    # and just below it: the conflict
    assert feature_movement(_record(0.995, 0.7999), th)[0] == "conflict"


# ------------------------------------------------------------------------------------- pipeline


def _fdl(*args: object) -> tuple[int, str]:
    result = fdl(*(str(a) for a in args))
    return result.code, result.stderr


def _top_eigenfunctions(features: np.ndarray, outputs: np.ndarray, k: int) -> np.ndarray:
    return reference_measures(features, outputs).eigenfunctions[:, :k]


def _brute_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the column spans (SPEC §5)."""
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    return float(np.mean(np.linalg.svd(qa.T @ qb, compute_uv=False) ** 2))


def test_stored_overlaps_use_the_top_c_eigenfunctions(tmp_path: Path) -> None:
    """overlap_init / overlap_prev of `fdl analyze` equal the brute-force O_C (k = C = 3 by default) of the
    top eigenfunctions of the reference and the checkpoint on the probe (all 60 points are anchors).
    Kills overlap_init taken with k = C + 1."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(tmp_path / "probe.npz", x=x, y=y)
    (tmp_path / "ckpts").mkdir()
    models = [mlp(4, 8, 3, seed=0), mlp(4, 8, 3, seed=1)]
    for step, model in enumerate(models):
        torch.save(model.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
    code, err = _fdl("analyze", tmp_path / "ckpts", "--model", "tests.tiny_models:mlp", "--probe",
                     tmp_path / "probe.npz", "--out", tmp_path / "s.h5")
    assert code == 0, err
    with StoreReader(tmp_path / "s.h5") as reader:
        records = reader.records()
    tops = []
    for model in models:
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            features = model[1](model[0](xt)).double().numpy()
            outputs = model(xt).double().numpy()
        tops.append(_top_eigenfunctions(features, outputs, 3))
    want = _brute_overlap(tops[0], tops[1])
    assert 0.05 < want < 0.95  # not a trivial case
    assert records[1]["overlap_init"] == pytest.approx(want, rel=1e-5)
    assert records[1]["overlap_prev"] == pytest.approx(want, rel=1e-5)
    assert records[0]["overlap_init"] == 1.0
