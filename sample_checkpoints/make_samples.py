"""Regenerate the sample run deterministically: an MLP trained on scikit-learn's bundled digits.

    python sample_checkpoints/make_samples.py      (needs scikit-learn: pip install -e ".[dev]")

Writes step_<N>.safetensors (the state_dict, with the step in the safetensors metadata) for 25
steps including the initialisation (step 0), probe.npz (500 held-out digits: x float32 (500, 64)
scaled to [0, 1], y int64 labels) and leaves model.py and fdl.toml as they are.

Deterministic on one machine (a rerun writes the same bytes). Another CPU's kernels may round the training
differently: regenerated on an AMD EPYC, step_0 and probe.npz were the committed bytes, the trained checkpoints
differed from the committed ones by up to 6e-7 a weight (other sha256), and `fdl report` printed the same
numbers (to the 4 digits it shows) as README.md's excerpt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
SAVE_AT = [0, 5, 10, 15, 20, 30, 40, 50, 65, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 1000]


def main() -> None:
    import importlib.util

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    probe_idx, train_idx = order[:500], order[500:]
    np.savez(HERE / "probe.npz", x=x[probe_idx], y=y[probe_idx])

    spec = importlib.util.spec_from_file_location("sample_model", HERE / "model.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    model = module.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    generator = torch.Generator().manual_seed(0)
    for old in HERE.glob("step_*.safetensors"):
        old.unlink()
    step = 0
    while step <= SAVE_AT[-1]:
        perm = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt) - 63, 64):
            if step in SAVE_AT:
                state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
                save_file(state, HERE / f"step_{step}.safetensors", metadata={"step": str(step)})
            if step == SAVE_AT[-1]:
                return
            batch = perm[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1


if __name__ == "__main__":
    main()
