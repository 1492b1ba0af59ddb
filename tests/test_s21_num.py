"""Session 21 numerical review: degenerate probes, ties and invariances against float64 references.

Every measure was compared with `tests/reference.py` (an n×n Gram eigh, explicit projections, pinv) and with
answers known by construction. It agreed to ≤ 1e-9 (most ≤ 1e-13) on features × 1e6 and × 1e-6, rotated,
with duplicated or constant columns, of rank below C, with p > n (either route), with a class absent, a class
of one sample, and collinear class means; through `fdl analyze` every field (CKA and the overlaps included)
is unchanged to 3e-15 by those transformations. It found:

- a function orthogonal to every eigenfunction (odd targets of even features on a symmetric probe): Π(r) is 0
  in exact arithmetic, float64 leaves 1e-31 – 1e-20, and k_τ and the effective dimension were drawn from that
  noise (k90_quality = 3, eff_dim_quality 1.0 – 1.44 depending on the batching), where docs/measures.md
  promises None when Π(r) = 0;
- NC1 of classes whose means are equal in exact arithmetic (each class the same rows): the pseudo-inverse of
  the class means' rounding noise gave NC1 ≈ 1e33, where Σ_B = 0 gives None;
- Π*(C) of all-zero targets (Π̂(C) of all-zero outputs; constant ones with --center) was 0.0, a value that
  reads as features carrying none of the targets, for a ratio 0/0; and `analyze` said of all-zero float
  targets only that they were 0/1 (multi-label?) targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.spectral import CANCELLATION_RTOL, eigenfunctions, eigenspace_overlap, feature_spectrum, measure
from tests.cli_run import fdl_in_process, model_file
from tests.reference import nc1 as reference_nc1
from tests.reference import reference_measures
from tests.test_spectral import assert_no_nan, assert_scalars_match, stats

RNG = np.random.default_rng(21)
QUALITY_FIELDS = ("k90_quality", "k95_quality", "k99_quality", "eff_dim_quality", "pi_star_C")


def _symmetric_probe() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Even features of x (x², x⁴, cos 3x) on a probe symmetric about 0, odd targets (x, x³): every
    eigenfunction is even, so each target is orthogonal to all of them (Π*(r) = 0 exactly)."""
    half = np.random.default_rng(0).uniform(0.0, 1.0, 50)
    x = np.concatenate([half, -half])
    features = np.column_stack([x**2, x**4, np.cos(3 * x)])
    return x, features, np.column_stack([x, x**3])


# ------------------------------------------------------------------ a function outside the features' span


@pytest.mark.parametrize("batch", [0, 7])
@pytest.mark.parametrize("center", [False, True])
def test_targets_orthogonal_to_every_eigenfunction_have_no_k_tau(center: bool, batch: int) -> None:
    x, features, targets = _symmetric_probe()
    outputs = features @ RNG.normal(size=(3, 2))
    got = measure(stats(features, outputs, targets=targets, batch=batch), center=center)
    assert_no_nan(got)
    # the known answer: Π*(r) = 0, so no k_τ (None), no distribution (0.0), and Π*(C) a true 0
    assert got.quality is not None and np.all(got.quality == 0.0)
    assert got.scalars["k90_quality"] is None and got.scalars["k99_quality"] is None  # was 3 (rounding noise)
    assert got.scalars["eff_dim_quality"] == 0.0  # was 1.0 – 1.44, depending on the batching
    assert got.scalars["pi_star_C"] == 0.0
    # the outputs lie in the span: their side is untouched and matches the brute force
    ref = reference_measures(features, outputs, targets=targets, center=center)
    np.testing.assert_allclose(got.utility, ref.utility, rtol=1e-8, atol=1e-12)
    assert got.scalars["k95_utility"] == ref.scalars["k95_utility"]


def test_outputs_orthogonal_to_the_features_have_no_k_tau() -> None:
    """The same for Π̂: outputs of another layer than the one hooked can lie outside its span."""
    x, features, targets = _symmetric_probe()
    got = measure(stats(features, targets, targets=features[:, :2]))
    assert np.all(got.utility == 0.0) and got.scalars["k95_utility"] is None
    assert got.scalars["eff_dim_utility"] == 0.0 and got.scalars["pi_hat_C"] == 0.0


@pytest.mark.parametrize("weight", [1e-3, 1e-5])
def test_a_small_but_resolved_alignment_keeps_its_k_tau(weight: float) -> None:
    """Π*(r) of 7e-7 and 7e-11 lies far above the rounding (≤ 1e-20) and above the floor (1e-12): measured."""
    x, features, targets = _symmetric_probe()
    targets = targets + weight * features[:, :2]
    got = measure(stats(features, features[:, :2], targets=targets))
    ref = reference_measures(features, features[:, :2], targets=targets)
    assert got.pi_star is not None and got.pi_star[-1] > 10 * CANCELLATION_RTOL
    assert got.pi_star[-1] == pytest.approx(ref.quality.sum(), rel=1e-6)
    for name in QUALITY_FIELDS:
        assert got.scalars[name] == pytest.approx(ref.scalars[name], rel=1e-6), name


# ------------------------------------------------------------------ targets or outputs without energy


@pytest.mark.parametrize(("targets", "center"), [("zero", False), ("zero", True), ("constant", True)])
def test_targets_without_energy_give_no_quality_and_leave_every_other_measure(targets: str, center: bool) -> None:
    n = 60
    features = RNG.normal(size=(n, 8)) + 0.5
    outputs = features @ RNG.normal(size=(8, 3)) + RNG.normal(size=3)
    y = np.zeros((n, 3)) if targets == "zero" else np.tile([0.3, -1.0, 2.0], (n, 1))
    got = measure(stats(features, outputs, targets=y), center=center)
    assert_no_nan(got)
    assert got.quality is not None and np.all(got.quality == 0.0)
    assert got.scalars["pi_star_C"] is None  # 0/0: was 0.0
    assert all(got.scalars[f"k{t}_quality"] is None for t in (90, 95, 99))
    assert got.scalars["eff_dim_quality"] == 0.0 and got.scalars["r2"] is None
    # everything the targets do not enter is the brute force's (and the same as with real targets)
    ref = reference_measures(features, outputs, targets=y, center=center)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(got.utility, ref.utility, rtol=1e-8, atol=1e-12)
    shared = {name: ref.scalars[name] for name in ("rank", "d_lr", "output_rank", "dlr_alignment", "feature_pr",
                                                   "eff_dim", "eff_dim_utility", "k95_utility", "pi_hat_C", "loss")}
    assert_scalars_match(got.scalars, shared)
    other = measure(stats(features, outputs, targets=RNG.normal(size=(n, 3))), center=center)
    assert all(got.scalars[name] == pytest.approx(other.scalars[name], rel=1e-12) for name in shared if name != "loss")


@pytest.mark.parametrize("center", [False, True])
def test_zero_one_targets_are_measured_as_any_regression_targets(center: bool) -> None:
    """Float 0/1 (multi-label) targets, the store's `zero_one_targets`: Q*, Π*, k_τ, loss and r2 (of the raw
    outputs against 0/1, the documented caveat) are the brute force's; rows of no 1 and of several 1s."""
    n = 50
    features = RNG.normal(size=(n, 6))
    outputs = features @ RNG.normal(size=(6, 3)) + 0.2
    targets = (RNG.random((n, 3)) < 0.4).astype(float)
    assert (targets.sum(1) == 0).any() and (targets.sum(1) > 1).any()
    got = measure(stats(features, outputs, targets=targets, batch=16), center=center)
    ref = reference_measures(features, outputs, targets=targets, center=center)
    assert got.quality is not None and ref.quality is not None
    np.testing.assert_allclose(got.quality, ref.quality, rtol=1e-8, atol=1e-12)
    assert_scalars_match(got.scalars, {k: v for k, v in ref.scalars.items() if k != "cross_entropy"}, atol=1e-10)


@pytest.mark.parametrize("center", [False, True])
def test_outputs_without_energy_give_no_pi_hat(center: bool) -> None:
    """A zero head (or, centered, a constant one): Π̂(C) is 0/0, None as its k_τ; Π*(C) is measured."""
    features = RNG.normal(size=(40, 5))
    labels = np.arange(40) % 3
    outputs = np.zeros((40, 3)) if not center else np.tile([1.0, -2.0, 0.1], (40, 1))
    got = measure(stats(features, outputs, labels=labels), center=center)
    assert got.scalars["pi_hat_C"] is None and got.scalars["k95_utility"] is None
    ref = reference_measures(features, outputs, labels=labels, center=center)
    assert got.scalars["pi_star_C"] == pytest.approx(ref.scalars["pi_star_C"], rel=1e-10)


def test_rank_zero_features_with_real_targets_keep_a_true_zero() -> None:
    """Zero features carry none of real targets: Π*(C) = Π̂(C) = 0.0 is a measurement there, not 0/0."""
    got = measure(stats(np.zeros((20, 4)), RNG.normal(size=(20, 2)), targets=RNG.normal(size=(20, 2))))
    assert got.rank == 0 and got.scalars["pi_star_C"] == 0.0 and got.scalars["pi_hat_C"] == 0.0


# ------------------------------------------------------------------ NC1: singular between-class covariance


def _same_rows_per_class(n_per: int, offset: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 classes holding the same rows in different orders: equal class means in exact arithmetic."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_per, 5)) + offset
    features = np.concatenate([rows[rng.permutation(n_per)] for _ in range(4)])
    labels = np.repeat(np.arange(4), n_per)
    order = rng.permutation(len(labels))
    return features[order], labels[order]


@pytest.mark.parametrize("keep", [False, True])  # the p×p route; and kept features (never shifted)
@pytest.mark.parametrize(("n_per", "offset", "seed"), [(10, 0.3, 0), (10, 0.3, 1), (300, 1e3, 2)])
def test_nc1_of_classes_with_equal_means_is_none(n_per: int, offset: float, seed: int, keep: bool) -> None:
    features, labels = _same_rows_per_class(n_per, offset, seed)
    acc_stats = stats(features, features[:, :4], labels=labels, keep_features=keep, batch=7)
    assert measure(acc_stats).scalars["nc1"] is None  # was 1e32 – 1e36, the pinv of rounding noise


def test_nc1_with_a_small_resolved_between_class_spread_is_measured() -> None:
    """Class means 1e-4 of the features' size apart: tr Σ_B ≈ 1e-8 of the mean square, far above the floor."""
    features, labels = _same_rows_per_class(50, 0.3, 3)
    features = features + 1e-4 * np.eye(4, 5)[labels]
    got = measure(stats(features, features[:, :4], labels=labels)).scalars["nc1"]
    assert got == pytest.approx(reference_nc1(features, labels, 4), rel=1e-6)
    assert got > 1e6  # classes hardly separated: a large, finite NC1


def _class_case(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    n, p = 80, 6
    labels = np.arange(n) % 4
    features = rng.normal(size=(n, p))
    if kind == "absent":  # class 3 never occurs: C' = 3
        labels = np.where(labels == 3, 0, labels)
    elif kind == "singleton":  # class 3 has one sample, whose within-class scatter is 0
        labels = np.where(labels == 3, 2, labels)
        labels[5] = 3
    elif kind == "collinear":  # class means on one line: Σ_B of rank 1
        features = 0.2 * features + np.outer(labels, np.ones(p))
    elif kind == "two_equal":  # classes 0 and 1 with the same rows: Σ_B of rank 2, one null direction by rounding
        features[labels == 1] = features[labels == 0][::-1]
        features += 2.0 * np.eye(4, p)[labels] * (labels[:, None] >= 2)
    return features, labels


@pytest.mark.parametrize("kind", ["absent", "singleton", "collinear", "two_equal"])
@pytest.mark.parametrize("keep", [False, True])
def test_nc1_with_a_singular_between_class_covariance_matches_the_pseudo_inverse(kind: str, keep: bool) -> None:
    features, labels = _class_case(kind)
    got = measure(stats(features, features[:, :4], labels=labels, keep_features=keep, batch=9)).scalars["nc1"]
    assert got == pytest.approx(reference_nc1(features, labels, 4), rel=1e-9)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_nc1_precision_is_absolute_of_order_eps(offset: float) -> None:
    """NC1 from the one-pass statistics is (total − between-class) along each direction of Σ_B: an absolute
    error of order eps (documented: ≤ 4e-16 here), so a relative one of eps/NC1 (≤ 4e-8 at NC1 = 6e-9)."""
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 4
    means = rng.normal(size=(4, 8))
    for sigma, rtol in ((1e-1, 1e-12), (1e-4, 1e-6)):
        features = means[labels] + offset + sigma * rng.normal(size=(400, 8))
        got = measure(stats(features, features[:, :4], labels=labels, batch=100)).scalars["nc1"]
        assert got == pytest.approx(reference_nc1(features, labels, 4), rel=rtol)
    collapsed = means[labels] + offset  # exactly collapsed: NC1 = 0, read to within rounding
    assert 0.0 <= measure(stats(collapsed, collapsed[:, :4], labels=labels)).scalars["nc1"] <= 1e-14


# ------------------------------------------------------------------ ties at the top-C cut


def _tied(gap: float, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of second-moment eigenvalues 3, 1, 1 − gap, 0.5, 0.25, 0.1 (rotated) and outputs equal to the
    first two directions: Π̂(2) = 1 unless ρ_2 = ρ_3 exactly."""
    left = np.linalg.qr(np.random.default_rng(1).normal(size=(200, 6)))[0]
    features = left * np.sqrt(200 * np.array([3, 1, 1 - gap, 0.5, 0.25, 0.1]))
    return features @ rotation, features[:, :2]


ROTATIONS = [np.linalg.qr(np.random.default_rng(seed).normal(size=(6, 6)))[0] for seed in range(5)]


@pytest.mark.parametrize("gap", [1e-10, 1e-6, 1e-2])
def test_pi_at_c_with_a_near_tie_at_the_cut_is_the_exact_answer_under_every_rotation(gap: float) -> None:
    for rotation in ROTATIONS:
        features, outputs = _tied(gap, rotation)
        got = measure(stats(features, outputs))
        assert got.scalars["pi_hat_C"] == pytest.approx(1.0, abs=1e-6)


def test_an_exact_tie_at_the_cut_leaves_pi_at_c_to_the_eigensolver_but_not_past_the_tie() -> None:
    """ρ_2 = ρ_3 exactly: the top-2 eigenspace is not defined, so Π̂(2) depends on the basis the eigensolver
    picks in the tied plane (documented: 0.75 – 0.99 over 20 rotations of the same features), while Π̂(3), past
    the tie, is the same for every rotation; so is the top-3 eigenspace, while the top-2 overlap between two
    rotations of the same features (CKA 1) falls below 1, the case classify's near-tie note names."""
    values, spaces = [], []
    for rotation in ROTATIONS:
        features, outputs = _tied(0.0, rotation)
        got = measure(stats(features, outputs))
        values.append(got.scalars["pi_hat_C"])
        assert got.pi_hat[2] == pytest.approx(1.0, abs=1e-10)
        spaces.append(eigenfunctions(features, feature_spectrum(stats(features, outputs))))
    assert max(values) - min(values) > 1e-3  # not a measurement of the features: the solver's choice
    assert all(0.5 - 1e-9 <= value <= 1.0 + 1e-9 for value in values)  # Q̂ of the tied pair splits one direction
    assert eigenspace_overlap(spaces[0], spaces[1], k=3) == pytest.approx(1.0, abs=1e-10)
    assert eigenspace_overlap(spaces[0], spaces[1], k=2) < 1.0 - 1e-3


# ------------------------------------------------------------------ invariances through fdl analyze

MODEL = """
import numpy as np
import torch
from torch import nn

ROTATION = torch.from_numpy(np.linalg.qr(np.random.default_rng(5).standard_normal((6, 6)))[0])


class Net(nn.Module):
    # the hooked layer `feat` sees tanh features transformed (scaled, rotated, duplicated or with a constant
    # column, in float64); the head reads the plain ones, so the outputs never change
    def __init__(self, scale=1.0, rotate=False, copies=1, constant=False):
        super().__init__()
        self.body, self.feat, self.head = nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)
        self.scale, self.rotate, self.copies, self.constant = scale, rotate, copies, constant

    def forward(self, x):
        hidden = torch.tanh(self.body(x))
        features = hidden.double() * self.scale
        if self.rotate:
            features = features @ ROTATION
        features = torch.cat([features] * self.copies, dim=1)
        if self.constant:
            features = torch.cat([features, torch.full_like(features[:, :1], 3.0)], dim=1)
        self.feat(features)
        return self.head(hidden)


def build(**options):
    return Net(**options)
"""


@pytest.fixture(scope="module")
def invariance_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("invariance")
    module = model_file(folder, MODEL)
    torch.manual_seed(0)
    model = module.build()
    (folder / "ck").mkdir()
    for step in range(4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        torch.save(model.state_dict(), folder / "ck" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(80, 4)).astype(np.float32), y=np.arange(80) % 3)
    return folder


def _records(folder: Path, name: str, options: dict, *extra: str) -> list[dict]:
    out = folder / f"{name}.h5"
    done = fdl_in_process("analyze", folder / "ck", "--model", f"{folder / 'model.py'}:build", "--model-kwargs",
                          json.dumps(options), "--layer", "feat", "--probe", folder / "probe.npz", "-o", out, *extra)
    assert done.returncode == 0, done.stderr
    report = fdl_in_process("report", out, "--format", "json")
    assert report.returncode == 0, report.stderr
    loaded = json.loads(report.stdout)
    return loaded["records"] if isinstance(loaded, dict) else loaded


@pytest.mark.parametrize(
    ("name", "options", "center"),
    [("scaled_up", {"scale": 1e6}, False), ("scaled_down", {"scale": 1e-6}, False),
     ("rotated", {"rotate": True}, False), ("duplicated", {"copies": 2}, False),
     ("wide", {"copies": 20}, False), ("wide_centered", {"copies": 20}, True), ("constant", {"constant": True}, True)],
)
def test_every_field_is_invariant_through_analyze(invariance_run: Path, name: str, options: dict, center: bool) -> None:
    """Features × 1e±6, rotated by an orthogonal 6×6, duplicated ([F, F]), 20 copies (p = 120 > n = 80: the Gram
    route, against the p×p route of the plain 6), or (centered) with a constant column: every record field of
    every checkpoint (CKA and the overlaps included) is the plain features' to 1e-9, but n_features."""
    extra = ("--center",) if center else ()
    plain = _records(invariance_run, "plain_c" if center else "plain", {}, *extra)
    other = _records(invariance_run, name, options, *extra)
    assert len(plain) == len(other) == 4
    compared = 0
    for a, b in zip(plain, other, strict=True):
        for field, value in a.items():
            if field in ("path", "sha256", "n_features"):
                continue
            if isinstance(value, float):
                assert b[field] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, a["step"], field)
                compared += 1
            else:
                assert b[field] == value, (name, a["step"], field)
    assert compared > 40
    assert other[-1]["n_features"] == {"duplicated": 12, "wide": 120, "wide_centered": 120, "constant": 7}.get(name, 6)
    assert plain[-1]["cka_init"] < 0.99  # the features move, so CKA and the overlaps are not all 1


# ------------------------------------------------------------------ the command line on such probes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import mlp

    folder = tmp_path_factory.mktemp("zero_targets")
    (folder / "ck").mkdir()
    for step in range(4):
        torch.save(mlp(4, 8, 3, seed=step).state_dict(), folder / "ck" / f"step_{step}.pt")
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez(folder / "zero.npz", x=x, y=np.zeros((50, 3), np.float32))
    np.savez(folder / "real.npz", x=x, y=np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32))
    np.savez(folder / "one_class.npz", x=x, y=np.zeros(50, np.int64))
    return folder


def _analyze(folder: Path, probe: str, *extra: str):
    return fdl_in_process("analyze", folder / "ck", "--model", "tests.tiny_models:mlp", "--probe",
                          folder / f"{probe}.npz", "-o", folder / f"{probe}{''.join(extra)}.h5", *extra)


def test_analyze_says_all_zero_targets_carry_no_energy_and_classify_does_not_read_them(tiny_run: Path) -> None:
    done = _analyze(tiny_run, "zero")
    assert done.returncode == 0, done.stderr
    assert "probe 'probe': its targets are all 0: they carry no energy, so the quality Q*, Π* is 0/0" in done.stderr
    assert "multi-label targets?" not in done.stderr  # the 0/1 warning, which said Q* was measured against them
    records = json.loads(fdl_in_process("report", tiny_run / "zero.h5", "--format", "json").stdout)
    records = records["records"] if isinstance(records, dict) else records
    assert all(r["pi_star_C"] is None and r["k95_quality"] is None for r in records)
    assert all(r["pi_hat_C"] is not None and r["k95_utility"] is not None for r in records)
    assert _analyze(tiny_run, "real").returncode == 0
    verdicts = []
    for store in ("zero.h5", "real.h5"):
        result = fdl_in_process("classify", tiny_run / store, "--json")
        assert result.returncode == 0, result.stderr
        verdict = json.loads(result.stdout)
        verdict["evidence"].pop("final_r2")
        for per_output in ("final_r2_outputs", "final_r2_min", "final_r2_min_output"):  # the fit to each target
            verdict["evidence"].pop(per_output, None)
        verdict["evidence"].pop("zero_one_targets", None)
        verdicts.append(verdict)
    assert verdicts[0] == verdicts[1]  # the regime reads no target


def test_analyze_centered_on_one_class_says_the_targets_carry_no_energy(tiny_run: Path) -> None:
    done = _analyze(tiny_run, "one_class", "--center")
    assert done.returncode == 0, done.stderr
    assert "its targets hold one class, which --center removes: they carry no energy" in done.stderr
    assert "analyse without --center, or with targets that vary" in done.stderr
    plain = _analyze(tiny_run, "one_class")  # uncentered, the one-hot column is the constant function: measured
    assert plain.returncode == 0 and "carry no energy" not in plain.stderr


# ------------------------------------------------------------------ a layer of rank ≤ C + mf_extra


def _narrow_records(rank_ref: int, rank_final: int, width: int, k95: int = 2) -> list[dict]:
    base = {"n_outputs": 5, "n_features": width}
    return [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 1, "rank": rank_ref},
            {**base, "step": 10, "cka_init": 0.5, "overlap_init": 0.4, "k95_utility": k95, "rank": rank_final}]


def _narrow_line(records: list[dict]) -> str | None:
    from fdl_cli.regimes import classify_run, describe, narrow_layer_line

    verdict = classify_run(records)
    line = narrow_layer_line(verdict, records)
    assert (line in describe(verdict, records)) if line is not None else True
    return line


def test_mf_of_a_layer_narrower_than_the_mf_limit_is_said_to_follow_from_the_layer() -> None:
    """k95_utility ≤ rank: a width-2 layer before a 5-class head reads MF whatever it learned (EF is out of
    reach), and `fdl classify` said nothing of it."""
    line = _narrow_line(_narrow_records(2, 2, width=2))
    assert line is not None and "rank 2 ≤ C + mf_extra = 6; the layer has 2 units" in line
    assert "MF here follows from the layer" in line and "EF could not be read" in line
    line = _narrow_line(_narrow_records(3, 3, width=64))  # a bottleneck before a wide layer: rank 3 from the start
    assert line is not None and "its rank was 3 at the reference (step 0) already" in line


def test_no_narrow_layer_line_for_a_rank_that_fell_in_training_or_a_wide_one() -> None:
    assert _narrow_line(_narrow_records(64, 5, width=64)) is None  # collapse to C directions: learned, not built in
    assert _narrow_line(_narrow_records(64, 64, width=64)) is None
    assert _narrow_line(_narrow_records(7, 7, width=7, k95=7)) is None  # EF, and rank above C + 1 anyway


def test_classify_names_a_layer_narrower_than_the_mf_limit(tmp_path: Path) -> None:
    from tests.tiny_models import mlp

    (tmp_path / "ck").mkdir()
    for step in range(3):
        torch.save(mlp(4, 2, 5, seed=step).state_dict(), tmp_path / "ck" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(60, 4)).astype(np.float32), y=np.arange(60) % 5)
    done = fdl_in_process("analyze", tmp_path / "ck", "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          '{"hidden": 2, "n_out": 5}', "--probe", tmp_path / "probe.npz", "-o", tmp_path / "run.h5")
    assert done.returncode == 0, done.stderr
    result = fdl_in_process("classify", tmp_path / "run.h5")
    assert result.returncode == 0, result.stderr
    assert "regime: MF" in result.stdout + result.stderr
    assert "≤ C + mf_extra = 6; the layer has 2 units), so k95_utility cannot exceed the MF limit" in (
        result.stdout + result.stderr)


def test_report_summary_does_not_say_stayed_at_every_checkpoint_over_a_null() -> None:
    """A zero head at initialisation: k95 Π̂ is null there, 3 after; the summary said "stayed 3 at every
    checkpoint"."""
    from fdl_cli.report import summarize, summary_lines

    records = [{"step": step, "k95_utility": k95, "regime": "MF"} for step, k95 in ((0, None), (10, 3), (20, 3))]
    assert "k95 Π̂ stayed 3 at every checkpoint with a value (null at 1)" in summary_lines(summarize(records))
    records[0]["k95_utility"] = 3
    assert "k95 Π̂ stayed 3 at every checkpoint" in summary_lines(summarize(records))
