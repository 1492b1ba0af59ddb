"""Seventeenth session, issue #6: fdl's own costs over the SPEC floor (docs/benchmarks.md)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from fdl_cli import cli

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)


def test_analyze_freezes_its_imports_and_leaves_the_collector_on(tmp_path: Path) -> None:
    """`fdl analyze` in a fresh process: torch's and the other imports' objects are frozen (no full
    collection traverses them again, at exit neither: ~0.35 s of CPU a run), the collector is on again
    for the run's own objects, and the results are those of the run."""
    out = tmp_path / "run.h5"
    code = f"""
import atexit, gc, json, sys
seen = {{}}
atexit.register(lambda: print(json.dumps(seen)))
from fdl_cli import cli
run = cli.analyze.callback
def spy(**kwargs):
    try:
        return run(**kwargs)
    finally:
        seen.update(frozen=gc.get_freeze_count(), enabled=gc.isenabled())
cli.analyze.callback = spy
try:
    cli.main(["analyze", "sample_checkpoints", "--steps", "0,100", "--out", {str(out)!r}])
except SystemExit as exc:
    seen["exit"] = exc.code
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "exit" not in seen
    assert seen["enabled"] is True
    assert seen["frozen"] > 50_000  # torch's modules alone make ~150 000 objects
    command = [sys.executable, "-m", "fdl_cli", "export", str(out), "--what", "trajectories", "--format", "json"]
    listed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["step"] == [0, 100]


def test_untracked_imports_turn_the_collector_on_again_after_a_failed_import() -> None:
    code = """
import gc, json
from fdl_cli import cli
try:
    with cli._untracked_imports():
        import torch  # noqa: F401
        import fdl_no_such_module  # noqa: F401
except ImportError:
    pass
print(json.dumps([gc.isenabled(), gc.get_freeze_count() > 0, "torch" in __import__("sys").modules]))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True, True]


def test_untracked_imports_leave_a_process_with_torch_as_it_is() -> None:
    """A test, or a program calling `main` again: torch is loaded, nothing is frozen (its garbage cycles
    would never be collected) and the collector stays as it was."""
    import torch  # noqa: F401

    before = gc.get_freeze_count()
    with cli._untracked_imports():
        assert gc.isenabled()
    assert gc.get_freeze_count() == before
    assert gc.isenabled()
