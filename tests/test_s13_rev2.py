"""Defects found by the second review of session 13's last commits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import report


@pytest.mark.parametrize(("name", "step"), [
    ("model_step600_loss0.154.pt", "600"), ("step200_lr1e-4.pt", "200"),
    ("epoch=3-step=120-val_loss=0.25-v1.ckpt", "120"), ("step100.0.pt", "100"), ("epoch=3-step=120.ckpt", "120"),
    ("checkpoint-12.pth.tar", "12"),
])
def test_the_suggested_step_regex_captures_the_step_the_name_gives(tmp_path: Path, name: str, step: str) -> None:
    """The --step-regex a same-step error suggests made the last digits the step: the metric's fraction
    (`loss\\d+\\.(\\d+)`: 154), the exponent of `lr1e-4` (4) or Lightning's `-v1` (1), which `_name_step`
    no longer takes; following the advice ordered the run by its loss."""
    from fdl_cli.checkpoints import _name_step, _step_fix_for

    path = tmp_path / name
    path.write_bytes(b"")
    pattern = re.search(r"--step-regex '([^']+)'", _step_fix_for(path)).group(1)  # type: ignore[union-attr]
    match = re.search(pattern, name)
    assert match is not None and match.group(1) == step
    assert int(match.group(1)) == _name_step(path)


def test_same_step_error_suggests_a_regex_of_the_step_not_the_loss(tmp_path: Path) -> None:
    from fdl_cli.checkpoints import discover_checkpoints
    from fdl_cli.errors import CheckpointError

    for name in ("model_step600_loss0.154.pt", "model_step700_loss0.150.pt"):
        torch.save({"epoch": 3, "model_state_dict": {"w": torch.randn(3, 3)}}, tmp_path / name)
    with pytest.raises(CheckpointError) as info:
        discover_checkpoints([tmp_path])
    pattern = re.search(r"--step-regex '([^']+)'", str(info.value.fix)).group(1)  # type: ignore[union-attr]
    found = discover_checkpoints([tmp_path], step_regex=pattern)
    assert [ref.step for ref in found.checkpoints] == [600, 700]


@pytest.mark.parametrize(("name", "step"), [
    ("iter_1e5.pt", 100000), ("iter_5e4.pt", 50000), ("step_2.5e3.pt", 2500), ("step200_lr1e-4.pt", 200),
])
def test_a_step_written_in_scientific_notation_is_its_value(tmp_path: Path, name: str, step: int) -> None:
    """A name whose only number is in scientific notation: its mantissa was the step (iter_1e5 step 1,
    iter_5e4 step 5: the run ordered backwards)."""
    from fdl_cli.checkpoints import _name_step

    path = tmp_path / name
    path.write_bytes(b"")
    assert _name_step(path) == step


def _cross(a: np.ndarray, b: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> report.CrossOverlaps:
    from types import SimpleNamespace

    monkeypatch.setattr(report, "iter_array", lambda run, series, steps, name, **_: ((s, run.arrays[s]) for s in steps))
    run_a = SimpleNamespace(provenance={}, probes={}, arrays={0: a})
    run_b = SimpleNamespace(provenance={}, probes={}, arrays={0: b})
    series = SimpleNamespace(records=[{"step": 0, "n_outputs": a.shape[1]}], probe=None, layer=None)
    return report.cross_overlaps(run_a, series, run_b, series, [report.Match(0, 0)])  # type: ignore[arg-type]


def test_cross_overlap_of_a_run_that_merges_distinct_inputs_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A's features equal on 4 of 6 distinct inputs (collapsed, dead units), run B's not: the rows of A
    alone counted 3 "distinct anchor points", so `compare A B` said "not measured" where `compare B A`
    gave 0.25. Repeated inputs give equal rows in both runs; rows equal in one only are distinct inputs."""
    from fdl_cli.spectral import eigenspace_overlap

    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3))
    a[1:4] = a[0]
    b = rng.standard_normal((6, 3))
    expected = eigenspace_overlap(a, b, k=3)
    assert expected is not None and expected < 0.5
    for first, second in ((a, b), (b, a)):
        result = _cross(first, second, monkeypatch)
        assert list(result.values.values()) == [pytest.approx(expected)]
        assert not result.spanned
    # inputs repeated in the probe: equal rows in both runs, still not measured
    b[1:4] = b[0]
    result = _cross(a, b, monkeypatch)
    assert list(result.values.values()) == [None] and result.spanned == {(3, 3)}
