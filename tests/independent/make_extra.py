"""Edge-case runs beyond the brief's seven (run after make_runs.py)."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_runs  # noqa: E402
import models  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/s12runs")
make_runs.OUT = OUT
torch.set_num_threads(1)
x, y = make_runs.digits()
xt, yt = torch.from_numpy(x[400:]), torch.from_numpy(y[400:])
ce = torch.nn.functional.cross_entropy
# 8: p = 4 < C = 10, probe without classes 7, 8, 9; labels also as an integer one-hot matrix
keep = y[:400] < 7
np.savez(OUT / "probe_missing.npz", x=x[:400][keep], y=y[:400][keep])
np.savez(OUT / "probe_missing_onehot.npz", x=x[:400][keep], y=np.eye(10, dtype=np.int64)[y[:400][keep]])
torch.manual_seed(8)
m = models.bottleneck()
make_runs.train("bottleneck", m, xt, yt, ce, m.parameters(), 0.05, save=[0, 5, 50, 200])
# 10: features far from 0 (mean 100, spread ~0.5)
torch.manual_seed(10)
m = models.shifted_mlp()
make_runs.train("shifted", m, xt, yt, ce, m.parameters(), 0.05, save=[0, 10, 100])
# 11: outputs with a redundant direction: head row 9 = row 0 + row 1 (float32), from run 2's checkpoints
folder = OUT / "redundant"
folder.mkdir(exist_ok=True)
for p in (OUT / "mlp").glob("step_*.pt"):
    s = torch.load(p, weights_only=True)
    s["4.weight"][9] = s["4.weight"][0] + s["4.weight"][1]
    s["4.bias"][9] = s["4.bias"][0] + s["4.bias"][1]
    torch.save(s, folder / p.name)
