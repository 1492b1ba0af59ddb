"""`--product-dtype float32` on the bundled sample run: the documented ~1e-4 bound, in the help and the docs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_report import run_fdl

REPO = Path(__file__).resolve().parents[1]
#: The documented bound (help text, docs/benchmarks.md); eff_dim_quality reached 7.1e-5 at step 65.
DOCUMENTED_RTOL = 1e-4


def test_help_and_docs_state_the_float32_accuracy() -> None:
    result = run_fdl("analyze", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "measures may move by up to ~1e-4 relative (see docs/benchmarks.md); float64 is exact" in text
    benchmarks = (REPO / "docs" / "benchmarks.md").read_text()
    assert "keep every record\nfield (CKA and overlaps included) within rtol 1e-6" not in benchmarks
    assert "| eff_dim_quality | 7.1e-5 (65) |" in benchmarks


def test_sample_run_float32_within_the_documented_bound(tmp_path: Path) -> None:
    records = {}
    for dtype in ("float64", "float32"):
        out = tmp_path / f"{dtype}.h5"
        result = run_fdl("analyze", str(REPO / "sample_checkpoints"), "--steps", "5,40,65",
                         "--product-dtype", dtype, "--out", str(out))
        assert result.returncode == 0, result.stderr
        report = run_fdl("report", str(out), "--format", "json")
        records[dtype] = {record["step"]: record for record in json.loads(report.stdout)}
    worst = 0.0
    for step, exact in records["float64"].items():
        for name, value in exact.items():
            fast = records["float32"][step][name]
            if isinstance(value, float) and fast is not None:
                worst = max(worst, abs(fast - value) / max(abs(value), 1e-12))
            elif name not in ("path", "sha256"):
                assert fast == value, (step, name)  # integers, k_τ, regime: identical
    assert 1e-6 < worst < DOCUMENTED_RTOL  # more than the old claim of 1e-6, within the documented bound
