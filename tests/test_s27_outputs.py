"""Many model outputs (a 1 000-class classifier, a vocabulary head): what the outputs' statistics cost in memory,
and what `fdl classify` / `fdl report` say of such models (twenty-seventh session)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from fdl_cli import resources
from tests.cli_run import REPO

#: Runs in a fresh interpreter: the growth of the peak resident memory (ru_maxrss, in units of C² float64)
#: while `MomentAccumulator.moments()` hands the sums of C outputs to the measures, then while `measure` runs.
_PEAK_SCRIPT = textwrap.dedent("""
    import gc, resource, sys
    import numpy as np, torch
    from fdl_cli.moments import MomentAccumulator
    from fdl_cli.spectral import measure
    torch.set_num_threads(1)
    c, n, p, task = 1500, 600, 8, sys.argv[1]
    unit = c * c * 8 / 1024  # ru_maxrss is in kB on Linux

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit

    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(n, p)))
    o = torch.from_numpy(rng.normal(size=(n, c)))
    y = torch.from_numpy(rng.integers(0, c, size=n))
    accumulator = MomentAccumulator(task=task)
    for start in range(0, n, 300):
        accumulator.update(f[start:start + 300], o[start:start + 300],
                           y[start:start + 300] if task == "classes" else None)
    before = peak()
    moments = accumulator.moments()
    after_moments = peak()
    del accumulator
    gc.collect()
    measure(moments)
    print(after_moments - before, peak() - after_moments)
""")


@pytest.mark.parametrize("task", ["none", "classes"])
def test_handing_the_outputs_sums_to_the_measures_takes_what_the_memory_check_counts(task: str) -> None:
    """C = 1 500 outputs: moments() put the class sums beside Σŷŷᵀ in a 2C×2C array (and copied it whole to
    the host, then sliced copies out of it): ~10.8 C² float64 on top of the accumulated sums with class
    labels, where the measures take 3 C² (Σŷŷᵀ, Σŷyᵀ, Σyyᵀ), as `resources.layer_needs` counts them."""
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, task], capture_output=True, text=True, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    in_moments, _in_measure = map(float, done.stdout.split())
    host = [need for need in resources.layer_needs("head", 8, 600, 0, probe="probe", anchor_copies=0, outputs=1500,
                                                   task=task) if not need.on_device]
    counted = sum(need.bytes for need in host) / (8 * 1500**2)
    assert in_moments <= counted + 0.5, f"moments() took {in_moments:.2f} C², the memory check counts {counted} C²"
    assert counted == (3 if task == "classes" else 1)
