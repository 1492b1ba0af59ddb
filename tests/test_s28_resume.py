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

NOTE = "a constant guess of it scores accuracy 0.8000 and cross_entropy 0.717 (the labels' entropy)"


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


# ------------------------------------------------------------------ docs/store.md's snippet on older stores


def _snippet_and_classify(store, probe):
    """(the snippet's verdict as JSON, warnings and describe lines; `fdl classify --probe PROBE`'s) of the snippet
    run on `store`, whose first series by name is of `probe`."""
    import contextlib
    import io

    from tests.test_s16_python import _snippet

    printed = io.StringIO()
    scope: dict[str, object] = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(_snippet().replace('"sample.fdl.h5"', repr(str(store))), "docs/store.md", "exec"), scope)
    assert scope["probe"] == probe
    args = (store, "--probe", probe, "--threshold", "cka_static=0.98")
    command = fdl_in_process("classify", *args, "--json")
    assert command.returncode == 0, command.stderr
    expected = json.loads(command.stdout)
    for key in ("probe", "layer", "note", "overlap_tie"):
        expected["evidence"].pop(key, None)
    lines = fdl_in_process("classify", *args).stderr.splitlines()

    def parts(lines):  # (the reader's warnings, the lines after the first: describe's)
        warned = [line for line in lines if line.startswith("warning: ")]
        return warned, [line for line in lines if line not in warned][1:]

    verdict = scope["verdict"].as_json()  # type: ignore[attr-defined]
    return (verdict, *parts(printed.getvalue().splitlines())), (expected, *parts(lines))


@pytest.fixture
def two_probes(tmp_path):
    """A store of probes a (80 % class 0) and b (balanced), both of class labels, analysed together."""
    import numpy as np

    ckpts = _run(tmp_path, (0, 10))
    x = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(30) % 4)
    out = tmp_path / "two.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          f"a={tmp_path}/probe.npz", "--probe", f"b={tmp_path}/b.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("stripped", ["a", "b"])
def test_the_snippet_reads_each_probe_s_chance_as_classify_does_when_only_some_record_it(two_probes, stripped):
    import h5py

    with h5py.File(two_probes, "r+") as store:
        for name in ("chance_accuracy", "label_entropy"):
            del store[f"probes/{stripped}"].attrs[name]
    snippet, command = _snippet_and_classify(two_probes, "a")
    assert snippet == command
    assert ("chance_accuracy" in command[0]["evidence"]) == (stripped != "a")
    b = json.loads(fdl_in_process("classify", two_probes, "--probe", "b", "--json").stdout)["evidence"]
    assert b.get("chance_accuracy") == (None if stripped == "b" else pytest.approx(8 / 30))  # classes 0 and 1: 8 of 30


def test_the_snippet_runs_on_a_store_whose_probe_group_is_damaged_as_classify_does(two_probes):
    """A probe group the reader skips (a warning): classify reads its series against 1/C; the snippet's
    `run.probes()[probe]` raised KeyError."""
    import h5py

    with h5py.File(two_probes, "r+") as store:
        del store["probes/a"].attrs["n"]
    snippet, command = _snippet_and_classify(two_probes, "a")
    assert snippet == command
    assert "chance_accuracy" not in command[0]["evidence"]
    assert any("probe /probes/a is damaged and was skipped" in line for line in command[1]), command[1]


def test_a_resume_with_nothing_new_records_the_chance_of_the_probes_that_lack_it_and_keeps_the_others(
        tmp_path, two_probes) -> None:
    import h5py

    def chances():
        with h5py.File(two_probes, "r") as store:
            return {name: dict(store[f"probes/{name}"].attrs) for name in ("a", "b")}

    fresh = chances()
    with h5py.File(two_probes, "r+") as store:
        for name in ("chance_accuracy", "label_entropy"):
            del store["probes/a"].attrs[name]
    done = fdl_in_process("analyze", tmp_path / "ckpts", "--model", f"{tmp_path}/model.py:build", "--probe",
                          f"a={tmp_path}/probe.npz", "--probe", f"b={tmp_path}/b.npz", "-o", two_probes,
                          "--device", "cpu")
    assert done.returncode == 0 and "0 checkpoints analysed, 2 already in the store" in done.stderr, done.stderr
    assert "probe 'a': 32 of 40 labels (80.0 %) are class 0" in done.stderr
    assert chances() == fresh
    for probe, share in (("a", 0.8), ("b", 8 / 30)):
        shown = fdl_in_process("classify", two_probes, "--probe", probe, "--json")
        assert json.loads(shown.stdout)["evidence"]["chance_accuracy"] == pytest.approx(share)


def test_report_export_and_compare_read_an_old_store_as_the_same_store_that_records_the_chance(
        tmp_path, old_store) -> None:
    """The chance is the probe's, no record field: a store without it reports, exports and compares as one with
    it (compare finds no difference and no other probe); only classify reads it."""
    import shutil

    import h5py

    _, old, fresh = old_store
    new = tmp_path / "new" / old.name  # the same name: the commands' lines name the store
    new.parent.mkdir()
    shutil.copyfile(old, new)
    with h5py.File(new, "r+") as store:
        store["probes/probe"].attrs.update(fresh)
    assert _chance(new) == fresh and not _chance(old)
    for args in (("report",), ("report", "--format", "json"), ("report", "--format", "csv"),
                 ("export", "--what", "trajectories", "--format", "csv"),
                 ("export", "--what", "trajectories", "--format", "json")):
        shown = [fdl_in_process(args[0], store, *args[1:]) for store in (old, new)]
        assert [done.returncode for done in shown] == [0, 0], shown[0].stderr + shown[1].stderr
        assert shown[0].stdout.replace(str(old), "STORE") == shown[1].stdout.replace(str(new), "STORE")
        assert shown[0].stderr.replace(str(old), "STORE") == shown[1].stderr.replace(str(new), "STORE")
    compared = fdl_in_process("compare", old, new)
    assert compared.returncode == 0, compared.stderr
    assert "no field differs at any matched step" in compared.stdout + compared.stderr
    assert "warning" not in compared.stderr and "probe" not in compared.stderr, compared.stderr


def test_a_resume_refused_for_a_changed_checkpoint_file_leaves_an_old_store_without_the_chance(
        tmp_path, old_store) -> None:
    """The refusal says the store is left as it is; the chance, committed alone when the writer closed, was written
    by the refused run all the same. The next resume that goes through records it."""
    import hashlib

    import torch

    ckpts, out, fresh = old_store
    weights = torch.load(ckpts / "step_10.pt")
    weights["0.bias"] += 1
    torch.save(weights, ckpts / "step_10.pt")
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")
    assert done.returncode == 1 and "1 checkpoint file changed since it was analysed" in done.stderr, done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu", "--redo", "10")
    assert done.returncode == 0, done.stderr
    assert _chance(out) == fresh
