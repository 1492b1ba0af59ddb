"""An independent float64 implementation of SPEC.md's measures, compared with an fdl store.

Written from /work/shared/SPEC.md, docs/measures.md, docs/store.md and docs/regimes.md only.
Route: every checkpoint's probe features in memory, upcast to float64; the spectrum from the n×n
Gram (checked against the p×p second moment), eigenfunctions as √n times the Gram's eigenvectors,
qualities/utilities as explicit projections, D_LR from an explicit SVD of the centered outputs,
feature_pr from the singular values of the centered features, CKA from m×m centered Grams, NC1
from explicit class means and a pseudo-inverse of B.

    python tests/independent/ref.py   # every run of tests/independent/make_runs.py + the sample run
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

RANK_RTOL = 1e-10
TAUS = (0.90, 0.95, 0.99)
THRESHOLDS = {"cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.80, "mf_extra": 1}


# ----------------------------------------------------------------------------------------------
# loading


def load_factory(spec: str):
    file, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location(f"indep_model_{abs(hash(file))}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    return state


def step_of(path: Path) -> int:
    return int(path.name.split(".")[0].split("_")[-1])


def run_features(model: torch.nn.Module, x: np.ndarray, layer: str | None, batch: int = 1 << 30):
    """(F, Ŷ) in float64: F is the input of the last nn.Linear called, or `layer`'s output."""
    seen: list[torch.Tensor] = []
    handles = []
    if layer is None:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                handles.append(module.register_forward_hook(lambda m, i, o: seen.append(i[0].detach())))
    else:
        name, _, where = layer.partition(":")
        module = dict(model.named_modules())[name]
        if where == "input":
            handles.append(module.register_forward_hook(lambda m, i, o: seen.append(i[0].detach())))
        else:
            handles.append(module.register_forward_hook(lambda m, i, o: seen.append(o.detach())))
    model.eval()
    Fs, Ys = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            seen.clear()
            out = model(torch.from_numpy(x[start : start + batch]))
            feats = seen[-1]
            Fs.append(feats.reshape(feats.shape[0], -1).to(torch.float64).numpy())
            Ys.append(out.reshape(out.shape[0], -1).to(torch.float64).numpy())
    for h in handles:
        h.remove()
    return np.concatenate(Fs), np.concatenate(Ys)


def param_vector(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().to(torch.float64).reshape(-1).numpy() for _, p in model.named_parameters()])


# ----------------------------------------------------------------------------------------------
# one checkpoint


def eff_dim(q: np.ndarray) -> float:
    total = q.sum()
    if len(q) == 0 or total <= 0:
        return 0.0
    s = q / total
    s = s[s > 0]
    return float(math.exp(-(s * np.log(s)).sum()))


def k_tau(q: np.ndarray, tau: float) -> int | None:
    if len(q) == 0:
        return None
    cum = np.cumsum(q)
    if cum[-1] <= 0:
        return None
    for k in range(len(cum)):
        if cum[k] >= tau * cum[-1] - len(cum) * np.finfo(float).eps * cum[-1]:  # the sums' rounding
            return k + 1
    return len(cum)


def spectrum_gram(F: np.ndarray, center: bool):
    """Eigenpairs of M = F̃ᵀF̃/n from the n×n Gram F̃F̃ᵀ/n; eigenfunctions = √n × Gram eigenvectors."""
    n = len(F)
    mu = F.mean(0) if center else np.zeros(F.shape[1])
    Ft = F - mu
    K = Ft @ Ft.T / n
    w, U = np.linalg.eigh(K)
    w, U = w[::-1], U[:, ::-1]
    if w[0] <= 0:
        return np.zeros(0), np.zeros((F.shape[1], 0)), np.zeros((n, 0)), mu
    r = int(np.sum(w > w[0] * RANK_RTOL))
    rho, U = w[:r].copy(), U[:, :r].copy()
    V = Ft.T @ U / np.sqrt(n * rho)
    V /= np.linalg.norm(V, axis=0)  # renormalise the Nyström vectors
    for k in range(r):
        j = int(np.argmax(np.abs(V[:, k])))
        if V[j, k] < 0:
            V[:, k] *= -1
            U[:, k] *= -1
    E = np.sqrt(n) * U
    return rho, V, E, mu


def spectrum_moment(F: np.ndarray, center: bool):
    """The same from the p×p second moment (a check of the Gram route)."""
    n = len(F)
    mu = F.mean(0) if center else np.zeros(F.shape[1])
    Ft = F - mu
    w, V = np.linalg.eigh(Ft.T @ Ft / n)
    w, V = w[::-1], V[:, ::-1]
    r = int(np.sum(w > w[0] * RANK_RTOL))
    return w[:r]


def energy(G: np.ndarray, center: bool) -> float:
    """Σ_c ⟨g_c, g_c⟩ (of the centered g under --center; constant columns count as 0, not as rounding)."""
    Gt = G - G.mean(0) if center else G
    return 0.0 if center and np.all(G == G[:1]) else float((Gt**2).sum() / len(G))


def alignment(E: np.ndarray, G: np.ndarray, center: bool) -> np.ndarray:
    """Q_k = Σ_c ⟨e_k, g_c⟩² / Σ_c ⟨g_c, g_c⟩ (g centered too under --center)."""
    n = len(G)
    Gt = G - G.mean(0) if center else G
    energy = float((Gt**2).sum() / n)
    if energy <= 0 or E.shape[1] == 0:
        return np.zeros(E.shape[1])
    a = E.T @ Gt / n  # r × C coefficients a_kc
    return (a**2).sum(1) / energy


def d_lr_parts(F: np.ndarray, Yhat: np.ndarray, eta: float):
    Fc = F - F.mean(0)
    Yc = Yhat - Yhat.mean(0)
    sigma = np.linalg.svd(Fc, compute_uv=False)
    s4 = float((sigma**4).sum())
    s2 = float((sigma**2).sum())
    feature_pr = s2**2 / s4 if s2 > 0 else 0.0
    U, s, _ = np.linalg.svd(Yc, full_matrices=False)
    if s[0] <= 0 or s2 <= 0:
        return 1.0, 0, 0.0, feature_pr
    if eta >= 1:
        r_out = int(np.sum(s > RANK_RTOL * s[0]))
    else:
        e = s**2
        cum = np.cumsum(e)
        r_out = int(np.argmax(cum >= eta * cum[-1])) + 1
    Q = U[:, :r_out]
    inside = float(np.linalg.norm(Q.T @ Fc) ** 2)
    d_lr = 1.0 - inside / (math.sqrt(s4) * math.sqrt(r_out))
    return min(max(d_lr, 0.0), 1.0), r_out, inside / s2, feature_pr


def nc1(F: np.ndarray, labels: np.ndarray) -> float | None:
    classes = np.unique(labels)
    if len(classes) < 2:
        return None
    n = len(F)
    mu_g = F.mean(0)
    means = np.stack([F[labels == c].mean(0) for c in classes], 1)  # p × C'
    B = means - mu_g[:, None]
    if not np.any(B):
        return None
    within = F - means.T[np.searchsorted(classes, labels)]
    sigma_w = within.T @ within / n
    Bp = np.linalg.pinv(B, rcond=RANK_RTOL)  # C' × p
    # (1/C') tr(Σ_W Σ_B⁺), Σ_B = BBᵀ/C'  →  tr(B⁺ Σ_W B⁺ᵀ)
    return float(np.trace(Bp @ sigma_w @ Bp.T))


@dataclass
class Checkpoint:
    step: int
    path: Path
    F: np.ndarray
    Yhat: np.ndarray
    theta: np.ndarray
    rho: np.ndarray = field(default_factory=lambda: np.zeros(0))
    V: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    E: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    mu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    moment_check: float = 0.0


def per_checkpoint(ck: Checkpoint, targets: np.ndarray | None, task: str, center: bool, eta: float) -> None:
    F, Yhat = ck.F, ck.Yhat
    n, p = F.shape
    C = Yhat.shape[1]
    rho, V, E, mu = spectrum_gram(F, center)
    rho_m = spectrum_moment(F, center)
    rr = min(len(rho), len(rho_m))
    ck.moment_check = float(np.max(np.abs(rho[:rr] - rho_m[:rr])) / rho[0]) if rr else 0.0
    ck.rho, ck.V, ck.E, ck.mu = rho, V, E, mu
    r = len(rho)
    f: dict[str, Any] = {"n_probe": n, "n_features": p, "n_outputs": C, "rank": r}
    f["eff_dim"] = eff_dim(rho)
    util = alignment(E, Yhat, center)
    Y = None
    if task == "classes":
        Y = np.eye(C)[targets]
    elif task == "regression":
        Y = targets.reshape(n, -1).astype(np.float64)
    qual = alignment(E, Y, center) if Y is not None else None
    kc = min(C, r)
    f["eff_dim_utility"] = eff_dim(util)
    f["pi_hat_C"] = (float(util[:kc].sum()) if r else 0.0) if energy(Yhat, center) > 0 else None  # 0/0: None
    for tau in TAUS:
        f[f"k{round(tau * 100)}_utility"] = k_tau(util, tau)
    if qual is not None:
        f["eff_dim_quality"] = eff_dim(qual)
        f["pi_star_C"] = (float(qual[:kc].sum()) if r else 0.0) if energy(Y, center) > 0 else None
        for tau in TAUS:
            f[f"k{round(tau * 100)}_quality"] = k_tau(qual, tau)
    d, r_out, a, pr = d_lr_parts(F, Yhat, eta)
    f.update(d_lr=d, output_rank=r_out, dlr_alignment=a, feature_pr=pr)
    if task == "classes":
        f["nc1"] = nc1(F, targets)
        f["accuracy"] = float(np.mean(np.argmax(Yhat, 1) == targets))
    if Y is not None:
        f["loss"] = float(((Yhat - Y) ** 2).sum() / (n * C))
    if task == "regression":
        denom = float(((Y - Y.mean(0)) ** 2).sum())
        f["r2"] = 1.0 - float(((Yhat - Y) ** 2).sum()) / denom if denom > 0 else None
    f["param_norm"] = float(ck.theta @ ck.theta)
    ck.fields = f
    ck.arrays = {"eigenvalues": rho, "eigenvectors": V, "utility": util}
    if qual is not None:
        ck.arrays["quality"] = qual
    if center:
        ck.arrays["feature_mean"] = mu


# ----------------------------------------------------------------------------------------------
# across checkpoints


def cka_gram(A: np.ndarray, B: np.ndarray) -> float:
    Ac, Bc = A - A.mean(0), B - B.mean(0)
    Ka, Kb = Ac @ Ac.T, Bc @ Bc.T
    na, nb = np.linalg.norm(Ka), np.linalg.norm(Kb)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.sum(Ka * Kb) / (na * nb))


def overlap(Es: np.ndarray, Et: np.ndarray, k: int) -> float | None:
    k = min(k, Es.shape[1], Et.shape[1])
    if k == 0:
        return None

    def basis(E):
        U, s, _ = np.linalg.svd(E[:, :k], full_matrices=False)
        return U[:, s > RANK_RTOL * s[0]]

    Qs, Qt = basis(Es), basis(Et)
    return float(np.linalg.norm(Qs.T @ Qt) ** 2 / max(Qs.shape[1], Qt.shape[1]))


def regime(f: dict[str, Any], is_reference: bool) -> str:
    if is_reference:
        return "coefficient"
    cka, ovl = f.get("cka_init"), f.get("overlap_init")
    if cka is None and ovl is None:
        return "undetermined"
    static = (cka is None or cka >= THRESHOLDS["cka_static"]) and (ovl is None or ovl >= THRESHOLDS["overlap_static"])
    if cka is not None and cka >= THRESHOLDS["cka_static"] and ovl is not None and ovl < THRESHOLDS["overlap_moved"]:
        return "undetermined"
    if static:
        return "coefficient"
    k95 = f.get("k95_utility")
    if k95 is None:
        return "undetermined"
    return "MF" if k95 <= f["n_outputs"] + THRESHOLDS["mf_extra"] else "EF"


@dataclass
class Run:
    folder: Path
    model: str
    probe: Path
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    center: bool = False
    reference: int | None = None
    anchor_size: int = 4096
    layer: str | None = None
    eta: float = 0.99
    batch: int = 512


def analyse(run: Run) -> list[Checkpoint]:
    data = np.load(run.probe)
    x = data["x"]
    targets = data["y"] if "y" in data else None
    if targets is not None and targets.ndim == 2 and np.issubdtype(targets.dtype, np.integer):
        targets = targets.argmax(1)  # an integer one-hot matrix is class labels
    task = "none" if targets is None else ("classes" if np.issubdtype(targets.dtype, np.integer) else "regression")
    factory = load_factory(run.model)
    paths = sorted(
        [p for p in run.folder.iterdir() if p.suffix in (".pt", ".safetensors") and p.name.startswith("step_")],
        key=step_of,
    )
    cks = []
    for path in paths:
        model = factory(**run.model_kwargs)
        model.load_state_dict(load_state(path))
        F, Yhat = run_features(model, x, run.layer, run.batch)
        cks.append(Checkpoint(step_of(path), path, F, Yhat, param_vector(model)))
    for ck in cks:
        per_checkpoint(ck, targets, task, run.center, run.eta)
    ref = next(c for c in cks if c.step == run.reference) if run.reference is not None else cks[0]
    m = min(len(x), run.anchor_size)
    ref_norm = float(np.linalg.norm(ref.theta))
    for i, ck in enumerate(cks):
        f = ck.fields
        C = f["n_outputs"]
        f["cka_init"] = cka_gram(ck.F[:m], ref.F[:m])
        f["overlap_init"] = overlap(ck.E[:m], ref.E[:m], C)
        prev = cks[i - 1] if i else None
        f["prev_step"] = prev.step if prev else None
        f["cka_prev"] = cka_gram(ck.F[:m], prev.F[:m]) if prev else None
        f["overlap_prev"] = overlap(ck.E[:m], prev.E[:m], C) if prev else None
        dist = float(np.linalg.norm(ck.theta - ref.theta))
        f["param_dist_init"] = dist / ref_norm if ref_norm > 0 else (0.0 if dist == 0 else None)
        f["regime"] = regime(f, ck is ref)
        ck.arrays["eigenfunctions"] = ck.E[:m, : min(64, ck.E.shape[1])]
    return cks


# ----------------------------------------------------------------------------------------------
# comparison with a store


INT_FIELDS = {"n_probe", "n_features", "n_outputs", "rank", "output_rank", "prev_step"} | {
    f"k{t}_{w}" for t in (90, 95, 99) for w in ("quality", "utility")
}


def read_store(path: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, np.ndarray]], dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    arrays: dict[int, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as h:
        prov = json.loads(h.attrs["provenance"])
        for group in h["checkpoints"].values():
            step = int(group.attrs["step"])
            (probe,) = list(group)
            (layer,) = list(group[probe])
            series = group[probe][layer]
            records[step] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in series.attrs.items()}
            arrays[step] = {k: series[k][()] for k in series}
    return records, arrays, prov


def compare(run: Run, store: Path, cks: list[Checkpoint] | None = None) -> dict[str, tuple[float, float, str]]:
    """field → (max relative difference, max absolute difference, note)."""
    cks = cks if cks is not None else analyse(run)
    records, arrays, _ = read_store(store)
    ref_step = run.reference if run.reference is not None else cks[0].step
    assert sorted(records) == [c.step for c in cks], (sorted(records), [c.step for c in cks])
    out: dict[str, list[float]] = {}
    notes: dict[str, str] = {}

    def put(name, rel, ab, note=""):
        old = out.get(name, [0.0, 0.0])
        out[name] = [max(old[0], rel), max(old[1], ab)]
        if note:
            notes[name] = (notes.get(name, "") + " " + note).strip()

    for ck in cks:
        rec = records[ck.step]
        for name, mine in ck.fields.items():
            theirs = rec.get(name)
            if mine is None or theirs is None:
                if (mine is None) != (theirs is None):
                    put(name, math.inf, math.inf, f"null mismatch at {ck.step}: mine {mine} fdl {theirs}")
                else:
                    put(name, 0.0, 0.0)
                continue
            if name == "regime":
                put(name, 0.0 if mine == theirs else math.inf, 0.0, "" if mine == theirs else f"{ck.step}:{mine}/{theirs}")
                continue
            if name in INT_FIELDS:
                bad = int(mine) != int(theirs)
                put(
                    name, math.inf if bad else 0.0, abs(int(mine) - int(theirs)), f"{ck.step}:{mine}/{theirs}" if bad else ""
                )
                continue
            ab = abs(float(mine) - float(theirs))
            rel = ab / max(abs(float(mine)), 1e-300) if ab else 0.0
            put(name, rel, ab)
        unknown = set(rec) - set(ck.fields)
        for name in unknown:
            put(name, math.nan, math.nan, "not computed here")
        theirs_a = arrays[ck.step]
        rho1 = ck.rho[0] if len(ck.rho) else 1.0
        for name, mine in ck.arrays.items():
            if name not in theirs_a:
                put("[" + name + "]", math.inf, math.inf, f"missing in store at {ck.step}")
                continue
            t = theirs_a[name]
            if name == "eigenvectors" or name == "eigenfunctions":
                K = t.shape[1]
                mine = mine[:, :K]
                if name == "eigenvectors":
                    # only eigenvectors whose eigenvalue is separated from its neighbours are defined
                    gaps = np.minimum(
                        np.abs(np.diff(np.r_[np.inf, ck.rho[:K]])), np.abs(np.diff(np.r_[ck.rho[:K], -np.inf]))
                    )
                    ok = gaps > 1e-6 * rho1
                    d = np.abs(mine[:, ok] - t[:, ok]).max() if ok.any() else 0.0
                    # the sign convention exactly: is the largest |·| entry positive?
                    jj = np.argmax(np.abs(t), 0)
                    if np.any(t[jj, np.arange(K)] < 0):
                        put("[eigenvectors sign]", math.inf, math.inf, f"negative max entry at {ck.step}")
                    put("[eigenvectors]", d, d)
                else:
                    d = np.abs(mine.astype(np.float32) - t).max() / max(np.abs(mine).max(), 1e-300)
                    put("[eigenfunctions]", d, d)
                continue
            if mine.shape != t.shape:
                put("[" + name + "]", math.inf, math.inf, f"shape {mine.shape} vs {t.shape} at {ck.step}")
                continue
            if len(mine) == 0:
                continue
            ab = float(np.abs(mine - t).max())
            if name == "eigenvalues":
                big = mine > 1e-6 * rho1
                rel = float((np.abs(mine - t)[big] / mine[big]).max())
                put("[eigenvalues]", rel, ab / rho1)
            else:
                scale = float(np.abs(mine).max()) or 1.0
                put("[" + name + "]", ab / scale, ab)
        put("(gram vs p×p ρ, /ρ1)", ck.moment_check, ck.moment_check)
        # the overlaps again, from the store's own float32 eigenfunctions (isolates their rounding)
        C = ck.fields["n_outputs"]
        for key, other in (("overlap_init", ref_step), ("overlap_prev", ck.fields["prev_step"])):
            if other is None or rec.get(key) is None:
                continue
            o = overlap(theirs_a["eigenfunctions"].astype(np.float64), arrays[other]["eigenfunctions"].astype(np.float64), C)
            d = abs(o - float(rec[key])) if o is not None else math.inf
            put("(" + key + " from stored e_k)", d / abs(o or 1.0), d)
    return {k: (v[0], v[1], notes.get(k, "")) for k, v in out.items()}


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def default_runs(base: Path) -> dict[str, tuple[Run, Path]]:
    models = str(HERE / "models.py")
    return {
        "1 sample": (
            Run(
                ROOT / "sample_checkpoints",
                str(ROOT / "sample_checkpoints/model.py") + ":build",
                ROOT / "sample_checkpoints/probe.npz",
            ),
            base / "sample.h5",
        ),
        "2 mlp": (Run(base / "mlp", models + ":mlp", base / "probe_digits.npz"), base / "mlp.h5"),
        "3 frozen": (Run(base / "frozen", models + ":mlp", base / "probe_digits.npz"), base / "frozen.h5"),
        "4 cnn --center": (Run(base / "cnn", models + ":cnn", base / "probe_digits_img.npz", center=True), base / "cnn.h5"),
        "5 regression": (
            Run(base / "regr", models + ":mlp", base / "probe_regr.npz", model_kwargs={"hidden": 24, "n_out": 3}),
            base / "regr.h5",
        ),
        "6 p>n": (
            Run(base / "wide", models + ":mlp", base / "probe_small.npz", model_kwargs={"hidden": 256}),
            base / "wide.h5",
        ),
        "7 options": (
            Run(base / "mlp", models + ":mlp", base / "probe_digits.npz", reference=15, anchor_size=150, layer="1", eta=1.0),
            base / "mlp_opts.h5",
        ),
        "8 p<C, classes missing": (
            Run(base / "bottleneck", models + ":bottleneck", base / "probe_missing.npz"),
            base / "bottleneck.h5",
        ),
        "8b same, int one-hot y": (
            Run(base / "bottleneck", models + ":bottleneck", base / "probe_missing_onehot.npz"),
            base / "bottleneck_oh.h5",
        ),
        "9 p>n --center m<n": (
            Run(
                base / "wide",
                models + ":mlp",
                base / "probe_small.npz",
                model_kwargs={"hidden": 256},
                center=True,
                anchor_size=60,
            ),
            base / "wide_c.h5",
        ),
        "10 offset features": (
            Run(base / "shifted", models + ":shifted_mlp", base / "probe_digits.npz", layer="2", batch=128),
            base / "shifted.h5",
        ),
        "10b offset --center": (
            Run(base / "shifted", models + ":shifted_mlp", base / "probe_digits.npz", layer="2", batch=128, center=True),
            base / "shifted_c.h5",
        ),
        "12 regression --center": (
            Run(
                base / "regr", models + ":mlp", base / "probe_regr.npz", model_kwargs={"hidden": 24, "n_out": 3}, center=True
            ),
            base / "regr_c.h5",
        ),
        "13 zero head at step 0": (Run(base / "zerohead", models + ":mlp", base / "probe_digits.npz"), base / "zerohead.h5"),
        "14 --top-k 3": (Run(base / "mlp", models + ":mlp", base / "probe_digits.npz"), base / "mlp_topk3.h5"),
        "15 --anchor-size 8": (
            Run(base / "mlp", models + ":mlp", base / "probe_digits.npz", anchor_size=8),
            base / "mlp_m8.h5",
        ),
        "11 redundant output eta=1": (
            Run(base / "redundant", models + ":mlp", base / "probe_digits.npz", eta=1.0),
            base / "redundant.h5",
        ),
    }


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/s12runs")
    only = sys.argv[2:]
    table: dict[str, dict[str, tuple[float, float, str]]] = {}
    for name, (run, store) in default_runs(base).items():
        if only and not any(name.startswith(o) for o in only):
            continue
        table[name] = compare(run, store)
        print(f"== run {name}: {store}")
        for fname, (rel, ab, note) in sorted(table[name].items()):
            flag = "  <-- " if (rel > 1e-9 and not fname.startswith("[eigenfunctions]")) or note else ""
            print(f"  {fname:24s} rel {rel:9.2e}  abs {ab:9.2e}{flag}{note[:200]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
