"""What the code-health audit's removals leave to other code: each behaviour a removed function seemed to
guard is still given by the command a user runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process


@pytest.mark.parametrize("size", ["0", "-3"])
def test_batch_size_below_one_is_refused_on_the_command_line(tmp_path: Path, size: str) -> None:
    # probes.probe_batches said "--batch-size must be positive" but ran on no path; click's IntRange says it
    done = fdl_in_process("analyze", tmp_path, "--model", "m.py:build", "--probe", "p.npz",
                          "--out", tmp_path / "run.h5", "--batch-size", size)
    assert done.returncode == 2, done.stderr
    assert "--batch-size" in done.stderr and ">=1" in done.stderr
    assert not (tmp_path / "run.h5").exists()
