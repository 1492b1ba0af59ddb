"""Review of the session's last merges: a torchrun rank's end with its launcher, classify STORE...'s probe files.

- `distributed.end_with_launcher` asked the kernel for SIGTERM at the parent's death in any process with
  WORLD_SIZE > 1 and TORCHELASTIC_RUN_ID set: `fdl analyze` started by a script under torchrun (docs: "nothing of
  this"), a rank started by hand with a torchrun job's variables copied (`nohup`: it died with its shell), and a
  program that calls `main` in its own process, which kept the signal after the command.
- a Python without ctypes (`import ctypes` raising ImportError) ended a torchrun rank with a traceback.
- `fdl classify STORE... --json` (and CSV) gave no probe sha256, which the text's line on differing probes reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_distributed import REPO
from tests.test_report import make_store
from tests.test_s29_orphan import _alive

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

#: starts argv[1] (a Python script) with stdout/stderr to argv[2]/argv[3], in a session of its own where argv[4] is
#: "1" (as torchrun starts a rank), writes its pid to argv[5], and ends once the child has made the file argv[6]
_PARENT = """import os, subprocess, sys, time
with open(sys.argv[2], "w") as out, open(sys.argv[3], "w") as err:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=out, stderr=err,
                             start_new_session=sys.argv[4] == "1")
with open(sys.argv[5], "w") as handle:
    handle.write(str(child.pid))
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[6]) and child.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
"""

#: asks for the launcher's end (as `fdl analyze` does before joining the job), then outlives its parent
_CHILD = """import os, sys, time
from fdl_cli import distributed, signals
{setup}
parent = os.getppid()
distributed.end_with_launcher(distributed.detect_world())
open({ready!r}, "w").close()
deadline = time.monotonic() + 60
while os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(0.3)  # the parent-death signal, sent as the parent ends, has arrived by now where it was asked for
print("still running", flush=True)
"""


def _outlives_parent(tmp_path: Path, setup: str, *, own_session: bool) -> tuple[str, str]:
    """The child's stdout and stderr, run under a parent that ends once the child has asked (or not) for the signal;
    the child is waited for (and killed, were it still there after a minute)."""
    ready, pid_file = tmp_path / "ready", tmp_path / "pid"
    child = _CHILD.format(setup=setup, ready=str(ready))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
           "TORCHELASTIC_RUN_ID": "none"}
    subprocess.run([sys.executable, "-c", _PARENT, child, str(tmp_path / "out"), str(tmp_path / "err"),
                    "1" if own_session else "0", str(pid_file), str(ready)], env=env, cwd=str(REPO), timeout=90,
                   check=True)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


@linux_only
def test_a_torchrun_rank_still_ends_with_its_launcher(tmp_path: Path) -> None:
    """The case the signal is for: fdl's own process, in a session of its own (as torchrun starts each rank)."""
    out, err = _outlives_parent(tmp_path, "signals.own_process()", own_session=True)
    assert out == "" and err == "", (out, err)


@linux_only
def test_fdl_started_by_a_script_or_a_shell_outlives_it(tmp_path: Path) -> None:
    """`fdl analyze` in the session of the script or shell that started it, torchrun's variables inherited or
    copied (`nohup fdl analyze ... &`): it was killed when that parent ended, where the docs said nothing of this
    happens to fdl started by a script."""
    out, err = _outlives_parent(tmp_path, "signals.own_process()", own_session=False)
    assert out == "still running\n" and err == "", (out, err)


@linux_only
def test_a_program_calling_main_keeps_no_parent_death_signal(tmp_path: Path) -> None:
    """A program that calls fdl's `main` in a torchrun rank (no `own_process`): the signal, asked for in its
    process, stayed after the command, and the program ended with its parent."""
    out, err = _outlives_parent(tmp_path, "", own_session=True)
    assert out == "still running\n" and err == "", (out, err)


@linux_only
def test_a_python_without_ctypes_runs_the_rank_on(tmp_path: Path) -> None:
    """`import ctypes` fails where Python was built without libffi: the rank ended with an ImportError traceback."""
    out, err = _outlives_parent(tmp_path, "sys.modules['ctypes'] = None\nsignals.own_process()", own_session=True)
    assert out == "still running\n" and err == "", (out, err)


def test_classify_of_several_stores_gives_each_row_its_probe_sha256(tmp_path: Path) -> None:
    """The text says which stores' probes of one name are other files; --json and CSV gave no sha256 to tell
    which rows those are. A store that records none gives null (JSON) or an empty cell (CSV)."""
    stores = [make_store(tmp_path / f"s{i}.h5", seed=i, probe_sha=sha) for i, sha in enumerate(("a" * 64, "b" * 64))]
    done = fdl_in_process("classify", *stores, "--json")
    assert done.returncode == 0, done.stderr
    assert [row["probe_sha256"] for row in json.loads(done.stdout)] == ["a" * 64, "b" * 64]
    done = fdl_in_process("classify", *stores, "--format", "csv")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    column = header.split(",").index("probe_sha256")
    assert [row.split(",")[column] for row in rows] == ["a" * 64, "b" * 64], done.stdout
    # one store: its JSON is as it was (no probe_sha256 key)
    one = fdl_in_process("classify", stores[0], "--json")
    assert "probe_sha256" not in json.loads(one.stdout), one.stdout
