"""fdl's store against an independent float64 computation of SPEC.md, field by field.

Tiny runs are trained here; `fdl analyze` stores them; every per-checkpoint field of the store is then
recomputed from the checkpoint files, the model factory and the probe alone (weights loaded with
torch.load / safetensors, the feature layer hooked here). The routes differ on purpose from both
`fdl_cli` (p×p moments) and `tests/reference.py` (n×n Gram eigh): the spectrum is the thin SVD of the
(centered) feature matrix, ρ_k = s_k²/n with e_k = √n u_k; Q* / Q̂ are squared norms of U's columns
against the targets / outputs; effective dimensions are scipy entropies; ‖F_cᵀF_c‖_F and PR come
from F_c's singular values and D_LR is checked through its factorisation A·√(PR/r_Ŷ); NC1 uses the
pseudo-inverse of the p×C' class-mean matrix; CKA is HSIC of m×m Grams with a centering matrix;
overlaps are mean squared cosines of scipy's principal angles; the regime follows docs/regimes.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.linalg import subspace_angles, svdvals
from scipy.special import logsumexp
from scipy.stats import entropy

from tests.test_analyze import fdl

MODEL_SOURCE = '''
from torch import nn


def mlp(n_in=10, hidden=12, n_out=4):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))
'''
CUT = 1e-10  # SPEC §2 / §4: ρ_k > 1e-10 ρ_1, singular values > 1e-10 s_1
INTEGER = {"n_probe", "n_features", "n_outputs", "rank", "output_rank", "prev_step"} | {
    f"k{t}_{w}" for t in (90, 95, 99) for w in ("quality", "utility")
}


# ------------------------------------------------------------------ the runs


def _factory(tmp_path: Path) -> Any:
    path = tmp_path / "model.py"
    path.write_text(MODEL_SOURCE)
    spec = importlib.util.spec_from_file_location("independent_spec_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mlp


def _train(folder: Path, model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, regression: bool,
           params: Any, steps: tuple[int, ...], fmt: str = "pt") -> None:
    folder.mkdir()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for step in range(steps[-1] + 1):
        if step in steps:
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            if fmt == "pt":
                torch.save(state, folder / f"step_{step}.pt")
            else:
                save_file(state, str(folder / f"step_{step}.safetensors"))
        batch = slice((step * 32) % (len(x) - 32), (step * 32) % (len(x) - 32) + 32)
        out = model(xt[batch])
        loss = (torch.nn.functional.mse_loss(out, yt[batch]) if regression
                else torch.nn.functional.cross_entropy(out, yt[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _classes(rng: np.random.Generator, n: int, n_in: int = 10, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.normal(size=(c, n_in)) * 1.5
    labels = rng.integers(0, c, n)
    return (centers[labels] + rng.normal(size=(n, n_in))).astype(np.float32), labels.astype(np.int64)


@dataclass
class Run:
    folder: Path
    probe: Path
    kwargs: dict[str, Any]
    center: bool = False
    reference: int | None = None
    anchor_size: int = 4096
    layer: str | None = None
    eta: float = 0.99

    def analyze(self, model: Path, out: Path, *extra: str) -> Path:
        args = ["analyze", self.folder, "--model", f"{model}:mlp", "--model-kwargs", json.dumps(self.kwargs),
                "--probe", self.probe, "--out", out, "--anchor-size", str(self.anchor_size),
                "--dlr-energy", str(self.eta), *extra]
        args += ["--center"] if self.center else []
        args += ["--reference", str(self.reference)] if self.reference is not None else []
        args += ["--layer", self.layer] if self.layer is not None else []
        result = fdl(*args)
        assert result.code == 0, result.stderr
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, Path]]:
    """name → (run, store): classification (defaults, and every option), regression with p > n, frozen."""
    tmp = tmp_path_factory.mktemp("independent")
    factory = _factory(tmp)
    rng = np.random.default_rng(0)
    x, y = _classes(rng, 400)
    np.savez(tmp / "probe.npz", x=x[:80], y=y[:80])
    torch.manual_seed(0)
    model = factory()
    _train(tmp / "cls", model, x[80:], y[80:], regression=False, params=model.parameters(), steps=(0, 2, 5, 10, 30))
    torch.manual_seed(1)
    model = factory()
    _train(tmp / "frozen", model, x[80:], y[80:], regression=False, params=model[4].parameters(),
           steps=(0, 3, 10, 30), fmt="safetensors")
    xr = rng.normal(size=(300, 6)).astype(np.float32)
    yr = np.stack([np.sin(xr[:, 0] + xr[:, 1]), xr[:, 2] * xr[:, 3]], 1).astype(np.float32)
    np.savez(tmp / "regression.npz", x=xr[:30], y=yr[:30])
    torch.manual_seed(2)
    model = factory(n_in=6, hidden=48, n_out=2)
    _train(tmp / "regr", model, xr[30:], yr[30:], regression=True, params=model.parameters(), steps=(0, 4, 20, 40))
    made = {
        "classes": Run(tmp / "cls", tmp / "probe.npz", {}),
        # --reference not first, m < n, a hidden module, η = 1, --top-k below C, --center
        "options": Run(tmp / "cls", tmp / "probe.npz", {}, center=True, reference=5, anchor_size=50, layer="1", eta=1.0),
        "regression_p_gt_n": Run(tmp / "regr", tmp / "regression.npz", {"n_in": 6, "hidden": 48, "n_out": 2}),
        "frozen": Run(tmp / "frozen", tmp / "probe.npz", {}),
    }
    extra = {"options": ("--top-k", "2")}
    return {name: (run, run.analyze(tmp / "model.py", tmp / f"{name}.h5", *extra.get(name, ())))
            for name, run in made.items()}


# ------------------------------------------------------------------ the independent computation


def _features(run: Run, model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    modules = dict(model.named_modules())
    if run.layer is None:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]  # a Sequential: runs last
        grabbed: list[torch.Tensor] = []
        handle = last.register_forward_pre_hook(lambda m, args: grabbed.append(args[0]))
    else:
        grabbed = []
        handle = modules[run.layer].register_forward_hook(lambda m, args, out: grabbed.append(out))
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    handle.remove()
    return grabbed[0].reshape(len(x), -1).double().numpy(), out.double().numpy()


def _sign(vectors: np.ndarray) -> np.ndarray:
    return np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])


def _shares(left: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Q_k = Σ_c ⟨e_k, g_c⟩² / Σ_c ⟨g_c, g_c⟩ with e_k = √n u_k: ‖u_kᵀG‖² / ‖G‖_F²."""
    total = float(np.sum(g * g))
    return np.sum((left.T @ g) ** 2, axis=1) / total if total > 0 else np.zeros(left.shape[1])


def _eff(q: np.ndarray) -> float:
    return float(math.exp(entropy(q))) if q.sum() > 0 else 0.0


def _k(q: np.ndarray, tau: float) -> int | None:
    cum = np.cumsum(q)
    if not len(q) or cum[-1] <= 0:
        return None
    return int(np.argmax(cum >= tau * cum[-1] - len(q) * np.finfo(float).eps * cum[-1])) + 1  # sums' rounding


def _one(F: np.ndarray, out: np.ndarray, y: np.ndarray, *, task: str, center: bool, eta: float) -> dict[str, Any]:
    """Every measure of one checkpoint (SPEC §2-§4, §6; the docs' choices where SPEC is silent)."""
    n, p = F.shape
    C = out.shape[1]
    Ft = F - F.mean(0) if center else F
    left, sing, right_t = np.linalg.svd(Ft, full_matrices=False)
    r = int(np.sum(sing**2 > CUT * sing[0] ** 2))
    left, rho, V = left[:, :r], sing[:r] ** 2 / n, right_t[:r].T
    flip = _sign(V)
    V, left = V * flip, left * flip
    Y = np.eye(C)[y] if task == "classes" else y.astype(np.float64)
    out_t, Y_t = (out - out.mean(0), Y - Y.mean(0)) if center else (out, Y)
    util, qual = _shares(left, out_t), _shares(left, Y_t)
    f: dict[str, Any] = {"n_probe": n, "n_features": p, "n_outputs": C, "rank": r, "eff_dim": _eff(rho),
                         "eff_dim_utility": _eff(util), "eff_dim_quality": _eff(qual),
                         "pi_hat_C": float(util[: min(C, r)].sum()), "pi_star_C": float(qual[: min(C, r)].sum())}
    for tau in (0.90, 0.95, 0.99):
        f[f"k{round(tau * 100)}_utility"], f[f"k{round(tau * 100)}_quality"] = _k(util, tau), _k(qual, tau)
    # §4: D_LR from the output span (explicit SVD of Ŷ_c), PR and ‖F_cᵀF_c‖_F from F_c's singular values
    Fc, Oc = F - F.mean(0), out - out.mean(0)
    sig = svdvals(Fc)
    U_o, s_o, _ = np.linalg.svd(Oc, full_matrices=False)
    if eta >= 1:
        r_out = int(np.sum(s_o > CUT * s_o[0]))
    else:
        r_out = int(np.searchsorted(np.cumsum(s_o**2), eta * np.sum(s_o**2))) + 1
    inside = float(np.sum((U_o[:, :r_out].T @ Fc) ** 2))
    f["output_rank"] = r_out
    f["dlr_alignment"] = inside / float(np.sum(sig**2))
    f["feature_pr"] = float(np.sum(sig**2) ** 2 / np.sum(sig**4))
    f["d_lr"] = 1 - inside / (math.sqrt(float(np.sum(sig**4))) * math.sqrt(r_out))
    assert f["d_lr"] == pytest.approx(1 - f["dlr_alignment"] * math.sqrt(f["feature_pr"] / r_out), rel=1e-12)
    f["loss"] = float(np.mean((out - Y) ** 2))
    if task == "classes":
        f["accuracy"] = float(np.mean(out.argmax(1) == y))
        f["cross_entropy"] = float(np.mean(logsumexp(out, axis=1) - out[np.arange(n), y]))
        present = np.unique(y)
        means = np.stack([F[y == c].mean(0) for c in present], 1)
        B = means - F.mean(0)[:, None]
        W = F - means.T[np.searchsorted(present, y)]
        Bp = np.linalg.pinv(B, rcond=CUT)
        f["nc1"] = float(np.sum((Bp @ W.T) ** 2) / n)  # (1/C') tr(Σ_W (BBᵀ/C')⁺) = ‖B⁺W_cᵀ‖²/n
    else:
        f["r2"] = 1 - float(np.sum((out - Y) ** 2) / np.sum((Y - Y.mean(0)) ** 2))
    f["_arrays"] = {"eigenvalues": rho, "eigenvectors": V, "eigenfunctions": math.sqrt(n) * left,
                    "utility": util, "quality": qual, "feature_mean": F.mean(0) if center else None}
    return f


def _cka(a: np.ndarray, b: np.ndarray) -> float:
    """HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with the m×m linear Grams and H = I − 11ᵀ/m."""
    m = len(a)
    H = np.eye(m) - 1.0 / m
    K, L = H @ a @ a.T @ H, H @ b @ b.T @ H
    return float(np.trace(K @ L) / math.sqrt(np.trace(K @ K) * np.trace(L @ L)))


def _overlap(ea: np.ndarray, eb: np.ndarray, k: int) -> float:
    k = min(k, ea.shape[1], eb.shape[1])
    return float(np.mean(np.cos(subspace_angles(ea[:, :k], eb[:, :k])) ** 2))


def _regime(f: dict[str, Any], reference: bool) -> str:
    """docs/regimes.md, default thresholds (no conflicts arise in these runs)."""
    if reference:
        return "coefficient"
    if f["cka_init"] >= 0.99 and f["overlap_init"] >= 0.95:
        return "coefficient"
    return "MF" if f["k95_utility"] <= f["n_outputs"] + 1 else "EF"


def independent(run: Run, factory: Any) -> dict[int, dict[str, Any]]:
    data = np.load(run.probe)
    x, y = data["x"], data["y"]
    task = "classes" if y.dtype.kind == "i" else "regression"
    files = sorted(run.folder.iterdir(), key=lambda p: int(p.stem.split("_")[1]))
    per: dict[int, dict[str, Any]] = {}
    feats, thetas = {}, {}
    for path in files:
        step = int(path.stem.split("_")[1])
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        model = factory(**run.kwargs)
        model.load_state_dict(state)
        model.eval()
        F, out = _features(run, model, x)
        per[step] = _one(F, out, y, task=task, center=run.center, eta=run.eta)
        feats[step] = F
        thetas[step] = np.concatenate([state[name].double().numpy().ravel() for name, _ in model.named_parameters()])
    steps = sorted(per)
    ref = run.reference if run.reference is not None else steps[0]
    m = min(run.anchor_size, len(x))
    for i, step in enumerate(steps):
        f = per[step]
        e = f["_arrays"]["eigenfunctions"]
        f["cka_init"] = _cka(feats[step][:m], feats[ref][:m])
        f["overlap_init"] = _overlap(e[:m], per[ref]["_arrays"]["eigenfunctions"][:m], f["n_outputs"])
        before = steps[i - 1] if i else None
        f["prev_step"] = before
        f["cka_prev"] = _cka(feats[step][:m], feats[before][:m]) if before is not None else None
        f["overlap_prev"] = (_overlap(e[:m], per[before]["_arrays"]["eigenfunctions"][:m], f["n_outputs"])
                             if before is not None else None)
        f["param_norm"] = float(thetas[step] @ thetas[step])
        f["param_dist_init"] = float(np.linalg.norm(thetas[step] - thetas[ref]) / np.linalg.norm(thetas[ref]))
        f["regime"] = _regime(f, step == ref)
        f["_arrays"]["eigenfunctions"] = e[:m]
    return per


# ------------------------------------------------------------------ the comparison


def _stored(store: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, np.ndarray]]]:
    records, arrays = {}, {}
    with h5py.File(store, "r") as h:
        for group in h["checkpoints"].values():
            (series,) = [group[probe][layer] for probe in group for layer in group[probe]]
            step = int(group.attrs["step"])
            records[step] = dict(series.attrs)
            arrays[step] = {name: series[name][()] for name in series}
    return records, arrays


@pytest.mark.parametrize("name", ["classes", "options", "regression_p_gt_n", "frozen"])
def test_store_equals_independent_float64(runs: dict[str, tuple[Run, Path]], name: str, tmp_path: Path) -> None:
    run, store = runs[name]
    mine = independent(run, _factory(tmp_path))
    records, arrays = _stored(store)
    assert sorted(records) == sorted(mine)
    for step, f in mine.items():
        rec = records[step]
        fields = {k for k, v in f.items() if not k.startswith("_") and v is not None}
        assert fields == set(rec), (step, fields ^ set(rec))  # every stored field is recomputed here
        for field in sorted(fields):
            where = f"{name} step {step} {field}: fdl {rec[field]!r}, independent {f[field]!r}"
            if field == "regime":
                assert rec[field] == f[field], where
            elif field in INTEGER:
                assert int(rec[field]) == f[field], where
            elif field.startswith("overlap"):  # taken from the stored float32 eigenfunctions
                assert float(rec[field]) == pytest.approx(f[field], rel=1e-7, abs=1e-7), where
            else:
                assert float(rec[field]) == pytest.approx(f[field], rel=1e-9, abs=1e-12), where
        theirs, ours = arrays[step], f["_arrays"]
        rho = ours["eigenvalues"]
        np.testing.assert_allclose(theirs["eigenvalues"], rho, rtol=1e-9, atol=1e-12 * rho[0])
        np.testing.assert_allclose(theirs["utility"], ours["utility"], rtol=0, atol=1e-11)
        np.testing.assert_allclose(theirs["quality"], ours["quality"], rtol=0, atol=1e-11)
        K = theirs["eigenvectors"].shape[1]
        assert K == min(len(rho), max(2 if name == "options" else 64, f["n_outputs"]))
        gaps = np.minimum(-np.diff(np.r_[np.inf, rho])[:K], -np.diff(np.r_[rho, -np.inf])[:K])
        separated = gaps > 1e-6 * rho[0]  # eigenvectors of (nearly) equal eigenvalues are not defined
        np.testing.assert_allclose(theirs["eigenvectors"][:, separated], ours["eigenvectors"][:, :K][:, separated],
                                   rtol=0, atol=1e-9)
        assert np.all(theirs["eigenvectors"][np.argmax(np.abs(theirs["eigenvectors"]), 0), np.arange(K)] > 0)
        assert theirs["eigenfunctions"].dtype == np.float32
        np.testing.assert_allclose(theirs["eigenfunctions"][:, separated],
                                   ours["eigenfunctions"][:, :K][:, separated], rtol=0,
                                   atol=2e-7 * float(np.abs(ours["eigenfunctions"]).max()))
        if run.center:
            np.testing.assert_allclose(theirs["feature_mean"], ours["feature_mean"], rtol=1e-12, atol=1e-15)
        else:
            assert "feature_mean" not in theirs


def test_frozen_backbone_is_coefficient(runs: dict[str, tuple[Run, Path]]) -> None:
    """SPEC §7: a frozen backbone is coefficient learning, CKA to the reference stays 1."""
    _, store = runs["frozen"]
    with h5py.File(store, "r") as h:
        series = h["trajectories/probe/4:input"]
        assert np.all(np.abs(series["cka_init"][()] - 1) <= 1e-12)
        assert np.all(np.abs(series["overlap_init"][()] - 1) <= 1e-6)
        assert np.all(series["param_dist_init"][1:] > 0)  # the head did learn
    result = fdl("classify", store, "--json")
    assert result.code == 0 and json.loads(result.stdout)["regime"] == "coefficient"


def test_classify_follows_the_rules(runs: dict[str, tuple[Run, Path]], tmp_path: Path) -> None:
    """docs/regimes.md's run rules, by hand, on the moved classification run."""
    run, store = runs["classes"]
    mine = independent(run, _factory(tmp_path))
    steps = sorted(mine)
    trajectory = [mine[s]["regime"] for s in steps]
    assert trajectory[-1] in ("MF", "EF") and "coefficient" not in trajectory[-3:]
    verdict = json.loads(fdl("classify", store, "--json").stdout)
    assert [t["regime"] for t in verdict["trajectory"]] == trajectory
    assert verdict["regime"] == (trajectory[-1] if len(set(trajectory[-3:])) == 1 else "undetermined")
