"""Session 25: `fdl analyze --watch` holds its store from the start, and says what it skips meanwhile (tiny MLPs on
the CPU). Each test failed before its fix:

1. the store's lock was taken once the first checkpoint had been found (the writer opened), so while a watch
   waited for it `fdl report` said "no fdl store" and a second watch (or analyze) of the same --out waited too,
   refused only when that checkpoint came (whichever took the lock first won, possibly the later command);
2. a file skipped mid-watch (an optimizer.pt, a metrics file, a Trainer's tmp-checkpoint-N/) was passed over
   without a word, where a plain `fdl analyze` of the folder notes each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fdl_cli.errors import StoreLockedError
from fdl_cli.store import _WriterLock
from tests import warm
from tests.cli_run import REPO, fdl_in_process
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored
from tests.test_s24_watch import _watch

MODEL = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--anchor-size", "100",
         "--device", "cpu")


def _empty_run(tmp_path: Path) -> tuple[Path, Path]:
    """(a run's checkpoints, the folder a trainer will save them into: its probe alone so far)."""
    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "probe.npz").write_bytes((source / "probe.npz").read_bytes())
    return source, folder


# ------------------------------------------------------------ 1. the store's lock, from the start of the watch


def test_a_watch_holds_its_store_while_it_waits_for_the_first_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the watch waits for a checkpoint, the store is locked (another writer is refused, naming this
    process) and `fdl report` says who writes it; the writer that stores the first checkpoint takes that lock
    over (it was not refused by its own watch), and the lock goes when the watch ends. The store and its lock
    beside the checkpoints (--out in the folder watched) get no "skipped" note."""
    source, folder = _empty_run(tmp_path)
    out = folder / "s.h5"
    seen: dict[str, Any] = {}

    def while_waiting() -> None:
        other = _WriterLock(out)
        try:
            other.acquire()
        except StoreLockedError as exc:
            seen["refused"] = (exc.what, exc.got)
        else:
            other.release()
        seen["report"] = fdl_in_process("report", out)

    with _polls(monkeypatch, while_waiting, lambda: _arrive(source, folder, "step_0.safetensors"),
                lambda: _arrive(source, folder, "step_10.safetensors")):
        summary, reporter = _watch(folder, out)
    assert "refused" in seen, "another writer took the lock while the watch waited"
    assert seen["refused"][0] == f"{out} is being written by another fdl process"
    assert seen["refused"][1].startswith(f"pid {os.getpid()} on host ")
    report = seen["report"]
    assert report.returncode == 1 and report.stdout == ""
    assert report.stderr.startswith(f"error: no checkpoint is stored in {out} yet: it is being written by pid "
                                    f"{os.getpid()}"), report.stderr
    assert summary.interrupted and summary.failed == [] and reporter.errors == []
    assert sorted(_stored(out)) == [0, 10]
    assert not out.with_name("s.h5.lock").exists()
    assert not [note for note in reporter.notes if "s.h5" in note], reporter.notes


@pytest.mark.parametrize("where", [".", "new/deeper"])
def test_a_watch_interrupted_before_its_first_checkpoint_leaves_no_lock_and_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C while the watch waits: no lock file, no store file, nor the folders of --out it made for the lock
    (review h_s25_rev1: left empty); the next watch of the same --out runs."""
    source, folder = _empty_run(tmp_path)
    out = tmp_path / where / "s.h5"
    locked: list[bool] = []

    def look() -> None:
        locked.append(out.with_name("s.h5.lock").exists())

    with _polls(monkeypatch, look), pytest.raises(KeyboardInterrupt):
        _watch(folder, out)
    assert locked == [True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "source"]
    _arrive(source, folder, "step_0.safetensors")
    with _polls(monkeypatch):
        summary, _ = _watch(folder, out)
    assert summary.interrupted and sorted(_stored(out)) == [0]


def _until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout: float = 180) -> None:
    """Wait (generously: a loaded machine imports torch slowly) until `condition` holds, or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the watch ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_second_watch_of_the_same_store_is_refused_at_once_and_a_sigterm_leaves_nothing(tmp_path: Path) -> None:
    """Two processes: a watch waiting for the trainer's first checkpoint holds --out, so a second `fdl analyze
    --watch` of it is refused at once with the lock holder's words (it waited, and was refused only when the
    checkpoint came, if the first watch took the lock before it); `fdl report` names the watch; SIGTERM then
    ends the first (143) leaving no lock file and no empty store behind."""
    _, folder = _empty_run(tmp_path)
    out = tmp_path / "s.h5"
    lock = tmp_path / "s.h5.lock"
    argv = [sys.executable, "-m", "fdl_cli", "analyze", str(folder), *MODEL, "--probe", str(folder / "probe.npz"),
            "--out", str(out), "--watch", "--poll", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = warm.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        _until(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), first, "the lock")
        try:
            second = warm.run(argv, cwd=REPO, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the second watch was not refused: it waited for a checkpoint")
        assert second.returncode == 1, second.stderr
        assert f"error: {out} is being written by another fdl process\n  got: pid {first.pid} on host " \
            in second.stderr, second.stderr
        assert "--watch --poll 0.2` since " in second.stderr
        report = subprocess.run([sys.executable, "-m", "fdl_cli", "report", str(out)], capture_output=True,
                                text=True, cwd=REPO, env=env, timeout=120)
        assert report.returncode == 1
        assert report.stderr.startswith(f"error: no checkpoint is stored in {out} yet: it is being written by pid "
                                        f"{first.pid}"), report.stderr
        assert "fix: wait until it has stored its first checkpoint, then run this again" in report.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()  # never leave a watcher behind
            first.communicate()
    assert first.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "source"]
    after = fdl_in_process("report", out)
    assert after.returncode == 1 and f"error: no fdl store at {out}" in after.stderr


# ----------------------------------------------------------------- 2. files skipped mid-watch, noted once


def test_files_skipped_mid_watch_are_noted_once_each_as_a_plain_analyze_notes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optimizer.pt, a metrics file, a Trainer's unfinished save and a log written while the watch runs: each
    is noted once, in a plain analyze's words, not at every poll (optimizer.pt and metrics.pt are written again
    at the next save); a tmp-checkpoint-N/ renamed before it settled (a save in progress) is not noted; the
    run's own store files (beside the checkpoints here) are not either."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    out = folder / "s.h5"
    metrics = {"losses": torch.randn(5), "accs": torch.rand(5), "epoch": 1}

    def settle(*paths: Path) -> None:
        past = time.time() - 60
        for path in paths:
            os.utime(path, (past, past))

    def save_state() -> None:
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        torch.save(metrics, folder / "metrics.pt")
        (folder / "train.log").write_text("step 20\n")
        (folder / "tmp-checkpoint-30").mkdir()
        (folder / "tmp-checkpoint-40").mkdir()  # being saved: renamed before it settles
        settle(folder / "optimizer.pt", folder / "metrics.pt", folder / "train.log", folder / "tmp-checkpoint-30")
        future = time.time() + 3600  # written "now" on any machine, however slowly the polls come
        os.utime(folder / "tmp-checkpoint-40", (future, future))
        _arrive(source, folder, "step_20.safetensors")

    def save_again() -> None:
        torch.save({"state": {1: {}}, "param_groups": []}, folder / "optimizer.pt")
        torch.save({**metrics, "epoch": 2}, folder / "metrics.pt")
        settle(folder / "optimizer.pt", folder / "metrics.pt")
        (folder / "tmp-checkpoint-40").rename(folder / "done-40")
        _arrive(source, folder, "step_30.safetensors")

    with _polls(monkeypatch, save_state, lambda: None, save_again, lambda: None):
        summary, reporter = _watch(folder, out)
    assert summary.interrupted and summary.failed == [] and reporter.errors == []
    assert sorted(_stored(out)) == [0, 10, 20, 30]
    skipped = [note for note in reporter.notes if note.startswith("skipped")]
    metrics_note = ("skipped metrics.pt: tensors (accs, losses) beside plain values (epoch) that share no name with "
                    "the weights of the run's other checkpoints (0.bias, 0.weight, 2.bias, ...): a training job's "
                    f"metrics or state, not this model's weights; if they are a model's, analyse it alone (fdl analyze "
                    f"{folder / 'metrics.pt'} ...)")
    suffixes = ".pt, .pth, .bin, .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar"
    assert sorted(skipped) == sorted([
        "skipped tmp-checkpoint-30: an unfinished save of a Hugging Face Trainer (renamed checkpoint-30 once "
        "complete), not a checkpoint",
        metrics_note,
        "skipped 1 file of training state (optimizer, scheduler, RNG, arguments), not model weights: optimizer.pt",
        f"skipped 1 file without a checkpoint suffix ({suffixes}): train.log",
    ]), skipped
    # the same words as a plain analyze of the folder as it is now (done-40/ aside, which the watch saw settled
    # last; an empty folder, so no checkpoint either way)
    out.unlink()  # the plain analyze notes a store beside the checkpoints
    plain = fdl_in_process("analyze", folder, *MODEL, "--probe", folder / "probe.npz", "--out", tmp_path / "p.h5")
    assert plain.returncode == 0, plain.stderr
    for note in skipped:
        assert f"note: {note}\n" in plain.stderr, (note, plain.stderr)
