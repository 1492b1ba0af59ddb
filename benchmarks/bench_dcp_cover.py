"""Time and peak memory of `fdl_cli.dcp._cover`, the check that a DCP tensor's chunks cover it exactly once.

    python benchmarks/bench_dcp_cover.py                       # every layout at 10^4, 10^5, 10^6, 3.5 * 10^6
    python benchmarks/bench_dcp_cover.py --layout grid --chunks 1000000

Each case runs in a process of its own (one after another), which builds one synthetic `Entry` in memory, then
times one `_cover` call on it: wall seconds, and the CPU seconds of the thread that made the call (steadier on a
shared machine: numpy sorts in that thread). Memory (`rss_rise_mib`): how far the process's resident memory rose
above what it was before the call, at its highest, sampled every millisecond or so by a thread (Linux:
/proc/self/statm); the entry itself, some 0.4 KB a chunk, is not counted.

Layouts, all but the last exact tilings:
`rows` (1-D row shards of an n x 4 tensor), `grid` (a square grid of 2 x 3 blocks), `uneven` (a grid whose row
heights cycle 1, 2, 3 and column widths 2, 3, 4, 5) and `brick` (rows of height 1 cut into blocks of 4 columns,
every other row shifted by 2: a valid tiling that is not a grid); `brick-gap` is `brick` less one chunk, a damaged
layout that is no grid, told by cutting the tensor at every chunk's edges.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

SIZES = (10**4, 10**5, 10**6, 3_500_000)
LAYOUTS = ("rows", "grid", "uneven", "brick", "brick-gap")
REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def _cuts(widths: list[int]) -> list[tuple[int, int]]:
    """(offset, size) of consecutive pieces of the given widths."""
    starts = [0, *itertools.accumulate(widths)]
    return list(zip(starts, widths, strict=False))  # starts has one more: the end


def build(layout: str, n: int) -> object:
    sys.path.insert(0, str(REPO))
    import torch

    from fdl_cli.dcp import Chunk, Entry

    if layout == "rows":
        pieces = [((i, 0), (1, 4)) for i in range(n)]
        size: tuple[int, ...] = (n, 4)
    elif layout in ("grid", "uneven"):
        side = math.isqrt(n)
        heights = [2] * side if layout == "grid" else [1 + i % 3 for i in range(side)]
        widths = [3] * side if layout == "grid" else [2 + i % 4 for i in range(side)]
        rows, cols = _cuts(heights), _cuts(widths)
        pieces = [((r, c), (h, w)) for r, h in rows for c, w in cols]
        size = (sum(heights), sum(widths))
    elif layout in ("brick", "brick-gap"):
        per_row = 256
        rows_n = max(1, n // (per_row + 1))
        pieces, width = [], 4 * per_row + 2
        for r in range(rows_n):
            widths = [4] * per_row + [2] if r % 2 == 0 else [2] + [4] * per_row
            pieces.extend(((r, c), (1, w)) for c, w in _cuts(widths))
        size = (rows_n, width)
        if layout == "brick-gap":  # damaged: a chunk in the middle left out
            del pieces[len(pieces) // 2]
    else:
        raise SystemExit(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    chunks = tuple(Chunk(offsets, sizes, "__0_0.distcp", i, 4 * math.prod(sizes))
                   for i, (offsets, sizes) in enumerate(pieces))
    return Entry("model.w", ("model", "w"), torch.float32, size, chunks)


def _resident() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def measure(layout: str, n: int) -> dict[str, object]:
    from fdl_cli.dcp import _cover

    entry = build(layout, n)
    gc.collect()
    base = peak = _resident()
    done = threading.Event()

    def sample() -> None:  # every millisecond or so, the GIL permitting (a pure-Python loop yields every 5 ms)
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _resident())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, cpu = time.perf_counter(), time.thread_time()
    error = None
    try:
        _cover(Path("bench"), entry)  # type: ignore[arg-type]
    except Exception as exc:  # a refusal is a result too
        error = " ".join(str(exc).split())[:160]
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    done.set()
    sampler.join()
    peak = max(peak, _resident())
    return {"layout": layout, "chunks": len(entry.chunks), "seconds": round(seconds, 3),  # type: ignore[attr-defined]
            "cpu_s": round(cpu, 3), "rss_rise_mib": round((peak - base) / 2**20, 1), "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=LAYOUTS)
    parser.add_argument("--chunks", type=int)
    args = parser.parse_args()
    if args.layout and args.chunks:
        print(json.dumps(measure(args.layout, args.chunks)), flush=True)
        return
    for layout in [args.layout] if args.layout else LAYOUTS:
        for n in [args.chunks] if args.chunks else SIZES:
            subprocess.run([sys.executable, __file__, "--layout", layout, "--chunks", str(n)], check=True)


if __name__ == "__main__":
    main()
