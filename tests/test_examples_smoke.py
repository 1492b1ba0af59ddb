"""Smoke test of the paper-reproduction examples: the grokking example at --tiny size (~10 s).

At 300 steps the transformer has memorised but not grokked, so no direction of the finding is
robust; the test checks that the whole path (training, checkpoints, `fdl analyze` on three probes,
one without labels, the outcome file) ran and stored every checkpoint. It skips the example's
`fdl report --plots` (`--no-report`): nothing here reads its figures, a failed report is only a note
in the example's output, and its 18 files took a third of the test's CPU (the report's figures have
tests of their own). The script runs as a warm child (tests/warm.py): nothing checked here depends
on the interpreter's start-up, whose `import torch` was a tenth of the test's CPU, and its `fdl analyze` runs in
that process (tests/example_run.py), not in an interpreter of its own that imports torch again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import sklearn  # noqa: F401 - a dev dependency the examples use: missing, the test fails

from tests import warm

REPO = Path(__file__).resolve().parents[1]


def test_grokking_tiny_runs_and_stores_every_checkpoint(tmp_path: Path) -> None:
    from fdl_cli.store import StoreReader

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
    done = warm.run(
        [sys.executable, "-m", "tests.example_run", "examples.grokking", "--out", str(tmp_path), "--tiny", "--no-report"],
        cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    saved = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert saved[0] == 0 and saved[-1] == 300 and len(saved) >= 20
    with StoreReader(tmp_path / "grokking.fdl.h5") as reader:
        for probe in ("train", "test", "all"):
            records = reader.records(probe=probe)
            assert [r["step"] for r in records] == saved
            assert all(0.0 <= r["d_lr"] <= 1.0 for r in records)
        assert all(r["accuracy"] is None for r in reader.records(probe="all"))  # the unlabelled probe
        assert reader.records(probe="train")[-1]["accuracy"] > 0.9  # memorised by step 300

    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["n_checkpoints"] == len(saved)
    assert outcome["reproduced"] is None  # no grokking at this size, and the script says so
    assert (tmp_path / "grokking.png").stat().st_size > 0
