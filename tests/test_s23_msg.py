"""Session 23's audit of the errors fdl gives: inputs that escaped as a Python traceback (status 1, no word of
what to fix) and are now an error that names what, where and how to fix, each failing before its fix:

- an fdl.toml that is not UTF-8 (UnicodeDecodeError from reading it, before TOML was parsed);
- a Hugging Face shard index whose weight_map is not a table of file names (AttributeError, TypeError);
- --commit-interval / --poll / --dlr-energy nan or inf, which click's FloatRange lets through (a ValueError of
  the store's commit throttle; a scheduler thread's OverflowError; a later error of status 1);
- --model-kwargs nested deeper than Python's JSON parser recurses (RecursionError);
- a path with a NUL byte, on stdin or in fdl.toml (os.stat's ValueError "embedded null byte");
- a safetensors header that is a JSON list (AttributeError: it was checked after its use);
- stdout on a full disk (`fdl report --json > out.json`: OSError);
- WORLD_SIZE/RANK set without MASTER_ADDR/MASTER_PORT (torch's ValueError).

And messages that did not say how to fix: a store's provenance attribute that is damaged, an output file on a
full disk (sent after the folder's permissions).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli_run import REPO
from tests.test_analyze import Result, analyze, fdl, run  # noqa: F401 - `run` is the module's fixture
from tests.test_report import make_store


def _clear(done: Result, *, status: int = 1) -> str:
    """The stderr of a refused command: its status, no traceback; the text to check further."""
    assert done.code == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def _manifest_run(run: Path, tmp_path: Path, manifest: bytes) -> Path:  # noqa: F811 - `run` is the fixture
    folder = tmp_path / "run"
    folder.mkdir()
    for checkpoint in sorted((run / "ckpts").glob("*.pt"))[:2]:
        (folder / checkpoint.name).write_bytes(checkpoint.read_bytes())
    (folder / "fdl.toml").write_bytes(manifest)
    return folder


def test_a_manifest_that_is_not_utf8_is_named_with_the_fix(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _manifest_run(run, tmp_path, b'model = "model.py:build"\n# caf\xe9 (Latin-1)\nprobe = "probe.npz"\n')
    err = _clear(fdl("analyze", folder, "--out", tmp_path / "s.h5"))
    assert f"{folder / 'fdl.toml'} is not UTF-8 text" in err
    assert "line 2" in err  # where: the line of the first byte that is not UTF-8
    assert "fix: save it as UTF-8" in err
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize(("index", "got"), [
    ({"weight_map": ["model.safetensors"]}, "weight_map is a JSON array"),
    ({"weight_map": {"fc.weight": 5}}, "weight_map's 'fc.weight' is 5"),
    ({"weight_map": {"fc.weight": None}}, "weight_map's 'fc.weight' is null"),
])
def test_a_shard_index_whose_weight_map_names_no_files_is_a_clear_error(
        run: Path, tmp_path: Path, index: dict, got: str) -> None:  # noqa: F811
    checkpoint = tmp_path / "runs" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    err = _clear(analyze(run, tmp_path / "s.h5", sources=(str(tmp_path / "runs"),)))
    assert f"cannot read the shard index {checkpoint / 'model.safetensors.index.json'}" in err
    assert f"got: {got}" in err
    assert "a 'weight_map' table of tensor names to shard file names" in err


@pytest.mark.parametrize(("option", "value"), [  # --dlr-energy inf: FloatRange(0, 1) refused it already
    ("--commit-interval", "nan"), ("--commit-interval", "inf"), ("--poll", "nan"), ("--poll", "inf"),
    ("--dlr-energy", "nan"),
])
def test_a_float_option_that_is_not_finite_is_a_usage_error(
        run: Path, tmp_path: Path, option: str, value: str) -> None:  # noqa: F811
    err = _clear(analyze(run, tmp_path / "s.h5", option, value), status=2)
    assert f"Invalid value for '{option}': {value!r} is not a finite number" in err
    assert not (tmp_path / "s.h5").exists()


def test_model_kwargs_nested_too_deep_is_named(run: Path, tmp_path: Path) -> None:  # noqa: F811
    deep = "[" * 100_000 + "]" * 100_000
    err = _clear(analyze(run, tmp_path / "s.h5", "--model-kwargs", deep))
    assert "--model-kwargs is not valid JSON" in err
    assert "nested too deeply" in err
    assert deep not in err  # a 200 kB value is not echoed whole
    assert "fix: e.g." in err


def test_a_nul_byte_in_a_path_on_stdin_is_named(run: Path, tmp_path: Path) -> None:  # noqa: F811
    first = sorted((run / "ckpts").glob("*.pt"))[0]
    done = fdl("analyze", "-", "--model", f"{run}/model.py:build", "--probe", run / "probe.npz",
               "--out", tmp_path / "s.h5", stdin=f"{first}\n{tmp_path}/a\0b.pt\n")
    err = _clear(done)  # a NUL on stdin makes the paths NUL-separated (`find -print0`): this one holds a newline
    assert f"error: no such checkpoint file or folder: {str(first) + chr(10) + str(tmp_path) + '/a'!r}" in err
    assert "got: the paths on stdin hold a NUL byte, so they were read NUL-separated" in err
    assert "fix: give one path a line, with no NUL byte in any (`find ... -print`), or end each with a NUL" in err


def test_a_nul_byte_in_a_manifest_path_is_named(run: Path, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "model.py").write_text((run / "model.py").read_text())
    folder = _manifest_run(run, tmp_path, b'model = "../model.py:build"\nprobe = "pro\\u0000be.npz"\n')
    err = _clear(fdl("analyze", folder, "--out", tmp_path / "s.h5"))
    assert "a NUL byte" in err
    assert "fdl.toml" in err
    assert "fix:" in err


# Messages that said what went wrong but not how to fix it


def test_a_safetensors_header_that_is_not_a_table_says_how_to_fix(tmp_path: Path) -> None:
    header = b"[1]     "
    (tmp_path / "step_1.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    err = _clear(fdl("inspect", tmp_path / "step_1.safetensors"))
    assert f"cannot read the safetensors file {tmp_path / 'step_1.safetensors'}" in err
    assert "got: a header that is not a table" in err
    assert "fix: the file is truncated or not safetensors; re-save or re-download it" in err


@pytest.mark.parametrize(("provenance", "got"), [
    ("{not json", "got: JSONDecodeError: Expecting property name"),
    ("[1]", "got: [1]"),
])
def test_a_store_whose_provenance_is_damaged_names_it_and_the_fix(tmp_path: Path, provenance: str, got: str) -> None:
    store = make_store(tmp_path / "run.h5")
    with h5py.File(store, "a") as handle:
        handle.attrs["provenance"] = provenance
    err = _clear(fdl("report", store))
    assert f"{store} is damaged: its provenance attribute (the model, probes and options it was analysed with) is" in err
    assert got in err
    assert "fix: restore it from a backup, or re-run `fdl analyze ... --overwrite` to rebuild it" in err


# A disk that is full: the output file, and standard output redirected to one

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full (ENOSPC on write) is Linux's")


@needs_dev_full
def test_an_output_file_on_a_full_disk_says_to_free_space(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5")
    err = _clear(fdl("export", store, "--what", "trajectories", "--out", "/dev/full"))
    assert "could not write /dev/full" in err
    assert "got: No space left on device" in err
    assert "fix: free disk space or choose another path" in err


@needs_dev_full
@pytest.mark.parametrize("command", [["report", "--json"], ["export", "--what", "trajectories"]])
def test_stdout_on_a_full_disk_is_an_error_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    store = make_store(tmp_path / "run.h5")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "fdl_cli", command[0], str(store), *command[1:]], cwd=REPO,
                              stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert "error: could not write to stdout: No space left on device" in done.stderr
    assert "fix: send the output where it can be written (`> FILE` on a disk with room" in done.stderr


def test_a_torchrun_environment_without_master_addr_is_named(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    err = _clear(analyze(run, tmp_path / "s.h5"))
    assert "WORLD_SIZE=2 makes this `fdl analyze` rank 0 of a job of 2 processes" in err
    assert "MASTER_ADDR and MASTER_PORT are not set" in err
    assert "fix: start the job with torchrun (torchrun --nproc-per-node 2 -m fdl_cli analyze ...)" in err
    assert "or unset WORLD_SIZE and RANK to run as one process" in err


@pytest.mark.parametrize(("model", "said"), [
    # "callables there: " and nothing, where build is there but no function
    ("build = 5\n", ["has no callable 'build'",
                     "got: 'build' there is an int, not a function or class; callables there: none"]),
    # "got: MemoryError: " and "fix: check --model and --model-kwargs"
    ("def build():\n    raise MemoryError\n", [
        "failed\n  got: MemoryError\n",
        "fix: the model does not fit in this machine's memory: build a smaller one (--model-kwargs), or run on a "
        "machine with more"]),
])
def test_a_model_that_cannot_be_built_says_why(run: Path, tmp_path: Path, model: str, said: list[str]) -> None:  # noqa: F811
    (tmp_path / "model.py").write_text(model)
    err = _clear(fdl("analyze", run / "ckpts", "--model", f"{tmp_path / 'model.py'}:build",
                     "--probe", run / "probe.npz", "--out", tmp_path / "s.h5"))
    for text in said:
        assert text in err


def test_an_hdf5_probe_with_its_arrays_in_a_group_names_the_group(run: Path, tmp_path: Path) -> None:  # noqa: F811
    probe = tmp_path / "probe.h5"
    with h5py.File(probe, "w") as handle:
        handle["train/x"] = np.zeros((6, 4), np.float32)
        handle["train/y"] = np.zeros(6, np.int64)
    done = fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", probe, "--out", tmp_path / "s.h5")
    err = _clear(done)
    assert f"the probe {probe} has no inputs" in err
    assert "got: keys: none at the top level of the file; its groups: train (train/x, train/y)" in err  # was "keys: none"
    assert "fix: store the inputs under one of x, inputs, data, images, X, input_ids" in err
