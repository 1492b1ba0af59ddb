"""`fdl` at the sizes real runs have: width p, outputs C, probe n, checkpoints; analyze and the readers.

For each shape `p,C,n,checkpoints[,reg][,center]` it builds (once, under --workdir) a run of the `proj`
benchmark network (benchmarks/models.py: tanh of a random projection of 64 inputs to width p, then
Linear(p, C), so the forward pass is cheap at any p and C), whose weights drift from a seeded
initialisation, and a probe of n inputs with class labels in [0, C) (`reg`: float regression targets
(n, C)). Then, each command a fresh process under peak.py:

- `fdl analyze` with timers around its steps (steps.py's `--role fdl`): seconds per checkpoint of each
  step, peak RSS, and the store's bytes per checkpoint split by dataset;
- `--readers`: `fdl report` (table, --format json, --plots, --html), `fdl classify`, `fdl compare`
  of the store with itself, and `fdl export` of each kind (csv and npy): wall seconds, peak RSS and
  output bytes.

    python benchmarks/bench_scale.py --shapes 512,10,2000,10 2048,1000,20000,2 --readers --json out.json

Nothing is asserted: compare shapes of growth (2x the input -> ?x time, memory, bytes), not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as fdl's entry point sets it (see steps.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_FILE, machine, make_checkpoints, measured_command, run_process, write_json  # noqa: E402

STEPS = Path(__file__).resolve().parent / "steps.py"
N_IN = 64


def parse_shape(text: str) -> dict[str, Any]:
    parts = text.split(",")
    p, c, n, count = (int(value) for value in parts[:4])
    flags = set(parts[4:])
    unknown = flags - {"reg", "center"}
    if unknown:
        raise SystemExit(f"unknown flags {sorted(unknown)} in {text!r} (reg, center)")
    return {"p": p, "C": c, "n": n, "checkpoints": count, "reg": "reg" in flags, "center": "center" in flags}


def make_scale_run(root: Path, shape: dict[str, Any]) -> Path:
    import numpy as np

    name = f"p{shape['p']}-C{shape['C']}-n{shape['n']}-k{shape['checkpoints']}" + ("-reg" if shape["reg"] else "")
    folder = root / name
    marker = folder / ".complete"
    if not marker.exists():
        make_checkpoints(folder, "proj", shape["checkpoints"], kwargs={"width": shape["p"], "n_out": shape["C"]})
        rng = np.random.default_rng(0)
        x = rng.standard_normal((shape["n"], N_IN), dtype=np.float32)
        y = rng.standard_normal((shape["n"], shape["C"])) if shape["reg"] else rng.integers(0, shape["C"], size=shape["n"])
        np.savez(folder / "probe.npz", x=x, y=y)
        marker.write_text("ok\n")
    return folder


def dataset_bytes(store: Path) -> dict[str, int]:
    """Stored bytes of the store's datasets, summed by name (eigenvectors, eigenfunctions, ...; the
    trajectories as one entry)."""
    import h5py

    totals: dict[str, int] = {}

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            key = "trajectories" if name.startswith("trajectories/") else name.rsplit("/", 1)[-1]
            totals[key] = totals.get(key, 0) + node.id.get_storage_size()

    with h5py.File(store, "r") as handle:
        handle.visititems(visit)
    return totals


#: Child processes' environment: set by --threads (one thread each by default: on a shared 2-core
#: machine, torch's spinning OpenMP workers of a 2-thread process lose 10-20x to any other load).
CHILD_ENV: dict[str, str] = {}


def analyze(run: Path, shape: dict[str, Any], store: Path, extra: list[str]) -> dict[str, Any]:
    kwargs = json.dumps({"width": shape["p"], "n_out": shape["C"]})
    command = [
        sys.executable, str(STEPS), "--role", "fdl", str(run), "--model", f"{MODELS_FILE}:proj",
        "--model-kwargs", kwargs, "--probe", str(run / "probe.npz"), "--out", str(store), "--overwrite",
        *(["--center"] if shape["center"] else []), *extra,
    ]  # fmt: skip
    result = run_process(measured_command(command), env={**CHILD_ENV, "FDL_STEPS_CHECKPOINTS": str(shape["checkpoints"])})
    if result.returncode != 0:
        raise SystemExit(f"analyze failed ({result.returncode}):\n{result.stderr[-3000:]}")
    timings: dict[str, Any] = {}
    for line in reversed(result.stderr.splitlines()):
        if line.startswith("FDL_STEPS="):
            timings = json.loads(line[len("FDL_STEPS=") :])
            break
    count = shape["checkpoints"]
    steps = {name: round(1000 * value / count, 1) for name, value in timings.get("steps", {}).items()}
    parts = dataset_bytes(store)
    return {
        "wall_s": round(result.seconds, 2),
        "cpu_s": result.cpu_seconds,
        "cpu_s_per_checkpoint": round(result.cpu_seconds / count, 2),
        "ms_per_checkpoint": round(1000 * timings.get("run", float("nan")) / count, 1),
        "steps_ms_per_checkpoint": dict(sorted(steps.items(), key=lambda item: -item[1])),
        "peak_rss_mib": result.peak_mib,
        "store_bytes": store.stat().st_size,
        "store_bytes_per_checkpoint": store.stat().st_size // count,
        "dataset_bytes_per_checkpoint": {name: size // count for name, size in sorted(parts.items(), key=lambda i: -i[1])},
    }


def readers(store: Path, workdir: Path, skip: Sequence[str] = ()) -> dict[str, Any]:
    out = workdir / "reader-out"
    out.mkdir(exist_ok=True)
    fdl = [sys.executable, "-m", "fdl_cli"]
    commands: dict[str, tuple[list[str], Path | None]] = {
        "report (table)": (["report", str(store)], None),
        "report --wide": (["report", str(store), "--wide"], None),
        "report --format json": (["report", str(store), "--format", "json"], None),
        "report --plots": (["report", str(store), "--plots", str(out / "plots")], out / "plots"),
        "report --html": (["report", str(store), "--html", str(out / "r.html")], out / "r.html"),
        "classify": (["classify", str(store)], None),
        "compare (itself)": (["compare", str(store), str(store)], None),
        "compare --format json": (["compare", str(store), str(store), "--format", "json"], None),
        "compare --plots": (["compare", str(store), str(store), "--plots", str(out / "cplots")], out / "cplots"),
    }
    for what in ("eigenvalues", "quality", "utility", "eigenfunctions", "trajectories"):
        # to a file: the eigenfunctions of 1 000 checkpoints are gigabytes of text, not for a pipe read here
        commands[f"export {what} csv"] = (
            ["export", str(store), "--what", what, "--out", str(out / f"{what}.csv")], out / f"{what}.csv"
        )
        commands[f"export {what} npy"] = (
            ["export", str(store), "--what", what, "--format", "npy", "--out", str(out / f"{what}.npz")],
            out / f"{what}.npz",
        )
    results: dict[str, Any] = {}
    for label, (args, written) in commands.items():
        if any(word in label for word in skip):
            continue
        started = time.perf_counter()
        result = run_process(measured_command([*fdl, *args]), env=CHILD_ENV)
        seconds = time.perf_counter() - started
        # Human output (the table, the summary) goes to stderr, machine output to stdout: count both,
        # less peak.py's two lines.
        stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("FDL_BENCH_"))
        size = len(result.stdout.encode()) + len(stderr.strip().encode())
        if written is not None and written.exists():
            size = sum(f.stat().st_size for f in written.rglob("*")) if written.is_dir() else written.stat().st_size
            if written.is_file() and written.suffix in (".csv", ".npz"):
                written.unlink()  # gigabytes at 1 000 checkpoints
        results[label] = {
            "wall_s": round(seconds, 2),
            "cpu_s": result.cpu_seconds,
            "peak_rss_mib": result.peak_mib,
            "output_bytes": size,
            "exit": result.returncode,
            "lines": result.stdout.count("\n") + stderr.strip().count("\n"),
        }
        if result.returncode != 0:
            results[label]["stderr"] = result.stderr[-500:]
        print(f"  {label:<28} {seconds:7.2f} s {result.cpu_seconds:7.2f} CPU s {result.peak_mib:8.0f} MiB {size:>13,} B",
              file=sys.stderr)
    return results


def build_synthetic(path: Path, checkpoints: int, p: int, c: int, m: int = 4096, k: int = 64) -> None:
    """A store of `checkpoints` checkpoints written by fdl's store writer with arrays of the sizes
    `fdl analyze` stores at width p, C outputs, m anchors and top K (random values; the regime of each
    checkpoint flickers between MF and EF, as a k95 near C does in a real run): the readers'
    workload without hours of analysis."""
    import numpy as np

    from fdl_cli.fields import MEASURE_FIELDS
    from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter

    rng = np.random.default_rng(0)
    probe = ProbeInfo(name="probe", sha256="0" * 64, n=max(m, 20_000), task="classes", n_outputs=c)
    options = {"anchor_size": m, "center": False, "dlr_energy": 0.99, "dtype": "float32", "product_dtype": "float64",
               "top_k": k}
    provenance = {"model": "synthetic:build", "layers": ["fc:input"], "probes": {"probe": "0" * 64},
                  "probe_order": ["probe"], "options": options, "reference_step": 0}
    with StoreWriter(path, provenance=provenance, probes=[probe], overwrite=True, min_interval=5.0) as writer:
        for index in range(checkpoints):
            t = index / max(checkpoints - 1, 1)
            scalars: dict[str, Any] = {name: float(rng.random()) for name in MEASURE_FIELDS}
            scalars.update(
                n_probe=probe.n, n_features=p, n_outputs=c, rank=p, output_rank=c,
                prev_step=None if index == 0 else 100 * (index - 1),
                k90_quality=c, k95_quality=c, k99_quality=c, k90_utility=c, k95_utility=c + int(rng.integers(0, 3)),
                k99_utility=c + 5, cka_init=1.0 - 0.5 * t, overlap_init=1.0 - 0.4 * t, d_lr=0.9 - 0.8 * t,
                regime="coefficient" if index == 0 else ("MF" if index % 3 else "EF"),
            )
            eigenvalues = np.sort(rng.random(p))[::-1]
            entry = SeriesEntry(
                probe="probe", layer="fc:input", scalars=scalars, eigenvalues=eigenvalues,
                eigenvectors=rng.normal(size=(p, k)), eigenfunctions=rng.normal(size=(m, k)).astype(np.float32),
                utility=rng.dirichlet(np.ones(p)), quality=rng.dirichlet(np.ones(p)),
            )
            writer.add(CheckpointEntry(step=100 * index, path=f"ckpt/{index}.pt", sha256=f"{index:064x}", series=(entry,)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=[], help="p,C,n,checkpoints[,reg][,center] ...")
    parser.add_argument("--synthetic", nargs="*", default=[], metavar="CHECKPOINTS,p,C",
                        help="stores written by the store writer (no analysis), for the readers")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fdl-bench-scale"))
    parser.add_argument("--readers", action="store_true", help="also time report, classify, compare and export")
    parser.add_argument("--skip", action="append", default=[], metavar="TEXT",
                        help="leave out the reader commands whose label contains TEXT (e.g. 'eigenfunctions csv')")
    parser.add_argument("--fdl-args", default="", help="more `fdl analyze` options")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/MKL/OpenBLAS threads per process (0: the libraries' default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        CHILD_ENV.update({name: str(args.threads) for name in names})
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.shapes:
        shape = parse_shape(text)
        run = make_scale_run(args.workdir, shape)
        store = args.workdir / f"{run.name}{'-center' if shape['center'] else ''}.h5"
        print(f"{text}: analyze ...", file=sys.stderr)
        row: dict[str, Any] = {"shape": text, **shape, "analyze": analyze(run, shape, store, args.fdl_args.split())}
        a = row["analyze"]
        print(
            f"  {a['ms_per_checkpoint']:.0f} ms/checkpoint ({a['cpu_s_per_checkpoint']} CPU s), "
            f"peak {a['peak_rss_mib']:.0f} MiB, "
            f"{a['store_bytes_per_checkpoint']:,} B/checkpoint; {json.dumps(a['steps_ms_per_checkpoint'])}",
            file=sys.stderr,
        )
        if args.readers:
            row["readers"] = readers(store, args.workdir, args.skip)
        rows.append(row)
    for text in args.synthetic:
        count, p, c = (int(value) for value in text.split(","))
        store = args.workdir / f"synthetic-k{count}-p{p}-C{c}.h5"
        started = time.perf_counter()
        if not store.exists():
            build_synthetic(store, count, p, c)
        print(f"synthetic {text}: {store.stat().st_size:,} B ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        row = {"synthetic": text, "checkpoints": count, "p": p, "C": c, "store_bytes": store.stat().st_size,
               "dataset_bytes_per_checkpoint": {name: size // count for name, size in dataset_bytes(store).items()}}
        if args.readers:
            row["readers"] = readers(store, args.workdir, args.skip)
        rows.append(row)
    write_json(args.json, {"benchmark": "scale", "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
