"""Session 26, a review of the store's guarded commit (`store._GuardedFile`, session 25): a Ctrl-C or SIGTERM that
arrives while HDF5 writes a commit's copy in the main thread (`StoreWriter.flush`, which `fdl analyze` calls at
the end of a run and after each --watch poll, and `close`). Python raised the KeyboardInterrupt inside the
guard's write, which HDF5 had called: HDF5's write failed, as a refused one did before the guard, and the
process printed "SystemError: ... returned a result with an exception set" tracebacks and died by a
segmentation fault (or raised h5py's RuntimeError), leaving `RUN.h5.tmp-<pid>` and the lock file. Now the
signal is held back while HDF5 runs (`signals.deferred`) and raised at the commit's next step: the copy is
removed, the store on disk is byte for byte the one before, and the next commit writes it whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fdl_cli import signals
from fdl_cli import store as store_module
from tests.cli_run import fdl_in_process
from tests.test_store import probes, provenance, random_entry

REPO = Path(__file__).resolve().parents[1]

# The child: a writer holding steps 0 and 1 flushes step 2 in its main thread, under fdl's signal handlers;
# the signal comes while the system performs the flush's `which`-th write of the copy (of `writes`).
_CHILD = textwrap.dedent("""
    import hashlib, json, os, signal, sys
    from pathlib import Path
    from fdl_cli import signals, store as sm
    from tests.test_store import probes, provenance, random_entry

    path, fraction, signum = Path(sys.argv[1]), float(sys.argv[2]), getattr(signal, sys.argv[3])
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == which:
            os.kill(os.getpid(), signum)  # arrives while the write is in the system
        return real(fd, data, offset)

    def flush_step_2(store):
        writer = sm.StoreWriter(store, provenance=provenance(), probes=probes(), background=False)
        writer.add(random_entry(1))
        writer.add(random_entry(2))  # buffered: the first commit was just now
        sm.os.pwrite = pwrite
        return writer

    probe = path.with_name("probe.h5")  # the same commit once without a signal, to count its writes
    probe.write_bytes(path.read_bytes())
    which = 0
    flush_step_2(probe).close()
    writes, calls[:] = len(calls), []
    which = max(1, round(fraction * writes))
    probe.unlink()
    sm.os.pwrite = real

    said = {"writes": writes}
    with signals.installed():
        writer = flush_step_2(path)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            writer.flush()
            said["flushed"] = True
        except KeyboardInterrupt as exc:
            said["interrupted"] = type(exc).__name__
            said["unchanged"] = hashlib.sha256(path.read_bytes()).hexdigest() == before
            said["files"] = sorted(p.name for p in path.parent.iterdir())
        sm.os.pwrite = real
        writer.close()  # commits step 2 after all
        signals._pending = False  # the Ctrl-C was taken above
    said["status"] = signals.exit_status()
    print(json.dumps(said))
""")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0], ids=["first_write", "midway", "last_write"])
def test_a_signal_during_a_commit_in_the_main_thread_stops_it_and_keeps_the_store(
    tmp_path: Path, signame: str, fraction: float
) -> None:
    path = tmp_path / "run.h5"
    with store_module.StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
        writer.add(random_entry(0))
    done = subprocess.run(  # a real process: it never imports torch, and its signal handlers are its own
        [sys.executable, "-c", _CHILD, str(path), str(fraction), signame], capture_output=True, text=True,
        timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]  # not -11, a segmentation fault
    for noise in ("Traceback", "SystemError", "Exception ignored", "RuntimeError"):
        assert noise not in done.stderr, done.stderr[-3000:]
    said = json.loads(done.stdout)
    assert said["writes"] > 40
    assert said["interrupted"] == "Interrupted"  # fdl's KeyboardInterrupt, raised at the commit's next step
    assert said["unchanged"] is True  # the store as before the commit, byte for byte
    assert said["files"] == ["run.h5", "run.h5.lock"]  # the copy removed
    assert said["status"] == (143 if signame == "SIGTERM" else 130)
    with store_module.StoreReader(path) as reader:  # close() committed step 2 whole
        assert reader.checkpoint_steps() == [0, 1, 2]
        assert [record["step"] for record in reader.records()] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]
    report = fdl_in_process("report", path, "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert [record["step"] for record in json.loads(report.stdout)] == [0, 1, 2]


def test_deferred_holds_a_signal_back_and_delivers_it_once() -> None:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        raise signals.Interrupted

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(signals.Interrupted), signals.deferred() as held_back:  # noqa: PT012
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # a second one while held back: one delivered
            assert seen == [] and held_back.signum == signal.SIGINT
        assert seen == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is handler
        with signals.deferred() as held_back:  # none came: nothing raised
            held_back.deliver()
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


_REFUSED_THEN_CTRL_C = textwrap.dedent("""
    import errno, hashlib, json, os, signal, sys
    from pathlib import Path
    from fdl_cli import store as sm
    from tests.test_store import probes, provenance, random_entry

    path, real = Path(sys.argv[1]), os.pwrite

    def refusing(fd, data, offset):
        signal.raise_signal(signal.SIGINT)  # Python's own handler: KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = sm.StoreWriter(path, provenance=provenance(), probes=probes(), background=False)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    sm.os.pwrite = refusing
    try:
        writer.add(random_entry(1))
    except BaseException as exc:
        said = {"raised": type(exc).__name__}
    sm.os.pwrite = real
    said["unchanged"] = hashlib.sha256(path.read_bytes()).hexdigest() == before
    said["files"] = sorted(p.name for p in path.parent.iterdir())
    writer.close()
    print(json.dumps(said))
""")


def test_a_refused_write_then_a_ctrl_c_is_raised_as_the_ctrl_c(tmp_path: Path) -> None:
    """A Ctrl-C held back during a commit whose write was refused is raised as the Ctrl-C, not turned into
    the refusal's StoreError (exit 1, the Ctrl-C lost); the store stays unchanged."""
    path = tmp_path / "run.h5"
    with store_module.StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
        writer.add(random_entry(0))
    done = subprocess.run(  # a real process: it never imports torch, and its signal handlers are its own
        [sys.executable, "-c", _REFUSED_THEN_CTRL_C, str(path)], capture_output=True, text=True,
        timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert json.loads(done.stdout) == {"raised": "KeyboardInterrupt", "unchanged": True,
                                       "files": ["run.h5", "run.h5.lock"]}
    with store_module.StoreReader(path) as reader:  # close() committed step 1
        assert reader.checkpoint_steps() == [0, 1]
