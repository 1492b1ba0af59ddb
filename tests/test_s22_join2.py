"""A Ctrl-C ends a rank waiting to join the job whichever of its threads the signal is delivered to.

Twenty-second session, second look: `signals.ending_at_once` held SIGINT and SIGTERM back in the thread that joins
(and the threads it starts) and took them with `sigtimedwait` in a watcher thread. A thread started before, with
the signals not blocked, could be handed the process's Ctrl-C instead: torch's intra-op threads (their pool grows
at the first parallel operation with more threads than before), or a thread the model file starts when it is
imported. Python's handler then ran there, only noting the signal for the main thread, which waited in torch's
C++: the rank hung until torchrun SIGKILLed it 30 s later (measured: no exit within 15 s, before the change).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fdl_cli import signals
from tests.test_s19_rank import _no_traceback_of_fdl
from tests.test_s22_rank import _signalled_while_joining

#: a model file whose import leaves a thread behind that does not block SIGINT or SIGTERM
STARTS_A_THREAD = """
import threading, time
from tests.tiny_models import mlp
threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
"""
#: a model file whose import runs a parallel operation on two of torch's intra-op threads (started there, unblocked)
RUNS_IN_PARALLEL = """
import torch
from tests.tiny_models import mlp
torch.set_num_threads(2)
torch.ones(1 << 22).mul(2).sum()
"""


def _model(tmp_path: Path, text: str) -> str:
    path = tmp_path / "model.py"
    path.write_text(text)
    return f"{path}:mlp"


@pytest.mark.parametrize(("text", "rank", "said"), [(STARTS_A_THREAD, 0, 1), (RUNS_IN_PARALLEL, 1, 0)],
                         ids=["python-thread-rank-0", "torch-threads-rank-1"])
def test_a_ctrl_c_taken_by_another_thread_ends_a_rank_waiting_to_join(tmp_path: Path, text: str, rank: int,
                                                                       said: int) -> None:
    returncode, stderr = _signalled_while_joining(tmp_path, rank, model=_model(tmp_path, text))
    assert returncode == 130, stderr[-4000:]
    assert stderr.splitlines().count("interrupted") == said, stderr[-4000:]  # rank 0 says it for the job
    _no_traceback_of_fdl(stderr)
    assert "Traceback" not in stderr, stderr[-4000:]
    assert not (tmp_path / "s.h5").exists()


def test_a_sigterm_still_ends_such_a_rank_by_the_signal(tmp_path: Path) -> None:
    """SIGTERM keeps its default in a torchrun rank: it ends the process by the signal, as before."""
    returncode, stderr = _signalled_while_joining(tmp_path, 0, model=_model(tmp_path, STARTS_A_THREAD),
                                                  signum=signal.SIGTERM)
    assert returncode == -signal.SIGTERM, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks (Windows)")
def test_the_wakeup_fd_in_place_is_given_back_and_meanwhile_gets_the_signals_the_wait_does_not_take() -> None:
    """The wait borrows Python's wakeup fd (an asyncio loop's, say): the one in place before is back afterwards, and
    a signal the wait does not take (another handler's, here SIGUSR1's) is passed on to it meanwhile."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    seen: list[int] = []
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    previous_fd = signal.set_wakeup_fd(write)
    got = b""
    try:
        with signals.ending_at_once(quiet=True):
            during = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(during)
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    got = os.read(read, 16)
                except BlockingIOError:
                    pass
    finally:
        after = signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, previous_usr1)
        os.close(read)
        os.close(write)
    assert during not in (-1, write)  # borrowed
    assert after == write  # given back
    assert got == bytes([signal.SIGUSR1])  # passed on
    assert seen == [signal.SIGUSR1]  # and its handler ran, as without the wait
