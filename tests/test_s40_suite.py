"""tests/example_run.py: an example's `python -m fdl_cli ...` calls answered in the example's process, as the
process would answer them; any other call left to a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import warm

REPO = Path(__file__).resolve().parents[1]

#: an "example" that runs fdl as the examples do (examples/_common.py) and says what it got, and whether fdl's
#: CLI was imported into its own process (answered here) or not (a process of its own)
SCRIPT = """
import json, os, subprocess, sys

calls = [
    ([sys.executable, "-m", "fdl_cli", "--version"], dict(capture_output=True, text=True)),
    ([sys.executable, "-m", "fdl_cli", "report", "missing.h5"], dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                                    text=True, env=dict(os.environ))),
    ([sys.executable, "-m", "fdl_cli", "--version"], dict(capture_output=True, text=True,
                                                          env=dict(os.environ, FDL_S40="other"))),
]
seen = []
for index in sys.argv[1].split(","):
    argv, options = calls[int(index)]
    done = subprocess.run(argv, **options)
    seen.append([done.returncode, done.stdout, done.stderr, "fdl_cli.cli" in sys.modules])
print(json.dumps(seen))
"""


def _example(tmp_path: Path, calls: str) -> list[list[object]]:
    (tmp_path / "s40_example.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    done = warm.run([sys.executable, "-m", "tests.example_run", "s40_example", calls], cwd=tmp_path, env=env,
                    timeout=120)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _real(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fdl_cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)


def test_an_examples_fdl_commands_are_answered_in_its_process_as_the_process_answers(tmp_path: Path) -> None:
    version, missing = _example(tmp_path, "0,1")
    real_version, real_missing = _real(tmp_path, "--version"), _real(tmp_path, "report", "missing.h5")
    assert version == [real_version.returncode, real_version.stdout, real_version.stderr, True]
    assert real_missing.returncode == 1 and "missing.h5" in real_missing.stderr
    assert missing == [real_missing.returncode, None, real_missing.stderr, True]  # stdout=DEVNULL: None, as run gives


def test_a_call_in_another_environment_gets_a_process_of_its_own(tmp_path: Path) -> None:
    real_version = _real(tmp_path, "--version")
    assert _example(tmp_path, "2") == [[0, real_version.stdout, real_version.stderr, False]]  # fdl not imported here
