"""A slow, obvious float64 reference of every measure of /work/shared/SPEC.md (session 27).

Written from SPEC.md alone, before reading fdl's spectral / moments code, and sharing no code with
`fdl_cli` or with the earlier references (`tests/reference.py`, `tests/independent/ref.py`): a third
reading of the contract, so a misreading shared by two of them shows up against the third.

Every function takes the full matrices (F: n×p features, Ŷ: n×C raw outputs, Y: n×C targets) and
does the textbook computation with explicit loops or dense linear algebra. Tiny n and p only.

Where SPEC leaves a choice open, the function takes it as an argument and its docstring names the
SPEC section; the tests pass the choice docs/measures.md says fdl implements.
"""

from __future__ import annotations

import math

import numpy as np

RANK_RTOL = 1e-10  # SPEC §2: keep ρ_k > ρ_1 · 1e-10
TAUS = (0.90, 0.95, 0.99)  # SPEC §3


def probe_inner(u: np.ndarray, v: np.ndarray) -> float:
    """SPEC §1: ⟨u, v⟩ = (1/n) Σ_i u(x_i) v(x_i)."""
    total = 0.0
    for a, b in zip(u, v, strict=True):
        total += float(a) * float(b)
    return total / len(u)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes))
    for i, c in enumerate(labels):
        out[i, int(c)] = 1.0
    return out


def centered(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0, keepdims=True)


# ---------------------------------------------------------------- §2 spectrum


def spectrum(features: np.ndarray, center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SPEC §2: eigenpairs (ρ_k, v_k) of M = FᵀF/n (of the centered F under `center`), ρ descending,
    ρ_k > ρ_1·1e-10 kept, each v_k signed so its largest-|·| entry is positive.

    Returns (rho (r,), V (p, r)). Diagonalises the p×p matrix directly (p is small in tests).
    """
    f = centered(features) if center else features.astype(np.float64)
    n = f.shape[0]
    m = f.T @ f / n
    m = (m + m.T) / 2.0
    vals, vecs = np.linalg.eigh(m)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    if vals.size == 0 or vals[0] <= 0.0:
        return np.zeros(0), np.zeros((f.shape[1], 0))
    keep = vals > vals[0] * RANK_RTOL
    vals, vecs = vals[keep], vecs[:, keep]
    for k in range(vecs.shape[1]):
        j = int(np.argmax(np.abs(vecs[:, k])))
        if vecs[j, k] < 0:
            vecs[:, k] = -vecs[:, k]
    return vals, vecs


def gram_spectrum(features: np.ndarray, center: bool = False) -> np.ndarray:
    """SPEC §2: 'same non-zero spectrum as the n×n Gram FFᵀ/n' (a cross-check of `spectrum`)."""
    f = centered(features) if center else features.astype(np.float64)
    vals = np.sort(np.linalg.eigvalsh(f @ f.T / f.shape[0]))[::-1]
    return vals[vals > vals[0] * RANK_RTOL] if vals.size and vals[0] > 0 else np.zeros(0)


def eigenfunctions(features: np.ndarray, rho: np.ndarray, vecs: np.ndarray, center: bool = False,
                   mean: np.ndarray | None = None) -> np.ndarray:
    """SPEC §2 (Nyström): e_k(x) = Φ(x)·v_k/√ρ_k, evaluated at the rows of `features` (n', r).

    Under `--center` Φ(x) is taken minus the probe mean `mean` (the centered covariance's function).
    """
    f = features.astype(np.float64)
    if center:
        assert mean is not None
        f = f - mean[None, :]
    out = np.zeros((f.shape[0], len(rho)))
    for k in range(len(rho)):
        out[:, k] = f @ vecs[:, k] / math.sqrt(rho[k])
    return out


# ---------------------------------------------------------------- §3 alignment


def shares(efuncs: np.ndarray, g: np.ndarray, center_energy: bool) -> np.ndarray:
    """SPEC §3: Q_k = Σ_c ⟨e_k, g_c⟩² / Σ_c ⟨g_c, g_c⟩.

    `center_energy` (SPEC silent, ambiguity '§3 centering'): whether the denominator is the energy of
    the centered g (the only consistent choice under --center, where every e_k has probe mean 0 and so
    cannot carry g's mean: Π(r) could then never reach 1 otherwise).
    """
    gg = centered(g) if center_energy else g
    energy = sum(probe_inner(gg[:, c], gg[:, c]) for c in range(g.shape[1]))
    out = np.zeros(efuncs.shape[1])
    if energy <= 0:
        return out
    for k in range(efuncs.shape[1]):
        out[k] = sum(probe_inner(efuncs[:, k], gg[:, c]) ** 2 for c in range(g.shape[1])) / energy
    return out


def k_tau(q: np.ndarray, tau: float) -> int | None:
    """SPEC §3: min{k : Π(k) ≥ τ·Π(r)} (k from 1); None when Π(r) = 0."""
    cum = np.cumsum(q)
    if len(cum) == 0 or cum[-1] <= 0:
        return None
    for k in range(len(cum)):
        if cum[k] >= tau * cum[-1] - len(cum) * np.finfo(float).eps * cum[-1]:  # the sums' rounding (docs)
            return k + 1
    return len(cum)


def effective_dimension(q: np.ndarray) -> float | None:
    """SPEC §3: D(q) = exp(−Σ q̃ ln q̃), q̃ = q/Σq (0 ln 0 = 0)."""
    total = float(np.sum(q))
    if total <= 0:
        return None
    h = 0.0
    for value in q:
        p = float(value) / total
        if p > 0:
            h -= p * math.log(p)
    return math.exp(h)


# ---------------------------------------------------------------- §4 D_LR


def output_rank(outputs: np.ndarray, energy: float = 0.99) -> tuple[int, np.ndarray]:
    """SPEC §4: r_Ŷ and Q = [u_1..u_{r_Ŷ}] from the SVD of the centered outputs."""
    yc = centered(outputs)
    u, s, _ = np.linalg.svd(yc, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return 0, u[:, :0]
    if energy >= 1.0:
        r = int(np.sum(s > RANK_RTOL * s[0]))
    else:
        e = s**2
        total = e.sum()
        r = 0
        acc = 0.0
        for i in range(len(e)):
            acc += e[i]
            r = i + 1
            if acc >= energy * total:
                break
    return r, u[:, :r]


def dlr_parts(features: np.ndarray, outputs: np.ndarray, energy: float = 0.99) -> dict[str, float | int | None]:
    """SPEC §4: D_LR, output_rank r_Ŷ, dlr_alignment A and feature_pr PR."""
    fc = centered(features)
    r, q = output_rank(outputs, energy)
    f_energy = float(np.sum(fc**2))
    cov = fc.T @ fc / fc.shape[0]
    pr = float(np.trace(cov) ** 2 / np.sum(cov**2)) if f_energy > 0 else None
    if r == 0 or f_energy <= 0:
        return {"d_lr": None, "output_rank": r, "dlr_alignment": None, "feature_pr": pr}
    inside = float(np.sum((q.T @ fc) ** 2))
    d_lr = 1.0 - inside / (float(np.linalg.norm(fc.T @ fc, "fro")) * math.sqrt(r))
    return {"d_lr": d_lr, "output_rank": r, "dlr_alignment": inside / f_energy, "feature_pr": pr}


# ---------------------------------------------------------------- §5 change


def cka(fs: np.ndarray, ft: np.ndarray) -> float:
    """SPEC §5: centered linear CKA ‖F_sᵀF_t‖² / (‖F_sᵀF_s‖ ‖F_tᵀF_t‖) on the same rows."""
    a, b = centered(fs), centered(ft)
    num = float(np.sum((a.T @ b) ** 2))
    den = float(np.linalg.norm(a.T @ a, "fro") * np.linalg.norm(b.T @ b, "fro"))
    return num / den


def overlap(es: np.ndarray, et: np.ndarray, k: int) -> float:
    """SPEC §5: O_k = ‖Q_sᵀQ_t‖²/k, Q an orthonormal basis (on the anchor rows) of the top-k
    eigenfunctions' values there. `es`, `et`: (m, ≥k) eigenfunction values on the anchors."""
    qs, _ = np.linalg.qr(es[:, :k])
    qt, _ = np.linalg.qr(et[:, :k])
    return float(np.sum((qs.T @ qt) ** 2)) / k


# ---------------------------------------------------------------- §6 baselines


def nc1(features: np.ndarray, labels: np.ndarray, n_classes: int, weighting: str, per_present: bool = False) -> float:
    """SPEC §6: NC1 = (1/C) tr(Σ_W Σ_B⁺) (ambiguity '§6 NC1': how Σ_B weighs the classes, about which mean).

    Σ_W = (1/n) Σ_i (φ_i − μ_{y_i})(φ_i − μ_{y_i})ᵀ. Σ_B, over the C' classes present:
    - "counts": (1/n) Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ, μ the probe mean (the between-class part of the total covariance);
    - "classes about the probe mean": (1/C') Σ_c (μ_c − μ)(μ_c − μ)ᵀ (docs/measures.md's choice);
    - "classes": (1/C') Σ_c (μ_c − μ̄)(μ_c − μ̄)ᵀ, μ̄ the mean of the class means (Papyan et al.'s balanced form).
    All three agree on balanced classes. The divisor is C, as SPEC writes it, or with `per_present` the C' classes
    present (docs/measures.md's choice); the two agree when every class is in the probe.
    """
    f = features.astype(np.float64)
    p = f.shape[1]
    present = [c for c in range(n_classes) if np.any(labels == c)]
    means = {c: f[labels == c].mean(axis=0) for c in present}
    sw = np.zeros((p, p))
    for i in range(f.shape[0]):
        d = f[i] - means[int(labels[i])]
        sw += np.outer(d, d)
    sw /= f.shape[0]
    mu = np.mean([means[c] for c in present], axis=0) if weighting == "classes" else f.mean(axis=0)
    sb = np.zeros((p, p))
    for c in present:
        d = means[c] - mu
        sb += (np.sum(labels == c) if weighting == "counts" else 1.0) * np.outer(d, d)
    sb /= f.shape[0] if weighting == "counts" else len(present)
    return float(np.trace(sw @ np.linalg.pinv(sb))) / (len(present) if per_present else n_classes)


def param_norm(tensors: list[np.ndarray]) -> float:
    """SPEC §6: ‖θ‖² summed over every entry of every tensor."""
    return float(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in tensors))


def relative_distance(tensors: list[np.ndarray], tensors0: list[np.ndarray]) -> float:
    """SPEC §6: ‖θ_t − θ_0‖ / ‖θ_0‖."""
    pairs = zip(tensors, tensors0, strict=True)
    num = sum(float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2)) for a, b in pairs)
    return math.sqrt(num) / math.sqrt(param_norm(tensors0))


def performance(outputs: np.ndarray, targets: np.ndarray, classification: bool) -> dict[str, float]:
    """SPEC §6: accuracy and MSE (classification: of the logits against one-hot labels, mean per entry);
    MSE and R² (regression; R² pooled over outputs: 1 − Σ(ŷ−y)² / Σ(y−ȳ_c)²)."""
    if classification:
        labels = targets.astype(int)
        y = one_hot(labels, outputs.shape[1])
        correct = sum(1 for i in range(len(labels)) if int(np.argmax(outputs[i])) == labels[i])
        return {"accuracy": correct / len(labels), "loss": float(np.mean((outputs - y) ** 2))}
    y = targets.reshape(outputs.shape).astype(np.float64)
    ss_res = float(np.sum((outputs - y) ** 2))
    ss_tot = float(np.sum(centered(y) ** 2))
    return {"loss": ss_res / y.size, "r2": 1.0 - ss_res / ss_tot}


# ---------------------------------------------------------------- one checkpoint


def checkpoint_measures(features: np.ndarray, outputs: np.ndarray, targets: np.ndarray | None,
                        classification: bool, center: bool = False, energy: float = 0.99) -> dict:
    """Every one-checkpoint measure of SPEC §2-§4 and the performance of §6, by name."""
    n_out = outputs.shape[1]
    rho, vecs = spectrum(features, center)
    mean = features.mean(axis=0)
    e = eigenfunctions(features, rho, vecs, center, mean)
    out: dict = {"eigenvalues": rho, "eigvecs": vecs, "efuncs": e, "rank": len(rho)}
    out["utility"] = shares(e, outputs, center_energy=center)
    out["d_rho"] = effective_dimension(rho)
    out["d_utility"] = effective_dimension(out["utility"])
    for tau in TAUS:
        out[f"k_hat_{tau}"] = k_tau(out["utility"], tau)
    out["pi_hat_r"] = float(np.sum(out["utility"]))
    if targets is not None:
        y = one_hot(targets, n_out) if classification else targets.reshape(len(targets), -1).astype(np.float64)
        out["quality"] = shares(e, y, center_energy=center)
        out["d_quality"] = effective_dimension(out["quality"])
        out["pi_star_r"] = float(np.sum(out["quality"]))
        for tau in TAUS:
            out[f"k_star_{tau}"] = k_tau(out["quality"], tau)
        out.update(performance(outputs, targets, classification))
    out.update(dlr_parts(features, outputs, energy))
    return out
