"""The fast part of the calibration suite (examples/calibration.py): runs whose regime is known by construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import sklearn  # noqa: F401 - a dev dependency: missing, the test fails
import torch

from examples.calibration import CASES, confusion_table, run_case  # noqa: E402

FAST = {case.name: case for case in CASES if case.fast}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_frozen_backbone_is_coefficient_exactly(tmp_path: Path) -> None:
    verdict = run_case(FAST["frozen_backbone"], tmp_path)
    assert verdict.regime == "coefficient"
    assert verdict.evidence["min_cka_init"] == pytest.approx(1.0, abs=1e-9)
    assert verdict.evidence["min_overlap_init"] == pytest.approx(1.0, abs=1e-6)
    assert {p["regime"] for p in verdict.as_json()["trajectory"]} == {"coefficient"}


def test_small_mlp_trained_long_with_mse_is_mf(tmp_path: Path) -> None:
    case = FAST["mf_mse_long"]
    verdict = run_case(case, tmp_path)
    assert verdict.regime == "MF"
    assert verdict.evidence["final_cka_init"] < 0.9 and verdict.evidence["final_overlap_init"] < 0.8
    assert verdict.evidence["final_k95_utility"] <= 11
    assert verdict.evidence["mf_since_step"] is not None
    table = confusion_table([(case, verdict)])
    assert "1/1 runs classified as expected" in table
