"""StoreWriter's background commits: what add/flush return is durable, nothing is lost, errors surface.

A `Gate` replaces `fdl_cli.store._fsync_path` so that a background commit stops just before it
fsyncs and renames its copy: the tests then act while that commit is known to be in flight.
"""

from __future__ import annotations

import errno
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import pytest

import fdl_cli.store as store_module
from fdl_cli.errors import StoreError
from fdl_cli.store import CheckpointEntry, StoreReader, StoreWriter
from tests.test_store import probes, provenance, random_entry

_REAL_FSYNC_PATH = store_module._fsync_path
_TIMEOUT = 15.0


class Gate:
    """Holds each commit's fsync of its tmp copy until released; records the threads that commit."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # a commit reached its fsync
        self.opened = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, path: Path, *, directory: bool = False) -> None:
        if not directory:
            self.threads.append(threading.current_thread())
            self.entered.set()
            if threading.current_thread() is not threading.main_thread():  # never block the caller
                assert self.opened.wait(_TIMEOUT), "the gate was never opened"
        _REAL_FSYNC_PATH(path, directory=directory)

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(store_module, "_fsync_path", gate)
    yield gate
    gate.open()  # a failing test must not leave a commit thread blocked
    join_commits()


def join_commits(writer: StoreWriter | None = None) -> None:
    """Wait until no background commit thread runs (they are named fdl-store-commit), and first, given
    the writer, for the commit it tracks: one that its scheduler thread started may not have a thread yet."""
    if writer is not None:
        deadline = time.monotonic() + _TIMEOUT
        while (job := writer._job) is not None and not job.done():
            assert time.monotonic() < deadline, "a background commit did not end"
            time.sleep(0.001)
    for thread in threading.enumerate():
        if thread.name == "fdl-store-commit":
            thread.join(_TIMEOUT)
            assert not thread.is_alive(), "a background commit did not end"


def writer_for(path: Path, **kwargs: Any) -> StoreWriter:
    return StoreWriter(path, provenance=provenance(), probes=probes(), **kwargs)


def stored_steps(path: Path) -> list[int]:
    with StoreReader(path) as reader:
        assert reader.warnings == []
        return reader.steps()


def assert_durable(path: Path, entries: list[CheckpointEntry]) -> None:
    """Each entry is in the store file, with its sha256 and arrays (read by StoreReader and plain h5py)."""
    with StoreReader(path) as reader:
        for entry in entries:
            assert entry.step in reader.steps(), entry.step
            assert reader.arrays(entry.step) == entry.series[0]
    with h5py.File(path, "r") as store:
        for entry in entries:
            group = store[f"checkpoints/step_{entry.step}"]
            assert bool(group.attrs["complete"]) and group.attrs["sha256"] == entry.sha256


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------------------------------------


def test_add_returns_before_the_commit_and_reports_it_once_durable(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    first, second, third = random_entry(0), random_entry(1), random_entry(2)
    with writer_for(path) as writer:
        started = time.monotonic()
        assert writer.add(first) == []  # the commit of step 0 starts, in another thread
        assert gate.entered.wait(_TIMEOUT)
        writer._min_interval = 3600.0  # the next commit is not due: the scheduler commits step 1 only later
        assert time.monotonic() - started < _TIMEOUT / 2
        assert gate.threads[0] is not threading.main_thread()
        assert not path.exists()  # the first commit creates the file: not yet
        assert writer.completed() == {0: first.sha256}  # in flight counts as completed
        assert writer.add(second) == []  # in flight: buffered for the next commit
        assert writer.completed() == {0: first.sha256, 1: second.sha256}
        gate.open()
        join_commits(writer)
        assert stored_steps(path) == [0]  # step 1 came too late for that commit
        assert writer.add(third) == [first]
        assert_durable(path, [first])
        assert writer.flush() == [second, third]
        assert_durable(path, [first, second, third])
        assert writer.flush() == []
    assert stored_steps(path) == [0, 1, 2]
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_every_returned_entry_is_already_in_the_store(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    entries = [random_entry(step) for step in range(12)]
    returned: list[CheckpointEntry] = []
    reported_by_add = 0
    with writer_for(path) as writer:
        for index, entry in enumerate(entries):
            durable = writer.add(entry)
            if durable:
                assert_durable(path, durable)
            reported_by_add += len(durable)
            returned += durable
            if index % 4 == 3:
                join_commits(writer)  # the next add reports the commit that ended
        durable = writer.flush()
        assert_durable(path, durable)
        returned += durable
    assert reported_by_add > 0
    assert [entry.step for entry in returned] == list(range(12))  # each once, in the order added
    assert stored_steps(path) == list(range(12))


def test_flush_returns_the_rest_in_order_and_the_last_of_a_step_wins(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    old = random_entry(5)
    new = CheckpointEntry(5, "new/5.pt", "e" * 64, random_entry(105).series)
    later = [random_entry(step) for step in (9, 7)]
    with writer_for(path) as writer:
        assert writer.add(old) == []
        assert gate.entered.wait(_TIMEOUT)
        assert writer.add(new) == []
        assert [writer.add(entry) for entry in later] == [[], []]
        assert writer.completed() == {5: "e" * 64, 9: later[0].sha256, 7: later[1].sha256}
        gate.open()
        assert writer.flush() == [old, new, *later]
        with StoreReader(path) as reader:
            assert reader.steps() == [5, 7, 9] and reader.warnings == []
            assert reader.records()[0]["sha256"] == "e" * 64 and reader.records()[0]["path"] == "new/5.pt"
            assert reader.arrays(5) == new.series[0]


def test_close_waits_for_the_commit_in_flight_and_commits_the_rest(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    with writer_for(path) as writer:
        writer.add(random_entry(0))
        assert gate.entered.wait(_TIMEOUT)
        writer.add(random_entry(1))
        writer.add(random_entry(2))
        threading.Timer(0.2, gate.open).start()  # close() must wait for it
    assert stored_steps(path) == [0, 1, 2]
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_an_interrupt_during_a_commit_still_stores_everything_added(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        with writer_for(path) as writer:
            writer.add(random_entry(3))
            assert gate.entered.wait(_TIMEOUT)
            writer.add(random_entry(4))
            threading.Timer(0.2, gate.open).start()
            raise KeyboardInterrupt
    assert stored_steps(path) == [3, 4]
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_ctrl_c_while_close_waits_still_commits_everything_then_is_raised(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.h5"
    waiting = threading.Event()
    real_wait = store_module._CommitJob.wait

    def wait(job: Any) -> None:
        waiting.set()  # close is in its wait for the commit in flight
        real_wait(job)

    monkeypatch.setattr(store_module._CommitJob, "wait", wait)

    def interrupt_then_open() -> None:
        assert waiting.wait(_TIMEOUT)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)  # lands in close's wait
        time.sleep(0.2)
        gate.open()

    # Python's own handler, even when the tests run with SIGINT ignored (a background job of a
    # non-interactive shell): the signal must raise KeyboardInterrupt in the main thread.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with writer_for(path) as writer:
                writer.add(random_entry(0))
                assert gate.entered.wait(_TIMEOUT)
                writer.add(random_entry(1))
                threading.Thread(target=interrupt_then_open).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert gate.opened.is_set()  # close did not give up on the commit in flight
    assert stored_steps(path) == [0, 1]
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_readers_see_the_previous_store_while_a_commit_is_in_flight(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:
        writer.add(random_entry(0))
    with writer_for(path) as writer:
        writer.add(random_entry(1))
        assert gate.entered.wait(_TIMEOUT)
        assert stored_steps(path) == [0]
        with writer_for(tmp_path / "other.h5", background=False) as other:  # h5py from both threads
            assert other.add(random_entry(7)) == [random_entry(7)]
        gate.open()
        assert writer.flush() == [random_entry(1)]
        assert stored_steps(path) == [0, 1]
    assert stored_steps(tmp_path / "other.h5") == [7]


def test_damaged_groups_are_dropped_and_later_entries_rewrite_trajectories(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:  # commits in this thread: the gate lets it pass
        for step in (0, 1, 4):
            writer.add(random_entry(step))
    with h5py.File(path, "r+") as store:
        del store["checkpoints/step_1"].attrs["complete"]
    gate.entered.clear()
    with writer_for(path) as writer:
        assert sorted(writer.completed()) == [0, 4]
        assert writer.add(random_entry(6)) == []  # this commit drops step_1 and rewrites trajectories
        assert gate.entered.wait(_TIMEOUT)
        for step in (1, 2):  # earlier steps, in flight meanwhile: the next commit rewrites again
            assert writer.add(random_entry(step)) == []
        gate.open()
        assert [entry.step for entry in writer.flush()] == [6, 1, 2]
    with StoreReader(path) as reader:
        assert reader.warnings == []
        assert reader.steps() == [0, 1, 2, 4, 6]
        assert [record["sha256"] for record in reader.records()] == [f"{s:064x}" for s in (0, 1, 2, 4, 6)]
        assert reader.arrays(1) == random_entry(1).series[0]


@pytest.mark.parametrize("fault", ["copyfile", "fsync"])
def test_a_failed_background_commit_is_raised_by_the_next_add_and_retried_by_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:
        writer.add(random_entry(0))
    before = path.read_bytes()
    calls: list[str] = []

    def fail(*args: Any, **kwargs: Any) -> None:
        calls.append(threading.current_thread().name)
        raise OSError(errno.ENOSPC, "No space left on device")

    if fault == "copyfile":
        monkeypatch.setattr(store_module.shutil, "copyfile", fail)
    else:
        monkeypatch.setattr(store_module, "_fsync_path", fail)
    failed, added = random_entry(1), random_entry(2)
    with writer_for(path) as writer:
        assert writer.add(failed) == []
        join_commits(writer)
        assert calls == ["fdl-store-commit"]
        with pytest.raises(StoreError, match=r"could not write .*run\.h5 \(the store on disk is unchanged\)") as excinfo:
            writer.add(added)
        assert "No space left on device" in str(excinfo.value)
        assert path.read_bytes() == before and tmp_files(tmp_path) == []
        assert writer.completed() == {0: f"{0:064x}", 1: failed.sha256, 2: added.sha256}  # still buffered
        monkeypatch.undo()
        assert writer.flush() == [failed, added]
        assert_durable(path, [failed, added])
    assert stored_steps(path) == [0, 1, 2]


def test_a_failed_background_commit_is_raised_by_flush_then_close_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.h5"

    def fail(path: Path, *, directory: bool = False) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module, "_fsync_path", fail)
    writer = writer_for(path)
    assert writer.add(random_entry(0)) == []
    with pytest.raises(StoreError, match="unchanged"):
        writer.flush()  # waits for the failing commit
    assert not path.exists() and tmp_files(tmp_path) == []
    assert list(writer.completed()) == [0]
    with pytest.raises(StoreError, match="unchanged"):
        writer.close()  # the retry fails too, and the lock is released all the same
    assert not (tmp_path / "run.h5.lock").exists()
    monkeypatch.undo()
    writer.close()  # closed: nothing more to do
    with writer_for(path) as again:  # the lock is free
        assert again.completed() == {}


def test_close_raises_the_error_of_the_commit_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:
        writer.add(random_entry(0))
    before = path.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("boom")

    monkeypatch.setattr(store_module.shutil, "copyfile", fail)
    writer = writer_for(path)
    writer.add(random_entry(1))
    with pytest.raises(StoreError, match="OSError: boom"):
        writer.close()
    assert path.read_bytes() == before and tmp_files(tmp_path) == []
    assert not (tmp_path / "run.h5.lock").exists()


def test_background_false_commits_in_the_callers_thread_within_add(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "run.h5"
    entries = [random_entry(step) for step in range(3)]
    with writer_for(path, background=False) as writer:
        assert writer.add(entries[0]) == [entries[0]]  # min_interval 0, no commit yet: add commits
        assert_durable(path, entries[:1])
        writer._last_cost = 3600.0  # throttled from now on (10 x the last commit's duration)
        assert [writer.add(entry) for entry in entries[1:]] == [[], []]
        assert sorted(writer.completed()) == [0, 1, 2] and stored_steps(path) == [0]
        assert writer.flush() == entries[1:]
        assert_durable(path, entries)
    assert len(gate.threads) == 2 and all(thread is threading.main_thread() for thread in gate.threads)
    assert stored_steps(path) == [0, 1, 2]


def test_close_alone_retries_a_failed_background_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library user who only leaves the `with` block loses nothing to one transient failure."""
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:
        writer.add(random_entry(0))
    calls: list[int] = []
    real = store_module.shutil.copyfile
    second_added = threading.Event()

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            # fails only once the second add() returned: an error that has ended by then is raised by
            # that add (as documented), and this test is about close() alone
            assert second_added.wait(_TIMEOUT)
            raise OSError("transient")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module.shutil, "copyfile", flaky)
    entries = [random_entry(1), random_entry(2)]
    with writer_for(path) as writer:
        writer.add(entries[0])  # its background commit fails
        writer.add(entries[1])
        second_added.set()
    assert len(calls) == 2 and stored_steps(path) == [0, 1, 2]
    assert_durable(path, entries)
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_a_buffer_holding_buffer_bytes_is_committed_whatever_the_throttle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throttle's wait grows with the store (10 x the last commit's duration), and a run of quick
    checkpoints into a large store held them all in memory meanwhile: once the buffered arrays reach
    BUFFER_BYTES a commit starts anyway."""
    entries = [random_entry(0)] + [replace(random_entry(0), step=step, sha256=f"{step:064x}") for step in range(1, 7)]
    size = store_module._entry_bytes(entries[0])  # each the same size
    assert size == sum(
        array.nbytes for series in entries[0].series
        for array in (series.eigenvalues, series.eigenvectors, series.eigenfunctions, series.utility, series.quality,
                      series.feature_mean) if array is not None
    ) > 0
    monkeypatch.setattr(store_module, "BUFFER_BYTES", 3 * size)
    path = tmp_path / "run.h5"
    with writer_for(path, min_interval=3600.0, background=False) as writer:
        returned = [[entry.step for entry in writer.add(entry)] for entry in entries]
        # the throttle's clock starts at open: each third add commits, when 3 are buffered
        assert returned == [[], [], [0, 1, 2], [], [], [3, 4, 5], []]
        assert writer._buffered_bytes == size
    assert stored_steps(path) == list(range(7))
    monkeypatch.setattr(store_module, "BUFFER_BYTES", 1 << 30)
    path = tmp_path / "throttled.h5"
    with writer_for(path, min_interval=3600.0, background=False) as writer:
        assert [[entry.step for entry in writer.add(entry)] for entry in entries] == [[]] * 7
        assert writer._buffered_bytes == 7 * size


# ------------------------------------------------------------------------------------------------
# The scheduler thread: a due commit starts without a call from the caller's thread


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll `condition()` until true; fail naming `what` after a generous `timeout` (not a speed check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def steps_on_disk(path: Path) -> list[int]:
    return stored_steps(path) if path.exists() else []


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that started each background commit (`StoreWriter._launch`)."""
    started: list[str] = []
    real = StoreWriter._launch

    def launch(self: StoreWriter, job: Any) -> None:
        started.append(threading.current_thread().name)
        real(self, job)

    monkeypatch.setattr(StoreWriter, "_launch", launch)
    return started


def test_a_due_commit_starts_with_no_call_from_the_caller(tmp_path: Path, launches: list[str]) -> None:
    """The caller's thread stuck in one long call (a forward pass, a hung collective) made no add or
    tick, and what it had added stayed in memory, lost to a kill -9, for as long as the call lasted."""
    path = tmp_path / "run.h5"
    first, second = random_entry(0), random_entry(1)
    with writer_for(path, min_interval=1.0) as writer:
        writer._last_commit = time.monotonic()  # not due for 1 s, however slow the machine was to open
        assert writer.add(first) == []
        # from here on, no call: the writer's scheduler starts the commit once the throttle's wait passed
        wait_until(lambda: steps_on_disk(path) == [0], "step 0 committed with no add or tick")
        join_commits(writer)  # renamed into place: now its thread marks it durable
        assert_durable(path, [first])
        assert launches == ["fdl-store-scheduler"]
        # reported by the caller's next call, once durable (as before); a commit in flight
        assert writer.add(second) == [first]
        wait_until(lambda: steps_on_disk(path) == [0, 1], "step 1 committed with no add or tick")
        join_commits(writer)
        assert launches == ["fdl-store-scheduler"] * 2  # the next one too, after the throttle's wait
        assert writer.tick() == [second]
        assert writer.flush() == []
    assert stored_steps(path) == [0, 1]
    assert tmp_files(tmp_path) == [] and not (tmp_path / "run.h5.lock").exists()


def test_many_adds_while_the_scheduler_commits_lose_and_repeat_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launches: list[str]
) -> None:
    """The caller appends to the buffer while the scheduler and the commit threads take snapshots of it
    and apply them: every entry is written once, reported once in the order added, one commit at a time."""
    written: dict[int, int] = {}
    running, most = [0], [0]
    count_lock = threading.Lock()
    real_write, real_execute = store_module._write_checkpoint, StoreWriter._execute

    def write(checkpoints: Any, entry: CheckpointEntry, *rest: Any) -> None:
        with count_lock:
            written[entry.step] = written.get(entry.step, 0) + 1
        real_write(checkpoints, entry, *rest)  # rest: the checkpoint's row of the history

    def execute(self: StoreWriter, plan: Any) -> None:
        with count_lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            real_execute(self, plan)
        finally:
            with count_lock:
                running[0] -= 1

    monkeypatch.setattr(store_module, "_write_checkpoint", write)
    monkeypatch.setattr(StoreWriter, "_execute", execute)
    # commits back to back (the throttle's 10x would space them out and make the test slow): the
    # buffer is snapshotted and trimmed many times while the caller appends
    monkeypatch.setattr(store_module, "_THROTTLE_FACTOR", 0.0)
    path = tmp_path / "run.h5"
    entries = [random_entry(step) for step in range(300)]
    returned: list[CheckpointEntry] = []
    pause = random.Random(7)
    with writer_for(path) as writer:
        for index, entry in enumerate(entries):
            returned += writer.add(entry)
            if index % 60 == 59:  # a commit started in each stretch of 60 adds, however slow the machine's commits
                started = len(launches)
                wait_until(lambda started=started: len(launches) > started, "a commit started amid the adds")
            elif pause.random() < 0.7:
                time.sleep(pause.uniform(0.0, 0.006))  # the caller busy elsewhere: the scheduler's turn
        # no call: the scheduler commits what is left
        wait_until(lambda: len(steps_on_disk(path)) == len(entries), "the rest committed with no call")
        returned += writer.tick()
        returned += writer.flush()
    assert [entry.step for entry in returned] == list(range(300))  # each once, in the order added
    assert all(a is b for a, b in zip(returned, entries, strict=True))
    assert written == dict.fromkeys(range(300), 1)  # no entry was in two commits
    assert most[0] == 1  # one commit at a time
    print(f"commits started by: {sorted((name, launches.count(name)) for name in set(launches))}")
    assert "fdl-store-scheduler" in launches and len(launches) >= 5
    with StoreReader(path) as reader:
        assert reader.warnings == [] and reader.steps() == list(range(300))
        assert [record["sha256"] for record in reader.records()] == [entry.sha256 for entry in entries]
        for step in (0, 151, 299):
            assert reader.arrays(step) == entries[step].series[0]


def test_after_a_failed_commit_the_scheduler_leaves_the_retry_to_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launches: list[str]
) -> None:
    """A commit the scheduler started fails: the store is unchanged, the entry stays buffered, the error
    is raised by the caller's next call, and no commit starts before it (nor loops on a full disk)."""
    path = tmp_path / "run.h5"
    with writer_for(path, background=False) as writer:
        writer.add(random_entry(0))
    before = path.read_bytes()
    calls: list[str] = []
    real_copyfile = store_module.shutil.copyfile

    def fail(*args: Any, **kwargs: Any) -> None:
        calls.append(threading.current_thread().name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.shutil, "copyfile", fail)
    failed, later = random_entry(1), random_entry(2)
    with writer_for(path, min_interval=0.2) as writer:
        writer._last_commit = time.monotonic()  # not due at once: the scheduler starts it
        assert writer.add(failed) == []
        wait_until(lambda: calls == ["fdl-store-commit"], "the scheduler's commit ran")
        join_commits(writer)
        time.sleep(0.5)  # 2.5 x the throttle's wait: a scheduler that retried on its own would have
        assert calls == ["fdl-store-commit"] and launches == ["fdl-store-scheduler"]
        assert path.read_bytes() == before and tmp_files(tmp_path) == []
        assert writer.completed() == {0: f"{0:064x}", 1: failed.sha256}
        with pytest.raises(StoreError, match="No space left on device"):
            writer.tick()
        monkeypatch.setattr(store_module.shutil, "copyfile", real_copyfile)
        retried = writer.tick()  # the caller's retry (due: the throttle counts from the last success)
        assert launches == ["fdl-store-scheduler", "MainThread"]
        wait_until(lambda: steps_on_disk(path) == [0, 1], "the caller's retry")
        join_commits(writer)
        assert retried + writer.add(later) == [failed]
        # it succeeded: the scheduler starts due commits again
        wait_until(lambda: steps_on_disk(path) == [0, 1, 2], "step 2 committed with no call")
        assert launches[-1] == "fdl-store-scheduler"
        assert writer.flush() == [later]
    assert stored_steps(path) == [0, 1, 2]


def test_the_scheduler_keeps_no_committed_entry_alive(tmp_path: Path) -> None:
    """The scheduler thread kept its last job, and with it every entry of that commit (hundreds of MB
    for a run of quick checkpoints into a large store), while it slept until the next one."""
    import gc
    import weakref

    path = tmp_path / "run.h5"
    with writer_for(path, min_interval=0.5) as writer:
        writer._last_commit = time.monotonic()  # not due at the add: the scheduler starts the commit
        entry = random_entry(0)
        alive = weakref.ref(entry)
        assert writer.add(entry) == []
        wait_until(lambda: steps_on_disk(path) == [0], "step 0 committed with no call")
        join_commits(writer)
        assert writer.tick() == [entry]
        del entry
        gc.collect()
        assert alive() is None, [type(r).__name__ for r in gc.get_referrers(alive())]
