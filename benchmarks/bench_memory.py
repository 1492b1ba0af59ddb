"""Benchmark (c): peak memory of `fdl analyze` as the probe grows from n = 10⁴ to 10⁶ at fixed p.

An MLP with 8 inputs and p = 128 features (narrow inputs keep the probe files small on disk),
2 checkpoints, default options; one whole process per n. The probe is an uncompressed npz, whose
inputs fdl reads in place a batch at a time (probes.RowReader); the labels (8 bytes a sample) are
held. Reported: peak RSS (target: within 10 % from 10⁴ to 10⁶), the probe's own bytes (x float32 +
y int64), and the peak beyond them.

    python benchmarks/bench_memory.py [--sizes 10000,100000,1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS_FILE,
    machine,
    make_checkpoints,
    make_probe,
    measured_command,
    run_process,
    write_json,
)

N_IN, WIDTH = 8, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fdl-bench-c-"))
    kwargs = {"n_in": N_IN, "width": WIDTH}
    checkpoints = workdir / "checkpoints"
    if not checkpoints.exists():
        make_checkpoints(checkpoints, "mlp", args.checkpoints, kwargs=kwargs)
    rows = []
    try:
        for n in (int(v) for v in args.sizes.split(",")):
            probe_dir = workdir / f"probe-{n}"
            probe_dir.mkdir(exist_ok=True)
            probe = make_probe(probe_dir, "mlp", n, shape=(N_IN,))
            command = [
                sys.executable, "-m", "fdl_cli", "analyze", str(checkpoints), "--model", f"{MODELS_FILE}:mlp",
                "--model-kwargs", json.dumps({"n_in": N_IN, "width": WIDTH}), "--probe", str(probe),
                "--out", str(workdir / f"store-{n}.h5"), "--overwrite", "--device", "cpu",
            ]
            result = run_process(measured_command(command))
            if result.returncode != 0:
                raise SystemExit(f"n={n} failed:\n{result.stderr[-3000:]}")
            probe_mib = n * (N_IN * 4 + 8) / 2**20
            row = {"n": n, "p": WIDTH, "peak_mib": result.peak_mib, "probe_mib": round(probe_mib, 1),
                   "peak_beyond_probe_mib": round(result.peak_mib - probe_mib, 1), "seconds": round(result.seconds, 1),
                   "command": " ".join(command)}
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
    write_json(args.json, {"benchmark": "memory_vs_n", "machine": machine(), "results": rows, "summary": summary})


if __name__ == "__main__":
    main()
