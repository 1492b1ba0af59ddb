"""Interruption and concurrency, end to end through `fdl analyze` / `fdl report`.

* kill -9 at random moments (many trials) leaves a store that opens and holds every checkpoint whose
  JSON record was printed, exactly; re-running completes it with results identical to an
  uninterrupted run;
* Ctrl-C (SIGINT) exits with status 130, a message saying how to resume, and an intact store;
* `fdl report` works while `fdl analyze --watch` writes the store; a second writer is refused with
  a message naming the first one.

Starting Python with torch costs ~2.5 s, too much for dozens of trials on a shared core, so the
commands run in children forked from one pre-imported server process (`_FORK_SERVER`): each child
runs the real console entry point `fdl_cli.cli.main(argv)` with its own stdout/stderr files, and is
killed with real signals.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli.store import StoreReader
from tests import warm
from tests.cli_run import fdl_in_process

TESTS = Path(__file__).resolve().parent
MODEL = f"{TESTS / 'tiny_models.py'}:mlp"
SLOW_MODEL = f"{TESTS / 'tiny_models.py'}:slow_mlp"
N_CHECKPOINTS = 30
KILL_TRIALS = 25

_FORK_SERVER = r"""
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
import h5py, numpy, safetensors.torch, rich.console, rich.progress  # noqa: F401
import fdl_cli.cli, fdl_cli.pipeline, fdl_cli.store, fdl_cli.checkpoints, fdl_cli.extract  # noqa: F401
import fdl_cli.spectral, fdl_cli.probes, fdl_cli.progress, fdl_cli.report  # noqa: F401
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        # Bounded: a child that never ends (a Ctrl-C that did not reach it) is killed, status -9.
        deadline = time.monotonic() + request.get("timeout", 120)
        done, status = os.waitpid(request["wait"], os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
            done, status = os.waitpid(request["wait"], os.WNOHANG)
        if not done:
            os.kill(request["wait"], signal.SIGKILL)
            _, status = os.waitpid(request["wait"], 0)
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n"); out.flush()
        continue
    out.flush()
    pid = os.fork()
    if pid == 0:
        code = 98  # never leaves this block: a Ctrl-C that arrives after fdl returned ends here too
        try:
            # Ctrl-C raises KeyboardInterrupt as from a terminal, even when the tests run with SIGINT
            # ignored (a background job of a non-interactive shell), which the server would pass on.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.chdir(request["cwd"])
            for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
                target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            sys.argv = ["fdl", *request["argv"]]
            try:
                fdl_cli.cli.main(request["argv"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                code = 99
                import traceback
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        finally:
            os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
"""


class ForkServer:
    """Runs `fdl ARGV` in children of one pre-imported Python process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self._read() == "ready"
        self._count = 0

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._read())

    def start(self, argv: list[str]) -> tuple[int, Path, Path]:
        """Start `fdl argv`; returns (pid, stdout file, stderr file)."""
        self._count += 1
        stdout = self.workdir / f"out_{self._count}.txt"
        stderr = self.workdir / f"err_{self._count}.txt"
        stdout.write_bytes(b"")  # exists even if the child is killed before it opens it
        stderr.write_bytes(b"")
        reply = self._send({"cwd": str(self.workdir), "stdout": str(stdout), "stderr": str(stderr), "argv": argv})
        return int(reply["pid"]), stdout, stderr

    def wait(self, pid: int, timeout: float = 120) -> int:
        return int(self._send({"wait": pid, "timeout": timeout})["status"])

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        pid, stdout, stderr = self.start(argv)
        status = self.wait(pid)
        return status, stdout.read_text(), stderr.read_text()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _write_run(folder: Path, steps: range) -> None:
    import torch
    from safetensors.torch import save_file

    try:
        from tests.tiny_models import mlp
    except ImportError:  # tests/ is not a package
        from tiny_models import mlp  # type: ignore[no-redef]

    folder.mkdir(exist_ok=True)
    for step in steps:
        # seed-distinct weights; a common drift keeps neighbouring checkpoints related, like training
        weights = {name: tensor + 0.01 * step for name, tensor in mlp(seed=step % 7).state_dict().items()}
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / f"step_{step}.safetensors"))
    del torch


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    workdir = tmp_path_factory.mktemp("interrupt")
    _write_run(workdir / "ckpts", range(N_CHECKPOINTS))
    rng = np.random.default_rng(0)
    np.savez(workdir / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    forks = ForkServer(workdir)
    yield forks
    forks.close()


def _analyze_argv(store: str, *extra: str, model: str = MODEL) -> list[str]:
    # --commit-interval 0: a commit after every checkpoint, so kills land between many commits (the
    # default 1 s interval batches these tiny checkpoints into one or two commits).
    return [
        "analyze", "ckpts", "--model", model, "--probe", "probe.npz", "--out", store, "--json",
        "--top-k", "4", "--anchor-size", "16", "--batch-size", "16", "--commit-interval", "0", *extra,
    ]


def _printed(stdout: Path | str) -> list[dict[str, Any]]:
    """The records printed by --json: complete lines only (a kill may cut the last one)."""
    text = stdout.read_text() if isinstance(stdout, Path) else stdout
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _records(store: Path) -> list[dict[str, Any]]:
    """The stored records alone: `_stored` without reading every checkpoint's arrays."""
    with StoreReader(store) as reader:
        return reader.records()


def _stored(store: Path) -> tuple[list[dict[str, Any]], dict[int, Any], list[str]]:
    with StoreReader(store) as reader:
        records = reader.records()
        arrays = {step: reader.arrays(step) for step in reader.steps()}
        return records, arrays, list(reader.warnings)


@pytest.fixture(scope="module")
def uninterrupted(server: ForkServer) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    status, stdout, stderr = server.run(_analyze_argv("reference.h5"))
    assert status == 0, stderr
    records, arrays, warnings = _stored(server.workdir / "reference.h5")
    assert len(records) == N_CHECKPOINTS and not warnings
    assert _printed(stdout) == records
    return records, arrays


def _assert_same_entries(arrays: dict[int, Any], reference: dict[int, Any], steps: list[int]) -> None:
    for step in steps:
        assert arrays[step] == reference[step], f"step {step} differs from the uninterrupted run"


def test_kill9_at_random_moments_keeps_what_was_announced_and_resumes_identically(
    server: ForkServer, uninterrupted: tuple[list[dict[str, Any]], dict[int, Any]]
) -> None:
    reference_records, reference_arrays = uninterrupted
    by_step = {record["step"]: record for record in reference_records}
    rng = random.Random(20240611)
    store = server.workdir / "killed.h5"
    killed_with_records = completed_runs = 0
    t0 = time.monotonic()
    pid, stdout, _ = server.start(_analyze_argv("reference.h5", "--overwrite"))
    assert server.wait(pid) == 0
    full_run = time.monotonic() - t0
    for trial in range(KILL_TRIALS):
        before = _records(store) if store.exists() else []
        pid, stdout, stderr = server.start(_analyze_argv(store.name))
        remaining = N_CHECKPOINTS - len(before)  # the trials go on with the store the last kill left
        if trial % 2 and remaining >= 3:
            # at a random moment after k records were announced: lands mid-run however slow the
            # machine is at the moment (timed delays alone can all miss on a loaded machine)
            k, deadline = rng.randint(1, remaining - 2), time.monotonic() + 30
            while len(_printed(stdout)) < k and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, full_run / N_CHECKPOINTS))
        else:
            time.sleep(rng.uniform(0.0, 1.2 * full_run))
        os.kill(pid, signal.SIGKILL)
        status = server.wait(pid)
        printed = _printed(stdout)
        if status == 0:  # finished before the kill: the store is complete and must equal the reference
            completed_runs += 1
            records, arrays, warnings = _stored(store)
            assert records == reference_records and not warnings, f"trial {trial}"
            _assert_same_entries(arrays, reference_arrays, list(by_step))
            store.unlink()
            continue
        assert status == -signal.SIGKILL, (trial, status, stderr.read_text())
        killed_with_records += bool(printed)
        if not store.exists():
            assert printed == [] and before == [], f"trial {trial}: records were announced but no store exists"
            continue
        records, arrays, _ = _stored(store)  # opens: never a half-written file
        stored_steps = {record["step"] for record in records}
        for record in printed + before:
            assert record["step"] in stored_steps, f"trial {trial}: announced step {record['step']} was lost"
            assert record == by_step[record["step"]], f"trial {trial}: step {record['step']} differs"
        for record in records:  # everything stored is exact, announced or not
            assert record == by_step[record["step"]], f"trial {trial}: stored step {record['step']} differs"
        _assert_same_entries(arrays, reference_arrays, sorted(stored_steps))
    # the last kill's store: a plain re-run completes it, identical to the uninterrupted run
    status, stdout_text, stderr_text = server.run(_analyze_argv(store.name))
    assert status == 0, stderr_text
    records, arrays, warnings = _stored(store)
    assert records == reference_records and not warnings
    _assert_same_entries(arrays, reference_arrays, list(by_step))
    assert not list(server.workdir.glob("killed.h5.tmp-*")), "a re-run leaves no temporary copies behind"
    assert killed_with_records >= 3, "the random delays should often kill a run half-way"
    print(f"kill -9 trials: {KILL_TRIALS}, killed after >= 1 record: {killed_with_records}, finished: {completed_runs}")


@pytest.mark.parametrize(("signum", "expected", "name"), [
    (signal.SIGINT, 130, "ctrl_c"),
    # SIGTERM (Slurm's time limit, Kubernetes, systemd) ended fdl at once, without the summary and what it
    # had computed since the last commit; it now stops as Ctrl-C does, with status 143.
    (signal.SIGTERM, 143, "sigterm"),
], ids=["ctrl_c", "sigterm"])
def test_a_signal_exits_with_resume_hint_and_intact_store(
    server: ForkServer, uninterrupted: tuple[list[dict[str, Any]], dict[int, Any]], signum: int, expected: int,
    name: str,
) -> None:
    reference_records, _ = uninterrupted
    by_step = {record["step"]: record for record in reference_records}
    store = server.workdir / f"{name}.h5"
    # The tiny model first (the signal lands anywhere: a forward pass, the statistics, an add); then, if
    # every try finished before the signal, the slow one (0.05 s a forward pass, ~3 s a run, where it
    # lands mostly in the pass's sleep): the tiny run could end before its first record was printed
    # when a loaded machine held the first commit's fsync back (seen once under three other agents' load).
    tries = [(MODEL, delay) for delay in (0.0, 0.05, 0.15)] + [(SLOW_MODEL, delay) for delay in (0.0, 0.15)]
    for model, delay_after_first_record in tries:
        argv = _analyze_argv(store.name, model=model)
        if store.exists():
            store.unlink()
        pid, stdout, stderr = server.start(argv)
        deadline = time.monotonic() + 20
        while not stdout.read_text() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay_after_first_record)
        os.kill(pid, signum)
        status = server.wait(pid)
        message = stderr.read_text()
        printed = _printed(stdout)
        if status == 0 or (status == expected and len(_stored(store)[0]) == N_CHECKPOINTS):
            continue  # it finished before the signal arrived (or as it was printing its summary)
        assert status == expected, message
        assert "Traceback" not in message
        assert "interrupted" in message and "run the same command again to resume" in message
        records, _, warnings = _stored(store)
        assert not warnings and records
        assert {r["step"] for r in printed} <= {r["step"] for r in records}
        assert all(record == by_step[record["step"]] for record in records)
        assert not list(server.workdir.glob(f"{name}.h5.tmp-*"))
        status, _, err = server.run(argv)
        assert status == 0, err
        assert _stored(store)[0] == reference_records
        return
    pytest.fail(f"every run finished before the signal ({name}) reached it; the run is too short to test")


def test_report_reads_while_watch_writes_and_a_second_writer_is_refused(server: ForkServer) -> None:
    workdir = server.workdir
    (workdir / "watched").mkdir()
    _write_run(workdir / "watched", range(3))
    argv = _analyze_argv("watched.h5", "--watch", "--poll", "0.1")
    argv[1] = "watched"
    watcher, watch_out, watch_err = server.start(argv)
    try:
        deadline = time.monotonic() + 30
        while len(_printed(watch_out)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_printed(watch_out)) == 3, watch_err.read_text()
        # a second writer is refused, naming the first
        status, out, err = server.run([*argv[:-3], "--overwrite"])
        assert status == 1 and "Traceback" not in err
        assert "being written by another fdl process" in err and f"pid {watcher}" in err
        seen: set[int] = set()
        for step in range(3, 13):
            _write_run(workdir / "watched", range(step, step + 1))
            past = time.time() - 5  # settled: --watch skips files modified in the last poll interval
            os.utime(workdir / "watched" / f"step_{step}.safetensors", (past, past))
            for _ in range(2):
                status, out, err = server.run(["report", "watched.h5", "--format", "json"])
                assert status == 0 and "Traceback" not in err, err
                steps = [record["step"] for record in json.loads(out)]
                assert steps == sorted(steps) and set(steps) >= seen
                seen = set(steps)
                time.sleep(0.03)
        deadline = time.monotonic() + 30
        while len(_printed(watch_out)) < 13 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_printed(watch_out)) == 13, watch_err.read_text()
    finally:
        os.kill(watcher, signal.SIGINT)
        status = server.wait(watcher)
    assert status == 130, watch_err.read_text()
    status, out, err = server.run(["report", "watched.h5", "--format", "json"])
    assert status == 0 and [r["step"] for r in json.loads(out)] == list(range(13))
    # each compared with the one before, as in one run: the checkpoints found at the start were still
    # "being written" (under a second old) at the first poll, and dropped out of the step order there
    assert [r["prev_step"] for r in json.loads(out)] == [None, *range(12)]
    assert [r["step"] for r in _printed(watch_out)] == list(range(13))  # each announced once


_SWALLOWING_MODEL = '''
import os, signal, time
from torch import nn

class _SwallowsCtrlC:
    """A finaliser that is running when Ctrl-C arrives: Python prints "Exception ignored" and goes on."""

    def __del__(self):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)  # the SIGINT interrupts this sleep; its KeyboardInterrupt dies with the finaliser
        except KeyboardInterrupt:
            open(os.path.join(os.path.dirname(__file__), "finaliser.interrupted"), "w").close()
            raise
        finally:
            open(os.path.join(os.path.dirname(__file__), "finaliser.ended"), "w").close()


class Model(nn.Sequential):
    calls = 0

    def forward(self, x):
        Model.calls += 1
        marker = os.path.join(os.path.dirname(__file__), "swallowed.once")
        if Model.calls == 30 and not os.path.exists(marker):  # some checkpoints in (2 batches a pass)
            open(marker, "w").close()  # the resumed run is not interrupted
            _SwallowsCtrlC()
        return super().forward(x)


def make():
    return Model(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
'''


def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_run(
    server: ForkServer, uninterrupted: tuple[list[dict[str, Any]], dict[int, Any]]
) -> None:
    # CI once caught a --watch run that went on after its Ctrl-C: the KeyboardInterrupt was raised
    # inside a garbage-collector callback, where Python only prints it. fdl records every SIGINT and
    # stops at its next checkpoint all the same.
    reference_records, _ = uninterrupted
    by_step = {record["step"]: record for record in reference_records}
    model = server.workdir / "swallowing_model.py"
    model.write_text(_SWALLOWING_MODEL)
    argv = _analyze_argv("swallowed.h5")
    argv[argv.index("--model") + 1] = f"{model}:make"
    status, out, err = server.run(argv)
    # the interrupt was raised in the finaliser (its sleep cut short, not timed: a loaded machine is slow) and
    # swallowed on its way up
    assert (server.workdir / "finaliser.ended").exists() and (server.workdir / "finaliser.interrupted").exists()
    assert status == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted" in err and "run the same command again to resume" in err
    records = _stored(server.workdir / "swallowed.h5")[0]
    assert 0 < len(records) < N_CHECKPOINTS
    assert all(record == by_step[record["step"]] for record in records)
    status, _, err = server.run(argv)
    assert status == 0, err
    assert _stored(server.workdir / "swallowed.h5")[0] == reference_records


def _hanging_checkpoint(path: Path) -> None:
    """A pickled checkpoint whose loading sleeps for ten minutes: a read that hangs (needs --trust-pickle)."""
    import torch

    try:
        from tests.tiny_models import mlp
    except ImportError:  # tests/ is not a package
        from tiny_models import mlp  # type: ignore[no-redef]

    class Hang:
        def __reduce__(self) -> tuple[Any, ...]:
            return (time.sleep, (600,))

    torch.save({"model": mlp(seed=2).state_dict(), "hang": Hang()}, path)


def _ctrl_c_once_announced(server: ForkServer, argv: list[str], steps: list[int]) -> Path:
    """Start `fdl argv`, send Ctrl-C once it has announced `steps` (--json), check it exited 130;
    its stderr file."""
    pid, stdout, stderr = server.start(argv)
    deadline = time.monotonic() + 30
    while len(_printed(stdout)) < len(steps) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [record["step"] for record in _printed(stdout)] == steps, stderr.read_text()
    os.kill(pid, signal.SIGINT)
    assert server.wait(pid, timeout=20) == 130, stderr.read_text()
    return stderr


def test_one_ctrl_c_ends_a_run_whose_checkpoint_read_hangs(server: ForkServer) -> None:
    """The loader thread was a ThreadPoolExecutor's worker, which Python joins at exit: after Ctrl-C
    fdl printed "interrupted" and then waited for the hung read (a second Ctrl-C ended it). What was
    analysed before the hang is in the store and announced, since the wait commits it."""
    workdir = server.workdir
    (workdir / "hangs").mkdir()
    _write_run(workdir / "hangs", range(2))
    _hanging_checkpoint(workdir / "hangs" / "step_2.pt")
    argv = _analyze_argv("hangs.h5", "--trust-pickle")
    argv[1] = "hangs"
    stderr = _ctrl_c_once_announced(server, argv, [0, 1])
    assert "interrupted" in stderr.read_text() and "Traceback" not in stderr.read_text()
    assert [record["step"] for record in _stored(workdir / "hangs.h5")[0]] == [0, 1]


def test_a_reference_retrained_after_a_kill_before_it_was_stored_is_refused(server: ForkServer) -> None:
    """--reference 3 is analysed first but stored in its place in step order: a run stopped while it
    read step 2 (a hung read) left steps 0 and 1 in the store, compared with step 3's file, and step 3
    itself not stored. The old code checked the reference's sha256 only against a stored reference,
    so a resume after step 3 was retrained added it and kept 0 and 1's cka_init against the old file."""
    import shutil

    workdir = server.workdir
    folder = workdir / "retrained"
    folder.mkdir()
    _write_run(folder, range(4))
    (folder / "step_2.safetensors").unlink()
    _hanging_checkpoint(folder / "step_2.pt")
    argv = _analyze_argv("retrained.h5", "--trust-pickle", "--reference", "3")
    argv[1] = "retrained"
    _ctrl_c_once_announced(server, argv, [0, 1])
    store = workdir / "retrained.h5"
    assert [record["step"] for record in _stored(store)[0]] == [0, 1]

    (folder / "step_2.pt").unlink()
    shutil.copy(workdir / "ckpts" / "step_2.safetensors", folder / "step_2.safetensors")
    original = (folder / "step_3.safetensors").read_bytes()
    shutil.copy(workdir / "ckpts" / "step_5.safetensors", folder / "step_3.safetensors")  # "retrained"
    before = store.read_bytes()
    status, out, err = server.run(argv)
    assert status == 1, err
    assert "reference checkpoint (step 3" in err and "changed since it was analysed" in err, err
    assert "--overwrite" in err and "Traceback" not in err and out == ""
    assert store.read_bytes() == before

    # The file the stored checkpoints were compared with, restored: the run completes, and equals one
    # that was never interrupted.
    (folder / "step_3.safetensors").write_bytes(original)
    status, _, err = server.run(argv)
    assert status == 0, err
    status, _, err = server.run([*argv[:7], "whole.h5", *argv[8:]])
    assert status == 0, err
    resumed, whole = _stored(store), _stored(workdir / "whole.h5")
    assert [r["step"] for r in resumed[0]] == [0, 1, 2, 3]
    for got, expected in zip(resumed[0], whole[0], strict=True):
        assert {k: v for k, v in got.items() if k != "path"} == {k: v for k, v in expected.items() if k != "path"}


_STUCK_MODEL = '''
import os, time
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


class Model(nn.Sequential):
    def forward(self, x):
        # The checkpoint the test marked (its first bias 7.0) hangs in its forward pass, as a huge model
        # on the CPU or a hung GPU call would: no add or tick for as long as it lasts. A run started
        # after the test wrote `release` goes through.
        if float(self[0].bias[0]) == 7.0 and not os.path.exists(os.path.join(HERE, "release")):
            open(os.path.join(HERE, "stuck"), "w").close()
            deadline = time.monotonic() + 600
            while not os.path.exists(os.path.join(HERE, "release")) and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().forward(x)


def make():
    return Model(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
'''


def test_checkpoints_analysed_before_a_forward_pass_that_hangs_are_committed_and_survive_kill9(tmp_path: Path) -> None:
    """`fdl analyze` whose model hangs in the forward pass of step 3: steps 0-2, analysed before, were
    held in the writer's buffer for as long as it hung (commits were started only by add/tick, which the
    stuck main thread never reached), and a kill -9 lost them. The writer's scheduler now commits them
    once the throttle's wait (--commit-interval) has passed. A real `python -m fdl_cli` process (a warm
    child, tests/warm.py: its start-up is no part of this), killed with SIGKILL; the same command then
    resumes and finishes."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpts"
    _write_run(folder, range(5))
    marked = folder / "step_3.safetensors"
    weights = load_file(str(marked))
    weights["0.bias"][0] = 7.0
    save_file(weights, str(marked))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    (tmp_path / "stuck_model.py").write_text(_STUCK_MODEL)
    store = tmp_path / "run.h5"
    # --commit-interval 4: steps 0-2 take well under that, so no add reaches a due commit before the
    # hang (the old code then never committed them); the scheduler commits them 4 s after the store opened
    argv = [sys.executable, "-m", "fdl_cli", "analyze", "ckpts", "--model", "stuck_model.py:make",
            "--probe", "probe.npz", "--out", store.name, "--json", "--top-k", "4", "--anchor-size", "16",
            "--batch-size", "16", "--commit-interval", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    stdout, stderr = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = warm.spawn(argv, cwd=tmp_path, stdout=out, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 180  # generous: the whole suite may share the machine's cores
        steps: list[int] = []
        while time.monotonic() < deadline:
            assert process.poll() is None, f"fdl ended ({process.returncode}): {stderr.read_text()}"
            if (tmp_path / "stuck").exists() and store.exists():
                with StoreReader(store) as reader:
                    steps = reader.steps()
                if steps == [0, 1, 2]:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"steps 0-2 were never committed while step 3's forward pass hung (store: {steps})")
        assert process.poll() is None  # still stuck in step 3's forward pass
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.read_text()
    records, _, warnings = _stored(store)  # opens, intact, with the three checkpoints
    assert [record["step"] for record in records] == [0, 1, 2] and warnings == []
    assert [record["prev_step"] for record in records] == [None, 0, 1]

    (tmp_path / "release").touch()
    # the resume is not about a process (no signal, no kill): in this one, without a second `import torch`
    resumed = fdl_in_process(*argv[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [record["step"] for record in _printed(resumed.stdout)] == [3, 4]  # 0-2 were not analysed again
    final, _, warnings = _stored(store)
    assert [record["step"] for record in final] == [0, 1, 2, 3, 4] and warnings == []
    assert final[:3] == records and final[3]["prev_step"] == 2
    assert not list(tmp_path.glob("run.h5.tmp-*"))
