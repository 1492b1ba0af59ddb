"""Calibration suite of `fdl classify`: constructed training runs whose regime is known, and a confusion table.

    python -m examples.calibration            # every run (a few minutes on one CPU core)
    python -m examples.calibration --fast     # the runs the test suite uses
    python -m examples.calibration --only mf_mse_long --out runs/ --threshold cka_static=0.9

Each run trains a small network on scikit-learn's bundled digits (8×8, 10 classes) or on a 1-D
regression, writes its checkpoints (safetensors, step in the metadata) and probe under OUT/<name>/,
analyses them with `fdl_cli.pipeline.run_analyze` into OUT/<name>.fdl.h5 and classifies the store
with `fdl_cli.regimes.classify_run`. docs/regimes.md explains every run, its expected regime, and
every misclassification. The model factory below is what the pipeline imports (`this file:build_model`).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REGIMES = ("coefficient", "MF", "EF", "undetermined")


# ------------------------------------------------------------------------------------------- model


class CalibrationNet(nn.Module):
    """x -> depth × (Linear -> [BatchNorm] -> activation) -> head Linear -> × alpha.

    The feature map fdl analyses by default is the head's input. `alpha` is the output scale of
    Chizat et al.'s lazy training: with the loss divided by alpha² and a zero head, the parameters
    move O(1/alpha) while the function still fits (lazy training).
    """

    def __init__(self, *, n_in: int, hidden: int, depth: int, n_out: int, batchnorm: bool, alpha: float, act: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.Tanh() if act == "tanh" else nn.ReLU())
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.head(self.body(x))


def build_model(
    n_in: int = 64,
    hidden: int = 64,
    depth: int = 2,
    n_out: int = 10,
    batchnorm: bool = False,
    alpha: float = 1.0,
    act: str = "relu",
    zero_head: bool = False,
    seed: int = 0,
) -> CalibrationNet:
    """The factory `fdl analyze --model examples/calibration.py:build_model` imports (seeded)."""
    torch.manual_seed(seed)
    model = CalibrationNet(
        n_in=n_in, hidden=hidden, depth=depth, n_out=n_out, batchnorm=batchnorm, alpha=alpha, act=act
    )
    if zero_head:
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    return model


# -------------------------------------------------------------------------------------------- data


def digits(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n digits from scikit-learn's bundled set: x (n, 64) float32 in [0, 1], y (n,) int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))[:n]
    return (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int64)


def many_frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    """x (n, 1) on [-1, 1]; y = Σ_{k=1..12} sin(kπx + φ_k)/√k, a target spread over many eigenfunctions."""
    x = np.linspace(-1.0, 1.0, n).reshape(-1, 1)
    phases = np.random.default_rng(0).uniform(0, 2 * math.pi, size=12)
    y = sum(np.sin(k * math.pi * x + phases[k - 1]) / math.sqrt(k) for k in range(1, 13))
    return x.astype(np.float32), (y / np.std(y)).astype(np.float32)


# ------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One constructed run: its expected regime, why, and how to train it."""

    name: str
    expected: str
    why: str
    model: dict[str, Any]
    data: str = "digits"  # digits | random_labels | regression
    n_train: int = 1000
    steps: int = 2000
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adam
    loss: str = "mse"  # mse | ce
    train_only_head: bool = False
    n_checkpoints: int = 8
    fast: bool = False


CASES: tuple[Case, ...] = (
    Case(
        "frozen_backbone",
        "coefficient",
        "only the head is trained: the features are bit-identical to the reference",
        {"hidden": 64},
        train_only_head=True,
        steps=1000,
        fast=True,
    ),
    Case(
        "frozen_wide_random_features",
        "coefficient",
        "random-feature regression (512 frozen ReLU features): the function spreads over many eigenfunctions, "
        "but nothing moved",
        {"hidden": 512, "depth": 1},
        train_only_head=True,
        steps=1000,
    ),
    Case(
        "lazy_alpha",
        "coefficient",
        "output scale alpha = 100 with a zero head and the loss divided by alpha²: the parameters move O(1/alpha)",
        {"hidden": 256, "alpha": 100.0, "zero_head": True},
        steps=1000,
        lr=0.05,
    ),
    Case(
        "lazy_wide_small_lr",
        "coefficient",
        "a wide (1024) network trained briefly with a tiny learning rate: near-lazy by construction",
        {"hidden": 1024, "depth": 1},
        steps=300,
        lr=0.01,
    ),
    Case(
        "mf_mse_long",
        "MF",
        "a small network trained long on the 10-class task with MSE on one-hot targets (the paper's MF setting)",
        {"hidden": 64},
        steps=3000,
        fast=True,
    ),
    Case(
        "mf_random_labels",
        "MF",
        "the same network memorising random labels of 300 digits (the paper: random labels also reach MF)",
        {"hidden": 128},
        data="random_labels",
        n_train=300,
        steps=4000,
        optimizer="adam",
        lr=0.003,
    ),
    Case(
        "mf_batchnorm",
        "MF",
        "the MF network with BatchNorm after each hidden layer, trained long with MSE",
        {"hidden": 64, "batchnorm": True},
        steps=3000,
    ),
    Case(
        "mf_cross_entropy",
        "MF",
        "the MF network (no BatchNorm) trained long with cross-entropy instead of MSE",
        {"hidden": 64},
        loss="ce",
        steps=3000,
    ),
    Case(
        "ef_regression",
        "EF",
        "1-D regression of a sum of 12 sinusoids: the fitted function needs many eigenfunctions, the features move",
        {"n_in": 1, "hidden": 128, "n_out": 1, "act": "tanh"},
        data="regression",
        n_train=400,
        steps=4000,
        optimizer="adam",
        lr=0.003,
    ),
)


# -------------------------------------------------------------------------------------------- runs


def _save_steps(steps: int, count: int) -> list[int]:
    """Step 0, then `count - 1` roughly log-spaced steps up to `steps`."""
    grid = np.unique(np.round(np.geomspace(1, steps, count - 1)).astype(int))
    return [0, *(int(s) for s in grid)]


def _data(case: Case) -> tuple[np.ndarray, np.ndarray, str]:
    if case.data == "regression":
        x, y = many_frequencies(case.n_train)
        return x, y, "regression"
    x, y = digits(case.n_train)
    if case.data == "random_labels":
        y = np.random.default_rng(1).integers(0, 10, size=len(y)).astype(np.int64)
    return x, y, "classes"


def train_case(case: Case, folder: Path) -> dict[str, Any]:
    """Train `case`, writing step_<N>.safetensors and probe.npz into `folder`; returns the model kwargs."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("step_*.safetensors"):
        old.unlink()
    x, y, task = _data(case)
    probe_n = min(len(x), 500)
    np.savez(folder / "probe.npz", x=x[:probe_n], y=y[:probe_n])
    kwargs = dict(case.model)
    model = build_model(**kwargs)
    alpha = float(kwargs.get("alpha", 1.0))
    params = list(model.head.parameters()) if case.train_only_head else list(model.parameters())
    # With the loss divided by alpha², the step on the parameters is O(lr/alpha), the step of the function O(lr).
    lr = case.lr
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr) if case.optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    )
    xt = torch.from_numpy(x)
    if task == "regression":
        target = torch.from_numpy(y).reshape(len(y), -1)
    elif case.loss == "ce":
        target = torch.from_numpy(y)
    else:
        target = nn.functional.one_hot(torch.from_numpy(y), 10).float()
    save_at = set(_save_steps(case.steps, case.n_checkpoints))
    generator = torch.Generator().manual_seed(0)
    batch = 64
    step = 0
    model.train()
    while True:
        for idx in torch.randperm(len(xt), generator=generator).split(batch):
            if step in save_at:
                state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
                save_file(state, folder / f"step_{step}.safetensors", metadata={"step": str(step)})
            if step >= case.steps:
                return kwargs
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            out = model(xt[idx])
            if case.loss == "ce":
                loss = nn.functional.cross_entropy(out, target[idx])
            else:
                loss = nn.functional.mse_loss(out, target[idx]) / alpha**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1


def run_case(case: Case, out: Path, thresholds: Any = None) -> Any:
    """Train, analyse and classify one case; returns its `RunVerdict`."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.regimes import Thresholds, classify_run
    from fdl_cli.store import StoreReader

    folder = out / case.name
    kwargs = train_case(case, folder)
    store = out / f"{case.name}.fdl.h5"
    options = AnalyzeOptions(
        sources=(str(folder),),
        model_spec=f"{Path(__file__).resolve()}:build_model",
        model_kwargs=kwargs,
        probe_specs=(str(folder / "probe.npz"),),
        out=store,
        device="cpu",
        resume=False,
    )
    summary = run_analyze(options)
    if summary.failed:
        raise RuntimeError(f"analysis of {case.name} failed: {summary.message()}")
    with StoreReader(store) as reader:
        records = reader.records()
    return classify_run(records, thresholds or Thresholds())


def confusion_table(results: list[tuple[Case, Any]]) -> str:
    """Rows: expected regime; columns: verdict; then one line per run with its deciding numbers."""
    counts = {(e, g): 0 for e in REGIMES[:3] for g in REGIMES}
    for case, verdict in results:
        counts[(case.expected, verdict.regime)] += 1
    width = 13
    lines = ["expected \\ got".ljust(16) + "".join(g.rjust(width) for g in REGIMES)]
    for expected in REGIMES[:3]:
        lines.append(expected.ljust(16) + "".join(str(counts[(expected, g)]).rjust(width) for g in REGIMES))
    right = sum(1 for case, verdict in results if case.expected == verdict.regime)
    lines.append(f"{right}/{len(results)} runs classified as expected")
    lines.append("")
    lines.append(f"{'run':30} {'expected':>11} {'got':>12} {'min cka':>8} {'min ovl':>8} {'cka':>7} {'ovl':>7} "
                 f"{'k95':>4} {'C':>3}")
    for case, verdict in results:
        ev = verdict.evidence

        def num(key: str, ev: dict[str, Any] = ev) -> str:
            value = ev.get(key)
            return "—" if value is None else f"{value:.5f}" if isinstance(value, float) else str(value)

        mark = "" if case.expected == verdict.regime else "  ← MISCLASSIFIED"
        lines.append(
            f"{case.name:30} {case.expected:>11} {verdict.regime:>12} {num('min_cka_init'):>8} "
            f"{num('min_overlap_init'):>8} {num('final_cka_init'):>7} {num('final_overlap_init'):>7} "
            f"{num('final_k95_utility'):>4} {num('final_n_outputs'):>3}{mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fast", action="store_true", help="only the runs the test suite uses")
    parser.add_argument("--all", action="store_true", help="every run (the default)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this case")
    parser.add_argument("--out", type=Path, help="where runs and stores go (default: a temporary folder)")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from fdl_cli.regimes import Thresholds, threshold_text

    thresholds = Thresholds.with_overrides(args.threshold)
    cases = [c for c in CASES if (not args.fast or c.fast) and (not args.only or c.name in args.only)]
    if not cases:
        print(f"no case matches; cases: {', '.join(c.name for c in CASES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fdl-calibration-") as tmp:
        out = args.out or Path(tmp)
        results: list[tuple[Case, Any]] = []
        for case in cases:
            start = time.perf_counter()
            verdict = run_case(case, out, thresholds)
            results.append((case, verdict))
            print(f"{case.name}: {verdict.regime} ({time.perf_counter() - start:.1f} s) — {verdict.rule}",
                  file=sys.stderr)
        print(confusion_table(results))
        print("thresholds: " + ", ".join(f"{k}={threshold_text(v)}" for k, v in thresholds.as_dict().items()))
    return 0 if all(case.expected == verdict.regime for case, verdict in results) else 1


if __name__ == "__main__":
    sys.exit(main())
