"""analyze = checkpoints -> extract -> spectral -> store; no click, no rich.

`run_analyze` discovers and orders the checkpoints, loads the probes, validates them against the model
with one forward pass of one sample, then for every checkpoint the store does not hold yet: loads it
(the next one is loaded in a background thread meanwhile), runs each probe through the model once with
every layer hooked, computes the measures, compares with the reference and the previous checkpoint on
the anchor subset, and appends the result to the store (durably, before announcing it).

Beside it: the options (options.py), fdl.toml (manifests.py), torchrun's ranks and probe slices
(sharding.py), and `fdl inspect` (inspection.py).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import math
import os
import platform
import re
import shlex
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISDIR
from typing import Any, TextIO, TypeVar

import numpy as np

from fdl_cli import __version__, foreign, resources, signals
from fdl_cli.errors import (
    CheckpointError,
    FdlError,
    ModelError,
    NumericalError,
    ProbeError,
    ResourceError,
    SameStepError,
    StoreError,
    WeightsMismatchError,
    counted,
    first_and_more,
    first_few,
    first_names,
    quoted_name,
    shown_name,
    shown_path,
    special_store,
)
from fdl_cli.fields import INTEGER_LABELS_RECIPE, RECORD_FIELDS
from fdl_cli.manifests import (
    MANIFEST_OPTIONS,
    _given,
    _is,
    _manifest_folders,
    _manifest_kwargs,
    _note_empty_folders,
    _note_stdin_manifests,
    _read_manifests,
    _same_file,
    _with_manifest,
)
from fdl_cli.options import AnalyzeOptions  # `from fdl_cli.pipeline import AnalyzeOptions, run_analyze` for a library
from fdl_cli.progress import NullReporter, Reporter
from fdl_cli.regimes import Thresholds, checkpoint_regime

if False:  # typing only: keep `import fdl_cli.pipeline` cheap
    from fdl_cli.checkpoints import CheckpointRef, LoadedCheckpoint, ModelKeys
    from fdl_cli.probes import Probe
    from fdl_cli.store import CheckpointEntry


_Error = TypeVar("_Error", bound=FdlError)
#: --watch: path -> ((size, modification time), when first seen so), for files modified in the future (`_settled`)
SettleLooks = dict[str, tuple[tuple[int, float], float]]

#: Model dtypes whose features take few distinct values per column (`--cka-dtype float32` is not used with them).
LOW_PRECISION = ("bfloat16", "float16")


#: files named in the summary's line of those that failed for the same reason as another (then a count)
FAILED_SHOWN = 10


@dataclass
class AnalyzeSummary:
    store: Path
    analysed: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: of those, the checkpoints refused for their values (`FdlError.refused_as`): (step, path, kind, the reason
    #: in one line), for the store's `refused` list (`_refused`)
    refused: list[tuple[int, str, str, str]] = field(default_factory=list)
    interrupted: bool = False
    #: stored checkpoints whose cka_prev / overlap_prev were recomputed (a new predecessor appeared)
    refreshed: list[int] = field(default_factory=list)
    #: False under --overwrite: running the same command again would start afresh, not resume
    resume: bool = True
    #: --redo: stored steps analysed again (also in `analysed`)
    redone: list[int] = field(default_factory=list)
    #: --drop: stored steps removed
    dropped: list[int] = field(default_factory=list)
    #: stored steps given the series this run adds to the store (a probe or layer more): partly analysed
    added: list[int] = field(default_factory=list)
    #: --abandon-addition: the probes and layers of the unfinished addition given up ("probe 'test'"), and how
    #: many checkpoints held some of their series
    abandoned: tuple[str, int] | None = None
    #: stored steps that lacked series added to the store (not counted as "already": `added` once given them)
    lacking: set[int] = field(default_factory=set)
    #: stored steps that joined a --steps / --every selection for the step order (not counted as "already")
    unselected: set[int] = field(default_factory=set)
    #: the store's file before the run (`_store_identity`; None: there was none), for an interrupted run
    #: that stored nothing: its message says what is on disk
    store_before: tuple[int, ...] | None = None

    def message(self) -> str:
        parts = [f"{counted(len(self.analysed), 'checkpoint')} analysed" + (
            f" ({len(self.redone)} of them again: --redo)" if self.redone else "")]
        if self.added:
            parts.append(f"{counted(len(self.added), 'stored checkpoint')} given the added probe/layer series "
                         "(those alone analysed)")
        already = [step for step in self.already if step not in self.unselected]
        if already:
            parts.append(f"{len(already)} already in the store")
        if self.refreshed:
            parts.append(f"{len(self.refreshed)} updated (a new previous checkpoint)")
        if self.dropped:
            shown = ",".join(map(str, self.dropped[:12])) + (f",... ({len(self.dropped)} in all)"
                                                            if len(self.dropped) > 12 else "")
            parts.append(f"{len(self.dropped)} dropped (--drop {shown})")
        if self.abandoned:
            what, held = self.abandoned
            parts.append(f"{what} given up (--abandon-addition: taken out of the "
                         f"{counted(held, 'checkpoint')} that held some of it)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        text = "\n".join([", ".join(parts) + f" → {self.store}", *self._failed_lines()])
        if self.interrupted:
            text += "\ninterrupted: " + self._kept()
        return text

    def _failed_lines(self) -> list[str]:
        """A `failed:` line per failed checkpoint with its whole reason (its got and fix) indented under it,
        as the fix is what the user needs at the end of a long run whose errors scrolled away (the summary
        showed the first line alone). Files failing for the same reason, their own path aside (another
        model's weights, text files with the same first bytes), share one: the first with the reason, the
        others listed on one line after it (`FAILED_SHOWN` of them named, then a count)."""
        groups: dict[str, list[str]] = {}
        reasons: dict[str, str] = {}
        for path, reason in self.failed:
            file = re.sub(r" \(step -?\d+\)$", "", path)  # "X (step N)": the reason names X
            key = reason.replace(file, "\0") if file else reason
            groups.setdefault(key, []).append(path)
            reasons.setdefault(key, reason)
        lines = []
        for key, paths in groups.items():
            # split at line breaks alone: splitlines() also breaks at a CR, VT or FF of a file's name
            first, *rest = _named(paths[0], reasons[key]).rstrip("\n").split("\n")
            lines.append(f"  failed: {first}")
            lines.extend(f"    {line}" for line in rest)
            others = paths[1:]
            if others:
                shown = ", ".join(others[:FAILED_SHOWN]) + (
                    f" and {len(others) - FAILED_SHOWN} more" if len(others) > FAILED_SHOWN else "")
                lines.append(f"  failed: {shown} (the same reason as {paths[0]})")
        return lines

    def _kept(self) -> str:
        """What an interrupted run leaves, and how to go on."""
        if not (self.analysed or self.refreshed or self.added):
            now = _store_identity(self.store)
            if now is None:
                # "what was completed is in the store" named a file that does not exist
                return "no checkpoint was stored (no store was written); run the same command again to start"
            if not self.resume and now == self.store_before:
                # "run it again without --overwrite to resume" resumed the old store, or was refused as
                # another run's: --overwrite replaces the file at its first commit, which never came
                return ("no checkpoint was stored: the store is as it was (--overwrite replaces it at the first "
                        "commit); run the same command again to start afresh")
        return "what was completed is in the store; " + (
            "run the same command again to resume" if self.resume
            else "run it again without --overwrite to resume (with it, it starts afresh)"
        )


def _store_identity(path: Path) -> tuple[int, ...] | None:
    """`_file_identity`, None when there is no file: a commit replaces the store by a new file, so an
    equal identity is the same, untouched store."""
    try:
        return _file_identity(path)
    except OSError:
        return None


@dataclass
class _Series:
    """Per (probe, layer): what later checkpoints are compared with.

    A checkpoint is compared with two others (reference, previous) and is itself compared twice, so
    the parts of CKA and of the overlap that depend on one side only are computed once and cached.
    """

    anchor: np.ndarray  # (m, p) anchor features (float32 as the model gave them, or float64)
    eigenfunctions: np.ndarray  # (m, K) float64 (float32-rounded, as stored)
    self_norm: float | None = None  # ‖A_cᵀA_c‖_F when the pass gave it (see _anchor_self_norm)
    cka_dtype: str = "float64"  # dtype of the anchors' cross products (see _cka)
    #: distinct inputs among the anchor points (`_anchor_points`); None: as many as anchor rows
    points: int | None = None
    #: `anchor` is a float64 array of this series alone: kernel() centers it in place (no copy).
    owned: bool = False
    _kernel: tuple[Any, float] | None = None
    _bases: dict[int, np.ndarray] = field(default_factory=dict)

    def kernel(self) -> tuple[Any, float]:
        """(K, ‖K‖_F) as torch tensors on the CPU: the centered anchors A_c (m, p) in `cka_dtype` with
        ‖A_cᵀA_c‖_F, or for p > m the float64 Gram A_cA_cᵀ (m, m) with its norm."""
        if self._kernel is None:
            import torch

            from fdl_cli.spectral import constant_rows

            anchor = np.asarray(self.anchor).reshape(self.anchor.shape[0], -1)
            # rows of contiguous values: C order, or the padded rows of `_float64_copy`
            own = self.owned and anchor.dtype == np.float64 and anchor.strides[1] == anchor.itemsize
            if own:
                centered = torch.from_numpy(anchor)
            elif anchor.shape[1] <= anchor.shape[0]:  # a copy in padded rows, as `_float64_copy` makes them
                centered = _padded_float64(anchor.shape)
                centered.copy_(torch.from_numpy(np.ascontiguousarray(anchor, dtype=np.float64)))
            else:
                centered = torch.from_numpy(anchor.astype(np.float64))
            centered -= centered[:1].clone()  # about the first row first, as `spectral.cka` (`constant_rows`)
            energy = _squared_frobenius(centered)
            centered -= centered.mean(0)  # in place: `anchor` is centered too when owned
            if constant_rows(_squared_frobenius(centered), energy):
                self._kernel = (centered, 0.0)  # rounding of the centering: CKA with it is 0/0 (`_cka`)
            elif centered.shape[1] > centered.shape[0]:
                from fdl_cli.moments import symmetric_gram

                gram = symmetric_gram(centered)
                self._kernel = (gram, float(torch.linalg.matrix_norm(gram)))
            else:
                norm = self.self_norm
                if norm is None:
                    norm = float(torch.linalg.matrix_norm(centered.T @ centered))
                self._kernel = (centered.to(torch.float32 if self.cka_dtype == "float32" else torch.float64), norm)
        return self._kernel

    def basis(self, k: int) -> np.ndarray:
        """Orthonormal basis of the top-k eigenfunctions' values on the anchors (SPEC §5)."""
        if k not in self._bases:
            from fdl_cli.spectral import orthonormal_basis

            self._bases[k] = orthonormal_basis(self.eigenfunctions[:, :k])
        return self._bases[k]


def _squared_frobenius(matrix: Any) -> float:
    """‖matrix‖_F² of a 2-D CPU tensor, as the norm of its rows' norms: torch's norm of a whole tensor in padded
    rows (`_padded_float64`, not contiguous) is ~4x slower than of contiguous rows (1.8 against 0.45 ms at 4 096 ×
    512, one thread). Its rounding differs from the whole tensor's norm by a few ulps, which only `constant_rows`
    (a threshold of 1e-12 of the energy) reads; no stored number comes from it."""
    import torch

    return float(torch.linalg.vector_norm(torch.linalg.vector_norm(matrix, dim=1))) ** 2


#: Values of padding after each row of the float64 anchors that CKA multiplies (the why: resources.py,
#: whose memory estimate counts them).
ANCHOR_ROW_PAD = resources.ANCHOR_ROW_PAD


def _padded_float64(shape: tuple[int, ...]) -> Any:
    """An uninitialised float64 CPU tensor (m, p) whose rows lie p + ANCHOR_ROW_PAD values apart."""
    import torch

    rows, columns = shape
    return torch.empty((rows, columns + ANCHOR_ROW_PAD), dtype=torch.float64)[:, :columns]


def _float64_copy(array: np.ndarray) -> np.ndarray:
    """`array` in float64: a new array converted by torch on every core (numpy converts on one: ~2
    against ~1 ms for 4 096×512 anchors), or `array` itself when it is float64 already. Anchors (m, p)
    of p ≤ m (multiplied as they are by CKA, not through their m×m Gram) are put in padded rows
    (`ANCHOR_ROW_PAD`): a view, not C-contiguous."""
    if array.dtype == np.float64:
        return array
    from fdl_cli.spectral import _torch_viewable

    if array.dtype == np.float32 and _torch_viewable(array):
        import torch

        if array.ndim == 2 and array.shape[1] <= array.shape[0]:
            copy = _padded_float64(array.shape)
            copy.copy_(torch.from_numpy(array))
            return copy.numpy()
        return torch.from_numpy(array).to(torch.float64).numpy()
    return array.astype(np.float64)


def _anchor_self_norm(anchor_moment: Any, anchor: np.ndarray, product_dtype: str) -> float | None:
    """‖A_cᵀA_c‖_F = ‖Σ_anchor (φ−a)(φ−a)ᵀ − m (μ−a)(μ−a)ᵀ‖_F from the pass's own anchor sums about
    its shift a (saves an m×p×p product).

    Only with float64 products (float32 sums would move CKA beyond rtol 1e-6). Centering by
    subtraction leaves rounding noise of order eps·‖Σ(φ−a)(φ−a)ᵀ‖, so below CANCELLATION_RTOL of it
    the anchors count as constant (norm 0), as explicit centering would give.
    """
    from fdl_cli.spectral import CANCELLATION_RTOL

    if anchor_moment is None or product_dtype != "float64":
        return None
    second, total = anchor_moment
    count = anchor.shape[0]
    if second.shape[0] > count:
        return None  # p > m: CKA uses the m×m Gram instead
    norm = float(np.linalg.norm(second - np.outer(total, total) / count))
    return norm if norm > CANCELLATION_RTOL * float(np.linalg.norm(second)) else 0.0


def _warn_flat_anchors(ctx: _Context, series: _Series, wanted: int, where: str) -> None:
    """Warn when the reference's top `wanted` (the overlaps' k) eigenfunctions are linearly dependent on
    the anchor points (repeated inputs among the first m of the probe): the overlaps then compare
    smaller subspaces."""
    m, columns = series.eigenfunctions.shape
    k = min(wanted, columns, m)
    if k <= 0 or m <= wanted:
        return  # nothing to compare, or _validate's warning (m ≤ C) says it already
    dimension = series.basis(k).shape[1]
    if dimension < k and (series.points is None or dimension < series.points):  # else null (`_overlap`), warned
        ctx.reporter.warn(
            f"{where}: on the {m} anchor points the reference's top-{k} eigenfunctions span only {dimension} "
            f"dimensions (the first {m} probe inputs repeat, or are too alike), so overlap_init / overlap_prev "
            f"compare {dimension}-dimensional subspaces; put distinct inputs first in the probe, or raise --anchor-size"
        )


def _warn_low_rank_reference(ctx: _Context, series: _Series, wanted: int, scalars: Mapping[str, Any], step: int,
                             where: str) -> None:
    """Warn when the reference's features have rank r below the overlaps' k (constant features at initialisation:
    r = 1): every overlap_init is then taken at k = r (`_overlap`), so a low one can say that the features left a
    degenerate reference, not how a top-k eigenspace moved; a layer of fewer than k units: every overlap is taken
    at k ≤ p, whatever the reference (session 31: nothing said so). Said once, when the
    reference is analysed; `fdl classify` repeats it in its evidence (`regimes.low_rank_reference`)."""
    rank, m = series.eigenfunctions.shape[1], series.eigenfunctions.shape[0]
    if not 0 < rank < wanted < m:  # rank 0: no overlap at all (null); m ≤ k: `_validate`'s warning says it
        return
    width = scalars.get("n_features")
    head = (f"{where}: the reference's features (step {step}) have rank {rank} on the probe, below the overlaps' "
            f"k = {wanted}")
    functions = f"top {rank} eigenfunction{'s' if rank != 1 else ''}"
    if isinstance(width, int) and width < wanted:  # every checkpoint's, not the reference's alone
        ctx.reporter.warn(
            f"{head} (the layer has {counted(width, 'unit')}): overlap_init and overlap_prev compare at most the top "
            f"{width}, all the layer spans, at every checkpoint (k ≤ {width}, not {wanted}; docs/measures.md)")
        return
    ctx.reporter.warn(
        f"{head} (constant or collapsed features there: a layer initialised to equal or zero weights?): overlap_init "
        f"compares only its {functions} with each checkpoint's (k = {rank}, not {wanted}), so a low overlap_init can "
        "say that the features left a degenerate reference rather than how a top-k eigenspace moved; read cka_init "
        "beside it, or choose a later --reference (docs/measures.md)"
    )


#: CKA on fewer anchor points than this is 1 whatever the features do (the centered anchors of two
#: points span one direction, of one point none), so it is not measured there (null).
CKA_MIN_ANCHORS = 3


def _cka(a: _Series, b: _Series) -> float | None:
    """spectral.cka(a.anchor, b.anchor) from the cached one-sided parts (one product per pair).

    The cross product ‖A_cᵀB_c‖_F² is computed in the series' `cka_dtype` (float32 products are
    summed in float64 per block of rows); the self-norms are float64. Identical anchors (a frozen
    network) give exactly 1. None on fewer than CKA_MIN_ANCHORS anchor points, and where either side's
    anchors are constant (`_constant_anchors`: 0/0), CKA(F, F) included.
    """
    from fdl_cli.spectral import cka

    if min(a.points or a.anchor.shape[0], b.points or b.anchor.shape[0]) < CKA_MIN_ANCHORS:
        return None  # also m anchor rows of fewer than 3 distinct inputs (repeated ones)
    if a.anchor.shape[0] != b.anchor.shape[0]:
        return cka(a.anchor, b.anchor)  # its error
    (kernel_a, norm_a), (kernel_b, norm_b) = a.kernel(), b.kernel()
    if norm_a == 0.0 or norm_b == 0.0:
        return None
    if a is b:
        return 1.0  # CKA(F, F), exactly
    wide_a, wide_b = a.anchor.shape[1] > a.anchor.shape[0], b.anchor.shape[1] > b.anchor.shape[0]
    if wide_a != wide_b:
        return cka(a.anchor, b.anchor)  # the rare mixed case
    if _same_kernels(kernel_a, kernel_b):
        # What exact arithmetic gives. float32 products would leave ~1e-8 below it; in float64 the
        # self-norms come from the pass's sums about its shift and the cross product from the anchors,
        # so a twin checkpoint whose features are far from 0 got 1 − 3e-16 (session 14).
        return 1.0
    if wide_a:
        cross = float((kernel_a.to(kernel_b.dtype) * kernel_b).sum())
    else:
        cross = _cross_norm2(kernel_a, kernel_b.to(kernel_a.dtype))
    return float(min(max(cross / (norm_a * norm_b), 0.0), 1.0))


def _constant_anchors(series: _Series) -> bool:
    """Whether CKA with this series is 0/0: its features are constant over the anchor points (a dead layer,
    zero features; to rounding, `spectral.constant_rows`), on enough of them to measure CKA."""
    return (series.points or series.anchor.shape[0]) >= CKA_MIN_ANCHORS and series.kernel()[1] == 0.0


def _same_kernels(a: Any, b: Any) -> bool:
    """Equal centered anchors (CKA exactly 1); the first rows first: two checkpoints that moved differ at once."""
    import torch

    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a[:1], b[:1]) and torch.equal(a, b))


#: Rows per float32 block of the CKA cross product; the blocks' products are added in float64.
CKA_BLOCK_ROWS = 1024


def _cross_norm2(left: Any, right: Any) -> float:
    """‖leftᵀ right‖_F² of two (m, p) CPU tensors: one product in float64, float64 sums of float32 blocks."""
    import torch

    if left.dtype == torch.float64:
        return float(torch.linalg.matrix_norm(left.T @ right)) ** 2
    total = None
    for start in range(0, left.shape[0], CKA_BLOCK_ROWS):
        block = (left[start : start + CKA_BLOCK_ROWS].T @ right[start : start + CKA_BLOCK_ROWS]).to(torch.float64)
        total = block if total is None else total.add_(block)
    assert total is not None
    return float(torch.linalg.matrix_norm(total)) ** 2


def _overlap(a: _Series, b: _Series, k: int) -> float | None:
    """spectral.eigenspace_overlap(a.eigenfunctions, b.eigenfunctions, k=k) from cached bases."""
    from fdl_cli.spectral import basis_overlap, eigenspace_overlap

    k = min(k, a.eigenfunctions.shape[1], b.eigenfunctions.shape[1], a.eigenfunctions.shape[0])
    if k <= 0 or a.eigenfunctions.shape[0] != b.eigenfunctions.shape[0]:
        return eigenspace_overlap(a.eigenfunctions, b.eigenfunctions, k=k)  # its None / its error
    # None where nothing is compared, or both span every distinct anchor input (repeated inputs' rows are equal)
    points = min(a.points or a.eigenfunctions.shape[0], b.points or b.eigenfunctions.shape[0])
    basis_a, basis_b = a.basis(k), b.basis(k)
    value = basis_overlap(basis_a, basis_b, points=points)
    # O(s, s), exactly; and for equal bases (a frozen network, a checkpoint saved twice), not 1 − 4e-16
    same = a is b or (basis_a.shape == basis_b.shape and np.array_equal(basis_a, basis_b))
    return 1.0 if value is not None and same else value


@dataclass
class _Context:
    options: AnalyzeOptions
    probes: list[Probe]
    factory: Callable[..., Any] | None
    model_kwargs: dict[str, Any]
    layer_names: tuple[str, ...]
    device: Any
    reporter: Reporter
    layers: list[Any] = field(default_factory=list)
    #: the fdl.toml whose `layer` layer_names are (none given on the command line), for its errors to name
    layer_source: Path | None = None
    n_outputs: int = 0
    #: a model of one output z whose probe holds class labels 0/1 (a binary classifier trained with
    #: BCEWithLogitsLoss): analysed as the two-class classifier of logits (0, z) (`_validate`)
    binary_logit: bool = False
    reference_step: int = 0
    reference_state: dict[str, Any] | None = None
    #: (reference_state, its tensors' squared norms by name) once a checkpoint's norms were taken (`_reference_squares`)
    reference_squares: tuple[dict[str, Any], dict[str, float]] | None = None
    reference: dict[tuple[str, str], _Series] = field(default_factory=dict)
    previous: dict[tuple[str, str], _Series] = field(default_factory=dict)
    previous_step: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    refs_by_step: dict[int, CheckpointRef] = field(default_factory=dict)
    #: paths of this run's checkpoints whose analysis failed: "previous" skips over them (`_previous_step`)
    failed_paths: set[str] = field(default_factory=set)
    #: step -> (path, series) of a stored checkpoint at which series added to the store failed in this run: their
    #: "previous" skips over it, that of its stored series does not (`_previous_step`)
    failed_series: dict[int, tuple[str, frozenset[tuple[str, str]]]] = field(default_factory=dict)
    #: path -> its file's signature when it failed (before the read, when known): --watch tries a file
    #: again once it has changed, as one read while the trainer was still writing it fails
    failed_signatures: dict[str, str] = field(default_factory=dict)
    #: path -> the step its checkpoint had when it failed (unknown for a file discovery could not read):
    #: a rolling file's next save is another checkpoint, not the failed one written again
    failed_steps: dict[str, int] = field(default_factory=dict)
    #: path -> (device, inode) of its file when it failed: --watch follows a failed file renamed (a temporary file
    #: read half-written, then renamed to its final name: `_follow_renamed_failures`)
    failed_files: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: --watch --every: every step seen in the folder so far, deleted files' too (`_rediscover`)
    seen_steps: set[int] = field(default_factory=set)
    #: --watch: path -> step of each checkpoint a poll found still being written, not read yet
    #: (`_note_deleted_unread`)
    unsettled: dict[str, int] = field(default_factory=dict)
    #: --watch: stored steps kept in step order whose file no longer holds them (deleted, rewritten with a
    #: later step, being rewritten): never read again; "previous" only while their series are at hand
    fileless: set[int] = field(default_factory=set)
    #: --watch: the message of the last poll that failed as a whole, warned once (`_warn_while_watching`)
    watch_problem: str | None = None
    #: --watch: path -> the signature (size, time; "" for none) of each fdl.toml the run looks at, when it read
    #: its options: one written, changed or removed since is said once a change (`_check_manifest_changes`)
    manifest_signatures: dict[str, str] | None = None
    #: --watch: path -> the sha256 of the bytes of each of those fdl.toml files when last read ("" for none): one
    #: written again with the same bytes (a trainer that writes it at every save) is no change to say
    manifest_digests: dict[str, str] = field(default_factory=dict)
    #: --watch: file -> how each file of the model's code was last looked at (`_check_model_code_changes`)
    code_looks: dict[str, _CodeLook] | None = None
    #: the fdl.toml the run read (checkpoints.Manifest), None for none; and the options as given, before it
    manifest: Any = None
    #: the fdl.toml files read (`_read_manifests`): their own files are skipped without a note (`_note_skipped`)
    manifests: list[Any] = field(default_factory=list)
    #: --watch: the store's path and its lock, taken at the start (`_claim_for_watch`), for its writer to take over
    store: Path | None = None
    claimed: Any = None
    #: --watch: the discovery notes said so far, by `_note_key`: a later poll's are said once (`_note_new_skips`)
    said_notes: set[str] = field(default_factory=set)
    #: --watch: those of folders the last poll found, not said yet: said if the next finds them settled
    unsaid_folders: set[str] = field(default_factory=set)
    given_options: AnalyzeOptions | None = None
    #: --watch: (path, step) -> the file's signature when it was read for the entry stored (`_report_rewritten`)
    read_signatures: dict[tuple[str, int], str] = field(default_factory=dict)
    #: --watch: the files modified in the future a poll looked at (`_settled`), and whether that was said
    settle_looks: SettleLooks = field(default_factory=dict)
    noted_future: bool = False
    #: path -> (its file's signature, its sha256) where this run hashed a file: one read again with the same
    #: signature is not hashed again (`_sha256_once`; an old store's reference was hashed three times a run)
    hashed: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the notes said once a run (`_note_once`), by kind: a checkpoint holding another copy of its weights
    #: (an EMA, `_prepare`)
    noted_once: dict[str, str] = field(default_factory=dict)
    #: the steps discovery found before --steps / --every selected (`_reference_ref`); None: not known
    steps_found: frozenset[int] | None = None
    #: (dropped, kept): files discovery left out as copies of another file of their step (`Discovery.copies`):
    #: a stored checkpoint's file among them holds another step now (`_stored_files_to_hash`, `_check_redo`)
    copies: list[tuple[CheckpointRef, CheckpointRef]] = field(default_factory=list)
    model: Any = None  # the factory-built model, reused for every checkpoint
    #: the model's state_dict keys, asked for by discovery where a metrics file is met (`checkpoints.ModelKeys`)
    model_keys: ModelKeys | None = None
    world: Any = None  # fdl_cli.distributed.World under torchrun, else None
    model_source: tuple[str, str] | None = None  # (file, sha256) of the factory's code (`_model_source`)
    spec_source: tuple[str, str] | None = None  # (file, sha256) of the file the --model spec names (`_spec_source`)
    #: module -> (file, sha256) of the modules of the model's folder its code imported (`_model_imports`); None: not
    #: known (no --model, an installed package's factory)
    model_imports: dict[str, tuple[str, str]] | None = None
    #: module -> (file, sha256) of the user's modules whose code the reference's model, pickled whole, runs
    #: (`_pickled_code`), recorded in the store's `model_imports` beside those; None: not such a checkpoint
    pickled_code: dict[str, tuple[str, str]] | None = None
    #: --accept-model-change: what of the model's code changed since the store recorded it, for the writer to record
    #: (`StoreWriter`'s model_change); None: nothing changed, or no such flag
    model_change: dict[str, Any] | None = None
    #: called after every probe batch: announces what became durable (a checkpoint's computation may take
    #: long; finished ones must not wait unannounced meanwhile) and starts the store's due commit, which
    #: the writer's scheduler thread starts by itself when this is not called (a hung forward pass)
    tick: Callable[[], None] | None = None
    #: probe name -> whether its targets are float 0/1 (`probes.zero_one_targets`, found by `_validate`), which
    #: the store records (`ProbeInfo.zero_one_targets`) for the reading commands' caveat on loss and r2
    zero_one: dict[str, bool] = field(default_factory=dict)
    #: probe name -> how its anchor subset misrepresents its classes (`probes.anchor_class_skew`, found by
    #: `_validate`, which warns of it), which the store records (`ProbeInfo.anchor_skew`) for report and classify
    anchor_skew: dict[str, Any] = field(default_factory=dict)
    #: notes that say what the store will record (the dominant-class note: classify reads accuracy against the
    #: labels' shares; the series a resume adds, `_addition`; the stored layer a resume goes on at), said by
    #: `_store_opened` once the store is open for writing: a resume refused before it (a newer schema, a store
    #: locked by another fdl, read-only, another run's) writes nothing, and the note would be false
    store_notes: list[str] = field(default_factory=list)
    #: probe name -> {step: whether Π̂ is 0/0 there} of the checkpoints analysed since the last
    #: `_warn_constant_outputs` whose outputs are constant over the probe (output_rank 0: D_LR 1.0 by its rule)
    constant_outputs: dict[str, dict[int, bool]] = field(default_factory=dict)
    #: probe name -> the steps after the reference this batch analysed whose outputs were not constant: with the
    #: reference's alone constant, `_warn_constant_outputs` names the parametrisation zero there by construction
    varying_outputs: dict[str, set[int]] = field(default_factory=dict)
    #: "probe/layer" -> the steps this batch analysed whose features are constant over the anchor points
    #: (CKA 0/0, null: `_warn_constant_anchors`)
    constant_anchors: dict[str, list[int]] = field(default_factory=dict)
    #: the reference's buffers (`_buffers_of`); label -> the buffers read before the layer's features are taken
    #: (`extract.buffers_read_before`); per series the steps whose features moved though no parameter did before
    #: the layer, with the modules whose BatchNorm running statistics moved before it, and the other buffers that
    #: did (`_moved_buffers`, `_warn_statistics_moved`)
    reference_buffers: dict[str, Any] = field(default_factory=dict)
    ran_before: dict[str, set[str]] = field(default_factory=dict)
    statistics_moved: dict[str, tuple[list[int], list[str]]] = field(default_factory=dict)
    buffers_moved: dict[str, list[str]] = field(default_factory=dict)
    #: probe name -> distinct inputs among its anchor points (`_anchor_points`)
    anchor_points: dict[str, int] = field(default_factory=dict)
    #: --redo: the stored steps analysed again (`_check_redo`)
    redo: frozenset[int] = frozenset()
    #: --redo: step -> the sha256 the store holds for it (the file analysed again unchanged is said: `announce`)
    redo_sha256: dict[int, str] = field(default_factory=dict)
    #: --redo: step -> the stored steps compared with it (prev_step), not redone themselves: their cka_prev /
    #: overlap_prev are recomputed with its new series and committed with it (`_redo_successors`)
    redo_successors: dict[int, list[int]] = field(default_factory=dict)
    #: --drop: the stored steps to remove (`_check_drop`)
    drop: frozenset[int] = frozenset()
    #: --drop: (the step it is compared with now, or None, the stored step) of each stored checkpoint that
    #: was compared with a dropped one (prev_step): its cka_prev / overlap_prev are taken again (`_drop_steps`)
    drop_successors: list[tuple[int | None, int]] = field(default_factory=list)
    #: when this `fdl analyze` started (UTC, ISO 8601): its row of the store's history (`invocation`)
    started: str = ""


def _anchor_points(ctx: _Context, probe: Probe) -> int:
    """How many distinct inputs the probe's anchor subset (its first min(--anchor-size, n) inputs) holds,
    computed once per probe. Repeated inputs have the same features at every checkpoint, so CKA and the
    overlaps see only these points: CKA on two distinct inputs repeated is 1, and top-k bases spanning
    the functions on the distinct inputs overlap 1, whatever the features do (`_cka`, `_overlap`)."""
    points = ctx.anchor_points.get(probe.name)
    if points is None:
        import hashlib

        from fdl_cli.probes import row_range

        m = min(ctx.options.anchor_size, int(probe.x.shape[0]))
        if _rows_all_differ(probe.x, m):
            points = ctx.anchor_points[probe.name] = m
            return points
        seen: set[bytes] = set()
        for start in range(0, m, 256):
            rows = np.ascontiguousarray(np.asarray(row_range(probe.x, start, min(start + 256, m))))
            seen.update(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows.reshape(len(rows), -1))
        points = ctx.anchor_points[probe.name] = len(seen)
    return points


def _rows_all_differ(x: Any, m: int) -> bool:
    """Whether the first m rows of probe inputs `x` all differ, proven from one 64-bit fingerprint a row: the sum of
    its 64-bit words (or 32-bit, or bytes, as its size divides) times fixed odd weights, wrapping modulo 2⁶⁴. Equal
    rows have equal fingerprints, so m different fingerprints are m different rows; two alike (repeated inputs, or a
    collision of the fingerprint) and `_anchor_points` compares the rows' digests, as it did for every probe. A
    probe of distinct inputs (the usual one) takes ~5 ms at 4 096 × 784 float32, where hashing each row took ~32 ms
    (docs/benchmarks.md, "start-up")."""
    from fdl_cli.probes import row_range

    prints: list[np.ndarray] = []
    weights: np.ndarray | None = None
    for start in range(0, m, 256):
        rows = np.ascontiguousarray(np.asarray(row_range(x, start, min(start + 256, m))))
        raw = rows.reshape(len(rows), -1).view(np.uint8)
        words = (raw.view(np.uint64) if raw.shape[1] % 8 == 0
                 else raw.view(np.uint32).astype(np.uint64) if raw.shape[1] % 4 == 0 else raw.astype(np.uint64))
        if weights is None:
            weights = _odd_weights(words.shape[1])
        prints.append((words * weights).sum(axis=1, dtype=np.uint64))
    if not prints:
        return False
    ordered = np.sort(np.concatenate(prints))  # not np.unique, whose first call imports numpy.ma (~10 ms)
    return len(ordered) == m and bool(np.all(ordered[1:] != ordered[:-1]))


def _odd_weights(count: int) -> np.ndarray:
    """`count` fixed, well mixed odd 64-bit weights: splitmix64's output for 1, 2, ..., count (not numpy.random,
    whose import alone took ~18 ms of a run)."""
    with np.errstate(over="ignore"):
        z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) | np.uint64(1)


# ------------------------------------------------------------------------------------------- helpers


def default_store_path(sources: Sequence[str]) -> Path:
    """./<folder>.fdl.h5 for one folder, else ./fdl.h5: for a pattern too (`checkpoints.is_pattern`), which stands
    for several folders, and whose store keeps its name under --watch as the folders it matches come (one match
    named the store after it, two did not)."""
    if len(sources) == 1 and sources[0] != "-" and Path(sources[0]).is_dir():
        return Path(f"{Path(sources[0]).resolve().name}.fdl.h5")
    return Path("fdl.h5")


def _series_key(probe: str, layer: str) -> tuple[str, str]:
    return (probe, layer)


def _all_series(ctx: _Context) -> frozenset[tuple[str, str]]:
    """Every (probe, layer) this run analyses at a new checkpoint."""
    return frozenset(_series_key(probe.name, spec.label) for probe in ctx.probes for spec in ctx.layers)


def record_shape(ctx: _Context) -> dict[str, bool]:
    """The keys of `--json`'s records besides RECORD_FIELDS (`entry_records`' keywords): probe and layer with
    several series (`tagged`); R2_OUTPUT_FIELDS when a probe is a regression of C > 1 outputs (`per_output`), as
    `fdl report --json` gives them."""
    return {"tagged": len(ctx.probes) * len(ctx.layers) > 1,
            "per_output": any(probe.task == "regression" and probe.y is not None and probe.y.shape[1] > 1
                              for probe in ctx.probes)}


def entry_records(entry: CheckpointEntry, *, tagged: bool, per_output: bool = False) -> list[dict[str, Any]]:
    """The JSON records of one stored checkpoint (RECORD_FIELDS order; probe/layer when tagged; then, with
    `per_output`, R2_OUTPUT_FIELDS from each series' r2_outputs, null for a series without)."""
    from fdl_cli.store import r2_output_fields

    records = []
    for series in entry.series:
        record: dict[str, Any] = {"step": entry.step, "path": entry.path, "sha256": entry.sha256}
        for name in RECORD_FIELDS[3:]:
            record[name] = series.scalars.get(name)
        if tagged:
            record["probe"], record["layer"] = series.probe, series.layer
        if per_output:
            record.update(r2_output_fields(series.r2_outputs))
        records.append(record)
    return records


class Announcer:
    """`fdl analyze`'s announce of what a commit made durable: each entry counted (`count(entry, refreshed)`: the
    summary's lists), then, with --json, its records printed (`on_record`), in the order committed. The run's one
    process and rank 0 of a torchrun job (`sharding`) share it.

    A Ctrl-C or SIGTERM that landed in a record's print stopped a plain loop, and the rest of the commit's
    checkpoints, stored, were neither printed nor counted. Each entry is counted, and each record printed, whole (the
    signal held back meanwhile, then raised); what is left stays queued for the next call, which the run's way out
    makes with what its last flush commits (a second Ctrl-C stops a print that waits for ever, `| less`)."""

    def __init__(
        self,
        count: Callable[[CheckpointEntry, bool], None],
        on_record: Callable[[dict[str, Any]], None] | None,
        shape: Mapping[str, bool],
    ) -> None:
        self._count, self._on_record, self._shape = count, on_record, shape
        #: durable entries not yet counted, and records not yet printed
        self._uncounted: collections.deque[tuple[CheckpointEntry, bool]] = collections.deque()
        self._unprinted: collections.deque[dict[str, Any]] = collections.deque()

    def __call__(self, entries: Sequence[CheckpointEntry], *, refreshed: bool = False) -> None:
        self.count_only(entries, refreshed=refreshed)
        self._print()

    def count_only(self, entries: Sequence[CheckpointEntry], *, refreshed: bool = False) -> None:
        """`entries`, durable, counted, their records queued for the next call (the stalled run's end counts them
        before it closes the store, and prints them after: `_analyze_refs`)."""
        self.queue(entries, refreshed=refreshed)
        while self._uncounted:
            with signals.deferred():
                entry, again = self._uncounted.popleft()
                self._count(entry, again)
                if self._on_record is not None:
                    self._unprinted.extend(entry_records(entry, **self._shape))

    def take(self, commit: Callable[[], Sequence[CheckpointEntry]], *, refreshed: bool = False) -> None:
        """`self(commit())` with no Ctrl-C between the two calls: what a writer's add, tick or flush returns is durable
        and handed over once, and a signal handled at the entry of the second call lost it (stored, neither counted
        nor printed). Held back from the commit's call to the entries' queue; a second one goes through (a commit
        that waits on a hung disk), as in a print."""
        with signals.deferred(second_through=True):
            self.queue(commit(), refreshed=refreshed)
        self(())

    @classmethod
    def silent(cls) -> Announcer:
        """One that counts and prints nothing: a torchrun rank's own loop (rank 0 announces through its writer)."""
        return cls(lambda entry, refreshed: None, None, {})

    def queue(self, entries: Sequence[CheckpointEntry], *, refreshed: bool = False) -> None:
        """`entries`, durable, to count and print at the next call (`--drop`'s, queued as its commit ends)."""
        self._uncounted.extend((entry, refreshed) for entry in entries)

    def print_only(self, entries: Sequence[CheckpointEntry]) -> None:
        """--json prints the records of `entries`, uncounted: the checkpoints taken in from part stores
        (`sharding._take_in_rank_parts`), which no run printed once stored and which count as already in the
        store. Queued as the others: a Ctrl-C in a print leaves the rest to the way out."""
        self.queue_only(entries)
        self._print()

    def queue_only(self, entries: Sequence[CheckpointEntry]) -> None:
        """`print_only`'s records of `entries` queued, printed at the next call: rank 0 of a torchrun job takes
        the parts in before the other ranks go to work, and prints their records once they have."""
        if self._on_record is None:
            return
        with signals.deferred():  # all or none: a Ctrl-C is raised once every record is queued
            for entry in entries:
                self._unprinted.extend(entry_records(entry, **self._shape))

    def queue_line(self, record: dict[str, Any]) -> None:
        """--json: a line of its own (`{"dropped": [...]}`), printed with the next call's records, before them."""
        if self._on_record is not None:
            self._unprinted.append(record)

    def _print(self) -> None:
        while self._unprinted and self._on_record is not None:
            with signals.deferred(second_through=True):  # a second Ctrl-C: where stdout's reader reads nothing
                self._on_record(self._unprinted.popleft())


def _provenance(options: AnalyzeOptions, ctx: _Context, model_spec: str | None, reference_sha: str) -> dict[str, Any]:
    return {
        "model": model_spec,
        "model_kwargs": ctx.model_kwargs,
        "layers": [spec.label for spec in ctx.layers],
        "probes": {probe.name: probe.sha256 for probe in ctx.probes},
        # The order the probes were given in (the table above is stored as sorted JSON): the reading
        # commands take the first one by default. Not compared on resume (uncompared in the store).
        "probe_order": [probe.name for probe in ctx.probes],
        "reference_step": ctx.reference_step,
        # The file every cka_init / overlap_init of the store is against, checked on resume by
        # _check_reference_of_store (the reference itself may not be stored yet: a run killed before
        # it reached the reference's place in step order).
        "reference_sha256": reference_sha,
        # The model code the checkpoints were run through (the factory's file; checked on resume):
        # the --model spec names a file, not its content.
        "model_sha256": ctx.model_source[1] if ctx.model_source else None,
        # The file the --model spec names, as found (its absolute path), and its sha256: it differs from
        # the factory's file when the spec's file only configures a factory defined elsewhere
        # (`build = make_builder(nn.Tanh)`), whose edits model_sha256 would not see. The path lets a
        # resume spell the spec another way (./model.py:build, /abs/model.py:build). Checked by the
        # pipeline, not compared as text (a store may be resumed from another folder or host).
        **({"model_file": ctx.spec_source[0], "model_file_sha256": ctx.spec_source[1]} if ctx.spec_source else {}),
        "options": {**options.numeric_options(), **_overlap_k_option(options, ctx.n_outputs),
                    # recorded only when it applies, so stores of other models keep their options
                    **({"binary_logit": True} if ctx.binary_logit else {})},
        # Recorded, not compared: a store may be resumed on another host.
        "environment": environment(),
    }


def _overlap_k_option(options: AnalyzeOptions, n_outputs: int) -> dict[str, int]:
    """`overlap_k` for the store's options, recorded only where it differs from the k of stores written
    before it existed, min(top_k, C) (their overlaps were taken over the stored columns): those stay
    resumable unless the overlaps would now mean something else, which the resume check then refuses."""
    k = overlap_k(options, n_outputs)
    return {} if k == min(options.top_k, n_outputs) else {"overlap_k": k}


def invocation(ctx: _Context) -> dict[str, Any]:
    """This `fdl analyze` as a row of the store's history (docs/store.md): where and how the checkpoints it
    stores were computed. Under torchrun, that of this rank (rank 0 for the store, rank K for its part)."""
    import torch

    from fdl_cli.moments import _numpy_blas_threads

    world = ctx.world
    return {
        "started": ctx.started,
        **environment(),
        "device": describe_device(ctx.device),
        "dtype": ctx.options.dtype,
        "world_size": world.size if world is not None else 1,
        "rank": world.rank if world is not None else 0,
        # what sets the last bits of the numbers besides the device (docs/reliability.md, "Reproducibility")
        "batch_size": ctx.options.batch_size,
        "threads": torch.get_num_threads(),
        "blas_threads": _numpy_blas_threads(),  # numpy's BLAS (None: not known); both 1 take numpy's dsyrk
        # the probes' files (their sha256 is the provenance's `probes`), as this run read them
        "probe_files": {probe.name: shown_path(str(probe.path)) for probe in ctx.probes},
        # the folder the checkpoints' paths, recorded as typed, are relative to (`_stored_places`)
        "cwd": _working_folder(),
    }


def _working_folder() -> str | None:
    """The current folder, as the history records it (None where it cannot be read: removed since)."""
    try:
        return shown_path(os.getcwd())
    except OSError:
        return None


def describe_device(device: Any) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H200)`: the device and, for a GPU, its name (float32 features differ
    between the CPU and a GPU, and between GPUs, by ~1e-4)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    except Exception:  # noqa: BLE001 - a name torch cannot read is no reason to stop a run
        return f"cuda:{index}"


def environment() -> dict[str, Any]:
    import torch

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "fdl_version": __version__,
    }


# ---------------------------------------------------------------------------------- the main job


def run_analyze(
    options: AnalyzeOptions,
    *,
    reporter: Reporter | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    stdin: TextIO | None = None,
) -> AnalyzeSummary:
    """Analyse the checkpoints of `options` into the store; returns what was done."""
    from fdl_cli import distributed
    from fdl_cli.extract import current_cuda_device, named_device, resolve_device

    # for the store's history: to the microsecond, so two invocations are two rows (rows are matched by text)
    started = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    world = distributed.detect_world()
    try:
        _check_redo_options(options, world)
        _check_drop_options(options, world)
        _check_abandon_options(options, world)
        _check_accept_options(options, world)
        if options.watch and world.distributed:  # before the wait for a first checkpoint
            raise _watch_under_torchrun()
        if options.device != "auto":
            named_device(options.device)  # no device fdl runs on (--device xpu)
    except FdlError as exc:
        raise distributed.alike(exc) from None  # the command line's alone: the same on every rank
    # Before any file is read or any code of the model's runs: a GPU that is not there (`--device cuda:7`
    # on a two-GPU machine) was said only once the checkpoints had been found (a --trust-pickle folder's
    # unpickled to read their steps), the probe read and checked and the model file imported. --device
    # is a command-line option only: no fdl.toml changes it.
    requested = distributed.device_for(world, options.device)  # a rank that cannot take its GPU says so itself
    try:
        device = resolve_device(requested)
    except FdlError as exc:
        # no CUDA GPU, or none of that index: the same on every rank of this machine, said by one of them
        # where the ranks know their place on it (each rank names itself otherwise)
        raise (distributed.alike(exc, among="machine") if world.local_rank_known else exc) from None
    # The model is built and run with `cuda:i` current, so that what it puts on "the" GPU goes there too
    # (extract.current_cuda_device); the caller's current device is back when this returns.
    with current_cuda_device(device):
        return _run_analyze(options, world, device, reporter=reporter, on_record=on_record, stdin=stdin,
                            started=started)


def _settled_options(options: AnalyzeOptions, manifest: Any, reporter: Reporter) -> AnalyzeOptions:
    """`options` with fdl.toml's filled in, and a --cka-dtype that the --dtype allows."""
    if manifest is not None:
        options = _with_manifest(options, manifest, reporter)
    if options.cka_dtype == "float32" and options.dtype in LOW_PRECISION:
        # A bfloat16/float16 model's features take few distinct values per column; float32 sums of their
        # products drift together instead of cancelling, past SPEC §8's rtol 1e-6 (3.5e-6 measured:
        # tests/test_cka_dtype.py). The store records the float64 it holds.
        reporter.warn(
            f"--cka-dtype float32 is not used with --dtype {options.dtype}: float32 sums of low-precision "
            "features drift past rtol 1e-6; CKA is computed in float64"
        )
        options = replace(options, cka_dtype="float64")
    return options


def _run_analyze(
    options: AnalyzeOptions,
    world: Any,
    device: Any,
    *,
    reporter: Reporter | None,
    on_record: Callable[[dict[str, Any]], None] | None,
    stdin: TextIO | None,
    started: str = "",
) -> AnalyzeSummary:
    from fdl_cli import distributed
    from fdl_cli.checkpoints import say_on_stderr

    # a caller that shows nothing (the Python API, no reporter) is still told, on stderr, that fdl.toml's code runs
    code_note = say_on_stderr if reporter is None and world.speaks else None
    reporter = reporter or NullReporter()
    if not world.speaks:
        reporter = NullReporter()  # rank 0 shows the progress and the messages
    # The job's process group is left however the run ends, from the hand-over of stdin's paths on (which joins it:
    # `_job_stdin_text`; a Ctrl-C or a rank lost there left it joined, for a program that called `run_analyze`).
    try:
        with contextlib.ExitStack() as claims:
            stdin_text, error = _job_stdin_text(options, stdin, world, device)
            prepared = None
            try:
                if error is None:
                    prepared = _prepare_run(options, world, device, reporter, _replayed(stdin_text), started, claims,
                                            code_note=code_note)
            except FdlError as exc:
                error = exc
            distributed.init_process_group(world, device)
            # Each rank checked the inputs on its own: a refusal is said once, by rank 0, and every rank
            # stops (one that stopped alone left the others waiting in the next collective).
            distributed.agree_on_refusal(error, world)
            assert prepared is not None
            ctx, refs, out, summary, model_spec, base_dir = prepared
            try:
                # Every rank found the checkpoints on its own; a checkpoint written meanwhile (a training job
                # still running, a rank that started late) would give the ranks different lists, and a rank
                # with one more checkpoint would wait in a collective for ever. Rank 0's list is the run's.
                refs = distributed.broadcast_from_writer(refs, world)
                _analyze_refs(ctx, refs, out, summary, on_record, model_spec, manifest_dir=base_dir,
                              stdin_text=stdin_text)
            except KeyboardInterrupt:
                summary.interrupted = True
    finally:
        distributed.shutdown(world)
    return summary


def _stdin_text(options: AnalyzeOptions, stdin: TextIO | None) -> str | None:
    """What `-` reads from stdin (`stdin`, else sys.stdin), read once: --watch scans the paths it holds again at
    each poll (`_rediscover`), stdin being consumed. None without `-`."""
    if "-" not in options.sources:
        return None
    stream = stdin if stdin is not None else sys.stdin
    try:
        if stream is None:  # Python's sys.stdin where the shell closed it (`<&-`): an AttributeError's traceback
            raise OSError("it is closed")
        return stream.read()
    except OSError as exc:
        raise CheckpointError(
            "`-` reads the checkpoints' paths from stdin, which cannot be read", got=exc.strerror or str(exc),
            fix="pipe the paths in (`find runs/a -name '*.pt' | fdl analyze - ...`), or give the folder or files as "
            "arguments",
        ) from None


def _job_stdin_text(
    options: AnalyzeOptions, stdin: TextIO | None, world: Any, device: Any
) -> tuple[str | None, FdlError | None]:
    """`_stdin_text`, or the error that refused it, on every rank alike: under torchrun rank 0 alone reads stdin
    and hands what it read to the other ranks, once the job's process group is joined. torchrun's ranks share
    its stdin, and each rank that read it got what the others had not read (all of it, none, or a part: "no
    path on stdin" on one rank, or each rank a list of checkpoints of its own). A rank other than 0 never
    reads stdin."""
    from fdl_cli import distributed

    text, refused = None, None
    if world.writes:
        try:
            text = _stdin_text(options, stdin)
        except FdlError as exc:
            refused = exc
    if not world.distributed or "-" not in options.sources:
        return text, refused
    distributed.init_process_group(world, device)
    said = None if refused is None else (refused.what, refused.got, refused.fix)
    text, said = distributed.broadcast_from_writer((text, said), world, "rank 0 to read the checkpoints' paths on "
                                                   "stdin")
    if said is not None and refused is None:
        what, got, fix = said
        refused = CheckpointError(what, got=got, fix=fix)  # rank 0's, said by it (`agree_on_refusal`)
    return text, refused


def _replayed(stdin_text: str | None) -> TextIO | None:
    """stdin as the run read it at the start (`_run_analyze`), to read once more; None without `-`."""
    return io.StringIO(stdin_text) if stdin_text is not None else None


def _check_probe_names(parsed: Sequence[tuple[str, Path]], specs: Sequence[str]) -> None:
    """Refuse two probes of one name, saying which name, and whether one file was given twice (it said "two probes
    have the same name", naming neither)."""
    names = [name for name, _ in parsed]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is None:
        return
    paths = [path for name, path in parsed if name == repeated]
    once = len({os.path.abspath(path) for path in paths}) == 1
    raise ProbeError(
        f"two probes have the same name, {repeated!r}",
        got=", ".join(specs),
        fix=f"give {paths[0]} once" if once else "name them apart: " + " ".join(
            f"--probe {repeated if index == 0 else f'{repeated}_{index + 1}'}={path}"
            for index, path in enumerate(paths)),
    )


def _prepare_run(
    options: AnalyzeOptions, world: Any, device: Any, reporter: Reporter, stdin: TextIO | None, started: str,
    claims: contextlib.ExitStack | None = None, *, code_note: Callable[[str], None] | None = None,
) -> tuple[_Context, list[CheckpointRef], Path, AnalyzeSummary, str | None, Path | None]:
    """What a run starts from, before any work: the manifest applied, the checkpoints found, the probes
    read, the model's factory resolved, the store's path checked (on every rank alike, under torchrun).
    --watch takes its store's lock here, released by `claims` (`_claim_for_watch`). `code_note` says that
    fdl.toml's model code runs, where not `reporter`."""
    from fdl_cli import checkpoints as ckpts
    from fdl_cli.probes import load_probe, parse_probe_spec, unread_targets_warning, unused_note

    # fdl.toml (`_read_manifests`), read first: it may say how the folder's checkpoints are named (glob,
    # step_regex).
    given = [Path(s) for s in ckpts.expand_sources(options.sources) if s != "-"]  # a pattern as its matches now
    dirs = [path for path in given if _is(path, "dir")]
    given_options = options
    watched = options.watch and "-" not in options.sources  # an fdl.toml changed meanwhile is looked for
    signatures = _manifest_signatures(options) if watched else None  # before reading: a change after is seen
    digests = _manifest_digests(signatures)
    manifest, manifests = _read_manifests(options, reporter)
    options = _settled_options(options, manifest, reporter)
    if options.trust_pickle:  # before discovery, which unpickles such files to read their steps
        reporter.warn(
            "--trust-pickle: pickled checkpoints are loaded with full unpickling, .pt2 archives with "
            "torch.export.load and TorchScript programs run; each runs any code the file contains; use it only on "
            "files you trust"
        )

    factories: dict[tuple[Any, ...], Callable[..., Any]] = {}
    keys_found: list[frozenset[str]] = []

    def run_factory(model_spec: str, base_dir: Path | None, manifest: Any) -> Callable[..., Any]:
        """The factory of the run's model code (--model, else fdl.toml's), imported once however often it is
        asked for (by `model_keys` during discovery, then to build the model); fdl.toml's said before it runs."""
        named_by = manifest.path if manifest is not None and not options.model_spec else None
        key = (model_spec, base_dir, named_by)
        if key not in factories:
            # fdl.toml's module is looked for beside it; --model's is an installed one, or in the current folder
            module_dir = named_by.parent if named_by is not None else None
            if named_by is not None:  # code the folder brought: said before it runs
                (code_note or reporter.note)(ckpts.manifest_model_note(model_spec, named_by, base_dir=base_dir,
                                                                       module_dir=module_dir))
            factories[key] = ckpts.resolve_model_factory(model_spec, base_dir=base_dir, module_dir=module_dir,
                                                         named_by=named_by)
        return factories[key]

    def model_keys(others: Sequence[CheckpointRef]) -> frozenset[str] | None:
        """The run's model's state_dict keys, for discovery to tell a metrics file from a checkpoint by
        (`checkpoints.model_keys`): asked only where it meets one that the other checkpoints' names do not
        tell; found once a run. The options and fdl.toml settled when it is asked."""
        if not keys_found:
            model_spec = options.model_spec or (manifest.model if manifest else None)
            base_dir = dirs[0] if dirs else None
            factory = run_factory(model_spec, base_dir, manifest) if model_spec else None
            keys = ckpts.model_keys(others, factory, _model_kwargs(options, manifest, base_dir, NullReporter()),
                                    trust_pickle=options.trust_pickle, weights=options.weights)
            keys_found.extend([keys] if keys else [])
        return keys_found[0] if keys_found else None

    def discover(options: AnalyzeOptions, manifest: Any) -> Any:
        return ckpts.discover_checkpoints(
            options.sources,
            glob=options.glob_pattern,
            step_regex=options.step_regex, step_offsets=options.step_offsets,
            steps=options.steps,
            every=options.every,
            stdin=stdin,
            weights=options.weights,
            empty_ok=options.watch and "-" not in options.sources,
            missing_ok=options.watch and "-" not in options.sources,
            trust_pickle=options.trust_pickle,
            probes=_named_files(options, manifest),
            model_keys=model_keys,
        )

    discovery = discover(options, manifest)
    claimed = _claim_for_watch(options, claims)
    notes, reported_bad = list(discovery.notes), set[str]()
    shown: set[str] = set()
    if "-" in options.sources and not manifests:
        _note_stdin_manifests(discovery, reporter)
    if options.watch and not discovery.checkpoints:
        # What the folder holds is said before the wait (a --glob or manifest glob that matches nothing,
        # a file without a step), and a settled unreadable file as it is found: waiting without a word
        # for a folder whose only checkpoint is a Git LFS pointer looked like a trainer not started.
        _note_skipped(notes, manifests, reporter, _model_file(options), ckpts.expand_sources(options.sources))
        shown = set(notes)
        discovery = _wait_for_a_checkpoint(options, reporter, discovery, reported_bad,
                                           _named_files(options, manifest), model_keys)
        notes = [note for note in discovery.notes if note not in shown]
    if watched and manifest is None:
        # A trainer that makes its folder, or writes its fdl.toml, at its first save: the file is read
        # now (it was left out without a word: its options dropped, or "no probe set was given"); one
        # written after it is waited for while the run cannot start without it (no probe, no model).
        signatures = _manifest_signatures(options)
        digests = _manifest_digests(signatures)
        manifest, manifests = _read_manifests(options, reporter, note_unread=False)
        missing = _missing_without_manifest(options, discovery) if manifest is None else None
        if missing is not None:
            manifest, manifests = _wait_for_a_manifest(options, reporter, missing)
            signatures = _manifest_signatures(options)  # read once settled: not moved since
            digests = _manifest_digests(signatures)
        if manifest is not None:
            # a pattern's folders as found now, with the first checkpoint
            dirs = [Path(s) for s in ckpts.expand_sources(options.sources) if s != "-" and _is(Path(s), "dir")]
            before = options
            options = _settled_options(options, manifest, reporter)
            if (options.glob_pattern, options.step_regex, options.weights) != (
                    before.glob_pattern, before.step_regex, before.weights):
                discovery = discover(options, manifest)  # how its checkpoints are named, or which weights
                if not discovery.checkpoints:
                    discovery = _wait_for_a_checkpoint(
                        options, reporter, discovery, reported_bad, _named_files(options, manifest), model_keys)
                notes = [note for note in discovery.notes if note not in shown]
    # As soon as they were found bad: --watch tries one again once it changed (a file being written)
    sources = ckpts.expand_sources(options.sources)  # a pattern as the paths it matches now
    bad_signatures = {str(bad_path): _signature_of(bad_path) for bad_path, _ in discovery.bad}
    # the store's own files in a folder it analyses (`cd run && fdl analyze .`, an --out beside the checkpoints)
    # are no skipped files: said on every run after the first; under --watch its lock file too, once it has waited
    from fdl_cli.store import is_store_file

    own_store = claimed.store if claimed is not None else options.out or default_store_path(options.sources)
    notes = [note for note in notes
             if (path := _skipped_path(sources, note)) is None or not is_store_file(own_store, path)]
    _note_skipped(notes, manifests, reporter, _model_file(options), sources)
    said = {_note_key(note) for note in [*shown, *notes]}  # --watch says those of later polls (`_note_new_skips`)
    if not options.watch:
        _note_empty_folders(options, discovery, manifest, reporter)
    for first, second in discovery.duplicates:
        reporter.warn(f"{first} and {second} hold identical weights")
    for bad_path, reason in discovery.bad:
        if str(bad_path) in reported_bad:
            continue  # reported while waiting for the first checkpoint
        _report_bad_found(options, reporter, bad_path, reason)

    model_spec = options.model_spec or (manifest.model if manifest else None)
    base_dir = dirs[0] if dirs else None  # where a relative --model file is looked for first
    model_kwargs = _model_kwargs(options, manifest, base_dir, reporter)
    probe_specs = options.probe_specs or tuple(manifest.probe if manifest else ())
    layer_names = options.layers or tuple(manifest.layer if manifest else ())
    if not probe_specs:
        # a probe among the sources (`fdl analyze run probe.npz`, `fdl analyze run/*`) was skipped with a note:
        # the fix points at it rather than at --probe in general
        seen = [match.group(1) for match in map(ckpts.PROBE_NOTE.fullmatch, discovery.notes) if match is not None]
        seen = seen or [path.name for path in ckpts.skipped_probe_sets(discovery.notes, dirs)]  # `fdl analyze DIR`
        paths = [path for path in [*given, *(folder / seen[0] for folder in dirs)]
                 if path.name == seen[0] and _is(path, "file")] if seen else []
        raise ProbeError(
            "no probe set was given",
            got=f"{seen[0]}, found among the checkpoints, is a probe set (skipped above)" if seen else None,
            fix=(f"pass it as --probe {shlex.quote(str(paths[0])) if paths else 'PATH'}, or add probe = \"...\" to "
                 "fdl.toml") if seen else
            "pass --probe FILE (.npz/.pt/.safetensors/.h5 with x and optional y), or add probe = \"...\" to fdl.toml",
        )
    if not options.probe_specs:
        _check_manifest_probes(manifest, probe_specs)
    parsed = [parse_probe_spec(spec) for spec in probe_specs]
    _check_probe_names(parsed, probe_specs)  # before any is read: a probe may take minutes to read and check
    probes = []
    for name, path in parsed:
        probes.append(load_probe(path, name=name))
        note = unused_note(probes[-1])
        if note is not None:
            reporter.note(note)
        warning = unread_targets_warning(probes[-1])
        if warning is not None:
            reporter.warn(warning)
    factory = run_factory(model_spec, base_dir, manifest) if model_spec else None
    if options.model_spec is not None and (other := _other_model_file(options.model_spec, base_dir)) is not None:
        reporter.note(other)
    model_source = _model_source(factory)
    spec_source = _spec_source(model_spec, base_dir) if factory is not None else None
    model_imports = _model_imports(factory, model_spec, base_dir)
    ctx = _Context(
        options=options,
        probes=probes,
        factory=factory,
        model_kwargs=model_kwargs,
        layer_names=layer_names,
        layer_source=manifest.path if manifest is not None and not options.layers and layer_names else None,
        device=device,
        reporter=reporter,
        world=world,
        model_source=model_source,
        spec_source=spec_source,
        model_imports=model_imports,
        steps_found=None if discovery.steps_found is None else frozenset(discovery.steps_found),
        copies=list(discovery.copies),
        started=started,
        manifest_signatures=signatures,
        manifest_digests=digests,
        manifest=manifest,
        manifests=list(manifests),
        given_options=given_options,
        said_notes=said,
        model_keys=model_keys,
    )
    out = options.out or default_store_path(options.sources)
    ctx.store = out
    if claimed is not None:
        from fdl_cli.store import store_target

        if claimed.store == store_target(out):
            ctx.claimed = claimed
        else:  # the folder named the default store became a file meanwhile: its writer takes the lock of its own
            claimed.release()
    inputs: list[Any] = [*(probe.path for probe in probes), *(ref.path for ref in discovery.checkpoints)]
    inputs += [path for path, _ in discovery.bad]
    if model_source is not None:
        inputs.append(model_source[0])
    inputs += [found.path for found in manifests]
    _check_out_is_no_input(out, inputs)
    summary = AnalyzeSummary(store=out, resume=options.resume, store_before=_store_identity(out))
    summary.failed.extend((str(bad_path), reason) for bad_path, reason in discovery.bad)
    ctx.failed_signatures.update(bad_signatures)
    _remember_failed_files(ctx, [bad_path for bad_path, _ in discovery.bad])
    refs = list(discovery.checkpoints)
    if options.resume and (options.steps or options.every) and "-" not in options.sources:
        selected = {ref.step for ref in refs}
        refs = _with_stored(options, refs, out, model_keys)
        summary.unselected = {ref.step for ref in refs} - selected
    return ctx, refs, out, summary, model_spec, base_dir


def _model_kwargs(options: AnalyzeOptions, manifest: Any, base_dir: Path | None, reporter: Reporter) -> dict[str, Any]:
    """The keyword arguments of the run's model factory: --model-kwargs '{}' given on the command line wins
    over fdl.toml's, as every option given does."""
    if "model_kwargs" in options.given or bool(options.model_kwargs) or manifest is None:
        return options.model_kwargs
    return _manifest_kwargs(options.model_spec, manifest, base_dir, reporter)


#: the kinds of checkpoint that hold weights alone: a model's code (--model, fdl.toml's model) must build it
_WEIGHTS_ONLY = frozenset({"state_dict", "safetensors", "hf_dir", "dcp"})


def _claim_for_watch(options: AnalyzeOptions, claims: contextlib.ExitStack | None) -> Any:
    """--watch: its store's lock (`store.claim`), taken before it waits for a checkpoint or an fdl.toml, so that
    another writer of the store is refused at once (a second watch waited too, refused once the trainer's first
    checkpoint came, if this one took the lock first) and `fdl report` says who writes it; released by `claims`
    (its writer takes it over). None for a run that is no watch, and where the store's default path is not known
    yet: the one source does not exist yet (a folder names it, a file not), whose writer takes the lock."""
    if not options.watch or claims is None:
        return None
    from fdl_cli.checkpoints import is_pattern
    from fdl_cli.store import claim

    if options.out is None and len(options.sources) == 1 and options.sources[0] != "-" \
            and not os.path.lexists(options.sources[0]) and not is_pattern(options.sources[0]):
        return None  # a pattern's store is ./fdl.h5, known from the start (`default_store_path`)

    with signals.deferred():  # the lock and its release's registration, both or neither (its file was left behind)
        lock = claim(options.out or default_store_path(options.sources), replacing=not options.resume)
        claims.callback(lock.release)
    # the model's code hung before the writer took the lock over (the reference's forward pass): the lock file
    # removed all the same by the thread that ends fdl (`signals._Stall`); a second release does nothing
    claims.enter_context(signals.ending_when_stalled(lock.release))
    return lock


def _missing_without_manifest(options: AnalyzeOptions, discovery: Any) -> str | None:
    """What the run cannot start without, when no fdl.toml gives it (--watch waits for one): no probe, or
    checkpoints of weights alone and no model; None when the command line gives what the run needs."""
    if not options.probe_specs:
        return "no probe set was given"
    weights_only = [ref for ref in discovery.checkpoints if ref.kind in _WEIGHTS_ONLY]
    if options.model_spec is None and weights_only:
        return f"{weights_only[0].path} holds weights only, and no model was given"
    return None


def _wait_for_a_manifest(options: AnalyzeOptions, reporter: Reporter, missing: str) -> tuple[Any, list[Any]]:
    """--watch: the run's checkpoints are there, but not what it needs (`missing`), which a trainer's
    fdl.toml written after its first checkpoint gives: poll until one has settled (a file being written
    is neither half read nor taken for invalid TOML), as a checkpoint is waited for; Ctrl-C stops."""
    from fdl_cli import checkpoints as ckpts

    folders = ", ".join(map(str, _manifest_folders(options))) or ", ".join(options.sources)
    reporter.note(f"{missing}: waiting for an fdl.toml in {folders} (every {options.poll_seconds:g} s; Ctrl-C "
                  "stops; or stop and give it on the command line)")
    looks: SettleLooks = {}
    while True:
        signals.sleep(options.poll_seconds)
        now = time.time()
        written = [folder / ckpts.MANIFEST_NAME for folder in _manifest_folders(options)]
        written = [path for path in written if _is(path, "file")]
        if written and all(_settled(path, options.poll_seconds, now, looks) for path in written):
            return _read_manifests(options, reporter, note_unread=False)


def _check_manifest_probes(manifest: Any, specs: Sequence[str]) -> None:
    """fdl.toml's probe files that are not there: said naming the fdl.toml and the folder its paths are
    relative to (a link's own folder), rather than as a --probe path nobody gave."""
    from fdl_cli.probes import parse_probe_spec

    for spec in specs:
        path = Path(parse_probe_spec(spec)[1])
        try:
            os.stat(path)
            continue
        except FileNotFoundError:
            pass
        except OSError:
            continue  # there, but not to be read: load_probe says why
        folder = manifest.path.parent
        if manifest.path.is_symlink():
            where = (f"{manifest.path} is a link to {manifest.path.resolve()}: its relative paths are relative to "
                     f"the link's folder, {folder}, as a copy's would be")
        else:
            where = f"a relative path in {manifest.path} is relative to its folder, {folder}"
        if "$" in str(path):
            where += "; environment variables are not expanded (`~/` is the home folder)"
        raise ProbeError(
            f"the probe {path} that {manifest.path} names is not there",
            fix=f"{where}; put the file there, fix the path in {manifest.path}, or pass --probe FILE",
        )


def _other_model_file(spec: str, base_dir: Path | None) -> str | None:
    """A note when a relative --model path names a file here and another one of other bytes in the
    checkpoint folder given (a copy of the code the run was trained with, say): the current folder's is
    taken, as the shell user means it, and the other is named; and when it names only the checkpoint
    folder's, which then runs: code that came with the checkpoints, not the current folder's."""
    from fdl_cli import checkpoints as ckpts

    target = spec.rpartition(":")[0]
    if base_dir is None or not ckpts._is_path_spec(target) or Path(target).is_absolute():
        return None
    here, there = Path(target), base_dir / target
    if not _is(here, "file") and _is(there, "file"):
        return f"--model {spec}: the current folder holds no {target}, so the checkpoint folder's {there} runs"
    if not (_is(here, "file") and _is(there, "file")) or _same_file(str(here), str(there)):
        return None
    return (f"--model {spec} is {here.resolve()} (a path on the command line is relative to the current folder); "
            f"{there} differs: give its path to use it")


def _watch_under_torchrun() -> FdlError:
    return FdlError("--watch cannot run under torchrun", fix="run `fdl analyze --watch` as a single process")


def _check_redo_options(options: AnalyzeOptions, world: Any) -> None:
    """--redo goes with neither --overwrite (which analyses everything again anyway) nor --watch, and
    runs as one process (under torchrun every rank refuses alike, before any work)."""
    if options.redo is None:
        return
    redo = ",".join(map(str, options.redo))
    if not options.resume:
        raise FdlError(
            f"--redo {redo} and --overwrite together: --overwrite analyses every checkpoint again anyway",
            fix=f"pass --redo {redo} without --overwrite to analyse only those again, or --overwrite alone",
        )
    if options.watch:
        raise FdlError(
            f"--redo {redo} and --watch together: --redo mends a finished store, --watch follows a training job",
            fix=f"run `fdl analyze ... --redo {redo}` first, then the --watch command",
        )
    if world.distributed:
        raise FdlError(
            f"--redo {redo} runs as one process, not under torchrun",
            fix=f"run `python -m fdl_cli analyze ... --redo {redo}` (or `fdl analyze`) without torchrun",
        )


def _check_drop_options(options: AnalyzeOptions, world: Any) -> None:
    """--drop mends a resumed store as one process: not with --overwrite (nothing is kept to drop from),
    --watch or --redo (one repair at a time), nor under torchrun; refused alike on every rank."""
    if options.drop is None:
        return
    clash = ("--overwrite" if not options.resume else "--watch" if options.watch
             else "--redo" if options.redo is not None else None)
    _one_repair_alone(f"--drop {','.join(map(str, options.drop))}", "removes steps from the store it resumes", clash,
                      "nothing is kept to drop", world)


def _check_abandon_options(options: AnalyzeOptions, world: Any) -> None:
    """--abandon-addition gives an addition up in a resumed store as one process: not with --overwrite (nothing is
    kept to give up), --watch, --redo or --drop (one repair at a time), nor under torchrun; refused alike on
    every rank."""
    if not options.abandon_addition:
        return
    clash = ("--overwrite" if not options.resume else "--watch" if options.watch
             else "--redo" if options.redo is not None else "--drop" if options.drop is not None else None)
    _one_repair_alone("--abandon-addition", "gives up an addition to the store it resumes", clash,
                      "nothing is kept to give up", world)


def _check_accept_options(options: AnalyzeOptions, world: Any) -> None:
    """--accept-model-change resumes a store across a change of its model code as one process: not with --overwrite
    (nothing is kept), --redo, --drop or --abandon-addition (one repair at a time), nor under torchrun; refused alike
    on every rank."""
    if not options.accept_model_change:
        return
    clash = ("--overwrite" if not options.resume else "--redo" if options.redo is not None
             else "--drop" if options.drop is not None else "--abandon-addition" if options.abandon_addition else None)
    _one_repair_alone("--accept-model-change", "resumes the store across a change of its model code", clash,
                      "with the new code: nothing is kept to accept it for", world)


def _one_repair_alone(flag: str, does: str, clash: str | None, nothing: str, world: Any) -> None:
    """Refuse `flag` (a repair of a resumed store: it `does` so) given with `clash`, or under torchrun."""
    if clash is not None:
        raise FdlError(
            f"{flag} and {clash} together: {flag.split()[0]} {does}, alone",
            fix=f"run `fdl analyze ... {flag}` first, then the {clash} command"
            if clash != "--overwrite" else f"--overwrite alone re-analyses everything ({nothing})",
        )
    if world.distributed:
        raise FdlError(
            f"{flag} runs as one process, not under torchrun",
            fix=f"run `python -m fdl_cli analyze ... {flag}` (or `fdl analyze`) without torchrun",
        )


def _wait_for_a_checkpoint(
    options: AnalyzeOptions, reporter: Reporter, discovery: Any, reported: set[str], probes: Sequence[Path],
    model_keys: ModelKeys | None = None,
) -> Any:
    """--watch started before the training job wrote a checkpoint (or while it writes the first): poll
    until one can be read, as later checkpoints are waited for; Ctrl-C stops, as it stops the watch.
    An unreadable file is reported once it has settled (added to `reported`), as during the watch;
    --strict stops there."""
    from fdl_cli import checkpoints as ckpts

    reporter.note(f"waiting for a checkpoint in {', '.join(options.sources)} (every {options.poll_seconds:g} s; "
                  "Ctrl-C stops)")
    looks: SettleLooks = {}
    while True:
        for bad_path, reason in _newly_settled(discovery.bad, reported, options.poll_seconds, looks):
            reported.add(str(bad_path))
            _report_bad_found(options, reporter, bad_path, reason)
        signals.sleep(options.poll_seconds)
        try:
            discovery = ckpts.discover_checkpoints(
                options.sources, glob=options.glob_pattern, step_regex=options.step_regex,
                step_offsets=options.step_offsets, steps=options.steps,
                every=options.every, weights=options.weights, empty_ok=True, missing_ok=True,
                trust_pickle=options.trust_pickle, probes=probes, model_keys=model_keys,
            )
        except SameStepError as exc:
            now = time.time()
            if all(_settled(path, options.poll_seconds, now, looks) for path in exc.paths):
                raise  # two settled files of one step: the error a start after them gives
            continue  # Lightning's last.ckpt being written beside the first checkpoint: as `_rediscover`
        if discovery.checkpoints:
            return discovery


def _named_files(options: AnalyzeOptions, manifest: Any) -> list[Path]:
    """The files of the probes the run reads (--probe, else fdl.toml's) and of its model code (--model's, else
    fdl.toml's): a folder or a glob of the run's files that takes one in skips it without a note
    (`discover_checkpoints`' ``probes``). `fdl analyze run --model run/model.py:build` noted "skipped 1 file
    without a checkpoint suffix: model.py" of the file the user had just named, and `fdl analyze run/*`
    "skipped model.py: text file, not a checkpoint" of the model fdl.toml names."""
    from fdl_cli.probes import parse_probe_spec

    specs = options.probe_specs or tuple(manifest.probe if manifest is not None else ())
    files = []
    for spec in specs:
        with contextlib.suppress(FdlError):  # a malformed --probe is refused, in its own words, once it is loaded
            files.append(parse_probe_spec(spec)[1])
    if (file := _model_file(options)) is not None:
        files.append(file)
    elif options.model_spec is None and manifest is not None and manifest.model and ":" in manifest.model:
        # fdl.toml's model file (its path resolved by read_manifest), or its module beside it: given among the
        # run's files (`fdl analyze run/*`) it was noted "skipped model.py: text file, not a checkpoint"
        from fdl_cli import checkpoints as ckpts

        target = manifest.model.rpartition(":")[0]
        named = Path(target) if ckpts._is_path_spec(target) else ckpts.module_beside(target, manifest.path.parent)
        if named is not None:
            files.append(named)
    return files


def _model_file(options: AnalyzeOptions) -> Path | None:
    """The file of the model code the run names (--model, else fdl.toml's), as `_named_files` takes it;
    None for none (a module saved whole, a malformed spec)."""
    from fdl_cli import checkpoints as ckpts

    if options.model_spec is not None and ":" in options.model_spec:
        target = options.model_spec.rpartition(":")[0]
        dirs = [Path(source) for source in ckpts.expand_sources(options.sources)
                if source != "-" and _is(Path(source), "dir")]
        # a path spec as resolve_model_factory finds it; a module spec's file in the current folder, whence
        # it is imported (`cd run && fdl analyze . --model model:build`)
        # (none for a module name with an empty part, `:build`, `.:build`: refused as malformed when it is read)
        return (ckpts.model_spec_file(options.model_spec, base_dir=dirs[0] if dirs else None)
                if ckpts._is_path_spec(target) else Path(*target.split(".")).with_suffix(".py")
                if all(target.split(".")) else None)
    return None


def _named(path: Path | str, message: str) -> str:
    """``message`` prefixed with the checkpoint's path, unless its first line names the path already (the
    loader's own errors do: "the weights in X do not fit ...", "X: tensor ... holds NaN"), which printed it
    twice ("X: X: tensor ..."); nor a path whose name holds a line break, which the first line never held whole.
    (Its `got:` and `fix:` lines may name the path without the message naming it.)"""
    what = re.split(r"\n  (?:got|fix): ", message, maxsplit=1)[0]
    return message if str(path) in what else f"{path}: {message}"


def _report_bad_found(options: AnalyzeOptions, reporter: Reporter, bad_path: Path, reason: str) -> None:
    """A file discovery found unreadable: reported; --strict stops there."""
    reporter.error(_named(bad_path, reason))  # the reason may name the file already
    if options.strict:
        raise CheckpointError(
            f"--strict: stopped at the unreadable checkpoint {bad_path}",
            got=reason.splitlines()[0],
            fix="repair or remove that file, or run without --strict to analyse the readable ones",
        )


def _note_skipped(notes: Sequence[str], manifests: Sequence[Any], reporter: Reporter,
                  model_file: Path | None = None, sources: Sequence[str] = ()) -> None:
    """Discovery's notes. Files without a checkpoint suffix get one note for all of them (a folder with
    a README, logs and configs said one line each); the probe and model files the folders' fdl.toml
    name, none (the README's first command noted probe.npz and model.py; nor a probe.pt it names), nor
    the fdl.toml read (`fdl analyze run/*` gives it), nor the Python files of a folder given (`sources`)
    that holds the model code that runs (`model_file`, or fdl.toml's): the run's own scripts (train.py;
    the sample's make_samples.py, noted by README's main command on every run), which no one takes for a
    checkpoint. A .py file in a folder whose model code is not the one run is still noted: it may be the
    model meant."""
    from fdl_cli import checkpoints as ckpts
    from fdl_cli.probes import parse_probe_spec

    own = set()
    targets: set[Path] = set()
    homes = [manifest.path.parent for manifest in manifests]
    code_homes: set[Path] = set()
    with contextlib.suppress(OSError, RuntimeError):
        if model_file is not None and model_file.is_file():
            code_homes.add(model_file.resolve().parent)
    for manifest in manifests:
        named = [Path(parse_probe_spec(spec)[1]) for spec in manifest.probe]
        if manifest.model is not None and ":" in manifest.model:
            target = manifest.model.rpartition(":")[0]
            named.append(Path(target))
            if ckpts._is_path_spec(target) and model_file is None:  # fdl.toml's model runs, not --model's
                with contextlib.suppress(OSError, RuntimeError):
                    code_homes.add(Path(target).resolve().parent)  # model = "model.py:build"
            if (module := ckpts.module_beside(target, manifest.path.parent)) is not None:
                named.append(module)  # model = "mymodel:build", mymodel.py beside it
                if model_file is None:
                    with contextlib.suppress(OSError, RuntimeError):
                        code_homes.add(manifest.path.parent.resolve())
        for path in named:
            with contextlib.suppress(OSError, RuntimeError):
                if path.resolve().parent == manifest.path.parent.resolve():
                    own.add(path.name)
                targets.add(path.resolve())

    def owned(name: str) -> bool:
        """read_manifest resolves the paths: a symbolic link in the folder to a shared probe.npz (a name
        that resolves elsewhere) is the folder's own file all the same (it was noted as a skipped file)."""
        if name in own:
            return True
        try:
            return any((home / name).resolve() in targets for home in homes)
        except (OSError, RuntimeError):
            return False

    scanned = set()
    for source in sources:
        with contextlib.suppress(OSError, RuntimeError):
            if source != "-" and _is(Path(source), "dir"):
                scanned.add(Path(source).resolve())
    code_homes &= scanned

    def beside_the_model(name: str) -> bool:
        """A Python file in the folder given that holds the model code that runs (make_samples.py beside
        model.py)."""
        try:
            return name.endswith(".py") and any((home / name).is_file() for home in code_homes)
        except OSError:
            return False

    unsuffixed: list[str] = []
    state: list[str] = []  # a Trainer's optimizer.pt, scheduler.pt, ... in each checkpoint-N folder given
    # another framework's files, archives, compressed files, by kind: one note a kind met more than once (a run
    # folder of 12 gzipped logs had 12 lines, where files of no checkpoint suffix share one)
    foreign: dict[Any, list[tuple[str, str]]] = {}
    for note in notes:
        if re.fullmatch(r"skipped .+: empty file", note):
            continue  # reported as a bad checkpoint too ("error: cannot read the checkpoint ...: empty")
        if manifests and note.startswith(f"skipped {ckpts.MANIFEST_NAME}: "):
            continue  # the fdl.toml read, given among the folder's files (`fdl analyze run/*`)
        plain = re.fullmatch(r"skipped (.+): not a checkpoint suffix \((.+)\)", note)
        # by name (optimizer.pt), or for what it holds (optim_500.pt: an optimizer's state_dict), one line for all:
        # a run saving optim_N.pt beside each checkpoint had a line per file
        training = (re.fullmatch(r"skipped (.+): training state \(.+\), not model weights", note)
                    or re.fullmatch(r"skipped (.+): optimizer state, no model weights", note))
        probe = ckpts.PROBE_NOTE.fullmatch(note)
        if probe is not None and owned(probe.group(1)):
            continue  # fdl.toml's own probe.pt, as its probe.npz
        if training is not None:
            state.append(training.group(1))
        elif (kind := ckpts.foreign.in_note(note)) is not None:
            foreign.setdefault(kind[1], []).append((kind[0], note))
        elif plain is None:
            reporter.note(note)
        elif not owned(plain.group(1)) and not beside_the_model(plain.group(1)):
            unsuffixed.append(plain.group(1))

    def listed(names: list[str]) -> str:
        """config.json ×6: a name met in several folders once, with its count."""
        counts = Counter(names)
        shown = [f"{name} ×{n}" if n > 1 else name for name, n in counts.items()]
        return first_and_more(shown, 6)

    for kind, skipped in foreign.items():
        if len(skipped) == 1:
            reporter.note(skipped[0][1])
        else:
            noun = "folders" if " folder" in kind.what else "files"  # Orbax's checkpoint_N, rotated
            reporter.note(f"skipped {len(skipped)} {noun}, each {ckpts.foreign.said(kind)}: "
                          f"{listed([name for name, _ in skipped])}")
    if state:
        reporter.note(f"skipped {len(state)} file{'s' if len(state) > 1 else ''} of training state (optimizer, "
                      f"scheduler, RNG, arguments), not model weights: {listed(state)}")
    if unsuffixed:
        reporter.note(f"skipped {len(unsuffixed)} file{'s' if len(unsuffixed) > 1 else ''} without a checkpoint "
                      f"suffix ({', '.join(ckpts.WEIGHT_SUFFIXES + ckpts.TAR_SUFFIXES)}): {listed(unsuffixed)}")


def _with_stored(
    options: AnalyzeOptions, refs: list[CheckpointRef], out: Path, model_keys: ModelKeys | None = None
) -> list[CheckpointRef]:
    """The checkpoints --steps / --every selected, plus the discovered ones the store already holds.

    "Previous" (cka_prev, overlap_prev, prev_step) runs over every checkpoint of the store, not only
    this run's selection: a checkpoint selected between two stored ones then gets the stored one
    before it as its previous, and its stored successor is refreshed to compare with it
    (`_refresh_successors`), as if one run had analysed them all. Stored checkpoints are not analysed
    again. A store or folder that cannot be read this way leaves the selection as it is (the writer
    reports a damaged store)."""
    from fdl_cli import checkpoints as ckpts
    from fdl_cli.store import StoreReader

    if not out.is_file():
        return refs
    try:
        with StoreReader(out) as reader:
            stored = {record["step"] for record in reader.records(all_series=True)}
        selected = {ref.step for ref in refs}
        if stored <= selected:
            return refs
        everything = ckpts.discover_checkpoints(
            options.sources, glob=options.glob_pattern, step_regex=options.step_regex,
            step_offsets=options.step_offsets, weights=options.weights,
            trust_pickle=options.trust_pickle, model_keys=model_keys,
        )
    except FdlError:
        return refs
    extra = [ref for ref in everything.checkpoints if ref.step in stored and ref.step not in selected]
    return sorted(refs + extra, key=lambda ref: ref.step)


def _reference_ref(ctx: _Context, refs: Sequence[CheckpointRef]) -> CheckpointRef:
    wanted = ctx.options.reference_step
    if wanted is None:
        return refs[0]
    for ref in refs:
        if ref.step == wanted:
            return ref
    got = f"steps {', '.join(str(r.step) for r in refs[:12])}{' ...' if len(refs) > 12 else ''}"
    selection = ctx.options.steps is not None or ctx.options.every is not None
    if selection and (ctx.steps_found is None or wanted in ctx.steps_found):
        # the step has a checkpoint, which the selection left out: "no checkpoint has that step" sent
        # the user looking for a file that is there
        with_it = sorted({*(r.step for r in refs), wanted})
        # with --every, --steps selects every N-th of its steps, which may leave the reference out again
        example = (f" (--steps {','.join(map(str, with_it))}{' without --every' if ctx.options.every else ''})"
                   if len(with_it) <= 12 else "")
        raise CheckpointError(
            f"--reference {wanted}: no checkpoint selected by --steps / --every has that step",
            got=f"selected: {got}",
            fix=f"select the reference too{example}, or omit --reference to use the first selected",
        )
    if selection and ctx.steps_found:
        # no checkpoint has it at all: suggesting to select it led to "--steps asks for step(s) ... which
        # no checkpoint has"; the steps found, not only those selected, are the choice
        found = sorted(ctx.steps_found)
        got = f"steps {', '.join(map(str, found[:12]))}{' ...' if len(found) > 12 else ''}"
    raise CheckpointError(
        f"--reference {wanted}: no checkpoint has that step",
        got=got,
        fix="pass one of the steps found, or omit --reference to use the first",
    )


def _load(
    ref: CheckpointRef, options: AnalyzeOptions, known: tuple[str, str] | None = None
) -> tuple[LoadedCheckpoint, str]:
    """The checkpoint loaded, and its file's sha256: `known`'s (signature, sha256) where the file's signature
    before reading is that one (hashed earlier in this run), else hashed."""
    from fdl_cli.checkpoints import file_signature, load_checkpoint, sha256_file, unreachable

    def signature_now() -> str:
        try:
            return file_signature(ref.path)
        except (OSError, FdlError):
            return ""  # gone or unreadable: load_checkpoint or sha256_file says so

    signature = signature_now()  # before reading: see file_signature
    try:
        loaded = load_checkpoint(ref, trust_pickle=options.trust_pickle, weights=options.weights)
        try:
            sha = known[1] if known is not None and signature and signature == known[0] else sha256_file(ref.path)
        except OSError as exc:  # deleted once read (a keep-last-N rotation): a traceback, the run lost
            raise unreachable(Path(ref.path), exc) from None
    except CheckpointError as exc:
        exc.file_signature = signature  # --watch tries it again once it changed (_rediscover)
        raise
    if signature and signature_now() != signature:
        # The numbers would be those of the content loaded, stored under the hash of another.
        raise CheckpointError(
            f"{ref.path} changed while fdl was reading it (its size or modification time moved)",
            fix="let the training job finish writing it, then run `fdl analyze` again (it analyses what is missing)",
        )
    loaded.file_signature = signature
    return loaded, sha


#: `_note_once`'s kind of the note that a checkpoint holds another copy of its weights (an EMA)
WEIGHT_COPIES = "weight copies"
#: `_note_once`'s kind of the note that --trust-pickle read objects of classes not importable here as placeholders
NOT_LOADED = "objects not loaded"
#: `_note_once`'s kind of --watch's note that the reference's file is gone (`_note_reference_gone`)
REFERENCE_GONE = "reference gone"


def _note_once(ctx: _Context, kind: str, message: str) -> None:
    """Note `message` unless a note of its `kind` was said in this run: of the first file that warrants it, as
    one process meets them in step order (under torchrun rank 0 says that of the lowest rank that noted one:
    `_say_other_ranks_messages`)."""
    if kind not in ctx.noted_once:
        ctx.noted_once[kind] = message
        ctx.reporter.note(message)


def _prepare(ctx: _Context, loaded: LoadedCheckpoint, *, parameters: bool = True) -> Any:
    """The model of `loaded`, on the device in --dtype. `parameters=False` for passes that only take
    the anchor features (a stored checkpoint's series): they need no copy of the file's values."""
    from fdl_cli.checkpoints import build_model, ema_swap_said, not_loaded_said
    from fdl_cli.extract import in_float32, prepare_model

    if loaded.other_weights and WEIGHT_COPIES not in ctx.noted_once:
        # {"model": ..., "ema": ...}: the model's own weights were taken without a word (session 15)
        copies = loaded.other_weights
        if loaded.ema_swapped_in:  # mmengine's EMAHook, Lightning's WeightAveraging: the trained model's are the copy
            _note_once(ctx, WEIGHT_COPIES, ema_swap_said(Path(loaded.ref.path).name, loaded.ema_swapped_in))
        else:
            _note_once(
                ctx, WEIGHT_COPIES,
                f"{Path(loaded.ref.path).name} also holds weights under {', '.join(map(quoted_name, copies))} "
                f"(an EMA or teacher copy?): fdl analyses the model's own; --weights {shown_name(copies[0])} analyses "
                "that copy"
            )
    if loaded.not_loaded:
        _note_once(ctx, NOT_LOADED, not_loaded_said(Path(loaded.ref.path).name, loaded.not_loaded))
    if loaded.module is None and ctx.factory is None:
        raise CheckpointError(
            f"{loaded.ref.path} holds weights only, and no model was given to put them in",
            fix="pass --model path/model.py:factory (or pkg.module:factory), or add model = \"...\" to fdl.toml",
        )
    if loaded.module is not None:
        module = build_model(loaded, factory=None)
        if parameters and loaded.parameters is None and (ctx.options.dtype != "float32" or not in_float32(module)):
            # param_norm and param_dist_init take the file's values (kept once: a module prepared
            # again, as the reference is, has been converted already), float64 ones too
            loaded.parameters = [value.detach().clone() for _, value in module.named_parameters()]
        prepared = prepare_model(module, device=ctx.device, dtype=ctx.options.dtype)
        _check_layers(ctx, prepared, loaded)
        return prepared
    try:
        if ctx.model is not None:
            # Same factory, same kwargs: overwrite the weights in place (no re-initialisation, no transfer
            # of a fresh model to the device); strict loading still checks every key and shape.
            return build_model(loaded, factory=ctx.factory, kwargs=ctx.model_kwargs, into=ctx.model)
        model = build_model(loaded, factory=ctx.factory, kwargs=ctx.model_kwargs)
    except WeightsMismatchError as exc:
        if _model_named_by(ctx) is None and _kwargs_from(ctx) != "manifest":
            raise
        raise _manifest_model(exc, ctx) from None
    ctx.model = prepare_model(model, device=ctx.device, dtype=ctx.options.dtype)
    return ctx.model


def _check_layers(ctx: _Context, model: Any, loaded: LoadedCheckpoint) -> None:
    """A checkpoint that carries its own model (a pickled module, TorchScript) must have the layers the
    run analyses: files of one folder can hold different architectures, or one network under different
    wrappers (a DataParallel module at one step, a torch.compile'd one at the next). Hooking a missing
    module raised a KeyError traceback; it is a bad checkpoint, with its reason."""
    if not ctx.layers:  # the first model: the layers are resolved on it
        return
    modules = dict(model.named_modules())
    missing = next((spec for spec in ctx.layers if spec.module not in modules), None)
    if missing is None:
        return
    import difflib

    from fdl_cli.checkpoints import unwrapped_name

    what = (f"the model in {loaded.ref.path} has no module {missing.module!r}, whose "
            f"{'input' if missing.use_input else 'output'} ({missing.label}) is analysed at the run's other checkpoints")
    wrapped = next((name for name in modules if name and unwrapped_name(name) == unwrapped_name(missing.module)), None)
    if wrapped is not None:
        raise CheckpointError(
            what,
            # DataParallel's, DDP's and torch.compile's wrappers are taken off (checkpoints._unwrapped): what
            # is left is a wrapper of the script's own holding the network as its `module` or `_orig_mod`
            got=f"the same name under another wrapper: {wrapped!r} (a module of the training script's own that holds "
            "the network as its 'module' or '_orig_mod')",
            fix="save the weights alone (torch.save({'model': model.state_dict(), 'step': step}, ...)) and analyse "
            "them with --model (the wrappers' prefixes are stripped from the weights' names); or analyse this "
            "file into a store of its own (--out)",
        )
    close = difflib.get_close_matches(missing.module, [name for name in modules if name], n=3)
    raise CheckpointError(
        what,
        got=(f"its closest module names: {', '.join(close)}" if close
             else f"a model of another architecture ({type(model).__name__})"),
        fix="the checkpoints of one run must hold one network: analyse this file into a store of its own "
        "(--out), or leave it out (--glob, --steps)",
    )


def _store_opened(ctx: _Context, writer: Any) -> None:
    """What analyze says once `writer` has opened the store for writing (its checks passed): the store's history
    warning, and `ctx.store_notes`, which say what the store will record."""
    if writer.history_warning is not None:
        ctx.reporter.warn(writer.history_warning)
    for note in ctx.store_notes:
        ctx.reporter.note(note)


def _validate(ctx: _Context, model: Any, reference: CheckpointRef,
              out: Path | None = None) -> list[tuple[str, dict[str, int], int, int]]:
    """Resolve the layers (on `reference`, the checkpoint loaded) and check every probe against the model with one
    sample, before long work. Returns each probe's pass for `_check_memory`: (probe, {layer: p}, n, m). `out`: the
    store, whose own layer a resume without --layer goes on at (`_stored_layer_kept`)."""
    from fdl_cli.extract import forward_one_shapes, resolve_layers, tuple_outputs_fix
    from fdl_cli.probes import (
        anchor_class_skew,
        anchor_skew_warning,
        dominant_class_note,
        float_one_hot,
        raw_pixels_warning,
        soft_labels,
        targets_without_energy,
        validate_probe,
        zero_one_targets,
    )

    ctx.layers = []
    passes: list[tuple[str, dict[str, int], int, int]] = []
    for probe in ctx.probes:
        try:
            if not ctx.layers:
                # The default layer is found by running this first sample (execution order, not registration).
                # what the default needs said (a note, then a warning), said once it is taken
                default_notes: list[str] = []
                default_warnings: list[str] = []
                with _layer_source_named(ctx):
                    ctx.layers = resolve_layers(
                        model, ctx.layer_names, sample=probe.x[:1], device=ctx.device, dtype=ctx.options.dtype,
                        note=default_notes.append, warn=default_warnings.append,
                        inspect=_inspect_command(ctx, reference, probe),
                    )
                if not _stored_layer_kept(ctx, out, model):
                    for text in default_notes:
                        ctx.reporter.note(text)
                    for text in default_warnings:
                        ctx.reporter.warn(text)
            source: list[str] = []  # where the outputs are in a tuple the model returns, for the messages below
            widths, n_outputs, shape = forward_one_shapes(
                model, ctx.layers, probe.x[:1], device=ctx.device, dtype=ctx.options.dtype, ran_before=ctx.ran_before,
                source=source,
            )
        except FdlError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own error on this input, explained
            signals.through(exc)  # not the model's error, nor the probe's: a Ctrl-C met in C code its pass ran through
            from fdl_cli.resources import out_of_memory

            if out_of_memory(exc):
                raise  # not the probe's fault: said as such by `_memory_explained`
            from fdl_cli.extract import mixed_devices_error

            mixed = mixed_devices_error(exc, ctx.device)
            if mixed is not None:  # the model's fault, not the probe's (on a GPU: a tensor made on the CPU)
                raise mixed from None
            from fdl_cli.checkpoints import CODE_FAULTS, import_fix, raised_at, shadowing_fix
            from fdl_cli.probes import embedding_tables, fit_fix

            said = str(exc).splitlines()[0] if str(exc) else ""
            raised = f"{type(exc).__name__}{': ' * bool(said)}{said}{raised_at(exc)}"  # the model code's line
            shadowing = shadowing_fix(exc)
            # the model's fault too: a lazy import in its forward got a module not its own, or none (a library not
            # installed, a SyntaxError in the module), a name it never defined, which no probe of another shape mends
            if shadowing is not None or isinstance(exc, CODE_FAULTS):
                raise ModelError(f"the model's forward pass failed on the first sample of probe {probe.name!r}",
                                 got=raised, fix=shadowing or import_fix(exc, "the model's code")) from None
            raise ProbeError(
                f"probe {probe.name!r} ({probe.path}) does not fit the model",
                got=f"{probe.describe_sample()}: {raised}",
                fix=fit_fix(probe, said, embedding_tables(model)),
            ) from None
        _check_output_shape(ctx, probe, shape)
        outputs_in = "".join(source)  # `extract.tuple_outputs`; "" where the outputs are no tuple's first element
        if n_outputs == 1 and _binary_labels(ctx.probes):
            n_outputs = _binary_logit(ctx, probe, source=outputs_in)
        try:
            validate_probe(probe, n_outputs=n_outputs)
        except ProbeError as exc:
            if not outputs_in:
                raise
            # the outputs counted are a tuple's first element: the model's other heads (an actor-critic's
            # (value, policy)) are what the targets may have been meant for
            raise ProbeError(
                exc.what, got=f"{exc.got}; the model's outputs are {outputs_in}",
                fix=tuple_outputs_fix(exc.fix or ""),
            ) from None
        if n_outputs == 1 and outputs_in and probe is ctx.probes[0]:
            # an actor-critic's (value, policy) fits a probe without labels: its run would measure the value head
            ctx.reporter.note(f"the model's one output is {outputs_in}: fdl reads a tuple's first element as "
                              "the outputs; return the logits first if they are another element")
        raw_pixels = raw_pixels_warning(probe)
        if raw_pixels is not None:
            ctx.reporter.warn(raw_pixels)
        passes.append((probe.name, widths, int(probe.x.shape[0]), min(ctx.options.anchor_size, int(probe.x.shape[0]))))
        one_hot = float_one_hot(probe)
        if one_hot:
            ctx.reporter.warn(
                f"probe {probe.name!r}: y is a float one-hot matrix, analysed as regression targets (r2, but no "
                "accuracy or nc1); to analyse classes, save integer labels: y = y.argmax(1)"
            )
        elif soft_labels(probe):
            ctx.reporter.warn(
                f"probe {probe.name!r}: each row of y lies in [0, 1] and sums to 1: soft labels (class probabilities)? "
                "They are analysed as regression targets (r2, but no accuracy or nc1): loss and r2 compare the raw "
                "outputs with them as they are, which a classifier's are logits, not probabilities; if they are class "
                "probabilities, to analyse classes save integer labels: y = y.argmax(1); proportions the model "
                "regresses (compositional data) are analysed rightly as they are"
            )
        dominant = dominant_class_note(probe, n_outputs=n_outputs)
        if dominant is not None:
            ctx.store_notes.append(dominant)
        if probe.task == "classes" and probe.y is not None:  # CKA and the overlaps see the first m rows alone
            skew = anchor_class_skew(probe.y, min(ctx.options.anchor_size, int(probe.x.shape[0])))
            if skew is not None:  # recorded in the store too (`_probe_infos`): report and classify repeat it
                ctx.anchor_skew[probe.name] = skew
                ctx.reporter.warn(anchor_skew_warning(probe.name, skew, path=probe.path))
        # recorded in the store too (`_probe_infos`): report, compare and classify repeat the caveat on loss and r2
        ctx.zero_one[probe.name] = not one_hot and zero_one_targets(probe)
        no_energy = targets_without_energy(probe, center=ctx.options.center)
        if no_energy is not None:  # in place of the 0/1 warning for all-0 targets: no quality to measure
            ctx.reporter.warn(_no_energy_warning(probe.name, no_energy))
        elif ctx.zero_one[probe.name]:
            ctx.reporter.warn(_zero_one_warning(probe))
        ctx.n_outputs = n_outputs
        n = int(probe.x.shape[0])
        anchors = min(ctx.options.anchor_size, n)
        k = overlap_k(ctx.options, n_outputs)
        # the top-k eigenfunctions span at most p dimensions: a layer narrower than the anchors keeps its overlaps
        spanned = min(k, max(widths.values(), default=k))
        if anchors <= spanned:
            ctx.reporter.warn(
                f"probe {probe.name!r}: the anchor subset has {counted(anchors, 'point')} for the overlaps' k = {k} ("
                + ("--overlap-k" if ctx.options.overlap_k is not None else "the outputs") + f"), so the top-{k} "
                "eigenfunctions on it can span all of it, where the eigenspace overlaps would be 1 whatever the "
                "features do: they are not measured there (null), and movement rests on CKA alone; "
                + ("raise --anchor-size" if anchors < n else f"use a probe of more than {k} samples")
            )
        if anchors < CKA_MIN_ANCHORS:
            ctx.reporter.warn(
                f"probe {probe.name!r}: the anchor subset has {counted(anchors, 'point')}: CKA on fewer than "
                f"{CKA_MIN_ANCHORS} is 1 whatever the features do, so cka_init and cka_prev are not measured "
                "(null) and the regime cannot tell whether the features moved; "
                + ("raise --anchor-size" if anchors < n else f"use a probe of at least {CKA_MIN_ANCHORS} samples")
            )
        points = _anchor_points(ctx, probe)
        if points < anchors and (points < CKA_MIN_ANCHORS or points <= spanned):
            ctx.reporter.warn(
                f"probe {probe.name!r}: its first {counted(anchors, 'input')} (the anchor subset) hold"
                + ("s" if anchors == 1 else "") + f" only {points} distinct {'one' if points == 1 else 'ones'}: "
                + "; ".join(
                    ([f"CKA on fewer than {CKA_MIN_ANCHORS} distinct points is 1 whatever the features do, so "
                      "cka_init and cka_prev are not measured (null)"] if points < CKA_MIN_ANCHORS else [])
                    + ([f"the top-{k} eigenfunctions span all of them, so the eigenspace overlaps are not measured "
                        "(null)"] if points <= spanned else [])
                ) + "; put distinct inputs first in the probe"
            )
        if n < max(10, 2 * n_outputs):
            ctx.reporter.warn(
                f"probe {probe.name!r} has only {counted(n, 'sample')} for {counted(n_outputs, 'output')}: its spectrum, "
                "D_LR and CKA are dominated by sampling noise; use a larger probe"
            )
    if not ctx.layers:
        with _layer_source_named(ctx):
            ctx.layers = resolve_layers(model, ctx.layer_names, inspect=_inspect_command(ctx, reference))
    return passes


def _inspect_command(ctx: _Context, reference: CheckpointRef, probe: Probe | None = None) -> str:
    """`fdl inspect` of the checkpoint the layers were resolved on, with what the command line gave to load and run
    it (--model, --model-kwargs, --weights, --trust-pickle, the probe in hand), for a fix to copy as it is: its
    layer errors said `fdl inspect CHECKPOINT`. fdl.toml's options are left to inspect, which reads the file too."""
    given = ctx.given_options or ctx.options
    words = ["fdl", "inspect", str(reference.path)]
    if given.model_spec:
        words += ["--model", given.model_spec]
    if given.model_kwargs or "model_kwargs" in given.given:
        words += ["--model-kwargs", json.dumps(given.model_kwargs)]
    if given.weights:
        words += ["--weights", given.weights]
    if given.probe_specs and probe is not None:
        words += ["--probe", str(probe.path)]
    if given.trust_pickle:
        words.append("--trust-pickle")
    return shlex.join(words)


@contextlib.contextmanager
def _layer_source_named(ctx: _Context) -> Iterator[None]:
    """An unknown layer that fdl.toml named: its error said 'pass one to --layer' of a --layer nobody gave."""
    try:
        yield
    except ModelError as exc:
        if ctx.layer_source is None or not ctx.layer_names:
            raise
        raise ModelError(
            exc.what, got=exc.got,
            fix=f"{exc.fix or 'check the layer'}; the layer is {ctx.layer_source}'s (layer = "
                f"{list(ctx.layer_names)!r}): fix it there, or give --layer, which overrides it",
        ) from None


def _no_energy_warning(name: str, why: str) -> str:
    """What the quality measures say of targets without energy (`probes.targets_without_energy`): nothing."""
    centered = why != "are all 0"
    return (
        f"probe {name!r}: its targets {why}" + (", which --center removes" if centered else "") + ": they carry no "
        "energy, so the quality Q*, Π* is 0/0, not a measurement: pi_star_C and k90/k95/k99_quality are null, "
        "eff_dim_quality is 0 and the stored quality is 0 (docs/measures.md); the spectrum, the utility, D_LR, CKA, "
        "the overlaps and the regime do not read the targets; "
        + ("analyse without --center, or with targets that vary" if centered else "give the probe its real targets")
    )


def _zero_one_warning(probe: Any) -> str:
    """What loss and r2 measure on float 0/1 targets (`probes.zero_one_targets`): the raw outputs, as they are,
    against 0/1; a sigmoid model's logits (multi-label, or a binary classifier's one) do not fit those."""
    if probe.y.shape[1] == 1:
        return (
            f"probe {probe.name!r}: y holds float 0/1 targets, analysed as regression targets of the raw output: "
            "loss and r2 compare it as it is with 0/1; for a binary classifier trained with a sigmoid "
            "(BCEWithLogitsLoss) that is its logit, so they do not measure its fit: save the targets as integer "
            f"labels ({INTEGER_LABELS_RECIPE}) to analyse it as a binary classifier (accuracy, cross_entropy = BCE)"
        )
    return (
        f"probe {probe.name!r}: y holds float 0/1 targets with several 1s, or none, in a row (multi-label "
        "targets?), analysed as regression targets of the raw outputs: the quality (Q*, Π*) is measured against them "
        "as against any targets, but loss and r2 compare the outputs as they are with 0/1; for a model "
        "trained with a sigmoid per output (BCEWithLogitsLoss) those are its logits, so loss and r2 do not measure "
        "its fit (fdl has no multi-label accuracy or BCE)"
    )


def _binary_labels(probes: Sequence[Any]) -> bool:
    """Whether a probe holds class labels that a model of one output can only mean as a binary
    classifier's: 0 and 1 (or one of them); of an integer one-hot matrix, of 2 columns (one of more is refused)."""
    return any(probe.task == "classes" and probe.n_classes is not None and probe.n_classes <= 2
               and probe.one_hot_columns in (None, 2) for probe in probes)


def _binary_logit(ctx: _Context, probe: Any, *, source: str = "") -> int:
    """A model of one output z with probes of labels 0/1: a binary classifier (BCEWithLogitsLoss), whose
    class probabilities are (1 − σ(z), σ(z)) = softmax((0, z)). It is analysed as the two-class
    classifier of logits (0, z): accuracy thresholds z at 0, the cross-entropy is BCE-with-logits, the
    one-hot targets have C = 2 columns (the constant and the class contrast, as for any C), and the
    output span of D_LR is z's. Returns C = 2. A probe of regression targets cannot share that run.
    source: `extract.tuple_outputs`, said in the note where z is a tuple's first element (a value head?)."""
    if probe.task == "regression":
        labelled = next(other.name for other in ctx.probes if other.task == "classes")
        raise ProbeError(
            f"probe {probe.name!r} holds regression targets, but the model's one output is analysed as a binary "
            f"classifier's logit for the 0/1 labels of probe {labelled!r} (as the two-class logits (0, z))",
            fix=f"analyse probe {probe.name!r} into a store of its own (--out), or save its targets as 0/1 labels",
        )
    if probe.task == "classes" and (probe.n_classes is not None and probe.n_classes > 2
                                    or probe.one_hot_columns not in (None, 2)):
        # refused by `validate_probe` with the model's own width (it said "the model has 2 outputs"): labels beyond
        # 0/1, or a one-hot matrix of 3 columns or more whose rows name classes 0 and 1 alone
        return 1
    if not ctx.binary_logit:
        ctx.binary_logit = True
        ctx.reporter.note(
            "the model has one output and the probe's labels are 0/1: analysed as a binary classifier whose logit z "
            "gives the class probabilities softmax((0, z)) = (1 − σ(z), σ(z)): accuracy thresholds z at 0, "
            "cross_entropy is BCE-with-logits, and C = 2 classes (MF: k95 of the utility ≤ C + 1 = 3)"
            + (f"; that output is {source}" if source else "")
        )
    return 2


def _check_memory(
    ctx: _Context,
    passes: Sequence[tuple[str, dict[str, int], int, int]],
    *,
    refs: Sequence[CheckpointRef],
    out: Path,
    reference: CheckpointRef,
    failure: ResourceError | None = None,
) -> None:
    """Refuse, before any checkpoint is analysed, a run whose float64 statistics, their decomposition and
    the anchors alone (`resources.run_needs`: what is alive together at a checkpoint's peak, a lower bound)
    do not fit in the memory available; warn when they take most of it. A layer of 60 000 features failed at
    its first batch with the allocator's traceback.

    Counted for what this process analyses: nothing when every checkpoint is stored already (a run with
    nothing to do needs nothing), one copy of the anchors when the reference is all it analyses, three when
    a checkpoint it analyses is compared with a previous one other than the reference (or --watch), its
    slice of the probe and no anchors on a rank that only contributes one (--shard-probe). Under torchrun
    every rank stops when one is refused (alone, it left the others in a collective), or ran out of
    memory before (`failure`: reading the reference, its first sample)."""
    from fdl_cli import distributed

    options, world = ctx.options, ctx.world
    spread = world is not None and world.distributed
    sharded = spread and options.shard_probe
    # a stored checkpoint lacking one of this run's series (a probe or layer added to the store) is analysed too
    series = {(probe, label) for probe, widths, _, _ in passes for label in widths}
    stored = _stored_steps(out, series) if options.resume else set()
    todo = [ref.step for ref in refs if ref.step not in stored or ref.step in ctx.redo]
    mine = distributed.block(todo, world) if spread and not sharded else todo
    error: ResourceError | None = failure
    # a checkpoint whose previous is not the reference holds that one's anchors too (`_previous_series`)
    order = [ref.step for ref in refs]  # `_previous_step` walks them in this order
    before = dict(zip(order[1:], order, strict=False))
    third = options.watch or any(before.get(step, reference.step) != reference.step for step in mine)
    if failure is None and (mine or options.watch):
        error = _memory_shortfall(ctx, passes, sharded=sharded, copies=(
            0 if sharded and not world.writes
            else 1 if not options.watch and mine == [reference.step] and not stored & {ref.step for ref in refs}
            else 3 if third
            else 2
        ))
    if spread:
        reports = distributed.all_gather(None if error is None else (error.what, error.got, error.fix), world)
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if failed:
            # said by rank 0 alone: the rank it is about is named, unless every rank met it
            rank, (what, got, fix) = failed[0]
            where = "" if len(failed) == world.size else f" (on rank {rank})"
            raise distributed.alike(ResourceError(what + where, got=got, fix=fix))
    if error is not None:
        raise error


def _stored_steps(out: Path, series: Collection[tuple[str, str]] = ()) -> set[int]:
    """The steps `out` holds already, of every series (none when it cannot be read: the writer says why,
    later); with `series`, those holding each of them (a store that this run adds probes or layers to
    lacks them). Not `reader.steps()`, which asks for one series and raised, read as "none", on a store of
    several probes or layers."""
    from fdl_cli.store import StoreReader

    with contextlib.suppress(FdlError, OSError):
        if out.is_file():
            with StoreReader(out) as reader:
                return set(reader.checkpoint_steps()) - set(reader.lacking(series))
    return set()


def _memory_shortfall(
    ctx: _Context, passes: Sequence[tuple[str, dict[str, int], int, int]], *, sharded: bool, copies: int
) -> ResourceError | None:
    """`_check_memory`'s error for this process (None when its needs fit); a warning when they take most
    of the memory available."""
    import torch

    from fdl_cli import resources
    from fdl_cli.distributed import block_bounds

    gpu = ctx.device is not None and ctx.device.type == "cuda"
    tasks = {probe.name: probe.task or "none" for probe in ctx.probes}
    series = [resources.Pass(probe, widths, n, m, (lambda span: span[1] - span[0])(block_bounds(n, ctx.world))
                             if sharded else None, ctx.n_outputs, tasks.get(probe, "none"))
              for probe, widths, n, m in passes]
    needs = resources.run_needs(series, gpu=gpu, anchor_copies=copies, uncentered=not ctx.options.center)
    host = resources.available_host_bytes()
    device = None
    if gpu:
        with contextlib.suppress(Exception):  # a driver that cannot say: the run finds out
            # what the driver has free, and what torch's allocator holds in its cache unused (the model's
            # check pass left some there): fdl's tensors take both
            cached = int(torch.cuda.memory_reserved(ctx.device)) - int(torch.cuda.memory_allocated(ctx.device))
            device = int(torch.cuda.mem_get_info(ctx.device)[0]) + max(cached, 0)
        if device is None:  # the statistics on the GPU are not in host memory: only the host's needs checked
            needs = [need for need in needs if not need.on_device]
    short = resources.shortfall(needs, host, device)
    size = resources.size_text
    widest = max(((label, p) for _, widths, _, _ in passes for label, p in widths.items()), key=lambda item: item[1],
                 default=("", 0))
    fix = (f"hook a narrower layer with --layer (the widest is {widest[0]!r}, p = {widest[1]:,}; `fdl inspect CKPT "
           "--model ...` lists each module's output shape): after a pooling layer, say")
    if any(p > n for _, widths, n, _ in passes for p in widths.values()):
        fix += "; a layer wider than the probe keeps its n×p features: a smaller probe needs less"
    if copies and any(m > 256 for *_, m in passes):
        fix += "; --anchor-size lowers the anchors' share"
    outputs = sum(need.bytes for need in needs if "the outputs' C×C" in need.what)
    if 2 * outputs > sum(need.bytes for need in needs):  # the outputs' sums are most of it: no layer helps
        fix = (f"the model has {ctx.n_outputs:,} outputs, and their sums grow as C²: wrap the model so that its "
               "forward returns fewer outputs (the logits of the classes the probe holds, say: `out[:, classes]`), "
               "through --model FILE.py:factory; " + fix)
    listed = "; ".join(f"{need.what}: {size(need.bytes)}" for need in needs if need.bytes >= 1e6)
    if short is not None:
        on_device, needed, available = short
        where = f"the GPU ({ctx.device}) has {size(available or 0)} free" if on_device else \
            f"this machine has {size(available or 0)} of memory available"
        return ResourceError(
            f"this analysis needs at least {size(needed)} of {'GPU ' if on_device else ''}memory for its float64 "
            f"statistics, their decomposition and the anchors alone, and {where}",
            got=listed or None,
            fix=fix + ("; or --device cpu" if on_device else ""),
        )
    if host is not None:
        total = sum(need.bytes for need in needs if device is None or not need.on_device)
        if total > resources.WARN_SHARE * host:
            ctx.reporter.warn(
                f"this analysis needs at least {size(total)} of memory for its float64 statistics, their "
                f"decomposition and the anchors alone, {100 * total / host:.0f} % of the {size(host)} available: the "
                f"model and other programs need some too{f' ({listed})' if listed else ''}; if it runs out, {fix}"
            )
    return None


def _check_output_shape(ctx: _Context, probe: Any, shape: tuple[int, ...]) -> None:
    """Outputs of more than one axis per sample ((T, C): a head at every position of a sequence; (C, H, W):
    one at every pixel) are flattened into one vector of prod(shape) outputs. Class labels cannot index
    that vector (label 3 would be position 0's class 3 only), so they are refused; regression targets of
    the flattened width, or none, are analysed with a warning that says what the outputs became."""
    axes = [size for size in shape if size != 1]
    if len(axes) <= 1:
        return
    n_outputs = math.prod(shape)
    wrap = ("wrap the model so that forward returns one row of logits per sample, e.g. the last position's "
            "`out[:, -1]` (or the pooled `out.mean(1)`), through --model FILE.py:factory")
    if probe.task == "classes":
        raise ProbeError(
            f"the model's outputs have shape {shape} per sample (a head at every position?), which fdl would "
            f"flatten into {n_outputs} outputs, but the probe {probe.path} ({probe.name}) holds one class label "
            "per sample: accuracy, the one-hot targets and every target measure would compare a label with "
            "the flattened outputs",
            got=f"outputs {shape} per sample, labels of shape {tuple(probe.y.shape)}",
            fix=wrap,
        )
    ctx.reporter.warn(
        f"probe {probe.name!r}: the model's outputs have shape {shape} per sample, analysed as one vector of "
        f"{n_outputs} outputs (C = {n_outputs}: the output span of D_LR, the overlaps' k and MF's C + 1 all "
        f"count them); to measure one output vector per sample, {wrap}"
    )


def _probe_infos(ctx: _Context) -> list[Any]:
    from fdl_cli.probes import label_chance
    from fdl_cli.store import ProbeInfo

    infos = []
    for probe in ctx.probes:
        m = min(ctx.options.anchor_size, int(probe.x.shape[0]))
        one_d = probe.x.ndim == 1 or (probe.x.ndim == 2 and probe.x.shape[1] == 1)
        anchor_x = np.asarray(probe.x[:m], dtype=np.float64).reshape(m) if one_d and probe.x.dtype.kind == "f" else None
        anchor_y = None
        if anchor_x is not None and probe.y is not None:
            anchor_y = np.asarray(probe.y[:m], dtype=np.float64)
        infos.append(
            ProbeInfo(
                name=probe.name,
                sha256=probe.sha256,
                n=int(probe.x.shape[0]),
                task=probe.task or "none",
                n_outputs=ctx.n_outputs,
                anchor_x=anchor_x,
                anchor_y=anchor_y,
                zero_one_targets=ctx.zero_one.get(probe.name),  # None where not validated: not recorded
                x_sha256=probe.x_sha256 or None,
                **dict(zip(("chance_accuracy", "label_entropy"), label_chance(probe) or (None, None), strict=True)),
                anchor_skew=asdict(skew) if (skew := ctx.anchor_skew.get(probe.name)) else None,
            )
        )
    return infos


def _analyze_refs(
    ctx: _Context,
    refs: list[CheckpointRef],
    out: Path,
    summary: AnalyzeSummary,
    on_record: Callable[[dict[str, Any]], None] | None,
    model_spec: str | None,
    *,
    manifest_dir: Path | None,
    stdin_text: str | None,
) -> None:
    from fdl_cli.distributed import agree_on_refusal
    from fdl_cli.sharding import _analyze_distributed, _take_in_rank_parts  # sharding imports this module
    from fdl_cli.store import StoreWriter

    options = ctx.options
    passes: list[tuple[str, dict[str, int], int, int]] = []
    spread = ctx.world is not None and ctx.world.distributed
    refusal: FdlError | None = None
    model: Any = None
    try:
        # the reference step is chosen alike on every rank: its refusal too is agreed below, said once
        # (every rank said it, each naming itself)
        reference = _reference_ref(ctx, refs)
        ctx.reference_step = reference.step
        _check_redo(ctx, refs, out)
        _check_drop(ctx, refs, out)
        if options.abandon_addition and not out.is_file():  # a mistyped --out: not a whole analysis into a new store
            raise StoreError(f"--abandon-addition: there is no store at {out} to give an addition up in",
                             fix="run without --abandon-addition, or pass the store's path as --out")
        with _memory_explained(reference), signals.analysing(f"step {reference.step} ({reference.path}, the reference)"):
            try:
                loaded, reference_sha = _load(reference, options)
            except (CheckpointError, NumericalError) as exc:  # named as the reference, as a --reference one is
                raise _fatal(exc, reference, is_reference=True) from None
            if loaded.file_signature:  # not hashed again (`_check_stored_files`, `_reference_series`)
                ctx.hashed[str(reference.path)] = (loaded.file_signature, reference_sha)
            ctx.pickled_code = _pickled_code(loaded)
            model = _prepare(ctx, loaded)
            passes = _validate(ctx, model, reference, out)
            # the modules its factory and forward pass imported: recorded, compared and watched as model.py's own
            ctx.model_imports = _model_imports(ctx.factory, model_spec, manifest_dir, ctx.model_imports)
        failure = None
    except ResourceError as exc:  # one rank short of memory: every rank stops with it (`_check_memory`)
        if not spread:
            raise
        failure = exc
    except FdlError as exc:
        if not spread:
            raise
        failure, refusal = None, exc
    if spread:
        # Every rank read the reference and built the model on its own: a refusal there (the same on
        # every rank, or one rank's: its copy of the file damaged) is said once, and every rank stops
        # (one that stopped alone left the others waiting in `_check_memory`'s collective).
        agree_on_refusal(refusal, ctx.world)
    _check_memory(ctx, passes, refs=refs, out=out, reference=reference, failure=failure)
    provenance = _provenance(options, ctx, model_spec, reference_sha)
    addition = None
    try:
        _check_reference_of_store(ctx, out, reference, reference_sha, refs)
        addition = _addition(ctx, refs, out, provenance, [path for path, _ in summary.failed])
        refusal = None
    except FdlError as exc:
        if not spread:
            raise
        refusal = exc
    if spread:  # every rank read the store: its refusal (another reference, other model code, adding) said once
        agree_on_refusal(refusal, ctx.world)
    if addition is not None:  # said once the writer took the store: it may refuse it yet (locked, read-only)
        ctx.store_notes.append(addition.note(out))
    shape = record_shape(ctx)
    if ctx.world is not None and ctx.world.distributed:
        _analyze_distributed(ctx, refs, out, summary, on_record, provenance, reference, (loaded, reference_sha))
        return
    with StoreWriter(
        out,
        provenance=provenance,
        probes=_probe_infos(ctx),
        overwrite=not options.resume,
        min_interval=options.min_commit_interval,
        invocation=invocation(ctx),
        abandon_addition=options.abandon_addition,
        claimed=ctx.claimed,
        model_imports=_recorded_imports(ctx),
        model_change=ctx.model_change,
    ) as writer:
        _store_opened(ctx, writer)
        announced: set[int] = set()

        def count(entry: CheckpointEntry, refreshed: bool) -> None:
            # A checkpoint stored before this run, or announced earlier in it (--watch: one that arrived
            # later but lies before it in step order gave it a new previous checkpoint), is updated, not
            # analysed again; its record is printed again, with the new values.
            if entry.file_signature:
                ctx.read_signatures[(entry.path, entry.step)] = entry.file_signature
            if entry.series_only:  # a stored checkpoint given the series added to the store: partly analysed
                summary.added.append(entry.step)
                announced.add(entry.step)
            elif entry.step in summary.already or entry.step in summary.lacking or entry.step in announced \
                    or refreshed:
                summary.refreshed.append(entry.step)
            else:
                summary.analysed.append(entry.step)
                announced.add(entry.step)
                if entry.step in ctx.redo:
                    summary.redone.append(entry.step)
                    if entry.sha256 == ctx.redo_sha256.get(entry.step):  # hashed to analyse it: no extra read
                        ctx.reporter.note(
                            f"--redo {entry.step}: the file of step {entry.step} is the one stored (same sha256 "
                            f"{entry.sha256[:12]}), analysed again as asked: its numbers equal the stored ones "
                            "but where fdl, torch, the device, --batch-size or the thread count differ from "
                            "those that stored it (or the stored arrays were damaged)")

        announce = Announcer(count, on_record, shape)  # what is left queued is announced by the `finally` below

        def stalled() -> str:
            """The run's end where the main thread is stuck in the model's code (`signals.model_code`), run by the
            thread that then ends the process: what was analysed is committed, and the lock released; then the
            records printed. Printed first, a print that waited (stdout a full pipe nobody reads) held the store and
            this thread for ever (no signal ends fdl then: the main thread is stuck, and this thread reads them), and
            one that failed (its reader gone) left the store unclosed."""
            writer.hold_back_chance()  # a Ctrl-C: an older store's missing chance is not committed alone
            announce.count_only(writer.flush())
            writer.close()
            summary.interrupted = True
            bound = signals.print_bound()
            try:
                printed = signals.within(bound, lambda: announce(()))
                why = f"stdout took none for {bound:g} s"
            except Exception as exc:  # noqa: BLE001 - the store is closed; the run ends all the same
                printed, why = False, str(exc)
            if printed:
                return summary.message()
            return (f"the --json records of the checkpoints stored now were not all printed ({why}): they are in the "
                    f"store\n{summary.message()}")

        # One `try` from here to the end: whatever the run made durable (an addition given up, a drop, the parts taken
        # in, the checkpoints analysed) is queued to print with its commit, and a Ctrl-C anywhere, between two
        # statements too, finds it printed by the `finally` (two blocks lost what one committed and the other was to
        # print, where the Ctrl-C landed between them).
        try:
            if options.abandon_addition:
                _abandon(ctx, writer, out, summary, announce)
            if options.watch:
                # --resume: a checkpoint stored before this run is watched for a rewrite as one analysed in it
                # (`_report_rewritten`); its signature taken before the check below, which verified it unchanged
                stored_before = writer.completed()
                ctx.read_signatures.update(
                    ((str(ref.path), ref.step), _signature_of(ref.path)) for ref in refs if ref.step in stored_before
                )
            _check_stored_files(ctx, out, refs, writer.note_file_signatures)
            if ctx.drop:
                ctx.refs_by_step = {ref.step: ref for ref in refs}
                _drop_steps(ctx, writer, out)
                # A Ctrl-C in the commit is raised at its end: once the drop, durable, is said and its records queued
                with signals.deferred():
                    compared_again = writer.flush()  # durable: the steps are gone
                    summary.dropped.extend(sorted(ctx.drop))
                    announce.queue_line({"dropped": list(summary.dropped)})  # before the records of those compared again
                    announce.queue(compared_again, refreshed=True)
                announce(())
            # the checkpoints of the parts taken in, queued as each part's commit makes them durable
            _take_in_rank_parts(ctx, writer, out, provenance, refs, (reference.step, reference_sha), into=announce)
            announce(())  # a Ctrl-C in a print: the rest printed by the `finally` below
            with signals.ending_when_stalled(stalled):
                _run_refs(ctx, refs, writer, summary, announce, reference, (loaded, reference_sha), out)
                while options.watch:
                    # Throttled commits would otherwise leave the last checkpoints unannounced (and not
                    # durable) until a new checkpoint appears.
                    announce.take(writer.flush)
                    signals.sleep(options.poll_seconds)
                    refs = _rediscover(ctx, refs, stdin_text, writer.completed(), summary)
                    _note_reference_gone(ctx, reference, refs)
                    _check_manifest_changes(ctx, manifest_dir)
                    _check_model_code_changes(ctx)
                    _run_refs(ctx, refs, writer, summary, announce, reference, None, out)
        except BaseException:
            writer.hold_back_chance()  # before the flush below, which the `with` block's exit would come too late for
            raise
        finally:
            announce.take(writer.flush)


def _note_reference_gone(ctx: _Context, reference: CheckpointRef, refs: Sequence[CheckpointRef]) -> None:
    """--watch: say once that the reference's file is gone (a training job's rotation deletes the oldest first).
    The watch holds its weights and goes on, but a resume is refused without the file (`_reference_not_found`),
    which nothing said before the user stopped the watch. Not where the poll found another file at its step (a
    copy given in another folder, which discovery had left out as a copy, or one still being copied): the same
    command run again reads that one, its sha256 checked."""
    from fdl_cli.checkpoints import weights_gone

    found = [(str(ref.path), ref.step) for ref in refs] + list(ctx.unsettled.items())  # one being copied too
    copy = any(step == reference.step and path != str(reference.path) for path, step in found)
    if REFERENCE_GONE not in ctx.noted_once and not copy and weights_gone(reference.path):
        _note_once(ctx, REFERENCE_GONE, f"{reference.path} (step {reference.step}), the reference, is gone (the training "
                   "job's rotation?): this watch still compares with it, but the same command run again needs its file "
                   "(param_dist_init compares with its weights): restore it, or give a copy of it among the checkpoints")


def _check_redo(ctx: _Context, refs: Sequence[CheckpointRef], out: Path) -> None:
    """--redo: every step named must be stored in `out` and be one of this run's checkpoints, and not
    the reference (every stored checkpoint's cka_init, overlap_init and param_dist_init compare with
    it); a stored checkpoint compared with a redone one (its prev_step) must have its file, as its
    cka_prev / overlap_prev are recomputed. Checked before anything is read or written: a refusal
    leaves the store as it was. Sets `ctx.redo` and `ctx.redo_successors`."""
    if ctx.options.redo is None:
        return
    from fdl_cli.store import StoreReader

    wanted = sorted(set(ctx.options.redo))
    listed = ",".join(map(str, wanted))

    def steps_text(steps: Collection[int]) -> str:
        shown = sorted(steps)
        return ", ".join(map(str, shown[:12])) + (f" ... ({len(shown)} in all)" if len(shown) > 12 else "")

    if not out.is_file():
        raise StoreError(
            f"--redo {listed}: there is no store at {out} to analyse checkpoints again in",
            fix="run without --redo to analyse the checkpoints, or pass the store's path as --out",
        )
    with StoreReader(out) as reader:
        stored = reader.file_identities()
        places = _stored_places(out, reader)
        damaged = {int(name.removeprefix("step_")) for name in reader._damaged if name.removeprefix("step_").isdigit()}
        series = reader.whole_series()
        records = reader.records(probe=series[0][0], layer=series[0][1]) if series else []
    missing = [step for step in wanted if step not in stored]
    if missing:
        skipped = [step for step in missing if step in damaged]
        raise StoreError(
            f"--redo {listed}: {out} holds no checkpoint at step {', '.join(map(str, missing))}"
            + (f" (step {', '.join(map(str, skipped))} is damaged and skipped: the same command without --redo "
               "analyses it again)" if skipped else ""),
            got=f"stored steps: {steps_text(stored) or 'none'}",
            fix="--redo analyses again checkpoints the store holds (`fdl report` lists them); one it lacks is "
            "analysed by the same command without --redo",
        )
    steps_now = {ref.step for ref in refs}
    absent = [step for step in wanted if step not in steps_now]
    if absent:
        step = absent[0]
        # its file may be there, holding another step now (a copy of another step's checkpoint: --redo
        # would find nothing to analyse as this step, and "restore that file" named a file that is there)
        now = next((ref for ref in [*refs, *(dropped for dropped, _ in ctx.copies)]
                    if places[step].names(ref.path)), None)
        if now is not None:
            kept = next((kept for dropped, kept in ctx.copies if dropped is now), None)
            raise StoreError(
                f"--redo {listed}: no checkpoint of this run has step {', '.join(map(str, absent))}: {now.path}, "
                f"which {out} analysed as step {step}, now holds step {now.step} (from its {now.step_source})"
                + (f", with the same weights as {kept.path}, and is left out as a copy of it" if kept else ""),
                got=f"this run's checkpoints: steps {steps_text(steps_now)}",
                fix=f"--redo analyses a checkpoint again at the step its file holds: restore the checkpoint saved at "
                f"step {step} as {now.path} to analyse it again, or remove {'the copy' if kept else 'that file'} "
                f"(the store keeps what it analysed for step {step}); or {_OVERWRITE_FIX}",
            )
        raise StoreError(
            f"--redo {listed}: no checkpoint of this run has step {', '.join(map(str, absent))}, which "
            "--redo would analyse again from its file",
            got=f"{out} analysed step {step} from {stored[step][0]}; this run's checkpoints: steps {steps_text(steps_now)}",
            fix="restore that file, or give the sources (and --glob / --step-regex) that find it",
        )
    # The file a stored step was analysed from, there still where its path was typed, is not this run's file of
    # that step, and holds other weights: another run's saved under the same names (`a/run/step_10.pt`, and
    # --redo from b/), whose numbers --redo would store among the other run's. A copy of it (same sha256) goes on.
    by_step = {ref.step: ref for ref in refs}
    for step in wanted:
        typed, ref = places[step].where_typed(), by_step[step]
        if typed is None or places[step].names(ref.path):
            continue
        try:
            if _sha256_once(ctx, ref.path) == stored[step][1]:
                continue
        except OSError:
            continue  # said when it is read
        raise StoreError(
            f"--redo {listed}: {out} analysed step {step} from {places[step].shown()}, and this run's step {step} is "
            f"{ref.path}, another file",
            got=f"{shown_path(typed)} is there still; this run's step {step} holds other weights than it",
            fix=f"--redo analyses a stored checkpoint again from its own file: give {shown_path(typed)} (from the "
            "folder it was analysed in, or by that path); or give this run its own --out (the default is "
            "./<folder>.fdl.h5)",
        )
    if ctx.reference_step in wanted:
        raise StoreError(
            f"--redo {listed}: step {ctx.reference_step} is the reference checkpoint; every stored checkpoint's "
            "cka_init, overlap_init and param_dist_init compare with it, so none would stay",
            fix="re-analyse everything with --overwrite (or another --out)",
        )
    successors: dict[int, list[int]] = {}
    for record in records:
        previous = record.get("prev_step")
        if previous in wanted and record["step"] not in wanted:
            successors.setdefault(int(previous), []).append(int(record["step"]))
    for step, later in sorted(successors.items()):
        gone = [successor for successor in later if successor not in steps_now]
        if gone:
            got, fix = _file_not_read(ctx, out, gone[0], stored.get(gone[0], ("",))[0])
            raise StoreError(
                f"--redo {listed}: the stored step {gone[0]} is compared with step {step} (cka_prev, overlap_prev) "
                "and its file is not among this run's checkpoints, so that comparison cannot be recomputed",
                got=got,
                fix=fix,
            )
    ctx.redo = frozenset(wanted)
    ctx.redo_sha256 = {step: stored[step][1] for step in wanted}
    ctx.redo_successors = successors


#: why a stored step's file is not among a run's checkpoints, whichever way they are given (a folder, FILES, `-`)
_NOT_GIVEN = "(deleted, moved, or left out of the files or steps given)"


def _check_drop(ctx: _Context, refs: Sequence[CheckpointRef], out: Path) -> None:
    """--drop: each step named must be stored, a second copy of a file (same path, same sha256) that the
    store holds at a step it keeps (so nothing it analysed is lost: a store damaged by an fdl before session
    18, which stored a file again at the step other step options read), not one of this run's steps (it would
    be analysed again there) nor the reference. A kept checkpoint compared with a dropped one (prev_step) is
    compared again with the nearest kept one before it, whose file and its own must be among this run's.
    Checked before anything is read or written (the files, by `_drop_steps`, after `_check_stored_files`): a
    refusal leaves the store as it was. Sets `ctx.drop` and `ctx.drop_successors`."""
    if ctx.options.drop is None:
        return
    from fdl_cli.store import StoreReader

    wanted = sorted(set(ctx.options.drop))
    listed = ",".join(map(str, wanted))
    if not out.is_file():
        raise StoreError(f"--drop {listed}: there is no store at {out} to remove steps from",
                         fix="run without --drop, or pass the store's path as --out")
    with StoreReader(out) as reader:
        stored = reader.file_identities()
        series = reader.series()
        records = reader.records(probe=series[0][0], layer=series[0][1]) if series else []
        store_reference = reader.provenance.get("reference_step")
    missing = [step for step in wanted if step not in stored]
    if missing:
        shown = sorted(stored)
        raise StoreError(
            f"--drop {listed}: {out} holds no checkpoint at step {', '.join(map(str, missing))}",
            got="stored steps: " + (", ".join(map(str, shown[:12])) + (f" ... ({len(shown)} in all)"
                                                                      if len(shown) > 12 else "") or "none"),
            fix="name stored steps (`fdl report` lists them)",
        )
    kept = {step: identity for step, identity in stored.items() if step not in wanted}
    alone = [step for step in wanted if not any(
        sha == stored[step][1] and _same_path(path, stored[step][0]) for path, sha, _ in kept.values())]
    if alone:
        step = alone[0]
        copies = [other for other, (path, sha, _) in sorted(stored.items()) if any(
            o != other and s == sha and _same_path(p, path) for o, (p, s, _) in stored.items())]
        # the reference is analysed again with everything else (--redo refuses it); --redo reads the step's
        # file, which a user dropping a checkpoint has often deleted: --redo was named, then refused
        gone = all(ref.step != step for ref in refs)
        # the store's reference, its file gone: this run's reference is another step, and --redo refuses the store's
        again = (f"step {step} is the store's reference, whose file is not among this run's checkpoints {_NOT_GIVEN}: "
                 f"put it back among them to resume the store; to analyse it again, {_OVERWRITE_FIX}"
                 if gone and step == store_reference else
                 f"step {step} is the reference: to analyse it again, {_OVERWRITE_FIX}" if step == ctx.reference_step
                 else f"step {step}'s file is not among this run's checkpoints {_NOT_GIVEN}: the store keeps what it "
                 f"analysed of it, in its place; to analyse it again, put the file back among them and use --redo {step}"
                 if gone else f"to analyse step {step} again use --redo {step}")
        if not copies:
            # a healthy store: what the user may have meant is to remove a checkpoint, which --drop never does
            raise StoreError(
                f"--drop {listed}: {out} holds no checkpoint file at two steps, so there is nothing to drop: --drop "
                "removes only a second copy of a file the store keeps at another step (stored so by a resume with "
                "other step options, which fdl now refuses), never the only one",
                got=f"step {step} is the only copy of {stored[step][0]} in {out}"
                + (", a file this run does not read" if gone else ""),
                fix="leave out --drop (`fdl analyze` names the steps to drop when a store holds a file at two steps); "
                f"{again}; for a store without some checkpoints, analyse the others into another --out (--steps)",
            )
        raise StoreError(
            f"--drop {listed}: {out} would hold {stored[step][0]} (step {step}) at no step any more; --drop removes "
            "only a second copy of a file the store keeps at another step, so that nothing analysed is lost",
            got="steps whose file is stored at another step too: " + ", ".join(map(str, copies)),
            fix=f"leave step {step} out of --drop; {again}"
            + ("" if step in (ctx.reference_step, store_reference) else f", to start afresh {_OVERWRITE_FIX}"),
        )
    steps_now = {ref.step: ref for ref in refs}
    read = [step for step in wanted if step in steps_now]
    if read:
        raise StoreError(
            f"--drop {listed}: this run reads {steps_now[read[0]].path} as step {read[0]}, so it would analyse "
            "that step again right after dropping it",
            fix="drop the steps this run does not read (the error that named --drop lists them), or give the step "
            "options (--step-offset, --step-regex) that read the steps you keep",
        )
    if ctx.reference_step in wanted:
        raise StoreError(
            f"--drop {listed}: step {ctx.reference_step} is the reference checkpoint; every stored checkpoint's "
            "cka_init, overlap_init and param_dist_init compare with it",
            fix="re-analyse everything with --overwrite (or another --out)",
        )
    successors: list[tuple[int | None, int]] = []
    for record in records:
        step = int(record["step"])
        if record.get("prev_step") in wanted and step not in wanted:
            before = max((other for other in kept if other < step), default=None)
            successors.append((before, step))
    ctx.drop = frozenset(wanted)
    ctx.drop_successors = successors


def _abandon(ctx: _Context, writer: Any, out: Path, summary: AnalyzeSummary, announce: Announcer) -> None:
    """--abandon-addition: the unfinished addition the writer found (`store.abandonment`) taken out of the store in
    one commit, durable before the run goes on (its --json line first); a store without one (given up already, by
    this command killed once it had committed) is resumed as any other, with a note. A Ctrl-C in the commit is
    raised at its end, once the summary and the --json line (printed on the caller's way out) say it: raised
    before, they said nothing of an addition the store no longer held."""
    abandoned = writer.abandoned
    if abandoned is None:
        ctx.reporter.note(f"--abandon-addition: {out} holds no unfinished addition of a probe or layer: nothing to "
                          "give up")
        return
    with signals.deferred():
        writer.flush()
        summary.abandoned = (abandoned.describe(), abandoned.held)
        announce.queue_line({"abandoned": [list(key) for key in sorted(abandoned.series)]})
    announce(())


def _drop_steps(ctx: _Context, writer: Any, out: Path) -> None:
    """--drop: remove the steps, and store again the checkpoints compared with them, compared now with the
    nearest kept checkpoint before them (or with none), in one commit: handed to `writer`, for the caller's flush."""
    from dataclasses import replace as replace_entry

    from fdl_cli.store import StoreReader

    if not ctx.drop:
        return
    listed = ",".join(map(str, sorted(ctx.drop)))
    with StoreReader(out) as reader:
        stored = reader.file_identities()
    for before, successor in ctx.drop_successors:  # checked after `_check_stored_files`, which names a file
        for needed in (successor, before):        # stored at two steps as such, before anything is written
            if needed is not None and needed not in ctx.refs_by_step:
                got, fix = _file_not_read(ctx, out, needed, stored[needed][0])
                raise StoreError(
                    f"--drop {listed}: the stored step {successor} is compared with a dropped step (cka_prev, "
                    f"overlap_prev), and is to be compared with step {before} instead, but the file of step "
                    f"{needed} is not among this run's checkpoints",
                    got=got,
                    fix=fix,
                )
    entries = []
    stored_sha = {step: identity[1] for step, identity in stored.items()}
    for before, successor in ctx.drop_successors:
        if before is not None:
            entries.append(_refreshed_entry(ctx, out, before, successor, stored_sha))
            continue
        with StoreReader(out) as reader:  # nothing kept before it: no previous checkpoint
            entry = reader.entry(successor)
        entries.append(replace_entry(entry, series=tuple(
            replace_entry(item, scalars={**item.scalars, "cka_prev": None, "overlap_prev": None, "prev_step": None})
            for item in entry.series)))
    shown = ", ".join(map(str, sorted(ctx.drop)))
    pairs = ", ".join(f"step {successor} with {'none' if before is None else before}"
                      for before, successor in ctx.drop_successors)
    ctx.reporter.note(
        f"dropped step{'s' if len(ctx.drop) > 1 else ''} {shown} ("
        + ("each a second copy of a file" if len(ctx.drop) > 1 else "a second copy of the file")
        + " stored at another step)"
        + (f"; {counted(len(entries), 'stored checkpoint')} compared again with the one kept before ({pairs})"
           if entries else "")
    )
    writer.drop(sorted(ctx.drop), *entries)


def _redo_successors(ctx: _Context, step: int, out: Path) -> list[CheckpointEntry]:
    """The stored checkpoints compared with `step` (prev_step), which --redo analysed again just now
    (its series are `ctx.previous`): their entries with cka_prev / overlap_prev recomputed against it
    (an anchor pass of each), to be committed together with its own (`StoreWriter.add`)."""

    from fdl_cli.store import CheckpointEntry as Entry
    from fdl_cli.store import StoreReader

    entries = []
    for successor in ctx.redo_successors.get(step, ()):
        ref = ctx.refs_by_step[successor]
        with _memory_explained(ref), StoreReader(out) as reader:
            loaded, sha = _load(ref, ctx.options, ctx.hashed.get(str(ref.path)))
            stored_sha = reader.file_identities()[successor][1]
            if sha != stored_sha:  # its stored numbers (eigenfunctions) are another file's
                raise _changed_file(
                    f"the checkpoint at step {successor} ({ref.path}), compared with step {step}", sha, stored_sha,
                    f"in {out}", step=successor,
                )
            later = _stored_series(ctx, successor, _prepare(ctx, loaded, parameters=False), reader, reader.held(successor))
            series = _compared_again(ctx, reader, successor, later, ctx.previous, step)
            computed_by = reader.computed_by_row(successor)  # its numbers but the comparisons are as stored
        entries.append(Entry(
            step=successor, path=shown_path(ref.path), sha256=sha, series=tuple(series),
            file_signature=loaded.file_signature, computed_by=computed_by,
        ))
    return entries


#: Where `fdl analyze` writes without --out (`default_store_path`), as its fixes say it: one folder's name is not
#: the default of files, which every run given as files shares.
_DEFAULT_OUT = ("without one, a run of files (or -, several folders, a pattern) writes ./fdl.h5, a run of one folder "
                "./<folder>.fdl.h5")

#: The first bytes of every HDF5 file (a store, even a damaged one, starts with them).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_out_is_no_input(out: Path, inputs: Sequence[Any]) -> None:
    """Refuse an --out that is one of the run's inputs, or an existing file that is no HDF5 file: with
    --overwrite the first commit replaced it (`--out probe.npz` turned the probe into a store)."""
    if not out.exists() or out.is_dir():
        return  # a folder is the writer's error
    target = out.resolve()
    for path in inputs:
        with contextlib.suppress(OSError):
            if Path(path).resolve() == target:
                raise StoreError(
                    f"--out {out} is one of this run's inputs ({path})",
                    fix=f"give the store a name of its own, such as run.h5 ({_DEFAULT_OUT})",
                )
    special = special_store(out, named=f"--out {out}")
    if special is not None:  # opened to be read, a FIFO waits for a writer that never comes
        raise special
    try:
        with open(out, "rb") as handle:
            head = handle.read(len(_HDF5_SIGNATURE))
    except OSError:
        return  # unreadable: the writer says why
    if head and head != _HDF5_SIGNATURE:  # an empty file (from mktemp, say) may be replaced
        raise StoreError(
            f"--out {out} exists and is not an HDF5 file, so not an fdl store; fdl will not replace it",
            got=f"its first bytes: {head[:8]!r}",
            fix="give the store another name, or remove that file if it is not needed",
        )


def _same_path(recorded: str, now: str | os.PathLike[str]) -> bool:
    """Whether the path a store recorded for a checkpoint names this file (the same file on disk, or the
    same path where one is missing).

    A relative recorded path was relative to the folder fdl ran in then, which a store written before
    history rows recorded `cwd` does not say (`_StoredPlace.names` reads it there where it does):
    resumed from another folder (`fdl analyze run` in proj/, then `fdl analyze proj/run`), it
    names this file when this file's absolute path ends with it (the components after any leading
    `..`); else a rewritten file of this run was called another run's. A name whose bytes are not UTF-8
    is recorded with those bytes written `\\xNN` (`errors.shown_path`), and compared so."""
    try:
        if os.path.samefile(recorded, now):
            return True
    except OSError:
        pass
    here = shown_path(os.path.normpath(os.path.abspath(now)))
    if shown_path(os.path.normpath(os.path.abspath(recorded))) == here:
        return True
    if os.path.isabs(recorded):
        return False
    parts = Path(os.path.normpath(recorded)).parts
    while parts and parts[0] in ("..", "."):
        parts = parts[1:]
    return bool(parts) and Path(here).parts[-len(parts):] == parts


def _other_files(
    out: Path, pairs: Sequence[tuple[int, str, str | os.PathLike[str]]], sha_now: str, sha_stored: str
) -> StoreError:
    """The store's checkpoints were analysed from other files than this run's (step, recorded path, path
    now): most likely another run's store given as --out, which "changed since analysed" misnamed."""
    step, recorded, now = pairs[0]
    more = f" (and {counted(len(pairs) - 1, 'more step')} so)" if len(pairs) > 1 else ""
    return StoreError(
        f"{out} holds other files' numbers: its step {step} was analysed from {recorded}, and this run's step "
        f"{step} is {now}, another file{more}",
        got=f"step {step}: sha256 {sha_now[:16]}… now, {sha_stored[:16]}… in {out}",
        fix=f"give this run its own --out ({_DEFAULT_OUT}), or --overwrite to replace that store; "
        "if these are the same checkpoints moved or copied, restore the files as they were",
    )


#: How a store is mended once its checkpoints' files changed (or its arrays were damaged), whole.
_OVERWRITE_FIX = "re-analyse everything with --overwrite (or another --out)"


def _file_not_read(ctx: _Context, out: Path, step: int, recorded: str) -> tuple[str | None, str]:
    """(got, fix) of a refusal over a stored step whose file this run needs and does not read: gone, or there
    but left out by the glob ("restore the file" named a file that is there), or read otherwise."""
    place = _stored_places(out).get(step)
    got = f"{out} analysed step {step} from {recorded}" if recorded else None
    if not recorded or place is None or place.found() is None:
        return got, f"restore the file of step {step}{place.looked() if place is not None else ''}, or {_OVERWRITE_FIX}"
    got = f"{out} analysed step {step} from {place.shown()}"
    glob, manifest = ctx.options.glob_pattern, ctx.manifest
    if glob is not None and not Path(recorded).match(glob):
        if "glob_pattern" not in ctx.options.given and manifest is not None and manifest.options.get("glob") == glob:
            return (f"{got}, which is there, but the glob {glob!r} that {manifest.path} sets leaves it out",
                    f"give a --glob that matches {Path(recorded).name} too (it overrides fdl.toml's), or {_OVERWRITE_FIX}")
        return (f"{got}, which is there, but --glob {glob!r} leaves it out",
                f"widen --glob to match {Path(recorded).name} too (or leave --glob out), or {_OVERWRITE_FIX}")
    return (f"{got}, which is there, but this run does not read it as step {step}",
            f"give the sources and options (--glob, --step-regex, --step-offset) that read it as step {step}, or "
            f"{_OVERWRITE_FIX}")


def _redo_fix(steps: Collection[int]) -> str:
    """The fix that analyses only these stored checkpoints again (not the reference: `_check_redo`)."""
    return (f"; or analyse only {'that checkpoint' if len(steps) == 1 else 'those checkpoints'} again: the same "
            f"command with --redo {','.join(map(str, sorted(steps)))}")


def _changed_file(what: str, now: str, stored: str, where: str, *, why: str = "", step: int | None = None) -> StoreError:
    """A checkpoint file whose content is not the one the store's numbers were computed from; `step`:
    the stored checkpoint's step, which --redo can analyse again (None for the reference)."""
    return StoreError(
        f"{what} changed since it was analysed{why}",
        got=f"sha256 {now[:16]}… now, {stored[:16]}… {where}",
        fix=f"restore the file, or {_OVERWRITE_FIX}" + (_redo_fix([step]) if step is not None else ""),
    )


def _model_source(factory: Callable[..., Any] | None) -> tuple[str, str] | None:
    """(file, sha256) of the file that defines the model factory: the user's model code, whose edits
    would otherwise mix two models' numbers in one store on resume. None for a checkpoint that
    carries its own program, or a factory of an installed package (`_file_source`)."""
    import inspect

    if factory is None:
        return None
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:  # a builtin or a C extension
        return None
    return _file_source(Path(source)) if source else None


def _spec_source(spec: str | None, base_dir: Path | None) -> tuple[str, str] | None:
    """(absolute path, sha256) of the file a --model spec names (`checkpoints.model_spec_file`); None
    for an installed package's module (as `_model_source`) or when it has no file."""
    from fdl_cli.checkpoints import model_spec_file

    file = model_spec_file(spec, base_dir=base_dir) if spec else None
    return _file_source(file) if file is not None else None


def _model_imports(
    factory: Callable[..., Any] | None,
    spec: str | None,
    base_dir: Path | None,
    known: dict[str, tuple[str, str]] | None = None,
) -> dict[str, tuple[str, str]] | None:
    """module -> (absolute path, sha256) of each module of the model's folder that its code imported so far
    (`checkpoints.model_folder_imports`: `from mylayers import Block` beside model.py), each hashed once, as it was
    imported: their edits change the model as the model file's do. Taken as the model file was imported, and again
    (`known`: those taken then, kept as they were) once the factory and a forward pass ran, which import modules of
    the folder too (`def build(): from mylayers import act`). None where it is not known."""
    from fdl_cli.checkpoints import model_folder_imports, model_spec_file

    if factory is None or not spec:
        return known
    files = model_folder_imports(factory, model_spec_file(spec, base_dir=base_dir))
    if files is None:
        return known
    return {**_hashed_modules({name: file for name, file in files.items() if name not in (known or {})}), **(known or {})}


def _pickled_code(loaded: LoadedCheckpoint) -> dict[str, tuple[str, str]] | None:
    """module -> (absolute path, sha256) of the user's modules whose code a model pickled whole runs (the classes of
    its submodules, and the user's modules they import: `checkpoints.pickled_model_modules`), taken from the reference
    checkpoint: the pickle holds the classes' names, not their code, and provenance has no model file to hash.
    None for a checkpoint of weights alone."""
    from fdl_cli.checkpoints import pickled_model_modules

    return None if loaded.module is None else _hashed_modules(pickled_model_modules(loaded.module))


def _hashed_modules(files: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """module -> (absolute path, sha256) of those of `files` (module -> source file) that are the user's code
    (`_file_source`)."""
    return {name: source for name, file in files.items() if (source := _file_source(Path(file))) is not None}


def _file_source(file: Path) -> tuple[str, str] | None:
    """(absolute path, sha256) of a file of the user's model code; None for one of an installed package
    (site-packages: its version is not the run's business, and an upgrade would refuse every resume) or
    one that cannot be read."""
    import hashlib

    try:
        file = file.resolve()
        if any(part in ("site-packages", "dist-packages") for part in file.parts):
            return None
        return str(file), hashlib.sha256(file.read_bytes()).hexdigest()
    except (OSError, RuntimeError):
        return None


def _check_stored_files(
    ctx: _Context, out: Path, refs: Sequence[CheckpointRef], note: Callable[[dict[int, str]], None] | None
) -> dict[int, str]:
    """On resume, refuse a store whose checkpoints' files changed since they were analysed.

    A checkpoint in the store is not analysed again, so a file replaced since (training re-run into
    the same folder with another setting: with the same seed its step-0 file, the reference, is
    bit-identical and passes `_check_reference_of_store`) kept the old file's numbers without a word.
    A stored checkpoint's file is hashed again when its size or modification time differ from those
    recorded (`checkpoints.file_signature`; every file, once, for a store written before fdl recorded
    them); a new hash is an error naming the files. Files found unchanged get their new signature
    recorded, so the next resume does not hash them again: through `note`
    (`StoreWriter.note_file_signatures`) unless a file changed (a refusal leaves the store as it
    was), also those verified before a Ctrl-C (a resume stopped while hashing keeps what it
    verified); and returned (step -> signature). Under torchrun every rank runs this, hashing its
    share of the files (no rank waits in a collective meanwhile), and every rank gets every result;
    the files to hash are rank 0's list (the ranks' own readings of sizes and times could differ,
    a file being rewritten meanwhile, and leave one rank waiting in a collective the others skip)."""
    from fdl_cli import distributed

    world = ctx.world if ctx.world is not None and ctx.world.distributed else None
    plan = _stored_files_to_hash(ctx, out, refs) if world is None or world.writes else None
    if world is not None:
        plan = distributed.broadcast_from_writer(plan, world, "rank 0 to list the stored files to hash")
    if plan is None:
        return {}
    stored, places, suspects = plan
    reasons = {  # why each is hashed, in the order the note says them
        "size or modification time is not the one recorded": any(
            ref.step == step and now != stored[step][2] for step, ref, now, _ in suspects),
        "step in this run is another than the stored one": any(ref.step != step for step, ref, _, _ in suspects),
        "recorded path names a file in another folder (this run's is the same name there)": any(
            ref.step == step and now == stored[step][2] for step, ref, now, _ in suspects),
    }
    said = [reason for reason, holds in reasons.items() if holds]
    ctx.reporter.note(
        f"hashing {counted(len(suspects), 'stored checkpoint file')} whose "
        + ", or whose ".join(said)
        + (", to check it is the file that was analysed" if len(suspects) == 1 else
           ", to check they are the files that were analysed")
    )
    indices = list(range(len(suspects)))
    digests: dict[int, str | None] = {}
    by_path: dict[str, str | None] = {}  # a file checked for two stored steps (its own, another's) is read once
    try:
        for index in distributed.block(indices, world) if world is not None else indices:
            signals.check()
            step, ref, now, _ = suspects[index]
            if str(ref.path) not in by_path:
                try:
                    by_path[str(ref.path)] = _sha256_once(ctx, ref.path, now)
                except OSError:
                    by_path[str(ref.path)] = None  # unreadable now: reported if this run needs to read it
            digests[index] = by_path[str(ref.path)]
    except KeyboardInterrupt:
        if note is not None:  # what was verified before the Ctrl-C is kept (the store is left otherwise as it was)
            note({
                suspects[index][0]: suspects[index][2] for index, digest in digests.items()
                if suspects[index][2] and digest == stored[suspects[index][0]][1]
            })
        raise
    if world is not None:
        for share in distributed.all_gather(digests, world, "the other ranks to hash their share of the stored files"):
            digests.update(share)
    # First: a stored file, unchanged, read at another step says the step options differ from the store's
    # run; the files this moves onto stored steps would otherwise be said to be other or changed files.
    moved = [(step, ref) for index, (step, ref, _, _) in enumerate(suspects)
             if ref.step != step and digests.get(index) == stored[step][1]]
    if moved:
        # Stored at the step this run reads it too (an fdl before session 18 stored it again there): no step
        # options read the store's steps, so the fix is to remove the steps this run does not read.
        twice = [(step, ref) for step, ref in moved if ref.step in stored
                 and stored[ref.step][1] == stored[step][1] and places[ref.step].names(ref.path)]
        if len(twice) == len(moved):
            alone = "--redo" if ctx.options.redo is not None else "--watch" if ctx.options.watch else None
            raise _stored_twice(out, twice, ctx.drop, distributed=world is not None, alone=alone)
        raise _read_at_other_steps(out, moved)
    changed: list[tuple[int, CheckpointRef, str]] = []  # (stored step, this run's checkpoint, sha256 now)
    touched = {}
    for index, (step, ref, now, moved_only) in enumerate(suspects):
        digest = digests.get(index)
        if digest is None or (moved_only and digest != stored[step][1]):
            continue
        if digest != stored[step][1]:
            changed.append((step, ref, digest))
        elif now:
            touched[step] = now
    if changed:
        changed.sort(key=lambda item: item[0])
        elsewhere = [(step, places[step].shown(), ref.path) for step, ref, _ in changed if not places[step].names(ref.path)]
        if elsewhere:
            digest = next(sha for step, _, sha in changed if step == elsewhere[0][0])
            raise _other_files(out, elsewhere, digest, stored[elsewhere[0][0]][1])
        first, _, digest = changed[0]
        copied = {step: _copy_of(ctx, stored, step, ref, sha) for step, ref, sha in changed}
        shown = ", ".join(
            f"step {step} ({ref.path}{'' if ref.step == step else f', now step {ref.step}'}"
            f"{(': ' if ref.step != step else ', now ') + copied[step] if copied[step] else ''})"
            for step, ref, _ in changed[:5]
        ) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        # --redo takes the stored steps whose file is this run's checkpoint of that step (not one found
        # at another step: training re-run with another schedule), and never the reference; nor a copy of
        # another step's file: --redo would store that step's numbers under this one
        redoable = [step for step, ref, _ in changed
                    if ref.step == step and step != ctx.reference_step and not copied[step]]
        copies = [step for step in copied if copied[step]]
        raise StoreError(
            f"{counted(len(changed), 'checkpoint file')} changed since {'it was' if len(changed) == 1 else 'they were'} "
            f"analysed into {out}: {shown}; the store holds the numbers of the "
            f"{'file it' if len(changed) == 1 else 'files they'} replaced",
            got=f"step {first}: sha256 {digest[:16]}… now, {stored[first][1][:16]}… in {out}",
            fix="restore the files"
            + (f" (each the checkpoint saved at its step), or remove the cop{'y' if len(copies) == 1 else 'ies'} "
               f"of step{'' if len(copies) == 1 else 's'} {', '.join(map(str, copies))} (the store keeps the numbers of the "
               f"{'file it' if len(copies) == 1 else 'files they'} replaced, as for a deleted file)"
               if copies else "")
            + f", or {_OVERWRITE_FIX}"
            + (_redo_fix(redoable) + (" (as one process: --redo does not run under torchrun)" if world else "")
               if len(redoable) == len(changed) else ""),
        )
    if note is not None:
        note(touched)
    return touched


def _read_at_other_steps(out: Path, moved: Sequence[tuple[int, CheckpointRef]]) -> StoreError:
    """Files the store analysed, unchanged, that this run reads at other steps (another --step-offset or
    --step-regex than the store's run, an fdl that reads another step key): analysed again at their new
    steps, each was stored twice, and the run's steps mixed two readings, with exit 0."""
    step, ref = moved[0]
    more = f" (and {counted(len(moved) - 1, 'more file')} so)" if len(moved) > 1 else ""
    return StoreError(
        f"{ref.path}, which {out} analysed as step {step}, is step {ref.step} in this run (from its "
        f"{ref.step_source}){more}: the store would hold the same checkpoint at two steps",
        got="the same file, unchanged, read at another step: other --step-offset / --step-regex options than the "
        "run that made the store (or an fdl that reads another step key of the file)",
        fix="give the options that read the steps as the store has them, or " + _OVERWRITE_FIX
        + " to store the checkpoints at the steps this run reads",
    )


def _stored_twice(
    out: Path,
    twice: Sequence[tuple[int, CheckpointRef]],
    dropping: Collection[int],
    *,
    distributed: bool = False,
    alone: str | None = None,
) -> StoreError:
    """Files the store holds at two steps (an fdl before session 18 resumed it with other step options and
    stored each again at the step those read), found by this run at one of them: --drop the others (with
    those `dropping` already named). `alone`: this command's option that --drop does not go with (--redo,
    --watch; `_check_drop_options`), which the fix leaves out, then runs again: "the same command with
    --drop" was refused for it."""
    twice = sorted(twice, key=lambda pair: pair[0])
    shown = "; ".join(f"{ref.path} at steps {ref.step} and {step}" for step, ref in twice[:3]) + (
        f"; and {counted(len(twice) - 3, 'more file')} so" if len(twice) > 3 else "")
    steps = ",".join(map(str, sorted({*dropping, *(step for step, _ in twice)})))
    return StoreError(
        f"{out} holds the same checkpoint file at two steps: {shown} (stored a second time by a resume "
        "with other --step-offset / --step-regex options, which fdl now refuses)",
        got=f"this run reads {'it' if len(twice) == 1 else 'them'} at step{'s' if len(twice) > 1 else ''} "
        f"{', '.join(str(ref.step) for _, ref in twice)}; the store holds {'it' if len(twice) == 1 else 'them'} at "
        f"step{'s' if len(twice) > 1 else ''} {', '.join(str(step) for step, _ in twice)} as well",
        fix=f"run the same command {f'without {alone}, ' if alone else ''}with --drop {steps}"
        + (" (as one process: --drop does not run under torchrun)" if distributed else "")
        + f": it removes {'that step' if len(twice) == 1 else 'those steps'} "
        "(the file stays stored at the step this run reads) and keeps every other checkpoint"
        + (f"; then run the {alone} command (--drop does not go with {alone})" if alone else "")
        + "; to keep those steps "
        "instead, run with the step options that read them (the error then names the others), or "
        + _OVERWRITE_FIX,
    )


def _copy_of(
    ctx: _Context, stored: Mapping[int, tuple[str, str, str]], step: int, ref: CheckpointRef, sha: str
) -> str:
    """How the file now at a stored step's place (`ref`, its sha256 now `sha`) is a copy of another
    step's checkpoint: byte for byte the file stored as another step, or a file discovery left out as
    holding the same weights and step as another; "" when it is neither."""
    same = sorted(other for other, (_, digest, _) in stored.items() if other != step and digest == sha)
    if same:
        return f"a copy of {stored[same[0]][0]}, the file stored as step {same[0]}"
    kept = next((kept for dropped, kept in ctx.copies if dropped.path == ref.path), None)
    if kept is not None:
        return f"the same weights and step as {kept.path}, so this run leaves it out"
    return ""


def _stored_files_to_hash(
    ctx: _Context, out: Path, refs: Sequence[CheckpointRef]
) -> tuple[dict[int, tuple[str, str, str]], dict[int, _StoredPlace], list[tuple[int, CheckpointRef, str, bool]]] | None:
    """For `_check_stored_files`: the store's (path, sha256, signature) by step, where each is looked for
    (`_stored_places`: rank 0's, as the list is), and the files to hash
    ((stored step, this run's checkpoint of that step's file, its signature now or "" if not
    compared, whether only the same sha256 matters: a file found at another step whose new content
    makes it another checkpoint, as training rewrites latest.pt)); None when there is none."""
    if not ctx.options.resume or not out.is_file():
        return None
    from fdl_cli.checkpoints import file_signature
    from fdl_cli.store import StoreReader

    try:
        with StoreReader(out) as reader:
            stored = reader.file_identities()
            places = _stored_places(out, reader)
    except StoreError:
        return None  # the writer reports what is wrong with the file
    # (stored step, this run's checkpoint of that step's file, its signature now or "" if not compared,
    # whether it is hashed only to tell the same file read at another step)
    suspects: list[tuple[int, CheckpointRef, str, bool]] = []
    for ref in refs:
        if ref.step in stored and ref.step not in ctx.redo:  # --redo: analysed again from its file as it is now
            try:
                now = file_signature(ref.path)
            except (OSError, FdlError):
                continue  # unreadable now: reported if this run needs to read it
            # Another folder's file under the name recorded (`a/run/step_10.pt` analysed, `b/run/step_10.pt`
            # now, while a's is still there) is hashed whatever its size and time: two runs written in the same
            # clock tick (a sweep saving in lockstep) have equal ones, and b's file passed for a's. Not where the
            # recorded file is gone (a run moved, a file renamed over another): its size and time still tell.
            place = places.get(ref.step)
            found = place.found() if place is not None else None
            if now != stored[ref.step][2] or (found is not None and not _same_path(str(found[0]), ref.path)):
                suspects.append((ref.step, ref, now, False))
    # A stored checkpoint's file that is one of this run's checkpoints at another step (training re-run
    # into the same folder with another schedule: same names, other steps in the metadata) is checked
    # too: by step alone, nothing would be hashed and the two runs' checkpoints would mix in the store.
    # Not a file that training goes on rewriting (latest.pt, last.ckpt): it now holds a step that is
    # stored (and checked above as that step's file) or one after every stored step.
    # A file whose name holds the stored step (step_10.pt) is no such file: one found at another step now
    # (a copy of another step's file, which discovery leaves out as a copy when that step's own file is
    # there too) replaced the one analysed, whatever step it holds.
    from fdl_cli.checkpoints import _name_step

    by_file: dict[Path, CheckpointRef] = {}
    for ref in [*refs, *(dropped for dropped, _ in ctx.copies)]:
        with contextlib.suppress(OSError, RuntimeError):
            by_file.setdefault(Path(ref.path).resolve(), ref)
    steps_now, last_stored = {ref.step for ref in refs}, max(stored, default=0)

    def hash_without_signature(step: int, other: CheckpointRef) -> bool:
        """Whether `other`, this run's checkpoint at another step than `step` and found where `step`'s file
        was, is to be hashed although `step` recorded no signature to tell (a store written before them):
        not when it is the file stored as its own step, unchanged (that step's recorded signature, which a
        resume records once it has hashed the file there), and that step's sha256 is not `step`'s. It was
        hashed at every resume: nothing recorded for `step` ever told it (session 20)."""
        if other.step not in stored:
            return True
        _, sha, recorded = stored[other.step]
        return not recorded or sha == stored[step][1] or file_signature(Path(other.path)) != recorded

    for step, (path, _, signature) in sorted(stored.items()):
        if step in ctx.redo or step in ctx.drop:  # --drop: removed before anything is analysed
            continue
        # where its recorded path is now, relative to the folder it was typed in (`_StoredPlace`)
        found = places[step].found() if step in places else None
        try:
            other = by_file.get((found[0] if found is not None else Path(path)).resolve())
        except (OSError, RuntimeError):
            continue
        if other is None or other.step == step:
            continue
        if step in steps_now:
            # Another file is this run's checkpoint of that step (checked above, as that step's file); the
            # stored one, unchanged, read at another step is the step options' doing (--step-offset run2=30
            # of a store made with run2=20), which "holds other files' numbers" would not say.
            # A store written before signatures were recorded cannot tell by size and time: hashed.
            with contextlib.suppress(OSError, FdlError):
                if (hash_without_signature(step, other) if not signature
                        else file_signature(Path(other.path)) == signature):
                    suspects.append((step, other, "", not signature))
            continue
        if _name_step(Path(other.path)) == step or (other.step not in stored and other.step < last_stored):
            suspects.append((step, other, "", False))
            continue
        # Past every stored step: a file training rewrites (changed since: its size or time differ), or the
        # same file read at another step now (another --step-offset or --step-regex), which would be
        # stored a second time, and which hashing then tells. Without a recorded signature (a store
        # written before them) it is hashed all the same: only the same sha256 is refused, another is
        # the rewritten file's new checkpoint.
        with contextlib.suppress(OSError, FdlError):
            if (hash_without_signature(step, other) if not signature
                    else file_signature(Path(other.path)) == signature):
                suspects.append((step, other, "", True))
    return (stored, places, suspects) if suspects else None


@dataclass(frozen=True)
class _StoredPlace:
    """Where a stored checkpoint's file is looked for. Its path is recorded as typed, so a relative one is
    relative to the folder `fdl analyze` ran in then, which a command run from another folder is not in
    (`cd exp && fdl analyze run`, then `fdl analyze exp/run --out exp/s.h5`): it is looked for against the
    folder the history row of the run that computed it records (`cwd`), this folder, and the store's own
    folder, in that order, and called gone only when it is in none of them."""

    recorded: str
    #: (folder the recorded path is taken relative to, and why) for each place looked at, in order; (None, "")
    #: for an absolute path
    bases: tuple[tuple[Path | None, str], ...]
    #: whether the first of `bases` is the folder the path was typed in (its history row's `cwd`)
    typed_in: bool = False

    def _at(self, base: Path | None) -> Path:
        return Path(os.path.normpath(base / self.recorded)) if base is not None else Path(self.recorded)

    def candidates(self) -> list[Path]:
        """The places looked at, in order, each once."""
        return list(dict.fromkeys(self._at(base) for base, _ in self.bases))

    def found(self) -> tuple[Path, Path | None, str] | None:
        """(the file, the folder its recorded path is relative to, why that folder) for the first place it is at;
        None when it is at none."""
        for base, why in self.bases:
            if os.path.lexists(self._at(base)):
                return self._at(base), base, why
        return None

    def names(self, now: str | os.PathLike[str]) -> bool:
        """Whether the recorded path names the file `now`. Where the folder it was typed in is recorded, the
        recorded path names the file it is found at (`found`), not any file its text names from here: a run
        saved under the same names in another folder (`a/run/step_10.pt`, `b/run/step_10.pt`) is another run's,
        which "changed since analysed" (and its fix, --redo) misnamed. Found nowhere (moved since), and for a
        store that does not record that folder (an older fdl's), by the text as `_same_path` reads it."""
        found = self.found() if self.typed_in else None
        return _same_path(self.recorded if found is None else str(found[0]), now)

    def where_typed(self) -> Path | None:
        """The file the recorded path names where it was typed (an absolute path's own, a relative one's in the
        recorded `cwd`), if it is there; None otherwise, and for a store that does not record that folder."""
        base = self.bases[0][0]
        if base is not None and not self.typed_in:
            return None
        place = self._at(base)
        return place if os.path.lexists(place) else None

    def shown(self) -> str:
        """The recorded path, with the folder it is relative to where that is not this one (and where it is)."""
        found = self.found()
        if found is None or found[1] is None or _same_folder(found[1], Path.cwd()):
            return self.recorded
        place, base, why = found
        return f"{self.recorded} (relative to {shown_path(base)}, {why}: {shown_path(place)})"

    def looked(self) -> str:
        """`" (PATH, looked for at A, B)"`: the places a relative recorded path was looked for at; "" for an
        absolute one (the place it names)."""
        looked = ", ".join(map(shown_path, self.candidates()))
        return "" if os.path.isabs(self.recorded) else f" ({self.recorded}, looked for at {looked})"


def _same_folder(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return os.path.abspath(one) == os.path.abspath(other)


def _stored_places(out: Path, reader: Any = None) -> dict[int, _StoredPlace]:
    """step -> where `out`'s checkpoint of that step is looked for (`_StoredPlace`); empty when it cannot be
    read. `reader`: an open `StoreReader` of `out`, else one is opened."""
    from fdl_cli.store import StoreReader

    if reader is None:
        try:
            with StoreReader(out) as opened:
                return _stored_places(out, opened)
        except StoreError:
            return {}
    places = {}
    here = _working_folder()
    store_folder = Path(os.path.abspath(out)).parent
    for step, (recorded, _, _) in reader.file_identities().items():
        if os.path.isabs(recorded):
            places[step] = _StoredPlace(recorded, ((None, ""),))
            continue
        index = None
        with contextlib.suppress(FdlError, ValueError):
            index = reader.computed_by(step)
        row = reader.history[index] if index is not None else {}
        cwd = row.get("cwd") if isinstance(row, Mapping) else None
        bases: list[tuple[Path | None, str]] = []
        typed_in = isinstance(cwd, str) and bool(cwd)
        if typed_in:
            bases.append((Path(str(cwd)), "the folder fdl analyze ran in when it stored it"))
        if here is not None:
            bases.append((Path(here), "this folder"))
        bases.append((store_folder, "the store's folder"))
        places[step] = _StoredPlace(recorded, tuple(bases), typed_in)
    return places


#: the fix of a resume refused for edited model code (the factory's file, the spec's, a module of its folder)
_MODEL_CODE_FIX = (
    "restore the file (e.g. git stash / git checkout), or re-analyse everything with --overwrite (or another --out), "
    "or resume with --accept-model-change if the change leaves the numbers as they were (a comment, a logging "
    "helper): the checkpoints stored so far keep the old code's numbers, which nothing recomputes, and the store "
    "records from which step on the new code ran"
)


def _check_reference_of_store(
    ctx: _Context, out: Path, reference: CheckpointRef, reference_sha: str, refs: Sequence[CheckpointRef] = ()
) -> None:
    """Resuming a store made with another reference checkpoint: say which --reference to pass; or with
    the same step but another file (retrained, overwritten) than the one its checkpoints were compared
    with; or with edited model code. Stores written before `reference_sha256` / `model_sha256` were
    recorded are checked only once their reference is stored (`_run_refs`), and not for the model."""
    if not ctx.options.resume or not out.is_file():
        return
    from fdl_cli.store import StoreReader

    try:
        with StoreReader(out) as reader:
            stored = reader.provenance.get("reference_step")
            stored_sha = reader.provenance.get("reference_sha256")
            stored_model = reader.provenance.get("model_sha256")
            stored_spec = reader.provenance.get("model_file_sha256")
            stored_file = reader.provenance.get("model_file")
            stored_spec_text = reader.provenance.get("model")
            stored_imports = reader.model_imports
            imports_recorded = reader.has_model_imports  # a damaged one: left as it is, not recorded again
    except StoreError:
        return  # the writer explains what is wrong with the file
    accepted = _AcceptedChange(ctx, out)
    if isinstance(stored_model, str) and ctx.model_source is not None and stored_model != ctx.model_source[1]:
        if not ctx.options.accept_model_change:
            raise StoreError(
                f"the model code {ctx.model_source[0]} changed since {out} was analysed: its checkpoints were run "
                "through another version of it",
                got=f"sha256 {ctx.model_source[1][:16]}… now, {stored_model[:16]}… recorded in {out}",
                fix=_MODEL_CODE_FIX,
            )
        accepted.provenance["model_sha256"] = ctx.model_source[1]
        accepted.add(ctx.model_source[0], None, stored_model, ctx.model_source[1])
    if isinstance(stored_spec, str) and ctx.spec_source is not None and stored_spec != ctx.spec_source[1]:
        if stored_file == ctx.spec_source[0] and ctx.options.accept_model_change:
            accepted.provenance["model_file_sha256"] = ctx.spec_source[1]
            accepted.add(ctx.spec_source[0], None, stored_spec, ctx.spec_source[1])
        elif stored_file == ctx.spec_source[0]:
            raise StoreError(
                f"the model file {ctx.spec_source[0]} changed since {out} was analysed: its checkpoints were "
                "run through another version of it",
                got=f"sha256 {ctx.spec_source[1][:16]}… now, {stored_spec[:16]}… recorded in {out}",
                fix=_MODEL_CODE_FIX,
            )
        else:
            raise StoreError(
                f"{out} was analysed with the model file {stored_file}; this run's --model names "
                f"{ctx.spec_source[0]}, which holds other code",
                got=f"sha256 {ctx.spec_source[1][:16]}… now, {stored_spec[:16]}… recorded in {out}",
                fix=f"pass --model naming that file (the store's spec: {stored_spec_text}) to add to it, or "
                "--overwrite (or another --out) to analyse with this model",
            )
    _check_model_imports(ctx, out, stored_imports, imports_recorded, accepted)
    accepted.record()
    if ctx.options.reference_step is None and stored is not None and stored != ctx.reference_step:
        if ctx.steps_found is not None and stored not in ctx.steps_found:
            raise _reference_not_found(out, stored, refs, ctx.options.sources)
        raise StoreError(
            f"{out} was analysed with step {stored} as the reference; this run's first checkpoint is step "
            f"{ctx.reference_step}",
            fix=f"pass --reference {stored} to add to it, or --overwrite (or another --out) to start afresh",
        )
    if stored == ctx.reference_step and isinstance(stored_sha, str) and stored_sha != reference_sha:
        place = _stored_places(out).get(stored)
        if place is not None and not place.names(reference.path):
            raise _other_files(out, [(stored, place.shown(), reference.path)], reference_sha, stored_sha)
        raise _changed_file(
            f"the reference checkpoint (step {reference.step}, {reference.path})", reference_sha, stored_sha,
            f"recorded in {out}", why=f": the checkpoints in {out} were compared with another file",
        )


def _check_model_imports(
    ctx: _Context, out: Path, stored: Mapping[str, str] | None, recorded: bool, accepted: _AcceptedChange
) -> None:
    """Refuse a resume whose model's folder modules (`_model_imports`: `from mylayers import Block` beside model.py)
    or modules of a model pickled whole (`_pickled_code`: netdef.py of its class) changed since the store recorded
    them, as an edit of the model file is; a module of one run only is not compared (the file that imports it
    changed, which its own sha256 says; a checkpoint whose classes moved to another module). A store written before
    fdl recorded them resumes as before, with a note that they are recorded from now on."""
    code = _model_code(ctx)
    if code is None:
        return
    if stored is None:
        kinds = [
            ("the modules its model file imports", ctx.model_imports),
            ("the modules of its pickled model's code", ctx.pickled_code),
        ]
        held = " and ".join(kind for kind, modules in kinds if modules)
        if recorded and code:  # damaged (the reader warns of it): kept as it is, never refused for
            ctx.store_notes.append(
                f"{out}'s model_imports attribute is damaged: an edit of {held} ({', '.join(sorted(code))}) is not "
                "seen; --overwrite (or another --out) records them afresh"
            )
        if not recorded and code:
            ctx.store_notes.append(
                f"{out} holds no record of {held}: their sha256 ({', '.join(sorted(code))}) is recorded now, and an "
                "edit of them is refused from the next resume on; the checkpoints stored so far were not checked "
                "against them"
            )
        return
    changed = [
        (name, *code[name], stored[name]) for name in sorted(stored) if name in code and code[name][1] != stored[name]
    ]
    if not changed:
        return
    if ctx.options.accept_model_change:
        for name, file, now, old in changed:
            accepted.add(file, name, old, now)
        accepted.imports = {**stored, **{name: sha for name, (_, sha) in code.items()}}
        return
    first = changed[0]
    role = "which the model imports" if first[0] in (ctx.model_imports or {}) else "code of the model the checkpoints pickle"
    raise StoreError(
        f"the model code {first[1]} (the module {first[0]}, {role}) changed since {out} was analysed: "
        "its checkpoints were run through another version of it",
        got="; ".join(f"{name}: sha256 {now[:16]}… now, {old[:16]}… recorded in {out}" for name, _, now, old in changed),
        fix=_MODEL_CODE_FIX,
    )


class _AcceptedChange:
    """The changes of the model's code that --accept-model-change lets a resume of `out` go on across, collected by
    `_check_reference_of_store`, then handed to the writer (`ctx.model_change`) with a note of what it records."""

    def __init__(self, ctx: _Context, out: Path) -> None:
        self.ctx, self.out = ctx, out
        self.provenance: dict[str, str] = {}  # provenance key -> the new code's sha256
        self.imports: dict[str, str] | None = None  # the store's model_imports once changed; None: unchanged
        self.changed: list[dict[str, Any]] = []  # {code, module, old, new}: one a file

    def add(self, code: str, module: str | None, old: str, new: str) -> None:
        if not any(item["code"] == code for item in self.changed):  # the factory's file is often the spec's
            self.changed.append({"code": code, "module": module, "old": old, "new": new})

    def record(self) -> None:
        if not self.changed:
            return
        self.ctx.model_change = {"provenance": self.provenance, "model_imports": self.imports, "changed": self.changed}
        files = ", ".join(item["code"] for item in self.changed)
        self.ctx.store_notes.append(
            f"--accept-model-change: the model code changed since {self.out} was analysed ({files}): its "
            "checkpoints stored so far keep the numbers of the old code, those this run stores get the new code's; "
            "the store records from which step on with the first checkpoint this run stores (its model_changes, "
            "which fdl report and fdl classify name; a run that stores none records nothing)"
        )


def _model_code(ctx: _Context) -> dict[str, tuple[str, str]] | None:
    """module -> (file, sha256) of the model's code beyond its model file: `ctx.model_imports` and
    `ctx.pickled_code` together; None where neither is known."""
    if ctx.model_imports is None and ctx.pickled_code is None:
        return None
    return {**(ctx.pickled_code or {}), **(ctx.model_imports or {})}


def _recorded_imports(ctx: _Context) -> dict[str, str] | None:
    """module -> sha256 of `_model_code`, as the store's `model_imports` records them."""
    code = _model_code(ctx)
    return None if code is None else {name: sha for name, (_, sha) in code.items()}


def _stored_layer_kept(ctx: _Context, out: Path | None, model: Any) -> bool:
    """A resume without --layer (nor fdl.toml's `layer`) of a store analysed at one layer of the model that is not
    this run's default goes on at the store's layer, with a note naming both (True; the default's own notes are then
    not said). Such a store is one an earlier fdl made at its default (the input of the last nn.Linear to run, which
    for a model whose outputs are computed from another head's is not theirs), or one a --layer now left out made: a
    resume continues the store's series; it was refused, and a resume at the new default would start another
    series in the same store. The note is said once the writer took the store (`_store_opened`): a store refused
    for another reason (another --top-k, another probe) was first said to go on. A store of several layers, or at a
    layer the model lacks, is left to the writer's errors, which name the differences."""
    if out is None or not ctx.options.resume or ctx.layer_names or len(ctx.layers) != 1 or not out.is_file():
        return False
    from fdl_cli.extract import resolve_layers
    from fdl_cli.store import StoreReader

    try:
        with StoreReader(out) as reader:
            stored = reader.provenance.get("layers")
    except FdlError:
        return False  # the writer says what is wrong with the store
    default = ctx.layers[0].label
    if not (isinstance(stored, list) and len(stored) == 1 and isinstance(stored[0], str) and stored[0] != default):
        return False
    label = stored[0]
    if not hasattr(model, "named_modules") or label.removesuffix(":input") not in dict(model.named_modules()):
        return False  # another model's layer, or a wrapper's name (the writer's fix says which)
    ctx.layers = resolve_layers(model, [label])
    ctx.store_notes.append(
        f"{out} was analysed at the layer {label}, and the default feature layer is {default} (the input of "
        "the nn.Linear whose output the model's outputs are, or are computed from, else of the last one to run): the "
        f"store goes on at {label}; --layer {label} --layer {default} adds it beside the stored layer, --overwrite "
        "or another --out analyses at it alone")
    return True


def _addition(
    ctx: _Context, refs: Sequence[CheckpointRef], out: Path, provenance: Mapping[str, Any], bad: Sequence[str]
) -> Any:
    """What this resume adds to the store (probes or layers beside its own, `adding.Addition`), refused where it
    cannot be done (`adding.check_addition`); None when it adds nothing. `bad`: the files discovery could not
    read (bad checkpoints): a stored checkpoint's among them fails as in any run, the others given the series."""
    if not ctx.options.resume or not out.is_file():
        return None
    from fdl_cli.adding import check_addition, stored_addition

    addition = stored_addition(out, provenance, _probe_infos(ctx))
    if addition is not None and ctx.options.redo:  # analysed whole again
        redo = ctx.options.redo
        addition = replace(addition, lacking={step: keys for step, keys in addition.lacking.items() if step not in redo},
                           unfinished={step: keys for step, keys in addition.unfinished.items() if step not in redo})
    if addition is not None:
        steps_now = {ref.step: str(ref.path) for ref in refs}
        unreadable = {}
        places = _stored_places(out) if bad else {}
        for step in addition.lacking:
            place = None if step in steps_now else places.get(step)
            if place is not None and any(place.names(path) for path in bad):
                unreadable[step] = place.recorded
        addition = replace(addition, unreadable=unreadable)
        check_addition(
            addition, out, steps_now={**steps_now, **unreadable}, drop=ctx.options.drop is not None,
            distributed=ctx.world is not None and ctx.world.distributed,
        )
    return addition


def _reference_not_found(
    out: Path, stored: int, refs: Sequence[CheckpointRef], sources: Sequence[str]
) -> StoreError:
    """The store's reference step is none of this run's checkpoints': "pass --reference N" led to a second
    error ("no checkpoint has that step"). Its file read at another step (a newer fdl reads a step key it
    did not, such as Megatron's `iteration` beside an `epoch`; another --step-regex) is named."""
    places = _stored_places(out)
    place = places.get(stored)
    recorded = place.recorded if place is not None else None
    now = next((ref for ref in refs if place is not None and place.names(ref.path)), None)
    got: str | None = None
    if now is not None:
        got = f"this run reads {now.path} as step {now.step} (from its {now.step_source})"
        fix = (f"pass the --step-regex that reads step {stored} from its name, if it holds it, or --overwrite (or "
               "another --out) to start afresh")
    elif place is not None and place.found() is not None:
        got = f"the store's step {stored} is {place.shown()}, which this run leaves out or reads at another step"
        fix = (f"select it at step {stored} (--glob, --step-regex), or --overwrite (or another --out) to start "
               "afresh")
    else:
        # A training job's rotation (a Trainer's save_total_limit, Lightning's save_top_k) deletes the reference
        # first: --overwrite alone would drop every stored checkpoint it deleted, and a copy of the file resumes
        # (its sha256 is what is checked, not its path)
        got = f"the store's step {stored} is {recorded}, which is gone" if recorded is not None else None
        # not those this run reads (at their step, wherever they are now), nor those at one of
        # the places their recorded path may be relative to
        found = {ref.step for ref in refs}
        gone = sum(step not in found and other.found() is None for step, other in places.items())
        # the sources as given, up to 3; else the first 2 and "...": the shell's `run/step_*.pt` listed the whole run
        shown = [*map(shlex.quote, sources[:2]), *(["..."] if len(sources) > 3 else map(shlex.quote, sources[2:]))]
        fix = (f"restore that checkpoint{place.looked() if place is not None else ''}, or give a copy of its file "
               "among the checkpoints (`fdl analyze "
               f"{' '.join(shown)} COPY ...`, a copy in another folder), to add to the store; "
               "--overwrite (or another --out) starts afresh from the files there now")
        if gone:
            fix += (f", without the {gone} stored checkpoints whose files are gone" if gone > 1
                    else ", without the stored checkpoint whose file is gone")
    return StoreError(
        f"{out} was analysed with step {stored} as the reference, which none of this run's checkpoints has",
        got=got,
        fix=fix,
    )


def _rediscover(
    ctx: _Context,
    known: list[CheckpointRef],
    stdin_text: str | None,
    stored: Mapping[int, str] | None = None,
    summary: AnalyzeSummary | None = None,
) -> list[CheckpointRef]:
    """For --watch: the checkpoints now present, ignoring files still being written, and those of
    `stored` (step -> sha256) among `known` whose file is gone. `stdin_text`: what `-` read at the start,
    whose paths are scanned again (a rolling last.pt given on stdin was never seen again)."""
    from fdl_cli.checkpoints import discover_checkpoints

    options = ctx.options
    try:
        discovery = discover_checkpoints(
            options.sources, glob=options.glob_pattern, step_regex=options.step_regex,
            step_offsets=options.step_offsets, stdin=_replayed(stdin_text),
            weights=options.weights, empty_ok=True, trust_pickle=options.trust_pickle,
            probes=_named_files(options, ctx.manifest), model_keys=ctx.model_keys,
        )
    except SameStepError as exc:
        now = time.time()
        if not all(_settled(path, options.poll_seconds, now, ctx.settle_looks) for path in exc.paths):
            return known  # a trainer rewriting Lightning's last.ckpt: the next poll sees it whole
        _warn_while_watching(ctx, exc)
        return known
    except FdlError as exc:
        _warn_while_watching(ctx, exc)
        return known
    ctx.watch_problem = None
    _note_new_skips(ctx, discovery.notes)
    found = discovery.checkpoints
    if summary is not None:
        _follow_renamed_failures(ctx, summary, [(ref.path, ref.step) for ref in found]
                                 + [(path, None) for path, _ in discovery.bad])
        _clear_failed_copies(ctx, summary, discovery.copies)
        _report_bad_while_watching(ctx, summary, discovery.bad, options.poll_seconds)
    # --steps / --every select among the checkpoints that appear too (the first poll's list was selected
    # by discovery; without this every later checkpoint was analysed): --steps keeps its steps, --every
    # every N-th in step order over all those found, the first included.
    if options.steps is not None:
        wanted = {int(step) for step in options.steps}
        found = [ref for ref in found if ref.step in wanted]
    # (path, step): a file analysed already. A known path at another step is a new checkpoint: a trainer
    # that rewrites one file (last.pt) at every save, which --watch analysed once and then compared each
    # later save with the reference only (its previous, of the same path, was taken for gone)
    known_paths = {(str(ref.path), ref.step) for ref in known}
    if options.every is not None:
        # Positions among every step seen so far, not among the files present now: a trainer's rotation
        # (keep the last K) deleting old files shifted them, and picked checkpoints --every had passed
        # over (the files were step 10, 20, 30 with 0 deleted: 10 and 30 were analysed under --every 2).
        ctx.seen_steps.update(ref.step for ref in (*known, *found))
        position = {step: i for i, step in enumerate(sorted(ctx.seen_steps))}
        found = [ref for ref in found
                 if position[ref.step] % options.every == 0 or (str(ref.path), ref.step) in known_paths]
    settled = []
    now = time.time()
    for ref in found:
        path = str(ref.path)
        changed = path in ctx.failed_signatures and _signature_of(path) not in ("", ctx.failed_signatures[path])
        if (path, ref.step) not in known_paths or changed:  # those analysed already keep their place in step order
            if not _settled(ref.path, options.poll_seconds, now, ctx.settle_looks):
                _note_future_time(ctx, ref.path, now)
                ctx.unsettled[path] = ref.step
                continue  # probably still being written (or gone): next poll
        ctx.unsettled.pop(path, None)
        failed_step = ctx.failed_steps.get(path)
        if changed and summary is not None and failed_step is not None and failed_step != ref.step:
            # A rolling last.pt's next save: the failure of the save before is its own, and stays one
            # (named by its step: the path is this checkpoint's now, which is tried)
            del ctx.failed_signatures[path], ctx.failed_steps[path]
            summary.failed[:] = [(f"{item[0]} (step {failed_step})" if item[0] == path else item[0], item[1])
                                 for item in summary.failed]
        elif changed and summary is not None:
            # It failed, and has changed since: it was read while the trainer was still writing it (a
            # pause longer than the settling time, or a file being written when --watch started).
            ctx.reporter.note(f"{ref.path} changed since it failed: analysing it again")
            _forget_failure(ctx, summary, path)
        settled.append(ref)
    # A stored checkpoint whose file the trainer deleted since (rotation: keep the last K), rewrote with a
    # later step (one rolling file) or is rewriting now keeps its place in step order: the next checkpoint
    # is compared with it (its series are still in memory), not with the one before it; without it a run
    # keeping one checkpoint compared each with the reference.
    stored = stored or {}
    _note_deleted_unread(ctx, found, stored)
    if summary is not None:
        _report_rewritten(ctx, summary, [ref for ref in settled if (str(ref.path), ref.step) in known_paths], stored)
    taken = {ref.step for ref in settled}
    kept = [ref for ref in known if ref.step in stored and ref.step not in taken]
    ctx.fileless = {ref.step for ref in kept}  # their files are another's now: never read again
    return sorted(settled + kept, key=lambda ref: ref.step)


def _manifest_signatures(options: AnalyzeOptions) -> dict[str, str]:
    """The signature (size and time, "" for none) of the fdl.toml of each folder whose fdl.toml is read."""
    from fdl_cli import checkpoints as ckpts

    paths = [folder / ckpts.MANIFEST_NAME for folder in _manifest_folders(options)]
    return {str(path): _signature_of(path) if _is(path, "file") else "" for path in paths}


def _manifest_digests(signatures: Mapping[str, str] | None) -> dict[str, str]:
    """The sha256 of the bytes of each fdl.toml of `signatures` that is there ("" for one that is not, or cannot
    be read: compared as a change)."""
    import hashlib

    digests = {}
    for path, signature in (signatures or {}).items():
        try:
            digests[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if signature else ""
        except OSError:
            digests[path] = ""
    return digests


#: why an fdl.toml is not read into a run under way, and how to apply it
_ONE_WAY = ("the checkpoints of one store are measured one way; to apply it, stop, and run fdl analyze again with "
            "--overwrite (or another --out)")


def _check_manifest_changes(ctx: _Context, base_dir: Path | None) -> None:
    """--watch: an fdl.toml written, changed or removed since the run read its options (once a written one has
    settled). Its options would change how the run is measured midway, so the run keeps its own; what the file
    would change is warned of, once a change (said in a note when it changes nothing). Looked at by size and
    time at each poll, read only once they moved."""
    if ctx.manifest_signatures is None:
        return
    options, before = ctx.options, ctx.manifest_signatures
    now_signatures = _manifest_signatures(options)
    moved = [path for path in dict.fromkeys([*before, *now_signatures])
             if now_signatures.get(path, "") != before.get(path, "")]
    now = time.time()
    if not moved or not all(_settled(path, options.poll_seconds, now, ctx.settle_looks)
                            for path in moved if now_signatures.get(path)):
        return  # unchanged, or being written: looked at again at the next poll
    ctx.manifest_signatures = now_signatures
    digests = _manifest_digests({path: now_signatures.get(path, "") for path in moved})
    moved = [path for path in moved if not digests[path] or digests[path] != ctx.manifest_digests.get(path)]
    ctx.manifest_digests.update(digests)
    if not moved:
        return  # written again with the bytes last read (its time moved): no change
    path = moved[0]
    kind = "written" if not before.get(path) else "removed" if not now_signatures.get(path) else "changed"
    said = {"written": f"{path} was written after this run started",
            "changed": f"{path} changed after this run started",
            "removed": f"{path} was removed after this run started"}[kind]
    kept = "the running watch keeps its settings until it is restarted"
    try:
        manifest, _ = _read_manifests(ctx.given_options or options, NullReporter(), note_unread=False)
        changes = _manifest_changes(ctx, manifest, base_dir)
    except FdlError as exc:
        ctx.reporter.warn(f"{said}, and is not read ({exc.message.splitlines()[0]})"
                          + (f"; {kept}" if kind != "written" else ""))
        return
    if not changes:
        ctx.reporter.note(f"{said}: " + ("the run uses none of its settings" if kind == "removed"
                                         else "it sets what the run uses already"))
    elif kind == "removed":
        ctx.reporter.warn(f"{said}: the running watch keeps the settings it read from it ("
                          + ", ".join(f"{key} = {used}" for key, _, used in changes)
                          + ") until it is restarted; started again without it, fdl analyze would not use them (put "
                          "the file back, or give them on the command line)")
    else:
        shown = ", ".join(f"{key} = {value} (this run: {used})" if value is not None else f"{key} unset (this run: "
                          f"{used})" for key, value, used in changes)
        ctx.reporter.warn(f"{said}, and is not read{' again' if kind == 'changed' else ''}: it sets {shown}, and "
                          + (f"{kept}, as " if kind == "changed" else "") + _ONE_WAY)


def _check_model_code_changes(ctx: _Context) -> None:
    """--watch: a file of the model's code (`_model_code_files`) edited or removed while the watch runs, which it
    said nothing of, the next run refused for it. The watch never imports that code again (each checkpoint runs
    through the model built at its start, a pickled model's classes as imported then), so it goes on as it was,
    its checkpoints recorded as that code's; the change is warned of once (a file that holds that code again, a
    note), with what the same command does run again. Looked at by size and time at each poll, hashed once they
    moved and settled."""
    if ctx.code_looks is None:
        ctx.code_looks = {file: _CodeLook(None, sha, sha) for file, sha in _model_code_files(ctx).items()}
    now = time.time()
    for file, look in ctx.code_looks.items():
        signature = _signature_of(file)
        if signature == look.signature or (
            signature and not _settled(file, ctx.options.poll_seconds, now, ctx.settle_looks)
        ):
            continue  # unchanged, or being written: looked at again at the next poll
        look.signature = signature
        source = _file_source(Path(file)) if signature else None
        digest = source[1] if source is not None else ""
        if digest == look.said:
            continue  # the bytes said last (its time moved alone)
        look.said = digest
        if digest == look.imported:
            ctx.reporter.note(f"the model code {file} is again the one this watch runs (sha256 {digest[:16]}…)")
            continue
        kept = "the watch goes on running the code it started with, which its checkpoints are recorded as"
        if not digest:
            ctx.reporter.warn(
                f"the model code {file} was removed (or cannot be read) while this watch runs: {kept}; "
                "put it back before running the same command again"
            )
            continue
        then = (
            "the same command (--accept-model-change) records the change as a further one: only if it leaves the "
            "numbers as they were, else restore the file"
            if ctx.options.accept_model_change
            else "the same command is refused for the change: restore the file, or add --accept-model-change if it "
            "leaves the numbers as they were"
        )
        ctx.reporter.warn(
            f"the model code {file} changed while this watch runs (sha256 {digest[:16]}… now, {look.imported[:16]}… "
            f"when it started): {kept}; run again, {then}, or re-analyse everything with --overwrite (or another --out)"
        )


@dataclass
class _CodeLook:
    """--watch: a file of the model's code as last looked at (`_check_model_code_changes`)."""

    signature: str | None  # its size and time ("" for none); None before the first look
    imported: str  # the sha256 of the code this run imported
    said: str  # the sha256 last said of ("" for a file removed), at first the imported one


def _model_code_files(ctx: _Context) -> dict[str, str]:
    """file -> sha256, as this run imported it, of each file of the model's code whose edit a resume refuses
    (`_check_reference_of_store`): the factory's, the --model spec's, the modules of their folder and of a pickled
    model's code (`_model_code`)."""
    sources = [ctx.model_source, ctx.spec_source, *(_model_code(ctx) or {}).values()]
    return {file: sha for file, sha in (source for source in sources if source is not None)}


def _manifest_changes(ctx: _Context, manifest: Any, base_dir: Path | None) -> list[tuple[str, str | None, str]]:
    """What the run would use otherwise, had it started with `manifest` (None: no fdl.toml) in place of the one
    it read (the command line's options win, as ever): (key, the value in words, or None where the file would
    leave it unset, the run's value in words) of each."""
    given = ctx.given_options or ctx.options
    used_manifest = ctx.manifest
    changes: list[tuple[str, str | None, str]] = []

    def words(value: Any) -> str | None:
        return None if value in (None, [], {}) else repr(value)

    model, used_model = getattr(manifest, "model", None), getattr(used_manifest, "model", None)
    if not given.model_spec and model != used_model:
        changes.append(("model", words(model), words(used_model) or "the checkpoints' own"))
    if not _given(given, "model_kwargs"):
        kwargs = {} if manifest is None else _manifest_kwargs(given.model_spec, manifest, base_dir, NullReporter())
        if kwargs != ctx.model_kwargs:
            changes.append(("model_kwargs", words(kwargs), str(ctx.model_kwargs)))
    probe, used_probe = list(getattr(manifest, "probe", ())), list(getattr(used_manifest, "probe", ()))
    if not given.probe_specs and probe != used_probe:
        changes.append(("probe", words(probe), str(used_probe)))
    layer, used_layer = list(getattr(manifest, "layer", ())), list(getattr(used_manifest, "layer", ()))
    if not given.layers and layer != used_layer and layer != [spec.label for spec in ctx.layers]:
        changes.append(("layer", words(layer), words(used_layer) or "the default layer"))
    would = _settled_options(given, manifest, NullReporter())
    for key, field_name in [*((key, item[0]) for key, item in MANIFEST_OPTIONS.items()), ("weights", "weights")]:
        value, used = getattr(would, field_name), _used_value(ctx, field_name)
        if value != getattr(ctx.options, field_name) and (value is None or value != used):
            changes.append((key, words(value), "not set" if used is None else repr(used)))
    return changes


def _used_value(ctx: _Context, field_name: str) -> Any:
    """The value of an option the run measures with: the reference step and overlap_k it settled on where the
    command line left them unset (None: the first checkpoint; the number of outputs), which an fdl.toml
    naming the same does not change."""
    if field_name == "reference_step":
        return ctx.reference_step
    if field_name == "overlap_k" and ctx.n_outputs:
        return overlap_k(ctx.options, ctx.n_outputs)
    return getattr(ctx.options, field_name)


def _report_rewritten(
    ctx: _Context, summary: AnalyzeSummary, analysed: Sequence[CheckpointRef], stored: Mapping[int, str]
) -> None:
    """A file --watch analysed that now holds other weights at the same step (a training job restarted
    into the folder, rewriting step_0, step_10, ...): its stored numbers are the old file's, and a resume
    refuses such a file; the watch ignored it without a word and went on comparing the new run's later
    checkpoints with the old one's. Reported once for each new content, and listed in the summary
    (exit 1); a file only touched (same sha256) is not."""
    from fdl_cli.checkpoints import sha256_file

    now = time.time()
    for ref in analysed:
        key = (str(ref.path), ref.step)
        recorded = ctx.read_signatures.get(key)
        signature = _signature_of(ref.path)
        if not recorded or signature in ("", recorded) or ref.step not in stored:
            continue
        if not _settled(ref.path, ctx.options.poll_seconds, now, ctx.settle_looks):
            continue  # being written: looked at again at the next poll
        try:
            sha = sha256_file(ref.path)
        except (OSError, FdlError):
            continue
        ctx.read_signatures[key] = signature
        if sha == stored[ref.step]:
            continue
        reason = (f"changed since it was analysed at step {ref.step}: the store keeps the numbers of the file it "
                  "replaced (a training job restarted into this folder?); stop and run again with --overwrite, "
                  "or another --out, to analyse the new files")
        ctx.reporter.error(f"{ref.path}: {reason}")
        summary.failed.append((f"{ref.path} (step {ref.step})", reason))


def _inode_of(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the file or folder at `path`, which a rename keeps; None when it cannot be looked at."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _remember_failed_files(ctx: _Context, paths: Sequence[Path | str]) -> None:
    """Under --watch, the identity of each file that failed (`ctx.failed_files`, `_follow_renamed_failures`)."""
    if not ctx.options.watch:
        return
    for path in paths:
        identity = _inode_of(path)
        if identity is not None:
            ctx.failed_files[str(path)] = identity


def _follow_renamed_failures(
    ctx: _Context, summary: AnalyzeSummary, present: Sequence[tuple[Path, int | None]]
) -> None:
    """--watch: a file that failed and is gone, whose file is now among the checkpoints found under another name
    (`present`: path, and step where known), of the same step where both are known: a trainer that saves to a
    temporary name with a checkpoint suffix and renames it when done, read while it paused mid-write. Its
    failure stayed among the summary's, though the file was analysed under its final name; it goes, with a
    note. A failed file deleted (not renamed) stays failed."""
    from fdl_cli.checkpoints import _name_step

    if not ctx.failed_files:
        return
    by_identity = {}
    for path, step in present:
        identity = _inode_of(path)
        if identity is not None:
            by_identity[identity] = (path, step if step is not None else _name_step(Path(path)))
    listed = {item[0] for item in summary.failed}
    for failed, identity in list(ctx.failed_files.items()):
        if failed not in listed:
            del ctx.failed_files[failed]  # analysed since (it was read again once it changed)
            continue
        if os.path.lexists(failed):
            continue
        del ctx.failed_files[failed]  # gone: renamed now or never
        renamed = by_identity.get(identity)
        failed_step = ctx.failed_steps.get(failed, _name_step(Path(failed)))
        if renamed is None or None not in (failed_step, renamed[1]) and failed_step != renamed[1]:
            continue  # deleted; or another file, which took the deleted one's inode
        _forget_failure(ctx, summary, failed)
        ctx.reporter.note(f"{failed}, which failed, was renamed to {renamed[0]}: analysed under that name")


def _note_deleted_unread(ctx: _Context, found: Sequence[CheckpointRef], stored: Mapping[int, str]) -> None:
    """--watch: the checkpoints a poll found still being written that are gone now, unread, with no other file
    of their step found or stored (a rename keeps the step): a trainer's rotation that deletes a checkpoint
    sooner after writing it than the settling time (`_settled`). They were never analysed, without a word; one
    note a poll names them."""
    present = {str(ref.path) for ref in found}
    steps = {ref.step for ref in found} | set(stored)
    gone = [(path, step) for path, step in ctx.unsettled.items() if path not in present and not os.path.lexists(path)]
    for path, _ in gone:
        del ctx.unsettled[path]
    missed = [f"{path} (step {step})" for path, step in gone if step not in steps]
    if missed:
        settle = max(1.0, ctx.options.poll_seconds / 2)
        ctx.reporter.note(
            f"deleted before it was analysed, {len(missed)} checkpoint{'s' if len(missed) != 1 else ''} the training "
            f"job removed within {settle:g} s of writing {'them' if len(missed) != 1 else 'it'} (--watch reads a file "
            "once it has not changed for half a --poll, at least 1 s): " + ", ".join(missed))


def _forget_failure(ctx: _Context, summary: AnalyzeSummary, path: str) -> None:
    """--watch: the failure of the file at `path` is over (it is read again, renamed, or a copy now)."""
    summary.failed[:] = [item for item in summary.failed if item[0] != path]
    for known in (ctx.failed_signatures, ctx.failed_steps, ctx.failed_files):
        known.pop(path, None)


def _clear_failed_copies(
    ctx: _Context, summary: AnalyzeSummary, copies: Sequence[tuple[CheckpointRef, CheckpointRef]]
) -> None:
    """--watch: a file that failed and now reads whole as a copy of another checkpoint of its step, which
    discovery leaves out (`copies`: dropped, kept): Lightning's `last.ckpt`, read while the trainer paused in
    writing it. It was tried again only as a checkpoint to analyse, so its failure stayed for the rest of the
    watch; it goes, with a note."""
    listed = {item[0] for item in summary.failed}
    for dropped, kept in copies:
        path = str(dropped.path)
        if path not in listed:
            continue
        _forget_failure(ctx, summary, path)
        ctx.reporter.note(f"{path} changed since it failed, and now holds the same weights and step ({dropped.step}) as "
                          f"{kept.path}: left out as a copy, no longer failed")


#: a discovery note of one file: "skipped NAME: why"
_SKIPPED_NOTE = re.compile(r"skipped (.+?): ")
#: one of a file that holds no model weights by its name or suffix (`_note_skipped` says them in one line)
_NO_WEIGHTS_NOTE = re.compile(r"skipped (.+?): (training state \(.+\), not model weights|optimizer state, no model "
                              r"weights|not a checkpoint suffix \(.+\))")


def _note_key(note: str) -> str:
    """What makes two discovery notes one under --watch: a file's skip, "skipped NAME", whatever it says of it
    (Lightning's last.ckpt, a copy of each new step's checkpoint, is said once), its name's numbers aside where
    it holds no model weights (optim_step_N.pt, metrics_N.json saved beside each checkpoint: a note at each save
    else), or is another framework's or no checkpoint yet (`foreign`: a step_N.pt.lock left by each save); else
    the text, numbers aside (the count of accelerate's save_state() folders grows with each)."""
    no_weights = _NO_WEIGHTS_NOTE.fullmatch(note)
    if no_weights is not None:
        return "skipped " + re.sub(r"\d+", "#", no_weights.group(1)) + ": " + no_weights.group(2)
    alien = foreign.in_note(note)  # step_20.safetensors.lock, ckpt-20.index: named for what they are, said once
    if alien is not None:
        return "skipped " + re.sub(r"\d+", "#", alien[0]) + ": " + alien[1].what
    match = _SKIPPED_NOTE.match(note)
    return match.group(0) if match is not None else re.sub(r"\d+", "#", note)


def _note_new_skips(ctx: _Context, notes: Sequence[str]) -> None:
    """--watch: the notes of a poll's discovery not said yet (a file skipped: an optimizer.pt, a metrics file, a
    log, a Trainer's tmp-checkpoint-N/ left behind), said as a plain analyze says them (`_note_skipped`), once each
    (`_note_key`), where a file written again at every save was never said. A folder skipped is said once a later
    poll finds it still there, settled (`_settled`): the tmp-checkpoint-N/ of a save in progress, renamed once
    complete, is not; one left behind is. The store's own files (an --out beside the checkpoints) are not said."""
    from fdl_cli.checkpoints import expand_sources
    from fdl_cli.store import is_store_file

    options = ctx.options
    sources = expand_sources(options.sources)  # a pattern as the paths it matches now
    fresh, now, pending = [], time.time(), set()
    for note in notes:
        key = _note_key(note)
        if key in ctx.said_notes:
            continue
        path = _skipped_path(sources, note)
        if path is not None and ctx.store is not None and is_store_file(ctx.store, path):
            ctx.said_notes.add(key)
            continue
        if path is not None and path.is_dir() and (
                key not in ctx.unsaid_folders or not _settled(path, options.poll_seconds, now, ctx.settle_looks)):
            pending.add(key)
            continue
        ctx.said_notes.add(key)
        fresh.append(note)
    ctx.unsaid_folders = pending
    _note_skipped(fresh, ctx.manifests, ctx.reporter, _model_file(options), sources)


def _skipped_path(sources: Sequence[str], note: str) -> Path | None:
    """The file or folder a "skipped NAME: ..." note of a discovery of `sources` names (a source itself, or an
    entry of a folder given); None when it names none of them (a path read from stdin, another note)."""
    match = _SKIPPED_NOTE.match(note)
    if match is None:
        return None
    for source in sources:
        if source == "-":
            continue
        for path in (Path(source), Path(source) / match.group(1)):
            if path.name == match.group(1) and os.path.lexists(path):
                return path
    return None


def _warn_while_watching(ctx: _Context, exc: FdlError) -> None:
    """A poll of --watch that found no usable list (the folder deleted, two files with one step): said
    once, with its fix, not at every poll while it lasts; said again when it comes back after a poll
    that went through."""
    if exc.message == ctx.watch_problem:
        return
    ctx.watch_problem = exc.message
    lines = exc.message.splitlines()
    ctx.reporter.warn("\n".join([f"watching: {lines[0]}; no new checkpoint is analysed until it is resolved",
                                 *lines[1:]]))


def _report_bad_while_watching(
    ctx: _Context, summary: AnalyzeSummary, bad: Sequence[tuple[Path, str]], poll_seconds: float
) -> None:
    """A file that appears during --watch and cannot be read (corrupt, truncated, not a checkpoint) is
    reported once it has settled, as at the start, and listed in the summary (exit 1); it was dropped
    without a word. A file being written is left for the next poll; one reported is tried again once
    its file changes (`ctx.failed_signatures`)."""
    for path, reason in _newly_settled(bad, {path for path, _ in summary.failed}, poll_seconds, ctx.settle_looks):
        ctx.reporter.error(f"{path}: {reason}")
        summary.failed.append((str(path), reason))
        ctx.failed_signatures[str(path)] = _signature_of(path)
        _remember_failed_files(ctx, [path])


def _newly_settled(
    bad: Sequence[tuple[Path, str]], reported: Collection[str], poll_seconds: float, looks: SettleLooks
) -> list[tuple[Path, str]]:
    """The unreadable files of a --watch poll not reported yet whose writing has settled (`_settled`);
    one still being written (or gone) is left for the next poll."""
    now = time.time()
    return [(path, reason) for path, reason in bad
            if str(path) not in reported and _settled(path, poll_seconds, now, looks)]


def _settled(path: Path | str, poll_seconds: float, now: float, looks: SettleLooks) -> bool:
    """--watch: whether `path` was last modified longer ago than the settling time (half a poll, at
    least 1 s), so that a trainer still writing it has probably finished; False when it cannot be
    looked at. A folder (a Trainer's checkpoint-N) by its newest entry too: its own time moves when a
    file is added, not while its model.safetensors is being written.

    A time in the future (a file server's clock ahead of this machine's, NFS) tells nothing of its age: such
    a file waited, unread and without a word, for as long as the clocks differ. It is settled once `looks`
    (path -> its size and time, and when this machine first saw them so) holds it unchanged for the settling
    time: each wait keeps its own."""
    wait = max(1.0, poll_seconds / 2)
    try:
        stat = os.stat(path)
        latest, size = stat.st_mtime, stat.st_size
        if S_ISDIR(stat.st_mode):
            with os.scandir(path) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):  # removed meanwhile: the folder's own time moved
                        inner = entry.stat()
                        latest, size = max(latest, inner.st_mtime), size + inner.st_size
    except OSError:
        return False
    if latest <= now:
        return now - latest >= wait
    seen = looks.get(str(path))
    if seen is None or seen[0] != (size, latest):
        looks[str(path)] = ((size, latest), now)
        return False
    return now - seen[1] >= wait


def _note_future_time(ctx: _Context, path: Path | str, now: float) -> None:
    """--watch: say once a run that a file a poll left unread was modified in the future (`_settled`)."""
    if ctx.noted_future:
        return
    with contextlib.suppress(OSError):
        ahead = os.stat(path).st_mtime - now
        if ahead > 0:
            ctx.noted_future = True
            shown = (f"{ahead:.0f} s" if ahead < 90 else f"{ahead / 60:.0f} min" if ahead < 5400
                     else f"{ahead / 3600:.0f} h")
            ctx.reporter.note(f"{path} was modified {shown} in the future, by this machine's clock (a file server's "
                              "clock ahead of it?): --watch reads such a file once it has not changed for "
                              f"{max(1.0, ctx.options.poll_seconds / 2):g} s")


def _run_refs(
    ctx: _Context,
    refs: list[CheckpointRef],
    writer: Any,
    summary: AnalyzeSummary,
    announce: Announcer,
    reference: CheckpointRef,
    preloaded: tuple[LoadedCheckpoint, str] | None,
    out: Path,
    walk: _WalkBack | None = None,
) -> None:
    from fdl_cli.checkpoints import weights_gone

    options, reporter = ctx.options, ctx.reporter
    completed = writer.completed()
    if preloaded is not None and completed.get(reference.step) not in (None, "", preloaded[1]):
        raise _changed_file(
            f"the reference checkpoint (step {reference.step}, {reference.path})", preloaded[1],
            completed[reference.step], f"in {out}",
        )
    failed_paths = {path for path, _ in summary.failed}
    # --watch: a stored checkpoint whose added series failed is tried again once its file changed (`_rediscover`);
    # till then it stays the "previous" of its stored series
    ctx.failed_series = {step: failure for step, failure in ctx.failed_series.items() if failure[0] in failed_paths}
    # grows as checkpoints fail: "previous" skips over them
    ctx.failed_paths = failed_paths - {path for path, _ in ctx.failed_series.values()}
    # stored checkpoints lacking series this run adds to the store (adding.py): only those are analysed there
    lacking = {step: keys for step, keys in _lacking(writer).items() if step not in ctx.redo}
    summary.lacking.update(lacking)
    # --redo: stored checkpoints analysed again (`_check_redo`: stored, of this run, not the reference)
    todo = [
        ref for ref in refs
        if (ref.step not in completed or ref.step in ctx.redo or ref.step in lacking) and str(ref.path) not in failed_paths
    ]
    for ref in refs:
        if ref.step in completed and ref.step not in summary.already and ref.step not in summary.analysed \
                and ref.step not in ctx.redo and ref.step not in lacking and ref.step not in summary.added:
            summary.already.append(ref.step)
    steps_in_order = [r.step for r in refs]
    ctx.refs_by_step = {r.step: r for r in refs}
    if not todo:
        from fdl_cli.store import StoreWriter

        if isinstance(writer, StoreWriter):  # checkpoints taken in, or a run that stopped mid-refresh
            _refresh_successors(ctx, writer, out, steps_in_order, announce)
        return
    from fdl_cli.store import StoreWriter

    # one process (torchrun: rank 0 checks for every rank beforehand). Not while an --overwrite store holds nothing
    # yet: the file at `out` is the one its first commit replaces, and none of its checkpoints is read back (every
    # step of this run is analysed again); reading its records only to find that took 30 - 60 ms a run.
    if isinstance(writer, StoreWriter) and (options.resume or completed):
        _check_stored_to_read(ctx, out, refs, {ref.step for ref in todo}, reference)
    todo.sort(key=lambda r: r.step)
    ctx.tick = _ticking(writer, announce)
    reporter.start_run(len(todo))
    # The reference is analysed first (every other checkpoint is compared with it) but stored in its
    # place in step order, once its predecessor is known (its cka_prev / overlap_prev).
    held: CheckpointEntry | None = None
    # Whether the reference was analysed ahead of its turn, on every rank (under --shard-probe a rank
    # other than 0 holds no entry, but must not contribute its slice a second time at the reference's
    # place, where rank 0 only completes its held entry: that left both ranks waiting for ever).
    reference_ahead = False
    reference_todo = any(r.step == reference.step for r in todo)
    if reference_todo and todo[0].step != reference.step:
        reporter.start_checkpoint(0, len(todo), f"step {reference.step} (reference)")
        try:
            with _memory_explained(reference):
                loaded_reference, reference_sha = preloaded or _load(reference, options, ctx.hashed.get(str(reference.path)))
                held = _analyze_one(ctx, reference, loaded_reference, reference_sha, steps_in_order, reference, out,
                                    wanted=_wanted(lacking, completed, reference, reference_sha, out))
        except (CheckpointError, NumericalError) as exc:
            if reference.step in lacking:
                exc = _adding_failed(exc, reference, lacking[reference.step])
            _failed(ctx, summary, reference, exc)
            raise _fatal(exc, reference, is_reference=True) from None
        preloaded = None
        reference_ahead = True
    # The loader thread must run no torch operation (reading files, hashing and numpy only): a torch
    # operation there gives it an OpenMP team of its own, and libgomp then puts the main thread's
    # workers to sleep between operations for the rest of the run (~30 % slower on 2 cores; see
    # checkpoints._all_finite and docs/benchmarks.md).
    with _Loader() as pool:
        pending: dict[int, Future[tuple[LoadedCheckpoint, str]]] = {}

        def fetch(index: int) -> None:
            if index < len(todo) and index not in pending:
                if todo[index].step == reference.step and (reference_ahead or preloaded is not None):
                    done: Future[tuple[LoadedCheckpoint, str]] = Future()
                    done.set_result(preloaded if preloaded is not None else (None, ""))  # type: ignore[arg-type]
                    pending[index] = done
                else:
                    pending[index] = pool.submit(_load, todo[index], options, ctx.hashed.get(str(todo[index].path)))

        fetch(0)
        for index, ref in enumerate(todo):
            signals.check()
            fetch(index + 1)  # load the next checkpoint while this one computes
            reporter.start_checkpoint(index, len(todo), f"step {ref.step} ({Path(ref.path).name})")
            entry: CheckpointEntry | None = None  # analysed, not yet handed to the writer
            try:
                with _memory_explained(ref), signals.analysing(f"step {ref.step} ({ref.path})"):
                    loaded, sha = _loaded(pending.pop(index), ctx.tick)
                    if ref.step == reference.step and reference_ahead:
                        entry = _with_previous(ctx, held, steps_in_order, out) if held is not None else None
                    else:
                        entry = _analyze_one(ctx, ref, loaded, sha, steps_in_order, reference, out,
                                             wanted=_wanted(lacking, completed, ref, sha, out))
                if ref.step not in ctx.redo:
                    # handed to the writer, and what it made durable queued: both or neither (a second signal goes
                    # through: rank 0's writer prints, `sharding._StoringWriter`)
                    with signals.deferred(second_through=True):
                        handed, entry = entry, None
                        announce.queue(writer.add(handed))
            except (CheckpointError, NumericalError) as exc:
                # Deleted (a training job's rotation; a folder's half deleted) after discovery found it, in a watch
                # or a plain run of one process (a torchrun rank's block compares across ranks: an error there)
                if ref.step != reference.step and ref.step not in lacking and ref.step not in ctx.redo \
                        and not (ctx.world is not None and ctx.world.distributed) and weights_gone(ref.path) \
                        and not _source_folder_gone(ctx, ref):
                    _gone_before_read(ctx, ref)
                    continue
                # not a probe's file or a wrapper's keys: the model, of --model or an fdl.toml
                if isinstance(exc, WeightsMismatchError) and ref.step != reference.step \
                        and (exc.fix or "").startswith(("wrong --model", "wrong model")):
                    exc = _another_model(exc, reference, ctx)
                if ref.step in lacking:  # a stored checkpoint: the "previous" of its stored series all the same
                    exc = _adding_failed(exc, ref, lacking[ref.step])
                _failed(ctx, summary, ref, exc, lacking.get(ref.step))
                recorded = (ref.step != reference.step and ref.step not in lacking and ref.step not in ctx.redo
                            and _refused(summary, writer, ref, exc))
                if ref.step in ctx.redo:
                    raise _redo_failed(exc, ref) from None
                if options.strict or ref.step == reference.step:
                    if recorded:
                        # --strict stops at a refusal: committed before the error holds back what a commit alone
                        # records (a resume with nothing else to commit recorded none, a fresh run did)
                        announce.take(writer.flush)
                    raise _fatal(exc, ref, is_reference=ref.step == reference.step) from None
                reporter.error(_named(ref.path, exc.message))
                if walk is not None and walk.chain and ref.step == walk.chain[0].step:
                    _walk_back(ctx, walk, summary, steps_in_order, reference, out)
                continue
            except KeyboardInterrupt:
                # Analysed as a Ctrl-C or SIGTERM came, before it was handed to the writer (the blocks around the
                # analysis ending): stored all the same, as it would have been a moment later; the whole analysis was
                # lost. Not a redone one, which one commit holds with its successors or not at all.
                if entry is not None and ref.step not in ctx.redo:
                    with contextlib.suppress(FdlError):  # an earlier commit's error: said by the way out's flush
                        announce.take(functools.partial(writer.add, entry))
                raise
            finally:
                reporter.end_checkpoint()
            if ref.step in ctx.redo and entry is not None:
                # one commit holds the redone checkpoint and its successors compared with it, or none of
                # them: never the new numbers beside comparisons with the old ones
                successors = _redo_successors(ctx, ref.step, out)
                announce.take(functools.partial(writer.add, entry, *successors))
            announce(())  # the records of what the writer made durable (after the progress line's end, as before)
    signals.check()
    if ctx.world is None or not ctx.world.distributed:  # a torchrun job's rank 0 says them for every rank's steps
        _warn_constant_outputs(ctx)
        _warn_constant_anchors(ctx)
        _warn_statistics_moved(ctx)
    from fdl_cli.store import StoreWriter

    if isinstance(writer, StoreWriter):
        _refresh_successors(ctx, writer, out, steps_in_order, announce)


def _steps_said(steps: Iterable[int]) -> str:
    """"step 5" or "steps 5, 10, ..." (the first 12, then how many in all), for a warning said once per batch."""
    shown = sorted(set(steps))
    listed = ", ".join(map(str, shown[:12])) + (f", ... ({len(shown)} in all)" if len(shown) > 12 else "")
    return f"step{'s' if len(shown) != 1 else ''} {listed}"


def _warn_constant_outputs(ctx: _Context) -> None:
    """One warning for each probe on which the model's outputs were constant (output_rank 0: a zero head, say)
    at checkpoints this batch analysed: D_LR is 1.0 there by its degenerate rule, not a measurement, and, where
    the outputs carry no energy at all (all 0; constant under --center), Π̂ is 0/0 (pi_hat_C null)."""
    for name, steps in ctx.constant_outputs.items():
        shown = sorted(steps)
        empty = [step for step in shown if steps[step]]
        where = ("" if len(empty) == len(shown) else
                 f" at step{'s' if len(empty) != 1 else ''} {first_few(empty, 12)}")
        ctx.reporter.warn(
            f"probe {name!r}: the model's outputs are constant over the probe (a zero or constant head?) at "
            f"{_steps_said(shown)}: they carry no energy about their mean, so D_LR is 1.0 "
            "there by its degenerate rule (output_rank 0), not a measurement of the features"
            + (f", and{where} Π̂ is 0/0 as well (the outputs "
               + ("centered by --center" if ctx.options.center else "all 0") + "): pi_hat_C and k90/k95/k99_utility "
               "are null, and the regime has no utility to count" if empty else "")
            + "; `fdl compare` leaves such steps out of its verdict of which run is richer (docs/measures.md)"
            + _zero_by_construction(ctx, shown, steps, ctx.varying_outputs.get(name, set()))
        )
    ctx.constant_outputs.clear()
    ctx.varying_outputs.clear()


def _zero_by_construction(ctx: _Context, shown: Sequence[int], empty: Mapping[int, bool], varying: set[int]) -> str:
    """The sentence that ends `_warn_constant_outputs`'s warning where the outputs are without energy at the
    reference alone and vary at a later checkpoint of the batch: what a model zero at its initialisation by
    construction gives (lazy training's f = α·(net − net₀)), which the warning's "a zero or constant head?"
    reads as a fault; "" otherwise (a torchrun job's rank 0 knows only its own varying steps: it may say none)."""
    reference = ctx.reference_step
    if list(shown) != [reference] or not empty[reference] or not varying:
        return ""
    return (f". They are so only at the reference (step {reference}), and not at the later checkpoints: a model built "
            "to output zero at initialisation (f = α·(net − net₀), the lazy-training parametrisation) gives this by "
            "construction, nothing to mend")


def _warn_constant_anchors(ctx: _Context) -> None:
    """One warning for each series whose features were constant over the anchor points (a dead layer) at
    checkpoints this batch analysed: CKA with them is 0/0, null, not a value that reads as a measurement."""
    for where, steps in ctx.constant_anchors.items():
        ctx.reporter.warn(
            f"{where}: the features are constant over the anchor points (a dead layer?) at "
            f"{_steps_said(steps)}: CKA with them is 0/0, so cka_init and "
            "cka_prev are null there and where a checkpoint is compared with them (docs/measures.md)"
        )
    ctx.constant_anchors.clear()


#: the buffers of BatchNorm (and InstanceNorm with track_running_stats) that eval mode reads
_RUNNING_STATISTICS = ("running_mean", "running_var")


def _buffers_of(model: Any, loaded: LoadedCheckpoint) -> dict[str, Any]:
    """A copy of the model's buffers, by name, but BatchNorm's `num_batches_tracked`: a count of training's
    batches, which eval mode does not read (its statistics, `running_mean` and `running_var`, are kept).
    **(choice)** Nor, when the model was built by its code and given the file's weights, its non-persistent buffers
    (`register_buffer(..., persistent=False)`): in no state_dict, they come from the model code, the same at every
    checkpoint, and differ only where the forward pass writes them (a cache, a monitor), which no checkpoint
    caused; copying them (a causal mask, a table of positions) would only hold memory on the device. A pickled
    module's are kept: its file holds them."""
    skipped = set() if loaded.module is not None else _non_persistent_buffers(model)
    return {name: value.detach().clone() for name, value in model.named_buffers()
            if name.rsplit(".", 1)[-1] != "num_batches_tracked" and name not in skipped}


def _non_persistent_buffers(model: Any) -> set[str]:
    """The names of `model`'s buffers registered with persistent=False (kept out of its state_dict)."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(module, "_non_persistent_buffers_set", ())}


def _same_tensor(value: Any, before: Any) -> bool:
    """Whether `value` is `before` (a tensor, or None), bit for bit."""
    import torch

    return (before is not None and value.shape == before.shape and value.dtype == before.dtype
            and value.device == before.device and bool(torch.equal(value, before)))


def _moved_parameters(parameters: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """The names of `parameters` whose values are not the reference's, bit for bit."""
    return [name for name, value in parameters.items() if not _same_tensor(value, reference.get(name))]


def _moved_buffers(ctx: _Context, model: Any, spec: Any, moved_parameters: list[str]) -> tuple[list[str], list[str]]:
    """When no parameter that feeds the layer `spec` differs from the reference's (none at all for a module's
    output; none outside the module for its input, a head trained alone): the modules whose BatchNorm running
    statistics differ from the reference's, and the other buffers that do (a pruning mask, a registered constant),
    of those read before the layer's features were taken; else ([], []). Only these can have moved the features,
    as a frozen backbone trained in train mode moves them. The buffers read are those `extract.buffers_read_before`
    saw (not a head's after the layer, nor a BatchNorm's inside the module whose input is taken, nor the model's
    own temperature on its logits; a module's statistics read by another's code, its own never run, are).
    **(choice)** Parameters keep the rule above, by name, not by the reads: a module's parameter may be read before
    its module runs (tied weights), so a head trained beside a module's output hides the case. **(choice)** Where
    the reads were not seen (a layer that is no module) every buffer but those of the module whose input is taken
    counts as read before."""
    own = spec.module + "." if spec.use_input else None
    if any(own is None or not name.startswith(own) for name in moved_parameters):
        return [], []
    before = ctx.ran_before.get(spec.label)
    buffers = dict(model.named_buffers())
    statistics: set[str] = set()
    others: list[str] = []
    for name, value in ctx.reference_buffers.items():
        holder, _, kind = name.rpartition(".")
        ran = (name in before) if before is not None else own is None or not name.startswith(own)
        now = buffers.get(name)
        if not ran or now is None or _same_tensor(now, value):
            continue
        if kind in _RUNNING_STATISTICS:
            statistics.add(holder)
        else:
            others.append(name)
    return sorted(statistics), sorted(others)


def _note_moved(ctx: _Context, where: str, steps: list[int], statistics: list[str], others: list[str]) -> None:
    """Add `steps` of the series `where`, and the modules and buffers that moved there, to what
    `_warn_statistics_moved` says once a batch (the names of all of its steps)."""
    said_steps, modules = ctx.statistics_moved.setdefault(where, ([], []))
    said_steps.extend(steps)
    modules[:] = sorted({*modules, *statistics})
    buffers = ctx.buffers_moved.setdefault(where, [])
    buffers[:] = sorted({*buffers, *others})


def _warn_statistics_moved(ctx: _Context) -> None:
    """One warning for each series whose features moved (MF or EF) at checkpoints this batch analysed though no
    parameter before its layer changed: the buffers run before it that did, BatchNorm running statistics and
    others, named as such; the run reads as moved, not coefficient, and the parameters say nothing of why."""
    eval_mode = ("fdl runs each checkpoint in eval mode with its own statistics (docs/usage.md), so the run reads as "
                 "moved, not coefficient. To keep a frozen backbone's features fixed, train it in eval mode "
                 "(backbone.eval() after model.train())")
    for where, (steps, modules) in ctx.statistics_moved.items():
        others = ctx.buffers_moved.get(where, [])
        said = (f"{where}: the features moved from the reference at {_steps_said(steps)} though no parameter before "
                "it changed: ")
        if not others:
            ctx.reporter.warn(
                said + f"only BatchNorm running statistics did ({first_names(modules, 4)}), which training in train "
                "mode updates even in a frozen backbone; " + eval_mode
            )
        elif not modules:
            ctx.reporter.warn(
                said + f"only buffers changed ({first_names(others, 4)}), which fdl reads as each checkpoint holds "
                "them, so the run reads as moved, not coefficient: a buffer the training changes (a pruning mask, a "
                "scale set by a schedule) moves the features as a weight would"
            )
        else:
            ctx.reporter.warn(
                said + f"only buffers did: BatchNorm running statistics ({first_names(modules, 4)}), which training "
                f"in train mode updates even in a frozen backbone, and other buffers ({first_names(others, 4)}), "
                "which fdl reads as each checkpoint holds them (a pruning mask, a scale set by a schedule); "
                + eval_mode + ", and see whether the other buffers should change"
            )
    ctx.statistics_moved.clear()
    ctx.buffers_moved.clear()


def _lacking(writer: Any) -> dict[int, frozenset[tuple[str, str]]]:
    """`StoreWriter.lacking`: the stored checkpoints that lack series this run adds to the store; none for a
    torchrun rank's writer (adding runs as one process: `adding.check_addition`)."""
    from fdl_cli.store import StoreWriter

    return writer.lacking() if isinstance(writer, StoreWriter) else {}


def _wanted(
    lacking: Mapping[int, frozenset[tuple[str, str]]], completed: Mapping[int, str], ref: CheckpointRef, sha: str,
    out: Path,
) -> frozenset[tuple[str, str]] | None:
    """The series to analyse at `ref`: those its stored checkpoint lacks, when the store holds it (its file
    unchanged: the other series stay as stored), else None (all of them)."""
    wanted = lacking.get(ref.step)
    if wanted is None:
        return None
    if sha and sha != completed.get(ref.step):  # replaced since `_check_stored_files` verified it
        raise _changed_file(f"the checkpoint at step {ref.step} ({ref.path})", sha, str(completed.get(ref.step)),
                            f"in {out}", step=ref.step)
    return wanted


@contextlib.contextmanager
def _memory_explained(ref: CheckpointRef) -> Iterator[None]:
    """An allocation that fails while `ref` is read or analysed (a larger checkpoint than the others,
    another program taking memory, the GPU shared) stops the run with what happened and what to do,
    not the allocator's traceback. What was stored before stays (the store is flushed on the way out)."""
    try:
        yield
    except FdlError:
        raise
    except Exception as exc:
        from fdl_cli import resources

        if not resources.out_of_memory(exc):
            raise
        raise resources.memory_error(exc, f"at step {ref.step} ({ref.path})") from None


def _another_model(exc: WeightsMismatchError, reference: CheckpointRef, ctx: _Context) -> WeightsMismatchError:
    """The weights of one checkpoint of the run do not fit the model that the reference's fit: a file of
    another model among the run's ("wrong --model?" sent the user to change the model that fits the others)."""
    toml, kwargs = _model_named_by(ctx), _kwargs_from(ctx)
    if toml is not None:
        check = (f"the model in {toml} and the --model-kwargs given on the command line" if kwargs == "command line"
                 else f"the model and model_kwargs in {toml}")
    else:
        check = ("--model / --model-kwargs" if kwargs != "manifest"
                 else f"--model and the model_kwargs in {ctx.manifest.path}")
    return WeightsMismatchError(
        exc.what, got=exc.got,
        fix=f"the reference checkpoint {reference.path} (step {reference.step}) fits this model: this file holds "
        "another model's weights (its sizes say which); leave it out (move it out of the folder, or select the run's "
        f"files with --glob or --steps), or, if it is the run's, check {check}",
    )


def _kwargs_from(ctx: _Context) -> str:
    """Where the model factory's keyword arguments came from (`_model_kwargs`), for its errors to name: "command
    line" (--model-kwargs given), "manifest" (an fdl.toml's model_kwargs) or "none"."""
    options = ctx.options
    if "model_kwargs" in options.given or bool(options.model_kwargs):
        return "command line"
    return "manifest" if ctx.manifest is not None and ctx.model_kwargs else "none"


def _manifest_model(exc: WeightsMismatchError, ctx: _Context) -> WeightsMismatchError:
    """The error of weights that do not fit a model of which an fdl.toml gave the model or its model_kwargs: it
    spoke of the model "built by --model" and sent the user to flags never passed (or to an fdl.toml's
    model_kwargs where --model-kwargs gave them); it now names where the model and its keyword arguments came
    from, the fdl.toml or the command line, and so where to fix them."""
    manifest, kwargs = ctx.manifest, _kwargs_from(ctx)
    toml, fix, what = manifest.path, exc.fix or "", exc.what
    there = "; fix it there, or give --model (and --model-kwargs), which overrides it"
    if _model_named_by(ctx) is not None:
        model = str(manifest.model)
        for folder in (f"{manifest.path.parent.absolute()}{os.sep}", f"{manifest.path.parent.resolve()}{os.sep}"):
            model = model[len(folder):] if model.startswith(folder) else model  # model.py:build, as the file says
        what = what.replace("the model built by --model", f"the model built by {toml}'s model ({model})")
        both = ((f"wrong model in {toml}, or wrong --model-kwargs given on the command line?",
                 "; fix the model there or the --model-kwargs, or give --model too, which overrides the fdl.toml's")
                if kwargs == "command line" else (f"wrong model or model_kwargs in {toml}?", there))
        rewrites = {"wrong --model or --model-kwargs?": both, "wrong --model?": (f"wrong model in {toml}?", there)}
    else:  # --model, with the fdl.toml's model_kwargs (they go with that same model: `_manifest_kwargs`)
        rewrites = {"wrong --model or --model-kwargs?": (f"wrong --model, or wrong model_kwargs in {toml}?",
                                                         "; fix them there, or pass --model-kwargs JSON, which "
                                                         "overrides them")}
    for flag, (named, how) in rewrites.items():
        if fix.startswith(flag):
            fix = f"{named}{fix[len(flag):]}{how}"
            break
    return WeightsMismatchError(what, got=exc.got, fix=fix)


def _model_named_by(ctx: _Context) -> Path | None:
    """The fdl.toml whose `model` the run builds (no --model given), for its errors to name; else None."""
    manifest = ctx.manifest
    return manifest.path if manifest is not None and manifest.model and not ctx.options.model_spec else None


def _failed(
    ctx: _Context, summary: AnalyzeSummary, ref: CheckpointRef, exc: FdlError,
    series: frozenset[tuple[str, str]] | None = None,
) -> None:
    """Record a checkpoint whose analysis failed: reported, and skipped over as "previous"; with `series`, a
    stored checkpoint at which those series, added to the store, failed: skipped over as their previous alone."""
    summary.failed.append((str(ref.path), exc.message))
    if series is None:
        ctx.failed_paths.add(str(ref.path))
    else:
        ctx.failed_series[ref.step] = (str(ref.path), series)
    ctx.failed_steps[str(ref.path)] = ref.step
    ctx.failed_signatures[str(ref.path)] = getattr(exc, "file_signature", "") or _signature_of(ref.path)
    _remember_failed_files(ctx, [ref.path])


def _refused(summary: AnalyzeSummary, writer: Any, ref: CheckpointRef, exc: FdlError) -> bool:
    """A checkpoint the store does not hold, refused for its values (NaN or Inf weights, a forward pass that
    overflowed: `FdlError.refused_as`): recorded in the summary and, by one process, in the store's `refused`
    list (`StoreWriter.refuse`), so the reading commands say which steps their verdict leaves out. Under torchrun
    the rank that owns it sends it to rank 0 with its failures (`sharding`), which records it. Not a stored
    checkpoint's (--redo, a series added to it: the store keeps it), nor the reference's (the run stops). Whether
    this process's writer was given it."""
    from fdl_cli.store import StoreWriter

    if not exc.refused_as:
        return False
    path = str(ref.path)
    what = exc.what.removeprefix(f"{path}: ")
    reason = " ".join((f"{what} ({exc.got})" if exc.got else what).split())  # one line
    item = (ref.step, path, exc.refused_as, reason)
    summary.refused[:] = [*[one for one in summary.refused if one[0] != ref.step], item]
    if isinstance(writer, StoreWriter):
        writer.refuse(*item)
        return True
    return False


def _source_folder_gone(ctx: _Context, ref: CheckpointRef) -> bool:
    """Whether a folder given on the command line that held `ref` is gone: not a training job's rotation, which
    deletes checkpoints (Trainer folders, one folder per step) inside the folder it saves to, never that folder;
    `rm -rf run/` once the reference was read skipped each checkpoint left as deleted, exit 0, where a run over
    the files left fails. Such a checkpoint stays a failure ("no longer exists")."""
    path = Path(ref.path)
    for source in ctx.options.sources:
        if source != "-" and Path(source) in path.parents:
            try:
                os.stat(source)  # a link to the folder, left dangling, too
            except FileNotFoundError:
                return True
            except OSError:
                pass
    return False


def _gone_before_read(ctx: _Context, ref: CheckpointRef) -> None:
    """A checkpoint discovery (or a --watch poll) found whose file was gone when it was read (the training job's
    rotation deleted it, or renamed it: the next poll finds it under its new name). It was an error ("no longer
    exists") listed among the failures, exit 1; a run over the files left would not see it. Skipped over as
    "previous", as a file that fails is, with a note."""
    ctx.failed_paths.add(str(ref.path))
    ctx.reporter.note(f"{ref.path} (step {ref.step}) is gone (deleted or renamed) before it was analysed: skipped, as a "
                      "run over the files left would skip it; the next checkpoint is compared with the one before it")


def _sha256_once(ctx: _Context, path: Path | str, signature: str = "") -> str:
    """`checkpoints.sha256_file` of `path`, or the sha256 this run found for it at the same signature (size
    and time, taken now where `signature` is ""), which is recorded for the next call."""
    from fdl_cli.checkpoints import sha256_file

    signature = signature or _signature_of(path)
    known = ctx.hashed.get(str(path))
    if known is not None and signature and known[0] == signature:
        return known[1]
    sha = sha256_file(Path(path))
    if signature:
        ctx.hashed[str(path)] = (signature, sha)
    return sha


def _signature_of(path: Path | str) -> str:
    """`checkpoints.file_signature`, or "" for a file that cannot be looked at."""
    from fdl_cli.checkpoints import file_signature

    try:
        return file_signature(Path(path))
    except (OSError, FdlError):
        return ""


@dataclass
class _WalkBack:
    """A torchrun rank's way back from its block (checkpoint sharding): the checkpoints before the
    block, nearest first, down to (not including) the first that is stored or the reference. The
    rank analyses the first with its block, as the block's first checkpoint is compared with it;
    when it fails, the rank analyses the next, and so on until one is analysed (`_walk_back`), so
    that the block is compared with the checkpoint one process would compare it with."""

    chain: list[CheckpointRef]
    #: told the checkpoint the block is compared with once the first failed: (step, sha256 of its
    #: file, None when this rank did not read it: stored, or the reference), or None for none
    moved: Callable[[tuple[int, str | None] | None], None]


def _walk_back(
    ctx: _Context,
    walk: _WalkBack,
    summary: AnalyzeSummary,
    steps_in_order: list[int],
    reference: CheckpointRef,
    out: Path,
) -> None:
    """The first of `walk.chain` failed: analyse the next ones in turn (their entries are another
    rank's, and discarded) until one is analysed; its series become `ctx.previous`."""
    for ref in walk.chain[1:]:
        signals.check()
        try:
            loaded, sha = _load(ref, ctx.options, ctx.hashed.get(str(ref.path)))
            _analyze_one(ctx, ref, loaded, sha, steps_in_order, reference, out)
        except (CheckpointError, NumericalError) as exc:
            _failed(ctx, summary, ref, exc)  # the rank that owns it reports it
            continue
        walk.moved((ref.step, sha))
        return
    position = steps_in_order.index(walk.chain[-1].step)
    walk.moved((steps_in_order[position - 1], None) if position > 0 else None)


def _redo_failed(exc: FdlError, ref: CheckpointRef) -> FdlError:
    """The error of a checkpoint --redo could not analyse again: the run stops there, its stored entry
    kept (the checkpoints redone before it are stored with their successors)."""
    import copy

    fatal = copy.copy(exc)
    fatal.what = _named(ref.path, exc.what) + (
        f" (--redo {ref.step}: the store keeps its earlier numbers for step {ref.step}; the run stops here)"
    )
    return fatal


def _adding_failed(exc: _Error, ref: CheckpointRef, series: Collection[tuple[str, str]]) -> _Error:
    """The error of a stored checkpoint that the series added to the store could not be analysed at, as a
    checkpoint whose file fails in any run: the others are given them (those series skip over it as "previous",
    its stored ones do not), its stored series are kept, the store's `pending_series` lists them, and the same
    command adds them there once the cause is mended (or --abandon-addition takes them out of the store)."""
    import copy

    failed = copy.copy(exc)
    shown = ", ".join(f"{probe}/{layer}" for probe, layer in sorted(series))
    failed.what = _named(ref.path, exc.what) + (
        f" (adding {shown} to the stored checkpoint at step {ref.step}: its stored series are kept, and the store "
        f"lists {shown} as pending until it holds {'it' if len(series) == 1 else 'them'} there too)"
    )
    failed.fix = (f"{exc.fix}; then " if exc.fix else "") + (
        f"run the same command again: it adds {shown} to step {ref.step} alone (a stored checkpoint cannot be left "
        "out of an addition); or give the addition up: the same command without the probes and layers it adds, "
        "with --abandon-addition, takes them out of the store"
    )
    return failed


def _fatal(exc: FdlError, ref: CheckpointRef, *, is_reference: bool) -> FdlError:
    """The error of a checkpoint that ends the run (the reference, or any under --strict), naming it:
    printed once, by the command line (it was printed as a per-checkpoint error first, then again
    without its path)."""
    import copy

    fatal = copy.copy(exc)
    fatal.what = _named(ref.path, exc.what) + (
        " (the reference checkpoint, which every other one is compared with: the run cannot go on)"
        if is_reference else " (--strict stops at the first bad checkpoint)"
    )
    return fatal


#: How often a wait for a checkpoint read looks at the store writer's buffer (and for a lost Ctrl-C).
_TICK_SECONDS = 0.5


class _Loader:
    """Loads checkpoints one at a time, in the order asked, in one daemon thread: a one-worker
    ThreadPoolExecutor, except that a read that hangs (a stalled network file system) does not keep
    fdl from ending after Ctrl-C (an executor's workers are joined when the interpreter exits).
    Leaving the `with` block cancels what has not started and does not wait for what has."""

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._queue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="fdl-load", daemon=True).start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()  # held by the caller only: a checkpoint is freed once used
        self._queue.put((future, function, args))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, function, args = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
            del future, function, args  # not even the last checkpoint is kept while the queue waits

    def __enter__(self) -> _Loader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        import queue

        while True:  # what has not started is not loaded
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        self._queue.put(None)


def _after_batch(ctx: _Context, done: int, total: int) -> None:
    ctx.reporter.batch(done, total)
    if ctx.tick is not None:
        ctx.tick()


def _loaded(future: Future[tuple[LoadedCheckpoint, str]], tick: Callable[[], None] | None) -> tuple[LoadedCheckpoint, str]:
    """The loader's result. While a read takes long (a hung network file system, a cold archive),
    the checkpoints already analysed are announced once committed (the writer's scheduler commits them
    as the throttle allows), instead of waiting for the next add."""
    # wait(), not result(timeout=...): a read that fails with the file system's own TimeoutError
    # (ETIMEDOUT) must be raised, not taken for the wait's timeout
    while not wait_for_futures([future], timeout=_TICK_SECONDS).done:
        signals.check()
        if tick is not None:
            tick()
    return future.result()


def _ticking(writer: Any, announce: Announcer) -> Callable[[], None] | None:
    tick = getattr(writer, "tick", None)
    if tick is None:
        return None

    def ticked() -> None:
        try:
            announce.take(tick)
        except StoreError:
            pass  # a failed background commit: its entries stay buffered, the next add or flush retries and says why

    return ticked


def _check_stored_to_read(
    ctx: _Context, out: Path, refs: Sequence[CheckpointRef], todo: Collection[int], reference: CheckpointRef
) -> None:
    """Before any checkpoint is analysed: the stored checkpoints whose arrays this run reads back must
    read intact (their Fletcher-32 checksums pass). Those are the reference (every checkpoint is compared
    with it), the nearest stored checkpoint before each one analysed now (its "previous": cka_prev,
    overlap_prev) and the nearest stored one after it (its successor, whose cka_prev / overlap_prev are
    then taken again against it: `_refresh_successors`, `_redo_successors`). A damaged one gave a null
    cka_prev first, stored, and then the successor refresh stopped the run naming `--redo`: refused now,
    before anything is computed, naming the steps to pass to --redo (which analyses them again first).
    Checkpoints whose series this process holds (the reference, the last analysed) are not read back."""
    from fdl_cli.store import StoreReader

    if not out.is_file():
        return
    steps_in_order = [ref.step for ref in refs]
    skipped = {ref.step for ref in refs if str(ref.path) in ctx.failed_paths} | set(ctx.fileless)
    try:
        with StoreReader(out) as reader:
            series = reader.whole_series()
            if not series:
                return
            records = {r["step"]: r for r in reader.records(probe=series[0][0], layer=series[0][1])}
            stored = set(records) - set(todo)
            reads: dict[int, tuple[str, int]] = {}  # stored step -> (its part, the step analysed now)
            analysed = [step for step in steps_in_order if step in todo]
            if analysed and reference.step in stored and not ctx.reference and analysed != [reference.step]:
                reads[reference.step] = ("reference", analysed[0])
            for index, step in enumerate(steps_in_order):
                if step not in todo:
                    continue
                for before in reversed(steps_in_order[:index]):
                    if before in todo or before in skipped:
                        continue
                    in_memory = (before == ctx.previous_step and ctx.previous) or (
                        before == ctx.reference_step and ctx.reference)
                    if before in stored and not in_memory:
                        reads.setdefault(before, ("previous", step))
                    break
                for after in steps_in_order[index + 1:]:
                    if after in todo or after in skipped:
                        continue
                    previous = records[after]["prev_step"] if after in stored else None
                    if after in stored and (previous is None or previous <= step):
                        reads.setdefault(after, ("successor", step))
                    break
            damaged: dict[int, StoreError] = {}
            for stored_step in sorted(reads):
                for probe, layer in sorted(reader.held(stored_step)):
                    try:
                        reader.arrays(stored_step, probe=probe, layer=layer)
                    except StoreError as exc:
                        damaged[stored_step] = exc
                        break
    except StoreError:
        return  # the writer opened it: a store it cannot read now is reported where it is read
    if not damaged:
        return
    first, error = next(iter(damaged.items()))
    part, step = reads[first]
    why = {
        "reference": f"the reference, which step {step} and every checkpoint analysed now are compared with "
                     "(cka_init, overlap_init)",
        "previous": f"step {step}, analysed now, is compared with it (cka_prev, overlap_prev)",
        "successor": f"it is compared with step {step}, analysed now, once that is stored (its cka_prev, "
                     "overlap_prev are taken again)",
    }[part]
    others = [other for other in damaged if other != first]
    more = f" (and step{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}, read back as well)" if others else ""
    steps_now = {ref.step for ref in refs}
    redoable = [damaged_step for damaged_step in damaged
                if damaged_step != ctx.reference_step and damaged_step in steps_now]
    one = len(redoable) == 1
    if len(redoable) == len(damaged):
        listed = ",".join(map(str, sorted({*ctx.redo, *redoable})))
        fix = (f"run the same command with --redo {listed}: it analyses {'that checkpoint' if one else 'those checkpoints'} "
               f"again from {'its file' if one else 'their files'} first, then the others; or restore {out} from a "
               f"backup, or {_OVERWRITE_FIX}")
    else:
        fix = f"restore {out} from a backup, or {_OVERWRITE_FIX}"
        if redoable:
            fix += f" (--redo {','.join(map(str, sorted(redoable)))} mends {'that one' if one else 'those'} only)"
    raise StoreError(
        f"{error.what}, which this run reads back: {why}{more}; nothing was analysed",
        got=error.got,
        fix=fix,
    )


def _previous_step(
    ctx: _Context, step: int, steps_in_order: list[int], key: tuple[str, str] | None = None
) -> int | None:
    """The checkpoint that `step` is compared with as "previous" (cka_prev, overlap_prev, prev_step):
    the nearest one before it in step order whose file did not fail in this run. Within a process
    checkpoints are analysed in step order, so every one before `step` has been tried when `step` is
    analysed (stored ones are not tried: they were analysed successfully); a file that fails is
    skipped over, as a deleted one is. So is a stored checkpoint --watch keeps in step order whose file
    no longer holds it (`ctx.fileless`), unless its series are at hand (the last analysed, the reference):
    its file cannot be read again. For the series `key`, also a stored checkpoint at which that series,
    added to the store, failed in this run (`ctx.failed_series`): it lacks it, as a checkpoint whose file
    fails lacks every series."""
    for position in range(steps_in_order.index(step) - 1, -1, -1):
        before = steps_in_order[position]
        if before in ctx.fileless:
            if before == ctx.previous_step or (before == ctx.reference_step and ctx.reference):
                return before
            continue
        if key is not None and key in ctx.failed_series.get(before, ("", frozenset()))[1]:
            continue
        ref = ctx.refs_by_step.get(before)
        if ref is None or str(ref.path) not in ctx.failed_paths:
            return before
    return None


def overlap_k(options: AnalyzeOptions, n_outputs: int) -> int:
    """The k of the eigenspace overlaps: --overlap-k, by default C, the number of outputs (SPEC §5)."""
    return options.overlap_k if options.overlap_k is not None else int(n_outputs)


def stored_columns(options: AnalyzeOptions, n_outputs: int) -> int:
    """Eigenvectors / eigenfunctions stored per series: --top-k, but never fewer than the overlaps' k
    (C by default), since the overlaps are taken from the stored eigenfunctions (bounded by the rank)."""
    return max(options.top_k, overlap_k(options, n_outputs))


def _record_overlap_k(ctx: _Context, scalars: dict[str, Any]) -> int:
    """The overlaps' k for a record's scalars (C, its number of outputs, unless --overlap-k)."""
    return overlap_k(ctx.options, int(scalars["n_outputs"]))


def _with_previous(
    ctx: _Context, held: CheckpointEntry, steps_in_order: list[int], out: Path
) -> CheckpointEntry:
    """The reference's entry, analysed ahead of its turn, completed with cka_prev / overlap_prev."""
    from dataclasses import replace as replace_entry

    previous = _previous_series(
        ctx, held.step, steps_in_order, out, [_series_key(item.probe, item.layer) for item in held.series])
    series = []
    for item in held.series:
        key = _series_key(item.probe, item.layer)
        mine, (previous_step, before) = ctx.reference[key], previous.get(key, (None, None))
        scalars = dict(item.scalars)
        scalars["cka_prev"] = _cka(mine, before) if before else None
        scalars["overlap_prev"] = _overlap(mine, before, _record_overlap_k(ctx, scalars)) if before else None
        scalars["prev_step"] = previous_step if before else None
        series.append(replace_entry(item, scalars=scalars))
    ctx.previous, ctx.previous_step = ctx.reference, held.step
    return replace_entry(held, series=tuple(series))


def _refresh_successors(
    ctx: _Context,
    writer: Any,
    out: Path,
    steps_in_order: list[int],
    announce: Announcer,
) -> None:
    """A checkpoint stored after the one its cka_prev / overlap_prev compare with becomes its stored
    successor's "previous": recompute those successors' cka_prev / overlap_prev (an anchor pass of
    each side) and store them again, so a store filled in several runs (or by an interrupted one,
    whose checkpoints were committed in another order) holds the numbers of one run over all its
    checkpoints. A stored successor is refreshed when its previous checkpoint in this run's step
    order (`_previous_step`: the nearest before it whose file did not fail in this run; by now every
    checkpoint of the run was tried) is stored, and its prev_step is null, an earlier step, or a step
    between the two whose file failed in this run (a file that was good when the successor was
    analysed). A prev_step between the two that is not among this run's checkpoints names a
    checkpoint whose file is gone, and is kept. Each series on its own: one added to the store skips over a
    stored checkpoint at which it failed in this run (`ctx.failed_series`), as over one whose file failed, and
    is compared with a checkpoint once both hold it."""

    announce.take(writer.flush)
    failed = {step for step, ref in ctx.refs_by_step.items() if str(ref.path) in ctx.failed_paths}
    # each series' prev_step: a series added to the store was compared with the checkpoint before in this
    # run's order while the others of its checkpoint may still compare with an earlier one. From the writer's
    # memory where it wrote the whole store (a fresh one: reading it back was ~25 ms of a small run's ~210 ms)
    known = writer.committed_previous()
    if known is not None:
        compared, stored_sha, held = known
    else:
        compared, stored_sha, held = _read_previous(out)
    # a stored checkpoint at which series added to the store failed in this run is skipped over by those alone
    failed_for = {step: keys for step, (_, keys) in ctx.failed_series.items()}
    passed: list[int] = []  # the steps so far whose file did not fail (`_previous_step`, in one pass)
    pairs: list[tuple[int, int, frozenset[tuple[str, str]]]] = []
    for successor in steps_in_order:
        if successor in ctx.fileless:
            continue  # --watch: its file no longer holds it; its numbers are kept, and it is no one's previous
        by_before: dict[int, set[tuple[str, str]]] = {}
        for key in compared.get(successor, {}):
            before = next((step for step in reversed(passed) if key not in failed_for.get(step, ())), None)
            if before is not None and before in compared and key in held[before]:
                by_before.setdefault(before, set()).add(key)  # a series one of them lacks yet: once both hold it
        for before, keys in by_before.items():
            if any(previous is None or previous < before
                   or (previous > before and (previous in failed or key in failed_for.get(previous, ())))
                   for key, previous in compared[successor].items() if key in keys):
                pairs.append((before, successor, frozenset(keys)))
        if successor not in failed:
            passed.append(successor)
    if not pairs:
        return
    done: list[tuple[int, int]] = []
    try:
        _refresh_pairs(ctx, writer, out, pairs, stored_sha, announce, done)
    finally:  # also for a run stopped half-way: those added are committed as the writer closes
        _note_refreshed(ctx.reporter, done)
    announce.take(writer.flush)


def _read_previous(
    out: Path,
) -> tuple[dict[int, dict[tuple[str, str], Any]], dict[int, str], dict[int, frozenset[tuple[str, str]]]]:
    """`_refresh_successors`' view of the store at `out`, read back: step -> {series: its prev_step}, step ->
    its sha256, step -> the series it holds (`StoreWriter.committed_previous` has it from memory)."""
    from fdl_cli.store import StoreReader

    with StoreReader(out) as reader:
        compared: dict[int, dict[tuple[str, str], Any]] = {}
        stored_sha: dict[int, str] = {}
        for probe, layer in reader.series():
            for record in reader.records(probe=probe, layer=layer):
                compared.setdefault(record["step"], {})[(probe, layer)] = record["prev_step"]
                stored_sha[record["step"]] = record["sha256"]
        return compared, stored_sha, {step: reader.held(step) for step in compared}


def _note_refreshed(reporter: Reporter, pairs: Sequence[tuple[int, int]]) -> None:
    """One note for the successors refreshed: a resume after `--every 10` refreshes nearly every stored
    checkpoint, and said one a line that was 30 lines for a run of 300 checkpoints."""
    if len(pairs) == 1:
        before, successor = pairs[0]
        reporter.note(f"step {successor}: cka_prev / overlap_prev now compare with step {before}, stored in between")
    elif pairs:
        said = [f"step {successor} with step {before}" for before, successor in pairs]
        shown = ", ".join(said) if len(said) <= 4 else ", ".join(said[:3]) + ", …, " + said[-1]
        reporter.note(f"{len(pairs)} stored checkpoints: cka_prev / overlap_prev now compare with the checkpoint "
                      f"stored in between ({shown})")


def _refresh_pairs(
    ctx: _Context,
    writer: Any,
    out: Path,
    pairs: Sequence[tuple[int, int, frozenset[tuple[str, str]]]],
    stored_sha: Mapping[int, str],
    announce: Announcer,
    done: list[tuple[int, int]],
) -> None:
    """`_refresh_successors`' work: each (before, successor, its series compared with before) compared again and
    added; `done` the pairs added."""
    for before, successor, keys in pairs:
        if done and done[-1][1] == successor:
            # its other series compare with another checkpoint (one at which the rest failed): read back as stored
            announce.take(writer.flush)
        entry = _refreshed_entry(ctx, out, before, successor, stored_sha, keys)
        try:
            announce.take(functools.partial(writer.add, entry))
        finally:  # buffered even when add() raises (an earlier commit's error): committed, or retried
            done.append((before, successor))


def _refreshed_entry(
    ctx: _Context, out: Path, before: int, successor: int, stored_sha: Mapping[int, str],
    series_of: Collection[tuple[str, str]] | None = None,
) -> CheckpointEntry:
    """The stored checkpoint `successor` with its cka_prev / overlap_prev (of its `series_of`, by default every
    one) taken again against the stored checkpoint `before` (an anchor pass of each, from their files, which must
    be the ones stored)."""
    from fdl_cli.store import CheckpointEntry as Entry
    from fdl_cli.store import StoreReader

    ref = ctx.refs_by_step[successor]
    with _memory_explained(ref), StoreReader(out) as reader:
        before_ref = ctx.refs_by_step[before]
        before_loaded, before_sha = _load(before_ref, ctx.options, ctx.hashed.get(str(before_ref.path)))
        loaded, sha = _load(ref, ctx.options, ctx.hashed.get(str(ref.path)))
        for step, now in ((before, before_sha), (successor, sha)):
            if now != stored_sha[step]:  # its stored numbers (eigenfunctions) are another file's
                raise _changed_file(
                    f"the checkpoint at step {step} ({ctx.refs_by_step[step].path})", now, stored_sha[step],
                    f"in {out}", step=step if step != ctx.reference_step else None,
                )
        # the series both hold (a series added to the store that one of them lacks yet keeps its numbers)
        keys = reader.held(before) & reader.held(successor)
        if series_of is not None:
            keys &= frozenset(series_of)
        earlier = _stored_series(ctx, before, _prepare(ctx, before_loaded, parameters=False), reader, keys)
        later = _stored_series(ctx, successor, _prepare(ctx, loaded, parameters=False), reader, keys)
        series = _compared_again(ctx, reader, successor, later, earlier, before)
        computed_by = reader.computed_by_row(successor)  # its numbers but the comparisons are as stored
    return Entry(
        step=successor, path=shown_path(ref.path), sha256=sha, series=tuple(series), file_signature=loaded.file_signature,
        computed_by=computed_by,
    )


def _compared_again(
    ctx: _Context,
    reader: Any,
    successor: int,
    later: dict[tuple[str, str], _Series],
    earlier: dict[tuple[str, str], _Series],
    before: int,
) -> tuple[Any, ...]:
    """The stored series of `successor` with cka_prev / overlap_prev / prev_step taken again against the
    checkpoint `before` (`later`, `earlier`: their series of an anchor pass); the other numbers as stored,
    and those of a series that `later` or `earlier` lacks (added to the store, not yet to both) all as stored.
    Shared by the successor refresh and --redo's."""
    from dataclasses import replace as replace_entry

    series = []
    for probe in ctx.probes:
        for spec in ctx.layers:
            key = _series_key(probe.name, spec.label)
            if key not in reader.held(successor):
                continue
            stored = reader.arrays(successor, probe=probe.name, layer=spec.label)
            if key not in later or key not in earlier:
                series.append(stored)
                continue
            scalars = dict(stored.scalars)
            scalars["cka_prev"] = _cka(later[key], earlier[key])
            scalars["overlap_prev"] = _overlap(later[key], earlier[key], _record_overlap_k(ctx, scalars))
            scalars["prev_step"] = before
            series.append(replace_entry(stored, scalars=scalars))
    return tuple(series)


def _stored_series(
    ctx: _Context, step: int, model: Any, reader: Any, keys: Collection[tuple[str, str]] | None = None
) -> dict[tuple[str, str], _Series]:
    """A stored checkpoint's series (those of `keys`, by default every one of the run): its anchor features
    (one anchor pass of `model`, which holds its weights, per probe) with the eigenfunction values the
    store holds for it."""
    from fdl_cli.extract import anchor_features

    result = {}
    for probe in ctx.probes:
        layers = [spec for spec in ctx.layers if keys is None or _series_key(probe.name, spec.label) in keys]
        if not layers:
            continue
        sums: dict[str, Any] = {}
        feats = anchor_features(
            model, layers, probe.x, device=ctx.device, dtype=ctx.options.dtype,
            batch_size=ctx.options.batch_size, anchor_size=ctx.options.anchor_size, moments=sums,
        )
        for spec in layers:
            stored = reader.arrays(step, probe=probe.name, layer=spec.label)
            anchor = feats[spec.label]
            result[_series_key(probe.name, spec.label)] = _Series(
                anchor=anchor, eigenfunctions=np.asarray(stored.eigenfunctions, dtype=np.float64),
                self_norm=_anchor_self_norm(sums.get(spec.label), anchor, ctx.options.product_dtype),
                cka_dtype=ctx.options.cka_dtype, points=_anchor_points(ctx, probe),
            )
    return result


def _reference_series(
    ctx: _Context, reference: CheckpointRef, out: Path, needed: Collection[tuple[str, str]]
) -> None:
    """Rebuild the reference's anchor features and eigenfunctions of the `needed` series when it is already
    in the store (those the store holds there: a series added to the store is analysed at the reference
    first, `_run_refs`)."""
    if ctx.reference_state is not None and all(key in ctx.reference for key in needed):
        return
    from fdl_cli.store import StoreReader

    loaded, _ = _load(reference, ctx.options, ctx.hashed.get(str(reference.path)))
    model = _prepare(ctx, loaded)
    if ctx.reference_state is None:
        ctx.reference_state = _parameters_of(loaded, model, copy=True)
        ctx.reference_buffers = _buffers_of(model, loaded)
    with StoreReader(out) as reader:
        keys = [key for key in needed if key not in ctx.reference and key in reader.held(reference.step)]
        if keys:
            ctx.reference.update(_stored_series(ctx, reference.step, model, reader, keys))


def _previous_series(
    ctx: _Context, step: int, steps_in_order: list[int], out: Path,
    needed: Collection[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], tuple[int, _Series]]:
    """series -> (step, series) of the checkpoint that `step` is compared with (`_previous_step`), for each
    series it has: analysed by this process, or recomputed from the store. None of a series when there is no
    such checkpoint, or when it is neither stored nor analysed yet (the reference analysed ahead of its turn,
    whose previous is found again at its turn; a checkpoint a torchrun rank analyses before its block only for
    its series). `needed`: the series wanted (default: every one of the run); those this process does not hold
    (a checkpoint given only the series added to the store: adding.py) are recomputed from the store, where it
    holds them. One checkpoint for all, but for a series added to the store that failed at a stored checkpoint
    before (`ctx.failed_series`), which skips over it."""
    keys = list(_all_series(ctx) if needed is None else needed)
    if ctx.failed_series:
        groups: dict[int | None, list[tuple[str, str]]] = {}
        for key in keys:
            groups.setdefault(_previous_step(ctx, step, steps_in_order, key), []).append(key)
    else:
        groups = {_previous_step(ctx, step, steps_in_order): keys}
    found: dict[tuple[str, str], tuple[int, _Series]] = {}
    for previous, group in groups.items():
        if previous is None:
            continue
        series = _series_at(ctx, step, previous, out, group)
        found.update((key, (previous, series[key])) for key in group if series and key in series)
    return found


def _series_at(
    ctx: _Context, step: int, previous: int, out: Path, needed: Collection[tuple[str, str]]
) -> dict[tuple[str, str], _Series] | None:
    """The `needed` series of the checkpoint `previous` that `step` is compared with: this process's (the
    last analysed, the reference), or recomputed from the store; None when it is not stored."""
    at_hand: dict[tuple[str, str], _Series] | None = None
    if ctx.previous_step == previous:
        at_hand = ctx.previous
    elif previous == ctx.reference_step and ctx.reference:
        at_hand = ctx.reference
    if at_hand is not None:
        missing = [key for key in needed if key not in at_hand]
        if not missing:
            return at_hand
        return {**at_hand, **(_stored_previous(ctx, step, previous, out, missing) or {})}
    return _stored_previous(ctx, step, previous, out, needed)


def _stored_previous(
    ctx: _Context, step: int, previous: int, out: Path, needed: Collection[tuple[str, str]] | None
) -> dict[tuple[str, str], _Series] | None:
    """`_previous_series` of a checkpoint this process does not hold: its `needed` series (those the store
    holds of them; default: every one) recomputed from the store, or None when it is not stored."""
    from fdl_cli.store import StoreReader

    ref = ctx.refs_by_step.get(previous)
    if ref is None:
        return None
    from fdl_cli.checkpoints import load_checkpoint

    damage: StoreError | None = None  # its stored arrays fail their checksums
    try:
        with StoreReader(out) as reader:
            keys = [key for key in (_all_series(ctx) if needed is None else needed) if key in reader.held(previous)]
            if not keys:
                return None
            stored = {r["step"]: r for r in reader.records(probe=keys[0][0], layer=keys[0][1])}
            # Hashed before it is loaded: a stored file replaced since, by a corrupt one too, is a changed
            # file (below). Its failure must not count as `step`'s: every later checkpoint, skipping over
            # `step`, would then be compared with it in turn and fail alike.
            try:
                sha = _sha256_once(ctx, ref.path)
            except FileNotFoundError:
                raise
            except OSError as exc:  # EIO, EACCES, ESTALE: an error that names the file, not a traceback
                from fdl_cli.checkpoints import _os_reason

                got, fix = _os_reason(Path(ref.path), exc)
                raise FdlError(
                    f"the stored checkpoint at step {previous} ({ref.path}), which step {step} is compared "
                    "with, cannot be read now",
                    got=got,
                    fix=fix or "restore the file, or re-analyse everything with --overwrite (or another --out)",
                ) from None
            if sha == stored[previous]["sha256"]:
                try:
                    loaded = load_checkpoint(ref, trust_pickle=ctx.options.trust_pickle, weights=ctx.options.weights)
                    model = _prepare(ctx, loaded, parameters=False)
                except CheckpointError as exc:
                    raise FdlError(
                        f"the stored checkpoint at step {previous} ({ref.path}), which step {step} is compared "
                        "with, cannot be read now",
                        got=exc.what,
                        fix=exc.fix or "restore the file, or re-analyse everything with --overwrite (or another --out)",
                    ) from None
                try:
                    return _stored_series(ctx, previous, model, reader, keys)
                except StoreError as exc:
                    damage = exc
    except (StoreError, FileNotFoundError):
        return None
    if damage is not None:
        # Not "no previous checkpoint" (a null cka_prev stored, which the successor refresh then stopped at):
        # `_check_stored_to_read` refuses this before the run; a store damaged since stops here.
        raise StoreError(
            f"{damage.what}, which step {step}, analysed now, is compared with (cka_prev, overlap_prev)",
            got=damage.got,
            fix=(f"run the same command with --redo {','.join(map(str, sorted({*ctx.redo, previous})))} (the "
                 "checkpoints analysed before this one are stored)" if previous != ctx.reference_step
                 else "restore the store from a backup") + f"; or {_OVERWRITE_FIX}",
        )
    # Its file changed: its stored numbers are the old file's, and comparing this checkpoint with the
    # new one would mix the two (as a refresh of a changed file, `_refresh_successors`, refuses to).
    raise _changed_file(
        f"the checkpoint at step {previous} ({ref.path})", sha, str(stored[previous]["sha256"]), f"in {out}",
        why=f"; step {step}, analysed now, would be compared with a file whose numbers in the store are another's",
        step=previous if previous != ctx.reference_step else None,
    )


def _parameters_of(loaded: LoadedCheckpoint, model: Any, *, copy: bool = False) -> dict[str, Any]:
    """θ of SPEC §6: the model's parameters, each shared tensor once (tied weights), no buffers.

    The names are the model's (`named_parameters`, which lists a tied tensor once; not the file's
    state_dict, which a .pt stores a tied weight in under each of its names, and which holds buffers
    such as positional tables). The values are the checkpoint's own tensors, in the file's dtype
    (the model may run in --dtype bfloat16), with the extra prefix `build_model` drops; a checkpoint
    that is a module (TorchScript, torch.export, a pickled module) gives the module's, as `_prepare`
    kept them before --dtype converted it (the same parameters in the same order: wrapping a program
    module only prefixes the names). `copy` for the reference when its values come from the model,
    whose tensors the next checkpoint's weights are written into."""
    from fdl_cli.checkpoints import model_prefix, without_common_prefix

    names = [name for name, _ in model.named_parameters()]
    if loaded.parameters is not None and len(loaded.parameters) == len(names):
        return dict(zip(names, loaded.parameters, strict=True))
    def restored(stripped: bool = False) -> dict[str, Any] | None:  # only when needed: ~1.4 ms for a 420-key model
        prefix = model_prefix(model.state_dict())
        state = without_common_prefix(loaded.state_dict or {}) if stripped else loaded.state_dict
        return {prefix + key: value for key, value in (state or {}).items()} if prefix else None

    # the last: a Lightning `.ckpt`'s `model.` keys loaded into a wrapper whose network is named `module`
    for state_of in (lambda: loaded.state_dict, lambda: without_common_prefix(loaded.state_dict or {}), restored,
                     lambda: restored(stripped=True)):
        state = state_of()
        if state is not None and all(name in state for name in names):
            return {name: state[name] for name in names}
    return {name: (value.detach().clone() if copy else value.detach()) for name, value in model.named_parameters()}


def _analyze_one(
    ctx: _Context,
    ref: CheckpointRef,
    loaded: LoadedCheckpoint,
    sha: str,
    steps_in_order: list[int],
    reference: CheckpointRef,
    out: Path,
    *,
    wanted: frozenset[tuple[str, str]] | None = None,
) -> CheckpointEntry | None:
    """Analyse one checkpoint: every (probe, layer) series of the run, or, with `wanted`, those alone, added
    to its stored checkpoint (`CheckpointEntry.series_only`: a probe or layer added to the store, adding.py),
    with passes of the probes that have a layer among them, hooking those layers only."""
    from fdl_cli.extract import extract, parameter_vector_norms
    from fdl_cli.sharding import _contribute_slice, _probe_slice, _reduce_slices, _sliced  # sharding imports this module
    from fdl_cli.spectral import NonFiniteError, eigenfunctions, measure
    from fdl_cli.store import CheckpointEntry, SeriesEntry

    options = ctx.options
    world = ctx.world
    if loaded.file_signature and sha:  # read again in this run (a refresh, a redo): not hashed again
        ctx.hashed[str(ref.path)] = (loaded.file_signature, sha)
    sharded = world is not None and world.distributed and options.shard_probe
    if sharded and not world.writes:
        _contribute_slice(ctx, loaded)
        return None
    is_reference = ref.step == reference.step
    needed = _all_series(ctx) if wanted is None else wanted
    if not is_reference:
        _reference_series(ctx, reference, out, needed)
    # Before this checkpoint's model: rebuilding the previous one's anchors reuses the same model object.
    previous = _previous_series(ctx, ref.step, steps_in_order, out, needed)
    model = _prepare(ctx, loaded)
    parameters = _parameters_of(loaded, model)
    if is_reference:
        ctx.reference_state = _parameters_of(loaded, model, copy=True)
        ctx.reference_buffers = _buffers_of(model, loaded)
    param_norm, param_dist = parameter_vector_norms(parameters, ctx.reference_state,
                                                    reference_squares=_reference_squares(ctx))
    moved_parameters: list[str] | None = None  # found once a series' features moved (`_statistics_only`)
    current: dict[tuple[str, str], _Series] = {}
    series = []
    for probe in ctx.probes:
        layers = [spec for spec in ctx.layers if _series_key(probe.name, spec.label) in needed]
        if not layers:
            continue
        x, y = _probe_slice(ctx, probe) if sharded else (probe.x, probe.y)
        results = _sliced(
            ctx,
            sharded,
            ref,
            extract,
            model,
            layers,
            x,
            y,
            task=probe.task or "none",
            binary_logit=ctx.binary_logit,
            device=ctx.device,
            dtype=options.dtype,
            batch_size=options.batch_size,
            anchor_size=options.anchor_size,
            keep_features=_gram_route(int(probe.x.shape[0])),
            product_dtype=options.product_dtype,
            on_batch=lambda done, total: _after_batch(ctx, done, total),
        )
        if sharded:
            results = _reduce_slices(ctx, model, probe, results)
        for spec in layers:
            result = results[spec.label]
            # At least the overlaps' top k (C) are stored: the overlaps are O_C (SPEC §5), whatever --top-k says.
            stored = stored_columns(options, result.moments.n_outputs)
            try:
                measures = measure(result.moments, center=options.center, top_k=stored,
                                   dlr_energy=options.dlr_energy).stored_only()
            except NonFiniteError as exc:
                raise exc.for_dtype(options.dtype) from None
            anchor = _float64_copy(result.anchor_features)  # one copy, centered later in place
            values = eigenfunctions(anchor, measures.spectrum, k=stored).astype(np.float32)
            mine = _Series(
                anchor=anchor,
                owned=anchor is not result.anchor_features,
                eigenfunctions=values.astype(np.float64),
                self_norm=_anchor_self_norm(result.anchor_moment, result.anchor_features, options.product_dtype),
                cka_dtype=options.cka_dtype, points=_anchor_points(ctx, probe),
            )
            key = _series_key(probe.name, spec.label)
            current[key] = mine
            base = mine if is_reference else ctx.reference[key]
            previous_step, before = previous.get(key, (None, None))
            n_outputs = measures.scalars["n_outputs"]
            k = overlap_k(options, n_outputs)
            scalars = dict(measures.scalars)
            scalars["cka_init"] = _cka(mine, base)
            scalars["overlap_init"] = _overlap(mine, base, k)
            if is_reference:
                _warn_flat_anchors(ctx, mine, k, f"{probe.name}/{spec.label}")
                _warn_low_rank_reference(ctx, mine, k, scalars, ref.step, f"{probe.name}/{spec.label}")
            scalars["cka_prev"] = _cka(mine, before) if before else None
            scalars["overlap_prev"] = _overlap(mine, before, k) if before else None
            scalars["prev_step"] = previous_step if before else None
            scalars["param_norm"] = param_norm
            scalars["param_dist_init"] = param_dist
            scalars["regime"] = checkpoint_regime(scalars, ctx.thresholds, reference=is_reference).regime
            if not is_reference and scalars["regime"] in ("MF", "EF") and ctx.reference_buffers:
                if moved_parameters is None:
                    moved_parameters = _moved_parameters(parameters, ctx.reference_state or {})
                statistics, others = _moved_buffers(ctx, model, spec, moved_parameters)
                if statistics or others:  # said once, at the end of the batch (`_warn_statistics_moved`)
                    _note_moved(ctx, f"{probe.name}/{spec.label}", [ref.step], statistics, others)
            if _constant_anchors(mine):  # said once, at the end of the batch (`_warn_constant_anchors`)
                ctx.constant_anchors.setdefault(f"{probe.name}/{spec.label}", []).append(ref.step)
            if scalars.get("output_rank") == 0:  # said once, at the end of the batch (`_warn_constant_outputs`)
                ctx.constant_outputs.setdefault(probe.name, {})[ref.step] = scalars.get("pi_hat_C") is None
            elif scalars.get("output_rank") is not None and ref.step > ctx.reference_step:
                ctx.varying_outputs.setdefault(probe.name, set()).add(ref.step)
            if measures.clipped_eigenvalue:
                ctx.reporter.warn(
                    f"step {ref.step}, {probe.name}/{spec.label}: clipped a negative eigenvalue "
                    f"({measures.clipped_eigenvalue:.2e} of ρ_1) to 0"
                )
            series.append(
                SeriesEntry(
                    probe=probe.name,
                    layer=spec.label,
                    scalars=scalars,
                    eigenvalues=measures.eigenvalues,
                    eigenvectors=measures.eigenvectors,
                    eigenfunctions=values,
                    utility=measures.utility,
                    quality=measures.quality,
                    feature_mean=measures.spectrum.mean,
                    r2_outputs=measures.r2_outputs,
                )
            )
    if is_reference:
        ctx.reference = {**ctx.reference, **current}  # with a series added, the stored ones read back (if needed)
    ctx.previous, ctx.previous_step = current, ref.step
    return CheckpointEntry(
        step=ref.step, path=shown_path(ref.path), sha256=sha, series=tuple(series), file_signature=loaded.file_signature,
        series_only=wanted is not None,
    )


def _reference_squares(ctx: _Context) -> dict[str, float] | None:
    """The squared norms of the reference's parameters that `parameter_vector_norms` fills and reads, kept for as
    long as `ctx.reference_state` is the same dict (a new reference's parameters are a new one: a new cache)."""
    state = ctx.reference_state
    if state is None:
        return None
    if ctx.reference_squares is None or ctx.reference_squares[0] is not state:
        ctx.reference_squares = (state, {})
    return ctx.reference_squares[1]


def _file_identity(path: Path) -> tuple[int, ...]:
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _gram_route(n_probe: int) -> Callable[[int], bool]:
    """keep_features for `extract`: the n×n Gram route when the layer is wider than the whole probe."""
    return lambda width: width > n_probe
