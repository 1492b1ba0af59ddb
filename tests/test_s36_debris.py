"""A Ctrl-C that reaches h5py's C code is an interrupt, not damage (CI of stop 40).

A signal's Python handler runs wherever the main thread is, also in Python called from Cython (h5py's
`FastRLock.__exit__`); the interpreter then raises SystemError("... returned a result with an exception
set") with fdl's KeyboardInterrupt as its cause. The store reader caught it as "any failure": a Ctrl-C
during a `--watch` poll ended the run with "error: watched.h5 is damaged" and status 1 (not 130), and a
checkpoint read meanwhile was warned of as damaged, to be redone. Here that debris is made as CPython makes
it (the handler's own KeyboardInterrupt, then a SystemError from it) at each of the reader's h5py reads.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import pytest

from fdl_cli import signals, store
from fdl_cli.errors import StoreError
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.test_report import make_store


def _debris() -> SystemError:
    """What CPython raises when fdl's SIGINT handler ran inside C code that did not look for it."""
    try:
        signals._on_sigint(signal.SIGINT, None)
    except KeyboardInterrupt as exc:
        error = SystemError("<cyfunction FastRLock.__exit__ at 0x7f9ef0835fc0> returned a result with an exception set")
        error.__cause__ = exc
        return error
    raise AssertionError("fdl's handler raised nothing")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_store(tmp_path / "run.h5")


@pytest.fixture(autouse=True)
def _signals_reset() -> Iterator[None]:
    yield
    signals._pending = False
    signals.terminated = False


def _hit_at(monkeypatch: pytest.MonkeyPatch, name: str, error: Callable[[], Exception] = _debris) -> list[str]:
    """The next read of the group or dataset `name` (a path inside the store) meets `error()` (the debris), once."""
    hits: list[str] = []
    get: Callable[..., Any] = h5py.Group._get  # what `group[key]` and `group.get(key)` call

    def reading(self: h5py.Group, key: Any, *args: Any, **kwargs: Any) -> Any:
        found = get(self, key, *args, **kwargs)
        if not hits and getattr(found, "name", None) == name:
            hits.append(name)
            raise error()
        return found

    monkeypatch.setattr(h5py.Group, "_get", reading)
    return hits


# what each read held before: the store said damaged (an error), or a part of it skipped with a warning
_READS = [
    "/probes",  # the probe sets: "probe ... is damaged and was skipped"
    "/probes/train",
    "/trajectories",  # "trajectories ... unreadable: records rebuilt from the checkpoint groups"
    "/trajectories/train/fc1",
    "/checkpoints",  # "... is damaged" (the reader's own error)
]


@pytest.mark.parametrize("name", _READS)
def test_a_ctrl_c_inside_an_h5py_read_of_the_store_is_an_interrupt(
    run: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = _hit_at(monkeypatch, name)
    with pytest.raises(KeyboardInterrupt) as raised:
        StoreReader(run).close()
    assert hits == [name]
    assert isinstance(raised.value, signals.Interrupted) and not isinstance(raised.value, StoreError)
    monkeypatch.undo()
    with StoreReader(run) as reader:  # nothing was written: the store reads whole
        assert reader.warnings == [] and reader.checkpoint_steps() == [0, 100, 200]


def test_a_ctrl_c_inside_the_read_of_a_checkpoint_group_is_no_damage(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the group of step 100 is read where the trajectories are rebuilt from the groups (`_row_from_group`)
    # and where a checkpoint's arrays are read (`arrays`, `array`)
    with StoreReader(run) as reader:
        hits = _hit_at(monkeypatch, "/checkpoints/step_100")
        with pytest.raises(signals.Interrupted):
            reader.arrays(100, probe="train", layer="fc1")
        assert hits == ["/checkpoints/step_100"]
        hits.clear()
        with pytest.raises(signals.Interrupted):
            reader.array(100, "eigenvalues", probe="train", layer="fc1")
        assert hits == ["/checkpoints/step_100"]
        assert reader.warnings == []


def test_the_file_opening_met_by_a_ctrl_c_is_an_interrupt(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def opening(path: Path) -> h5py.File:
        raise _debris()

    monkeypatch.setattr(store, "_open_read_only", opening)
    with pytest.raises(signals.Interrupted):
        StoreReader(run)


def test_fdl_report_interrupted_inside_h5py_says_interrupted_with_130(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hit_at(monkeypatch, "/trajectories")
    done = fdl_in_process("report", run, "--format", "json")
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "interrupted" and "damaged" not in done.stderr
    assert done.stdout == ""


def test_a_system_error_of_no_interrupt_is_still_damage(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def damage() -> SystemError:
        error = SystemError("<cyfunction x> returned a result with an exception set")
        error.__cause__ = ValueError("bad bytes")
        return error

    _hit_at(monkeypatch, "/checkpoints", damage)
    with pytest.raises(StoreError, match="is damaged"):
        StoreReader(run)


def test_through_follows_causes_only() -> None:
    signals.through(ValueError("plain"))  # no interrupt: returns
    context = ValueError("raised while a Ctrl-C was being handled")
    context.__context__ = KeyboardInterrupt()
    signals.through(context)  # an error of its own, met on the way out of a Ctrl-C: said as it is
    deep = RuntimeError("C++ wrapped")
    deep.__cause__ = SystemError("inner")
    deep.__cause__.__cause__ = KeyboardInterrupt()
    with pytest.raises(signals.Interrupted) as raised:
        signals.through(deep)
    assert raised.value.__cause__ is deep
    looped = ValueError("a cycle of causes")
    looped.__cause__ = looped
    signals.through(looped)  # ends


# ------------------------------------------------------------------ the readers of checkpoints and probes

SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def test_a_ctrl_c_inside_a_checkpoint_read_stops_the_run_and_refuses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loaders' "any failure to parse is a damaged file": a checkpoint read when Ctrl-C came was refused as
    damaged, and the store kept it so (`refused`), skipped by every later run."""
    import safetensors.torch

    load_file: Callable[..., Any] = safetensors.torch.load_file
    met: list[str] = []

    def loading(name: str, *args: Any, **kwargs: Any) -> Any:
        if Path(name).name == "step_10.safetensors" and not met:
            met.append(name)
            raise _debris()
        return load_file(name, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", loading)
    from fdl_cli.checkpoints import CheckpointRef, load_checkpoint

    with pytest.raises(signals.Interrupted):  # not "is corrupt or not a checkpoint"
        load_checkpoint(CheckpointRef(path=SAMPLE / "step_10.safetensors", step=10, step_source="name", kind="safetensors"))
    met.clear()
    out = tmp_path / "run.h5"
    stopped = fdl_in_process("analyze", SAMPLE, "-o", out, "--steps", "0,5,10,15")
    assert met and stopped.returncode == 130, stopped.stderr
    assert "damaged" not in stopped.stderr and "corrupt" not in stopped.stderr
    with StoreReader(out) as reader:
        assert reader.refused == [] and 10 not in reader.checkpoint_steps()
    monkeypatch.undo()
    resumed = fdl_in_process("analyze", SAMPLE, "-o", out, "--steps", "0,5,10,15")
    assert resumed.returncode == 0, resumed.stderr
    with StoreReader(out) as reader:
        assert reader.refused == [] and reader.checkpoint_steps() == [0, 5, 10, 15]


def test_a_ctrl_c_inside_a_probe_read_is_no_damaged_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    from fdl_cli import probes

    def reading(*args: Any, **kwargs: Any) -> Any:
        raise _debris()

    monkeypatch.setattr(probes.np, "load", reading)
    with pytest.raises(signals.Interrupted):
        probes.load_probe(SAMPLE / "probe.npz")
