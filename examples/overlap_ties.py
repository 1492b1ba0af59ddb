"""Near-ties at the overlaps' cut: constructed runs with known answers, read by the current rules and by
rules that judge the overlap past the tie (the study behind docs/regimes.md, "Why a note and not a rule").

    python -m examples.overlap_ties                   # all 51 runs, ~2 minutes on one core
    python -m examples.overlap_ties --fast            # the 3 runs of tests/test_s15_overlap_ties.py, ~10 s
    python -m examples.overlap_ties --only syn_tie995_C1_e01 --seeds 0 --out runs/ties --json ties.json

35 constructions; the 8 whose verdict rests on a near-tie are repeated for each of --seeds (default
0,1,2: 51 runs, suffix _s<seed>), the others built once at the first seed. The seed draws the synthetic
inputs and perturbations (the digits runs do not depend on it). The table and the summary go to stdout,
each `fdl analyze` command and the progress to stderr.

Each run writes checkpoints (`step_<N>.pt`) and a probe under OUT/<name>/, is analysed by `fdl analyze`
(model `examples/_common.py:build_scaled_net`) into OUT/<name>.fdl.h5 and classified by
`fdl classify --json`, both on the command line. Then, per checkpoint, from the stored eigenvalues and
eigenfunctions: the relative eigengaps (λ_k − λ_{k+1}) / λ_k at the overlaps' cut k = C of the reference
and of the checkpoint, and, where one is below a cut, k′ — the smallest k′ > k whose gaps clear the cut
on both sides — with the overlap of the top-k′ eigenspaces. The rules compared:

    now   fdl's rules (docs/regimes.md): overlap_init is the top-C overlap
    A     a near-tie on either side (min of the two gaps < cut): judge the overlap at k′ instead
    C     a near-tie on both sides (max of the two gaps < cut): judge the overlap at k′ instead
    D     like C, but where the overlap at k′ would make a checkpoint static that the rules call moved,
          read it as conflicting (undetermined) instead
    (the letters are the study's; its variant B, D triggered as A, is left out)

k′ is searched over every stored eigenfunction, as the study did; `fdl classify`'s note stops at 2k
(the digits MLPs' first clear gap past C = 10 is at 51 – 56: the k′ column); stopping at 2k here changes
no verdict of the table (those runs read MF either way). The known answers are
`coefficient` (lazy by construction), `moved` (trained, or built to turn an eigenspace), and `gray`
(an eigenspace turned inside a near-tied pair: the kernel barely changed, the top-C space did).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ScaledNet, build_scaled_net, digits_split, fresh_folder, model_spec, quiet_cpu, run_fdl_analyze
from torch import nn

CUTS = (0.1, 0.2, 0.3)
#: The rules' verdicts in the printed table (all of them, at every cut, are in --json's output).
SHOWN = ("now", "A0.1", "A0.2", "A0.3", "C0.2", "D0.2")
SHORT = {"coefficient": "coef", "undetermined": "undet"}


# -------------------------------------------------------------------------------------------- data


def synthetic(scales: Sequence[float], c: int, seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """n Gaussian inputs with per-direction `scales`; targets: x₀ − x₁ + noise (C = 1), the sign of x₀
    (C = 2), or which of the first C directions is largest relative to its scale (C > 2)."""
    s = np.asarray(scales)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, len(s))) * s).astype(np.float32)
    if c == 1:
        return x, (x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(n)).astype(np.float32)
    if c == 2:
        return x, (x[:, 0] > 0).astype(np.int64)
    return x, np.argmax(np.abs(x[:, :c] / s[:c]), axis=1).astype(np.int64)


def digits(c: int) -> tuple[np.ndarray, np.ndarray]:
    """1000 of scikit-learn's bundled digits (not whitened): the 10 classes (C = 10), digit ≥ 5 (C = 2),
    or the digit as a standardised number (C = 1, regression)."""
    x, label, _, _ = digits_split(1000, whiten=False)
    if c == 10:
        return x, label
    if c == 2:
        return x, (label >= 5).astype(np.int64)
    return x, ((label - 4.5) / 3.0).astype(np.float32)


def one_hot_or_column(y: np.ndarray, c: int) -> torch.Tensor:
    """Squared-loss targets: y as a column (C = 1) or one-hot."""
    t = torch.from_numpy(y)
    return t.reshape(-1, 1).float() if c == 1 else nn.functional.one_hot(t, c).float()


def log_steps(total: int, count: int = 8) -> list[int]:
    """Step 0 and `count − 1` log-spaced steps up to `total` (as the calibration suite saves)."""
    grid = np.unique(np.round(np.geomspace(1, total, count - 1)).astype(int))
    return [0, *(int(s) for s in grid)]


# -------------------------------------------------------------------------------------- constructions
#
# Each construction writes `folder/ckpt/step_<N>.pt` and `folder/probe.npz` and returns the model's
# keyword arguments (for `fdl analyze --model-kwargs`). `seed` draws the synthetic data and perturbations;
# the network's initialisation is build_scaled_net's (seed 0) throughout.


def _start(folder: Path, x: np.ndarray, y: np.ndarray, probe_n: int) -> Path:
    np.savez(folder / "probe.npz", x=x[:probe_n], y=y[:probe_n])
    return fresh_folder(folder / "ckpt")


def _save(model: nn.Module, ckpt: Path, step: int) -> None:
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, ckpt / f"step_{step}.pt")


def _fit_head(model: ScaledNet, x: np.ndarray, y: np.ndarray, c: int) -> None:
    """The head set to the ridge (1e-3) least-squares fit on the current features: only the features vary."""
    with torch.no_grad():
        f = model.body(torch.from_numpy(x)).double()
        f1 = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
        gram = f1.T @ f1 + 1e-3 * torch.eye(f1.shape[1], dtype=f.dtype)
        solution = torch.linalg.solve(gram, f1.T @ one_hot_or_column(y, c).double())
        model.head.weight.copy_(solution[:-1].T.float())
        model.head.bias.copy_(solution[-1].float())


def perturbed_linear(folder: Path, seed: int, *, scales: Sequence[float], c: int, eps: float) -> dict[str, Any]:
    """Lazy: linear features W₀ = I (2d × d) taking 7 steps W += eps·N(0, 1); the head refitted each step."""
    d = len(scales)
    x, y = synthetic(scales, c, seed)
    kwargs = {"kind": "linear", "n_in": d, "hidden": 2 * d, "n_out": c}
    ckpt = _start(folder, x, y, 600)
    model = build_scaled_net(**kwargs)
    torch.manual_seed(1 + seed)
    with torch.no_grad():
        model.body.weight.copy_(torch.eye(2 * d, d))
        for step in range(8):
            if step:
                model.body.weight.add_(eps * torch.randn(2 * d, d))
            _fit_head(model, x, y, c)
            _save(model, ckpt, step)
    return kwargs


def perturbed_random_features(folder: Path, seed: int, *, c: int, eps: float) -> dict[str, Any]:
    """Lazy: 512 random ReLU features of digits, the first layer taking 7 steps of eps·(its init std)·N(0, 1)."""
    x, y = digits(c)
    kwargs = {"kind": "mlp", "n_in": 64, "hidden": 512, "depth": 1, "n_out": c}
    ckpt = _start(folder, x, y, 500)
    model = build_scaled_net(**kwargs)
    torch.manual_seed(1)
    first = model.body[0]
    scale = float(first.weight.detach().std())
    with torch.no_grad():
        for step in range(8):
            if step:
                first.weight.add_(eps * scale * torch.randn_like(first.weight))
                first.bias.add_(eps * scale * torch.randn_like(first.bias))
            _fit_head(model, x, y, c)
            _save(model, ckpt, step)
    return kwargs


def trained_digits(
    folder: Path, seed: int, *, c: int, hidden: int = 64, depth: int = 2, alpha: float = 1.0, total: int, lr: float,
    loss: str = "mse", zero_head: bool = False,
) -> dict[str, Any]:
    """An MLP on digits, SGD (momentum 0.9, batch 64), 8 log-spaced checkpoints. With `alpha` and
    `zero_head` the loss is divided by alpha² (lazy training): the parameters move O(1/alpha)."""
    x, y = digits(c)
    kwargs = {"kind": "mlp", "n_in": 64, "hidden": hidden, "depth": depth, "n_out": c, "alpha": alpha}
    ckpt = _start(folder, x, y, 500)
    model = build_scaled_net(**kwargs)
    if zero_head:
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xt = torch.from_numpy(x)
    target = torch.from_numpy(y) if loss == "ce" else one_hot_or_column(y, c)
    save_at = set(log_steps(total))
    generator = torch.Generator().manual_seed(0)
    step = 0
    while True:
        for batch in torch.randperm(len(xt), generator=generator).split(64):
            if step in save_at:
                _save(model, ckpt, step)
            if step >= total:
                return kwargs
            out = model(xt[batch])
            value = (nn.functional.cross_entropy(out, target[batch]) if loss == "ce"
                     else nn.functional.mse_loss(out, target[batch]) / alpha**2)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            step += 1


def rotation(folder: Path, seed: int, *, gains: Sequence[float], degrees: float) -> dict[str, Any]:
    """Built to turn: linear features W_t = diag(gains)·R_t, R_t rotating the input plane of directions
    2 and 3 (equal input scales there) by degrees·t/7. The top-2 eigenfunction turns from x·e₂ toward
    x·e₃ while the eigenvalues stay put; with gains 1 and 0.95 on that plane, a near-tied pair turns."""
    x, y = synthetic([1.0, 0.8, 0.8, 0.4, 0.3, 0.2, 0.1, 0.05], 2, seed)
    kwargs = {"kind": "linear", "n_in": 8, "hidden": 8, "n_out": 2}
    ckpt = _start(folder, x, y, 600)
    model = build_scaled_net(**kwargs)
    with torch.no_grad():
        for step in range(8):
            angle = math.radians(degrees * step / 7)
            turn = torch.eye(8)
            cos, sin = math.cos(angle), math.sin(angle)
            turn[1, 1], turn[1, 2], turn[2, 1], turn[2, 2] = cos, -sin, sin, cos
            model.body.weight.copy_(torch.diag(torch.tensor(list(gains))) @ turn)
            _fit_head(model, x, y, 2)
            _save(model, ckpt, step)
    return kwargs


def trained_swap(folder: Path, seed: int, *, scales: Sequence[float], dims: Sequence[int], total: int, lr: float,
                 hidden: int) -> dict[str, Any]:
    """Moved: a linear net (W₀ = I, head × 0.1) trained by full-batch GD on the input coordinates `dims`
    (unit scale). The one of them just past a near-tie at k = C is amplified and overtakes the direction
    before it, which is not a target: real, small feature learning that swaps two eigenvalues."""
    s = np.asarray(scales)
    c = len(dims)
    x = (np.random.default_rng(seed).standard_normal((600, len(s))) * s).astype(np.float32)
    # one target: a vector divided by a Python float (float32 arithmetic, as the study computed it)
    y = (x[:, dims[0]] / float(s[dims[0]]) if c == 1 else x[:, list(dims)] / s[list(dims)]).astype(np.float32)
    kwargs = {"kind": "linear", "n_in": len(s), "hidden": hidden, "n_out": c}
    ckpt = _start(folder, x, y, 600)
    model = build_scaled_net(**kwargs)
    with torch.no_grad():
        model.body.weight.copy_(torch.eye(hidden, len(s)))
        model.head.weight.mul_(0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).reshape(len(y), c)
    save_at = set(log_steps(total))
    for step in range(total + 1):
        if step in save_at:
            _save(model, ckpt, step)
        loss = nn.functional.mse_loss(model(xt), yt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return kwargs


# ------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One constructed run: its known answer, how it is built, whether it is repeated over --seeds."""

    name: str
    known: str  # coefficient | moved | gray
    why: str
    make: Callable[[Path, int], dict[str, Any]]
    seeded: bool = False  # built for every seed of --seeds (the others once, at the first)
    fast: bool = False  # one of --fast's runs

    @property
    def on_digits(self) -> bool:
        """A network trained (or perturbed) on digits, not a constructed linear map on synthetic inputs."""
        return getattr(self.make, "func", None) in (trained_digits, perturbed_random_features)


TIE = [1.0, 0.995, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]  # two leading input directions within 0.5 %
C10 = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.547, 0.3, 0.25, 0.2, 0.15, 0.1]  # 10th ≈ 11th
C2 = [1.0, 0.8, 0.78, 0.5, 0.4, 0.3, 0.2, 0.1]  # 2nd ≈ 3rd
LAZY, MOVED, GRAY = "coefficient", "moved", "gray"


def _lazy_linear(name: str, scales: Sequence[float], c: int, eps: float, **flags: bool) -> Run:
    why = f"linear features W = I + {eps:g}·N(0,1) per step, input scales {', '.join(f'{v:g}' for v in scales[:3])}, …"
    return Run(name, LAZY, why, partial(perturbed_linear, scales=scales, c=c, eps=eps), **flags)


def _swap(name: str, scales: Sequence[float], dims: Sequence[int], total: int, lr: float, hidden: int,
          **flags: bool) -> Run:
    why = f"linear net trained on x[{','.join(map(str, dims))}], {total} GD steps: a learned direction overtakes another"
    return Run(name, MOVED, why, partial(trained_swap, scales=scales, dims=dims, total=total, lr=lr, hidden=hidden),
               **flags)


RUNS: tuple[Run, ...] = (
    # lazy by construction
    _lazy_linear("syn_tie995_C1_e01", TIE, 1, 0.01, seeded=True, fast=True),
    _lazy_linear("syn_tie995_C1_e03", TIE, 1, 0.03),
    _lazy_linear("syn_tie97_C1_e01", [1.0, 0.97, *TIE[2:]], 1, 0.01, seeded=True),
    _lazy_linear("syn_tie93_C1_e02", [1.0, 0.93, *TIE[2:]], 1, 0.02),
    _lazy_linear("syn_clear80_C1_e02", [1.0, 0.8, *TIE[2:]], 1, 0.02),
    _lazy_linear("syn_tie_C2_e01", [1.0, 0.8, 0.795, 0.5, 0.4, 0.3, 0.2, 0.1], 2, 0.01, seeded=True),
    _lazy_linear("syn_tie_C10_e01", C10, 10, 0.01, seeded=True),
    _lazy_linear("syn_tie_C10_e003", C10, 10, 0.003),
    *(Run(f"dig_rf_C{c}", LAZY, "512 random ReLU features of digits, first layer perturbed 0.3 % per step",
          partial(perturbed_random_features, c=c, eps=0.003)) for c in (10, 2, 1)),
    *(Run(f"dig_widelr_C{c}", LAZY, "1024-wide MLP on digits, SGD lr 0.01, 300 steps",
          partial(trained_digits, c=c, hidden=1024, depth=1, total=300, lr=0.01)) for c in (10, 2, 1)),
    *(Run(f"dig_alpha_C{c}", LAZY, "256-256 MLP, output scale alpha = 100, zero head, loss / alpha²",
          partial(trained_digits, c=c, hidden=256, alpha=100.0, zero_head=True, total=1000, lr=0.05))
      for c in (10, 2, 1)),
    # moved: trained on digits
    *(Run(f"dig_mse_C{c}", MOVED, "64-64 MLP, SGD lr 0.05, 2000 steps, MSE",
          partial(trained_digits, c=c, total=2000, lr=0.05)) for c in (10, 2, 1)),
    *(Run(f"dig_ce_C{c}", MOVED, "64-64 MLP, SGD lr 0.05, 2000 steps, cross-entropy",
          partial(trained_digits, c=c, total=2000, lr=0.05, loss="ce")) for c in (10, 2)),
    *(Run(f"dig_small_C{c}", MOVED, "64-64 MLP, SGD lr 0.005, 150 steps (early, small moves)",
          partial(trained_digits, c=c, total=150, lr=0.005)) for c in (10, 2, 1)),
    Run("dig_small_ce_C10", MOVED, "64-64 MLP, SGD lr 0.005, 150 steps, cross-entropy",
        partial(trained_digits, c=10, total=150, lr=0.005, loss="ce")),
    # moved: an eigenspace turned, or two eigenvalues swapped by learning
    Run("rot_clear_C2_90", MOVED, "top-2 eigenfunction turned 90° (gains 1, 0.6: clear gap)",
        partial(rotation, gains=[1, 1, 0.6, 1, 1, 1, 1, 1], degrees=90)),
    Run("rot_clear_C2_25", MOVED, "top-2 eigenfunction turned 25° (gains 1, 0.6: clear gap)",
        partial(rotation, gains=[1, 1, 0.6, 1, 1, 1, 1, 1], degrees=25)),
    _swap("swap_trained_C1_97", [1.0, 0.97, *TIE[2:]], [1], 200, 0.02, 16),
    _swap("swap_trained_C1_97_short", [1.0, 0.97, *TIE[2:]], [1], 16, 0.02, 16, seeded=True, fast=True),
    _swap("swap_trained_C1_90", [1.0, 0.9, *TIE[2:]], [1], 200, 0.02, 16),
    _swap("swap_trained_C2", C2, [0, 2], 200, 0.02, 16),
    _swap("swap_trained_C2_short", C2, [0, 2], 20, 0.02, 16, seeded=True),
    _swap("swap_trained_C10", C10, [*range(9), 10], 1000, 0.05, 32, seeded=True, fast=True),
    # gray: a near-tied pair turned
    Run("rot_tied_C2_90", GRAY, "top-2 eigenfunction turned 90° inside a near-tied pair (gains 1, 0.95)",
        partial(rotation, gains=[1, 1, 0.95, 1, 1, 1, 1, 1], degrees=90), seeded=True),
)


def run_name(run: Run, seed: int) -> str:
    return run.name if seed == 0 else f"{run.name}_s{seed}"


# --------------------------------------------------------------------------------------- fdl, measures


def fdl_classify(store: Path) -> dict[str, Any]:
    """`fdl classify STORE --json` on the command line: the verdict a user reads."""
    done = subprocess.run(
        [sys.executable, "-m", "fdl_cli", "classify", str(store), "--json"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fdl classify {store} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def wider_k(spectrum_ref: Sequence[float], spectrum: Sequence[float], k: int, columns: int, cut: float) -> int | None:
    """The smallest k′ > k (up to `columns`) whose relative gaps clear `cut` in both spectra; None if none."""
    from fdl_cli.regimes import relative_gap

    for wider in range(k + 1, columns + 1):
        gaps = (relative_gap(spectrum_ref, wider), relative_gap(spectrum, wider))
        if all(gap is not None and gap >= cut for gap in gaps):
            return wider
    return None


@dataclass
class Measured:
    """One run's per-checkpoint measures and the verdicts of every rule."""

    run: str
    base: str  # the run's name without _s<seed>
    seed: int
    known: str
    on_digits: bool
    model_kwargs: dict[str, Any]
    n_outputs: int
    checkpoints: list[dict[str, Any]]
    verdicts: dict[str, str]
    classify_json: dict[str, Any] = field(repr=False)


def measure(run: Run, seed: int, model_kwargs: dict[str, Any], store: Path, classified: Mapping[str, Any]) -> Measured:
    """The gaps, k′ and the overlap at k′ of every checkpoint of `store`, and each rule's verdict.

    The rules' verdicts come from `fdl_cli.regimes.classify_run` on the stored records with overlap_init
    replaced where a rule judges the overlap at k′ (the reference checkpoint is never changed)."""
    from fdl_cli.regimes import STATIC, Thresholds, classify_run, feature_movement, relative_gap
    from fdl_cli.report import _distinct_rows, iter_array, load_run
    from fdl_cli.spectral import eigenspace_overlap

    thresholds = Thresholds()
    name = run_name(run, seed)
    stored = load_run(store)
    series = stored.series[0]
    records = sorted(series.records, key=lambda record: int(record["step"]))
    steps = [int(record["step"]) for record in records]
    arrays = {name: dict(iter_array(stored, series, steps, name)) for name in ("eigenfunctions", "eigenvalues")}
    if any(value is None for values in arrays.values() for value in values.values()):
        raise RuntimeError(f"{store}: a checkpoint has no stored eigenfunctions or eigenvalues")
    functions = {s: np.asarray(a, dtype=np.float64) for s, a in arrays["eigenfunctions"].items()}
    spectra = {s: [float(v) for v in np.asarray(a)] for s, a in arrays["eigenvalues"].items()}
    reference, k = steps[0], int(records[0]["n_outputs"])

    now = classify_run(records, thresholds)
    if now.regime != classified["regime"]:  # the rules recomputed here are the ones `fdl classify` applied
        raise RuntimeError(f"{name}: classify_run reads {now.regime}, fdl classify {classified['regime']}")
    rules: dict[str, list[dict[str, Any]]] = {f"{rule}{cut}": [] for rule in "ACD" for cut in CUTS}
    rows = []
    for record in records:
        step = int(record["step"])
        a, b = functions[reference], functions[step]
        points = _distinct_rows(a, b)
        gap_ref, gap = relative_gap(spectra[reference], k), relative_gap(spectra[step], k)
        row: dict[str, Any] = {
            "step": step, "cka_init": record.get("cka_init"), "overlap_init": record.get("overlap_init"),
            # the top-k overlap recomputed from the stored eigenfunctions: equals overlap_init
            "overlap_k": eigenspace_overlap(a, b, k=k, points=points) if step != reference else 1.0,
            "gap_ref": gap_ref, "gap": gap, "movement": feature_movement(record, thresholds)[0],
            "wider": {},
        }  # fmt: skip
        gaps = [g for g in (gap_ref, gap) if g is not None]
        for cut in CUTS:
            tie_either = len(gaps) == 2 and min(gaps) < cut
            tie_both = len(gaps) == 2 and max(gaps) < cut
            wider = wider_k(spectra[reference], spectra[step], k, min(a.shape[1], b.shape[1]), cut) if tie_either else None
            past = eigenspace_overlap(a, b, k=wider, points=points) if wider else None
            row["wider"][str(cut)] = {"k": wider, "overlap": past}
            judged = step != reference and past is not None
            either = dict(record, overlap_init=past) if judged and tie_either else dict(record)
            both = dict(record, overlap_init=past) if judged and tie_both else dict(record)
            conflict = dict(record)
            if step != reference and row["movement"] != STATIC and feature_movement(both, thresholds)[0] == STATIC:
                # static by C means CKA static; with an overlap below overlap_moved the rules read `conflict`
                conflict["overlap_init"] = 0.0
            rules[f"A{cut}"].append(either)
            rules[f"C{cut}"].append(both)
            rules[f"D{cut}"].append(conflict)
        rows.append(row)
    verdicts = {"now": now.regime, **{rule: classify_run(changed, thresholds).regime for rule, changed in rules.items()}}
    return Measured(name, run.name, seed, run.known, run.on_digits, model_kwargs, k, rows, verdicts, dict(classified))


# ------------------------------------------------------------------------------------------ output


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: Sequence[Measured]) -> str:
    """One line per run: known answer, C, each rule's verdict, min CKA, the final checkpoint's overlap,
    gaps at k (reference, final), and k′ with the overlap there at cut 0.2."""
    head = (f"{'run':29} {'known':11} {'C':>2} " + " ".join(f"{rule:>5}" for rule in SHOWN)
            + f" {'minCKA':>7} {'fin ovl':>7} {'gapRef':>6} {'gapFin':>6} {'k′':>3} {'ovl k′':>7}")
    lines = [head]
    for res in results:
        last, after = res.checkpoints[-1], res.checkpoints[1:]
        min_cka = min((r["cka_init"] for r in after if r["cka_init"] is not None), default=None)
        past = last["wider"]["0.2"]
        lines.append(
            f"{res.run:29} {res.known:11} {res.n_outputs:>2} "
            + " ".join(f"{SHORT.get(res.verdicts[rule], res.verdicts[rule]):>5}" for rule in SHOWN)
            + f" {_num(min_cka):>7} {_num(last['overlap_init']):>7} {_num(last['gap_ref'], 3):>6} "
            f"{_num(last['gap'], 3):>6} {_num(past['k']):>3} {_num(past['overlap']):>7}"
        )
    lines.append("(verdicts: coef = coefficient, undet = undetermined; A/C/D at cuts 0.1–0.3; k′ at cut 0.2)")
    return "\n".join(lines)


def summary(results: Sequence[Measured]) -> dict[str, Any]:
    """The counts docs/regimes.md quotes ("Why a note and not a rule")."""
    from fdl_cli.regimes import Thresholds

    th = Thresholds()
    after = [(res, row) for res in results for row in res.checkpoints[1:]]
    on_digits = [(res, row) for res, row in after if res.on_digits]

    def alone(row: Mapping[str, Any]) -> bool:  # CKA says static, the overlap does not
        cka, overlap = row["cka_init"], row["overlap_init"]
        return cka is not None and overlap is not None and cka >= th.cka_static and overlap < th.overlap_static

    def min_cka(res: Measured) -> float:
        return min(r["cka_init"] for r in res.checkpoints[1:] if r["cka_init"] is not None)

    lazy = [res for res in results if res.known == LAZY]
    misread = [res for res in lazy if res.verdicts["now"] != "coefficient"]
    # misread on the overlap alone: CKA never left cka_static (the others' CKA itself says moved)
    on_overlap = [res for res in misread if min_cka(res) >= th.cka_static]
    moved = [res for res in results if res.known == MOVED]
    by_rule = {}
    for rule in ("now", *(f"{r}{cut}" for r in "ACD" for cut in CUTS)):
        by_rule[rule] = {
            "lazy_fixed": sum(res.verdicts[rule] == "coefficient" for res in on_overlap),
            "lazy_misread": [res.run for res in lazy if res.verdicts[rule] != "coefficient"],
            "moved_read_coefficient": [res.run for res in moved if res.verdicts[rule] == "coefficient"],
            "gray": {res.run: res.verdicts[rule] for res in results if res.known == GRAY},
        }
    crossing = [res for res in results if res.base == "swap_trained_C10"]  # trained past a near-tie at C = 10
    mid_swap = [res for res in moved if res.verdicts["now"] != "coefficient" and res.verdicts["C0.2"] == "coefficient"]
    # the reference (initial) gap at C = 10 of each digits network, one per architecture: the runs that
    # share one (MSE, cross-entropy, short) share their initialisation, hence their reference
    networks: dict[str, float] = {}
    for res in results:
        if res.on_digits and res.n_outputs == 10 and res.checkpoints[0]["gap_ref"] is not None:
            networks.setdefault(json.dumps(res.model_kwargs, sort_keys=True), res.checkpoints[0]["gap_ref"])
    return {
        "runs": len(results),
        "checkpoints_after_reference": len(after),
        "known": {kind: sum(res.known == kind for res in results) for kind in (LAZY, MOVED, GRAY)},
        "lazy_misread_now": [res.run for res in misread],
        "lazy_misread_now_on_overlap_alone": [res.run for res in on_overlap],
        "rules": by_rule,
        "crossing_runs": {res.run: {r: res.verdicts[r] for r in ("now", "A0.2", "C0.2", "D0.2")} for res in crossing},
        "mid_swap_coefficient_under_C0.2": {res.run: round(min_cka(res), 4) for res in mid_swap},
        "overlap_alone_checkpoints": sum(alone(row) for _, row in after),
        "overlap_alone_checkpoints_digits": sum(alone(row) for _, row in on_digits),
        "checkpoints_digits": len(on_digits),
        "digits_initial_gaps_C10": sorted(networks.values()),
        "max_overlap_recomputation_error": max(
            (abs(row["overlap_k"] - row["overlap_init"]) for _, row in after
             if row["overlap_k"] is not None and row["overlap_init"] is not None), default=0.0),
    }  # fmt: skip


def summary_text(s: Mapping[str, Any]) -> str:
    rules = s["rules"]
    lines = [
        f"{s['runs']} runs ({s['checkpoints_after_reference']} checkpoints after the reference): "
        + ", ".join(f"{n} {kind}" for kind, n in s["known"].items()),
        f"lazy runs the current rules misread: {len(s['lazy_misread_now'])}, of which "
        f"{len(s['lazy_misread_now_on_overlap_alone'])} on the overlap alone (CKA ≥ cka_static throughout)",
    ]
    for rule in ("now", "A0.1", "A0.2", "A0.3", "C0.1", "C0.2", "C0.3", "D0.2"):
        r = rules[rule]
        lines.append(
            f"  {rule:>4}: fixes {r['lazy_fixed']} of those; lazy misread {len(r['lazy_misread'])}; "
            f"moved read coefficient {len(r['moved_read_coefficient'])}; gray: "
            + (", ".join(f"{SHORT.get(v, v)}" for v in r["gray"].values()) or "-")
        )
    lines.append("trained crossing runs: " + "; ".join(
        f"{run} " + " ".join(f"{r}={SHORT.get(v, v)}" for r, v in verdicts.items())
        for run, verdicts in s["crossing_runs"].items()))
    mid = s["mid_swap_coefficient_under_C0.2"]
    lines.append(f"moved runs read coefficient by C0.2, not now: {len(mid)} "
                 + "(" + ", ".join(f"{run} min CKA {v}" for run, v in mid.items()) + ")")
    lines.append(f"overlap-alone checkpoints (CKA ≥ 0.99, overlap < 0.95): {s['overlap_alone_checkpoints']} of "
                 f"{s['checkpoints_after_reference']}; in digits runs {s['overlap_alone_checkpoints_digits']} of "
                 f"{s['checkpoints_digits']}")
    lines.append("initial gaps at C = 10 of the digits networks: "
                 + ", ".join(f"{g:.3f}" for g in s["digits_initial_gaps_C10"]))
    lines.append(f"max |top-C overlap recomputed − stored overlap_init| = {s['max_overlap_recomputation_error']:.1e}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes one or more integers ≥ 0, e.g. 0,1,2; got {text!r}")
    return list(dict.fromkeys(seeds))


def build_and_measure(run: Run, seed: int, out: Path) -> Measured:
    """Build one run, `fdl analyze` and `fdl classify` it, and measure it."""
    name = run_name(run, seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    quiet_cpu(seed)
    kwargs = run.make(folder, seed)
    store = out / f"{name}.fdl.h5"
    run_fdl_analyze(folder / "ckpt", model=model_spec("build_scaled_net"), model_kwargs=kwargs,
                    probes={"probe": folder / "probe.npz"}, store=store, echo=sys.stderr)
    classified = fdl_classify(store)
    (out / f"{name}.classify.json").write_text(json.dumps(classified, indent=2) + "\n")
    return measure(run, seed, kwargs, store, classified)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="where runs and stores go (default: a temporary folder)")
    parser.add_argument("--fast", action="store_true", help="the 3 runs of the smoke test, at the first seed only")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="only this run (repeatable, or NAME,NAME); names without the _s<seed> suffix")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], metavar="0,1,2",
                        help="seeds of the runs repeated over seeds (the others use the first); default 0,1,2")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every measure and verdict here")
    args = parser.parse_args(argv)
    only = {name for item in args.only for name in item.split(",") if name}
    unknown = only - {run.name for run in RUNS}
    if unknown:
        print(f"no run named {', '.join(sorted(unknown))}; runs: {', '.join(run.name for run in RUNS)}", file=sys.stderr)
        return 2
    chosen = [run for run in RUNS if (not args.fast or run.fast) and (not only or run.name in only)]
    jobs = [(run, seed) for run in chosen for seed in (args.seeds if run.seeded and not args.fast else args.seeds[:1])]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fdl-overlap-ties-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for run, seed in jobs:
            begin = time.perf_counter()
            results.append(build_and_measure(run, seed, out))
            print(f"{results[-1].run}: {results[-1].verdicts['now']} ({time.perf_counter() - begin:.1f} s)",
                  file=sys.stderr, flush=True)
    facts = summary(results)
    print(table(results))
    print()
    print(summary_text(facts))
    elapsed = time.perf_counter() - started
    print(f"{len(results)} runs in {elapsed:.0f} s", file=sys.stderr)
    if args.json:
        payload = {
            "summary": facts, "seconds": round(elapsed, 1),
            "runs": [{"run": r.run, "known": r.known, "C": r.n_outputs, "verdicts": r.verdicts,
                      "checkpoints": r.checkpoints, "overlap_tie": r.classify_json.get("evidence", {}).get("overlap_tie")}
                     for r in results],
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
