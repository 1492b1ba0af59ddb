"""Build the constructed runs of the independent check under OUT (default /tmp/s12runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/s12runs")
SAVE = [0, 1, 3, 7, 15, 30, 60, 120, 200, 300]


def digits():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(1).permutation(len(x))
    return x[order], y[order]


def train(name, model, xt, yt, loss_fn, params, lr, save=SAVE, fmt="pt", batch=64, momentum=0.9):
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("step_*"):
        old.unlink()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    g = torch.Generator().manual_seed(0)
    step = 0
    while True:
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt) - batch + 1, batch):
            if step in save:
                state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
                if fmt == "pt":
                    torch.save(state, folder / f"step_{step}.pt")
                else:
                    save_file(state, folder / f"step_{step}.safetensors", metadata={"step": str(step)})
            if step == save[-1]:
                return folder
            b = perm[s : s + batch]
            loss = loss_fn(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = digits()
    probe_x, probe_y = x[:400], y[:400]
    xt, yt = torch.from_numpy(x[400:]), torch.from_numpy(y[400:])
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "probe_digits.npz", x=probe_x, y=probe_y)
    np.savez(OUT / "probe_digits_img.npz", x=probe_x.reshape(-1, 1, 8, 8), y=probe_y)
    ce = torch.nn.functional.cross_entropy
    mse_onehot = lambda out, t: torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(t, 10).float())  # noqa: E731

    # 2: MLP, SGD, cross-entropy
    torch.manual_seed(1)
    m = models.mlp()
    train("mlp", m, xt, yt, ce, m.parameters(), 0.05)
    # 3: frozen backbone (only the head trained), MSE
    torch.manual_seed(2)
    m = models.mlp()
    train("frozen", m, xt, yt, mse_onehot, m[4].parameters(), 0.1, fmt="safetensors")
    # 4: small CNN
    torch.manual_seed(3)
    m = models.cnn()
    train("cnn", m, xt.reshape(-1, 1, 8, 8), yt, ce, m.parameters(), 0.05)
    # 5: regression, C = 3
    rng = np.random.default_rng(5)
    w = rng.normal(size=(64, 3)).astype(np.float32) / 4
    z = x @ w
    targets = np.stack([np.sin(2 * z[:, 0]), z[:, 1], z[:, 2] ** 2 - 1.0], 1).astype(np.float32)
    np.savez(OUT / "probe_regr.npz", x=x[:300], y=targets[:300])
    torch.manual_seed(4)
    m = models.mlp(hidden=24, n_out=3)
    train("regr", m, xt, torch.from_numpy(targets[400:]), torch.nn.functional.mse_loss, m.parameters(), 0.05)
    # 6: p > n: 256 features, probe of 100
    np.savez(OUT / "probe_small.npz", x=probe_x[:100], y=probe_y[:100])
    torch.manual_seed(6)
    m = models.mlp(hidden=256)
    train("wide", m, xt, yt, ce, m.parameters(), 0.02, save=[0, 2, 10, 40, 100])


if __name__ == "__main__":
    main()
