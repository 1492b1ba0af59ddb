"""The store writer under load, alone: what the caller's thread pays, and how long a checkpoint waits
until it is durable, while the caller works and then while it is stuck.

Each trial is a fresh process that imports `fdl_cli` from one source tree (`--trees NAME=DIR`, e.g. the
current code and a checkout of an older commit; the trees alternate, trial by trial). In it a loop plays
`fdl analyze`'s part: per checkpoint it computes for --compute-ms (numpy products, which release the GIL
as torch's do), calling `tick()` --ticks times on the way (fdl ticks after every probe batch), then
`add()`s an entry holding the arrays fdl stores at width p (eigenvectors p x K float64, eigenfunctions
m x K float32, eigenvalues, utility, quality: ~1.3 MiB at p = 512, m = 4 096, K = 64). After the last add
it makes no call for --stall seconds (a forward pass that hangs, a collective that waits), then closes
the writer. `min_interval` is fdl's default --commit-interval, 1 s.

    python benchmarks/bench_writer.py --trees new=. old=../old-checkout --repeats 3 --json out.json

Per tree (median over the repeats, and the range): the caller's time in `add()` and `tick()` (median,
99th percentile, max, in microseconds), the loop's and close()'s wall seconds, the process's CPU
seconds, the commits made, how long after its add a checkpoint became durable during the loop
(median, max), and during the stall: how many checkpoints were buffered when it began, and how long
after it began the last of them became durable (the stall's length, or more, when only close()
commits them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    import fdl_cli
    from fdl_cli import store as store_module
    from fdl_cli.fields import INT_FIELDS, MEASURE_FIELDS, STR_FIELDS
    from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter

    rng = np.random.default_rng(0)
    p, m, k, c = args.p, args.m, args.k, 10
    arrays = {
        "eigenvalues": np.sort(rng.random(p))[::-1].copy(),
        "eigenvectors": rng.standard_normal((p, k)),
        "eigenfunctions": rng.standard_normal((m, k)).astype(np.float32),
        "utility": rng.random(p),
        "quality": rng.random(p),
    }
    scalars: dict[str, Any] = {}
    for name in MEASURE_FIELDS:
        scalars[name] = "MF" if name in STR_FIELDS else (int(rng.integers(0, 100)) if name in INT_FIELDS else 0.5)
    scalars["prev_step"] = None

    durable_at: dict[int, float] = {}  # step -> when the commit holding it had renamed the store into place
    commits = [0]
    real_execute = StoreWriter._execute

    def execute(self: Any, plan: Any) -> None:
        real_execute(self, plan)
        now = time.monotonic()
        commits[0] += 1
        for entry in plan.entries:
            durable_at.setdefault(entry.step, now)

    StoreWriter._execute = execute  # type: ignore[method-assign]
    probe = ProbeInfo(name="probe", sha256="0" * 64, n=20_000, task="classes", n_outputs=c)
    provenance = {"model": "bench:writer", "layers": ["fc:input"], "options": {"top_k": k, "anchor_size": m}}
    a = rng.standard_normal((96, 96))
    b = rng.standard_normal((96, 96))
    added_at: dict[int, float] = {}
    add_us: list[float] = []
    tick_us: list[float] = []
    folder = Path(tempfile.mkdtemp(prefix="bench_writer_", dir=args.workdir))
    path = folder / "run.h5"
    cpu0 = time.process_time()
    started = time.monotonic()
    writer = StoreWriter(path, provenance=provenance, probes=[probe], overwrite=True, min_interval=args.min_interval)
    batch = args.compute_ms / 1000 / args.ticks
    for step in range(args.checkpoints):
        for _ in range(args.ticks):
            until = time.perf_counter() + batch
            while time.perf_counter() < until:
                a @ b  # noqa: B018 - work that releases the GIL, as a forward pass does
            t0 = time.perf_counter()
            writer.tick()
            tick_us.append(1e6 * (time.perf_counter() - t0))
        series = SeriesEntry(probe="probe", layer="fc:input", scalars=scalars, **arrays)
        entry = CheckpointEntry(step=step, path=f"/runs/step_{step}.pt", sha256=f"{step:064x}", series=(series,))
        t0 = time.perf_counter()
        added_at[step] = time.monotonic()
        writer.add(entry)
        add_us.append(1e6 * (time.perf_counter() - t0))
    loop_s = time.monotonic() - started
    stall_began = time.monotonic()
    buffered = [step for step in range(args.checkpoints) if step not in durable_at]
    time.sleep(args.stall)  # no call: the caller is stuck
    t0 = time.monotonic()
    writer.close()
    close_s = time.monotonic() - t0
    cpu_s = time.process_time() - cpu0
    during_loop = [durable_at[s] - added_at[s] for s in range(args.checkpoints) if durable_at[s] < stall_began]
    stall_wait = max((durable_at[s] - stall_began for s in buffered), default=0.0)
    size = path.stat().st_size
    path.unlink()
    folder.rmdir()

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median": round(statistics.median(ordered), 1),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "max": round(ordered[-1], 1),
        }

    return {
        "fdl_cli": str(Path(fdl_cli.__file__).parent),
        "scheduler": hasattr(StoreWriter, "_run_scheduler"),
        "add_us": summary(add_us),
        "tick_us": summary(tick_us),
        "loop_s": round(loop_s, 2),
        "close_s": round(close_s, 2),
        "cpu_s": round(cpu_s, 2),
        "commits": commits[0],
        "durable_after_add_s": {
            "median": round(statistics.median(during_loop), 2) if during_loop else None,
            "max": round(max(during_loop), 2) if during_loop else None,
        },
        "buffered_at_stall": len(buffered),
        "stall_s": args.stall,
        "last_buffered_durable_after_stall_began_s": round(stall_wait, 2),
        "store_mb": round(size / 1e6, 1),
        "buffer_bytes_cap": store_module.BUFFER_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=[f"current={BENCH_DIR.parent}"], help="NAME=DIR of fdl sources")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--p", type=int, default=512)
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--compute-ms", type=float, default=25.0, help="work per checkpoint in the caller")
    parser.add_argument("--ticks", type=int, default=20, help="tick() calls per checkpoint (probe batches)")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without a call after the last add")
    parser.add_argument("--min-interval", type=float, default=1.0)
    parser.add_argument("--workdir", default=None, help="where the stores are written (a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("FDL_BENCH_WRITER=" + json.dumps(child(args)))
        return
    trees = dict(item.split("=", 1) for item in args.trees)
    passed = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in
              ("checkpoints", "p", "m", "k", "compute_ms", "ticks", "stall", "min_interval")]
    if args.workdir is not None:
        passed.append(f"--workdir={args.workdir}")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for repeat in range(args.repeats):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "OMP_NUM_THREADS": "1",
                   "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, __file__, *passed, "--child"], env=env, capture_output=True,
                                  text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("FDL_BENCH_WRITER=")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{name}: trial failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = json.loads(line.split("=", 1)[1])
            results[name].append(result)
            print(f"repeat {repeat} {name}: add median {result['add_us']['median']} us, tick median "
                  f"{result['tick_us']['median']} us, loop {result['loop_s']} s, cpu {result['cpu_s']} s, "
                  f"{result['commits']} commits, {result['buffered_at_stall']} buffered at the stall, durable "
                  f"{result['last_buffered_durable_after_stall_began_s']} s after it began", file=sys.stderr)
    payload = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "json")}, "trials": results}
    text = json.dumps(payload, indent=2, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
