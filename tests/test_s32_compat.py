"""Stores written before the thirty-second session, read and resumed by this code (h_s32_compat).

The code at the session's start wrote history rows without `batch_size`, `threads`, `blas_threads`, `numpy_version`
and `probe_files`, and a provenance `environment` without `numpy_version`; every other attribute and array of its
stores is the same (checked by writing one store with each version, a refused step's among them). Here such a store
is made by writing one with this code and deleting those keys with h5py, as tests/test_s27_compat.py does. It reads
as the fresh one does, and a resume adds its checkpoint (no "different run" for the keys it lacks): the old rows
stay as they were, the new row has the keys, and the environment is kept as first recorded.

A store at the layer an earlier default took (`value:input` of an actor-critic) is pinned in test_s32_layer.py (its
store is the one the earlier code writes), a moved run's in test_s32_rev.py and its neighbours."""

from __future__ import annotations

import json

import h5py
import torch

from tests.cli_run import fdl_in_process
from tests.test_s27_compat import _run

NEW_ROW_KEYS = ("batch_size", "threads", "blas_threads", "numpy_version", "probe_files")


def _checkpoint_from(ckpts, source, step, change):
    """step_<step>.pt: the state of step_<source>.pt with `change` applied to its first layer's bias."""
    state = torch.load(ckpts / f"step_{source}.pt")
    change(state["0.bias"])
    torch.save(state, ckpts / f"step_{step}.pt")


def _analyze(tmp_path, ckpts, out):
    return fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe",
                          tmp_path / "probe.npz", "-o", out, "--device", "cpu")


def _make_old(out):
    with h5py.File(out, "r+") as store:
        rows = [{key: value for key, value in row.items() if key not in NEW_ROW_KEYS}
                for row in json.loads(store.attrs["history"])]
        store.attrs["history"] = json.dumps(rows)
        provenance = json.loads(store.attrs["provenance"])
        del provenance["environment"]["numpy_version"]
        store.attrs["provenance"] = json.dumps(provenance, sort_keys=True)


def _recorded(out):
    with h5py.File(out, "r") as store:
        return json.loads(store.attrs["history"]), json.loads(store.attrs["provenance"])["environment"]


def _read(out):
    """What the reading commands give for `out`: each command's exit status, stdout and stderr."""
    runs = [("report", out), ("report", out, "--format", "json"), ("classify", out, "--json"),
            ("compare", out, out, "--json"), ("export", out, "--what", "trajectories")]
    return [(done.returncode, done.stdout, done.stderr) for done in (fdl_in_process(*args) for args in runs)]


def test_a_store_without_this_session_s_history_keys_reads_and_resumes(tmp_path) -> None:
    ckpts = _run(tmp_path, (0, 10))
    _checkpoint_from(ckpts, 10, 20, lambda bias: bias.__setitem__(0, float("nan")))  # refused: a diverged run
    out = tmp_path / "run.h5"
    done = _analyze(tmp_path, ckpts, out)
    assert done.returncode == 1 and "2 checkpoints analysed, 1 failed" in done.stderr, done.stderr  # step 20's NaN
    rows, environment = _recorded(out)
    assert set(NEW_ROW_KEYS) <= set(rows[0]) and "numpy_version" in environment
    fresh = _read(out)
    _make_old(out)
    rows, environment = _recorded(out)
    assert not set(NEW_ROW_KEYS) & set(rows[0]) and "numpy_version" not in environment
    old = _read(out)
    assert old == fresh
    assert all(code == 0 for code, _, _ in old), old
    refused = json.loads(old[3][1])["refused_steps"]  # the refused step, read as before
    assert [item["step"] for item in refused["a"]] == [20] and refused["a"] == refused["b"]

    _checkpoint_from(ckpts, 10, 30, lambda bias: bias.add_(0.5))  # the resume analyses it alone
    done = _analyze(tmp_path, ckpts, out)
    assert done.returncode == 1, done.stderr  # step 20 fails again, as it did
    assert "different run" not in done.stderr
    assert "1 checkpoint analysed, 2 already in the store, 1 failed" in done.stderr, done.stderr
    resumed, kept = _recorded(out)
    assert resumed[0] == rows[0]  # the earlier row as it was written, its keys not made up
    assert set(NEW_ROW_KEYS) <= set(resumed[1]) and resumed[1]["batch_size"] == 512
    assert kept == environment  # the environment of the analyze that created the store, kept as it was
    report = fdl_in_process("report", out)
    assert report.returncode == 0, report.stderr
    assert "computed: all 3 checkpoints on cpu" in report.stdout + report.stderr
