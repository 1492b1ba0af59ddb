"""README.md's "What you get": the report excerpt it shows is what `fdl report` prints on the bundled sample
run, line for line (the lines that do not depend on the machine or the folder), so a change of the report's
format or of the sample's numbers cannot leave the README's first impression stale."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_analyze import fdl
from tests.test_s16_docs import README_MD, SAMPLES


def test_the_readmes_report_excerpt_is_what_the_sample_run_reports(tmp_path: Path) -> None:
    excerpt = README_MD.split("## What you get", 1)[1].split("```", 2)[1].strip("\n").splitlines()
    store = tmp_path / "sample.fdl.h5"
    analysed = fdl("analyze", SAMPLES, "--out", store)
    assert analysed.code == 0, analysed.stderr
    report = fdl("report", store)
    assert report.code == 0, report.stderr
    printed = report.stderr.splitlines()
    # machine- and folder-dependent: the model's absolute path and the host that computed the run
    kept = [line for line in excerpt if not re.match(r"(model|computed): ", line)]
    assert len(kept) >= 12
    missing = [line for line in kept if line not in printed]
    assert missing == []
    # the excerpt keeps the report's order (rows cut, none moved)
    positions = [printed.index(line) for line in kept]
    assert positions == sorted(positions)
    assert any(line.startswith("model: ") and line.endswith("sample_checkpoints/model.py:build") for line in printed)
    assert any(line.startswith("computed: all 25 checkpoints on cpu") for line in printed)
    verdict = fdl("classify", store)
    assert "regime: MF" in verdict.stderr.splitlines()
