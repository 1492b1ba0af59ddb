"""The HDF5 store of one run: its schema, its crash-safe single writer and its readers (the only module that
imports h5py at its top; probes.py imports it lazily to read a user's .h5 probe, never a store).

Layout (schema_version 1; docs/store.md has the full account)::

    /                                   attrs: format="fdl-store", schema_version=1 (int), fdl_version,
                                               created (ISO 8601 UTC), provenance (JSON object as a string),
                                               history (JSON list: the invocations that stored checkpoints),
                                               dropped (JSON list: the checkpoints `fdl analyze --drop` removed;
                                               absent until one did)
                                               refused (JSON list: the checkpoints `fdl analyze` refused for their
                                               values, NaN weights or an overflow, that the store lacks; absent: none)
                                               pending_series (JSON list of [probe, layer]: series added to
                                               the store that some checkpoints lack yet; absent: none)
    /probes/<probe>/                    attrs: sha256, n, task ("classes"|"regression"|"none"), n_outputs,
                                               zero_one_targets (bool: float targets of 0 and 1 alone, whose
                                               loss and r2 compare the raw outputs with 0/1; absent in older
                                               stores: not recorded), x_sha256 (sha256 of the inputs alone,
                                               `probes.inputs_digest`; absent: not recorded),
                                               chance_accuracy, label_entropy (class labels: the largest
                                               class's share, the labels' entropy; absent: not recorded)
                                               anchor_skew (JSON object: the anchor subset misrepresents
                                               the probe's classes, `probes.anchor_class_skew`; absent: it
                                               does not, or not recorded)
        anchor_x (m,) f64               optional: only for 1-D float inputs (for e_k(x) plots)
        anchor_y (m, ...) f64           optional, beside anchor_x (class labels as floats too; int64 if a caller
                                        passes integers)
    /checkpoints/step_<step>/           attrs: step, path, sha256, file_signature, history (index into the root's
                                               history; absent: not recorded), then complete=True written last
        <probe>/<layer>/                attrs: each MEASURE field that applies (absent attribute = null);
                                               history (only on a series added to the checkpoint later)
            eigenvalues    (r,)  f64    all r eigenvalues, descending
            eigenvectors   (p,K) f64    top-K
            eigenfunctions (m,K) f32    top-K on the anchor subset
            utility        (r,)  f64    Q̂_k
            quality        (r,)  f64    Q*_k; absent without targets
            feature_mean   (p,)  f64    absent unless features were centered
            r2_outputs     (C,)  f64    R² of each output, NaN for a constant target column; only for
                                        regression targets of C > 1 outputs (absent in older stores)
    /trajectories/<probe>/<layer>/<field>   one value per complete checkpoint, sorted by step:
        step i64; path, sha256, regime: variable-length utf-8 ("" = null);
        every other MEASURE field f64 (NaN = null, i.e. the field does not apply)

Writing is copy-on-write: a commit copies the store to ``STORE.h5.tmp-<pid>``, adds to the copy,
fsyncs it and renames it over the store, so a reader or a kill -9 only ever meets a complete store.
HDF5 writes the copy through `_GuardedFile`: a write the system refuses (no space, a quota, ulimit -f)
stops the commit, the copy deleted, and never reaches HDF5, whose failed close could crash the process.
Commits run one at a time in a background thread of the writer, which reports an entry only once
the commit holding it is durable; a scheduler thread of the writer starts each due commit when the
caller's thread makes no call (it may be stuck in one long forward pass).
One writer at a time holds ``STORE.h5.lock`` (flock); readers take no lock (but test it for a moment where
no store is yet, `_live_writer`).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import re
import shlex
import shutil
import socket
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from fdl_cli import __version__, signals
from fdl_cli.errors import (
    StoreError,
    StoreLockedError,
    counted,
    first_few,
    io_error,
    size_text,
    special_file,
    special_kind,
    special_store,
    write_refused,
)
from fdl_cli.fields import (
    ADDED_FIELDS,
    CHECKPOINT_FIELDS,
    INT_FIELDS,
    MEASURE_FIELDS,
    R2_OUTPUT_FIELDS,
    RECORD_FIELDS,
    SERIES_FIELDS,
    STR_FIELDS,
    WHOLE_MODULES,
)
from fdl_cli.options import overlap_k_recorded

SCHEMA_VERSION = 1
#: Provenance keys recorded for the reader's information but ignored when a store is resumed.
# environment: a store may be resumed on another host. reference_sha256, model_sha256: checked by the
# pipeline itself, with its own message, and absent from stores written before they were recorded.
UNCOMPARED_PROVENANCE = frozenset(
    {"environment", "reference_sha256", "model_sha256", "probe_order", "model_file", "model_file_sha256"}
)
STORE_FORMAT = "fdl-store"
PROBE_TASKS = ("classes", "regression", "none")

#: Stored dtype of every per-checkpoint array; the first four are required.
_ARRAY_DTYPES: dict[str, type[np.generic]] = {
    "eigenvalues": np.float64,
    "eigenvectors": np.float64,
    "eigenfunctions": np.float32,
    "utility": np.float64,
    "quality": np.float64,
    "feature_mean": np.float64,
    # R² of each output: regression targets of C > 1 outputs only; absent in stores written before it (read
    # as None, never a reader warning), and an fdl before it ignores the dataset (it reads the arrays it names)
    "r2_outputs": np.float64,
}
#: The number of dimensions of each stored array (`SeriesEntry` checks them, and so does `StoreReader.array`).
_ARRAY_NDIMS = {"eigenvalues": 1, "eigenvectors": 2, "eigenfunctions": 2, "utility": 1, "quality": 1, "feature_mean": 1,
                "r2_outputs": 1}
_REQUIRED_ARRAYS = ("eigenvalues", "eigenvectors", "eigenfunctions", "utility")
_STEP_GROUP = re.compile(r"^step_(-?\d+)$")
_TMP_SUFFIX = re.compile(r"\.tmp-(\d+)$")
# Commits wait at least this many times the last commit's duration, so copying costs <= ~10 %.
_THROTTLE_FACTOR = 10.0
#: A commit starts, throttle or not, once the checkpoints waiting for one hold this many bytes of
#: arrays: the throttle's wait grows with the store (a commit copies it), and a run of quick checkpoints
#: into a large store held ~0.5 GB of them (docs/benchmarks.md (e)), which with k = C = 1 000 columns
#: (~32 MB a checkpoint at p = 2 048) would be many GB. Copying then costs more than 10 % of the run.
BUFFER_BYTES = 1 << 30
_TRAJECTORY_CHUNK = 256
# HDF5 >= 1.10 object formats: chunked datasets with one chunk need no B-tree (files ~7x smaller).
_LIBVER = ("v110", "v110")
_STR = h5py.string_dtype("utf-8")

Scalar = float | int | str | None
Series = tuple[str, str]


# --------------------------------------------------------------------------------------------------
# Entries


def _check_name(kind: str, name: object, *, identifier: bool) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if "/" in name or name in (".", ".."):
        raise ValueError(f"{kind} name {name!r} cannot be stored: it may not contain '/' or be '.'/'..'")
    if identifier and not name.isidentifier():
        raise ValueError(f"probe name {name!r} must be an identifier (letters, digits, '_')")
    return name


def _normalize_scalar(name: str, value: object) -> Scalar:
    """One MEASURE value as a plain Python int/float/str, or None; NaN counts as null."""
    if value is None:
        return None
    if name in STR_FIELDS:
        if not isinstance(value, str) or not value:
            raise ValueError(f"scalar {name!r} must be a non-empty str or None, got {value!r}")
        return value
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"scalar {name!r} must be a number or None, got the bool {value!r}")
    if name in INT_FIELDS:
        # An integral float (a count computed in float arithmetic) is accepted; 2.5 is a bug upstream.
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return int(value)
        raise ValueError(f"scalar {name!r} must be an int or None, got {value!r}")
    if not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"scalar {name!r} must be a float or None, got {value!r}")
    number = float(value)
    return None if math.isnan(number) else number


def _normalize_scalars(scalars: Mapping[str, object]) -> dict[str, Scalar]:
    unknown = sorted(set(scalars) - set(MEASURE_FIELDS))
    if unknown:
        raise ValueError(f"unknown scalar field{'s' if len(unknown) > 1 else ''} {unknown}; the known ones are "
                         "fdl_cli.fields.MEASURE_FIELDS")
    return {name: _normalize_scalar(name, scalars.get(name)) for name in MEASURE_FIELDS}


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


@dataclass(frozen=True, eq=False)
class ProbeInfo:
    """A probe set as the store records it; anchors are kept only for 1-D inputs (e_k(x) plots)."""

    name: str
    sha256: str
    n: int
    task: str
    n_outputs: int
    anchor_x: np.ndarray | None = None
    anchor_y: np.ndarray | None = None
    #: float regression targets of 0 and 1 alone (multi-label, or a binary classifier's as floats;
    #: `probes.zero_one_targets`): loss and r2 then compare the raw outputs, logits for a sigmoid model, with
    #: 0/1. None: not recorded (a store written before the nineteenth session). Derived from the probe file
    #: (its sha256 is compared), so not part of equality: an older store resumes, and gets it recorded.
    zero_one_targets: bool | None = None
    #: sha256 of the probe's inputs alone (`probes.inputs_digest`): `fdl compare` takes two probes of the same
    #: inputs and different targets as one for the cross-run overlap. None: not recorded (a store written
    #: before it was). Derived from the probe file, so not part of equality.
    x_sha256: str | None = None
    #: for class labels, what a guess that ignores the input scores at best (`probes.label_chance`): the largest
    #: class's share of the labels, and their entropy (natural log), against which `fdl classify` reads accuracy
    #: and cross-entropy. None: not recorded (other targets, or a store written before the twenty-seventh
    #: session; classify then takes 1/C and log C). Derived from the probe file, so not part of equality.
    chance_accuracy: float | None = None
    label_entropy: float | None = None
    #: for class labels whose anchor subset (the first m rows) misrepresents the probe's classes, what analyze warned
    #: (`probes.anchor_class_skew`: m, n, held, classes, distance, random), which report and classify repeat, since
    #: CKA, the overlaps and the regime see those rows alone. None: no such skew, or not recorded (a store written
    #: before it was). Derived from the probe file and --anchor-size, so not part of equality.
    anchor_skew: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _check_name("probe", self.name, identifier=True)
        if self.task not in PROBE_TASKS:
            raise ValueError(f"probe {self.name!r}: task must be one of {PROBE_TASKS}, got {self.task!r}")
        for attr in ("n", "n_outputs"):
            value = getattr(self, attr)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
                raise ValueError(f"probe {self.name!r}: {attr} must be an int >= 0, got {value!r}")
            object.__setattr__(self, attr, int(value))
        if self.zero_one_targets is not None:
            object.__setattr__(self, "zero_one_targets", bool(self.zero_one_targets))
        if self.anchor_x is not None:
            object.__setattr__(self, "anchor_x", np.ascontiguousarray(self.anchor_x, dtype=np.float64))
        if self.anchor_y is not None:
            anchor_y = np.asarray(self.anchor_y)
            dtype = np.int64 if np.issubdtype(anchor_y.dtype, np.integer) else np.float64
            object.__setattr__(self, "anchor_y", np.ascontiguousarray(anchor_y, dtype=dtype))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProbeInfo):
            return NotImplemented
        return (self.name, self.sha256, self.n, self.task, self.n_outputs) == (
            other.name,
            other.sha256,
            other.n,
            other.task,
            other.n_outputs,
        ) and all(_arrays_equal(getattr(self, a), getattr(other, a)) for a in ("anchor_x", "anchor_y"))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SeriesEntry:
    """One (probe, layer) analysis of one checkpoint.

    `scalars` is normalized to every MEASURE field in order (None = null, NaN -> None) and the arrays
    to their stored dtypes, so an entry read back from the store compares equal to the one written.
    Shapes: eigenvalues, utility, quality (r,); eigenvectors (p, K); eigenfunctions (m, K);
    feature_mean (p,); r2_outputs (C,) (NaN: a constant target column).
    """

    probe: str
    layer: str
    scalars: Mapping[str, Scalar]
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    eigenfunctions: np.ndarray
    utility: np.ndarray
    quality: np.ndarray | None = None
    feature_mean: np.ndarray | None = None
    r2_outputs: np.ndarray | None = None
    #: which `fdl analyze` computed this series, as its row of the store's `history`, where that is not the
    #: invocation of its checkpoint (`CheckpointEntry.computed_by`): a series added to a stored checkpoint
    #: later (a resume with another probe or layer). None: its checkpoint's. Read back from the series'
    #: `history` attribute (`StoreReader.arrays`), so a checkpoint stored again keeps it. Not compared.
    computed_by: str | None = None

    def __post_init__(self) -> None:
        _check_name("probe", self.probe, identifier=True)
        _check_name("layer", self.layer, identifier=False)
        if self.computed_by is not None and not isinstance(self.computed_by, str):
            raise ValueError(f"series computed_by must be a str or None, got {self.computed_by!r}")
        object.__setattr__(self, "scalars", _normalize_scalars(self.scalars))
        for name, dtype in _ARRAY_DTYPES.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.ascontiguousarray(value, dtype=dtype))
        where = f"series {self.probe}/{self.layer}"
        for name, ndim in _ARRAY_NDIMS.items():
            value = getattr(self, name)
            if value is not None and value.ndim != ndim:
                raise ValueError(f"{where}: {name} must be {ndim}-D, got shape {value.shape}")
        rank = self.eigenvalues.shape
        for name in ("utility", "quality"):
            value = getattr(self, name)
            if value is not None and value.shape != rank:
                raise ValueError(f"{where}: {name} must have the shape {rank} of eigenvalues, got {value.shape}")
        if self.eigenvectors.shape[1] != self.eigenfunctions.shape[1]:
            raise ValueError(
                f"{where}: eigenvectors (p, K) {self.eigenvectors.shape} and eigenfunctions (m, K) "
                f"{self.eigenfunctions.shape} must have the same K"
            )
        if self.feature_mean is not None and self.feature_mean.shape != self.eigenvectors.shape[:1]:
            raise ValueError(
                f"{where}: feature_mean must have shape (p,) = {self.eigenvectors.shape[:1]}, got {self.feature_mean.shape}"
            )
        outputs = self.scalars.get("n_outputs")
        if self.r2_outputs is not None and outputs is not None and self.r2_outputs.shape != (outputs,):
            raise ValueError(f"{where}: r2_outputs must have shape (C,) = ({outputs},), got {self.r2_outputs.shape}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeriesEntry):
            return NotImplemented
        return (
            self.probe == other.probe
            and self.layer == other.layer
            and dict(self.scalars) == dict(other.scalars)
            and all(_arrays_equal(getattr(self, a), getattr(other, a)) for a in _ARRAY_DTYPES)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class CheckpointEntry:
    """Everything the store keeps of one checkpoint: its identity and one SeriesEntry per (probe, layer)."""

    step: int
    path: str
    sha256: str
    series: tuple[SeriesEntry, ...] = field(default=())
    #: the file's size and modification time when it was read (`checkpoints.file_signature`); "" when
    #: unknown. A resume hashes a stored checkpoint's file again only when this differs.
    file_signature: str = ""
    #: which `fdl analyze` computed it, as its row of the store's `history` (a JSON object's text): None
    #: for the writer's own invocation (`StoreWriter(invocation=...)`), "" when unknown (stored before fdl
    #: kept a history). An entry read back (`StoreReader.entry`) carries the row it was stored with, so
    #: one stored again unchanged or with its comparisons taken again (a successor refresh, a checkpoint
    #: taken in from a torchrun part store) keeps it. Not compared.
    computed_by: str | None = field(default=None, compare=False)
    #: the entry holds series to add to the stored checkpoint of its step, which keeps its other series and
    #: its own attributes (path, sha256, file signature, history): a resume that adds a probe or a layer to
    #: a store (`StoreWriter.lacking`). False: the entry is the whole checkpoint, replacing a stored one.
    series_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.step, int | np.integer) or isinstance(self.step, bool):
            raise ValueError(f"checkpoint step must be an int, got {self.step!r}")
        object.__setattr__(self, "step", int(self.step))
        for attr in ("path", "sha256"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise ValueError(f"checkpoint {attr} must be a non-empty str, got {getattr(self, attr)!r}")
        if not isinstance(self.file_signature, str):
            raise ValueError(f"checkpoint file_signature must be a str, got {self.file_signature!r}")
        if self.computed_by is not None and not isinstance(self.computed_by, str):
            raise ValueError(f"checkpoint computed_by must be a str or None, got {self.computed_by!r}")
        series = tuple(self.series)
        if not all(isinstance(s, SeriesEntry) for s in series):
            raise ValueError("checkpoint series must be SeriesEntry objects")
        keys = [(s.probe, s.layer) for s in series]
        if len(set(keys)) != len(keys):
            raise ValueError(f"checkpoint step {self.step}: a (probe, layer) appears twice in {keys}")
        object.__setattr__(self, "series", series)


# --------------------------------------------------------------------------------------------------
# Small helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


#: HDF5's refusal to open a file this process holds open already with other file-locking flags
_LOCKING_MISMATCH = re.compile(r"file locking .*flag values don't match")


def _open_read_only(path: Path) -> h5py.File:
    """The store at `path`, read-only and without a file lock (the writer replaces the file, never edits
    it, so a reader needs none, and none fails on a file system without locks).

    HDF5 opens a file once a process and refuses a second opening with other locking flags: a notebook's
    `h5py.File(path)`, h5py's default locking, still open made every StoreReader of it fail as a corrupt
    store. The reader then shares that opening, with its flags."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if not _LOCKING_MISMATCH.search(str(exc)):
            raise
        refusal = exc
    for locking in (None, True, "best-effort"):  # h5py's default (HDF5_USE_FILE_LOCKING's), then the others
        try:
            return h5py.File(path, "r", locking=locking)
        except OSError as exc:
            if not _LOCKING_MISMATCH.search(str(exc)):
                raise
    raise refusal


def _text(name: object) -> str:
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)


def data_files(dataset: h5py.Dataset) -> list[str]:
    """The other files HDF5 reads `dataset`'s data from (and writes it to), as named in the file: its external
    storage, or a virtual dataset's sources ("." its own file, left out); [] for data held in the file. Opens
    none of them."""
    plist = dataset.id.get_create_plist()
    names = [plist.get_external(index)[0] for index in range(plist.get_external_count())]
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        names += [plist.get_virtual_filename(index) for index in range(plist.get_virtual_count())]
    return [_text(name) for name in names if _text(name) != "."]


def files_named(group: h5py.Group, key: str) -> list[str]:
    """The other files `group[key]` is read from: an external link's, or a dataset's (`data_files`). Opens none
    of them (a FIFO that HDF5 opens hangs the read, past Ctrl-C)."""
    link = group.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return [_text(link.filename)]
    node = group.get(key) if isinstance(link, h5py.HardLink) else None
    return data_files(node) if isinstance(node, h5py.Dataset) else []


def _outside_error(store: str, where: str, named: str) -> StoreError:
    return StoreError(
        f"{store} is not a store as fdl writes one: its {where} is read from {named}, another file",
        fix="fdl reads and writes a store's arrays only in the store itself (no HDF5 external link, external "
            "storage or virtual dataset, whose file, a FIFO say, HDF5 would open): use the store as `fdl analyze` "
            "wrote it, or rebuild it with `fdl analyze ... --overwrite`",
    )


#: A dataset may declare up to this many times the bytes HDF5 holds for it in the file (fdl writes every chunk,
#: uncompressed; `h5repack -f GZIP=9` compresses its floats a few times at most), or up to _DECLARED_FREE bytes.
_DECLARED_PER_HELD = 32
_DECLARED_FREE = 16 << 20


def _inside(dataset: h5py.Dataset) -> h5py.Dataset:
    """`dataset`, refused (StoreError) before it is read when its data lies in another file (`data_files`), or when
    it declares far more data than the file holds for it: chunks never written (read as the fill value) or a
    "gzip bomb", which a read would allocate whole (a 10⁹-element dataset of a 1 MB store took 8 GB)."""
    named = data_files(dataset)
    if named:
        raise _outside_error(dataset.file.filename, dataset.name, named[0])
    plist = dataset.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(index)
        if not h5py.h5z.filter_avail(code):  # HDF5 said "can't open directory (/usr/local/lib/plugin)", not this
            raise StoreError(
                f"{dataset.file.filename} cannot be read here: its {dataset.name} is compressed with the HDF5 filter "
                f"{code}{f' ({_text(name)})' if name else ''}, which this HDF5 does not have",
                fix="set HDF5_PLUGIN_PATH to a folder holding that filter's plugin (hdf5plugin installs many), or, "
                    "where it is installed, write a copy without filters: `h5repack -f NONE STORE COPY`",
            )
    declared = dataset.size * dataset.dtype.itemsize
    held = dataset.id.get_storage_size()
    if declared > max(_DECLARED_FREE, _DECLARED_PER_HELD * held):
        raise StoreError(
            f"{dataset.file.filename} is not a store as fdl writes one: its {dataset.name} declares "
            f"{size_text(declared)} of data (shape {dataset.shape}) but holds {size_text(held)} in the file",
            fix="fdl writes every array whole and uncompressed, and reads none that would expand so far (chunks never "
                "written, or compressed like a zip bomb): use the store as `fdl analyze` wrote it, or rebuild it with "
                "`fdl analyze ... --overwrite`",
        )
    return dataset


def _short(value: object, limit: int = 80) -> str:
    """`value` as a message quotes it, cut to `limit` characters; a numpy scalar (what h5py reads an attribute as) as
    the number or truth it holds, `1.5`, `True`: numpy 2 writes `np.float64(1.5)`, `np.True_`."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value[()])
    return str(value)


def _to_python(name: str, value: object) -> Scalar:
    """An HDF5 attribute value of a record field as the record's Python type."""
    if value is None:
        return None
    if name in STR_FIELDS:
        text = _as_str(value)
        return text or None
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return None
    return int(number) if name in INT_FIELDS else number


def _provenance_series(provenance: Mapping[str, Any]) -> frozenset[Series] | None:
    """The (probe, layer) series a provenance names (its probes × layers: an fdl analyze store's); None
    where it names none."""
    probes, layers = provenance.get("probes"), provenance.get("layers")
    if isinstance(probes, dict) and probes and isinstance(layers, list) and layers:
        if all(isinstance(name, str) for name in [*probes, *layers]):
            return frozenset((probe, layer) for probe in probes for layer in layers)
    return None


def _normalized_provenance(provenance: Mapping[str, Any]) -> dict[str, Any]:
    try:
        normalized = json.loads(json.dumps(dict(provenance), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance must be JSON-serializable: {exc}") from None
    assert isinstance(normalized, dict)
    return normalized


def history_row(invocation: Mapping[str, Any]) -> str:
    """One `fdl analyze` invocation as a row of the store's `history`: its JSON text, keys sorted (rows
    are matched by this text)."""
    try:
        return json.dumps(dict(invocation), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invocation must be JSON-serializable: {exc}") from None


def _canonical_row(text: str) -> str | None:
    """A row's text as `history_row` writes it; None when it is no JSON object."""
    try:
        row = json.loads(text)
    except ValueError:
        return None
    return history_row(row) if isinstance(row, dict) else None


#: The first 8 bytes of every HDF5 file fdl writes (its superblock is at offset 0).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def first_bytes(path: Path) -> bytes:
    """The first len(HDF5_SIGNATURE) bytes of `path`; b"" when it cannot be read, or is no regular file:
    reading a pipe or a FIFO (`--out /dev/stdout | gzip`) would wait for bytes that never come, or
    take those meant for its reader."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_SIGNATURE))
    except OSError:
        return b""


def _same_model_code(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Two provenances whose --model specs name the same factory of the same file, in code of the same
    sha256.

    The spec is recorded as typed, so `model.py:build`, `./model.py:build` and `/abs/model.py:build` (a
    job started from another folder) differ as text while naming the same code. The same file (its
    absolute path, `model_file`, and content, `model_file_sha256`) and the same factory's code
    (`model_sha256`) say they are the same model; the factory's code alone does not (two files that
    each configure one shared factory, `build = make_builder(nn.ReLU)` against `nn.Tanh`). Stores
    written before `model_file` was recorded keep the spec's text.

    A run moved whole to another folder (an artifact unpacked elsewhere: the model file with the checkpoints)
    names its model file by another path. **(choice)** Once the recorded file is gone, a file of the same
    content and factory code is the moved one, as the checkpoints found at their steps in the new folder are
    checked against the stored ones (docs/store.md); while the recorded file is there, another path is another
    model, whose folder's other modules may differ."""
    recorded = old.get("model_file")
    same_file = isinstance(recorded, str) and (recorded == new.get("model_file") or not os.path.lexists(recorded))
    return same_file and _same_model_content(old, new)


def _same_model_content(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Two provenances whose --model specs name the same factory in files of the same sha256, wherever they lie."""
    spec_old, spec_new = old.get("model"), new.get("model")
    same = [old.get(key) == new.get(key) and isinstance(old.get(key), str)
            for key in ("model_sha256", "model_file_sha256")]
    return (
        isinstance(spec_old, str) and isinstance(spec_new, str) and all(same)
        and spec_old.rpartition(":")[2] == spec_new.rpartition(":")[2]
    )


def _dict_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values, as 'key: old (store) vs new (this run)'."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                lines.append(f"{where}: absent (store) vs {_short(new[key])} (this run)")
            elif key not in new:
                lines.append(f"{where}: {_short(old[key])} (store) vs absent (this run)")
            else:
                lines.extend(_dict_diff(old[key], new[key], where))
        return lines
    if old == new:
        return []
    return [f"{prefix or '(root)'}: {_short(old)} (store) vs {_short(new)} (this run)"]


def _renamed_by_unwrapping(old: Any, new: Any) -> tuple[str, str] | None:
    """(a stored layer label, this run's) when the run's labels are the store's without wrapper prefixes
    (`module.2:input` and `2:input`), else None. Only on the way to an error of `fdl analyze`, which has
    torch loaded already (`extract` imports it)."""
    if not (isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new):
        return None
    if not all(isinstance(label, str) for label in [*old, *new]):
        return None
    from fdl_cli.checkpoints import unwrapped_name

    if any(unwrapped_name(stored) != label for stored, label in zip(old, new, strict=True)):
        return None
    return next((stored, label) for stored, label in zip(old, new, strict=True) if stored != label)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:  # some platforms cannot open a directory; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trajectory_column(name: str, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    values = [row[name] for row in rows]
    if name in STR_FIELDS:
        return np.array([v or "" for v in values], dtype=object)
    if name == "step":
        return np.array(values, dtype=np.int64)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _column_values(name: str, column: np.ndarray) -> list[Scalar]:
    """A trajectory column (as read) as Python values with None for null."""
    if name in STR_FIELDS:
        return [text or None for text in column.tolist()]
    if name == "step":
        return [int(v) for v in column.tolist()]
    if name in INT_FIELDS:
        return [None if math.isnan(v) else int(v) for v in column.tolist()]
    return [None if math.isnan(v) else v for v in column.tolist()]


# --------------------------------------------------------------------------------------------------
# Reader


def r2_output_fields(values: np.ndarray | None) -> dict[str, Any]:
    """R2_OUTPUT_FIELDS of a record from a checkpoint's `r2_outputs` (None: each null): the list of each output's
    R² (NaN, a constant target column, as None), the smallest and its column from 0 (the first, on a tie)."""
    listed = None if values is None else [value if math.isfinite(value) else None for value in map(float, values)]
    defined = [(value, column) for column, value in enumerate(listed or []) if value is not None]
    worst: tuple[float | None, int | None] = min(defined) if defined else (None, None)
    return dict(zip(R2_OUTPUT_FIELDS, (listed, *worst), strict=True))


def _not_a_step(step: object) -> bool:
    """True for a value no step equals as a dict key would: a str, a bool (True == 1), a non-integral number. A
    NumPy integer, or a float of an integer (a float64 column's 50.0), is the step it equals."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, float, np.integer, np.floating)):
        return True
    return not math.isfinite(step) or float(step) != int(step)


def _unmatched_pattern(path: Path) -> bool:
    """Whether a missing `path` reads as a shell pattern that matched nothing: one of * ? [ in the part of it that
    does not exist. **(choice)** A folder that exists is a name, not a pattern, brackets and all (`exp[seed=1]/run.h5`:
    its store is not written yet, and the fix is fdl analyze's); a missing name that holds one may be either, and is
    taken for a pattern, as a glob over a sweep is the likelier."""
    missing = [path, *path.parents]
    existing = next((at for at, part in enumerate(missing) if part.exists()), len(missing))
    return any(char in part.name for part in missing[:existing] for char in "*?[")


def _quoted_pattern_matches(path: Path) -> list[str]:
    """The files a missing `path` matches as the shell would match it (`*`, `?`, `[...]`; hidden names only where
    the pattern's part starts with a dot), sorted; [] where it reads as no pattern (`_unmatched_pattern`) or
    matches none. A store's name given in quotes ('runs/*.h5') reached fdl as written, where the shell, the
    pattern unquoted, would have expanded it into these."""
    if not _unmatched_pattern(path):
        return []
    return sorted(name for name in glob.glob(str(path)) if os.path.isfile(name))


class StoreReader:
    """Read-only view of a store, as it was when opened (the writer replaces the file, never edits it).

    Opens without any lock. Damaged parts are skipped and described in `warnings`; a file that is
    not a readable fdl store raises StoreError. Use as a context manager, or call `close()`.
    """

    provenance: dict[str, Any]
    schema_version: int
    fdl_version: str
    warnings: list[str]
    #: the `fdl analyze` invocations that stored checkpoints, in order (docs/store.md, "History"): one
    #: dict each; [] for a store written before fdl kept one (or whose history is damaged: a warning)
    history: list[dict[str, Any]]
    #: the checkpoints `fdl analyze --drop` removed, in order (docs/store.md, "History"): one dict each (step,
    #: path, sha256, kept, history, dropped, ...); [] for a store never mended so (or whose list is damaged)
    dropped: list[dict[str, Any]]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._open(Path(path), deep=False)

    @classmethod
    def _open_deep(cls, path: Path) -> StoreReader:
        """A reader that also checks every checkpoint group's attributes and datasets (for the writer)."""
        reader = cls.__new__(cls)
        reader._open(path, deep=True)
        return reader

    # -- opening -----------------------------------------------------------------------------------

    def _open(self, path: Path, *, deep: bool) -> None:
        self._path = path
        self.warnings = []
        self._probes: dict[str, ProbeInfo] = {}
        self._group_names: dict[int, str] = {}  # intact, complete checkpoint groups
        self._group_series: dict[int, frozenset[Series]] = {}
        self._group_ids: dict[int, tuple[str, str]] = {}  # step -> (path, sha256); deep scan only
        self._damaged: list[str] = []  # names of checkpoint groups skipped
        self._rows: dict[Series, list[dict[str, Any]]] = {}
        self._step_sets: dict[Series, frozenset[int]] = {}  # the steps of each series (`_chosen_step`)
        self._rebuilt: set[Series] = set()
        #: series whose trajectories, written by an earlier fdl, lack an ADDED_FIELDS dataset (read from
        #: the checkpoint groups): the writer rewrites them at its next commit
        self._outdated: set[Series] = set()
        #: of those, the series whose trajectories lack prev_step (`_note_unknown_previous`)
        self._without_prev: set[Series] = set()
        #: series added to the store that some checkpoints lack (`_read_pending`)
        self.pending_series: frozenset[Series] = frozenset()
        self._pending_text: str | None = None
        if not path.exists():
            writer = _live_writer(path)
            if writer is not None:  # `fdl analyze` (--watch) running, before its first commit
                raise StoreError(
                    f"no checkpoint is stored in {path} yet: it is being written by {writer}",
                    fix="wait until it has stored its first checkpoint, then run this again",
                )
            matched = _quoted_pattern_matches(path)
            if matched:  # a pattern that matches, quoted: the shell passed it as written
                shown = ", ".join(shlex.quote(name) for name in matched[:3]) + (", ..." if len(matched) > 3 else "")
                raise StoreError(
                    f"no fdl store at {path}",
                    got=f"it is a pattern, which matches {len(matched)} file{'s' if len(matched) != 1 else ''} "
                    f"({shown}): fdl reads a store from the name given, as written, and does not expand patterns in "
                    "store names (the shell does, where the pattern is not quoted)",
                    fix="write the pattern without quotes, for the shell to expand it into the stores' names",
                )
            if _unmatched_pattern(path):  # a glob the shell matched to nothing, passed as written
                raise StoreError(
                    f"no fdl store at {path}",
                    got="no file matches this pattern: the shell passes a pattern that matches nothing as written",
                    fix=f"check the pattern (`ls {path}`) and the folder it names",
                )
            raise StoreError(
                f"no fdl store at {path}",
                fix=f"run `fdl analyze CKPT_DIR --out {shlex.quote(str(path))}` first (`fdl analyze --watch` writes it "
                "once it has analysed its first checkpoint), or check the path",
            )
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not an fdl store", fix="pass the .h5 file written by `fdl analyze`")
        kind = special_file(path)
        if kind is not None:  # HDF5 opening a FIFO waits for a writer that never comes
            raise StoreError(f"{path} is not an fdl store: it is {kind}, not a regular file",
                             fix="pass the .h5 file that `fdl analyze CKPT_DIR --out RUN.h5` wrote")
        try:
            self._file: h5py.File | None = _open_read_only(path)
        except Exception as exc:  # h5py reports a bad file with several exception types
            signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
            if _LOCKING_MISMATCH.search(str(exc)):
                raise StoreError(
                    f"{path} is open in this process already, with HDF5 file-locking flags fdl cannot share",
                    got=_one_line(exc),
                    fix="close that h5py.File first, or open it with h5py.File(path, 'r', locking=False), as fdl does",
                ) from None
            head = first_bytes(path)
            if head and head != HDF5_SIGNATURE:
                # A checkpoint, probe or script given for the store (`fdl report run/step_0.pt`): no store
                # was damaged, so "restore it from a backup / rebuild it with --overwrite" would mislead.
                raise StoreError(
                    f"{path} is not an fdl store: it is not an HDF5 file",
                    got=f"its first bytes: {head!r}" + (" (a zip archive: a PyTorch checkpoint or .npz?)"
                                                        if head.startswith(b"PK") else ""),
                    fix="pass the .h5 file that `fdl analyze CKPT_DIR --out RUN.h5` wrote",
                ) from None
            raise StoreError(
                f"{path} cannot be read as an HDF5 file (truncated, corrupt or another format)",
                got=_one_line(exc),
                fix="restore it from a backup, or re-run `fdl analyze ... --overwrite` to rebuild it",
            ) from None
        try:
            self._read_header()
            self._read_links()
            self._read_probes()
            self._scan_checkpoints(deep=deep)
            self._read_trajectories()
            self._note_pending()
            self._note_unknown_previous()
            self._note_same_file_twice()
            self._note_being_replaced()
        except StoreError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
            raise self._damage_error(exc) from None

    def _damage_error(self, exc: BaseException | None, what: str = "", *, step: int | None = None,
                      got: str = "") -> StoreError:
        """`step`: the damage is in that checkpoint's arrays, which `fdl analyze --redo STEP` rewrites
        (unless it is the reference, whose own redo is refused: --overwrite then). `got`: what was found,
        said instead of the exception `exc`'s first line."""
        redo = ""
        if step is not None and step != self.provenance.get("reference_step"):
            redo = f", or analyse that checkpoint again: `fdl analyze ... --out {self._path} --redo {step}`"
        return StoreError(
            f"{self._path} is damaged{what}",
            got=got or (_one_line(exc) if exc is not None else None),
            fix=f"restore it from a backup{redo}, or re-run `fdl analyze ... --overwrite` to rebuild it",
        )

    def _read_header(self) -> None:
        assert self._file is not None
        attrs = self._file.attrs
        fmt = _as_str(attrs["format"]) if "format" in attrs else None
        if fmt != STORE_FORMAT:
            raise StoreError(
                f"{self._path} is not an fdl store",
                got="no 'format' attribute" if fmt is None else f"format attribute {fmt!r}",
                fix="pass the .h5 file written by `fdl analyze --out`",
            )
        self.fdl_version = _as_str(attrs.get("fdl_version", "unknown"))
        version = attrs.get("schema_version")
        if not isinstance(version, int | np.integer) or isinstance(version, bool | np.bool_) or version < 1:
            raise StoreError(
                f"{self._path} has no valid schema_version",
                got=_short(version),
                fix="re-run `fdl analyze ... --overwrite` to rebuild it",
            )
        self.schema_version = int(version)
        if self.schema_version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path} was written by a newer fdl {self.fdl_version} (store schema "
                f"{self.schema_version}); this fdl {__version__} reads schema {SCHEMA_VERSION}",
                fix="upgrade fdl: pip install -U fdl-cli",
            )
        # which attribute is damaged, and how to fix it: "is damaged" and a JSONDecodeError said neither
        what = "its provenance attribute (the model, probes and options it was analysed with)"
        try:
            provenance = json.loads(_as_str(attrs.get("provenance", "{}")))
        except ValueError as exc:
            raise self._damage_error(exc, f": {what} is not JSON") from None
        if not isinstance(provenance, dict):
            raise self._damage_error(None, f": {what} is not a JSON object", got=_short(provenance))
        self.provenance = provenance
        self.created = _as_str(attrs.get("created", ""))
        history = self._objects_attribute("history", "where its checkpoints were computed is unknown")
        self.history, self._history_damaged = history or [], history is None
        dropped = self._objects_attribute("dropped", "which checkpoints `fdl analyze --drop` removed is unknown")
        self.dropped, self._dropped_damaged = dropped or [], dropped is None
        refused = self._objects_attribute("refused", "which checkpoints `fdl analyze` refused is unknown")
        self._refused_items, self._refused_damaged = refused or [], refused is None
        self._pending_text = _as_str(attrs["pending_series"]) if "pending_series" in attrs else None
        changes = self._objects_attribute("model_changes", "from which step on its checkpoints ran other model code "
                                          "is unknown")
        self.model_changes, self._model_changes_damaged = changes or [], changes is None
        self.has_model_imports = "model_imports" in attrs
        self.model_imports = _model_imports_attribute(attrs)
        if self.has_model_imports and self.model_imports is None:
            self.warnings.append(f"{self._path}: its model_imports attribute is damaged and was ignored (not a JSON "
                                 "object of module -> sha256); an edit of the modules its model file imports is not "
                                 "seen by a resume")

    #: module -> sha256 of the modules of the model's folder that its code imported (the root attribute
    #: `model_imports`, docs/store.md); None where the store does not record them (written before fdl did, or
    #: without a --model file) or the attribute is damaged
    model_imports: dict[str, str] | None
    #: the changes of the model's code that `fdl analyze --accept-model-change` resumed the store across (the root
    #: attribute `model_changes`, docs/store.md), oldest first: one dict each (from_step, kept_old, run, time, fdl_version,
    #: changed: [{code, module, old, new}]); [] where there were none (or the list is damaged: a warning)
    model_changes: list[dict[str, Any]]

    @property
    def refused(self) -> list[dict[str, Any]]:
        """The checkpoints `fdl analyze` refused for their values (NaN or Inf weights, a forward pass that
        overflowed) and the store does not hold, by step: one dict each (step, path, kind, reason, refused, ...);
        [] for a store that records none (or whose list is damaged: a warning). An item whose step the store
        holds (analysed since by an fdl that did not record refusals) is left out: that step is not refused."""
        return sorted((item for item in self._refused_listed() if item["step"] not in self._group_names),
                      key=lambda item: item["step"])

    def _refused_listed(self) -> list[dict[str, Any]]:
        """The items of the `refused` list that name a step, stored or not (the writer takes a stored one out)."""
        return [item for item in self._refused_items
                if isinstance(item.get("step"), int) and not isinstance(item["step"], bool)]

    def _objects_attribute(self, name: str, lost: str) -> list[dict[str, Any]] | None:
        """A root attribute holding a JSON list of objects (`history`, `dropped`, `refused`): [] when absent; None,
        and a warning saying what is `lost`, when it is damaged."""
        assert self._file is not None
        if name not in self._file.attrs:
            return []
        try:
            items = json.loads(_as_str(self._file.attrs[name]))
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                raise ValueError(f"not a JSON list of objects: {_short(items)}")
        except ValueError as exc:
            self.warnings.append(f"{self._path}: its {name} attribute is damaged and was ignored ({exc}); {lost}")
            return None
        return items

    def _read_pending(self) -> None:
        """`pending_series`: the series added to the store (a resume with another probe or layer) that some of
        its checkpoints do not hold yet; such a checkpoint is no damage. Unreadable, every series counts as
        pending (a warning): a checkpoint lacking one is then added to by the next `fdl analyze`, never
        dropped as damaged and analysed whole again."""
        if self._pending_text is None:
            return
        try:
            pairs = json.loads(self._pending_text)
            if not isinstance(pairs, list) or not all(
                    isinstance(pair, list) and len(pair) == 2 and all(isinstance(name, str) for name in pair)
                    for pair in pairs):
                raise ValueError(f"not a JSON list of [probe, layer] pairs: {_short(pairs)}")
        except ValueError as exc:
            self.warnings.append(f"{self._path}: its pending_series attribute is damaged ({exc}): every series "
                                 "is taken as possibly missing at some checkpoints")
            self.pending_series = self._expected_series()
        else:
            named = frozenset((probe, layer) for probe, layer in pairs)
            expected = self._expected_series()
            if named - expected:
                # a series of no probe or layer of the store (an edited attribute): nothing adds it, and every
                # resume would say it adds it while writing nothing
                unknown = ", ".join(f"{probe}/{layer}" for probe, layer in sorted(named - expected))
                self.warnings.append(f"{self._path}: its pending_series attribute names {unknown}, not a series of "
                                     "the store's probes and layers: ignored")
            self.pending_series = named & expected

    def _read_links(self) -> None:
        """List every link of the store at C speed (one H5Lvisit: `_scan_checkpoints` takes those below
        /checkpoints), refusing an external link: HDF5 would open its file at the first read through it (a FIFO
        hung the reader, past Ctrl-C), and fdl writes none. Datasets whose data lies in another file are refused
        where they are read (`_inside`): finding them here would open every dataset."""
        assert self._file is not None
        self._links: list[bytes] = []
        external: list[bytes] = []

        def visit(name: bytes, info: Any) -> None:
            self._links.append(name)
            if info.type == h5py.h5l.TYPE_EXTERNAL:
                external.append(name)

        root = self._file["/"]  # held: the visit needs the group's identifier open
        root.id.links.visit(visit, info=True)
        if external:
            where = _text(external[0])
            link = self._file.get(where, getlink=True)
            raise _outside_error(str(self._path), f"/{where}", _text(link.filename))

    def _read_probes(self) -> None:
        assert self._file is not None
        group = self._file.get("probes")
        if group is None:
            self.warnings.append(f"{self._path} has no /probes group: probe information unavailable")
            return
        for name in group:
            try:
                node = group[name]
                attrs = node.attrs
                self._probes[name] = ProbeInfo(
                    name=name,
                    sha256=_as_str(attrs["sha256"]),
                    n=int(attrs["n"]),
                    task=_as_str(attrs["task"]),
                    n_outputs=int(attrs["n_outputs"]),
                    anchor_x=_inside(node["anchor_x"])[()] if "anchor_x" in node else None,
                    anchor_y=_inside(node["anchor_y"])[()] if "anchor_y" in node else None,
                    zero_one_targets=self._zero_one_targets(name, attrs.get("zero_one_targets")),
                    x_sha256=_as_str(attrs["x_sha256"]) if "x_sha256" in attrs else None,
                    chance_accuracy=self._chance_attr(name, attrs, "chance_accuracy", 1.0),
                    label_entropy=self._chance_attr(name, attrs, "label_entropy", math.inf),
                    anchor_skew=self._anchor_skew(name, attrs),
                )
            except StoreError:
                raise
            except Exception as exc:
                signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
                self.warnings.append(f"probe /probes/{name} is damaged and was skipped ({_one_line(exc)})")

    def _zero_one_targets(self, probe: str, value: object) -> bool | None:
        """A probe's `zero_one_targets` attribute: None where absent (written before it was recorded), or, with a
        warning, of another type than bool (the probe's other attributes are read all the same)."""
        if value is None:
            return None
        if isinstance(value, bool | np.bool_):
            return bool(value)
        self.warnings.append(f"probe /probes/{probe} has zero_one_targets = {_short(value)}, not true or false: "
                             "ignored (whether its targets are 0/1 is taken as not recorded)")
        return None

    def _chance_attr(self, probe: str, attrs: Any, name: str, top: float) -> float | None:
        """A probe's `chance_accuracy` (in (0, 1]) or `label_entropy` (≥ 0, finite) attribute: None where absent, or,
        with a warning, out of range or not a number (the probe's other attributes are read all the same)."""
        value = attrs.get(name)
        if value is None:
            return None
        number = float(value) if isinstance(value, float | int | np.floating | np.integer) else math.nan
        if not isinstance(value, bool | np.bool_) and math.isfinite(number) and 0.0 <= number <= top:
            return number
        self.warnings.append(f"probe /probes/{probe} has {name} = {_short(value)}, not a number in [0, {top:g}]: "
                             "ignored (fdl classify takes chance as 1/C and log C for it)")
        return None

    def _anchor_skew(self, probe: str, attrs: Any) -> dict[str, float] | None:
        """A probe's `anchor_skew` attribute (the fields of a `probes.AnchorSkew`): None where absent, or, with a warning,
        not such a JSON object (the probe's other attributes are read all the same)."""
        if "anchor_skew" not in attrs:
            return None
        value = attrs["anchor_skew"]
        try:
            skew = json.loads(_as_str(value))
        except (ValueError, TypeError):
            skew = None
        counts, distances = ("m", "n", "held", "classes"), ("distance", "random")
        if (isinstance(skew, dict) and set(skew) == {*counts, *distances}
                and all(type(skew[key]) is int for key in counts)
                and all(type(skew[key]) in (int, float) and 0.0 <= skew[key] <= 1.0 for key in distances)
                and 1 <= skew["m"] < skew["n"] and 1 <= skew["held"] <= skew["classes"]):
            return {key: skew[key] for key in (*counts, *distances)}
        self.warnings.append(f"probe /probes/{probe} has anchor_skew = {_short(value)}, not the JSON object analyze "
                             "writes: ignored (whether its anchor rows misrepresent its classes is taken as not recorded)")
        return None

    def _scan_checkpoints(self, *, deep: bool) -> None:
        """Find the complete, intact checkpoint groups and the series each holds.

        One H5Lvisit lists every link name at C speed (opening 1000 groups from Python would not stay
        well under a second); the deep scan, for the writer, also reads each group's attributes.
        """
        assert self._file is not None
        group = self._file.get("checkpoints")
        if group is None:
            self.warnings.append(f"{self._path} has no /checkpoints group: it holds no checkpoints")
            return
        tree: dict[str, dict[Series, set[str]]] = {}
        for link in self._links:
            if not link.startswith(b"checkpoints/"):
                continue
            parts = link[len(b"checkpoints/"):].decode("utf-8", "replace").split("/")
            members = tree.setdefault(parts[0], {})
            if len(parts) >= 3:
                datasets = members.setdefault((parts[1], parts[2]), set())
                if len(parts) == 4:
                    datasets.add(parts[3])
        for name, members in tree.items():
            match = _STEP_GROUP.match(name)
            if match is None:
                self.warnings.append(f"/checkpoints/{name} is not a step_<step> group: ignored")
                continue
            step = int(match.group(1))
            try:
                if not h5py.h5a.exists(group.id, b"complete", obj_name=name.encode()):
                    self.warnings.append(
                        f"checkpoint step {step} (/checkpoints/{name}) was never completed "
                        "(no 'complete' attribute): skipped; `fdl analyze` will redo it"
                    )
                    self._damaged.append(name)
                    continue
                for (probe, layer), datasets in members.items():
                    missing = [array for array in _REQUIRED_ARRAYS if array not in datasets]
                    if missing:
                        raise ValueError(f"{probe}/{layer} lacks the dataset{'s' if len(missing) > 1 else ''} {missing}")
                if deep:
                    self._check_group(step, group[name], members)
            except Exception as exc:
                signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
                self.warnings.append(
                    f"checkpoint step {step} (/checkpoints/{name}) is damaged: skipped; "
                    f"`fdl analyze` will redo it ({_one_line(exc)})"
                )
                self._damaged.append(name)
                continue
            self._group_names[step] = name
            self._group_series[step] = frozenset(members)
        self._drop_incomplete_series()

    def _expected_series(self) -> frozenset[Series]:
        """Every (probe, layer) a checkpoint of this store holds: the provenance's probes × layers when
        it names them (an fdl analyze store), else those of any checkpoint."""
        named = _provenance_series(self.provenance)
        if named is not None:
            return named
        return frozenset().union(*self._group_series.values()) if self._group_series else frozenset()

    def _drop_incomplete_series(self) -> None:
        """A complete group that lacks some of the store's series (deleted by hand, or a truncated
        copy) is damaged: skipped here and redone by the next `fdl analyze`, not counted as analysed."""
        self._read_pending()
        expected = self._expected_series()
        for step, series in list(self._group_series.items()):
            missing = expected - series - self.pending_series
            if series and not missing:
                continue
            name = self._group_names.pop(step)
            del self._group_series[step]
            self._group_ids.pop(step, None)
            lacks = ", ".join(f"{probe}/{layer}" for probe, layer in sorted(missing)) or "every series"
            self.warnings.append(
                f"checkpoint step {step} (/checkpoints/{name}) is damaged: skipped; "
                f"`fdl analyze` will redo it (it lacks {lacks})"
            )
            self._damaged.append(name)

    def _check_group(self, step: int, node: h5py.Group, members: Mapping[Series, set[str]]) -> None:
        if not bool(node.attrs["complete"]):
            raise ValueError("its 'complete' attribute is false")
        if int(node.attrs["step"]) != step:
            raise ValueError(f"its step attribute is {node.attrs['step']}")
        self._group_ids[step] = (_as_str(node.attrs["path"]), _as_str(node.attrs["sha256"]))
        for (probe, layer), datasets in members.items():
            leaf = node[probe][layer]
            for name in datasets:
                _ = leaf[name].shape

    def _read_trajectories(self) -> None:
        assert self._file is not None
        expected: dict[Series, list[int]] = {}
        for step in sorted(self._group_series):
            for series in self._group_series[step]:
                expected.setdefault(series, []).append(step)
        trajectories = self._file.get("trajectories")
        stored: set[Series] = set()
        if trajectories is not None:
            stored = {(probe, layer) for probe in trajectories for layer in trajectories[probe]}
        for series in sorted(stored | set(expected)):
            steps = expected.get(series, [])
            problem = None
            if series not in stored:
                problem = "missing"
            else:
                try:
                    group = trajectories[series[0]][series[1]]
                    added = _outdated_fields(group)
                    rows = self._rows_from_trajectories(group, added)
                    if [row["step"] for row in rows] != steps:
                        problem = "inconsistent with the complete checkpoint groups"
                    else:
                        if added:
                            self._added_from_groups(series, rows, added)
                            self._outdated.add(series)
                            if "prev_step" in added:
                                self._without_prev.add(series)
                        self._rows[series] = rows
                except StoreError:
                    raise
                except Exception as exc:
                    signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
                    problem = f"unreadable ({_one_line(exc)})"
            if problem is not None:
                self.warnings.append(
                    f"trajectories of {series[0]}/{series[1]} are {problem}: records rebuilt from the "
                    "checkpoint groups (slower); the next `fdl analyze` on this store rewrites them"
                )
                self._rebuilt.add(series)
                rows = [row for row in (self._row_from_group(step, series) for step in steps) if row is not None]
                if rows:
                    self._rows[series] = rows

    def _note_being_replaced(self) -> None:
        """One warning where an `fdl analyze --overwrite` holds the store's lock and has not committed yet (a --watch
        waiting for the training job's first checkpoint): the file read is the one its first commit replaces, another
        run's store maybe, which read as the first numbers of the run it analyses. Told by the identity of the file the
        lock file records (`claim`, `_replaced_identity`): a commit writes a new file."""
        info = _live_writer_info(self._path)
        if not info or info.get("replaces") != _replaced_identity(self._path):
            return
        try:
            holder = f"pid {info['pid']}, `{info['command']}`"
        except KeyError:
            holder = _UNREAD_HOLDER
        self.warnings.append(f"{self._path} is about to be replaced: `fdl analyze --overwrite` ({holder}) replaces it "
                             "at its first commit; shown is the store as it was before that run")

    def _note_pending(self) -> None:
        """One warning a series added to the store (`pending_series`) that some checkpoints lack: its
        records, figures and verdict cover the others only, until `fdl analyze` adds it to them."""
        steps = set(self._group_series)
        for probe, layer in sorted(self.pending_series):
            held = [row["step"] for row in self._rows.get((probe, layer), ())]
            lacking = sorted(steps - set(held))
            if not lacking:
                continue
            shown = ", ".join(map(str, lacking[:6])) + (f" and {len(lacking) - 6} more" if len(lacking) > 6 else "")
            self.warnings.append(
                f"{probe}/{layer} was added to this store by an `fdl analyze` that did not finish: {len(held)} of its "
                f"{len(steps)} checkpoints hold it (not step{'s' if len(lacking) > 1 else ''} {shown}); `fdl analyze` "
                f"with the store's probes and layers and --out {self._path} adds it to the others"
            )

    def _note_unknown_previous(self) -> None:
        """One warning, for the whole store, where an fdl before `prev_step` stored cka_prev / overlap_prev:
        they may compare with another checkpoint than the one before in step order (a checkpoint analysed
        later between stored ones was not taken as its successor's previous). A trajectory without the
        field read as unreadable, one warning a series and command, which said neither what was missing
        nor that it changes no other measure. Only where the trajectories lack the field: this fdl stores a
        null prev_step with null cka_prev and overlap_prev (no previous checkpoint)."""
        unknown = sorted({int(row["step"]) for series in self._without_prev for row in self._rows.get(series, ())
                          if row.get("prev_step") is None
                          and (row.get("cka_prev") is not None or row.get("overlap_prev") is not None)})
        if not unknown:
            return
        steps = ", ".join(map(str, unknown[:6])) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        self.warnings.append(
            f"cka_prev and overlap_prev of step{'s' if len(unknown) > 1 else ''} {steps} were stored without "
            "the field prev_step (null there), which may have compared them with another checkpoint than "
            "the one before in step order; no other measure, and no regime, depends on them. To recompute them, "
            f"run `fdl analyze` on the same checkpoints with --out {self._path}: a resume, which recomputes these "
            "two fields and nothing else that is stored"
        )

    def _note_same_file_twice(self) -> None:
        """One warning, for the whole store, where it holds one checkpoint file (the same path and sha256)
        at two steps: an fdl before the eighteenth session, resumed with other --step-offset / --step-regex
        options, stored the unchanged file a second time at the step those read. One of its steps carries
        another step's numbers; only `fdl analyze` refused such a store, so `report`, `compare` and
        `classify` showed the copy as a checkpoint of its own."""
        steps_of: dict[tuple[str, str], set[int]] = {}
        for rows in self._rows.values():
            for row in rows:
                if row.get("path") and row.get("sha256"):
                    steps_of.setdefault((str(row["path"]), str(row["sha256"])), set()).add(int(row["step"]))
        twice = sorted((sorted(steps), path) for (path, _), steps in steps_of.items() if len(steps) > 1)
        if not twice:
            return
        shown = "; ".join(f"{path} at steps {', '.join(map(str, steps))}" for steps, path in twice[:3]) + (
            f"; and {counted(len(twice) - 3, 'more file')} so" if len(twice) > 3 else "")
        self.warnings.append(
            f"the store holds the same checkpoint file at two steps: {shown} (stored a second time by a resume "
            "with other --step-offset / --step-regex options, which fdl now refuses): one of its "
            "steps carries another step's numbers. Run `fdl analyze` on the run's checkpoints with the options "
            f"that read their steps rightly and --out {self._path}: it names the steps to remove with --drop"
        )

    def _added_from_groups(self, series: Series, rows: list[dict[str, Any]], names: Sequence[str]) -> None:
        """Fields added after the trajectories were written (`names`, from ADDED_FIELDS), read from the
        checkpoint groups' attributes: absent (null) where an earlier fdl analysed the checkpoint, set
        where this one did and an earlier one rewrote the trajectories without the field since."""
        assert self._file is not None
        checkpoints = self._file["checkpoints"]
        for row in rows:
            attrs = checkpoints[self._group_names[row["step"]]][series[0]][series[1]].attrs
            for name in names:
                row[name] = _to_python(name, attrs.get(name))

    @staticmethod
    def _rows_from_trajectories(group: h5py.Group, outdated: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of one series' trajectories; a field added after they were written (`outdated`:
        an ADDED_FIELDS dataset they lack, or one an earlier fdl left shorter, `_outdated_fields`) is
        null in every row (`_added_from_groups` reads it)."""
        columns: dict[str, list[Scalar]] = {}
        for name in RECORD_FIELDS:
            if name in outdated:
                columns[name] = [None] * int(group["step"].shape[0])
                continue
            dataset = _inside(group[name])
            column = dataset.asstr()[()] if name in STR_FIELDS else dataset[()]
            if column.ndim != 1:
                raise ValueError(f"{name} is not 1-D")
            columns[name] = _column_values(name, column)
        lengths = {len(column) for column in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields have different lengths {sorted(lengths)}")
        steps = columns["step"]
        if any(a >= b for a, b in zip(steps, steps[1:], strict=False)):  # type: ignore[operator]
            raise ValueError("steps are not strictly increasing")
        return [dict(zip(RECORD_FIELDS, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def _row_from_group(self, step: int, series: Series) -> dict[str, Any] | None:
        assert self._file is not None
        name = self._group_names[step]
        try:
            node = self._file["checkpoints"][name]
            leaf = node[series[0]][series[1]]
            row: dict[str, Any] = {
                "step": step,
                "path": _as_str(node.attrs["path"]),
                "sha256": _as_str(node.attrs["sha256"]),
            }
            for field_name in MEASURE_FIELDS:
                row[field_name] = _to_python(field_name, leaf.attrs.get(field_name))
            return row
        except Exception as exc:
            signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
            self.warnings.append(f"checkpoint step {step} of {series[0]}/{series[1]} is damaged: skipped ({_one_line(exc)})")
            return None

    # -- public API --------------------------------------------------------------------------------

    def probes(self) -> dict[str, ProbeInfo]:
        """The probe sets of the run, by name."""
        return dict(self._probes)

    def series(self) -> list[tuple[str, str]]:
        """The (probe, layer) pairs with at least one complete checkpoint, sorted."""
        return sorted(self._rows)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the complete checkpoints, whichever series they hold, ascending."""
        return sorted(self._group_series)

    def held(self, step: int) -> frozenset[Series]:
        """The (probe, layer) series a complete checkpoint holds: the store's, but those added to it that the
        checkpoint lacks yet (`pending_series`); empty for a step the store does not hold."""
        return self._group_series.get(step, frozenset())

    def lacking(self, series: Iterable[Series]) -> dict[int, frozenset[Series]]:
        """step -> which of `series` a complete checkpoint lacks, for each one that lacks some, by step."""
        wanted = frozenset(series)
        return {step: wanted - held for step, held in sorted(self._group_series.items()) if wanted - held}

    def whole_series(self) -> list[Series]:
        """The series that every complete checkpoint holds (those not added to the store lately), sorted: the
        steps and prev_step of one of them are every series' (`series()` when all are pending, as no store is)."""
        return [key for key in self.series() if key not in self.pending_series] or self.series()

    def _select(self, probe: str | None, layer: str | None) -> list[Series]:
        available = self.series()
        probes = sorted({p for p, _ in available} | set(self._probes))
        if probe is not None and probe not in probes:
            raise StoreError(
                f"probe {probe!r} is not in {self._path}",
                got=f"probes in the store: {', '.join(probes) or '(none)'}",
                fix="pass one of them as probe=",
            )
        candidates = [s for s in available if probe is None or s[0] == probe]
        if layer is not None:
            layers = sorted({name for _, name in candidates})
            if layer not in layers:
                scope = f" for probe {probe!r}" if probe is not None else ""
                raise StoreError(
                    f"layer {layer!r} is not in {self._path}{scope}",
                    got=f"layers in the store{scope}: {', '.join(layers) or '(none)'}",
                    fix="pass one of them as layer=",
                )
            candidates = [s for s in candidates if s[1] == layer]
        return candidates

    def _select_one(self, probe: str | None, layer: str | None) -> Series | None:
        candidates = self._select(probe, layer)
        if len(candidates) > 1:
            raise self._several_error(candidates)
        return candidates[0] if candidates else None

    def _several_error(self, candidates: Sequence[Series], *, records: bool = False) -> StoreError:
        """More than one series selected where one is needed: the keywords that pick one, only those needed
        (`probe=` alone where each probe has one layer among them), in this Python API's terms (the commands
        select with their own --probe / --layer, `report.select_series`)."""
        probes = list(dict.fromkeys(p for p, _ in candidates))
        needed = [f"probe= (one of {', '.join(map(repr, probes))})"] if len(probes) > 1 else []
        if any(sum(p == name for p, _ in candidates) > 1 for name in probes):
            layers = list(dict.fromkeys(name for _, name in candidates))
            needed.append(f"layer= (one of {', '.join(map(repr, layers))})")
        return StoreError(
            f"{self._path} holds several probe/layer series; choose one",
            got="series: " + ", ".join(f"probe={p} layer={name}" for p, name in candidates),
            fix="pass " + " and ".join(needed) + ("; or all_series=True for every series' records, each with its "
                                                  "probe and layer" if records else ""),
        )

    def records(
        self, *, probe: str | None = None, layer: str | None = None, all_series: bool = False,
        r2_outputs: bool = False,
    ) -> list[dict[str, Any]]:
        """One dict per complete checkpoint of the selected series, sorted by step.

        Keys follow RECORD_FIELDS; when the store holds several series, "probe" and "layer" follow
        "sha256". Null fields are None, integer fields int, the others float. A selection (`probe`,
        `layer`) that leaves several series raises StoreError, as `array()` does: one dict a step of one
        series, never two series' values mixed; `all_series=True` gives those of every series selected
        (sorted by step, then probe, layer), which the "probe" and "layer" keys tell apart.
        `r2_outputs=True`: each record also ends with R2_OUTPUT_FIELDS (`r2_output_fields`, as `fdl report
        --json` gives them) where a selected series is a regression of C > 1 outputs whose checkpoints hold
        their R² (`read_r2_outputs`: a dataset read per checkpoint), null for the others; without such a series
        the records are as without it.
        """
        chosen = self._select(probe, layer)
        if len(chosen) > 1 and not all_series:
            raise self._several_error(chosen, records=True)
        per_output = {key: self.read_r2_outputs(key) for key in chosen} if r2_outputs else {}
        with_r2_outputs = any(values is not None for stored in per_output.values() for values in stored.values())
        tagged = len(self._rows) > 1
        out: list[dict[str, Any]] = []
        for series_key in chosen:
            for row in self._rows[series_key]:
                if tagged:
                    record = {name: row[name] for name in CHECKPOINT_FIELDS}
                    record.update(zip(SERIES_FIELDS, series_key, strict=True))
                    record.update((name, row[name]) for name in MEASURE_FIELDS)
                else:
                    record = dict(row)
                if with_r2_outputs:
                    record.update(r2_output_fields(per_output[series_key].get(row["step"])))
                out.append(record)
        out.sort(key=lambda record: record["step"])  # stable: series order kept within a step
        return out

    def read_r2_outputs(self, series: Series, *, steps: Collection[int] | None = None) -> dict[int, np.ndarray | None]:
        """step -> the `r2_outputs` dataset of each complete checkpoint of `series` (of `steps` alone, if given;
        None where absent: a checkpoint analysed by an fdl before it), or {} when the series' probe is not a
        regression of C > 1 outputs. A series the store does not hold raises StoreError, naming those it does. A
        dataset that cannot be read, or not of shape (C,), reads as None with a line in `warnings` (the records
        do not need it)."""
        if series not in self._rows:  # as `records` and `array` refuse it: {} read as "no such field"
            raise StoreError(f"the series {series!r} is not in {self._path}",
                             got="series in the store: " + (", ".join(map(repr, self.series())) or "(none)"),
                             fix="pass one of them as (probe, layer) (`run.series()` lists them)")
        info = self._probes.get(series[0])
        outputs = int(getattr(info, "n_outputs", 0) or 0)
        if getattr(info, "task", None) != "regression" or outputs < 2:
            return {}
        stored: dict[int, np.ndarray | None] = {}
        for row in self._rows.get(series, []):
            step = int(row["step"])
            if steps is not None and step not in steps:
                continue
            where = f"the r2 of each output of {series[0]}/{series[1]} at step {step}"
            try:
                values = self.array(step, R2_OUTPUT_FIELDS[0], probe=series[0], layer=series[1])
            except StoreError as error:
                self.warnings.append(f"{where} could not be read, shown as null: {error.what}")
                values = None
            if values is not None and values.shape != (outputs,):
                self.warnings.append(f"{where} has the shape {values.shape}, not ({outputs},) (the probe's outputs): "
                                     "shown as null")
                values = None
            stored[step] = values
        return stored

    def steps(self, *, probe: str | None = None, layer: str | None = None) -> list[int]:
        """The steps of the complete checkpoints of one series, ascending."""
        chosen = self._select_one(probe, layer)
        return [] if chosen is None else [row["step"] for row in self._rows[chosen]]

    def _missing_step(self, step: object, listed: Sequence[int], scope: str = "") -> StoreError:
        """A step the store does not hold (of the series `scope` names), or no step at all: a str read from a CSV
        cell (`"50"`), which `step 50 is not in ...` beside a list holding 50 would leave a puzzle."""
        got = f"{counted(len(listed), 'step')}: {first_few(listed, 10)}"
        fix = "pick one of them (every one: `run.steps()` in Python, `fdl report` in the shell)"
        if _not_a_step(step):
            return StoreError(f"step {step!r} is a {type(step).__name__}, not a step: steps are integers, as "
                              f"{self._path} stores them", got=got, fix=f"pass it as an int (int(step)); {fix}")
        return StoreError(f"step {step} is not in {self._path}{scope}", got=got, fix=fix)

    def _chosen_step(self, step: int, probe: str | None, layer: str | None, caller: str) -> Series:
        """The one selected series, checked to hold `step` (a set lookup: reading every step's arrays
        of a 1000-checkpoint store must not scan the step list each time)."""
        chosen = self._select_one(probe, layer)
        if chosen is None:
            raise StoreError(f"{self._path} holds no analysed checkpoints", fix="run `fdl analyze` first")
        steps = self._step_sets.get(chosen)
        if steps is None:
            steps = self._step_sets[chosen] = frozenset(row["step"] for row in self._rows[chosen])
        if _not_a_step(step) or step not in steps:
            raise self._missing_step(step, [row["step"] for row in self._rows[chosen]],
                                     f" for {chosen[0]}/{chosen[1]}")
        if self._file is None:
            raise ValueError(f"StoreReader.{caller}() called after close()")
        return chosen

    def arrays(self, step: int, *, probe: str | None = None, layer: str | None = None) -> SeriesEntry:
        """The stored arrays and scalars of one checkpoint of one series."""
        chosen = self._chosen_step(step, probe, layer, "arrays")
        assert self._file is not None
        try:
            leaf = self._file["checkpoints"][self._group_names[step]][chosen[0]][chosen[1]]
            arrays = {name: _inside(leaf[name])[()] for name in _ARRAY_DTYPES if name in leaf}
            scalars = {name: _to_python(name, leaf.attrs.get(name)) for name in MEASURE_FIELDS}
            return SeriesEntry(probe=chosen[0], layer=chosen[1], scalars=scalars, **arrays,
                               computed_by=self._series_row(leaf))
        except StoreError:
            raise
        except Exception as exc:
            signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
            raise self._damage_error(exc, f" at checkpoint step {step} ({chosen[0]}/{chosen[1]})", step=step) from None

    def array(
        self, step: int, name: str, *, probe: str | None = None, layer: str | None = None, rows: int | None = None
    ) -> np.ndarray | None:
        """One stored array of one checkpoint of one series (`name`: eigenvalues, eigenvectors,
        eigenfunctions, utility, quality, feature_mean or r2_outputs), in its stored dtype; None when the
        checkpoint has none (quality without targets, r2_outputs but for regression targets of C > 1). `rows`:
        only the first `rows` entries along the first axis (the top eigenvalues), read from the file without the
        rest.

        `arrays()` reads every array of the checkpoint: at p = 4 096 and m = 4 096 anchors that is
        ~3 MB, so whoever needs one array of many checkpoints (figures, exports) reads it alone."""
        if name not in _ARRAY_DTYPES:
            raise ValueError(f"unknown array {name!r}: one of {', '.join(_ARRAY_DTYPES)}")
        chosen = self._chosen_step(step, probe, layer, "array")
        assert self._file is not None
        try:
            leaf = self._file["checkpoints"][self._group_names[step]][chosen[0]][chosen[1]]
            if name not in leaf:
                return None
            dataset = _inside(leaf[name])
            if dataset.ndim != _ARRAY_NDIMS[name]:
                # as `arrays()` (SeriesEntry) refuses it: the readers index it as an array of this rank
                raise ValueError(f"series {chosen[0]}/{chosen[1]}: {name} must be {_ARRAY_NDIMS[name]}-D, "
                                 f"got shape {dataset.shape}")
            value = dataset[()] if rows is None else dataset[: max(rows, 0)]
            return np.ascontiguousarray(value, dtype=_ARRAY_DTYPES[name])
        except StoreError:
            raise
        except Exception as exc:
            signals.through(exc)  # a Ctrl-C inside h5py's C code: no damage
            raise self._damage_error(exc, f" at checkpoint step {step} ({chosen[0]}/{chosen[1]})", step=step) from None

    def entry(self, step: int) -> CheckpointEntry:
        """One complete checkpoint as the CheckpointEntry that was written (each of its series)."""
        rows = [(key, row) for key in self.series() for row in self._rows[key] if row["step"] == step]
        if _not_a_step(step) or not rows:
            raise self._missing_step(step, self.checkpoint_steps())
        series = tuple(self.arrays(step, probe=probe, layer=layer) for (probe, layer), _ in rows)
        return CheckpointEntry(
            step=rows[0][1]["step"], path=rows[0][1]["path"], sha256=rows[0][1]["sha256"], series=series,
            file_signature=self._identity(step)[2], computed_by=self.computed_by_row(step),
        )

    def computed_by(self, step: int) -> int | None:
        """The index in `history` of the invocation that computed a stored checkpoint; None when not
        recorded (stored before fdl kept a history, or by an fdl that did not record it)."""
        if self._file is None:
            raise ValueError("StoreReader.computed_by() called after close()")
        if _not_a_step(step) or step not in self._group_names:
            raise self._missing_step(step, self.checkpoint_steps())
        return self._history_index(self._group_names[step])

    def computed_by_row(self, step: int) -> str:
        """`CheckpointEntry.computed_by` of a stored checkpoint: its invocation's row (`history_row`), or
        "" when not recorded; an entry of the checkpoint built anew with it keeps its row when stored."""
        index = self.computed_by(step)
        return "" if index is None else history_row(self.history[index])

    def _history_index(self, name: str) -> int | None:
        """The `history` attribute of the checkpoint group `name` (or of a series, `step_10/probe/layer`) as an
        index into `history`; None when absent or damaged."""
        assert self._file is not None
        group = self._file["checkpoints"]
        try:
            # by name, as the scan tests `complete`: opening 1 000 groups from Python costs ~3 times as much
            if not h5py.h5a.exists(group.id, b"history", obj_name=name.encode()):
                return None
            attribute = h5py.h5a.open(group.id, b"history", obj_name=name.encode())
            value = np.empty(attribute.shape, dtype=np.int64)
            attribute.read(value)
            index = int(value.reshape(-1)[0]) if value.size == 1 else -1
        except Exception as exc:  # noqa: BLE001 - a damaged or hand-written attribute: not recorded
            signals.through(exc)
            return None
        return index if 0 <= index < len(self.history) else None

    def _series_row(self, leaf: h5py.Group) -> str | None:
        """`SeriesEntry.computed_by` of a stored series: the row of the invocation that added it to its
        checkpoint (its `history` attribute), None where it is its checkpoint's."""
        value = leaf.attrs.get("history")
        try:
            index = int(np.asarray(value).reshape(-1)[0]) if value is not None else -1
        except (TypeError, ValueError, IndexError):
            return None
        return history_row(self.history[index]) if 0 <= index < len(self.history) else None

    def history_steps(self) -> dict[int | None, list[int]]:
        """Index in `history` -> the steps of the stored checkpoints that invocation computed, sorted;
        None -> those not recorded. Reads an attribute of every checkpoint group (~70 ms per 1 000)."""
        if self._file is None:
            raise ValueError("StoreReader.history_steps() called after close()")
        steps: dict[int | None, list[int]] = {}
        for step in sorted(self._group_names):
            steps.setdefault(self._history_index(self._group_names[step]), []).append(step)
        return steps

    def added_history(self) -> dict[int, dict[Series, list[int]]]:
        """Index in `history` -> the series that invocation added to stored checkpoints (a probe or layer added to
        the store: the series' own `history` attribute) -> their steps, sorted; `history_steps()` names the
        invocation that computed each checkpoint's other series. Reads an attribute of every series of every
        checkpoint group (~70 ms per 1 000 series of checkpoints)."""
        if self._file is None:
            raise ValueError("StoreReader.added_history() called after close()")
        added: dict[int, dict[Series, list[int]]] = {}
        for step in sorted(self._group_names):
            for probe, layer in sorted(self.held(step)):
                index = self._history_index(f"{self._group_names[step]}/{probe}/{layer}")
                if index is not None:
                    added.setdefault(index, {}).setdefault((probe, layer), []).append(step)
        return added

    def _identity(self, step: int) -> tuple[str, str, str]:
        assert self._file is not None
        attrs = self._file["checkpoints"][self._group_names[step]].attrs
        return _as_str(attrs["path"]), _as_str(attrs["sha256"]), _as_str(attrs.get("file_signature", ""))

    def file_identities(self) -> dict[int, tuple[str, str, str]]:
        """step -> (path, sha256, file signature) of every intact checkpoint, from its group's
        attributes; the signature is "" for checkpoints stored before fdl recorded it (or taken in
        from a part store that lacked it). A group whose attributes cannot be read is left out."""
        if self._file is None:
            raise ValueError("StoreReader.file_identities() called after close()")
        identities = {}
        for step in self._group_names:
            try:
                identities[step] = self._identity(step)
            except Exception as exc:  # noqa: BLE001 - a damaged group: its own checks report it
                signals.through(exc)
                continue
        return identities

    def entries(self) -> list[CheckpointEntry]:
        """Every complete checkpoint as the CheckpointEntry that was written, by step."""
        return [self.entry(step) for step in sorted({row["step"] for rows in self._rows.values() for row in rows})]

    @property
    def closed(self) -> bool:
        """Whether `close` ran: the arrays are then read by opening the store again (`report.iter_array`)."""
        return self._file is None

    def file_version(self) -> tuple[int, int, int] | None:
        """The inode, size and modification time (ns) of the file this reader holds open, None once closed or where
        HDF5's driver has no descriptor: each commit of `fdl analyze` renames a new file over the store, which a
        reader opening the store later reads instead (and ext4 may give it a freed inode, so not that alone)."""
        try:
            found = os.fstat(self._file.id.get_vfd_handle()) if self._file is not None else None
        except Exception:  # noqa: BLE001 - a driver without a POSIX descriptor
            return None
        return None if found is None else (found.st_ino, found.st_size, found.st_mtime_ns)

    def close(self) -> None:
        """Close the file; records, steps and probes stay available, arrays() does not."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Writer


def _live_writer(store: Path) -> str | None:
    """Who holds `store`'s writer lock (`_WriterLock`), in its words; None for none (`_live_writer_info`)."""
    info = _live_writer_info(store)
    if info is None:
        return None
    try:
        return _holder_words(info)
    except (KeyError, TypeError):
        return _UNREAD_HOLDER


#: who holds a writer lock whose lock file says nothing readable
_UNREAD_HOLDER = "an fdl process whose details could not be read from the lock file"


def _live_writer_info(store: Path) -> dict[str, Any] | None:
    """What the lock file of `store`'s writer lock says (`_WriterLock.acquire`: pid, host, command...; empty where
    it cannot be read); None for no writer. A writer holds the lock's flock as
    long as it runs, so a lock file whose flock can be taken is a killed writer's (kill -9), whatever process its pid
    names now (a pid is reused): the test takes it shared and gives it back at once, never removing the file (a
    writer taking it meanwhile tries again, `_take`). Where the file system takes no flock, a lock file naming a
    process of this host that runs (or one of another host) is taken for a writer's."""
    store = store_target(store)  # a link's writer locks where the link points
    try:
        fd = os.open(store.with_name(store.name + ".lock"), os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: no wait
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # no lock file a writer made (`_WriterLock.acquire` refuses it)
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_info(fd)
    except OSError:  # no flock on this file system
        try:
            info = json.loads(os.pread(fd, 65536, 0).decode())
            pid, host = int(info["pid"]), str(info["host"])
            return None if host == socket.gethostname() and not _pid_alive(pid) else info
        except (OSError, ValueError, TypeError, KeyError):
            return None
    finally:
        os.close(fd)  # releases the shared flock, where taken
    return None


def _take(fd: int) -> None:
    """flock(LOCK_EX | LOCK_NB) on a lock file, tried for up to ~0.1 s before its BlockingIOError is raised: a reader's
    test of the lock (`_live_writer`) holds it shared for a moment."""
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == 19:
                raise
            time.sleep(0.005)


def _lock_info(fd: int) -> dict[str, Any]:
    """The JSON of the lock file open at `fd` (empty where it cannot be read)."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode())
    except Exception:  # noqa: BLE001 - a lock file being written, or not fdl's
        return {}
    return info if isinstance(info, dict) else {}


def _replaced_identity(path: Path) -> list[int] | None:
    """The inode, size and modification time (ns) of the file at `path` that an --overwrite writer replaces at its
    first commit (a commit writes a new file), recorded in its lock file; None where there is none. Not the inode
    alone: ext4 gives a later commit's copy the inode the first commit freed (every second commit), and readers
    warned the whole run through. Not the device: a reader on another host of an NFS mount sees the same inode under
    its own device number (the lock file, beside the store, is on the store's file system)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return [found.st_ino, found.st_size, found.st_mtime_ns] if stat.S_ISREG(found.st_mode) else None


def _holder_words(info: dict[str, Any]) -> str:
    """The holder of a writer lock, from its lock file's JSON."""
    return f"pid {info['pid']} on host {info['host']}, running `{info['command']}` since {info['started']}"


def store_target(path: str | os.PathLike[str]) -> Path:
    """Where the store at `path` is written: through a symbolic link, where it points. Commits replace the file
    by a new one, so written through the link (its folder for the copy and the lock) the link would become a
    file and the target go stale."""
    path = Path(path)
    try:
        return path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError):  # pathlib's "Symlink loop" (Python < 3.13)
        raise StoreError(f"cannot reach the store {path}",
                         got="a symbolic link loop (the link leads, through links, back to itself)",
                         fix="point the link at the store file, or remove it") from None


def claim(path: str | os.PathLike[str], *, replacing: bool = False) -> _WriterLock:
    """The writer lock of the store at `path` (`store_target`), taken once the path is checked (not a folder,
    not a named pipe, device or socket, not read-only) and its folder made: a StoreWriter opening takes it so,
    and `fdl analyze --watch` from its start, while it waits for a first checkpoint, so that another writer is
    refused at once and the readers say who writes it (`_live_writer`); its writer takes it over
    (`StoreWriter(claimed=...)`). `replacing`: the writer replaces the store (--overwrite), which its lock file
    says to readers (`StoreReader._note_being_replaced`). `release()` gives it back (again: nothing)."""
    path = store_target(path)
    if path.is_dir():
        raise StoreError(f"{path} is a folder", fix="pass a file name such as run.h5 as --out")
    special = special_store(path, named=str(path))  # before --overwrite: a commit replaced a FIFO, /dev/null
    if special is not None:
        raise special
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if not mode & 0o222:  # replaced by a commit all the same (copy-on-write needs the folder only)
            raise StoreError(
                f"{path} is read-only (mode {mode & 0o777:o}): fdl will not replace it",
                fix=f"make it writable (chmod u+w {path}) to add to it, or pass another --out",
            )
    made = [folder for folder in (path.parent, *path.parent.parents) if not os.path.lexists(folder)]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = _WriterLock(path, made=made, replaces=_replaced_identity(path) if replacing else None)
    try:
        lock.acquire()
    except BaseException:
        lock.remove_made()
        raise
    return lock


def is_store_file(store: Path, path: Path) -> bool:
    """Whether `path` is one of the files of the store at `store` (or where its link points, `store_target`): the
    store, its lock or one of its copy-on-write copies (STORE.h5.tmp-<pid>)."""
    for where in {store, store_target(store)}:
        try:
            if path.parent.resolve() != where.parent.resolve():
                continue
        except (OSError, RuntimeError):
            continue
        match = _TMP_SUFFIX.search(path.name)
        if path.name in (where.name, f"{where.name}.lock") or (
                match is not None and path.name == f"{where.name}{match.group(0)}"):
            return True
    return False


class _WriterLock:
    """An exclusive flock on STORE.h5.lock, whose content says who holds it."""

    def __init__(self, store: Path, *, made: Sequence[Path] = (), replaces: list[int] | None = None) -> None:
        self.store = store
        #: the identity of the store an --overwrite writer replaces at its first commit (`claim`, `_replaced_identity`)
        self.replaces = replaces
        self.path = store.with_name(store.name + ".lock")
        self._fd: int | None = None
        #: the store's folders that `claim` made, deepest first: removed with the lock where left empty (a --watch
        #: stopped before its first commit made them for the lock alone)
        self.made = tuple(made)

    def acquire(self) -> None:
        while True:
            existed = os.path.lexists(self.path)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)  # a FIFO: no wait
            except OSError as exc:
                raise StoreError(
                    f"cannot create the lock file {self.path}",
                    got=_one_line(exc),
                    fix="check that the folder exists and is writable, or choose another --out",
                ) from None
            kind = special_kind(os.fstat(fd).st_mode)
            if kind is not None:  # its write failed as for want of disk space, and the file was removed
                os.close(fd)
                raise StoreError(
                    f"the lock file {self.path} is {kind}, not a file fdl wrote",
                    fix=f"remove it (rm {self.path}) if no fdl writes {self.store}, or choose another --out",
                )
            try:
                _take(fd)
            except BlockingIOError:
                holder = self.holder(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"{self.store} is being written by another fdl process",
                    got=holder,
                    fix="wait for it to finish or stop it; to run both at once, give this one another --out",
                ) from None
            except OSError as exc:  # Lustre mounted without `-o flock` answers ENOSYS: no writer could be kept out
                os.close(fd)
                if not existed:  # made here: not left behind, nor the folders `claim` made for it
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                raise StoreError(
                    f"cannot lock {self.path}: its file system takes no file lock (flock), which keeps a second fdl "
                    "from writing the store at the same time",
                    got=_one_line(exc),
                    fix="choose an --out on a file system that takes file locks (a local disk; Lustre mounted with "
                        "-o flock), and copy the store where you want it once written",
                ) from None
            # A previous holder may have unlinked the file between our open and our flock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join(sys.argv),
            "started": _utc_now(),
            **({"replaces": self.replaces} if self.replaces is not None else {}),
        }
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
        except OSError as exc:  # a full disk, a quota: the lock file holds one small block
            with contextlib.suppress(OSError):  # while locked, as `release` does: no other fdl took it meanwhile
                os.unlink(self.path)
            os.close(fd)
            failed = io_error(exc, another="another --out")
            raise StoreError(
                f"cannot write the lock file {self.path}", got=_one_line(exc) + (failed[0] if failed else ""),
                fix=failed[1] if failed else "free disk space (or space within your disk quota) or choose another --out",
            ) from None
        self._fd = fd

    @staticmethod
    def holder(fd: int) -> str:
        """Who holds the lock, in its words, from the lock file open at `fd`."""
        try:
            return _holder_words(_lock_info(fd))
        except (KeyError, TypeError):
            return _UNREAD_HOLDER

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        self.remove_made()

    def remove_made(self) -> None:
        """Remove the folders `claim` made that are still empty (one holding the store stays)."""
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                return


def remove_stale_copies(store: Path) -> None:
    """Remove `store`'s copy-on-write copies (STORE.tmp-<pid>) of dead processes; call it holding the store's
    lock (`_WriterLock`): only the lock holder writes them, so under the lock any of a dead pid (or ours) is stale."""
    for candidate in store.parent.glob(f"{glob.escape(store.name)}.tmp-*"):
        match = _TMP_SUFFIX.search(candidate.name)
        if match is None or candidate.name != f"{store.name}{match.group(0)}":
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or not _pid_alive(pid):
            with contextlib.suppress(OSError):
                candidate.unlink()


@dataclass(frozen=True, eq=False)
class _CommitPlan:
    """What one commit writes, computed in the caller's thread from a snapshot of the writer's state.

    Whoever executes the plan reads nothing else of the writer but its path, provenance and probes,
    which never change, so the caller may go on adding entries while a background thread writes.
    """

    entries: tuple[CheckpointEntry, ...]  # the front of the buffer, in the order added
    latest: dict[int, CheckpointEntry]  # step -> entry written; a step added twice: the last one wins
    rows: dict[Series, dict[int, dict[str, Any]]]  # every series' rows once committed (may be empty)
    changed: dict[Series, set[int]]  # steps added to or removed from each series
    rewrite: tuple[Series, ...]  # the trajectories this commit writes, sorted
    old_steps: dict[Series, list[int]]  # for those: the steps of their stored trajectories, sorted
    appendable: frozenset[Series]  # for those: stored trajectories that hold exactly old_steps
    drop: frozenset[str]  # damaged checkpoint groups, and those of `dropped`, to remove
    stale: frozenset[Series]  # trajectories of series with no intact group, to remove
    fresh: bool  # create the file instead of copying the store
    provenance: str | None = None  # the resumed store's provenance with keys it lacked, to write
    model_imports: str | None = None  # the `model_imports` attribute to write (`StoreWriter._imports_update`)
    model_changes: str | None = None  # the `model_changes` attribute to write (`StoreWriter._code_change`)
    probes: tuple[tuple[str, dict[str, Any]], ...] = ()  # (probe, attributes) to record in a resumed store lacking them
    signatures: tuple[tuple[int, str], ...] = ()  # (step, file signature) of stored checkpoints to update
    history: tuple[str, ...] | None = None  # every row of the store's history once committed, when it grows
    computed_by: Mapping[int, int] = field(default_factory=dict)  # step -> its row in history (none: unknown)
    dropped: frozenset[int] = frozenset()  # stored steps removed (`StoreWriter.drop`)
    dropped_log: tuple[str, ...] | None = None  # the store's `dropped` list once committed, when it grows
    refused_log: tuple[str, ...] | None = None  # the store's `refused` list once committed, when it changes
    refusing: tuple[tuple[int, str], ...] = ()  # the refusals (`StoreWriter.refuse`) this plan holds
    #: step -> {series: its row in history} of series computed by another invocation than their checkpoint
    series_computed_by: Mapping[int, Mapping[Series, int]] = field(default_factory=dict)
    new_probes: tuple[ProbeInfo, ...] = ()  # probes added to the store (`Growth`), whose /probes groups to write
    #: the store's `pending_series` once committed (() removes it); None: as it is
    pending: tuple[Series, ...] | None = None
    #: an unfinished addition given up (`StoreWriter.abandoned`): its series and probes to take out of the store
    abandoned: frozenset[Series] = frozenset()
    abandoned_probes: tuple[str, ...] = ()


class _CommitJob:
    """One commit handed to a background thread: pending, running, then ended; or cancelled.

    The writer tracks the job before its thread starts, and cancels a job that has not started when it
    has to wait for it (its entries are still buffered: the caller then commits them itself). So a
    Ctrl-C that lands while the thread is being started can neither leave a commit running untracked
    nor make the caller wait for one that never runs. `finish` (the writer's `_finish`) runs in the
    job's thread once the commit has ended, before `done()` turns true: whoever sees the job done sees
    its result applied.
    """

    def __init__(self, plan: _CommitPlan) -> None:
        self.plan = plan
        self.error: BaseException | None = None  # raised in the caller's thread by StoreWriter._collect
        self.cost = 0.0
        self.finished = 0.0
        self._state = "pending"
        self._state_lock = threading.Lock()
        self._ended = threading.Event()

    def run(self, execute: Callable[[_CommitPlan], None], finish: Callable[[_CommitJob], None]) -> None:
        with self._state_lock:
            if self._state != "pending":
                return
            self._state = "running"
        started = time.monotonic()
        try:
            execute(self.plan)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.cost = self.finished - started
            try:
                finish(self)
            finally:
                self._ended.set()

    def cancel(self) -> bool:
        """Cancel the job unless it started; True if it never runs."""
        with self._state_lock:
            if self._state == "pending":
                self._state = "cancelled"
                self._ended.set()
            return self._state == "cancelled"

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self) -> None:
        self._ended.wait()


def _stored_overlap_k(
    provenance: Mapping[str, Any], probes: Mapping[str, ProbeInfo], differences: Sequence[str],
    this_run: Mapping[str, Any],
) -> int | None:
    """The overlaps' k of a store that recorded none, when that is what a resume differs in: such a
    store's k is min(top_k, C) (written before `overlap_k` existed, fdl stored no more than --top-k
    columns and took the overlaps over them; since, C unless recorded otherwise). None when this run's
    k (`this_run`'s provenance) is that k already: `overlap_k` is then recorded only because --top-k
    differs too (a store of --top-k 64 >= C resumed with --top-k below C), which --overlap-k cannot fix."""
    options = provenance.get("options")
    if not isinstance(options, Mapping) or "overlap_k" in options or not isinstance(options.get("top_k"), int):
        return None
    if not any(d.startswith("options.overlap_k: absent (store)") for d in differences) or not probes:
        return None
    stored = min(int(options["top_k"]), max(int(info.n_outputs) for info in probes.values()))
    ours = this_run.get("options")
    return None if isinstance(ours, Mapping) and ours.get("overlap_k") == stored else stored


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


_RERUN = "then run again (finished checkpoints are kept)"


def _write_error(store: Path, tmp: Path, exc: OSError, *, fresh: bool) -> StoreError:
    """The error of a commit that the system refused to write (`_execute`): what it refused, in the user's
    words (no space, a quota, a file size limit, an I/O error: `write_refused`), and how to make room or mend it; the
    store on disk is unchanged."""
    folder, rerun = os.path.abspath(store.parent), "then run again" if fresh else _RERUN
    room = write_refused(exc, another="another --out", one="an --out")
    if room is not None:
        got = f"{exc.strerror or _one_line(exc)} in {folder} while writing the store's updated copy{room[0]}"
        fix = f"{room[1]}, {rerun}"
    else:
        # not a refusal the system names (HDF5's own error, a conversion it cannot make): no room is missing
        got, fix = _one_line(exc), f"choose another --out (a new store), {rerun}; if it fails there too, report it"
    if tmp.exists():
        got += f"; its partial copy {tmp} could not be removed (fdl removes it when it next writes this store)"
    return StoreError(f"could not write {store} (the store on disk is unchanged)", got=got, fix=fix)


def _entry_bytes(entry: CheckpointEntry) -> int:
    """The bytes of a checkpoint's arrays (what a buffered entry holds in memory, near enough)."""
    return sum(
        int(array.nbytes)
        for series in entry.series
        for array in (getattr(series, name) for name in _ARRAY_NDIMS)
        if array is not None
    )


class _GuardedFile:
    """The file a commit's HDF5 copy is written through (h5py's file-object driver): HDF5 never meets a failed
    write. A write the system refuses (a full disk, a quota, a file size limit met after `_check_room` passed;
    SIGXFSZ is ignored by Python, so the last is the error EFBIG) made HDF5 fail its close, leave the file open
    in its library, print an "Exception ignored" traceback for every object freed and end the process by a
    segmentation fault. Here the refused write and every one after it are kept in memory instead (`error`
    records the first refusal), reads see them, and HDF5 finishes as on a sound disk; the commit then stops at
    its next step (`_execute`), closes, and throws the copy away. The copy is never renamed over the store, so
    the store on disk is as it was. After a refusal only what HDF5 writes before the commit stops (the rest of
    one checkpoint, and the metadata its close writes) is held in memory; before one, nothing is."""

    def __init__(self, fd: int, interrupted: Callable[[], None] = lambda: None) -> None:
        self._fd = fd
        self._interrupted = interrupted  # raises a Ctrl-C or SIGTERM held back meanwhile (`signals.deferred`)
        self._position = 0
        self._size = os.fstat(fd).st_size  # as HDF5 sees it: the disk's, or past it by what `_kept` holds
        self._kept: list[tuple[int, bytes]] = []  # (offset, bytes) written after a refusal, in order
        self.error: OSError | None = None  # the first write the system refused

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = offset + (self._size if whence == os.SEEK_END else self._position if whence == os.SEEK_CUR else 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done, stored = 0, min(len(view), max(0, self._size - self._position))
        while done < stored:
            got = os.preadv(self._fd, [view[done:stored]], self._position + done)
            if got <= 0:
                break
            done += got
        view[done:] = bytes(len(view) - done)  # past the end of the file: zeros, as with HDF5's own driver
        for offset, data in self._kept:
            start, end = max(offset, self._position), min(offset + len(data), self._position + len(view))
            if start < end:
                view[start - self._position:end - self._position] = data[start - offset:end - offset]
        self._position += len(view)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(max(0, self._size - self._position) if size < 0 else size)
        self.readinto(buffer)
        return bytes(buffer)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._position + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._kept.append((self._position, bytes(view)))
        self._position += len(view)
        self._size = max(self._size, self._position)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        self._kept = [(offset, data[: max(0, size - offset)]) for offset, data in self._kept if offset < size]
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to do: every write went to the system at once (`_execute` fsyncs the file)."""

    def check(self) -> None:
        """Raise the refusal of a write, or a Ctrl-C or SIGTERM held back, if one came: the commit stops at its
        next step."""
        if self.error is not None:
            raise self.error
        self._interrupted()



class StoreWriter:
    """The single writer of a store: buffers checkpoints and commits them crash-safely.

    Opening takes the lock and, unless `overwrite`, checks that the existing store belongs to this
    run (same provenance and probes). A commit of the buffer is due once at least
    max(min_interval, 10 x the last commit's duration) seconds passed since the last commit ended (or
    the buffered arrays hold BUFFER_BYTES) and no commit is running. With `background=True` (the
    default) the commit runs in a background thread, one at a time, and `add()` returns at once, so
    the caller's work overlaps the copy, fsync and rename; entries added meanwhile go into the next
    commit. A due commit is started by `add()` or `tick()`, or, when the caller makes neither call
    (its thread stuck in one long forward pass, a hung collective or read), by the writer's own
    scheduler thread, so a buffered entry is durable at most about that wait plus two commits'
    durations after it was added. `add()`, `tick()` and `flush()` return the entries whose commit
    ended durably since the previous call, never one that is not yet on disk, so a caller may
    announce exactly what they return. `flush()` waits for the running commit and commits the rest;
    `close()` and leaving the `with` block (also on an exception or Ctrl-C) do the same and release
    the lock. An error of a background commit is raised by the next add/tick/flush/close, with the
    store on disk unchanged and its entries still buffered; the scheduler then starts no commit until
    one started by the caller (add/tick once due, flush, close) has succeeded. `background=False`
    commits in the caller's thread within `add()` and `tick()`, and starts no thread. Adding a step
    already stored replaces it, but for an entry of series alone (`CheckpointEntry.series_only`), which adds
    them to the stored checkpoint of its step: a run with probes or layers beside the store's (`growth`,
    `lacking`; docs/store.md, "Adding a probe or a layer"). With `abandon_addition`, a run without the probes and
    layers of an unfinished addition gives it up (`abandoned`), taking them out of the store at its first commit.
    `claimed`: the store's lock, taken already (`claim`: --watch holds it while it waits for a first checkpoint),
    which the writer then holds, and releases when it closes.

    Threads: the caller's adds to the buffer and takes what is durable; a commit's plan (a snapshot of
    the writer's state) is made, and its result applied, by whichever thread starts or ends it. All
    of it happens under `_guard` (a lock held only for those few steps, never while a commit copies,
    writes or fsyncs), so no entry is planned into two commits or dropped: a plan takes the front of
    the buffer, and only the applying of that plan removes exactly those entries. Commits touch
    files and h5py only, never torch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        provenance: Mapping[str, Any],
        probes: Sequence[ProbeInfo],
        overwrite: bool = False,
        min_interval: float = 0.0,
        background: bool = True,
        invocation: Mapping[str, Any] | None = None,
        abandon_addition: bool = False,
        claimed: _WriterLock | None = None,
        model_imports: Mapping[str, str] | None = None,
        model_change: Mapping[str, Any] | None = None,
    ) -> None:
        self._path = store_target(path)
        if claimed is not None and claimed.store != self._path:
            raise ValueError(f"the lock claimed is {claimed.store}'s, not {self._path}'s")
        self._provenance = _normalized_provenance(provenance)
        self._probes: dict[str, ProbeInfo] = {}
        for probe in probes:
            if not isinstance(probe, ProbeInfo):
                raise ValueError(f"probes must be ProbeInfo objects, got {probe!r}")
            if probe.name in self._probes:
                raise ValueError(f"probe {probe.name!r} is given twice")
            self._probes[probe.name] = probe
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval!r}")
        self._min_interval = float(min_interval)
        self._background = bool(background)
        self.warnings: list[str] = []
        #: why this writer records no history (the store's is damaged), for the caller to say; None when it does
        self.history_warning: str | None = None
        self._buffered_bytes = 0  # the arrays' bytes of `_buffer` (BUFFER_BYTES)
        self._buffer: list[CheckpointEntry] = []  # not yet durable, in the order added; a running commit's first
        self._durable: list[CheckpointEntry] = []  # durable, not yet returned by add/flush
        self._job: _CommitJob | None = None  # the background commit, until the caller applies it
        self._sha256: dict[int, str] = {}  # committed steps
        self._rows: dict[Series, dict[int, dict[str, Any]]] = {}
        self._trajectories_match: set[Series] = set()  # series whose on-disk trajectories equal _rows
        self._drop: set[str] = set()  # damaged groups to remove at the next commit
        self._drop_steps: set[int] = set()  # stored checkpoints to remove at the next commit (`drop`)
        self._stale_trajectories: set[Series] = set()  # trajectories of series with no intact group
        self._fresh = True  # the next commit creates the file instead of copying it
        self._own_file = True  # no store was read at `path` (none there, or --overwrite): see `committed_previous`
        self._provenance_update: str | None = None  # see _load_existing
        #: the `model_imports` attribute to write: a fresh store's, or one a resumed store lacks (written by an fdl
        #: before it); a store's is never changed. None: nothing to write
        self._imports_update = None if model_imports is None else json.dumps(dict(model_imports), sort_keys=True)
        #: --accept-model-change: the model code this resume runs that the store recorded otherwise (`provenance`:
        #: its keys' new values; `model_imports`: the attribute's new value, or None; `changed`: [{code, module, old,
        #: new}]), recorded with the first checkpoint stored (`_code_change_plan`); None: no change, or recorded
        self._code_change = None if model_change is None else dict(model_change)
        self._stored_changes: list[dict[str, Any]] = []  # the store's `model_changes`
        self._stored_provenance: dict[str, Any] = {}  # the resumed store's provenance (`_code_change_plan`)
        #: the probes and layers this run adds to the store (None: none; `growth`)
        self.growth: Growth | None = None
        #: (the grown provenance, the added probes) to write with the first checkpoint stored (`_load_existing`)
        self._growth_update: tuple[str, tuple[ProbeInfo, ...]] | None = None
        #: series that stored checkpoints may lack (added by this run or an earlier one): `lacking`, `pending_series`
        self._pending: set[Series] = set()
        #: with `abandon_addition`: the unfinished addition this writer takes out of the store (`abandonment`), at
        #: its first commit (a flush does it at once); None: none
        self.abandoned: Abandonment | None = None
        self._abandon_addition = bool(abandon_addition)
        self._abandoning = False  # `abandoned` is not committed yet
        #: probe -> {attribute: value} to record in a resumed store that lacks them (`_missing_probe_attrs`),
        #: committed by close() even when nothing else is (`_plan`)
        self._probe_updates: dict[str, dict[str, Any]] = {}
        #: whether the chance may be committed alone: not once the run stopped on an error (a refusal that says
        #: the store is left as it is) or a Ctrl-C, nor by a writer opened for its lock; the next resume records
        #: it (`hold_back_chance`)
        self._chance_alone = True
        self._signatures: dict[int, str] = {}  # see note_file_signatures
        #: this invocation's row of the history (`history_row`), recorded with the first checkpoint it stores
        self._own_row = None if invocation is None else history_row(invocation)
        #: the rows of the store's history (on disk, or this writer's plan's); None: the store's history is
        #: damaged, and this writer records none (what it pointed at is lost; rows put anew would be misread)
        self._history: list[str] | None = []
        #: the invocation (`drop` records where and when the checkpoints it removes were removed)
        self._invocation = dict(invocation) if invocation is not None else None
        #: the items of the store's `dropped` list (JSON texts); None: the list is damaged, and this writer
        #: adds none (it would write over what it holds)
        self._dropped_log: list[str] | None = []
        self._dropping: dict[int, str] = {}  # step -> its item of `dropped`, to add with its removal (`drop`)
        #: step -> item (JSON text) of the store's `refused` list as on disk; None: the list is damaged, and this
        #: writer leaves it as it is (it would write over what it holds)
        self._refused_log: dict[int, str] | None = {}
        self._refusing: dict[int, str] = {}  # step -> its item of `refused`, to record at the next commit (`refuse`)
        self._closed = False
        self._last_commit = time.monotonic()
        self._last_cost = 0.0
        # Guards every attribute above that a commit reads or changes (and `_job`), for the scheduler
        # and commit threads; notified when a commit may have become due or startable.
        # `with self._mutex`, never `with self._guard`: Condition.__enter__/__exit__ are Python functions,
        # and a Ctrl-C handled inside one (between the lock's acquire and the with-block's start, or
        # before its release) left the lock held for good: close() then hung. The C lock's own
        # __enter__/__exit__ leave no such window; `_guard` (on the same lock) only waits and notifies.
        self._mutex = threading.Lock()
        self._guard = threading.Condition(self._mutex)
        self._holds = 0  # flush/close at work in the caller's thread: the scheduler starts nothing
        self._stopping = False  # close() began: the scheduler ends
        self._failed = False  # the last commit failed: the caller's thread retries (add/tick/flush/close)
        self._scheduler: threading.Thread | None = None  # started by the first add (background only)
        self._lock = claimed if claimed is not None else claim(self._path, replacing=overwrite)
        try:
            # The lock given back where this writer is dropped unclosed: a Ctrl-C between its opening and the block
            # that closes it (at the entry of `with`'s `__enter__`, or before the caller holds it) left the lock file
            # behind, and its descriptor open. Not at exit: only a writer that no commit's thread holds is collected.
            weakref.finalize(self, self._lock.release).atexit = False
            self._remove_stale_tmp()
            if self._path.exists() and not overwrite:
                self._load_existing()
        except BaseException:
            self._lock.release()
            raise

    def _tmp_path(self, pid: int) -> Path:
        return self._path.with_name(f"{self._path.name}.tmp-{pid}")

    def _remove_stale_tmp(self) -> None:
        remove_stale_copies(self._path)

    def _load_existing(self) -> None:
        self._own_file = False
        try:
            reader = StoreReader._open_deep(self._path)
        except StoreError as exc:
            if exc.what == f"{self._path} is not an fdl store":
                # an HDF5 file of another program (a dataset, a Keras model): "pass --overwrite to start a
                # fresh store" read as the cure, and --overwrite replaces the file and all it holds
                raise StoreError(
                    exc.what,
                    got=exc.got,
                    fix="give the store another --out; --overwrite would replace this file, which another program "
                        "wrote, and lose all it holds",
                ) from None
            # the reader's fix may name --overwrite already ("re-run `fdl analyze ... --overwrite` to rebuild
            # it"): only another --out is added then, not "--overwrite" a second time (the resume review)
            extra = "or give another --out" if exc.fix and "--overwrite" in exc.fix else (
                "pass --overwrite to start a fresh store, or another --out")
            raise StoreError(
                exc.what,
                got=exc.got,
                fix=(exc.fix + "; " + extra) if exc.fix else extra,
            ) from None
        try:
            stored_probes = reader.probes()
            stored: Mapping[str, Any] = reader.provenance
            if self._abandon_addition:
                self.abandoned = abandonment(reader, self._provenance, self._probes)
            if self.abandoned is not None:  # compared as the store will be once it is given up
                stored = self.abandoned.provenance
                stored_probes = {name: info for name, info in stored_probes.items()
                                 if name not in self.abandoned.probes}
            if self._code_change is not None:  # compared as the store will be once it records the new code
                stored = {**stored, **self._code_change["provenance"]}
            differences, grown = resume_differences(stored, stored_probes, self._provenance, self._probes)
            if grown is not None and self._code_change is not None:
                raise StoreError(
                    f"--accept-model-change resumes {self._path} across a change of its model code, and this run "
                    f"adds {grown.describe()}: one at a time",
                    fix=f"run it without {grown.describe()} first, then the command that adds {grown.describe()}",
                )
            if self._code_change is not None and reader._model_changes_damaged:
                raise StoreError(
                    f"{self._path}'s model_changes attribute is damaged: --accept-model-change would lose the record "
                    "of the model code its checkpoints ran",
                    fix="restore the model code the store recorded, or re-analyse everything with --overwrite (or "
                        "another --out)",
                )
            self._stored_changes = list(reader.model_changes)
            self._stored_provenance = dict(stored)
            if grown is not None and self.abandoned is not None:
                raise StoreError(
                    f"--abandon-addition gives up adding {self.abandoned.describe()} to {self._path}, and this run adds "
                    f"{grown.describe()}: one at a time",
                    fix=f"run it without {grown.describe()} first, then the command that adds {grown.describe()}",
                )
            if differences:
                fix = "pass --overwrite to replace it, or another --out to keep both"
                if grown is not None:
                    keys = [d.split(": ")[0] for d in differences]
                    fix = (f"this run adds {grown.describe()} to the store, which needs every other option as the "
                           f"store was analysed with, and {', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'}"
                           ": give those as the store has them to add, or " + fix)
                if any(d.startswith("options.weights: absent (store)") for d in differences):
                    # --weights naming the entry fdl takes by itself (state_dict) gives the same numbers,
                    # but the store cannot tell: it recorded no name.
                    fix = ("the store was analysed without --weights: if the checkpoints' own weights are the "
                           "ones you name, leave --weights out (and weights out of fdl.toml) to resume; else " + fix)
                renamed = _renamed_probes(stored_probes, self._probes)
                paired = {pair[1] for pair in renamed}
                left_out = [name for name in stored_probes if name not in self._probes and name not in paired]
                left_out_layers = ([] if self.abandoned is not None
                                   else _left_out_layers(reader, self._provenance.get("layers")))
                if renamed or left_out or left_out_layers:
                    # The same probe file under another name (`--probe test=probe.npz` on a store that calls it
                    # `probe`): a different run only by its name, which the fix can give back. A store's probe
                    # left out (train and test resumed with --probe train alone): "--overwrite / another --out"
                    # would drop or split what the store holds; the probes of a store are analysed together.
                    # Both at once (`--probe a=P` on a store of train and test) are one fix: given as two
                    # alternatives, each said the other's differences "remain", and neither resumed.
                    # "To resume" only when nothing else differs (it was said beside another --top-k, say).
                    # A probe or layer that an `fdl analyze` which stopped was adding (pending_series) is at some
                    # checkpoints only: the fix says so, and that the same command adds it to the others.
                    names = {name for pair in renamed for name in pair[:2]} | set(left_out)
                    others = [d for d in differences
                              if not any(d.startswith((f"probes.{name}: ", f"probe {name}: ")) for name in names)
                              and not (left_out_layers and d.startswith("layers: "))]
                    # a probe new to the store is an addition once the store's probes are given as it names
                    # them: "remain" read as a difference that would still refuse the run
                    added = [name for name in self._probes if name not in stored_probes and name not in names]
                    others = [d for d in others if not d.startswith(tuple(f"probes.{name}: " for name in added)
                                                                     + tuple(f"probe {name}: " for name in added))]
                    then = (f" (the other differences above remain: {', '.join(d.split(': ')[0] for d in others)})"
                            if others else ", which resumes and adds the probe" + ("s " if len(added) > 1 else " ")
                            + " and ".join(map(repr, added)) + " to the store" if added else ", to resume")
                    parts = [_rename_fix(renamed)] if renamed else []
                    stored_layers = reader.provenance.get("layers") or []
                    if left_out:
                        flags = " ".join(f"--probe {name}=PATH" for name in left_out)
                        digests = ", ".join(stored_probes[name].sha256[:12] for name in left_out)
                        unfinished = _unfinished(reader, {(name, layer) for name in left_out for layer in stored_layers},
                                                 "them" if len(left_out) > 1 else "it")
                        parts.append(
                            f"the store also holds the probe{'s' if len(left_out) > 1 else ''} "
                            f"{' and '.join(repr(name) for name in left_out)}, "
                            + (unfinished if unfinished else "analysed with this run's at each checkpoint")
                            + f": give {'them' if len(left_out) > 1 else 'it'} too, {flags} (sha256 {digests})"
                        )
                    if left_out_layers:
                        unfinished = _unfinished(reader, {(probe, label) for probe in stored_probes
                                                          for label in left_out_layers},
                                                 "them" if len(left_out_layers) > 1 else "it")
                        parts.append(
                            f"the store also holds the layer{'s' if len(left_out_layers) > 1 else ''} "
                            f"{' and '.join(repr(name) for name in left_out_layers)}, "
                            + (unfinished if unfinished else "at every checkpoint") + ": give "
                            f"{'them' if len(left_out_layers) > 1 else 'it'} too, with the store's layers in its order, "
                            + " ".join(f"--layer {label}" for label in stored_layers)
                        )
                    given_up = _unfinished(reader, {(name, layer) for name in left_out for layer in stored_layers}
                                           | {(probe, label) for probe in stored_probes for label in left_out_layers})
                    if given_up and not renamed and not self._abandon_addition:
                        then += ("; or, to give the addition up, this command with --abandon-addition, which takes "
                                 f"{'them' if len(left_out) + len(left_out_layers) > 1 else 'it'} out of the store")
                    fix = "; and ".join(parts) + then + "; else " + fix
                if self._abandon_addition and self.abandoned is None and not renamed:
                    # nothing pending: what the run leaves out is whole, no addition to give up (`abandonment`)
                    run_layers = self._provenance.get("layers") or []
                    whole_layers = [label for label in reader.provenance.get("layers") or [] if label not in run_layers]
                    if left_out or whole_layers:
                        fix = ("--abandon-addition gives up only an addition that stopped before it was done (probes or "
                               f"layers at some checkpoints only), and {_probes_and_layers(left_out, whole_layers)} "
                               f"{'is' if len(left_out) + len(whole_layers) == 1 else 'are'} at every checkpoint of "
                               "the store: there is none to give up; " + fix)
                stored_k = _stored_overlap_k(reader.provenance, stored_probes, differences, self._provenance)
                if stored_k is not None:
                    # k = min(top_k, C): over the top top_k where a store written before --overlap-k had --top-k
                    # below C, else over C, the default, which no store records (`pipeline._overlap_k_option`)
                    why = ("they were taken over --top-k, below the model's outputs; fdl takes them over C unless "
                           "--overlap-k" if stored_k < max(int(info.n_outputs) for info in stored_probes.values())
                           else "they were taken over C, the model's outputs, the default")
                    fix = (f"the store's overlaps compare the top {stored_k} eigenfunctions (the store records "
                           f"no overlap_k: {why}): pass --overlap-k {stored_k} to go on as it was analysed, or " + fix)
                ordered = _layers_after_stored(reader.provenance.get("layers"), self._provenance.get("layers"))
                if ordered is not None:
                    added = [label for label in ordered if label not in reader.provenance["layers"]]
                    new_probes = [name for name in self._probes if name not in stored_probes]  # added, as it may
                    explained = ("layers: ", *(f"probes.{name}: " for name in new_probes),
                                 *(f"probe {name}: " for name in new_probes))
                    others = [d.split(": ")[0] for d in differences if not d.startswith(explained)]
                    fix = (f"to add the layer{'s' if len(added) > 1 else ''} {' and '.join(map(repr, added))} to the "
                           "store, give the store's layers first, in its order, then the new ones: "
                           f"{' '.join('--layer ' + label for label in ordered)} (a store keeps its layers in that "
                           "order, and a resume gives them so)"
                           + (f", and {', '.join(others)} as the store has {'it' if len(others) == 1 else 'them'}"
                              if others else "") + "; else " + fix)
                reordered = _layers_reordered(reader.provenance.get("layers"), self._provenance.get("layers"))
                if reordered is not None:
                    # `--layer 0 --layer 2:input` on a store of 2:input and 0: the same layers, another run only
                    # by their order (a store keeps its layers in the order analysed); told as a left-out layer is
                    others = [d.split(": ")[0] for d in differences if not d.startswith("layers: ")]
                    fix = ("the store holds these layers in another order: give them in its order, "
                           + " ".join(f"--layer {label}" for label in reordered)
                           + (f" (the other differences above remain: {', '.join(others)})" if others else ", to resume")
                           + "; else " + fix)
                beside = _layers_beside_stored(reader.provenance.get("layers"), self._provenance.get("layers"))
                if beside is not None and not left_out_layers:
                    added = [label for label in beside if label not in reader.provenance["layers"]]
                    others = [d.split(": ")[0] for d in differences if not d.startswith("layers: ")]
                    fix = (f"to add the layer{'s' if len(added) > 1 else ''} {' and '.join(map(repr, added))} to the "
                           "store beside its own, give the store's layers too, first, in its order: "
                           f"{' '.join('--layer ' + label for label in beside)}"
                           + (f", and {', '.join(others)} as the store has {'it' if len(others) == 1 else 'them'}"
                              if others else "") + "; else " + fix)
                unwrapped = _renamed_by_unwrapping(reader.provenance.get("layers"), self._provenance.get("layers"))
                if unwrapped is not None:
                    # an fdl before session 17 hooked DataParallel's (or a pickled DDP module's) wrapper
                    fix = (f"the store's {unwrapped[0]!r} is this run's {unwrapped[1]!r}, the same layer: fdl now takes "
                           "DataParallel's, DDP's and torch.compile's wrappers off a pickled module or a --model "
                           "factory's network, whose own module names the layers then have, and a store is not "
                           "resumed under other names; " + fix)
                if _same_model_content(reader.provenance, self._provenance) \
                        and all(line.startswith("model: ") for line in differences):
                    # a copy of the recorded model file, which is still there (`_same_model_code`)
                    recorded = reader.provenance["model_file"]
                    factory = str(reader.provenance["model"]).rpartition(":")[2]
                    fix = (f"this run's model file is a copy of {recorded}, which the store was analysed with and "
                           f"which is still there: give --model {shlex.quote(f'{recorded}:{factory}')} to go on with "
                           "that file (a run moved whole resumes as it is once its old folder is gone); else " + fix)
                if reader.provenance.get("model", "") is None and self._provenance.get("model") is not None \
                        and all(line.startswith("model: ") for line in differences):
                    fix = ("the store was analysed with the modules its checkpoints hold: leave --model out to resume "
                           "it; else " + fix)
                raise StoreError(f"{self._path} holds the results of a different run", got="; ".join(differences), fix=fix)
            self.warnings = list(reader.warnings)
            self._sha256 = {step: ids[1] for step, ids in reader._group_ids.items()}
            for series_key, rows in reader._rows.items():
                self._rows[series_key] = {row["step"]: row for row in rows}
            # Trajectories an earlier fdl wrote without a field added since are rewritten (with the
            # field null where the checkpoint groups lack it) at the next commit, not appended to.
            self._trajectories_match = set(reader._rows) - reader._rebuilt - reader._outdated
            self._stale_trajectories = reader._rebuilt - set(reader._rows)
            self._drop = set(reader._damaged)
            self._fresh = False
            self._history = None if reader._history_damaged else [history_row(row) for row in reader.history]
            self._dropped_log = (None if reader._dropped_damaged
                                 else [json.dumps(item, sort_keys=True) for item in reader.dropped])
            self._refused_log = (None if reader._refused_damaged
                                 else {item["step"]: json.dumps(item, sort_keys=True)
                                       for item in reader._refused_listed()})
            if reader._history_damaged:
                # `fdl analyze` resumed such a store in silence, and recorded nothing, run after run
                self.history_warning = (
                    f"{self._path}: its history attribute is damaged, so where this run computes its checkpoints is "
                    "not recorded either (new rows would be read with the old indices); their numbers are stored as "
                    "ever, and `fdl report` names the damage"
                )
            # Keys this fdl records that the store, written by an older one, lacks (reference_sha256,
            # model_sha256): added at the next commit, so later resumes check them. Stored keys are
            # never changed.
            missing = {key: value for key, value in self._provenance.items() if key not in reader.provenance}
            if reader.has_model_imports:
                self._imports_update = None
            if missing:
                self._provenance_update = json.dumps({**reader.provenance, **missing}, sort_keys=True)
            if self.abandoned is not None:
                self._provenance_update = json.dumps({**self.abandoned.provenance, **missing}, sort_keys=True)
                gone = self.abandoned.series
                self._rows = {key: rows for key, rows in self._rows.items() if key not in gone}
                self._trajectories_match -= gone
                self._stale_trajectories -= gone
                self._abandoning = True
            # Series that the stored checkpoints may lack: added by this run, or by an earlier one that did not
            # finish (the store's `pending_series`)
            self._pending = set(reader.pending_series) - (self.abandoned.series if self.abandoned else set())
            if grown is not None:
                self.growth = grown
                self._pending |= grown.series
                self._growth_update = (
                    json.dumps({**grown.provenance, **missing}, sort_keys=True),
                    tuple(self._probes[name] for name in grown.probes),
                )
            # Likewise a probe's zero_one_targets (the nineteenth session's) and chance (the twenty-seventh's), where
            # the store does not record them: the stored probe is this one (its sha256), so they are its labels'
            self._probe_updates = {
                name: updates for name, probe in self._probes.items()
                if name in stored_probes and (updates := _missing_probe_attrs(probe, stored_probes[name]))
            }
        finally:
            reader.close()

    # -- public API --------------------------------------------------------------------------------

    def completed(self) -> dict[int, str]:
        """step -> sha256 of every complete checkpoint: committed, being committed or buffered."""
        with self._mutex:
            done = {step: sha for step, sha in self._sha256.items() if step not in self._drop_steps}
            done.update((entry.step, entry.sha256) for entry in self._buffer)
        return done

    def lacking(self) -> dict[int, frozenset[Series]]:
        """step -> the series that a stored checkpoint (committed, being committed or buffered) lacks, of
        those added to the store (`growth`, or by an earlier run that stopped: the store's `pending_series`),
        for each one that lacks some. An entry of those series alone (`CheckpointEntry(series_only=True)`)
        adds them."""
        with self._mutex:
            if not self._pending:
                return {}
            steps = {step for step in self._sha256 if step not in self._drop_steps}
            held = {key: set(self._rows.get(key, {})) for key in self._pending}
            for entry in self._buffer:
                steps.add(entry.step)
                if not entry.series_only:
                    for holding in held.values():
                        holding.discard(entry.step)  # a whole checkpoint replaces the stored one
                for series in entry.series:
                    key = (series.probe, series.layer)
                    if key in held:
                        held[key].add(entry.step)
        missing: dict[int, set[Series]] = {}
        for key, holding in held.items():
            for step in steps - holding:
                missing.setdefault(step, set()).add(key)
        return {step: frozenset(keys) for step, keys in sorted(missing.items())}

    def committed_previous(
        self,
    ) -> tuple[dict[int, dict[Series, int | None]], dict[int, str], dict[int, frozenset[Series]]] | None:
        """What a `StoreReader` of the file would read for `_refresh_successors` (pipeline.py), from memory: step ->
        {series: its prev_step} of every complete checkpoint, step -> its sha256, step -> the series it holds. Only
        where this writer wrote the whole file (no store was read at its path, it has committed since, nothing is
        buffered or to be dropped) and every checkpoint holds every series the provenance names (as a reader
        skips a group lacking one); None otherwise (the caller reads the store)."""
        with self._mutex:
            if not self._own_file or self._fresh or self._buffer or self._job is not None or self._failed \
                    or self._drop_steps or self._drop or self._pending:
                return None
            steps = set(self._sha256)
            if set(self._rows) != _provenance_series(self._provenance) \
                    or any(set(by_step) != steps for by_step in self._rows.values()) \
                    or not all(self._sha256.values()):  # a reader reads an empty text as null
                return None
            keys = frozenset(self._rows)
            compared: dict[int, dict[Series, int | None]] = {step: {} for step in sorted(steps)}
            for key in sorted(self._rows):  # a reader's order: its series sorted
                for step, row in self._rows[key].items():
                    # as stored (a float64 column, `_trajectory_column`) and read back (`_column_values`)
                    previous = math.nan if row.get("prev_step") is None else float(row["prev_step"])
                    compared[step][key] = None if math.isnan(previous) else int(previous)
            return compared, dict(self._sha256), dict.fromkeys(steps, keys)

    def note_file_signatures(self, signatures: Mapping[int, str]) -> None:
        """Record new file signatures (`checkpoints.file_signature`) of stored checkpoints whose file
        was hashed again and found unchanged (touched, or copied without its times), at the next
        commit (at the latest when the writer is flushed or closed): the next resume then need not
        hash them again. Steps not in the store, or stored again meanwhile, are left alone."""
        self._check_open()
        noted = [(int(step), str(sig)) for step, sig in signatures.items()]
        with self._mutex:
            if not self._fresh:
                self._signatures.update((step, sig) for step, sig in noted if step in self._sha256)

    def drop(self, steps: Iterable[int], *together: CheckpointEntry) -> list[CheckpointEntry]:
        """Remove stored checkpoints (their groups and trajectory rows) at the next commit, which holds the
        entries given (`together`: the stored checkpoints compared with them, their cka_prev / overlap_prev
        taken again, `fdl analyze --drop`) too: a kill leaves the store before or after both. Returns as
        add() does. A step not stored, or one of the entries given, is a ValueError."""
        self._check_open()
        wanted = sorted({int(step) for step in steps})
        with self._mutex:
            absent = [step for step in wanted if step not in self._sha256 or step in self._drop_steps]
        clash = sorted(set(wanted) & {entry.step for entry in together})
        if absent or clash:
            raise ValueError(f"drop(): steps {absent or clash} are {'not stored' if absent else 'given as entries too'}")
        self._check_entries(together)
        items = self._dropped_items(wanted)
        with self._mutex:
            self._dropping.update(items)
        return self._tick(together, drop=wanted)

    def _dropped_items(self, steps: Sequence[int]) -> dict[int, str]:
        """The items of the store's `dropped` list that record the removal of these stored steps: each one's
        step, path and sha256, the first step the store keeps the same bytes at (`kept`; None: none), the row of
        the history that computed it (`history`; None: not recorded), when it was removed (`dropped`, UTC)
        and by which fdl and host. The history itself is append-only and records no invocation for a drop:
        a row whose checkpoints were all removed so is named by these, not left pointing at nothing."""
        if self._dropped_log is None or not steps:
            return {}
        with StoreReader(self._path) as reader:  # committed steps: in the store on disk, whichever commit runs
            identities = reader.file_identities()
            computed = {step: reader.computed_by(step) for step in steps if step in identities}
        when = _utc_now()
        host = None if self._invocation is None else self._invocation.get("host")
        items = {}
        for step in steps:
            path, sha, _ = identities.get(step, (None, None, None))  # None: its attributes are unreadable
            kept = min((other for other, (_, digest, _) in identities.items()
                        if sha is not None and other not in steps and digest == sha), default=None)
            items[step] = json.dumps({
                "step": step, "path": path, "sha256": sha, "kept": kept, "history": computed.get(step),
                "dropped": when, "fdl_version": __version__, **({"host": host} if host is not None else {}),
            }, sort_keys=True)
        return items

    def refuse(self, step: int, path: str, kind: str, reason: str) -> None:
        """Record that `fdl analyze` refused the checkpoint at `step` for its values (`kind`: an
        `FdlError.refused_as`; `reason`: the error in one line) in the store's `refused` list, at the next
        commit (flush() and close() commit it alone in a store that exists, as the chance). One item a step: a
        later refusal replaces it, and a commit that stores the step takes it out (so does one that finds it
        stored). Starts no commit: a run goes on to its next checkpoint."""
        self._check_open()
        item = {"step": int(step), "path": str(path), "kind": str(kind), "reason": str(reason),
                "refused": _utc_now(), "fdl_version": __version__}
        host = None if self._invocation is None else self._invocation.get("host")
        if host is not None:
            item["host"] = host
        with self._mutex:
            known = None if self._refused_log is None else self._refused_log.get(int(step))
            same = known is not None and all(json.loads(known).get(key) == item[key] for key in ("path", "kind", "reason"))
            if same:  # refused again for the same reason (a resume): the item as it is, and no commit for it
                self._refusing.pop(int(step), None)
            else:
                self._refusing[int(step)] = json.dumps(item, sort_keys=True)

    def add(self, entry: CheckpointEntry, *together: CheckpointEntry) -> list[CheckpointEntry]:
        """Buffer one checkpoint, starting a commit if one is due; returns the entries made durable
        since the previous add/tick/flush (often [], as commits are throttled and run in the background).

        Entries given in one call (`together`) are buffered in one hold of the lock, so one commit
        holds all of them or none (`fdl analyze --redo`: a checkpoint analysed again and its
        successor's comparison with it)."""
        self._check_open()
        entries = (entry, *together)
        self._check_entries(entries)
        return self._tick(entries)

    def _check_entries(self, entries: Sequence[CheckpointEntry]) -> None:
        for one in entries:
            if not isinstance(one, CheckpointEntry):
                raise ValueError(f"add() takes a CheckpointEntry, got {type(one).__name__}")
            unknown = sorted({s.probe for s in one.series} - set(self._probes))
            if unknown:
                raise ValueError(
                    f"step {one.step}: {'probe' if len(unknown) == 1 else 'probes'} {unknown} "
                    f"{'is' if len(unknown) == 1 else 'are'} not among the writer's probes {sorted(self._probes)}"
                )
            if one.series_only:
                stored = self.completed().get(one.step)
                if stored != one.sha256:
                    raise ValueError(f"step {one.step}: series are added to a stored checkpoint of the same file only "
                                     f"(sha256 {one.sha256[:12]}, stored: {stored and stored[:12]})")

    def tick(self) -> list[CheckpointEntry]:
        """Start the commit of what is buffered if one is due (the throttle above), and return the
        entries made durable since the previous add/flush/tick. With `background=True` the writer's
        scheduler thread starts a due commit by itself, so a caller that waits on something else (a
        slow checkpoint read) needs this only to learn, and announce, what became durable (and to see
        a failed commit's error, after which the scheduler leaves the retry to the caller)."""
        self._check_open()
        return self._tick(())

    def _tick(self, entries: Sequence[CheckpointEntry], *, drop: Sequence[int] = ()) -> list[CheckpointEntry]:
        """add() (with `entries`), drop() (with the steps to `drop` too) and tick(): the error of a commit
        that ended is raised, but only after `entries` are buffered (they are kept for the next commit);
        else a due commit is started.

        The entries are buffered and the commit started in one hold of `_guard`, so the scheduler cannot
        start it in between (nor plan a commit that holds some of them only), and a commit's error is
        raised by a later call than the one that started it, as the caller's (the old order: raise what
        ended, then start)."""
        size = sum(_entry_bytes(entry) for entry in entries)
        error: BaseException | None = None
        if self._job is not None:  # read without the lock: a job that appears meanwhile waits for the next call
            try:
                self._collect(wait=False)
            except BaseException as exc:  # noqa: BLE001 - raised below, once the entry is buffered
                error = exc
        job: _CommitJob | None = None
        commit_here = False
        with self._mutex:
            self._drop_steps.update(drop)
            if entries:
                self._buffer.extend(entries)
                self._buffered_bytes += size
            if error is None and self._buffer and self._job is None and self._due_in() <= 0:
                if self._background:
                    job = self._new_job()
                else:
                    commit_here = True
            elif entries and (len(self._buffer) == len(entries) or self._buffered_bytes >= BUFFER_BYTES):
                # the scheduler waits without a deadline while nothing is buffered; the byte cap makes
                # a commit due at once (see _run_scheduler for what else wakes it)
                self._guard.notify_all()
        if entries and self._background and self._scheduler is None:
            self._start_scheduler()
        if error is not None:
            raise error
        if job is not None:
            self._launch(job)
        elif commit_here:
            self._commit()
        return self._take_durable()

    def flush(self) -> list[CheckpointEntry]:
        """Wait for the running commit and commit the rest; returns every entry made durable since the
        previous add/flush, in the order added."""
        self._check_open()
        with self._held():
            self._collect(wait=True)
            self._commit()
        return self._take_durable()

    def close(self) -> None:
        """Wait for the running commit, commit the rest and release the lock, also when this raises.
        A writer that was given no checkpoint writes nothing: with `overwrite`, the old store stays
        as it is (a run whose reference failed does not replace it with an empty one), and no empty
        store is created.

        The lock is never released while a commit runs: a Ctrl-C while waiting for the running
        commit is raised once it and the commit of the rest are done (a further Ctrl-C stops the
        latter, as it would stop a commit in the caller's thread). A background commit that failed
        is retried with the rest; only the retry's error is raised (nothing buffered is dropped).
        """
        if self._closed:
            return
        interrupt: BaseException | None = None
        try:
            with self._mutex:
                self._stopping = True  # the scheduler starts nothing more, and ends
                self._guard.notify_all()
            try:
                interrupt = self._collect(wait=True, shield=True)
            except Exception:  # noqa: BLE001 - the background commit failed; its entries are still buffered
                interrupt = None  # and are committed again below: its error is raised if that fails too
            self._commit()
        finally:
            try:
                self._halt()
            finally:
                self._closed = True
                self._lock.release()
        if interrupt is not None:
            raise interrupt

    def _halt(self) -> None:
        """Before close() releases the lock, also when a Ctrl-C landed before it stopped the scheduler
        or waited for the commit: the scheduler ends, and no commit of this writer runs (a pending one
        is cancelled, its entries left as they are; a running one is waited for). Without it the
        scheduler outlived close() and could start a commit after the lock was released."""
        with self._mutex:
            self._stopping = True
            self._guard.notify_all()
            job = self._job
        if job is None or job.cancel():
            return
        while True:
            try:
                job.wait()
                return
            except KeyboardInterrupt:  # noqa: PERF203 - close() is on its way out with a Ctrl-C already
                continue

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.hold_back_chance()
        self.close()

    def hold_back_chance(self) -> None:
        """From now on flush() and close() commit an older store's missing probe chance only with something else
        (what is buffered, still committed), never alone (`_plan`); the next resume records it. For a run that
        stopped on an error or a Ctrl-C: leaving the `with` block on an exception says it; a caller that
        flushes first (analyze's `finally`) or closes the writer without the block (the distributed path's
        rank 0) says it before. And for a writer opened for its lock alone (a torchrun part store taken in,
        which may be removed before the writer closes), which writes nothing."""
        with self._mutex:
            self._chance_alone = False

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the StoreWriter of {self._path} is closed")

    def _take_durable(self) -> list[CheckpointEntry]:
        if not self._durable:  # read without the lock (tick's common case): what lands meanwhile is taken next time
            return []
        with self._mutex:
            durable, self._durable = self._durable, []
        return durable

    # -- committing --------------------------------------------------------------------------------

    def _due_in(self) -> float:
        """Seconds until a commit of the buffer is due, <= 0 when it is (the throttle); under `_guard`."""
        if self._buffered_bytes >= BUFFER_BYTES:
            return 0.0
        wait = max(self._min_interval, _THROTTLE_FACTOR * self._last_cost)
        return self._last_commit + wait - time.monotonic()

    def _new_job(self) -> _CommitJob | None:
        """The job of committing the whole buffer, tracked as the running one; under `_guard`, with no
        job tracked. The caller then `_launch`es it, outside the lock."""
        plan = self._plan()
        if plan is None:
            return None
        self._job = _CommitJob(plan)  # tracked before its thread starts: see _CommitJob
        return self._job

    def _launch(self, job: _CommitJob) -> None:
        """Run a job made by `_new_job` in a new background thread (named fdl-store-commit)."""
        try:
            # not a daemon (the scheduler's threads are): interpreter exit waits for a commit in flight
            threading.Thread(
                target=job.run, args=(self._execute, self._finish), name="fdl-store-commit", daemon=False
            ).start()
            return
        except RuntimeError:  # no thread to be had (e.g. at interpreter shutdown): commit in this one
            pass
        job.run(self._execute, self._finish)  # an error is raised by the next add/tick/flush/close
        if isinstance(job.error, Exception) or job.error is None or threading.current_thread() is self._scheduler:
            return
        # A Ctrl-C (or SystemExit) that stopped the commit in the caller's thread is the caller's, now:
        # kept as the job's error it was raised a forward pass later, and close() (which retries only
        # an Exception) raised it without committing what was buffered. Untracked, the entries stay
        # buffered for flush/close, as after a Ctrl-C in a commit of `_commit`.
        with self._mutex:
            if self._job is job:
                self._job = None
                self._guard.notify_all()
        raise job.error

    def _finish(self, job: _CommitJob) -> None:
        """In the job's thread once its commit ended: apply it (it is durable), or keep it tracked with
        its error until the caller's thread raises that (`_collect`); no commit starts meanwhile."""
        with self._mutex:
            if job.error is None:
                self._apply(job.plan, job.cost, job.finished)
                self._job = None
            else:
                self._failed = True
            self._guard.notify_all()  # the scheduler: the next commit's due time moved

    def _start_scheduler(self) -> None:
        thread = threading.Thread(target=self._run_scheduler, name="fdl-store-scheduler", daemon=True)
        self._scheduler = thread  # first: a Ctrl-C while it starts must not make the next add start another
        with contextlib.suppress(RuntimeError):  # no thread to be had: add() and tick() still start commits
            thread.start()

    def _run_scheduler(self) -> None:
        """The scheduler thread: starts each commit as it falls due, so that none waits for a call of
        the caller's thread, which may be stuck for hours in one call (a forward pass of a huge model on
        the CPU, a hung GPU collective, a stalled read), while a kill -9 would lose what is buffered.

        It sleeps on `_guard` until the throttle's wait has passed, and is woken by what can change
        that: an add to an empty buffer or past BUFFER_BYTES, the end of a commit, a failed commit's
        error raised (`_collect`), the end of a flush, and close. It runs no commit itself (a thread of
        its own does, as for add/tick) and ends when the writer closes. After a commit failed it starts
        none until one started by the caller's thread succeeds: the caller sees the error first (the
        next add/tick/flush/close raises it) and decides on the retry, as without the scheduler.
        """
        while True:
            with self._mutex:
                while True:
                    if self._stopping:
                        return
                    delay: float | None = None  # no deadline: nothing to start until woken
                    if self._buffer and self._job is None and not self._holds and not self._failed:
                        delay = self._due_in()
                        if delay <= 0:
                            break
                    self._guard.wait(delay)
                job = self._new_job()
            if job is not None:
                self._launch(job)
            # not kept while this thread sleeps: the plan holds the entries (a run of quick checkpoints
            # into a large store commits hundreds of MB at once), which are dropped once it is applied
            del job

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """While flush() waits and commits in the caller's thread, the scheduler starts no commit."""
        with self._mutex:
            self._holds += 1
        try:
            yield
        finally:
            with self._mutex:
                self._holds -= 1
                self._guard.notify_all()

    def _collect(self, *, wait: bool, shield: bool = False) -> BaseException | None:
        """Raise the error of a background commit that failed (with `wait`: once the running commit
        ended). A commit that succeeded was applied by its own thread (`_finish`).

        A job whose thread has not started yet is cancelled rather than waited for; its entries stay
        buffered. Ctrl-C interrupts the wait, the commit going on, unless `shield`: then the wait
        continues and the KeyboardInterrupt is returned for the caller to raise. Without `wait`, or
        unless flush/close hold the scheduler, a new commit may be running when this returns.
        """
        with self._mutex:
            job = self._job
        if job is None:
            return None
        interrupt: BaseException | None = None
        if wait and not job.cancel():
            while True:
                try:
                    job.wait()
                    break
                except KeyboardInterrupt as exc:
                    if not shield:
                        raise
                    interrupt = exc
        if not job.done():
            return None
        with self._mutex:
            if self._job is not job:  # it succeeded and was applied
                return interrupt
            self._job = None  # failed, or cancelled: its entries are still buffered
            self._guard.notify_all()
        if job.error is not None:
            raise job.error  # the store is unchanged and the job's entries still buffered
        return interrupt

    def _commit(self) -> None:
        """Commit the buffer in the caller's thread (no background commit may be running or start:
        background=False, or flush/close hold the scheduler)."""
        with self._mutex:
            plan = self._plan()
        if plan is None:
            return
        started = time.monotonic()
        self._execute(plan)
        finished = time.monotonic()
        with self._mutex:
            self._apply(plan, finished - started, finished)
            self._guard.notify_all()

    def _plan(self) -> _CommitPlan | None:
        """What committing the whole buffer writes; None when there is nothing to write. Under `_guard`:
        it copies what it needs (the entries are immutable), so the commit reads no shared state."""
        entries = tuple(self._buffer)
        # A resume with nothing new to store still commits a probe's chance that an older store lacks (with
        # the rest of `_probe_updates`): analyze's dominant-class note says classify reads accuracy against it,
        # and without this commit the store went on without it, classify reading 1/C, until a new checkpoint
        # came, which a finished run never gets. Once, as every commit (copy, fsync, rename, under the
        # writer's lock); later resumes find it stored and write nothing. A missing zero_one_targets alone
        # waits for a checkpoint, as docs/store.md has it: no note promises it, and a commit copies the store.
        chance_due = self._chance_alone and any("chance_accuracy" in updates for updates in self._probe_updates.values())
        latest: dict[int, CheckpointEntry] = {}  # a step added twice: the last one wins (series added: joined)
        for entry in entries:
            latest[entry.step] = _joined(latest[entry.step], entry, self._own_row) if entry.step in latest else entry
        refused_log = self._refused_plan(latest)
        # refusals alone are committed as the chance is: by a run that did not stop on an error or a Ctrl-C
        refused_due = self._chance_alone and refused_log is not None
        if (not entries and not self._drop_steps and not self._abandoning
                and (self._fresh or not (self._signatures or chance_due or refused_due))):
            return None  # a fresh store is created by its first checkpoint, not before
        rows = {key: dict(value) for key, value in self._rows.items()}
        changed: dict[Series, set[int]] = {}
        for key, by_step in rows.items():
            for step in [*latest, *self._drop_steps]:
                if step in latest and latest[step].series_only and key not in _keys(latest[step]):
                    continue  # a series added to a stored checkpoint leaves its other series as they are
                if by_step.pop(step, None) is not None:
                    changed.setdefault(key, set()).add(step)
        for entry in latest.values():
            # a series added to a stored checkpoint has its path and sha256 (the run may spell the path otherwise)
            path, sha = self._identity_of(entry, rows) if entry.series_only else (entry.path, entry.sha256)
            for series in entry.series:
                key = (series.probe, series.layer)
                rows.setdefault(key, {})[entry.step] = {"step": entry.step, "path": path, "sha256": sha, **series.scalars}
                changed.setdefault(key, set()).add(entry.step)
        stale = self._stale_trajectories | (set(rows) - self._trajectories_match)
        rewrite = tuple(sorted(set(changed) | stale))
        history, computed_by, series_computed_by = self._history_plan(latest.values())
        growth_update = self._growth_update if entries else None  # written with a checkpoint, never alone
        provenance = None if self._fresh else growth_update[0] if growth_update else self._provenance_update
        model_imports, model_changes = self._imports_update, None
        if self._code_change is not None and not self._fresh and entries:  # with a checkpoint, never alone
            provenance, model_imports, model_changes = self._code_change_plan(entries, provenance, computed_by)
        pending: tuple[Series, ...] | None = None  # the store's pending_series after this commit (None: as it is)
        if (self._pending or self._abandoning) and (growth_update is not None or self._growth_update is None):
            steps = {step for step in self._sha256 if step not in self._drop_steps} | set(latest)
            pending = tuple(sorted(key for key in self._pending if set(rows.get(key, {})) != steps))
        return _CommitPlan(
            entries=entries,
            latest=latest,
            rows=rows,
            changed=changed,
            rewrite=rewrite,
            old_steps={key: sorted(self._rows.get(key, {})) for key in rewrite},
            appendable=frozenset(self._trajectories_match.intersection(rewrite)),
            drop=frozenset(self._drop | {f"step_{step}" for step in self._drop_steps}),
            dropped=frozenset(self._drop_steps),
            stale=frozenset(self._stale_trajectories),
            fresh=self._fresh,
            provenance=provenance,
            model_imports=model_imports,
            model_changes=model_changes,
            new_probes=growth_update[1] if growth_update else (),
            pending=None if self._fresh else pending,
            probes=() if self._fresh else tuple(sorted(self._probe_updates.items())),
            signatures=() if self._fresh else tuple(
                sorted((step, sig) for step, sig in self._signatures.items() if step not in self._drop_steps)
            ),
            history=history,
            computed_by=computed_by,
            series_computed_by=series_computed_by,
            dropped_log=self._dropped_plan(),
            refused_log=refused_log,
            refusing=tuple(self._refusing.items()),
            abandoned=self.abandoned.series if self._abandoning and self.abandoned else frozenset(),
            abandoned_probes=self.abandoned.probes if self._abandoning and self.abandoned else (),
        )

    def _code_change_plan(
        self, entries: Sequence[CheckpointEntry], provenance: str | None,
        computed_by: Mapping[int, int],
    ) -> tuple[str, str | None, str]:
        """(provenance, model_imports, model_changes) to write with the first checkpoints stored after
        --accept-model-change: the store's provenance (with the keys it lacked, or grown) holding the new code's
        sha256, so later resumes (and an fdl before the flag) compare with it; model_imports likewise; and the store's
        `model_changes` with this change appended. Under `_guard`."""
        assert self._code_change is not None
        base = json.loads(provenance) if provenance is not None else dict(self._stored_provenance)
        steps = sorted({entry.step for entry in entries if not entry.series_only} or {entry.step for entry in entries})
        run = computed_by.get(steps[0])
        # a resume can fill in a step below one the old code stored: "from step … on" is then not the whole story
        kept = sorted(step for step in self._sha256 if step > steps[0] and step not in self._drop_steps)
        change = {
            "from_step": steps[0],
            "kept_old": kept,  # the steps stored before, above from_step, that keep the old code's numbers
            "run": run,  # the row of the store's history of the run that stored it; None: unknown
            "time": _utc_now(),
            "fdl_version": __version__,
            "changed": list(self._code_change["changed"]),
        }
        imports = self._code_change.get("model_imports")
        return (
            json.dumps({**base, **self._code_change["provenance"]}, sort_keys=True),
            json.dumps(dict(imports), sort_keys=True) if imports is not None else self._imports_update,
            json.dumps([*self._stored_changes, change], sort_keys=True),
        )

    def _refused_plan(self, latest: Mapping[int, CheckpointEntry]) -> tuple[str, ...] | None:
        """The store's `refused` list once committed, by step, when it changes; under `_guard`. A step stored (by
        this commit, or before) is no refused one."""
        if self._refused_log is None:
            return None
        merged = {**self._refused_log, **self._refusing}
        for step in [*merged]:
            if (step in latest and not latest[step].series_only) or (step in self._sha256 and step not in self._drop_steps):
                del merged[step]
        if merged == self._refused_log:
            return None
        return tuple(merged[step] for step in sorted(merged))

    def _dropped_plan(self) -> tuple[str, ...] | None:
        """The store's `dropped` list once the steps this commit removes are gone, when it grows; under
        `_guard`."""
        if self._dropped_log is None:
            return None
        new = [self._dropping[step] for step in sorted(self._drop_steps) if step in self._dropping]
        return tuple([*self._dropped_log, *new]) if new else None

    @staticmethod
    def _identity_of(entry: CheckpointEntry, rows: Mapping[Series, Mapping[int, Mapping[str, Any]]]) -> tuple[str, str]:
        """(path, sha256) of the stored checkpoint that a `series_only` entry adds series to, as its other
        series' rows hold them."""
        for by_step in rows.values():
            row = by_step.get(entry.step)
            if row is not None and row.get("path") and row.get("sha256"):
                return str(row["path"]), str(row["sha256"])
        return entry.path, entry.sha256

    def _history_plan(self, entries: Iterable[CheckpointEntry]) -> tuple[
            tuple[str, ...] | None, dict[int, int], dict[int, dict[Series, int]]]:
        """(the history's rows once these entries are committed, when it grows; step -> row of each entry
        whose computing invocation is known; step -> {series: row} of the series another invocation than
        their checkpoint's computed: added to it later). A row is appended with the first checkpoint (or
        series) it computed, in the same commit, so the history on disk never names a checkpoint the store
        lacks nor lacks one it holds, whenever the run is stopped. Under `_guard`."""
        if self._history is None:
            return None, {}, {}
        rows = list(self._history)
        computed_by: dict[int, int] = {}
        by_series: dict[int, dict[Series, int]] = {}

        def index(text: str | None) -> int | None:
            row = self._own_row if text is None else _canonical_row(text)
            if row is None:
                return None  # unknown: stored before fdl kept a history, or by a writer given no invocation
            if row not in rows:
                rows.append(row)
            return rows.index(row)

        for entry in entries:
            group = None if entry.series_only else index(entry.computed_by)
            if group is not None:
                computed_by[entry.step] = group
            for series in entry.series:
                if series.computed_by is None and not entry.series_only:
                    continue  # its checkpoint's
                own = index(series.computed_by if series.computed_by is not None else entry.computed_by)
                if own is not None and (entry.series_only or own != group):
                    by_series.setdefault(entry.step, {})[(series.probe, series.layer)] = own
        return (tuple(rows) if len(rows) > len(self._history) else None), computed_by, by_series

    def _execute(self, plan: _CommitPlan) -> None:
        """Write a plan copy-on-write; runs in any thread and touches none of the writer's state.

        HDF5 writes the copy through a `_GuardedFile`, so a write the system refuses stops the commit at its
        next step, HDF5 closing the copy as usual; so does a Ctrl-C or SIGTERM in the main thread, held back while
        HDF5 runs (`signals.deferred`: raised inside the guard, it failed HDF5's write). On failure the store on
        disk is unchanged and the tmp copy removed; an OSError (the system's, or the refused write's) is raised
        as a StoreError, a Ctrl-C as itself.
        """
        tmp = self._tmp_path(os.getpid())
        self._check_room(plan)
        fd: int | None = None
        guard: _GuardedFile | None = None
        try:
            if not plan.fresh:
                shutil.copyfile(self._path, tmp)
                shutil.copymode(self._path, tmp)  # a store kept private (600) stays so
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if plan.fresh else 0), 0o666)
            if plan.fresh:
                with contextlib.suppress(OSError):  # --overwrite: the store it replaces keeps its mode
                    shutil.copymode(self._path, tmp)
            with signals.deferred() as interrupts:  # no KeyboardInterrupt inside HDF5's calls of the guard
                guard = _GuardedFile(fd, interrupts.deliver)
                with h5py.File(guard, "w" if plan.fresh else "r+", libver=_LIBVER) as store:
                    if plan.fresh:
                        self._create(store)
                    self._write_plan(store, plan, guard)
                    store.flush()
                guard.check()
            os.close(fd)
            fd = None
            _fsync_path(tmp)
            os.replace(tmp, self._path)
            _fsync_path(self._path.parent, directory=True)
        except BaseException as exc:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            refused = guard.error if guard is not None and guard.error is not None else exc
            if isinstance(refused, OSError) and isinstance(exc, Exception):  # a Ctrl-C stays one
                raise _write_error(self._path, tmp, refused, fresh=plan.fresh) from None
            raise

    def _write_plan(self, store: h5py.File, plan: _CommitPlan, guard: _GuardedFile) -> None:
        """What `_execute` writes into the store's copy; stops at the step after a write the system refused."""
        if plan.provenance is not None:
            store.attrs["provenance"] = plan.provenance
        if plan.model_imports is not None:
            store.attrs["model_imports"] = plan.model_imports
        if plan.model_changes is not None:
            store.attrs["model_changes"] = plan.model_changes
        for probe in plan.new_probes:
            _write_probe(store.require_group("probes"), probe)
        for name, updates in plan.probes:
            if f"probes/{name}" in store:
                store[f"probes/{name}"].attrs.update(updates)
        if plan.pending:
            store.attrs["pending_series"] = json.dumps([list(key) for key in plan.pending])
        elif plan.pending is not None and "pending_series" in store.attrs:
            del store.attrs["pending_series"]
        checkpoints = store.require_group("checkpoints")
        if plan.abandoned:
            _remove_series(store, plan.abandoned, plan.abandoned_probes)
        for name in plan.drop:
            if name in checkpoints:
                del checkpoints[name]
        if plan.history is not None:
            store.attrs["history"] = "[" + ", ".join(plan.history) + "]"
        if plan.dropped_log is not None:
            store.attrs["dropped"] = "[" + ", ".join(plan.dropped_log) + "]"
        if plan.refused_log:
            store.attrs["refused"] = "[" + ", ".join(plan.refused_log) + "]"
        elif plan.refused_log is not None and "refused" in store.attrs:
            del store.attrs["refused"]  # every refused step stored since: as a store that never refused one
        guard.check()
        for entry in plan.latest.values():
            _write_checkpoint(checkpoints, entry, plan.computed_by.get(entry.step),
                              plan.series_computed_by.get(entry.step, {}))
            guard.check()
        for step, signature in plan.signatures:
            # a checkpoint written whole records its own; series added to one leave its attributes
            if (step not in plan.latest or plan.latest[step].series_only) and f"step_{step}" in checkpoints:
                checkpoints[f"step_{step}"].attrs["file_signature"] = signature
        trajectories = store.require_group("trajectories")
        for key in plan.rewrite:
            _write_trajectory(
                trajectories,
                key,
                plan.rows.get(key, {}),
                plan.changed.get(key, set()),
                plan.old_steps[key],
                appendable=key in plan.appendable,
            )
            guard.check()

    def _check_room(self, plan: _CommitPlan) -> None:
        """Refuse a commit whose copy of the store would not fit in its folder's free space, before anything is
        written: a full disk met by HDF5 itself, while it writes the copy, raised h5py's RuntimeError, and the
        failed close after it left HDF5 in a state that printed a traceback for every object freed and could end
        the process by a segmentation fault. Counted: the store's copy, the new arrays twice, the trajectories
        it rewrites and 256 KiB for HDF5's own metadata. A file system that reports no size (some FUSE mounts)
        is not checked."""
        try:
            stats = os.statvfs(self._path.parent)
        except (OSError, AttributeError):  # no statvfs (Windows), or it failed: HDF5's own error it is
            return
        if stats.f_blocks <= 0:
            return
        free = stats.f_bavail * stats.f_frsize
        copied = 0
        if not plan.fresh:
            with contextlib.suppress(OSError):
                copied = self._path.stat().st_size
        rows = sum(len(plan.rows.get(key, {})) for key in plan.rewrite)  # a row: 8 bytes a field, and the strings
        need = copied + 2 * sum(_entry_bytes(entry) for entry in plan.entries) + rows * (8 * len(RECORD_FIELDS) + 256)
        need += 1 << 18
        if need > free:
            raise StoreError(
                f"could not write {self._path} (the store on disk is unchanged)",
                got=f"not enough free space in {self._path.parent}: a commit needs about {_mib(need)} "
                f"(a copy of the store and the new checkpoints), {_mib(free)} free",
                fix=f"free disk space or choose another --out, {_RERUN}",
            )

    def _apply(self, plan: _CommitPlan, cost: float, finished: float) -> None:
        """The writer's state once a plan is durable on disk; under `_guard`."""
        self._rows = {key: value for key, value in plan.rows.items() if value}
        self._trajectories_match = set(self._rows)
        for step in plan.dropped:
            self._sha256.pop(step, None)
            self._signatures.pop(step, None)
            self._dropping.pop(step, None)
        if plan.dropped_log is not None:
            self._dropped_log = list(plan.dropped_log)
        if plan.refused_log is not None:
            self._refused_log = {json.loads(item)["step"]: item for item in plan.refused_log}
        for step, item in plan.refusing:
            if self._refusing.get(step) == item:  # not refused again since the plan was made
                del self._refusing[step]
        self._drop_steps -= plan.dropped
        if plan.abandoned:
            self._abandoning = False
        for entry in plan.entries:
            self._sha256[entry.step] = entry.sha256
        del self._buffer[: len(plan.entries)]  # entries added since the plan was made stay
        self._buffered_bytes -= sum(_entry_bytes(entry) for entry in plan.entries)
        self._drop -= plan.drop
        self._stale_trajectories -= plan.stale
        if plan.history is not None:
            self._history = list(plan.history)
        if plan.provenance is not None and plan.provenance == self._provenance_update:
            self._provenance_update = None
        if plan.model_imports is not None and plan.model_imports == self._imports_update:
            self._imports_update = None
        if self._growth_update is not None and plan.provenance == self._growth_update[0]:
            self._growth_update = self._provenance_update = None  # the grown provenance holds the keys it lacked
        if plan.provenance is not None:  # what a later `_code_change_plan` starts from
            self._stored_provenance = json.loads(plan.provenance)
        if plan.model_changes is not None and self._code_change is not None:
            # the new code's provenance holds the keys the store lacked; its model_imports, the ones to record
            self._code_change = self._provenance_update = self._imports_update = None
            self._stored_changes = json.loads(plan.model_changes)
        for name, _ in plan.probes:
            self._probe_updates.pop(name, None)
        for step, signature in plan.signatures:
            if self._signatures.get(step) == signature:
                del self._signatures[step]
        self._fresh = False
        self._failed = False
        self._last_cost = cost
        self._last_commit = finished
        self._durable.extend(plan.entries)

    def _create(self, store: h5py.File) -> None:
        """A fresh store's root: its attributes, its probes, and empty checkpoints and trajectories."""
        store.attrs["format"] = STORE_FORMAT
        store.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
        store.attrs["fdl_version"] = __version__
        store.attrs["created"] = _utc_now()
        store.attrs["provenance"] = json.dumps(self._provenance, sort_keys=True)
        probes = store.create_group("probes")
        for probe in self._probes.values():
            _write_probe(probes, probe)
        store.create_group("checkpoints")
        store.create_group("trajectories")


def _model_imports_attribute(attrs: Any) -> dict[str, str] | None:
    """The store's `model_imports` (module -> sha256), None when absent or not such a JSON object."""
    if "model_imports" not in attrs:
        return None
    try:
        value = json.loads(_as_str(attrs["model_imports"]))
    except (ValueError, TypeError):
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def _missing_probe_attrs(probe: ProbeInfo, stored: ProbeInfo) -> dict[str, Any]:
    """The attributes of `probe` that a resumed store's record of it (`stored`, written by an older fdl) lacks:
    zero_one_targets, and a class-label probe's chance_accuracy and label_entropy: both where it lacks either
    (absent, or out of range and so read as absent), as classify reads them together (`regimes.chance`), and its
    anchor_skew; the probe file is the stored one (its sha256), so a value stored is the one written again (the
    --anchor-size too: a resume of other options is refused, `resume_differences`)."""
    updates: dict[str, Any] = {}
    if probe.zero_one_targets is not None and stored.zero_one_targets is None:
        updates["zero_one_targets"] = bool(probe.zero_one_targets)
    if (probe.chance_accuracy is not None and probe.label_entropy is not None
            and (stored.chance_accuracy is None or stored.label_entropy is None) and probe.sha256 == stored.sha256):
        updates["chance_accuracy"] = np.float64(probe.chance_accuracy)
        updates["label_entropy"] = np.float64(probe.label_entropy)
    if probe.anchor_skew is not None and stored.anchor_skew is None and probe.sha256 == stored.sha256:
        updates["anchor_skew"] = json.dumps(dict(probe.anchor_skew))
    return updates


def _write_probe(probes: h5py.Group, probe: ProbeInfo) -> None:
    """/probes/<name>: its attributes and, for 1-D inputs, its anchors (a fresh store's, or one added to a store)."""
    node = probes.create_group(probe.name)
    _new_attr(node, "sha256", probe.sha256)
    _new_attr(node, "n", np.int64(probe.n))
    _new_attr(node, "task", probe.task)
    _new_attr(node, "n_outputs", np.int64(probe.n_outputs))
    if probe.zero_one_targets is not None:
        _new_attr(node, "zero_one_targets", np.bool_(probe.zero_one_targets))
    if probe.x_sha256:
        _new_attr(node, "x_sha256", probe.x_sha256)
    if probe.chance_accuracy is not None and probe.label_entropy is not None:  # class labels only
        _new_attr(node, "chance_accuracy", np.float64(probe.chance_accuracy))
        _new_attr(node, "label_entropy", np.float64(probe.label_entropy))
    if probe.anchor_skew is not None:  # class labels whose anchor rows misrepresent the probe's classes only
        _new_attr(node, "anchor_skew", json.dumps(dict(probe.anchor_skew)))
    for name in ("anchor_x", "anchor_y"):
        value = getattr(probe, name)
        if value is not None:
            _write_array(node, name, value)


def _keys(entry: CheckpointEntry) -> set[Series]:
    return {(series.probe, series.layer) for series in entry.series}


def _joined(first: CheckpointEntry, then: CheckpointEntry, own_row: str | None) -> CheckpointEntry:
    """Two entries of one step in one commit as the one it writes: a whole checkpoint replaces what came
    before; series added (`series_only`) join the entry before them, replacing its series of theirs, and keep
    the invocation that computed them (`then`'s: `own_row`, the writer's, when it names none)."""
    if not then.series_only:
        return then
    kept = tuple(series for series in first.series if (series.probe, series.layer) not in _keys(then))
    row = then.computed_by if then.computed_by is not None else own_row
    added = then.series if first.series_only or row is None else tuple(
        series if series.computed_by is not None else replace(series, computed_by=row) for series in then.series)
    return replace(first, series=kept + added)


def _outdated_fields(group: h5py.Group) -> list[str]:
    """The ADDED_FIELDS a series' trajectories lack (written by an fdl before the field) or hold with
    another length than `step`: an earlier fdl resuming this one's store appends the fields it knows to
    the trajectories and leaves the newer datasets as they were, shorter (their rows are read from the
    checkpoint groups instead, not taken for damage)."""
    steps = group["step"].shape
    return sorted(name for name in ADDED_FIELDS if name not in group or group[name].shape != steps)


def _appendable(dataset: Any, name: str) -> bool:
    """Whether a stored trajectory dataset takes rows appended as fdl writes it: 1-D, chunked and resizable, of
    the field's dtype. One rewritten by hand with h5py or by a tool (`h5repack -l CONTI`: contiguous, of fixed
    size; `step` as floats; a str field of fixed-length strings, into which HDF5 converts no variable-length
    one) reads as ever but is rewritten whole (h5py's resize raised a TypeError, the write an OSError)."""
    if not isinstance(dataset, h5py.Dataset) or dataset.chunks is None or dataset.maxshape != (None,):
        return False
    if name in STR_FIELDS:
        text = h5py.check_string_dtype(dataset.dtype)
        return text is not None and text.length is None
    return bool(dataset.dtype == (np.int64 if name == "step" else np.float64))


def _stored_columns(trajectories: h5py.Group, probe: str, layer: str) -> dict[str, Any]:
    """A stored trajectory's datasets by field (None for a field it lacks), each opened once; {} without it."""
    if probe not in trajectories or layer not in trajectories[probe]:
        return {}
    group = trajectories[probe][layer]
    return {name: group.get(name) for name in RECORD_FIELDS}


def _write_trajectory(
    trajectories: h5py.Group,
    key: Series,
    by_step: Mapping[int, Mapping[str, Any]],
    changed: set[int],
    old_steps: Sequence[int],
    *,
    appendable: bool,
) -> None:
    """Append in place when only later steps were added (the common case), else rewrite the series.

    `old_steps` are the steps the stored trajectory holds, sorted; `appendable` says that it holds
    exactly those (it is intact and up to date).
    """
    probe, layer = key
    rows = [by_step[step] for step in sorted(by_step)]
    # Each stored dataset opened once, for the check and the append: the group and each dataset were opened three
    # times a field, 6.4 against 3.1 ms of the writer thread's CPU a series a commit (docs/benchmarks.md).
    datasets = _stored_columns(trajectories, probe, layer) if appendable else {}
    if (
        datasets
        and all(_appendable(datasets[name], name) for name in RECORD_FIELDS)
        and (not old_steps or all(step > old_steps[-1] for step in changed))
        and all(step in by_step for step in changed)
    ):
        start = len(old_steps)
        for name in RECORD_FIELDS:
            _append_column(datasets[name], start, len(rows), _trajectory_column(name, rows[start:]))
        return
    datasets.clear()  # closed before the series is deleted and written anew
    parent = trajectories.require_group(probe)
    if layer in parent:
        del parent[layer]
    if not rows:
        return
    group = parent.create_group(layer)
    for name in RECORD_FIELDS:
        _new_column(group, name, _trajectory_column(name, rows))


def _new_column(group: h5py.Group, name: str, column: np.ndarray) -> None:
    """`group.create_dataset(name, data=column, dtype=_STR or the column's, maxshape=(None,), chunks=(256,),
    fletcher32=not a str)`, the same dataset through h5py's low-level calls (`_write_array`): a trajectory."""
    text = column.dtype.kind == "O"
    _new_dataset(group, name, column.view(_STR) if text else column, _dcpl((_TRAJECTORY_CHUNK,), fletcher32=not text),
                 h5py.h5s.create_simple(column.shape, (h5py.h5s.UNLIMITED,)))


def _append_column(dataset: h5py.Dataset, start: int, length: int, column: np.ndarray) -> None:
    """`dataset.resize((length,)); dataset[start:] = column` through h5py's low-level calls (the rows `start` on of
    a trajectory `_appendable` took; a str column as h5py's variable-length UTF-8)."""
    dataset.id.set_extent((length,))
    if not len(column):
        return
    selected = dataset.id.get_space()
    selected.select_hyperslab((start,), (len(column),))
    data = column.view(_STR) if column.dtype.kind == "O" else column
    dataset.id.write(h5py.h5s.create_simple((len(column),)), selected, data, _h5_types(data.dtype)[1])


def _renamed_probes(stored: Mapping[str, ProbeInfo], run: Mapping[str, ProbeInfo]) -> list[tuple[str, str, str]]:
    """(this run's name, the store's name, sha256) of each probe of this run that the store holds, the
    same file, under another name only (neither name on the other side). One store name for one run
    name: two probes of one file (`--probe a=P --probe b=P`) are paired with two of the store's names
    of that file, in their orders, or the second is left unpaired (both were told "name it so, --probe
    probe=PATH, to resume", one name for two probes)."""
    gone: dict[str, list[str]] = {}
    for name, info in stored.items():
        if name not in run:
            gone.setdefault(info.sha256, []).append(name)
    pairs = []
    for name, info in run.items():
        if name not in stored and gone.get(info.sha256):
            pairs.append((name, gone[info.sha256].pop(0), info.sha256))
    return pairs


@dataclass(frozen=True)
class Growth:
    """What a resume adds to a store (`StoreWriter`, `growth`): probes and layers beside every stored one.

    `provenance` is the store's provenance once they are added: its probes with the new ones, its layers
    in its order followed by the new ones (in this run's order), `probe_order` likewise; every other key
    as stored. `series` are the (probe, layer) pairs that the stored checkpoints lack."""

    probes: tuple[str, ...]
    layers: tuple[str, ...]
    series: frozenset[Series]
    provenance: Mapping[str, Any]

    def describe(self) -> str:
        """'probe 'test'', 'layers 'fc1' and 'fc2'', 'probe 'test' and layer 'fc1''."""
        return _probes_and_layers(self.probes, self.layers)


def _probes_and_layers(probes: Sequence[str], layers: Sequence[str]) -> str:
    """'probe 'test'', 'layers 'fc1' and 'fc2'', 'probe 'test' and layer 'fc1''."""
    def named(kind: str, names: Sequence[str]) -> str:
        return f"{kind}{'s' if len(names) > 1 else ''} " + " and ".join(repr(name) for name in names)

    return " and ".join(named(kind, names) for kind, names in (("probe", probes), ("layer", layers)) if names)


@dataclass(frozen=True)
class Abandonment:
    """An unfinished addition that a resume gives up (`StoreWriter(abandon_addition=True)`, `abandonment`): the
    probes and layers it added, their `series` (the store's `pending_series`), and `provenance`, the store's once
    they are taken out (their probes and layers gone, every other key as stored); `held`: how many checkpoints
    hold some of those series."""

    probes: tuple[str, ...]
    layers: tuple[str, ...]
    series: frozenset[Series]
    provenance: Mapping[str, Any]
    held: int

    def describe(self) -> str:
        """'probe 'test'', 'layer 'fc1'', ... (`Growth.describe`)."""
        return _probes_and_layers(self.probes, self.layers)


def abandonment(reader: StoreReader, run: Mapping[str, Any], run_probes: Mapping[str, ProbeInfo]) -> Abandonment | None:
    """What a resume with `run`'s provenance and probes gives up with --abandon-addition: the probes and layers
    of the store that an `fdl analyze` which stopped was adding (every series of each one among its
    `pending_series`), which the run leaves out, and no other. None when the store holds no unfinished addition
    (nothing to give up: the resume goes on as any other, so a command killed once it had given it up, run
    again, finishes). A run that leaves out other probes or layers, or not those, is refused (StoreError)."""
    pending = reader.pending_series
    stored = reader.provenance
    layers, run_layers = stored.get("layers"), run.get("layers")
    if not pending or not (isinstance(layers, list) and isinstance(run_layers, list)):
        return None
    probes = list(reader.probes())
    added_probes = tuple(name for name in probes if all((name, label) in pending for label in layers))
    added_layers = tuple(label for label in layers if all((name, label) in pending for name in probes))
    left_probes = tuple(name for name in probes if name not in run_probes)
    left_layers = tuple(label for label in layers if label not in run_layers)

    def series_of(names: Sequence[str], labels: Sequence[str]) -> frozenset[Series]:
        return frozenset((name, label) for name in probes for label in layers if name in names or label in labels)

    shown = ", ".join(f"{probe}/{layer}" for probe, layer in sorted(pending))
    if series_of(added_probes, added_layers) != pending:
        raise StoreError(
            f"--abandon-addition: the series {reader._path} lacks at some checkpoints ({shown}) are not those of "
            "whole probes or layers, so no probe or layer can be taken out to give them up",
            fix="finish the addition (the command that added them, without --abandon-addition), or pass --overwrite "
                "to start the store afresh, or another --out",
        )
    if (left_probes, left_layers) != (added_probes, added_layers):
        flags = " ".join([*(f"--probe {name}=PATH" for name in added_probes), *(f"--layer {label}" for label in
                                                                                   added_layers)])
        left = _probes_and_layers(left_probes, left_layers)
        raise StoreError(
            f"--abandon-addition gives up the unfinished addition of {_probes_and_layers(added_probes, added_layers)} "
            f"to {reader._path} ({shown}), and this run leaves out " + (left if left else "none of them"),
            fix="leave out those it added, giving every other probe and layer as the store has them (not "
                f"{flags}), to give it up; or, to finish it, the command that added them, without --abandon-addition",
        )
    held = sum(1 for step in reader.checkpoint_steps() if reader.held(step) & pending)
    order = stored.get("probe_order")
    provenance = {
        **stored,
        "probes": {name: sha for name, sha in dict(stored.get("probes") or {}).items() if name not in added_probes},
        "layers": [label for label in layers if label not in added_layers],
        **({"probe_order": [name for name in order if name not in added_probes]} if isinstance(order, list) else {}),
    }
    return Abandonment(probes=added_probes, layers=added_layers, series=pending, provenance=provenance, held=held)


def _remove_series(store: h5py.File, series: Iterable[Series], probes: Iterable[str]) -> None:
    """Take `series` out of a store (an addition given up): their groups in every checkpoint group and their
    trajectories, a probe's group where none of its layers is left, and `probes`' groups under /probes."""
    for parent in (*store["checkpoints"].values(), store["trajectories"]):
        for probe, layer in series:
            if probe in parent and layer in parent[probe]:
                del parent[probe][layer]
            if probe in parent and not len(parent[probe]):
                del parent[probe]
    for probe in probes:
        if probe in store["probes"]:
            del store["probes"][probe]


def resume_differences(
    stored: Mapping[str, Any], stored_probes: Mapping[str, ProbeInfo], run: Mapping[str, Any],
    run_probes: Mapping[str, ProbeInfo],
) -> tuple[list[str], Growth | None]:
    """(what differs between a store and a run that resumes it, as 'key: old (store) vs new (this run)';
    the probes and layers the run adds, `growth`). Every key of the provenance but UNCOMPARED_PROVENANCE
    is compared, and each probe's ProbeInfo; a run that adds probes or layers beside every stored one has
    the rest compared (docs/store.md, "Adding a probe or a layer")."""
    # Where the run was computed is recorded but not compared: a store may be resumed elsewhere.
    ignored = UNCOMPARED_PROVENANCE | ({"model"} if _same_model_code(stored, run) else set())
    grown = growth(stored, stored_probes, run, run_probes)
    compared = run if grown is None else {**run, "probes": stored.get("probes"), "layers": stored.get("layers")}
    differences = _dict_diff(
        {k: _model_in_words(k, v) for k, v in stored.items() if k not in ignored},
        {k: _model_in_words(k, v) for k, v in compared.items() if k not in ignored},
    )
    for name in sorted(set(stored_probes) | (set(run_probes) if grown is None else set())):
        old, new = stored_probes.get(name), run_probes.get(name)
        if old != new:
            differences.append(f"probe {name}: {_describe_probe(old)} (store) vs {_describe_probe(new)} (this run)")
    # a probe's file said once: "probe NAME" (its sha256, n, task) says what the provenance's "probes.NAME" does
    described = tuple(f"probes.{d.split(': ')[0].removeprefix('probe ')}: " for d in differences if d.startswith("probe "))
    differences = [d for d in differences if not d.startswith(described)]
    # overlap_k is recorded only where it is not min(top_k, C): a change of --top-k alone added or took away its
    # line ("absent (store) vs 4 (this run)") beside top_k's, the overlaps' k the same. Said only where that k differs.
    if _same_overlap_k(stored, stored_probes, run, run_probes) and any(
            not d.startswith("options.overlap_k: ") for d in differences):
        differences = [d for d in differences if not d.startswith("options.overlap_k: ")]
    return differences, grown


class _Words(str):
    """A text that a message says as it is, unquoted (`_short` quotes the others as their repr)."""

    def __repr__(self) -> str:
        return str(self)


def _model_in_words(key: str, value: Any) -> Any:
    """The provenance's `model` null (no --model: the checkpoints' modules saved whole) said in words, not `None`."""
    return _Words(WHOLE_MODULES) if key == "model" and value is None else value


def _same_overlap_k(
    stored: Mapping[str, Any], stored_probes: Mapping[str, ProbeInfo], run: Mapping[str, Any],
    run_probes: Mapping[str, ProbeInfo],
) -> bool:
    """Whether a store and a run that resumes it take the overlaps over one k (`overlap_k_recorded`), recorded or not."""
    ks = []
    for provenance, probes in ((stored, stored_probes), (run, run_probes)):
        options = provenance.get("options")
        outputs = max((info.n_outputs for info in probes.values()), default=None)
        ks.append(overlap_k_recorded(options, outputs) if isinstance(options, Mapping) else None)
    return ks[0] is not None and ks[0] == ks[1]


def growth(
    stored: Mapping[str, Any], stored_probes: Mapping[str, ProbeInfo], run: Mapping[str, Any],
    run_probes: Mapping[str, ProbeInfo],
) -> Growth | None:
    """The probes and layers a run adds to a store, or None when it adds none or is no extension of it.

    An extension keeps every stored probe under its name with the same file (ProbeInfo equal) and every
    stored layer, in the store's order among the run's (`--layer b --layer a` on a store of a, b is another
    run, as it was before adding existed); it may add probes anywhere, and layers after the stored ones (the
    grown store lists its layers so: `--layer new --layer a` on a store of a, added, left a store that the
    same command then resumed as another run, `_layers_after_stored`). Whether the rest of the provenance is
    the store's is the caller's check (`StoreWriter._load_existing`)."""
    old_layers, new_layers = stored.get("layers"), run.get("layers")
    old_names = stored.get("probes")
    if not (isinstance(old_layers, list) and isinstance(new_layers, list) and isinstance(old_names, dict)):
        return None
    if not all(isinstance(name, str) for name in [*old_layers, *new_layers, *old_names]):
        return None
    if set(old_names) != set(stored_probes) or any(
            name not in run_probes or run_probes[name] != info for name, info in stored_probes.items()):
        return None
    if new_layers[:len(old_layers)] != old_layers:  # the stored layers first, in their order (`_layers_after_stored`)
        return None
    probes = tuple(name for name in run_probes if name not in stored_probes)
    layers = tuple(dict.fromkeys(label for label in new_layers if label not in old_layers))
    if not probes and not layers:
        return None
    all_layers = [*old_layers, *layers]
    series = frozenset((probe, layer) for probe in [*stored_probes, *probes] for layer in all_layers) - frozenset(
        (probe, layer) for probe in stored_probes for layer in old_layers)
    order = stored.get("probe_order")
    if not (isinstance(order, list) and all(isinstance(name, str) for name in order)):
        order = list(run.get("probe_order") or [])
    order = [*order, *(name for name in probes if name not in order)]
    run_shas = run["probes"] if isinstance(run.get("probes"), dict) else {}
    provenance = {
        **stored,
        "probes": {**old_names, **{name: run_shas.get(name, run_probes[name].sha256) for name in probes}},
        "layers": all_layers,
        "probe_order": order,
    }
    return Growth(probes=probes, layers=layers, series=series, provenance=provenance)


def _unfinished(reader: StoreReader, series: Iterable[Series], it: str = "it") -> str:
    """How far an `fdl analyze` that stopped before it was done added `series` (of the probes or layers that
    `it` names) to the store ("added to 2 of its 4 checkpoints by ..."), where each is one of its
    `pending_series` and some checkpoint lacks one; else "" (every checkpoint holds them)."""
    keys = set(series)
    if not keys or not keys <= reader.pending_series:
        return ""
    lacking, total = len(reader.lacking(keys)), len(reader.checkpoint_steps())
    if not lacking:
        return ""
    return (f"added to {total - lacking} of its {total} checkpoints by an `fdl analyze` that stopped before it was "
            f"done (the same command with {it} adds {it} to the other {lacking})")


def _left_out_layers(reader: StoreReader, run: Any) -> list[str]:
    """The stored layers that a run leaves out, where its layers are the store's without them (in its order or
    another: the fix gives the store's order): at every checkpoint (`--layer 2:input` on a store of `2:input`
    and `0`: its fix named only --overwrite and another --out), or being added by an `fdl analyze` that stopped
    before it was done (`_unfinished`); else []."""
    stored = reader.provenance.get("layers")
    if not (isinstance(stored, list) and isinstance(run, list) and all(isinstance(n, str) for n in [*stored, *run])):
        return []
    left = [label for label in stored if label not in run]
    if not left or not all(label in stored for label in run):
        return []
    return left


def _layers_reordered(stored: Any, run: Any) -> list[str] | None:
    """The store's layers, where the run gives the same layers in another order (`--layer 0 --layer 2:input` on
    a store of `2:input` and `0`: its fix named only --overwrite and another --out); else None."""
    if not (isinstance(stored, list) and isinstance(run, list) and all(isinstance(n, str) for n in [*stored, *run])):
        return None
    if run == stored or len(run) != len(stored) or sorted(run) != sorted(stored):
        return None
    return list(stored)


def _layers_after_stored(stored: Any, run: Any) -> list[str] | None:
    """The run's layers with the store's first, in its order, then the others in the run's: what adds the
    others to the store (`growth`), where the run gives every stored layer in the store's order but another
    layer before one of them; else None."""
    if not (isinstance(stored, list) and isinstance(run, list) and all(isinstance(n, str) for n in [*stored, *run])):
        return None
    added = [label for label in run if label not in stored]
    if not added or [label for label in run if label in stored] != stored or run[:len(stored)] == stored:
        return None
    return [*stored, *dict.fromkeys(added)]


def _layers_beside_stored(stored: Any, run: Any) -> list[str] | None:
    """The store's layers, in its order, then the run's new ones: what adds them to the store, where the run
    names a layer the store lacks and leaves out one it holds (`--layer head.0` on a store of the default
    `fc:input`, meant as one more layer: its fix named only --overwrite and another --out); else None."""
    if not (isinstance(stored, list) and isinstance(run, list) and all(isinstance(n, str) for n in [*stored, *run])):
        return None
    added = [label for label in run if label not in stored]
    if not added or all(label in run for label in stored):
        return None
    return [*stored, *dict.fromkeys(added)]


def _rename_fix(renamed: Sequence[tuple[str, str, str]]) -> str:
    """What to pass so that this run names its probes as the store does (`_renamed_probes`), in one
    sentence for all of them."""
    digests = list(dict.fromkeys(sha[:12] for *_, sha in renamed))
    files = f"the same file, sha256 {digests[0]}" if len(digests) == 1 else f"the same files, sha256 {', '.join(digests)}"
    if len(renamed) == 1:
        new, old, _ = renamed[0]
        return f"this run's probe {new!r} is the store's probe {old!r} ({files}): name it so, --probe {old}=PATH"
    news = " and ".join(repr(new) for new, _, _ in renamed)
    olds = " and ".join(repr(old) for _, old, _ in renamed)
    flags = " ".join(f"--probe {old}=PATH" for _, old, _ in renamed)
    each = " (each PATH the file of the probe named so now)" if len(digests) > 1 else ""
    return f"this run's probes {news} are the store's probes {olds}, in that order ({files}): name them so, {flags}{each}"


def _describe_probe(probe: ProbeInfo | None) -> str:
    if probe is None:
        return "absent"
    return f"sha256={probe.sha256[:12]} n={probe.n} task={probe.task} n_outputs={probe.n_outputs}"


def _write_array(group: h5py.Group, name: str, value: np.ndarray) -> None:
    """`group.create_dataset(name, data=value, chunks=True, fletcher32=True)` (an empty array: `data=value` alone),
    the same dataset in the file, through h5py's low-level calls. Checksummed chunks turn flipped bytes into a read
    error instead of silently wrong numbers. h5py's high-level layer made a property list, guessed the chunks and
    checked its arguments anew for each dataset (70 in a commit of 7 tiny checkpoints, with the trajectories'): the
    lists are kept (`_dcpl`), the chunks still h5py's own guess (`_array_dcpl`), and tests/test_s40_commit.py
    compares each object with what the high-level calls write."""
    if not value.size:
        group.create_dataset(name, data=value)
        return
    data = np.asarray(value, order="C")
    _new_dataset(group, name, data, _array_dcpl(data.shape, data.dtype), h5py.h5s.create_simple(data.shape))


def _new_dataset(group: h5py.Group, name: str, data: np.ndarray, dcpl: Any, space: Any) -> None:
    """What h5py's `create_dataset` does once it has its property list and dataspace: the dataset, of `data`'s
    type as h5py maps it (`_h5_types`), created and written whole."""
    stored, memory = _h5_types(data.dtype)
    dataset = h5py.h5d.create(group.id, name.encode(), stored, space, dcpl=dcpl)
    try:
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, data, memory)
    finally:
        dataset.close()


#: The HDF5 types h5py gives each NumPy dtype the store writes (`h5t.py_create`), by the dtype's `str` (an object
#: dtype's with its metadata: h5py's str dtype): the file's (logical: a bool an enum, a str variable-length UTF-8)
#: and the memory's, which h5py's writes take when given none (a str: its Python object type, which h5py converts).
_H5_TYPES: dict[Any, tuple[Any, Any]] = {}
#: Dataset creation property lists by what sets them; HDF5 copies the list into each dataset it creates.
_DCPLS: dict[tuple[Any, ...], Any] = {}
#: `_write_array`'s chunk shapes by array shape and item size, as h5py guesses them.
_CHUNKS: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
_KEPT = 256  # shapes met by one process: a handful a model; a cache starts over past this many


def _h5_types(dtype: np.dtype) -> tuple[Any, Any]:
    key = dtype.str if dtype.kind != "O" else (dtype.str, repr(dtype.metadata))
    types = _H5_TYPES.get(key)
    if types is None:
        types = _H5_TYPES[key] = (h5py.h5t.py_create(dtype, logical=True), h5py.h5t.py_create(dtype))
    return types


def _dcpl(chunks: tuple[int, ...], *, fletcher32: bool) -> Any:
    """The creation property list h5py's `create_dataset` makes for these chunks and this checksum, with its defaults
    (no fill value set, no timestamps, attribute creation order not tracked: h5py's `track_order`, never set)."""
    key = (chunks, fletcher32)
    dcpl = _DCPLS.get(key)
    if dcpl is None:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(chunks)
        if fletcher32:
            dcpl.set_fletcher32()
        dcpl.set_obj_track_times(False)
        dcpl.set_attr_creation_order(0)
        if len(_DCPLS) >= _KEPT:
            _DCPLS.clear()
        _DCPLS[key] = dcpl
    return dcpl


def _array_dcpl(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """`chunks=True, fletcher32=True`'s property list: the chunk shape h5py guesses for `shape` (its own function)."""
    key = (shape, dtype.itemsize)
    chunks = _CHUNKS.get(key)
    if chunks is None:
        if len(_CHUNKS) >= _KEPT:
            _CHUNKS.clear()
        chunks = _CHUNKS[key] = h5py.filters.guess_chunk(shape, None, dtype.itemsize)
    return _dcpl(chunks, fletcher32=True)


def _write_checkpoint(
    checkpoints: h5py.Group, entry: CheckpointEntry, computed_by: int | None = None,
    series_computed_by: Mapping[Series, int] | None = None,
) -> None:
    """The group of `entry`'s checkpoint, replacing a stored one; or, for series added to a stored checkpoint
    (`series_only`), those series' groups within it, its other series and its attributes as they are.
    `series_computed_by`: the `history` attribute of the series another invocation than the checkpoint's
    computed."""
    name = f"step_{entry.step}"
    if entry.series_only:
        group = checkpoints[name]
        for series in entry.series:
            if series.probe in group and series.layer in group[series.probe]:
                del group[series.probe][series.layer]
        _write_series(group, entry.series, series_computed_by or {})
        return
    if name in checkpoints:
        del checkpoints[name]
    group = checkpoints.create_group(name)
    _write_series(group, entry.series, series_computed_by or {})
    _new_attr(group, "step", np.int64(entry.step))
    _new_attr(group, "path", entry.path)
    _new_attr(group, "sha256", entry.sha256)
    if entry.file_signature:
        _new_attr(group, "file_signature", entry.file_signature)
    if computed_by is not None:
        _new_attr(group, "history", np.int64(computed_by))
    _new_attr(group, "complete", np.bool_(True))  # last: a group without it was never finished


_SCALAR_SPACE = h5py.h5s.create_simple(())


def _new_attr(node: h5py.Group, name: str, value: np.int64 | np.float64 | np.bool_ | str) -> None:
    """`node.attrs[name] = value` for an attribute `node` does not hold yet: the same attribute, byte for byte in
    the file (a str variable-length UTF-8, a bool h5py's enum), through h5py's low-level calls, without the checks
    and conversions of `attrs.__setitem__` (~60 µs of ~35 a series; a thousand checkpoints hold 33 000 of them)."""
    data = np.array(value, dtype=_STR) if isinstance(value, str) else np.asarray(value)
    stored, memory = _h5_types(data.dtype)
    attr = h5py.h5a.create(node.id, name.encode(), stored, _SCALAR_SPACE)
    try:
        attr.write(data, memory)
    finally:
        attr.close()


def _write_series(group: h5py.Group, series_entries: Sequence[SeriesEntry], computed_by: Mapping[Series, int]) -> None:
    for series in series_entries:
        leaf = group.require_group(series.probe).create_group(series.layer)
        for field_name, value in series.scalars.items():
            if value is None:
                continue
            if field_name in STR_FIELDS:
                _new_attr(leaf, field_name, str(value))
            else:
                _new_attr(leaf, field_name, np.int64(value) if field_name in INT_FIELDS else np.float64(value))
        for array_name in _ARRAY_DTYPES:
            value = getattr(series, array_name)
            if value is not None:
                _write_array(leaf, array_name, value)
        index = computed_by.get((series.probe, series.layer))
        if index is not None:
            _new_attr(leaf, "history", np.int64(index))
