"""Review of the StoreWriter scheduler (session 13): fault injection at chosen points.

- A commit that runs in the caller's thread because no thread could be started (`_launch`'s fallback,
  e.g. "can't start new thread" under a pids limit) and is stopped by Ctrl-C: the KeyboardInterrupt
  was kept as the job's error and the call returned as if nothing happened; the next add raised the
  Ctrl-C long after (a forward pass later), and close(), which retries only an `Exception`, raised it
  without committing what was buffered (lost).
- A Ctrl-C that lands in close() before it set `_stopping` released the flock while the scheduler
  thread still ran and could start a commit after close.
- Random adds, ticks and flushes while commits fail at random: every entry is written, reported once.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import fdl_cli.store as store_module
from fdl_cli.errors import StoreError
from fdl_cli.store import StoreReader, StoreWriter
from tests.test_store_background import join_commits, random_entry, stored_steps, tmp_files, writer_for


def _no_commit_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "fdl-store-commit":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_ctrl_c_in_a_commit_run_in_the_callers_thread_is_raised_at_once_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_commit_threads(monkeypatch)
    real_execute = StoreWriter._execute
    calls = []

    def execute(self: StoreWriter, plan: Any) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the commit copies the store, in the main thread
        real_execute(self, plan)

    monkeypatch.setattr(StoreWriter, "_execute", execute)
    path = tmp_path / "run.h5"
    entry = random_entry(0)
    writer = writer_for(path, min_interval=0.0)
    with pytest.raises(KeyboardInterrupt):
        writer.add(entry)  # the commit ran here and was interrupted: the Ctrl-C is the caller's, now
    assert calls == ["MainThread"]
    writer.close()  # commits what is buffered; nothing left to raise
    assert stored_steps(path) == [0]
    assert tmp_files(tmp_path) == []


def test_ctrl_c_in_close_before_it_stops_the_scheduler_leaves_no_thread_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.h5"
    writer = writer_for(path, min_interval=0.3)
    writer._last_commit = time.monotonic()
    writer.add(random_entry(0))  # not due yet: the scheduler sleeps until it is
    scheduler = writer._scheduler
    assert scheduler is not None and scheduler.is_alive()

    class Interrupted:
        """The writer's lock, whose first acquisition in close() is interrupted by a Ctrl-C."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.armed = inner, True

        def __enter__(self) -> Any:
            if self.armed and threading.current_thread() is threading.main_thread():
                self.armed = False
                raise KeyboardInterrupt
            return self.inner.__enter__()

        def __exit__(self, *args: Any) -> Any:
            return self.inner.__exit__(*args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    writer._mutex = Interrupted(writer._mutex)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    scheduler.join(2.0)
    join_commits()
    # the lock is released: no thread of this writer may write the store any more
    assert not scheduler.is_alive(), "the scheduler outlived close()"
    assert not path.exists() or stored_steps(path) == []


def test_random_failures_while_the_scheduler_commits_lose_and_repeat_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_THROTTLE_FACTOR", 0.0)
    rng = random.Random(13)
    real_execute = StoreWriter._execute
    lock = threading.Lock()

    def execute(self: StoreWriter, plan: Any) -> None:
        with lock:
            fail, pause = rng.random() < 0.3, rng.uniform(0, 0.004)
        time.sleep(pause)
        if fail:
            raise StoreError("injected failure")
        real_execute(self, plan)

    monkeypatch.setattr(StoreWriter, "_execute", execute)
    path = tmp_path / "run.h5"
    entries = [random_entry(step) for step in range(150)]
    returned = []
    errors = 0
    with writer_for(path, min_interval=0.0) as writer:
        for entry in entries:
            for call in (lambda e=entry: writer.add(e), writer.tick):
                try:
                    returned += call()
                except StoreError:
                    errors += 1
            if rng.random() < 0.1:
                try:
                    returned += writer.flush()
                except StoreError:
                    errors += 1
            time.sleep(rng.uniform(0, 0.003))
        monkeypatch.setattr(StoreWriter, "_execute", real_execute)
        # a commit launched before the restore may still fail: its error is the next flush's to raise (the
        # entries stay buffered), and the flush after it commits them
        try:
            returned += writer.flush()
        except StoreError:
            errors += 1
            returned += writer.flush()
    assert errors > 0
    assert [entry.step for entry in returned] == list(range(150))
    with StoreReader(path) as reader:
        assert reader.steps() == list(range(150))
    assert tmp_files(tmp_path) == []


@pytest.mark.timeout(60)  # held, the next add of the caller's thread waits for the lock for ever
def test_a_ctrl_c_at_a_lock_boundary_of_the_callers_thread_does_not_leave_the_lock_held(tmp_path: Path) -> None:
    """A Ctrl-C is handled between bytecodes, also inside `threading.Condition.__enter__` (a Python function)
    after its lock was acquired, or inside its `__exit__` before the release: the `with` block then never
    releases it, and close() hung for good (a signal test ran into its 120 s limit once). The caller's
    thread takes the C lock itself (`_mutex`), whose __enter__/__exit__ leave no such window.

    Simulated with a trace function that raises KeyboardInterrupt at the return of every `__enter__`, and
    the call of every `__exit__`, of a threading object entered straight from a StoreWriter method of the
    caller's thread; the writer must then still close, with every added entry stored."""
    import sys

    main = threading.main_thread()
    fired: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if threading.current_thread() is not main:
            return None
        code = frame.f_code
        caller = frame.f_back.f_code.co_filename if frame.f_back is not None else ""
        if code.co_filename == threading.__file__ and caller == store_module.__file__ and (
            (code.co_name == "__enter__" and event == "return") or (code.co_name == "__exit__" and event == "call")
        ):
            fired.append(f"{code.co_qualname} {event}")
            raise KeyboardInterrupt
        return tracer

    path = tmp_path / "s.h5"
    writer = writer_for(path, min_interval=0.0)
    added = []
    try:
        for step in range(4):
            entry = random_entry(step)
            sys.settrace(tracer)
            try:
                writer.add(entry)
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            added.append(step)
        done = threading.Event()
        closer = threading.Thread(target=lambda: (writer.flush(), done.set()), daemon=True)
        # flush in another thread only to see whether it can take the lock at all (close follows here)
        closer.start()
        closer.join(30)
        assert done.is_set(), f"the writer's lock stayed held after a Ctrl-C at {fired[:1]}"
    finally:
        sys.settrace(None)
    writer.close()
    assert stored_steps(path) == added
