"""Benchmark (a): `fdl analyze` against the floor (benchmarks/floor.py), whole processes, side by side.

For each model (an MLP and a small CNN by default), a synthetic run of C checkpoints and a probe of n
inputs (p = 512 features) is written once under --workdir; then, --repeats times and alternating,
the floor and `fdl analyze` (fresh store each time) run as separate processes. Reported: the best
(minimum) wall time of each, their ratio (target: analyze / floor <= 1.15), the medians, the ratios
of the runs of each repeat (paired: steadier on a machine whose speed drifts) and their median, peak RSS,
and with --nproc 2 the same analysis under `torchrun --nproc-per-node 2` (checkpoints sharded). With
--spec-floor also the floor plus CKA's two anchor cross products (floor.py --cka-anchors): what any
implementation of SPEC §5 must add to the floor.

    python benchmarks/bench_analyze.py                         # the full size: n=10000, 50 checkpoints
    python benchmarks/bench_analyze.py --n 1000 --checkpoints 5 --repeats 1   # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_FILE, machine, make_run, measured_command, run_process, write_json  # noqa: E402


def analyze_command(run: Path, model: str, out: Path, args: argparse.Namespace, *, nproc: int = 1) -> list[str]:
    tail = [
        "analyze", str(run), "--model", f"{MODELS_FILE}:{model}", "--probe", str(run / "probe.npz"),
        "--out", str(out), "--overwrite", "--device", args.device, "--batch-size", str(args.batch_size),
        "--cka-dtype", args.cka_dtype,
    ]
    tail += ["--anchor-size", str(args.anchor_size)] if args.anchor_size else []
    tail += ["--shard-probe"] if args.shard_probe and nproc > 1 else []
    if nproc == 1:
        return [sys.executable, "-m", "fdl_cli", *tail]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "fdl_cli", *tail,
    ]


def floor_command(run: Path, model: str, args: argparse.Namespace, *, cka_anchors: int = 0) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve().parent / "floor.py"), str(run), "--model", model,
        "--device", args.device, "--batch-size", str(args.batch_size),
    ] + (["--cka-anchors", str(cka_anchors), "--cka-dtype", args.cka_dtype] if cka_anchors else [])


def paired_ratios(top: list[float], bottom: list[float]) -> dict[str, object]:
    """top[i] / bottom[i] per repeat (the two ran back to back): each, and their median, min and max."""
    each = [a / b for a, b in zip(top, bottom, strict=True)]
    return {"each": [round(r, 3) for r in each], "median": statistics.median(each), "min": min(each), "max": max(each)}


def thread_env(threads: int | None) -> dict[str, str]:
    """With --threads T: every process (torch, OpenMP, BLAS) uses T threads; torchrun ranks get T each."""
    if threads is None:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def measure_model(model: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    run = make_run(workdir, model, n=args.n, checkpoints=args.checkpoints)
    store = workdir / f"{model}.h5"
    times: dict[str, list[float]] = {"floor": [], "analyze": []}
    cpu: dict[str, list[float]] = {"floor": [], "analyze": []}
    peaks: dict[str, float] = {"floor": 0.0, "analyze": 0.0}
    commands = {"floor": floor_command(run, model, args), "analyze": analyze_command(run, model, store, args)}
    if args.spec_floor:
        name = "spec_floor"
        times[name], cpu[name], peaks[name] = [], [], 0.0
        commands[name] = floor_command(run, model, args, cka_anchors=min(args.anchor_size or 4096, args.n))
    for nproc in args.nproc:
        if nproc > 1:
            name = f"analyze_x{nproc}"
            times[name], cpu[name], peaks[name] = [], [], 0.0
            commands[name] = analyze_command(run, model, workdir / f"{model}-x{nproc}.h5", args, nproc=nproc)
    for repeat in range(args.repeats):
        for name, command in commands.items():
            result = run_process(measured_command(command), env=thread_env(args.threads))
            if result.returncode != 0:
                raise SystemExit(f"{name} failed ({result.returncode}):\n{' '.join(command)}\n{result.stderr[-3000:]}")
            times[name].append(result.seconds)
            cpu[name].append(result.cpu_seconds)
            peaks[name] = max(peaks[name], result.peak_mib)
            print(f"  {model} {name} #{repeat + 1}: {result.seconds:.2f} s (cpu {result.cpu_seconds:.1f} s), "
                  f"peak {result.peak_mib:.0f} MiB", file=sys.stderr)
    best = {name: min(values) for name, values in times.items()}
    summary: dict[str, object] = {
        "model": model,
        "n": args.n,
        "p": 512,
        "checkpoints": args.checkpoints,
        "threads_per_process": args.threads,
        "best_seconds": best,
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
        "all_seconds": times,
        "peak_mib": peaks,
        "ratio_analyze_over_floor": best["analyze"] / best["floor"],
        "best_cpu_seconds": {name: min(values) for name, values in cpu.items()},
        "cpu_ratio_analyze_over_floor": min(cpu["analyze"]) / min(cpu["floor"]),
        "commands": {name: " ".join(command) for name, command in commands.items()},
    }
    pairs = [("analyze", "floor")]
    if args.spec_floor:
        summary["ratio_spec_floor_over_floor"] = best["spec_floor"] / best["floor"]
        summary["ratio_analyze_over_spec_floor"] = best["analyze"] / best["spec_floor"]
        pairs += [("spec_floor", "floor"), ("analyze", "spec_floor")]
    # The machine's speed drifts between runs (docs/benchmarks.md): a ratio of the two runs of one
    # repeat, which ran within seconds of each other, is steadier than the ratio of two bests.
    summary["paired_ratios"] = {
        f"{top}_over_{bottom}": paired_ratios(times[top], times[bottom]) for top, bottom in pairs
    }
    for key, ratios in summary["paired_ratios"].items():  # type: ignore[attr-defined]
        print(f"  {model} {key}, run by run: {ratios['each']}, median {ratios['median']:.2f}",
              file=sys.stderr)
    for nproc in args.nproc:
        if nproc > 1:
            summary[f"speedup_x{nproc}"] = best["analyze"] / best[f"analyze_x{nproc}"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated names from benchmarks/models.py")
    parser.add_argument("--n", type=int, default=10_000, help="probe size")
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--cka-dtype", choices=["float64", "float32"], default="float64",
                        help="fdl analyze's --cka-dtype (and the SPEC floor's; the floor computes no CKA)")
    parser.add_argument("--anchor-size", type=int, help="fdl analyze's --anchor-size (default: fdl's own, 4096)")
    parser.add_argument("--spec-floor", action="store_true",
                        help="also the floor with CKA's two anchor cross products (floor.py --cka-anchors)")
    parser.add_argument("--nproc", type=lambda s: [int(v) for v in s.split(",")], default=[1],
                        help="also run under torchrun with these process counts, e.g. 1,2")
    parser.add_argument("--shard-probe", action="store_true", help="with --nproc > 1: shard the probe too")
    parser.add_argument("--threads", type=int, help="threads per process (default: the libraries' own choice; "
                        "torchrun sets 1 per rank unless OMP_NUM_THREADS is set)")
    parser.add_argument("--workdir", type=Path, help="where runs are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fdl-bench-a-"))
    try:
        results = [measure_model(model, args, workdir) for model in args.models.split(",")]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_json(args.json, {"benchmark": "analyze_vs_floor", "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
