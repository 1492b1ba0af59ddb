"""What adding a probe to a stored run costs, against analysing the run again with both probes.

    python benchmarks/bench_add.py [--model mlp] [--n 10000] [--checkpoints 15] [--rounds 2] [--json out.json]

A store of probe `a` is made once; then, in alternating rounds, whole `fdl analyze` processes:
  add:   a copy of that store resumed with `--probe a --probe b` (only b's series analysed),
  fresh: a new store with both probes at once (what a researcher did before a store could grow).
Both are timed as whole processes (wall and CPU seconds); the ratio add / fresh is the point. The two
stores are checked to hold the same eigenvalues. Not a test: nothing is asserted but that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from benchmarks.common import machine, make_probe, make_run, measured_command, run_process, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, args.model, n=args.n, checkpoints=args.checkpoints)
        second = root / "b"
        second.mkdir()
        probe_b = make_probe(second, args.model, args.n, seed=1)
        common = [sys.executable, "-m", "fdl_cli", "analyze", str(run), "--model",
                  f"benchmarks/models.py:{args.model}", "--probe", f"a={run / 'probe.npz'}"]
        both = [*common, "--probe", f"b={probe_b}"]
        base = root / "a.h5"
        made = run_process(measured_command([*common, "--out", str(base)]))
        if made.returncode != 0:
            raise SystemExit(made.stderr)
        timings: dict[str, list[dict[str, float]]] = {"add": [], "fresh": []}
        for round_ in range(args.rounds):
            grown, fresh = root / f"grown{round_}.h5", root / f"fresh{round_}.h5"
            shutil.copyfile(base, grown)
            for name, command in (("add", [*both, "--out", str(grown)]), ("fresh", [*both, "--out", str(fresh)])):
                measured = run_process(measured_command(command))
                if measured.returncode != 0:
                    raise SystemExit(measured.stderr)
                timings[name].append({"wall_s": round(measured.seconds, 3), "cpu_s": round(measured.cpu_seconds, 3)})
        from fdl_cli.store import StoreReader

        with StoreReader(grown) as a, StoreReader(fresh) as b:
            assert a.series() == b.series() and a.checkpoint_steps() == b.checkpoint_steps()
            for probe, layer in b.series():
                for step in b.checkpoint_steps():
                    got = a.array(step, "eigenvalues", probe=probe, layer=layer)
                    want = b.array(step, "eigenvalues", probe=probe, layer=layer)
                    assert np.array_equal(got, want), f"the grown store differs from the fresh one at {step}"

    best = {name: min(t["wall_s"] for t in rows) for name, rows in timings.items()}
    best_cpu = {name: min(t["cpu_s"] for t in rows) for name, rows in timings.items()}
    write_json(args.json, {
        "machine": machine(),
        "model": args.model, "n": args.n, "checkpoints": args.checkpoints,
        "store_of_a_s": round(made.seconds, 3),
        "rounds": timings,
        "add_over_fresh_wall": round(best["add"] / best["fresh"], 3),
        "add_over_fresh_cpu": round(best_cpu["add"] / best_cpu["fresh"], 3),
    })


if __name__ == "__main__":
    main()
