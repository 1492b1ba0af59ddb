"""Session 26: crafted stores, as a user who downloads someone else's `run.fdl.h5` and reads it (each failing before
its fix):

- a dataset that declares far more data than the file holds (chunks never written, read as the fill value, or a
  "gzip bomb" of zeros): every read allocated it whole, 7.5 GiB for one 10⁹-element dataset of a store of a few
  MB (a MemoryError on a smaller machine, said as damage of a checkpoint, or the machine swapping). Such a dataset
  is refused before it is read, in bounded memory;
- a dataset compressed with an HDF5 filter this HDF5 lacks: "is damaged ... can't open directory
  (/usr/local/lib/plugin)", which named neither the filter nor a fix; it is named now, with HDF5_PLUGIN_PATH;
- a store none of whose checkpoints is intact (every one damaged, or no /checkpoints): "holds no series for "
  (nothing after "for"), "series in the store: none", "pick one of the series listed above", and the warnings
  saying why were never printed. It says now that no checkpoint is intact, and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import pytest

from tests.cli_run import REPO
from tests.test_s25_small import _store

_LEAF = "checkpoints/step_10/train/fc"

#: `python -c` running `fdl ARGV` in an address space of 6 GiB (no test machine allocates a bomb whole), which
#: prints its peak resident memory (kB) last on stderr
_BOUNDED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
sys.argv = ["fdl", *sys.argv[1:]]
try:
    runpy.run_module("fdl_cli", run_name="__main__")
finally:
    sys.stderr.write(f"\\npeak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n")
"""


def _fdl(*argv: object) -> tuple[int, str, str, int]:
    """(exit status, stdout, stderr, peak RSS in MiB) of `fdl ARGV` in its own process, killed after 120 s."""
    done = subprocess.run([sys.executable, "-c", _BOUNDED, *map(str, argv)], capture_output=True, text=True,
                          cwd=REPO, check=False, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    err, _, peak = done.stderr.rpartition("\npeak_rss_kb=")
    return done.returncode, done.stdout, err, int(peak) // 1024


def _replace(handle: h5py.File, name: str, **dataset: object) -> h5py.Dataset:
    del handle[name]
    return handle.create_dataset(name, **dataset)


def _unwritten(handle: h5py.File, name: str) -> None:
    """10⁹ float64 (7.5 GiB) whose chunks were never written: HDF5 reads each as the fill value."""
    _replace(handle, name, shape=(10**9,), dtype="f8", chunks=(1 << 16,), fillvalue=1.0)


def _gzip_bomb(handle: h5py.File, name: str) -> None:
    """10⁹ float64 (7.5 GiB) of zeros in gzip chunks of 128 MiB, each stored as some 130 kB."""
    chunk = 1 << 24
    dataset = _replace(handle, name, shape=(10**9,), dtype="f8", chunks=(chunk,), compression="gzip")
    zeros = zlib.compress(bytes(chunk * 8), 9)
    for start in range(0, 10**9, chunk):
        dataset.id.write_direct_chunk((start,), zeros)


@pytest.mark.parametrize(("where", "make"), [
    (f"{_LEAF}/eigenvalues", _unwritten),
    (f"{_LEAF}/eigenvalues", _gzip_bomb),
    ("trajectories/train/fc/step", _unwritten),  # read at opening, by every command
    ("trajectories/train/fc/d_lr", _gzip_bomb),
])
def test_a_dataset_declaring_far_more_than_the_file_holds_is_refused_in_bounded_memory(
    tmp_path: Path, where: str, make: object
) -> None:
    store = _store(tmp_path / "run.h5")
    with h5py.File(store, "r+") as handle:
        make(handle, where)  # type: ignore[operator]
    assert store.stat().st_size < 20 << 20
    for argv in (["export", store, "--what", "eigenvalues", "--format", "json"], ["report", store, "--json"]):
        code, out, err, peak_mib = _fdl(*argv)
        if where.startswith("checkpoints") and argv[0] == "report":  # the records are in the trajectories
            assert code == 0 and [record["step"] for record in json.loads(out)] == [0, 10, 20], err
            continue
        assert code == 1 and "Traceback" not in err, err
        assert f"error: {store} is not a store as fdl writes one: its /{where} declares 7629.4 MiB of data " \
               "(shape (1000000000,)) but holds " in err
        assert "fdl writes every array whole and uncompressed" in err and "--overwrite" in err
        assert peak_mib < 1024, peak_mib  # not the 7.5 GiB declared


def test_the_size_check_lets_a_store_repacked_with_gzip_read_as_before(tmp_path: Path) -> None:
    store = _store(tmp_path / "run.h5")
    before = _fdl("export", store, "--what", "eigenvalues", "--format", "json")
    with h5py.File(store, "r+") as handle:
        values = handle[f"{_LEAF}/eigenvalues"][()]
        _replace(handle, f"{_LEAF}/eigenvalues", data=values, chunks=True, compression="gzip", compression_opts=9)
    after = _fdl("export", store, "--what", "eigenvalues", "--format", "json")
    assert after[:2] == before[:2] and before[0] == 0 and len(json.loads(before[1])) == 3


def _unknown_filter(handle: h5py.File, name: str) -> None:
    """`name`'s data, as written through the HDF5 filter 307 (bzip2), which h5py does not have."""
    values = handle[name][()]
    dataset = _replace(handle, name, shape=values.shape, dtype=values.dtype, chunks=values.shape, maxshape=(None,),
                       compression=307, allow_unknown_filter=True)
    dataset.id.write_direct_chunk((0,), values.tobytes())


@pytest.mark.parametrize("where", [f"{_LEAF}/eigenvalues", "trajectories/train/fc/d_lr"])
def test_a_filter_this_hdf5_lacks_is_named_with_how_to_read_it(tmp_path: Path, where: str) -> None:
    store = _store(tmp_path / "run.h5")
    with h5py.File(store, "r+") as handle:
        _unknown_filter(handle, where)
    code, _, err, _ = _fdl("export", store, "--what", "eigenvalues", "--format", "csv")
    assert code == 1 and "Traceback" not in err, err
    assert f"error: {store} cannot be read here: its /{where} is compressed with the HDF5 filter 307, which this " \
           "HDF5 does not have" in err
    assert "HDF5_PLUGIN_PATH" in err and "h5repack -f NONE" in err
    assert "plugin)" not in err and "damaged" not in err  # HDF5's "can't open directory (/usr/local/lib/plugin)"


def _every_checkpoint_lacks_its_arrays(handle: h5py.File) -> None:
    for step in handle["checkpoints"]:
        del handle[f"checkpoints/{step}/train/fc/eigenvalues"]


def _no_checkpoints(handle: h5py.File) -> None:
    del handle["checkpoints"], handle["trajectories"]


@pytest.mark.parametrize(("damage", "why"), [
    (_every_checkpoint_lacks_its_arrays,
     "checkpoint step 0 (/checkpoints/step_0) is damaged: skipped; `fdl analyze` will redo it (ValueError: train/fc "
     "lacks the dataset ['eigenvalues']) (and 3 more warnings)"),
    (_no_checkpoints, "{store} has no /checkpoints group: it holds no checkpoints"),
])
@pytest.mark.parametrize("command", [["report"], ["classify"], ["compare", "{store}"],
                                     ["export", "--what", "trajectories"]])
def test_a_store_with_no_intact_checkpoint_says_so_and_why(
    tmp_path: Path, damage: object, why: str, command: list[str]
) -> None:
    store = _store(tmp_path / "run.h5")
    with h5py.File(store, "r+") as handle:
        damage(handle)  # type: ignore[operator]
    code, out, err, _ = _fdl(command[0], store, *(part.format(store=store) for part in command[1:]))
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert err.startswith(f"error: {store} holds no intact checkpoint to read\n  got: {why.format(store=store)}\n"), err
    assert f"fix: run `fdl analyze` on the run's checkpoints with --out {store}" in err
    assert "holds no series for" not in err and "listed above" not in err
