"""Session 23 numerical review: fdl's stored measures against `tests/reference.py` at the edges.

Checked through `fdl analyze` against the brute-force float64 reference (features recomputed from the
checkpoint files at the same batch size), worst relative error over 4 checkpoints: p > n (Gram route), duplicated
and zero columns, probe inputs each repeated 3 times (uncentered and `--center`; p = 6, 48, 96), features × 1e±6 and
× 1e±30 in float32, bfloat16 and float16 models, batch sizes 1, 5 and 7 with n = 37 and 40: eigenvalues ≤ 1.4e-15,
utility / quality ≤ 3.2e-13, eff_dim ≤ 1.5e-15, D_LR ≤ 1.8e-14, NC1 ≤ 2.8e-15, CKA ≤ 9.4e-16, overlaps (from the
stored float32 eigenfunctions) ≤ 6.8e-9, eigenfunctions (float32) ≤ 4.9e-8; the k_τ and ranks equal. Permuting
the probe moved no field by more than 1.1e-14; bit-identical features (a frozen backbone, also in bfloat16, with
`--center`, `--cka-dtype float32` and p > m) give CKA and overlaps exactly 1 and `coefficient`. It found:

- CKA of a float64 layer far from 0 (a mean 10⁶ times its spread) was null, with a warning that the features are
  constant over the anchor points (a dead layer?), where every other measure, and CKA at an offset of 10⁴, was that
  of the same features at 0: the constant-anchor test compared the centered energy with the energy about 0, whose
  share 1e-12 a float64 layer's spread goes below from a mean of ~10⁶ × its spread on. The energy is now taken
  about the first anchor row (the anchors are centered about it first, so rows equal to the bit stay exactly 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.spectral import cka, measure
from tests.cli_run import fdl_in_process, model_file
from tests.test_spectral import stats

MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    # the hooked layer `feat` sees float64 tanh features, `copies` times side by side, plus `offset`
    def __init__(self, offset=0.0, copies=1):
        super().__init__()
        self.body, self.feat, self.head = nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)
        self.offset, self.copies = offset, copies

    def forward(self, x):
        hidden = torch.tanh(self.body(x))
        self.feat(torch.cat([hidden.double()] * self.copies, dim=1) + self.offset)
        return self.head(hidden)


def build(**options):
    return Net(**options)
"""


@pytest.mark.parametrize("width", [6, 80], ids=["p<m", "p>m"])
@pytest.mark.parametrize("offset", [1e6, 1e8])
def test_cka_of_float64_features_far_from_zero_is_their_cka_at_zero(offset: float, width: int) -> None:
    """CKA is invariant to translation (docs/measures.md): features of spread 1 on a mean of 10⁶ or 10⁸ (float64
    resolves them to 1e-10, 1e-8) were called constant (None)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, width)), rng.normal(size=(50, width))
    b[:, :3] += a[:, :3]
    plain = cka(a, b)
    assert plain is not None and 0.05 < plain < 0.95
    assert cka(a + offset, b + offset) == pytest.approx(plain, rel=offset * 1e-16)
    assert cka(a + offset, b) == pytest.approx(plain, rel=offset * 1e-16)


@pytest.fixture(scope="module")
def offset_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("offset")
    module = model_file(folder, MODEL)
    (folder / "ck").mkdir()
    for step in range(3):  # three independent initialisations: features that move
        torch.manual_seed(step)
        torch.save(module.build().state_dict(), folder / "ck" / f"step_{step}.pt")
    np.savez(folder / "probe.npz", x=np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32),
             y=np.arange(40) % 3)
    return folder


def _analyze(folder: Path, name: str, options: dict) -> tuple[list[dict], str]:
    out = folder / f"{name}.h5"
    done = fdl_in_process("analyze", folder / "ck", "--model", f"{folder / 'model.py'}:build", "--model-kwargs",
                          json.dumps(options), "--layer", "feat", "--probe", folder / "probe.npz", "-o", out,
                          "--anchor-size", "20")
    assert done.returncode == 0, done.stderr
    report = fdl_in_process("report", out, "--format", "json")
    assert report.returncode == 0, report.stderr
    loaded = json.loads(report.stdout)
    return (loaded["records"] if isinstance(loaded, dict) else loaded), done.stderr


@pytest.mark.parametrize("copies", [1, 8], ids=["p<m", "p>m"])
def test_analyze_measures_cka_of_a_float64_layer_far_from_zero(offset_run: Path, copies: int) -> None:
    """A float64 layer on a mean of 10⁶ (its spread ~0.5): cka_init / cka_prev were null at every step, with a
    warning of a dead layer, where the same features at 0 give 0.3 – 0.9; now the same to 1e-8 (the Gram
    route's D_LR, whose cross term came from sums about 0, moved by 4e-9: tests/test_s23_gram.py)."""
    plain, _ = _analyze(offset_run, f"plain{copies}", {"copies": copies})
    far, err = _analyze(offset_run, f"far{copies}", {"copies": copies, "offset": 1e6})
    assert "constant over the anchor points" not in err, err
    assert plain[-1]["cka_init"] < 0.95  # the features move
    for a, b in zip(plain, far, strict=True):
        for field in ("cka_init", "cka_prev", "d_lr", "feature_pr"):
            if a[field] is None:
                assert b[field] is None, (a["step"], field)
            else:
                assert b[field] == pytest.approx(a[field], rel=1e-8), (a["step"], field)


@pytest.mark.parametrize("center", [False, True])
def test_gram_route_measures_float64_features_far_from_zero(center: bool) -> None:
    """p > n (the kept features' n×n Gram): features on a mean of 10⁷ had D_LR 1.0, feature_pr 0 and, with
    `--center`, rank 0 (a floor of 1e-12 × their mean square about 0); now the measures of the same features at 0,
    and constant features still give rank 0 (`--center`), D_LR 1.0 and feature_pr 0 exactly."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(30, 50))
    outputs = features[:, :3] @ rng.normal(size=(3, 3))
    plain = measure(stats(features, outputs, keep_features=True), center=center)
    far = measure(stats(features + 1e7, outputs, keep_features=True), center=center)
    assert far.spectrum.route == "gram"
    # always centered; the uncentered spectrum of features on 10⁶ is the constant's (rank 1: the rest < ρ_1·1e-10)
    names = ("d_lr", "feature_pr", "dlr_alignment", "output_rank") + (("rank", "eff_dim") if center else ())
    for name in names:
        assert far.scalars[name] == pytest.approx(plain.scalars[name], rel=1e-7), name
    assert 0.0 < plain.scalars["d_lr"] < 1.0 and (plain.scalars["rank"] == 29 or not center)
    constant = measure(stats(np.full((30, 50), 1e6 / 3), outputs, keep_features=True), center=center)
    assert constant.scalars["d_lr"] == 1.0 and constant.scalars["feature_pr"] == 0.0
    assert constant.scalars["rank"] == (0 if center else 1)
