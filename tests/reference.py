"""Slow, obvious brute-force implementation of SPEC.md §2-§4 and §6, written from SPEC.md alone.

It shares no code with `fdl_cli.spectral`: it works on the full matrices F (n, p), Ŷ (n, C), Y (n, C),
diagonalises the n×n Gram with `numpy.linalg.eigh`, evaluates the eigenfunctions explicitly on the
probe (e_k = √n u_k), takes explicit projections / SVDs of centered matrices, builds one-hot Y with a
loop, and forms Σ_W / Σ_B explicitly with `np.linalg.pinv`. Only for tests (tiny n, p).

Choices where SPEC.md is silent follow `docs/measures.md`: centered mode also centers Ŷ and Y in Q̂, Q*
and their energies; loss = mean squared error per output entry; R² for regression targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RANK_RTOL = 1e-10
TAUS = (0.90, 0.95, 0.99)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    targets = np.zeros((len(labels), n_classes))
    for i, label in enumerate(labels):
        targets[i, int(label)] = 1.0
    return targets


def inner(u: np.ndarray, v: np.ndarray) -> float:
    """Probe inner product ⟨u, v⟩ = (1/n) Σ_i u_i v_i."""
    return float(np.dot(u, v)) / len(u)


def shares(eigenfunctions: np.ndarray, functions: np.ndarray) -> np.ndarray:
    """Q_k = Σ_c ⟨e_k, g_c⟩² / Σ_c ⟨g_c, g_c⟩ (zeros when the energy is 0)."""
    n_funcs = eigenfunctions.shape[1]
    energy = sum(inner(functions[:, c], functions[:, c]) for c in range(functions.shape[1]))
    out = np.zeros(n_funcs)
    if energy <= 0.0:
        return out
    for k in range(n_funcs):
        out[k] = sum(inner(eigenfunctions[:, k], functions[:, c]) ** 2 for c in range(functions.shape[1]))
    return out / energy


def has_energy(functions: np.ndarray, center: bool) -> bool:
    """Σ_c ⟨g_c, g_c⟩ > 0 (of the centered g under `center`: constant columns have none)."""
    return bool(np.any(functions != functions[:1])) if center else bool(np.any(functions != 0.0))


def k_tau(cumulative: np.ndarray, tau: float) -> int | None:
    if len(cumulative) == 0 or cumulative[-1] <= 0.0:
        return None
    for k in range(1, len(cumulative) + 1):
        # short by at most r·eps·Π(r) counts as reached: the sums' rounding (docs/measures.md, k_τ)
        if cumulative[k - 1] >= tau * cumulative[-1] - len(cumulative) * np.finfo(float).eps * cumulative[-1]:
            return k
    raise AssertionError("unreachable")


def effective_dimension(weights: np.ndarray) -> float:
    total = float(np.sum(weights))
    if len(weights) == 0 or total <= 0.0:
        return 0.0
    entropy = 0.0
    for w in weights:
        if w > 0:
            q = w / total
            entropy -= q * math.log(q)
    return math.exp(entropy)


@dataclass
class Reference:
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray  # (p, r), sign: largest-|·| entry positive
    eigenfunctions: np.ndarray  # (n, r) values of e_k on the probe
    quality: np.ndarray | None
    utility: np.ndarray
    scalars: dict[str, Any] = field(default_factory=dict)


def dlr(features: np.ndarray, outputs: np.ndarray, energy_share: float) -> tuple[float, int, float, float]:
    """(D_LR, r_Ŷ, A, PR) of SPEC.md §4 from explicit SVDs of the centered matrices."""
    fc = features - features.mean(axis=0)
    oc = outputs - outputs.mean(axis=0)
    n = len(features)
    cov = fc.T @ fc / n
    trace, frob = float(np.trace(cov)), float(np.linalg.norm(cov, "fro"))
    pr = trace**2 / frob**2 if frob > 0 else 0.0
    left, singular, _ = np.linalg.svd(oc, full_matrices=False)
    if singular.size == 0 or singular[0] <= 0.0:
        return 1.0, 0, 0.0, pr
    if energy_share >= 1.0:
        rank = int(np.sum(singular > RANK_RTOL * singular[0]))
    else:
        total = float(np.sum(singular**2))
        rank = next(r for r in range(1, len(singular) + 1) if np.sum(singular[:r] ** 2) >= energy_share * total)
    if trace <= 0.0:
        return 1.0, rank, 0.0, pr
    q = left[:, :rank]
    inside = float(np.linalg.norm(q.T @ fc, "fro") ** 2)
    d = 1.0 - inside / (float(np.linalg.norm(fc.T @ fc, "fro")) * math.sqrt(rank))
    return d, rank, inside / float(np.linalg.norm(fc, "fro") ** 2), pr


def nc1(features: np.ndarray, labels: np.ndarray, n_classes: int) -> float | None:
    present = [c for c in range(n_classes) if np.any(labels == c)]
    if len(present) < 2:
        return None
    n, p = features.shape
    global_mean = features.mean(axis=0)
    means = {c: features[labels == c].mean(axis=0) for c in present}
    within = np.zeros((p, p))
    for i in range(n):
        d = features[i] - means[int(labels[i])]
        within += np.outer(d, d)
    within /= n
    between = np.zeros((p, p))
    for c in present:
        d = means[c] - global_mean
        between += np.outer(d, d)
    between /= len(present)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10, hermitian=True))) / len(present)


def reference_measures(
    features: np.ndarray,
    outputs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    center: bool = False,
    dlr_energy: float = 0.99,
) -> Reference:
    """Every single-checkpoint measure by brute force. Give `labels` (classes) or `targets` (regression)."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    n, n_out = outputs.shape
    y = one_hot(labels, n_out) if labels is not None else targets
    f = features - features.mean(axis=0) if center else features
    o = outputs - outputs.mean(axis=0) if center else outputs
    gram = f @ f.T / n
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    rank = int(np.sum(values > values[0] * RANK_RTOL)) if values[0] > 0 else 0
    values, vectors = values[:rank], vectors[:, :rank]
    eigvecs = f.T @ vectors / np.sqrt(n * values)
    for k in range(rank):
        if eigvecs[np.argmax(np.abs(eigvecs[:, k])), k] < 0:
            eigvecs[:, k] *= -1
            vectors[:, k] *= -1
    efuncs = math.sqrt(n) * vectors
    utility = shares(efuncs, o)
    quality = None
    if y is not None:
        quality = shares(efuncs, y - y.mean(axis=0) if center else y)
    s: dict[str, Any] = {"n_probe": n, "n_features": features.shape[1], "n_outputs": n_out, "rank": rank}
    s["d_lr"], s["output_rank"], s["dlr_alignment"], s["feature_pr"] = dlr(features, outputs, dlr_energy)
    s["eff_dim"] = effective_dimension(values)
    s["eff_dim_utility"] = effective_dimension(utility)
    s["eff_dim_quality"] = effective_dimension(quality) if quality is not None else None
    pi_hat = np.cumsum(utility)
    pi_star = np.cumsum(quality) if quality is not None else None
    for tau in TAUS:
        name = f"k{round(tau * 100)}"
        s[f"{name}_utility"] = k_tau(pi_hat, tau)
        s[f"{name}_quality"] = k_tau(pi_star, tau) if pi_star is not None else None
    at = min(n_out, rank)
    s["pi_hat_C"] = (float(pi_hat[at - 1]) if rank else 0.0) if has_energy(outputs, center) else None  # 0/0
    s["pi_star_C"] = None if pi_star is None or not has_energy(y, center) else (float(pi_star[at - 1]) if rank else 0.0)
    s["nc1"] = nc1(features, labels, n_out) if labels is not None else None
    s["accuracy"] = float(np.mean(np.argmax(outputs, axis=1) == labels)) if labels is not None else None
    s["loss"] = float(np.mean((outputs - y) ** 2)) if y is not None else None
    s["cross_entropy"] = None
    if labels is not None:  # −log softmax of the label's logit, the log of the sum over its max
        top = outputs.max(axis=1, keepdims=True)
        log_softmax = outputs - top - np.log(np.sum(np.exp(outputs - top), axis=1, keepdims=True))
        s["cross_entropy"] = float(-np.mean(log_softmax[np.arange(n), labels]))
    s["r2"] = None
    if targets is not None:
        total = float(np.sum((targets - targets.mean(axis=0)) ** 2))
        s["r2"] = 1.0 - float(np.sum((outputs - targets) ** 2)) / total if total > 0 else None
    return Reference(values, eigvecs, efuncs, quality, utility, s)
