"""Ctrl-C (and SIGTERM) that is never lost.

Python raises KeyboardInterrupt in whatever the main thread is running when SIGINT arrives. When that
is a finaliser (a `__del__`, a weakref callback of the garbage collector, torch's or rich's), the
interpreter prints "Exception ignored in ..." with a traceback and carries on: the Ctrl-C is gone, and
a `--watch` run polls on until a second one. `installed` records every SIGINT before raising it (and
keeps such a swallowed KeyboardInterrupt off stderr), and the long loops call `check` (or `sleep`),
which raises again for an interrupt that was swallowed on its way up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_pending = False
#: `installed` left SIGTERM at its default only because WORLD_SIZE is set (`take_term` takes it after all)
_term_left = False
#: SIGTERM (what Slurm, Kubernetes and systemd send before killing a job) arrived: it stops fdl as a
#: Ctrl-C does (what was computed is committed, the summary printed), and the exit status is 143
terminated = False


class Interrupted(KeyboardInterrupt):
    """The KeyboardInterrupt fdl raises for a SIGINT or SIGTERM (every `except KeyboardInterrupt` takes it).

    A subclass, not KeyboardInterrupt itself: CPython (3.11 at least) remembers an exact
    KeyboardInterrupt that leaves code run by `exec()` of a string, as the methods `dataclasses` and
    `namedtuple` generate are while a module is imported, and at exit kills the process with SIGINT
    whatever `sys.exit()` said. A SIGTERM arriving during such an import then ended `fdl analyze` by
    SIGINT (status -2, 130 in a shell) instead of 143.
    """


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _pending, terminated
    _pending = True
    terminated = terminated or signum == signal.SIGTERM
    raise Interrupted


def exit_status() -> int:
    """The status of a run a signal stopped: 128 + SIGTERM's 15 after one, else 128 + SIGINT's 2."""
    return 143 if terminated else 130


@contextmanager
def installed() -> Iterator[None]:
    """Record SIGINTs for the duration (when Python's default Ctrl-C handler is the one in place)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global terminated, _term_left
    previous = signal.getsignal(signal.SIGINT)
    previous_term = signal.getsignal(signal.SIGTERM)
    # SIGINT ignored (a background job: `fdl analyze ... &` in a batch script, where a shell without
    # job control ignores it) or handled by the embedding program is left so; SIGTERM is still taken
    # where it has its default (Slurm's time limit reaches such a job too).
    take_int = previous is signal.default_int_handler
    # Not when ignored or handled by an embedding program, nor in a torchrun rank of `fdl analyze`: a rank
    # waiting in a collective runs a Python handler only once the collective returns (up to the backend's
    # timeout, while the others finish their blocks), where the default ends it at once and torchrun ends
    # the job. The command is not known yet: another one, which a torchrun job's script runs with WORLD_SIZE
    # inherited, takes it once it is (`take_term`).
    term_default = previous_term is signal.SIG_DFL
    take_term = term_default and os.environ.get("WORLD_SIZE", "1") in ("", "1")
    if not take_int and not term_default:
        yield
        return
    _term_left = term_default and not take_term
    _pending = False
    terminated = False
    unraisable = sys.unraisablehook

    def quiet(info: Any) -> None:
        global _pending
        if isinstance(info.exc_value, KeyboardInterrupt):
            _pending = True  # raised again at the next check, not printed as a traceback
            return
        unraisable(info)

    if take_int:
        signal.signal(signal.SIGINT, _on_sigint)
    if take_term:
        signal.signal(signal.SIGTERM, _on_sigint)
    sys.unraisablehook = quiet
    try:
        yield
        check()  # one swallowed after the last check (a finaliser during the final commit)
    finally:
        if take_int:
            signal.signal(signal.SIGINT, previous)
        if term_default:  # taken here or by `take_term`
            signal.signal(signal.SIGTERM, previous_term)
        sys.unraisablehook = unraisable
        _pending = False
        _term_left = False


def take_term() -> None:
    """Take SIGTERM where `installed` left its default only for WORLD_SIZE: for a command that is no torchrun
    rank (only `fdl analyze` runs as one), such as `fdl classify` in a torchrun job's script, which inherits
    WORLD_SIZE and stops on SIGTERM as a plain process does (status 143, what it writes left whole)."""
    if _term_left and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigint)


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration (blocked, not lost: delivered on the way out).

    For `import torch`: a Ctrl-C handled while torch's C++ start-up (`torch._C._c10d_init`) runs Python
    code aborted the process (C++ `terminate`, status 134, no summary) instead of stopping it. Threads
    started meanwhile inherit the mask and leave the signals to the main thread, as Python does anyway.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Deferred:
    """The SIGINT or SIGTERM that `deferred` kept back, if one came; `deliver` raises it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handlers: dict[int, Any] = {}  # signum -> the Python handler `deferred` replaced

    def record(self, signum: int, frame: FrameType | None) -> None:
        # One is delivered: the first, but a SIGTERM after a Ctrl-C wins (a scheduler's kill after the user's
        # Ctrl-C wants the job gone, and reads 143), as it does outside a commit (`_on_sigint`)
        if self.signum is None or signum == signal.SIGTERM:
            self.signum = signum

    def deliver(self) -> None:
        """Run the replaced handler of the signal that came (fdl's raises its KeyboardInterrupt), once."""
        signum, self.signum = self.signum, None
        if signum is not None:
            self.handlers[signum](signum, None)


@contextmanager
def deferred() -> Iterator[Deferred]:
    """Keep SIGINT and SIGTERM from raising for the duration, in the main thread: a signal that comes is
    recorded, and its handler runs when the caller `deliver`s it at a safe point, or on the way out. Of several,
    one is delivered: the first, or a SIGTERM that came after a SIGINT (exit status 143, as outside).

    For a store's commit in the main thread (`StoreWriter.flush`, `close`): HDF5 writes the copy by calling
    Python (`store._GuardedFile`), and a KeyboardInterrupt raised there failed HDF5's write, which printed
    "SystemError ... returned a result with an exception set" tracebacks and ended the process by a
    segmentation fault, the copy and the lock file left behind. Only Python handlers are replaced (a
    signal left at its default still ends the process); the mask is not used, since a signal blocked in
    the main thread is taken by another thread and its Python handler still runs in the main thread."""
    held_back = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield held_back
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):
            held_back.handlers[signum] = handler
            signal.signal(signum, held_back.record)
    try:
        yield held_back
    finally:
        for taken, handler in held_back.handlers.items():
            signal.signal(taken, handler)
        held_back.deliver()


#: Said at the first Ctrl-C during `import torch`, which cannot stop it there and then (see `_ImportWatch`).
IMPORT_NOTE = "Ctrl-C: fdl stops once torch has loaded; press Ctrl-C again to stop now"


class _ImportWatch:
    """Takes the SIGINTs and SIGTERMs that `held` blocks while torch is imported, in a thread of its own.

    Blocked, a signal waited for the end of the import: a slow one (a cold network file system) or a
    hung one could not be stopped at all, short of SIGKILL. Here the first Ctrl-C is recorded, and
    said so; it is raised again once the import has ended, and stops fdl as anywhere else. A second
    Ctrl-C, or a SIGTERM (the grace period of Slurm or Kubernetes is short), ends the process there
    and then: `os._exit` with 130 or 143 ("interrupted", as after any interrupt), or by the signal
    itself where its action is the default (under torchrun). Nothing is lost: `analyze` and
    `inspect` import torch first of all, before any file is opened or written. The thread runs no
    Python of fdl's beyond this loop, touches no torch, and writes with `os.write` (no lock of the
    main thread's streams). With no `note` the first Ctrl-C ends the process too (`ending_at_once`, which
    hands it `wakeup`: `_run_woken`, and `give_up`: the wait's bound, past which it ends the process with status 1).
    """

    POLL_S = 0.05

    def __init__(self, signals: set[signal.Signals], *, quiet: bool = False, note: str | None = IMPORT_NOTE,
                 wakeup: tuple[int, int] | None = None, give_up: tuple[float, str] | None = None) -> None:
        self.signals = signals
        self.quiet = quiet  # a rank of a torchrun job whose rank 0 says it
        self.note = note  # said at a first Ctrl-C, which waits for the end; None: it ends the process too
        # (read end, the wakeup fd in place before or -1): Python's wakeup fd, read instead of `sigtimedwait`
        self.wakeup = wakeup
        # (time.monotonic() past which the wait has lasted too long, the error then said): it ends with status 1
        self.give_up = give_up
        #: held by `_give_up` from its last look at `done` to the process's end, and by the waiting thread as it sets
        #: `done` (`stop`): a wait that ends just then is not ended again, as one that lasted too long
        self.lock = threading.Lock()
        self.first: int | None = None
        self.done = False
        self.actions: dict[int, Any] = {int(signum): signal.getsignal(signum) for signum in signals}
        self.thread = threading.Thread(target=self._run, name="fdl-import-signals", daemon=True)

    def _run(self) -> None:
        if self.wakeup is not None:
            self._run_woken(*self.wakeup)
            return
        while not self.done:
            info = signal.sigtimedwait(self.signals, self.POLL_S)
            if info is not None:
                self._take(info.si_signo)

    def _run_woken(self, read: int, previous: int) -> None:
        """The signals as Python's C handler writes them to the wakeup fd, in whichever thread it ran: this one,
        which lets them through (a signal at its default action ends the process here, by the signal), or any
        other that does. The numbers of signals not watched go on to the wakeup fd that was in place."""
        import select

        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
        readable = select.poll()  # not select.select: no limit on the fd's number (FD_SETSIZE)
        readable.register(read, select.POLLIN)
        while not self.done:
            if self.give_up is not None and time.monotonic() >= self.give_up[0]:
                self._give_up(self.give_up[1])
            if not readable.poll(self.POLL_S * 1000):
                continue
            try:
                numbers = os.read(read, 64)
            except (BlockingIOError, InterruptedError):
                continue
            for signum in numbers:
                if signum in self.actions:
                    self._take(signum)
                elif previous >= 0:
                    try:
                        os.write(previous, bytes([signum]))
                    except OSError:
                        pass  # full or closed: as Python's own handler, which does not wait either

    def stop(self) -> None:
        """The wait has ended: the thread ends too (joined by the caller)."""
        with self.lock:
            self.done = True

    def _give_up(self, said: str) -> None:
        """End the process with status 1, `said` on stderr (an error in fdl's words, written whole beforehand: this
        thread touches none of the main thread's Python objects), unless the wait ended meanwhile."""
        with self.lock:
            if self.done:
                return
            try:
                os.write(2, said.encode(errors="replace"))
            except OSError:
                pass  # stderr closed: the status says it
            os._exit(1)

    def _take(self, signum: int) -> None:
        if signum == signal.SIGINT and self.first is None and self.note is not None:
            self.first = signum
            if not self.quiet:
                _say(self.note)
            return
        if self.actions.get(signum) is signal.SIG_DFL:  # the process ends by the signal, as it would have
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            signal.pthread_kill(threading.get_ident(), signum)
        if not self.quiet:
            _say("interrupted")
        os._exit(128 + signum)


def _say(line: str) -> None:
    """`line` on stderr, on a line of its own after a terminal's "^C"."""
    try:
        os.write(2, (("\n" if os.isatty(2) else "") + line + "\n").encode(errors="replace"))
    except OSError:
        pass  # stderr closed: the status says it


def import_torch(*, quiet: bool = False) -> None:
    """`import torch` with SIGINT and SIGTERM `held` back, so none is handled inside torch's C++ start-up;
    meanwhile `_ImportWatch` takes them: a first Ctrl-C stops fdl once the import has ended, a second
    one, or a SIGTERM, at once. Where `signal.sigtimedwait` does not exist (macOS), they wait for the
    end of the import. Torch imported already (a test, or a program calling fdl's main twice): nothing to
    hold, and no watcher thread whose join costs up to its poll interval. `quiet`: say nothing of them
    (a rank of a torchrun job other than rank 0, which says it for all: torchrun hands each rank the Ctrl-C)."""
    if "torch" in sys.modules:
        return
    watch = None
    try:
        with held():
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "sigtimedwait"):
                taken = {signum for signum in (signal.SIGINT, signal.SIGTERM)
                         if signal.getsignal(signum) is not signal.SIG_IGN}
                if taken:
                    watch = _ImportWatch(taken, quiet=quiet)
                    watch.thread.start()
            try:
                import torch  # noqa: F401
            finally:
                if watch is not None:
                    watch.done = True
                    watch.thread.join()
    finally:
        # Handled here (its handler runs before raise_signal returns), as one sent now; also when the
        # import failed, as a signal held back was: the user asked to stop.
        if watch is not None and watch.first is not None:
            signal.raise_signal(watch.first)


@contextmanager
def ending_at_once(*, quiet: bool = False, give_up: tuple[float, str] | None = None) -> Iterator[None]:
    """For a wait in torch's C++ before any file is written, which no Python handler can cut short:
    joining a torchrun job's process group (`distributed.init_process_group`). A rank waits there for
    every other one; a rank that a Ctrl-C stopped before it joined never comes, and torchrun hands the
    Ctrl-C to the waiting ones too, whose handler would run only once the wait ends: after the backend's
    timeout (`distributed.WAIT_S`, a week), torchrun SIGKILLing them after 30 s, rank 0 unheard ("interrupted" not said).
    Here `_ImportWatch` ends the process at the first SIGINT or SIGTERM, as it ends it at a second Ctrl-C during
    `import torch` ("interrupted" unless `quiet`, status 130 or 143; by the signal itself where its action is
    the default), whichever thread the signal is delivered to. Held back from this thread (and the threads it
    starts, the backend's), it goes to the watcher or to a thread started before with the signals let through
    (torch's intra-op threads, a thread of the model file's): Python's C handler writes its number to the
    wakeup fd, which the watcher borrows for the wait; `sigtimedwait` saw none taken by another thread (the rank
    hung). Only the signals fdl took (`installed`) or left at their default: an embedding program's own
    handler, or an ignored signal, stays as it was, and its wakeup fd gets the numbers the watcher does not take.

    `give_up` (seconds, text): the wait's bound, which the C++ below may not keep (torch's store client waits for
    ever for an answer from a program that accepts its connection and says nothing): once the wait has lasted that
    long, the watcher writes `text` (the error, whole, as fdl says it) to stderr and ends the process with status 1.
    Where no watcher can run (not the main thread, no signal masks) the wait is left to the C++'s own bound."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    deadline = None if give_up is None else (time.monotonic() + give_up[0], give_up[1])
    taken = {signum for signum in (signal.SIGINT, signal.SIGTERM)
             if signal.getsignal(signum) in (_on_sigint, signal.SIG_DFL)}
    if not taken and deadline is None:
        yield
        return
    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)  # Python's wakeup fd must not block its handler
    try:
        with held():
            previous = signal.set_wakeup_fd(write)
            try:
                watch = _ImportWatch(taken, quiet=quiet, note=None, wakeup=(read, previous), give_up=deadline)
                watch.thread.start()
                try:
                    yield
                finally:
                    watch.stop()
                    watch.thread.join()
            finally:
                # A signal handled after the watcher's last look is not lost: its handler runs in this thread.
                signal.set_wakeup_fd(previous)
    finally:
        os.close(read)
        os.close(write)


def check() -> None:
    """Raise KeyboardInterrupt (once) if a Ctrl-C arrived and was swallowed before it reached fdl."""
    global _pending
    if _pending:
        _pending = False
        raise Interrupted


def sleep(seconds: float) -> None:
    """time.sleep in short slices, each followed by `check`."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))
