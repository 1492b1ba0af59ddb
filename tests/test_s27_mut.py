"""Mutation testing of session 26's additions (dcp's guarded unpickler and chunk checks, store._inside, errors'
special files, extract's batch checks): each test here kills a mutant that every earlier test let live, and
asserts what the user is told."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from fdl_cli import dcp
from fdl_cli.errors import CheckpointError
from tests.test_s26_rev_dcp import PROTO, _body, _global, _handmade, _metadata_file, _tensors


def _forged(folder: Path, change: Any, chunks: list[tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]] | None = None,
            size: tuple[int, ...] = (4,)) -> str:
    """The error of reading a hand-made DCP folder (one tensor `model.w` and a step) whose metadata `change` forged."""
    metadata = _handmade(folder, "w", torch.float32, size, chunks or [((0,), (4,), torch.arange(4.0))])
    change(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="cannot read the torch.distributed.checkpoint folder") as caught:
        _tensors(folder)
    return " ".join(str(caught.value).split())


def _shard_named(name: str) -> Any:
    def change(metadata: Any) -> None:
        for info in metadata.storage_data.values():
            object.__setattr__(info, "relative_path", name)
    return change


@pytest.mark.parametrize("name", ["../outside.distcp", "/etc/hostname", "..", "sub\\..\\x.distcp"])
def test_a_shard_named_outside_the_folder_is_refused_unread(tmp_path: Path, name: str) -> None:
    """A shard's name is a file of the folder: a path (absolute, or up through ..) would have fdl read another file;
    a backslash is a folder separator where the checkpoint may be read too (Windows)."""
    (tmp_path / "outside.distcp").write_bytes(b"x" * 4096)
    said = _forged(tmp_path / "step-3", _shard_named(name))
    assert f"a shard file name {name!r} outside the folder" in said, said


@pytest.mark.parametrize("field", ["offset", "length"])
def test_a_negative_byte_range_is_refused(tmp_path: Path, field: str) -> None:
    """A length of -1 read the shard to its end (read(-1)); a start of -1 raised the seek's OSError."""
    def change(metadata: Any) -> None:
        for info in metadata.storage_data.values():
            object.__setattr__(info, field, -1)
    said = _forged(tmp_path / "step-3", change)
    assert "a byte range of __0_0.distcp that does not end below 2**63 or is not of non-negative integers" in said, said


def test_an_item_placed_nowhere_is_refused(tmp_path: Path) -> None:
    """A place of no names (planner_data's ()) has no last name to store the item under."""
    said = _forged(tmp_path / "step-3", lambda metadata: metadata.planner_data.__setitem__("model.w", ()))
    assert "the place of model.w is not a sequence of 1 to 64 names and numbers" in said, said


def test_a_non_tensor_item_without_storage_is_named(tmp_path: Path) -> None:
    def change(metadata: Any) -> None:
        del metadata.storage_data[next(index for index in metadata.storage_data if index.fqn == "step")]
    said = _forged(tmp_path / "step-3", change)
    assert "(step has no storage)" in said, said


@pytest.mark.parametrize(("offsets", "sizes", "size"), [((0,), (5,), (4,)), ((1,), (4,), (4,)), ((0,), (2, 2), (2, 2))])
def test_a_chunk_outside_its_tensor_is_refused(tmp_path: Path, offsets: tuple[int, ...], sizes: tuple[int, ...],
                                               size: tuple[int, ...]) -> None:
    """A chunk one element past the tensor's end (a lone chunk of 5 elements was returned as the 4-element tensor
    the metadata declares), or with offsets of fewer dimensions than the tensor."""
    said = _forged(tmp_path / "step-3", lambda metadata: None, [(offsets, sizes, torch.ones(sizes))], size)
    assert (f"a chunk of model.w at {list(offsets)} of size {list(sizes)} lies outside its size {list(size)}"
            in said), said


def test_chunks_cutting_a_tensor_past_the_grid_limit_are_refused(tmp_path: Path) -> None:
    """2100 two-element chunks on the diagonal of a 2100 x 2101 tensor (no grid: their columns overlap, and most
    elements are left out) cut it into 2100 * 2101 (4.4 million) pieces, past the 2**22 that fdl checks piece by
    piece: refused before the grid is allocated. (One-element chunks are a grid's cells, told their gap.)"""
    n = 2100
    chunks = tuple(dcp.Chunk((i, i), (1, 2), "__0_0.distcp", 0, 1) for i in range(n))
    entry = dcp.Entry("model.w", ("model", "w"), torch.float32, (n, n + 1), chunks)
    with pytest.raises(CheckpointError) as caught:
        dcp.check_chunks(tmp_path, [entry])
    said = " ".join(str(caught.value).split())
    assert f"the {n} chunks of model.w cut it into {n * (n + 1)} pieces, a layout fdl does not check" in said, said


def _read(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(CheckpointError) as caught:
        dcp.read_metadata(_metadata_file(tmp_path / "step-1", data))
    return " ".join(str(caught.value).split())


def test_a_torch_size_of_over_64_values_is_refused(tmp_path: Path) -> None:
    size = _global("torch", "Size")
    assert "torch.Size of over 64 values" in _read(tmp_path / "a", PROTO + size + _body(((0,) * 65,)) + b"R.")
    # 64 values are a size: the pickle is refused for what it holds (a tuple), not for the size
    assert "the pickle holds a tuple, not a Metadata" in _read(tmp_path / "b", PROTO + size + _body(((0,) * 64,)) + b"R.")


def test_a_path_is_limited_in_characters_separators_counted(tmp_path: Path) -> None:
    """2048 one-letter parts are 4095 characters with their slashes; 3000 are 5999, over 4096, though their letters
    alone are 3000."""
    path = _global("pathlib", "PosixPath")
    assert "of over 4096 characters" in _read(tmp_path / "a", PROTO + path + _body(("x",) * 3000) + b"R.")
    assert "the pickle holds a str, not a Metadata" in _read(tmp_path / "b", PROTO + path + _body(("x",) * 2048) + b"R.")


def test_a_persistent_id_is_refused(tmp_path: Path) -> None:
    assert "persistent ids are not allowed" in _read(tmp_path, PROTO + b"NQ.")


@pytest.mark.parametrize(("piece", "got"), [(torch.ones(4, dtype=torch.float64), "a torch.float64 tensor of shape [4]"),
                                            (torch.ones(2), "a torch.float32 tensor of shape [2]")])
def test_a_lone_chunk_of_another_dtype_or_shape_is_refused(tmp_path: Path, piece: torch.Tensor, got: str) -> None:
    """A tensor stored whole is one chunk, returned as it loads: unchecked, a float64 or a 2-element one stood for
    the 4-element float32 tensor its metadata declares."""
    said = _forged(tmp_path / "step-3", lambda metadata: None, [((0,), (4,), piece)])
    assert f"holds {got}, not the torch.float32 chunk of shape [4] its .metadata says" in said, said


def test_a_chunk_stored_through_an_extension_is_named_not_read(tmp_path: Path) -> None:
    metadata = _handmade(tmp_path / "step-3", "w", torch.float32, (4,), [((0,), (4,), torch.arange(4.0))])
    for info in metadata.storage_data.values():
        object.__setattr__(info, "transform_descriptors", ["zstd"])
    (tmp_path / "step-3" / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError) as caught:
        _tensors(tmp_path / "step-3")
    said = " ".join(str(caught.value).split())
    assert "it is stored through the extension zstd (compression), which fdl does not read" in said, said
