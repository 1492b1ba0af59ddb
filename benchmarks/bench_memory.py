"""Benchmark (c): peak memory of `fdl analyze` as the probe grows from n = 10⁴ to 10⁶ at fixed p.

An MLP with 8 inputs and p = 128 features (narrow inputs keep the probe files small on disk),
2 checkpoints, default options; one whole process per n. The probe is an uncompressed npz, whose
inputs fdl reads in place a batch at a time (probes.RowReader); the labels (8 bytes a sample) are
held. Reported: peak RSS (target: within 10 % from 10⁴ to 10⁶), the probe's own bytes (x float32 +
y int64), and the peak beyond them.

`--outputs C` makes it a regression probe instead: y float32 (n, C) targets and a model of C
outputs, whose targets fdl reads in place too (float64 a batch at a time); before they were held
whole as float64, n·C·8 bytes. `--fdl-repo DIR` measures the fdl of another tree (another checkout,
e.g. the code before a change): its `fdl_cli` runs, with this tree's models and probes.

    python benchmarks/bench_memory.py [--sizes 10000,100000,1000000] [--outputs C] [--fdl-repo DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS_FILE,
    REPO,
    machine,
    make_checkpoints,
    make_probe,
    measured_command,
    run_process,
    write_json,
)

N_IN, WIDTH = 8, 128


def make_regression_probe(folder: Path, n: int, outputs: int, *, seed: int = 0) -> Path:
    """probe.npz with x (n, N_IN) float32 and y (n, outputs) float32 regression targets."""
    rng = np.random.default_rng(seed)
    path = folder / "probe.npz"
    np.savez(path, x=rng.standard_normal((n, N_IN), dtype=np.float32),
             y=rng.standard_normal((n, outputs), dtype=np.float32))
    return path


def fdl_tree(repo: Path) -> str:
    """The fdl_cli that `python -m fdl_cli` runs from `repo` under run_process's path (checked, not assumed)."""
    path = os.pathsep.join([str(REPO), str(repo)])
    done = subprocess.run([sys.executable, "-c", "import fdl_cli; print(fdl_cli.__file__)"], cwd=str(repo),
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--outputs", type=int, help="regression targets (n, C) float32 and C outputs (default: labels)")
    parser.add_argument("--fdl-repo", type=Path, default=REPO, help="the tree whose fdl_cli is measured")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    repo = args.fdl_repo.resolve()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fdl-bench-c-"))
    kwargs = {"n_in": N_IN, "width": WIDTH, **({"n_out": args.outputs} if args.outputs else {})}
    checkpoints = workdir / ("checkpoints" + (f"-c{args.outputs}" if args.outputs else ""))
    if not checkpoints.exists():
        make_checkpoints(checkpoints, "mlp", args.checkpoints, kwargs=kwargs)
    rows = []
    try:
        for n in (int(v) for v in args.sizes.split(",")):
            probe_dir = workdir / (f"probe-{n}" + (f"-c{args.outputs}" if args.outputs else ""))
            probe_dir.mkdir(exist_ok=True)
            if args.outputs:
                probe = probe_dir / "probe.npz"
                if not probe.exists():
                    make_regression_probe(probe_dir, n, args.outputs)
                probe_mib = n * (N_IN * 4 + args.outputs * 4) / 2**20
            else:
                probe = make_probe(probe_dir, "mlp", n, shape=(N_IN,))
                probe_mib = n * (N_IN * 4 + 8) / 2**20
            command = [
                sys.executable, "-m", "fdl_cli", "analyze", str(checkpoints), "--model", f"{MODELS_FILE}:mlp",
                "--model-kwargs", json.dumps(kwargs), "--probe", str(probe),
                "--out", str(workdir / f"store-{n}.h5"), "--overwrite", "--device", "cpu",
            ]
            result = run_process(measured_command(command), env={"PYTHONPATH": str(repo)}, cwd=repo)
            if result.returncode != 0:
                raise SystemExit(f"n={n} failed:\n{result.stderr[-3000:]}")
            row = {"n": n, "p": WIDTH, "outputs": args.outputs, "peak_mib": result.peak_mib,
                   "probe_mib": round(probe_mib, 1), "peak_beyond_probe_mib": round(result.peak_mib - probe_mib, 1),
                   "seconds": round(result.seconds, 1), "command": " ".join(command)}
            rows.append(row)
            print(f"  n={n}: peak {result.peak_mib:.0f} MiB (probe {probe_mib:.0f} MiB), {result.seconds:.1f} s",
                  file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    first, last = rows[0], rows[-1]
    summary = {
        "peak_growth": last["peak_mib"] / first["peak_mib"] - 1.0,
        "peak_beyond_probe_growth": last["peak_beyond_probe_mib"] / first["peak_beyond_probe_mib"] - 1.0,
    }
    write_json(args.json, {"benchmark": "memory_vs_n", "machine": machine(), "fdl_cli": fdl_tree(repo),
                           "results": rows, "summary": summary})


if __name__ == "__main__":
    main()
