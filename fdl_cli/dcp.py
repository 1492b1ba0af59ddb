"""torch.distributed.checkpoint (DCP) folders, read without running their code.

FSDP, FSDP2 and torchtitan save a checkpoint as a folder: `.metadata` (a pickle of
torch.distributed.checkpoint's metadata classes) beside `__<rank>_<n>.distcp` files holding each item at a
byte range. fdl reads `.metadata` with an unpickler of its own that knows only the few names such a pickle
uses (`_ALLOWED`), rebuilt as plain records (`_Record`): it never imports or calls torch's classes, and any
other name is refused without running it. Each tensor chunk is a `torch.save` archive, loaded by fdl's
restricted loader (`torch.load(weights_only=True)`); the chunks are checked to cover each tensor exactly once,
then copied into it. A non-tensor item (a step, a learning rate, a dataloader's state) is a `torch.save`
archive too: loaded by the same restricted loader, or left out (`ItemNotRead`) where it pickles an object.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import math
import os
import pickle
import pickletools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from fdl_cli import signals
from fdl_cli.errors import (
    NAME_SHOWN,
    CheckpointError,
    UnsafeCheckpointError,
    first_few,
    first_line,
    shown_name,
    special_file,
)

METADATA = ".metadata"
SHARD_SUFFIX = ".distcp"
#: The largest `.metadata` read. torch 2.13 pickles 140 to 160 bytes a chunk: a model of 10 000 tensors, with
#: Adam's two states, sharded over 64 ranks writes 262 MiB (over 8 ranks, 37 MiB); this is twice that. fdl's
#: unpickler, in Python, holds about 21 times the file in memory while it reads (a 37 MiB file: 0.8 GiB, 30 s)
METADATA_LIMIT = 512 * 2**20
_MODULE = "torch.distributed.checkpoint.metadata"
_RECORD_NAMES = (
    f"{_MODULE}.Metadata", f"{_MODULE}.TensorStorageMetadata", f"{_MODULE}.ChunkStorageMetadata",
    f"{_MODULE}.TensorProperties", f"{_MODULE}.BytesStorageMetadata", f"{_MODULE}.MetadataIndex",
    f"{_MODULE}.StorageMeta", "torch.distributed.checkpoint.filesystem._StorageInfo",
)
_TRUST_NOTE = "fdl reads a DCP folder's .metadata without running code, whatever --trust-pickle says"


class _Record:
    """One object of the metadata pickle: the name of its class and the state the pickle gave it, nothing more
    (no method of torch's class runs). Made by NEWOBJ with no arguments, given its state once by BUILD."""

    __slots__ = ("state",)
    name = ""
    state: Any

    def __new__(cls, *args: Any) -> _Record:
        if args:
            raise pickle.UnpicklingError(f"{cls.name} built with arguments")
        record = object.__new__(cls)
        record.state = None
        return record

    def __setstate__(self, state: Any) -> None:
        if self.state is not None:
            raise pickle.UnpicklingError(f"{self.name} given its state twice")
        self.state = state

    def field(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default) if isinstance(self.state, dict) else default


_RECORDS = {name: type(name.rsplit(".", 1)[1], (_Record,), {"__slots__": (), "name": name}) for name in _RECORD_NAMES}


_DIMS_LIMIT = 64  # values of a torch.Size: its copy is kept, and one call of it is 7 bytes of the pickle
_COUNT_LIMIT = 2**63  # a tensor's size or offset is below it (torch's int64): a larger one is not written out


def _is_count(value: Any) -> bool:
    """A size or offset, or an item's place in a list: an int from 0 to 2**63, which is written out in a message
    in a few digits and hashes alike to at most 3 others (ints a multiple of 2**61 - 1 apart)."""
    return type(value) is int and 0 <= value < _COUNT_LIMIT


def _size(values: Any = ()) -> tuple[int, ...]:
    """torch.Size as the pickle rebuilds it (REDUCE with a tuple of ints): a tuple of non-negative ints."""
    if not isinstance(values, (tuple, list)) or len(values) > _DIMS_LIMIT:
        raise pickle.UnpicklingError(f"torch.Size of over {_DIMS_LIMIT} values, or of no tuple")
    if not all(map(_is_count, values)):
        raise pickle.UnpicklingError("torch.Size of values that are not non-negative integers below 2**63")
    return tuple(values)


def _name_only(value: Any = None, *more: Any) -> str:
    """A layout (`_get_layout('torch.strided')`), a memory format's code or a path: kept as text, never used."""
    if more or not isinstance(value, (str, int)) or isinstance(value, bool):
        raise pickle.UnpicklingError("a name rebuilt from something other than one string or number")
    return str(value)


#: What a dict key or a set's item of the metadata may be: hashed in constant time or by its own length (a tuple
#: hashes its items, and a tuple built of one tuple twice, itself built so 60 times, never finishes hashing), and
#: unlike any other key but by chance (str and bytes hash with a secret seed; an int below 2**63 hashes alike to at
#: most 3 others; floats and larger ints are left out: keys k * (2**61 - 1) all hash alike, and a dict of n of them
#: takes n**2 / 2 comparisons to build)
_KEY_TYPES = (str, bytes, bool, type(None))
_PATH_LIMIT = 4096  # characters of a path rebuilt from parts: one part named again and again is no longer a path


def _path_text(*parts: Any) -> str:
    """A path's text, its parts' and their separators' characters counted (a path of many empty parts is all
    separators)."""
    if (len(parts) > _PATH_LIMIT or not all(type(part) is str for part in parts)
            or sum(map(len, parts)) + len(parts) - 1 > _PATH_LIMIT):
        raise pickle.UnpicklingError(f"a path of parts that are not strings, or of over {_PATH_LIMIT} characters")
    return "/".join(parts)


_CALLABLES: dict[str, Callable[..., Any]] = {
    "torch.Size": _size,
    "torch.serialization._get_layout": _name_only,
    f"{_MODULE}._MEM_FORMAT_ENCODING": _name_only,
    **{f"pathlib.{kind}": _path_text for kind in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")},
    **{f"pathlib._local.{kind}": _path_text for kind in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")},
}
_DTYPES = {f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


#: Python's own unpickler, written in Python: private, but `import torch` needs it too (torch.package subclasses it),
#: so a Python without it runs no fdl at all. Its opcodes' methods are not in typeshed.
_PYTHON_UNPICKLER: Any = pickle._Unpickler
#: The opcodes of protocols 0 to 4, all a metadata pickle uses: protocol 5's out-of-band buffers are not (its
#: BYTEARRAY8 allocates the length it declares before reading it), nor any opcode of a later protocol
_OPCODES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_KNOWN_OPCODES = {op.code.encode("latin-1")[0] for op in pickletools.opcodes if op.proto <= 4}


class _Opcodes(dict):  # type: ignore[type-arg]
    def __missing__(self, code: int) -> Any:
        raise pickle.UnpicklingError(f"opcode {_OPCODES.get(code, hex(code))} is not allowed")


def _key_allowed(key: Any) -> bool:
    return type(key) in _KEY_TYPES or _is_count(key) or isinstance(key, _Record)


class _MetadataUnpickler(_PYTHON_UNPICKLER):  # type: ignore[misc]
    """Knows the metadata classes (as `_Record`s), torch.Size, dtypes, layouts and paths, and nothing else.

    Python's own unpickler, so that the opcodes that could do more than build a record are checked: BUILD sets a
    record's state only (on fdl's functions it would set their attributes), NEWOBJ makes records only, a dict key
    or a set's item (and PUT's memo index) is a string, an int from 0 to 2**63 or a record (a nested tuple's hash
    can take for ever, keys hashed alike quadratic time), the extension registry (`copyreg`'s, whose cache is read
    before `find_class`) is not used, and protocol 5's out-of-band buffers are not read."""

    dispatch = _Opcodes({code: load for code, load in _PYTHON_UNPICKLER.dispatch.items() if code in _KNOWN_OPCODES})

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.refused: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        found = _RECORDS.get(full) or _CALLABLES.get(full) or _DTYPES.get(full)
        if found is None:
            self.refused.append(shown_name(full, 200))
            raise pickle.UnpicklingError(f"global {shown_name(full, 200)} is not allowed")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def get_extension(self, code: int) -> None:
        raise pickle.UnpicklingError("extension codes are not allowed")

    def _build(self) -> None:
        state = self.stack.pop()
        if not isinstance(self.stack[-1], _Record):
            raise pickle.UnpicklingError(f"state given to a {type(self.stack[-1]).__name__}, not a record")
        self.stack[-1].__setstate__(state)

    def _newobj(self, kwargs: bool = False) -> None:
        options = self.stack.pop() if kwargs else {}
        args, cls = self.stack.pop(), self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, _Record)) or options:
            raise pickle.UnpicklingError(f"NEWOBJ of a {type(cls).__name__}, not a record")
        self.append(cls(*args))

    def _keys(self, keys: Iterable[Any]) -> None:
        for key in keys:
            if not _key_allowed(key):
                raise pickle.UnpicklingError(f"a dict key or set item that is a {type(key).__name__}"
                                             f"{' over 2**63 or below 0' if type(key) is int else ''}")

    def _put(self) -> None:
        """PUT's memo index is any number its text says: the memo is a dict, keyed alike as a dict of the pickle."""
        index = int(self.readline()[:-1])
        if not _is_count(index):
            raise pickle.UnpicklingError("a memo index that is not a number below 2**63")
        self.memo[index] = self.stack[-1]

    def _dict(self) -> None:
        self._keys(self.stack[::2])  # after MARK the stack holds the marked items only
        _PYTHON_UNPICKLER.load_dict(self)

    def _setitem(self) -> None:
        self._keys(self.stack[-2:-1])
        _PYTHON_UNPICKLER.load_setitem(self)

    def _setitems(self) -> None:
        self._keys(self.stack[::2])  # after MARK the stack holds the marked items only
        _PYTHON_UNPICKLER.load_setitems(self)

    def _additems(self) -> None:
        self._keys(self.stack)
        _PYTHON_UNPICKLER.load_additems(self)

    def _frozenset(self) -> None:
        self._keys(self.stack)
        _PYTHON_UNPICKLER.load_frozenset(self)

    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = lambda self: self._newobj(kwargs=True)
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.ADDITEMS[0]] = _additems
    dispatch[pickle.FROZENSET[0]] = _frozenset
    dispatch[pickle.DICT[0]] = _dict
    dispatch[pickle.PUT[0]] = _put


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor (or a whole non-tensor item: no offsets), at a byte range of a shard."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int
    transforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A tensor (its dtype, its size and its chunks) or, with dtype None, a non-tensor item (one chunk)."""

    fqn: str
    path: tuple[str | int, ...]  # where the item sat in the saved dict: ("model", "fc.weight")
    dtype: torch.dtype | None
    size: tuple[int, ...]
    chunks: tuple[Chunk, ...]


class ItemNotRead:
    """A non-tensor item that pickles an object (a dataloader's state, a config): never unpickled."""

    def __init__(self, fqn: str, reason: str) -> None:
        self.fqn, self.reason = fqn, reason

    def __repr__(self) -> str:
        return f"<{shown_name(self.fqn)}: not read, {self.reason}>"


def is_dcp_folder(folder: Path) -> bool:
    """A torch.distributed.checkpoint folder: a `.metadata` file beside `*.distcp` shards."""
    try:
        return (folder / METADATA).is_file() and any(folder.glob(f"*{SHARD_SUFFIX}"))
    except OSError:
        return False


def dcp_files(folder: Path) -> list[Path]:
    """The files a DCP folder's checkpoint is: its `.metadata` and its shards."""
    return [folder / METADATA, *sorted(folder.glob(f"*{SHARD_SUFFIX}"))]


def bad_folder(folder: Path, got: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read the torch.distributed.checkpoint folder {folder}",
        got=got,
        fix="the folder is damaged or incomplete (a save cut short, or a copy missing files): re-copy it whole, or "
        "leave it out with --glob",
    )


def read_metadata(folder: Path) -> dict[str, Entry]:
    """The items of a DCP folder, by flattened name, from its `.metadata` read without running code."""
    path = folder / METADATA
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > METADATA_LIMIT:
                raise CheckpointError(
                    f"cannot read the torch.distributed.checkpoint folder {folder}",
                    got=f"{path} is {size} bytes, over the {METADATA_LIMIT} bytes ({METADATA_LIMIT // 2**20} MiB) "
                    f"fdl reads of a {METADATA} (which it holds some 20 times over in memory while it reads it)",
                    fix="check that the file is the checkpoint's own (a save writes some 150 bytes a tensor's chunk); "
                    "or convert the folder to one file and analyse that: python -m "
                    f"torch.distributed.checkpoint.format_utils dcp_to_torch {folder} {folder}.pt",
                )
            data = handle.read()
    except OSError as exc:
        raise bad_folder(folder, f"{METADATA}: {exc.strerror or exc}") from None
    unpickler = _MetadataUnpickler(data)
    try:
        root = unpickler.load()
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted unpickler: refused or damaged
        signals.through(exc)  # a Ctrl-C met in C code: not damage
        if unpickler.refused:
            raise UnsafeCheckpointError(
                f"{path}: this DCP metadata names {first_few(unpickler.refused, 3)}, which could run code when "
                "unpickled; fdl refused to read it",
                got="a global beyond torch.distributed.checkpoint's metadata classes",
                fix=f"re-save the checkpoint with torch.distributed.checkpoint.save; {_TRUST_NOTE}",
            ) from None
        raise bad_folder(folder, f"{METADATA} is not a readable pickle ({type(exc).__name__}: {_said(exc)})") from None
    try:
        return _entries(root)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise bad_folder(folder, f"{METADATA} is not torch.distributed.checkpoint's metadata ({_said(exc)})") from None


def _said(exc: BaseException) -> str:
    """An exception's text, cut short: it may quote the pickle (FLOAT's text, a name), megabytes of it. A KeyError's
    own words, not their repr ('step has no storage' in quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return text if len(text) <= 300 else f"{text[:300]}..."


def _records(value: Any, kind: str) -> bool:
    return isinstance(value, _Record) and value.name.endswith(f".{kind}")


_DEPTH_LIMIT = 64  # levels of a saved dict: a place deeper than this is no training loop's
_NAME_LIMIT = 255  # bytes of a file's name (NAME_MAX of Linux's, macOS's and Windows' file systems)


def _kind(value: Any) -> str:
    """What a value of the pickle is, for a message: its type, never its text (a list built of itself many times
    over, written out, has no end)."""
    return value.name.rsplit(".", 1)[1] if isinstance(value, _Record) else type(value).__name__


def _counts(value: Any, what: str) -> tuple[int, ...]:
    """A size or offsets (torch.Size, read by `_size`, or a plain tuple): non-negative ints, or ValueError."""
    if not isinstance(value, tuple):
        raise TypeError(f"{what} is a {_kind(value)}")
    if not all(map(_is_count, value)):
        raise ValueError(f"{what} holds values that are not non-negative integers below 2**63")
    return value


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{what} that is a {_kind(value)}, not a string")
    return value


def _chunk_key(fqn: str, offsets: tuple[int, ...] | None) -> tuple[str, str]:
    """What a chunk's storage is found by: its item's name and its offsets written out. Text, as offsets that are a
    tuple of ints hash by a formula a forged file can solve: for any first values, the last value that brings the
    tuple's hash to one chosen number (one in 8 is below 2**63), so that a dict keyed by them is quadratic to fill.
    A string's hash is seeded afresh in each process."""
    return fqn, repr(offsets)


def _entries(root: Any) -> dict[str, Entry]:
    if not _records(root, "Metadata"):
        raise TypeError(f"the pickle holds a {_kind(root)}, not a Metadata")
    items, storage, paths = root.field("state_dict_metadata"), root.field("storage_data"), root.field("planner_data")
    if not isinstance(items, dict) or not isinstance(storage, dict):
        raise TypeError("no state_dict_metadata and storage_data tables")
    paths = paths if isinstance(paths, dict) else {}
    stored: dict[tuple[str, str], Chunk] = {}
    for index, info in storage.items():
        if not _records(index, "MetadataIndex") or not _records(info, "_StorageInfo"):
            raise TypeError("a storage_data entry that is not a MetadataIndex and its _StorageInfo")
        fqn = _text(index.field("fqn"), "a MetadataIndex's fqn")
        name = shown_name(fqn)  # a forged name may be megabytes long: messages show its start and its length
        offset = index.field("offset")
        offset = None if offset is None else _counts(offset, f"the offset of a chunk of {name}")
        file, start, length = info.field("relative_path"), info.field("offset"), info.field("length")
        if type(file) is not str or "/" in file or "\\" in file or file in ("", ".", ".."):
            shown = _kind(file) if type(file) is not str else repr(file) if len(file) <= NAME_SHOWN else (
                f"{file[:NAME_SHOWN]!r}… ({len(file)} characters)")
            raise ValueError(f"a shard file name {shown} outside the folder")
        if len(file.encode(errors="surrogateescape")) > _NAME_LIMIT:  # stat()ed: "File name too long", unnamed
            raise ValueError(f"a shard file name of over {_NAME_LIMIT} bytes ({shown_name(file, 40)}), which no file "
                             "has")
        # the end too: a start and a length each below 2**63 can end past it, where `fingerprint`'s seek to the
        # chunk's last bytes fails with a bare "Invalid argument" (tests/test_s28_mutgap.py)
        if not (_is_count(start) and _is_count(length) and _is_count(start + length)):
            raise ValueError(f"a byte range of {file} that does not end below 2**63 or is not of non-negative "
                             "integers")
        transforms = info.field("transform_descriptors") or ()
        if not isinstance(transforms, (list, tuple)):
            raise TypeError(f"the transforms of {file} are a {_kind(transforms)}")
        transforms = tuple(_text(name, f"a transform of {file}") for name in transforms)
        key = _chunk_key(fqn, offset)
        if key in stored:  # torch's dict holds one entry a chunk: the later one was read in place of the earlier
            where = name if offset is None else f"the chunk of {name} at {list(offset)}"
            raise ValueError(f"two storage entries for {where}")
        stored[key] = Chunk((), (), file, start, length, transforms)
    out: dict[str, Entry] = {}
    for fqn, item in items.items():
        _text(fqn, "an item named by a key")
        name = shown_name(fqn)
        path = paths.get(fqn, (fqn,))
        if (not isinstance(path, (tuple, list)) or not 0 < len(path) <= _DEPTH_LIMIT
                or not all(type(p) is str or _is_count(p) for p in path)):
            raise TypeError(f"the place of {name} is not a sequence of 1 to {_DEPTH_LIMIT} names and numbers")
        if _records(item, "BytesStorageMetadata"):
            if _chunk_key(fqn, None) not in stored:
                raise KeyError(f"{name} has no storage")
            out[fqn] = Entry(fqn, tuple(path), None, (), (stored[_chunk_key(fqn, None)],))
            continue
        if not _records(item, "TensorStorageMetadata"):
            raise TypeError(f"{name} is described by a {_kind(item)}")
        properties, size, chunks = item.field("properties"), item.field("size"), item.field("chunks")
        dtype = properties.state[0] if _records(properties, "TensorProperties") and isinstance(
            properties.state, tuple) and properties.state else None
        if not isinstance(dtype, torch.dtype) or not isinstance(chunks, list):
            raise TypeError(f"{name} has no dtype, size and chunks")
        size = _counts(size, f"the size of {name}")
        placed = []
        for chunk in chunks:
            if not _records(chunk, "ChunkStorageMetadata"):
                raise TypeError(f"a chunk of {name} is a {_kind(chunk)}")
            offsets = _counts(chunk.field("offsets"), f"the offsets of a chunk of {name}")
            sizes = _counts(chunk.field("sizes"), f"the sizes of a chunk of {name}")
            at = stored.get(_chunk_key(fqn, offsets))
            if at is None:
                raise KeyError(f"the chunk of {name} at {list(offsets)} has no storage")
            placed.append(Chunk(offsets, sizes, at.file, at.start, at.length, at.transforms))
        out[fqn] = Entry(fqn, tuple(path), dtype, size, tuple(placed))
    return out


_CELLS = 1 << 22  # the most pieces `_by_cells` cuts a tensor into, and corners `_corners_cancel` counts, for a layout
# that is no grid (grids, as saves cut, are checked in n log n whatever their size): a layout finer is no save's


def check_chunks(folder: Path, entries: Iterable[Entry]) -> None:
    """Each tensor's chunks lie within it and cover it exactly once, and each shard they name is there."""
    files: set[str] = set()
    for entry in entries:
        files.update(chunk.file for chunk in entry.chunks)
        if entry.dtype is None:
            continue
        for chunk in entry.chunks:
            if len(chunk.offsets) != len(entry.size) or len(chunk.sizes) != len(entry.size) or any(
                    o + s > n for o, s, n in zip(chunk.offsets, chunk.sizes, entry.size, strict=True)):
                raise bad_folder(folder, f"a chunk of {shown_name(entry.fqn)} at {list(chunk.offsets)} of size "
                                   f"{list(chunk.sizes)} lies outside its size {list(entry.size)}")
        _cover(folder, entry)
    odd = [(file, kind) for file in sorted(files) if (kind := special_file(folder / file))]
    if odd:  # opened, a named pipe waits for ever and /dev/zero never ends
        raise bad_folder(folder, f"the shard {odd[0][0]} that its {METADATA} names is {odd[0][1]}, not a file")
    missing = sorted(file for file in files if not (folder / file).is_file())
    if missing:
        raise bad_folder(folder, f"the shard{'s' if len(missing) > 1 else ''} {first_few(missing, 3)} that its "
                           f"{METADATA} names {'are' if len(missing) > 1 else 'is'} not in it")


def _cover(folder: Path, entry: Entry) -> None:
    """The chunks of `entry` (each within it) overlap nowhere and leave no element out, said exactly (no gap or
    overlap let through, no valid layout refused) in time n log n for a save's layouts. A save cuts a tensor into a
    grid: along each dimension the chunks' spans are the pieces of one partition of it, each chunk a cell of their
    product, and the layout is exact when the chunks are as many as the cells and no cell is held twice. Any other
    layout (bricks, pinwheels) is exact when its chunks' signed corners cancel the tensor's (`_corners_cancel`);
    one whose corners do not is damaged, and `_by_cells` tells where."""
    name = shown_name(entry.fqn)
    low, high, kept = _spans(entry.chunks, entry.size)
    chunks = entry.chunks if kept is None else [entry.chunks[index] for index in kept]
    if not chunks:
        if math.prod(entry.size):
            _gap(folder, name, chunks, entry.size)
        return
    cells = np.zeros(len(chunks), dtype=np.int64)  # each chunk's cell of the grid
    bound, grid = 1, 1  # the cells' numbers are below `bound`; the grid has `grid` cells
    loose = []  # the dimensions along which the chunks' spans are no partition: none for a grid
    for d, n in enumerate(entry.size):
        partition = _partition(low[:, d], high[:, d], n)
        if partition is None:
            loose.append(d)
            continue
        pieces, width = partition
        if bound * width >= 2**62:  # numbered afresh, below the chunks' count
            cells = np.unique(cells, return_inverse=True)[1].reshape(-1)
            bound = int(cells.max()) + 1
        cells *= width
        cells += pieces
        bound, grid = bound * width, grid * width
    if loose:
        if not _corners_cancel(cells, grid, low[:, loose], high[:, loose], [entry.size[d] for d in loose]):
            _by_cells(folder, name, chunks, entry.size)
        return
    del low, high
    if len(chunks) == grid and np.bincount(cells, minlength=grid).max() == 1:
        return
    order = np.argsort(cells, kind="stable")
    ranked = cells[order]
    again = order[1:][ranked[1:] == ranked[:-1]]  # chunks in the cell of a chunk before them
    if again.size:  # the first chunk on a cell held before it, and the chunk holding it: the pair chunk by chunk finds
        later = int(again.min())
        _overlap(folder, name, chunks[int(np.flatnonzero(cells == cells[later])[0])], chunks[later])
    _gap(folder, name, chunks, entry.size)


def _spans(chunks: Sequence[Chunk], size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Where each chunk of any elements starts and ends along each dimension (two arrays of a row a chunk, of 4-byte
    integers where the tensor's size allows), and which chunks those are (None: all)."""
    dtype = np.int32 if max(size, default=0) < 2**31 else np.int64
    shape = (len(chunks), len(size))
    low: np.ndarray = np.fromiter(itertools.chain.from_iterable(c.offsets for c in chunks), dtype, math.prod(shape))
    high: np.ndarray = np.fromiter(itertools.chain.from_iterable(c.sizes for c in chunks), dtype, math.prod(shape))
    low, high = low.reshape(shape), high.reshape(shape)
    empty = (high == 0).any(axis=1)
    kept = None
    if empty.any():  # of no elements: nothing to place
        kept = np.flatnonzero(~empty)
        low, high = low[kept], high[kept]
    high += low
    return low, high, kept


def _partition(low: np.ndarray, high: np.ndarray, n: int) -> tuple[np.ndarray, int] | None:
    """Each chunk's piece (numbered in order) and the count of pieces where the chunks' spans [low, high) along a
    dimension of n elements are the pieces of one partition of it: from 0 to n, each piece beginning where the one
    before it ends; else None."""
    starts, piece = np.unique(low, return_inverse=True)  # by one sort: searching 3.5 million starts took 4 times as long
    ends = np.empty_like(starts)
    ends[piece] = high
    if starts[0] != 0 or ends[-1] != n or (ends[:-1] != starts[1:]).any() or (ends[piece] != high).any():
        return None
    return piece, len(starts)


def _corners_cancel(cells: np.ndarray, grid: int, low: np.ndarray, high: np.ndarray, size: list[int]) -> bool:
    """Whether each element of the tensor lies in exactly one chunk, told by corners (False too where there are too
    many to count), given each chunk's cell of the grid that the other dimensions' partitions make (`cells`, of
    `grid`) and its spans along the dimensions that are no partition (`low`, `high`, of `size`). Chunks of two
    cells never meet, and a cell's elements lie in its chunks only: each cell is to be tiled by its chunks along
    those dimensions. Put +1 at each corner of a chunk whose count of upper bounds is even, -1 at each other: a
    chunk's count at an element is the sum of what lies at or below it in every dimension, the layout's the sum
    of its chunks'. As that sum undoes the corners' signs, a cell's chunks count each element once, as a box of
    the cell's size does, exactly when the +1 and -1 of their corners and of that box's (taken the other way)
    fall on the same points as often: no gap or overlap passes, whatever the layout. The corners are 2 to the
    number of those dimensions a chunk (a save's: 1 or 2), sorted: n log n."""
    n = len(cells)
    if grid > n:
        return False  # a cell without chunks: a gap (one with none among fewer is told by its box's corners)
    if (n + grid) << len(size) > max(_CELLS, 16 * n):
        return False
    # each cell's box after the chunks; each point is numbered by its cell, then by its rank among the edges along
    # each dimension
    keys = np.tile(np.concatenate([cells, np.arange(grid)]), (1 << len(size), 1))
    bound = grid
    for bit, whole in enumerate(size):
        edges = np.unique(np.concatenate([low[:, bit], high[:, bit], [0, whole]]))
        starts = np.searchsorted(edges, np.append(low[:, bit], np.zeros(grid, dtype=low.dtype)))
        ends = np.searchsorted(edges, np.append(high[:, bit], np.full(grid, whole, dtype=high.dtype)))
        if bound * len(edges) >= 2**62:  # numbered afresh, below the corners' count
            keys = np.unique(keys, return_inverse=True)[1].reshape(keys.shape)
            bound = int(keys.max()) + 1
        keys *= len(edges)
        for corner, row in enumerate(keys):
            row += ends if corner >> bit & 1 else starts
        bound *= len(edges)
    even = [bin(corner).count("1") % 2 == 0 for corner in range(len(keys))]
    plus = np.concatenate([row[:n] if up else row[n:] for row, up in zip(keys, even, strict=True)])
    minus = np.concatenate([row[n:] if up else row[:n] for row, up in zip(keys, even, strict=True)])
    del keys
    plus.sort()
    minus.sort()
    return bool(np.array_equal(plus, minus))


def _by_cells(folder: Path, name: str, chunks: Sequence[Chunk], size: tuple[int, ...]) -> None:
    """The layout told piece by piece: the tensor is cut into the grid of every chunk's edges, and each chunk (in
    order) claims its pieces, one already claimed being an overlap. Time and memory go as the pieces, for a layout
    that is no grid up to the chunks squared: one cutting the tensor into over `_CELLS` is refused."""
    edges = [sorted({0, n, *(c.offsets[d] for c in chunks), *(c.offsets[d] + c.sizes[d] for c in chunks)})
             for d, n in enumerate(size)]
    cells = math.prod(len(cuts) - 1 for cuts in edges)
    if cells > max(_CELLS, 16 * len(chunks)):
        raise bad_folder(folder, f"the {len(chunks)} chunks of {name} cut it into {cells} pieces, a layout fdl "
                           "does not check")
    owner = np.full([len(cuts) - 1 for cuts in edges], -1, dtype=np.int32)
    for index, chunk in enumerate(chunks):
        cells_of: tuple[Any, ...] = (*(slice(bisect.bisect_left(cuts, o), bisect.bisect_left(cuts, o + s))
                                       for cuts, o, s in zip(edges, chunk.offsets, chunk.sizes, strict=True)), ...)
        block = owner[cells_of]
        claimed = block[block >= 0]
        if claimed.size:
            _overlap(folder, name, chunks[int(claimed[0])], chunk)
        block[...] = index
    if (owner < 0).any():
        _gap(folder, name, chunks, size)


def _overlap(folder: Path, name: str, first: Chunk, second: Chunk) -> NoReturn:
    raise bad_folder(folder, f"two chunks of {name} overlap (at {list(first.offsets)} and {list(second.offsets)})")


def _gap(folder: Path, name: str, chunks: Sequence[Chunk], size: tuple[int, ...]) -> NoReturn:
    volume = sum(math.prod(chunk.sizes) for chunk in chunks)
    raise bad_folder(folder, f"the chunks of {name} hold {volume} of its {math.prod(size)} elements (size "
                       f"{list(size)})")


def _chunk_bytes(folder: Path, chunk: Chunk, fqn: str, handles: dict[str, Any]) -> bytes:
    if chunk.transforms:
        raise CheckpointError(
            f"cannot read {shown_name(fqn)} of the torch.distributed.checkpoint folder {folder}",
            got=f"it is stored through the extension{'s' if len(chunk.transforms) > 1 else ''} "
            f"{first_few([shown_name(name) for name in chunk.transforms[:4]], 3)} (compression), which fdl does not "
            "read",
            fix="save without _extensions, or convert the folder to one file and analyse that: python -m "
            f"torch.distributed.checkpoint.format_utils dcp_to_torch {folder} {folder}.pt",
        )
    handle = _shard(folder, chunk, handles)
    size = os.fstat(handle.fileno()).st_size
    data = b""
    if chunk.start + chunk.length <= size:  # read(n) allocates n bytes first: a forged length, any memory
        handle.seek(chunk.start)
        data = handle.read(chunk.length)
    if len(data) < chunk.length:
        raise CheckpointError(
            f"cannot read the torch.distributed.checkpoint folder {folder}",
            got=f"{chunk.file} is cut short: {shown_name(fqn)} lies at bytes {chunk.start}..{chunk.start + chunk.length}, "
            f"the file holds {size}",
            fix="re-copy the folder whole; a save still being written is analysed by the same command run again "
            "once written",
        )
    return data


def _shard(folder: Path, chunk: Chunk, handles: dict[str, Any]) -> Any:
    """The open shard `chunk` lies in, opened once for all its chunks (closed by the caller's `_close`)."""
    if chunk.file not in handles:
        handles[chunk.file] = open(folder / chunk.file, "rb")  # noqa: SIM115 - closed by `_close`
    return handles[chunk.file]


def _close(handles: dict[str, Any]) -> None:
    for handle in handles.values():
        handle.close()


_SAMPLE_BYTES = 256  # of each chunk's start and end: its archive's header and directory (that has data's CRC-32)


def fingerprint(folder: Path, tensors: Mapping[str, Entry]) -> str:
    """A cheap hash of `tensors` (a state_dict's names and their items, their chunks checked by `check_chunks`), as
    fdl's fingerprint of a file's tensors: each one's name and size, and each chunk's place, size and first and last
    bytes in its shard (the end of a chunk's `torch.save` archive lists the CRC-32 of the tensor's bytes). Equal for
    a copy of the folder, or the same tensors saved alike again (`.metadata` itself names the folder and the save);
    a match is confirmed by a digest of all the weights (`checkpoints._same_weights`)."""
    digest = hashlib.sha256()
    handles: dict[str, Any] = {}
    try:
        for name in sorted(tensors):
            entry = tensors[name]
            digest.update(f"{name}|{list(entry.size)}|".encode())
            for chunk in sorted(entry.chunks, key=lambda chunk: (chunk.offsets, chunk.sizes)):
                digest.update(f"{list(chunk.offsets)}|{list(chunk.sizes)}|".encode())
                handle = _shard(folder, chunk, handles)
                size = min(_SAMPLE_BYTES, chunk.length)
                for start in (chunk.start, chunk.start + chunk.length - size):  # past the end: b""
                    handle.seek(start)
                    digest.update(handle.read(size))
    finally:
        _close(handles)
    return digest.hexdigest()


def read_items(folder: Path, entries: Iterable[Entry], load: Callable[[io.BytesIO], Any]) -> dict[str, Any]:
    """The values of `entries`, by name: tensors assembled from their chunks, other items loaded by `load` (fdl's
    restricted `torch.load`), or `ItemNotRead` where that refuses them (an object pickled)."""
    handles: dict[str, Any] = {}
    out: dict[str, Any] = {}
    try:
        for entry in entries:
            if entry.dtype is None:
                data = _chunk_bytes(folder, entry.chunks[0], entry.fqn, handles)
                try:
                    out[entry.fqn] = load(io.BytesIO(data))
                except pickle.UnpicklingError as exc:
                    out[entry.fqn] = ItemNotRead(entry.fqn, str(exc).splitlines()[0][:120] if str(exc) else "refused")
                except Exception as exc:  # noqa: BLE001 - damaged bytes
                    signals.through(exc)
                    raise bad_folder(folder, f"{shown_name(entry.fqn)} in {entry.chunks[0].file} is not readable "
                                             f"({first_line(exc, 160) or type(exc).__name__})") from None
                continue
            out[entry.fqn] = _tensor(folder, entry, load, handles)
    finally:
        _close(handles)
    return out


def _tensor(folder: Path, entry: Entry, load: Callable[[io.BytesIO], Any], handles: dict[str, Any]) -> torch.Tensor:
    assert entry.dtype is not None
    full: torch.Tensor | None = None
    name = shown_name(entry.fqn)
    for chunk in entry.chunks:
        data = _chunk_bytes(folder, chunk, entry.fqn, handles)
        try:
            piece = load(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - damaged bytes, or an object where a tensor belongs
            signals.through(exc)
            raise bad_folder(folder, f"the chunk of {name} at {list(chunk.offsets)} in {chunk.file} is not a "
                               f"readable tensor ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
                       ) from None
        if not isinstance(piece, torch.Tensor) or tuple(piece.shape) != chunk.sizes or piece.dtype != entry.dtype:
            got = (f"a {piece.dtype} tensor of shape {list(piece.shape)}" if isinstance(piece, torch.Tensor)
                   else f"a {type(piece).__name__}")
            raise bad_folder(folder, f"the chunk of {name} at {list(chunk.offsets)} in {chunk.file} holds {got}, "
                               f"not the {entry.dtype} chunk of shape {list(chunk.sizes)} its {METADATA} says")
        if len(entry.chunks) == 1:
            return piece
        if full is None:
            full = _whole(folder, entry)
        full[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))] = piece
    return full if full is not None else torch.empty(entry.size, dtype=entry.dtype)


def _whole(folder: Path, entry: Entry) -> torch.Tensor:
    """The tensor `entry`'s chunks are copied into: its size is what `.metadata` declares, which may be more than
    this machine holds (a chunk can be a small tensor expanded, its stride 0, to any shape)."""
    assert entry.dtype is not None
    try:
        return torch.empty(entry.size, dtype=entry.dtype)
    except (RuntimeError, MemoryError):
        count = math.prod(entry.size)
        raise CheckpointError(
            f"cannot read {shown_name(entry.fqn)} of the torch.distributed.checkpoint folder {folder}",
            got=f"its {METADATA} declares {count} elements of {entry.dtype} (size {list(entry.size)}, "
            f"{count * entry.dtype.itemsize / 2**30:.3g} GiB), more than this machine could allocate",
            fix="check that the folder holds the checkpoint it should (its .metadata may be damaged or forged), or "
            "run fdl where that much memory is free",
        ) from None


def nested(values: dict[str, Any], entries: dict[str, Entry]) -> dict[Any, Any]:
    """The saved dict rebuilt from flattened items by each one's place (`{"model": {"fc.weight": ...}, "step":
    5}`): the shape fdl reads a training loop's dict in. A level whose keys are 0..n-1 (a list saved) is a list."""
    root: dict[Any, Any] = {}
    for fqn, value in values.items():
        path = entries[fqn].path
        level = root
        for part in path[:-1]:
            level = level.setdefault(part, {})
            if not isinstance(level, dict):
                raise ValueError(f"{shown_name(fqn)} lies below another item")
        if path[-1] in level:
            raise ValueError(f"two items at the place of {shown_name(fqn)}")
        level[path[-1]] = value
    return _lists(root)


def _lists(level: Any) -> Any:
    if not isinstance(level, dict):
        return level
    level = {key: _lists(value) for key, value in level.items()}
    if level and all(type(key) is int for key in level) and set(level) == set(range(len(level))):
        return [level[index] for index in range(len(level))]
    return level
