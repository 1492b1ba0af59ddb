"""What a review of the stop watcher's take-back (`signals._Stall.reclaim`) and of the DCP cover check found.

A model whose build leaves an asyncio loop open with a SIGTERM handler of its own (a library's background loop)
puts asyncio's Python handler, which does nothing, in place of fdl's: the loop acts on the signal's number that
Python writes to the wakeup fd. fdl, which takes a handler back only where the model's code left the default,
then never stopped on SIGTERM again (Slurm's, Kubernetes'): the run went on to its end, and SIGKILL came. And the
watcher counted a SIGTERM it had not taken (an embedding program's) as its own. Each test runs a real fdl analyze
on the six tiny checkpoints of `test_s27_hang`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from test_s27_hang import (  # noqa: E402
    _argv,
    _assert_store_kept,
    _ended,
    _env,
    _start,
    _wait_for,
    run_dir,  # noqa: F401 - the fixture
    started,  # noqa: F401 - the fixture
)

_LOOP_MODEL = r'''


import asyncio, signal

LOOP = None


class Slow(nn.Sequential):
    """Step 2's first forward pass takes 3 s, in Python (a handler that raises nothing does not cut a sleep short)."""

    def forward(self, x):
        if _at_step_2(self) and not os.path.exists(os.path.join(HERE, "slept")):
            open(os.path.join(HERE, "slept"), "w").close()
            time.sleep(3.0)
        return super().forward(x)


def slow():
    return Slow(*_layers())


def term_loop():
    """A build that leaves an asyncio loop open with a SIGTERM handler of its own."""
    global LOOP
    LOOP = asyncio.new_event_loop()
    LOOP.add_signal_handler(signal.SIGTERM, lambda: None)
    return Slow(*_layers())
'''


def test_sigterm_stops_fdl_whose_model_left_an_asyncio_loop_handling_sigterm(
        run_dir: Path, started: list[subprocess.Popen[bytes]]) -> None:  # noqa: F811 - the fixture
    with open(run_dir / "models.py", "a") as models:
        models.write(_LOOP_MODEL)
    process = _start(run_dir, started, "term_loop", FDL_STOP_GRACE="600")
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    status, err = _ended(process, run_dir)
    assert status == 143, err
    assert "Traceback" not in err and "run the same command again to resume" in err, err
    _assert_store_kept(run_dir)


_EMBEDDED = r'''
import signal, sys
from fdl_cli.cli import main

heard = []
signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))  # the embedding program's own
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("exit", code, "heard", len(heard), file=sys.stderr)
'''


def test_a_sigterm_of_a_program_running_fdl_in_process_is_its_own_not_fdls(
        run_dir: Path, started: list[subprocess.Popen[bytes]]) -> None:  # noqa: F811 - the fixture
    """A program that handles SIGTERM itself and calls fdl's `main`: fdl leaves SIGTERM to it, yet its stop watcher
    counted a SIGTERM during a forward pass as one of its own and, the pass lasting past the grace period, ended the
    whole program (`os._exit(143)`, "did not return within 0.5 s")."""
    with open(run_dir / "models.py", "a") as models:
        models.write(_LOOP_MODEL)
    (run_dir / "embedded.py").write_text(_EMBEDDED)
    argv = [sys.executable, "embedded.py", *_argv("slow")[3:]]
    with open(run_dir / "err.txt", "wb") as err:
        process = subprocess.Popen(argv, cwd=run_dir, stdout=subprocess.DEVNULL, stderr=err,
                                   env=_env(FDL_STOP_GRACE="0.5"), start_new_session=True)
    started.append(process)
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    status, err = _ended(process, run_dir)
    assert status == 0 and err.rstrip().endswith("exit 0 heard 1"), err
