"""A hostile review of fdl's reader of torch.distributed.checkpoint folders (session 26): `.metadata` pickles written
opcode by opcode or from forged metadata objects must run no code, change nothing in fdl, never hang it and never
make it allocate more than the tensors they declare; forged chunk layouts are refused, never read half-filled."""

from __future__ import annotations

import io
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as torch_dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from fdl_cli import dcp
from fdl_cli.checkpoints import discover_checkpoints, load_checkpoint
from fdl_cli.errors import CheckpointError
from tests.test_analyze import fdl

PROTO = b"\x80\x04"


def _global(module: str, name: str) -> bytes:
    return b"".join(b"\x8c" + bytes([len(text)]) + text.encode() for text in (module, name)) + b"\x93"


def _body(value: Any) -> bytes:
    """`value`'s pickle without its PROTO and STOP: a piece to splice between opcodes."""
    return pickle.dumps(value, 4)[2:-1]


def _tuple_tower(depth: int) -> bytes:
    """A tuple of one tuple twice, that of the one below twice, `depth` times over: small, its hash 2**depth long."""
    out = b"K\x00\x94"
    for level in range(depth):
        out += b"h" + bytes([level]) + b"h" + bytes([level]) + b"\x86\x94"
    return out


def _metadata_file(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(data)
    (folder / "__0_0.distcp").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("data", "said"), [
    (PROTO + _tuple_tower(20) + b"0}h\x14Ns.", "a dict key or set item that is a tuple"),
    (PROTO + _tuple_tower(20) + b"0(h\x14\x91.", "a dict key or set item that is a tuple"),
    (b"\x80\x02\x82\x01.", "extension codes are not allowed"),
    (PROTO + _global("pathlib", "PosixPath") + _body("x" * 60000) + b"0(" + b"h\x00" * 100 + b"tR.",
     "of over 4096 characters"),
    (PROTO + _global("torch", "Size") + b")\x81.", "NEWOBJ of a function, not a record"),
])
def test_a_forged_metadata_pickle_is_refused_before_it_costs_anything(tmp_path: Path, data: bytes, said: str) -> None:
    """A dict key hashing a tower of tuples (at 60 levels high it never finishes: the unpickler hashed it while
    building the dict), an extension code (copyreg's cache is read before find_class), a path joined from one long
    part named a hundred times (each name 2 bytes of the file, 60 kB of text), a NEWOBJ of a function."""
    folder = _metadata_file(tmp_path / "step-1", data)
    with pytest.raises(CheckpointError, match="cannot read the torch.distributed") as caught:
        dcp.read_metadata(folder)
    assert said in str(caught.value)


def test_state_given_to_an_allowed_function_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """BUILD on the function fdl rebuilds torch.Size with set its attributes (`__defaults__`, `__kwdefaults__`) for
    the rest of the process: each checkpoint read after it would have seen fdl's reader changed."""
    before = dcp._size.__defaults__
    data = PROTO + _global("torch", "Size") + _body((None, {"__defaults__": ((7,),)})) + b"b."
    folder = _metadata_file(tmp_path / "step-1", data)
    try:
        with pytest.raises(CheckpointError) as caught:
            dcp.read_metadata(folder)
        assert "state given to a function, not a record" in str(caught.value)
        assert dcp._size.__defaults__ == before == ((),)
    finally:
        dcp._size.__defaults__ = before


# ------------------------------------------------------------------------- forged metadata objects


def _blob(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _handmade(folder: Path, fqn: str, dtype: torch.dtype, size: tuple[int, ...],
              chunks: list[tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]], step: int = 3) -> Metadata:
    """A DCP folder written by hand: one tensor `model.<fqn>` of `chunks` (offsets, sizes, the piece stored) and a
    step, its `.metadata` a pickle of torch's own classes; offsets kept as given (negative ones too)."""
    folder.mkdir(parents=True)
    shard, storage, placed = bytearray(), {}, []
    for offsets, sizes, piece in chunks:
        chunk = ChunkStorageMetadata(offsets=torch.Size(sizes), sizes=torch.Size(sizes))
        object.__setattr__(chunk, "offsets", offsets)
        index = MetadataIndex(f"model.{fqn}")
        object.__setattr__(index, "offset", offsets)
        data = _blob(piece)
        storage[index] = _StorageInfo("__0_0.distcp", len(shard), len(data))
        shard += data
        placed.append(chunk)
    data = _blob(step)
    storage[MetadataIndex("step")] = _StorageInfo("__0_0.distcp", len(shard), len(data))
    shard += data
    metadata = Metadata({f"model.{fqn}": TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(size), placed),
                         "step": BytesStorageMetadata()},
                        planner_data={f"model.{fqn}": ("model", fqn), "step": ("step",)}, storage_data=storage)
    (folder / "__0_0.distcp").write_bytes(bytes(shard))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    return metadata


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    loaded = load_checkpoint(discover_checkpoints([folder]).checkpoints[0], trust_pickle=False)
    assert loaded.state_dict is not None
    return dict(loaded.state_dict)


def test_a_negative_offset_cannot_leave_an_element_unwritten(tmp_path: Path) -> None:
    """Offsets saved as a plain tuple, not torch.Size, went unchecked: a chunk at -4 of a 4-element tensor lies
    within it by the sums checked (-4 + 1 <= 4) and, sliced, writes element 0 again, so that with the element
    count right element 1 was never written: the tensor held whatever memory torch.empty gave it."""
    one = torch.ones(1)
    _handmade(tmp_path / "step-3", "w", torch.float32, (4,), [((-4,), (1,), one), ((0,), (1,), one),
                                                                ((2,), (2,), torch.ones(2))])
    with pytest.raises(CheckpointError) as caught:
        _tensors(tmp_path / "step-3")
    assert "the offset of a chunk of model.w holds values that are not non-negative integers" in str(caught.value)


def test_a_chunk_of_no_elements_overlaps_nothing(tmp_path: Path) -> None:
    """An empty chunk (a rank holding no rows of an unevenly sharded tensor) at an offset inside another chunk was
    said to overlap it when it came first: only the later chunk's emptiness was looked at."""
    _handmade(tmp_path / "step-3", "w", torch.float32, (4,), [((2,), (0,), torch.ones(0)),
                                                              ((0,), (4,), torch.arange(4.0))])
    assert torch.equal(_tensors(tmp_path / "step-3")["w"], torch.arange(4.0))


def test_a_tensor_declared_past_any_memory_is_a_clear_error(tmp_path: Path) -> None:
    """Two chunks, each a one-element tensor expanded (stride 0) to half of a 10**14-element tensor, pass every
    check of shape and coverage in 2 kB of shard; allocating the whole raised torch's RuntimeError."""
    half = torch.ones(1).expand(5 * 10**6, 10**7)
    _handmade(tmp_path / "step-3", "w", torch.float32, (10**7, 10**7),
              [((0, 0), tuple(half.shape), half), ((5 * 10**6, 0), tuple(half.shape), half)])
    with pytest.raises(CheckpointError) as caught:
        _tensors(tmp_path / "step-3")
    said = " ".join(str(caught.value).split())
    assert "declares 100000000000000 elements of torch.float32" in said and "more than this machine" in said, said


def test_a_grid_of_chunks_in_any_order_is_assembled(tmp_path: Path) -> None:
    """Two-dimensional sharding (tensor and data parallel) stores a grid of chunks, listed in any order."""
    whole = torch.arange(6 * 8, dtype=torch.int8).reshape(6, 8)
    cuts = [((r, c), (2, 4), whole[r:r + 2, c:c + 4].clone()) for r in (0, 2, 4) for c in (0, 4)]
    random.Random(0).shuffle(cuts)
    _handmade(tmp_path / "step-3", "w", torch.int8, (6, 8), cuts)
    assert torch.equal(_tensors(tmp_path / "step-3")["w"], whole)


def test_a_shard_that_is_a_named_pipe_says_so(tmp_path: Path) -> None:
    _handmade(tmp_path / "step-3", "w", torch.float32, (4,), [((0,), (4,), torch.arange(4.0))])
    os.unlink(tmp_path / "step-3" / "__0_0.distcp")
    os.mkfifo(tmp_path / "step-3" / "__0_0.distcp")
    with pytest.raises(CheckpointError) as caught:
        _tensors(tmp_path / "step-3")
    assert "the shard __0_0.distcp that its .metadata names is a named pipe (FIFO), not a file" in str(caught.value)


@pytest.mark.parametrize(("forge", "said"), [
    ("float", "the offset of a chunk of model.0.weight holds values that are not non-negative integers"),
    ("deep", "the place of model.0.weight is not a sequence of 1 to 64 names and numbers"),
    ("fqn", "a MetadataIndex's fqn that is a list, not a string"),
])
def test_a_forged_field_is_a_bad_checkpoint_not_a_traceback(tmp_path: Path, forge: str, said: str) -> None:
    """A float offset reached the slicing of the tensor (TypeError); a place 5000 levels deep the rebuilding of
    the dict (RecursionError); an fqn that is a list was turned into text: a list of one list twice, that of the one
    below twice, 40 levels high, written out is more text than any memory holds."""
    from tests.test_s15_formats import MODEL, _probe, _weights

    folder = tmp_path / "run" / "step-1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_dcp.save({"model": _weights(1), "step": 1}, checkpoint_id=str(folder))
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    index = next(index for index in metadata.storage_data if index.fqn == "model.0.weight")
    if forge == "float":
        chunk = metadata.state_dict_metadata["model.0.weight"].chunks[0]
        object.__setattr__(chunk, "offsets", (0.0,) * len(chunk.offsets))
        object.__setattr__(index, "offset", (0.0,) * len(chunk.offsets))
    elif forge == "deep":
        metadata.planner_data["model.0.weight"] = ("model",) * 5000
    else:
        tower: list[Any] = []
        for _ in range(16):  # 2**16 lists written out (40 levels: more text than any memory, fdl killed)
            tower = [tower, tower]
        object.__setattr__(index, "fqn", tower)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    done = fdl("analyze", tmp_path / "run", *MODEL, "--probe", _probe(tmp_path / "probe.pt"), "--out",
               tmp_path / "a.h5", "--device", "cpu", "--json")
    assert done.code == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert said in " ".join(done.stderr.split()), done.stderr
