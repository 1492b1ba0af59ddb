"""Stores written before the probe's chance was recorded (`chance_accuracy`, `label_entropy`), resumed and read.

An old store is made as tests/test_s27_compat.py makes one: written by this code, the two attributes then
deleted with h5py. A resume that finds nothing new to analyse printed analyze's dominant-class note (classify
reads accuracy against the labels' shares) but wrote nothing, so `fdl classify` went on reading 1/C."""

from __future__ import annotations

import json
import os

import pytest

from fdl_cli import store as store_module
from tests.cli_run import fdl_in_process
from tests.test_s27_compat import _analyze, _chance, _make_old, _run

NOTE = "a constant guess of it scores accuracy 0.800 and cross_entropy 0.717 (the labels' entropy)"


def _records(out):
    done = fdl_in_process("report", out, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _evidence(out):
    done = fdl_in_process("classify", out, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["evidence"]


@pytest.fixture
def old_store(tmp_path):
    """(checkpoint folder, store) of two checkpoints, analysed, then stripped of the probe's chance."""
    ckpts = _run(tmp_path, (0, 10))
    out = tmp_path / "run.h5"
    _analyze(tmp_path, ckpts, out)
    fresh = _chance(out)
    _make_old(out)
    return ckpts, out, fresh


def test_a_resume_with_nothing_new_records_the_chance_its_note_promises(tmp_path, old_store) -> None:
    ckpts, out, fresh = old_store
    before = _records(out)
    assert "chance_accuracy" not in _evidence(out)
    done = _analyze(tmp_path, ckpts, out)
    assert "0 checkpoints analysed, 2 already in the store" in done.stderr, done.stderr
    assert NOTE in done.stderr, done.stderr  # the note: classify reads accuracy against 0.800 ...
    assert _chance(out) == fresh  # ... and so it does
    assert _evidence(out)["chance_accuracy"] == pytest.approx(0.8)
    assert _records(out) == before  # nothing stored is lost or changed


def test_a_resume_with_nothing_new_of_a_store_that_records_the_chance_writes_nothing(tmp_path, old_store) -> None:
    """The store is copied and renamed only where there is something to record: once, not at every resume."""
    ckpts, out, _ = old_store
    _analyze(tmp_path, ckpts, out)  # records the chance
    stat = out.stat()
    done = _analyze(tmp_path, ckpts, out)
    assert "0 checkpoints analysed, 2 already in the store" in done.stderr, done.stderr
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_a_refused_write_of_the_chance_is_an_fdl_error_that_leaves_the_store_as_it_was(
        tmp_path, old_store, monkeypatch) -> None:
    """The chance is written as every commit is: a copy of the store, fsynced and renamed over it; a failed one
    says so (exit 1, the store unchanged) and leaves no copy behind."""
    ckpts, out, _ = old_store
    before = _records(out)

    def fail(path, *, directory=False):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(store_module, "_fsync_path", fail)
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    monkeypatch.undo()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"could not write {out} (the store on disk is unchanged)" in done.stderr, done.stderr
    assert _chance(out) == {} and _records(out) == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("run.h5")) == ["run.h5"]


@pytest.mark.parametrize("left", [{"chance_accuracy": 0.8}, {"label_entropy": 0.7}, {"chance_accuracy": 2.0}])
def test_a_probe_that_records_one_of_the_two_gets_both_at_a_resume(tmp_path, old_store, left) -> None:
    """One of the two recorded (a store edited by hand, or one value out of range, which the reader ignores):
    classify's lines read chance from both or from neither, so they read 1/C, while its JSON evidence listed the
    one (chance_accuracy 0.8 beside lines of "chance 1/C = 0.250"); and the resume recorded neither (it filled
    only a probe lacking both), while its note said classify reads against the labels' shares."""
    import h5py

    ckpts, out, fresh = old_store
    with h5py.File(out, "r+") as store:
        store["probes/probe"].attrs.update(left)
    assert "chance_accuracy" not in _evidence(out)
    done = _analyze(tmp_path, ckpts, out)
    assert NOTE in done.stderr, done.stderr
    assert _chance(out) == fresh
    assert _evidence(out)["label_entropy"] == pytest.approx(fresh["label_entropy"])
