"""Shared parts of the paper-reproduction examples: data, models, checkpoints, `fdl analyze`, figures.

The examples (`rich_vs_lazy.py`, `label_shuffle.py`, `batchnorm.py`, `grokking.py`) train a small
network on the CPU, save its checkpoints the way a user would (`torch.save(model.state_dict(),
DIR/step_<N>.pt)`), write probe files, and then run the real command line, `fdl analyze`, on them.
The model factories below are what `fdl analyze --model examples/_common.py:build_...` imports (the
near-tie study `overlap_ties.py` uses `build_scaled_net`), so this module imports nothing beyond numpy
and torch at its top.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def quiet_cpu(seed: int) -> None:
    """One thread (the examples share small machines) and every RNG seeded."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    # torch.use_deterministic_algorithms(True) as the eager ops read it; that function also imports
    # torch._inductor's config to set torch.compile's flag, and the examples compile nothing
    torch.set_deterministic_debug_mode("error")


# -------------------------------------------------------------------------------------------- data


def digits_split(
    n_train: int, *, seed: int = 0, whiten: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download), shuffled and split.

    Returns x_train (n_train, 64) float32, y_train (n_train,) int64, and the rest as the held-out
    x_test, y_test. With `whiten` the pixels are PCA-whitened with the training set's statistics
    (ε = 0.01 on the eigenvalues): raw digits put most of their variance in ~10 directions, so a
    random feature map of them is already low-rank and the lazy baseline would look deceptively rich.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = data.data[order] / 16.0
    y = data.target[order].astype(np.int64)
    if whiten:
        mean = x[:n_train].mean(0)
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov((x[:n_train] - mean).T))
        x = (x - mean) @ (eigenvectors / np.sqrt(eigenvalues + 1e-2)) @ eigenvectors.T
    x = x.astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def log_schedule(last_step: int, count: int) -> list[int]:
    """About `count` checkpoint steps from 0 to `last_step`, evenly spaced in log(1 + step)."""
    grid = np.expm1(np.linspace(0.0, math.log1p(last_step), count))
    return sorted({0, last_step, *(int(round(s)) for s in grid)})


# ------------------------------------------------------------------------------------------ models


class MLP(nn.Module):
    """x -> depth × (Linear -> [BatchNorm1d] -> ReLU) -> head Linear. fdl's feature map: the head's input."""

    def __init__(self, *, n_in: int, hidden: int, depth: int, n_out: int, batchnorm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_mlp(n_in: int = 64, hidden: int = 128, depth: int = 2, n_out: int = 10, batchnorm: bool = False) -> MLP:
    """Factory for `fdl analyze --model examples/_common.py:build_mlp --model-kwargs '{...}'`."""
    return MLP(n_in=n_in, hidden=hidden, depth=depth, n_out=n_out, batchnorm=batchnorm)


class ModAddTransformer(nn.Module):
    """One-layer transformer on the tokens (a, b, '='); predicts (a + b) mod p from the last position.

    No LayerNorm, like the grokking literature's model: embed + learned positions, one
    self-attention block and one ReLU MLP block with residuals, then the unembedding `nn.Linear`,
    whose input (the last position's residual stream) is the feature map fdl analyses.
    """

    def __init__(self, *, modulus: int, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.embed = nn.Embedding(modulus + 1, d_model)  # token `modulus` is '='
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        self.unembed = nn.Linear(d_model, modulus)
        # Embeddings at 1/√d instead of torch's N(0, 1): a large initial scale delays grokking
        # (Liu et al., Omnigrok), and this keeps it within a few CPU minutes.
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        h = h + self.attn(h, h, h, need_weights=False)[0]
        last = h[:, -1]
        last = last + self.mlp(last)
        return self.unembed(last)


def build_transformer(modulus: int = 23, d_model: int = 64, n_heads: int = 4, d_mlp: int = 256) -> ModAddTransformer:
    """Factory for `fdl analyze --model examples/_common.py:build_transformer`."""
    return ModAddTransformer(modulus=modulus, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp)


class ScaledNet(nn.Module):
    """x -> body -> head Linear -> × alpha, the body one bias-free Linear (`kind="linear"`: the features
    are x Wᵀ, so a run can set W directly) or depth × (Linear -> ReLU) (`kind="mlp"`). `alpha` is the
    output scale of lazy training (Chizat et al.). fdl's feature map: the head's input."""

    def __init__(self, *, kind: str, n_in: int, hidden: int, depth: int, n_out: int, alpha: float):
        super().__init__()
        if kind == "linear":
            self.body: nn.Module = nn.Linear(n_in, hidden, bias=False)
        else:
            layers: list[nn.Module] = []
            width = n_in
            for _ in range(depth):
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_out)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.head(self.body(x))


def build_scaled_net(
    kind: str = "mlp", n_in: int = 64, hidden: int = 64, depth: int = 2, n_out: int = 10, alpha: float = 1.0,
    seed: int = 0,
) -> ScaledNet:
    """Factory for `fdl analyze --model examples/_common.py:build_scaled_net` (overlap_ties.py); seeded."""
    torch.manual_seed(seed)
    return ScaledNet(kind=kind, n_in=n_in, hidden=hidden, depth=depth, n_out=n_out, alpha=alpha)


# ------------------------------------------------------------------------------- checkpoints, fdl


def model_spec(factory: str) -> str:
    """`examples/_common.py:<factory>` relative to the current folder when it is below it, else absolute."""
    path = HERE / "_common.py"
    try:
        shown = path.relative_to(Path.cwd())
    except ValueError:
        shown = path
    return f"{shown}:{factory}"


def save_checkpoint(model: nn.Module, folder: Path, step: int) -> None:
    """What a training loop would do: the state_dict, step in the file name."""
    torch.save(model.state_dict(), folder / f"step_{step}.pt")


def fresh_folder(folder: Path) -> Path:
    """`folder` created, with checkpoints of an earlier run removed (so reruns do not mix)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("step_*.pt"):
        old.unlink()
    return folder


def train_squared_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    folder: Path,
    steps: int,
    optimizer: torch.optim.Optimizer,
    n_classes: int = 10,
    batch_size: int = 128,
    n_checkpoints: int = 25,
) -> None:
    """Minibatch training on the squared loss to one-hot targets, checkpoints on a log schedule.

    The squared loss is the one of the paper's analysis; with cross-entropy the rich runs still come
    out rich, but less isotropically collapsed (the logits keep growing along a few directions).
    """
    generator = torch.Generator().manual_seed(1)
    save_at = set(log_schedule(steps, n_checkpoints))
    targets = nn.functional.one_hot(y, n_classes).float()
    model.train()
    for step in range(steps + 1):
        if step in save_at:
            save_checkpoint(model, folder, step)
        if step == steps:
            break
        batch = torch.randint(len(x), (batch_size,), generator=generator)
        loss = (model(x[batch]) - targets[batch]).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def save_probe(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(-1) == y).float().mean().item()
    model.train(was_training)
    return acc


def run_fdl_analyze(
    ckpt_dir: Path,
    *,
    model: str,
    model_kwargs: Mapping[str, Any],
    probes: Mapping[str, Path],
    store: Path,
    echo: TextIO | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`fdl analyze` on the command line, as a user would run it; returns the store's records by probe.

    The command is printed (to `echo`, default stdout) so that it can be re-run by hand.
    """
    from fdl_cli.store import StoreReader

    command = [
        sys.executable, "-m", "fdl_cli", "analyze", str(ckpt_dir),
        "--model", model, "--model-kwargs", json.dumps(dict(model_kwargs)),
        *(arg for name, path in probes.items() for arg in ("--probe", f"{name}={path}")),
        "--out", str(store), "--device", "cpu", "--overwrite",
    ]  # fmt: skip
    print("$ " + " ".join(_shell_quote(part) for part in command[2:]).replace("fdl_cli", "fdl", 1),
          file=echo or sys.stdout, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fdl analyze failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with StoreReader(store) as reader:
        return {name: reader.records(probe=name) for name in probes}


def _shell_quote(part: str) -> str:
    return f"'{part}'" if any(c in part for c in ' {}"') else part


def try_fdl_report(store: Path, plots: Path) -> bool:
    """`fdl report STORE --plots DIR` when the installed fdl can; False (and a note) otherwise."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "fdl_cli", "report", str(store), "--plots", str(plots)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"note: fdl report --plots did not run ({done.stderr.strip().splitlines()[-1:]}); own figure only")
    return done.returncode == 0


def field(records: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    """One field over steps as floats (null -> nan)."""
    return np.array([np.nan if r.get(name) is None else float(r[name]) for r in records])


def plot_curves(
    path: Path,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str,
    accuracy_runs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    log_x: bool = True,
) -> None:
    """D_LR (left axis, solid) and probe accuracy (right axis, dotted) against the step, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    twin = ax.twinx() if accuracy_runs else None
    for index, (label, records) in enumerate(runs.items()):
        colour = f"C{index}"
        steps = np.maximum(field(records, "step"), 1) if log_x else field(records, "step")
        ax.plot(steps, field(records, "d_lr"), "-o", ms=3, color=colour, label=f"{label}: D_LR")
    if twin is not None and accuracy_runs:
        for index, (label, records) in enumerate(accuracy_runs.items()):
            steps = np.maximum(field(records, "step"), 1) if log_x else field(records, "step")
            twin.plot(steps, field(records, "accuracy"), ":", color=f"C{index}", label=f"{label}: accuracy")
        twin.set_ylabel("accuracy (dotted)")
        twin.set_ylim(0, 1.02)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("step (step 0 drawn at 1)" if log_x else "step")
    ax.set_ylabel("D_LR (solid; 0 rich, 1 lazy)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_line(label: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The last checkpoint's D_LR with the factors that explain it."""
    last = records[-1]
    parts = [f"{label:<24} step {last['step']:>6}  D_LR {last['d_lr']:.4f}"]
    for name in ("output_rank", "dlr_alignment", "feature_pr", "cka_init", "accuracy"):
        value = last.get(name)
        if value is not None:
            parts.append(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
    return "  ".join(parts)


def write_outcome(out: Path, outcome: Mapping[str, Any]) -> None:
    """OUT/outcome.json: the numbers the example printed, for docs/findings.md and tests."""
    (out / "outcome.json").write_text(json.dumps(outcome, indent=2, sort_keys=True) + "\n")
