"""Finding 2: shuffled labels leave richness unchanged while test accuracy collapses.

    python examples/label_shuffle.py --out runs/label_shuffle [--tiny]

Paper: CIFAR-10, 0% vs 100% of the labels shuffled, D_LR 0.031 vs 0.034 ("richness is not
generalisation"). Here: the same MLP (64 -> 256 -> 256 -> 10) and the same training (squared loss,
AdamW lr 1e-3, weight decay 0.5, batch 128, 8000 steps) on 300 PCA-whitened digits (the other 1497
are held out), once with the true labels and once with every training label replaced by a random
permutation of them. Both fit their training set. With 1200 training digits (`--n-train 1200`) the
shuffled run still fits them but does not collapse within 8000 steps (D_LR ~0.76): see
docs/findings.md. `fdl analyze` measures D_LR on the training probe *with the labels each net was trained on*
(`--probe train=...`) and accuracy on held-out digits with true labels (`--probe test=...`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import (
    build_mlp,
    digits_split,
    fresh_folder,
    model_spec,
    plot_curves,
    quiet_cpu,
    run_fdl_analyze,
    save_probe,
    summary_line,
    train_squared_loss,
    try_fdl_report,
    write_outcome,
)

PAPER = {"true": 0.031, "shuffled": 0.034}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="a few hundred steps (smoke test)")
    parser.add_argument("--n-train", type=int, default=300, help="training digits (the rest are held out)")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    x_train, y_true, x_test, y_test = digits_split(args.n_train)
    y_shuffled = np.random.default_rng(2).permutation(y_true)
    test_probe = save_probe(out / "probe_test.npz", x_test, y_test)
    model_kwargs = {"n_in": 64, "hidden": 256, "depth": 2, "n_out": 10}
    steps = 300 if args.tiny else 8000

    results = {}
    for name, labels in (("true", y_true), ("shuffled", y_shuffled)):
        quiet_cpu(0)
        model = build_mlp(**model_kwargs)
        folder = fresh_folder(out / name)
        train_squared_loss(
            model,
            torch.from_numpy(x_train),
            torch.from_numpy(labels),
            folder=folder,
            steps=steps,
            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.5),
        )
        probes = {"train": save_probe(out / f"probe_train_{name}.npz", x_train, labels), "test": test_probe}
        store = out / f"{name}.fdl.h5"
        results[name] = run_fdl_analyze(
            folder, model=model_spec("build_mlp"), model_kwargs=model_kwargs, probes=probes, store=store
        )
        try_fdl_report(store, out / f"plots_{name}")

    plot_curves(
        out / "label_shuffle.png",
        {f"{name} labels": results[name]["train"] for name in results},
        accuracy_runs={f"{name} labels (held-out)": results[name]["test"] for name in results},
        title="digits MLP: true vs shuffled training labels",
    )
    outcome = {}
    print("\ntrue vs shuffled labels (D_LR on the training probe with the labels trained on)")
    for name in results:
        train_last, test_last = results[name]["train"][-1], results[name]["test"][-1]
        print(summary_line(f"{name} [train probe]", results[name]["train"]))
        print(f"{'':<24} held-out accuracy {test_last['accuracy']:.3f}   D_LR on held-out {test_last['d_lr']:.4f}   "
              f"paper D_LR {PAPER[name]}")
        outcome[name] = {
            "d_lr_train": train_last["d_lr"],
            "d_lr_test": test_last["d_lr"],
            "d_lr_init": results[name]["train"][0]["d_lr"],
            "train_accuracy": train_last["accuracy"],
            "test_accuracy": test_last["accuracy"],
            "output_rank": train_last["output_rank"],
            "dlr_alignment": train_last["dlr_alignment"],
            "feature_pr": train_last["feature_pr"],
            "n_checkpoints": len(results[name]["train"]),
            "paper": PAPER[name],
        }
    true, shuffled = outcome["true"], outcome["shuffled"]
    both_rich = max(true["d_lr_train"], shuffled["d_lr_train"]) < 0.5 * min(true["d_lr_init"], shuffled["d_lr_init"])
    accuracy_gap = true["test_accuracy"] - shuffled["test_accuracy"]
    outcome["reproduced"] = bool(both_rich and accuracy_gap > 0.5)
    print(
        f"\nboth far richer than at initialisation: {both_rich}; held-out accuracy gap {accuracy_gap:.3f}"
        f"\nfinding reproduced (both rich, accuracy collapses with shuffled labels): {outcome['reproduced']}"
    )
    write_outcome(out, outcome)


if __name__ == "__main__":
    main()
