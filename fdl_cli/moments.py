"""Streaming float64 sufficient statistics of probe batches, from numpy or torch arrays on any device.

`MomentAccumulator.update` takes one batch of features (b, ...) and outputs (b, C), with optional
targets (class labels (b,) or regression targets (b, C)); it keeps only the sums that SPEC.md needs
(n, Σφ, Σφφᵀ, Σφŷᵀ, Σφyᵀ, Σŷ, Σŷŷᵀ, Σy, Σyyᵀ, Σŷyᵀ, class sums and counts, correct predictions, the
summed cross-entropy of the outputs as logits), so
memory is O(p² + pC) whatever n is. The sums are taken about the first batch's means (features,
outputs, regression targets; `spectral.Moments` explains why). Torch batches stay on their device
(the GPU when there is one): the sums are float64 tensors there and reach the host once, in
`moments()`. torch is imported only when a torch batch arrives, so the pure core stays importable
without it.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from fdl_cli.errors import NumericalError, ProbeError
from fdl_cli.spectral import TASKS, Moments


def _width(array: Any) -> int:
    """Columns of a (b, ...) array once flattened to (b, ·)."""
    return math.prod(int(extent) for extent in array.shape[1:])


def _is_torch(array: Any) -> bool:
    return hasattr(array, "detach") and hasattr(array, "device")


#: The sums are taken about the first batch's means when, in some column, the mean is more than
#: SHIFT_RATIO standard deviations from 0: centering by subtraction then loses eps·(mean/std)² of
#: relative precision about 0, ~16 eps at most below the ratio. Below it the sums stay about 0 and the
#: batch is not shifted (one pass over it less: ~2 % of `fdl analyze` on a CPU).
SHIFT_RATIO = 4.0


def _shift_point(values: Any) -> Any:
    """The column means of a float64 batch (b, w) (numpy or torch) if some column lies far from 0
    (SHIFT_RATIO), else None."""
    mean = values.mean(0)
    spread = ((values - mean) ** 2).mean(0)
    return mean if bool((mean * mean > SHIFT_RATIO**2 * spread).any()) else None


#: The float64 values the statistics hold: the largest |·| of the features, of the outputs and of the
#: regression targets must lie in [RANGE_MIN, RANGE_MAX] (or be 0). The measures take sums of squares
#: (Σφφᵀ) and of products of those (‖Σ_c‖_F, ‖F_aᵀF_b‖_F², (tr Σ_c)²): fourth powers of the values,
#: times n², which overflow float64 from |φ| ≈ 1e75 (about 1e154 squared once) and underflow below
#: ≈ 1e-77 (features of 1e-155 had all their squares flushed to 0: rank 0, Q* ≡ 0, silently). float32,
#: float16 and bfloat16 values (at most 3.4e38, at least 1.4e-45 when not 0) always lie inside, so only
#: a layer computed in float64, or float64 regression targets, can fall outside: a clear error then.
RANGE_MAX = 2.0**200
RANGE_MIN = 2.0**-200
_RANGE_WHAT = {
    "features": ("the features", "hook a layer of ordinary scale (--layer), or rescale the layer's float64 output"),
    "outputs": ("the model's outputs", "rescale the model's float64 outputs"),
    "targets": ("the probe's regression targets",
                "rescale the targets (their scale changes no measure but loss and r2, which compare the outputs with them)"),
}

#: The kinds of values whose largest |·| `Moments.peaks` holds, in its order.
RANGE_KINDS = ("features", "outputs", "targets")


def check_range(peaks: tuple[float, float, float], *, small: bool = True) -> None:
    """NumericalError when a float64 kind's largest |·| (`Moments.peaks`) lies above RANGE_MAX or, with
    `small`, above 0 and below RANGE_MIN. NaN and Inf are left to the finiteness checks."""
    for kind, value in zip(RANGE_KINDS, peaks, strict=True):
        if not math.isfinite(value):
            continue  # NaN / Inf: the statistics are not finite, `spectral` says so
        if value > RANGE_MAX or (small and 0.0 < value < RANGE_MIN):
            what, fix = _RANGE_WHAT[kind]
            side = "too large" if value > RANGE_MAX else "too small"
            raise NumericalError(
                f"{what} are {side} for fdl's float64 statistics: their largest magnitude is {value:.3g}, "
                f"outside [{RANGE_MIN:.3g}, {RANGE_MAX:.3g}] (sums of their squares and of products of "
                "those would overflow or flush to 0)",
                got=f"float64 {what.removeprefix('the ')} of magnitude up to {value:.3g}",
                fix=fix,
            )


#: Width of the block rows in which the torch path sums the symmetric FᵀF (see `row_bounds`).
ROW_BLOCK = 128


def row_bounds(width: int) -> list[tuple[int, int]]:
    """[start, stop) of the block rows of a symmetric width×width sum: ROW_BLOCK columns each, the last
    one taking the rest (between half a block and one and a half), one row for widths under 1.5 blocks.

    Block row [start, stop) is summed as F[:, start:stop]ᵀ F[:, start:]: the diagonal block and those
    right of it, so the products cover (k + 1) / 2k of the full one for k rows (5/8 at p = 512), in
    GEMMs still wide enough to run at full speed."""
    starts = list(range(0, max(width - ROW_BLOCK // 2 + 1, 1), ROW_BLOCK))
    return list(zip(starts, starts[1:] + [width], strict=True))


#: On the CPU, add the symmetric Σ[F | 1]ᵀ[F | 1] of each batch as numpy's `xᵀ @ x` of the float64 buffer
#: (numpy sees the transposed operand and calls its BLAS's dsyrk: one triangle, mirrored) into a reused
#: scratch, then added whole: 3.6 against 4.7 ms a batch of 512×513 in torch's block rows (one thread, the
#: AMD EPYC of docs/benchmarks.md, twenty-seventh session; MKL's own dsyrk, inside torch, took 5.1 ms there).
#: The same sums to rounding (the order of each dot product is the BLAS's), and the same to the bit from
#: one pass to another of the same features. Only where torch runs one thread (`--threads 1`-style
#: OMP_NUM_THREADS=1, torchrun's ranks): with more, numpy's BLAS threads would start right after torch's
#: OpenMP threads each batch, and a loop of forward passes and statistics on the 2-core machine took 3 – 9 %
#: more CPU with it (a loaded machine; not measured quietly), so torch's block rows stay there, as on an
#: accelerator. And only where numpy's BLAS runs one thread too (`_numpy_blas_threads`): a Python-API user
#: who calls only `torch.set_num_threads(1)` leaves numpy's OpenBLAS a thread per core, whose dsyrk would
#: then take every core. Off (False): torch's block rows everywhere.
NUMPY_SYRK_ON_CPU = True
#: On that path the batches' rows are gathered in the buffers up to this many (at least one batch) and their
#: products summed at once (`MomentAccumulator._flush`): OpenBLAS's dsyrk of 512 rows is its slowest size per
#: row around there (a 512×513 batch took 3.52 ms, 1 024 rows 3.19 ms per 512; −24 / −17 / −9 / −8 / −4 % at
#: p + 1 = 129 / 257 / 513 / 1 025 / 2 049; one thread, docs/benchmarks.md, twenty-eighth session). The buffer
#: of 1 024 rows is no larger than the (p + 1)² sums for p ≥ 1 023. The sums are the same to rounding (each
#: product's order is the BLAS's), and the same to the bit from one pass to another of the same batches.
SYRK_ROWS = 1024
#: the variables each BLAS reads its thread count from when it starts, first set (to a positive integer)
#: first; none set: a thread per core. OpenBLAS (numpy's wheels) as its `blas_get_cpu_number` reads them.
BLAS_THREAD_VARIABLES = {"openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
                         "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}


@functools.cache
def _blas_controller(threadpoolctl: Any) -> Any:
    """threadpoolctl's controller of the libraries loaded now, found once a process: finding them walks every
    library loaded (0.5 ms with torch's, asked for each layer of each checkpoint), while each one's
    `num_threads`, read per call, follows `threadpool_limits`. numpy's BLAS and torch's are loaded by the first
    call (both imported); a BLAS loaded after it is not seen. Two threads that call it at once at worst both
    walk the libraries (the cache keeps one controller)."""
    return threadpoolctl.ThreadpoolController()


def _numpy_blas_threads() -> int | None:
    """The threads numpy's BLAS runs, as far as can be known without a dependency: threadpoolctl's count
    where it is importable (what the libraries loaded by the first call, `_blas_controller`, run now,
    `threadpool_limits` included; every BLAS it sees, torch's own among them where it loads one, must run one
    thread), else the environment as numpy's
    BLAS read it at start (`BLAS_THREAD_VARIABLES`, read now: a variable changed after numpy's import is
    not seen). None: not known (no variable set; a BLAS other than OpenBLAS and MKL: Accelerate, BLIS)."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        counts = [int(lib.num_threads) for lib in _blas_controller(threadpoolctl).lib_controllers
                  if lib.user_api == "blas"]
        if counts:
            return max(counts)
    config = getattr(np.__config__, "CONFIG", None)  # numpy ≥ 1.26; before, OpenBLAS (the wheels') is assumed
    blas = config.get("Build Dependencies", {}).get("blas", {}) if isinstance(config, dict) else {"name": "openblas"}
    name = str(blas.get("name", "") if isinstance(blas, dict) else "").lower()
    kind = next((kind for kind in BLAS_THREAD_VARIABLES if kind in name), None)
    for variable in BLAS_THREAD_VARIABLES[kind] if kind is not None else ():
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _numpy_syrk(device: Any) -> bool:
    """Whether a batch's Σ[F | 1]ᵀ[F | 1] on `device` is summed by numpy's dsyrk (`NUMPY_SYRK_ON_CPU`):
    on the CPU where torch and numpy's BLAS each run one thread."""
    import torch

    return (NUMPY_SYRK_ON_CPU and device.type == "cpu" and torch.get_num_threads() == 1
            and _numpy_blas_threads() == 1)


def _block_rows(gram: Any) -> list[tuple[Any, int, int]]:
    """(view, start, stop) of each block row of `gram` (width, width): its diagonal block and right of it."""
    return [(gram[start:stop, start:], start, stop) for start, stop in row_bounds(int(gram.shape[0]))]


def _mirror_lower(gram: Any) -> Any:
    """Complete, in place, a sum of which only the block rows (`_block_rows`) are added to: each block
    below the diagonal becomes the transpose of its mirror above it. Those blocks are never added
    to, so the sums go on growing correctly after this (it is redone at every read); no p×p copy."""
    for start, stop in row_bounds(int(gram.shape[0])):
        gram[stop:, start:stop] = gram[start:stop, stop:].T
    return gram


def symmetric_gram(matrix: Any) -> Any:
    """matrix @ matrixᵀ (m, m) of a torch matrix (m, d), summed in block rows (`row_bounds`) on and
    right of the diagonal and mirrored below it: (k + 1) / 2k of the full product's work for k block rows
    (0.33 against 0.57 s at m = 2 000, d = 4 096, one thread). The diagonal blocks are GEMMs, so the
    result is symmetric to rounding, not bit for bit."""
    import torch

    gram = torch.zeros((int(matrix.shape[0]),) * 2, dtype=matrix.dtype, device=matrix.device)
    for rows, start, stop in _block_rows(gram):
        rows.addmm_(matrix[start:stop], matrix[start:].T)
    return _mirror_lower(gram)


def _adds_by_index(device: Any) -> bool:
    """Whether class sums are added with `index_add_` on this device (the CPU: deterministic there),
    else as products with the one-hot labels (accelerators, where `index_add_` uses atomic adds)."""
    return bool(device.type == "cpu")


def cross_entropy_sum(outputs: Any, labels: Any) -> Any:
    """Σ_i [logsumexp(ŷ_i) − ŷ_i[y_i]] (natural log) of float64 outputs (b, C) and class labels (b,)
    already checked to lie in [0, C); numpy (a float) or torch (a 0-d float64 tensor on the outputs'
    device: no host transfer).

    Each term is log1p(Σ_{j≠k} exp(ŷ_ij − m_i)) + (m_i − ŷ_i[y_i]), with k = argmax_j ŷ_ij and m_i = ŷ_ik:
    no exp overflows, both parts are non-negative (nothing cancels), and log1p keeps the relative
    precision of a small loss (a confident prediction's log(1 + 1e-13), formed as log of the rounded
    1 + 1e-13, would be off by 1e-3), so the sum is exact to float64 rounding."""
    if _is_torch(outputs):
        import torch

        top, index = outputs.max(1, keepdim=True)
        others = outputs.sub(top).exp_().scatter_(1, index, 0.0)
        picked = outputs.gather(1, labels.reshape(-1, 1).long())
        return torch.log1p(others.sum(1)).sum() + (top - picked).sum()
    index = outputs.argmax(1)[:, None]
    top = np.take_along_axis(outputs, index, 1)
    others = np.exp(outputs - top)
    np.put_along_axis(others, index, 0.0, 1)
    picked = np.take_along_axis(outputs, np.asarray(labels, dtype=np.int64).reshape(-1, 1), 1)
    return float(np.log1p(others.sum(1)).sum() + (top - picked).sum())


class MomentAccumulator:
    """Accumulate the statistics of one (probe, layer) pass over one checkpoint.

    Args:
        task: "none", "classes" (targets are integer labels in [0, C)) or "regression" (targets (b, C)).
        keep_features: keep the float64 features themselves (the n×n Gram route, for p > n) instead
            of Σφφᵀ.
        product_dtype: "float64" (default) or "float32": dtype of the per-batch products before they
            are added to the float64 sums (float32 only where tests show the measures unchanged).
    """

    def __init__(self, *, task: str = "none", keep_features: bool = False, product_dtype: str = "float64") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if product_dtype not in ("float64", "float32"):
            raise ValueError(f"product_dtype must be float64 or float32, got {product_dtype!r}")
        self.task = task
        self.keep_features = keep_features
        self.product_dtype = product_dtype
        self._sums: dict[str, Any] = {}
        self._kept: list[Any] = []
        self.n = 0
        self._width = self._features = 0  # C and p of the batches so far
        self._torch: Any = None
        self._buffers: Any = None  # the torch path's reused float64 batches [F | 1] (b, p+1) and [S | 1]
        self._rows: list[Any] = []  # the torch path's block rows of Σ[F | 1]ᵀ[F | 1] (`_block_rows`)
        self._rows_s: list[Any] = []  # and of Σ[S | 1]ᵀ[S | 1]
        self._scratch: Any = None  # the CPU's per-batch Σ[F | 1]ᵀ[F | 1] (`NUMPY_SYRK_ON_CPU`), or None
        self._scratch_fs: Any = None  # and its per-batch SᵀF (width, p)
        self._pending = 0  # rows of the buffers written and not yet summed (`_flush`)
        #: the shift points a, b, c (features, outputs, regression targets): the first batch's means,
        #: float64 on the batches' device; None when not shifted (float32 products, class targets); the
        #: Gram route's kept features themselves are never shifted, only its sums
        self._shifts: tuple[Any, Any, Any] | None = None
        #: the largest |·| so far of float64 features / outputs and of the regression targets (a 0-d
        #: tensor on the batches' device, or a float), returned as `Moments.peaks` (`check_range`)
        self._peaks: dict[str, Any] = {}

    # -- array namespace: the same few operations on numpy and torch --------------------------------

    def _as64(self, array: Any) -> Any:
        if self._torch is not None:
            return array.detach().to(self._torch.float64)
        return np.asarray(array, dtype=np.float64)

    def _product(self, left: Any, right: Any) -> Any:
        """leftᵀ @ right in the product dtype, returned as float64."""
        if self.product_dtype == "float32":
            if self._torch is not None:
                return (left.to(self._torch.float32).T @ right.to(self._torch.float32)).to(self._torch.float64)
            return (left.astype(np.float32).T @ right.astype(np.float32)).astype(np.float64)
        return left.T @ right

    def _track_peak(self, kind: str, values: Any) -> None:
        """Keep the largest |·| of a float64 batch of `kind` (features, outputs, targets): values of another
        dtype cannot leave the range the statistics hold (`RANGE_MAX`), so nothing is spent on them. On a
        device the running maximum stays there (no transfer per batch)."""
        if _is_torch(values):
            if values.dtype != self._torch.float64 or values.numel() == 0:
                return
            peak = values.detach().abs().amax()
            previous = self._peaks.get(kind)
            self._peaks[kind] = peak if previous is None else self._torch.maximum(previous, peak)
            return
        values = np.asarray(values)
        if values.dtype != np.float64 or values.size == 0:
            return
        peak = float(np.max(np.abs(values)))
        previous = self._peaks.get(kind)
        self._peaks[kind] = peak if previous is None or math.isnan(peak) else max(previous, peak)
        if peak > RANGE_MAX:
            check_range(self._host_peaks(), small=False)  # at once, before numpy's sums of this batch overflow

    def _host_peaks(self) -> tuple[float, float, float]:
        """The largest |·| so far of each of `RANGE_KINDS` as floats (0.0: none of that kind in float64)."""
        features, outputs, targets = (float(self._peaks[kind]) if kind in self._peaks else 0.0 for kind in RANGE_KINDS)
        return features, outputs, targets

    def _add(self, name: str, value: Any) -> None:
        if name in self._sums:
            self._sums[name] += value
        else:
            self._sums[name] = value

    # -- public API -----------------------------------------------------------------------------------

    def update(self, features: Any, outputs: Any, targets: Any = None) -> None:
        """Add one batch: features (b, ...) flattened to (b, p), outputs (b, C), targets per `task`."""
        if self._torch is None and self.n == 0 and _is_torch(features):
            import torch

            self._torch = torch
        batch = int(features.shape[0])
        if batch == 0:
            return
        # Check the leading dimensions before flattening: a reshape would silently re-split the
        # samples of a shorter array whose size happens to be a multiple of the batch.
        lengths = [int(outputs.shape[0])] + ([int(targets.shape[0])] if targets is not None else [])
        if any(length != batch for length in lengths):
            raise NumericalError(
                "features, outputs and targets of a batch differ in length",
                got=f"{batch} features, {lengths[0]} outputs"
                + (f", {lengths[1]} targets" if len(lengths) > 1 else ""),
                fix="hook a module whose output keeps the batch dimension first, and give one target per input",
            )
        width, n_features = _width(outputs), _width(features)
        if self.n and (width != self._width or n_features != self._features):
            raise NumericalError(
                "the batches of one pass differ in width",
                got=f"{n_features} features and {width} outputs after {self._features} and {self._width}",
                fix="give every batch the same features and outputs",
            )
        if self.task != "none" and targets is None:
            raise ProbeError(
                f"the probe was declared with {self.task} targets but a batch has none",
                fix="pass the targets of every batch",
            )
        self._track_peak("features", features)
        self._track_peak("outputs", outputs)
        if self.task == "regression":
            self._track_peak("targets", targets)
        if self._torch is not None and self.product_dtype == "float64" and not self.keep_features:
            self._update_in_place(features.detach().reshape(batch, -1), outputs.detach().reshape(batch, -1), targets)
            self._width, self._features = width, n_features
            self.n += batch
            return
        feats = self._as64(features).reshape(batch, -1)
        outs = self._as64(outputs).reshape(batch, -1)
        labels = None
        if self.task == "classes":
            labels = targets.reshape(-1)
            correct = (outs.argmax(1) == (labels.to(outs.device) if self._torch else labels)).sum()
        # The outputs and the (one-hot) targets side by side, S = [Ŷ | Y]: two products per batch,
        # FᵀS and SᵀS, give Σφŷᵀ, Σφyᵀ (= the class sums of φ), Σŷŷᵀ, Σŷyᵀ and Σyyᵀ at once.
        onehot = None
        if self.task != "none":
            onehot = self._targets(targets, batch, int(outs.shape[1]), device=feats.device if self._torch else None)
        if labels is not None:  # checked by _targets just above; the outputs are not shifted yet
            xent = cross_entropy_sum(outs, labels.to(outs.device) if self._torch else labels)
        # float32 products are kept unshifted (rounding F − a to float32 would cost the exactness of float32
        # features). The Gram route keeps its features as they are (`kept`) and takes its sums about the shifts
        # like the p×p route: Σφŷᵀ about 0 lost eps·|mean|/std of the centered cross terms (D_LR, centered Q̂/Q*)
        # and the class sums those of NC1 (tests/test_s23_gram.py).
        kept = feats
        if self.product_dtype == "float64":
            if self._shifts is None:
                regression = self.task == "regression"
                self._shifts = (
                    _shift_point(feats),
                    _shift_point(outs),
                    _shift_point(onehot) if regression and onehot is not None else None,
                )
            shift_f, shift_o, shift_y = self._shifts
            if shift_f is not None:
                feats = feats - shift_f
            if shift_o is not None:
                outs = outs - shift_o  # the correct predictions were counted above, on the outputs
            if shift_y is not None and onehot is not None:
                onehot = onehot - shift_y
        if onehot is None:
            side = outs
        else:
            side = self._torch.cat([outs, onehot], 1) if self._torch is not None else np.hstack([outs, onehot])
        self._add("sum_f", feats.sum(0))
        self._add("sum_s", side.sum(0))
        self._add("sum_ss", self._product(side, side))
        self._add("sum_fs", self._product(feats, side))
        if self.keep_features:
            self._kept.append(kept)
        else:
            self._add("sum_ff", self._product(feats, feats))
        if labels is not None:
            self._add("n_correct", correct)
            self._add("sum_xent", xent)
        self._width, self._features = int(outs.shape[1]), int(feats.shape[1])
        self.n += batch

    def _targets(self, targets: Any, batch: int, n_outputs: int, *, device: Any = None) -> Any:
        if self.task == "regression":
            values = self._as64(targets).reshape(batch, -1)
            if int(values.shape[1]) != n_outputs:
                raise ProbeError(
                    "regression targets and model outputs differ in width",
                    got=f"targets of width {int(values.shape[1])}, {n_outputs} outputs",
                    fix="give one target column per model output",
                )
            return values
        labels = self._labels(targets, n_outputs, device=device)
        if self._torch is not None:
            return self._torch.nn.functional.one_hot(labels.long(), n_outputs).to(self._torch.float64)
        onehot = np.zeros((batch, n_outputs))
        onehot[np.arange(batch), labels.astype(np.int64)] = 1.0
        return onehot

    def _labels(self, targets: Any, n_outputs: int, *, device: Any = None) -> Any:
        """Class labels (b,) on the features' device, checked to lie in [0, C) (on the CPU)."""
        labels = targets.reshape(-1)
        if self._torch is not None:
            labels = labels.to(device=device)
            # On an accelerator the range check would stall the stream every batch; the pipeline
            # validates the labels once, up front (probes.validate_probe).
            low, high = (int(labels.min()), int(labels.max())) if labels.device.type == "cpu" else (0, 0)
        else:
            labels = np.asarray(labels)
            low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= n_outputs:
            raise ProbeError(
                "class labels do not fit the model's outputs",
                got=f"labels in [{low}, {high}] for {n_outputs} outputs",
                fix="labels must be integers in [0, C) where C is the number of model outputs",
            )
        return labels

    def _update_in_place(self, feats: Any, outs: Any, targets: Any) -> None:
        """The torch float64 path: F − a and S = [Ŷ − b | Y − c] (the shifts of `_shifts`; S = Ŷ − b
        for class labels and without targets) are written once per batch into two reused float64
        buffers (the only conversion), each with a trailing column of ones, then added in place with
        no per-batch temporaries:
        - [F | 1]ᵀ[F | 1] in block rows (`_block_rows`): ΣFᵀF and Σφ (its last column). FᵀF is
          symmetric, so only the blocks on and above the diagonal are summed, ~30 % less time than
          the full product on a CPU (docs/benchmarks.md); `_mirror_lower` completes it when read.
          On the CPU with one thread, numpy's dsyrk instead (`NUMPY_SYRK_ON_CPU`): faster still, on up to
          SYRK_ROWS rows at once (the products of the rows gathered are added by `_flush`).
        - FᵀS (ΣFᵀS), and [S | 1]ᵀ[S | 1] (ΣSᵀS and Σs) in block rows too.
        - class labels: the class sums of F − a and of Ŷ − b (ΣFᵀY and ΣŶᵀY for one-hot Y) and the
          class counts (ΣY, and ΣYᵀY, diagonal) are added by label (`_add_by_class`), not as
          products with a one-hot matrix: with C classes those products cost 2C(p + C) multiply-adds
          a sample of which all but a share 1/C are by zeros, and at C = 1 000 they were ~80 % of the
          statistics (docs/benchmarks.md, twelfth session).
        ΣFᵀF and Σφ are taken from F alone, so that a pass of another task (the anchor pass of a
        resumed run) sums the same products to the bit."""
        torch = self._torch
        batch, p, c = int(feats.shape[0]), int(feats.shape[1]), int(outs.shape[1])
        width = c * (2 if self.task == "regression" else 1)
        # Targets are checked before anything is written: a refused batch leaves no trace.
        values = self._targets(targets, batch, c) if self.task == "regression" else None
        labels = self._labels(targets, c, device=feats.device) if self.task == "classes" else None
        if "gram_f" not in self._sums:
            zeros = functools.partial(torch.zeros, dtype=torch.float64, device=feats.device)
            self._sums["gram_f"] = zeros((p + 1, p + 1))
            self._sums["gram_s"] = zeros((width + 1, width + 1))
            # ΣFᵀS (p, width) is stored column-major, a transposed view of a (width, p) tensor: BLAS
            # then writes the skinny product as SᵀF, 0.2 instead of 0.33 ms a batch of 512×512 (the
            # same sums to the bit here; moments() hands out copies either way).
            self._sums["sum_fs"] = zeros((width, p)).T
            if labels is not None:  # per class: Σ[F − a | 1] (its last column: the counts) and Σ[Ŷ − b | 1]
                self._sums["class_f"], self._sums["class_o"] = zeros((c, p + 1)), zeros((c, width + 1))
            self._rows = _block_rows(self._sums["gram_f"])
            if _numpy_syrk(feats.device):
                self._scratch = torch.empty_like(self._sums["gram_f"])
                self._scratch_fs = torch.empty((width, p), dtype=torch.float64)
            self._rows_s = _block_rows(self._sums["gram_s"])
        buffers, start = self._buffers, self._pending
        other = buffers is None or buffers[0].device != feats.device or (
            (buffers[0].shape[1], buffers[1].shape[1]) != (p + 1, width + 1))
        if other or buffers[0].shape[0] < start + batch:
            self._flush()
            start = 0
            if other or buffers[0].shape[0] < batch:
                rows = max(batch, SYRK_ROWS) if self._scratch is not None else batch
                buffers = self._buffers = tuple(
                    torch.ones((rows, w + 1), dtype=torch.float64, device=feats.device) for w in (p, width)
                )
        f_one, s_one = buffers[0][start : start + batch], buffers[1][start : start + batch]
        f64, side = f_one[:, :p], s_one[:, :width]
        f64.copy_(feats)
        side[:, :c].copy_(outs)
        if values is not None:
            side[:, c:].copy_(values)
        if labels is not None:  # from the float64 outputs, before they are shifted
            self._add("sum_xent", cross_entropy_sum(side[:, :c], labels))
        if self._shifts is None:
            self._shifts = (
                _shift_point(f64),
                _shift_point(side[:, :c]),
                _shift_point(side[:, c:]) if values is not None else None,
            )
        # Converted, then shifted in place where needed (faster than one mixed-dtype torch.sub into
        # the buffer, which casts through a temporary).
        shift_f, shift_o, shift_y = self._shifts
        if shift_f is not None:
            f64.sub_(shift_f)
        if shift_o is not None:
            side[:, :c].sub_(shift_o)
        if shift_y is not None:
            side[:, c:].sub_(shift_y)
        if labels is not None:
            self._add_by_class(labels.long(), f_one, s_one)
            self._add("n_correct", (outs.argmax(1) == labels).sum())
        self._pending = start + batch
        # summed now: each batch on the torch path; on numpy's, once the next batch as large would not fit
        if self._scratch is None or self._pending + batch > buffers[0].shape[0]:
            self._flush()

    def _flush(self) -> None:
        """Add the products of the rows written to the buffers since the last call ([F | 1] and [S | 1] of
        `_update_in_place`, one batch on an accelerator, up to SYRK_ROWS on the CPU's numpy path)."""
        count, self._pending = self._pending, 0
        if not count:
            return
        f_one, s_one = self._buffers[0][:count], self._buffers[1][:count]
        f64, side = f_one[:, :-1], s_one[:, :-1]
        if self._scratch is not None:  # NUMPY_SYRK_ON_CPU: the whole symmetric product, added at once
            wide = f_one.numpy()
            np.matmul(wide.T, wide, out=self._scratch.numpy())
            self._sums["gram_f"].add_(self._scratch)
            # SᵀF by numpy's BLAS too (0.16 against torch's 0.28 ms a batch of 512×512, C = 10, and the first
            # torch product after numpy's is slower still), into a reused scratch, added to ΣFᵀS's storage
            np.matmul(side.numpy().T, f64.numpy(), out=self._scratch_fs.numpy())
            self._sums["sum_fs"].T.add_(self._scratch_fs)
        else:
            for rows, start, stop in self._rows:
                rows.addmm_(f_one[:, start:stop].T, f_one[:, start:])
            self._sums["sum_fs"].addmm_(f64.T, side)
        for rows, start, stop in self._rows_s:
            rows.addmm_(s_one[:, start:stop].T, s_one[:, start:])

    def _add_by_class(self, labels: Any, f_one: Any, s_one: Any) -> None:
        """Add each sample's row of [F − a | 1] and of [Ŷ − b | 1] (the whole buffers: contiguous rows,
        4x faster to gather than the views without the ones) to its class's sums. On the CPU by
        `index_add_` (deterministic there; ~0.6 against ~23 ms a batch of 512 at p = 512, C = 1 000);
        on an accelerator, whose `index_add_` adds in no fixed order, as products with the one-hot
        labels, which are fast there and give the same sums every run."""
        torch = self._torch
        sums = self._sums
        if _adds_by_index(f_one.device):
            sums["class_f"].index_add_(0, labels, f_one)
            sums["class_o"].index_add_(0, labels, s_one)
        else:
            onehot = torch.zeros((int(labels.shape[0]), int(sums["class_f"].shape[0])), dtype=torch.float64,
                                 device=f_one.device)
            onehot.scatter_(1, labels.reshape(-1, 1), 1.0)
            sums["class_f"].addmm_(onehot.T, f_one)
            sums["class_o"].addmm_(onehot.T, s_one)

    def _in_place_sums(self) -> dict[str, Any]:
        """The torch path's sums by their Moments names: views, sum_ff completed in place (callers copy); with
        class labels also the class sums "class_f" (C, p + 1) and "class_o" (C, C + 1) as accumulated (their
        last column: the counts), which `_output_views` reads."""
        if self._pending:
            with self._torch.inference_mode():  # the sums are inference tensors when extract made them
                self._flush()
        sums = dict(self._sums)
        if "gram_f" in sums:
            with self._torch.inference_mode():  # the sums are inference tensors when extract made them
                gram_f, gram_s = _mirror_lower(sums.pop("gram_f")), _mirror_lower(sums.pop("gram_s"))
            sums.update(
                sum_ff=gram_f[:-1, :-1], sum_f=gram_f[:-1, -1], sum_ss=gram_s[:-1, :-1], sum_s=gram_s[:-1, -1]
            )
        return sums

    def _output_views(self, current: dict[str, Any]) -> dict[str, Any]:
        """Views of the sums (`_in_place_sums`) that the Moments fields of the outputs and targets are copied
        from, each once: the blocks of Σ[Ŷ | Y]ᵀ[Ŷ | Y] as they lie in it; with class labels in the torch path,
        the class sums in place of one-hot blocks: ΣŶᵀY = class_oᵀ, ΣFᵀY = class_fᵀ, ΣY = the counts (ΣYᵀY,
        their diagonal, is made on the host). Never the 2C×2C sums of S = [Ŷ − b | Y] put together, nor a
        whole copy of them: 4 C² float64 more, and as much again copied, at the peak of a many-output run
        (docs/benchmarks.md, twenty-seventh session: outputs' memory)."""
        c = self._width
        sum_s, sum_ss, sum_fs = current["sum_s"], current["sum_ss"], current["sum_fs"]
        views = {"sum_o": sum_s[:c], "sum_oo": sum_ss[:c, :c], "sum_fo": sum_fs[:, :c]}
        class_f, class_o = current.get("class_f"), current.get("class_o")
        if class_f is not None and class_o is not None:
            views.update(sum_y=class_f[:, -1], sum_oy=class_o[:, :c].T, sum_fy=class_f[:, :-1].T,
                         class_sum_f=class_f[:, :-1])
        elif self.task != "none":
            views.update(sum_y=sum_s[c:], sum_yy=sum_ss[c:, c:], sum_oy=sum_ss[:c, c:], sum_fy=sum_fs[:, c:])
            if self.task == "classes":
                views["class_sum_f"] = sum_fs[:, c:].T
        return views

    def second_moment_so_far(self) -> tuple[Any, Any] | None:
        """Copies of (Σ(φ−a)(φ−a)ᵀ (p, p), Σ(φ−a) (p,)) over the samples added so far, about the
        shift a (what centering needs: ‖Σ(φ−a)(φ−a)ᵀ − (Σ(φ−a))(Σ(φ−a))ᵀ/m‖ is shift-invariant), on
        their device; None when the features themselves are kept (Gram route) or nothing was added yet."""
        current = self._in_place_sums()
        if self.keep_features or "sum_ff" not in current:
            return None
        sums = (current["sum_ff"], current["sum_f"])
        return tuple(s.clone() if self._torch is not None else np.array(s, copy=True) for s in sums)  # type: ignore[return-value]

    def moments(self) -> Moments:
        """The float64 statistics as numpy arrays (one host transfer)."""
        if self.n == 0:
            raise NumericalError("no samples were accumulated", fix="feed at least one probe batch")
        # Too large here, as the sums overflowed; too small in `spectral.measure`, on the peaks of the whole
        # probe: under --shard-probe a slice of tiny values (the far inputs of an RBF layer) lies below
        # RANGE_MIN where the probe does not, and one process analysed what torchrun refused.
        peaks = self._host_peaks()
        check_range(peaks, small=False)

        current = self._in_place_sums()

        def host(value: Any) -> np.ndarray | None:
            """A C-ordered float64 host copy of a sum or a view of one (one copy: the sums keep growing, in
            place, if the accumulator is fed again)."""
            if value is None:
                return None
            if self._torch is not None:
                return value.detach().to("cpu", dtype=self._torch.float64, copy=True,
                                         memory_format=self._torch.contiguous_format).numpy()
            return np.array(value, dtype=np.float64, order="C", copy=True)

        features = None
        if self.keep_features:
            if self._torch is not None:
                features = self._torch.cat(self._kept).cpu().numpy()
            else:
                features = np.concatenate(self._kept)
        correct = self._sums.get("n_correct", 0)
        xent = self._sums.get("sum_xent")
        sums = {name: host(view) for name, view in self._output_views(current).items()}
        counts = sums.get("sum_y")
        if self.task == "classes" and counts is not None:
            sums["class_counts"] = counts.copy()
            if "sum_yy" not in sums:
                sums["sum_yy"] = np.diag(counts)  # ΣYᵀY of one-hot Y: the counts on its diagonal
        shifts: list[np.ndarray | None] = [None, None, None]
        if self._shifts is not None:
            for index, shift in enumerate(self._shifts):
                if shift is not None:
                    shifts[index] = host(shift)
        return Moments(
            n=self.n,
            sum_f=host(current["sum_f"]),  # type: ignore[arg-type]
            sum_ff=host(current.get("sum_ff")),
            task=self.task,
            **sums,  # type: ignore[arg-type]  # sum_o, sum_oo and sum_fo always (`_output_views`)
            n_correct=int(correct),
            sum_xent=None if xent is None else float(xent),
            features=features,
            shift_f=shifts[0],
            shift_o=shifts[1],
            shift_y=shifts[2],
            peaks=peaks,
        )
