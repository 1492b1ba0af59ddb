"""Pure float64 maths of SPEC.md on sufficient statistics and feature matrices (numpy only).

Notation (SPEC.md §1-§6): a probe of n inputs; F (n, p) the features Φ(x_i); Ŷ (n, C) the model's raw
outputs; Y (n, C) the targets (one-hot class labels or regression targets). The probe inner product is
⟨u, v⟩ = (1/n) Σ_i u(x_i) v(x_i). Everything here is computed from the streaming statistics of
`Moments` (n, Σφ, Σφφᵀ, Σφŷᵀ, Σφyᵀ, Σŷ, Σŷŷᵀ, Σy, Σyyᵀ, Σŷyᵀ, class sums and counts); when p > n the
features themselves are kept and the n×n Gram route is used instead of the p×p second moment.

Numerical policy (SPEC.md §8), in one place:
- every accumulator and decomposition is float64; symmetric matrices use `eigh`;
- eigenvalues ρ_k ≤ ρ_1 · RANK_RTOL are dropped (rank r); slightly negative eigenvalues are clipped to 0
  and reported in `CheckpointMeasures.clipped_eigenvalue` (relative size of the most negative one);
- no NaN leaves this module: degenerate cases return the documented values of `docs/measures.md`
  (e.g. zero features → rank 0, D_LR = 1) or raise `NumericalError` for non-finite statistics.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fdl_cli.errors import NumericalError

#: Eigenvalues at or below ρ_1 · RANK_RTOL are numerically zero (SPEC.md §2).
RANK_RTOL = 1e-10
#: A negative eigenvalue larger than this (relative to ρ_1) is reported as a warning when clipped.
NEGATIVE_WARN_RTOL = 1e-8
#: A centered second moment computed as Σ(φ−a)(φ−a)ᵀ/n − (μ−a)(μ−a)ᵀ (a: the statistics' shift, see
#: `Moments`) carries rounding noise of order eps·tr(Σ(φ−a)(φ−a)ᵀ/n), so centered eigenvalues / energies
#: at or below CANCELLATION_RTOL · (that trace about the shift) are zero.
CANCELLATION_RTOL = 1e-12
#: Thresholds τ of k_τ (SPEC.md §3).
TAUS = (0.90, 0.95, 0.99)
#: float64's machine epsilon: k_τ's Π(k) reaches τ·Π(r) when short of it by at most r·K_TAU_EPS·Π(r) (`k_tau`).
K_TAU_EPS = float(np.finfo(np.float64).eps)
#: Default share η of the centered output energy kept in the D_LR output span (SPEC.md §4).
DLR_ENERGY = 0.99
#: Default number of eigenvectors / eigenfunctions kept (SPEC.md §5).
TOP_K = 64

TASKS = ("none", "classes", "regression")


@dataclass(frozen=True)
class Moments:
    """Float64 sufficient statistics of one probe pass over one checkpoint.

    Shapes: p features, C outputs (C targets). Sums run over the n probe samples.
    `sum_ff` is None in the Gram route, where `features` (n, p) holds the features themselves (as they are,
    never shifted: the shifts below apply to the sums alone).
    Target statistics are None when the probe has no targets (task "none").

    Shifted sums: with `shift_f` = a, `shift_o` = b, `shift_y` = c (None: zero), every sum is of the
    shifted values φ − a, ŷ − b, y − c (sum_f = Σ(φ−a), sum_ff = Σ(φ−a)(φ−a)ᵀ, sum_fo = Σ(φ−a)(ŷ−b)ᵀ,
    class_sum_f = Σ_{i in c}(φ_i − a), ...). The accumulator shifts by the first batch's means, so
    that centered quantities (Σ(φ−a)(φ−a)ᵀ/n − (μ−a)(μ−a)ᵀ) lose digits only to the spread of the
    features about a point near their mean, not to the mean itself (one-pass centering about 0 loses
    eps·(mean/std)² relative). Centered formulas are shift-invariant and take the shifted sums as
    they are; uncentered ones take `unshifted()`. Class one-hot targets are never shifted, nor is
    `sum_xent`, which the accumulator sums from the outputs themselves.
    """

    n: int
    sum_f: np.ndarray  # (p,)
    sum_ff: np.ndarray | None  # (p, p)
    sum_o: np.ndarray  # (C,)
    sum_oo: np.ndarray  # (C, C)
    sum_fo: np.ndarray  # (p, C)
    task: str = "none"
    sum_y: np.ndarray | None = None  # (C,)
    sum_yy: np.ndarray | None = None  # (C, C)
    sum_fy: np.ndarray | None = None  # (p, C)
    sum_oy: np.ndarray | None = None  # (C, C): Σ ŷ yᵀ
    class_counts: np.ndarray | None = None  # (C,)
    class_sum_f: np.ndarray | None = None  # (C, p)
    n_correct: int = 0
    features: np.ndarray | None = None  # (n, p), Gram route only (never shifted, whatever shift_f is)
    shift_f: np.ndarray | None = None  # (p,) a
    shift_o: np.ndarray | None = None  # (C,) b
    shift_y: np.ndarray | None = None  # (C,) c: regression targets only
    #: Σ_i [logsumexp(ŷ_i) − ŷ_i[y_i]] of the raw (never shifted) outputs as logits; class labels only
    sum_xent: float | None = None
    #: the largest |·| of the float64 features, outputs and regression targets summed (`moments.RANGE_KINDS`;
    #: 0.0 where none was float64), checked by `feature_spectrum` against `moments.RANGE_MIN` / `RANGE_MAX`
    #: on the whole probe (merged shards: the largest); None: not known
    peaks: tuple[float, float, float] | None = None

    @property
    def n_features(self) -> int:
        return int(self.sum_f.shape[0])

    @property
    def mean_f(self) -> np.ndarray:
        """The probe mean μ of the features (p,)."""
        mean = self.sum_f / self.n
        return mean if self.shift_f is None else self.shift_f + mean

    @property
    def shifted(self) -> bool:
        return any(shift is not None for shift in (self.shift_f, self.shift_o, self.shift_y))

    def shifted_to(
        self, shift_f: np.ndarray | None, shift_o: np.ndarray | None, shift_y: np.ndarray | None
    ) -> Moments:
        """The same statistics as sums about other shift points (None: zero). Exact in exact
        arithmetic; in float64 it adds rounding of order eps·n·|old − new shift|², so moving to a
        point near the mean keeps the precision, and moving to 0 (`unshifted`) gives the raw sums. The Gram
        route's kept features stay as they are."""

        def delta(old: np.ndarray | None, new: np.ndarray | None, width: int) -> np.ndarray | None:
            if old is None and new is None:
                return None
            return (np.zeros(width) if old is None else old) - (np.zeros(width) if new is None else new)

        n = self.n
        d_f = delta(self.shift_f, shift_f, self.n_features)
        d_o = delta(self.shift_o, shift_o, self.n_outputs)
        d_y = delta(self.shift_y, shift_y, self.n_outputs) if self.sum_y is not None else None

        def total(sum_x: np.ndarray | None, d_x: np.ndarray | None) -> np.ndarray | None:
            return sum_x if sum_x is None or d_x is None else sum_x + n * d_x

        def cross(
            sum_xy: np.ndarray | None, sum_x: np.ndarray | None, d_x: np.ndarray | None,
            sum_y: np.ndarray | None, d_y_: np.ndarray | None,
        ) -> np.ndarray | None:
            # Σ(x−a')(y−b')ᵀ = Σ(x−a)(y−b)ᵀ + Σ(x−a) δ_yᵀ + δ_x Σ(y−b)ᵀ + n δ_x δ_yᵀ, δ = old − new
            if sum_xy is None or (d_x is None and d_y_ is None):
                return sum_xy
            result = sum_xy.copy()
            if d_y_ is not None:
                assert sum_x is not None
                result += np.outer(sum_x, d_y_)
            if d_x is not None:
                assert sum_y is not None
                result += np.outer(d_x, sum_y)
                if d_y_ is not None:
                    result += n * np.outer(d_x, d_y_)
            return result

        def must(array: np.ndarray | None) -> np.ndarray:
            assert array is not None
            return array

        class_sum_f = self.class_sum_f
        if class_sum_f is not None and d_f is not None:
            assert self.class_counts is not None
            class_sum_f = class_sum_f + np.outer(self.class_counts, d_f)
        return replace(
            self,
            sum_f=must(total(self.sum_f, d_f)),
            sum_ff=cross(self.sum_ff, self.sum_f, d_f, self.sum_f, d_f),
            sum_o=must(total(self.sum_o, d_o)),
            sum_oo=must(cross(self.sum_oo, self.sum_o, d_o, self.sum_o, d_o)),
            sum_fo=must(cross(self.sum_fo, self.sum_f, d_f, self.sum_o, d_o)),
            sum_y=total(self.sum_y, d_y),
            sum_yy=cross(self.sum_yy, self.sum_y, d_y, self.sum_y, d_y),
            sum_fy=cross(self.sum_fy, self.sum_f, d_f, self.sum_y, d_y),
            sum_oy=cross(self.sum_oy, self.sum_o, d_o, self.sum_y, d_y),
            class_sum_f=class_sum_f,
            shift_f=shift_f,
            shift_o=shift_o,
            shift_y=shift_y,
        )

    def unshifted(self) -> Moments:
        """The raw sums (Σφ, Σφφᵀ, ...) that the uncentered measures take."""
        return self.shifted_to(None, None, None) if self.shifted else self

    @property
    def n_outputs(self) -> int:
        return int(self.sum_o.shape[0])

    @property
    def has_targets(self) -> bool:
        return self.task != "none" and self.sum_yy is not None

    def second_moment_sum(self) -> np.ndarray:
        """Σ(φ−a)(φ−a)ᵀ (p, p) about the sums' shift a (0: Σφφᵀ), computed from the kept features in the Gram
        route (less a a block of rows at a time, `_kept_blocks`: no n×p copy)."""
        if self.sum_ff is not None:
            return self.sum_ff
        assert self.features is not None
        if self.shift_f is None:
            return self.features.T @ self.features
        total = np.zeros((self.n_features, self.n_features))
        for block in _kept_blocks(self, self.shift_f):
            total += block.T @ block
        return total

    def merge(self, other: Moments) -> Moments:
        """Statistics of the union of two disjoint sample sets (exact: sums add)."""
        if (self.n_features, self.n_outputs, self.task) != (other.n_features, other.n_outputs, other.task):
            raise NumericalError(
                "cannot merge statistics of different shapes or tasks",
                got=f"(p={self.n_features}, C={self.n_outputs}, {self.task}) and "
                f"(p={other.n_features}, C={other.n_outputs}, {other.task})",
                fix="merge only shards of the same probe, layer and checkpoint",
            )

        def add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        if other.shifted or self.shifted:
            other = other.shifted_to(self.shift_f, self.shift_o, self.shift_y)  # sums about one point

        if self.features is not None and other.features is not None:
            sum_ff, features = None, np.concatenate([self.features, other.features])
        else:
            sum_ff, features = self.second_moment_sum() + other.second_moment_sum(), None
        return Moments(
            n=self.n + other.n,
            sum_f=self.sum_f + other.sum_f,
            sum_ff=sum_ff,
            sum_o=self.sum_o + other.sum_o,
            sum_oo=self.sum_oo + other.sum_oo,
            sum_fo=self.sum_fo + other.sum_fo,
            task=self.task,
            sum_y=add(self.sum_y, other.sum_y),
            sum_yy=add(self.sum_yy, other.sum_yy),
            sum_fy=add(self.sum_fy, other.sum_fy),
            sum_oy=add(self.sum_oy, other.sum_oy),
            class_counts=add(self.class_counts, other.class_counts),
            class_sum_f=add(self.class_sum_f, other.class_sum_f),
            n_correct=self.n_correct + other.n_correct,
            sum_xent=None if self.sum_xent is None or other.sum_xent is None else self.sum_xent + other.sum_xent,
            features=features,
            shift_f=self.shift_f,
            shift_o=self.shift_o,
            shift_y=self.shift_y,
            peaks=_larger_peaks(self.peaks, other.peaks),
        )


def _larger_peaks(
    a: tuple[float, float, float] | None, b: tuple[float, float, float] | None
) -> tuple[float, float, float] | None:
    """The peaks of two merged shards: the larger of each (NaN kept), or the one known."""
    if a is None or b is None:
        return a if b is None else b
    first, second, third = (x if math.isnan(x) or x >= y else y for x, y in zip(a, b, strict=True))
    return first, second, third


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of the (centered or uncentered) second moment M of the features.

    eigenvalues: (r,) ρ_1 ≥ ... ≥ ρ_r > ρ_1·RANK_RTOL; eigenvectors: (p, r) orthonormal v_k, sign fixed
    so that the largest-|·| entry of each is positive; mean: (p,) probe mean of the features when
    centered, else None. clipped: most negative eigenvalue found, relative to ρ_1 (0 if none).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    mean: np.ndarray | None
    clipped: float = 0.0
    route: str = "moments"
    #: (tr Σ_c, ‖Σ_c‖_F) of the centered covariance, when the route computed them on its way (the
    #: Gram route: its centered n×n Gram); `dynamical_low_rank` then need not form that Gram again.
    covariance_norms: tuple[float, float] | None = None

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.shape[0])


@dataclass(frozen=True)
class CheckpointMeasures:
    """Every single-checkpoint measure of SPEC.md §2-§4 and §6 (see `docs/measures.md`).

    Arrays: eigenvalues (r,), eigenvectors (p, min(K, r)), quality/utility and their cumulative sums
    pi_star/pi_hat (r,) (quality arrays are None without targets), r2_outputs (C,) (regression targets of
    C > 1 outputs only). `scalars` holds the record fields.
    """

    spectrum: Spectrum
    eigenvectors: np.ndarray
    quality: np.ndarray | None
    utility: np.ndarray
    pi_star: np.ndarray | None
    pi_hat: np.ndarray
    scalars: dict[str, Any] = field(default_factory=dict)
    #: R² of each output (C,), NaN for a constant target column; None but for regression targets of C > 1
    #: (`r2_per_output`)
    r2_outputs: np.ndarray | None = None

    @property
    def eigenvalues(self) -> np.ndarray:
        return self.spectrum.eigenvalues

    @property
    def rank(self) -> int:
        return self.spectrum.rank

    @property
    def clipped_eigenvalue(self) -> float:
        return self.spectrum.clipped

    def stored_only(self) -> CheckpointMeasures:
        """These measures with the spectrum's eigenvectors cut to the stored top K (`eigenvectors`), all that
        `eigenfunctions` then reads: the p × rank of them are let go before the anchors' float64 copy, where
        they were alive with the kept features (docs/benchmarks.md, "The Gram route's eigenvectors")."""
        return replace(self, spectrum=replace(self.spectrum, eigenvectors=self.eigenvectors))


# --------------------------------------------------------------------------------------------- helpers


#: What `NonFiniteError` says first (tests and the docs quote it).
NON_FINITE = "the features or outputs contain non-finite values (inf or NaN)"


class NonFiniteError(NumericalError):
    """Features or outputs that are not finite (`which`: "features" or "outputs"). Said without the dtype the
    model ran in, which the library does not know; `for_dtype` says it as `fdl analyze` knows it."""

    refused_as = "overflow"

    def __init__(self, which: str) -> None:
        self.which = which
        super().__init__(NON_FINITE, got=f"{self._named()} of a probe batch hold inf or NaN (overflow in a "
                         "low-precision dtype, or a diverged model)",
                         fix="use --dtype float32, or check that the checkpoint is not diverged")

    def _named(self) -> str:
        return "the features (the hooked layer's output)" if self.which == "features" else "the model's outputs"

    def for_dtype(self, dtype: str) -> NumericalError:
        """The error with the dtype the model ran in. **(choice)** In float32, the widest dtype `--dtype` offers,
        from weights the loader found finite, the forward pass itself overflowed: the checkpoint has diverged,
        and "use --dtype float32" would send the user back to the same command."""
        if dtype != "float32":
            error = NumericalError(NON_FINITE, got=f"{self._named()} of a probe batch overflowed to inf or NaN in the "
                                   f"model's {dtype} forward pass", fix="use --dtype float32, or check that the "
                                   "checkpoint is not diverged")
        else:
            error = NumericalError(NON_FINITE, got=f"{self._named()} of a probe batch overflowed to inf or NaN in the "
                                   "model's float32 forward pass, from finite weights",
                                   fix="the checkpoint has diverged (its values pass float32's largest, 3.4e38; no "
                                   "--dtype holds more): skip it (--steps/--glob)")
        # **(choice)** recorded in the store as refused either way (it lacks the step), a float16 overflow by its
        # dtype: float16 ends at 65504, and float32 may analyse the checkpoint; bfloat16 ends where float32 does
        # (3.4e38), so its overflow is said as a float32 one's, of a run that diverged
        error.refused_as = f"{self.refused_as}_float16" if dtype == "float16" else self.refused_as
        return error


def _check_finite(moments: Moments) -> None:
    features = [a for a in (moments.sum_f, moments.sum_ff, moments.features) if a is not None]
    for which, arrays in (("features", features), ("outputs", [moments.sum_o, moments.sum_oo, moments.sum_fo])):
        if not all(np.all(np.isfinite(array)) for array in arrays):
            raise NonFiniteError(which)


#: Entries of an eigenvector within this share of its largest |·| tie for the sign convention: an
#: exact tie (the features symmetric under swapping two columns) comes out of LAPACK a few ulps apart,
#: and the rounding, not the rule, then picked the entry made positive.
SIGN_TIE_RTOL = 1e-12


#: Entries of the eigenvectors `fix_signs` looks at a time: its |·| of a block of rows (2 MB), not of all p × rank.
SIGN_BLOCK = 1 << 18


def fix_signs(vectors: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Flip each column so that its largest-|·| entry is positive (deterministic, like svd_flip); entries
    within SIGN_TIE_RTOL of the largest tie with it, and the first of them is made positive. `in_place`:
    flip `vectors` itself (an array the caller owns) and return it; else a new array.

    The |·| are taken a block of SIGN_BLOCK entries' rows at a time: of all p × rank of them, with the
    comparison's p × rank booleans and the flipped copy, they were three p × rank arrays at the Gram route's
    peak (docs/benchmarks.md, "The Gram route's eigenvectors"). The same rows are chosen: |·| is exact, and
    max|v| is max(max v, −min v)."""
    if vectors.size == 0:
        return vectors
    columns = vectors.shape[1]
    threshold = np.maximum(vectors.max(axis=0), -vectors.min(axis=0)) * (1.0 - SIGN_TIE_RTOL)
    rows = np.full(columns, -1)
    step = max(1, SIGN_BLOCK // columns)
    for start in range(0, vectors.shape[0], step):
        reached = np.abs(vectors[start : start + step]) >= threshold
        first = (rows < 0) & reached.any(axis=0)
        rows[first] = start + np.argmax(reached, axis=0)[first]
        if np.all(rows >= 0):
            break
    signs = np.sign(vectors[rows, np.arange(columns)])
    signs[signs == 0] = 1.0
    if in_place:
        vectors *= signs
        return vectors
    return vectors * signs


#: From this size on, torch's LAPACK (when torch is already loaded, as in `fdl analyze`) decomposes
#: faster than numpy's: 21–28 against 34–36 ms at p = 512 on 2 cores (docs/benchmarks.md).
TORCH_EIGH_MIN_SIZE = 128


def _descending_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric matrix (its lower triangle), largest first: LAPACK's syevd through
    torch when torch is loaded and the matrix is large, else through numpy. The pure core never
    imports torch (nor scipy, which would cost `fdl compare` 0.3 s)."""
    torch = sys.modules.get("torch")
    failures: tuple[type[Exception], ...] = (np.linalg.LinAlgError,)
    try:
        if torch is not None and matrix.shape[0] >= TORCH_EIGH_MIN_SIZE and matrix.dtype == np.float64:
            failures += (torch.linalg.LinAlgError,)
            # No copy of a C-ordered, writable matrix: torch's eigh copies its input into the eigenvectors' array
            # itself, so one more copy was one more C×C (p×p) float64 at the run's peak (docs/benchmarks.md,
            # twenty-seventh session: outputs' memory); the input is read, never written.
            values_t, vectors_t = torch.linalg.eigh(torch.from_numpy(np.require(matrix, np.float64, ["C", "W"])))
            values, vectors = values_t.numpy(), vectors_t.numpy()  # vectors column-major, as LAPACK leaves them
        else:
            values, vectors = np.linalg.eigh(matrix)
    except failures as exc:
        raise NumericalError(
            f"the eigen-decomposition of a {matrix.shape[0]}×{matrix.shape[1]} matrix did not converge",
            got=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            fix="check the features for extreme values (a diverged checkpoint), or use --dtype float32",
        ) from None
    # order="K": the layout is kept, column-major from torch's LAPACK (each eigenvector contiguous:
    # half a millisecond less to copy at p = 512 than turning it row-major, and fix_signs reads down
    # the columns); numpy's route hands them out row-major.
    return values[::-1].copy(), vectors[:, ::-1].copy(order="K")


def _symmetrized(matrix: np.ndarray) -> np.ndarray:
    """(M + Mᵀ) / 2, through torch when it is loaded and M is large (numpy reads Mᵀ with a stride of a
    row: 1.2–1.4 against ~0.6 ms at p = 512 on 2 cores). The same numbers either way: the sum is
    rounded once and halving is exact."""
    torch = sys.modules.get("torch")
    if torch is None or matrix.shape[0] < TORCH_EIGH_MIN_SIZE or matrix.dtype != np.float64 or not _torch_viewable(matrix):
        return (matrix + matrix.T) / 2.0
    tensor = torch.from_numpy(matrix)
    return (tensor + tensor.T).mul_(0.5).numpy()


def _truncate(values: np.ndarray, floor: float = 0.0) -> tuple[int, float]:
    """Rank r (values > ρ_1·RANK_RTOL, SPEC §2; r = 0 when ρ_1 ≤ floor, a spectrum that is rounding
    noise of centering) and the most negative value relative to ρ_1 (0 if none).

    The floor decides only that degenerate case: it can lie far above ρ_1·RANK_RTOL (the Gram route's
    kept features are not shifted, so it is 1e-12 × their mean square about their first row; unshifted sums of features
    with a mean of a few standard deviations), where it cut resolved eigenvalues
    (tests/test_spectrum_floor.py)."""
    top = float(values[0]) if values.size else 0.0
    if top <= floor or top <= 0.0:
        return 0, 0.0
    most_negative = float(min(values.min(), 0.0)) / top
    return int(np.count_nonzero(values > top * RANK_RTOL)), most_negative


def _uncentered_trace(moments: Moments) -> float:
    """tr(Σ(φ−a)(φ−a)ᵀ)/n about the sums' shift a (0 for raw sums), the scale of the rounding noise
    left by centering."""
    if moments.sum_ff is not None:
        return float(np.trace(moments.sum_ff)) / moments.n
    about = 0.0 if moments.shift_f is None else moments.shift_f
    return sum(float(np.sum(np.square(block, out=block))) for block in _kept_blocks(moments, about)) / moments.n


#: Rows of the kept features taken at a time where they are moved to another point (`_kept_blocks`).
KEPT_BLOCK = 1024


def _kept_blocks(moments: Moments, point: np.ndarray | float) -> Iterator[np.ndarray]:
    """The kept features less `point` (float64), a block of KEPT_BLOCK rows at a time: no n×p copy."""
    assert moments.features is not None
    for start in range(0, moments.n, KEPT_BLOCK):
        yield np.subtract(moments.features[start : start + KEPT_BLOCK], point, dtype=np.float64)


def _gram_route(moments: Moments) -> bool:
    """Whether the spectrum comes from the n×n Gram of the kept features (p > n)."""
    return moments.features is not None and moments.n_features > moments.n


def _centered_kept(moments: Moments) -> np.ndarray:
    """F_c of the kept features (never shifted by the sums), centered about their first row a first: F − a,
    then minus its probe mean (one copy of F), so features constant over the probe give exactly 0 and the
    rounding left is eps × their spread about a, not about 0 (`_centering_scale`)."""
    assert moments.features is not None
    centered = np.subtract(moments.features, moments.features[:1], dtype=np.float64)
    centered -= centered.mean(axis=0)
    return centered


def _centering_scale(moments: Moments) -> float:
    """The scale of the rounding noise in a centered feature energy (tr Σ_c). On the Gram route, formed from
    the kept features centered by subtraction (`_centered_kept`): their mean square about the first row a
    (summed over blocks of rows, without a copy of F). Else, formed as a difference of sums: their mean square
    about the sums' shift (`_uncentered_trace`). About 0, the Gram route's floor counted a float64 layer far
    from 0 (a mean 10⁶ times its spread) as constant features (D_LR 1.0, feature_pr 0, `--center` rank 0)."""
    if not _gram_route(moments):
        return _uncentered_trace(moments)
    assert moments.features is not None
    blocks = _kept_blocks(moments, moments.features[:1])
    return sum(float(np.sum(np.square(block, out=block))) for block in blocks) / moments.n


def _check_statistics(moments: Moments) -> None:
    """Before any measure is taken: the statistics finite, and within float64's range over the whole probe."""
    _check_finite(moments)
    if moments.peaks is not None:
        from fdl_cli.moments import check_range

        check_range(moments.peaks)  # float64 values too small (or too large) over the whole probe


def feature_spectrum(moments: Moments, *, center: bool = False) -> Spectrum:
    """Eigenpairs of M = FᵀF/n (or the centered covariance), by the p×p or the n×n Gram route."""
    _check_statistics(moments)
    return _spectrum(moments, center=center, centering_scale=None)


def _spectrum(moments: Moments, *, center: bool, centering_scale: float | None) -> Spectrum:
    """`feature_spectrum` of checked statistics; `centering_scale`: `_centering_scale(moments)` when known."""
    if not center:
        moments = moments.unshifted()
    n = moments.n
    mean = moments.mean_f if center else None
    if center and centering_scale is None:
        centering_scale = _centering_scale(moments)
    floor = CANCELLATION_RTOL * centering_scale if center and centering_scale is not None else 0.0
    norms = None
    if _gram_route(moments):
        # One n×n product whichever is asked: the centered Gram G_c = F_cF_cᵀ/n, whose trace and
        # norm D_LR's participation ratio takes too, and for the uncentered spectrum G = FFᵀ/n =
        # G_c + (u1ᵀ + 1uᵀ) + ‖μ‖²/n·11ᵀ with u = F_cμ/n (O(np + n²)). Built this way round, G carries
        # the rounding a direct FFᵀ would (eps × the entries' size, which the mean dominates), while
        # centering a direct G by subtraction would lose the spread's digits to the mean.
        assert moments.features is not None
        probe_mean = moments.mean_f  # the raw sums here (uncentered), and the kept features are never shifted
        # Each array is let go once used, and the p × rank eigenvectors are divided and their signs fixed in
        # place: the uncentered spectrum's n×p centered copy, the Gram and two p × rank copies were alive at
        # the route's peak (docs/benchmarks.md, "The Gram route's eigenvectors"); the same numbers.
        centered = _centered_kept(moments)
        gram = centered @ centered.T
        gram /= n
        norms = (float(np.trace(gram)), float(np.linalg.norm(gram)))
        if mean is not None:
            feats = centered
        else:
            feats = moments.features
            offsets = centered @ probe_mean / n
            gram += offsets[:, None] + offsets[None, :]  # (u_i + u_j) first: G stays exactly symmetric
            gram += float(probe_mean @ probe_mean) / n
        del centered
        values, left = _descending_eigh(gram)
        del gram
        rank, clipped = _truncate(values, floor)
        values = values[:rank]
        # v_k = Fᵀ u_k / √(n ρ_k): the right singular vectors of F/√n.
        vectors = feats.T @ left[:, :rank]
        del feats, left
        vectors /= np.sqrt(n * values)
        route = "gram"
    else:
        second = moments.second_moment_sum() / n  # about the shift a (0 when uncentered); a new array
        if center:
            deviation = moments.sum_f / n  # μ − a
            second -= np.outer(deviation, deviation)  # in place: one p×p array less to allocate and write
        second = _symmetrized(second)
        values, vectors = _descending_eigh(second)
        rank, clipped = _truncate(values, floor)
        values, vectors = values[:rank], vectors[:, :rank]
        route = "moments"
    return Spectrum(
        eigenvalues=np.maximum(values, 0.0),
        eigenvectors=fix_signs(vectors, in_place=route == "gram"),  # the Gram route's are its own; p×p: a view
        mean=mean,
        clipped=clipped if clipped < -NEGATIVE_WARN_RTOL else 0.0,
        route=route,
        covariance_norms=norms,
    )


def _cross(moments: Moments, sum_fg: np.ndarray, sum_g: np.ndarray, center: bool) -> np.ndarray:
    """(1/n) Σ_i φ_i g_iᵀ, centered on the probe when asked (p, C). Uncentered: raw sums only."""
    assert center or not moments.shifted, "uncentered products need the raw sums (Moments.unshifted)"
    n = moments.n
    cross = sum_fg / n
    if center:
        cross = cross - np.outer(moments.sum_f / n, sum_g / n)
    return cross


def _energy(sum_gg: np.ndarray, sum_g: np.ndarray, n: int, center: bool) -> float:
    """Σ_c ⟨g_c, g_c⟩ (of the centered g when asked; 0 when within rounding of the energy about the
    sums' shift point). Uncentered: raw sums only."""
    about_shift = float(np.trace(sum_gg)) / n
    if not center:
        return max(about_shift, 0.0)
    energy = about_shift - float(sum_g @ sum_g) / n**2
    return energy if energy > CANCELLATION_RTOL * about_shift else 0.0


#: Shares Q_k summing to at most this (Π(r) ≤ SHARE_FLOOR) are rounding noise: the function lies outside
#: the span of the features (Π(r) = 0 in exact arithmetic, where float64 leaves Π(r) of 1e-30 – 1e-20).
SHARE_FLOOR = CANCELLATION_RTOL


def alignment(spectrum: Spectrum, cross: np.ndarray, energy: float) -> np.ndarray:
    """Q_k = Σ_c a_kc² / energy with a_kc = v_kᵀ cross_c / √ρ_k (SPEC.md §3); zeros when energy is 0, and
    when the shares sum to at most SHARE_FLOOR (a function orthogonal to every eigenfunction: its shares
    are rounding noise, from which k_τ and the effective dimension would be drawn)."""
    if spectrum.rank == 0:
        return np.zeros(0)
    coefficients = spectrum.eigenvectors.T @ cross / np.sqrt(spectrum.eigenvalues)[:, None]
    if energy <= 0.0:
        return np.zeros(spectrum.rank)
    shares = np.sum(coefficients**2, axis=1) / energy
    if float(np.sum(shares)) <= SHARE_FLOOR:
        return np.zeros(spectrum.rank)
    return shares


def k_tau(cumulative: np.ndarray, tau: float) -> int | None:
    """min{k : Π(k) ≥ τ·Π(r)} (1-based), None when Π(r) = 0 or r = 0.

    Π(k) counts as reaching τ·Π(r) when short of it by at most r·eps·Π(r), the rounding of the comparison: the
    float64 running sums of the non-negative Q_k are off by at most (k−1)·eps/2 and (r−1)·eps/2 of Π(r), τ·Π(r)
    by eps/2 more, (k + r)·eps/2 ≤ r·eps in all. Without it an exact tie was decided by that rounding: C = 20
    balanced classes (every Q̂_k = 1/20, Π(18) = 0.9·Π(20)) read k90 = 19, where it is 18."""
    if cumulative.size == 0 or cumulative[-1] <= 0.0:
        return None
    total = float(cumulative[-1])
    return int(np.argmax(cumulative >= tau * total - cumulative.size * K_TAU_EPS * total)) + 1


def effective_dimension(weights: np.ndarray) -> float:
    """D(q) = exp(−Σ q̃ ln q̃), q̃ = q/Σq (0 ln 0 = 0); 0.0 for an empty or all-zero q."""
    weights = np.asarray(weights, dtype=np.float64)
    total = float(weights.sum()) if weights.size else 0.0
    if total <= 0.0:
        return 0.0
    share = weights[weights > 0] / total
    return float(math.exp(-float(np.sum(share * np.log(share)))))


def _cumulative_at(cumulative: np.ndarray | None, k: int) -> float | None:
    if cumulative is None:
        return None
    if cumulative.size == 0:
        return 0.0
    # At most 1 (docs/measures.md): the shares of a function the eigenfunctions span wholly add up to 1 only to
    # rounding, and a probe of one sample gave pi_star_C = 1.0000000000000004 (tests/test_s27_scale.py).
    return min(float(cumulative[min(k, cumulative.size) - 1]), 1.0)


@dataclass(frozen=True)
class DLR:
    """D_LR and its factors (SPEC.md §4): d_lr = 1 − alignment·√(pr / output_rank)."""

    d_lr: float
    output_rank: int
    alignment: float
    participation_ratio: float


def _centered_covariance_norms(moments: Moments) -> tuple[float, float]:
    """(tr Σ_c, ‖Σ_c‖_F) of the centered feature covariance Σ_c = F_cᵀF_c/n."""
    n = moments.n
    mean = moments.sum_f / n
    if _gram_route(moments):
        feats = _centered_kept(moments)
        gram = feats @ feats.T / n
        return float(np.trace(gram)), float(np.linalg.norm(gram))
    cov = moments.second_moment_sum() / n - np.outer(mean, mean)
    return float(np.trace(cov)), float(np.linalg.norm(cov))


def output_span_rank(energies: np.ndarray, energy_share: float, *, floor: float = 0.0) -> int:
    """r_Ŷ of SPEC.md §4 from the descending eigenvalues s_i² of Ŷ_cᵀŶ_c.

    Energies at or below `floor` (the rounding noise of the centering) count as zero.
    """
    if energies.size == 0 or energies[0] <= max(floor, 0.0):
        return 0
    if energy_share >= 1.0:
        return int(np.count_nonzero(energies > max(energies[0] * RANK_RTOL**2, floor)))
    positive = np.where(energies > floor, energies, 0.0)
    cumulative = np.cumsum(positive)
    return int(np.argmax(cumulative >= energy_share * cumulative[-1])) + 1


def dynamical_low_rank(
    moments: Moments,
    *,
    energy_share: float = DLR_ENERGY,
    covariance_norms: tuple[float, float] | None = None,
    centering_scale: float | None = None,
) -> DLR:
    """D_LR = 1 − ‖QᵀF_c‖_F² / (‖F_cᵀF_c‖_F √r_Ŷ) from the statistics (SPEC.md §4).

    `covariance_norms`: (tr Σ_c, ‖Σ_c‖_F) when already known (`Spectrum.covariance_norms`); `centering_scale`:
    `_centering_scale(moments)` when already known.
    Degenerate cases: no centered output energy (r_Ŷ = 0) or no centered feature energy → d_lr = 1
    (nothing rich can be seen), alignment = 0; participation ratio 0 for zero features.
    """
    if not 0.0 < energy_share <= 1.0:
        raise NumericalError(
            "the D_LR energy share η must lie in (0, 1]", got=str(energy_share), fix="pass --dlr-energy 0.99"
        )
    n = moments.n
    out_mean = moments.sum_o / n
    # Formed in place, and let go before the decomposition: with C outputs each C×C float64 less at once is C²
    # less at the run's peak (docs/benchmarks.md, twenty-seventh session: outputs' memory); the same numbers.
    out_cov = moments.sum_oo / n
    out_cov -= np.outer(out_mean, out_mean)
    symmetric = _symmetrized(out_cov)
    del out_cov
    energies, directions = _descending_eigh(symmetric)
    del symmetric
    rank = output_span_rank(
        energies, energy_share, floor=CANCELLATION_RTOL * float(np.trace(moments.sum_oo)) / n
    )
    trace, frob = covariance_norms if covariance_norms is not None else _centered_covariance_norms(moments)
    if trace <= CANCELLATION_RTOL * (_centering_scale(moments) if centering_scale is None else centering_scale):
        trace = frob = 0.0
    pr = trace**2 / frob**2 if frob > 0.0 else 0.0
    if rank == 0 or trace <= 0.0:
        return DLR(d_lr=1.0, output_rank=rank, alignment=0.0, participation_ratio=float(pr))
    cross = _cross(moments, moments.sum_fo, moments.sum_o, center=True)  # F_cᵀŶ_c / n, (p, C)
    # ‖QᵀF_c‖_F²/n = Σ_i ‖cross w_i‖² / λ_i with λ_i = s_i²/n, u_i = Ŷ_c w_i / s_i.
    projected = cross @ directions[:, :rank]
    inside = float(np.sum(np.sum(projected**2, axis=0) / energies[:rank]))
    share = min(max(inside / trace, 0.0), 1.0)
    d_lr = 1.0 - inside / (frob * math.sqrt(rank))
    return DLR(
        d_lr=float(min(max(d_lr, 0.0), 1.0)),
        output_rank=rank,
        alignment=share,
        participation_ratio=float(pr),
    )


def neural_collapse_nc1(moments: Moments) -> float | None:
    """NC1 = (1/C') tr(Σ_W Σ_B⁺) over the C' classes present (SPEC.md §6); None with < 2 classes, or
    with Σ_B = 0 (tr Σ_B at or below CANCELLATION_RTOL of the features' mean square about the shift).

    Σ_W = (1/n) Σ_i (φ_i − μ_{c(i)})(φ_i − μ_{c(i)})ᵀ, Σ_B = (1/C') Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ;
    singular values of the class-mean matrix below RANK_RTOL·s_max count as zero in the pseudo-inverse.
    """
    if moments.task != "classes" or moments.class_counts is None or moments.class_sum_f is None:
        return None
    counts = moments.class_counts
    present = counts > 0
    n_present = int(np.count_nonzero(present))
    if n_present < 2:
        return None
    means = moments.class_sum_f[present] / counts[present, None]  # (C', p)
    # μ_G from the class sums (equal to Σφ/n in exact arithmetic): Σ_c n_c(μ_c − μ_G) = 0 must hold to
    # rounding so that the null direction of Σ_B falls under the RANK_RTOL cut of the pseudo-inverse.
    global_mean = moments.class_sum_f[present].sum(axis=0) / counts[present].sum()
    between = (means - global_mean).T  # (p, C')
    left, singular, _ = np.linalg.svd(between, full_matrices=False)
    # tr Σ_B = Σ_j s_j² / C' is a centered energy: at or below CANCELLATION_RTOL of the features' mean square
    # about the sums' shift it is rounding noise (class means equal in exact arithmetic differ by ~1e-16 of the
    # features' size), and the pseudo-inverse of that noise made NC1 ~1e33: Σ_B = 0, None.
    if singular.size == 0 or float(np.sum(singular**2)) / n_present <= CANCELLATION_RTOL * _uncentered_trace(moments):
        return None
    keep = singular > singular[0] * RANK_RTOL
    left, singular = left[:, keep], singular[keep]
    # u_jᵀ Σ_W u_j = (u_jᵀ Σ(φ−a)(φ−a)ᵀ u_j − Σ_c n_c (u_jᵀ (μ_c − a))²) / n, about the sums' shift a (0: raw)
    if moments.features is not None and moments.sum_ff is None:
        about = 0.0 if moments.shift_f is None else moments.shift_f
        total = sum(np.sum((block @ left) ** 2, axis=0) for block in _kept_blocks(moments, about))
    else:
        total = np.sum(left * (moments.second_moment_sum() @ left), axis=0)  # diag(LᵀML), one BLAS product
    within_class = (total - np.sum(counts[present, None] * (means @ left) ** 2, axis=0)) / moments.n
    within_class = np.maximum(within_class, 0.0)
    return float(np.sum(within_class * n_present / singular**2) / n_present)


def _shift_gap(moments: Moments) -> np.ndarray | None:
    """b − c, (C,): the outputs' shift less the targets' (None: neither sum is shifted)."""
    if moments.shift_o is None and moments.shift_y is None:
        return None
    gap = (moments.shift_o if moments.shift_o is not None else 0.0) - (
        moments.shift_y if moments.shift_y is not None else 0.0
    )
    return np.broadcast_to(np.asarray(gap, dtype=np.float64), (moments.n_outputs,))


def r2_per_output(moments: Moments) -> np.ndarray | None:
    """R² of each output j, (C,) float64: 1 − Σ_i (ŷ_ij − y_ij)² / Σ_i (y_ij − ȳ_j)² (docs/measures.md,
    `r2_outputs`); NaN for a target column constant over the probe (its Σ(y − ȳ)² at or below CANCELLATION_RTOL
    of its Σ(y − c)² about the shift: R² is 0/0 there). None unless the probe holds regression targets of
    more than one output (the pooled `r2` is then all there is)."""
    if moments.task != "regression" or not moments.has_targets or moments.n_outputs < 2:
        return None
    assert moments.sum_yy is not None and moments.sum_y is not None
    about_shift = np.diagonal(moments.sum_yy)
    total = about_shift - moments.sum_y**2 / moments.n
    assert moments.sum_oy is not None
    # each output's Σ(ŷ_j − y_j)², as `_performance` sums them over j
    residual = np.diagonal(moments.sum_oo) - 2.0 * np.diagonal(moments.sum_oy) + about_shift
    if (gap := _shift_gap(moments)) is not None:
        residual = residual + 2.0 * gap * (moments.sum_o - moments.sum_y) + moments.n * gap * gap
    residual = np.maximum(residual, 0.0)
    constant = total <= CANCELLATION_RTOL * about_shift
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 1.0 - residual / np.where(constant, 1.0, total)
    return np.where(constant, np.nan, values)


def _performance(moments: Moments) -> dict[str, float | None]:
    """accuracy, loss (MSE per output entry) and r2 (regression) of SPEC.md §6, and cross_entropy
    (classes: the mean natural-log cross-entropy of the outputs as logits)."""
    result: dict[str, float | None] = {"accuracy": None, "loss": None, "r2": None, "cross_entropy": None}
    if not moments.has_targets:
        return result
    assert moments.sum_yy is not None and moments.sum_oy is not None and moments.sum_y is not None
    n, outputs = moments.n, moments.n_outputs
    # Σ‖ŷ − y‖² from the sums about b and c: ŷ − y = (ŷ − b) − (y − c) + (b − c); the last two terms
    # vanish for raw sums, and with shifts near the means nothing large cancels.
    residual = float(np.trace(moments.sum_oo) - 2.0 * np.trace(moments.sum_oy) + np.trace(moments.sum_yy))
    if (gap := _shift_gap(moments)) is not None:
        residual += float(2.0 * gap @ (moments.sum_o - moments.sum_y) + n * (gap @ gap))
    result["loss"] = max(residual, 0.0) / (n * outputs)
    if moments.task == "classes":
        result["accuracy"] = moments.n_correct / n
        result["cross_entropy"] = None if moments.sum_xent is None else moments.sum_xent / n
    else:
        total = float(np.trace(moments.sum_yy)) - float(moments.sum_y @ moments.sum_y) / n
        result["r2"] = 1.0 - max(residual, 0.0) / total if total > 0.0 else None
    return result


def _top_columns(vectors: np.ndarray, k: int) -> np.ndarray:
    """The first k columns of `vectors`, a copy when fewer than all: a view kept all p × rank eigenvectors
    alive in the store writer's buffer until the entry was committed, one p×p float64 more at the next
    checkpoint's peak (docs/benchmarks.md, "The memory estimate against the peak")."""
    return vectors if k >= vectors.shape[1] else vectors[:, :k].copy(order="K")


def measure(
    moments: Moments,
    *,
    center: bool = False,
    top_k: int = TOP_K,
    dlr_energy: float = DLR_ENERGY,
) -> CheckpointMeasures:
    """All single-checkpoint measures from the statistics (SPEC.md §2-§4, §6).

    Returns eigenvalues (r,), the top min(top_k, r) eigenvectors (p, K), Q*, Q̂, Π*, Π̂ and the
    scalar fields of `fdl_cli.fields.MEASURE_FIELDS` that one checkpoint determines.
    """
    if moments.n < 1:
        raise NumericalError("the probe is empty", got="n = 0 samples", fix="use a probe with samples")
    # What reads the kept features a block of rows at a time (the Gram route's centering scale, NC1) runs before
    # the spectrum: the blocks (up to KEPT_BLOCK × p float64) were alive beside its p × rank eigenvectors.
    _check_statistics(moments)
    scale = _centering_scale(moments)
    nc1 = neural_collapse_nc1(moments)
    spectrum = _spectrum(moments, center=center, centering_scale=scale)
    n = moments.n
    # Centered measures take the shifted sums (shift-invariant, precise); uncentered ones the raw sums.
    base = moments if center else moments.unshifted()
    output_energy = _energy(base.sum_oo, base.sum_o, n, center)
    utility = alignment(spectrum, _cross(base, base.sum_fo, base.sum_o, center), output_energy)
    quality, target_energy = None, 0.0
    if base.has_targets:
        assert base.sum_fy is not None and base.sum_y is not None and base.sum_yy is not None
        target_energy = _energy(base.sum_yy, base.sum_y, n, center)
        quality = alignment(spectrum, _cross(base, base.sum_fy, base.sum_y, center), target_energy)
    pi_hat = np.cumsum(utility)
    pi_star = np.cumsum(quality) if quality is not None else None
    dlr = dynamical_low_rank(moments, energy_share=dlr_energy, covariance_norms=spectrum.covariance_norms,
                             centering_scale=scale)
    n_outputs = moments.n_outputs
    scalars: dict[str, Any] = {
        "n_probe": n,
        "n_features": moments.n_features,
        "n_outputs": n_outputs,
        "rank": spectrum.rank,
        "d_lr": dlr.d_lr,
        "output_rank": dlr.output_rank,
        "dlr_alignment": dlr.alignment,
        "feature_pr": dlr.participation_ratio,
        "eff_dim": effective_dimension(spectrum.eigenvalues),
        "eff_dim_quality": effective_dimension(quality) if quality is not None else None,
        "eff_dim_utility": effective_dimension(utility),
    }
    for tau in TAUS:
        name = f"k{round(tau * 100)}"
        scalars[f"{name}_quality"] = k_tau(pi_star, tau) if pi_star is not None else None
        scalars[f"{name}_utility"] = k_tau(pi_hat, tau)
    # Π(C) of a function without energy (all-zero targets or outputs; constant ones when centered) is 0/0:
    # None, where 0.0 would read as features that carry none of it (k_τ is None there too).
    scalars["pi_star_C"] = _cumulative_at(pi_star, n_outputs) if target_energy > 0.0 else None
    scalars["pi_hat_C"] = _cumulative_at(pi_hat, n_outputs) if output_energy > 0.0 else None
    scalars["nc1"] = nc1
    scalars.update(_performance(moments))
    return CheckpointMeasures(
        spectrum=spectrum,
        eigenvectors=_top_columns(spectrum.eigenvectors, top_k),
        quality=quality,
        utility=utility,
        pi_star=pi_star,
        pi_hat=pi_hat,
        scalars=scalars,
        r2_outputs=r2_per_output(moments),
    )


# ------------------------------------------------------------------------ cross-checkpoint measures


def eigenfunctions(features: np.ndarray, spectrum: Spectrum, *, k: int | None = None) -> np.ndarray:
    """Nyström values e_k(x) = (Φ(x) − mean)·v_k / √ρ_k of the top k at given inputs, (m, k) float64."""
    count = spectrum.rank if k is None else min(k, spectrum.rank)
    feats = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
    if spectrum.mean is not None:
        feats = feats - spectrum.mean
    values = _product(feats, spectrum.eigenvectors[:, :count])
    values /= np.sqrt(spectrum.eigenvalues[:count])
    return values


#: From this many multiply-adds on, a float64 product goes through torch when torch is loaded.
TORCH_PRODUCT_MIN_SIZE = 1 << 22


def _torch_viewable(array: np.ndarray) -> bool:
    """Whether torch.from_numpy takes `array` as it is, without a warning: writable, native byte
    order, strides non-negative whole multiples of the item size."""
    return (
        array.flags.writeable
        and array.dtype.isnative
        and all(stride >= 0 and stride % array.itemsize == 0 for stride in array.strides)
    )


def _product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left @ right (float64), through torch's BLAS when torch is already loaded and the product is
    large. In `fdl analyze` torch's OpenMP workers keep spinning for a while after each operation;
    numpy's OpenBLAS threads then compete with them for the same cores, and the anchors'
    eigenfunctions (4 096×512 by 512×64) took 6–8 ms through numpy against ~2.5 ms through torch
    (docs/benchmarks.md). The pure core never imports torch.

    Through torch it is computed as (rightᵀ leftᵀ)ᵀ: for a tall left and a narrow right (the
    anchors' 4 096×512 by 512×64) MKL runs that shape at twice the speed of left @ right (5.3
    against 10.3 ms on one thread, docs/benchmarks.md), with float64 digits as good (they differ from
    the other order's by rounding, ~1e-15 relative). The result is made C-contiguous again (one copy
    of the small (m, k) result)."""
    torch = sys.modules.get("torch")
    if (
        torch is None
        or left.dtype != np.float64
        or right.dtype != np.float64
        or left.ndim != 2
        or right.ndim != 2
        or left.shape[0] * left.shape[1] * right.shape[1] < TORCH_PRODUCT_MIN_SIZE
        or not (_torch_viewable(left) and _torch_viewable(right))
    ):
        return left @ right
    return np.ascontiguousarray((torch.from_numpy(right).T @ torch.from_numpy(left).T).numpy().T)


def _center_columns(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """(A_c, ‖A − a‖_F²), A_c taken about the first row a first: rows equal to a stay exactly 0, and the
    energy the centering is judged by (`constant_rows`) does not grow with the features' distance from 0."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(matrix.shape[0], -1)
    shifted = matrix - matrix[:1]
    return shifted - shifted.mean(axis=0), float(np.sum(shifted * shifted))


def constant_rows(centered_energy: float, energy: float) -> bool:
    """Whether a matrix whose centered columns carry `centered_energy` (‖A_c‖_F²) of its `energy` (‖A − a‖_F²
    about its first row a) is constant on its rows: A_c is 0, or rounding of the centering (at or below
    CANCELLATION_RTOL of the energy). CKA with such a matrix is 0/0 (`cka`). About 0, the energy of features
    far from 0 would put their spread below the share (a float64 layer on a mean 10⁶ times its spread)."""
    return centered_energy <= CANCELLATION_RTOL * energy


def cka(features_a: np.ndarray, features_b: np.ndarray) -> float | None:
    """Centered linear CKA ‖F_aᵀF_b‖_F² / (‖F_aᵀF_a‖_F ‖F_bᵀF_b‖_F) of two (m, p_a), (m, p_b) matrices.

    None (undefined: 0/0) when either is constant on the samples (`constant_rows`: a dead layer, zero
    features), both included; no value of CKA there would be a measurement.
    """
    if features_a.shape[0] != features_b.shape[0]:
        raise NumericalError(
            "CKA needs the features of the same inputs",
            got=f"{features_a.shape[0]} and {features_b.shape[0]} samples",
            fix="compare checkpoints analysed with the same probe and anchor size",
        )
    (a, energy_a), (b, energy_b) = _center_columns(features_a), _center_columns(features_b)
    for centered, energy in ((a, energy_a), (b, energy_b)):
        if constant_rows(float(np.sum(centered * centered)), energy):
            return None
    m, pa, pb = a.shape[0], a.shape[1], b.shape[1]
    if m * m * (pa + pb) < m * (pa * pb + pa * pa + pb * pb):
        ka, kb = a @ a.T, b @ b.T
        cross, norm_a, norm_b = float(np.sum(ka * kb)), float(np.linalg.norm(ka)), float(np.linalg.norm(kb))
    else:
        cross = float(np.linalg.norm(a.T @ b) ** 2)
        norm_a, norm_b = float(np.linalg.norm(a.T @ a)), float(np.linalg.norm(b.T @ b))
    if norm_a == 0.0 or norm_b == 0.0:
        return None
    return float(min(max(cross / (norm_a * norm_b), 0.0), 1.0))


def orthonormal_basis(columns: np.ndarray) -> np.ndarray:
    """Orthonormal basis (m, r) of the span of the columns (SVD, rank cut at RANK_RTOL·s_1)."""
    if columns.size == 0:
        return np.zeros((columns.shape[0], 0))
    left, singular, _ = np.linalg.svd(np.asarray(columns, dtype=np.float64), full_matrices=False)
    if singular[0] <= 0.0:
        return np.zeros((columns.shape[0], 0))
    return left[:, singular > singular[0] * RANK_RTOL]


def eigenspace_overlap(
    values_a: np.ndarray, values_b: np.ndarray, *, k: int, points: int | None = None
) -> float | None:
    """O_k = ‖Q_aᵀQ_b‖_F² / d of the top-k eigenfunctions' values on shared inputs (SPEC.md §5).

    k is reduced to the columns available on both sides and to the number of inputs m; d is the larger
    dimension of the two spans, k unless the k columns are linearly dependent on these inputs (k
    vectors on m < k inputs, or on inputs that repeat, span fewer dimensions: dividing by k would put
    O(s, s) at d/k). None when that leaves nothing to compare, or when both spans are all of R^m (k ≥ m
    columns of full rank) or, with `points` (the number of distinct inputs among the m, whose rows repeat
    where the inputs do), as many dimensions as there are distinct inputs: the overlap is then 1
    whatever the features do.
    """
    if values_a.shape[0] != values_b.shape[0]:
        raise NumericalError(
            "eigenspace overlap needs eigenfunction values on the same inputs",
            got=f"{values_a.shape[0]} and {values_b.shape[0]} anchor points",
            # only two runs' stores differ so (`fdl compare`): its option that compares the fields all the same
            fix="compare runs analysed with the same probe and --anchor-size, or pass --no-overlap to compare only "
                "the per-checkpoint fields",
        )
    k = min(k, values_a.shape[1], values_b.shape[1], values_a.shape[0])
    if k <= 0:
        return None
    basis_a = orthonormal_basis(values_a[:, :k])
    basis_b = orthonormal_basis(values_b[:, :k])
    return basis_overlap(basis_a, basis_b, points=values_a.shape[0] if points is None else min(points, values_a.shape[0]))


def basis_overlap(basis_a: np.ndarray, basis_b: np.ndarray, *, points: int) -> float | None:
    """‖Q_aᵀQ_b‖_F² / d of two orthonormal bases on the same inputs, d the larger dimension; None when one is
    empty or both span all `points` distinct inputs (1 whatever the features do). `eigenspace_overlap`'s
    rule, shared with the pipeline's overlaps from cached bases."""
    dimension = max(basis_a.shape[1], basis_b.shape[1])
    if dimension == 0 or min(basis_a.shape[1], basis_b.shape[1]) >= points:
        return None
    return min(float(np.linalg.norm(basis_a.T @ basis_b)) ** 2 / dimension, 1.0)


def merge_all(parts: Sequence[Moments]) -> Moments:
    """Merge the statistics of several disjoint shards.

    **(choice)** Kept, with `Moments.merge`, as the library's way to add shards (docs/measures.md names both), though
    no command calls it: torchrun's probe slices are added by `distributed`'s all-reduce of the same sums, and the
    tests check both against one pass over the whole probe."""
    result = parts[0]
    for part in parts[1:]:
        result = result.merge(part)
    return result
