"""Load and validate probe sets (inputs ``x`` and optional targets ``y``) before any analysis runs.

Formats: ``.npz``, ``.pt``/``.pth`` (``torch.load(weights_only=True)``), ``.safetensors``,
``.h5``/``.hdf5``. torch, safetensors and h5py are imported only when such a file is read, so
importing this module stays light.

The inputs ``x`` and float regression targets ``y`` are not held in memory when the file stores them
as one contiguous, uncompressed array (``np.savez``, ``.safetensors``, a contiguous HDF5 dataset): a
`RowReader` reads the rows of each batch from the file when they are asked for (targets converted to
float64 batch by batch), so memory does not grow with the probe. Their checks (finite values, shapes,
a float one-hot matrix) are passes over the file a chunk at a time. Class labels (integer ``y``, 8
bytes a sample as int64) are read whole and held. Compressed or chunked arrays and ``.pt`` files are
read whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fdl_cli import signals
from fdl_cli.errors import (
    ProbeError,
    counted,
    first_few,
    first_names,
    listed_names,
    quoted_name,
    shown_name,
    special_file,
)
from fdl_cli.fields import INTEGER_LABELS_RECIPE, UNIT_SPEC

X_KEYS = ("x", "inputs", "data", "images", "X", "input_ids")  # first found wins; input_ids, label: Hugging Face's
# target: scikit-learn's Bunch (beside its data); last, so that a file holding it beside another name of y reads
# the array it read before `target` was one (a store resumed after the upgrade measured the rest on another y)
Y_KEYS = ("y", "targets", "labels", "Y", "label", "target")
PROBE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors", ".h5", ".hdf5")
DEFAULT_NAME = "probe"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Probe:
    """A probe set, validated on load.

    Attributes:
        name: ``"probe"``, or NAME of ``--probe NAME=path``.
        x: (n, ...) float32/float64 inputs, or int64 token ids. 1-D float inputs become (n, 1).
        y: (n,) int64 class labels (held), or (n, C) float64 regression targets (a `RowReader` when read
            in place: slice it, ``y[a:b]``, or use `row_range`); ``None`` without targets.
        task: ``"classes"``, ``"regression"`` or ``None`` (no targets).
        n_classes: max label + 1 for classes, else ``None``.
        sha256: hex digest of the file's bytes.
        x_sha256: hex digest of the inputs alone as fdl reads them (`inputs_digest`): two files of the same x
            and different y (a label-shuffle control) agree on it, so their eigenfunctions can be compared.
    """

    name: str
    path: Path
    x: np.ndarray | RowReader
    y: np.ndarray | RowReader | None
    task: str | None
    n_classes: int | None
    sha256: str
    #: the dtype of x in the file (uint8 images are read as int64, like token ids)
    stored_dtype: str = ""
    #: the names of the file's other arrays, which fdl does not read (an attention mask beside the token ids)
    unused: tuple[str, ...] = ()
    #: the names x and y were read under (``inputs``, ``labels``, ...; ``""`` without targets)
    keys: tuple[str, str] = ("x", "")
    #: `inputs_digest` of x ("" where not taken)
    x_sha256: str = ""
    #: of `unused`, without targets: the arrays of one value a sample (a row each, or a vector of n), which may
    #: be the targets saved under another name (`y_test`)
    unread_targets: tuple[str, ...] = ()
    #: the number of columns of an integer one-hot `y` (turned into the labels `y`), None for other targets: the
    #: classes the file says there are, which must be the model's outputs
    one_hot_columns: int | None = None

    @property
    def n(self) -> int:
        """Number of probe points."""
        return int(self.x.shape[0])

    def describe_sample(self) -> str:
        """'one sample of shape (6, 6, 1), dtype int64 (uint8 in the file)' for messages."""
        differs = self.stored_dtype and self.stored_dtype != str(self.x.dtype)
        stored = f" ({self.stored_dtype} in the file)" if differs else ""
        return f"one sample of shape {tuple(self.x.shape[1:])}, dtype {self.x.dtype}{stored}"


FIT_FIX = "give the probe inputs the shape and dtype the model's forward expects"

#: torch's words for an nn.Embedding (or an indexing) given float inputs, where it takes integer ids
WANTS_TOKEN_IDS = re.compile(r"'indices'|used as indices|arguments for embedding")


def token_id_hint(x: np.ndarray, error: str, tables: Sequence[tuple[str, int]] = (), *, rows: int = 0) -> str | None:
    """What an nn.Embedding's refusal of the probe inputs `x` (probe rows `rows`.. on) points to, or None:
    float token ids (to save as integers), or an id outside its table (torch's "index out of range in self",
    which names neither the id nor the table): the ids' range and where the highest is, and the model's
    embedding `tables` (name, rows) where known (a table of positions refuses a longer sequence alike)."""
    kind = np.dtype(x.dtype).kind
    if kind == "f" and WANTS_TOKEN_IDS.search(error):
        return (f"x holds floats ({x.dtype}), but the model looks its input up in an nn.Embedding, which takes "
                "integer token ids: save x as integers, x = x.astype(np.int64)")
    # torch's own words for an id outside an nn.Embedding's table; not a `tuple index out of range` (a forward's
    # `ids.shape[1]` on x saved without its sequence axis), whose ids may all be in range
    if kind not in "iu" or "index out of range in self" not in error or x.size == 0:
        return None
    flat = np.asarray(x).reshape(len(x), -1)
    lowest, highest = int(flat.min()), int(flat.max())
    # a negative id (a padding of -100, the labels' ignore index) is the one refused: its row, not the highest's
    negative = lowest < 0
    at = rows + int(np.unravel_index(int(flat.argmin() if negative else flat.argmax()), flat.shape)[0])
    held = f"; the model's nn.Embedding tables: {', '.join(f'{name} {count} rows' for name, count in tables[:4])}" \
        if tables else ""
    where = (f"x's first sample holds token ids from {lowest} to {highest}, a sequence of {flat.shape[1]}"
             if len(flat) == 1 and rows == 0 else
             f"x holds token ids from {lowest} to {highest} (the {'lowest' if negative else 'highest'} at probe row "
             f"{at}), in sequences of {flat.shape[1]}")
    if negative:
        return (f"{where}{held}: an nn.Embedding takes ids from 0 to its number of rows − 1, so a negative id (a "
                "padding of -100 or -1) is none: pad with an id of the vocabulary (the tokenizer's pad id)")
    return (f"{where}{held}: an nn.Embedding takes ids below its number of rows, so keep the probe's ids "
            "below the vocabulary size the model was built with, and its sequences no longer than a table of "
            "positions allows")


def embedding_tables(model: Any) -> list[tuple[str, int]]:
    """The model's nn.Embedding tables as (name, rows), for `token_id_hint`."""
    return [(name, int(module.num_embeddings)) for name, module in model.named_modules()
            if type(module).__name__ == "Embedding" and hasattr(module, "num_embeddings")]


def fit_fix(probe: Probe, error: str, tables: Sequence[tuple[str, int]] = ()) -> str:
    """The fix for a probe whose first sample the model's forward refused with `error`: the general rule,
    plus the conversion that the probe's shape and dtype and the error point to (images kept as uint8
    and channels last, as torchvision's .data and Keras hold them; flat or unflattened inputs; float or
    out-of-range token ids, `token_id_hint`, with the model's embedding `tables` where known)."""
    x_dtype, shape = np.dtype(probe.x.dtype), tuple(probe.x.shape)
    text = error.lower()
    hints = []
    token_ids = token_id_hint(np.asarray(probe.x[:1]), error, tables)
    if token_ids is not None:
        hints.append(token_ids)
    if x_dtype.kind in "iu" and re.search(r"dtype|\btype\b|long", text):  # a type error: "typeerror" is none
        stored = probe.stored_dtype or str(x_dtype)
        # 3-D integers that a model refused for their dtype: images (N, H, W), whose missing channel axis would
        # be the next run's error, said now
        images = len(shape) == 3
        hints.append(
            f"x holds integers ({stored}), which fdl passes on as int64 token ids; a model of images or features "
            "needs floats: save x preprocessed as in training, e.g. x = (images / 255).astype(np.float32)"
            + (f"[:, None] (x has shape {shape}, images without the channel axis of (N, 1, H, W))" if images else "")
            + ", then normalised as your transforms do"
            + (", or keep them uint8 and normalise in a --model wrapper (docs/usage.md, Inputs x)" if images else "")
        )
    # on a GPU torch reports an id beyond an nn.Embedding's table (and any other check inside its kernels) only as
    # this, naming neither id nor table, where `token_id_hint` reads the CPU's "index out of range in self"
    device_assert = "device-side assert" in text
    if device_assert:
        hints.append("on a GPU torch reports an error inside its kernels (most often a token id beyond an "
                     "nn.Embedding's table) only as a device-side assert, which names neither: run with --device cpu "
                     "to see torch's own error, said with the ids' range")
    # not where the ids' values are refused: an nn.Embedding takes x of shape (n,), one id a sample, as it is
    if len(shape) == 1 and x_dtype.kind in "iu" and token_ids is None and not device_assert:
        hints.append(f"x has shape {shape}, one value a sample: a model of token sequences takes x of shape (n, L), "
                     "L ids a sample (x[:, None] for sequences of one id)")
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        hints.append(
            f"x has shape {shape}, channels last (N, H, W, C); torch's convolutions take (N, C, H, W): "
            "x = x.transpose(0, 3, 1, 2)"
        )
    elif len(shape) == 3 and ("conv" in text or "4d" in text):
        hints.append(f"x has shape {shape}, images without a channel axis: x = x[:, None] for (N, 1, H, W)")
    elif len(shape) == 2 and "conv" in text:
        hints.append(f"x has shape {shape}, flat vectors, but the model convolves images: x.reshape(N, C, H, W)")
    elif len(shape) > 2 and "mat1 and mat2 shapes" in text:
        hints.append(f"x has shape {shape}, but the model's first layer takes vectors: x = x.reshape(len(x), -1)")
    if more_inputs(text):
        hints.append(MORE_INPUTS)
    elif "invalid data type 'str'" in text:  # torch's words for tensor["name"]: a forward that takes a dict
        hints.append(f"the model's forward reads its input by name (a dict of inputs?), but fdl calls it with the "
                     f"probe's x alone, one tensor: {SEVERAL_INPUTS}")
    return "; ".join([FIT_FIX, *hints])


def more_inputs(error: str) -> bool:
    """Whether the model's forward refused a call with x alone for want of its other inputs (`forward(ids, mask)`)."""
    text = error.lower()
    return "forward() missing" in text and ("required positional argument" in text or "required keyword-only" in text)


#: how to analyse a model of several inputs (forward(x, mask), a dict): fdl gives forward the probe's x alone
SEVERAL_INPUTS = (
    "in the --model factory, return the network inside a wrapper whose forward(x) makes its inputs from x (a "
    "padding mask from the token ids, x != PAD; or inputs saved stacked as the probe's x, "
    "x = np.stack([ids, mask], 1), and forward(x) returning self.module(x[:, 0], x[:, 1])); a wrapper that holds "
    "the network as `module` loads the checkpoints' keys as they are (docs/usage.md, Probe)"
)


#: why a model of several inputs fails: `fit_fix`'s hint, and `fdl inspect`'s of its random input
MORE_INPUTS = ("the model's forward takes more inputs than x, but fdl calls it with the probe's x alone, forward(x): "
               + SEVERAL_INPUTS)


def is_named_probe(spec: str) -> bool:
    """Whether the text before the first '=' of `spec` is a probe's name (`train=a.npz`, `my probe=a.npz`), not
    part of a path (`runs/a=1/probe.npz`); the caller checks that no file of the whole text exists."""
    name, sep, rest = spec.partition("=")
    return bool(sep) and bool(name) and (_NAME.match(name) is not None or not any(c in name for c in "/\\"))


def probe_name_fault(name: str) -> str | None:
    """What is wrong with `name` as a probe's name, None when nothing: the store names each probe's group and
    columns after it. One rule for --probe and fdl.toml's probe."""
    if name.isascii() and name.isidentifier():
        return None
    return f"the probe name {name!r} may hold ASCII letters, digits and '_' only (not beginning with a digit)"


def usable_probe_name(name: str) -> str:
    """`name` made a probe name (`probe_name_fault`), for a fix: `my probe` -> `my_probe`."""
    return re.sub(r"^(?=[0-9])", "_", re.sub(r"[^A-Za-z0-9_]", "_", name))


def parse_probe_spec(spec: str) -> tuple[str, Path]:
    """``"a.npz"`` -> ``("probe", a.npz)``; ``"train=a.npz"`` -> ``("train", a.npz)``.

    A spec naming an existing file is a path even if it contains ``=``.
    """
    name, sep, rest = spec.partition("=")
    # A name is what comes before the first '=' of a spec that is no existing file, unless it holds a folder's
    # separator (`runs/a=1/probe.npz`, a path): `ünï=a.npz` and `my probe=a.npz` are names to refuse as such,
    # not a probe file of that whole text to say is not found.
    named = is_named_probe(spec)
    if named and not rest.strip():
        raise ProbeError(f"--probe {spec!r} has no path after '='", fix="e.g. --probe train=a.npz")
    if named and rest and not Path(spec).exists():
        if (fault := probe_name_fault(name)) is not None:
            raise ProbeError(f"--probe {spec!r}: {fault}", fix=f"e.g. --probe {usable_probe_name(name)}={rest}")
        path_text = rest
    else:
        name, path_text = DEFAULT_NAME, spec
    if not path_text.strip():
        raise ProbeError(f"--probe {spec!r} has no path", fix="e.g. --probe probe.npz or --probe train=a.npz")
    return name, Path(path_text)


#: Bytes per read when a whole lazily read array is checked (validation, CRC): memory stays flat.
CHUNK_BYTES = 4 << 20


class _OpenFile:
    """A probe file held open from load to exit, and what it looked like then.

    Every read goes through this descriptor: a probe replaced by a new file (rename) is not read
    by mistake, and one rewritten in place (its size or modification time changed) is refused,
    since its sha256 was taken at load.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open for the reader's life
        info = os.fstat(self.handle.fileno())
        self.signature = (info.st_size, info.st_mtime_ns)

    def check(self) -> None:
        info = os.fstat(self.handle.fileno())
        if (info.st_size, info.st_mtime_ns) != self.signature:
            raise ProbeError(
                f"the probe {self.path} changed while fdl was reading it",
                got=f"{info.st_size} bytes now, {self.signature[0]} at load",
                fix="leave the probe file alone during a run (write a new probe under another name)",
            )

    def read_into(self, view: memoryview, offset: int) -> int:
        if hasattr(os, "preadv"):
            return int(os.preadv(self.handle.fileno(), [view], offset))
        self.handle.seek(offset)  # pragma: no cover - platforms without preadv
        return self.handle.readinto(view) or 0  # pragma: no cover

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()


class RowReader:
    """Rows of an (n, ...) array stored C-contiguously at `offset` in `path`, read when sliced.

    Nothing is mapped or cached: ``reader[a:b]`` reads rows a..b-1 with one positioned read into a
    new array (of dtype `dtype`: float inputs float32/float64, integer token ids int64), so only the
    batch being used is in memory. A 1-D float array reads as (n, 1). ``np.asarray(reader)`` reads
    everything. Only slices with step 1 are supported (what batching needs). The file is opened once
    (`_OpenFile`) and shared by the readers of its row ranges.
    """

    def __init__(
        self, path: Path, offset: int, stored: np.dtype, shape: tuple[int, ...], dtype: np.dtype,
        *, file: _OpenFile | None = None,
    ) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.stored = np.dtype(stored)
        self._stored_shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        column = len(shape) == 1 and self.dtype.kind == "f"
        self.shape: tuple[int, ...] = (self._stored_shape[0], 1) if column else self._stored_shape
        self._row_items = int(np.prod(self._stored_shape[1:], dtype=np.int64))
        self._start, self._stop = 0, self._stored_shape[0]
        self._file = file or _OpenFile(self.path)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the whole array in the file ((n,) for a 1-D array that reads as (n, 1))."""
        return self._stored_shape

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._row_items * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> RowReader:
        """A reader of rows start..stop-1 of this one (nothing is read)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        view = RowReader(self.path, self.offset, self.stored, self._stored_shape, self.dtype, file=self._file)
        view._start, view._stop = self._start + start, self._start + max(start, stop)
        view.shape = (view._stop - view._start, *self.shape[1:])
        return view

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"RowReader reads row ranges (reader[a:b]), not {key!r}")
        start, stop, _ = key.indices(len(self))
        return self._read(self._start + start, self._start + max(start, stop))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self._read(self._start, self._stop)
        return values if dtype is None else values.astype(dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self._row_items
        values = np.empty(count, dtype=self.stored)
        offset = self.offset + start * self._row_items * self.stored.itemsize
        got = 0
        self._file.check()
        view = values.data.cast("B")
        while got < view.nbytes:  # positioned reads straight into the array (no copy through bytes)
            done = self._file.read_into(view[got:], offset + got)
            if done <= 0:
                break
            got += done
        if got != values.nbytes:
            raise ProbeError(
                f"the probe {self.path} is shorter than its header says",
                got=f"{got // self.stored.itemsize} of {count} values of rows {start}..{stop - 1}",
                fix="the file was truncated or changed while fdl ran; save the probe again",
            )
        values = values.reshape((stop - start, *self._stored_shape[1:])).reshape((stop - start, *self.shape[1:]))
        return values if values.dtype == self.dtype else values.astype(self.dtype)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) over the whole array, CHUNK_BYTES at a time."""
        step = max(1, CHUNK_BYTES // max(1, self._row_items * self.stored.itemsize))
        for start in range(0, len(self), step):
            yield start, self[start : start + step]


def row_range(x: np.ndarray | RowReader, start: int, stop: int) -> np.ndarray | RowReader:
    """Rows start..stop-1 of probe inputs without reading them (a view or a narrower reader)."""
    return x.rows(start, stop) if isinstance(x, RowReader) else x[start:stop]


def _lazy_dtype(stored: np.dtype) -> np.dtype | None:
    """The dtype `_inputs` gives such inputs, or None when they must be read whole."""
    if stored.kind in "iu" and stored.itemsize <= 8:
        return np.dtype(np.int64)
    if stored.kind == "f" and stored.itemsize in (2, 4, 8):
        return np.dtype(np.float64 if stored.itemsize == 8 else np.float32)
    return None


def _target_dtype(stored: np.dtype) -> np.dtype | None:
    """float64 for float regression targets read in place (what `_targets` gives them), or None: integer
    targets are class labels (or a one-hot matrix turned into labels), read whole and held."""
    if stored.kind == "f" and stored.itemsize in (2, 4, 8):
        return np.dtype(np.float64)
    return None


def _npz_member(path: Path, key: str) -> tuple[int, np.dtype, tuple[int, ...], int, int, int] | None:
    """(offset of the array data, dtype, shape, start and size of the member's bytes, CRC-32) of an
    uncompressed ``key.npy`` member of an npz file, or None when it cannot be read in place."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        offset = handle.tell()
    if fortran or dtype.hasobject or len(shape) == 0:
        return None
    if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > start + info.compress_size:
        return None  # the member is shorter than its array: let np.load report it
    return offset, dtype, tuple(shape), start, info.compress_size, info.CRC  # type: ignore[return-value]


def _check_crc(path: Path, start: int, size: int, crc: int, key: str) -> None:
    """The member's bytes against the CRC-32 the zip directory holds (what np.load would check)."""
    value = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        left = size
        while left > 0:
            block = handle.read(min(CHUNK_BYTES, left))
            if not block:
                break
            value = zlib.crc32(block, value)
            left -= len(block)
    if left or value != crc:
        raise ProbeError(
            f"cannot read the probe {path}",
            got=f"'{key}' fails its CRC-32 check" if not left else f"'{key}' is truncated",
            fix="the file is corrupt or not of the format its suffix says",
        )


def _lazy_npz(path: Path, key: str, *, targets: bool = False, file: _OpenFile | None = None) -> RowReader | None:
    """A RowReader of the npz member `key` when it is stored uncompressed (CRC-32 checked), else None.
    `targets`: the member is ``y``, read in place only as float regression targets."""
    member = _npz_member(path, key)
    if member is None:
        return None
    offset, stored, shape, start, size, crc = member
    dtype = (_target_dtype if targets else _lazy_dtype)(stored)
    if dtype is None:
        return None
    _check_crc(path, start, size, crc, key)
    return RowReader(path, offset, stored, shape, dtype, file=file)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _targets_key(keys: Any, *, positional: bool) -> str | None:
    """The key `load_probe` takes the targets from (``arr_1`` of a positional npz of x and y)."""
    key = next((k for k in Y_KEYS if k in keys), None)
    if key is None and positional and "arr_1" in keys and set(keys) <= {"arr_0", "arr_1"}:
        return "arr_1"
    return key


def _read_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as archive:
        inputs = next((k for k in (*X_KEYS, "arr_0") if k in archive.files), None)
        targets = _targets_key(archive.files, positional=True)
        file = _OpenFile(path)  # shared by the readers of x and y
        lazy = {  # read in place when stored uncompressed, else whole
            key: _lazy_npz(path, key, targets=key == targets, file=file)
            for key in (inputs, targets) if key is not None
        }
        arrays: dict[str, Any] = {}
        for key in archive.files:
            reader = lazy.get(key)
            arrays[key] = reader if reader is not None else archive[key]
    return arrays


def _list_array(value: list[Any] | tuple[Any, ...]) -> tuple[np.ndarray | None, str]:
    """A Python list (or tuple) of numbers or of strings, one an item, or of rows of one length of them (one-hot
    rows, [[0, 1], [1, 0]]), as the array it makes; else (None, what it holds instead) for a message."""
    kind = type(value).__name__
    leaves: list[Any] = []
    stack: list[Any] = [value]
    while stack:  # its items, however nested (a loop: a forged nesting is no recursion to overflow)
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            leaves.append(item)
    if not leaves:
        return None, f"an empty {kind}" if not value else f"a {kind} of empty {kind}s"
    numbers = all(isinstance(item, (bool, int, float)) for item in leaves)
    if not numbers and not all(isinstance(item, str) for item in leaves):
        types = sorted({type(item).__name__ for item in leaves})
        if types == ["Tensor"]:  # `list(labels)` of a tensor, or a list of batches: `_TENSORS_FIX`
            return None, "items that are tensors, not numbers"
        if len(types) == 1:
            return None, f"items of type {types[0]}, neither numbers nor text"
        return None, f"items of mixed types: {', '.join(types[:4])}" + (", ..." if len(types) > 4 else "")
    try:
        array = np.asarray(value)
    except ValueError:  # numpy's "inhomogeneous shape": rows of several lengths
        return None, f"{kind}s of different lengths"
    if array.dtype == object:  # integers numpy holds in no integer dtype
        return None, "integers beyond 64 bits"
    return array, ""


#: What a list of tensors is made one with (`_list_array`): torch.tensor refuses tensors of more than one value
_TENSORS_FIX = "; a list of tensors: torch.stack({named}) (one a sample), torch.cat({named}) (one a batch)"


def _npz_object_arrays(path: Path) -> list[str]:
    """The names of an .npz's arrays of dtype object, read from their .npy headers alone (nothing unpickled);
    none where the file is no zip. A member that is no .npy (a `meta.json` written into the zip, which np.load
    reads as bytes) or whose header is damaged is passed over: the others are still named."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    names = []
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                try:
                    with archive.open(member) as stream:
                        reader = readers.get(np.lib.format.read_magic(stream))
                        if reader is not None and reader(stream)[2].hasobject:
                            names.append(member.removesuffix(".npy"))
                except Exception:  # noqa: BLE001 - no .npy, or a damaged one: not named, the others still are
                    continue
    except Exception:  # noqa: BLE001 - not such a file: the caller keeps its general words
        return []
    return names


def _object_arrays_said(objects: Sequence[str]) -> tuple[str, str]:
    """(got, fix) of an .npz whose arrays `objects` hold Python objects (`_npz_object_arrays`): each named (the
    first four, and how many in all), with the fix of what fdl reads them as, the targets, the inputs, or
    nothing (another array, which still stops np.load)."""
    one = len(objects) == 1
    named = first_few([quoted_name(name) for name in objects], 4) + (
        f" ({len(objects)} in all)" if len(objects) > 4 else "")
    got = (f"{'its array' if one else 'its arrays'} {named} {'holds' if one else 'hold'} pickled Python objects "
           "(dtype object: strings or numbers kept as Python objects, a pandas column's .values); fdl never "
           "unpickles a probe")
    fixes = []
    if any(name in Y_KEYS for name in objects):
        fixes.append("save the targets as numbers: class names numbered 0..C-1 in the order of the model's outputs "
                     "(class c is output c), class numbers as np.asarray(y, dtype=np.int64), regression targets as "
                     "np.float32 (or the names as text, np.asarray(y, dtype=str), which fdl reads and refuses with "
                     "their conversion)")
    if any(name in (*X_KEYS, "arr_0") for name in objects):
        fixes.append("save the inputs as numeric arrays: np.asarray(x, dtype=np.float32) (token ids: np.int64)")
    others = [name for name in objects if name not in (*X_KEYS, *Y_KEYS, "arr_0")]
    if others:
        fixes.append(f"fdl reads only the inputs and the targets: save the file without {quoted_name(others[0])}"
                     f"{' and the others' if len(others) > 1 else ''}, or as numbers or text "
                     "(np.asarray(a, dtype=str))")
    return got, "; ".join(fixes)


def _read_pt(path: Path) -> dict[str, Any]:
    import pickle

    import torch
    from torch.utils.data import TensorDataset

    try:
        # A TensorDataset only holds its tensors (rebuilt by the same restricted unpickler): allowed.
        with torch.serialization.safe_globals([TensorDataset]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            names = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                     if not name.endswith(".TensorDataset")]
        except Exception:  # noqa: BLE001 - a legacy (non-zip) file: keep the unpickler's own words
            names = []
        said = [line for line in str(exc).strip().splitlines() if "WeightsUnpickler error" in line]
        got = ("pickled " + first_few(names, 5)) if names else (
            said[0].strip()[:200] if said else "objects the restricted unpickler does not allow")
        raise ProbeError(
            f"the probe {path} holds pickled Python objects beyond tensors; fdl refused to load it",
            got=got,
            fix="save only tensors: torch.save({'x': x, 'y': y}, path) (or a TensorDataset(x, y)), or use "
            ".npz/.safetensors",
        ) from None
    kind = type(obj).__name__
    if isinstance(obj, TensorDataset):
        obj = tuple(obj.tensors)
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        obj = dict(zip(("x", "y"), obj, strict=False))
    elif isinstance(obj, torch.Tensor):
        obj = {"x": obj}
    if not isinstance(obj, Mapping):
        several = isinstance(obj, (tuple, list)) and len(obj) > 2  # (x, mask, y): inputs of a model of several
        raise ProbeError(
            f"the probe {path} holds a {kind}" + (f" of {len(obj)} items" if several else ""),
            got=kind + (f" of {len(obj)} items; fdl reads (x, y) or (x,)" if several else ""),
            fix="save a dict {'x': ..., 'y': ...} or a tuple (x, y) of tensors"
            + ("; a model of several inputs takes them stacked as one x, through a wrapper in its --model factory "
               "(docs/usage.md, Probe)" if several else ""),
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        elif isinstance(value, np.ndarray):
            out[str(key)] = value
        elif isinstance(value, (list, tuple)):
            # labels kept as a Python list (`labels.tolist()`, class names, one-hot rows): read as the array they
            # make, so class numbers are labels and names get the text labels' error; inputs or targets that make
            # no array are refused, not left unread without a word (a run analysed without its targets). Another
            # key's list (class names beside x and y) that makes none is metadata, passed over.
            array, holds = _list_array(value)
            if array is not None:
                out[str(key)] = array
            elif str(key) in (*X_KEYS, *Y_KEYS):
                named = str(key) if str(key).isidentifier() else "values"
                raise ProbeError(
                    f"the probe {path}: {quoted_name(str(key))} is a Python {type(value).__name__} that fdl cannot "
                    "read as one array",
                    got=holds,
                    fix=f"save it as a tensor, an item a sample: torch.tensor({named}) (class labels as integers, "
                    "regression targets as floats, one-hot rows as an (n, C) tensor)"
                    + (_TENSORS_FIX.format(named=named) if holds == "items that are tensors, not numbers" else ""),
                )
    if not out and obj:
        # a training checkpoint given as the probe ({"model": state_dict, "optimizer": ..., "step": s})
        # said "has no inputs, got: keys: none"
        shown = [f"{shown_name(str(key))} ({type(value).__name__})" for key, value in list(obj.items())[:6]]
        raise ProbeError(
            f"the probe {path} holds no tensor at its top level",
            got="keys: " + ", ".join(shown) + (f", ... ({len(obj)} in all)" if len(obj) > 6 else "")
            + ("; a training checkpoint?" if _looks_like_checkpoint(obj) else ""),
            fix="pass the probe set as --probe: inputs under x (and targets under y), e.g. "
            "torch.save({'x': x, 'y': y}, path) or np.savez(path, x=x, y=y); the checkpoints come first: "
            "fdl analyze CKPT_DIR --probe PROBE",
        )
    return out


def _looks_like_checkpoint(entries: Mapping[str, Any]) -> bool:
    """Keys of a training loop's checkpoint, or of a state_dict (`layer.weight`)."""
    names = [str(key) for key in entries]
    loop = {"model", "state_dict", "model_state_dict", "optimizer", "optimizer_state_dict", "step", "epoch",
            "global_step"}
    return bool(loop.intersection(names)) or (
        bool(names) and all(name.rpartition(".")[2] in ("weight", "bias", "running_mean", "running_var",
                                                        "num_batches_tracked") for name in names))


_SAFETENSORS_DTYPES = {
    "F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
    "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8",
}


def _read_safetensors(path: Path) -> dict[str, Any]:
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length)) if length < (100 << 20) else {}
    key = next((k for k in X_KEYS if k in header), None)
    if key is None:
        return dict(load_file(str(path)))
    size = path.stat().st_size
    places: dict[str, tuple[int, np.dtype, tuple[int, ...], np.dtype]] = {}  # read in place: offset, stored, ...
    for name, dtype_of in ((key, _lazy_dtype), (_targets_key(header, positional=False), _target_dtype)):
        entry = header.get(name, {}) if name is not None else {}
        stored = _SAFETENSORS_DTYPES.get(entry.get("dtype", ""))
        shape = tuple(int(d) for d in entry.get("shape", ()))
        lazy = dtype_of(np.dtype(stored)) if stored is not None and shape else None
        if name is None or stored is None or lazy is None:
            continue
        begin, end = (int(v) for v in entry["data_offsets"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(stored).itemsize or 8 + length + end > size:
            return dict(load_file(str(path)))  # let the library report the damage
        places[name] = (8 + length + begin, np.dtype(stored), shape, lazy)
    if not places:
        return dict(load_file(str(path)))
    arrays: dict[str, Any] = {}
    with safe_open(str(path), framework="numpy") as archive:
        for name in archive.keys():  # noqa: SIM118 - safe_open is not a mapping
            if name not in places:
                arrays[name] = archive.get_tensor(name)
    file = _OpenFile(path)
    for name, (offset, stored_dtype, shape, lazy) in places.items():
        arrays[name] = RowReader(path, offset, stored_dtype, shape, lazy, file=file)
    return arrays


def _no_special_files(path: Path, handle: Any) -> None:
    """Refuse an external link, external storage or virtual dataset of the probe's that names a FIFO, a device or a
    socket (HDF5 reads it as a file: a FIFO hung the read, past Ctrl-C), before h5py opens it. A name HDF5 would
    resolve against the current folder or the probe's is checked in both."""
    from fdl_cli.store import files_named  # imports h5py, which reading this probe needs already

    for key in handle:
        for text in files_named(handle, key):
            for place in {Path(text), path.parent / text}:
                with contextlib.suppress(OSError):
                    if place.exists() and not place.is_file():
                        raise ProbeError(
                            f"the probe {path}: its {key!r} is read from {place}, which is no regular file",
                            fix="store the probe's arrays in the file itself (h5py's handle['x'] = x), or link "
                                "to a regular file",
                        )


def _read_h5(path: Path) -> dict[str, Any]:
    import h5py  # read-only use of a user's file; the store module owns writing HDF5

    with h5py.File(path, "r") as handle:
        _no_special_files(path, handle)
        arrays: dict[str, Any] = {}
        inputs = next((k for k in X_KEYS if isinstance(handle.get(k), h5py.Dataset)), None)
        targets = next((k for k in Y_KEYS if isinstance(handle.get(k), h5py.Dataset)), None)
        file: _OpenFile | None = None
        for key in handle:
            node = handle[key]
            if not isinstance(node, h5py.Dataset):
                continue
            offset = node.id.get_offset() if key in (inputs, targets) and node.chunks is None else None
            if key == inputs:
                dtype = _lazy_dtype(node.dtype) if node.dtype.kind in "iuf" else None
            else:  # the targets: float regression targets only (labels are read whole)
                dtype = _target_dtype(node.dtype)
            in_file = (
                offset is not None
                and node.id.get_storage_size() == node.size * node.dtype.itemsize  # written (not a fill value)
                and handle.userblock_size <= offset
                and offset + node.size * node.dtype.itemsize <= path.stat().st_size
            )
            if in_file and offset is not None and dtype is not None and node.ndim > 0 and node.size > 0:
                file = file or _OpenFile(path)
                arrays[key] = RowReader(path, int(offset), node.dtype, node.shape, dtype, file=file)
            else:
                arrays[key] = node[()]
        groups = [key for key in handle if isinstance(handle[key], h5py.Group)]
        if not arrays and groups:  # "keys: none", of a file whose arrays are all in groups
            inside: list[str] = []
            handle[groups[0]].visit(lambda name: inside.append(f"{groups[0]}/{name}") if len(inside) < 4 else None)
            raise ProbeError(
                f"the probe {path} has no inputs",
                got=f"keys: none at the top level of the file; its groups: {listed_names(groups, 8)} "
                f"({listed_names(inside, 4)})",
                fix=f"store the inputs under one of {', '.join(X_KEYS)}, at the top level of the file (fdl reads "
                "no group): h5py's handle['x'] = x, not handle['train/x']",
            )
        return arrays


_READERS = {
    ".npz": _read_npz,
    ".pt": _read_pt,
    ".pth": _read_pt,
    ".safetensors": _read_safetensors,
    ".h5": _read_h5,
    ".hdf5": _read_h5,
}


def _pick(arrays: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in arrays:
            return key, arrays[key]
    return None, None


def _check_finite(path: Path, key: str, values: np.ndarray, *, first_row: int = 0) -> None:
    """NaN/Inf in `values` (rows first_row.. of the probe's array) -> ProbeError with its index."""
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        bad[0] += first_row
        raise ProbeError(
            f"the probe {path}: '{key}' holds NaN or Inf (first at index {tuple(int(i) for i in bad)})",
            fix="clean or drop those samples before saving the probe",
        )


def _check_target_range(path: Path, key: str, peak: float) -> None:
    """Regression targets whose largest |·| lies outside what the float64 statistics hold
    (`moments.RANGE_MIN` .. `RANGE_MAX`, 0 allowed) -> ProbeError, before any checkpoint is read."""
    from fdl_cli.moments import RANGE_MAX, RANGE_MIN

    if peak > RANGE_MAX or 0.0 < peak < RANGE_MIN:
        raise ProbeError(
            f"the probe {path}: the regression targets '{key}' are too {'large' if peak > RANGE_MAX else 'small'} "
            f"for fdl's float64 statistics (largest magnitude {peak:.3g}, outside [{RANGE_MIN:.3g}, {RANGE_MAX:.3g}]: "
            "sums of their squares, and products of those, would overflow or flush to 0)",
            fix="rescale the targets before saving the probe (of the measures only loss and r2, which compare the raw "
                "outputs with them, depend on their scale)",
        )


def _inputs_hasher(dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """A sha256 begun with the inputs' dtype and shape as fdl reads them (`inputs_digest`)."""
    return hashlib.sha256(f"fdl probe inputs; dtype {np.dtype(dtype).str}; shape {tuple(shape)}\n".encode())


def inputs_digest(x: np.ndarray) -> str:
    """sha256 of probe inputs in a canonical form: their dtype (byte order included) and shape as fdl reads
    them (float32/float64, token ids int64, 1-D float inputs as (n, 1)), then their bytes in C order.
    Independent of the file's format and of the targets beside x."""
    digest = _inputs_hasher(x.dtype, x.shape)
    digest.update(np.ascontiguousarray(x).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _lazy_inputs(path: Path, key: str, x: RowReader) -> tuple[RowReader, str]:
    """The checks of `_inputs` on inputs read in place, a chunk at a time, and their `inputs_digest` from
    the same pass."""
    if len(x) == 0:
        raise ProbeError(
            f"the probe {path} is empty: '{key}' has shape {x.shape}",
            fix="save at least one sample, shape (n, ...)",
        )
    digest = _inputs_hasher(x.dtype, x.shape)
    for first, rows in x.chunks():
        _check_finite(path, key, rows, first_row=first)
        digest.update(np.ascontiguousarray(rows, dtype=x.dtype).reshape(-1).view(np.uint8).data)
    return x, digest.hexdigest()


def _inputs(path: Path, key: str, x: Any) -> tuple[np.ndarray | RowReader, str]:
    """The probe's inputs as fdl reads them, checked, and their `inputs_digest`."""
    if isinstance(x, RowReader):
        return _lazy_inputs(path, key, x)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        text = _is_text(x)  # it said "has dtype <U3", and again "got: <U3"
        raise ProbeError(
            f"the probe {path}: '{key}' " + (f"holds text (dtype {x.dtype})" if text else f"has dtype {x.dtype}")
            + ", not numbers",
            got=_values_said(x),
            fix="x must hold numbers (float inputs or integer token ids)"
            + (": turn text into token ids with the model's tokenizer first" if text else ""),
        )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ProbeError(
            f"the probe {path} is empty: '{key}' has shape {x.shape}",
            fix="save at least one sample, shape (n, ...)",
        )
    if x.dtype.kind in "iu":
        x = x.astype(np.int64)
        return x, inputs_digest(x)
    x = x.astype(np.float64 if x.dtype.kind == "f" and x.dtype.itemsize == 8 else np.float32)
    _check_finite(path, key, x)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    return x, inputs_digest(x)


def _is_text(y: np.ndarray) -> bool:
    """Whether `y` holds text: class names ("cat", "dog"), as a DataFrame column holds them, or an object array
    of str / bytes (h5py's variable-length strings, `h5py.string_dtype`)."""
    if y.dtype.kind in "US":
        return True
    return y.dtype.kind == "O" and y.size > 0 and all(isinstance(v, (str, bytes)) for v in y.reshape(-1)[:100])


def _text_labels_fix(y: np.ndarray) -> str:
    """How to turn text labels into the class numbers 0..C-1 that must match the model's outputs (class c is
    output c): numbers written as text ('0', '11') convert as they are, since np.unique would number them in
    text order ('10' and '11' before '2'), other outputs than the model's; names are numbered by np.unique."""
    if not _is_text(y):
        return ""
    try:
        numbers = y.astype(np.int64)
    except (ValueError, TypeError):
        numbers = None
    if numbers is not None and numbers.size and numbers.min() >= 0:
        return ("; these names are class numbers: save them as such, y = y.astype(np.int64) (np.unique would number "
                "them in text order, '10' before '2', unlike the model's outputs)")
    return ("; number the classes 0..C-1 in the order of the model's outputs (class c is output c) before saving; "
            "np.unique(y, return_inverse=True) numbers them in sorted order, which is right only if the model's "
            "outputs were ordered so in training (e.g. by sklearn's LabelEncoder or np.unique)")


def _values_said(y: np.ndarray) -> str | None:
    """The "got" of a `y` of a dtype that is not numbers, whose dtype the error's first line names: a few of its
    values as the user wrote them (`'cat', 'dog'`, not `np.str_('cat')`), None when it holds none."""
    if not y.size:
        return None
    if not _is_text(y):  # an object array may hold unhashable values (lists): its first alone
        first = y.reshape(-1)[0]
        return "e.g. " + repr(first.item() if isinstance(first, np.generic) else first)[:60]
    names = list(dict.fromkeys(value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                               for value in y.reshape(-1).tolist()))
    distinct = len(names)
    return "e.g. " + ", ".join(map(quoted_name, names[:3])) + f" ({distinct} distinct name{'s' if distinct != 1 else ''})"


def _targets(path: Path, key: str, y: Any, n: int) -> tuple[np.ndarray | RowReader, str, int | None, int | None]:
    """(targets, task, n_classes, one_hot_columns) of the probe's `y`, checked against the n samples of x
    (one_hot_columns: the width of an integer one-hot `y`, turned into labels; else None).

    Float targets read in place (a `RowReader`, float64) stay in the file: their values are checked
    a chunk at a time, with the messages (and the indices into the array as stored) of a whole read.
    """
    lazy = isinstance(y, RowReader)
    if not lazy:
        y = np.asarray(y)
    shape = y.stored_shape if lazy else y.shape
    if (y.stored if lazy else y.dtype).kind not in "biuf":
        raise ProbeError(
            f"the probe {path}: '{key}' has dtype {y.dtype}" + (" (class names)" if _is_text(y) else ""),
            got=None if lazy else _values_said(y),
            fix="y must hold integer class labels or float regression targets" + _text_labels_fix(y),
        )
    if len(shape) == 0 or shape[0] != n:
        raise ProbeError(
            f"the probe {path}: x has {n} samples but '{key}' has shape {shape}",
            fix="x and y need the same first dimension",
        )
    if len(shape) > 2:
        raise ProbeError(
            f"the probe {path}: '{key}' has shape {shape}",
            fix="y must be (n,) class labels or (n,) / (n, C) regression targets",
        )
    if lazy:  # float targets (`_target_dtype`): already (n, C) float64 when read; their values, a chunk at a time
        peak = 0.0
        for first, rows in y.chunks():
            _check_finite(path, key, rows.reshape((len(rows), *shape[1:])), first_row=first)
            peak = max(peak, float(np.max(np.abs(rows))) if rows.size else 0.0)
        _check_target_range(path, key, peak)
        return y, "regression", None, None
    one_hot_columns = None
    if y.dtype.kind in "biu":
        kind = "boolean" if y.dtype.kind == "b" else "integer"
        if y.ndim == 2 and y.shape[1] == 1:  # y.reshape(-1, 1): a label per sample, in a column; never a one-hot
            # matrix of one column, which made a column of 1s (a probe of the positive class) class 0
            raise ProbeError(
                f"the probe {path}: {kind} '{key}' of shape {y.shape}: one label per sample, in a column",
                fix=f"save the labels as a vector, shape (n,): {key} = {key}[:, 0]",
            )
        if y.ndim == 2:
            if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
                labels_per_position = y.size and (y.min() < 0 or y.max() > 1)  # token ids, -100 (ignored)
                fix = ("give (n,) class labels (for sequences, one per sequence, e.g. its class or y[:, -1]), "
                       "or float (n, C) regression targets")
                if labels_per_position:
                    got: str | None = (f"values {int(y.min())} .. {int(y.max())}: a label per position (a language model's "
                           "next tokens)? fdl measures one target per sample")
                else:  # 0/1 with rows of several 1s or none: a multi-label probe (a sigmoid per output)
                    several = int(np.count_nonzero(y.sum(axis=1) != 1))
                    got = (f"0/1 values, {several} of {y.shape[0]} rows with several 1s or none: several labels "
                           "per sample (multi-label)?")
                    fix = ("fdl has no multi-label task (it measures one class per sample, or regression targets); "
                           "to measure the features against these targets, save them as floats, "
                           f"{key} = {key}.astype(np.float32): they are analysed as regression targets, and loss and "
                           "r2 then compare the raw outputs (logits) with 0/1, not a sigmoid model's fit")
                raise ProbeError(
                    f"the probe {path}: {kind} '{key}' of shape {y.shape} is not one-hot", got=got, fix=fix,
                )
            one_hot_columns = int(y.shape[1])
            y = y.argmax(axis=1)
        labels = y.astype(np.int64)
        if labels.min() < 0:
            first = int(np.argmax(labels < 0))
            plus_minus = bool(np.isin(labels, (-1, 1)).all())
            raise ProbeError(
                f"the probe {path}: '{key}' holds a negative class label ({labels[first]} at {first})",
                fix="class labels must be 0..C-1" + (
                    f"; labels -1 and +1 (a binary ±1 encoding): save {key} = ({key} > 0).astype(np.int64), class 1 "
                    "for +1" if plus_minus else ""),
            )
        return labels, "classes", int(labels.max()) + 1, one_hot_columns
    targets = y.astype(np.float64)
    _check_finite(path, key, targets)
    _check_target_range(path, key, float(np.max(np.abs(targets))) if targets.size else 0.0)
    return (targets.reshape(-1, 1) if targets.ndim == 1 else targets), "regression", None, None


#: a probe given as what a training job reads its data from: images, tables (fdl reads neither: the fixes say how to
#: save them as the arrays the model is called with)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".parquet", ".feather", ".json", ".jsonl", ".txt"})
_IMAGES_FIX = ("fdl reads no image files: save the probe images as the model sees them (preprocessed floats, "
               "channels first) with their class indices, e.g. from a torchvision dataset `ds` with its eval "
               "transform: np.savez('probe.npz', x=torch.stack([img for img, _ in ds]).numpy(), "
               "y=np.array([label for _, label in ds]))")
_TABLE_FIX = ("fdl reads no tables: save the feature columns as x (floats) and the target column as y, e.g. with "
              "pandas: df = pd.read_csv(FILE); np.savez('probe.npz', x=df.drop(columns='label').to_numpy('float32'), "
              "y=df['label'].to_numpy()) (class labels as integers 0..C-1)")

#: a probe saved as one .npy array a file (x.npy, y.npy): fdl reads one file holding both
_NPY_FIX = ("a .npy file holds one array, and a probe is x with its y in one file: join them, "
            "np.savez('probe.npz', x=np.load('x.npy'), y=np.load('y.npy'))")


def _directory_error(path: Path) -> ProbeError:
    """--probe DIR: the probe file it holds, where it holds one; a folder of images (an ImageFolder's class
    folders) or of tables gets the conversion."""
    try:
        entries = sorted(path.iterdir())[:1000]
        inside = [entry for entry in entries if entry.is_file()]
        inside += [sub for entry in entries if entry.is_dir() and not entry.name.startswith(".")
                   for sub in sorted(entry.iterdir())[:20]]
    except OSError:
        inside = []
    probes = [entry for entry in inside if entry.parent == path and entry.suffix.lower() in PROBE_SUFFIXES]
    images = any(entry.suffix.lower() in _IMAGE_SUFFIXES for entry in inside)
    tables = any(entry.suffix.lower() in _TABLE_SUFFIXES for entry in inside)
    return ProbeError(
        f"probe {path} is a directory; expected a probe file",
        got="a directory" + (" of images" if images and not probes else ""),
        fix=f"pass the probe file itself: --probe {probes[0]}" if probes else _IMAGES_FIX if images
        else _TABLE_FIX if tables else
        f"pass a probe file: np.savez(FILE, x=..., y=...) ({', '.join(PROBE_SUFFIXES)})",
    )


def _empty_file(path: Path) -> bool:
    """Whether `path` is a file of 0 bytes (False when it cannot be looked at)."""
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _first_bytes(path: Path) -> bytes:
    """The first 8 bytes of `path`, which tell what a file is (b'' when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError:
        return b""


def load_probe(path: Path, *, name: str = DEFAULT_NAME) -> Probe:
    """Read and check a probe file: ``x`` (aliases in `X_KEYS`: ``inputs``, ``data``, ``images``, ``X``,
    ``input_ids``), optional ``y`` (`Y_KEYS`: ``targets``, ``labels``, ``Y``, ``label``, ``target``); the first
    found wins.

    Integer ``y`` are class labels (a one-hot integer matrix is turned into labels); float ``y``
    are regression targets. Raises ProbeError naming the file for any problem found.
    """
    path = Path(path)
    if path.is_dir():
        raise _directory_error(path)
    if not path.is_file():
        kind = special_file(path)
        if kind is not None:  # it exists, but is no file to read a probe from (/dev/null, a FIFO)
            raise ProbeError(
                f"probe {path} is not a regular file",
                got=kind,
                fix=f"pass a probe file saved as one of {', '.join(PROBE_SUFFIXES)} (np.savez(FILE, x=..., y=...))",
            )
        raise ProbeError(
            f"probe file {path} not found", fix="check the --probe path (or the probe in fdl.toml)"
        )
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        suffix = path.suffix.lower()
        raise ProbeError(
            f"probe {path}: unknown format {path.suffix!r}",
            got=path.suffix,
            fix=_IMAGES_FIX if suffix in _IMAGE_SUFFIXES else _TABLE_FIX if suffix in _TABLE_SUFFIXES
            else _NPY_FIX if suffix == ".npy" else f"save it as one of {', '.join(PROBE_SUFFIXES)}",
        )
    try:
        arrays = reader(path)
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
        signals.through(exc)  # a Ctrl-C met in a reader's C code: not damage
        raw = f"{type(exc).__name__}: {exc}"
        reason = raw[:300]  # an exception's own words, cut; fdl's below are said whole
        fix = (
            "the file is corrupt or not of the format its suffix says; save plain numeric arrays "
            "(np.savez(FILE, x=..., y=...))"
        )
        if "allow_pickle" in raw or "pickled (object) data" in raw:
            # numpy's advice here is to load it unsafely, i.e. to run the file's code: never repeat it.
            reason = "it holds pickled Python objects (or is not an .npz at all); fdl never unpickles a probe"
            objects = _npz_object_arrays(path)
            if objects:  # a sound file whose arrays of Python objects (a pandas column's .values) fdl cannot read
                reason, fix = _object_arrays_said(objects)
        empty = _empty_file(path)
        if empty:  # "EOFError: ", numpy's "No data left in file": a save that never ran, or a copy cut to nothing
            reason = "the file is empty (0 bytes)"
        elif isinstance(exc, OSError) and "file signature not found" in str(exc):  # h5py's words for a non-HDF5 file
            reason = f"not an HDF5 file: its first bytes are {_first_bytes(path)!r}"
        if isinstance(exc, PermissionError):  # not damage: this user may not read it
            reason = "permission denied: this user may not read the file"
            fix = f"make it readable (chmod a+r {path}; the folders above it need a+x), or run fdl as a user who may"
        raise ProbeError(f"cannot read the probe {path}", got=reason, fix=fix) from None
    if "x" not in arrays and set(arrays) <= {"arr_0", "arr_1"} and "arr_0" in arrays:
        arrays = {"x": arrays["arr_0"], **({"y": arrays["arr_1"]} if "arr_1" in arrays else {})}
    x_key, x = _pick(arrays, X_KEYS)
    if x_key is None:
        raise ProbeError(
            f"the probe {path} has no inputs",
            got="keys: " + (listed_names(sorted(arrays), 8) + (f", ... ({len(arrays)} in all)" if len(arrays) > 8 else "")
                            or "none")
            + ("; the weights of a model: a checkpoint given as the probe?" if arrays and _looks_like_checkpoint(arrays)
               else ""),
            fix=f"store the inputs under one of {', '.join(X_KEYS)}",
        )
    stored_dtype = str(x.stored if isinstance(x, RowReader) else getattr(x, "dtype", ""))
    inputs, x_sha256 = _inputs(path, x_key, x)
    y_key, y = _pick(arrays, Y_KEYS)
    targets, task, n_classes, one_hot_columns = (None, None, None, None)
    if y_key is not None:
        targets, task, n_classes, one_hot_columns = _targets(path, y_key, y, inputs.shape[0])
    unused = tuple(str(key) for key in arrays if key not in (x_key, y_key))
    return Probe(
        name=name, path=path, x=inputs, y=targets, task=task, n_classes=n_classes, sha256=_file_sha256(path),
        stored_dtype=stored_dtype, unused=unused, keys=(x_key, y_key or ""), x_sha256=x_sha256,
        one_hot_columns=one_hot_columns,
        unread_targets=() if y_key is not None else tuple(
            key for key in unused if _one_value_a_sample(key, arrays[key], tuple(inputs.shape))),
    )


#: Words of an array's name that say it is a value a sample of another kind than targets (`sample_weight`, `ids`,
#: `groups`, `fold_id`, `sampleIndex`): not named as unread targets (`_one_value_a_sample`), but in the note.
NOT_TARGET_WORDS = frozenset({
    "weight", "weights", "id", "ids", "idx", "index", "indices", "group", "groups", "fold", "folds", "split",
    "splits", "length", "lengths", "len", "lens", "mask", "masks", "offset", "offsets",
})


def _one_value_a_sample(key: str, array: Any, x_shape: tuple[int, ...]) -> bool:
    """Whether an array the probe does not read has the shape of targets of its samples, (n,) or (n, k), and not
    that of the inputs (an attention mask beside the token ids is a second input), under a name that does not say
    it is something else (NOT_TARGET_WORDS: an unlabelled probe's `sample_weight` was advised to be saved as y)."""
    shape = getattr(array, "shape", None)
    words = re.split(r"[^0-9a-z]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).casefold())
    return (shape is not None and 1 <= len(shape) <= 2 and int(shape[0]) == x_shape[0]
            and tuple(int(size) for size in shape) != x_shape and not NOT_TARGET_WORDS.intersection(words))


def unused_note(probe: Probe) -> str | None:
    """The note that names the probe's arrays fdl does not read, or None: a model whose forward has an optional
    second input (``forward(x, mask=None)``) runs without the mask saved beside x, and no error says so."""
    others = [key for key in probe.unused if key not in probe.unread_targets]
    if not others:
        return None
    shown = listed_names(others, 8) + (f", ... ({len(others)} in all)" if len(others) > 8 else "")
    x_key, y_key = probe.keys
    return (
        f"probe {probe.name!r} ({probe.path}): not read: {shown}; fdl gives the model {x_key!r} alone, forward(x)"
        + (f", and takes {y_key!r} as the targets" if y_key else "")
        + " (a model of several inputs: docs/usage.md, Probe)"
    )


def unread_targets_warning(probe: Probe) -> str | None:
    """The warning over a probe without targets that holds arrays of one value a sample under other names (the
    labels saved as `y_test`), which fdl would otherwise leave unread, analysing the run without targets."""
    if not probe.unread_targets:
        return None
    first = shown_name(probe.unread_targets[0])
    named = first_names(probe.unread_targets, 4)
    one = len(probe.unread_targets) == 1
    return (
        f"probe {probe.name!r} ({probe.path}) has no targets under the names fdl reads ({', '.join(Y_KEYS)}): "
        f"{named}, one value a sample, {'is' if one else 'are'} not read; if {'it holds' if one else 'one holds'} "
        f"the targets, save {'it' if one else 'that one'} as y: np.savez(FILE, x=x, y={first}) (accuracy, the loss "
        "and the quality Π* need targets; the spectrum, D_LR, CKA, the overlaps and the regime do not)"
    )


def validate_probe(probe: Probe, *, n_outputs: int) -> None:
    """Check the targets against the model's number of outputs C (labels < C, target width == C)."""
    if probe.y is None:
        return
    if probe.one_hot_columns is not None and probe.one_hot_columns != n_outputs:
        # an integer one-hot matrix says how many classes there are: of another width, it is another model's
        # probe, whose labels would be read as classes of this one (a float one is refused as regression targets)
        y_key = probe.keys[1]
        raise ProbeError(
            f"the probe {probe.path} ({probe.name}): '{y_key}' is a one-hot matrix of {probe.one_hot_columns} "
            f"columns (classes) but the model has {counted(n_outputs, 'output')}",
            fix=f"use the probe that matches this model, or the right --model-kwargs for its output size; if its "
                f"columns are the model's classes 0..{probe.one_hot_columns - 1} (class c is output c), save "
                f"{y_key}.argmax(1)",
        )
    if probe.task == "classes" and probe.n_classes is not None and probe.n_classes > n_outputs:
        # the labels' own range: "labels 0..10" was printed for labels 1..10, hiding labels numbered from 1
        lowest, highest = min(int(np.min(rows)) for rows in _target_blocks(probe.y)), probe.n_classes - 1
        fix = "use the probe that matches this model, or the right --model-kwargs for its output size"
        distinct = np.unique(np.concatenate([np.unique(rows) for rows in _target_blocks(probe.y)]))
        if lowest >= 1 and highest == n_outputs:
            fix = (f"the labels run from 1 to {highest}, the model's classes from 0 to {n_outputs - 1}: "
                   f"if they are numbered from 1, save y - 1; else {fix}")
        elif len(distinct) <= n_outputs:  # classes named otherwise ({3, 7, 9}), no more of them than outputs
            named = ", ".join(map(str, distinct[:6])) + (", ..." if len(distinct) > 6 else "")
            fix = (f"the probe holds {len(distinct)} distinct labels ({named}): if they are the model's classes "
                   "0, 1, ... in that order, renumber them, y = np.unique(y, return_inverse=True)[1]; else " + fix)
        if n_outputs == 1:  # one output and whole numbers beyond 0/1: a regression on counts, saved as integers?
            fix += ("; if y are regression targets (whole numbers), save them as floats, y = y.astype(np.float32): "
                    "integer y are read as class labels")
        raise ProbeError(
            f"the probe {probe.path} ({probe.name}) has class label {highest} but the model has "
            f"{n_outputs} output{'s' if n_outputs != 1 else ''}",
            got=f"labels {lowest}..{highest}",
            fix=fix,
        )
    if probe.task == "regression" and probe.y.shape[1] != n_outputs:
        labels = probe.y.shape[1] == 1 and all(
            bool(np.all(rows >= 0) and np.all(rows == np.round(rows))) for rows in _target_blocks(probe.y)
        )
        raise ProbeError(
            f"the probe {probe.path} ({probe.name}) has {counted(probe.y.shape[1], 'regression target')} per sample but "
            f"the model has {n_outputs} output{'s' if n_outputs != 1 else ''}",
            got=f"y shape {probe.y.shape}" + (", float values that are all whole numbers" if labels else ""),
            fix="targets must be (n, C) with C the model's outputs"
            + (f"; if they are class labels, save them as integers: {INTEGER_LABELS_RECIPE}" if labels else ""),
        )


def _target_blocks(y: np.ndarray | RowReader) -> Iterator[np.ndarray]:
    """Targets in row blocks for a whole-array check: from the file a chunk at a time (CHUNK_BYTES) when
    read in place, else the array itself. A check that holds on every block holds on the whole."""
    if isinstance(y, RowReader):
        for _, rows in y.chunks():
            yield rows
    else:
        yield y


def float_one_hot(probe: Probe) -> bool:
    """Whether the probe's regression targets are a float one-hot matrix (Keras' to_categorical).

    Targets read in place are checked a chunk at a time, stopping at the first chunk that is not."""
    y = probe.y
    return (
        probe.task == "regression" and y is not None and y.ndim == 2 and y.shape[1] > 1
        and all(bool(np.isin(rows, (0.0, 1.0)).all() and (rows.sum(axis=1) == 1).all()) for rows in _target_blocks(y))
    )


def soft_labels(probe: Probe) -> bool:
    """Whether the probe's regression targets are rows of class probabilities that are no one-hot matrix
    (`float_one_hot`): soft labels (distillation, label smoothing), each row in [0, 1] summing to 1 (to 1e-6),
    some row holding a value strictly between 0 and 1. Targets read in place are checked a chunk at a time."""
    y = probe.y
    return (
        probe.task == "regression" and y is not None and y.ndim == 2 and y.shape[1] > 1 and not float_one_hot(probe)
        and all(bool(((rows >= 0) & (rows <= 1)).all() and np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-6))
                for rows in _target_blocks(y))
    )


def zero_one_targets(probe: Probe) -> bool:
    """Whether the probe's regression targets hold 0 and 1 alone and are not a float one-hot matrix
    (`float_one_hot`): multi-label targets, or a binary classifier's as floats. A model trained on them with a
    sigmoid (BCEWithLogitsLoss) outputs logits, which loss and r2 compare with 0/1 as they are."""
    y = probe.y
    return (
        probe.task == "regression" and y is not None and not float_one_hot(probe)
        and all(bool(np.isin(rows, (0.0, 1.0)).all()) for rows in _target_blocks(y))
    )


#: A class holding at least this share of a probe's labels (and 1.5/C, classify's near-chance factor) is said
#: at analyze, with what a constant guess of it scores
DOMINANT_CLASS_SHARE = 0.5


def label_chance(probe: Probe) -> tuple[float, float] | None:
    """(chance accuracy, labels' entropy) of a probe of class labels, None for other probes: what a guess that
    ignores the input scores at best, a constant guess of the largest class (accuracy = its share of the labels)
    and the labels' shares themselves as the predicted probabilities (cross-entropy = their entropy, natural
    log). 1/C and log C are those of a uniform guess over the model's C outputs: far below the probe's own for a
    head of 1 000 classes on labels of 5 (0.001 against 0.200 when they are balanced). Recorded in the store
    (`ProbeInfo.chance_accuracy`, `label_entropy`), where `fdl classify` reads accuracy and cross-entropy
    against them (docs/regimes.md)."""
    if probe.task != "classes" or probe.y is None:
        return None
    labels = np.asarray(probe.y)
    if labels.size == 0:
        return None
    shares = np.bincount(labels.reshape(-1)) / labels.size
    shares = shares[shares > 0]
    return float(shares.max()), float(-np.sum(shares * np.log(shares))) + 0.0  # + 0.0: one class's −0.0 is 0


def dominant_class_note(probe: Probe, *, n_outputs: int) -> str | None:
    """For a probe of class labels one class of which holds most (`DOMINANT_CLASS_SHARE`, and at least 1.5/C):
    what a constant guess of that class scores, accuracy = its share and cross-entropy = the labels' entropy
    (`label_chance`), against which the accuracy and cross_entropy read. None otherwise."""
    if probe.task != "classes" or probe.y is None or n_outputs < 2:
        return None
    chance = label_chance(probe)
    if chance is None:
        return None
    share, entropy = chance
    if share < max(DOMINANT_CLASS_SHARE, 1.5 / n_outputs):
        return None
    labels = np.asarray(probe.y)
    counts = np.bincount(labels)
    top = int(counts.argmax())
    return (f"probe {probe.name!r}: {counts[top]} of {labels.size} labels ({100 * share:.1f} %) are class {top}: a "
            f"constant guess of it scores accuracy {share:{UNIT_SPEC}} and cross_entropy {entropy:.3f} (the labels' "
            f"entropy), not chance 1/C = {1 / n_outputs:{UNIT_SPEC}} and log C = {np.log(n_outputs):.3f}: read accuracy "
            "and cross_entropy against those, as fdl classify's lines on a near-chance or already fitting checkpoint do")


#: The anchor subset (a probe's first m rows, SPEC §5) is said to misrepresent the probe's classes
#: (`anchor_class_skew`) where the total variation distance between the anchors' class proportions and the
#: probe's exceeds both ANCHOR_SKEW_FLOOR and ANCHOR_SKEW_FACTOR times the largest distance of ANCHOR_SKEW_DRAWS
#: random choices of m of the n rows (drawn with a fixed seed: the same probe is judged alike every time).
#: Why (docs/measures.md, "Anchors of a class-sorted probe"): the distance of random anchors is no constant:
#: ~0.19 on average for ImageNet's 1 000 classes at 4 096 of 50 000 rows (a few anchors a class), 0.01 for 10
#: classes at 4 096 of 5 000, half-normal and heavy-tailed for 2 classes; the largest of the draws follows each
#: shape, twice it is beyond what shuffled probes reached, and class-sorted ones (0.92 and 0.18 in those two
#: cases) lie far past it.
ANCHOR_SKEW_FLOOR = 0.1
ANCHOR_SKEW_FACTOR = 2.0
ANCHOR_SKEW_DRAWS = 64


@dataclass(frozen=True)
class AnchorSkew:
    """How a probe's anchor subset, its first m of n rows, misrepresents its classes (`anchor_class_skew`):
    it holds `held` of the probe's `classes` classes, in proportions at total variation distance `distance`
    from the probe's, where random choices of m rows reached at most `random`."""

    m: int
    n: int
    held: int
    classes: int
    distance: float
    random: float


def _mix_skewed(distance: float, random: float) -> bool:
    """Whether anchors at total variation `distance` from the probe's class mix, where random rows reached at most
    `random`, are far from it: the check (`anchor_class_skew`), and the warning's words for it (`anchor_skew_warning`)."""
    return distance > max(ANCHOR_SKEW_FLOOR, ANCHOR_SKEW_FACTOR * random)


def anchor_class_skew(labels: Any, m: int) -> AnchorSkew | None:
    """An `AnchorSkew` where the first m of the class `labels` (n,) are far from the labels' class mix
    (ANCHOR_SKEW_FLOOR, ANCHOR_SKEW_FACTOR); None where they are not, or m >= n (the anchors are every row)."""
    labels = np.asarray(labels).reshape(-1)
    n = int(labels.size)
    if m >= n or m < 1:
        return None
    counts = np.bincount(labels)
    present = counts > 0
    counts = counts[present]
    shares = counts / n
    held = np.bincount(labels[:m], minlength=present.size)[present]
    distance = 0.5 * float(np.abs(held / m - shares).sum())
    draws = np.random.default_rng(0).multivariate_hypergeometric(counts, m, size=ANCHOR_SKEW_DRAWS)
    random = 0.5 * float(np.abs(draws / m - shares).sum(axis=1).max())
    # Where m is small for the classes (100 anchors of 1 000 classes) random rows are as far from the probe's mix
    # as sorted ones, but hold far more classes: fewer than 1/ANCHOR_SKEW_FACTOR of the fewest any draw held.
    few = ANCHOR_SKEW_FACTOR * np.count_nonzero(held) < int(np.count_nonzero(draws, axis=1).min())
    if not _mix_skewed(distance, random) and not few:
        return None
    return AnchorSkew(m=m, n=n, held=int(np.count_nonzero(held)), classes=int(counts.size), distance=distance,
                      random=random)


def anchor_skew_warning(name: str, skew: AnchorSkew, *, path: Path | None = None) -> str:
    """What a probe whose anchor subset misrepresents its classes (`anchor_class_skew`) does to the fields on it:
    analyze's warning (with the probe file's `path`), and the note report and classify repeat from the store."""
    where = f" ({path})" if path is not None else ""
    if _mix_skewed(skew.distance, skew.random):
        mix = (f"in a class mix that differs from the probe's by {skew.distance:.2f} (total variation; random rows "
               f"differ by at most {skew.random:.2f})")
    else:  # flagged for the classes held alone: m is small for the classes, and random rows are as far from the mix
        mix = f"far fewer than {skew.m} rows drawn at random hold"
    return (
        f"probe {name!r}{where}: its first {skew.m} of {skew.n} rows, the anchor subset (--anchor-size {skew.m}), "
        f"hold {skew.held} of its {skew.classes} classes, {mix}: is the probe "
        "sorted by class? cka_init, cka_prev, overlap_init and overlap_prev, and the regime that rests on them, "
        "see those rows alone (docs/measures.md, \"Anchors of a class-sorted probe\"); shuffle the probe's rows "
        "once, x and y alike, with a fixed seed, and analyse it into a new store, or analyse with --anchor-size "
        f"{skew.n} (every row) where memory allows"
    )


def targets_without_energy(probe: Probe, *, center: bool) -> str | None:
    """Why the probe's targets carry no energy, Σ_c ⟨y_c, y_c⟩ = 0, so that Q*, Π* and k_τ of the quality are
    0/0 (docs/measures.md): "are all 0", or with `center`, "are constant" (regression targets equal in every
    row) / "hold one class" (class labels); None when they carry some, or there are none. Targets read in
    place are checked a chunk at a time."""
    y = probe.y
    if y is None or probe.task is None:
        return None
    if probe.task == "classes":
        labels = np.asarray(y)
        return "hold one class" if center and labels.size and bool((labels == labels.flat[0]).all()) else None
    first: np.ndarray | None = None
    zero = constant = True
    for rows in _target_blocks(y):
        rows = np.asarray(rows)
        if rows.shape[0] == 0:
            continue
        if first is None:
            first = rows[:1]
        zero = zero and not bool(np.any(rows))
        constant = constant and bool((rows == first).all())
        if not zero and not (center and constant):
            return None
    if first is None:
        return None
    return "are all 0" if zero else "are constant" if center and constant else None


#: the rows `raw_pixels_warning` reads: the first batch's worth, enough to tell saved pixels from preprocessed ones
RAW_PIXEL_ROWS = 512

#: the least maximum of those rows that `raw_pixels_warning` takes for 8-bit pixels. **(choice)** the brightest
#: pixel of a batch of 8-bit images is far above it, while whole-number features that are no pixels (counts of
#: words or k-mers per position, small integer codes) stay below: they were called raw pixels from a maximum of 2
RAW_PIXEL_LEAST_MAX = 32

#: the most bytes of those rows `raw_pixels_warning` reads, and rounds a copy of, at once (one row at least): 512
#: ImageNet images are ~300 MB, which the check held twice over when it took them whole; the verdict is the same
RAW_PIXEL_CHUNK_BYTES = 4 * 2**20


def raw_pixels_warning(probe: Probe) -> str | None:
    """The warning over float image inputs (x of 3 or more dimensions) whose first `RAW_PIXEL_ROWS` samples hold
    only whole numbers from 0 to at most 255, some `RAW_PIXEL_LEAST_MAX` or above: uint8 pixels cast to float
    (`x.astype(np.float32)`) and not normalised as training's transforms did, which fdl would analyse as they are (a
    network trained on normalised images scores chance on them, and its regime still reads). **(choice)** a warning,
    not an error: a model that normalises its own inputs takes raw pixels."""
    x = probe.x
    if np.dtype(x.dtype).kind != "f" or len(x.shape) < 3:
        return None
    count = min(RAW_PIXEL_ROWS, int(x.shape[0]))
    row_bytes = int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize
    if count == 0 or row_bytes == 0:
        return None
    step = max(1, RAW_PIXEL_CHUNK_BYTES // row_bytes)
    low, high = np.inf, -np.inf
    for start in range(0, count, step):
        rows = np.asarray(x[start:min(count, start + step)])
        # a NaN makes min and max NaN: no pixel, as when the rows were taken whole (`not 32 <= nan <= 255`)
        least, most = float(rows.min()), float(rows.max())
        if np.isnan(least) or least < 0 or most > 255 or not bool((rows == np.round(rows)).all()):
            return None
        low, high = min(low, least), max(high, most)
    if not RAW_PIXEL_LEAST_MAX <= high:
        return None
    low += 0.0  # -0.0 (a min that met it first) is said 0
    return (
        f"probe {probe.name!r} ({probe.path}): x holds whole numbers from {low:g} to {high:g} as floats, raw pixel "
        "values? fdl gives them to the model as they are; a network trained on normalised images sees other inputs "
        "(its accuracy and features here are not training's): save x normalised as training did, e.g. "
        "x = ((images / 255 - mean) / std).astype(np.float32), or normalise in a --model wrapper (docs/usage.md, "
        "Inputs x); a model that normalises its own inputs needs neither"
    )
