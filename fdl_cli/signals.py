"""Ctrl-C (and SIGTERM) that is never lost.

Python raises KeyboardInterrupt in whatever the main thread is running when SIGINT arrives. When that
is a finaliser (a `__del__`, a weakref callback of the garbage collector, torch's or rich's), the
interpreter prints "Exception ignored in ..." with a traceback and carries on: the Ctrl-C is gone, and
a `--watch` run polls on until a second one. `installed` records every SIGINT before raising it (and
keeps such a swallowed KeyboardInterrupt off stderr), and the long loops call `check` (or `sleep`),
which raises again for an interrupt that was swallowed on its way up.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

_pending = False
#: signal -> the handler `installed` replaced by fdl's, and the unraisable hook it replaced (`_forked`)
_replaced: dict[int, Any] = {}
_unraisable: Any = None
#: the signals whose handler `installed` (or `take_term`) made fdl's: one of them that the watcher reads while another
#: handler is in place (the model's code put it there) still stops the run (`_Stall._heard`)
_took: set[int] = set()
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

    global _unraisable
    if take_int:
        signal.signal(signal.SIGINT, _on_sigint)
        _replaced[signal.SIGINT] = previous
        _took.add(signal.SIGINT)
    if term_default:  # taken here or by `take_term`
        _replaced[signal.SIGTERM] = previous_term
    if take_term:
        signal.signal(signal.SIGTERM, _on_sigint)
        _took.add(signal.SIGTERM)
    sys.unraisablehook = quiet
    _unraisable = unraisable
    try:
        yield
        check()  # one swallowed after the last check (a finaliser during the final commit)
    finally:
        # The handlers first, fdl's gone: an interrupt of fdl's raised further down (a signal during `_stall.stop`'s
        # join) left the rest undone, fdl's handler in place after the command. In a process of fdl's own
        # (`own_process`) the signals fdl took stay taken to the process's end (`_ending`).
        if take_int:
            signal.signal(signal.SIGINT, _ending if _owned else previous)
        if term_default:  # taken here or by `take_term`
            taken = signal.getsignal(signal.SIGTERM) is _on_sigint
            signal.signal(signal.SIGTERM, _ending if _owned and taken else previous_term)
        with deferred():  # a signal meanwhile goes to the handlers just put back, once the rest is done
            _stall.stop()
            sys.unraisablehook = unraisable
            _replaced.clear()
            _took.clear()
            _unraisable = None
            _pending = False
            _term_left = False


def take_term() -> None:
    """Take SIGTERM where `installed` left its default only for WORLD_SIZE: for a command that is no torchrun
    rank (only `fdl analyze` runs as one), such as `fdl classify` in a torchrun job's script, which inherits
    WORLD_SIZE and stops on SIGTERM as a plain process does (status 143, what it writes left whole)."""
    if _term_left and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigint)
        _took.add(signal.SIGTERM)


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

    def __init__(self, *, second_through: bool = False) -> None:
        self.signum: int | None = None
        self.handlers: dict[int, Any] = {}  # signum -> the Python handler `deferred` replaced
        self.second_through = second_through  # a second signal is delivered when it comes (`deferred`)

    def record(self, signum: int, frame: FrameType | None) -> None:
        # One is delivered: the first, but a SIGTERM after a Ctrl-C wins (a scheduler's kill after the user's
        # Ctrl-C wants the job gone, and reads 143), as it does outside a commit (`_on_sigint`)
        again = self.signum is not None
        if self.signum is None or signum == signal.SIGTERM:
            self.signum = signum
        if again and self.second_through:
            self.deliver()

    def deliver(self) -> None:
        """Run the replaced handler of the signal that came (fdl's raises its KeyboardInterrupt), once."""
        signum, self.signum = self.signum, None
        if signum is not None:
            self.handlers[signum](signum, None)


@contextmanager
def deferred(*, second_through: bool = False) -> Iterator[Deferred]:
    """Keep SIGINT and SIGTERM from raising for the duration, in the main thread: a signal that comes is
    recorded, and its handler runs when the caller `deliver`s it at a safe point, or on the way out. Of several,
    one is delivered: the first, or a SIGTERM that came after a SIGINT (exit status 143, as outside); with
    `second_through`, when the second comes (a print to a pipe that its reader does not empty, `fdl analyze --json
    | less`, waits for ever: a second Ctrl-C stops it there, as it did any print before).

    For a store's commit in the main thread (`StoreWriter.flush`, `close`): HDF5 writes the copy by calling
    Python (`store._GuardedFile`), and a KeyboardInterrupt raised there failed HDF5's write, which printed
    "SystemError ... returned a result with an exception set" tracebacks and ended the process by a
    segmentation fault, the copy and the lock file left behind. Only Python handlers are replaced (a
    signal left at its default still ends the process); the mask is not used, since a signal blocked in
    the main thread is taken by another thread and its Python handler still runs in the main thread."""
    held_back = Deferred(second_through=second_through)
    if threading.current_thread() is not threading.main_thread():
        yield held_back
        return
    for signum in _TAKEN:
        handler = _handler(signum)
        if callable(handler):
            held_back.handlers[signum] = handler
            _set_handler(signum, held_back.record)
    try:
        yield held_back
    finally:
        for taken, handler in held_back.handlers.items():
            _set_handler(taken, handler)
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


def _wakeup_pipe() -> tuple[int, int]:
    """A pipe (read, write) whose write end can be Python's wakeup fd (`signal.set_wakeup_fd`): both ends
    non-blocking, as the wakeup fd must not block its handler."""
    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)
    return read, write


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
    read, write = _wakeup_pipe()
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


def through(exc: BaseException) -> None:
    """Raise again the Ctrl-C (or SIGTERM) that `exc` is the debris of, if it is; else return.

    A signal's handler runs wherever the main thread is, also inside Python code called from C: h5py's
    Cython (a `FastRLock.__exit__` while a store is read) or a library's C++. Code that does not look for
    an exception there returns as if nothing happened, and the interpreter raises SystemError("... returned
    a result with an exception set") with the KeyboardInterrupt as its cause. Caught as "any failure"
    (`except Exception`), it was said as damage: a Ctrl-C during a `--watch` poll ended the run with
    "error: run.h5 is damaged" and status 1, where the store was whole and 130 was due. Such handlers
    call this first; the interrupt goes on from there as any other does."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            raise Interrupted from exc
        seen.add(id(cause))
        cause = cause.__cause__


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


# ------------------------------------------------------------------------------ model code that does not return

#: Seconds the model's code is given to return after a SIGINT or SIGTERM, before fdl ends without it
#: (`FDL_STOP_GRACE` sets it). Under Slurm's KillWait and Kubernetes' grace period (30 s by default), with room
#: for the commit of what was analysed.
STOP_GRACE_S = 5.0
STOP_GRACE_ENV = "FDL_STOP_GRACE"


def stop_grace() -> float:
    """`FDL_STOP_GRACE` as seconds (>= 0), `STOP_GRACE_S` when unset or not such a number (read when a signal
    comes: an error then would hide the interrupt)."""
    try:
        grace = float(os.environ.get(STOP_GRACE_ENV, ""))
    except ValueError:
        return STOP_GRACE_S
    return grace if 0 <= grace < float("inf") else STOP_GRACE_S


def print_bound() -> float:
    """How long the thread that ends a stalled run (`_Stall`) waits for a print: `stop_grace`, 1 s at least."""
    return max(stop_grace(), 1.0)


def within(seconds: float, call: Any) -> bool:
    """`call()` in a daemon thread, waited for `seconds` at most: whether it ended (what it raised is raised here).
    For a print by the thread that ends a stalled run: one to a full pipe that nobody reads waits for ever, and
    `os._exit` leaves it where it waits."""
    ended = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            raised.append(exc)
        finally:
            ended.set()

    threading.Thread(target=run, name="fdl-stop-print", daemon=True).start()
    if not ended.wait(seconds):
        return False
    if raised:
        raise raised[0]
    return True


class _Stall:
    """Ends fdl when the main thread, inside the model's code (`model_code`), does not come back after a SIGINT or
    SIGTERM: the handler's KeyboardInterrupt is raised only when the main thread runs Python, so a C call that does
    not return on a signal (a hung GPU or I/O call) never raises it, and Python code that catches it goes on.

    Python's C handler writes the signal's number to the wakeup fd (`signal.set_wakeup_fd`), in whichever thread
    it runs; a thread of its own reads it. A signal that comes while the main thread is inside `model_code`
    starts the grace period (`stop_grace`); a second one ends it. Once it is over with the main thread still
    inside, the thread takes the run's end over (`_take_over`): it runs the `endings` (the store writer's commit of
    what is buffered and its close: the lock released, no copy left), says which code did not return, and ends the
    process with 130 or 143. The main thread, should it come back meanwhile, waits for that end (`model_code`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: what the main thread runs of the model's now (`model_code`), a new object at each entry
        self.inside: _Inside | None = None
        #: what the run is analysing (`analysing`), named in the message
        self.subject: str | None = None
        self.endings: list[Any] = []  # callables, the last pushed run first; each returns lines to say, or None
        self.taken = False
        self.fds: tuple[int, int] | None = None  # the pipe's (read, write) ends, once started
        self.thread: threading.Thread | None = None  # the one reading them
        self.previous = -1  # the wakeup fd in place before ours
        #: (fd, (st_dev, st_ino)): the wakeup fd the model's code put in place of ours, given every number read
        #: (`reclaim`), as long as that fd is still the file it was (closed and its number reused, it is not written)
        self.chained: tuple[int, tuple[int, int]] | None = None

    def start(self) -> None:
        """In the main thread, at the first `model_code` of a run that took the signals (`installed`)."""
        if self.fds is not None or not hasattr(signal, "pthread_sigmask"):
            return
        read, write = _wakeup_pipe()
        try:
            self.previous = signal.set_wakeup_fd(write)
        except (ValueError, OSError):
            os.close(read)
            os.close(write)
            return
        self.fds = (read, write)
        self.thread = threading.Thread(target=self._run, args=(read,), name="fdl-stop-watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """In the main thread, as `installed` ends: the wakeup fd back as it was, and the pipe's write end closed,
        which ends the thread (it reads the end of the pipe, and closes its read end). Left open, each run of a
        program that calls fdl's `main` again and again kept a thread and two file descriptors."""
        if self.fds is None:
            return
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(self.previous)
        with contextlib.suppress(OSError):
            os.close(self.fds[1])
        self.fds, self.chained = None, None
        if self.thread is not None:  # woken by the pipe's end at once; bounded all the same, as a daemon it may stay
            self.thread.join(timeout=5)
            self.thread = None

    def reclaim(self, ours: dict[int, bool]) -> None:
        """In the main thread, as the model's code returns: take back what that code took from the watcher. Python's
        wakeup fd, which an asyncio loop's `add_signal_handler` replaces by its own (and its removal, at the loop's
        close, by none): the watcher saw no signal after that, and a SIGTERM while a later forward pass hung in C
        was never seen. Ours is put back, and the model's, if any, is chained (`_chain`: every number read is
        written to it), so its loop still hears its signals. And fdl's handler of SIGINT or SIGTERM (`ours`: those
        that were fdl's as the code began) where the code left the signal at its default action, as the removal of
        an asyncio handler does (a SIGTERM then ended fdl at once, lock and copies left). A handler the code put in
        place and left (a loop still open that handles SIGTERM) is left to it: the signal still stops the run, as the
        watcher reads its number (`_heard`)."""
        for signum, was_ours in ours.items():
            if was_ours and _handler(signum) in (signal.SIG_DFL, signal.default_int_handler):
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(signum, _on_sigint)
        if self.fds is None:
            return
        try:
            theirs = signal.set_wakeup_fd(self.fds[1])
        except (ValueError, OSError):
            return
        if theirs == self.fds[1]:
            return
        # none (a loop closed), or the one in place before fdl's, which gets its numbers already: nothing to chain
        identity = _identity(theirs) if theirs not in (-1, self.previous) else None
        self.chained = None if identity is None else (theirs, identity)

    def _chain(self, signum: int) -> None:
        """`signum` on to the wakeup fd the model's code put in place (`reclaim`), unless it is now another file, or
        one made blocking (a full one would hold this thread for ever)."""
        chained = self.chained
        if chained is not None and _identity(chained[0]) == chained[1] and not _blocking(chained[0]):
            with contextlib.suppress(OSError):
                os.write(chained[0], bytes([signum]))

    def _run(self, read: int) -> None:
        import select

        readable = select.poll()
        readable.register(read, select.POLLIN)
        seen: list[int] = []  # the signals that came while `inside` was current
        watched: _Inside | None = None
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = readable.poll(None if wait is None else wait * 1000)
            now = self.inside
            if now is not watched:  # the main thread came back (or entered other model code): nothing pending
                watched, seen, deadline = now, [], None
            if ready:
                try:
                    numbers = os.read(read, 64)
                except (BlockingIOError, InterruptedError):
                    continue
                if not numbers:  # the pipe's end: `stop` closed its write end (the run is over)
                    with contextlib.suppress(OSError):
                        os.close(read)
                    return
                for signum in numbers:
                    self._chain(signum)
                    # a signal fdl did not take (any but SIGINT and SIGTERM; SIGTERM where an embedding program
                    # handles it) is not fdl's to stop on: on to the wakeup fd that was in place, as Python's handler
                    # would have written it
                    if signum not in _took:
                        if self.previous >= 0:
                            with contextlib.suppress(OSError):
                                os.write(self.previous, bytes([signum]))
                        continue
                    self._heard(signum)
                    if watched is None:
                        continue  # the main thread runs fdl's code: the handler's interrupt stops it
                    seen.append(signum)
                    deadline = time.monotonic() + (stop_grace() if len(seen) == 1 else 0.0)
            if deadline is not None and time.monotonic() >= deadline and watched is not None:
                self._take_over(watched, seen)
                deadline = None

    @staticmethod
    def _heard(signum: int) -> None:
        """A signal that fdl took (`_took`) but whose handler in place is no longer fdl's: the model's
        code put its own there and left it (an asyncio loop's `add_signal_handler`, whose Python handler does nothing:
        the loop acts on the number the watcher passes on, `_chain`), so nothing of fdl's heard it. It stops the run
        all the same, at fdl's next `check`, as fdl's handler would have: the loop still gets its number. Without
        this, such a model made fdl deaf to SIGTERM for the rest of the run (Slurm's SIGKILL came next)."""
        global _pending, terminated
        if not _fdls(_handler(signum)):
            terminated = terminated or signum == signal.SIGTERM
            _pending = True

    def _take_over(self, inside: _Inside, seen: list[int]) -> None:
        with self.lock:
            if self.inside is not inside or self.taken:
                return  # came back just now: its KeyboardInterrupt stops the run as usual
            self.taken = True
        signum = signal.SIGTERM if signal.SIGTERM in seen else signal.SIGINT
        name = signal.Signals(signum).name
        what = inside.what + (f" of {self.subject}" if self.subject else "")
        waited = f"before a second {name}" if len(seen) > 1 else f"within {stop_grace():g} s ({STOP_GRACE_ENV} sets it)"
        lines = [f"{name}: {what} did not return {waited}; fdl stops without waiting for it"]
        for ending in reversed(self.endings):
            try:
                said = ending()
            except BaseException as exc:  # noqa: BLE001 - said, and the process ends all the same
                said = f"error: {exc}"
            if said:
                lines.append(said)
        if len(lines) == 1:  # stopped before the store was opened (the model's build): nothing to commit
            lines.append("interrupted")

        def flush() -> None:
            with contextlib.suppress(Exception):
                sys.stdout.flush()  # the --json records of what the endings committed

        def say() -> None:
            with contextlib.suppress(OSError):
                os.write(2, ("\n".join(lines) + "\n").encode(errors="replace"))

        # each bounded: stdout or stderr a full pipe nobody reads (`2>&1 | less`), the process ends all the same
        for call in (flush, say):
            with contextlib.suppress(Exception):
                within(print_bound(), call)
        os._exit(128 + signum)


def _fdls(handler: Any) -> bool:
    """Whether `handler` is fdl's: `_on_sigint`, or the one `deferred` puts in its place during a commit."""
    return handler is _on_sigint or isinstance(getattr(handler, "__self__", None), Deferred)


def _identity(fd: int) -> tuple[int, int] | None:
    """The file `fd` is (device, inode), None where it is closed."""
    try:
        status = os.fstat(fd)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _blocking(fd: int) -> bool:
    try:
        return os.get_blocking(fd)
    except OSError:
        return True


class _Inside:
    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


#: The signals `installed` may take, whose handlers `model_code` looks up at each call (each forward pass)
_TAKEN = (int(signal.SIGINT), int(signal.SIGTERM))
try:  # a handler as set, SIG_DFL as 0 (equal to signal.SIG_DFL): `signal.getsignal` also looks a Python handler up
    # among SIG_DFL and SIG_IGN, by a ValueError, 2 us a call in CPython 3.11: four of them made `model_code` cost as
    # much as a tiny model's forward pass (docs/benchmarks.md)
    _handler: Any = importlib.import_module("_signal").getsignal
    # and a handler set without `signal.signal`'s conversions to and from its enums (8 us a call, against 0.4 us):
    # `deferred` sets two and puts them back, around each hand-over of a commit's checkpoints (`Announcer.take`)
    _set_handler: Any = importlib.import_module("_signal").signal
except (ImportError, AttributeError):
    _handler, _set_handler = signal.getsignal, signal.signal


_stall = _Stall()


@contextmanager
def model_code(what: str) -> Iterator[None]:
    """The main thread runs the model's code (`what`: "the model's forward pass"): a SIGINT or SIGTERM that it does
    not return from within `stop_grace` (or a second one) ends fdl (`_Stall`). Only where `installed` took SIGINT
    or SIGTERM (a Python handler of fdl's in place): an embedding program, or a torchrun rank's SIGTERM at its
    default, is left as it was."""
    ours = {signum: _handler(signum) is _on_sigint for signum in _TAKEN} if (
        threading.current_thread() is threading.main_thread()) else {}
    if not any(ours.values()):
        yield
        return
    # An interrupt that came and was swallowed (the model's code took the KeyboardInterrupt and went on) stops the run
    # here rather than at fdl's next `check`: the watcher forgets a signal once the main thread is in other model code
    # (the next forward pass of the same checkpoint, or model code the model's own code runs through fdl), and that
    # code hanging in C kept fdl running until SIGKILL.
    check()
    _stall.start()
    inside = _Inside(what)
    outer = _stall.inside
    _stall.inside = inside
    try:
        yield
    finally:
        # no call inside the lock: a signal's handler runs (and raises) only after a call or at a jump back, and one
        # raised between taking the lock and restoring `inside` would leave the watcher watching code that returned
        with _stall.lock:
            taken = _stall.taken
            _stall.inside = outer
        while taken:  # the watcher ends the process: nothing more of fdl's runs here
            try:
                time.sleep(60)
            except BaseException:  # noqa: BLE001, S110 - a further signal: the end is on its way
                pass
        _stall.reclaim(ours)


@contextmanager
def analysing(subject: str) -> Iterator[None]:
    """What the run analyses for the duration ("step 2 (ckpts/step_2.pt)"): named by `_Stall`'s message."""
    outer, _stall.subject = _stall.subject, subject
    try:
        yield
    finally:
        _stall.subject = outer


@contextmanager
def ending_when_stalled(ending: Any) -> Iterator[None]:
    """Run `ending()` (in the watcher's thread, the main thread stuck in the model's code) before `_Stall` ends the
    process: what it returns is said on stderr. For the store writer: commit what is buffered, release the lock."""
    _stall.endings.append(ending)
    try:
        yield
    finally:
        _stall.endings.remove(ending)


def _forked() -> None:
    """In a child forked from fdl (the model's `multiprocessing` pool, with the fork start method): the signals as
    they were before fdl took them, and no wakeup fd of fdl's. A pool's `terminate()` sends its workers SIGTERM,
    which ended each with a traceback of fdl's `Interrupted` on fdl's stderr (at its default it ends them
    quietly), and a signal a worker got was written to fdl's wakeup fd, read there as one fdl got (`_Stall`)."""
    global _unraisable
    _stall.inside, _stall.endings, _stall.subject = None, [], None
    if _stall.fds is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for fd in _stall.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        _stall.fds = None
    _stall.thread, _stall.chained = None, None
    for signum, handler in _replaced.items():
        if signal.getsignal(signum) is _on_sigint:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, handler)
    _replaced.clear()
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is _ending:  # forked as fdl ended (not `own_process`'s process)
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, default)
    _took.clear()
    if _unraisable is not None:
        sys.unraisablehook, _unraisable = _unraisable, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def exit_interrupted(status: int) -> NoReturn:
    """`sys.exit(status)` for a run a signal stopped, said and committed: where threads that are not fdl's are still
    running and no daemons (a thread the model's code started: a prefetcher, a logger), the interpreter would wait for
    them at exit, fdl thus for ever after it said "interrupted"; it then ends at once (`os._exit`), after a note
    naming them. Not for a run that ended by itself: a thread the model's code left then ends fdl as any program."""
    leaving(status)
    others = [thread for thread in threading.enumerate()
              if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()]
    for thread in [thread for thread in others if thread.name.startswith("fdl-")]:
        thread.join()  # fdl's own (a store commit: the writer has closed, so none should be running)
    left = [thread.name for thread in others if thread.is_alive() and not thread.name.startswith("fdl-")]
    if not left:
        sys.exit(status)
    names = ", ".join(repr(name) for name in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    _say(f"note: not waited for: the thread{'s' if len(left) > 1 else ''} {names} that the model's code started "
         f"{'are' if len(left) > 1 else 'is'} still running")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


# ------------------------------------------------------------------------------ the end of a process of fdl's own

#: Set by `own_process`: this process runs one command of fdl's and ends with it (`python -m fdl_cli`, the `fdl`
#: script), so the signals that command took stay taken, by `_ending`, once it is over. Unset (a program calling
#: `main`, pytest), `installed` gives them back as they were.
_owned = False
#: The status the process ends with, once known (`leaving`); None before.
_leaving_status: int | None = None
#: The parent process as the process started (`own_process`): its launcher, whose end a torchrun rank checks for
#: (`distributed.end_with_launcher`); None in a program that calls `main`.
started_by: int | None = None


#: Set by `skip_teardown`: the process joined a torch.distributed process group, and ends once its atexit handlers
#: have run, without the interpreter's teardown (`_last_at_exit`).
_no_teardown = False


def skip_teardown() -> None:
    """In a process of fdl's own (`own_process`), end it once the atexit handlers have run, skipping the modules'
    cleanup and the C/C++ destructors: a gloo rank's threads, torn down there, aborted a rank now and then
    ("terminate called without an active exception", SIGABRT) after its work was done and the process group left,
    and torchrun reported the finished job as failed. What the command wrote is closed by then."""
    global _no_teardown
    _no_teardown = _owned


def own_process() -> None:
    """For the process's entry, before anything else registers an atexit handler: its `_last_at_exit` then runs last."""
    global _owned, _leaving_status, started_by
    _owned, _leaving_status, started_by = True, None, os.getppid()
    atexit.register(_last_at_exit)


def leaving(status: int) -> None:
    """The command has ended, and the process ends with `status` (said to the user already, if it says anything)."""
    global _leaving_status
    _leaving_status = status


def _ending(signum: int, frame: FrameType | None) -> None:
    """SIGINT's and SIGTERM's handler once the command is over (`installed` ended), in a process of fdl's own.

    A signal then came while the interpreter ended the process: Python's default handlers back in place, it raised
    KeyboardInterrupt in whatever ran (an atexit handler of torch's printed its traceback) or ended the process by
    the signal (status -2 or -15, not the 130 or 143 of "interrupted"). Here, once the status is known, the process
    ends at once with it (`os._exit`, after the streams are flushed): what the command wrote is closed already (the
    store's writer released its lock), and the atexit handlers not run yet are skipped, a hung one too. Before the
    status is known (the few lines that say how the command ended) the signal is dropped: the command is over,
    and its end is being said."""
    if _leaving_status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_leaving_status)


def _last_at_exit() -> None:
    """The last atexit handler (`own_process`): SIGINT and SIGTERM, where fdl took them, ignored from here on. Past
    the atexit handlers the interpreter sets a signal with a Python handler back to its default action, and one that
    came while the modules were cleaned up (h5py's and torch's finalisers, C++ destructors: milliseconds) ended
    the process by the signal; an ignored signal stays ignored. A rank of a torchrun job (`skip_teardown`) ends
    here, with the command's status."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is _ending:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, signal.SIG_IGN)
    if _no_teardown and _leaving_status is not None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(_leaving_status)
