"""Find, order, hash and load checkpoints safely; build the model they belong to.

Safety policy: nothing here unpickles with ``weights_only=False`` unless the caller passed
``trust_pickle=True``. Discovery only reads safetensors headers, zip listings, a static scan of
pickle opcodes (which never executes them) and ``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import contextvars
import copy
import dataclasses
import errno
import functools
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import logging
import numbers
import os
import pickle
import pickletools
import re
import shlex
import struct
import sys
import threading
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from glob import escape as glob_escape
from glob import glob as glob_paths
from glob import has_magic
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn, TextIO, TypeVar

import numpy as np
import torch
from torch import nn

from fdl_cli import dcp, foreign, signals
from fdl_cli.errors import (
    CheckpointError,
    FdlError,
    ModelError,
    SameStepError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    WeightsNotFoundError,
    counted,
    first_and_more,
    first_few,
    first_line,
    first_names,
    listed_names,
    quoted_name,
    shown_name,
    shown_path,
    special_file,
    terminal_safe,
    utf8_path,
)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2")
#: Two-part suffixes of torch.save files: timm and the PyTorch ImageNet example write checkpoint-N.pth.tar.
TAR_SUFFIXES = (".pth.tar", ".pt.tar")
#: Keys of a checkpoint's metadata or top-level dict holding its step, first found wins: the common two,
#: then DeepSpeed's (`global_steps`), nanoGPT's (`iter_num`) and Megatron's (`iteration`), the epoch last.
STEP_KEYS = ("step", "global_step", "global_steps", "iter_num", "iteration", "epoch")
#: Every step key read, in the order they are tried: STEP_KEYS, with the steps training libraries keep
#: below the top level of their dict among them, each after the top level's counts of steps and before
#: any epoch: fairseq's number of updates (`optimizer_history[-1]["num_updates"]`, the count its trainer
#: resumes from), then mmengine's and mmcv's `meta` (`{"meta": {"epoch": E, "iter": I, ...}}`), its
#: iteration before its epoch.
_FAIRSEQ_UPDATES = "optimizer_history[-1].num_updates"
STEP_ORDER = (*STEP_KEYS[:-1], _FAIRSEQ_UPDATES, "meta.iter", "epoch", "meta.epoch")
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MANIFEST_NAME = "fdl.toml"
_HF_SINGLE = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: The folder Hugging Face's Trainer saves a checkpoint into before renaming it checkpoint-N once complete: an
#: unfinished save, never a checkpoint (--watch analysed one that had settled under a path the rename then took away).
_HF_STAGING = re.compile(r"tmp-(checkpoint-\d+)")
_STEP_FIX = "pass --step-regex 'step_(\\d+)' (first group = step), or --glob to select fewer files"
_TRUST_FIX = "if you trust its origin, re-run with --trust-pickle"
#: Training state that Hugging Face's Trainer and Accelerate save beside the model (optimizer,
#: scheduler, gradient scaler, sampler, one RNG state per process, the pickled TrainingArguments):
#: never model weights. A folder scan skips them by name; peeking would load them (optimizer.pt is
#: twice the model) and could take rng_state_0.pth, which holds tensors, for a checkpoint of step 0.
#: DeepSpeed's ZeRO optimizer shards too (global_step100/zero_pp_rank_0_mp_rank_00_optim_states.pt,
#: bf16_... one per data-parallel rank beside mp_rank_00_model_states.pt): counted as checkpoints, they
#: made its one-folder-per-step layout read as folders of several, and the hint named one folder.
_TRAINING_STATE = re.compile(
    r"(optimizer|scheduler|scaler|sampler|rng_state|random_states|training_args)(_\d+)?\.(pt|pth|bin)"
    r"|(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt"
)


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: a file, or an HF-style folder (``checkpoint-500/``) that is one checkpoint.

    ``kind`` is one of ``state_dict``, ``safetensors``, ``hf_dir``, ``torchscript``, ``export``,
    ``pickle`` (a pickled Python object beyond tensors: loadable only with ``trust_pickle``).
    """

    path: Path
    step: int
    step_source: str
    kind: str


@dataclass(frozen=True)
class Discovery:
    """Checkpoints ordered by step, one note per skipped file, and pairs holding identical weights."""

    checkpoints: list[CheckpointRef]
    notes: list[str]
    duplicates: list[tuple[Path, Path]]
    #: (path, reason) of files with a checkpoint suffix that cannot be read (corrupt, truncated, empty);
    #: `analyze` reports them and goes on with the others.
    bad: list[tuple[Path, str]] = field(default_factory=list)
    #: the steps of every checkpoint found, before --steps / --every selected among them (None: not known)
    steps_found: tuple[int, ...] | None = None
    #: (dropped, kept): files left out as copies of another file of the same step, identical weights (a
    #: note says so); a resume checks that none is a stored checkpoint's file now holding another step
    copies: list[tuple[CheckpointRef, CheckpointRef]] = field(default_factory=list)


#: The state_dict keys of the run's model, given the run's other checkpoints in step order (`model_keys`); None
#: where they cannot be known
ModelKeys = Callable[[Sequence[CheckpointRef]], "frozenset[str] | None"]


@dataclass
class LoadedCheckpoint:
    """Tensors (``state_dict``) or a whole module (``module``), plus step-like metadata of the file."""

    ref: CheckpointRef
    state_dict: dict[str, torch.Tensor] | None
    module: nn.Module | None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the module's parameters as the file holds them (named_parameters order), kept by the pipeline
    #: before --dtype converts the module in place
    parameters: list[torch.Tensor] | None = None
    #: `file_signature` of the file, taken by the pipeline before it read and hashed it
    file_signature: str = ""
    #: other entries of the file's dict holding a copy of the same weights (an EMA, a teacher), which
    #: --weights would pick; empty when --weights is given (`_weight_copies`)
    other_weights: tuple[str, ...] = ()
    #: the library ("mmengine", "lightning") that swapped an EMA's weights into `state_dict`, the trained
    #: model's being under the copy it names (`_ema_swapped`); "" for weights that are the model's own
    ema_swapped_in: str = ""
    #: the modules' extra states beside `state_dict` that are not tensors (`is_extra_state`: any picklable value),
    #: under the same names; `build_model` loads them with the tensors (the modules' `set_extra_state`)
    extra_state: dict[str, Any] = field(default_factory=dict)
    #: the classes of the file's objects read as placeholders (`ObjectNotLoaded`, --trust-pickle): not importable
    #: here, holding no weights (a training script's `__main__.TrainConfig`)
    not_loaded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The ``fdl.toml`` of a checkpoint folder; paths in it are already resolved against its folder."""

    path: Path
    model: str | None
    model_kwargs: dict[str, Any]
    probe: list[str]
    layer: list[str]
    options: dict[str, Any]
    weights: str | None = None  # --weights for the run's checkpoints (an EMA copy, say)


# ----------------------------------------------------------------------------------------- peeking


@dataclass(frozen=True)
class _Peek:
    kind: str | None  # None: not a model (skip_reason says why)
    metadata: dict[str, Any]
    skip_reason: str | None = None
    fingerprint: str | None = None  # cheap sample hash; equal for identical weights
    steps_read: bool = True  # False: a pickle whose step keys were not read (only unpickling reads them)
    #: the weights' names (`_key_names`), where the file tells them cheaply (a state_dict, a safetensors header)
    keys: frozenset[str] | None = None
    #: the plain values' names beside a flat dict's tensors (`{**sd, "step": 5}`), empty for any other file:
    #: such a file's tensors are weights only if they are the run's (`_foreign_flat_dicts`)
    beside: tuple[str, ...] = ()


def _pickle_globals(data: bytes) -> tuple[list[str], bool]:
    """Globals referenced by the pickles in ``data`` and whether they store tensors (opcodes only, never run).

    Legacy torch files are several pickles in a row (magic, protocol, sys info, object): read up to four.
    """
    found: list[str] = []
    strings: list[Any] = []
    memo: dict[int, Any] = {}
    has_tensors = False
    stream = io.BytesIO(data)
    for index in range(4):
        if stream.tell() >= len(data):
            break
        last: Any = None
        try:
            ops = list(pickletools.genops(stream))
        except Exception:  # noqa: BLE001 - damage in the first pickle is the caller's corrupt file
            if index == 0:
                raise
            break
        for opcode, arg, _pos in ops:
            name = opcode.name
            pushed: Any = None
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                pushed = arg
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(str(arg))] = last
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed = memo.get(int(str(arg)))
            elif name in ("PERSID", "BINPERSID"):
                has_tensors = True
            if pushed is not None:
                strings.append(pushed)
            if name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                last = pushed
        memo.clear()
    has_tensors = has_tensors or any("_rebuild_tensor" in g or "_rebuild_parameter" in g for g in found)
    return sorted(set(found)), has_tensors


_SAFE_GLOBAL_PREFIXES = (
    "collections.OrderedDict",
    "torch._utils._rebuild",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.storage",
    "torch._tensor._rebuild",
    "torch.float",
    "torch.double",
    "torch.half",
    "torch.bfloat16",
    "torch.int",
    "torch.long",
    "torch.bool",
    "torch.uint8",
    "torch.int8",
    "torch.int16",
    "torch.int32",
    "torch.int64",
    "torch.Size",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "_codecs.encode",
    "torch._utils._rebuild_parameter",
)


def _main_pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(pkl[0]) if pkl else b""
    with open(path, "rb") as handle:
        return handle.read()


def _unsafe_globals(path: Path) -> tuple[list[str], bool]:
    """Globals beyond what ``weights_only`` allows referenced by ``path``, and whether it stores tensors.

    Zip checkpoints ask torch itself; legacy/plain pickles use a static opcode scan. Nothing runs.
    """
    try:
        globals_, has_tensors = _pickle_globals(_main_pickle_bytes(path))
    except Exception:  # noqa: BLE001 - unreadable opcodes: the caller reports the file as corrupt
        return [], False
    allowed = _allowed_global_names()
    unsafe = [g for g in globals_ if not g.startswith(_SAFE_GLOBAL_PREFIXES) and g not in allowed]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            has_tensors = has_tensors or any("/data/" in n for n in archive.namelist())
        try:
            with _fdl_allowlist():  # fdl's own allowlist, as it loads
                unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - fall back to the static scan above
            pass
    return unsafe, has_tensors


def _allowed_global_names() -> set[str]:
    """The names of `_numpy_scalar_globals` as a pickle spells them."""
    names = set()
    for item in _numpy_scalar_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f"{item.__module__}.{item.__qualname__}")
    return names


def _is_torchscript(names: Sequence[str]) -> bool:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _is_export(path: Path, names: Sequence[str]) -> bool:
    return path.suffix == ".pt2" or any(n.endswith("/archive_format") for n in names)


class _CutShort(ValueError):
    """A file shorter than its own header says: a save or copy not finished."""


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise _CutShort("the file is empty (0 bytes)" if not raw_len
                                else "file shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw_len)
            size = path.stat().st_size
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file size {size}")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):  # was read as one before this check: an AttributeError's traceback
            raise ValueError("a header that is not a table")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise _CutShort(
                f"tensor data ends at byte {8 + length + end} but the file has {size} (truncated)"
            )
    except OSError as exc:  # the file cannot be read at all (permission, ...): not a damaged file
        got, fix = _os_reason(path, exc)
        raise CheckpointError(f"cannot read the safetensors file {path}", got=got, fix=fix) from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"cannot read the safetensors file {path}",
            got=str(exc),
            # safetensors writes its header first: a file cut short is most often one still being written
            fix=(_CUT_SHORT_FIX if isinstance(exc, _CutShort)
                 else "the file is truncated or not safetensors; re-save or re-download it"),
        ) from None
    return header


def _file_steps(obj: Mapping[Any, Any]) -> dict[str, Any]:
    """The steps a checkpoint's dict holds (`STEP_ORDER`'s keys): at its top level (`_metadata_steps`),
    fairseq's `optimizer_history[-1]["num_updates"]`, and the `epoch` and `iter` of mmengine's `meta`."""
    out = _metadata_steps(obj)
    history = obj.get("optimizer_history")
    if isinstance(history, list) and history and isinstance(history[-1], Mapping):
        updates = _metadata_steps(history[-1], ("num_updates",))
        if updates:
            out[_FAIRSEQ_UPDATES] = updates["num_updates"]
    meta = obj.get("meta")
    if isinstance(meta, Mapping):
        out.update({f"meta.{key}": value for key, value in _metadata_steps(meta, ("iter", "epoch")).items()})
    return out


def _metadata_steps(meta: Mapping[str, Any], keys: Sequence[str] = STEP_KEYS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        value = meta.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, numbers.Integral):
            out[key] = int(value)
        elif isinstance(value, float) and value.is_integer():
            out[key] = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            out[key] = int(value.strip())
        elif isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            out[key] = int(value.item())
    return out


_SAMPLE_BYTES = 256  # first and last bytes of each tensor; a match is confirmed by weights_digest


def _fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Cheap hash of names, shapes and each tensor's first/last bytes (mmapped tensors stay unread)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        flat = tensor.reshape(-1)
        count = _SAMPLE_BYTES // max(1, tensor.element_size())
        digest.update(f"{name}|{list(tensor.shape)}|".encode())
        for part in (flat[:count], flat[-count:] if flat.numel() else flat):
            digest.update(part.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fingerprint_safetensors(path: Path, header: Mapping[str, Any]) -> str:
    """The same hash as :func:`_fingerprint_tensors`, read straight from the file's byte ranges."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        base = 8 + length
        for name in sorted(k for k in header if k != "__metadata__"):
            start, end = header[name]["data_offsets"]
            size = min(_SAMPLE_BYTES, end - start)
            digest.update(f"{name}|{list(header[name]['shape'])}|".encode())
            for offset in (start, end - size):
                handle.seek(base + offset)
                digest.update(handle.read(size))
    return digest.hexdigest()


#: The values a flat state_dict may hold beside its tensors: a step, an epoch, a learning rate, a loss, a name.
_PLAIN_VALUES = (bool, int, float, str, bytes, type(None), np.bool_, np.number)
_Array = TypeVar("_Array", torch.Tensor, "NumpyArrayNotLoaded")
#: The last part of a state_dict key holding a module's `get_extra_state()` (torch's _EXTRA_STATE_KEY_SUFFIX): any
#: picklable value (a dict of floats, TransformerEngine's FP8 metadata), which `load_state_dict` passes to the
#: module's `set_extra_state`
EXTRA_STATE = "_extra_state"


def is_extra_state(key: str) -> bool:
    """Whether a state_dict key holds a module's extra state (`fc._extra_state`, or the root module's)."""
    return key == EXTRA_STATE or key.endswith("." + EXTRA_STATE)


def _flat_tensors(obj: Any, kind: type[_Array]) -> dict[str, _Array] | None:
    """The tensors (or `kind`) of a dict at its own level, keyed by strings, when its other values are plain
    ones (`_PLAIN_VALUES`) or modules' extra states (`is_extra_state`, of any value): `{**model.state_dict(),
    "step": 5}`; None for any other dict (one holding a dict, a list, a tuple: a training-loop dict, an
    optimizer's, an RNG's state) and for a dict of no tensors."""
    if not isinstance(obj, Mapping) or not all(isinstance(key, str) for key in obj):
        return None
    tensors = {key: value for key, value in obj.items() if isinstance(value, kind)}
    plain = all(isinstance(value, (kind, *_PLAIN_VALUES)) or is_extra_state(key) for key, value in obj.items())
    return tensors if tensors and plain else None


def _is_weight(value: torch.Tensor | NumpyArrayNotLoaded) -> bool:
    """A floating-point tensor (or array) of at least one dimension: what a model's weights hold and a step,
    a loss, a metric (scalars) or an RNG's state (bytes) do not."""
    if isinstance(value, NumpyArrayNotLoaded):
        return bool(value.shape) and (value.dtype or "").startswith(("float", "bfloat"))
    return value.is_floating_point() and value.dim() >= 1


def _find_tensor_dict(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The state_dict inside ``obj``: itself when all values are tensors, or when its tensors, weights among
    them (`_is_weight`), stand beside a few plain values (a step, an epoch: `_flat_tensors`), else under a
    known key (`STATE_DICT_KEYS`, the first that holds one)."""
    return _find_arrays(obj, torch.Tensor, depth)


def _find_arrays(obj: Any, kind: type[_Array], depth: int = 0) -> dict[str, _Array] | None:
    """`_find_tensor_dict` of tensors or, for a file's numpy arrays, of `NumpyArrayNotLoaded`."""
    found = _state_mapping(obj, kind, depth)
    return None if found is None else _flat_tensors(found, kind)


def _state_mapping(obj: Any, kind: type[_Array], depth: int = 0) -> Mapping[str, Any] | None:
    """The dict inside ``obj`` whose tensors `_find_arrays` gives: its extra states (`is_extra_state`) too."""
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    flat = _flat_tensors(obj, kind)
    if flat is not None and (all(key in flat or is_extra_state(key) for key in obj)
                             or any(map(_is_weight, flat.values()))):
        return obj
    for key in STATE_DICT_KEYS:
        found = _state_mapping(obj.get(key), kind, depth + 1)
        if found is not None:
            return found
    return None


def _with_extra_states(found: dict[str, torch.Tensor], obj: Any) -> dict[str, Any]:
    """`found` (`_find_tensor_dict(obj)`) with the extra states that are not tensors of the dict holding it,
    which `load_state_dict` gives to the modules' `set_extra_state` (a tensor one is among `found` already)."""
    held = _state_mapping(obj, torch.Tensor) or {}
    return {**found, **{key: value for key, value in held.items() if is_extra_state(key) and key not in found}}


def _is_optimizer_state(obj: Any) -> bool:
    if not isinstance(obj, Mapping):
        return False
    if "param_groups" in obj or ("state" in obj and isinstance(obj.get("state"), Mapping)):
        return _find_tensor_dict(obj) is None
    return False


def _has_tensors(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 6:
        return False
    if isinstance(obj, Mapping):
        return any(_has_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensors(v, depth + 1) for v in obj)
    return False


class NumpyArrayNotLoaded:
    """What a checkpoint's numpy array is read as: its shape and dtype, never its contents.

    Training loops save arrays beside the weights (``np.random.get_state()``, a history of losses).
    fdl needs none of them, and rebuilding one from a file's bytes is where numpy can be made to read
    forged pointers (tests/test_security.py), so the restricted unpickler builds this instead: the
    names numpy pickles an array under (``numpy.ndarray``, ``numpy[._]core.multiarray._reconstruct``)
    are bound to it, and its ``__setstate__`` keeps the shape and the dtype's name, dropping the data.
    """

    __slots__ = ("shape", "dtype")

    shape: tuple[int, ...] | None
    dtype: str | None

    def __new__(cls, *_args: Any) -> NumpyArrayNotLoaded:
        # __new__, not __init__: a pickle's NEWOBJ calls only __new__, and a placeholder with its slots
        # unset would fail (AttributeError, a traceback) wherever fdl prints it
        self = super().__new__(cls)
        self.shape = None
        self.dtype = None
        return self

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__'s state: (version, shape, dtype, is_fortran, data); anything else is kept as unknown
        if isinstance(state, tuple) and len(state) == 5:
            shape, dtype = state[1], state[2]
            if isinstance(shape, tuple) and all(type(d) is int for d in shape):
                self.shape = shape
            self.dtype = str(getattr(dtype, "name", None)) if dtype is not None else None

    def __repr__(self) -> str:
        return f"<numpy array {self.dtype} {self.shape}, not loaded>"


class LoggedValuesNotLoaded:
    """What a training library's record of logged values is read as: its class's name, nothing it holds.

    mmengine's runner saves its MessageHub beside the weights (`{"message_hub": {"log_scalars": {"train/loss":
    HistoryBuffer(...)}}}`): a plain class of that library holding numpy arrays of the values logged.
    Unpickling it would import mmengine and run its code; fdl needs none of it, so the restricted
    unpickler binds the class's name (`_LOGGED_VALUE_CLASSES`) to this placeholder, which takes any
    arguments and any state and keeps none of them: no code of the file or of the library runs.
    """

    __slots__ = ()
    library_class = ""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> LoggedValuesNotLoaded:
        return super().__new__(cls)

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:  # REDUCE calls the class, NEWOBJ only __new__
        pass

    def __setstate__(self, _state: Any) -> None:  # BUILD: the state is dropped
        pass

    def __repr__(self) -> str:
        return f"<{self.library_class}, not loaded>"


#: Classes of training libraries that only hold logged values, read as `LoggedValuesNotLoaded`.
_LOGGED_VALUE_CLASSES = ("mmengine.logging.history_buffer.HistoryBuffer",)


def _logged_value_placeholders() -> list[tuple[type[LoggedValuesNotLoaded], str]]:
    return [(type(name.rsplit(".", 1)[1], (LoggedValuesNotLoaded,), {"__slots__": (), "library_class": name}), name)
            for name in _LOGGED_VALUE_CLASSES]


_LOGGED_VALUE_PLACEHOLDERS = _logged_value_placeholders()


def _array_not_loaded(*_args: Any) -> NumpyArrayNotLoaded:
    """Bound to numpy's ``_reconstruct(ndarray, shape, typecode)``: a placeholder, whatever it is given."""
    return NumpyArrayNotLoaded()


def _numeric_dtype_classes() -> frozenset[type]:
    kinds = (
        np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
    )
    return frozenset(type(np.dtype(kind)) for kind in kinds)


def _shared_dtype(spec: Any, *_align_copy: Any) -> np.dtype[Any]:
    """Bound to ``numpy.dtype``: numpy's shared dtype for a type string, never a copy.

    A pickled dtype is ``numpy.dtype("f8", False, True)`` (a fresh copy), then BUILD with its state, and
    numpy's ``__setstate__`` trusts that state: a forged one (names left NULL, a field's "dtype" that is
    a str) segfaults or writes into the wrong object. A shared (builtin) dtype ignores any state, so the
    copy is never made: a numeric type string gives numpy's native dtype of that kind (a big-endian
    value's byte order, which the state carries, is lost); any other dtype is returned as numpy builds
    it, for BUILD to refuse by its class (an object, string or record array: `_unsafe_error` says so).
    """
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy.dtype of a {type(spec).__name__} is not read")
    dtype = np.dtype(spec)
    if type(dtype) in _numeric_dtype_classes():
        dtype = np.dtype(dtype.char)
        if dtype.isbuiltin != 1:  # pragma: no cover - numpy hands out its builtin dtype for a type char
            raise pickle.UnpicklingError(f"numpy.dtype {spec!r} is not numpy's shared dtype")
    return dtype


def _numeric_scalar(dtype: Any, data: Any = None) -> Any:
    """Bound to numpy's ``scalar(dtype, bytes)``: a number of a numeric dtype, from exactly its bytes.

    numpy's own ``scalar`` also builds object, string and void scalars, and without data allocates the
    dtype's size (up to 2 GiB for a void dtype, from a pickle of a few bytes, held by the scalar).
    """
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"a numpy scalar of a {type(dtype).__name__}, not a dtype")
    if type(dtype) not in _numeric_dtype_classes() or dtype.isbuiltin != 1:
        kind = type(dtype)  # named as the unpickler names a type it refuses: `_torch_load_safe` reports it
        named = f"{kind.__module__}.{kind.__qualname__}"
        raise pickle.UnpicklingError(f"numpy scalars of numbers only, but got <class '{named}'>")
    if isinstance(data, str):  # as numpy reads a Python 2 pickle's bytes
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar {dtype.name}: not {dtype.itemsize} bytes of data")
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar(dtype, data)


def _numpy_scalar_globals() -> list[Any]:
    """Numpy scalar/dtype reconstructors: training loops often save ``best_acc = np.float64(...)``.
    And argparse.Namespace: timm, fairseq and many research scripts save their ``args``.

    They only rebuild numbers, or (Namespace) an object holding attributes whose values are unpickled
    under the same restrictions, so they are allowed beside the tensors ``weights_only`` accepts. Numpy
    arrays are read as `NumpyArrayNotLoaded`: numpy never sees their bytes. Dtypes are numpy's shared
    ones (`_shared_dtype`), and scalars those of numbers only (no object, string or structured dtype: an
    object dtype is how forged pointers get in). mmengine's HistoryBuffer of logged values is read as a
    `LoggedValuesNotLoaded` (its name only).
    """
    import argparse

    # numpy's dtype and scalar are reached only through `_shared_dtype` and `_numeric_scalar`: numpy
    # trusts a dtype's pickled state (a forged one segfaults), and builds scalars of any dtype
    guarded = [
        (_shared_dtype, "numpy.dtype"),
        (_numeric_scalar, "numpy.core.multiarray.scalar"),  # as numpy < 2 pickles it
        (_numeric_scalar, "numpy._core.multiarray.scalar"),
    ]
    placeholders = [
        (NumpyArrayNotLoaded, "numpy.ndarray"),
        (_array_not_loaded, "numpy.core.multiarray._reconstruct"),
        (_array_not_loaded, "numpy._core.multiarray._reconstruct"),
    ]
    # Paths: a LightningModule's save_hyperparameters() keeps `data_dir: Path` in the checkpoint (session 15)
    paths: list[tuple[Callable[..., PurePath], str]] = [
        (_pure_posix_path, f"{module}.{name}") for module in ("pathlib", "pathlib._local")
        for name in ("PosixPath", "PurePosixPath")]
    paths += [(_pure_windows_path, f"{module}.{name}") for module in ("pathlib", "pathlib._local")
              for name in ("WindowsPath", "PureWindowsPath")]
    return [*guarded, *sorted(_numeric_dtype_classes(), key=str), argparse.Namespace, *placeholders, *paths,
            *_LOGGED_VALUE_PLACEHOLDERS]


def _path_parts(parts: tuple[Any, ...]) -> tuple[str, ...]:
    if not all(type(part) is str for part in parts):
        raise TypeError("a pickled path holds parts that are not strings")
    return parts


def _pure_posix_path(*parts: Any) -> PurePosixPath:
    """A pickled `pathlib.PosixPath` (or pure one), rebuilt as the pure path of its string parts: a path
    object runs no code and touches no file; fdl never reads it (hyper-parameters beside the weights)."""
    return PurePosixPath(*_path_parts(parts))


def _pure_windows_path(*parts: Any) -> PureWindowsPath:
    """A pickled `pathlib.WindowsPath` (or pure one), as a PureWindowsPath: WindowsPath itself cannot be
    made on another system, and a checkpoint saved on Windows is read anywhere."""
    return PureWindowsPath(*_path_parts(parts))


def _plain(obj: Any, depth: int = 0) -> Any:
    """A restricted load rebuilt of plain dicts, lists, tuples and tensors.

    torch's restricted unpickler lets a pickle set instance attributes on an OrderedDict (BUILD) or a
    tensor (`_rebuild_from_type_v2`): an ``od.get = 5`` shadows the method fdl calls (a TypeError, a
    traceback in discovery). The copies hold no such attributes: dict.items and torch.Tensor.detach are
    the types' own. Levels below 64 are left as they are: fdl never looks that deep."""
    if depth > 64:
        return obj
    if isinstance(obj, torch.Tensor):
        return torch.Tensor.detach(obj)
    if isinstance(obj, dict):
        return {key: _plain(value, depth + 1) for key, value in dict.items(obj)}
    if type(obj) is list:
        return [_plain(value, depth + 1) for value in list.__iter__(obj)]
    if type(obj) is tuple:
        return tuple(_plain(value, depth + 1) for value in tuple.__iter__(obj))
    return obj


#: The end of a torch.ao quantized Linear's state_dict key for its packed (weight, bias): a tuple, beside
#: `<prefix>dtype` (a torch.dtype), and the layer's own output `scale` and `zero_point`
_PACKED = "_packed_params._packed_params"


def _ao_unpacked(obj: Any, depth: int = 0) -> Any:
    """`obj` with each torch.ao quantized Linear's packed params (`quantize_dynamic`'s, a converted model's)
    laid out as the float Linear's: `fc._packed_params._packed_params` = (weight, bias) becomes `fc.weight` (the
    quantized tensor as saved: loading dequantizes it) and `fc.bias`; the layer's `fc._packed_params.dtype`,
    `fc.scale` and `fc.zero_point` (the output's quantization, which a float forward does not use) are left
    out. torch's own layout (LinearPackedParams' _save_to_state_dict), so no guess; any other dict as it is."""
    if not isinstance(obj, dict) or depth > 6:
        return obj
    packed = {key.removesuffix(_PACKED) for key, value in obj.items()
              if isinstance(key, str) and key.endswith(_PACKED) and isinstance(value, tuple) and len(value) == 2
              and isinstance(value[0], torch.Tensor) and isinstance(value[1], (torch.Tensor, type(None)))}
    if not packed:
        return {key: _ao_unpacked(value, depth + 1) for key, value in obj.items()}
    dropped = {prefix + name for prefix in packed for name in ("_packed_params.dtype", "scale", "zero_point")}
    out: dict[Any, Any] = {}
    for key, value in obj.items():
        prefix = key.removesuffix(_PACKED) if isinstance(key, str) and key.endswith(_PACKED) else None
        if prefix in packed:
            out[prefix + "weight"] = value[0]
            if value[1] is not None:
                out[prefix + "bias"] = value[1]
        elif key not in dropped:
            out[key] = value
    return out


def _torch_load_safe(path: Path, *, map_location: str = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a refusal becomes UnsafeCheckpointError, damage CheckpointError.

    ``mmap`` (cheap peeking) skips torch's check of each storage's size, so real loads leave it off. A
    path whose name is not UTF-8 (bytes Python keeps as surrogates, `\udcff`) is read whole: torch maps a
    file by its name as UTF-8 text, and failed on such a name with "'utf-8' codec can't encode character".
    """
    is_zip = mmap and utf8_path(path) and zipfile.is_zipfile(path)
    try:
        return _ao_unpacked(_plain(_load_weights_only(path, map_location=map_location, mmap=is_zip)))
    except pickle.UnpicklingError as exc:
        unsafe, _ = _unsafe_globals(path)
        if not unsafe:
            # Every global is allowed, but one of them was asked to build a type that is not: a numpy
            # array of Python objects (dtype=object), a string or structured dtype.
            # Only from the two messages that name a refused type, each on its own line after the
            # unpickler's "error:" (not from text inside the pickle, which a REDUCE's error may quote).
            built = re.search(
                r"^(?:Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`|"
                r"numpy scalars of numbers only), but got <class '(numpy\.[\w.]+)'>$",
                str(exc), re.MULTILINE,
            )
            unsafe = [built.group(1)] if built else []
        if unsafe:
            raise _unsafe_error(path, unsafe) from None
        raise _corrupt_error(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse is reported as a damaged file
        raise _corrupt_error(path, exc) from None


_ALLOWLIST_LOCK = threading.Lock()
_allowlist: list[Any] = []  # the entered safe_globals context, one per thread using it (all the same)


@contextlib.contextmanager
def _fdl_allowlist() -> Iterator[None]:
    """torch's ``safe_globals(_numpy_scalar_globals())``, safe beside another thread's load.

    torch's allowlist is process-global, and its context removes the entries on exit even while another
    thread (fdl's loader thread beside the main thread) is still loading under them: that load was then
    refused as unsafe. The first thread in adds them, the last one out removes them.
    """
    with _ALLOWLIST_LOCK:
        if not _allowlist:
            context = torch.serialization.safe_globals(_numpy_scalar_globals())
            context.__enter__()
        else:
            context = _allowlist[0]
        _allowlist.append(context)
    try:
        yield
    finally:
        with _ALLOWLIST_LOCK:
            _allowlist.pop()
            if not _allowlist:
                context.__exit__(None, None, None)


#: the modules a warning of torch.load is said to come from (torch's own, or fdl's call of it)
_LOAD_WARNINGS = r"(torch\.(serialization|_weights_only_unpickler|storage|_utils)|fdl_cli\.(checkpoints|dcp))$"


def _quiet_loads() -> None:
    """torch.load's warnings ignored for the rest of the process, by a filter added once. A
    `warnings.catch_warnings()` around each load, in the loader thread, changed the process's filters while the main
    thread ran the model: its own warnings were hidden during a load, and Python forgot which it had shown when
    the filters were restored, so they came again a number of times that depended on the threads' timing."""
    if not any(action == "ignore" and module is not None and module.pattern == _LOAD_WARNINGS
               for action, _message, _category, module, _line in warnings.filters):
        warnings.filterwarnings("ignore", module=_LOAD_WARNINGS)


_quiet_loads()  # at import, before any model runs: the one change of the filters comes before its warnings


def _load_weights_only(source: Path | io.BytesIO, *, map_location: str = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` (tensors, containers and numpy scalars; runs no code), quietly."""
    _quiet_loads()
    with _fdl_allowlist():
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)


def _unsafe_error(path: Path, unsafe: Sequence[str]) -> UnsafeCheckpointError:
    shown = first_names(unsafe, 5)
    if unsafe and all(name.startswith("numpy.dtypes.") for name in unsafe):
        return UnsafeCheckpointError(
            f"{path}: this file holds a numpy array fdl does not read without unpickling it ({shown}: an array of "
            "Python objects, strings or records; numeric arrays are fine); fdl refused to load it",
            fix="save such values as lists or tensors, or leave them out of the checkpoint; "
            + _TRUST_FIX.replace("if you", "or, if you"),
        )
    return UnsafeCheckpointError(
        f"{path}: this file contains a pickled Python object ({shown}) that could run code when loaded; "
        "fdl refused to load it",
        fix=_TRUST_FIX + (
            # a module's get_extra_state() returning a buffer (TransformerEngine's FP8 metadata): the file is the
            # state_dict already, and only --trust-pickle (or a picklable-safe extra state) reads it
            " (a module's extra state, get_extra_state(), saved as io.BytesIO is such an object even in "
            "model.state_dict(); or return a dict of numbers or a tensor from get_extra_state)"
            if "_io.BytesIO" in unsafe else " (or re-save only the weights: torch.save(model.state_dict(), ...))"),
    )


def _unimportable_error(path: Path, exc: BaseException) -> CheckpointError:
    """--trust-pickle, but the pickle names a class this process cannot import: a training script's own
    config (``__main__.Config``, ``train.Args``), a module whose folder is not on the path, a package
    (omegaconf, transformers) that is not installed."""
    said = first_line(exc)
    fix = ("run fdl where the training code imports (PYTHONPATH=FOLDER_OF_THAT_CODE, or install the package it "
           "names); a class pickled from a script run as __main__ can only be re-saved: torch.save({'model': "
           "model.state_dict(), 'step': step}, ...)")
    found = _module_beside_run(path, exc)
    if found is not None:
        # "run fdl where the training code imports" was no fix where the user ran it beside that code: fdl puts no
        # folder of a run, nor the current one, on the path (docs/usage.md, "What runs Python code")
        file, folder = found
        fix = (f"{file} is that module, which fdl does not import on its own (no folder of a run or the current one "
               f"is on the path): if you trust it, PYTHONPATH={shlex.quote(str(folder))} fdl ...; else " + fix)
    return CheckpointError(
        f"cannot unpickle {path}: it holds an object whose class cannot be imported here",
        got=f"{type(exc).__name__}: {said}",
        fix=fix,
    )


def _module_beside_run(path: Path, exc: BaseException) -> tuple[Path, Path] | None:
    """(the file, the folder to put on the path) of the top-level module a ModuleNotFoundError names (`NAME.py`, or a
    package's `NAME/__init__.py`) in the current folder, the checkpoint's or the one above it (a training script's
    neighbour), or None."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not name or not name.partition(".")[0].isidentifier():
        return None
    top = name.partition(".")[0]
    for folder in dict.fromkeys([Path.cwd(), path.absolute().parent, path.absolute().parent.parent]):
        for candidate in (folder / f"{top}.py", folder / top / "__init__.py"):
            with contextlib.suppress(OSError):
                if candidate.is_file():
                    return candidate, folder
    return None


def _export_refused(path: Path) -> UnsafeCheckpointError:
    """torch.export.load can run code from the archive, not only through pickles (weights marked
    use_pickle, opaque constants, sample inputs retried without weights_only): it evaluates the shape
    expressions of model.json with sympy and loads the AOTInductor libraries an archive holds. No
    check of the archive can follow every torch version's loader, so a .pt2 is loaded only on trust."""
    return UnsafeCheckpointError(
        f"{path}: a torch.export archive can run code when loaded (torch.export.load evaluates its shape "
        "expressions, and loads the pickles and compiled libraries it holds); fdl refused to load it",
        fix=_TRUST_FIX + " (or save the weights, model.state_dict() as safetensors, and pass --model FACTORY)",
    )


def _torchscript_refused(path: Path) -> UnsafeCheckpointError:
    """A TorchScript program is code: besides tensor maths it may write files (`torch.from_file(name, True, n)`
    creates and maps any file the user can write, `torch.save` writes one), in `forward` or in a `__setstate__`
    that torch.jit.load itself runs. So it is loaded only on trust, as a torch.export archive is."""
    return UnsafeCheckpointError(
        f"{path}: a TorchScript program can run code when loaded or run (it can write any file the user can: "
        "torch.from_file, torch.save); fdl refused to load it",
        fix=_TRUST_FIX + " (or save the weights, model.state_dict() as safetensors, and pass --model FACTORY)",
    )


def _corrupt_error(path: Path, exc: BaseException) -> FdlError:
    from fdl_cli.resources import memory_error, out_of_memory

    signals.through(exc)  # not damage: a Ctrl-C met inside the loader's C code (the error's cause)
    if out_of_memory(exc):  # not damage: reported as a bad file, it was skipped and the run went on
        return memory_error(exc, f"reading the checkpoint {path}")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ELOOP):
        return _unreachable_error(path, exc)  # not damage: the file cannot be reached or read
    reason = first_line(exc) or type(exc).__name__
    if not utf8_path(path) and (isinstance(exc, UnicodeError) or "utf-8" in reason.casefold()):
        return _name_not_utf8_error(path, reason)  # not damage: a library that takes the name as text only
    if reason.startswith("Weights only load failed"):
        # torch's advice here is to load with weights_only=False, i.e. to run the file's code: never
        # repeat it for a file that is merely damaged; keep only the unpickler's own diagnosis.
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip().splitlines()
        reason = f"not a valid zip archive or pickle ({detail[0][:160] if detail else 'unreadable data'})"
    if path.is_file() and path.stat().st_size == 0:
        return _empty_error(path)
    cut = _zip_cut_short(path)
    if cut is not None:
        # torch said "[Errno 22] Invalid argument" (cut in half) or "failed finding central directory"
        return CheckpointError(
            f"cannot read the checkpoint {path}",
            got=f"a zip archive cut short ({cut} bytes, without the central directory that ends a whole one)",
            fix=_CUT_SHORT_FIX,
        )
    if foreign.torch_tar(path):  # torch: "Cannot use weights_only=True with files saved in the legacy .tar format"
        return CheckpointError(f"cannot read the checkpoint {path}", got=_LEGACY_TAR_SAID, fix=_LEGACY_TAR_FIX)
    return CheckpointError(f"cannot read the checkpoint {path}", got=reason, fix=_DAMAGED_FIX)


_DAMAGED_FIX = "the file is truncated or corrupt, or not a PyTorch checkpoint; re-save or re-copy it"
#: A zip whose central directory flags an entry's name as UTF-8 and holds bytes that are not (Python's zipfile
#: cannot list it; torch.save writes ASCII names)
_BAD_ZIP_NAME = "a zip archive whose central directory is damaged (an entry's name is not the UTF-8 its flag says)"


#: A tar torch.save wrote in PyTorch 0.1 (`foreign.torch_tar`): torch.load reads it only with weights_only=False,
#: which runs its pickle, and fdl never reads it so (no `--trust-pickle` either: its tensors lie outside the pickle)
_LEGACY_TAR_SAID = ("PyTorch 0.1's torch.save format (a tar of sys_info, pickle, storages and tensors, not an archive "
                    "to unpack), which torch.load reads only by unpickling it in full")
_LEGACY_TAR_FIX = ("if you trust its origin, re-save it in today's format once: python -c \"import torch; "
                   "torch.save(torch.load(FILE, weights_only=False), 'step_N.pt')\" (FILE, N: its path and step)")


def _name_not_utf8_error(path: Path, reason: str) -> CheckpointError:
    """A file that a library opens by its name as UTF-8 text, which this name's bytes are not: renamed, it is read."""
    raw = os.fsencode(path).replace(b"\\", b"\\\\").replace(b"'", b"\\'")
    return CheckpointError(
        f"cannot read the checkpoint {shown_path(path)}: its name is not UTF-8 text (the bytes written \\xNN)",
        got=reason,
        fix=f"rename it to a UTF-8 name (in bash: mv $'{raw.decode('utf-8', 'backslashreplace')}' NEW_NAME)",
    )


#: The fix of a checkpoint file cut short or empty: a save not finished (a training job still writing
#: it, or one killed while saving), or a copy cut short.
_CUT_SHORT_FIX = ("re-save or re-copy it; a file a training job is still writing is analysed by the same command "
                  "run again once it is written (it analyses only what the store lacks), or follow the job with --watch")


def _empty_error(path: Path) -> CheckpointError:
    return CheckpointError(f"cannot read the checkpoint {path}", got="the file is empty (0 bytes)", fix=_CUT_SHORT_FIX)


def _zip_cut_short(path: Path) -> int | None:
    """The size of `path` when it begins as a zip archive (torch.save's format) but lacks the end a whole
    one has: a torch.save not finished, or a copy cut short; None otherwise."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        return path.stat().st_size if head == b"PK\x03\x04" and not zipfile.is_zipfile(path) else None
    except OSError:
        return None


def _os_reason(path: Path, exc: BaseException) -> tuple[str, str]:
    """(got, fix) for an OSError met while reaching or reading ``path``, in words."""
    code = getattr(exc, "errno", None)
    if code == errno.ELOOP or isinstance(exc, RuntimeError):  # pathlib's "Symlink loop" (Python < 3.13)
        return (
            "a symbolic link loop (the link leads, through links, back to itself)",
            "point the link at the real checkpoint, or remove it",
        )
    if code == errno.ENOENT:
        target = None
        try:
            if path.is_symlink():
                target = os.readlink(path)
        except OSError:
            pass
        if target is not None:
            return (
                f"a symbolic link to {target}, which does not exist",
                "restore the file it points to, or remove the link",
            )
        return "it disappeared while fdl was reading it", "run the command again once the file is in place"
    if isinstance(exc, PermissionError):
        try:
            folder = path.is_dir()
        except OSError:
            folder = False
        how = f"chmod a+rx {path}" if folder else f"chmod a+r {path}"
        return (
            f"permission denied: this user may not read the {'folder' if folder else 'file'}",
            f"make it readable ({how}; the folders above it need a+x), or run fdl as a user who may read it",
        )
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason, "check the file and the folders above it"


def _unreachable_error(path: Path, exc: BaseException) -> CheckpointError:
    got, fix = _os_reason(path, exc)
    return CheckpointError(f"cannot read the checkpoint {path}", got=got, fix=fix)


def _special_error(path: Path, kind: str) -> CheckpointError:
    """A checkpoint path that is a named pipe, a device or a socket (`special_file`)."""
    return CheckpointError(f"cannot read the checkpoint {path}", got=f"it is {kind}, not a regular file",
                           fix="replace it by the checkpoint file, or move it out of the folder (or leave it out "
                               "with --glob)")


def _check_reachable(path: Path) -> None:
    """CheckpointError when ``path`` cannot be reached: a dangling symbolic link or a link loop."""
    try:
        os.stat(path)
    except OSError as exc:
        raise _unreachable_error(path, exc) from None


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _lfs_pointer_error(path: Path, head: bytes) -> CheckpointError:
    fields_ = dict(line.partition(" ")[::2] for line in head.decode("utf-8", "replace").splitlines())
    size = fields_.get("size", "").strip()
    real = f"the real {size}-byte file" if size.isdigit() else "the real file"
    return CheckpointError(
        f"{path} is a Git LFS pointer, not the checkpoint it stands for",
        got=f"a {len(head)}-byte text file naming {real} by its hash ({fields_.get('oid', '?').strip()[:23]}...), "
        "which was never downloaded",
        fix="run `git lfs pull` in the repository that holds it (`git lfs install` first if Git LFS is not set "
        "up), then run fdl again",
    )


def _foreign_error(path: Path, kind: foreign.Foreign) -> CheckpointError:
    """A file named as a checkpoint (`checkpoint_suffix`) that another framework wrote, or compressed: a bad
    checkpoint, as a text file so named is, not one skipped with a note."""
    return CheckpointError(f"{path} is {foreign.said(kind)}",
                           got=f"a file with the checkpoint suffix {checkpoint_suffix(path)}, which PyTorch cannot load",
                           fix=kind.fix)


def _text_file_error(path: Path, head: bytes) -> CheckpointError:
    first = head.decode("utf-8", "replace").strip().splitlines()[0][:60] if head.strip() else ""
    return CheckpointError(
        f"{path} is a text file, not a checkpoint",
        got=f"a file with the checkpoint suffix {checkpoint_suffix(path) or path.suffix} that begins {first!r}",
        fix="replace it with the checkpoint it should be, or move it out of the folder (or leave it out with --glob)",
    )


def _peek_file(path: Path) -> _Peek:
    """What kind of checkpoint ``path`` is, its step metadata, or why it is not a model.

    A Git LFS pointer, or a text file with a checkpoint suffix, is a bad checkpoint (CheckpointError):
    a file named like a checkpoint that holds none is not passed over with a note.
    """
    name = path.name
    if (path.suffix == dcp.SHARD_SUFFIX or name == dcp.METADATA) and _is_dcp_folder(path.parent):
        raise _dcp_part_error(path)  # not "truncated or corrupt": one shard of a DCP folder
    kind = special_file(path)
    if kind is not None:  # its size is 0: skipped as an empty file, in silence; opened, a FIFO waits for ever
        raise _special_error(path, kind)
    if path.stat().st_size == 0:
        alien = foreign.of_name(path) if checkpoint_suffix(path) is None else None  # an HF .lock, a download begun
        if alien in (foreign.DOWNLOAD, foreign.LOCK):  # empty as they begin; an empty .zip or .keras is empty
            return _Peek(None, {}, foreign.note(name, alien))
        return _Peek(None, {}, f"skipped {name}: empty file")
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(_LFS_POINTER):
        raise _lfs_pointer_error(path, head)
    if checkpoint_suffix(path) is None and (alien := foreign.of_file(path, head)) is not None:
        return _Peek(None, {}, foreign.note(name, alien))  # another framework's save, an archive, a download
    text = _is_text(head)
    if text and path.suffix == ".safetensors":  # a safetensors file starts with a binary header length
        raise _text_file_error(path, head)
    if path.suffix == ".safetensors":
        header = _read_safetensors_header(path)
        if not any(k != "__metadata__" for k in header):
            return _Peek(None, {}, f"skipped {name}: no tensors")
        meta = _metadata_steps(header.get("__metadata__") or {})
        shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, Mapping)}
        if not meta and _is_probe_set(shapes):
            return _Peek(None, {}, _probe_note(name, header))
        return _Peek("safetensors", meta, fingerprint=_fingerprint_safetensors(path, header),
                     keys=frozenset(_key_names(shapes)))
    if head.startswith(_HDF5_SIGNATURE) and checkpoint_suffix(path) is None:
        # given among the files (`fdl analyze run/*`, whose folder holds the store or an .h5 probe): it read
        # as "cannot read the checkpoint ...: the file is truncated or corrupt"
        return _Peek(None, {}, f"skipped {name}: an HDF5 file (an fdl store, or an .h5 probe), not a checkpoint")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                arrays = _npz_shapes(archive, names) if checkpoint_suffix(path) is None else None
        except (zipfile.BadZipFile, OSError) as exc:
            raise _corrupt_error(path, exc) from None
        except UnicodeDecodeError:  # zipfile decodes each name flagged UTF-8: not one torch.save or numpy wrote
            raise CheckpointError(f"cannot read the checkpoint {path}", got=_BAD_ZIP_NAME, fix=_DAMAGED_FIX) from None
        if arrays is not None:  # np.savez's archive (probe.npz given among the files), as the HDF5 file above
            if _is_probe_set(arrays):
                return _Peek(None, {}, _probe_note(name, arrays))
            return _Peek(None, {}, foreign.note(name, foreign.NPZ, f" (arrays {listed_names(list(arrays), 3)})"))
        if _is_torchscript(names):
            return _Peek("torchscript", {})
        if _is_export(path, names):
            return _Peek("export", {})
    elif text and checkpoint_suffix(path) is None:  # an explicit README.txt, say
        if name.endswith(".index.json"):  # a sharded checkpoint's index (model.safetensors.index.json): its folder
            return _Peek(None, {}, f"skipped {name}: the index of a sharded checkpoint, not one; pass its folder, "
                                   f"{path.parent}, which is read as one checkpoint (its shards, by the index)")
        return _Peek(None, {}, f"skipped {name}: text file, not a checkpoint")
    try:
        obj = _torch_load_safe(path, mmap=True)
    except UnsafeCheckpointError:
        unsafe, has_tensors = _unsafe_globals(path)
        if not has_tensors:
            return _Peek(
                None,
                {},
                f"skipped {name}: pickled Python object ({listed_names(unsafe, 3)}) with no "
                "tensors; not loaded",
            )
        return _Peek("pickle", {}, steps_read=False)
    except CheckpointError:
        if text:  # not even an (ASCII) pickle: say what it is rather than how unpickling failed
            raise _text_file_error(path, head) from None
        alien = foreign.of_head(head)  # asked only now: no first bytes a checkpoint can have are taken for another's
        if alien is not None and not (alien is foreign.TAR and foreign.torch_tar(path)):  # PyTorch 0.1's: said so
            raise _foreign_error(path, alien) from None
        raise
    if _is_optimizer_state(obj):
        return _Peek(None, {}, f"skipped {name}: optimizer state, no model weights")
    meta = _file_steps(obj) if isinstance(obj, Mapping) else {}
    flat = _flat_tensors(obj, torch.Tensor)
    if flat is not None and not meta and _is_probe_set({key: tuple(value.shape) for key, value in flat.items()}):
        # the file's own dict, plain values beside it (`n_classes`) but no step, as a safetensors probe has
        # none in its metadata: under `model`, or beside a step, it is weights
        return _Peek(None, {}, _probe_note(name, flat))
    tensors = _find_tensor_dict(obj)
    if tensors is None:
        numpy_state = _find_arrays(obj, NumpyArrayNotLoaded)
        if numpy_state is not None:
            return _Peek(None, {}, f"skipped {name}: {_NUMPY_STATE_SAID.format(listed_names(list(numpy_state), 3))}")
        what = "no tensors" if not _has_tensors(obj) else "tensors but no model state_dict"
        return _Peek(None, {}, f"skipped {name}: {what} (e.g. scheduler/rng state or training args)")
    beside = tuple(key for key in obj if key not in tensors and not is_extra_state(key)) \
        if flat is not None and flat.keys() == tensors.keys() else ()
    return _Peek("state_dict", meta, fingerprint=_fingerprint_tensors(tensors), keys=frozenset(_key_names(tensors)),
                 beside=beside)


#: A state_dict of numpy arrays (`_find_arrays` of `NumpyArrayNotLoaded`), its first keys: never loaded, as
#: numpy would read the file's bytes (`NumpyArrayNotLoaded`)
_NUMPY_STATE_SAID = ("a state_dict of numpy arrays ({}, ...), which fdl does not load (numpy would read the "
                     "file's bytes); re-save it as tensors: torch.save({{k: torch.from_numpy(v) for k, v in "
                     "state.items()}}, path)")


def _is_probe_set(shapes: Mapping[str, Any]) -> bool:
    """Whether tensors of these names and shapes (`name -> shape`) are a probe set rather than weights: only
    fdl's probe keys (an input, `probes.X_KEYS`, and optionally targets, `Y_KEYS`), the inputs at least 1-D
    and the targets, if any, as many as the inputs (both of n samples). A probe.pt beside the checkpoints (or
    fdl.toml's `probe`) is no checkpoint: `fdl inspect FOLDER` listed it, as the folder's first file, and
    failed on its "unexpected keys x, y"; a probe named like a step (probe_0.pt) clashed with step 0 in
    `analyze`. The shapes keep out a model whose parameters bear such names (a factorisation's `X` (d, h)
    and `Y` (h, C)); the callers also keep out tensors under a state_dict key or beside a step: a probe is
    never saved so, and such files read as probes left every checkpoint of a run skipped."""
    from fdl_cli.probes import X_KEYS, Y_KEYS

    if not shapes or not set(shapes) <= {*X_KEYS, *Y_KEYS}:
        return False
    x_key = next((key for key in X_KEYS if key in shapes), None)
    if x_key is None:
        return False
    x_shape = tuple(shapes[x_key] or ())
    y_key = next((key for key in Y_KEYS if key in shapes), None)
    if len(x_shape) < 1:
        return False
    return y_key is None or (1 <= len(tuple(shapes[y_key] or ())) <= 2 and tuple(shapes[y_key])[0] == x_shape[0])


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _npz_shapes(archive: zipfile.ZipFile, names: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """The arrays of an archive `np.savez` wrote (name -> shape, from each member's .npy header), or None
    when the archive holds other members (a torch.save zip holds `archive/data.pkl`, never .npy alone). A name
    may hold `/`: a JAX model's params flattened as `params/Dense_0/kernel`."""
    if not names or not all(member.endswith(".npy") for member in names):
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for member in names:
        try:
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shapes[member.removesuffix(".npy")] = tuple(read(handle)[0])
        except (ValueError, OSError, zipfile.BadZipFile):
            shapes[member.removesuffix(".npy")] = ()  # not an .npy after all: still no checkpoint
    return shapes


def _probe_note(name: str, keys: Iterable[str]) -> str:
    shown = ", ".join(sorted(key for key in keys if key != "__metadata__"))
    return f"skipped {name}: a probe set ({shown}), not model weights"


#: `_probe_note`'s text, read back (group 1: the file's name) by discovery and by analyze's notes
PROBE_NOTE = re.compile(r"skipped (.+): a probe set \(.+\), not model weights")


def checkpoint_suffix(path: Path) -> str | None:
    """The checkpoint suffix of ``path``'s name (``.pth.tar`` as one), or None when it has none."""
    name = path.name.lower()
    tar = next((suffix for suffix in TAR_SUFFIXES if name.endswith(suffix)), None)
    if tar is not None:
        return tar
    return path.suffix if path.suffix in WEIGHT_SUFFIXES else None


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes look like text (UTF-8, no NUL, not a binary pickle)."""
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return head[:1] not in (b"\x80",)  # pickle protocol 2+ starts with PROTO (0x80)


def _hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of an HF-style checkpoint folder (empty when it is not one).

    Raises CheckpointError when the folder cannot be looked into (no permission) or its index is unreadable.
    """
    try:
        return _hf_weight_files_of(folder)
    except OSError as exc:
        got, fix = _os_reason(folder, exc)
        raise CheckpointError(f"cannot look into the folder {folder}", got=got, fix=fix) from None


def weights_gone(path: Path | str) -> bool:
    """Whether a checkpoint discovery found is gone since: its file or folder removed, or a model folder left
    without the weight files it held (every one, or a shard its index names): a training job's rotation
    (`shutil.rmtree` of a Trainer's checkpoint-N) half done when fdl read it, which read as a checkpoint of
    another model ("4 missing keys"). Discovery lists no folder without weight files.

    Only a file not found is gone: one that cannot be reached (EACCES, EIO, ESTALE) is not, as it fails for a
    reason the user must hear of (`os.path.lexists` and `Path.is_file` say False of such a path). The folder is
    listed first: Python 3.13's `Path.is_file` says False of a file in a folder this user may not search."""
    path = Path(path)
    try:
        os.lstat(path)
        if not path.is_dir():
            return False  # a file, a folder replaced by a file, a link left dangling: its read says what it is
        os.listdir(path)
        files = _hf_weight_files_of(path)
        return not files or any(_not_found(file) for file in files)
    except FileNotFoundError:
        return True
    except (OSError, CheckpointError):
        return False  # unreadable, not gone: its own error says why


def _not_found(path: Path) -> bool:
    """Whether `path` is not there (False where it is, and OSError where it cannot be looked at)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


_SHARD_INDEX_FIX = ("the index must be JSON with a 'weight_map' table of tensor names to shard file names, as "
                    "save_pretrained writes it; re-save the checkpoint")


def _shard_index_wrong(weight_map: Any) -> str:
    """What is wrong with a shard index's weight_map ("" when it is a table of file names): a list or a number
    there was an AttributeError's or TypeError's traceback."""
    if not isinstance(weight_map, dict):
        return f"weight_map is a JSON {_JSON_KINDS.get(type(weight_map), type(weight_map).__name__)}, not a table"
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            return f"weight_map's {name!r} is {json.dumps(shard)}, not the name of a shard file"
    return ""


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _hf_weight_files_of(folder: Path) -> list[Path]:
    for index_name in _HF_INDEX:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except OSError as exc:
                got, fix = _os_reason(index, exc)
                raise CheckpointError(f"cannot read the shard index {index}", got=got, fix=fix) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"cannot read the shard index {index}", got=str(exc), fix=_SHARD_INDEX_FIX) from None
            wrong = _shard_index_wrong(weight_map)
            if wrong:
                raise CheckpointError(f"cannot read the shard index {index}", got=wrong, fix=_SHARD_INDEX_FIX)
            return [folder / shard for shard in sorted(set(weight_map.values()))]
    for single in _HF_SINGLE:
        if (folder / single).is_file():
            return [folder / single]
    if _is_dcp_folder(folder):
        return dcp.dcp_files(folder)
    return []


def _deepspeed_states(folder: Path) -> list[Path]:
    """The model states files of a DeepSpeed checkpoint folder, in it or in its tag's folder (Lightning's
    DeepSpeed strategy saves epoch=0-step=10.ckpt/checkpoint/mp_rank_00_model_states.pt); none when it is
    not one. Looked for only in a folder named like a checkpoint file (`_folder_not_read`): DeepSpeed's own
    global_stepN/ folders are read through their model states file (tests/test_s15_step_keys.py)."""
    try:
        return sorted([*folder.glob("*mp_rank_*_model_states.pt"), *folder.glob("*/*mp_rank_*_model_states.pt")])
    except OSError:
        return []


def _folder_not_read(folder: Path) -> CheckpointError:
    """The error for a folder named like a checkpoint file (`step_2.pt/`) that holds no Hugging Face model: a
    folder scan passed over it without a word, and the run's step went missing."""
    states = _deepspeed_states(folder)
    if states:
        shown = str(states[0].relative_to(folder)) + (f" and {len(states) - 1} more" if len(states) > 1 else "")
        converted = folder.with_name(folder.name[: -len(checkpoint_suffix(folder) or "")] + ".pt")
        return CheckpointError(
            f"{folder} is a DeepSpeed checkpoint folder (as Lightning's DeepSpeed strategy saves a .ckpt), not a "
            "file: the model's weights split as ZeRO saves them, which fdl does not read",
            got=f"{shown} in it, and no file of the whole model's weights",
            fix="convert it to one file and analyse that (and move the folder out, or leave it out with --glob): "
            "python -c \"from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict "
            f"as convert; convert('{folder}', '{converted}')\", or DeepSpeed's script saved in it: "
            f"python {folder / 'zero_to_fp32.py'} {folder} OUTPUT",
        )
    return CheckpointError(
        f"{folder} is a folder named like a checkpoint file, not a checkpoint fdl reads",
        got=f"no {' or '.join(_HF_SINGLE)} (nor a shard index) in it, as a Hugging Face model folder holds",
        fix="give the checkpoint file it holds, or save the checkpoint as one file (torch.save, safetensors) or with "
        "save_pretrained; or move the folder out (or leave it out with --glob)",
    )


def _peek_hf_dir(folder: Path) -> _Peek:
    files = _hf_weight_files(folder)
    if files and files[0].name == dcp.METADATA:
        return _peek_dcp(folder)
    if not files:  # a folder named like a checkpoint (`_scan_folder`, `_candidates`)
        raise _folder_not_read(folder)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"the sharded checkpoint {folder} lacks {counted(len(missing), 'shard')}",
            got=", ".join(f.name for f in missing[:3]),
            fix="copy every shard named in the index",
        )
    meta: dict[str, Any] = {}
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            meta = _metadata_steps(json.loads(state.read_text()))
        except (OSError, ValueError, AttributeError):
            meta = {}
    digest = hashlib.sha256()
    keys: set[str] | None = set()  # the shards' names (headers, state_dicts): the run's weights (`_foreign_flat_dicts`)
    for weight_file in files:
        peek = _peek_file(weight_file)
        if peek.kind == "pickle":
            return _Peek("pickle", meta)
        digest.update((peek.fingerprint or "").encode())
        keys = None if keys is None or peek.keys is None else keys | peek.keys
        if not meta:
            meta = peek.metadata
    return _Peek("hf_dir", meta, fingerprint=digest.hexdigest(), keys=frozenset(keys) if keys else None)


# --------------------------------------------------------------------------------------- discovery


#: A number in a checkpoint's name: an integer, a decimal (a metric: `loss0.154`) or one in scientific
#: notation (a hyper-parameter: `lr1e-4`).
_NAME_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
#: Lightning's `-v1`, `-v2` ... appended to a checkpoint name already taken.
_NAME_VERSION = re.compile(r"-v\d+$")


def _name_step(path: Path) -> int | None:
    """The step a checkpoint's name gives: its last integer, decimals and scientific notation left out
    (`model_step600_loss0.154.pt` is step 600, not 154; `step200_lr1e-4.pt` is 200, not 4), as is
    Lightning's version suffix (`epoch=3-step=120-val_loss=0.25-v1.ckpt` is 120, not 1). A name with no
    integer then: its last number when that is a whole number in scientific notation (`iter_1e5.pt` is
    100000), else the whole part of its last decimal (`step100.0.pt` is 100); else its last digits."""
    name = _name_without_suffix(path)
    found = _name_step_span(name)
    if found is None:
        return None
    start, end, value = found
    return value if value is not None else int(name[start:end])


def _name_without_suffix(path: Path) -> str:
    suffix = checkpoint_suffix(path) if path.is_file() else None
    return path.name[: -len(suffix)] if suffix is not None else path.name


#: Lightning's label of an epoch in a checkpoint's name (ModelCheckpoint's `{epoch}`: epoch=2-val_loss=0.70.ckpt)
_EPOCH_LABEL = re.compile(r"(?:^|[-_])epoch=$")


def _name_step_is_an_epoch(path: Path) -> bool:
    """Whether the number `_name_step` takes from the name is one Lightning's name labels `epoch=`
    (`epoch=2-val_loss=0.70.ckpt`, no `step=` after it): an epoch, not the step the file holds."""
    name = _name_without_suffix(path)
    found = _name_step_span(name)
    return found is not None and _EPOCH_LABEL.search(name[: found[0]]) is not None


def _name_step_span(name: str) -> tuple[int, int, int | None] | None:
    """(start, end, value) of the number of `name` (without its suffix) that `_name_step` takes: the
    digits name[start:end] are the step, unless `value` (a step written in scientific notation, whose
    digits are its mantissa) says otherwise. `_name_regex` captures the same digits."""
    numbers = list(_NAME_NUMBER.finditer(_NAME_VERSION.sub("", name)))
    integers = [number for number in numbers if number.group().isdigit()]
    if integers:
        return integers[-1].start(), integers[-1].end(), None
    if numbers:
        last = numbers[-1]
        whole = re.match(r"\d+", last.group())
        assert whole is not None
        if re.search(r"[eE]", last.group()):
            value = float(last.group())
            if value >= 1 and value.is_integer() and value < 2**63:
                return last.start(), last.end(), int(value)
        return last.start(), last.start() + whole.end(), None
    digits = list(re.finditer(r"\d+", name))
    return (digits[-1].start(), digits[-1].end(), None) if digits else None


class _NoStep(CheckpointError):
    """No training step for a file; in a folder scan the file is skipped with ``note`` instead."""

    def __init__(self, what: str, *, note: str, shown: str, got: str | None = None, fix: str | None = None) -> None:
        super().__init__(what, got=got, fix=fix)
        self.note = note
        self.shown = shown  # the file's name as the note gives it (`out/model.safetensors` for a folder's)


_SKIP_FIX = "rename it, or select files with --glob"
#: The note of a file a folder scan skipped because --step-regex does not match its name (`_raw_step_of`):
#: its name, the regex.
_REGEX_MISSED = re.compile(r"skipped (.*): --step-regex '(.*)' does not match (?:its name|its folder and name) "
                           + re.escape(f"({_SKIP_FIX})"))


def _step_regex_subject(path: Path, step_regex: re.Pattern[str]) -> str:
    """What --step-regex is searched in: the checkpoint's name; for a regex holding `/`, which no name
    matches, its folder's name and its own joined by `/` (one folder per step: `step_(\\d+)/` reads
    step_100/model.pt, global_step100/mp_rank_00_model_states.pt as step 100). A checkpoint that is a
    folder (step_100/ holding model.safetensors) ends with its own `/`, so the same regex reads it too."""
    if "/" not in step_regex.pattern:
        return path.name
    return f"{path.absolute().parent.name}/{path.name}" + ("/" if path.is_dir() else "")


def _folder_regex(path: Path) -> str:
    """A --step-regex that takes the step from the name of `path`'s folder (`step_(\\d+)/` for
    step_100/model.pt), "" when that name holds no number."""
    pattern = _name_regex(path.absolute().parent.name)
    return f"{pattern}/" if pattern else ""


def _raw_step_of(path: Path, peek: _Peek, step_regex: re.Pattern[str] | None) -> tuple[int, str]:
    if step_regex is not None:
        subject = _step_regex_subject(path, step_regex)
        match = step_regex.search(subject)
        if match is None or match.group(1) is None:
            where = "its folder and name" if "/" in step_regex.pattern else "its name"
            # one that reads this file (the generic 'step(\d+)' was often the very regex that failed)
            example = _folder_regex(path) if "/" in step_regex.pattern else _name_regex(path.name)
            raise _NoStep(
                f"--step-regex '{step_regex.pattern}' does not match {subject} with a group", shown=path.name,
                note=f"skipped {path.name}: --step-regex '{step_regex.pattern}' does not match {where} ({_SKIP_FIX})",
                fix="use one capture group around the step, e.g. --step-regex "
                + (f"'{example}' (which reads {subject})" if example else "'step(\\d+)'") + ", or --glob",
            )
        try:
            return int(match.group(1)), "step_regex"
        except ValueError:
            raise CheckpointError(
                f"--step-regex matched {match.group(1)!r} in {path.name}, which is not an integer",
                fix="capture only the digits of the step",
            ) from None
    for key in STEP_ORDER:
        if key in peek.metadata:
            source = "trainer_state.json" if (path / "trainer_state.json").is_file() else "metadata"
            return int(peek.metadata[key]), f"{source}:{key}"
    step = _name_step(path)
    if step is None and path.is_dir():
        weights = _hf_weight_files(path)
        shown = f"{path.name}/{weights[0].name if len(weights) == 1 else '(its shards)'}"
        raise _NoStep(
            f"cannot tell the training step of {path}", shown=shown,
            note=f"skipped {shown}: no training "
            "step (no trainer_state.json beside it, no integer in the folder's name); a Trainer's final "
            "save_model() usually repeats its last checkpoint-N: rename the folder (e.g. step_1500) to include it",
            got="no trainer_state.json with global_step and no integer in the folder's name",
            fix="rename the folder to hold the step (e.g. step_1500), or pass its checkpoint-N folders",
        )
    if step is None:
        folder = _folder_regex(path)
        unread = not peek.steps_read  # a pickle's step keys are read only with --trust-pickle
        raise _NoStep(
            f"cannot tell the training step of {path}", shown=path.name,
            note=f"skipped {path.name}: no training step in its "
            + ("name, and its metadata is not read (it pickles Python objects: --trust-pickle reads it)"
               if unread else "metadata or name") + f" ({_SKIP_FIX})",
            got=("its step keys are not read, since it pickles Python objects (read with --trust-pickle), and "
                 "no integer in its name") if unread else f"no {'/'.join(STEP_KEYS)} in the file and no integer in its name",
            # --step-regex 'step_(\d+)' cannot match the name model.pt: its folder's name holds the step
            # ... unless the file is given beside a run's (the model before fine-tuning, `base.pt`): that regex
            # would read it at its folder's number, and the run's files not at all, so its name is to hold the step
            fix=(f"pass --step-regex '{folder}' to take the step from its folder's name, or put its step in its name "
                 "(step_0.pt for the model before training)") if folder else _STEP_FIX,
        )
    return step, "name"


#: The store writes steps as int64 (HDF5 attrs and datasets), so discovery accepts exactly that range.
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1


def _step_of(path: Path, peek: _Peek, step_regex: re.Pattern[str] | None) -> tuple[int, str]:
    step, source = _raw_step_of(path, peek, step_regex)
    if not STEP_MIN <= step <= STEP_MAX:
        raise CheckpointError(
            f"the training step of {path} does not fit a 64-bit integer",
            got=f"step {step} (from its {source})",
            fix="steps must be integers in [-2^63, 2^63); rename the file, pass --step-regex, "
            "or leave it out with --glob",
        )
    return step, source


def _staging_note(folder: Path) -> str | None:
    """The note of a folder a Trainer is still saving into (`_HF_STAGING`), or None for any other path."""
    match = _HF_STAGING.fullmatch(folder.name)
    if match is None or not folder.is_dir():
        return None
    return (f"skipped {folder.name}: an unfinished save of a Hugging Face Trainer (renamed {match.group(1)} once "
            "complete), not a checkpoint")


def _candidates(
    sources: Sequence[str | Path], stdin: TextIO | None, glob: str | None, notes: list[str], missing_ok: bool = False,
    quiet: _Quiet | None = None,
) -> Iterator[tuple[Path, bool]]:
    """(path, found_by_folder_scan): explicit paths (arguments, stdin) are (path, False). With
    `missing_ok` a source that does not exist is a note (--watch started before the trainer made it).
    `quiet`: the probe files, whose skip notes are kept out of `notes` (`discover_checkpoints`' ``probes``)."""
    expanded: list[tuple[Path, bool]] = []  # (path, read from stdin)
    for source in sources:
        if str(source) == "-":
            expanded.extend((Path(name), True) for name in stdin_paths(stdin if stdin is not None else sys.stdin))
        else:
            expanded.append((Path(source), False))
    for source, from_stdin in expanded:
        try:
            os.stat(source)
        except OSError as exc:
            if exc.errno == errno.ENOENT and not source.is_symlink():
                if missing_ok:
                    notes.append(f"{source} does not exist yet")
                    continue
                raise _no_such_source(source, from_stdin=from_stdin) from None
            got, fix = _os_reason(source, exc)
            raise CheckpointError(f"cannot read the checkpoint source {source}", got=got, fix=fix) from None
        if (staging := _staging_note(source)) is not None:
            notes.append(staging)
            continue
        if source.is_file() or special_file(source) is not None:  # the latter refused by `_peek_file`
            yield source, False
        elif checkpoint_suffix(source) is not None and _deepspeed_states(source):
            yield source, False  # Lightning's DeepSpeed epoch=0-step=10.ckpt/: a bad checkpoint, said what it is
            continue
        elif _hf_weight_files(source):
            # The model a folder holds itself counts as found by a scan: a Trainer's output folder holds its
            # final save_model() (no trainer_state.json, no step) above the checkpoint-N folders to analyse.
            yield source, True
        elif source.is_dir() and (kind := foreign.of_folder(source)) is not None:
            # another framework's folder, said so in place of its files' notes, which would say less; unless it
            # holds PyTorch checkpoints too (a run that exported a SavedModel's graph beside them)
            held: list[str] = []
            found = list(_scan_folder(source, glob, held, quiet))
            notes.extend(held if found else [foreign.note(source.name or str(source), kind)])
            yield from ((path, True) for path in found)
            continue
        if source.is_dir():
            yield from ((path, True) for path in _scan_folder(source, glob, notes, quiet))


def is_pattern(source: str | Path) -> bool:
    """Whether a checkpoint source given as an argument is a pattern fdl expands itself: it does not exist and
    holds glob magic (* ? [), as the quoted `fdl analyze 'run/epoch_*' --watch` gives it, which --watch expands
    again at each poll (the shell expands `run/epoch_*` once); `**` is any number of folders. A path that exists is
    taken as it is, a `*` in its name too, and one that cannot be looked at (a closed folder above it) is reported
    as the path it is."""
    text = str(source)
    if text == "-" or not has_magic(text):
        return False
    try:
        os.lstat(text)
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)
    return False


def expand_sources(sources: Sequence[str | Path], *, notes: list[str] | None = None,
                   missing_ok: bool = True) -> list[str]:
    """`sources` with each pattern (`is_pattern`) replaced by the paths it matches now, in sorted order, each then
    taken as if given as an argument. A pattern that matches nothing gives nothing: with `missing_ok` a note into
    `notes` (--watch waits for its first match), else an error."""
    expanded: list[str] = []
    for source in map(str, sources):
        if not is_pattern(source):
            expanded.append(source)
            continue
        matches = sorted(dict.fromkeys(_globstar(source)))  # `**`: any depth of folders, as bash's globstar
        if not matches and not missing_ok:
            raise CheckpointError(
                f"no checkpoint file or folder matches {source}",
                fix="check the pattern (relative paths are taken from the current folder), or add --watch to wait "
                "for the training job to write what it matches",
            )
        if not matches and notes is not None:
            notes.append(f"{source} matches nothing yet")
        expanded.extend(matches)
    return expanded


def _globstar(pattern: str) -> Iterator[str]:
    """The paths `pattern` matches, `**` (a whole part) any number of folders, none too, as bash's globstar: a link
    to a folder is one of them, not gone into. Python's glob went into each: a link to the folder above
    (`run/a/up -> ..`) gave every checkpoint again under run/a/up/a/up/..., 40 links deep, and two of them a walk
    that never ended."""
    # `**/**` is one `**`, as bash's: the second went into the links to folders the first had matched
    split = pattern.split(os.sep)
    parts = [part for at, part in enumerate(split) if not (part == "**" and at and split[at - 1] == "**")]
    if "**" not in parts:
        yield from glob_paths(pattern)
        return
    at = parts.index("**")
    head = os.sep.join(parts[:at]) or (os.sep if at else "")
    bases = [""] if not head else glob_paths(head) if has_magic(head) else [head]
    for base in (base for base in bases if not base or os.path.isdir(base)):  # as glob's: `missing/**` matches none
        for folder, link in _folders_from(base):
            if at < len(parts) - 1:
                yield from _globstar(os.path.join(glob_escape(folder), *parts[at + 1 :]))
                continue
            if folder:  # `run/**`: the folders and files below, as glob's
                yield folder
            if not link:
                yield from (path for path in glob_paths(os.path.join(glob_escape(folder), "*")) if not os.path.isdir(path))


def _folders_from(base: str) -> Iterator[tuple[str, bool]]:
    """`base` ("": the current folder) and the folders below it, hidden ones left out, each with whether it is a
    link: a link to a folder is yielded, never gone into (`_globstar`)."""
    yield base, False
    try:
        with os.scandir(base or os.curdir) as entries:
            found = sorted((entry.name, entry.is_symlink()) for entry in entries
                           if not entry.name.startswith(".") and entry.is_dir())
    except OSError:  # not a folder, or not readable: nothing below, as glob's
        return
    for name, link in found:
        if link:
            yield os.path.join(base, name), True
        else:
            yield from _folders_from(os.path.join(base, name))


def stdin_paths(stream: TextIO) -> list[str]:
    """The paths `-` reads: NUL-separated when stdin holds a NUL byte (`find -print0`), else one a line. Each is
    taken whole but for its line ending (\\n, \\r\\n): a name may begin or end with a space. Blank lines (spaces
    alone too) are skipped; so is a line ending after the last NUL (`printf '%s\\0' *.pt; echo`)."""
    text = stream.read()
    if "\0" in text:
        names = text.split("\0")
        if names[-1] in ("\n", "\r\n"):
            names.pop()
        return [name for name in names if name]
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


def _no_such_source(source: Path, *, from_stdin: bool = False) -> CheckpointError:
    """A checkpoint source that does not exist; one with spaces at its ends (a path read from stdin is taken whole)
    said so, quoted, when the path without them exists; one holding a newline said as the paths it likely is."""
    if "\n" in str(source) and not from_stdin:
        # several paths in one argument: `fdl analyze "$(find runs -name '*.pt')"`, whose quotes keep find's lines
        # together (told before as NUL-separated stdin, which the command did not read)
        return CheckpointError(
            f"no such checkpoint file or folder: {str(source)!r}",
            got="the argument holds a newline: several paths given as one (a quoted `\"$(find ...)\"`?)",
            fix="give each path as an argument of its own, or pipe them in: `find runs -name '*.pt' | fdl analyze - "
            "...` (`-print0` for names with newlines)",
        )
    if "\n" in str(source):  # only NUL-separated paths on stdin hold one: a line of them had a NUL byte
        return CheckpointError(
            f"no such checkpoint file or folder: {str(source)!r}",
            got="the paths on stdin hold a NUL byte, so they were read NUL-separated (`find -print0`), and this "
            "one holds a newline: the paths were given a line each, one with a NUL byte in it?",
            fix="give one path a line, with no NUL byte in any (`find ... -print`), or end each with a NUL "
            "(`find ... -print0`)",
        )
    trimmed = str(source).strip()
    if trimmed != str(source) and os.path.lexists(trimmed):
        return CheckpointError(
            f"no such checkpoint file or folder: {str(source)!r}",
            got=f"{trimmed} exists: the spaces around the path are part of the name asked for",
            fix="remove the spaces around the path (`fdl analyze -` takes each line of stdin whole, but for its "
            "line ending)",
        )
    return CheckpointError(
        f"no such checkpoint file or folder: {source}",
        fix="check the path (relative paths are taken from the current folder)",
    )


@dataclass
class _Quiet:
    """The files given as the run's probe (resolved paths), skipped without a note: their notes go to
    `unnoted`, which only the errors of a discovery that found no checkpoint read."""

    paths: frozenset[Path]
    unnoted: list[str] = field(default_factory=list)

    def note(self, path: Path, note: str, notes: list[str]) -> None:
        """`note` into `notes`, or into `unnoted` when `path` is one of the probe files."""
        (self.unnoted if self.paths and _resolved(path) in self.paths else notes).append(note)


def _resolved(path: Path) -> Path:
    """`path` absolute, its symbolic links and `..` resolved; only made absolute where it cannot be (a loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return path.absolute()


def _scan_folder(folder: Path, glob: str | None, notes: list[str], quiet: _Quiet | None = None) -> Iterator[Path]:
    own = set(_hf_weight_files(folder))
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        got, fix = _os_reason(folder, exc)
        raise CheckpointError(f"cannot list the folder {folder}", got=got, fix=fix) from None
    for entry in entries:
        if glob is not None and not entry.match(glob):
            continue
        if entry in own:
            continue
        if _TRAINING_STATE.fullmatch(entry.name) and entry.is_file():
            notes.append(f"skipped {entry.name}: training state (optimizer, scheduler, RNG, arguments), not model weights")
            continue
        if (staging := _staging_note(entry)) is not None:
            notes.append(staging)
            continue
        if entry.is_dir():
            try:
                is_checkpoint = bool(_hf_weight_files(entry))
            except CheckpointError:
                # It cannot be looked into (or its index read): it may be a checkpoint, so it is not
                # passed over in silence; peeking at it reports it as a bad checkpoint with the reason.
                is_checkpoint = True
            # Named like a checkpoint file (step_2.pt/, Lightning's DeepSpeed epoch=0-step=10.ckpt/): the same
            if is_checkpoint or checkpoint_suffix(entry) is not None:
                yield entry
            elif (kind := foreign.of_folder(entry)) is not None:  # a few stats, of a folder not searched
                notes.append(foreign.note(entry.name, kind))
        elif checkpoint_suffix(entry) is not None:
            yield entry
        elif (head := _archive_head(entry)) is not None and foreign.torch_save(entry, head):
            yield entry  # PyTorch's tutorial saves a general checkpoint as `.tar`
        elif (
            not entry.name.startswith(".")
            and entry.name not in ("trainer_state.json", MANIFEST_NAME)
            and not entry.name.endswith(".index.json")
        ):
            # what a skipped file is, by its name (a first read only of a name without a suffix, or an .h5)
            kind = foreign.of_file(entry, head, torch_checked=head is not None)
            note = (foreign.note(entry.name, kind) if kind is not None else
                    f"skipped {entry.name}: not a checkpoint suffix ({', '.join(WEIGHT_SUFFIXES + TAR_SUFFIXES)})")
            if quiet is not None:
                quiet.note(entry, note, notes)
            else:
                notes.append(note)


def _archive_head(path: Path) -> bytes | None:
    """The first bytes of `path` when it is a regular file named .zip or .tar, which may be a torch.save file
    (`foreign.torch_save`, read once for it and for `foreign.of_file`); else None, nothing read."""
    return foreign.head_of(path, 512) if path.suffix.lower() in (".zip", ".tar") else None


_NOT_A_CHECKPOINT = re.compile(r"skipped (.+): not a checkpoint suffix \((.+)\)")


def skipped_probe_sets(notes: Iterable[str], folders: Iterable[Path]) -> list[Path]:
    """The .npz probe sets (`_is_probe_set`) among the files of `folders` a folder scan skipped for their suffix
    (`notes`), their contents unread: the missing-probe error of `fdl analyze DIR` names them, as that of `DIR/*`
    (which reads them, `_peek_file`) did."""
    skipped = [match.group(1) for match in map(_NOT_A_CHECKPOINT.fullmatch, notes) if match is not None]
    found = []
    for path in (folder / name for folder in folders for name in skipped if name.endswith(".npz")):
        with contextlib.suppress(OSError, zipfile.BadZipFile, UnicodeDecodeError), zipfile.ZipFile(path) as archive:
            arrays = _npz_shapes(archive, archive.namelist())
            if arrays is not None and _is_probe_set(arrays):
                found.append(path)
    return found


def _foreign_fixes(kinds: Iterable[foreign.Foreign]) -> str:
    """The fixes of the kinds of files skipped as foreign (`foreign.in_note`), each once, the first two."""
    fixes = list(dict.fromkeys(kind.fix for kind in kinds))
    return "; and ".join(fixes[:2])


def _condensed(notes: list[str]) -> str:
    """The notes of a folder scan that found no checkpoint, for the error's "got": the files skipped for
    their suffix as one entry, the first 6 of them named. In a folder of 50 other files (`fdl analyze .`
    in a working folder) each had its own entry, with the whole list of suffixes every time, and the
    line that said where the checkpoints are came after 6 KB of them."""
    plain = [match.group(1) for match in map(_NOT_A_CHECKPOINT.fullmatch, notes) if match is not None]
    # another framework's files, or archives, so skipped: one entry a kind too (a folder of 40 .gguf said each)
    kinds = _by_kind(found for found in map(foreign.in_note, notes) if found is not None)
    many = {kind for kind, names in kinds.items() if len(names) > 1}
    entries = [f"skipped {len(plain)} files without a checkpoint suffix ({', '.join(WEIGHT_SUFFIXES + TAR_SUFFIXES)}"
               f"): {first_and_more(plain, 6)}"] if len(plain) > 1 else []
    entries += [f"skipped {len(kinds[kind])} files, each {foreign.said(kind)}: {first_and_more(kinds[kind], 6)}"
                for kind in kinds if kind in many]
    for note in notes:
        found = foreign.in_note(note)
        if not (len(plain) > 1 and _NOT_A_CHECKPOINT.fullmatch(note)) and not (found and found[1] in many):
            entries.append(note)
    return "; ".join(entries)


def _by_kind(named: Iterable[tuple[str, foreign.Foreign]]) -> dict[foreign.Foreign, list[str]]:
    """The names of (name, kind) pairs, by kind, in their order."""
    kinds: dict[foreign.Foreign, list[str]] = {}
    for name, kind in named:
        kinds.setdefault(kind, []).append(name)
    return kinds


def discover_checkpoints(
    sources: Sequence[str | Path],
    *,
    glob: str | None = None,
    step_regex: str | None = None,
    steps: Sequence[int] | None = None,
    every: int | None = None,
    stdin: TextIO | None = None,
    weights: str | None = None,
    empty_ok: bool = False,
    missing_ok: bool = False,
    for_inspect: bool = False,
    trust_pickle: bool = False,
    step_offsets: Sequence[tuple[str, int]] = (),
    probes: Sequence[str | Path] = (),
    model_keys: ModelKeys | None = None,
) -> Discovery:
    """Find the checkpoints in ``sources`` and order them by training step.

    A source is a file, a folder (its files with a checkpoint suffix, not recursive, plus HF-style
    sub-folders, each ONE checkpoint), a pattern (`is_pattern`: the paths it matches now, each as if given),
    or ``-`` (paths read from ``stdin``, one a line). ``glob``
    filters the names found in folders (explicit files are always kept).

    Step, first match wins: ``step_regex`` when given (its first group, searched in the name, or in
    FOLDER/NAME for a regex holding `/`; an explicit choice beats metadata), the keys
    ``step``/``global_step``/``epoch`` in the file (safetensors ``__metadata__``, a training-loop dict's
    top level, an HF folder's ``trainer_state.json``), else the LAST integer
    of the name without its suffix (``epoch_9`` < ``epoch_10``; ``ckpt-3-of-10`` is step 10, so
    pass ``--step-regex`` for such names). Non-model files are skipped with a note, and so are files
    found by a folder scan that have no step (no metadata, no integer in the name, or no match of
    ``step_regex``: ``final.pt``); a file named explicitly without a step is an error. Two checkpoints
    with the same step are an error unless their weights are identical (then one is dropped with a
    note, Lightning's ``last.ckpt`` rather than ``epoch=3-step=400.ckpt`` beside it); identical
    weights at different steps are kept and reported in ``duplicates`` (a warning: a run that did
    not move, or files copied under the wrong names). ``steps`` keeps exactly those steps (all must
    exist); ``every`` keeps every N-th checkpoint in step order, always the first and the last.
    ``weights`` (--weights) names the weights that are compared for "identical weights". ``empty_ok``:
    no checkpoint (or only unreadable ones) is an empty Discovery, not an error, and so is a step of
    ``steps`` that no checkpoint has yet (--watch waits for them). ``missing_ok``: a source that does not
    exist is a note (--watch waits for the folder a trainer makes at its first save). ``for_inspect``:
    `fdl inspect` lists one checkpoint's modules and needs no step: a file without one (`final.pt`, a
    Trainer's final save_model() folder) is kept, after those with steps, and two files of one step do
    not clash; messages name `fdl inspect`. ``step_offsets`` (--step-offset PAT=N): N is added to the
    step of each checkpoint that PAT takes in (`_offset_matches`), however its step was read: a job
    restarted with its step count reset, into another folder or under other names. ``probes``: the run's
    probe files (--probe), which a folder or a glob of the run's files takes in (`fdl analyze 'run/*.pt'
    --probe run/probe.pt`): skipped as any probe is, but without a note, as the user named them (a path
    that resolves to the same file, through a symbolic link or `..`, is the same file). ``model_keys``: the
    state_dict keys of the run's model, asked for only where a flat dict of tensors beside plain values (a
    training job's metrics file) is met among checkpoints that tell no weights' names of their own
    (`_foreign_flat_dicts`).
    """
    notes: list[str] = []
    if for_inspect and (patterns := [source for source in sources if is_pattern(source)]):
        raise CheckpointError(
            f"no such checkpoint file or folder: {patterns[0]}",
            got="fdl inspect reads one checkpoint, and expands no pattern",
            fix="give one checkpoint's path (`fdl analyze` expands a quoted pattern, e.g. 'run/epoch_*')",
        )
    # a pattern (`fdl analyze 'run/epoch_*'`) as the paths it matches now: --watch expands it again at each poll
    sources = expand_sources(sources, notes=notes, missing_ok=missing_ok)
    quiet = _Quiet(frozenset(_resolved(Path(path)) for path in probes))
    pattern = None
    if step_regex is not None:
        try:
            pattern = re.compile(step_regex)
        except re.error as exc:
            raise CheckpointError(
                f"--step-regex '{step_regex}' is not a valid regular expression",
                got=str(exc),
                fix="e.g. --step-regex 'step_(\\d+)'",
            ) from None
        if pattern.groups == 0:
            raise CheckpointError(
                f"--step-regex '{step_regex}' has no capture group around the step",
                fix="e.g. --step-regex 'step_(\\d+)' (its first group is the step)",
            )
    seen: set[Path] = set()
    bad: list[tuple[Path, CheckpointError]] = []
    found: list[tuple[CheckpointRef, str | None]] = []
    looked_at: list[str] = []
    stepless: list[Path] = []  # files a folder scan skipped for want of a step
    stepless_prints: list[tuple[CheckpointRef, str, int, str]] = []  # of those: (as a ref, fingerprint, its note's
    # index, its name as the note gives it)
    stepless_digests: dict[Path, str | None] = {}  # of those unpickled here (--trust-pickle): `_unpickled_digest`
    offsets_used: set[tuple[str, int]] = set()
    applied: dict[Path, int] = {}  # the --step-offset added to each checkpoint's step read (by path)
    peeks: dict[Path, _Peek] = {}  # of the checkpoints found, for `_foreign_flat_dicts`
    # Files before symbolic links (stable otherwise): of a link and its target, the one met first is
    # kept, and a store that recorded save_last="link"'s last.ckpt for a step found it changed later.
    candidates = sorted(_candidates(sources, stdin, glob, notes, missing_ok, quiet), key=lambda item: _is_link(item[0]))
    for path, scanned in candidates:
        key = _resolved(path)
        if key in seen:
            continue
        seen.add(key)
        looked_at.append(path.name)
        unpickled: Any = None  # the object, where the scan unpickled the file (--trust-pickle)
        try:
            _check_reachable(path)  # a dangling link or a link loop is a bad checkpoint, not a traceback
            peek = _peek_hf_dir(path) if path.is_dir() else _peek_file(path)
            if (peek.kind == "pickle" and trust_pickle and pattern is None and path.is_file()
                    and (_name_step(path) is None or _name_step_is_an_epoch(path))):
                # Its step keys are read by unpickling it, only when its name holds no step (or only the
                # epoch Lightning's name labels so): discovery unpickles no file whose step it can tell
                # otherwise (each file is unpickled again to load)
                unpickled = _load_trusted(path)
                peek = _Peek("pickle", _file_steps(unpickled) if isinstance(unpickled, Mapping) else {})
        except CheckpointError as exc:
            bad.append((path, exc))
            continue
        except OSError as exc:  # e.g. no permission to read it: a bad checkpoint, the others go on
            bad.append((path, _unreachable_error(path, exc)))
            continue
        if peek.kind is None:
            quiet.note(path, peek.skip_reason or f"skipped {path.name}", notes)
            if path.is_file() and path.stat().st_size == 0 and foreign.in_note(peek.skip_reason or "") is None:
                bad.append((path, _empty_error(path)))
            continue
        kind = peek.kind
        try:
            step, source = _step_of(path, peek, pattern)
        except _NoStep as exc:
            if for_inspect:  # a model's modules do not depend on its step
                found.append((CheckpointRef(path=path, step=0, step_source="none", kind=kind), peek.fingerprint))
                peeks[path] = peek
                continue
            if not scanned:
                raise
            notes.append(exc.note)  # one odd name (final.pt) must not block the rest of the folder
            stepless.append(path)
            as_ref = CheckpointRef(path=path, step=0, step_source="none", kind=kind)
            fingerprint = peek.fingerprint
            if unpickled is not None:  # a pickle's weights, whose note needs them as a state_dict file's
                tensors = _unpickled_tensors(unpickled)
                fingerprint = _fingerprint_tensors(tensors) if tensors else None
                if fingerprint:
                    stepless_digests[path] = _unpickled_digest(as_ref, unpickled, weights)
            if fingerprint:
                stepless_prints.append((as_ref, fingerprint, len(notes) - 1, exc.shown))
            continue
        found.append((CheckpointRef(path=path, step=step, step_source=source, kind=kind), peek.fingerprint))
        peeks[path] = peek
    unpickled = None  # the last file's objects, not held through the rest of discovery
    found = _foreign_flat_dicts(found, peeks, notes, model_keys)
    # After the scan: whether a checkpoint is its folder's only one (one folder per step) tells which folders
    # take it in
    alone = collections.Counter(ref.path.absolute().parent for ref, _ in found)
    for index, (ref, fingerprint) in enumerate(found):
        offset = _offset_for(ref.path, step_offsets, alone=alone[ref.path.absolute().parent] == 1)
        if offset is not None:
            step, source = _offset_step(ref.path, ref.step, ref.step_source, offset)
            found[index] = (dataclasses.replace(ref, step=step, step_source=source), fingerprint)
            offsets_used.add(offset)
            applied[ref.path] = offset[1]
    unused = [offset for offset in step_offsets if offset not in offsets_used]
    if unused and found and not empty_ok:
        # A typo (run_2 for run2) analysed the run at the steps it was meant to move, as --steps of a step no
        # checkpoint has is refused; --watch notes it (the folder may not exist yet).
        holding = list(dict.fromkeys(str(ref.path.parent) for ref, _ in found))
        raise CheckpointError(
            f"--step-offset '{unused[0][0]}={unused[0][1]}' matches none of the checkpoints found",
            got="checkpoints in " + ", ".join(holding[:4]) + (f", ... ({len(holding)} folders)" if len(holding) > 4 else ""),
            fix=f"give the folder that holds the files to move, as given (--step-offset '{holding[-1]}={unused[0][1]}'), "
            "or the one above its folders of one checkpoint each, or a glob of their paths matched from the right, as "
            "--glob ('run2/*', 'resume_step_*.pt')",
        )
    for offset in unused:
        notes.append(f"--step-offset '{offset[0]}={offset[1]}' matches none of the checkpoints found (a glob matched "
                     "from the right, as --glob: 'resume_*', 'run2/*'; or a folder, as given, that holds them or their "
                     "folders of one checkpoint each)")
    # --watch before the first checkpoint is written; not when they are written to a sub-folder (a
    # Lightning default_root_dir's lightning_logs/version_N/checkpoints) or as DCP shards, nor one folder per step
    # of files without a step ('run/epoch_*/last.ckpt' wants --step-regex): that waited for ever
    below = _checkpoints_below([Path(s) for s in sources if str(s) != "-"]) if not found and empty_ok else None
    if below is not None and not below[0] and _folder_per_step([p.parent for p in stepless if not p.is_dir()]) is None:
        return Discovery(checkpoints=[], notes=notes, duplicates=[], bad=[(path, exc.message) for path, exc in bad])
    if not found:
        _raise_none_found(sources, notes=notes, unnoted=quiet.unnoted, bad=bad, looked_at=looked_at,
                          stepless=stepless, glob=glob, for_inspect=for_inspect, watch=missing_ok)
    found.sort(key=lambda item: (item[0].step_source == "none", item[0].step, str(item[0].path)))
    if for_inspect:
        return Discovery(checkpoints=[ref for ref, _ in found], notes=notes, duplicates=[],
                         bad=[(path, exc.message) for path, exc in bad])
    _note_save_counts([ref for ref, _ in found], notes)
    _note_epoch_steps([ref for ref, _ in found], notes)
    copies: list[tuple[CheckpointRef, CheckpointRef]] = []
    checkpoints, duplicates = _dedupe(found, notes, weights, copies, applied, trust_pickle=trust_pickle)
    _note_stepless_copies(stepless_prints, [item for item in found if item[0] in checkpoints], notes, weights,
                          known=stepless_digests)
    return Discovery(
        checkpoints=_select(checkpoints, steps=steps, every=every, missing_ok=empty_ok),
        notes=notes,
        duplicates=duplicates,
        bad=[(path, exc.message) for path, exc in bad],
        steps_found=tuple(ref.step for ref in checkpoints),
        copies=copies,
    )


def _raise_none_found(
    sources: Sequence[str | Path], *, notes: list[str], unnoted: list[str],
    bad: list[tuple[Path, CheckpointError]], looked_at: list[str], stepless: list[Path], glob: str | None,
    for_inspect: bool, watch: bool = False,
) -> NoReturn:
    """`discover_checkpoints` found no checkpoint in `sources`: raise the error that says why, from what the scan
    met (`notes`, the probe files' `unnoted` skips, the `bad` files, the names `looked_at`, the `stepless` files
    a folder scan skipped) and, where that says nothing, the sub-folders below the sources. `watch`: the folders
    of one step each are given as the quoted pattern --watch expands at each poll."""
    if bad and len(bad) == len(looked_at):
        raise bad[0][1]  # nothing readable: the first file's own error says what is wrong
    # the errors below say what was found, the --probe file included (`fdl analyze probe.pt`)
    notes = [*notes, *unnoted]
    if bad and not stepless:
        # The rest skipped as no checkpoint (the probe.pt beside a cut-short step_1.pt): "no checkpoints found",
        # got "skipped probe.pt", hid what is wrong with step_1.pt. Its own error leads, the skipped said after.
        # **(choice)** Not where a checkpoint was skipped for want of a step: the errors below say how to read it.
        first = copy.copy(bad[0][1])
        first.got = "; ".join(filter(None, [first.got, f"nothing else in {', '.join(map(str, sources))} to analyse"
                                            + (f": {_condensed(notes)}" if notes else "")]))
        raise first
    probe_sets = [note for note in notes if PROBE_NOTE.fullmatch(note)]
    if probe_sets and len(probe_sets) == len(notes) and all(Path(s).is_file() for s in sources):
        # a probe file given where a checkpoint goes: "no checkpoints found in probe.pt ... point at a folder"
        named = ", ".join(str(s) for s in sources)
        raise CheckpointError(
            f"{named} {'is a probe' if len(sources) == 1 else 'are probes'} (tensors named only as a probe's x and y), "
            "not model weights",
            got=probe_sets[0].removeprefix("skipped "),
            fix=f"give {'it' if len(sources) == 1 else 'them'} as --probe, and a checkpoint or a run's folder as the "
            "argument",
        )
    hdf5 = [note for note in notes if note.endswith(": an HDF5 file (an fdl store, or an .h5 probe), not a checkpoint")]
    if hdf5 and len(hdf5) == len(notes) and all(Path(s).is_file() for s in sources):
        # `fdl analyze run.fdl.h5` (for `fdl report`), or an .h5 probe given where a checkpoint goes
        raise CheckpointError(
            f"{', '.join(str(s) for s in sources)} {'is an HDF5 file' if len(sources) == 1 else 'are HDF5 files'}, "
            "not a checkpoint",
            got=hdf5[0].removeprefix("skipped "),
            fix="read an fdl store with `fdl report STORE` (or classify, compare, export), give an .h5 probe as "
            "--probe, and a checkpoint or a run's folder as the argument",
        )
    strange = [kind for kind in map(foreign.in_note, notes) if kind is not None]
    if strange and len(strange) == len(notes) == len(sources) and all(
            name == (Path(source).name or str(source)) for (name, _), source in zip(strange, sources, strict=True)):
        # each given is another framework's save (model.keras, a SavedModel folder), an archive or a download;
        # many of one kind (`fdl analyze run/*` of 40 .gguf) said as one, the first named
        kinds = _by_kind((str(source), kind) for source, (_, kind) in zip(sources, strange, strict=True))
        said = {str(source): note[len(f"skipped {name}: "):]
                for source, note, (name, _) in zip(sources, notes, strange, strict=True)}
        raise CheckpointError(
            "; ".join(f"{names[0]} is {said[names[0]]}" if len(names) == 1 else
                      f"{first_and_more(names, 6)} are each {foreign.said(kind)}" for kind, names in kinds.items()),
            fix=_foreign_fixes(kind for _, kind in strange))
    where = ", ".join(str(s) for s in sources)
    got = _condensed(notes) if notes else ("nothing" if not looked_at else ", ".join(looked_at))
    fix = (f"point at a folder of {'/'.join(WEIGHT_SUFFIXES + TAR_SUFFIXES)} files (or pass the files)"
           + (", or loosen --glob" if glob is not None else ""))
    if strange:  # skipped for what they are: how to get PyTorch weights from them
        fix = _foreign_fixes(kind for _, kind in strange)
    regex_missed = [match for match in map(_REGEX_MISSED.fullmatch, notes) if match is not None]
    if regex_missed and len(regex_missed) == len(notes):
        # each file skipped for --step-regex alone: the note once a file said the same thing over, and the fix
        # "point at a folder of ... files" sent the user back to the folder given; the regex is what to change
        names = [match.group(1) for match in regex_missed]
        got = (f"--step-regex '{regex_missed[0].group(2)}' "
               + (f"matches none of the {len(names)} files' names: {first_and_more(names, 6)}" if len(names) > 1
                  else f"does not match the name {names[0]}"))
        example = _name_regex(names[0])
        fix = ("give a --step-regex whose first group is the step in these names"
               + (f" (--step-regex '{example}' reads {names[0]})" if example else "")
               + ", or leave --step-regex out: the step is then read from each file's metadata, else the last number "
               "of its name")
    elif glob is not None and not notes and not looked_at:
        # "got: nothing": which files were there for the glob to keep, and a glob that keeps them
        left_out: list[str] = []
        for source in sources:
            with contextlib.suppress(OSError):
                if str(source) != "-" and Path(source).is_dir():
                    left_out += [entry.name for entry in Path(source).iterdir()
                                 if checkpoint_suffix(entry) and entry.is_file()]
        left_out.sort(key=lambda name: (_name_step(Path(name)) is None, _name_step(Path(name)) or 0, name))
        if left_out:
            got = (f"--glob '{glob}' matches none of the {counted(len(left_out), 'checkpoint file')} there: "
                   f"{first_and_more(left_out, 6)}")
            fix = (f"loosen --glob to match their names (--glob '{_name_glob(left_out[0])}' keeps {left_out[0]}), "
                   "or leave it out")
    if sources and all(str(s) != "-" and Path(s).is_file() for s in sources):
        # files given, each read and skipped (optimizer.pt, scheduler.pt): "or pass the files" was given already
        fix = ("give a file of the model's weights (a state_dict, or a training-loop dict holding one, as "
               "model_state_dict), or the run's folder")
    if [str(s) for s in sources] == ["-"] and not looked_at:  # `fdl analyze -` read nothing: "in -", "got: nothing"
        where, got = "the paths read from stdin (-)", "no path on stdin"
        fix = "pipe the checkpoints' paths in, one a line (`find runs/a -name '*.pt' | fdl analyze - ...`), or " + fix
    nested, adapters = _checkpoints_below([Path(s) for s in sources if str(s) != "-"])
    one_each = [folder for folder, _ in nested] if all(count == 1 for _, count in nested) else []
    per_step = _folder_per_step([path.parent for path in stepless if not path.is_dir()] or one_each)
    if per_step and not for_inspect:
        # One folder per step (step_100/model.pt): "pass the folder that holds them" analysed one
        # checkpoint, and a --step-regex matching names could not match model.pt
        folders, regex = per_step
        where_folders = f"{folders[0].parent}/{_name_glob(folders[0].name)}"
        if watch:  # the shell expands `run/epoch_*` once: the folders the job makes later were never seen
            where_folders = f"{shlex.quote(where_folders)} --watch"
        if nested:
            got = ("" if got == "nothing" else got + "; ") + (
                "one checkpoint in each of the sub-folders " + first_few(folders, 3))
        # the last folder's: the first is often step 0 (the initialisation), where a held global_step 0 and the
        # 0 of `epoch_0` agree by chance
        held = _held_step(folders[-1]) if not stepless else None
        # an epoch is no step of the file's own ("Epochs only"): the names' numbers are the steps to take
        if held is not None and "epoch" not in held[0] and held[1] != _name_step(folders[-1]):
            # nanoGPT's out1/ckpt.pt: the file holds its step (iter_num), which --step-regex would override
            fix = f"pass the folders, whose checkpoints hold their steps ({held[0]}): fdl analyze {where_folders} ..."
        else:
            fix = (f"one folder per step: pass the folders and take the steps from their names: "
                   f"fdl analyze {where_folders} --step-regex '{regex}' ...")
    elif nested:
        shown = ", ".join(f"{folder} ({count} checkpoint{'s' if count > 1 else ''})" for folder, count in nested[:3])
        shown += ", ..." if len(nested) > 3 else ""  # runs/a, runs/b, runs/c alone read as the only ones
        got = ("" if got == "nothing" else got + "; ") + f"checkpoints in sub-folders, which are not searched: {shown}"
        fix = f"pass the folder that holds them: fdl {'inspect' if for_inspect else 'analyze'} {nested[0][0]} ..."
    elif adapters:
        got = ("" if got == "nothing" else got + "; ") + (
            "PEFT adapters (adapter_model.safetensors), not whole models, in " + ", ".join(map(str, adapters)))
        fix = ("fdl analyses whole models: merge each adapter into its base model "
               "(PeftModel.from_pretrained(base, folder).merge_and_unload().save_pretrained(...)) and analyse those")
    raise CheckpointError(f"no checkpoints found in {where}", got=got, fix=fix)


def _unpickled_tensors(obj: Any) -> Mapping[str, torch.Tensor] | None:
    """The tensors a folder scan fingerprints of a file it unpickled (--trust-pickle): its state_dict, as
    `_peek_file` finds a weights-only file's, or else the state_dict of its module pickled whole, the file itself
    (`torch.save(model, "best.pt")`) or under a key (`_module_entry`), as `load_checkpoint` reads it."""
    tensors = _find_tensor_dict(obj)
    if tensors is not None:
        return tensors
    module = obj if isinstance(obj, nn.Module) else (_module_entry(obj) or ("", None))[1]
    if module is None:
        return None
    try:
        state = module.state_dict()
    except Exception as exc:  # noqa: BLE001 - a pickled module's own state_dict() may fail: no fingerprint, the plain note
        signals.through(exc)  # a Ctrl-C met in C code the module's state_dict() ran through: not its failure
        return None
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _note_stepless_copies(
    stepless: Sequence[tuple[CheckpointRef, str, int, str]], kept: Sequence[tuple[CheckpointRef, str | None]],
    notes: list[str], weights: str | None, *, known: dict[Path, str | None] | None = None,
) -> None:
    """A file skipped for want of a step that holds a kept checkpoint's weights (a custom loop's `best.pt`,
    `last.pt` beside its `step_*.pt`): its note names that checkpoint instead of saying to rename it, which would
    make it a second file of that step. ``known``: `_same_weights`' digests taken already (a pickle's, from its one
    unpickling, `_unpickled_digest`). A pickle kept for a step (`step_100.pt` saved with a config object) has no
    fingerprint, as the scan does not unpickle it: a `best.pt` of its weights keeps the plain note rather than
    unpickle every step's file to compare."""
    known = {} if known is None else known
    for ref, fingerprint, index, shown in stepless:
        try:
            same = next((other for other, other_print in kept if other_print == fingerprint
                         and _same_weights(other, ref, weights, known=known)), None)
        except CheckpointError:  # --weights names no copy it holds: the note stays as it was
            continue
        if same is not None:
            notes[index] = (f"skipped {shown}: no step of its own; the same weights as {same.path.name} "
                            f"(step {same.step}), analysed there")


def _leaves(keys: Iterable[str]) -> set[str]:
    """The last part of each name: the parameter's or buffer's own (`model.0.weight` -> `weight`)."""
    return {key.rpartition(".")[2] for key in keys}


def _foreign_flat_dicts(found: list[tuple[CheckpointRef, str | None]], peeks: Mapping[Path, _Peek],
                        notes: list[str], model_keys: ModelKeys | None = None) -> list[tuple[CheckpointRef, str | None]]:
    """`found` without its flat dicts of tensors beside plain values (`_Peek.beside`) whose tensors share no
    name with the weights of the run's other checkpoints, those found as weights otherwise (a state_dict of
    tensors only, a training-loop dict's, a safetensors file, an HF folder's) and those most of its files hold;
    where these tell none (TorchScript, modules pickled whole, or one such flat dict beside the other), the
    keys of the run's model (`model_keys`). A note says why each is left out. Such a dict is
    `{**model.state_dict(), "step": 5}`, or a training job's metrics, `{"losses": ..., "accs": ..., "epoch": 3}`,
    which no file tells apart alone (a model of raw parameters, `{"W": ..., "a": ..., "step": 5}`, is saved so):
    beside the run's weights, a dict none of whose names ends as one of theirs (`weight`, `bias`,
    `running_mean`, `W`) holds no weights of that model, nor of another (whose names end so too: its file stays,
    and fails to load as another model's). The metrics file was read as a checkpoint, failed to load
    ("unexpected keys losses, accs") and failed the run, or took the step of its epoch from a real one."""
    firm = [keys for ref, _ in found for keys in [peeks[ref.path].keys] if not peeks[ref.path].beside and keys]
    # The names most of the run's files hold, two files at least, are its weights too: a run of flat dicts only,
    # and one whose files of tensors only are fewer (metrics saved as `{"losses": ..., "accs": ...}` beside
    # `{**sd, "step": 5}`s took the place of the run's weights, and every real checkpoint was skipped)
    counts = collections.Counter(peeks[ref.path].keys for ref, _ in found).most_common(2)
    top = counts[0][0] if counts else None
    if top and counts[0][1] >= 2 and (len(counts) == 1 or counts[1][1] < counts[0][1]):
        firm.append(top)
    flat = {ref.path for ref, _ in found if peeks[ref.path].beside and peeks[ref.path].keys is not None}
    if not firm and flat and len(found) > 1 and model_keys is not None:
        # asked only now: building the model, or loading a checkpoint that holds one, costs what a peek does not
        others = sorted((ref for ref, _ in found if ref.path not in flat), key=lambda ref: (ref.step, str(ref.path)))
        firm = [keys for keys in [model_keys(others)] if keys]
    if not firm:
        return found
    weights: frozenset[str] = frozenset().union(*firm)
    leaves = _leaves(weights)
    kept = []
    for ref, fingerprint in found:
        peek = peeks[ref.path]
        if ref.path in flat and peek.keys is not None and not _leaves(peek.keys) & leaves:
            shown, theirs = first_names(sorted(peek.keys), 3), first_names(sorted(weights), 3)
            notes.append(
                f"skipped {ref.path.name}: tensors ({shown}) beside plain values ({listed_names(peek.beside, 3)}) that "
                f"share no name with the weights of the run's other checkpoints ({theirs}): a training job's "
                f"metrics or state, not this model's weights; if they are a model's, analyse it alone "
                f"(fdl analyze {shown_path(ref.path)} ...)")
            continue
        kept.append((ref, fingerprint))
    return kept


def model_keys(others: Sequence[CheckpointRef], factory: Callable[..., nn.Module] | None,
               kwargs: Mapping[str, Any] | None, *, trust_pickle: bool = False,
               weights: str | None = None) -> frozenset[str] | None:
    """The state_dict keys of a run's model (`discover_checkpoints`' ``model_keys``): of the model `factory`
    builds, built on the meta device (neither memory nor initialisation), else of the module the first of
    `others` holds (TorchScript, a module pickled whole, loaded as the run loads it). None where neither
    tells them: the model cannot be built so, the file cannot be loaded (its turn in the run says why)."""
    model: Any = None
    if factory is not None:
        with contextlib.suppress(Exception, SystemExit), _user_code_stderr(), torch.device("meta"), \
                signals.model_code("the model's build (--model)"):
            model = factory(**(kwargs or {}))  # user code: any failure is the run's to report, when it builds it
    elif others:
        with contextlib.suppress(FdlError, OSError):
            loaded = load_checkpoint(others[0], trust_pickle=trust_pickle, weights=weights)
            model = build_model(loaded, factory=None) if loaded.module is not None else None
    if not isinstance(model, nn.Module):
        return None
    # user code too: a state_dict hook or get_extra_state that reads values fails on the meta device
    with contextlib.suppress(Exception), _user_code_stderr():
        return frozenset(_key_names(_unwrapped(model).state_dict())) or None
    return None


def _offset_matches(path: Path, pattern: str, *, alone: bool = False) -> bool:
    """Whether --step-offset's PAT takes in `path` (a checkpoint file or HF-style folder, as found): a glob
    matched from the right, as --glob is (`resume_step_*.pt`, `run2/*`), against the path as found or as
    an absolute one (`run2/*` of the folder given as `.` from inside run2; an absolute glob of folders given
    relative); or a folder, as given (`run2`, `../restart/`), that holds it, or that holds its folder when
    it is `alone` there: a job saving one folder per step (DeepSpeed's run2/global_step100/
    mp_rank_00_model_states.pt). Not further up: run2/old/ of several checkpoints is another run's."""
    with contextlib.suppress(ValueError):  # Path.match refuses an empty pattern
        if path.match(pattern) or Path(os.path.abspath(path)).match(pattern):
            return True
    try:
        folder = Path(pattern)
        if not folder.is_dir():
            return False
        parent = path.absolute().parent.resolve()
        return folder.resolve() in ((parent, parent.parent) if alone else (parent,))
    except (OSError, RuntimeError):
        return False


def _offset_for(path: Path, step_offsets: Sequence[tuple[str, int]], *, alone: bool) -> tuple[str, int] | None:
    """The one (PAT, N) of --step-offset that takes in `path`, None when none does; two are an error (the
    order of options would otherwise decide silently)."""
    hits = [offset for offset in step_offsets if _offset_matches(path, offset[0], alone=alone)]
    if len(hits) > 1:
        raise CheckpointError(
            f"{path} matches two --step-offset patterns: " + " and ".join(f"'{pat}={n}'" for pat, n in hits[:2]),
            fix="give patterns that take in separate files (a folder each, or names of different shapes)",
        )
    return hits[0] if hits else None


def _offset_step(path: Path, step: int, source: str, offset: tuple[str, int]) -> tuple[int, str]:
    moved = step + offset[1]
    if not STEP_MIN <= moved <= STEP_MAX:
        raise CheckpointError(
            f"the training step of {path} does not fit a 64-bit integer with --step-offset '{offset[0]}={offset[1]}'",
            got=f"step {step} (from its {source}) + {offset[1]}", fix="give a smaller offset",
        )
    return moved, f"{source} + {offset[1]}, --step-offset"


def _held_step(folder: Path) -> tuple[str, int] | None:
    """The step key (`STEP_ORDER`) the checkpoint in `folder` holds and its value, None when it holds none
    or cannot be read: for the advice on one checkpoint a sub-folder (`_folder_per_step`)."""
    try:
        entries = sorted(folder.iterdir())
        for entry in entries:
            if entry.is_dir() and _hf_weight_files(entry):
                peek = _peek_hf_dir(entry)
            elif entry.is_file() and checkpoint_suffix(entry) is not None and not _TRAINING_STATE.fullmatch(entry.name):
                peek = _peek_file(entry)
            else:
                continue
            return next(((key, int(peek.metadata[key])) for key in STEP_ORDER if key in peek.metadata), None)
    except (OSError, CheckpointError):
        return None
    return None


def _folder_per_step(candidates: Sequence[Path]) -> tuple[list[Path], str] | None:
    """(folders, --step-regex) when checkpoints are kept one a folder, the folders named by their steps
    (step_100/model.pt, global_step100/...): `candidates` are the folders of the files a folder scan
    skipped for want of a step, or the sub-folders that hold one checkpoint each; two folders or more
    of one parent, whose names differ only in their numbers. None otherwise."""
    folders = list(dict.fromkeys(candidates))
    if len(folders) < 2 or len({folder.absolute().parent for folder in folders}) != 1:
        return None
    pattern = _name_regex(folders[0].name)
    if not pattern or not all(re.fullmatch(pattern, folder.name) for folder in folders):
        return None
    return sorted(folders, key=lambda folder: _name_step(folder) or 0), f"{pattern}/"


def _note_save_counts(refs: Sequence[CheckpointRef], notes: list[str]) -> None:
    """accelerate's automatic naming (`ProjectConfiguration(automatic_checkpoint_naming=True)`) names its
    `save_state()` folders checkpoint_0, checkpoint_1, ...: the number counts saves, not training steps,
    and the folder holds no step. Such steps are used, in the right order, with a note saying what they
    count."""
    counted = [ref for ref in refs if ref.step_source == "name" and re.fullmatch(r"checkpoint_\d+", ref.path.name)
               and _is_dir_with(ref.path, "random_states_*.pkl")]
    if counted:
        notes.append(
            f"the steps of {len(counted)} accelerate save_state() folder{'s' if len(counted) > 1 else ''} "
            f"({counted[0].path.name}, ...) are their numbers, which count saves, not training steps; to "
            "measure against steps, save with accelerator.save_state(f\"ckpts/step_{step}\")"
        )


def _is_epoch(ref: CheckpointRef) -> bool:
    """Whether `ref`'s step is the epoch its file holds (`epoch`, mmengine's `meta.epoch`)."""
    return ref.step_source.endswith((":epoch", ".epoch"))


def _note_epoch_steps(refs: Sequence[CheckpointRef], notes: list[str]) -> None:
    """Files whose only step metadata is an epoch are stored at their epochs (metadata beats names),
    which a run compared with another saved by steps, or a reader of `ckpt_500.pt` stored as step 1,
    does not expect. A note, when a name holds another number, says so and how to take the names'
    numbers instead (its text names the first such file only, so --watch shows it once).

    Only where the names' numbers could be the steps: two files or more whose numbers rise with
    their epochs, not by one constant offset. A number every name shares (`resnet18_best.pt`,
    `resnet18_last.pt`) is no step, and --step-regex would give every file that one step; names that
    count epochs from 1 where the files count from 0 (`model_epoch_1.pt` holding epoch 0) number the
    epochs too; one file alone (`resnet50.pt`) cannot tell (--watch notes it when the second comes)."""
    named = [(ref, number) for ref in refs if _is_epoch(ref)
             for number in [_name_step(ref.path)] if number is not None]
    numbers = [number for _, number in named]
    offsets = {number - ref.step for ref, number in named}
    if len(named) < 2 or len(offsets) < 2 or any(a >= b for a, b in zip(numbers, numbers[1:], strict=False)):
        return
    first, number = next((ref, number) for ref, number in named if number != ref.step)
    pattern = _name_regex(first.path.name)
    if pattern and not all(re.search(pattern, ref.path.name) for ref, _ in named):
        pattern = ""  # names of other shapes (ckpt_500.pt, model_1500.pt): that regex would skip them
    notes.append(
        f"steps are epochs where a file holds only an epoch ({first.path.name} is epoch {first.step}, "
        f"its name says {number}); "
        + (f"to use the numbers in the names instead, pass --step-regex '{pattern}'" if pattern
           else "pass --step-regex to take the steps from the names instead")
    )


def _is_dir_with(path: Path, pattern: str) -> bool:
    try:
        return path.is_dir() and next(path.glob(pattern), None) is not None
    except OSError:
        return False


def _checkpoints_below(folders: Sequence[Path], *, depth: int = 3, budget: int = 2000) -> tuple[
    list[tuple[Path, int]], list[Path]
]:
    """For "no checkpoints found": the sub-folders (`depth` levels down, `budget` entries looked at) that hold
    checkpoint files or HF checkpoint folders (lightning_logs/version_0/checkpoints below a Lightning
    default_root_dir is 3 levels down), at most 4 (3 to name, and whether there are more), with their counts;
    and the PEFT adapter folders met (adapter_model.safetensors, no model weights). A torch.distributed.checkpoint
    folder is one checkpoint, as a Hugging Face one is."""
    nested: list[tuple[Path, int]] = []
    adapters: list[Path] = []
    queue = [(folder, 0) for folder in folders if folder.is_dir()]
    while queue and budget > 0 and len(nested) < 4:
        folder, level = queue.pop(0)
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        budget -= len(entries)
        count = 0
        for entry in entries:
            try:
                if entry.is_dir():
                    if _hf_weight_files_of(entry):
                        count += 1
                    elif any((entry / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
                        adapters.append(entry)
                    elif level < depth and not entry.name.startswith("."):
                        queue.append((entry, level + 1))
                elif checkpoint_suffix(entry) is not None and not _TRAINING_STATE.fullmatch(entry.name):
                    count += 1
            except (OSError, CheckpointError):
                continue
        if level > 0 and count:
            nested.append((folder, count))
    return nested, adapters[:3]


#: A torch.distributed.checkpoint folder (FSDP, torchtitan, Lightning's FSDP strategy): a `.metadata` file (a
#: pickle, read without running code) beside `*.distcp` shards: one checkpoint (`_peek_dcp`, `_dcp_object`)
_is_dcp_folder = dcp.is_dcp_folder


def _dcp_part_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is one file of the torch.distributed.checkpoint (DCP) folder {path.parent}, not a checkpoint alone",
        got="the model's tensors lie in the folder's *.distcp shards, which its .metadata places",
        fix=f"give the folder, {path.parent}, or the one above it that holds the run's checkpoint folders",
    )


def _dcp_optimizer_entries(entries: Mapping[str, dcp.Entry]) -> set[Any]:
    """The top-level entries of a DCP checkpoint's dict that are an optimizer's state (their `state` and
    `param_groups`): never loaded, as fdl skips an optimizer's state in any checkpoint."""
    below: dict[Any, set[Any]] = collections.defaultdict(set)
    for entry in entries.values():
        if len(entry.path) > 1:
            below[entry.path[0]].add(entry.path[1])
    return {key for key, parts in below.items() if {"state", "param_groups"} <= parts}


def _dcp_object(folder: Path, *, peek: bool = False, placed: dict[int, dcp.Entry] | None = None) -> dict[Any, Any]:
    """A DCP folder's saved dict, rebuilt (`dcp.nested`): `{"model": {...}, "step": 5, ...}` as a training loop's
    dict, the optimizer's state left out. ``peek``: its tensors are meta tensors (shapes and dtypes only, nothing
    read) and only its step entries are read. A dict holding the model's tensors at its top level beside
    training state (torchtitan's, flattened so) keeps its tensors and plain values. ``placed``: filled with each
    tensor's entry, by the tensor's id (`_peek_dcp`'s fingerprint)."""
    entries = dcp.read_metadata(folder)
    skipped = _dcp_optimizer_entries(entries)
    kept = {fqn: entry for fqn, entry in entries.items() if entry.path[0] not in skipped}
    dcp.check_chunks(folder, kept.values())
    if peek:
        steps = {key.split(".")[0] for key in STEP_ORDER}
        # a torch.ao Linear's packed (weight, bias) is a pickled item: read, as the weights it is (`_ao_unpacked`)
        values = dcp.read_items(folder, [e for fqn, e in kept.items() if e.dtype is None and (
            e.path[0] in steps or fqn.endswith(_PACKED))], _load_plain)
        values.update({fqn: torch.empty(entry.size, dtype=entry.dtype, device="meta")
                       for fqn, entry in kept.items() if entry.dtype is not None})
        values.update({fqn: None for fqn in kept if fqn not in values})
    else:
        values = dcp.read_items(folder, kept.values(), _load_plain)
    if placed is not None:
        placed.update((id(value), kept[fqn]) for fqn, value in values.items() if isinstance(value, torch.Tensor))
    try:
        obj = dcp.nested(values, kept)
    except ValueError as exc:
        raise dcp.bad_folder(folder, f"its .metadata places {exc}") from None
    obj = _ao_unpacked(obj)  # as `_torch_load_safe` gives a file's
    top = [value for value in obj.values() if isinstance(value, torch.Tensor)]
    if any(map(_is_weight, top)) and _find_tensor_dict(obj) is None:
        obj = {key: value for key, value in obj.items() if isinstance(value, (torch.Tensor, *_PLAIN_VALUES))}
    return obj


def _load_plain(data: io.BytesIO) -> Any:
    return _plain(_load_weights_only(data))


def _peek_dcp(folder: Path) -> _Peek:
    placed: dict[int, dcp.Entry] = {}
    obj = _dcp_object(folder, peek=True, placed=placed)
    if _is_optimizer_state(obj):
        return _Peek(None, {}, f"skipped {folder.name}: optimizer state, no model weights")
    tensors = _find_tensor_dict(obj)
    if tensors is None:
        return _Peek(None, {}, f"skipped {folder.name}: a torch.distributed.checkpoint folder holding no model "
                               "state_dict")
    # A tensor read from an item that pickles it (no entry of its own, `placed`) leaves the folder unprinted
    entries = {name: placed[id(tensor)] for name, tensor in tensors.items() if id(tensor) in placed}
    return _Peek("dcp", _file_steps(obj), fingerprint=dcp.fingerprint(folder, entries)
                 if len(entries) == len(tensors) else None, keys=frozenset(_key_names(tensors)))


def _dedupe(
    found: list[tuple[CheckpointRef, str | None]],
    notes: list[str],
    weights: str | None = None,
    copies: list[tuple[CheckpointRef, CheckpointRef]] | None = None,
    applied: Mapping[Path, int] | None = None,
    *,
    trust_pickle: bool = False,
) -> tuple[list[CheckpointRef], list[tuple[Path, Path]]]:
    """Same step and same weights: one kept (`_copy_rank`: a name holding its step before last.ckpt, one
    named like more of the run's files, a file before a link, else the first name), the other added to
    `copies` as (dropped, kept); same weights at two steps: a duplicate pair.
    The cheap fingerprint is of the checkpoint's own weights; with ``weights`` (an EMA copy, say) a match
    is confirmed on those, so two files whose EMA weights differ are never taken for one. ``applied``: the
    --step-offset added to a checkpoint's step (by path), taken off again where an error advises one.
    Files that pickle Python objects have no fingerprint: with ``trust_pickle`` two of them at one step
    (a pickling Lightning run's last.ckpt, its step read from its global_step) are compared whole."""
    applied = applied or {}
    kept: list[CheckpointRef] = []
    duplicates: list[tuple[Path, Path]] = []
    #: fingerprint -> the checkpoints kept that have it, in order (equal tensors of other extra states: several)
    by_print: dict[str, list[CheckpointRef]] = {}
    by_step: dict[int, tuple[CheckpointRef, str | None]] = {}
    known: dict[Path, str | None] = {}  # `_same_weights`' digests: n files of one fingerprint read n times, not n²
    name_shapes = collections.Counter(_name_shape(ref.path.name) for ref, _ in found)
    for ref, fingerprint in found:
        if ref.step in by_step:
            first, first_print = by_step[ref.step]
            # Against the checkpoint of this step itself: by_print holds the first of equal fingerprints,
            # which in a run that never moved is at another step.
            comparable = (fingerprint and first_print == fingerprint) or (
                trust_pickle and first.kind == ref.kind == "pickle" and not fingerprint and not first_print)
            if comparable and _same_weights(first, ref, weights, trust_pickle=trust_pickle, known=known):
                if _copy_rank(ref, name_shapes) < _copy_rank(first, name_shapes):
                    # Kept: the file named by its step, not Lightning's last.ckpt (rewritten at the next
                    # save, or a link to it), which name order put first under filename="{step}"; a
                    # store recording last.ckpt for the step found it changed at the next resume.
                    kept[kept.index(first)] = ref
                    by_step[ref.step] = (ref, fingerprint)
                    by_print = {key: [ref if value is first else value for value in refs] for key, refs in by_print.items()}
                    duplicates = [(ref.path if a == first.path else a, ref.path if b == first.path else b)
                                  for a, b in duplicates]
                    first, ref = ref, first
                dropped_name, kept_name = _copy_names(found, ref, first)
                notes.append(f"skipped {dropped_name}: same weights and step ({ref.step}) as {kept_name}")
                if copies is not None:  # `first` kept, `ref` dropped (kept before, if swapped just now)
                    copies[:] = [(dropped, first if kept is ref else kept) for dropped, kept in copies]
                    copies.append((ref, first))
                continue
            got = ("their metadata holds the epoch only; the names hold finer numbers"
                   if _is_epoch(first) and _name_step(first.path) != _name_step(ref.path)
                   else None)
            fix = _step_fix_for(ref.path)
            folder = _folder_regex(ref.path)
            per_folder = collections.Counter(r.path.absolute().parent for r, _ in found)
            several = [r.path.parent for r in (first, ref) if per_folder[r.path.absolute().parent] > 1]
            folder_steps = [re.search(folder, _step_regex_subject(r.path, re.compile(folder))) if folder else None
                            for r in (first, ref)]
            per_step = first.path.name == ref.path.name and not several and all(folder_steps)
            # one folder per step whose names' steps this run read already (--step-regex 'global_step(\d+)/'
            # given): two runs' folders of steps, whose regex would read the same steps again
            read_so = per_step and all(match.group(1).isdigit() and int(match.group(1)) == r.step - applied.get(r.path, 0)
                                       for match, r in zip(folder_steps, (first, ref), strict=True) if match)

            def run_of(r: CheckpointRef, above: bool = read_so) -> Path:
                """The folder of the run `r` is of, as given: its own, or the one above its folder of one step."""
                return r.path.parent.parent if above else r.path.parent

            per_run = collections.Counter(Path(os.path.abspath(run_of(r))) for r, _ in found)
            if per_step and not read_so:
                # mp_rank_00_model_states.pt in global_step100/ and global_step200/: a regex built from
                # the name reads 00 again; the folders' names hold the steps
                fix = f"pass --step-regex '{folder}' to take the steps from their folders' names"
            elif (several or read_so) and Path(os.path.abspath(run_of(first))) != Path(os.path.abspath(run_of(ref))):
                # run1/step_0..500 and run2/step_0..300 (or only run2/step_0 yet, the restarted job's first
                # save): two runs, or one restarted into a second folder with its step count reset. The
                # folders' names are no steps ('run(\d+)/' gave every file of run1 step 1, whose error then
                # advised the name's regex, which led back here).
                got = (f"the folders {run_of(first)} ({per_run[Path(os.path.abspath(run_of(first)))]} checkpoints) and "
                       f"{run_of(ref)} ({per_run[Path(os.path.abspath(run_of(ref)))]}) hold checkpoints of the same steps")
                restart = _restart_offset(found, lambda r: os.path.abspath(run_of(r)), weights, applied)
                later, offset = (run_of(restart[0]), restart[1]) if restart else (run_of(ref), None)
                fix = ("two runs: analyse each folder into its own store (--out) and `fdl compare` them; one job "
                       f"restarted into {later} with its step count reset: --step-offset '{later}="
                       + (f"{offset}' ({restart[0].path.name} holds the weights of {restart[2].path})" if restart
                          else "N' (N: the step it restarted from)") + " places its checkpoints after the others'")
            shapes = [_name_shape(r.path.name) for r, _ in found]
            if _name_shape(first.path.name) != _name_shape(ref.path.name):
                # checkpoint-1.pth.tar and recovery-1-10.pth.tar (timm): a --step-regex built from one name
                # leaves out every file named like the other; keep the names most files follow instead.
                keep = max((first.path.name, ref.path.name), key=lambda name: shapes.count(_name_shape(name)))
                counts = {shape: shapes.count(shape) for shape in dict.fromkeys(shapes)}
                got = ("names of different patterns: "
                       + ", ".join(f"{shape} ({n} file{'s' if n > 1 else ''})" for shape, n in counts.items())
                       + ("; the metadata holds the epoch only" if _is_epoch(first) else ""))
                why = "(a recovery, best or last copy saved beside them is no step of its own)"
                others = [r.path.name for r, _ in found if _name_shape(r.path.name) != _name_shape(keep)]
                # step_*.pt matches step_0_ema.pt too (a glob's * is any text, not digits only); step_*[0-9].pt
                # does not, and epoch=*[0-9]-step=*[0-9].ckpt still matches epoch=1-step=9-v1.ckpt
                globs = [glob for glob in (_name_glob(keep), _name_glob(keep, "*[0-9]"))
                         if not any(Path(name).match(glob) for name in others)]
                if globs:
                    fix = (f"pass --glob '{globs[0]}' to analyse only the files named like {keep} {why}, or "
                           "--step-regex for names whose numbers are the steps")
                elif _name_regex(keep):  # none for a step in scientific notation (iter_1e5.pt)
                    fix = (f"pass --step-regex '^{_name_regex(keep)}$' to analyse only the files named like {keep} "
                           f"{why}; the steps are then the numbers its group captures")
                fix += _restart_fix(found, keep, weights, applied)
            raise SameStepError(
                f"two checkpoints have the same step {ref.step}: {first.path} ({first.step_source}) "
                f"and {ref.path} ({ref.step_source})",
                paths=(first.path, ref.path),
                got=got,
                fix=fix,
            )
        # A file without the --weights copy is no duplicate: it fails on its own, the others go on
        with contextlib.suppress(WeightsNotFoundError):
            same_weights = next((earlier for earlier in by_print.get(fingerprint or "", [])
                                 if _same_weights(earlier, ref, weights, known=known)), None)
            if same_weights is not None:
                duplicates.append((same_weights.path, ref.path))
        by_step[ref.step] = (ref, fingerprint)
        if fingerprint:
            by_print.setdefault(fingerprint, []).append(ref)
        kept.append(ref)
    return kept, duplicates


def _copy_names(found: Sequence[tuple[CheckpointRef, str | None]], *refs: CheckpointRef) -> list[str]:
    """The names of `refs` for a note: their file names, or, when another file found has one of those
    names (run1/step_0.pt and run2/step_0.pt of `fdl analyze run1 run2 --step-offset run2=500`), their
    paths below the folder that holds every file found (its sources')."""
    names = collections.Counter(other.path.name for other, _ in found)
    if all(names[ref.path.name] <= 1 for ref in refs):
        return [ref.path.name for ref in refs]
    try:
        base = os.path.commonpath([os.path.abspath(other.path.parent) for other, _ in found])
        return [os.path.relpath(os.path.abspath(ref.path), base) for ref in refs]
    except ValueError:  # no common folder (another drive)
        return [str(ref.path) for ref in refs]


def _restart_offset(
    found: Sequence[tuple[CheckpointRef, str | None]], group: Callable[[CheckpointRef], str], weights: str | None,
    applied: Mapping[Path, int],
) -> tuple[CheckpointRef, int, CheckpointRef] | None:
    """(restarted, offset, resumed from) when a checkpoint of one group (a folder, a shape of name) holds
    the same weights as one of another group at a later step: a job restarted from that checkpoint with
    its step count reset, whose first save repeats it (run2/step_0.pt = run1/step_500.pt: offset 500).
    The offset counts from the step read, before the --step-offset `applied` to it (a wrong one given).
    None when no such pair is found (the job saved nothing at its restart)."""
    by_print: dict[str, list[CheckpointRef]] = {}
    for ref, fingerprint in found:
        if fingerprint:
            by_print.setdefault(fingerprint, []).append(ref)
    for refs in by_print.values():
        for early in refs:
            for late in refs:
                read = early.step - applied.get(early.path, 0)
                if group(early) != group(late) and late.step > read:
                    with contextlib.suppress(CheckpointError):
                        if _same_weights(early, late, weights):
                            return early, late.step - read, late
    return None


def _restart_fix(
    found: Sequence[tuple[CheckpointRef, str | None]], keep: str, weights: str | None, applied: Mapping[Path, int]
) -> str:
    """For two patterns of names at the same steps (step_N.pt, resume_step_N.pt): the --step-offset that
    places the files of a job restarted with its step count reset after the others; "" when no glob of
    the other names leaves out the kept ones."""
    restart = _restart_offset(found, lambda r: _name_shape(r.path.name), weights, applied)
    other = restart[0].path.name if restart else next(
        (r.path.name for r, _ in found if _name_shape(r.path.name) != _name_shape(keep)), None)
    if other is None:
        return ""
    kept = [r.path for r, _ in found if _name_shape(r.path.name) != _name_shape(other)]
    glob = next((glob for glob in (_name_glob(other), _name_glob(other, "*[0-9]"))
                 if not any(path.match(glob) for path in kept)), None)
    if glob is None:
        return ""
    return (f"; or, for a job restarted with its step count reset into names like {other}, --step-offset '{glob}="
            + (f"{restart[1]}' ({restart[0].path.name} holds the weights of {restart[2].path.name})" if restart
               else "N' (N: the step it restarted from)") + " to place them after the others")


def _copy_rank(ref: CheckpointRef, shapes: Mapping[str, int]) -> tuple[bool, int, bool]:
    """Of two files of one step with the same weights, the lower is kept: a name that holds the step
    before one that does not (last.ckpt, latest.pt: rewritten at the next save, a link or not; a step
    file left as a link to other storage is kept over a real last.ckpt), then a name shaped like more of
    the run's (`shapes`: `_name_shape` counts; mmengine's epoch_2.pth, whose number is the epoch where the
    step is its `meta.iter`, over best_accuracy_top1_epoch_2.pth, which the next better epoch deletes;
    fairseq's checkpoint2.pt over checkpoint_best.pt and checkpoint_last.pt), then a file before a link."""
    return _name_step(ref.path) != ref.step, -shapes.get(_name_shape(ref.path.name), 0), _is_link(ref.path)


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except OSError:
        return False


def _name_shape(name: str) -> str:
    """A file name with each number written N: checkpoint-N.pth.tar, recovery-N-N.pth.tar."""
    return re.sub(r"\d+", "N", name)


def _name_glob(name: str, number: str = "*") -> str:
    """A --glob that matches the names shaped like this one, each number written `number`:
    checkpoint-3.pth.tar -> checkpoint-*.pth.tar."""
    return number.join(glob_escape(part) for part in re.split(r"\d+", name))


def _name_regex(name: str) -> str:
    """A --step-regex that matches names like this one, its group the number `_name_step` takes as the
    step and the others any number: epoch=3-step=1200.ckpt -> 'epoch=\\d+\\-step=(\\d+)\\.ckpt', and
    step600_loss0.154.pt -> 'step(\\d+)_loss\\d+\\.\\d+\\.pt' (not the loss's digits); "" when the name
    holds no number, or its step is written in scientific notation (no group of digits is its value)."""
    suffix = checkpoint_suffix(Path(name))
    found = _name_step_span(name[: -len(suffix)] if suffix else name)
    if found is None or found[2] is not None:
        return ""
    pieces, at = [], 0
    for number in re.finditer(r"\d+", name):
        pieces.append(re.escape(name[at:number.start()]))
        pieces.append("(\\d+)" if number.start() == found[0] else "\\d+")
        at = number.end()
    return "".join([*pieces, re.escape(name[at:])])


def _step_fix_for(path: Path) -> str:
    """_STEP_FIX with a --step-regex that matches names like this one (`_name_regex`); the generic one
    when the name holds no number."""
    pattern = _name_regex(path.name)
    if not pattern:
        return _STEP_FIX
    return f"pass --step-regex '{pattern}' (its group is the step), or --glob to select fewer files"


def _state_of(loaded: LoadedCheckpoint) -> tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]:
    """The weights a loaded checkpoint holds: its tensors, or its whole pickled module's state_dict, and the
    modules' extra states that are not tensors (`is_extra_state`: a dict of FP8 or quantization scales), which
    change the forward as the tensors do."""
    if loaded.state_dict is not None:
        return loaded.state_dict, loaded.extra_state
    state = loaded.module.state_dict() if loaded.module is not None else {}
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    return tensors, {key: value for key, value in state.items() if key not in tensors}


def _same_weights(
    first: CheckpointRef, second: CheckpointRef, weights: str | None = None, *, trust_pickle: bool = False,
    known: dict[Path, str | None] | None = None,
) -> bool:
    """Confirm a fingerprint match with a full content digest (of the ``weights`` analysed, extra states
    included). ``known``: the digests taken so far (path -> digest; None: unreadable), each file read once."""
    known = {} if known is None else known
    for ref in (first, second):
        if ref.path not in known:
            try:
                known[ref.path] = weights_digest(*_state_of(load_checkpoint(ref, weights=weights,
                                                                            trust_pickle=trust_pickle)))
            except WeightsNotFoundError:
                raise  # --weights names no copy these files hold: that, not a step clash, is what to say
            except CheckpointError:
                known[ref.path] = None
    return known[first.path] is not None and known[first.path] == known[second.path]


def _select(
    checkpoints: list[CheckpointRef], *, steps: Sequence[int] | None, every: int | None, missing_ok: bool = False
) -> list[CheckpointRef]:
    if steps is not None:
        wanted = list(dict.fromkeys(int(s) for s in steps))
        have = {ref.step for ref in checkpoints}
        missing = [s for s in wanted if s not in have]
        if missing and not missing_ok:  # --watch waits for a step not written yet
            raise CheckpointError(
                f"--steps asks for step{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} which no "
                "checkpoint has",
                got="available steps: " + first_few([r.step for r in checkpoints], 20),
                fix="pick steps from the list above",
            )
        checkpoints = [ref for ref in checkpoints if ref.step in set(wanted)]
    if every is not None:
        if every < 1:
            raise CheckpointError(f"--every must be a positive integer, got {every}", fix="e.g. --every 2")
        last = len(checkpoints) - 1
        checkpoints = [ref for i, ref in enumerate(checkpoints) if i % every == 0 or i == last]
    return checkpoints


# ------------------------------------------------------------------------------------------ hashing


def _folder_weight_files(folder: Path) -> list[Path]:
    files = _hf_weight_files(folder)
    index = [folder / n for n in _HF_INDEX if (folder / n).is_file()]
    return sorted(set(files + index))


def unreachable(path: Path, exc: OSError) -> CheckpointError:
    """The error of a checkpoint whose file `exc` met gone (a training job's rotation deleted it: the pipeline
    skips it so, with a note) or unreadable."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return CheckpointError(f"checkpoint {path} no longer exists", fix="re-run discovery; was it deleted?")
    got, fix = _os_reason(path, exc)
    return CheckpointError(f"cannot read the checkpoint {path}", got=got, fix=fix)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes; for a folder, over its sorted weight files (name, then bytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = _folder_weight_files(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(os.fsencode(file.name) + b"\x00")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path) -> str:
    """Size and modification time (ns) of a checkpoint's file, or of each weight file of a folder
    (name, size, time): what a resume compares with the stored one before hashing a stored
    checkpoint's file again (as make and rsync do). The pipeline takes it before it reads the file
    and again once it has hashed it: a file that changed meanwhile fails (its numbers and its hash
    could be of two contents)."""
    path = Path(path)
    if not path.is_dir():
        stat = os.stat(path)
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    parts = []
    for file in _folder_weight_files(path):
        stat = os.stat(file)
        parts.append(f"{shown_path(file.name)}:{stat.st_size}:{stat.st_mtime_ns}")
    return ";".join(parts)


def weights_digest(state_dict: Mapping[str, torch.Tensor], extra_state: Mapping[str, Any] | None = None) -> str:
    """Hex sha256 over names, dtypes, shapes and bytes of the tensors, in name order, then over the modules'
    extra states that are not tensors (`LoadedCheckpoint.extra_state`), name and value (`_extra_state_bytes`):
    two files of equal tensors whose extra states differ (an FP8 or quantization scale) are no copies. Without
    extra states the digest is the one of the tensors alone, as before they counted."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\x00".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for name in sorted(extra_state or {}):
        digest.update(f"{name}|extra_state\x00".encode())
        digest.update(_extra_state_bytes((extra_state or {})[name]))
    return digest.hexdigest()


def _extra_state_bytes(value: Any) -> bytes:
    """A module's extra state as bytes equal for equal values: a tensor's dtype, shape and bytes, a buffer's
    contents (a BytesIO: TransformerEngine's FP8 metadata), a dict's items in key order, a set's in the order
    of their bytes, a list's or tuple's items, a plain value's type and repr; any other object pickled (torch.load
    unpickled it)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        return f"T{tensor.dtype}{tuple(tensor.shape)}|".encode() + tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    if isinstance(value, io.BytesIO):
        return b"B" + value.getvalue()
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return b"D{" + b"".join(_extra_state_bytes(k) + b":" + _extra_state_bytes(v) + b"," for k, v in items) + b"}"
    if isinstance(value, (set, frozenset)):  # in order of their bytes: a set's own order varies with its history
        return f"{type(value).__name__}{{".encode() + b"".join(sorted(_extra_state_bytes(v) + b"," for v in value)) + b"}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[".encode() + b"".join(_extra_state_bytes(v) + b"," for v in value) + b"]"
    if isinstance(value, (*_PLAIN_VALUES,)):
        return f"{type(value).__name__}:{value!r}".encode()
    try:
        return b"P" + pickle.dumps(value, protocol=4)
    except Exception as exc:  # noqa: BLE001 - unpicklable now: equal to nothing, so no copy is dropped for it
        signals.through(exc)  # a Ctrl-C met in the value's own __reduce__'s C code: not unpicklable
        return f"U{id(value)}".encode()


# ------------------------------------------------------------------------------------------ loading


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _non_finite_patterns() -> dict[torch.dtype, tuple[torch.dtype, int, int] | None]:
    """dtype -> (integer view, mask, value): an entry is NaN or Inf iff (bits & mask) == value;
    None for formats without such encodings. Only the dtypes this torch has."""
    table: dict[str, tuple[torch.dtype, int, int] | None] = {
        "float16": (torch.int16, 0x7C00, 0x7C00),  # every exponent bit set
        "bfloat16": (torch.int16, 0x7F80, 0x7F80),
        "float8_e5m2": (torch.uint8, 0x7C, 0x7C),
        "float8_e4m3fn": (torch.uint8, 0x7F, 0x7F),  # no Inf; NaN is S.1111.111
        "float8_e4m3fnuz": (torch.uint8, 0xFF, 0x80),  # the only NaN is the negative zero's pattern
        "float8_e5m2fnuz": (torch.uint8, 0xFF, 0x80),
        "float8_e8m0fnu": (torch.uint8, 0xFF, 0xFF),
        "float4_e2m1fn_x2": None,  # no NaN, no Inf
    }
    return {getattr(torch, name): pattern for name, pattern in table.items() if hasattr(torch, name)}


_NON_FINITE_PATTERNS = _non_finite_patterns()
#: Entries checked at a time by bit pattern: bounded temporaries however large the tensor.
_FINITE_BLOCK = 1 << 20


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in `tensor`, checked with numpy on the CPU, not with a torch operation.

    Checkpoints are loaded in a background thread, and a torch operation there (a parallel sum) gives
    that thread an OpenMP team of its own; libgomp then counts more threads than cores and, for the
    rest of the process, makes the main thread's workers sleep between operations instead of waiting
    briefly: every forward pass and product ran ~30 % slower on 2 cores (docs/benchmarks.md).

    float32/float64/complex: a finite sum proves finiteness in one pass without a mask (a NaN or Inf
    makes any sum non-finite); only when the sum is not finite (or overflows) are the entries
    checked. 16- and 8-bit floats (which numpy lacks, or whose sums overflow): by their bit patterns,
    a block at a time. Conjugate and negative views have the finiteness of their data. Only what
    numpy cannot view at all (sparse layouts, complex32) falls back to torch, in this thread.
    """
    if tensor.numel() == 0:
        return True
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        return bool(torch.isfinite(tensor).all())  # on its device: no host thread computes
    if tensor.layout != torch.strided:
        if tensor.layout == torch.sparse_coo:
            return _all_finite(tensor.coalesce().values())
        return bool(torch.isfinite(tensor.to_dense()).all())
    if tensor.is_conj():
        tensor = tensor.conj()  # a view of the same data without the bit: the same finiteness
    if tensor.dtype in _NON_FINITE_PATTERNS:
        pattern = _NON_FINITE_PATTERNS[tensor.dtype]
        if pattern is None:
            return True
        view, mask, value = pattern
        return not _any_pattern(tensor.view(view).numpy(), mask, value)
    try:
        values = tensor.numpy()
    except (TypeError, RuntimeError):  # a negative view, or a dtype numpy lacks (complex32)
        widest = torch.complex128 if tensor.is_complex() else torch.float64  # exact, cannot overflow
        return bool(torch.isfinite(tensor.resolve_neg().to(widest)).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())


def _any_pattern(bits: np.ndarray, mask: int, value: int) -> bool:
    """Whether any entry of the integer array has (bits & mask) == value, _FINITE_BLOCK at a time."""
    flat = bits.reshape(-1)  # a view when contiguous (loaded tensors are); else numpy copies once
    masked = np.empty(min(flat.size, _FINITE_BLOCK), dtype=flat.dtype)
    hits = np.empty(masked.size, dtype=bool)
    for start in range(0, flat.size, _FINITE_BLOCK):
        block = flat[start : start + _FINITE_BLOCK]
        count = block.size
        np.bitwise_and(block, mask, out=masked[:count])
        if np.equal(masked[:count], value, out=hits[:count]).any():
            return True
    return False


def _check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not _all_finite(tensor):
                error = CheckpointError(
                    f"{path}: tensor {name!r} {tuple(tensor.shape)} holds NaN or Inf",
                    fix="the checkpoint is diverged or corrupt; skip it (--steps/--glob)",
                )
                error.refused_as = "weights"
                raise error


def _load_safetensors(path: Path, map_location: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load, load_file

    header = _read_safetensors_header(path)
    try:
        if utf8_path(path):
            tensors = load_file(str(path), device=map_location)
        else:  # safetensors opens a file by its name as UTF-8 text only: read here, parsed from the bytes
            tensors = {key: value.to(map_location) for key, value in load(path.read_bytes()).items()}
    except Exception as exc:  # noqa: BLE001 - report any parse failure as a damaged file
        raise _corrupt_error(path, exc) from None
    return tensors, _metadata_steps(header.get("__metadata__") or {})


def unwrapped_name(name: str) -> str:
    """A module or state_dict name without the wrapper prefixes it starts with (`STRIPPED_PREFIXES`:
    `module._orig_mod.head` -> `head`)."""
    while name.startswith(STRIPPED_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _key_names(tensors: Iterable[str]) -> set[str]:
    """State_dict keys as copies of one model are compared: each without its leading `module.` and
    `_orig_mod.` (an AveragedModel's or mmengine's EMA holds `module.`-keys beside its own `n_averaged`
    or `steps`, so the prefixes are not stripped from every key, as `_strip_prefixes` does)."""
    return {unwrapped_name(key) for key in tensors}


def _is_state(tensors: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether `tensors` (a dict `_find_tensor_dict` made) holds exactly the tensors of `found`."""
    return len(tensors) == len(found) and all(tensors.get(key) is value for key, value in found.items())


def _weight_copies(obj: Mapping[Any, Any], found: Mapping[str, Any]) -> tuple[str, ...]:
    """The entries of a checkpoint's dict, beside the one `_find_tensor_dict` took, that hold a state_dict
    sharing at least half of its keys (`_key_names`): a copy of the model that fdl does not analyse unless
    --weights names it; not an optimizer's or a scaler's state. Entries below the top level are named by
    their path, as --weights takes them: fairseq's `extra_state.ema`, an EMA kept inside the entry that
    holds the model (`state_dict.model_ema` of `{"state_dict": {"model": ..., "model_ema": ...}}`). A
    torch.optim.swa_utils.AveragedModel's state_dict (torchvision's `model_ema`, mmengine's
    `ema_state_dict`) counts, and so does a module pickled whole (loaded with --trust-pickle)."""
    copies: list[str] = []
    _visit_copies(obj, "", 0, found, _key_names(found), copies)
    return tuple(copies)


def _visit_copies(node: Mapping[Any, Any], path: str, depth: int, found: Mapping[str, Any], own: set[str],
                  copies: list[str]) -> None:
    """`_weight_copies`' search of `node`, the entries at `path`, appending to `copies`. A function of its own: a
    nested one that called itself through its closure was a cycle holding `found`, that only the garbage collector
    undid, so 4 of 20 checkpoints loaded in a row kept their weights in memory after their last use."""
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        tensors: Mapping[str, Any] | None = None
        if isinstance(value, nn.Module):
            with contextlib.suppress(Exception):  # a pickled module's own state_dict() may fail
                tensors = value.state_dict()
        elif isinstance(value, Mapping):
            tensors = _find_tensor_dict(value)
        if tensors is not None and not _is_state(tensors, found):
            if own and len(own & _key_names(tensors)) * 2 >= len(own):
                copies.append(path + key)
        elif isinstance(value, Mapping) and depth < 3:
            _visit_copies(value, f"{path}{key}.", depth + 1, found, own, copies)  # the weights analysed, or none


def _entry_at(obj: Mapping[Any, Any], weights: str) -> tuple[bool, Any]:
    """(found, value) of --weights NAME as an entry of the checkpoint's dict: the entry named so, else
    the path its dots spell (`extra_state.ema`: fairseq's EMA); (False, None) when neither is there
    (NAME is then a key prefix)."""
    if weights in obj:
        return True, obj[weights]
    node: Any = obj
    for part in weights.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _ema_swapped(obj: Mapping[Any, Any], copies: Sequence[str]) -> str:
    """The library whose EMA swapped its weights into the checkpoint's `state_dict` before saving, "" for
    none: "mmengine" for its EMAHook, the trained model's weights under `ema_state_dict` (`module.` keys
    beside the EMA's `steps`); "lightning" for its WeightAveraging callback (EMAWeightAveraging), the
    trained model's under `current_model_state` and the AveragedModel's own count under `averaging_state`."""
    if "state_dict" not in obj:
        return ""
    ema = obj.get(_SWAPPED_COPY["mmengine"])
    if (_SWAPPED_COPY["mmengine"] in copies and isinstance(obj.get("meta"), Mapping) and isinstance(ema, Mapping)
            and "steps" in ema and any(isinstance(key, str) and key.startswith("module.") for key in ema)):
        return "mmengine"
    if _SWAPPED_COPY["lightning"] in copies and isinstance(obj.get("averaging_state"), Mapping):
        return "lightning"
    return ""


#: the entry under which a file whose `state_dict` an EMA's weights were swapped into (`_ema_swapped`) holds the
#: trained model's: the library's own key, not the file's first other copy (a file may hold more copies ahead of it)
_SWAPPED_COPY = {"mmengine": "ema_state_dict", "lightning": "current_model_state"}


def ema_swap_said(file_name: str, swapped_in: str) -> str:
    """What a file whose `state_dict` an EMA's weights were swapped into (`_ema_swapped`: "mmengine" or
    "lightning") holds, in words: whose weights fdl analyses, and the --weights that gives the trained model's
    (`_SWAPPED_COPY`, under which the file holds them). Said by analyze's note and by `fdl inspect`."""
    saver, ema = {"mmengine": ("mmengine's with its EMAHook, which saves the EMA's weights", "the EMA's"),
                  "lightning": ("Lightning's with its WeightAveraging callback, which saves the averaged weights",
                                "the averaged ones")}[swapped_in]
    copy = _SWAPPED_COPY[swapped_in]
    return (f"{file_name} is {saver} under 'state_dict' and the trained model's under {copy!r}: fdl analyses "
            f"{ema}; --weights {copy} analyses the trained model's")


def not_loaded_said(file_name: str, classes: Sequence[str]) -> str:
    """That the file's objects of `classes` (`LoadedCheckpoint.not_loaded`) were read as `ObjectNotLoaded`
    placeholders, in words. Said by analyze's note and by `fdl inspect`."""
    return (f"{file_name} holds objects of classes that cannot be imported here ({listed_names(classes, 3)}"
            f"{', ...' if len(classes) > 3 else ''}; a script run as python train.py pickles its own as "
            "__main__.NAME): read as placeholders, not loaded, since fdl needs only the weights")


class ObjectNotLoaded:
    """What an object of a class that cannot be imported here is read as, under --trust-pickle: its class's name.

    A training script run as `python train.py` pickles its own config (`{"model": sd, "config": TrainConfig()}`)
    as `__main__.TrainConfig`, which no other process can import: the file could only be re-saved. fdl needs the
    weights alone, so such a class is this placeholder, which takes any arguments and state and keeps none but
    whether they held weights (`held_weights`): a placeholder in their place (a module of the script pickled
    whole) leaves the load the error it was (`_load_trusted`)."""

    __slots__ = ("held_weights",)
    held_weights: bool
    pickled_class = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ObjectNotLoaded:
        self = super().__new__(cls)
        self.held_weights = _holds_weights((args, kwargs))
        return self

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:  # REDUCE calls the class, NEWOBJ only __new__
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: the state is dropped, once looked at
        self.held_weights = self.held_weights or _holds_weights(state)

    # A dict's or list's class (a config of `class Config(dict)`, an EasyDict not installed here) has its items
    # pickled apart from its state (SETITEMS, APPENDS): dropped as the state is, once looked at

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__setstate__(value)

    def append(self, value: Any) -> None:  # pickle's pure-Python unpickler's APPEND; the C one calls extend
        self.__setstate__(value)

    def extend(self, values: Any) -> None:
        self.__setstate__(list(values))

    def __repr__(self) -> str:
        return f"<{self.pickled_class}, not loaded>"


def _holds_weights(obj: Any, depth: int = 0) -> bool:
    """Whether `obj`, what a placeholder is given, holds weights: a tensor, a module, or a placeholder that does, in
    it or in its dicts, lists, tuples and sets. Deliberately not inside any other object (a `SimpleNamespace` or a
    dataclass in a config's state): fdl looks for weights in nothing but dicts and modules (`_find_tensor_dict`,
    `_module_entry`), so a tensor there would go unread were the class importable too, and said nothing of."""
    if isinstance(obj, (torch.Tensor, nn.Module, ObjectNotLoaded)):
        return not isinstance(obj, ObjectNotLoaded) or obj.held_weights
    if depth > 16:
        return True  # deeper than fdl looks: not said to hold none
    if isinstance(obj, Mapping):
        return any(_holds_weights(value, depth + 1) for value in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_holds_weights(value, depth + 1) for value in obj)
    return False


class _Placeholders:
    """The `ObjectNotLoaded` classes one trusted load made (`_placeholder_pickle`): each object made, and the
    error of the first class that could not be imported (what loading without placeholders would have raised);
    and `import_failed`, the error said for a module the pickle names whose own code failed while imported (a
    `RuntimeError`, argparse's `sys.exit`: no "not importable here" that a placeholder stands in for), which ended
    the load. Both kept without their tracebacks, whose frames hold the unpickler and through it every storage it
    read: a load's weights stayed in memory, after it was done with, until the garbage collector ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.made: list[ObjectNotLoaded] = []
        self.first_error: BaseException | None = None
        self.import_failed: CheckpointError | None = None


def _placeholder_pickle(found: _Placeholders) -> types.ModuleType:
    """A `pickle` for torch.load whose unpickler reads a class it cannot import as an `ObjectNotLoaded` (noted in
    `found`). torch (2.13) subclasses its `Unpickler` for the file's main pickle, zip or legacy format alike (its own
    `find_class`, which maps torch's storages and moved modules, calls this one for every other class) and reads a
    legacy file's header pickles with its `load`; mmap is torch's own matter. Any class that imports is the class, as
    with the plain `pickle`, whose unpickler this one is (the C one, as fast)."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError) as exc:
                if found.first_error is None:  # its message alone: not the frames of its traceback, nor the
                    # error being handled as the load began (`_load_tensor_file`'s, whose frame holds the object read)
                    found.first_error = exc.with_traceback(None)
                    exc.__context__ = exc.__cause__ = None

                def new(cls: type[ObjectNotLoaded], *args: Any, **kwargs: Any) -> ObjectNotLoaded:
                    found.made.append(obj := ObjectNotLoaded.__new__(cls, *args, **kwargs))
                    return obj

                return type(name, (ObjectNotLoaded,), {"__slots__": (), "pickled_class": f"{module}.{name}",
                                                       "__new__": new})
            except FdlError:
                raise  # fdl's own refusal, of the folder's modules (`_FolderModules`)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code ran, and can raise anything
                found.import_failed = _import_failed_error(found.path, module, name, exc)
                raise

    placeholder = types.ModuleType("pickle")
    placeholder.__dict__.update({name: getattr(pickle, name) for name in dir(pickle) if not name.startswith("__")})
    placeholder.Unpickler = Unpickler  # type: ignore[attr-defined]
    placeholder.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    return placeholder


#: the classes read as `ObjectNotLoaded` by the loads since `load_checkpoint` set it (None: not collected)
_NOT_LOADED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_NOT_LOADED", default=None)


def _load_trusted(path: Path, map_location: str = "cpu") -> Any:
    """``torch.load(weights_only=False)``: the user passed --trust-pickle. A class the pickle names that
    cannot be imported here is read as an `ObjectNotLoaded` where it holds no weights (a training script's
    config), else a CheckpointError that says so, as is any other failure.

    One load: the placeholders stand in as the unpickler meets such a class, and are judged once it is done.
    (Loading plainly first and again with placeholders where that failed ran the file's own code, a `__reduce__`
    or `__setstate__` the user trusted, twice, and read the file twice.)"""
    served = _UNPICKLED.get()
    if served is not None and served[0] == path:
        return served[1]
    forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0")
    if forced.lower() in ("1", "y", "yes", "true"):  # as torch.load reads it: the full unpickling refused
        raise CheckpointError(
            f"cannot unpickle {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD={shown_name(forced)} in the environment makes "
            "torch load weights only, even for --trust-pickle",
            fix="unset TORCH_FORCE_WEIGHTS_ONLY_LOAD for this command (env -u TORCH_FORCE_WEIGHTS_ONLY_LOAD fdl ...), "
            f"or {_RESAVE_WEIGHTS}",
        )
    token = _TRUSTED_UNPICKLING.set(True)  # a class of the model folder's modules, as the trainer pickled it
    found = _Placeholders(path)
    error: FdlError | None = None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False,  # the user trusts it
                         pickle_module=_placeholder_pickle(found))
    except CheckpointError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - sorted by `_trusted_load_error`
        if isinstance(exc, SystemExit) and found.import_failed is None:
            raise  # not the import of a class (a `__reduce__` of the file's own): as Python ends on it
        error = _trusted_load_error(path, exc, found)
    else:
        if found.first_error is not None and any(placeholder.held_weights for placeholder in found.made):
            error, obj = _unimportable_error(path, found.first_error), None  # its weights not held by the error
    finally:
        _TRUSTED_UNPICKLING.reset(token)
    if error is not None:
        raise error  # out of the `except`: the failed load (its unpickler, the storages read) is not its context
    said = _NOT_LOADED.get()
    if said is not None:
        said.extend(name for name in dict.fromkeys(p.pickled_class for p in found.made) if name not in said)
    return obj


#: how a trusted file of a class that will not import here is read without it (`_load_trusted`'s errors)
_RESAVE_WEIGHTS = "re-save the weights alone: torch.save({'model': model.state_dict(), 'step': step}, ...)"


def _trusted_load_error(path: Path, exc: BaseException, found: _Placeholders) -> FdlError:
    """What `_load_trusted` says of a load that raised `exc`: a module whose own code failed while imported; fdl's own
    refusal of a module the pickle names; a class read as a placeholder that did not do (the class was needed); the
    file's own code importing what is not here; else a damaged file."""
    if found.import_failed is not None:
        return found.import_failed
    if isinstance(exc, FdlError):  # fdl's own refusal that the unpickler's import met, which `find_class` lets
        return exc  # through: a model folder's compiled code (`CompiledCodeError`) read "corrupt ... re-save it"
    if found.first_error is not None:
        return _unimportable_error(path, found.first_error)
    if isinstance(exc, (ImportError, AttributeError)):
        return _unimportable_error(path, exc)
    return _corrupt_error(path, exc)


def _import_failed_error(path: Path, module: str, name: str, exc: BaseException) -> CheckpointError:
    """A module the trusted pickle names (for its class `name`) is there, but its own code failed while imported:
    that error, the user's to fix, rather than a damaged file or a placeholder's (`_Placeholders.import_failed`)."""
    shown = shown_name(f"{module}.{name}")
    where = f"cannot unpickle {path}: importing the module {shown_name(module)} (for its class {shown})"
    if isinstance(exc, SystemExit):  # a training script's top-level code (argparse) parsed fdl's command line
        return CheckpointError(
            f"{where} called sys.exit({exc.code!r})",
            got="code that runs a script when imported (argparse, a training loop, sys.exit)",
            fix=f"put that module's top-level code under `if __name__ == \"__main__\":`, or {_RESAVE_WEIGHTS}",
        )
    return CheckpointError(
        f"{where} failed",
        got=f"{type(exc).__name__}: {first_line(exc)}{raised_at(exc)}",
        fix=f"fix what that module needs where fdl runs (its environment, a package's version), or {_RESAVE_WEIGHTS}",
    )


#: (path, object) of a file --trust-pickle unpickled already, which `_load_trusted` gives again rather than unpickle
#: it a second time (`_unpickled_digest`)
_UNPICKLED: contextvars.ContextVar[tuple[Path, Any] | None] = contextvars.ContextVar("_UNPICKLED", default=None)


def _unpickled_digest(ref: CheckpointRef, obj: Any, weights: str | None) -> str | None:
    """`_same_weights`' digest of the checkpoint `ref`, a pickle a folder scan unpickled (to `obj`) for its steps and
    found none: taken from `obj` as `load_checkpoint` reads it, since unpickling the file again would run its code
    again. None where it holds no such weights (--weights names no copy, NaN)."""
    token = _UNPICKLED.set((ref.path, obj))
    try:
        return weights_digest(*_state_of(load_checkpoint(ref, weights=weights, trust_pickle=True)))
    except CheckpointError:
        return None
    finally:
        _UNPICKLED.reset(token)


def _load_tensor_file(
    path: Path, *, trust_pickle: bool, map_location: str, weights: str | None = None
) -> tuple[dict[str, Any] | None, nn.Module | None, dict[str, Any], bool, tuple[str, ...], str]:
    """(tensors, with the extra states that are not tensors (`_with_extra_states`), module, step metadata,
    whether `weights` named an entry of the file's dict: the tensors are then that entry's state_dict;
    otherwise `load_checkpoint` looks for it as a prefix; and without `weights`, the entries holding other
    copies of the weights, `_weight_copies`, and the library whose EMA swapped its weights in as the tensors,
    `_ema_swapped`)."""
    if path.suffix == ".safetensors":
        tensors, meta = _load_safetensors(path, map_location)
        return tensors, None, meta, False, (), ""
    if path.is_dir():  # a torch.distributed.checkpoint folder (`_dcp_object`): read without unpickling objects
        obj: Any = _dcp_object(path)
    else:
        try:
            obj = _torch_load_safe(path, map_location=map_location)
        except UnsafeCheckpointError:
            if not trust_pickle:
                raise
            obj = _load_trusted(path, map_location)
    if isinstance(obj, nn.Module):
        return None, obj, {}, False, (), ""
    is_entry, chosen = _entry_at(obj, weights) if weights is not None and isinstance(obj, Mapping) else (False, None)
    if is_entry:
        if isinstance(chosen, nn.Module):  # an EMA module pickled whole (--trust-pickle)
            chosen = chosen.state_dict()
        found = _find_tensor_dict(chosen)
        if isinstance(chosen, ObjectNotLoaded):  # its class is not importable here: not said to hold no weights
            raise WeightsNotFoundError(
                f"--weights {weights}: the entry {weights!r} of {path} is an object of {shown_name(chosen.pickled_class)}, "
                "a class that cannot be imported here, so it was not loaded (--trust-pickle reads such objects "
                "as placeholders)",
                fix="run fdl where the training code imports (PYTHONPATH=FOLDER_OF_THAT_CODE, or install the "
                f"package it names), or save that entry's weights: torch.save({{{weights!r}: "
                f"{weights}.state_dict(), ...}}, ...)",
            )
        if found is None:
            own = _find_tensor_dict(obj)
            inside = [name for name in (_weight_copies(obj, own) if own is not None else ())
                      if name.startswith(f"{weights}.")]
            held = (f" whose entr{'ies' if len(inside) > 1 else 'y'} {listed_names(inside, 4)} "
                    f"hold{'' if len(inside) > 1 else 's'} weights") if inside else ""
            raise WeightsNotFoundError(
                f"--weights {weights}: the entry {weights!r} of {path} holds no state_dict",
                got=type(chosen).__name__ + held,
                fix=f"pass --weights {shown_name(inside[0])}" if inside else
                "name the entry that holds the weights to analyse (its values tensors), or a key prefix",
            )
        return _with_extra_states(found, chosen), None, _file_steps(obj), True, (), ""
    found = _find_tensor_dict(obj)
    entry = _module_entry(obj) if found is None else None
    if entry is not None:
        # `torch.save({"model": model, "epoch": e, ...})` (YOLOv5's layout too): the whole module pickled in
        # the dict, which only --trust-pickle loads; analysed as a module checkpoint, as `torch.save(model)`
        assert isinstance(obj, Mapping)
        key, module = entry
        copies = tuple(name for name in _weight_copies(obj, module.state_dict())
                       if name != key and not name.startswith(f"{key}.")) if weights is None else ()
        return None, module, _file_steps(obj), False, copies, ""
    if found is None:
        keys = listed_names([str(key) for key in list(obj)[:8]], 8) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} holds no model state_dict",
            got=f"top-level keys: {keys}" if isinstance(obj, Mapping) else keys,
            fix=f"save model.state_dict(), or a dict holding it under one of {', '.join(STATE_DICT_KEYS)}",
        )
    if weights is not None and isinstance(obj, Mapping):
        _check_weights_found(obj, found, weights, path)
    meta = _file_steps(obj) if isinstance(obj, Mapping) else {}
    copies = _weight_copies(obj, found) if weights is None and isinstance(obj, Mapping) else ()
    return (_with_extra_states(found, obj), None, meta, False, copies,
            _ema_swapped(obj, copies) if isinstance(obj, Mapping) else "")


def _module_entry(obj: Any) -> tuple[str, nn.Module] | None:
    """(key, module): the whole module a checkpoint's dict holds under one of STATE_DICT_KEYS (first in
    that order), or None (a dict holding no module there, or not a dict)."""
    if not isinstance(obj, Mapping):
        return None
    return next(((key, value) for key in STATE_DICT_KEYS if isinstance(value := obj.get(key), nn.Module)), None)


def _check_weights_found(
    obj: Mapping[Any, Any], found: Mapping[str, Any], weights: str, path: Path
) -> None:
    """--weights NAME that is neither an entry of the checkpoint's dict nor a key prefix of its state_dict:
    the error names the entries that do hold weights (`{"model": ..., "model_ema": ...}` -> model_ema),
    which is what the user can pass; `_under_prefix` alone listed only the prefixes inside the model's own
    state_dict."""
    prefix = weights if weights.endswith(".") else weights + "."
    tensors = _strip_prefixes({k: v for k, v in found.items() if isinstance(v, torch.Tensor)})
    if any(key.startswith(prefix) and key != prefix for key in tensors):
        return
    own = next((key for key in STATE_DICT_KEYS if _find_tensor_dict(obj.get(key), 1) is not None), None)
    entries = [
        str(key) for key, value in obj.items()
        if key != own and isinstance(value, Mapping) and _find_tensor_dict(value) is not None
    ]
    entries += [name for name in _weight_copies(obj, found) if name not in entries]  # extra_state.ema
    if not entries:
        return  # no other copy: `_under_prefix` says what the keys start with
    heads: dict[str, int] = {}
    for key in tensors:
        heads[key.split(".", 1)[0]] = heads.get(key.split(".", 1)[0], 0) + 1
    shown = sorted(heads.items(), key=lambda item: (-item[1], item[0]))[:8]
    raise WeightsNotFoundError(
        f"--weights {weights}: {path} has no entry {weights!r} holding a state_dict, and none of its keys "
        f"starts with {prefix!r}",
        got="other entries holding weights: " + listed_names(entries, 8) + "; the model's own"
        + (f" (under {own!r})" if own is not None else "") + " keys start with "
        + ", ".join(f"{shown_name(head)}. ({count})" for head, count in shown),
        fix=f"pass one of those entries (e.g. --weights {shown_name(entries[0])}) or a key prefix, or leave --weights "
        "out for the checkpoint's own weights",
    )


def _under_prefix(tensors: Mapping[str, torch.Tensor], weights: str, path: Path) -> dict[str, torch.Tensor]:
    """--weights NAME as a key prefix: the tensors under ``NAME.``, the prefix dropped (a LightningModule's
    ``ema.`` beside ``model.``, timm's ``model_ema.module.``)."""
    prefix = weights if weights.endswith(".") else weights + "."
    picked = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix) and key != prefix}
    if not picked:
        heads: dict[str, int] = {}
        for key in tensors:
            head = key.split(".", 1)[0]
            heads[head] = heads.get(head, 0) + 1
        shown = sorted(heads.items(), key=lambda item: (-item[1], item[0]))[:8]
        raise WeightsNotFoundError(
            f"--weights {weights}: {path} has no entry {weights!r} holding a state_dict, and none of its keys "
            f"starts with {prefix!r}",
            got="its keys start with " + ", ".join(f"{shown_name(head)}. ({count})" for head, count in shown),
            fix="pass the entry or prefix of the weights to analyse (e.g. --weights state_dict_ema, --weights ema), "
            "or leave --weights out for the checkpoint's own weights",
        )
    return picked


def load_checkpoint(
    ref: CheckpointRef, *, trust_pickle: bool = False, map_location: str = "cpu", weights: str | None = None
) -> LoadedCheckpoint:
    """Load one checkpoint: tensors (prefixes ``module.``/``_orig_mod.`` stripped) or a whole module.

    ``weights`` (--weights) picks other weights than the checkpoint's own: an entry of its dict that
    holds a state_dict (``state_dict_ema``), else the keys under that prefix (``ema.``).

    Raises:
        UnsafeCheckpointError: the file pickles Python objects and ``trust_pickle`` is False.
        CheckpointError: the file is damaged, holds no state_dict, or holds NaN/Inf weights.
    """
    path = Path(ref.path)
    try:
        os.stat(path)
    except OSError as exc:  # EACCES, EIO: `path.exists()` raised them, a traceback
        raise unreachable(path, exc) from None
    extra: dict[str, Any] = {}
    if ref.kind == "pickle" and not trust_pickle:
        files = [path] if path.is_file() else _hf_weight_files(path)
        unsafe = sorted({g for file in files if file.is_file() for g in _unsafe_globals(file)[0]})
        if not unsafe:  # allowed globals building a type that is not (a numpy object array): loading says which
            for file in files:
                try:
                    _torch_load_safe(file)
                except UnsafeCheckpointError:
                    raise  # it names the type
                except CheckpointError:
                    pass
        raise _unsafe_error(path, unsafe or ["an object beyond tensors"])
    if ref.kind in ("export", "torchscript") and not trust_pickle:
        raise _export_refused(path) if ref.kind == "export" else _torchscript_refused(path)
    not_loaded: list[str] = []
    said = _NOT_LOADED.set(not_loaded)
    try:
        tensors, module, meta, by_entry, copies, swapped = _load_weights(path, ref, trust_pickle, map_location, weights)
    finally:
        _NOT_LOADED.reset(said)
    if module is not None and weights is not None:
        raise WeightsNotFoundError(
            f"--weights {weights}: {path} holds a whole module, whose weights are its own",
            fix="leave --weights out for this checkpoint, or save the weights to analyse as a state_dict",
        )
    if tensors is not None:
        # the extra states lose the tensors' prefixes (`module.`, --weights ema.) with them
        tensors = _strip_prefixes({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) or is_extra_state(k)})
        if weights is not None and not by_entry:
            tensors = _strip_prefixes(_under_prefix(tensors, weights, path))
        extra = {k: v for k, v in tensors.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in tensors.items() if k not in extra}
        _check_finite(path, tensors)
    if module is not None:
        _check_finite(path, {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)})
    return LoadedCheckpoint(ref=ref, state_dict=tensors, module=module, metadata=meta, other_weights=copies,
                            ema_swapped_in=swapped, extra_state=extra, not_loaded=tuple(not_loaded))


def _load_weights(path: Path, ref: CheckpointRef, trust_pickle: bool, map_location: str, weights: str | None) -> tuple[
    dict[str, Any] | None, nn.Module | None, dict[str, Any], bool, tuple[str, ...], str
]:
    """`load_checkpoint`'s read of the file or folder: `_load_tensor_file`'s answer."""
    tensors: dict[str, Any] | None = None
    module: nn.Module | None = None
    meta: dict[str, Any] = {}
    by_entry, swapped = False, ""
    copies: tuple[str, ...] = ()
    if ref.kind in ("torchscript", "export"):
        module = _load_program(path, ref.kind, map_location)
    elif path.is_dir() and not _is_dcp_folder(path):
        tensors = {}
        files = _hf_weight_files(path)
        if not files:  # it held some when discovery found it: `weights_gone`
            raise CheckpointError(
                f"the checkpoint folder {path} holds no weight file now",
                got=f"no {' or '.join(_HF_SINGLE)} (nor a shard index) in it, where there was one when it was found: "
                "removed since (a training job's rotation deleting the folder?)",
                fix="run again once the folder is whole, or leave it out (--glob, --steps)",
            )
        for weight_file in files:
            part, _, part_meta, _, _, _ = _load_tensor_file(
                weight_file, trust_pickle=trust_pickle, map_location=map_location
            )
            tensors.update(part or {})
            meta = meta or part_meta
        state = path / "trainer_state.json"
        if state.is_file():
            try:
                meta = {**meta, **_metadata_steps(json.loads(state.read_text()))}
            except (OSError, ValueError, AttributeError):
                pass
    else:
        tensors, module, meta, by_entry, copies, swapped = _load_tensor_file(
            path, trust_pickle=trust_pickle, map_location=map_location, weights=weights
        )
    return tensors, module, meta, by_entry, copies, swapped


#: The attribute of a torch.export checkpoint's module that holds its ExportedProgram
EXPORTED_PROGRAM = "_fdl_exported_program"


def _load_program(path: Path, kind: str, map_location: str) -> nn.Module:
    try:
        with contextlib.ExitStack() as stack:
            # torch opens a file by its name as UTF-8 text only: a name of other bytes is opened here
            source: Any = str(path) if utf8_path(path) else stack.enter_context(open(path, "rb"))
            if kind == "torchscript":
                return torch.jit.load(source, map_location=map_location)
            program = torch.export.load(source)
        module = program.module()
        # kept for `extract.prepare_model`, which moves the program itself to the device (see there)
        setattr(module, EXPORTED_PROGRAM, program)
        return module
    except Exception as exc:  # noqa: BLE001 - any failure to parse is reported as a damaged file
        raise _corrupt_error(path, exc) from None


# ------------------------------------------------------------------------------------------ models


def _is_path_spec(target: str) -> bool:
    """Whether the part of a --model spec before ':' names a file (path/file.py), not a module."""
    return target.endswith(".py") or "/" in target or "\\" in target


def _spec_candidates(target: str, base_dir: Path | None) -> list[Path]:
    """Where a path spec's file is looked for: relative to the current folder, as the shell user who typed
    it means (and completes it); then relative to ``base_dir``, the first checkpoint folder given."""
    return [Path(target)] + ([Path(base_dir) / target] if base_dir is not None else [])


def model_spec_file(spec: str, *, base_dir: Path | None = None) -> Path | None:
    """The file a --model spec names, as `resolve_model_factory` finds it: a path spec's file relative
    to the current folder first, then to ``base_dir``; an imported module spec's module file. None when
    there is none (not found, not imported yet, no file)."""
    target = spec.rpartition(":")[0]
    if _is_path_spec(target):
        for candidate in _spec_candidates(target, base_dir):
            try:
                if candidate.is_file():
                    return candidate
            except OSError:  # a closed folder above it
                continue
        return None
    file = getattr(sys.modules.get(target), "__file__", None)
    return Path(file) if file else None


def module_beside(target: str, folder: Path | None) -> Path | None:
    """The file of the top-level module or package of the module spec `target` (``pkg`` of
    ``pkg.models``) in `folder` (``folder/pkg.py``, ``folder/pkg/__init__.py``, a namespace package's
    folder), as an import with `folder` first on sys.path finds it; None when `folder` holds none (or is
    None)."""
    if folder is None or _is_path_spec(target) or not target:
        return None
    try:
        found = importlib.machinery.PathFinder.find_spec(target.partition(".")[0], [str(folder)])
    except (ImportError, OSError, ValueError):
        return None
    if found is None:
        return None
    if found.origin not in (None, "namespace"):
        return Path(found.origin)
    return Path(next(iter(found.submodule_search_locations or [str(folder)])))


def _submodule_beside(target: str, top: Path | None) -> Path | None:
    """The file of the module `target` (``pkg.models``) where `top` is its top-level package's (`module_beside`),
    as Python finds the submodule in the package's folder: the code that runs, not the package's `__init__.py`;
    `top` where a part is not found there (Python then fails on the import, or looks elsewhere)."""
    found, parts = top, target.split(".")
    for depth in range(1, len(parts)):
        if found is None or not (found.is_dir() or found.name == "__init__.py"):
            return top
        folder = found if found.is_dir() else found.parent
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), [str(folder)])
        except (ImportError, OSError, ValueError):
            return top
        if spec is None:
            return top
        found = (Path(spec.origin) if spec.origin not in (None, "namespace")
                 else Path(next(iter(spec.submodule_search_locations or [str(folder)]))))
    return found


def _inside(path: str | Path, folder: Path, *, links: bool = True) -> bool:
    """`path` lies in `folder` or a sub-folder of it: as spelled (a module file found in the folder, a symbolic link
    there), or with its links followed; or, with `links`, it is where a symbolic link in `folder` leads (a model.py
    linked into each run's folder, which fdl.toml's paths name resolved): a file the folder brings, whose code runs as
    its own. Not for a module imported by name (`_check_manifest_factory`): a link to torch's __init__.py made torch
    the folder's own, and `model = "torch:load"` was called."""
    try:
        if Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder)):
            return True
        if _in_library(path):  # a link to `subprocess.py`, or to Python's library folder, ran subprocess.run
            return False
        places = {os.path.abspath(folder), os.path.realpath(folder)}
        if any(Path(place).is_relative_to(home) for place in (os.path.abspath(path), os.path.realpath(path))
               for home in places):
            return True
        if not links:
            return False
        with os.scandir(folder) as entries:
            return any(entry.is_symlink() and os.path.realpath(entry.path) == os.path.realpath(path)
                       for entry in entries)
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _library_homes() -> tuple[str, ...]:
    """The interpreter's library and site-packages folders, their links followed (`_in_library`): read once, since
    sysconfig and the realpath of each took ~5 ms a call, 10 s for the 2 000 modules of a project a pickled model's
    code imports (`pickled_model_modules`)."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    homes = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    with contextlib.suppress(AttributeError):  # virtualenv's old site.py has neither
        homes += [*site.getsitepackages(), site.getusersitepackages()]
    # ".../lib/python3.11/": a folder, its separator at the end
    return tuple(os.path.normcase(os.path.join(os.path.realpath(home), "")) for home in homes if home)


def _in_library(path: str | Path) -> bool:
    """`path`, its links followed, is a file of Python's standard library or of an installed distribution (the
    interpreter's library and site-packages folders): nobody's model code, whatever link in a folder leads to it."""
    real = Path(os.path.realpath(path))
    if os.path.normcase(os.path.join(real, "")).startswith(_library_homes()):  # one string test: pathlib's was slow
        return True
    # another Python's (the system's /usr/lib/python3.11/subprocess.py, beside a pyenv or conda interpreter's)
    parts = [part.lower() for part in real.parts]
    pairs = zip(parts, parts[1:], strict=False)
    return any(part in ("site-packages", "dist-packages") for part in parts) or any(
        up in ("lib", "lib64") and re.fullmatch(r"python\d+(\.\d+)*t?", part) for up, part in pairs)


def _foreign_manifest_model(spec: str, named_by: Path, got: str, *, define: str | None = None) -> ModelError:
    """The error of an fdl.toml's `model` that is neither the folder's own code nor an nn.Module class; `define`: the
    factory to write in the folder's module that only imports it (`_reexported_model`)."""
    import shlex

    trusted = f"if you trust it, pass it on the command line: --model {shlex.quote(spec)} (and --model-kwargs JSON)"
    return ModelError(
        f"{named_by} names the model {spec!r}, which is neither a model defined in its folder ({named_by.parent}) "
        "nor an nn.Module class, and fdl does not call it: a folder's fdl.toml runs the folder's own model code only",
        got=got,
        fix=f"{define}; or, {trusted}" if define else
        f"{trusted}; or write a factory in a model.py beside {named_by} and name it there (model = \"model.py:build\")",
    )


def check_manifest_model(spec: str, named_by: Path, *, base_dir: Path | None = None) -> None:
    """Refuse, before anything is imported, an fdl.toml's `model` that can be told not to be the folder's own code
    nor an nn.Module class: a model file outside `named_by`'s folder (`../x.py`; a link in the folder to one is its
    own), a module of the standard library (which defines no nn.Module; one beside the fdl.toml is never imported for
    it), a program's `__main__`, a function of a module imported already (`torch:load`). The rest is checked once
    imported (`_check_manifest_factory`)."""
    folder = named_by.parent
    target, sep, attr = spec.rpartition(":")
    if not sep and spec.endswith(".py"):  # `model = "model.py"`, the factory left out
        target, attr = spec, ""
    if not target:
        return  # not of the form module:factory: `resolve_model_factory` says so
    if _is_path_spec(target):
        file = model_spec_file(f"{target}:{attr}", base_dir=base_dir if base_dir is not None else folder)
        if file is not None and not _inside(file, folder):
            raise _foreign_manifest_model(spec, named_by, f"{os.path.realpath(file)} is outside {folder}")
        return
    top = target.partition(".")[0]
    beside = module_beside(target, folder)
    if top in sys.stdlib_module_names:
        raise _foreign_manifest_model(spec, named_by, f"{top} is a module of Python's standard library, which "
                                      "defines no nn.Module" + (f" ({_folder_entry(beside)} beside it is never "
                                                               "imported for it: rename it)" if beside else ""))
    if "__main__" in target.split(".") and (beside is None or beside.is_dir()):
        raise _foreign_manifest_model(spec, named_by, f"{target} is a program's __main__, not of the folder")
    imported = sys.modules.get(target)  # `torch:load`: told now, before the note that its code runs
    # but for a module beside the fdl.toml, which the import takes from there (another run's `model` of that name,
    # imported before, is forgotten: `_forget_other_folders`), checked once imported
    own = beside is not None and top not in _protected_modules()
    if imported is not None and not own and callable(factory := getattr(imported, attr, None)):
        _check_manifest_factory(spec, named_by, imported, factory)


def _check_manifest_factory(spec: str, named_by: Path, module: types.ModuleType, factory: Any) -> None:
    """Refuse, before it is called, an fdl.toml's `model` imported from outside its folder that is no nn.Module
    class (`torch:load`, a library's factory function)."""
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        return
    kind = "a class" if isinstance(factory, type) else "a function" if callable(factory) else type(factory).__name__
    file = getattr(module, "__file__", None)
    # a model file fdl.toml names by path may be a link in the folder; a module it names was found by name
    links = _is_path_spec(spec.rpartition(":")[0] or spec)
    if file is not None and _inside(file, named_by.parent, links=links):
        # and the callable is no library's that its module imports (`from torch import *` made `model.py:load`
        # torch.load, called with model_kwargs' pickle)
        defined = _defined_by(factory, named_by.parent, links=links)
        if defined is None:
            return
        raise _reexported_model(spec, named_by, Path(file), kind, *defined)
    raise _foreign_manifest_model(spec, named_by, f"{spec.rpartition(':')[2]} is {kind} of {module.__name__} "
                                  f"({file or 'no file'}), outside {named_by.parent}")


def _reexported_model(spec: str, named_by: Path, own: Path, kind: str, where: Any, file: str | None,
                      inner: Any) -> ModelError:
    """The error of an fdl.toml's `model` that the folder's module `own` only imports from a library (`_defined_by`:
    `where`, `file`, the callable `inner` its wrappers hold): the fix is a factory defined in that module calling it
    (the user's package, installed in site-packages, is a library's code too), not "write a factory in a model.py",
    which is what the user had written."""
    attr = spec.rpartition(":")[2]
    module = getattr(where, "__name__", None) or type(where).__name__
    shown = f"{own.parent.name}/{own.name}" if own.stem == "__init__" else own.name
    qualname = getattr(inner, "__qualname__", None)
    define = f"define {attr} in {shown} itself, a function calling the imported one"
    # by its name, but for one of none (a `<lambda>`, a function of `<locals>`) or a method (called on its object)
    if (isinstance(where, types.ModuleType) and isinstance(qualname, str) and "<" not in qualname
            and ("." not in qualname or isinstance(inner, type))):
        define += (f": def {attr}(*args, **kwargs): return {module}.{qualname}(*args, **kwargs) (import {module} "
                   "there)")
    return _foreign_manifest_model(spec, named_by, f"{attr} is {kind} of {module} ({file or 'no file'}), which "
                                   f"{shown} only imports: a library's code, not the folder's", define=define)


def _defined_by(factory: Any, folder: Path, *, links: bool) -> tuple[Any, str | None, Any] | None:
    """None when the code `factory` runs first is the folder's or someone's own, not a library's: defined in `folder`
    or outside Python's and the installed libraries' files and fdl's (a project's module that model.py imports its
    factory from); looked for through the wrappers a library puts around one (functools.partial, a bound method,
    `__wrapped__`: torch.no_grad()(build)). Else the module that defines it (or the callable) and its file, for the
    error: torch.load that `from torch import *` put in model.py, os.system of `from os import system`; and the callable
    its wrappers hold."""
    where: Any = None
    file: str | None = None
    for _ in range(32):  # a chain of wrappers that never ends
        plain = isinstance(factory, (types.FunctionType, types.BuiltinFunctionType, type))
        name = getattr(factory, "__module__", None) if plain else type(factory).__module__
        where = sys.modules.get(name) if isinstance(name, str) else None
        where = where if where is not None else factory
        file = (factory.__code__.co_filename if isinstance(factory, types.FunctionType)
                else getattr(where, "__file__", None))
        if file is not None and os.path.isabs(file) and (_inside(file, folder, links=links) or not (
                _in_library(file) or getattr(where, "__name__", "").partition(".")[0] == "fdl_cli")):
            return None
        try:
            inner = (factory.func if isinstance(factory, functools.partial)
                     else factory.__func__ if isinstance(factory, types.MethodType)
                     else getattr(factory, "__wrapped__", None))
        except Exception as exc:  # noqa: BLE001 - a `__getattr__` of the folder's that raises: no wrapper
            signals.through(exc)
            inner = None
        if inner is None:
            break
        factory = inner
    return where, file, factory


def manifest_model_note(spec: str, named_by: Path, *, base_dir: Path | None, module_dir: Path | None) -> str:
    """What a run says before it imports the model code an fdl.toml names (Python code the folder brought, run
    with no flag): the file, or the module and the file beside the fdl.toml that holds it, and the fdl.toml.
    ModelError, before any note, for a `model` the fdl.toml may not name (`check_manifest_model`)."""
    check_manifest_model(spec, named_by, base_dir=base_dir)
    target, _, attr = spec.rpartition(":")
    if _is_path_spec(target):
        code = f"{model_spec_file(spec, base_dir=base_dir) or target}:{attr}"
    else:
        beside = _submodule_beside(target, module_beside(target, module_dir))
        code = spec + (f" ({beside})" if beside is not None else "")
    return f"running the model code {code}, named by {named_by}"


def say_on_stderr(note: str) -> None:
    """`note` printed on stderr at once, as fdl's notes are (`note: ...`, control characters escaped): where no
    reporter shows them, the note of `manifest_model_note`, which is to come before the code it names runs, and not
    with a listing after it (`fdl inspect`), nor never (`run_analyze` without a reporter)."""
    print(terminal_safe(f"note: {note}"), file=sys.stderr, flush=True)


def resolve_model_factory(
    spec: str, *, base_dir: Path | None = None, module_dir: Path | None = None, named_by: Path | None = None
) -> Callable[..., nn.Module]:
    """The callable named by ``pkg.module:factory`` or ``path/file.py:factory``.

    A file path is tried relative to the current folder first, then to ``base_dir``. ``module_dir``:
    the folder of the fdl.toml that names this module spec, where the module is looked for first
    (`module_beside`); a module spec given on the command line is an installed one, on PYTHONPATH or in
    the current folder. ``named_by``: the fdl.toml whose `model` the spec is, for the errors to name
    (they said "--model ...", which the user never typed), and which may name only its folder's own code or an
    nn.Module class (`check_manifest_model`, `_check_manifest_factory`): ModelError before anything else runs.
    """
    label = f"--model {spec!r}" if named_by is None else f"model = {spec!r} of {named_by}"
    if named_by is not None:  # a folder's fdl.toml runs the folder's own model code, or builds an nn.Module class
        check_manifest_model(spec, named_by, base_dir=base_dir)
    target, sep, attr = spec.rpartition(":")
    # `--model model.py`, the factory left out: the file is imported, as with one, to list its callables
    # (the error gave only "e.g. --model mypkg.models:build", not the names the file holds)
    factoryless = not sep and spec.endswith(".py")
    if factoryless:
        target = spec
    elif not sep or not target or not attr:
        raise ModelError(
            f"{label} is not of the form module:factory",
            fix="e.g. --model mypkg.models:build or --model path/to/model.py:build",
        )
    if _is_path_spec(target):
        file = model_spec_file(f"{target}:{attr}", base_dir=base_dir)
        if file is None and ":" in target:
            raise _colons_error(spec, label, named_by)
        from fdl_cli.manifests import _is

        folder = next((c for c in _spec_candidates(target, base_dir) if _is(c, "dir")), None) if file is None else None
        if folder is not None:  # it said "file d.py not found" of the folder d.py
            raise ModelError(
                f"{label}: {folder} is a folder, not a Python file",
                fix=f"name the .py file in it that defines {attr or 'the factory'} "
                f"({target.rstrip('/')}/FILE.py:{attr or 'build'})",
            )
        special = next(((c, kind) for c in _spec_candidates(target, base_dir) if (kind := special_file(c))), None)
        if file is None and special is not None:  # it said "file model.py not found" of a FIFO
            raise ModelError(
                f"{label}: {special[0]} is {special[1]}, not a Python file",
                fix=f"replace it by the .py file that defines {attr or 'the factory'}, or give that file's path",
            )
        if file is None:
            raise ModelError(
                f"{label}: file {target} not found",
                # an absolute path (or base_dir the current folder) names one folder twice: said once
                got="looked in " + ", ".join(dict.fromkeys(str(c.resolve().parent)
                                                           for c in _spec_candidates(target, base_dir))),
                fix="give the path relative to the current folder (or to the checkpoint folder)",
            )
        module_name = _model_file_module(file)
        manifest = None if named_by is None else str(named_by)
        # `from layers import Block` beside it, as python runs it; read again with it where imported before
        load = _serve_folder(file.resolve().parent, first=True, manifest=manifest, afresh=True)
        try:
            spec_obj = importlib.util.spec_from_file_location(module_name, file)
            if spec_obj is not None:
                spec_obj = _from_source(spec_obj, None, load)
            if spec_obj is None or spec_obj.loader is None:
                raise ImportError(f"cannot import {file}")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[module_name] = module
            with _user_code_stderr() as said:
                spec_obj.loader.exec_module(module)
        except SystemExit as exc:  # a training script's top-level code (argparse, sys.exit) ran
            _forget_model_file(module_name)
            raise _exited(f"{label}: importing {file}", exc, said.getvalue()) from None
        except CompiledCodeError:
            _forget_model_file(module_name)
            raise
        except Exception as exc:  # noqa: BLE001 - user code can raise anything
            signals.through(exc)  # a Ctrl-C met in C code the user's code ran through: not its failure
            _forget_model_file(module_name)
            unreadable = isinstance(exc, OSError) and exc.filename is not None and Path(exc.filename) == file
            fix = (_os_reason(file, exc)[1] if unreadable else shadowing_fix(exc)
                   or _package_module_fix(file, exc, attr, named_by) or import_fix(exc, file))
            raise ModelError(
                f"{label}: importing {file} failed",
                got=f"{type(exc).__name__}: {exc}{raised_at(exc)}",
                fix=fix,
            ) from None
    else:
        if ":" in target:  # no module's name holds one: it said "No module named 'model.py:build'"
            raise _colons_error(spec, label, named_by)
        found = module_beside(target, module_dir)
        beside = module_dir if found is not None else None
        # Nothing beside, or only a folder of no package there (a namespace portion, as a run's sub-folder of that
        # name is): a module of the current folder wins over it, as an installed one does
        named = target.partition(".")[0]
        if found is None or found.is_dir():
            with contextlib.suppress(OSError):  # the current folder may have been removed
                _serve_current_folder(named)
        if beside is not None:  # ahead of an installed module of that name
            _serve_folder(beside, first=True, named=named, manifest=None if named_by is None else str(named_by))
        try:
            with _user_code_stderr() as said:
                module = importlib.import_module(target)
        except SystemExit as exc:
            raise _exited(f"{label}: importing {target}", exc, said.getvalue()) from None
        except CompiledCodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code can raise anything
            signals.through(exc)  # a Ctrl-C met in C code the user's code ran through: not its failure
            raise ModelError(
                f"{label}: cannot import {target}",
                got=f"{type(exc).__name__}: {exc}{raised_at(exc)}",
                fix=shadowing_fix(exc) or (
                    "install the package or put it on PYTHONPATH, or use path/file.py:factory"
                    # the module named is not found (`pkg`, `pkg.models`), not one its code imports
                    if isinstance(exc, ModuleNotFoundError) and f"{target}.".startswith(f"{exc.name}.")
                    else import_fix(exc, module_beside(target, module_dir) or target)),
            ) from None
    factory = getattr(module, attr, None)
    if factoryless:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        own = [n for n in public if getattr(getattr(module, n), "__module__", None) == module.__name__]
        raise ModelError(
            f"{label} names a file but not the factory in it that builds the network",
            got="callables there: " + (", ".join(public[:10]) or "none"),
            fix=(f"name it after a colon: --model {spec}:NAME" if named_by is None
                 else f'name it after a colon: model = "{spec}:NAME" in {named_by}')
            + (f" (e.g. {spec}:{own[0]}, defined there)" if own else ""),
        )
    if factory is None or not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        kind = type(factory).__name__
        raise ModelError(
            f"{label}: {target} has no callable {attr!r}",
            # "callables there: " and nothing, where the name is there but not a function
            got=("" if factory is None else f"{attr!r} there is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                 "not a function or class; ") + "callables there: " + (", ".join(public[:10]) or "none"),
            fix=_factory_name_fix(module, target, spec, named_by),
        )
    if named_by is not None:
        _check_manifest_factory(spec, named_by, module, factory)
    return factory  # type: ignore[no-any-return]


def _serve_current_folder(named: str) -> None:
    """The current folder's module `named` (of a module spec, `pkg.model:build`) imported through `_FolderModules` by
    `fdl` and `python -m fdl_cli` alike, so that both run the same code of it and record the same modules of the
    folder in the store (`model_folder_imports`). The `fdl` console script's sys.path lacks the current folder: it is
    served after installed modules (an installed package wins, as for `python -c`). `python -m` (and an interpreter
    of the Python API) has it on sys.path, whose own finder imported the package with nothing recorded or checked: it
    is served first where sys.path finds `named` there, and what Python imports stays the one it would."""
    cwd = Path.cwd()
    here = os.path.realpath(cwd)
    if not any(isinstance(entry, str) and os.path.realpath(entry or os.curdir) == here for entry in sys.path):
        _serve_folder(cwd, first=False, named=named)
        return
    try:
        found = importlib.machinery.PathFinder.find_spec(named)  # what sys.path gives
    except (ImportError, OSError, ValueError):
        found = None
    origin = getattr(found, "origin", None)
    if found is not None and origin in (None, "namespace"):
        # a namespace package (no __init__.py), which Python joins of its portions on sys.path: served, ahead of
        # sys.path's finder, where the current folder holds its only one (what Python imports is that one too)
        portions = list(getattr(found, "submodule_search_locations", None) or ())
        if portions and all(os.path.realpath(Path(portion).parent) == here for portion in portions) \
                and named not in _protected_modules():
            _serve_folder(cwd, first=True, named=named, named_namespace_first=True)
        return
    if not isinstance(origin, str) or not os.path.isabs(origin):
        return  # none, or no file: imported as before
    # the sys.path entry it was found in: the folder of the module, or of the package's folder, taken as it is named
    # there (a package that is a symlink to a checkout elsewhere is the current folder's, as `fdl` serves it)
    entry = Path(origin).parent if getattr(found, "submodule_search_locations", None) is None else Path(origin).parent.parent
    if os.path.realpath(entry) != here or _in_library(os.path.realpath(origin)):
        return  # found elsewhere on sys.path, ahead of the current folder: that one is imported, as before
    if named not in _protected_modules():
        _serve_folder(cwd, first=True, named=named)


def _colons_error(spec: str, label: str, named_by: Path | None) -> ModelError:
    """The refusal of a model spec of more than one ':' (`model.py:build:extra`), which was split at its last and
    looked for as a module or file named by the rest (`model.py:build`)."""
    module, _, rest = spec.partition(":")
    example = f"{module}:{rest.partition(':')[0]}"
    return ModelError(
        f"{label} holds {spec.count(':')} colons",
        got="a spec is MODULE:FACTORY or FILE.py:FACTORY, with one ':' (a factory is a function or class of the "
        "module itself, not an attribute of one)",
        fix="give one ':' between the file or module and its factory, e.g. "
        + (f"--model {example}" if named_by is None else f'model = "{example}" in {named_by}'),
    )


def _factory_name_fix(module: types.ModuleType, target: str, spec: str, named_by: Path | None) -> str:
    """What to name after ':' where the name there is no callable of the module (it said "check the name after
    ':'"): a function or class defined in the module, the first of them as the example."""
    own = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))
           and getattr(getattr(module, name), "__module__", None) == module.__name__]
    fix = f"name after ':' a function or class of {target} that builds the network"
    if not own:
        return fix + " (it defines none: add one, e.g. def build(): return MyNet())"
    example = f"{target}:{own[0]}"
    return fix + ", e.g. " + (f"--model {example}" if named_by is None else f'model = "{example}" in {named_by}')


def _package_module_fix(file: Path, exc: BaseException, attr: str, named_by: Path | None) -> str | None:
    """What to do where the model file `file` is a module of a package (its folder holds an `__init__.py`) whose
    relative import (`from .layers import Block`) failed: a model file runs as `python file.py` runs it, outside
    its package, and is to be named as the module it is (`pkg.net:build`). None for any other error."""
    if not isinstance(exc, ImportError) or "no known parent package" not in str(exc) or file.name == "__init__.py":
        return None
    parts, root = [file.stem], file.resolve().parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    if len(parts) == 1:
        return None
    module = ".".join(parts)
    beside = named_by is not None and root == named_by.resolve().parent  # a module spec is looked for there
    how = (f'model = "{module}:{attr}" in {named_by}' if beside
           else f"--model {module}:{attr} with PYTHONPATH={root}")
    return (f"{file} is a module of the package {'.'.join(parts[:-1])}, whose relative imports need it imported as "
            f"{module}: name it so, {how}")


#: the libraries fdl runs on: no module of theirs (nor of what they require, nor of the standard library) is ever
#: taken from a model's folder, whoever imports it (`_FolderModules`)
_FDL_LIBRARIES = ("fdl-cli", "torch", "numpy", "scipy", "h5py", "safetensors", "matplotlib", "rich", "click", "tomli")


@functools.lru_cache(maxsize=1)
def _protected_modules() -> frozenset[str]:
    """Top-level module names a model's folder never provides: the standard library's, and those of `_FDL_LIBRARIES`
    and of every installed distribution they require (extras included), read from the installed metadata."""
    import importlib.metadata as metadata

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    names = set(sys.stdlib_module_names) | {"fdl_cli", *(name.replace("-", "_") for name in _FDL_LIBRARIES)}
    seen: set[str] = set()
    todo = list(_FDL_LIBRARIES)
    while todo:
        dist = canonical(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except (metadata.PackageNotFoundError, ValueError, OSError):
            continue
        todo.extend(match.group(0) for req in requires if (match := re.match(r"[A-Za-z0-9._-]+", req)))
    with contextlib.suppress(Exception):  # a damaged distribution's metadata: the names above still hold
        for top, dists in metadata.packages_distributions().items():
            if any(canonical(dist) in seen for dist in dists):
                names.add(top)
    return frozenset(names)


def _importer_file() -> str:
    """The file of the code whose import is being looked for (importlib's own frames passed over): the code that
    ran an unpickler, for a class its pickle names (`_unpickling_caller`); the code torch.compile traces, for an
    import of that code (`_traced_file`)."""
    frame: types.FrameType | None = sys._getframe(2)  # noqa: SLF001 - the caller of the finder's find_spec, and on
    while frame is not None:
        name = frame.f_code.co_filename
        if frame.f_code is _HOOK_CODE:  # the import statement's own frame is the one above
            frame = frame.f_back
            continue
        if not name.startswith("<frozen ") and frame.f_globals.get("__name__", "").partition(".")[0] != "importlib":
            traced = _traced_file(frame)
            if traced is not None:
                return traced
            if _is_unpickler(frame):
                return _unpickling_caller(frame)
            # a module's file is absolute (spec_from_file_location, the finders make it so); code compiled from a
            # string (`<string>`: dataclasses', torch.fx's generated code) is no folder's, though as a path it lay
            # in the current folder
            return name if os.path.isabs(name) else ""
        frame = frame.f_back
    return ""


def _is_unpickler(frame: types.FrameType) -> bool:
    """`frame` is an unpickler's `find_class` (pickle's pure-Python one, torch.load's, dill's, joblib's): it imports
    the module of a class the pickle names. (C pickle's has no frame: the import is its caller's already.)"""
    if frame.f_code.co_name != "find_class":
        return False
    return isinstance(frame.f_locals.get("self"), (pickle.Unpickler, pickle._Unpickler))  # noqa: SLF001


def _unpickling_caller(frame: types.FrameType) -> str:
    """The file of the code that ran the unpickling `frame` belongs to: the first frame above it that is no code of
    Python's or an installed library (torch.load's, joblib.load's), fdl's own excepted, which is never a folder's;
    "" for none. What a pickle names is its data's choice, which the code that unpickles it trusts with more than an
    import; an import a library makes for itself (torch's optional `triton`) is its own, whoever called it."""
    up: types.FrameType | None = frame
    while up is not None:
        name = up.f_code.co_filename
        if not os.path.isabs(name):
            return ""
        if up.f_globals.get("__name__", "").partition(".")[0] == "fdl_cli" or not _in_library(name):
            return name
        up = up.f_back
    return ""


def _traced_file(frame: types.FrameType) -> str | None:
    """The file of the code torch.compile's interpreter (dynamo) imports for, where `frame` is its IMPORT_NAME: an
    `import` in the traced code, which runs eagerly from that code's own frame."""
    if frame.f_code.co_name != "IMPORT_NAME" or frame.f_globals.get("__name__") != "torch._dynamo.symbolic_convert":
        return None
    code = getattr(frame.f_locals.get("self"), "f_code", None)
    name = getattr(code, "co_filename", None)
    return name if isinstance(name, str) and os.path.isabs(name) else ""


#: True while --trust-pickle unpickles a checkpoint: the classes it names may be of a model folder's modules
#: (`torch.save(model)` by a trainer that imported model.py), which torch's unpickler, no code of that folder, imports
_TRUSTED_UNPICKLING: contextvars.ContextVar[bool] = contextvars.ContextVar("_TRUSTED_UNPICKLING", default=False)


#: the top-level modules `_FolderModules` served, and the folder each came from (`_forget_other_folders`)
_SERVED: dict[str, str] = {}
#: those of them served for the code of no fdl.toml (--model's), whose compiled code was taken, not refused; a
#: package too where only one of its submodules was (`_FolderSubmodules`)
_UNCHECKED: set[str] = set()


#: the load whose model code's import statement is being run (`_Load.import_`): the finders of its folder serve
#: under its rules only, whatever other load of that folder sys.meta_path holds ahead of it
_IMPORTING: contextvars.ContextVar[_Load | None] = contextvars.ContextVar("_IMPORTING", default=None)
#: each top-level name a load's module of that name was imported under, and the load whose modules of that name
#: sys.modules holds now (`_Load.take_in`)
_OWNERS: dict[str, _Load] = {}


class _Load:
    """A model folder loaded under one set of rules (`manifest`: an fdl.toml's model, which refuses compiled code
    there; None: --model's, which takes it), and the modules of the folder its code imported. Python keeps one
    module per name for the whole process (sys.modules): in the Python API, a model loaded from folder a and then
    one from folder b, each importing its `layers` in the factory or forward pass (or one folder loaded both ways),
    got whichever load imported that name last, a network of the other's shape, or code under the other's rules.
    The folder's code runs with builtins of its own whose `__import__` (`import_`) puts this load's modules of the
    name back in sys.modules first, and has only this load's finder serve the rest (`_IMPORTING`); with one load
    per process (the CLI) nothing is ever swapped."""

    def __init__(self, folder: str, manifest: str | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.modules: dict[str, types.ModuleType] = {}
        #: each module an import statement of this load's code got, as `_note` last judged it (judged once each)
        self.judged: dict[str, types.ModuleType] = {}
        self.builtins = _Builtins({**vars(builtins), "__import__": self.import_})

    def holds(self, importer: str) -> bool:
        """The code of the file `importer` is the folder's, which gets its modules: in it or a sub-folder, as spelled
        too (a module beside an fdl.toml that links to shared code imports its neighbours there)."""
        return bool(importer) and any(place.startswith(self.folder + os.sep)
                                      for place in (os.path.abspath(importer), os.path.realpath(importer)))

    def adopt(self, name: str, module: types.ModuleType) -> None:
        self.modules[name] = module
        _OWNERS[name.partition(".")[0]] = self

    def forget(self) -> None:
        """The modules its code imported dropped: its folder read again (`_serve_folder(afresh=True)`), the ones of
        before never put back in sys.modules by `take_in` once another load's took their names."""
        self.modules.clear()
        self.judged.clear()
        for top in [top for top, owner in _OWNERS.items() if owner is self]:
            del _OWNERS[top]

    def take_in(self, top: str) -> None:
        """sys.modules holding this load's modules named `top` (and its submodules), not another load's."""
        owner = _OWNERS.get(top)
        if owner is None or owner is self:
            return
        family = top + "."
        for name, module in owner.modules.items():
            if (name == top or name.startswith(family)) and sys.modules.get(name) is module:
                del sys.modules[name]
        for name, module in self.modules.items():
            if name == top or name.startswith(family):
                sys.modules.setdefault(name, module)
        _OWNERS[top] = self
        _SERVED[top] = self.folder

    def import_(self, name: str, globals: Mapping[str, Any] | None = None, locals: Any = None,  # noqa: A002
                fromlist: Sequence[str] | None = (), level: int = 0) -> types.ModuleType:
        """An import statement of this load's code: as Python's, of this load's modules."""
        absolute = name
        if level:
            package = (globals or {}).get("__package__") or ""
            try:
                absolute = importlib.util.resolve_name("." * level + name, package)
            except (ImportError, ValueError):
                absolute = ""  # Python's own import says why
        top = absolute.partition(".")[0]
        if top:
            self.take_in(top)
        token = _IMPORTING.set(self)
        try:
            return builtins.__import__(name, globals, locals, fromlist or (), level)  # type: ignore[no-any-return]
        finally:
            _IMPORTING.reset(token)
            if top:
                self._note(absolute, fromlist or ())

    def _note(self, absolute: str, fromlist: Sequence[str]) -> None:
        """Adopt what the import got of the folder that no `_SourceLoader` of this load ran: compiled code (--model's),
        a namespace package."""
        parts = absolute.split(".")
        names = [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
        for name in [*names, *(f"{absolute}.{sub}" for sub in fromlist if sub != "*")]:
            module = sys.modules.get(name)
            if module is None or self.judged.get(name) is module:
                continue  # an `import math` in the forward pass runs at every call: each module is judged once
            self.judged[name] = module
            if isinstance(getattr(getattr(module, "__spec__", None), "loader", None), _SourceLoader):
                continue
            # a module of the folder's own (under it, its top-level module one of the folder's entries), not an
            # installed one whose files lie under the folder (a .venv in it): that one is sys.modules' only copy
            if self.tops(sys.modules.get(parts[0]), parts[0]) and any(self.holds(p) for p in _module_homes(module)):
                self.adopt(name, module)

    def tops(self, module: types.ModuleType | None, top: str) -> bool:
        """Whether `module`, imported as `top`, is an entry of the folder (top.py, a compiled top.*.so, a package
        top/), as `_FolderModules` serves it."""
        prefix = self.folder + os.sep
        return any(place.startswith(prefix) and place[len(prefix):].split(os.sep)[0].partition(".")[0] == top
                   for place in _module_homes(module))


class _Builtins(dict):  # type: ignore[type-arg]
    """A load's builtins (`_Load.builtins`): a copy of Python's, and any name set there later (`import builtins;
    builtins.X = ...`, gettext.install's `_`), which the folder's code read from Python's before loads had their
    own."""

    def __missing__(self, name: str) -> Any:
        try:
            return vars(builtins)[name]
        except KeyError:
            raise KeyError(name) from None


#: the code of the loads' import hook, whose frame is no importer's (`_importer_file`, `shadowing_fix`)
_HOOK_CODE = _Load.import_.__code__
#: each folder and set of rules loaded (`_Load`)
_LOADS: dict[tuple[str, str | None], _Load] = {}


def _load_of(folder: str, manifest: str | None) -> _Load:
    """The load of `folder` under `manifest`'s rules, made once (each `_FolderModules` of it asks again)."""
    load = _LOADS.get((folder, manifest))
    if load is None:
        load = _LOADS[folder, manifest] = _Load(folder, manifest)
    return load


class _FolderModules(importlib.abc.MetaPathFinder):
    """The top-level modules of a model's folder, for the code of that folder only (the model file, its neighbours,
    and what they import lazily in the factory or the forward pass), as `python model.py` finds them; and `named`,
    the module an fdl.toml or --model names, for fdl's import of it. A module of the standard library or of the
    libraries fdl runs on (`_protected_modules`) is never taken from there, and no other importer (fdl's own
    lazy imports, torch's optional ones) gets one but the unpickler under --trust-pickle (`_TRUSTED_UNPICKLING`):
    the folder itself is not put on sys.path, where a `safetensors.py` beside a model file stood in for the library.
    `namespaces`: serve only folders of no package (after everything, as Python ranks a namespace portion), else
    only modules and packages. Every module of the folder is compiled from its source (`_from_source`), and for
    the model of the fdl.toml `manifest` compiled code there is refused."""

    def __init__(self, folder: Path, *, named: str | None, namespaces: bool, manifest: str | None = None,
                 only_named: bool = False) -> None:
        self.folder = os.path.realpath(folder)
        self.named = named
        self.namespaces = namespaces
        self.manifest = manifest
        self.only_named = only_named  # serves `named` alone (`_serve_folder`'s named_namespace_first)
        self.load = _load_of(self.folder, manifest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FolderModules) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.folder, self.named, self.namespaces))

    def holds(self, importer: str) -> bool:
        return self.load.holds(importer)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or (self.only_named and fullname != self.named):
            return None
        importing = _IMPORTING.get()
        if importing is not None and importing.folder == self.folder and importing is not self.load:
            return None  # the import of another load of this folder, which has a finder of its own
        if fullname != self.named and not _TRUSTED_UNPICKLING.get() and not self.holds(_importer_file()):
            return None
        try:
            found = importlib.machinery.PathFinder.find_spec(fullname, [self.folder])
        except (ImportError, OSError, ValueError):
            return None
        if found is None or (found.origin in (None, "namespace")) != self.namespaces:
            return None
        # last: the installed metadata is read (~0.1 s, once) only when the folder does hold a module of that name
        if fullname in _protected_modules():
            return None
        found = _from_source(found, fullname, self.load)
        running = self._running(fullname, found)
        if running is not None:  # `import model` in its neighbour: the model file fdl runs, not a second copy
            found = importlib.util.spec_from_loader(fullname, _Running(running, self.load), origin=found.origin)
        _SERVED[fullname] = self.folder
        (_UNCHECKED.add if self.manifest is None else _UNCHECKED.discard)(fullname)
        return found

    def _running(self, fullname: str, found: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """The module of the model file fdl imported (`_model_file_module`) that `found` is, for the folder's code that
        imports it by its own name (`_Running`); None for fdl's import of `named` (a module spec imports it afresh),
        and for an fdl.toml's model where that file ran for --model (its loader's load), its compiled imports taken."""
        if not found.has_location or fullname == self.named:
            return None
        running = sys.modules.get(_model_file_module(Path(str(found.origin))))
        loader = getattr(getattr(running, "__spec__", None), "loader", None)
        if self.manifest is not None and not (isinstance(loader, _SourceLoader) and loader.load.manifest is not None):
            return None
        return running


def _model_file_module(file: Path) -> str:
    """The name fdl imports the model file `file` (`--model path/file.py:factory`) under, its own (an installed
    `model`, another run's model.py, never clash with it): `fdl_user_model_` and a hash of its real path."""
    return "fdl_user_model_" + hashlib.sha256(os.fsencode(file.resolve())).hexdigest()[:12]


def model_folder_imports(factory: Any, spec_file: Path | None) -> dict[str, str] | None:
    """The modules of the model's folder that its code imported so far, by name -> their source file: those fdl
    served from the folder of the --model spec's file (or, for a module spec, of the factory's module) and ran from
    their source (`_SourceLoader`), the model file itself left out (its sha256 is recorded on its own). {} for a
    model file that imports none; None where fdl served no folder (an installed package's factory). Compiled code
    and modules found elsewhere on sys.path (PYTHONPATH, an editable install) are not among them."""
    module = sys.modules.get(_model_file_module(spec_file)) if spec_file is not None else None
    if module is None:
        module = sys.modules.get(getattr(factory, "__module__", None) or "")
    loader = getattr(getattr(module, "__spec__", None), "loader", None)
    if not isinstance(loader, _SourceLoader):
        return None
    own = {os.path.realpath(loader.path)}
    if spec_file is not None:
        own.add(os.path.realpath(spec_file))
    found: dict[str, str] = {}
    for name, imported in list(loader.load.modules.items()):
        source = getattr(getattr(imported, "__spec__", None), "loader", None)
        own_file = isinstance(source, _SourceLoader) and os.path.realpath(source.path) in own
        if isinstance(source, _SourceLoader) and not own_file and not name.startswith("fdl_user_model_"):
            found[name] = source.path
    return dict(sorted(found.items()))


def pickled_model_modules(model: nn.Module) -> dict[str, str]:
    """The user's modules whose code a model pickled whole (`torch.save(model)`, read with --trust-pickle) runs, by
    name -> their source file: those that define the classes of its submodules (their base classes too), and the
    user's modules those name at their top level (`from mylayers import Block`, `import helpers`), followed in turn.
    The pickle holds no code, only the classes' names, which unpickling imports as they are now. A module of the
    standard library, of an installed package (`_in_library`), of a library fdl runs on (`_protected_modules`: torch,
    fdl_cli), or of no source file is none of them: {} for a model of torch's layers alone; and so is the --model
    file's own (`fdl_user_model_`), whose sha256 is recorded on its own."""
    todo: list[str | None] = [_defined_in(cls) for sub in model.modules() for cls in type(sub).__mro__]
    seen: set[str] = set()
    found: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name)
        file = _user_source(name, module)
        if module is None or file is None:
            continue
        found[name] = file
        for value in list(object.__getattribute__(module, "__dict__").values()):
            kind = type(value)  # not isinstance: a proxy's `__class__` runs its code
            if issubclass(kind, types.ModuleType):  # read without an attribute lookup: a lazy module stays unloaded
                todo.append(object.__getattribute__(value, "__dict__").get("__name__"))
            elif issubclass(kind, type):
                todo.append(_defined_in(value))
            elif kind is types.FunctionType:
                todo.append(value.__module__)
    return dict(sorted(found.items()))


def _defined_in(cls: type) -> str | None:
    """The name of the module that defines `cls`, read past its metaclass's `__getattribute__` (a class of the user's
    module may be any object's: a registry's metaclass that runs code, and raised, on every attribute); None where
    even that raises."""
    try:
        name = type.__getattribute__(cls, "__module__")
    except Exception as exc:  # noqa: BLE001 - a metaclass's descriptor of __module__: a name not known, not a failed run
        signals.through(exc)
        return None
    return name if isinstance(name, str) else None


def _user_source(name: str, module: types.ModuleType | None) -> str | None:
    """The source file of the module `name` where it is the user's code (`pickled_model_modules`), else None."""
    if module is None or name == "__main__" or name.startswith("fdl_user_model_"):
        return None
    if name.partition(".")[0] in _protected_modules():
        return None
    try:
        spec = object.__getattribute__(module, "__dict__").get("__spec__")
    except (AttributeError, TypeError):
        return None
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not os.path.isabs(origin) or not os.path.isfile(origin) or _in_library(origin):
        return None
    return origin


def _forget_model_file(name: str) -> None:
    """The model file's module `name`, whose import failed, out of sys.modules, as Python takes out a module that
    failed: under the names its neighbours imported it by too (`_Running`), which a later import would find there,
    and out of the load that took it in under those, which would put it back there (`_Load.take_in`)."""
    module = sys.modules.pop(name, None)
    if module is None:
        return
    for held in [sys.modules, *(load.modules for load in _LOADS.values()), *(load.judged for load in _LOADS.values())]:
        for alias in [alias for alias, kept in held.items() if kept is module]:
            del held[alias]


class _Running(importlib.abc.Loader):
    """The model file's module, imported (or being imported) by fdl under a name of its own (`_model_file_module`),
    given to the folder's code that imports it by its own name (`from model import register` in layers.py, which
    model.py imports), as a plain import gives one module: a second copy ran model.py twice (a circular import
    failed, a registry or a class was two). A module of `load` under that name, as the folder's others are: another
    load's code importing the name (another folder's model.py) gets its own."""

    def __init__(self, module: types.ModuleType, load: _Load) -> None:
        self.module = module
        self.spec = module.__spec__
        self.load = load

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        self.load.adopt(module.__spec__.name, module)  # type: ignore[union-attr]
        module.__spec__ = self.spec  # importlib set the alias's; its name stays fdl's, as `__name__` does


class _FolderSubmodules(importlib.abc.MetaPathFinder):
    """The submodules of a package `_FolderModules` served (`import pkg.sub`, `from . import x`), which Python's own
    finder would look for in the package's folder: found as it finds them, compiled from their source
    (`_from_source`). Ahead of Python's finder, for any package `_SERVED`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if path is None:
            return None
        importing = _IMPORTING.get()
        if importing is not None and any(importing.holds(entry) for entry in path):
            server: _Load | None = importing  # its package, whichever load served that name last
        else:
            folder = _SERVED.get(fullname.partition(".")[0])
            server = next((finder.load for finder in sys.meta_path if isinstance(finder, _FolderModules)
                           and finder.folder == folder), None)
        if server is None:
            return None
        for entry in list(path):
            try:
                found = importlib.machinery.PathFinder.find_spec(fullname, [entry])
            except (ImportError, OSError, ValueError):
                continue
            if found is not None and found.origin not in (None, "namespace"):
                # a portion of a namespace package elsewhere (site-packages) is not the folder's own code
                if not server.holds(entry):
                    return found
                if server.manifest is None:  # --model's: its package is imported afresh for an fdl.toml's model
                    _UNCHECKED.add(fullname.partition(".")[0])
                return _from_source(found, fullname, server)
        return None  # none, or only namespace portions: Python's finder joins them


_SUBMODULES = _FolderSubmodules()


class CompiledCodeError(ModelError):
    """The model folder of an fdl.toml holds compiled code its model's imports would run in place of the source
    a user can read, or without any (`_from_source`)."""


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """A module's code compiled from its .py each time, never read from a `__pycache__` .pyc (which need not be
    what that source compiles to: one of `invalidation_mode=UNCHECKED_HASH` is never compared with it, and the
    source's time and size it records come with a downloaded folder), nor written there."""

    def __init__(self, fullname: str, path: str, load: _Load) -> None:
        super().__init__(fullname, path)
        self.load = load

    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module run with its load's builtins, whose import statements get that load's modules (`_Load`)."""
        module.__dict__["__builtins__"] = self.load.builtins
        super().exec_module(module)
        self.load.adopt(module.__name__, module)


def _from_source(found: importlib.machinery.ModuleSpec, name: str | None,
                 load: _Load) -> importlib.machinery.ModuleSpec:
    """`found`, the spec of a module of a model's folder (None `name`: the model file itself), compiled from its
    source (`_SourceLoader`). Compiled code in its place (an extension module, which Python takes before the .py
    beside it; a .pyc of no .py) is the user's own under --model, as Python imports it; for the model of an fdl.toml
    (`load`'s manifest), it is refused: what runs would be no code anyone can read."""
    loader = found.loader
    if found.origin in (None, "namespace") or isinstance(loader, _SourceLoader):
        return found
    if isinstance(loader, importlib.machinery.SourceFileLoader):
        found.loader = _SourceLoader(loader.name, loader.path, load)
        return found
    manifest = load.manifest
    if manifest is None:
        return found
    file = Path(str(found.origin))
    stem = file.name.partition(".")[0]
    source = file.with_name(stem + ".py")
    if name is None:
        how = "which it names as the model file"
    elif source.is_file():
        how = f"which Python would import as {name} in place of its source {source.name}"
    else:
        how = f"which Python would import as {name}, and the folder holds no source of it (a .py) to read"
    raise CompiledCodeError(
        f"the model folder of {manifest} holds compiled code, which fdl does not run for an fdl.toml's model: "
        f"{file}, {how}",
        got="an extension module (.so, .pyd) or a .pyc without its .py: code that reading the fdl.toml and the "
        "files it names does not show",
        fix=f"delete {file}" + (f" (the model's import then compiles {source.name})" if source.is_file() else "")
        + ", or give --model of your own",
    )


def _module_homes(module: object) -> list[str]:
    """The file of an imported module, or the folders of a package of no file; read without an attribute lookup on
    it (a lazily loaded module would be loaded by one)."""
    try:
        spec = object.__getattribute__(module, "__dict__").get("__spec__")
    except (AttributeError, TypeError):
        return []
    places = [getattr(spec, "origin", None), *(getattr(spec, "submodule_search_locations", None) or [])]
    return [place for place in places if isinstance(place, str) and os.path.isabs(place)]


def _forget_other_folders(folder: str, *, checked: bool = False, afresh: bool = False) -> None:
    """Take out of sys.modules the modules another model folder served (`_SERVED`) whose names `folder` holds too:
    imported once, a model folder's `layers` was what the next model's `from layers import Block` got (the Python
    API analysing two runs in turn), a network of the first run's shape. A module imported otherwise stays.
    `checked`: for an fdl.toml's model, also those `folder` served to --model's code (`_UNCHECKED`), which its
    imports would get as they are, compiled code never refused (`_from_source`) in the same process. `afresh`: all
    those `folder` served, its model file run again (`resolve_model_factory`): with the neighbours it imported the
    first time, they registered into that run's registry and stayed as they were read then."""
    for name, home in list(_SERVED.items()):
        if home == folder and not afresh and not (checked and name in _UNCHECKED):
            continue
        try:
            here = importlib.machinery.PathFinder.find_spec(name, [folder])
        except (ImportError, OSError, ValueError):
            continue
        if here is None:
            continue
        del _SERVED[name]
        _UNCHECKED.discard(name)
        if any(place.startswith(home + os.sep) for place in _module_homes(sys.modules.get(name))):
            for loaded in [loaded for loaded in sys.modules if loaded == name or loaded.startswith(name + ".")]:
                del sys.modules[loaded]


def _serve_folder(folder: Path, *, first: bool, named: str | None = None, manifest: str | None = None,
                  afresh: bool = False, named_namespace_first: bool = False) -> _Load:
    """Let the code of `folder` (and fdl, for the module `named`) import the folder's modules for the rest of the
    run (the factory and forward may import them lazily), through `_FolderModules`, never through sys.path.

    first: ahead of installed modules, as Python puts a script's own folder (a model file's neighbours win, as
    in `python model.py`); else after them (the current folder for `pkg.module:factory`, which the `fdl`
    console script lacks while `python -m` has it: an installed package still wins). manifest: the fdl.toml whose
    model the folder's code is, for which compiled code there is refused (`_from_source`). afresh: the folder's
    modules imported before are imported again, as its model file is (`_forget_other_folders`).
    named_namespace_first: `named`, a namespace package of the folder, is served ahead of sys.path's finder
    (`_serve_current_folder`); the folder's other namespace packages after everything, as Python ranks a portion
    below a regular package. Returns the `_Load` whose rules and modules the folder's code gets."""
    if _SUBMODULES not in sys.meta_path:
        sys.meta_path.insert(0, _SUBMODULES)
    _follow_spawned()
    regular = _FolderModules(folder, named=named, namespaces=False, manifest=manifest)
    if first:  # ahead of another run's folder too, which may serve a module of the same name (`named`)
        _forget_other_folders(regular.folder, checked=manifest is not None, afresh=afresh)
        if afresh:
            regular.load.forget()
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(regular)
    if regular not in sys.meta_path:
        sys.meta_path.insert(0 if first else len(sys.meta_path), regular)
    namespaces = _FolderModules(folder, named=named, namespaces=True, manifest=manifest)
    if namespaces not in sys.meta_path:
        sys.meta_path.append(namespaces)
    if named_namespace_first:
        named_first = _FolderModules(folder, named=named, namespaces=True, manifest=manifest, only_named=True)
        if named_first not in sys.meta_path:
            sys.meta_path.insert(0, named_first)
    return regular.load


#: a module of a model folder that this process imported, by its top-level name: the file its loader reads (None: a
#: namespace package, compiled code), its folder and the fdl.toml whose rules it was imported under (`_ParentModules`)
_Imported = dict[str, tuple[str | None, str, str | None]]


def _imported_from_folders() -> _Imported:
    """The top-level modules of model folders sys.modules holds now: the model file's (`fdl_user_model_...`), its
    neighbours' and packages' (`_SERVED`), each with its file, folder and rules (`_Imported`)."""
    held: _Imported = {}
    for name, module in list(sys.modules.items()):
        if "." in name:
            continue
        try:  # no attribute lookup: a lazily loaded module would be loaded by one (`_module_homes`)
            spec = object.__getattribute__(module, "__dict__").get("__spec__")
        except (AttributeError, TypeError):
            continue
        loader = getattr(spec, "loader", None)
        if isinstance(loader, _SourceLoader):
            held[name] = (loader.path, loader.load.folder, loader.load.manifest)
        elif name in _SERVED:
            owner = _OWNERS.get(name)
            held[name] = (None, _SERVED[name], owner.manifest if owner is not None else None)
    return held


class _ParentModules(importlib.abc.MetaPathFinder):
    """In a process that model code started by spawn or forkserver (a ProcessPoolExecutor's, a DataLoader's workers
    under macOS's default): the model folders' modules its parent had imported (`_imported_from_folders`), which
    the pickles the parent sends it name (its function, a dataclass of model.py: `fdl_user_model_...`, on no
    sys.path), for whatever code imports them there, as the parent's sys.modules gave them to all. A spawned child of
    `python train.py` finds them on sys.path, which fdl never puts a model folder on."""

    def __init__(self, held: _Imported) -> None:
        self.held = held

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or fullname not in self.held:
            return None
        file, folder, manifest = self.held[fullname]
        try:
            found = (importlib.util.spec_from_file_location(fullname, file) if fullname.startswith("fdl_user_model_")
                     else importlib.machinery.PathFinder.find_spec(fullname, [folder]))
        except (ImportError, OSError, ValueError):
            return None
        if found is None:
            return None
        _SERVED[fullname] = folder
        return _from_source(found, None if fullname.startswith("fdl_user_model_") else fullname,
                            _load_of(folder, manifest))


def _in_spawned_child(held: _Imported) -> None:
    """Run in a spawned child as it reads what its parent prepared (`_follow_spawned`), before any pickle of model
    code: the parent's model folders served again (their code's own imports, `_serve_folder`), and the modules it had
    imported from them found by anyone (`_ParentModules`)."""
    try:
        for folder, manifest in {(folder, manifest) for _, folder, manifest in held.values()}:
            _serve_folder(Path(folder), first=True, manifest=manifest)
        sys.meta_path.insert(0, _ParentModules(held))
    except Exception:  # noqa: BLE001 - never the child's end: it runs on as it did without (its own imports work)
        return


#: What `_ForSpawnedChild` runs in the child: fdl imported there, if it can be, and `_in_spawned_child` called
_IN_CHILD = """\
try:
    from fdl_cli.checkpoints import _in_spawned_child
except Exception:
    pass
else:
    _in_spawned_child(held)
"""


class _ForSpawnedChild:
    """What a spawned child is to do first, pickled with the data multiprocessing prepares for it (`_follow_spawned`):
    unpickled there, it imports fdl and calls `_in_spawned_child`. **(choice)** A builtin `exec` of `_IN_CHILD`, not
    a reference to `_in_spawned_child`: it is unpickled before multiprocessing gives the child its parent's sys.path,
    so where fdl is on the parent's sys.path alone (a source checkout a script or notebook put there, the Python
    API) a reference could not be found and the child died, "No module named 'fdl_cli'", a process of the user's
    own that ran before fdl served model folders; the child then runs on without them."""

    def __init__(self, held: _Imported) -> None:
        self.held = held

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (_IN_CHILD, {"held": self.held})


def _follow_spawned() -> None:
    """Once a model folder is loaded: every process started by spawn or forkserver (multiprocessing's, whose
    `get_preparation_data` this wraps, once) gets the model folders' modules this process imported
    (`_ForSpawnedChild`). A forked child has them already, as it has all sys.modules."""
    import multiprocessing.spawn as spawn

    # a function of multiprocessing's own, no public API (there since Python 3.4): without it, children as before
    prepare = getattr(spawn, "get_preparation_data", None)
    if prepare is None or getattr(prepare, "fdl_follows", False):
        return

    @functools.wraps(prepare)
    def with_model_folders(name: str) -> dict[str, Any]:
        data = prepare(name)
        held = _imported_from_folders()
        if held:  # a key multiprocessing's `prepare` does not know is passed over there
            data["fdl_model_folders"] = _ForSpawnedChild(held)
        return data  # type: ignore[no-any-return]

    with_model_folders.fdl_follows = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = with_model_folders


def _folder_entry(place: Path) -> str:
    """What a folder holds for a module that `module_beside` found there, for an error: `types.py`, the package
    `types/`, the folder `types/` (a namespace package's)."""
    if place.is_dir():
        return f"the folder {place.name}/"
    return f"the package {place.parent.name}/" if place.stem == "__init__" else place.name


def shadowing_fix(exc: BaseException) -> str | None:
    """What to do where model code's import failed because its folder holds a module named like one of the standard
    library or of a library fdl runs on (`_protected_modules`), which `_FolderModules` never serves: the import got
    that module instead, and said only "cannot import name 'Widget' from 'csv' (.../lib/python3.11/csv.py)" (or
    "No module named 'csv.widgets'", or "module 'csv' has no attribute 'Widget'"). None for any other error: one
    naming no such module, raised by code of no served folder, or of a folder holding no module of that name (a
    folder of no package, `csv/` of data, which Python too passes over)."""
    if isinstance(exc, ImportError):
        name = exc.name
    elif isinstance(exc, AttributeError) and isinstance(module := getattr(exc, "obj", None), types.ModuleType):
        name = module.__name__  # `obj`: Python >= 3.10 sets it
    else:
        return None
    top = name.partition(".")[0] if isinstance(name, str) else ""
    if not top or top not in _protected_modules():
        return None
    importer = ""  # the last code of a file to run: the import's (importlib's frames are "<frozen ...>")
    trace = exc.__traceback__
    while trace is not None:
        if os.path.isabs(trace.tb_frame.f_code.co_filename) and trace.tb_frame.f_code is not _HOOK_CODE:
            importer = trace.tb_frame.f_code.co_filename
        trace = trace.tb_next
    for finder in sys.meta_path:
        if isinstance(finder, _FolderModules) and not finder.namespaces and finder.holds(importer):
            place = module_beside(top, Path(finder.folder))
            if place is not None and not place.is_dir():
                break
    else:
        return None
    if top in sys.stdlib_module_names:
        whose = "of Python's standard library"
    elif top == "fdl_cli":
        whose = "of fdl itself"
    else:
        import importlib.metadata as metadata

        dists: list[str] | None = None
        with contextlib.suppress(Exception):  # a damaged distribution's metadata
            dists = metadata.packages_distributions().get(top)
        whose = f"of {dists[0] if dists else 'a library'}, a library fdl runs on"
    shown = place.parent if place.stem == "__init__" else place
    return (f"the model's folder holds {_folder_entry(place)} ({shown}), named like the module {top} {whose}, which "
            f"fdl never takes from a model's folder (it would replace {top} for fdl and torch too): the import got "
            f"that module instead; rename it (my_{top}, say) and the imports of it")


def _raised_where(exc: BaseException) -> tuple[str, int] | None:
    """The file and line of the model's code that raised `exc`: a SyntaxError's own (its file's, which no frame
    runs), else the last frame of that code (no frame of the standard library, of fdl or of a library it runs on,
    `_protected_modules`): a neighbour's line, not the model file that imported it. None for none."""
    if isinstance(exc, SyntaxError):
        file, line = exc.filename, exc.lineno
        return (file, line) if isinstance(file, str) and os.path.isabs(file) and isinstance(line, int) else None
    where: tuple[str, int] | None = None
    trace = exc.__traceback__
    while trace is not None:
        file = trace.tb_frame.f_code.co_filename
        top = str(trace.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        if os.path.isabs(file) and top not in _protected_modules():
            where = (file, trace.tb_lineno)
        trace = trace.tb_next
    return where


def raised_at(exc: BaseException) -> str:
    """Where the model's code raised `exc`, as Python's traceback shows it, for fdl's error, which shows none:
    ` (raised at FILE, line N: CODE)` (`_raised_where`); a forward pass's line where torch raised. "" for none. A
    SyntaxError's too, whose message names the file by its name alone ("(layers.py, line 3)"): not which folder's."""
    import linecache

    where = _raised_where(exc)
    if where is None:
        return ""
    code = linecache.getline(*where).strip()
    if not code and isinstance(exc, SyntaxError) and exc.text:
        code = exc.text.strip()
    return f" (raised at {where[0]}, line {where[1]}" + (f": {code[:160]}" if code else "") + ")"


#: Errors of the model's own code, whatever its input (a library not installed, a SyntaxError in a module it imports
#: late, a name it never defined, a module without forward): no probe of another shape or dtype mends them, and
#: `import_fix` says what does.
CODE_FAULTS: tuple[type[BaseException], ...] = (ImportError, SyntaxError, NameError, NotImplementedError)


def import_fix(exc: BaseException, file: Path | str) -> str:
    """What to do where importing the model's code (`file`, or the module it names) raised `exc`, not of fdl's
    making: a library its code imports that is not installed, named, and how to install it; else fix the error in
    the file that raised it (a neighbour of `file`, whose error was said as `file`'s)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        where = _raised_where(exc)
        top = exc.name.partition(".")[0]
        return (f"install the package that provides the module {exc.name}, which {where[0] if where else file} "
                f"imports (pip install {top}, where the package is named like its module), or put the folder "
                f"that holds it on PYTHONPATH (PYTHONPATH=FOLDER fdl ...)")
    where = _raised_where(exc)
    return f"fix the error in {where[0] if where else file}"


def _wrapper_prefix(model_keys: Mapping[str, Any], ckpt: Mapping[str, Any]) -> str | None:
    """The one prefix (``net.``) that the model's keys carry beyond the checkpoint's, all of them and no other,
    as a wrapper in the --model factory adds them (`self.net = network`), or None."""
    first = next(iter(model_keys), "")
    parts = first.split(".")
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth]) + "."
        if len(model_keys) == len(ckpt) and all(prefix + key in model_keys for key in ckpt):
            return prefix
    return None


def _shape(value: Any) -> torch.Size | None:
    """A state_dict value's shape; None for a module's extra state that is no tensor (a dict, any object)."""
    return value.shape if isinstance(value, torch.Tensor) else None


def _key_report(
    path: Path, model_keys: Mapping[str, torch.Size | None], ckpt: Mapping[str, Any]
) -> str | None:
    missing = [k for k in model_keys if k not in ckpt]
    unexpected = [k for k in ckpt if k not in model_keys]
    shapes = [
        f"{shown_name(k)}: checkpoint {tuple(theirs)} vs model {tuple(ours)}"
        for k, ours in model_keys.items()
        if k in ckpt and ours is not None and (theirs := _shape(ckpt[k])) is not None and tuple(theirs) != tuple(ours)
    ]
    parts = []
    if missing:
        parts.append(f"{counted(len(missing), 'missing key')}: " + first_names(missing, 4))
    if unexpected:
        parts.append(f"{counted(len(unexpected), 'unexpected key')}: " + first_names(unexpected, 4))
    if shapes:
        parts.append(
            f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''}: "
            + "; ".join(shapes[:3])
            + ("; ..." if len(shapes) > 3 else "")
        )
    return "; ".join(parts) if parts else None


def build_model(
    loaded: LoadedCheckpoint,
    *,
    factory: Callable[..., nn.Module] | None,
    kwargs: dict[str, Any] | None = None,
    into: nn.Module | None = None,
) -> nn.Module:
    """The model in eval mode: the checkpoint's own module, or ``factory(**kwargs)`` with its weights.

    Loading is strict. When every checkpoint key carries one extra prefix (``model.`` from Lightning,
    say) that makes the keys match exactly, that prefix is dropped. ``into``: a model built earlier by
    the same factory (already on its device and dtype) whose tensors are overwritten in place, so a
    series of checkpoints pays for building and moving the model once.
    """
    path = loaded.ref.path
    if loaded.module is not None:
        try:
            return _unwrapped(loaded.module).eval()
        except NotImplementedError:  # torch.export modules are already captured in their eval graph
            return loaded.module
    if into is not None:
        model = into
    elif factory is None:
        raise ModelError(
            f"{path} holds only weights; fdl needs the model's code to use them",
            fix="pass --model path/to/model.py:build (and --model-kwargs JSON), or set model in fdl.toml",
        )
    else:
        model = _call_factory(factory, kwargs, path)
    return _load_strict(model, {**(loaded.state_dict or {}), **loaded.extra_state}, path)


@contextlib.contextmanager
def _user_code_stderr() -> Iterator[io.StringIO]:
    """Hold what user code writes to sys.stderr while it runs: passed on when it returns or raises an
    ordinary error, but kept back when it calls sys.exit (argparse's usage of "__main__.py" for fdl's
    own arguments would only mislead); `_exited` quotes its last line instead."""
    held, real = io.StringIO(), sys.stderr
    sys.stderr = held
    try:
        yield held
    except SystemExit:
        sys.stderr = real
        raise
    finally:
        if sys.stderr is held:
            sys.stderr = real
            real.write(held.getvalue())


def _exited(where: str, exc: SystemExit, said: str = "") -> ModelError:
    """User code that called sys.exit (or argparse that parsed fdl's own command line and gave up):
    it ended fdl with the script's status and no word (or argparse's usage of another program)."""
    last = said.strip().splitlines()[-1] if said.strip() else ""
    return ModelError(
        f"{where} called sys.exit({exc.code!r})",
        got="model code that runs a script when imported or called (argparse, training loop, sys.exit)"
        + (f"; it said: {last[:200]}" if last else ""),
        fix="put the script's top-level code under `if __name__ == \"__main__\":`, or move the model "
        "into a file of its own",
    )


def _arguments_fix(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> str | None:
    """What to pass when the factory's own signature refuses `kwargs` (a required argument missing, an
    argument it does not take), or None when they fit it (the error came from inside the factory).

    "missing 1 required positional argument: 'width'" said which, but the fix read "check --model and
    --model-kwargs", without the JSON that passes it."""
    import inspect

    try:
        signature = inspect.signature(factory)
        signature.bind(**kwargs)
    except ValueError:  # no signature to read (a builtin)
        return None
    except TypeError:
        pass
    else:
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = signature.parameters
    takes = [name for name, parameter in parameters.items() if parameter.kind in named]
    missing = [name for name, parameter in parameters.items()
               if parameter.kind in named and parameter.default is parameter.empty and name not in kwargs]
    open_ended = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    unknown = [] if open_ended else [name for name in kwargs if name not in takes]
    parts = []
    if missing:
        pairs = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in kwargs.items() if name not in unknown]
        example = "{" + ", ".join([*pairs, *(f"{json.dumps(name)}: VALUE" for name in missing)]) + "}"
        parts.append(f"the factory needs {', '.join(map(repr, missing))}: pass "
                     f"{'it' if len(missing) == 1 else 'them'} as --model-kwargs '{example}' (model_kwargs in fdl.toml)")
    if unknown:
        parts.append(f"it takes no {', '.join(map(repr, unknown))}: its arguments are "
                     + (", ".join(takes) if takes else "none"))
    return "; ".join(parts) or None


def _factory_name(factory: Callable[..., Any]) -> str:
    """The factory as its code names it (`build`, `Net`)."""
    return str(getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or type(factory).__name__)


def _raised_fix(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> str:
    """The fix of an error raised inside a factory whose signature took its arguments (it said only "check --model
    and --model-kwargs"): the factory and the arguments it was called with, which a wrong value among makes raise."""
    name = _factory_name(factory)
    if not kwargs:
        return (f"check --model and --model-kwargs: {name}, called without arguments, raised it; mend the model's code "
                "where it raised, or give it the arguments it needs as --model-kwargs (model_kwargs in fdl.toml)")
    given = json.dumps(dict(kwargs), default=str)
    return (f"check --model and --model-kwargs: {name}, called with --model-kwargs '{given}', raised it; give each "
            "argument a value of the type it takes (or mend the model's code where it raised)")


def _not_a_module(factory: Callable[..., Any], model: object) -> ModelError:
    """The refusal of what a factory returned that is no nn.Module, naming the factory and what to return (it said
    "the factory must return the network" of a (model, optimizer) pair, a class not derived from nn.Module, None)."""
    name = _factory_name(factory)
    kind = type(model).__name__
    said = "None" if model is None else f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"
    if isinstance(model, (tuple, list)):
        fix = f"return the network alone from {name} (`return model`, not `return model, optimizer`)"
    elif isinstance(factory, type):
        fix = (f"make {name} a torch.nn.Module (class {name}(nn.Module), calling super().__init__()), or name a "
               "factory that returns one")
    elif model is None:
        fix = f"make {name} return the network it builds (`return net`)"
    else:
        fix = f"make {name} return the torch.nn.Module it builds"
    return ModelError(
        f"the --model factory {name} returned {said}, not a torch.nn.Module",
        got=("its items: " + ", ".join(type(item).__name__ for item in model[:4])
             + (", ..." if len(model) > 4 else "")) if isinstance(model, (tuple, list)) else None,
        fix=fix,
    )


def _call_factory(factory: Callable[..., nn.Module], kwargs: dict[str, Any] | None, path: Path) -> nn.Module:
    try:
        with _user_code_stderr() as said, signals.model_code("the model's build (--model)"):
            model = factory(**(kwargs or {}))
    except SystemExit as exc:
        raise _exited(f"building the model for {path}", exc, said.getvalue()) from None
    except CompiledCodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code can raise anything
        signals.through(exc)  # a Ctrl-C met in C code the user's code ran through: not its failure
        memory = ("the model does not fit in this machine's memory: build a smaller one (--model-kwargs), or run on "
                  "a machine with more") if isinstance(exc, MemoryError) else None
        raise ModelError(
            f"building the model for {path} failed",
            # was "MemoryError: "; the machine's memory, not a line of the model's code, is what to change
            got=(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) + ("" if memory else raised_at(exc)),
            fix=(_arguments_fix(factory, kwargs or {}) or memory or shadowing_fix(exc)
                 # a lazy import in the factory: a library not installed, a neighbour's SyntaxError
                 or (import_fix(exc, "the model's code") if isinstance(exc, (ImportError, SyntaxError))
                     else _raised_fix(factory, kwargs or {}))),
        ) from None
    if not isinstance(model, nn.Module):
        raise _not_a_module(factory, model)
    model = _unwrapped(model)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, tensor in tensors if tensor.is_meta]
    if meta:
        raise ModelError(
            "the --model factory built the model on the meta device: its tensors have no storage to load "
            "the checkpoint's weights into",
            got=f"{counted(len(meta), 'tensor')} on the meta device, e.g. {meta[0]}",
            fix="build it on the CPU (drop `with torch.device('meta')` / init_empty_weights in the factory); fdl "
            "loads the weights and moves the model to --device",
        )
    if any(tensor.is_floating_point() and tensor.dtype != torch.float32 for _, tensor in tensors):
        # The checkpoint's values are loaded into float32 and the model runs in --dtype: a factory's own
        # float16/float64 would round the weights on loading and refuse the float32 probe inputs.
        model = model.float()
    return model


def _unwrapped(model: nn.Module) -> nn.Module:
    """The network inside a training script's wrappers: torch.compile's OptimizedModule (`_orig_mod`),
    DDP's and DataParallel's (`module`). Their keys carry the prefixes fdl strips from a checkpoint's, and
    the measures need neither compilation nor a process group nor a scatter over GPUs; `--layer` names are
    the network's own, whether a factory returned it wrapped or a module was pickled wrapped (a store of
    one run kept `module.head:input` at one step and `head:input` at another)."""
    while True:
        inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def without_common_prefix(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """`state` with the one prefix every key carries (``model.`` from Lightning, say) dropped; None
    when the keys do not all carry the same one. `build_model` loads such a state_dict this way."""
    heads = {key.split(".", 1)[0] for key in state}
    if len(heads) != 1 or not all("." in key for key in state):
        return None
    return {key.split(".", 1)[1]: value for key, value in state.items()}


def model_prefix(names: Iterable[str]) -> str:
    """The run of `STRIPPED_PREFIXES` that every one of a model's own state_dict names starts with
    (``module.`` for a model whose only child is an attribute named ``module``): loading strips those
    prefixes from a checkpoint's keys as DDP's and torch.compile's, so they are put back for such a
    model. "" for most models."""
    keys = list(names)
    prefix = ""
    while keys:
        more = next((p for p in STRIPPED_PREFIXES if all(k.startswith(prefix + p) for k in keys)), None)
        if more is None:
            break
        prefix += more
    return prefix


def _tied_names(model: nn.Module) -> list[list[str]]:
    """The model's state_dict names that share one tensor (tied weights: lm_head.weight = embed.weight)."""
    groups: dict[int, list[str]] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if isinstance(value, torch.Tensor):  # not an extra state: two modules' may be one object (None)
            groups.setdefault(id(value), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _with_tied(state: dict[str, torch.Tensor], tied: list[list[str]]) -> dict[str, torch.Tensor]:
    """`state` with each tied name it lacks filled from a tied name it has: safetensors' save_model()
    and transformers' save_pretrained() store a shared tensor once (lm_head.weight is dropped)."""
    filled = state
    for names in tied:
        present = next((name for name in names if name in state), None)
        if present is not None and any(name not in state for name in names):
            filled = dict(filled) if filled is state else filled
            filled.update({name: state[present] for name in names if name not in state})
    return filled


def _fitting_as(
    keys: Mapping[str, torch.Tensor], expected: dict[str, torch.Size | None], tied: list[list[str]], path: Path,
    restore: str,
) -> dict[str, torch.Tensor] | None:
    """`keys` (tied weights filled in) when they fit the model exactly, else under `restore` (the model's own
    `model_prefix`) when they fit so, else None: a Lightning `.ckpt`'s keys without its ``model.`` fit a
    --model wrapper whose network is named ``module`` (docs/usage.md) only with that put back."""
    for candidate in (dict(keys), {restore + key: value for key, value in keys.items()} if restore else None):
        if candidate is not None:
            candidate = _with_tied(candidate, tied)
            if _key_report(path, expected, candidate) is None:
                return candidate
    return None


def _fitting_prefixes(
    state: Mapping[str, torch.Tensor], expected: dict[str, torch.Size | None], tied: list[list[str]], path: Path,
    *, restore: str = "",
) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(prefix, its keys without it) for each key prefix (``model.``, ``net.backbone.``) under which the
    keys fit the model exactly (`_fitting_as`, `restore` put back where needed): a LightningModule holds the
    network under ``model.`` beside a weighted loss, a metric or an EMA copy, so its keys share no one prefix.
    Only prefixes with enough keys are tried."""
    counts: dict[str, int] = {}
    for key in state:
        parts = key.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth]) + "."
            counts[prefix] = counts.get(prefix, 0) + 1
    least = len(expected) - sum(len(names) - 1 for names in tied)
    fitting = []
    for prefix in sorted(p for p, count in counts.items() if count >= least):
        part = _fitting_as({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)},
                           expected, tied, path, restore)
        if part is not None:
            fitting.append((prefix, part))
    return fitting


def _library_renamed(
    model: nn.Module, state: dict[str, torch.Tensor], expected: dict[str, torch.Size | None], path: Path
) -> dict[str, torch.Tensor] | None:
    """The checkpoint's weights under the model's own names, as a Hugging Face-style model's
    ``from_pretrained(None, config=..., state_dict=...)`` converts them; None when the model has no such
    loader or it leaves any key missing, unused or of another shape.

    transformers 5 renamed the modules of some models (ViT: ``layers.N.attention.q_proj``) while
    ``save_pretrained()``, and so the Trainer's ``checkpoint-N/``, keep writing the older names
    (``encoder.layer.N.attention.attention.query``), which only its loader maps back (it may also split
    or fuse tensors). The model's library is the code ``--model`` runs already; no checkpoint code runs.
    What the loader prints (a load report, a progress bar) is dropped: stdout may carry --json records."""
    loader = getattr(type(model), "from_pretrained", None)
    config = getattr(model, "config", None)
    if not callable(loader) or config is None:
        return None
    held = io.StringIO()
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            loaded = loader(None, config=config, state_dict=state, output_loading_info=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a library's loader can raise anything; fdl's own error follows
        signals.through(exc)  # not the loader's failure: a Ctrl-C met in its C code
        return None
    finally:
        logging.disable(disabled)
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], nn.Module)
            and isinstance(loaded[1], Mapping)):
        return None
    converted, info = loaded
    if any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")):
        return None
    renamed = dict(converted.state_dict())
    if _key_report(path, expected, renamed) is not None or not _all_from(renamed, state):
        return None
    return renamed


def _all_from(converted: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every tensor of `converted` is, value for value, one of `state`'s (as float32), each of
    the file's used at most once (a tied weight, one tensor under two names, counts once): a loader that
    renames keys passes; one whose report left out a key it initialised afresh (transformers'
    `_keys_to_ignore_on_load_missing`), or that fused or split tensors, does not, and fdl refuses the
    checkpoint rather than measure weights it cannot trace to the file. A fresh LayerNorm's ones equal
    another LayerNorm's ones in a file at initialisation: counting is what tells them apart."""

    def digest(tensor: Any) -> tuple[tuple[int, ...], str] | None:
        """None for a value without dense float data (a meta, sparse or quantized tensor): matches nothing."""
        try:
            data = tensor.detach().to("cpu", torch.float32).contiguous()
            return tuple(data.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest()
        except Exception as exc:  # noqa: BLE001 - a library's tensor can fail in any way; refused, not a traceback
            signals.through(exc)
            return None

    def counted(tensors: Iterable[Any]) -> collections.Counter[tuple[tuple[int, ...], str] | None]:
        unique = {}
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                try:
                    identity: Any = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
                except Exception as exc:  # noqa: BLE001 - no storage (meta, sparse): each one its own
                    signals.through(exc)
                    identity = id(tensor)
                unique[identity] = tensor
        return collections.Counter(digest(tensor) for tensor in unique.values())

    held, needed = counted(state.values()), counted(converted.values())
    return None not in needed and all(count <= held[key] for key, count in needed.items())


def _renamed_fix(expected: Mapping[str, torch.Size | None], state: Mapping[str, torch.Tensor]) -> str | None:
    """The fix for weights whose shapes are the model's, in order, under other names (a training script's
    `fc1`, `head` loaded into an nn.Sequential's `0`, `2`): another class of the same sizes, where "the sizes
    say which width/depth it was" points at sizes that agree. None for any other mismatch."""
    if set(expected) == set(state) or len(expected) != len(state):
        return None
    if [tuple(shape or ()) for shape in expected.values()] != [tuple(getattr(t, "shape", ())) for t in state.values()]:
        return None

    def modules(keys: Iterable[str]) -> str:
        names = list(dict.fromkeys(key.rpartition(".")[0] or key for key in keys))
        return first_names(names, 6)

    theirs = modules(key for key in state if key not in expected)
    return (f"wrong --model? the file's tensors have the model's shapes under other names (the file's modules: "
            f"{theirs}; the model's: {modules(key for key in expected if key not in state)}): the factory builds "
            f"another class than the one whose weights were saved; build that one (the training script's), whose "
            f"modules are {theirs}")


def _extra_state_fix(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """The fix when the checkpoint lacks only the extra states (`is_extra_state`) of the model's modules (a
    safetensors file holds tensors only); None for any other mismatch."""
    missing = [key for key in expected if key not in state]
    if not missing or not all(map(is_extra_state, missing)) or any(key not in expected for key in state):
        return None
    return ("the model's modules keep extra state (get_extra_state) that the file lacks: save the whole "
            "model.state_dict() with torch.save, which holds it, or build the model without that state")


#: A LoRA adapter's tensor, as peft (`lora_A`, `lora_B`, `lora_embedding_A`, `lora_magnitude_vector`) and
#: kohya / diffusers (`lora_down`, `lora_up`) name them. **(choice)** Those names only, not any `lora_*`: a module
#: of the model's own so named (`lora_gate`) is no adapter, and its mismatches get the older "wrong --model?"
_ADAPTER_KEY = re.compile(r"(?:^|\.)lora_(?:A|B|embedding_A|embedding_B|magnitude_vector|down|up)(?:\.|$)")


def _fine_tuning_fix(model: nn.Module, expected: Mapping[str, torch.Size | None],
                     state: Mapping[str, Any]) -> str | None:
    """The fix for the mismatches a fine-tuning run's files make (None for any other): a pretrained model whose
    head has another number of outputs than the fine-tuned one's, LoRA adapters beside or instead of the base
    weights, and a backbone saved apart from its head. "Wrong --model?" sent the user to change the model that
    every fine-tuning checkpoint fits."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    file_adapters = [key for key in state if _ADAPTER_KEY.search(key)]
    model_adapters = [key for key in expected if _ADAPTER_KEY.search(key)]
    # **(choice)** the model holding adapters too, the file's are at fault only where they are named otherwise
    # (peft's saved `lora_A.weight` for the model's `lora_A.default.weight`) or where all it lacks is base weights:
    # a model one adapted layer deeper than the file lacks that layer's adapters too, a wrong --model-kwargs
    adapters_at_fault = not model_adapters or bool(missing) and (
        any(_ADAPTER_KEY.search(key) for key in unexpected) or not any(_ADAPTER_KEY.search(key) for key in missing))
    if file_adapters and adapters_at_fault:
        shown = first_names(file_adapters, 4)
        # the base weights are in the file when each tensor the model lacks has one of its shape under another
        # name (peft's `base_layer.weight` for the plain model's `weight`)
        spare = collections.Counter(tuple(_shape(state[key]) or ()) for key in unexpected if not _ADAPTER_KEY.search(key))
        needed = collections.Counter(tuple(expected[key] or ()) for key in missing)
        if missing and not needed - spare or not missing:
            return (f"the file holds LoRA adapters ({shown}) beside the base weights, which the model built "
                    "does not hold: have the factory build the model with the adapters as training wrapped "
                    "it (peft's get_peft_model with the same config), or merge them into the base weights (peft's "
                    "merge_and_unload(); W + B·A·scale) and save each step's merged state_dict")
        return (f"the file holds LoRA adapters ({shown}) without the base weights they adapt "
                f"({first_names(missing, 4)}): fdl loads each step's whole model from its file; merge each step's "
                "adapters into the base model (peft: PeftModel.from_pretrained(base, ADAPTER_DIR).merge_and_unload()) "
                "and save its state_dict, one file per step")
    if model_adapters and not file_adapters and any(_ADAPTER_KEY.search(key) for key in missing):
        return (f"the model built holds LoRA adapters ({first_names(model_adapters, 4)}) that the file "
                "lacks (weights merged, or saved before the adapters were added): build the model without them")
    if not missing and not unexpected:
        return _head_fix(model, expected, state)
    return _backbone_fix(expected, state) if missing else None


def _head_fix(model: nn.Module, expected: Mapping[str, torch.Size | None], state: Mapping[str, Any]) -> str | None:
    """The fix when only one nn.Linear's number of outputs differs: a pretrained model's head, which fine-tuning
    replaced by one of its own classes."""
    wrong = [key for key, shape in expected.items()
             if shape is not None and (theirs := _shape(state[key])) is not None and tuple(theirs) != tuple(shape)]
    modules = {key.rpartition(".")[0] for key in wrong}
    if len(modules) != 1:
        return None
    name = modules.pop()
    head = model.get_submodule(name) if name else model
    weight = _shape(state.get(f"{name}.weight" if name else "weight"))
    if not isinstance(head, nn.Linear) or weight is None or len(weight) != 2 or weight[1] != head.in_features:
        return None
    # a Sequential's index ("2") read as a count: "only the outputs of 2 differ"; so the module is named as one
    which = f"module {quoted_name(name)}" if name else "the model"
    return (f"only the outputs of {which} differ ({weight[0]} in the file, {head.out_features} in the "
            "model): a pretrained model, its head replaced for fine-tuning? Every checkpoint loads into one model; "
            "measure from the first fine-tuning checkpoint (leave this file out with --steps or --glob: the first "
            "one kept is the reference), or save the fine-tuning model before its first update (the pretrained body "
            "under the new head) as the run's first checkpoint; a file of the run itself with other outputs: "
            "--model-kwargs")


def _backbone_fix(expected: Mapping[str, torch.Size | None], state: Mapping[str, Any]) -> str | None:
    """The fix for a file that holds one module of the model alone, its keys without the module's name (a
    pretrained backbone saved apart from its head: `backbone.state_dict()`). **(choice)** Every module it fits is
    named, in the model's order: a distillation model's student and teacher of one shape both fit a file of
    either, and naming one (the first a set gave, as the hash seed fell) guessed."""
    fits = [prefix for prefix in dict.fromkeys(key.partition(".")[0] + "." for key in expected if "." in key)
            if state and all(prefix + key in expected and tuple(expected[prefix + key] or ()) == tuple(_shape(value) or ())
                             for key, value in state.items())]
    if not fits:
        return None
    rest = list(dict.fromkeys(key.partition(".")[0] for key in expected if not key.startswith(tuple(fits))))
    return (f"the file holds the weights of the model's {' or '.join(shown_name(prefix[:-1]) for prefix in fits)} "
            f"alone (its keys without {' or '.join(repr(prefix) for prefix in fits)}"
            f"{f'; none of {first_names(rest, 4)}' if rest else ''}): a part saved apart from the model, as a "
            "pretrained backbone is; fdl measures the whole model at every step: save the fine-tuning model "
            "(its backbone and new head) before its first update as the run's first checkpoint, or leave "
            "this file out (--steps or --glob)")


_QUANTIZED_MODEL_FIX = ("have the factory return the float network (before quantize_dynamic or convert): fdl loads a "
                        "quantized checkpoint's Linears dequantized into the float ones, and analyses the float model")


def _dequantized(own: Mapping[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """`state` with torch's quantized tensors (qint8, quint8: `torch.quantize_per_tensor`, per channel, a
    torch.ao model's weights) dequantized where the model's are floating point: each carries its own scale and
    zero point, so `dequantize()` gives the values it stands for, as widening a bfloat16 one does (torch's
    load_state_dict refuses to copy them). A model whose own tensor is quantized gets it as it is."""
    return {name: value.dequantize() if isinstance(value, torch.Tensor) and value.is_quantized
            and isinstance(own.get(name), torch.Tensor) and own[name].is_floating_point() else value
            for name, value in state.items()}


#: The last part of a state_dict key holding the scale of a weight stored scaled (FP8 exports' `weight_scale`,
#: `weight_scale_inv`; a scheme's own `weight.scale`, `weight.zero_point`, `input_scale`, an amax)
_SCALE_NAME = re.compile(r"(?:^|[._])(?:scales?|scale_inv|inv_scale|zero_points?|amax)$")


def _scaled_weights(path: Path, own: Mapping[str, Any], state: Mapping[str, Any]) -> CheckpointError | None:
    """The error for weights stored scaled (float8 or integers) with their scales beside them, which the model
    (its state_dict `own`) does not hold (None for any other mismatch): the values are the stored ones times, or
    divided by, scales whose scheme (multiply or divide, per tensor, row or block) only the exporter knows, so fdl
    neither loads the stored numbers as the weights nor guesses how to dequantize them. A tensor the model itself
    holds as one byte (a uint8 table, a mask) is no such weight: beside it a `scale` the model lacks is a mismatch."""
    extra = [key for key in state if key not in own]
    low = sorted({str(value.dtype).removeprefix("torch.") for key, value in state.items()
                  if isinstance(value, torch.Tensor) and isinstance(own.get(key), torch.Tensor)
                  and own[key].is_floating_point()
                  and (value.dtype.itemsize == 1 and not value.is_quantized) and value.dtype != torch.bool})
    if not extra or not low or not all(_SCALE_NAME.search(key) for key in extra):
        return None
    return CheckpointError(
        f"{path} holds {' and '.join(low)} weights stored with scales beside them: {first_names(extra, 6)}",
        got="the weights' values are the stored numbers scaled (times a scale, or divided by a scale_inv; per "
        "tensor, row or block) by a scheme fdl cannot know, and the model built by --model holds no scales",
        fix="dequantize them as your exporter defines it and save the float weights without the scales (e.g. "
        "{k: w.float() * sd[k + '_scale'] for k, w in sd.items() if k + '_scale' in sd} with the other tensors), "
        "or have --model build the network that applies the scales (its state_dict holds them)",
    )


def _not_floating_point(path: Path, own: Mapping[str, Any], state: Mapping[str, Any]) -> CheckpointError | None:
    """The error for a checkpoint whose tensors are integers, booleans or complex numbers where the
    model's are floating point (None when there is none): load_state_dict casts them without a word (complex
    ones dropping their imaginary parts, with torch's UserWarning), and every measure was computed on the
    cast values. Floating point of another precision (half, bfloat16, double, float8) is cast as before,
    and a buffer the model itself holds as an integer (BatchNorm's num_batches_tracked) is not a weight."""
    wrong = [
        (name, value.dtype, own[name].dtype) for name, value in state.items()
        if isinstance(value, torch.Tensor) and isinstance(own.get(name), torch.Tensor)
        and own[name].is_floating_point() and not value.is_floating_point()
    ]
    if not wrong:
        return None

    def shown(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")

    listed = ", ".join(f"{name} ({shown(dtype)}; the model's {shown(theirs)})" for name, dtype, theirs in wrong[:4])
    if len(wrong) > 4:
        listed += f", ... ({len(wrong)} tensors)"
    complex_ = any(dtype.is_complex for _, dtype, _ in wrong)
    return CheckpointError(
        f"{path} holds weights that are not floating point where the model's are: {listed}",
        got="loading casts them to the model's floating point without a word"
        + (" (complex ones lose their imaginary parts)" if complex_ else "")
        + ", and every measure would be computed on the cast values",
        fix="re-save the checkpoint from the trained model's floating-point weights (its state_dict, not a "
        "quantized, rounded, masked or complex copy), or move the file out of the folder (or leave it out with "
        "--glob)",
    )


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    own = model.state_dict()
    expected = {k: _shape(v) for k, v in own.items()}  # an extra state's (`is_extra_state`) is any value
    tied = _tied_names(model)
    raw, state = state, _with_tied(state, tied)
    problem = _key_report(path, expected, state)
    prefix = model_prefix(expected)
    if problem is not None and prefix:
        # The model's own names begin with `module.`: loading took the checkpoint's for DDP's and dropped it.
        restored = _with_tied({prefix + key: value for key, value in raw.items()}, tied)
        if _key_report(path, expected, restored) is None:
            state, problem = restored, None
    if problem is not None:
        stripped = without_common_prefix(raw)
        fits = _fitting_as(stripped, expected, tied, path, prefix) if stripped is not None else None
        if fits is not None:
            state, problem = fits, None
    if problem is not None:
        fitting = _fitting_prefixes(raw, expected, tied, path, restore=prefix)
        if len(fitting) == 1:
            state, problem = fitting[0][1], None
        elif fitting:
            prefixes = [prefix for prefix, _ in fitting]
            shown = "model." if "model." in prefixes else prefixes[0]
            raise CheckpointError(
                f"{path} holds the model's weights under several prefixes: "
                + ", ".join(map(quoted_name, prefixes[:6])),
                got="the keys under each fit the model built by --model exactly (an EMA or teacher copy beside "
                "the network?); fdl does not guess which to analyse",
                fix=f"pick one with --weights (e.g. --weights {shown_name(shown.rstrip('.'))}), or re-save the copy you "
                "mean",
            )
    if problem is not None:
        converted = _library_renamed(model, raw, expected, path)
        if converted is not None:
            state, problem = converted, None
    if problem is not None:
        # scalars beside the model's weights at the dict's own level (`{**sd, "step": torch.tensor(s)}`, whose
        # step discovery read; a loss saved without .item()): no weight of the model, so they are let go when
        # the rest fits it; otherwise the error below names them with the other keys
        scalars = {key for key, value in raw.items()
                   if "." not in key and isinstance(value, torch.Tensor) and value.dim() == 0 and key not in expected}
        if scalars and len(scalars) < len(raw):
            with contextlib.suppress(WeightsMismatchError):
                return _load_strict(model, {key: value for key, value in raw.items() if key not in scalars}, path)
    if problem is not None:
        scaled = _scaled_weights(path, own, state)
        if scaled is not None:
            raise scaled
        from fdl_cli.probes import X_KEYS, Y_KEYS

        wrapper = _wrapper_prefix(expected, raw)
        probe = bool(raw) and set(raw) <= {*X_KEYS, *Y_KEYS}  # a probe saved as .pt beside the checkpoints
        # the factory returns the torch.ao-quantized model: its Linears' packed params are loaded as the float
        # Linear's weight and bias (`_ao_unpacked`), which only the float network holds
        packed = [key.removesuffix("." + _PACKED) for key in expected if key.endswith("." + _PACKED)]
        raise WeightsMismatchError(
            f"the weights in {path} do not fit the model built by --model",
            got=problem + (f"; the model's keys are the checkpoint's under {wrapper!r}" if wrapper else "")
            + ("; the file holds a probe's arrays, not weights" if probe else "")
            + (f"; the model built by --model is quantized by torch.ao (its Linears hold packed weights: "
               f"{first_names(packed, 6)})" if packed else ""),
            fix=_QUANTIZED_MODEL_FIX if packed else
            (f"the --model factory wraps the network as {wrapper.rstrip('.')!r}: name that attribute `module` "
             "(self.module = net), the one prefix that fdl puts before the checkpoints' keys" if wrapper else
             "keep the probe out of the checkpoints' folder (or leave it out with --glob) and pass it as --probe"
             if probe else _renamed_fix(expected, state) or _extra_state_fix(expected, state) or
             _fine_tuning_fix(model, expected, state) or
             "wrong --model or --model-kwargs? (the sizes in the checkpoint say which width/depth it was)"),
        )
    state = _dequantized(own, state)
    not_floating = _not_floating_point(path, own, state)
    if not_floating is not None:
        raise not_floating
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(
            f"the weights in {path} do not fit the model",
            # torch's first line is "Error(s) in loading state_dict for Linear:", its reasons on the lines after
            got="; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())[:300]
            or first_line(exc) or type(exc).__name__,
            # the keys and shapes were checked above: what refused them is the model's code
            fix="the checkpoint's keys and shapes fit the model, but the model's own loading code (a load_state_dict "
            "hook, a _load_from_state_dict) refused them: mend that code, or check --model and --model-kwargs",
        ) from None
    return model.eval()


# ----------------------------------------------------------------------------------------- manifest


def _as_str_list(value: Any, key: str, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise CheckpointError(
        f"{path}: {key!r} must be a string or a list of strings",
        got=repr(value)[:100],
        fix=f'e.g. {key} = "..." or {key} = ["...", "..."]',
    )


def _nul_string(value: Any, where: str = "") -> str:
    """The key of fdl.toml's `value` (as `probe`, `probe[1]` or `probe.train`) whose string holds a NUL byte (TOML's
    "\\u0000"); "" when none does. Such a path was os.stat's or realpath's ValueError, a traceback.
    model_kwargs is the factory's own to judge."""
    if isinstance(value, str):
        return where if "\0" in value else ""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{where}[{key}]" if isinstance(value, list) else f"{where}.{key}" if where else str(key)
        found = inner if "\0" in inner else "" if inner == "model_kwargs" else _nul_string(item, inner)
        if found:
            return found
    return ""


def _manifest_path(base: Path, text: str) -> Path:
    """A path fdl.toml gives, absolute: `~` (`~user`) is the home folder, as the shell makes `--probe ~/x`;
    any other relative path is relative to the file's folder (a symbolic link's own folder, as a copy's).
    Environment variables are not expanded (`$DATA/x` is that path in the folder), as nowhere in fdl."""
    return (base / os.path.expanduser(text)).resolve()


def _manifest_probe(base: Path, text: str, path: Path) -> str:
    """A probe of fdl.toml's `probe` string or list as a --probe spec, its path resolved against the file's
    folder: `"train=a.npz"` is named as on the command line (it was taken for a file named `train=a.npz`),
    unless the folder holds a file of that name; a name the command line refuses (`my probe=a.npz`, which was
    looked for as a file of that whole text) is refused here too, naming the fdl.toml (`path`), as is a name
    without a path (`train=`, read as a file of that name)."""
    from fdl_cli.probes import is_named_probe

    name, _, rest = text.partition("=")
    if is_named_probe(text) and not rest.strip() and not (base / text).exists():
        # `train=` was read as a file named `train=`: the command line's refusal of `--probe train=`
        raise CheckpointError(f"{path}: probe {text!r} has no path after '='",
                              fix=f'e.g. probe = "{name}=a.npz" in {path}')
    if is_named_probe(text) and rest and not (base / text).exists():
        _check_manifest_probe_name(name, path, example=('probe = "', f'={rest}"'))
        return f"{name}={_manifest_path(base, rest)}"
    return str(_manifest_path(base, text))


def _check_manifest_probe_name(name: str, path: Path, *, example: tuple[str, str]) -> None:
    """Refuse a probe name of fdl.toml `path` as --probe's are (`probes.probe_name_fault`); `example` is the fix's
    line before and after the name made usable (not a format string: the probe's path may hold '{')."""
    from fdl_cli.probes import probe_name_fault, usable_probe_name

    if (fault := probe_name_fault(name)) is not None:
        before, after = example
        raise CheckpointError(f"{path}: {fault}", fix=f"e.g. {before}{usable_probe_name(name)}{after} in {path}")


def read_manifest(folder: Path) -> Manifest | None:
    """Read ``folder/fdl.toml`` if present; ``None`` when there is none.

    Keys: ``model`` (spec; a file path in it is made absolute), ``model_kwargs`` (table), ``probe``
    (path, list of paths or table name -> path; returned as ``--probe`` specs with absolute paths:
    `_manifest_path`),
    ``layer`` (name or list), ``weights``; every other key lands in ``options`` (checked by the
    pipeline, `manifests.MANIFEST_OPTIONS`). A dash in a key is read as an underscore (``top-k``)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(folder) / MANIFEST_NAME
    kind = special_file(path)
    if kind is not None:  # ignored, its options with it; read, a FIFO waits for ever and /dev/zero never ends
        raise CheckpointError(f"cannot read the manifest {path}", got=f"it is {kind}, not a regular file",
                              fix="replace it by a TOML file, or remove it and give the options on the command line")
    try:
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        try:
            os.listdir(folder)
        except OSError:
            return None  # the folder itself cannot be looked into: the search for checkpoints says so
        got, fix = _os_reason(path, exc)
        fix += "; or move it away and give the options on the command line"
        raise CheckpointError(f"cannot read the manifest {path}", got=got, fix=fix) from None
    except UnicodeDecodeError as exc:  # a ValueError, not an OSError: it was a traceback
        line = exc.object[:exc.start].count(b"\n") + 1
        raise CheckpointError(
            f"{path} is not UTF-8 text, as TOML must be",
            got=f"byte {exc.object[exc.start]:#04x} on line {line}, which UTF-8 does not read ({exc.reason})",
            fix="save it as UTF-8 (an editor's 'save with encoding', or `iconv -f latin1 -t utf-8`)",
        ) from None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid TOML",
            got=str(exc),
            fix='fix the file; e.g. model = "model.py:build"  probe = "probe.npz"',
        ) from None
    nul = _nul_string(data)
    if nul:
        raise CheckpointError(f"{path}: {nul!r} holds a NUL byte (\\u0000), which no path or name can hold",
                              fix=f"remove the NUL from {nul!r} in {path}")
    keys = [str(key).replace("-", "_") for key in data]  # anchor-size as anchor_size, as on the command line
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise CheckpointError(
            f"{path} sets {twice[0]} twice (as {twice[0]} and {twice[0].replace('_', '-')})", fix="keep one of them"
        )
    data = {str(key).replace("-", "_"): value for key, value in data.items()}
    base = path.parent
    model = data.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise CheckpointError(
            f"{path}: 'model' must be a string", got=repr(model)[:100], fix='e.g. model = "model.py:build"'
        )
    if model is not None:
        target, sep, attr = model.rpartition(":")
        if sep and (target.endswith(".py") or "/" in target) and not Path(target).is_absolute():
            model = f"{_manifest_path(base, target)}:{attr}"
    kwargs = data.pop("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"{path}: 'model_kwargs' must be a table",
            got=repr(kwargs)[:100],
            fix="e.g. model_kwargs = { hidden = 64 }",
        )
    raw_probe = data.pop("probe", None)
    if isinstance(raw_probe, dict):
        if not all(isinstance(p, str) and p for p in raw_probe.values()):
            raise CheckpointError(
                f"{path}: each probe of the 'probe' table must be a path (a string)", got=repr(raw_probe)[:100],
                fix='e.g. probe = { train = "train.npz", test = "test.npz" }',
            )
        for name, p in raw_probe.items():
            _check_manifest_probe_name(name, path, example=("probe = { ", f' = "{p}" }}'))
        probes = [f"{name}={_manifest_path(base, str(p))}" for name, p in raw_probe.items()]
    else:
        probes = [_manifest_probe(base, p, path) for p in _as_str_list(raw_probe, "probe", path)]
    layers = _as_str_list(data.pop("layer", None), "layer", path)
    weights = data.pop("weights", None)
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise CheckpointError(
            f"{path}: 'weights' must be a non-empty string", got=repr(weights)[:100],
            fix='e.g. weights = "state_dict_ema" (an entry of the checkpoints) or weights = "ema" (a key prefix)',
        )
    return Manifest(
        path=path, model=model, model_kwargs=dict(kwargs), probe=probes, layer=layers, options=data,
        weights=weights,
    )
