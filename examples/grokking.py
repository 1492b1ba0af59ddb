"""Finding 4: D_LR falls when a transformer groks modular addition (paper: mod 97, 0.51 before -> 0.11 after).

    python examples/grokking.py --out runs/grokking [--tiny] [--no-report]

A one-layer transformer (d_model 64, 4 heads, MLP 256, no LayerNorm) learns (a + b) mod 23 from half
of the 529 pairs, full batch, AdamW (lr 3e-3, weight decay 1, betas 0.9/0.98), 8000 steps. It
memorises the training half within a few hundred steps and generalises thousands of steps later.
55 checkpoints (log-spaced early, every 250 steps later) are analysed by `fdl analyze` on three
probes: `train`, `test` (the held-out pairs, for accuracy) and `all`, every pair *without labels*:
D_LR needs none, so the `all` curve is what a user without a test set would see.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import median

import numpy as np
import torch
from _common import (
    build_transformer,
    fresh_folder,
    log_schedule,
    model_spec,
    plot_curves,
    quiet_cpu,
    run_fdl_analyze,
    save_checkpoint,
    try_fdl_report,
    write_outcome,
)
from torch import nn

PAPER = {"before": 0.51, "after": 0.11}


def modular_pairs(modulus: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b, '=') token triple, int64 (modulus², 3), and (a + b) mod modulus."""
    a, b = (grid.ravel() for grid in np.meshgrid(np.arange(modulus), np.arange(modulus), indexing="ij"))
    tokens = np.stack([a, b, np.full_like(a, modulus)], axis=1).astype(np.int64)
    return tokens, ((a + b) % modulus).astype(np.int64)


def checkpoint_steps(last_step: int) -> list[int]:
    return sorted(set(log_schedule(last_step, 25)) | set(range(0, last_step + 1, 250)))


def train(folder: Path, *, model_kwargs: dict, steps: int, x: torch.Tensor, y: torch.Tensor, test: tuple) -> list[str]:
    quiet_cpu(0)
    model = build_transformer(**model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98))
    save_at = set(checkpoint_steps(steps))
    log = []
    for step in range(steps + 1):
        if step in save_at:
            save_checkpoint(model, folder, step)
        if step % 1000 == 0:
            with torch.no_grad():
                test_acc = (model(test[0]).argmax(-1) == test[1]).float().mean().item()
            log.append(f"step {step:>5}  test accuracy {test_acc:.2f}")
            print(log[-1], flush=True)
        if step == steps:
            break
        loss = nn.functional.cross_entropy(model(x), y)  # full batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="300 steps, no grokking (smoke test)")
    parser.add_argument(
        "--no-report", action="store_true",
        help="skip `fdl report --plots` (its 18 figure files cost about as much CPU as the --tiny training and analysis)",
    )  # fmt: skip
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    modulus = 23
    tokens, sums = modular_pairs(modulus)
    order = np.random.default_rng(0).permutation(len(sums))
    train_idx, test_idx = order[: len(sums) // 2], order[len(sums) // 2 :]
    probes = {
        "train": out / "probe_train.npz",
        "test": out / "probe_test.npz",
        "all": out / "probe_all_unlabelled.npz",
    }
    np.savez(probes["train"], x=tokens[train_idx], y=sums[train_idx])
    np.savez(probes["test"], x=tokens[test_idx], y=sums[test_idx])
    np.savez(probes["all"], x=tokens)  # no y: D_LR needs no labels

    model_kwargs = {"modulus": modulus, "d_model": 64, "n_heads": 4, "d_mlp": 256}
    steps = 300 if args.tiny else 8000
    folder = fresh_folder(out / "checkpoints")
    as_tensor = torch.from_numpy
    train(
        folder,
        model_kwargs=model_kwargs,
        steps=steps,
        x=as_tensor(tokens[train_idx]),
        y=as_tensor(sums[train_idx]),
        test=(as_tensor(tokens[test_idx]), as_tensor(sums[test_idx])),
    )
    store = out / "grokking.fdl.h5"
    records = run_fdl_analyze(
        folder, model=model_spec("build_transformer"), model_kwargs=model_kwargs, probes=probes, store=store
    )
    if not args.no_report:
        try_fdl_report(store, out / "plots")
    plot_curves(
        out / "grokking.png",
        {"all pairs (unlabelled)": records["all"], "held-out pairs": records["test"]},
        accuracy_runs={"train": records["train"], "held-out": records["test"]},
        title=f"grokking (a+b) mod {modulus}: D_LR against accuracy",
        log_x=False,
    )

    # Phases read from the accuracies the store holds; D_LR of each phase from the unlabelled probe.
    test_acc = {r["step"]: r["accuracy"] for r in records["test"]}
    train_acc = {r["step"]: r["accuracy"] for r in records["train"]}
    dlr_all = {r["step"]: r["d_lr"] for r in records["all"]}
    memorised = [s for s in dlr_all if train_acc[s] >= 0.99 and test_acc[s] < 0.5]
    generalised = [s for s in dlr_all if test_acc[s] >= 0.95]
    grok_step = min(generalised) if generalised else None
    outcome = {
        "modulus": modulus,
        "n_checkpoints": len(dlr_all),
        "d_lr_init": dlr_all[0],
        "grok_step": grok_step,
        "memorised_steps": [min(memorised), max(memorised)] if memorised else None,
        "d_lr_before_median": median(dlr_all[s] for s in memorised) if memorised else None,
        "d_lr_after_median": median(dlr_all[s] for s in generalised) if generalised else None,
        "final": {"d_lr_all": dlr_all[steps], "test_accuracy": test_acc[steps], "train_accuracy": train_acc[steps]},
        "paper": PAPER,
    }
    print(f"\ngrokking (a + b) mod {modulus}   (D_LR on all {modulus**2} pairs, no labels used)")
    print(f"{'step':>6} {'D_LR':>7} {'r_Y':>4} {'train acc':>9} {'test acc':>8}")
    for r in records["all"]:
        s = r["step"]
        print(f"{s:>6} {r['d_lr']:>7.4f} {r['output_rank']:>4} {train_acc[s]:>9.3f} {test_acc[s]:>8.3f}")
    before, after = outcome["d_lr_before_median"], outcome["d_lr_after_median"]
    if before is not None and after is not None:
        print(
            f"\nmemorised, not generalised (steps {min(memorised)}-{max(memorised)}): median D_LR {before:.4f}"
            f"   paper {PAPER['before']}"
        )
        print(
            f"generalised (test accuracy >= 0.95, from step {grok_step}): median D_LR {after:.4f}   paper {PAPER['after']}"
        )
        outcome["reproduced"] = after < before
    else:
        print("\nno grokking in this run (too few steps?): no before/after comparison")
        outcome["reproduced"] = None
    print(f"finding reproduced (D_LR after < before): {outcome['reproduced']}")
    write_outcome(out, outcome)


if __name__ == "__main__":
    main()
