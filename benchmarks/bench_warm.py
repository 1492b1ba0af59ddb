"""CPU seconds of one `python -m fdl_cli ...` process the test suite starts: a fresh interpreter against a warm one
(tests/warm.py: forked from a zygote that imported torch), for two commands: `fdl analyze` of two of the bundled
sample checkpoints, and `fdl report` of the store it wrote (which never imports torch).

    python benchmarks/bench_warm.py [--repeat 5]

CPU is user + system time of the children (RUSAGE_CHILDREN), which counts a warm child once the zygote that reaped
it has exited and been waited for: so each warm round starts a zygote, runs the commands, closes it, and has the
cost of a zygote alone (started, one trivial child, closed) subtracted. Wall seconds are per command, a warm
round's zygote started before its clock.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import warm  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _round(start: object, argv: list[str], repeat: int, warm_up: bool) -> tuple[float, float]:
    """(CPU s, wall s) per command over `repeat` runs, the zygote (if any) closed and waited for in the CPU; with
    `warm_up`, a zygote started (and its one trivial child run) before the wall clock starts."""
    cpu = _children_cpu()
    if warm_up:
        warm.run([sys.executable, "-c", "pass"])
    began = time.perf_counter()
    for _ in range(repeat):
        done = start(argv)  # type: ignore[operator]
        assert done.returncode == 0, done.stderr[-2000:]
    wall = (time.perf_counter() - began) / repeat
    warm._close_all()
    return (_children_cpu() - cpu) / repeat, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    fresh = lambda argv: subprocess.run(argv, capture_output=True, text=True, cwd=REPO)  # noqa: E731
    forked = lambda argv: warm.run(argv, cwd=REPO)  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "s.h5")
        analyze = [sys.executable, "-m", "fdl_cli", "analyze", "sample_checkpoints", "--steps", "0,10", "--out", store,
                   "--overwrite"]
        report = [sys.executable, "-m", "fdl_cli", "report", store]
        cpu = _children_cpu()
        warm.run([sys.executable, "-c", "pass"])  # a zygote, one trivial child, closed
        warm._close_all()
        zygote = _children_cpu() - cpu
        results = {"repeat": repeat, "zygote_cpu_s": round(zygote, 2)}
        for name, argv in (("analyze", analyze), ("report", report)):
            for way, start in (("fresh", fresh), ("warm", forked)):
                cpu_s, wall_s = _round(start, argv, repeat, warm_up=way == "warm")
                if way == "warm":
                    cpu_s -= zygote / repeat
                results[f"{name}_{way}_cpu_s"] = round(cpu_s, 2)
                results[f"{name}_{way}_wall_s"] = round(wall_s, 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
