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
#: while `MomentAccumulator.moments()` hands the sums of C outputs to the measures.
_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    from fdl_cli.moments import MomentAccumulator
    torch.set_num_threads(1)
    c, n, p, task = 1200, 400, 8, sys.argv[1]
    unit = c * c * 8 / 1024  # ru_maxrss is in kB on Linux

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit

    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(n, p)))
    o = torch.from_numpy(rng.normal(size=(n, c)))
    y = torch.from_numpy(rng.integers(0, c, size=n))
    accumulator = MomentAccumulator(task=task)
    for start in range(0, n, 200):
        accumulator.update(f[start:start + 200], o[start:start + 200],
                           y[start:start + 200] if task == "classes" else None)
    before = peak()
    moments = accumulator.moments()
    print(peak() - before)
""")


@pytest.mark.parametrize("task", ["none", "classes"])
def test_handing_the_outputs_sums_to_the_measures_takes_what_the_memory_check_counts(task: str) -> None:
    """C = 1 200 outputs: moments() put the class sums beside Σŷŷᵀ in a 2C×2C array (and copied it whole to
    the host, then sliced copies out of it): ~10.8 C² float64 on top of the accumulated sums with class
    labels, where the measures take 3 C² (Σŷŷᵀ, Σŷyᵀ, Σyyᵀ), as `resources.layer_needs` counts them."""
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, task], capture_output=True, text=True, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    in_moments = float(done.stdout)
    host = [need for need in resources.layer_needs("head", 8, 400, 0, probe="probe", anchor_copies=0, outputs=1200,
                                                   task=task) if not need.on_device and "outputs'" in need.what]
    counted = sum(need.bytes for need in host) / (8 * 1200**2)
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
    # p ≤ C: the line goes on to say D_LR is fixed by the width too (tests/test_s31_degen.py)
    note = json.loads(json.dumps(verdict.as_json()))["evidence"]["narrow_layer"]
    assert note.startswith(NARROW + "; and D_LR is bounded by the width too"), note
    text = describe(verdict, records)
    said = [line for line in text if "too narrow" in line or "follows from the layer" in line]
    assert len(said) == 1, text  # one line: the evidence's, or under MF the line that says what MF means then
    assert said[0] == note if not moved else "the layer has 64 units" in said[0]
    assert not any("narrow_layer =" in line for line in text)  # its own line, not inside the evidence list


def test_no_narrow_layer_evidence_for_a_layer_wider_than_the_mf_limit() -> None:
    from fdl_cli.regimes import classify_run, describe

    records = _records(1002, 1000, moved=True)
    verdict = classify_run(records)
    assert "narrow_layer" not in verdict.as_json()["evidence"]
    assert not any("too narrow" in line for line in describe(verdict, records))


# ------------------------------------------------------------------ negative zero in text


def test_a_probe_of_one_class_notes_its_cross_entropy_as_zero_not_minus_zero() -> None:
    """The labels' entropy of one class is −1·log 1 = −0.0, and the note read "cross_entropy -0.000"."""
    from types import SimpleNamespace

    import numpy as np

    from fdl_cli.probes import dominant_class_note

    probe = SimpleNamespace(task="classes", y=np.zeros(40, dtype=np.int64), name="probe")
    note = dominant_class_note(probe, n_outputs=10)  # type: ignore[arg-type]
    assert note is not None and "accuracy 1.0000 and cross_entropy 0.000 (the labels' entropy)" in note


def test_negative_zero_measures_read_as_zero_in_tables_and_classify_lines() -> None:
    from fdl_cli.regimes import _fmt, reference_fit
    from fdl_cli.report import format_value, worst_r2_text

    assert format_value("d_lr", -0.0) == "0.0000" and format_value("feature_pr", -0.0) == "0"
    assert format_value("cross_entropy", -1e-9) == "-1e-09"  # not a zero once rounded: its sign stays
    assert worst_r2_text({"r2_min": -0.0, "r2_min_output": 2}) == "0.0000 y2"
    assert _fmt(-0.0) == "0"
    fit = reference_fit({"accuracy": 1.0, "n_outputs": 10, "cross_entropy": -0.0})
    assert fit is not None and "cross-entropy 0.000 against" in fit[1]


# ------------------------------------------------------------------ chance: the probe's, not 1/C


def test_chance_is_the_probe_s_largest_class_share_not_one_over_the_model_s_outputs(tmp_path) -> None:
    """A 50-output head on a probe whose labels hold 5 classes, 20 % each: a guess that ignores the input scores
    0.2 at best, but classify read the accuracy against "chance 0.020" (1/C)."""
    import numpy as np
    import torch

    from tests.cli_run import fdl_in_process, model_file

    model = (
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 50))\n")
    net = model_file(tmp_path, model).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(net.state_dict(), ckpts / "step_0.pt")
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    torch.save(net.state_dict(), ckpts / "step_10.pt")
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.arange(100) % 5)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    shown = fdl_in_process("classify", out)
    assert shown.returncode == 0, shown.stderr
    assert "(chance 0.2000: the largest class's share of the probe's labels)" in shown.stderr, shown.stderr
    assert "chance 0.0200" not in shown.stderr
    evidence = json.loads(fdl_in_process("classify", out, "--json").stdout)["evidence"]
    assert evidence["chance_accuracy"] == pytest.approx(0.2) and evidence["label_entropy"] == pytest.approx(np.log(5))
