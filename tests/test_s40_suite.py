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

#: an "example" that runs fdl as the examples do (examples/_common.py) and says what it got, and how many processes
#: each call started (none: answered in its own process)
SCRIPT = """
import json, os, subprocess, sys

started = []


class Counted(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        if args[0][:1] == [sys.executable]:  # not platform's `uname -p` as the CLI starts
            started.append(args[0])
        super().__init__(*args, **kwargs)


subprocess.Popen = Counted
calls = [  # the environment made at the call, as the examples make it
    ([sys.executable, "-m", "fdl_cli", "--version"], lambda: dict(capture_output=True, text=True)),
    ([sys.executable, "-m", "fdl_cli", "report", "missing.h5"],
     lambda: dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))),
    ([sys.executable, "-m", "fdl_cli", "--version"],
     lambda: dict(capture_output=True, text=True, env=dict(os.environ, FDL_S40="other"))),
]
seen = []
for argv, options in calls:
    before = len(started)
    done = subprocess.run(argv, **options())
    seen.append([done.returncode, done.stdout, done.stderr, len(started) - before])
print(json.dumps(seen))
"""


def _real(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fdl_cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)


def test_an_examples_fdl_commands_are_answered_in_its_process_as_the_process_answers(tmp_path: Path) -> None:
    (tmp_path / "s40_example.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    done = warm.run([sys.executable, "-m", "tests.example_run", "s40_example"], cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    version, missing, elsewhere = json.loads(done.stdout)
    real_version, real_missing = _real(tmp_path, "--version"), _real(tmp_path, "report", "missing.h5")
    assert version == [real_version.returncode, real_version.stdout, real_version.stderr, 0]
    assert real_missing.returncode == 1 and "missing.h5" in real_missing.stderr
    assert missing == [real_missing.returncode, None, real_missing.stderr, 0]  # stdout=DEVNULL: None, as run gives
    # another environment than the example's: the process it asked for
    assert elsewhere == [0, real_version.stdout, real_version.stderr, 1]
