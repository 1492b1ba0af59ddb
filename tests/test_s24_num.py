"""Session 24, numerical review: `fdl analyze` / `report --json` / `classify --json` against a reference written
from SPEC.md alone (brute-force float64 eigen-decompositions of the p×p second moment, explicit centering,
explicit projections; not tests/reference.py nor tests/independent/ref.py), on constructed runs whose regime
is known by construction, and the invariances SPEC implies, end to end.

The runs' features are taken from the same float32 forward pass fdl runs (one batch of the whole probe), so
fdl and the reference see the same numbers and agree to float64 rounding (1e-9 relative; the overlaps, taken
by fdl from its float32 eigenfunction values, to 1e-7). For the invariances the models use dyadic weights and
inputs so that every float32 product and sum is exact: a float32 model's features otherwise change by an ulp
(2.4e-7) with the batch size or the row order (PyTorch picks other kernels), which moves the measures by up
to ~6e-7 (eff_dim_quality) without any fault of fdl's.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process, model_file

MODEL = """
from torch import nn


def build(d=5, p=8, C=3, rotate=False):
    layers = [nn.Linear(d, p), nn.Tanh() if not rotate else nn.ReLU()]
    if rotate:  # a fixed p x p map before the head: the hooked layer (input of the head) is its output
        layers.append(nn.Linear(p, p, bias=False))
    return nn.Sequential(*layers, nn.Linear(p, C))
"""
C = 3
THRESHOLDS = {"cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.80, "mf_extra": 1, "final_window": 3}


# ------------------------------------------------------------------ the reference (SPEC §2-§7, read literally)

def _spectrum(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rho, V = np.linalg.eigh(F.T @ F / len(F))  # uncentered second moment (the default)
    rho, V = rho[::-1], V[:, ::-1]
    r = int(np.sum(rho > rho[0] * 1e-10))
    rho, V = rho[:r], V[:, :r].copy()
    V *= np.sign(V[np.argmax(np.abs(V), 0), np.arange(r)])  # largest-|.| entry positive
    return rho, V, F @ V / np.sqrt(rho)


def _shares(E: np.ndarray, G: np.ndarray) -> np.ndarray:
    return ((E.T @ G / len(G)) ** 2).sum(1) / ((G ** 2).sum() / len(G))


def _k_tau(q: np.ndarray, tau: float) -> int:
    P = np.cumsum(q)
    return int(np.argmax(P >= tau * P[-1] - len(P) * np.finfo(float).eps * P[-1])) + 1  # the sums' rounding


def _eff_dim(q: np.ndarray) -> float:
    q = q / q.sum()
    q = q[q > 0]
    return float(np.exp(-(q * np.log(q)).sum()))


def _cka(A: np.ndarray, B: np.ndarray) -> float:
    A, B = A - A.mean(0), B - B.mean(0)
    return float(np.linalg.norm(A.T @ B) ** 2 / (np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B)))


def _overlap(Es: np.ndarray, Et: np.ndarray, k: int) -> float:
    Qs, Qt = np.linalg.qr(Es[:, :k])[0], np.linalg.qr(Et[:, :k])[0]
    return float(np.linalg.norm(Qs.T @ Qt) ** 2 / k)


def _measures(F: np.ndarray, Yh: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    n = len(F)
    Y = np.eye(C)[y]
    rho, V, E = _spectrum(F)
    qs, qh = _shares(E, Y), _shares(E, Yh)
    rec: dict = {"rank": len(rho), "eff_dim": _eff_dim(rho), "eff_dim_quality": _eff_dim(qs),
                 "eff_dim_utility": _eff_dim(qh), "pi_star_C": float(qs[:C].sum()), "pi_hat_C": float(qh[:C].sum())}
    for tau in (90, 95, 99):
        rec[f"k{tau}_quality"], rec[f"k{tau}_utility"] = _k_tau(qs, tau / 100), _k_tau(qh, tau / 100)
    Fc, Oc = F - F.mean(0), Yh - Yh.mean(0)  # SPEC §4: D_LR from the SVD of the centered outputs
    U, s, _ = np.linalg.svd(Oc, full_matrices=False)
    r_out = int(np.argmax(np.cumsum(s ** 2) >= 0.99 * (s ** 2).sum())) + 1
    inside = np.linalg.norm(U[:, :r_out].T @ Fc) ** 2
    cov = Fc.T @ Fc / n
    rec.update(d_lr=1 - inside / (np.linalg.norm(Fc.T @ Fc) * np.sqrt(r_out)), output_rank=r_out,
               dlr_alignment=inside / np.linalg.norm(Fc) ** 2, feature_pr=np.trace(cov) ** 2 / np.linalg.norm(cov) ** 2)
    means = np.stack([F[y == c].mean(0) for c in range(C)])  # SPEC §6, docs/measures.md's normalisations
    between = (means - F.mean(0)).T @ (means - F.mean(0)) / C
    within = (F - means[y]).T @ (F - means[y]) / n
    rec["nc1"] = float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10)) / C)
    rec["accuracy"] = float(np.mean(Yh.argmax(1) == y))
    rec["loss"] = float(((Yh - Y) ** 2).sum() / (n * C))
    top = Yh.max(1)
    rec["cross_entropy"] = float(np.mean(top + np.log(np.exp(Yh - top[:, None]).sum(1)) - Yh[np.arange(n), y]))
    return rec, {"eigenvalues": rho, "eigenvectors": V, "eigenfunctions": E, "quality": qs, "utility": qh}


def _regime(is_reference: bool, cka: float, overlap: float, k95: int, t: dict = THRESHOLDS) -> str:
    """docs/regimes.md's rule for one checkpoint (both measures present here)."""
    if is_reference or (cka >= t["cka_static"] and overlap >= t["overlap_static"]):
        return "coefficient"
    if cka >= t["cka_static"] and overlap < t["overlap_moved"]:
        return "undetermined"
    return "MF" if k95 <= C + t["mf_extra"] else "EF"


def _run_regime(regimes: list[str], t: dict = THRESHOLDS) -> str:
    after = regimes[1:]
    if all(r == "coefficient" for r in after):
        return "coefficient"
    if after[-1] in ("coefficient", "undetermined"):
        return "undetermined"
    window = [r for r in after if r in ("MF", "EF")][-t["final_window"]:]
    return "undetermined" if {"MF", "EF"} <= set(window) else after[-1]


def _reference(module, states: list, x: np.ndarray, y: np.ndarray) -> tuple[list[dict], list[dict]]:
    passes = []
    for step, state in states:
        model = module.build()
        model.load_state_dict(state)
        with torch.no_grad():
            hidden = model[:-1](torch.from_numpy(x))
            passes.append((step, hidden.double().numpy(), model[-1](hidden).double().numpy(),
                           np.concatenate([v.double().numpy().ravel() for v in state.values()])))
    records, arrays = [], []
    for i, (step, F, Yh, theta) in enumerate(passes):
        rec, arr = _measures(F, Yh, y)
        theta0 = passes[0][3]
        rec.update(step=step, cka_init=_cka(passes[0][1], F), cka_prev=None if i == 0 else _cka(passes[i - 1][1], F),
                   param_norm=float(theta @ theta),
                   param_dist_init=float(np.linalg.norm(theta - theta0) / np.linalg.norm(theta0)))
        records.append(rec)
        arrays.append(arr)
    for i, rec in enumerate(records):
        E = arrays[i]["eigenfunctions"]
        rec["overlap_init"] = _overlap(arrays[0]["eigenfunctions"], E, C)
        rec["overlap_prev"] = None if i == 0 else _overlap(arrays[i - 1]["eigenfunctions"], E, C)
        rec["regime"] = _regime(i == 0, rec["cka_init"], rec["overlap_init"], rec["k95_utility"])
    return records, arrays


# ------------------------------------------------------------------ constructed runs

def _probe(n: int = 60, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    rng.shuffle(y)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[np.arange(n), y] += 2.0  # the class signal in the first C inputs
    return x, y


def _copy(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


def _frozen_backbone(module, x: np.ndarray, y: np.ndarray) -> list:
    """Only the head trained (SGD on MSE): the features do not move, coefficient by construction."""
    torch.manual_seed(0)
    model = module.build()
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.2)
    states = [(0, _copy(model.state_dict()))]
    for t in range(1, 201):
        opt.zero_grad()
        ((model(torch.from_numpy(x)) - torch.eye(C)[y]) ** 2).mean().backward()
        opt.step()
        if t in (10, 50, 200):
            states.append((t, _copy(model.state_dict())))
    return states


def _minimal_feature(module) -> list:
    """The backbone moved onto units reading the class inputs, the head onto those units: the learned
    function rides on C eigenfunctions (constant + C - 1 contrasts), MF by construction."""
    torch.manual_seed(1)
    start = _copy(module.build().state_dict())
    w1, b1, w2 = torch.zeros(8, 5), torch.full((8,), -3.0), torch.zeros(C, 8)
    w1[:C, :C], w1[C:, C:] = 3 * torch.eye(C), 0.02 * torch.randn(5, 2)
    b1[C:] = 0.1 * torch.randn(5)
    w2[:, :C] = 2 * torch.eye(C)
    end = {"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": torch.zeros(C)}
    return [(0, start)] + [(t, {k: (1 - a) * start[k] + a * end[k] for k in start})
                           for t, a in ((10, 0.3), (50, 0.7), (100, 0.95), (200, 1.0))]


def _extended_feature(module, x: np.ndarray) -> list:
    """A backbone drawn anew at every checkpoint (features move far) under a head that reads every
    eigenfunction alike (W = G diag(rho)^-1/2 V^T, G random): the function spreads over the 8
    eigenfunctions, EF by construction."""
    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    states = []
    for t in range(4):
        model = module.build()
        with torch.no_grad():
            F = model[:-1](torch.from_numpy(x)).double().numpy()
            rho, V = np.linalg.eigh(F.T @ F / len(F))
            head = rng.normal(size=(C, len(rho))) / np.sqrt(rho) @ V.T
            model[-1].weight.copy_(torch.from_numpy(head))
            model[-1].bias.zero_()
        states.append((10 * t, _copy(model.state_dict())))
    return states


def _analyze(folder: Path, name: str, states: list, probe: Path, *extra: str, kwargs: dict | None = None) -> Path:
    ck = folder / name
    ck.mkdir(exist_ok=True)
    for step, state in states:
        torch.save(state, ck / f"step_{step}.pt")
    out = folder / f"{name}{'_'.join(extra)}.h5"
    options = ["--model-kwargs", json.dumps(kwargs)] if kwargs else []
    done = fdl_in_process("analyze", ck, "--model", f"{folder / 'model.py'}:build", *options, "--probe", probe,
                          "-o", out, "--overwrite", *extra)
    assert done.returncode == 0, done.stderr
    return out


def _json(*args: object):
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _stored(store: Path, step: int) -> dict:
    with h5py.File(store) as h5:
        group = h5[f"checkpoints/step_{step}/probe"]
        group = group[next(iter(group))]
        return {name: group[name][()] for name in group}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("s24num")
    module = model_file(folder, MODEL)
    x, y = _probe()
    np.savez(folder / "probe.npz", x=x, y=y)
    out = {}
    for name, states, expected in (("frozen", _frozen_backbone(module, x, y), "coefficient"),
                                   ("mf", _minimal_feature(module), "MF"),
                                   ("ef", _extended_feature(module, x), "EF")):
        store = _analyze(folder, name, states, folder / "probe.npz")
        out[name] = (store, *_reference(module, states, x, y), expected)
    return out


@pytest.mark.parametrize("name", ["frozen", "mf", "ef"])
def test_every_field_and_array_matches_the_reference(runs: dict, name: str) -> None:
    store, records, arrays, _ = runs[name]
    report = _json("report", store, "--json")
    assert [r["step"] for r in report] == [r["step"] for r in records]
    for got, want in zip(report, records, strict=True):
        assert (got["n_probe"], got["n_features"], got["n_outputs"]) == (60, 8, C)
        for field, value in want.items():
            if isinstance(value, (str, int)) or value is None:
                assert got[field] == value, (name, want["step"], field)
            else:  # the overlaps come from fdl's float32 eigenfunction values
                rtol = 1e-7 if field.startswith("overlap") else 1e-9
                assert got[field] == pytest.approx(value, rel=rtol, abs=1e-13), (name, want["step"], field)
    for want, arr in zip(records, arrays, strict=True):
        stored = _stored(store, want["step"])
        np.testing.assert_allclose(stored["eigenvalues"], arr["eigenvalues"], rtol=1e-9, atol=1e-13)
        # A direction's share is as well determined as its eigenvector: float64's rounding of the second moment
        # (~eps * rho_0 an entry, whatever the order of the sums) moves v_k by ~eps * rho_0 / gap_k and rho_k by
        # ~eps * rho_0, so a share's relative error can reach eps * kappa_k, kappa_k = rho_0 / min(gap_k, rho_k).
        # The MF run's last checkpoint has rho = 6.2e-8 and 1.2e-8 beside rho_0 = 1.16 (kappa 2.3e7): against
        # a 40-digit reference its weakest shares are off by 2.0e-9 in fdl and 2.1e-10 in this float64
        # reference, which rounds otherwise (and whose error grows with the machine's BLAS kernels alike).
        rho = arr["eigenvalues"]
        gaps = np.minimum(np.abs(np.diff(rho, prepend=np.inf)), np.abs(np.diff(rho, append=-np.inf)))
        rtol = np.maximum(1e-9, 100 * np.finfo(float).eps * rho[0] / np.minimum(gaps, rho))
        for field in ("quality", "utility"):
            assert np.all(np.abs(stored[field] - arr[field]) <= rtol * np.abs(arr[field]) + 1e-13), (name, field)
        K = stored["eigenvectors"].shape[1]
        np.testing.assert_allclose(stored["eigenvectors"], arr["eigenvectors"][:, :K], atol=1e-9)  # signs included
        np.testing.assert_allclose(stored["eigenfunctions"], arr["eigenfunctions"][:, :K], rtol=1e-6, atol=1e-6)
        # SPEC §2: orthonormal on the probe, and the p x p route's spectrum is the n x n Gram's
        E = arr["eigenfunctions"]
        np.testing.assert_allclose(E.T @ E / len(E), np.eye(E.shape[1]), atol=1e-8)


@pytest.mark.parametrize("name", ["frozen", "mf", "ef"])
def test_the_verdict_is_the_constructed_regime_and_the_reference_rule(runs: dict, name: str) -> None:
    store, records, _, expected = runs[name]
    verdict = _json("classify", store, "--json")
    regimes = [r["regime"] for r in records]
    assert [t["regime"] for t in verdict["trajectory"]] == regimes
    assert verdict["regime"] == _run_regime(regimes) == expected


def test_classify_replays_the_rule_under_overridden_thresholds(runs: dict) -> None:
    """The rule recomputed from the stored measures with other thresholds (docs/regimes.md) is the reference's."""
    seen = set()
    for name, cka, ov, extra, window in (("mf", 0.5, 0.3, 0, 1), ("ef", 0.2, 0.2, 4, 2), ("mf", 0.995, 0.99, 2, 3),
                                         ("ef", 0.9, 0.6, 5, 1), ("frozen", 0.9999, 0.9999, 1, 3),
                                         ("ef", 0.99, 0.95, 1, 3), ("mf", 0.45, 0.95, 1, 3)):  # the last: conflicts
        t = {"cka_static": cka, "overlap_static": ov, "overlap_moved": min(0.8, ov), "mf_extra": extra,
             "final_window": window}
        store, records, _, _ = runs[name]
        verdict = _json("classify", store, "--json", *[a for k, v in t.items() for a in ("--threshold", f"{k}={v}")])
        regimes = [_regime(i == 0, r["cka_init"], r["overlap_init"], r["k95_utility"], t) for i, r in enumerate(records)]
        assert [s["regime"] for s in verdict["trajectory"]] == regimes, t
        assert verdict["regime"] == _run_regime(regimes, t), t
        seen.add(verdict["regime"])
    assert seen == {"coefficient", "MF", "EF", "undetermined"}


# ------------------------------------------------------------------ invariances in exact arithmetic

H4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2  # orthogonal, entries ±1/2


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A ReLU net with dyadic weights and inputs: every float32 product and sum is exact, so the features and
    outputs are the same numbers in any batch and row order, and after a rotation by a signed ±1/2 matrix."""
    folder = tmp_path_factory.mktemp("s24exact")
    model_file(folder, MODEL)
    rng = np.random.default_rng(1)
    n, d, p = 90, 6, 8
    y = np.arange(n) % C
    rng.shuffle(y)
    x = (rng.integers(-12, 13, size=(n, d)) / 4).astype(np.float32)
    x[np.arange(n), y] += 2
    np.savez(folder / "probe.npz", x=x, y=y)
    perm = rng.permutation(n)
    np.savez(folder / "probe_perm.npz", x=x[perm], y=y[perm])

    def q(shape: tuple, k: int, den: int) -> torch.Tensor:
        return torch.tensor(rng.integers(-k, k + 1, size=shape) / den, dtype=torch.float32)

    base, w1, b1, w2, b2 = [], q((p, d), 4, 4), q((p,), 4, 4), q((C, p), 4, 2), q((C,), 4, 2)
    for t in range(4):
        base.append((10 * t, w1.clone(), b1.clone(), w2.clone(), b2.clone()))
        w1, w2 = w1 + q((p, d), 1, 4), w2 + q((C, p), 1, 2)
    return folder, base, d


def _exact_run(exact: tuple, name: str, R: np.ndarray, *extra: str, probe: str = "probe.npz") -> tuple[list, Path]:
    folder, base, d = exact
    Rt = torch.tensor(R, dtype=torch.float32)
    states = [(t, {"0.weight": a, "0.bias": b, "2.weight": Rt, "3.weight": c @ torch.linalg.inv(Rt), "3.bias": e})
              for t, a, b, c, e in base]
    store = _analyze(folder, name, states, folder / probe, *extra, kwargs={"d": d, "rotate": True})
    return _json("report", store, "--json"), store


def _assert_same_records(a: list, b: list, rtol: float) -> None:
    for ra, rb in zip(a, b, strict=True):
        for field, value in ra.items():
            if field in ("path", "sha256", "param_norm", "param_dist_init"):
                continue
            if value is None or isinstance(value, (str, int)):
                assert rb[field] == value, field
            else:
                assert rb[field] == pytest.approx(value, rel=rtol, abs=1e-15), (ra["step"], field)


def test_batch_size_probe_order_rotation_and_scale_change_no_field(exact: tuple) -> None:
    plain, plain_store = _exact_run(exact, "plain", np.eye(8))
    assert [r["regime"] for r in plain][0] == "coefficient" and plain[-1]["cka_init"] < 0.95  # the features move
    for extra in (("--batch-size", "1"), ("--batch-size", "7")):
        _assert_same_records(plain, _exact_run(exact, "plain", np.eye(8), *extra)[0], 1e-13)
    # every probe point is an anchor point (m = n = 90), so CKA and the overlaps see the same set
    _assert_same_records(plain, _exact_run(exact, "perm", np.eye(8), probe="probe_perm.npz")[0], 1e-13)
    rotation = np.kron(np.eye(2), H4)[np.random.default_rng(3).permutation(8)]
    rotated, rotated_store = _exact_run(exact, "rotated", rotation)
    _assert_same_records(plain, rotated, 1e-13)
    scaled, scaled_store = _exact_run(exact, "scaled", 1024 * np.eye(8))
    _assert_same_records(plain, scaled, 0.0)  # a power of 2: every operation scales exactly
    for step in (0, 10, 20, 30):
        rho = _stored(plain_store, step)["eigenvalues"]
        np.testing.assert_array_equal(_stored(scaled_store, step)["eigenvalues"], rho * 2.0 ** 20)
        np.testing.assert_allclose(_stored(rotated_store, step)["eigenvalues"], rho, rtol=1e-13)
