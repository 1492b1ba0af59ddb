"""`fdl compare`'s cross-run overlap on two probes of the same inputs and different labels (a label-shuffle
control, docs/findings.md §2): the store records a sha256 of the probe's inputs alone (x_sha256), and compare
takes two such probes as one for the overlap, with a note; different inputs, or a store lacking x_sha256
(where only the same file is taken as the same probe), are refused as before."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli import report
from fdl_cli.probes import load_probe
from tests.cli_run import fdl_in_process
from tests.test_s21_zero import _analyze, _checkpoints, _probe

NOTE = report.SAME_INPUTS_NOTE


def test_the_inputs_digest_ignores_the_labels_and_the_file_format(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(50) % 3)  # read in place, a chunk at a time
    np.savez_compressed(tmp_path / "b.npz", x=x, y=np.arange(50)[::-1] % 3)  # read whole
    a, b = load_probe(tmp_path / "a.npz"), load_probe(tmp_path / "b.npz")
    assert a.sha256 != b.sha256 and len(a.x_sha256) == 64
    assert a.x_sha256 == b.x_sha256
    np.savez(tmp_path / "c.npz", x=x.astype(np.float64), y=np.arange(50) % 3)  # the same values, another dtype
    np.savez(tmp_path / "d.npz", x=x.reshape(50, 2, 2), y=np.arange(50) % 3)  # another shape
    assert load_probe(tmp_path / "c.npz").x_sha256 != a.x_sha256
    assert load_probe(tmp_path / "d.npz").x_sha256 != a.x_sha256


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of one checkpoints folder: probes of true labels, shuffled labels, and other inputs."""
    folder = tmp_path_factory.mktemp("xsha")
    checkpoints = _checkpoints(folder / "ck", steps=2)
    labels = np.arange(50) % 3
    probes = {
        "true": _probe(folder / "true.npz", labels),
        "shuffled": _probe(folder / "shuffled.npz", np.random.default_rng(1).permutation(labels)),
    }
    other = folder / "other.npz"
    np.savez(other, x=np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32), y=labels)
    probes["other"] = other
    out = {}
    for name, probe in probes.items():
        done = _analyze(checkpoints, probe, folder / f"{name}.h5")
        assert done.returncode == 0, done.stderr
        out[name] = folder / f"{name}.h5"
    return out


def _compare(a: Path, b: Path) -> tuple[int, str, str]:
    done = fdl_in_process("compare", a, b, "--format", "json")
    return done.returncode, done.stdout, done.stderr


def test_probes_of_the_same_inputs_and_other_labels_give_the_overlap_with_a_note(stores: dict[str, Path]) -> None:
    with h5py.File(stores["true"], "r") as f, h5py.File(stores["shuffled"], "r") as g:
        assert f["probes/probe"].attrs["sha256"] != g["probes/probe"].attrs["sha256"]
        assert f["probes/probe"].attrs["x_sha256"] == g["probes/probe"].attrs["x_sha256"]
    code, out, err = _compare(stores["true"], stores["shuffled"])
    assert code == 0, err
    data = json.loads(out)
    assert NOTE in data["notes"]
    assert [step["overlap"] for step in data["steps"]] == pytest.approx([1.0, 1.0], abs=1e-9)  # same checkpoints
    text = fdl_in_process("compare", stores["true"], stores["shuffled"])
    assert text.returncode == 0 and f"note: {NOTE}" in text.stdout + text.stderr
    same = json.loads(_compare(stores["true"], stores["true"])[1])
    assert NOTE not in same["notes"]  # the same file: nothing to say


def test_probes_of_other_inputs_are_refused(stores: dict[str, Path]) -> None:
    code, _, err = _compare(stores["true"], stores["other"])
    assert code == 1 and "Traceback" not in err
    assert "not analysed on the same probe inputs" in err and "the inputs' sha256 differ too" in err
    assert "--no-overlap" in err


def test_a_store_lacking_the_inputs_sha256_keeps_the_same_file_rule(stores: dict[str, Path], tmp_path: Path) -> None:
    lacking = tmp_path / "lacking.h5"
    lacking.write_bytes(stores["shuffled"].read_bytes())
    with h5py.File(lacking, "r+") as f:
        del f["probes/probe"].attrs["x_sha256"]
    assert report.load_run(lacking).probes["probe"].x_sha256 is None
    code, _, err = _compare(stores["true"], lacking)
    assert code == 1 and "Traceback" not in err
    assert f"{lacking} records no sha256 of the probe's inputs alone (x_sha256)" in err
    same_file = tmp_path / "same_file.h5"
    same_file.write_bytes(stores["true"].read_bytes())
    with h5py.File(same_file, "r+") as f:
        del f["probes/probe"].attrs["x_sha256"]
    code, out, err = _compare(stores["true"], same_file)  # the same file: compared as before, without the note
    assert code == 0, err
    assert NOTE not in json.loads(out)["notes"]
