"""Time `fdl report` (JSON and the table) and `fdl compare` on a store of 1000 checkpoints.

Builds the store with the store writer (synthetic arrays of realistic sizes), then runs each command in
a fresh subprocess, as a user would, and prints the wall times (best of --repeat). The target is well
under a second; nothing is asserted, so the numbers can be read on any machine.

    python benchmarks/bench_report.py [--checkpoints 1000] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter

N_PROBE, N_FEATURES, N_OUTPUTS, TOP_K, ANCHOR = 4096, 128, 10, 64, 512
REGIMES = ("coefficient", "EF", "MF")


def build_store(path: Path, checkpoints: int) -> None:
    rng = np.random.default_rng(0)
    probe = ProbeInfo(name="train", sha256="0" * 64, n=N_PROBE, task="classes", n_outputs=N_OUTPUTS)
    provenance = {"model": "bench:build", "layers": ["fc"], "host": "bench", "fdl_version": "bench"}
    # a history row as `fdl analyze` records one (session 18): report reads every checkpoint's index into it
    invocation = {"started": "2026-11-30T00:00:00.000000Z", "host": "bench", "platform": "bench", "python": "3.11",
                  "torch_version": "bench", "fdl_version": "bench", "device": "cpu", "dtype": "float32",
                  "world_size": 1, "rank": 0}
    with StoreWriter(path, provenance=provenance, probes=[probe], overwrite=True, min_interval=5.0,
                     invocation=invocation) as writer:
        for index in range(checkpoints):
            progress = index / max(checkpoints - 1, 1)
            scalars = {
                "n_probe": N_PROBE, "n_features": N_FEATURES, "n_outputs": N_OUTPUTS, "rank": N_FEATURES,
                "d_lr": 0.9 - 0.8 * progress, "cka_init": 1.0 - 0.5 * progress, "overlap_init": 1.0 - 0.4 * progress,
                "k95_utility": int(40 - 30 * progress), "pi_hat_C": 0.5 + 0.4 * progress, "eff_dim": 20.0 - 10 * progress,
                "accuracy": 0.1 + 0.8 * progress, "loss": 2.3 * (1 - progress) + 0.01,
                "regime": REGIMES[min(int(progress * 3), 2)],
            }
            eigenvalues = np.sort(rng.random(N_FEATURES))[::-1]
            entry = SeriesEntry(
                probe="train", layer="fc", scalars=scalars, eigenvalues=eigenvalues,
                eigenvectors=rng.normal(size=(N_FEATURES, TOP_K)), eigenfunctions=rng.normal(size=(ANCHOR, TOP_K)),
                utility=rng.dirichlet(np.ones(N_FEATURES)), quality=rng.dirichlet(np.ones(N_FEATURES)),
            )
            writer.add(CheckpointEntry(step=100 * index, path=f"ckpt/{index}.pt", sha256=f"{index:064x}", series=(entry,)))


def time_command(args: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "fdl_cli", *args], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"fdl {' '.join(args)} failed:\n{result.stderr}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the store in this folder and keep it")
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="fdl-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "bench.h5"
    start = time.perf_counter()
    build_store(store, options.checkpoints)
    print(f"built {store} ({options.checkpoints} checkpoints, {store.stat().st_size / 1e6:.0f} MB) "
          f"in {time.perf_counter() - start:.1f} s")
    baseline = time_command(["--version"], options.repeat)
    print(f"fdl --version                 {baseline:6.3f} s  (interpreter + import floor)")
    for label, args in (
        ("fdl report --format json", ["report", str(store), "--format", "json"]),
        ("fdl report (table)", ["report", str(store)]),
        ("fdl compare --no-overlap", ["compare", str(store), str(store), "--no-overlap", "--format", "json"]),
    ):
        print(f"{label:<29} {time_command(args, options.repeat):6.3f} s")


if __name__ == "__main__":
    main()
