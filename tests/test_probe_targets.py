"""Regression targets read in place (probes.RowReader), like the inputs: the same checks and messages
at load, only a chunk (at load) or a batch (in the analysis) of them in memory, and stores equal to the
bit to those of targets read whole (the in-memory path, forced here by `_target_dtype` -> None)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from fdl_cli import probes
from fdl_cli.distributed import World
from fdl_cli.errors import ProbeError
from fdl_cli.extract import LayerSpec, extract
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.probes import RowReader, float_one_hot, load_probe, validate_probe
from fdl_cli.sharding import _probe_slice
from tests.tiny_models import mlp

RNG = np.random.default_rng(3)
N = 1001  # batches of 64 do not divide it, and the anchors (100) end inside a batch
X4 = RNG.normal(size=(N, 4)).astype(np.float32)
Y3 = RNG.normal(size=(N, 3)).astype(np.float32)
X1 = np.linspace(-2.0, 2.0, N).astype(np.float32)
Y1 = np.sin(3.0 * X1.astype(np.float64)) + 0.1 * RNG.normal(size=N)


def _save(path: Path, x: np.ndarray, y: Any, *, y_key: str = "y") -> Path:
    """x and y in the format of the suffix, the way people save them (np.savez, h5py, safetensors)."""
    if path.name.endswith(".packed.npz"):
        np.savez_compressed(path, x=x, **{y_key: y})
    elif path.suffix == ".npz":
        np.savez(path, x=x, **{y_key: y})
    elif path.name.endswith(".chunked.h5"):
        with h5py.File(path, "w") as handle:
            handle["x"] = x
            handle.create_dataset(y_key, data=y, chunks=True, compression="gzip")
    elif path.suffix == ".h5":
        with h5py.File(path, "w") as handle:
            handle["x"], handle[y_key] = x, y
    elif path.suffix == ".safetensors":
        save_numpy({"x": np.ascontiguousarray(x), y_key: np.ascontiguousarray(y)}, str(path))
    else:
        torch.save({"x": torch.from_numpy(x), y_key: torch.from_numpy(np.asarray(y))}, path)
    return path


def _whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, float targets are read whole (as before they were read in place)."""
    monkeypatch.setattr(probes, "_target_dtype", lambda stored: None)


IN_PLACE = ("p.npz", "p.h5", "p.safetensors")
WHOLE = ("p.packed.npz", "p.chunked.h5", "p.pt")


@pytest.mark.parametrize("name", IN_PLACE + WHOLE)
def test_float_targets_are_read_in_place_where_the_inputs_are(tmp_path: Path, name: str) -> None:
    for y, key in ((Y3, "y"), (Y1, "targets"), (Y3.astype(np.float16), "Y")):
        path = _save(tmp_path / name, X4, y, y_key=key)
        probe = load_probe(path)
        expected = y.astype(np.float64).reshape(N, -1)
        assert isinstance(probe.y, RowReader) == (name in IN_PLACE), (name, key)
        assert probe.task == "regression" and probe.n_classes is None
        assert probe.y is not None and probe.y.shape == expected.shape and probe.y.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(probe.y), expected)
        np.testing.assert_array_equal(probe.y[990:2000], expected[990:])
        np.testing.assert_array_equal(probes.row_range(probe.y, 10, 20)[2:4], expected[12:14])
        path.unlink()


def test_labels_and_positional_targets(tmp_path: Path) -> None:
    """Integer labels are held, as before; np.savez(path, x, y) reads arr_1 in place as the targets."""
    labels = RNG.integers(0, 3, size=N)
    for name in IN_PLACE:
        probe = load_probe(_save(tmp_path / name, X4, labels))
        assert isinstance(probe.y, np.ndarray) and probe.y.dtype == np.int64 and probe.task == "classes"
        np.testing.assert_array_equal(probe.y, labels)
    np.savez(tmp_path / "positional.npz", X4, Y3)
    probe = load_probe(tmp_path / "positional.npz")
    assert isinstance(probe.x, RowReader) and isinstance(probe.y, RowReader)
    np.testing.assert_array_equal(np.asarray(probe.y), Y3.astype(np.float64))


def _bad_targets() -> dict[str, np.ndarray]:
    nan, inf = RNG.normal(size=(N, 3)), RNG.normal(size=N)
    nan[733, 1] = np.nan
    inf[911] = -np.inf
    return {"nan": nan, "inf": inf, "short": RNG.normal(size=(N - 1, 3)), "cube": RNG.normal(size=(N, 2, 2)),
            "empty": np.zeros((0, 3))}


@pytest.mark.parametrize("name", IN_PLACE)
def test_load_checks_give_the_messages_of_a_whole_read(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN/Inf (with its index in the array as stored, chunks of 10 rows), a length other than x's, a
    3-D y: refused at load with the very message of targets read whole."""
    monkeypatch.setattr(probes, "CHUNK_BYTES", 10 * 3 * 8)
    said: dict[str, list[str]] = {}
    for whole in (False, True):
        if whole:
            _whole(monkeypatch)
        for case, y in _bad_targets().items():
            path = _save(tmp_path / f"{case}-{name}", X4, y)
            with pytest.raises(ProbeError) as info:
                load_probe(path)
            said.setdefault(case, []).append(info.value.message)
    assert "(first at index (733, 1))" in said["nan"][0] and "(first at index (911,))" in said["inf"][0]
    assert f"x has {N} samples but 'y' has shape ({N - 1}, 3)" in said["short"][0]
    assert f"'y' has shape ({N}, 2, 2)" in said["cube"][0]
    for case, (streamed, whole) in said.items():
        assert streamed == whole, case


@pytest.mark.parametrize("name", IN_PLACE)
def test_checks_against_the_model_give_the_answers_of_a_whole_read(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The width against the model's outputs (with the hint for whole numbers), and the float one-hot
    matrix that `fdl analyze` warns about, found in chunks of 7 rows as on the whole array."""
    monkeypatch.setattr(probes, "CHUNK_BYTES", 7 * 3 * 8)
    one_hot = np.eye(3)[RNG.integers(0, 3, size=N)]
    almost = one_hot.copy()
    almost[N - 1] = [0.0, 0.5, 0.5]  # in the last chunk only
    whole_numbers = RNG.integers(0, 5, size=N).astype(np.float32)
    negative = whole_numbers.copy()
    negative[500] = -1.0
    cases = {"one_hot": one_hot, "almost": almost, "whole_numbers": whole_numbers, "negative": negative, "y3": Y3}
    answers: dict[str, list[tuple[bool, list[str]]]] = {}
    for whole in (False, True):
        if whole:
            _whole(monkeypatch)
        for case, y in cases.items():
            probe = load_probe(_save(tmp_path / f"{case}{whole}-{name}", X4, y))
            assert isinstance(probe.y, RowReader) != whole
            messages = []
            for outputs in (1, 2, 3):
                try:
                    validate_probe(probe, n_outputs=outputs)
                    messages.append("ok")
                except ProbeError as exc:
                    messages.append(exc.message.replace(f"{case}{whole}", case))
            answers.setdefault(case, []).append((float_one_hot(probe), messages))
    assert answers["one_hot"][0][0] and not answers["almost"][0][0] and not answers["y3"][0][0]
    assert "float values that are all whole numbers" in answers["whole_numbers"][0][1][1]
    assert "whole numbers" not in answers["negative"][0][1][1] and answers["y3"][0][1][2] == "ok"
    for case, (streamed, whole) in answers.items():
        assert streamed == whole, case


def test_load_holds_one_chunk_of_the_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 MiB of float64 targets checked at load (finite values, one-hot test, width against the model)
    with chunks of 512 KiB: the Python heap's peak stays a small fraction of the targets."""
    monkeypatch.setattr(probes, "CHUNK_BYTES", 512 << 10)
    n, width = 200_000, 10
    y = np.eye(width)[np.arange(n) % width]
    y[-1] = 0.5  # not one-hot in the last chunk only: the one-hot test reads every chunk
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((n, 1), dtype=np.float32), y=y)
    del y
    tracemalloc.start()
    try:
        probe = load_probe(path)
        assert not float_one_hot(probe)
        with pytest.raises(ProbeError, match="10 regression target"):
            validate_probe(probe, n_outputs=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(probe.y, RowReader) and probe.y.shape == (n, width)
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while loading 16 MiB of targets"


def _run(tmp_path: Path, n_in: int, n_out: int) -> Path:
    run = tmp_path / f"run{n_in}-{n_out}"
    run.mkdir()
    start = mlp(n_in=n_in, hidden=8, n_out=n_out, seed=0).state_dict()
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        save_file({k: (v + 0.3 * step * torch.randn(v.shape, generator=generator)).contiguous()
                   for k, v in start.items()}, str(run / f"step_{step * 10}.safetensors"))
    return run


def _analyze(run: Path, probe: Path, out: Path, n_in: int, n_out: int, **options: Any) -> Path:
    run_analyze(AnalyzeOptions(
        sources=(str(run),), model_spec="tests.tiny_models:mlp",
        model_kwargs={"n_in": n_in, "hidden": 8, "n_out": n_out}, probe_specs=(str(probe),), out=out,
        device="cpu", batch_size=64, anchor_size=100, **options,
    ))
    return out


def _contents(path: Path) -> dict[str, Any]:
    """Every attribute (field) and every dataset (dtype, shape and bytes) of a store, but its creation time and
    where and when its checkpoints were computed (the root's `history`, each checkpoint group's index into it:
    a resumed store was computed by two invocations)."""
    found: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:
        def visit(name: str, node: Any) -> None:
            for key, value in node.attrs.items():
                if not (name == "" and key in ("created", "history")
                        or key == "history" and name.startswith("checkpoints/step_") and name.count("/") == 1):
                    found[f"{name}@{key}"] = (
                        (value.dtype.str, value.shape, value.tobytes()) if isinstance(value, np.ndarray) else value
                    )
            if isinstance(node, h5py.Dataset):
                value = node[()]
                found[name] = (value.dtype.str, value.shape,
                               value.tobytes() if value.dtype.kind != "O" else json.dumps(value.tolist(), default=str))
        visit("", handle)
        handle.visititems(visit)
    return found


@pytest.mark.parametrize(
    ("name", "n_in", "n_out"),
    [("p.npz", 4, 3), ("p.safetensors", 4, 3), ("p.h5", 4, 3), ("one-d.npz", 1, 1), ("one-d.h5", 1, 1)],
)
def test_stores_equal_to_the_bit_those_of_targets_read_whole(
    tmp_path: Path, name: str, n_in: int, n_out: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(n, 3) float32 targets, and 1-D (n,) float64 targets of 1-D inputs (whose anchors the store
    keeps, anchor_x and anchor_y), over batches that do not divide n: every field and array of the
    store as when the targets are read whole, and a resumed run's too (the anchors recomputed)."""
    x, y = (X4, Y3) if n_in == 4 else (X1, Y1)
    probe = _save(tmp_path / name, x, y)
    run = _run(tmp_path, n_in, n_out)
    assert isinstance(load_probe(probe).y, RowReader)
    streamed = _analyze(run, probe, tmp_path / "streamed.h5", n_in, n_out)
    resumed = _analyze(run, probe, tmp_path / "resumed.h5", n_in, n_out, steps=(0, 20))
    _analyze(run, probe, resumed, n_in, n_out)
    _whole(monkeypatch)
    assert isinstance(load_probe(probe).y, np.ndarray)
    whole = _analyze(run, probe, tmp_path / "whole.h5", n_in, n_out)
    expected = _contents(whole)
    assert "trajectories/probe/2:input/r2" in expected and "checkpoints/step_10/probe/2:input/quality" in expected
    assert ("probes/probe/anchor_y" in expected) == (n_in == 1)
    assert not np.isnan(np.frombuffer(expected["trajectories/probe/2:input/r2"][2])).any()
    for got in (_contents(streamed), _contents(resumed)):
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            assert got[key] == value, key


def test_extract_reads_the_targets_a_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """extract never reads targets in place whole (np.asarray of the reader): one batch of rows a read."""
    probe = load_probe(_save(tmp_path / "p.npz", X4, Y3))
    assert isinstance(probe.y, RowReader)
    reads: list[tuple[int, int]] = []
    real = RowReader._read

    def recording(self: RowReader, start: int, stop: int) -> np.ndarray:
        if self.stored_shape == Y3.shape:
            reads.append((start, stop))
        return real(self, start, stop)

    def refused(*_args: Any, **_kwargs: Any) -> np.ndarray:
        raise AssertionError("the targets were read whole")

    monkeypatch.setattr(RowReader, "_read", recording)
    monkeypatch.setattr(RowReader, "__array__", refused)
    model = mlp(n_in=4, hidden=8, n_out=3, seed=0)
    layers = [LayerSpec(module="2", use_input=True)]
    results = extract(model, layers, probe.x, probe.y, task="regression", device=torch.device("cpu"),
                      batch_size=64, anchor_size=100)
    assert reads == [(start, min(start + 64, N)) for start in range(0, N, 64)]
    monkeypatch.undo()
    held = extract(model, layers, probe.x, np.asarray(probe.y), task="regression", device=torch.device("cpu"),
                   batch_size=64, anchor_size=100)
    for label, result in results.items():
        moments, other = result.moments, held[label].moments
        for field in ("sum_y", "sum_yy", "sum_fy", "sum_oy", "shift_y"):
            assert np.array_equal(getattr(moments, field), getattr(other, field)), field
        assert moments.sum_y is not None and np.isfinite(moments.sum_yy).all()


def test_shard_probe_slices_the_targets_without_reading_them(tmp_path: Path) -> None:
    """--shard-probe: each rank's slice of targets read in place is a narrower reader (nothing read)."""
    probe = load_probe(_save(tmp_path / "p.npz", X4, Y3))
    for rank in (0, 1):
        x, y = _probe_slice(SimpleNamespace(world=World(rank=rank, size=2)), probe)  # type: ignore[arg-type]
        assert isinstance(x, RowReader) and isinstance(y, RowReader)
        start, stop = (0, 501) if rank == 0 else (501, N)
        assert y.shape == (stop - start, 3) and len(x) == stop - start
        np.testing.assert_array_equal(y[0:stop - start], Y3[start:stop].astype(np.float64))


def test_damaged_or_changed_targets_are_refused(tmp_path: Path) -> None:
    """A flipped bit in y's npz member fails its CRC-32 at load (as np.load's whole read did); targets
    rewritten in place after loading fail the next read, as inputs do."""
    path = _save(tmp_path / "p.npz", X4, Y3)
    data = bytearray(path.read_bytes())
    data[bytes(data).index(Y3[600].tobytes()) + 1] ^= 0x08
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    with pytest.raises(ProbeError, match="cannot read the probe") as info:
        load_probe(tmp_path / "flipped.npz")
    assert "'y' fails its CRC-32 check" in info.value.message
    probe = load_probe(path)
    assert probe.y is not None
    np.testing.assert_array_equal(probe.y[600:601], Y3[600:601].astype(np.float64))
    saved = path.stat().st_mtime_ns
    _save(path, X4, Y3 * 2.0)  # the same size, in place
    # a rewrite comes later than the save it replaces: within one tick of a coarse file clock (Linux takes file
    # times from one, 1-4 ms a tick) both got the same time, and nothing told the rewrite
    os.utime(path, ns=(saved + 10**9, saved + 10**9))
    with pytest.raises(ProbeError, match="changed while fdl was reading it"):
        probe.y[0:64]
