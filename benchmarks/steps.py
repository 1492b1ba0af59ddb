"""Where the time of benchmark (a) goes: the floor's steps and `fdl analyze`'s, timed inside each process.

Whole-process timings on a shared machine swing by 10-20 %, too much to see which step of
`fdl analyze` costs what. This script runs, --rounds times and alternating, `floor.py --timings` and
`fdl analyze` under timers wrapped around its functions (this file, `--role fdl`), each as its own
process on the same synthetic run as bench_analyze.py, and prints the milliseconds per checkpoint of
every step (median over rounds, and the range). CPU only: the timers would have to synchronise a GPU.
With --cpu the timers count the CPU seconds of the thread that runs each step (time.thread_time), the
steadiest figure on a machine shared with other work.

    python benchmarks/steps.py --model mlp --n 10000 --checkpoints 50 --rounds 3 [--cpu]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# As `fdl` sets it at its entry point (fdl_cli/cli.py, BLAS_ENVIRONMENT), before numpy is first
# imported (by `common` here): without it OpenBLAS workers spin and halve torch's speed in this process.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_FILE, machine, make_run, run_process, write_json  # noqa: E402

TAG = "FDL_STEPS="
#: The clock of the timers in both processes (floor.py reads it too): "wall" (time.perf_counter) or, with
#: --cpu, "thread" (time.thread_time: the CPU of the thread that runs the step, which other work on a
#: shared machine does not count; seventeenth session).
CLOCK_VARIABLE = "FDL_STEPS_CLOCK"


def step_clock() -> Any:
    return time.thread_time if os.environ.get(CLOCK_VARIABLE) == "thread" else time.perf_counter

#: (module, attribute, step): the functions of `fdl analyze` whose time is reported. Nested ones
#: (the statistics and the forward pass inside "extract") are reported on their own rows too.
TIMED = [
    ("fdl_cli.extract", "extract", "extract (forward passes and statistics, total)"),
    ("fdl_cli.moments", "MomentAccumulator.update", "statistics"),
    # the products of the rows still gathered when the sums are read (`moments()`, the anchors' moment): on the
    # CPU's numpy path a pass's last chunk, all of a probe of one chunk (`moments.SYRK_ROWS`); never inside `update`
    ("fdl_cli.moments", "MomentAccumulator._in_place_sums", "statistics"),
    ("fdl_cli.probes", "RowReader.__getitem__", "probe batches read in place"),
    ("fdl_cli.spectral", "measure", "measures (eigen-decomposition included)"),
    ("fdl_cli.spectral", "_descending_eigh", "eigen-decomposition"),
    ("fdl_cli.pipeline", "_cka", "CKA to the reference and the previous checkpoint"),
    ("fdl_cli.pipeline", "_cross_norm2", "CKA: the two m×p×p cross products"),
    ("fdl_cli.pipeline", "_Series.kernel", "CKA: centring the anchors"),
    ("fdl_cli.spectral", "eigenfunctions", "eigenfunctions on the anchors"),
    ("fdl_cli.pipeline", "_overlap", "eigenspace overlaps"),
    ("fdl_cli.extract", "parameter_vector_norms", "parameter norms"),
    ("fdl_cli.pipeline", "_prepare", "load (weights into the model)"),
]
#: Functions that run mostly in fdl's background threads, beside the steps above: their CPU seconds
#: (thread time) are reported, since on 2 cores they are taken from the foreground's threads. The
#: reference checkpoint is loaded, and the last commit written, in the main thread.
BACKGROUND = [
    ("fdl_cli.pipeline", "_load", "checkpoint load and sha256, CPU (loader thread; the reference's in the main)"),
    ("fdl_cli.store", "StoreWriter._execute", "store commits, CPU (writer thread; the last in the main)"),
]


def run_fdl_timed(argv: list[str]) -> None:
    """`fdl analyze argv` in this process with the TIMED functions and the forward pass timed."""
    import importlib

    seconds: Counter[str] = Counter()
    now = step_clock()

    def timed(function: Any, step: str, clock: Any = now) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[step] += clock() - start

        return wrapper

    from fdl_cli import cli, signals

    # The modules `fdl analyze` imports with the collector off and then freezes (cli._untracked_imports),
    # imported here the same way: imported plainly before its `main`, where freezing is skipped once torch
    # is loaded, they stayed tracked, and the process CPU reported was not that of `fdl analyze`.
    with cli._untracked_imports():
        signals.import_torch()
        import rich.console
        import rich.progress  # noqa: F401

        from fdl_cli import checkpoints, extract, pipeline, probes, progress, store  # noqa: F401
    for module_name, attribute, step in TIMED + BACKGROUND:
        clock = time.thread_time if (module_name, attribute, step) in BACKGROUND else now
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, timed(getattr(owner, name), step, clock))
    # The forward pass: from the moment extract has its input batch to the moment it reads the outputs.
    inputs, outputs, ready = extract._inputs, extract.model_outputs, [0.0]

    def timed_inputs(*args: Any, **kwargs: Any) -> Any:
        batch = inputs(*args, **kwargs)
        ready[0] = now()
        return batch

    def timed_outputs(raw: Any, *rest: Any) -> Any:  # rest: the batch's rows, which the outputs are checked against
        seconds["forward pass"] += now() - ready[0]
        return outputs(raw, *rest)

    extract._inputs, extract.model_outputs = timed_inputs, timed_outputs
    from fdl_cli.cli import main as fdl_main

    started = now()
    try:
        fdl_main(["analyze", *argv])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    checkpoints = int(os.environ.get("FDL_STEPS_CHECKPOINTS", "0"))
    seconds["process CPU (all threads; not a step)"] = time.process_time()
    report = {"checkpoints": checkpoints, "run": now() - started, "steps": dict(seconds)}
    print(TAG + json.dumps(report), file=sys.stderr)


def parse(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if line.startswith(TAG):
            return json.loads(line[len(TAG) :])
    raise SystemExit(f"no timings in the output:\n{stderr[-3000:]}")


def main() -> None:
    if sys.argv[1:3] == ["--role", "fdl"]:  # a child process: the rest are `fdl analyze` arguments
        run_fdl_timed(sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fdl-bench-steps"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--fdl-args", default="", help="more `fdl analyze` options, e.g. '--commit-interval 60'")
    parser.add_argument("--floor-args", default="", help="more floor.py options, e.g. '--cka-anchors 4096'")
    parser.add_argument("--cpu", action="store_true",
                        help="time each step by the CPU of its thread (time.thread_time), not by wall time")
    args = parser.parse_args()
    run = make_run(args.workdir, args.model, n=args.n, checkpoints=args.checkpoints)
    here = Path(__file__).resolve()
    commands = {
        "floor": [
            sys.executable, str(here.parent / "floor.py"), str(run), "--model", args.model, "--timings",
            *shlex.split(args.floor_args),
        ],
        "fdl": [
            sys.executable, str(here), "--role", "fdl", str(run), "--model", f"{MODELS_FILE}:{args.model}",
            "--probe", str(run / "probe.npz"), "--out", str(args.workdir / "steps.h5"), "--overwrite",
            *shlex.split(args.fdl_args),
        ],
    }  # fmt: skip
    rounds: dict[str, list[dict[str, Any]]] = {"floor": [], "fdl": []}
    for index in range(args.rounds):
        for name, command in commands.items():
            env = {"FDL_STEPS_CHECKPOINTS": str(args.checkpoints), CLOCK_VARIABLE: "thread" if args.cpu else "wall"}
            result = run_process(command, env=env)
            if result.returncode != 0:
                raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
            rounds[name].append(parse(result.stderr))
            print(f"  round {index + 1} {name}: {rounds[name][-1]['run']:.2f} s", file=sys.stderr)
    table: dict[str, dict[str, list[float]]] = {}
    for name, reports in rounds.items():
        steps = sorted({step for report in reports for step in report["steps"]})
        table[name] = {
            step: [1000 * report["steps"].get(step, 0.0) / args.checkpoints for report in reports] for step in steps
        }
        table[name]["whole run (after imports)"] = [1000 * report["run"] / args.checkpoints for report in reports]
    for name, steps in table.items():
        print(f"\n{name} (ms per checkpoint: median [min - max] over {args.rounds} rounds)")
        for step, values in sorted(steps.items(), key=lambda item: -statistics.median(item[1])):
            print(f"  {statistics.median(values):7.1f}  [{min(values):6.1f} - {max(values):6.1f}]  {step}")
    write_json(args.json, {"benchmark": "steps", "machine": machine(), "model": args.model, "n": args.n,
                           "checkpoints": args.checkpoints, "ms_per_checkpoint": table,
                           "commands": {k: " ".join(v) for k, v in commands.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
