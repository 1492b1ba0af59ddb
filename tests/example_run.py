"""`python -m tests.example_run MODULE ARGS...`: the example `python -m MODULE ARGS...`, its `fdl` commands run in
its own process.

The examples run `fdl` as a user would, `subprocess.run([sys.executable, "-m", "fdl_cli", ...])`: each command a
fresh interpreter that imports torch again (~3 CPU-s on CI's machine, most of an `fdl analyze` of an example's
run). A test of what an example finds (its numbers, files and output: tests/test_s15_overlap_ties.py,
tests/test_examples_smoke.py) starts the example as a warm child (tests/warm.py) through this module, which answers
those calls in the example's process instead, with `tests.cli_run.fdl_in_process` (the command's exit status,
stdout and stderr, as the process would give them). Only a call exactly of that form, in the example's own
environment (`env` absent or equal to it: the examples pass their environment with OMP/MKL_NUM_THREADS=1, which
the test gives the example already) and with the streams the examples ask for, is answered so; any other call,
and any with other settings, starts the process the example asked for.

Not for a test of an example's handling of an `fdl` process (a signal, a crash, an exit status the CLI itself never
gives): those need the process.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

_real_run = subprocess.run


def _run(args: Any, *popenargs: Any, **kwargs: Any) -> Any:
    argv = [str(arg) for arg in args] if isinstance(args, (list, tuple)) else None
    env = kwargs.get("env")
    answered = (
        argv is not None and argv[:3] == [sys.executable, "-m", "fdl_cli"] and not popenargs
        and (env is None or dict(env) == dict(os.environ))
        and set(kwargs) <= {"env", "cwd", "capture_output", "stdout", "stderr", "text"} and kwargs.get("text")
        and (kwargs.get("capture_output") or kwargs.get("stderr") == subprocess.PIPE)
        and kwargs.get("stdout") in (None, subprocess.PIPE, subprocess.DEVNULL)
        and (kwargs.get("capture_output") or kwargs.get("stdout") is not None)
    )  # fmt: skip
    if not answered:
        return _real_run(args, *popenargs, **kwargs)
    from tests.cli_run import fdl_in_process

    assert argv is not None
    done = fdl_in_process(*argv[3:], cwd=Path(kwargs.get("cwd") or os.getcwd()))
    stdout = None if kwargs.get("stdout") == subprocess.DEVNULL else done.stdout
    return subprocess.CompletedProcess(args, done.returncode, stdout, done.stderr)


def main() -> None:
    module, *args = sys.argv[1:]
    subprocess.run = _run  # type: ignore[assignment]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
