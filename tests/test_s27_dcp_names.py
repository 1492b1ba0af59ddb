"""torch.distributed.checkpoint (DCP) folders, session 27: a name read from a forged `.metadata` (a tensor's, an
extension's), which may be megabytes long and hold a terminal's control characters, is shown in a message by its
first characters and its length, escaped, never whole."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex

from fdl_cli import dcp
from fdl_cli.errors import CheckpointError
from tests.test_s26_dcp import _analyze, _dcp_run
from tests.test_s26_rev_dcp import _handmade, _tensors

LONG = "w\x1b]0;x\x07" + "x" * 2**20  # a megabyte's name, setting the terminal's title (OSC 0 ... BEL)
FQN = f"model.{LONG}"
SHOWN = "model.w\\x1b]0;x\\x07" + "x" * 67  # its first 80 characters, escaped
LENGTH = f"({len(FQN)} characters)"
LINE_LIMIT = 1000  # characters of any line of a message: the name's 80, a few offsets and the words around them


def _storage(metadata: Any) -> tuple[MetadataIndex, _StorageInfo]:
    return next((index, info) for index, info in metadata.storage_data.items() if index.fqn == FQN)


def _no_storage(metadata: Any) -> None:
    del metadata.storage_data[_storage(metadata)[0]]


def _twice_stored(metadata: Any) -> None:
    index, info = _storage(metadata)
    again = MetadataIndex(FQN, (1,))  # hashed apart from the first, then pickled at its offsets
    metadata.storage_data[again] = info
    object.__setattr__(again, "offset", index.offset)


def _extension(metadata: Any) -> None:
    object.__setattr__(_storage(metadata)[1], "transform_descriptors", [LONG])


def _below_the_step(metadata: Any) -> None:
    items = metadata.state_dict_metadata
    metadata.state_dict_metadata = {"step": items["step"], FQN: items[FQN]}
    metadata.planner_data[FQN] = ("step", LONG)


def _past_the_end(metadata: Any) -> None:
    object.__setattr__(_storage(metadata)[1], "length", 2**20)  # the step's bytes follow: the shard ends sooner


WHOLE = [((0,), (4,), torch.arange(4.0))]


@pytest.mark.parametrize(("chunks", "change", "said"), [
    ([*WHOLE, ((2,), (2,), torch.ones(2))], None, f"two chunks of {SHOWN}… {LENGTH} overlap (at [0] and [2])"),
    ([((0,), (2,), torch.ones(2))], None, f"the chunks of {SHOWN}… {LENGTH} hold 2 of its 4 elements"),
    ([((2,), (4,), torch.ones(4))], None, f"a chunk of {SHOWN}… {LENGTH} at [2] of size [4] lies outside its size [4]"),
    ([((0,), (4,), torch.ones(4, dtype=torch.float64))], None,
     f"the chunk of {SHOWN}… {LENGTH} at [0] in __0_0.distcp holds a torch.float64 tensor of shape [4]"),
    (WHOLE, _no_storage, f"the chunk of {SHOWN}… {LENGTH} at [0] has no storage"),
    (WHOLE, _twice_stored, f"two storage entries for the chunk of {SHOWN}… {LENGTH} at [0]"),
    (WHOLE, lambda metadata: metadata.planner_data.__setitem__(FQN, ()),
     f"the place of {SHOWN}… {LENGTH} is not a sequence"),
    (WHOLE, _below_the_step, f"its .metadata places {SHOWN}… {LENGTH} lies below another item"),
    (WHOLE, _extension, f"through the extension w\\x1b]0;x\\x07{'x' * 73}… ({len(LONG)} characters) (compression)"),
    (WHOLE, _past_the_end, f"__0_0.distcp is cut short: {SHOWN}… {LENGTH} lies at bytes"),
], ids=["overlap", "cover", "outside", "dtype", "no-storage", "twice-stored", "place", "below", "extension", "short"])
def test_a_megabyte_name_is_shown_by_its_start_and_length(tmp_path: Path, chunks: Any, change: Any, said: str) -> None:
    """Each error naming a tensor wrote its name whole (or, read from `.metadata`, cut at 300 characters of the
    message, its end lost): a forged name of a megabyte filled the terminal, or the --json error, with it, its
    control characters (an OSC sequence setting the window's title) unescaped."""
    folder = tmp_path / "step-3"
    metadata = _handmade(folder, LONG, torch.float32, (4,), chunks)
    if change is not None:
        change(metadata)
        (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError) as caught:
        _tensors(folder)
    text = str(caught.value)
    assert max(map(len, text.splitlines())) < LINE_LIMIT, text[:2000]
    assert "\x1b" not in text and "\x07" not in text
    assert said in " ".join(text.split()), text[:2000]


def test_a_grid_of_a_megabyte_name_is_shown_by_its_start_and_length(tmp_path: Path) -> None:
    """The layout fdl does not check (more cells than `_cover`'s grid holds) named its tensor whole."""
    n = 2100
    chunks = tuple(dcp.Chunk((i, i), (1, 2), "__0_0.distcp", 0, 1) for i in range(n))
    with pytest.raises(CheckpointError) as caught:
        dcp.check_chunks(tmp_path, [dcp.Entry(FQN, ("model", LONG), torch.float32, (n, n + 1), chunks)])
    text = str(caught.value)
    assert max(map(len, text.splitlines())) < LINE_LIMIT, text[:2000]
    assert f"the {n} chunks of {SHOWN}… {LENGTH} cut it into" in " ".join(text.split()), text[:2000]


def test_fdl_analyze_writes_a_megabyte_name_bounded(tmp_path: Path) -> None:
    """What the user sees: fdl analyze --json on a run whose one step folder holds a tensor of a megabyte's name,
    its chunks overlapping, writes no error line of over a thousand characters, and goes on to the other steps."""
    run = _dcp_run(tmp_path / "run")
    folder = run / "step-10"
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    entry = metadata.state_dict_metadata.pop("model.0.weight")
    entry.chunks.append(entry.chunks[0])
    metadata.state_dict_metadata[FQN] = entry
    for index in list(metadata.storage_data):
        if index.fqn == "model.0.weight":
            metadata.storage_data[MetadataIndex(FQN, index.offset)] = metadata.storage_data.pop(index)
    metadata.planner_data[FQN] = ("model", LONG)
    del metadata.planner_data["model.0.weight"]
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    done = _analyze(run, tmp_path / "a.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert max(map(len, done.stderr.splitlines())) < LINE_LIMIT
    assert f"two chunks of {SHOWN}… {LENGTH} overlap" in " ".join(done.stderr.split()), done.stderr[:2000]
    assert [record["step"] for record in done.records] == [0, 20]
