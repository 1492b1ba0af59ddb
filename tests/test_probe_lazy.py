"""Probe inputs read in place (probes.RowReader): the same values, checks and analysis as reading the
whole array, with only the rows of a batch in memory (issue #6 (c): memory flat in n)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fdl_cli import probes
from fdl_cli.errors import ProbeError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.probes import RowReader, load_probe, row_range
from fdl_cli.store import StoreReader
from tests.tiny_models import mlp

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 5)).astype(np.float32)
Y = RNG.integers(0, 3, size=300)


def _formats(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("plain.npz", "packed.npz", "flat.h5", "chunked.h5", "t.safetensors")}
    np.savez(paths["plain.npz"], x=x, y=y)
    np.savez_compressed(paths["packed.npz"], x=x, y=y)
    with h5py.File(paths["flat.h5"], "w") as handle:
        handle["x"], handle["y"] = x, y
    with h5py.File(paths["chunked.h5"], "w") as handle:
        handle.create_dataset("x", data=x, chunks=True, compression="gzip")
        handle["y"] = y
    save_file({"x": np.ascontiguousarray(x), "y": y.astype(np.int64)}, str(paths["t.safetensors"]))
    return paths


def test_in_place_where_the_format_allows_with_the_same_values(tmp_path: Path) -> None:
    lazy = {"plain.npz", "flat.h5", "t.safetensors"}
    for name, path in _formats(tmp_path, X, Y).items():
        probe = load_probe(path)
        assert isinstance(probe.x, RowReader) == (name in lazy), name
        assert probe.x.shape == X.shape and probe.x.dtype == np.float32 and probe.x.ndim == 2 and probe.n == 300
        np.testing.assert_array_equal(np.asarray(probe.x), X)
        np.testing.assert_array_equal(probe.x[17:123], X[17:123])
        np.testing.assert_array_equal(probe.x[290:400], X[290:])  # slices clip like numpy's
        np.testing.assert_array_equal(probe.y, Y)
        view = row_range(probe.x, 100, 250)
        assert view.shape == (150, 5)
        np.testing.assert_array_equal(view[10:20], X[110:120])


def test_dtypes_and_shapes_as_when_read_whole(tmp_path: Path) -> None:
    cases = {
        "column": RNG.normal(size=50),  # 1-D float -> (n, 1) float32... float64 stays float64
        "half": RNG.normal(size=(40, 3)).astype(np.float16),
        "tokens": RNG.integers(0, 1000, size=(30, 7)).astype(np.int32),
        "images": RNG.normal(size=(20, 3, 4, 4)).astype(np.float32),
    }
    for name, x in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=x)
        np.savez_compressed(tmp_path / f"{name}-whole.npz", x=x)
        lazy, whole = load_probe(tmp_path / f"{name}.npz"), load_probe(tmp_path / f"{name}-whole.npz")
        assert isinstance(lazy.x, RowReader) and not isinstance(whole.x, RowReader), name
        assert lazy.x.shape == whole.x.shape and lazy.x.dtype == whole.x.dtype, name
        np.testing.assert_array_equal(np.asarray(lazy.x), whole.x)
        np.testing.assert_array_equal(lazy.x[3:9], whole.x[3:9])


def test_only_the_rows_asked_for_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "p.npz", x=X, y=Y)
    probe = load_probe(tmp_path / "p.npz")
    sizes: list[int] = []
    real = probes.os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        done = real(fd, buffers, offset)
        sizes.append(done)
        return done

    monkeypatch.setattr(probes.os, "preadv", counting)
    np.testing.assert_array_equal(probe.x[40:72], X[40:72])
    assert sum(sizes) == 32 * 5 * 4  # 32 rows of 5 float32, nothing more
    with pytest.raises(TypeError, match="row ranges"):
        probe.x[::2]


def test_damage_is_found_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "p.npz", x=X, y=Y)
    data = bytearray((tmp_path / "p.npz").read_bytes())
    at = bytes(data).index(X[150].tobytes())
    flipped = bytearray(data)
    flipped[at + 2] ^= 0x40  # a bit of x[150], no format field
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ProbeError, match="cannot read the probe") as info:
        load_probe(tmp_path / "flipped.npz")
    assert "CRC-32" in info.value.message and "fix:" in info.value.message
    bad = X.copy()
    bad[250, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=Y)
    monkeypatch.setattr(probes, "CHUNK_BYTES", 64 * 5 * 4)  # 64 rows a chunk: the index must be global
    with pytest.raises(ProbeError, match=r"NaN or Inf \(first at index \(250, 3\)\)"):
        load_probe(tmp_path / "nan.npz")
    np.savez(tmp_path / "short.npz", x=X, y=Y)
    probe = load_probe(tmp_path / "short.npz")
    (tmp_path / "short.npz").write_bytes(bytes(data[: at - 400]))  # truncated in place after loading
    with pytest.raises(ProbeError, match="changed while fdl was reading it") as changed:
        probe.x[200:300]
    assert "fix:" in changed.value.message


def test_a_probe_replaced_during_a_run_is_not_read_by_mistake(tmp_path: Path) -> None:
    """The file is held open from load: a new file renamed over it leaves the loaded inputs (whose
    sha256 the store records) readable; a rewrite in place is refused."""
    path = tmp_path / "p.npz"
    np.savez(path, x=X, y=Y)
    probe = load_probe(path)
    np.savez(tmp_path / "new.npz", x=X + 1.0, y=Y)
    (tmp_path / "new.npz").replace(path)
    np.testing.assert_array_equal(probe.x[0:50], X[:50])  # still the inputs that were loaded and hashed
    again = load_probe(path)
    np.savez(tmp_path / "same-size.npz", x=X * 2.0, y=Y)
    with open(path, "r+b") as handle:  # rewrite in place, same size
        handle.write((tmp_path / "same-size.npz").read_bytes())
    os.utime(path, ns=(1, 1))
    with pytest.raises(ProbeError, match="changed while fdl was reading it"):
        again.x[0:10]


def test_hdf5_inputs_that_are_not_plain_data_in_the_file_are_read_whole(tmp_path: Path) -> None:
    """A userblock shifts HDF5's addresses and a dataset never written has only a fill value: such
    inputs are read through h5py, never from a computed offset."""
    path = tmp_path / "userblock.h5"
    with h5py.File(path, "w", userblock_size=512) as handle:
        handle.create_dataset("x", shape=(4, 3), dtype="f4", fillvalue=2.5)  # never written
    probe = load_probe(path)
    assert not isinstance(probe.x, RowReader)
    np.testing.assert_array_equal(probe.x, np.full((4, 3), 2.5, dtype=np.float32))
    with h5py.File(tmp_path / "written.h5", "w", userblock_size=512) as handle:
        handle["x"] = X
    written = load_probe(tmp_path / "written.h5")
    assert isinstance(written.x, RowReader)
    np.testing.assert_array_equal(np.asarray(written.x), X)


def test_analysis_is_identical_whether_read_in_place_or_whole(tmp_path: Path) -> None:
    net = mlp(n_in=5, hidden=16, n_out=3, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        state = {k: (v + 0.2 * step * torch.randn(v.shape, generator=generator)).contiguous()
                 for k, v in net.state_dict().items()}
        torch.save(state, run / f"step_{step}.pt")
    paths = _formats(tmp_path, X, Y)
    records = {}
    for name in ("plain.npz", "packed.npz", "flat.h5"):
        out = tmp_path / f"{name}.fdl.h5"
        run_analyze(AnalyzeOptions(
            sources=(str(run),), model_spec="tests.tiny_models:mlp",
            model_kwargs={"n_in": 5, "hidden": 16, "n_out": 3}, probe_specs=(str(paths[name]),), out=out,
            device="cpu", batch_size=64, anchor_size=100,
        ))
        with StoreReader(out) as reader:
            records[name] = [{k: v for k, v in r.items() if k not in ("path",)} for r in reader.records()]
    assert len(records["plain.npz"]) == 3
    assert records["plain.npz"] == records["packed.npz"] == records["flat.h5"]
