"""fdl_cli.signals: a Ctrl-C swallowed by a finaliser is raised again at the next check."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from fdl_cli import signals


class _Swallows:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted; the KeyboardInterrupt is "ignored" by the interpreter


@pytest.fixture
def python_ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler, which `signals.installed` builds on, even where the tests run with
    SIGINT ignored (a background job of a non-interactive shell) or a runner replaced it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_ctrl_c")
def test_a_swallowed_ctrl_c_is_raised_by_the_next_check_and_sleep(capfd: pytest.CaptureFixture[str]) -> None:
    hook = sys.unraisablehook
    with signals.installed():
        signals.check()  # nothing pending
        started = time.monotonic()
        _Swallows()  # the finaliser runs here and loses its KeyboardInterrupt
        assert time.monotonic() - started < 4, "the SIGINT did not interrupt the finaliser's sleep"
        assert "Traceback" not in capfd.readouterr().err  # Python's "Exception ignored" report is kept off stderr
        with pytest.raises(KeyboardInterrupt):
            signals.sleep(30)  # a --watch poll ends at once
        signals.check()  # raised once: nothing is pending any more
        _Swallows()
        with pytest.raises(KeyboardInterrupt):
            signals.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook
    signals.check()  # the record ends with the command


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            signals.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_ctrl_c")
def test_a_ctrl_c_swallowed_after_the_last_check_is_raised_on_the_way_out() -> None:
    with pytest.raises(KeyboardInterrupt):
        with signals.installed():
            _Swallows()  # e.g. during the final commit, after the pipeline's last check
    signals.check()


def test_sigterm_is_taken_in_a_background_job_whose_ctrl_c_is_ignored() -> None:
    """`fdl analyze ... &` in a batch script (`wait` after it) runs with SIGINT ignored: SIGTERM was
    then left at its default, and Slurm's time limit ended the run at once, without the summary and
    what was computed since the last commit. SIGTERM is taken; the ignored SIGINT stays ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(KeyboardInterrupt), signals.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            signals.sleep(0.05)
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else the kill ends pytest
            os.kill(os.getpid(), signal.SIGTERM)
            signals.sleep(5)
        assert signals.exit_status() == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def test_sigterm_keeps_its_default_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank waiting in a collective runs a Python handler only once the collective returns (up to the
    backend's timeout): under torchrun SIGTERM keeps its default, which ends the rank at once (a review
    measured a rank held 22 s, until the other finished its block)."""
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        with signals.installed():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        monkeypatch.setenv("WORLD_SIZE", "1")
        with signals.installed():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous_term)
