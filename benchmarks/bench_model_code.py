"""CPU microseconds that `fdl_cli.signals.model_code` adds to each call into the model's code (each forward pass),
against a tiny model's forward pass, with fdl's handlers in place (`signals.installed`), as under `fdl analyze`.

    python benchmarks/bench_model_code.py

Each figure is the best of 5 rounds of 20 000 calls, in CPU seconds of the process (one torch thread): `forward` is
Linear(4, 8) -> ReLU -> Linear(8, 2) on 2 rows under `torch.no_grad()`; `model_code` an empty `with` block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch

from fdl_cli import signals


def _us(call: Callable[[], object], calls: int = 20_000, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, (time.process_time() - start) / calls)
    return round(best * 1e6, 2)


def main() -> None:
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    rows = torch.randn(2, 4)

    def forward() -> None:
        with torch.no_grad():
            model(rows)

    def entered() -> None:
        with signals.model_code("the model's forward pass"):
            pass

    with signals.installed():
        print(json.dumps({"forward_us": _us(forward), "model_code_us": _us(entered)}))


if __name__ == "__main__":
    main()
