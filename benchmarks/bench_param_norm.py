"""What ‖θ‖² and ‖θ − θ_ref‖/‖θ_ref‖ of one checkpoint cost (`fdl_cli.extract.parameter_vector_norms`),
against the BLAS dot it replaced (torch.dot of float64 copies, as fdl summed before the fourteenth
session), on a ResNet-18's parameters (11.2 M) and its reference a small step away; and whether each
gives the same digits at 1 and 2 threads.

    python benchmarks/bench_param_norm.py [--repeats 20] [--json out.json]

Times are the best of `--repeats` calls in this one process, CPU seconds (time.process_time, so a
busy machine's other work does not count). Not a test: nothing is asserted.
"""

from __future__ import annotations

import math
import time
from typing import Any


def blas_dot_norms(state: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """The earlier way: a float64 copy of each tensor, torch.dot, Python float sums."""
    import torch

    squared = distance = ref_squared = 0.0
    for name, tensor in state.items():
        values = tensor.detach().reshape(-1).to(torch.float64)
        ref = reference[name].detach().reshape(-1).to(torch.float64)
        squared += float(torch.dot(values, values))
        ref_squared += float(torch.dot(ref, ref))
        difference = values.sub_(ref)
        distance += float(torch.dot(difference, difference))
    return squared, math.sqrt(distance / ref_squared)


def main() -> None:
    from benchmarks.common import best_ms, in_process_arguments, print_results

    args = in_process_arguments(__doc__, 20)

    import torch

    from benchmarks.models import resnet18
    from fdl_cli.extract import parameter_vector_norms

    torch.manual_seed(0)
    state = {name: p.detach() for name, p in resnet18().named_parameters()}
    reference = {name: p + 1e-3 * torch.randn_like(p) for name, p in state.items()}
    results: dict[str, Any] = {"parameters": sum(p.numel() for p in state.values())}
    functions = (("blas_dot", blas_dot_norms), ("fdl", parameter_vector_norms))
    # Timed first, with one thread from the start: after a 2-thread call, OpenMP's idle workers spin
    # for a while and time.process_time counts their CPU too.
    torch.set_num_threads(1)
    for label, function in functions:
        cpu_ms = best_ms(lambda f=function: f(state, reference), args.repeats, time.process_time)
        results[label] = {"cpu_ms_1_thread": round(cpu_ms, 2)}
    for label, function in functions:
        digits = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            digits.add(function(state, reference))
        results[label].update(same_digits_at_1_and_2_threads=len(digits) == 1, values=[list(v) for v in sorted(digits)])
    print_results(results, args.json)


if __name__ == "__main__":
    main()
