"""Finding 3: BatchNorm makes a run richer (paper: CIFAR-100 VGG-16, no BN 0.66 vs BN 0.073).

    python examples/batchnorm.py --out runs/batchnorm [--tiny]

The same deep MLP (64 -> 6 × 128 -> 10, ReLU, PyTorch's default initialisation) learns 1200
PCA-whitened digits with and without a BatchNorm1d after every hidden Linear, with identical
training: squared loss, SGD (lr 0.01, momentum 0.9), batch 128, 4000 steps. Like VGG-16 without BN,
the plain deep net starts with a signal that shrinks layer by layer, so its early layers barely move
and its last layer does the fitting; BN keeps every layer trainable. `fdl analyze` measures D_LR on
the training probe (the held-out probe gives accuracy); BN is evaluated with its running statistics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

PAPER = {"no_bn": 0.66, "bn": 0.073}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="a few hundred steps (smoke test)")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = digits_split(1200)
    probes = {
        "train": save_probe(out / "probe_train.npz", x_train, y_train),
        "test": save_probe(out / "probe_test.npz", x_test, y_test),
    }
    steps = 300 if args.tiny else args.steps

    results, kwargs_of = {}, {}
    for name in ("no_bn", "bn"):
        model_kwargs = {"n_in": 64, "hidden": 128, "depth": args.depth, "n_out": 10, "batchnorm": name == "bn"}
        quiet_cpu(0)
        model = build_mlp(**model_kwargs)
        folder = fresh_folder(out / name)
        train_squared_loss(
            model,
            torch.from_numpy(x_train),
            torch.from_numpy(y_train),
            folder=folder,
            steps=steps,
            optimizer=torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
        )
        store = out / f"{name}.fdl.h5"
        results[name] = run_fdl_analyze(
            folder, model=model_spec("build_mlp"), model_kwargs=model_kwargs, probes=probes, store=store
        )
        kwargs_of[name] = model_kwargs
        try_fdl_report(store, out / f"plots_{name}")

    plot_curves(
        out / "batchnorm.png",
        {name: results[name]["train"] for name in results},
        accuracy_runs={f"{name} (held-out)": results[name]["test"] for name in results},
        title=f"digits MLP, depth {args.depth}: without vs with BatchNorm",
    )
    outcome = {"depth": args.depth, "lr": args.lr, "steps": steps}
    print("\nwithout vs with BatchNorm (D_LR on the training probe; accuracy on held-out digits)")
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
            "cka_init": train_last["cka_init"],
            "n_checkpoints": len(results[name]["train"]),
            "paper": PAPER[name],
        }
    outcome["reproduced"] = outcome["bn"]["d_lr_train"] < outcome["no_bn"]["d_lr_train"]
    print(f"\nfinding reproduced (BN D_LR < no-BN D_LR): {outcome['reproduced']}")
    write_outcome(out, outcome)


if __name__ == "__main__":
    main()
