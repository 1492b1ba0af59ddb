"""`fdl export --steps`: only the stored steps asked for, in step order, every format and --what."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import fdl_in_process as _fdl  # exit status, stdout, stderr and files only: no fresh interpreter

STORED = [0, 50, 100, 250, 500, 1000]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export_steps") / "run.h5"
    done = _fdl("analyze", "sample_checkpoints", "--steps", ",".join(map(str, STORED)), "-o", path)
    assert done.returncode == 0, done.stderr
    return path


@pytest.mark.parametrize("what", ["trajectories", "eigenvalues", "eigenfunctions"])
def test_csv_rows_are_those_of_the_full_export_at_the_steps_given(store: Path, what: str) -> None:
    full = _fdl("export", store, "--what", what)
    chosen = _fdl("export", store, "--what", what, "--steps", "1000,0,1000")  # order and repeats ignored
    assert full.returncode == 0 and chosen.returncode == 0, chosen.stderr
    full_rows = list(csv.reader(io.StringIO(full.stdout)))
    chosen_rows = list(csv.reader(io.StringIO(chosen.stdout)))
    assert chosen_rows[0] == full_rows[0]
    assert chosen_rows[1:] == [row for row in full_rows[1:] if row[0] in ("0", "1000")]
    assert {row[0] for row in chosen_rows[1:]} == {"0", "1000"}
    assert chosen_rows[1][0] == "0" and chosen_rows[-1][0] == "1000"


def test_json_and_npy_hold_only_the_steps_given(store: Path, tmp_path: Path) -> None:
    done = _fdl("export", store, "--what", "utility", "--format", "json", "--steps", "100,500")
    assert done.returncode == 0, done.stderr
    assert [row["step"] for row in json.loads(done.stdout)] == [100, 500]

    out = tmp_path / "e.npz"
    done = _fdl("export", store, "--what", "eigenvalues", "--format", "npy", "--steps", "250", "-o", out)
    assert done.returncode == 0, done.stderr
    with np.load(out) as archive:
        assert sorted(archive.files) == ["step_250", "steps"]
        assert archive["steps"].tolist() == [250]
        whole = tmp_path / "all.npz"
        assert _fdl("export", store, "--what", "eigenvalues", "--format", "npy", "-o", whole).returncode == 0
        with np.load(whole) as every:
            np.testing.assert_array_equal(archive["step_250"], every["step_250"])

    traj = tmp_path / "t.npz"
    done = _fdl("export", store, "--what", "trajectories", "--format", "npy", "--steps", "0,50", "-o", traj)
    assert done.returncode == 0, done.stderr
    assert "of 2 checkpoints" in done.stderr
    with np.load(traj) as archive:
        assert archive["steps"].tolist() == [0, 50]
        assert archive["d_lr"].shape == (2,)


def test_a_step_not_stored_is_named_and_nothing_is_written(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    done = _fdl("export", store, "--what", "eigenvalues", "--steps", "0,7,8", "-o", out)
    assert done.returncode == 1
    assert "steps 7, 8 are not in" in done.stderr
    assert "stored steps: 0, 50, 100, 250, 500, 1000" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("value", ["", "0,x", "1.5"])
def test_a_malformed_list_is_a_usage_error(store: Path, value: str) -> None:
    done = _fdl("export", store, "--what", "eigenvalues", "--steps", value)
    assert done.returncode == 2
    assert "--steps" in done.stderr and done.stdout == ""
