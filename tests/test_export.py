"""`fdl export`: eigenvalues, quality, utility, eigenfunctions and trajectories as csv, json and npz."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl
from tests.test_report import STEPS, make_store, run_fdl


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("export") / "run.h5")


def _stored(store: Path, what: str) -> dict[int, np.ndarray]:
    with StoreReader(store) as reader:
        return {step: np.asarray(getattr(reader.arrays(step), what), dtype=np.float64) for step in reader.steps()}


@pytest.mark.parametrize("what", ["eigenvalues", "quality", "utility"])
def test_csv_and_json_parse_back(store: Path, what: str) -> None:
    expected = _stored(store, what)
    as_csv = run_fdl("export", str(store), "--what", what)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sorted({int(r["step"]) for r in rows}) == sorted(expected) == list(STEPS)  # every step, no other
    for step, values in expected.items():
        got = [float(r[what]) for r in rows if int(r["step"]) == step]
        assert [int(r["k"]) for r in rows if int(r["step"]) == step] == list(range(1, values.size + 1))
        np.testing.assert_array_equal(got, values)
    as_json = run_fdl("export", str(store), "--what", what, "--format", "json")
    parsed = json.loads(as_json.stdout)
    assert [item["step"] for item in parsed] == list(STEPS)
    for item in parsed:
        np.testing.assert_array_equal(item[what], expected[item["step"]])


def test_eigenfunctions_npz_one_array_per_step(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ef.npz"
    result = run_fdl("export", str(store), "--what", "eigenfunctions", "--format", "npy", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    expected = _stored(store, "eigenfunctions")
    with np.load(out) as archive:
        np.testing.assert_array_equal(archive["steps"], STEPS)
        for step in STEPS:
            np.testing.assert_array_equal(archive[f"step_{step}"], expected[step])


def test_trajectories_json_csv_and_npz(store: Path, tmp_path: Path) -> None:
    with StoreReader(store) as reader:
        records = reader.records()
    as_json = json.loads(run_fdl("export", str(store), "--what", "trajectories", "--format", "json").stdout)
    assert as_json["step"] == list(STEPS)
    assert as_json["d_lr"] == [r["d_lr"] for r in records]
    assert as_json["accuracy"] == [None, None, None]
    rows = list(csv.DictReader(io.StringIO(run_fdl("export", str(store), "--what", "trajectories").stdout)))
    assert [float(r["cka_init"]) for r in rows] == [r["cka_init"] for r in records]
    out = tmp_path / "traj.npz"
    run_fdl("export", str(store), "--what", "trajectories", "--format", "npy", "--out", str(out))
    with np.load(out) as archive:
        np.testing.assert_array_equal(archive["d_lr"], [r["d_lr"] for r in records])
        assert np.isnan(archive["accuracy"]).all()
        assert "regime" not in archive


def test_npy_needs_out(store: Path) -> None:
    result = run_fdl("export", str(store), "--what", "eigenvalues", "--format", "npy")
    assert result.returncode == 1 and "--out" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_reports_and_exports_never_write_over_a_store(tmp_path: Path) -> None:
    """`fdl export S.h5 --out S.h5` and `fdl report S.h5 --html S.h5` exited 0 and destroyed the store
    they read. Any HDF5 file is refused as an output now: exit 1, the store intact."""
    import hashlib

    store = make_store(tmp_path / "run.h5")
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    other = make_store(tmp_path / "other.h5")
    for args in (
        ("export", store, "--what", "eigenvalues", "--out", store),
        ("export", store, "--what", "trajectories", "--format", "npy", "--out", store),
        ("export", store, "--what", "trajectories", "--out", other),
        ("report", store, "--html", store),
    ):
        done = fdl(*args)
        assert done.code == 1, (args, done.stderr)
        assert "is an HDF5 file" in done.stderr and "Traceback" not in done.stderr, args
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    with StoreReader(other) as reader:
        assert reader.records()
