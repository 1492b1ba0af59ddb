"""A Ctrl-C landing between two statements of `fdl analyze` where what was done (checkpoints taken in from the part
stores of an interrupted torchrun job, an addition given up) is durable but not yet in the hands of what prints it,
or a store writer open outside every block that closes it (docs/reliability.md, 56).

CPython runs a signal's handler at the next function entry (or backward jump, or return from C) after it arrives: a
signal that arrives as a function returns is raised at the entry of the next function called. `_signal_at_next_call`
plays that exactly: a real SIGINT, sent at the next Python call after the hook (fdl's handler, or the one
`signals.deferred` put in place, runs as it would).
"""

from __future__ import annotations

import inspect
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import pipeline, sharding
from fdl_cli.store import StoreWriter
from tests.cli_run import fdl_in_process
from tests.ranks import torchrun
from tests.test_analyze import analysed_copy, analyze, run  # noqa: F401 - the module's fixtures
from tests.test_s20_rev2 import stopped_copy  # noqa: F401 - a fixture
from tests.test_s37_user import _printed_steps, _stored_steps
from tests.test_s38_takenin import INTERRUPTED, _left_by_the_job, stopped_job  # noqa: F401 - a fixture
from tests.test_s40_rank0 import _resumed


def _signal_at_next_call() -> None:
    """A real SIGINT at the next Python call of this thread (handled as if it had arrived just before)."""
    import signal
    import sys

    def trace(frame: Any, event: str, arg: Any) -> None:
        sys.settrace(None)
        signal.raise_signal(signal.SIGINT)

    sys.settrace(trace)


#: the helper, as each rank's script defines it too (`_RANK_AFTER_OPENING`)
_AT_NEXT_CALL = "from typing import Any\n" + inspect.getsource(_signal_at_next_call)


def _stopped(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """`fdl ARGS` in this process with the hooks `monkeypatch` set (taken off after), stopped by their Ctrl-C."""
    done = fdl_in_process(*args)
    monkeypatch.undo()
    assert done.returncode == 130, done.stderr
    return done


@pytest.fixture(autouse=True)
def _no_trace_left() -> Any:
    yield
    sys.settrace(None)


# ------------------------------------------------------------------ one process: the take-in of part stores


def test_a_ctrl_c_as_the_take_in_returns_leaves_its_records_printed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The take-in stored steps 10 and 20 and removed the part; its records were printed only by the next statement
    (`print_only(taken)`, in another `try` than the take-in's): a Ctrl-C handled at that call's entry lost them,
    stored and never printed (no later run prints them: it finds them stored)."""
    out = tmp_path / "s.h5"
    part, args = _left_by_the_job(stopped_job, out)
    take_in = sharding._take_in_rank_parts

    def taking_in(*given: Any, **kwargs: Any) -> Any:
        kept = take_in(*given, **kwargs)
        _signal_at_next_call()
        return kept

    monkeypatch.setattr(sharding, "_take_in_rank_parts", taking_in)
    done = _stopped(monkeypatch, *args)
    assert _stored_steps(out) == [0, 10, 20] and not part.exists()
    assert _printed_steps(done.stdout) == [10, 20], done.stderr
    assert done.stderr.strip().splitlines()[-1] == INTERRUPTED
    assert not Path(f"{out}.lock").exists()


def test_a_ctrl_c_between_a_parts_checkpoints_handed_to_the_store_and_its_commit_leaves_them_printed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The part's checkpoints were handed to the writer one by one, then committed with the signals held back: a
    Ctrl-C after step 10's hand-over stored step 10 (the writer's close commits it), printed it nowhere, and left
    step 20 out; the part stayed, step 20 taken in by the next run."""
    out = tmp_path / "s.h5"
    part, args = _left_by_the_job(stopped_job, out)
    add, take_in, within = StoreWriter.add, sharding._take_in_rank_parts, []

    def taking_in(*given: Any, **kwargs: Any) -> Any:
        within.append(True)
        try:
            return take_in(*given, **kwargs)
        finally:
            within.clear()

    def adding(self: StoreWriter, entry: Any, *together: Any) -> Any:
        durable = add(self, entry, *together)
        if within and entry.step == 10:
            _signal_at_next_call()
        return durable

    monkeypatch.setattr(sharding, "_take_in_rank_parts", taking_in)
    monkeypatch.setattr(StoreWriter, "add", adding)
    done = _stopped(monkeypatch, *args)
    assert _stored_steps(out) == [0, 10, 20]
    assert _printed_steps(done.stdout) == [10, 20], done.stderr
    assert done.stderr.strip().splitlines()[-1] == INTERRUPTED
    again = fdl_in_process(*args)  # the part, kept (stopped before its removal), is settled and removed
    assert again.returncode == 0, again.stderr
    assert _printed_steps(again.stdout) == [] and not part.exists()


# ------------------------------------------------------------------ one process: --abandon-addition


def test_a_ctrl_c_in_the_commit_that_gives_an_addition_up_leaves_it_said(
    run: Path, tmp_path: Path, stopped_copy: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """--abandon-addition's commit took the addition out of the store; a Ctrl-C in it (held back to its end, then
    raised) left the summary without "given up" and --json without its `{"abandoned": ...}` line, though the store
    no longer held the addition: a resume then said that nothing was left to give up."""
    before = stopped_copy(tmp_path / "before.h5")
    store = stopped_copy(tmp_path / "s.h5", "--probe", f"test={run / 'test.npz'}")
    flush, stopped = StoreWriter.flush, []

    def flushing(self: StoreWriter) -> Any:
        durable = flush(self)
        if self.abandoned is not None and not stopped:
            stopped.append(True)
            signal.raise_signal(signal.SIGINT)  # as one met in the commit, raised at its end
        return durable

    monkeypatch.setattr(StoreWriter, "flush", flushing)
    given_up = analyze(run, store, "--abandon-addition")
    monkeypatch.undo()
    assert stopped and given_up.code == 130, given_up.stderr
    assert given_up.records == [{"abandoned": [["test", "2:input"]]}], given_up.stderr
    text = " ".join(given_up.stderr.split())
    assert ("probe 'test' given up (--abandon-addition: taken out of the 2 checkpoints that held some of it) →"
            in text), text
    assert text.endswith(INTERRUPTED), text
    assert _stored_steps(store) == _stored_steps(before)
    assert not Path(f"{store}.lock").exists()


# ------------------------------------------------------------------ rank 0 of a torchrun job: the store's opening

#: rank 0 given a Ctrl-C that arrives as the opening's broadcast (the take-in's outcome, told to every rank) returns:
#: handled at the next call, which was the main `try`'s first (queuing the taken-in records), before it queued them
_RANK_AFTER_OPENING = _AT_NEXT_CALL + """
import os, sys
from fdl_cli import cli, distributed, sharding
if os.environ["RANK"] == "0":
    broadcast = distributed.broadcast_from_writer
    def broadcasting(payload, world, waiting_for="rank 0"):
        told = broadcast(payload, world, waiting_for)
        if waiting_for == sharding._OPENING:
            _signal_at_next_call()
        return told
    distributed.broadcast_from_writer = broadcasting
cli.main(sys.argv[1:])
"""

#: rank 0 given a Ctrl-C in the opening's broadcast, handled as the collective returns (in the `finally` that tells
#: the other ranks): the writer, open, was closed by no block, and its lock file left beside the store
_RANK_IN_OPENING = """
import os, signal, sys
from fdl_cli import cli, distributed, sharding
if os.environ["RANK"] == "0":
    broadcast = distributed.broadcast_from_writer
    def broadcasting(payload, world, waiting_for="rank 0"):
        told = broadcast(payload, world, waiting_for)
        if waiting_for == sharding._OPENING:
            signal.raise_signal(signal.SIGINT)
        return told
    distributed.broadcast_from_writer = broadcasting
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("rank", [_RANK_AFTER_OPENING, _RANK_IN_OPENING], ids=["after", "in"])
def test_a_ctrl_c_of_rank_0_at_the_opening_broadcast_leaves_the_taken_in_records_printed_and_the_store_closed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, rank: str  # noqa: F811
) -> None:
    out, done = _resumed(stopped_job, tmp_path, rank)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert done.stderr.splitlines().count(INTERRUPTED) == 1, done.stderr[-4000:]
    assert not Path(f"{out}.lock").exists(), done.stderr[-4000:]
    assert _stored_steps(out) == [0, 10, 20] and not Path(f"{out}.rank-1").exists()
    assert sorted(_printed_steps(done.stdout)) == [10, 20], done.stderr[-4000:]


# ------------------------------------------------------------------ one process: a checkpoint analysed, and its commit


def _fresh_args(stopped_job: tuple[Path, Path, Path], out: Path) -> list[str]:  # noqa: F811
    """`fdl analyze --json` of the run's steps 0, 10 and 20 into `out`."""
    folder = stopped_job[0]
    return [
        "analyze", str(folder), "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
        "--probe", str(folder / "probe.npz"), "--out", str(out), "--device", "cpu", "--batch-size", "64",
        "--anchor-size", "100", "--json",
    ]  # fmt: skip


def test_a_ctrl_c_as_a_checkpoints_analysis_returns_leaves_it_stored_and_printed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Step 10 analysed, its entry was handed to the writer only after the blocks around the analysis ended and the
    progress line said so: a Ctrl-C handled in between (the first call after the analysis returned) lost the whole
    analysis, and the summary said one checkpoint analysed."""
    out = tmp_path / "s.h5"
    analyze_one = pipeline._analyze_one

    def analysing(ctx: Any, ref: Any, *args: Any, **kwargs: Any) -> Any:
        entry = analyze_one(ctx, ref, *args, **kwargs)
        if ref.step == 10:
            _signal_at_next_call()
        return entry

    monkeypatch.setattr(pipeline, "_analyze_one", analysing)
    done = _stopped(monkeypatch, *_fresh_args(stopped_job, out))
    assert _stored_steps(out) == [0, 10]
    assert _printed_steps(done.stdout) == [0, 10], done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [f"2 checkpoints analysed → {out}", INTERRUPTED], done.stderr


def test_a_ctrl_c_as_a_commit_returns_leaves_what_it_stored_printed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The writer hands what a commit made durable over once (`add`, `tick`, `flush`), to the announce that counts and
    prints it: a Ctrl-C handled at the announce's entry lost the commit's checkpoints, stored and never printed (the
    run's last `flush` finds nothing left to hand over). Here the commit after the last checkpoint (steps 0, 10 and
    20 at once: throttled commits)."""
    out = tmp_path / "s.h5"
    flush, stopped = StoreWriter.flush, []

    def flushing(self: StoreWriter) -> Any:
        durable = flush(self)
        if durable and not stopped:
            stopped.append([entry.step for entry in durable])
            _signal_at_next_call()
        return durable

    monkeypatch.setattr(StoreWriter, "flush", flushing)
    done = _stopped(monkeypatch, *_fresh_args(stopped_job, out), "--commit-interval", "3600")
    assert stopped == [[0, 10, 20]]
    assert _stored_steps(out) == [0, 10, 20]
    assert _printed_steps(done.stdout) == [0, 10, 20], done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [f"3 checkpoints analysed → {out}", INTERRUPTED], done.stderr


# ------------------------------------------------------------------ the store's lock


def test_a_ctrl_c_between_the_writers_opening_and_its_block_leaves_no_lock_file(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """`with StoreWriter(...) as writer:` opens the writer (taking the store's lock), then enters its block: a Ctrl-C
    handled at the block's entry (the writer's `__enter__`) left the writer open, closed by nothing, its lock file
    beside the store (and its descriptor open in a program that calls fdl's `main`)."""
    out = tmp_path / "s.h5"
    init = StoreWriter.__init__

    def opening(self: StoreWriter, path: Any, **kwargs: Any) -> None:
        init(self, path, **kwargs)
        if Path(path) == out:
            _signal_at_next_call()

    monkeypatch.setattr(StoreWriter, "__init__", opening)
    done = _stopped(monkeypatch, *_fresh_args(stopped_job, out))
    assert done.stderr.strip().splitlines()[-1].startswith("interrupted"), done.stderr
    assert not Path(f"{out}.lock").exists() and not out.exists()


#: rank 0 given a Ctrl-C as its first commit returns (its own block's checkpoints, committed before it waits for the
#: other ranks): handled at the next call, which announced them
_RANK_AFTER_COMMIT = _AT_NEXT_CALL + """
import os, sys
from fdl_cli import cli
from fdl_cli.store import StoreWriter
if os.environ["RANK"] == "0":
    flush = StoreWriter.flush
    def flushing(self):
        durable = flush(self)
        if durable and not getattr(flushing, "done", False):
            flushing.done = True
            _signal_at_next_call()
        return durable
    StoreWriter.flush = flushing
cli.main(sys.argv[1:])
"""


def test_a_ctrl_c_of_rank_0_as_its_commit_returns_leaves_what_it_stored_printed(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path  # noqa: F811
) -> None:
    """Rank 0 commits its block (steps 0 and 10) before it waits for rank 1's: a Ctrl-C handled as that commit
    returned lost both from the records and the count, stored all the same."""
    out = tmp_path / "s.h5"
    (wrapper := tmp_path / "rank.py").write_text(_RANK_AFTER_COMMIT, encoding="utf-8")
    done = torchrun(str(wrapper), *_fresh_args(stopped_job, out), "--commit-interval", "3600", direct=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert _stored_steps(out) == [0, 10]
    assert sorted(_printed_steps(done.stdout)) == [0, 10], done.stderr[-4000:]
    assert f"2 checkpoints analysed → {out}" in done.stderr.splitlines(), done.stderr[-4000:]


def test_a_ctrl_c_as_a_watch_takes_its_stores_lock_leaves_no_lock_file(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """--watch takes the store's lock at its start, then registers its release: a Ctrl-C handled in between (at the
    registration's entry) left the lock file behind."""
    from fdl_cli import store

    out = tmp_path / "s.h5"
    claim = store.claim

    def claiming(path: Any, **kwargs: Any) -> Any:
        lock = claim(path, **kwargs)
        _signal_at_next_call()
        return lock

    monkeypatch.setattr(store, "claim", claiming)
    done = _stopped(monkeypatch, *_fresh_args(stopped_job, out), "--watch")
    assert done.stderr.strip().splitlines()[-1].startswith("interrupted"), done.stderr
    assert not Path(f"{out}.lock").exists() and not out.exists()
