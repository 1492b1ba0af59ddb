"""torch.distributed.checkpoint (DCP) folders, session 27: chunk offsets that all hash alike cost no more to match than
any others; an identical copy of a step's folder is one checkpoint, not two of one step; a `.metadata` too large to
be any save's is refused before it is read; a byte range past its shard is refused before it is allocated."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from fdl_cli import dcp
from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.errors import CheckpointError, SameStepError
from tests.test_s15_formats import _weights
from tests.test_s26_dcp import _analyze, _save

# ------------------------------------------------------------------------ offsets that hash alike

_MASK, _MODULUS = 2**64 - 1, 2**61 - 1  # Python hashes an int below 2**63 as itself modulo 2**61 - 1
_XX1, _XX2, _XX5 = 11400714785074694791, 14029467366897019727, 2870177450012600261  # CPython's tuple hash


def _absorbed(values: tuple[int, ...]) -> int:
    """CPython's tuple hash (xxHash's round over each item's hash) after `values`, before its length is added."""
    acc = _XX5
    for value in values:
        acc = (acc + (value % _MODULUS) * _XX2) & _MASK
        acc = ((((acc << 31) | (acc >> 33)) & _MASK) * _XX1) & _MASK
    return acc


def _colliding(count: int, dims: int) -> list[tuple[int, ...]]:
    """`count` offsets of `dims` values that all hash alike: for each prefix, the last value that brings the hash's
    state to one target (its lane is solved for; one prefix in 8 gives a lane below 2**61 - 1, a hash an int has)."""
    target = (_absorbed((0,) * (dims - 1)) + 0 * _XX2) & _MASK
    inverse = pow(_XX2, -1, 2**64)
    found: list[tuple[int, ...]] = []
    prefix = 0
    while len(found) < count:
        head = (prefix,) * (dims - 1)
        lane = ((target - _absorbed(head)) * inverse) & _MASK
        if lane < _MODULUS:
            found.append((*head, lane))
        prefix += 1
    return found


def _flood(folder: Path, offsets: list[tuple[int, ...]]) -> None:
    """One tensor of chunks at `offsets` (one element each), each stored at its own byte of one shard."""
    folder.mkdir(parents=True)
    storage, chunks = {}, []
    for place, offset in enumerate(offsets):
        index = MetadataIndex("model.w", torch.Size((place,)))  # hashed by torch's dict: not alike
        storage[index] = _StorageInfo("__0_0.distcp", place, 1)
        object.__setattr__(index, "offset", offset)  # pickled as the offsets that hash alike
        chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=torch.Size((1,) * len(offset)))
        chunks.append(chunk)
    size = torch.Size((2**62,) * len(offsets[0]))
    metadata = Metadata({"model.w": TensorStorageMetadata(TensorProperties(dtype=torch.float32), size, chunks)},
                        planner_data={"model.w": ("model", "w")}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    (folder / "__0_0.distcp").write_bytes(bytes(len(offsets)))


@pytest.mark.parametrize("dims", [2, 3])
def test_chunks_whose_offsets_all_hash_alike_are_matched_by_keys_that_do_not(dims: int) -> None:
    """fdl matched each chunk to its byte range in a dict keyed by (name, offsets): keys whose offsets hash alike
    (found in a moment: the tuple hash is xxHash's round, solved for its last item) all hash alike, and each one
    stored or looked up was compared with every one before it. 32 000 such chunks, a 1.2 MB `.metadata`, took
    52 s to read, growing as the square (320 000: some 90 minutes). The key fdl matches them by (`_chunk_key`)
    is text, its hash seeded: 2000 offsets of one hash give 2000 keys of as many hashes."""
    offsets = _colliding(2000, dims)
    assert len(set(offsets)) == 2000 and len({hash(offset) for offset in offsets}) == 1  # the attack is real
    assert len({hash(dcp._chunk_key("model.w", offset)) for offset in offsets}) == 2000


def test_a_flood_of_chunks_whose_offsets_hash_alike_is_a_bad_checkpoint(tmp_path: Path) -> None:
    """Each of 2000 chunks whose offsets hash alike is matched to its own byte range, and the layout they make
    is refused by name, as any layout of that many pieces."""
    offsets = _colliding(2000, 2)
    folder = tmp_path / "step-1"
    _flood(folder, offsets)
    entry = dcp.read_metadata(folder)["model.w"]
    assert [(chunk.offsets, chunk.start) for chunk in entry.chunks] == [(o, i) for i, o in enumerate(offsets)]
    with pytest.raises(CheckpointError, match="the 2000 chunks of model.w cut it into"):
        dcp.check_chunks(folder, [entry])


# ------------------------------------------------------------------------------- one step twice


def _copy_folder(source: Path, target: Path) -> Path:
    """A byte-for-byte copy with new modification times, as `cp -r` without `-p` makes."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for step in (0, 10):
        _save({"model": _weights(step), "step": step}, run / f"step-{step}")
    return run


@pytest.mark.parametrize("how", ["copied", "saved again"])
def test_an_identical_copy_of_a_dcp_folder_is_one_checkpoint(tmp_path: Path, how: str) -> None:
    """Two folders of one step holding the same weights were two checkpoints of one step, an error: a file's
    copy is found identical by its fingerprint (names, shapes, a sample of its bytes) and a full digest. A DCP
    folder's fingerprint is of its tensors' names, sizes, chunks' places and a sample of each chunk's bytes:
    a copy, or the same weights saved again (its `.metadata` names another folder and save), is skipped."""
    run = _run(tmp_path)
    if how == "copied":
        _copy_folder(run / "step-10", run / "step-10-backup")
    else:
        _save({"model": _weights(10), "step": 10}, run / "step-10-backup")
    found = discover_checkpoints([run])
    assert [(ref.step, ref.path.name) for ref in found.checkpoints] == [(0, "step-0"), (10, "step-10")]
    assert "skipped step-10-backup: same weights and step (10) as step-10" in found.notes
    done = _analyze(run, tmp_path / "a.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [0, 10]


def test_two_dcp_folders_of_one_step_and_other_weights_are_an_error(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _save({"model": _weights(11), "step": 10}, run / "step-10-other")
    with pytest.raises(SameStepError, match="two checkpoints have the same step 10"):
        discover_checkpoints([run])


# ------------------------------------------------------------------------------ sizes before reads


def test_a_metadata_larger_than_any_save_writes_is_refused_unread(tmp_path: Path) -> None:
    """`.metadata` was read whole into memory, then unpickled in Python: a file of any size was. One over
    `METADATA_LIMIT` (a sparse file here: nothing is written) is refused by its size, naming it and the limit."""
    run = _run(tmp_path)
    metadata = run / "step-10" / ".metadata"
    os.truncate(metadata, dcp.METADATA_LIMIT + 1)
    with pytest.raises(CheckpointError) as caught:
        dcp.read_metadata(run / "step-10")
    said = " ".join(str(caught.value).split())
    assert f"{metadata} is {dcp.METADATA_LIMIT + 1} bytes, over the {dcp.METADATA_LIMIT} bytes" in said, said
    done = _analyze(run, tmp_path / "a.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert str(metadata) in " ".join(done.stderr.split())
    assert [record["step"] for record in done.records] == [0]


def _forge_range(folder: Path, fqn: str, **change: object) -> None:
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    for index, info in list(metadata.storage_data.items()):
        if index.fqn == fqn:
            metadata.storage_data[index] = dataclasses.replace(info, **change)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


_RANGES: dict[str, tuple[str, dict[str, object], str]] = {
    # read(n) allocates n bytes before reading: a MemoryError traceback, or "ran out of memory: free memory"
    "step length": ("step", {"length": 2**40}, "__0_0.distcp is cut short: step lies at bytes"),
    "tensor length": ("model.0.weight", {"length": 2**40}, "__0_0.distcp is cut short: model.0.weight lies at"),
    # seek past 2**63: "ValueError: cannot fit 'int' into an offset-sized integer", a traceback
    "step offset": ("step", {"offset": 2**100}, "a byte range of __0_0.distcp that does not end below 2**63"),
    # stat() of it: "File name too long", which file unsaid
    "shard name": ("step", {"relative_path": "x" * 300}, "a shard file name of over 255 bytes (xxxxxxxxxx"),
}


@pytest.mark.parametrize("forged", list(_RANGES))
def test_a_byte_range_past_its_shard_is_refused_before_it_is_read(tmp_path: Path, forged: str) -> None:
    """A forged length or offset, or a shard name no file can have, is refused by what it is, before fdl reads,
    seeks or stats anything."""
    fqn, change, said = _RANGES[forged]
    run = _run(tmp_path)
    _forge_range(run / "step-10", fqn, **change)
    done = _analyze(run, tmp_path / "a.h5")
    text = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in done.stderr, text[-2000:]
    assert said in text and "ran out of memory" not in text, text[-2000:]
    assert [record["step"] for record in done.records] == [0]
