"""Small fixes of the seventeenth session found using fdl as a user would."""

from __future__ import annotations

from pathlib import Path

from tests.cli_run import REPO, fdl_in_process

SAMPLE = REPO / "sample_checkpoints"


def test_a_probe_renamed_on_resume_is_named_with_the_name_the_store_knows(tmp_path: Path) -> None:
    """`--probe test=probe.npz` on a store that calls the same file `probe`: "a different run" with a
    fix that only offered --overwrite (losing the store) or another --out; the fix now gives the name."""
    out = tmp_path / "run.h5"
    first = fdl_in_process("analyze", SAMPLE, "-o", out, "--steps", "0,5")
    assert first.returncode == 0, first.stderr
    probe = SAMPLE / "probe.npz"
    again = fdl_in_process("analyze", SAMPLE, "-o", out, "--steps", "0,5", "--probe", f"test={probe}")
    assert again.returncode == 1
    assert f"error: {out} holds the results of a different run" in again.stderr
    fix = next(line for line in again.stderr.splitlines() if line.startswith("  fix: "))
    assert fix.startswith("  fix: this run's probe 'test' is the store's probe 'probe' (the same file, sha256 ")
    assert ": name it so, --probe probe=PATH, to resume; else pass --overwrite" in fix
    resumed = fdl_in_process("analyze", SAMPLE, "-o", out, "--steps", "0,5", "--probe", f"probe={probe}")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 checkpoints analysed, 2 already in the store" in resumed.stderr
