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


# ------------------------------------------------------------------ fdl classify: a layer of p ≤ C + mf_extra


def _records(width: int, outputs: int, *, moved: bool) -> list[dict]:
    base = {"n_outputs": outputs, "n_features": width, "rank": width}
    final = {"cka_init": 0.5, "overlap_init": 0.4} if moved else {"cka_init": 1.0, "overlap_init": 1.0}
    return [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 3},
            {**base, "step": 10, **final, "k95_utility": min(width, 40)}]


NARROW = "k95_utility ≤ p = 64 ≤ C + mf_extra = 1001: the layer is too narrow for the rule to find EF"


@pytest.mark.parametrize("moved", [False, True])
def test_a_layer_no_wider_than_the_mf_limit_is_said_to_be_unable_to_read_ef(moved: bool) -> None:
    """A 1 000-class head on a 64-unit layer: k95_utility ≤ p ≤ C + 1, so the MF-vs-EF rule cannot return EF,
    whatever the verdict; `fdl classify --json` said nothing of it, its text only under an MF verdict."""
    from fdl_cli.regimes import classify_run, describe

    records = _records(64, 1000, moved=moved)
    verdict = classify_run(records)
    assert verdict.regime == ("MF" if moved else "coefficient")
    assert json.loads(json.dumps(verdict.as_json()))["evidence"]["narrow_layer"] == NARROW
    text = describe(verdict, records)
    said = [line for line in text if "too narrow" in line or "follows from the layer" in line]
    assert len(said) == 1, text  # one line: the evidence's, or under MF the line that says what MF means then
    assert said[0] == NARROW if not moved else "the layer has 64 units" in said[0]
    assert not any("narrow_layer =" in line for line in text)  # its own line, not inside the evidence list


def test_no_narrow_layer_evidence_for_a_layer_wider_than_the_mf_limit() -> None:
    from fdl_cli.regimes import classify_run, describe

    records = _records(1002, 1000, moved=True)
    verdict = classify_run(records)
    assert "narrow_layer" not in verdict.as_json()["evidence"]
    assert not any("too narrow" in line for line in describe(verdict, records))
