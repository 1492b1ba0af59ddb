"""What a review of the stop watcher's take-back (`signals._Stall.reclaim`) and of the DCP cover check found.

A model whose build leaves an asyncio loop open with a SIGTERM handler of its own (a library's background loop)
puts asyncio's Python handler, which does nothing, in place of fdl's: the loop acts on the signal's number that
Python writes to the wakeup fd. fdl, which takes a handler back only where the model's code left the default,
then never stopped on SIGTERM again (Slurm's, Kubernetes'): the run went on to its end, and SIGKILL came. Each test
runs a real `python -m fdl_cli analyze` on the six tiny checkpoints of `test_s27_hang`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from test_s27_hang import (  # noqa: E402
    _assert_store_kept,
    _ended,
    _start,
    _wait_for,
    run_dir,  # noqa: F401 - the fixture
    started,  # noqa: F401 - the fixture
)

_LOOP_MODEL = r'''


import asyncio, signal

LOOP = None


class Slow(nn.Sequential):
    """Step 2's forward pass takes a second, in Python (asyncio's handler does not interrupt a sleep)."""

    def forward(self, x):
        if _at_step_2(self):
            time.sleep(1.0)
        return super().forward(x)


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
