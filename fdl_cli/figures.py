"""Figures of a run and of two compared runs (matplotlib, Agg; imported only when figures are asked for).

Uses matplotlib's object API (`Figure` + the Agg canvas), never pyplot: no global figure state, no GUI
backend, safe in a headless process. Each `*_figure` function takes plain arrays and returns a `Figure`;
`run_figures` / `compare_figures` pull the arrays from a store and draw them, `write_run_figures` /
`write_compare_figures` write them as PNG + SVG files.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def _folder_usable(folder: Path | None, home: Path | None) -> bool:
    """Whether matplotlib can keep its files in `folder`, made as matplotlib makes it (`mkdir -p`), but never
    making a home folder that does not exist (HOME=/nonexistent as root made /nonexistent/.cache)."""
    if folder is None:
        return False
    if home is not None and folder.is_relative_to(home) and not home.is_dir():
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


def _own_folder(folder: Path) -> bool:
    """Whether `folder` exists (made here, mode 0700, if not) as a real folder (no link) that this user owns and
    may use, and that no one else may write: a name in a shared temporary folder anyone could have made first,
    with a link to a folder of theirs, or room for files of theirs (a matplotlibrc, a font list naming their
    files). Its parent, if others may write it, must be sticky (as /tmp is), or they could rename the folder."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        mode = os.lstat(folder)
        above = os.stat(folder.parent)
    except OSError:
        return False
    return (stat.S_ISDIR(mode.st_mode) and mode.st_uid == os.geteuid() and mode.st_mode & 0o077 == 0
            and mode.st_mode & 0o700 == 0o700
            and (above.st_mode & 0o022 == 0 or bool(above.st_mode & stat.S_ISVTX)))


def quiet_matplotlib_folders() -> None:
    """Before matplotlib is imported: when the folders it keeps its configuration and font cache in
    (~/.config/matplotlib and ~/.cache/matplotlib, XDG_CONFIG_HOME and XDG_CACHE_HOME where set; ~/.matplotlib
    on macOS) cannot be made or written (HOME unwritable or missing, as in a container run as another
    user), point MPLCONFIGDIR at a folder of the user's own in the temporary folder, fdl-mpl-UID (`_own_folder`),
    kept from run to run so that matplotlib builds its font cache once (0.3 s with 38 fonts, seconds with
    thousands), not on each run; where that name is not safe to use, at a private temporary folder, removed
    when fdl exits. matplotlib makes such a private folder on its own, but says so on stderr in two warnings
    ("mkdir -p failed ...", "Matplotlib created a temporary cache directory ...") after the report's own lines.
    A MPLCONFIGDIR the user set is left to matplotlib, warnings included: that is the user's own setting
    failing. Windows is left to matplotlib."""
    if "matplotlib" in sys.modules or os.environ.get("MPLCONFIGDIR") or sys.platform == "win32":
        return
    try:
        home: Path | None = Path.home()
    except RuntimeError:  # no HOME and no password entry
        home = None
    if sys.platform.startswith(("linux", "freebsd")):
        bases = [os.environ.get("XDG_CONFIG_HOME") or (home and home / ".config"),
                 os.environ.get("XDG_CACHE_HOME") or (home and home / ".cache")]
        folders = [Path(base, "matplotlib") if base else None for base in bases]
    else:
        folders = [home / ".matplotlib" if home else None]
    if all(_folder_usable(folder, home) for folder in folders):
        return
    try:
        shared = Path(tempfile.gettempdir(), f"fdl-mpl-{os.geteuid()}")
    except OSError:
        return  # no temporary folder either: matplotlib's own error says so
    if _own_folder(shared):
        os.environ["MPLCONFIGDIR"] = str(shared)
        return
    try:
        private = tempfile.mkdtemp(prefix="fdl-matplotlib-")  # mode 0700, a fresh name: no other user's files
    except OSError:
        return
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = private


quiet_matplotlib_folders()

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from fdl_cli.report import (  # noqa: E402
    Comparison,
    Run,
    Series,
    iter_array,
    load_arrays,
    make_folder,
    whole_or_untouched,
    writing,
)
from fdl_cli.spectral import RANK_RTOL  # noqa: E402

#: Checkpoints drawn in the triptych and the eigenfunction panels (evenly spread, first and last kept).
N_SELECTED = 5
#: Eigenvalues drawn in the spectrum heat map, and eigenfunctions drawn against x.
HEATMAP_TOP = 64
N_EIGENFUNCTIONS = 4
N_EIGENFUNCTION_STEPS = 3
#: Deterministic SVG ids and no date in files, so figures of the same store are byte-identical.
SVG_METADATA = {"Date": None}
matplotlib.rcParams["svg.hashsalt"] = "fdl"


@dataclass(frozen=True)
class Curves:
    """The stored spectra of one checkpoint: ρ (r,), Q* (r,) or None, Q̂ (r,)."""

    step: int
    eigenvalues: np.ndarray
    quality: np.ndarray | None
    utility: np.ndarray


def select_steps(steps: Sequence[int], count: int = N_SELECTED) -> list[int]:
    """Up to `count` steps spread evenly over the run (by index), always the first and the last."""
    if len(steps) <= count:
        return list(steps)
    indices = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in indices]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _step_colours(steps: Sequence[int]) -> list[Any]:
    cmap = matplotlib.colormaps["viridis"]
    if len(steps) == 1:
        return [cmap(0.0)]
    return [cmap(i / (len(steps) - 1)) for i in range(len(steps))]


#: The step axes (trajectories, spectrum, a compare's figures) are logarithmic when the checkpoints' positive steps
#: span more than this ratio (two decades: steps 5 … 1000, or log-spaced checkpoints 1 … 100 000), where a linear
#: axis crowds the early checkpoints, those of the fastest change, into its first few pixels. Step 0 is drawn on a
#: symmetric log axis, linear from 0 to the first step after it.
LOG_STEPS_SPAN = 100.0


def log_step_threshold(steps: Iterable[int]) -> float | None:
    """The first positive step, where the step axis of `steps` is logarithmic (`LOG_STEPS_SPAN`), else None."""
    at = [float(step) for step in steps]
    positive = [step for step in at if step > 0]
    if not positive or min(at) < 0 or max(positive) <= LOG_STEPS_SPAN * min(positive):
        return None
    return min(positive)


def _step_label(value: float) -> str:
    """A step axis' tick label: the step as a whole number below 10 000, a power of ten from there (10⁴, not 1e+04)."""
    if value != 0 and abs(value) >= 1e4:
        exponent = np.log10(abs(value))
        if np.isclose(exponent, round(exponent)):
            return rf"$10^{{{round(exponent)}}}$"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _step_axis(ax: Any, steps: Sequence[int]) -> bool:
    """Make `ax`'s x axis logarithmic where `steps` span decades (`log_step_threshold`; symlog when step 0 is
    among them), its ticks labelled as steps (0, 10, 100, 1000); returns whether it did."""
    threshold = log_step_threshold(steps)
    if threshold is None:
        return False
    if min(steps) <= 0:
        ax.set_xscale("symlog", linthresh=threshold, linscale=0.5)
    else:
        ax.set_xscale("log")
    # ticks between 0 and the first checkpoint after it (symlog's 1 where that is 5) unlabelled: no step is there
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, pos: "" if 0 < value < threshold else _step_label(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return True


def _x_cover(ax: Any, steps: Sequence[int]) -> None:
    """Set `ax`'s x limits to every step of the run, a little margin either side (in the axis' own scale), so that
    checkpoints whose values are null are inside the drawn range rather than cut off it."""
    if not steps:
        return
    if len(set(steps)) == 1:  # one checkpoint: centred, its step alone labelled, not 499.6, 499.8, ... around it
        half = max(1.0, 0.05 * abs(steps[0]))
        ax.set_xlim(steps[0] - half, steps[0] + half)
        ax.set_xticks([steps[0]])
        return
    forward = ax.xaxis.get_transform()
    low, high = forward.transform([float(min(steps)), float(max(steps))])
    margin = 0.02 * (high - low) if high > low else 0.5
    ax.set_xlim(*forward.inverted().transform([low - margin, high + margin]))


#: The ratios ρ_k/ρ_1 of the spectrum figures (the heat map's colours, the triptych's third panel) are drawn down to a
#: lower limit (`ratio_floor`): the lower fence of their log10 for far outliers (Tukey's: the first quartile less 3
#: interquartile ranges), rounded down to a whole decade, and never below RANK_RTOL (the rank cut: fdl keeps no
#: eigenvalue at or below ρ_1·1e-10, docs/measures.md), so that one near-zero eigenvalue does not stretch the scale
#: over the others (a stored 0 clipped at 1e-16 made the rest of the heat map one colour; a collapsing spectrum ticked
#: the triptych down to 1e-314). Ratios spread evenly over their decades lie above the fence: nothing is clipped.
RATIO_FENCE = 3.0


def ratio_floor(ratios: Iterable[np.ndarray]) -> tuple[float, bool] | None:
    """The lower limit of the ratios ρ_k/ρ_1 drawn (`ratios`: arrays of them; NaN, no eigenvalue, ignored) and
    whether any lies below it (a ratio at or below 0 does); the limit is the smallest positive ratio when none
    lies below the fence (RATIO_FENCE, RANK_RTOL). None when no ratio is finite and positive."""
    every = np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in ratios] or [np.zeros(0)])
    every = every[~np.isnan(every)]
    positive = every[np.isfinite(every) & (every > 0)]
    if not positive.size:
        return None
    logs = np.log10(positive)
    low, high = np.percentile(logs, [25, 75])
    fence = float(np.floor(low - RATIO_FENCE * (high - low)))
    # a decade below the largest at least: with no spread (four equal eigenvalues and a smaller one) the fence was
    # the largest ratio itself, the triptych's ρ panel from 1 to 1 (matplotlib: "identical low and high ylims")
    fence = max(min(fence, float(np.ceil(logs.max())) - 1.0), float(np.log10(RANK_RTOL)))
    if logs.min() >= fence and not (every <= 0).any():
        return float(positive.min()), False
    return 10.0**fence, True


def _decade_label(value: float) -> str:
    """A power of ten as drawn on a log axis' ticks (10⁻¹⁰)."""
    return rf"$10^{{{round(np.log10(value))}}}$"


#: The triptych's Π* panel where the probe holds no targets (a probe .npz of x alone): Π* measures the features'
#: alignment with the targets.
TARGETLESS = "$\\Pi^*$ needs targets:\nthe probe holds none (x alone)"


def triptych_figure(curves: Sequence[Curves], *, n_outputs: int | None) -> Figure:
    """The paper's triptych: Π*(k), Π̂(k) and ρ_k/ρ_1 against k (log x; log y for ρ), coloured by step. The ρ axis
    ends at `ratio_floor`'s limit where some ratios lie below it, and says they are not drawn."""
    figure = _new_figure(13.0, 4.0)
    axes = figure.subplots(1, 3)
    colours = _step_colours([c.step for c in curves])
    for curve, colour in zip(curves, colours, strict=True):
        label = f"step {curve.step}"
        if curve.quality is not None and curve.quality.size:
            k = np.arange(1, curve.quality.size + 1)
            axes[0].plot(k, np.cumsum(curve.quality), color=colour, label=label)
        if curve.utility.size:
            axes[1].plot(np.arange(1, curve.utility.size + 1), np.cumsum(curve.utility), color=colour, label=label)
        if curve.eigenvalues.size and curve.eigenvalues[0] > 0:
            k = np.arange(1, curve.eigenvalues.size + 1)
            axes[2].plot(k, curve.eigenvalues / curve.eigenvalues[0], color=colour, label=label)
    titles = (r"$\Pi^*(k)$: target alignment", r"$\hat{\Pi}(k)$: use by the learned function",
              r"$\rho_k / \rho_1$: spectrum")
    # A log axis labels only its decades: below k = 10 that is k = 1 alone, so a short spectrum (few
    # features, or a rank-deficient layer) labels its minor ticks (2 … 9) too.
    largest = max((c.eigenvalues.size for c in curves), default=0)
    k_label = FuncFormatter(lambda value, _pos: f"{value:g}")
    targetless = not any(c.quality is not None for c in curves)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("k (eigenfunction index)")
        ax.set_title(title)
        if ax is axes[0] and targetless:  # an empty log axis' own ticks (0.9, 1, 2 … 10) read as a scale of no data
            continue
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(k_label)
        ax.xaxis.set_minor_formatter(k_label if largest < 10 else NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if n_outputs:
            ax.axvline(n_outputs, color="crimson", linestyle="--", linewidth=1, label=f"k = C = {n_outputs}")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    ratios = [c.eigenvalues / c.eigenvalues[0] for c in curves if c.eigenvalues.size and c.eigenvalues[0] > 0]
    floor = ratio_floor(ratios)
    cut = floor is not None and floor[1]
    if floor is not None and cut:  # the curves leave the panel at its lower edge; the label says where
        highest = max(float(np.nanmax(r)) for r in ratios)
        axes[2].set_ylim(floor[0], highest * (highest / floor[0]) ** 0.05)  # matplotlib's 5 % margin, on top
    axes[0].set_ylabel(r"cumulative $\Pi^*(k)$ (fraction, no unit)")
    axes[1].set_ylabel(r"cumulative $\hat{\Pi}(k)$ (fraction, no unit)")
    axes[2].set_ylabel(r"$\rho_k / \rho_1$ (log scale" + (f"; below {_decade_label(floor[0])} not drawn)"
                                                       if floor is not None and cut else ")"))
    if targetless:  # a probe of inputs alone: the panel says why it is empty, with no ticks of a scale it lacks
        axes[0].set_xticks([])
        axes[0].set_yticks([])
        axes[0].text(0.5, 0.5, TARGETLESS, transform=axes[0].transAxes, ha="center", va="center", color="0.35")
    # beside the panels (inside the middle one, `loc="best"` found no free corner where Π̂ rises through it)
    _outside_legend(figure, axes[1])
    return figure


#: The trajectories figures' curves, one colour and marker per quantity; the second run's in a darker shade of the
#: first's, and the overlap between the runs (a compare's) in black.
QUANTITY_LOOKS = {"d_lr": (("tab:red", "darkred"), "o"), "cka_init": (("tab:blue", "navy"), "s"),
                  "overlap_init": (("tab:green", "darkgreen"), "^")}
CROSS_LOOK = ("black", "D")
#: Line styles of the first, second (and third) run.
RUN_STYLES = ("-", "--", ":")
#: The width (points) of a curve that no later curve lies on, and how much wider it is under each later one (the
#: longest chain of such); its markers alike, for the points it shares.
TOP_LINE_WIDTH, LINE_WIDTH_STEP = 1.2, 0.8
TOP_MARKER_SIZE, MARKER_SIZE_STEP = 3.5, 1.0
#: At most about this many markers per curve: a curve of more points marks every few, each curve at other points.
MARKERS_PER_CURVE = 16


def _depths(shared: Callable[[int, int], bool], count: int) -> list[int]:
    """For each of `count` curves drawn in order, the longest chain of curves drawn after it, one on another, that
    `shared(i, j)` (i before j) says lie on it: 0 for a curve none lies on."""
    depths = [0] * count
    for i in reversed(range(count)):
        depths[i] = max((depths[j] + 1 for j in range(i + 1, count) if shared(i, j)), default=0)
    return depths


def _layered(ax: Any, curves: Sequence[tuple[Sequence[float], Sequence[float], dict[str, Any]]]) -> None:
    """Draw `curves` (x, y, plot keywords), so that each stays in sight where later ones lie exactly on it (a frozen
    run's CKA and overlap to the reference are both 1 at every step; every run's are 1 at its reference): a curve is
    drawn wider than every later one that shares a segment with it, so that it shows at their edges, and its
    markers larger than those of every later one that shares a point; a curve of many points marks other points
    than the others. The values are drawn as they are, never shifted apart."""
    points = [list(zip(map(float, x), map(float, y), strict=True)) for x, y, _ in curves]
    # a null value (NaN: the line breaks there) is no point nor segment one curve shares with another
    shared_points = [{point for point in each if np.isfinite(point).all()} for each in points]
    segments = [{pair for pair in zip(each, each[1:], strict=False) if np.isfinite(pair).all()} for each in points]
    lines = _depths(lambda i, j: bool(segments[i] & segments[j]), len(curves))
    markers = _depths(lambda i, j: bool(shared_points[i] & shared_points[j]), len(curves))
    stride = max(1, -(-max((len(each) for each in points), default=1) // MARKERS_PER_CURVE))
    for index, (x, y, keywords) in enumerate(curves):
        every: Any = None
        if stride > 1:  # every few points, and every value between two nulls (no line shows it: its marker must)
            finite = [bool(np.isfinite(point).all()) for point in points[index]]
            alone = {i for i, here in enumerate(finite)
                     if here and not (i > 0 and finite[i - 1]) and not (i + 1 < len(finite) and finite[i + 1])}
            every = sorted(set(range(index % stride, len(finite), stride)) | alone)
        ax.plot(x, y, linewidth=TOP_LINE_WIDTH + LINE_WIDTH_STEP * lines[index],
                markersize=TOP_MARKER_SIZE + MARKER_SIZE_STEP * markers[index], markevery=every, **keywords)


def _outside_legend(
    figure: Figure, ax: Any, *, loc: Literal["outside right upper", "outside right center"] = "outside right upper"
) -> None:
    """The axes' legend beside them, on the right (outside: over the data, where `loc="best"` put it when no corner
    was free, it hid the curves it names); nothing when nothing is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc=loc, fontsize="small")


def trajectory_figure(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    *,
    cross_overlap: Sequence[tuple[int, float | None]] | None = None,
) -> Figure:
    """D_LR, CKA to the reference and eigenspace overlap to the reference over steps, per run.

    `runs` is (label, records) per run (one run: solid lines; a second: dashed, in darker shades); `cross_overlap`
    adds the overlap between the two runs at matched steps. Each quantity has its colour and marker; curves that
    coincide stay in sight (`_layered`); the legend is outside the axes.
    """
    figure = _new_figure(10.0, 4.5)
    ax = figure.subplots()
    # the legend names each curve's record field too, as `fdl report --format csv` and the docs name it
    names = {"d_lr": "D_LR (d_lr)", "cka_init": "CKA to reference (cka_init)",
             "overlap_init": "overlap to reference (overlap_init)"}
    curves: list[tuple[Sequence[float], Sequence[float], dict[str, Any]]] = []
    for name, (shades, marker) in QUANTITY_LOOKS.items():
        for run, ((label, records), style) in enumerate(zip(runs, RUN_STYLES, strict=False)):
            if all(r.get(name) is None for r in records):
                continue
            # a null value (a checkpoint where the field does not apply) breaks the line there: drawn as a gap,
            # never bridged from its neighbours as if measured
            steps = [r["step"] for r in records]
            values = [np.nan if r.get(name) is None else r[name] for r in records]
            prefix = f"{label}: " if len(runs) > 1 else ""
            curves.append((steps, values, {"linestyle": style, "color": shades[min(run, len(shades) - 1)],
                                           "marker": marker, "label": prefix + names[name]}))
    if cross_overlap and any(value is not None for _, value in cross_overlap):
        steps = [step for step, _ in cross_overlap]
        values = [np.nan if value is None else value for _, value in cross_overlap]
        colour, marker = CROSS_LOOK
        curves.append((steps, values, {"linestyle": "-", "color": colour, "marker": marker, "label": "overlap A·B"}))
    every_step = sorted({r["step"] for _, records in runs for r in records})
    _step_axis(ax, every_step)
    _layered(ax, curves)
    _x_cover(ax, every_step)
    ax.set_xlabel("step")
    ax.set_ylabel("value (each in [0, 1], no unit)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("feature change over training")
    ax.grid(True, alpha=0.3)
    if not curves:  # every value null (a run of one checkpoint without a reference): said, not an empty frame
        ax.text(0.5, 0.5, "no D_LR, CKA or overlap to the reference at any checkpoint (null in every record)",
                transform=ax.transAxes, ha="center", va="center", color="0.35")
    _outside_legend(figure, ax)
    return figure


def step_edges(steps: Sequence[int], scale: Any = None) -> np.ndarray:
    """The x edges (len(steps) + 1,) of the heat map's columns on a step axis: each checkpoint's column
    reaches halfway to its neighbours (halfway as drawn: on a log axis, `scale` its transform, the geometric
    middle), the first starts at the first step and the last ends at the last (one checkpoint: a column one step
    wide)."""
    at = np.asarray(steps, dtype=np.float64)
    if at.size == 1:
        return np.array([at[0] - 0.5, at[0] + 0.5])
    drawn = at if scale is None else scale.transform(at)
    edges = np.concatenate([drawn[:1], (drawn[:-1] + drawn[1:]) / 2, drawn[-1:]])
    if scale is None:
        return edges
    edges = scale.inverted().transform(edges)
    edges[0], edges[-1] = at[0], at[-1]  # exactly the first and last steps, not their round trip
    return edges


#: Checkpoints up to this many are marked by small ticks on the heat map's step axis (more make a solid bar).
MARKED_CHECKPOINTS = 100
#: The colour of k above a checkpoint's rank (no eigenvalue kept there): grey, outside magma's black-to-pale-
#: yellow, where white read as the top of the scale (ρ_k close to ρ_1).
BEYOND_RANK = "0.75"


def spectrum_heatmap_figure(steps: Sequence[int], spectra: Sequence[np.ndarray], *, top: int = HEATMAP_TOP) -> Figure:
    """log10(ρ_k / ρ_1) of the top eigenvalues (rows k) over training: x is the step, on the axis of the trajectories
    figure (linear; logarithmic where the steps span decades, `_step_axis`), so that uneven steps (0, 10, 100,
    1000) are not drawn as evenly spaced columns.
    Each checkpoint's column spans halfway to its neighbours (`step_edges`); up to MARKED_CHECKPOINTS
    checkpoints are marked by small ticks; k above a checkpoint's rank is grey (BEYOND_RANK) and said so
    in a legend. The colour scale ends at `ratio_floor`'s limit: ratios below it take its colour, the colour bar's
    lower end a triangle (extend="min"). The cells are rasterized: a thousand checkpoints make 64 000 of them, an SVG of
    megabytes as vector paths."""
    width = max(min(top, max((s.size for s in spectra), default=1)), 1)
    grid = np.full((width, len(steps)), np.nan)
    for column, values in enumerate(spectra):
        values = np.asarray(values, dtype=np.float64)[:width]
        if values.size and values[0] > 0:
            grid[: values.size, column] = values / values[0]
    floor = ratio_floor([grid])
    clipped = floor is not None and floor[1]
    if floor is not None:  # below the limit: its colour, the colour bar's lower end marked (extend="min")
        with np.errstate(invalid="ignore"):
            grid = np.log10(np.where(grid < floor[0], floor[0], grid))
    figure = _new_figure(8.0, 4.5)
    ax = figure.subplots()
    colours = matplotlib.colormaps["magma"].with_extremes(bad=BEYOND_RANK)
    ax.set_facecolor(BEYOND_RANK)  # behind the mesh too: matplotlib versions that leave masked cells undrawn
    logarithmic = _step_axis(ax, steps)  # as in the trajectories figure
    mesh = ax.pcolormesh(step_edges(steps, ax.xaxis.get_transform() if logarithmic else None),
                         np.arange(width + 1) + 0.5, np.ma.masked_invalid(grid), cmap=colours,
                         shading="flat", rasterized=True)
    # matplotlib's usual ticks (0, 200, 400, ...), whole numbers only; a log step axis keeps its decades
    for axis in (ax.yaxis,) if logarithmic else (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    if len(steps) == 1:  # a column one step wide holds one whole number: MaxNLocator then labels 499.8, 500.0, ...
        ax.set_xticks(list(steps))
    marked = len(steps) <= MARKED_CHECKPOINTS
    if marked:
        ax.set_xticks(list(steps), minor=True)
    ax.set_xlabel("step" + (" (small ticks: the checkpoints)" if marked else ""))
    ax.set_ylabel("k (eigenvalue index" + (f", the top {top})" if width == top else ")"))
    ax.set_title("eigenvalue spectrum over training")
    figure.colorbar(mesh, ax=ax, extend="min" if clipped else "neither",
                    label=r"$\log_{10}(\rho_k / \rho_1)$" + (" (lower values: the end colour)" if clipped else ""))
    if np.isnan(grid).any():
        ax.legend(handles=[Patch(facecolor=BEYOND_RANK, label="k above the rank (no eigenvalue kept)")],
                  loc="upper left", bbox_to_anchor=(0.0, -0.13), frameon=False, fontsize="small")
    return figure


#: The eigenfunction figure's own title, over its panels (one a step), as the other figures' titles say what they draw.
EIGENFUNCTIONS_TITLE = r"top eigenfunctions $e_k(x)$ on the 1-D probe"


def eigenfunction_figure(
    x: np.ndarray, entries: Sequence[tuple[int, np.ndarray]], *, y: np.ndarray | None = None,
    count: int = N_EIGENFUNCTIONS, centered: bool = False,
) -> Figure:
    """The top eigenfunctions e_k(x) against x (1-D regression probe) at a few steps, one panel per step.

    `x` (m,) anchor inputs; `entries` (step, values (m, K)); `y` (m,) targets, drawn scaled to unit RMS, less
    their mean with `centered` (a `--center` store: its eigenfunctions have mean 0 and Q* reads y − ȳ, so the
    uncentered target, sin(3x) + 1e3 say, would be a flat line at 1 beside them).
    """
    order = np.argsort(x)
    label = "target − its mean (unit RMS)" if centered else "target (unit RMS)"
    if y is not None and centered:
        y = y - y.mean()  # the anchor points' mean: the probe's where m = n (its first 4 096 points by default)
    # one panel (a run of one checkpoint) is widened for the legend beside it, which left it 2 inches wide
    figure = _new_figure(max(4.2 * len(entries), 5.6), 3.6)
    axes = np.atleast_1d(figure.subplots(1, len(entries), sharey=True))
    for ax, (step, values) in zip(axes, entries, strict=True):
        values = np.asarray(values, dtype=np.float64)
        if y is not None:
            scale = float(np.sqrt(np.mean(y**2))) or 1.0
            ax.plot(x[order], y[order] / scale, color="0.7", linestyle="--", label=label)
        for k in range(min(count, values.shape[1])):
            ax.plot(x[order], values[order, k], label=f"$e_{{{k + 1}}}$")
        ax.set_title(f"step {step}")
        ax.set_xlabel("x")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(r"$e_k(x)$ (RMS 1 over the probe)")
    figure.suptitle(EIGENFUNCTIONS_TITLE)  # the panels' titles say only their steps
    # beside the panels (inside the last one it lay over its curves), at their middle: at the top, the title over one
    # panel, wider than it, ran into the legend
    _outside_legend(figure, axes[-1], loc="outside right center")
    return figure


def save_figure(figure: Figure, directory: Path, stem: str) -> list[Path]:
    """Write `stem.png` and `stem.svg` into `directory` (created with its parents); returns both paths.
    Each is written beside its place and renamed over it once whole (`whole_or_untouched`): a run stopped
    while it was written left a cut-off image there, or an earlier run's cut short."""
    make_folder(directory)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    with writing(png) as target, whole_or_untouched(target) as path:
        _savefig(figure, path, format="png", dpi=110)
    with writing(svg) as target, whole_or_untouched(target) as path:
        _savefig(figure, path, format="svg", metadata=SVG_METADATA)
    return [png, svg]


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes (for embedding in the HTML page)."""
    buffer = io.BytesIO()
    _savefig(figure, buffer, format="png", dpi=100)
    return buffer.getvalue()


def _savefig(figure: Figure, target: Any, **options: Any) -> None:
    """`figure.savefig(target, **options)`, the figure drawn once rather than twice. savefig draws a figure of a
    layout engine (fdl's are constrained) once without output, the engine laying it out at the start of that draw,
    then again into the file with the layout held. Here savefig sees no engine, so draws once, and the engine lays the
    figure out at the start of that draw, where savefig's first draw ran it: in the file's print, at its resolution,
    with its canvas (SVG's at 72 dpi). The files are the same, byte for byte (tests/test_s26_figs.py). Under a
    matplotlibrc's `savefig.bbox: tight` savefig draws twice whatever the engine (the first draw finds the tight box,
    which the layout must precede), so it saves the figure itself: laid out here, after the box, the file differed."""
    engine = figure.get_layout_engine()
    if engine is None or not figure.axes or options.get("bbox_inches", matplotlib.rcParams["savefig.bbox"]) == "tight":
        figure.savefig(target, **options)
        return

    def draw(renderer: Any) -> None:
        try:
            engine.execute(figure)
        except ValueError:  # as Figure.draw: a layout that cannot be made leaves the figure as it is
            pass
        Figure.draw(figure, renderer)

    # a user's matplotlibrc of figure.autolayout or constrained_layout would give None an engine
    with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        figure.set_layout_engine(None)
        figure.draw = draw  # type: ignore[method-assign]
        try:
            figure.savefig(target, **options)
        finally:
            del figure.draw
            figure.set_layout_engine(engine)


def _one_d_anchor(probe: Any) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(x, y) of a 1-D regression probe's anchor points, else None."""
    if probe is None or getattr(probe, "task", None) != "regression" or getattr(probe, "anchor_x", None) is None:
        return None
    x = np.asarray(probe.anchor_x, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        return None
    y = getattr(probe, "anchor_y", None)
    if y is not None:
        y = np.asarray(y, dtype=np.float64)
        y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else (y if y.ndim == 1 else None)
    return x, y


def series_figures(run: Run, series: Series) -> list[tuple[str, str, Figure]]:
    """(stem, title, figure) of every figure of one series of a run."""
    records = series.records
    if not records:
        return []
    steps = series.steps
    chosen = select_steps(steps)
    # Only what is drawn is read: the top eigenvalues of every step, the spectra of the chosen steps,
    # the eigenfunctions of a few (not every array of every step: ~3 MB a checkpoint at p = m = 4 096).
    arrays = load_arrays(run, series, chosen)
    curves = [
        Curves(
            step=step,
            eigenvalues=np.asarray(arrays[step].eigenvalues, dtype=np.float64),
            quality=None if arrays[step].quality is None else np.asarray(arrays[step].quality, dtype=np.float64),
            utility=np.asarray(arrays[step].utility, dtype=np.float64),
        )
        for step in chosen
    ]
    del arrays
    top = [np.asarray(values) for _, values in iter_array(run, series, steps, "eigenvalues", rows=HEATMAP_TOP)]
    n_outputs = records[-1].get("n_outputs")
    figures = [
        ("triptych", "Π*(k), Π̂(k) and ρ_k/ρ_1 at selected checkpoints",
         triptych_figure(curves, n_outputs=n_outputs)),
        ("trajectories", "D_LR, CKA and eigenspace overlap to the reference over steps",
         trajectory_figure([(run.path.name, records)])),
        ("spectrum", "eigenvalue spectrum over steps",
         spectrum_heatmap_figure(steps, top)),
    ]
    anchor = _one_d_anchor(run.probes.get(series.probe)) if series.probe is not None else None
    if anchor is not None:
        x, y = anchor
        entries = []
        for step, stored in iter_array(run, series, select_steps(steps, N_EIGENFUNCTION_STEPS), "eigenfunctions"):
            values = np.asarray(stored)
            if values.ndim == 2 and values.shape[0] == x.shape[0] and values.shape[1]:
                entries.append((step, values))
        if entries:
            options = run.provenance.get("options")
            centered = bool(options.get("center")) if isinstance(options, Mapping) else False
            figures.append(("eigenfunctions", "top eigenfunctions e_k(x) on the 1-D probe",
                            eigenfunction_figure(x, entries, y=y, centered=centered)))
    return figures


def _cleaned(probe: str | None, layer: str | None) -> str:
    # Only letters, digits, '.', '_' and '-' in file names: a layer such as head:input would give a
    # name that Windows refuses and macOS's Finder shows with '/'.
    return re.sub(r"[^\w.-]", "_", f"_{probe}-{layer}")


def series_suffixes(series: Sequence[tuple[str | None, str | None]]) -> list[str]:
    """The name ends (`_PROBE-LAYER`) of several (probe, layer) series, in their order. Two series cleaned to
    one name (layers fc:input and fc_input; probe a-b of layer c and probe a of layer b-c), or to names that
    differ only in case (probes train and Train: one file on macOS's and Windows' default file systems), each
    take their place among the series, `_PROBE-LAYER_I`, or one's figures overwrote the other's. A name that
    then clashes again (layers a:b, a_b and a_b_1: `_p-a_b_1` twice) takes its place once more, until none
    clashes; names that never clashed stay as they are."""
    suffixes = [_cleaned(probe, layer) for probe, layer in series]
    while True:
        folded = [suffix.casefold() for suffix in suffixes]
        clashing = [folded.count(name) > 1 for name in folded]
        if not any(clashing):
            return suffixes
        # Ends: two names ending in their (distinct) places never clash, so each clash holds a name never
        # numbered, and each round numbers at least one more.
        suffixes = [f"{suffix}_{index}" if clash else suffix
                    for index, (suffix, clash) in enumerate(zip(suffixes, clashing, strict=True), start=1)]


#: One drawn figure of a run: the label of its series, whether the figure names it, its file's stem, its plain title
#: (without the series) and the figure.
Drawn = tuple[str, bool, str, str, Figure]


def _draw_run(run: Run) -> list[Drawn]:
    """Every figure of a run, each drawn once (the files and the HTML page render the same figure); when the store
    holds several series, the stems carry `probe-layer` (`series_suffixes` among all the store's series,
    `_store_suffixes`), whichever are selected, so that the reports of `--layer fc1` and of `--layer fc2` into one
    folder do not write over each other, and each figure names its series (`_name_series`)."""
    out: list[Drawn] = []
    suffixes = _store_suffixes(run) if len(getattr(run, "available", ()) or run.series) > 1 else [""] * len(run.series)
    for series, suffix in zip(run.series, suffixes, strict=True):
        for stem, title, figure in series_figures(run, series):
            if suffix:
                _name_series(figure, series.label)
            out.append((series.label, bool(suffix), stem + suffix, title, figure))
    return out


def run_figures(run: Run) -> list[tuple[str, str, Figure]]:
    """(stem, title, figure) of every figure of a run (`_draw_run`); a title names the series the figure names.
    No command calls it (they write files, `write_run_figures`): it is how the tests and a notebook draw a run's
    figures without writing them."""
    return [(stem, f"{title} ({label})" if named else title, figure) for label, named, stem, title, figure in _draw_run(run)]


def page_figures(run: Run, drawn: Sequence[Drawn] | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """(title, PNG) of every figure of a run for its HTML page, by series label (the page's section heading names
    the series, so the titles do not); `drawn`: the figures drawn already (`write_run_figures`), else drawn here."""
    page: dict[str, list[tuple[str, bytes]]] = {series.label: [] for series in run.series}
    for label, _named, _stem, title, figure in _draw_run(run) if drawn is None else drawn:
        page.setdefault(label, []).append((title, png_bytes(figure)))
    return page


def _name_series(figure: Figure, label: str) -> None:
    """Say the series in the drawn figure, as its HTML section's heading and its file's name do (a PNG opened alone said no
    series): in the title of its one titled panel, as a compare's figures (`compare_figures`); over the panels of
    a figure of several (the triptych), whose own titles are theirs; after the title over the panels of a figure
    that has one (the eigenfunctions')."""
    own = getattr(figure, "_suptitle", None)  # Figure.get_suptitle is matplotlib 3.8's
    titled = [ax for ax in figure.axes if ax.get_title()]
    if own is not None and own.get_text():  # the eigenfunctions' title, over their panels
        _fit_title(figure, own, own.get_text(), label)
    elif len(titled) == 1:
        _fit_title(figure, titled[0].title, titled[0].get_title(), label)
    else:
        _fit_title(figure, figure.suptitle(label), "", label)


def _fit_title(figure: Figure, text: Any, title: str, label: str) -> None:
    """Set `text` (an axes' title, or the figure's over its panels) to `title (label)`, within the width it is
    centred over: its axes' (beside them lie the legends), else the figure's. A long series name
    (`train/encoder.layers.11.mlp.fc2:input`) ran past the figure's edge: where the title does not fit on one line,
    the label takes a line of its own (a compare's `A: …, B: …` a line each), and where a line is still too wide,
    the font is smaller. Measured as laid out (`draw_without_rendering`), only where a title names a series.
    The label's `$` are escaped: matplotlib drew the text between two as TeX (a layer `fc$\\alpha$` as `fcα`, and
    `fc$\\x$` failed the drawing); the titles' own TeX (`$\\hat{\\Pi}$`) is fdl's, and stays."""
    label = label.replace("$", r"\$")
    named = f"({label})" if title else label
    lines = [f"{title} {named}".strip(), f"{title}\n{named}".strip()]
    if ", B: " in label:  # a compare of two series: A's and B's each a line
        lines.append(f"{title}\n{named}".replace(", B: ", ",\nB: ").strip())
    # the Agg canvas of `_new_figure`; a figure made otherwise (a bare Figure()) is given one, to measure with
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()
    engine = figure.get_layout_engine()
    for candidate in dict.fromkeys(lines):
        text.set_text(candidate)
        if engine is not None and text.axes is not None:
            engine.execute(figure)
        room = 0.98 * (text.axes.get_window_extent(renderer) if text.axes is not None else figure.bbox).width
        width = text.get_window_extent(renderer).width
        if width <= room:
            return
    text.set_fontsize(text.get_fontsize() * room / width)


#: The list of the figure files `fdl report --plots DIR` and `fdl compare --plots DIR` wrote into DIR, kept there
#: beside them with the sha256 of each and who drew it (a report: its store; a compare: the two stores and the series
#: compared): the next report of that store (compare of that pair) into DIR removes the listed files of it that it no
#: longer writes (the figures of a series no longer in the store; never those of a series it did not select), and only
#: those that still hold what fdl wrote; the others' figures are left to their own reports and compares.
FIGURE_LIST = ".fdl-figures.json"
FIGURE_LIST_FORMAT = "fdl-figures"
FIGURE_LIST_VERSION = 1
#: The names of the figure files of a report and of a compare (with a series' suffix after the stem): only names of
#: these forms are taken from the list (never `notes.txt`, nor `../x.png`), and those in DIR that a report (a
#: compare) did not write are named in a note.
REPORT_FIGURE = re.compile(r"(?:triptych|trajectories|spectrum|eigenfunctions)(?P<suffix>_[\w.-]+)?\.(?:png|svg)")
COMPARE_FIGURE = re.compile(r"compare_(?:trajectories|k95_utility)(?:_[\w.-]+)?\.(?:png|svg)")
#: A compare's entry in the list: the stores (resolved paths) and the series (probe/layer) it compared.
COMPARE_KEYS = ("a", "series_a", "b", "series_b")
#: Who drew a listed figure: ("report", STORE) or ("compare", STORE_A, SERIES_A, STORE_B, SERIES_B).
Drawer = tuple[str, ...]
#: File names a note names before it counts the others.
NAMES_SHOWN = 6


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _drawer(name: str, entry: Any) -> Drawer | None:
    """Who drew the listed figure `name`, from its entry in the list; None for an entry not taken from it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    if REPORT_FIGURE.fullmatch(name) and isinstance(entry.get("store"), str):
        return ("report", entry["store"])
    pair = entry.get("compare")
    if COMPARE_FIGURE.fullmatch(name) and isinstance(pair, dict) \
            and all(isinstance(pair.get(key), str) for key in COMPARE_KEYS):
        return ("compare", *(pair[key] for key in COMPARE_KEYS))
    return None


def _described(drawer: Drawer) -> str:
    """A report's store, or a compare's `A (SERIES) vs B (SERIES)`, as notes name them."""
    return drawer[1] if drawer[0] == "report" else f"{drawer[1]} ({drawer[2]}) vs {drawer[3]} ({drawer[4]})"


def read_figure_list(directory: Path, kind: str = "report") -> tuple[dict[str, tuple[str, Drawer]] | None, str | None]:
    """The figure files earlier reports and compares listed in `directory` (name -> (sha256, who drew it); {}
    without a list), or None and a note saying why the file FIGURE_LIST there is not read as fdl's list
    (then it is left as it is: nothing is removed, and the list is not written over). `kind`: who reads it,
    "report" or "compare" (for the note)."""
    path = directory / FIGURE_LIST
    if not path.is_symlink() and not path.exists():
        return {}, None
    why = "not the figure list fdl writes"
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        why = f"unreadable ({exc.strerror or exc})"
        content = None
    except ValueError:  # JSON's errors and UnicodeDecodeError
        content = None
    files = content.get("files") if isinstance(content, dict) and content.get("format") == FIGURE_LIST_FORMAT \
        and content.get("version") == FIGURE_LIST_VERSION else None
    if not isinstance(files, dict):
        return None, (f"{path} is {why}: it is left as it is, and no figure of an earlier {kind} is removed "
                      f"(remove it, and the figures in {directory} that are stale, to have the next {kind} keep its list)")
    drawers = {name: _drawer(name, entry) for name, entry in files.items() if isinstance(name, str)}
    return {name: (files[name]["sha256"], drawer) for name, drawer in drawers.items() if drawer is not None}, None


def _write_figure_list(directory: Path, files: Mapping[str, tuple[str, Drawer]]) -> None:
    def entry(digest: str, drawer: Drawer) -> dict[str, Any]:
        if drawer[0] == "report":
            return {"sha256": digest, "store": drawer[1]}
        return {"sha256": digest, "compare": dict(zip(COMPARE_KEYS, drawer[1:], strict=True))}

    text = json.dumps({"format": FIGURE_LIST_FORMAT, "version": FIGURE_LIST_VERSION,
                       "about": "the figure files `fdl report --plots` and `fdl compare --plots` wrote into this "
                                "folder, with their sha256 and the store (a compare: the stores and series) they "
                                "drew; the next report of that store (compare of those) removes those it does not "
                                "write again, if they are unchanged",
                       "files": {name: entry(*listed) for name, listed in sorted(files.items())}}, indent=1)
    with writing(directory / FIGURE_LIST) as target, whole_or_untouched(target) as path:
        path.write_text(text + "\n", encoding="utf-8")


def _unchanged(path: Path, digest: str) -> bool:
    return not path.is_symlink() and path.is_file() and _sha256(path) == digest


def _write_listed(
    directory: Path, drawer: Drawer, figures: Iterable[tuple[str, Figure]], notes: list[str],
    *, leave: Callable[[str], bool] = lambda name: False,
) -> list[Path]:
    """Write `figures` (stem, figure) as PNG and SVG into `directory` for `drawer`, a report or a compare, and
    keep the folder's list of figures (FIGURE_LIST); returns the paths written.

    Those that an earlier report or compare of the same drawer wrote there and this one does not write are removed
    when they still hold the bytes fdl wrote (a file changed since, or not listed, or another drawer's, or one
    whose name `leave` is true of, is never removed; the others stay listed). `notes` gets a sentence naming what
    was removed, one naming the figures of other drawers of its kind left there (a report's are no concern of a
    compare's: their names differ), and one naming the figure files of its kind (REPORT_FIGURE, COMPARE_FIGURE) left
    there that none listed: an older fdl's, or changed."""
    kind = drawer[0]
    make_folder(directory)
    earlier, problem = read_figure_list(directory, kind)
    if problem is not None:
        notes.append(problem)
    paths: list[Path] = []
    written: dict[str, tuple[str, Drawer]] = {}
    for stem, figure in figures:
        for path in save_figure(figure, directory, stem):
            paths.append(path)
            written[path.name] = (_sha256(path) or "", drawer)
        if earlier is not None:  # after each figure: a report stopped part-way still lists what it wrote
            _write_figure_list(directory, {**earlier, **written})
    others: dict[str, tuple[str, Drawer]] = {}
    kept: dict[str, tuple[str, Drawer]] = {}
    if earlier is not None:
        removed = []
        for name, (digest, drawn) in earlier.items():
            path = directory / name
            if name in written or not _unchanged(path, digest):
                continue
            if drawn == drawer and leave(name):
                kept[name] = (digest, drawn)  # the drawer's own, of what it did not draw this time
                continue
            if drawn != drawer:
                others[name] = (digest, drawn)  # left to a report (compare) of its own
                continue
            try:
                path.unlink()
            except OSError as exc:
                notes.append(f"could not remove {path}, a figure an earlier {kind} wrote: {exc.strerror or exc}")
                continue
            removed.append(name)
        _write_figure_list(directory, {**others, **kept, **written})
        if removed:
            whose = "this store" if kind == "report" else "these stores and series"
            notes.append(f"removed {len(removed)} figure file{'s' if len(removed) > 1 else ''} an earlier {kind} of "
                         f"{whose} wrote into {directory} that this one does not write: {_names(sorted(removed))}")
    alike = {name: drawn for name, (_, drawn) in others.items() if drawn[0] == kind}
    if alike:
        drawers = sorted({_described(drawn) for drawn in alike.values()})
        apart = "store keeps each store's" if kind == "report" else "compare keeps each compare's"
        notes.append(f"{directory} also holds {len(alike)} figure file{'s' if len(alike) > 1 else ''} of the {kind}"
                     f"{'s' if len(drawers) > 1 else ''} of {', '.join(drawers)}, left as they are (one folder per "
                     f"{apart} figures apart): {_names(sorted(alike))}")
    own_names = REPORT_FIGURE if kind == "report" else COMPARE_FIGURE
    try:
        unlisted = sorted(path.name for path in directory.iterdir() if own_names.fullmatch(path.name)
                          and path.name not in written and path.name not in others and path.name not in kept)
    except OSError:  # a folder this user may write into but not list (a drop box): none to name
        unlisted = []
    if unlisted:
        notes.append(f"{directory} also holds {len(unlisted)} figure file{'s' if len(unlisted) > 1 else ''} this "
                     f"{kind} did not write (not in its .fdl-figures.json: written by an fdl that kept no such "
                     f"list, or changed since fdl wrote them): {_names(unlisted)}; remove them if they are stale")
    return paths


def write_run_figures(
    run: Run, directory: Path, *, notes: list[str] | None = None, page: dict[str, list[tuple[str, bytes]]] | None = None
) -> list[Path]:
    """Write every figure of a run as PNG and SVG into `directory`; returns their paths. With `page`, the same
    figures are then rendered for the HTML page into it (`page_figures`): `--plots DIR --html FILE` draws each once.

    The folder then holds this report's figures: those an earlier report of the same store (by its resolved
    path) wrote there (FIGURE_LIST) and this one does not write are removed when they still hold the bytes
    fdl wrote (`_write_listed`, which says in `notes` what it removed and what it left), except the figures of
    the store's series this report did not select (`--layer fc2`'s, in a report of `--layer fc1`)."""
    drawn = _draw_run(run)
    paths = _write_listed(directory, ("report", str(Path(run.path).resolve())),
                          ((stem, figure) for _label, _named, stem, _title, figure in drawn),
                          [] if notes is None else notes, leave=_unselected_series(run))
    if page is not None:  # after the files: they are rendered from a fresh figure, byte for byte as without --html
        page.update(page_figures(run, drawn))
    return paths


def _unselected_series(run: Run) -> Callable[[str], bool]:
    """Whether a figure's file name is that of one of the store's series the run did not select: its report leaves
    them to the report that selects them. A name of no series of the store now (a series gone, or the plain
    names of the store's time of one series) is no series': stale."""
    available = list(run.available)
    unselected = set(series_suffixes(available)) - set(_store_suffixes(run)) if len(available) > 1 else set()

    def test(name: str) -> bool:
        match = REPORT_FIGURE.fullmatch(name)
        return match is not None and match["suffix"] in unselected

    return test


def compare_figures(run_a: Run, run_b: Run, comparison: Comparison) -> list[tuple[str, Figure]]:
    """(stem, figure) of the overlay figures of two runs: trajectories of both (A solid, B dashed) with the
    overlap A·B, and the k95 of Π̂ of both; curves that coincide stay in sight (`_layered`), legends outside."""
    records_a, records_b = run_a.series[0].records, run_b.series[0].records
    # at the steps where it was computed (`--overlap-steps`): one not chosen is no gap, one that cannot be is
    cross = [(c.match.step_a, c.overlap) for c in comparison.steps if c.overlap_computed]
    trajectories = trajectory_figure([("A", records_a), ("B", records_b)], cross_overlap=cross)
    points = {"A": records_a, "B": records_b}
    figure = _new_figure(10.0, 4.0)
    ax = figure.subplots()
    if records_a and records_a[-1].get("n_outputs"):
        # over the curves, dotted: a run whose k95 is C throughout shows between its dots
        ax.axhline(records_a[-1]["n_outputs"], color="crimson", linestyle=":", linewidth=1.0, zorder=3, label="C")
    curves = []
    for (label, records), style, colour, marker in zip(points.items(), RUN_STYLES, ("tab:blue", "tab:orange"),
                                                       ("o", "s"), strict=False):
        if any(r.get("k95_utility") is not None for r in records):  # a null: a gap, as in the trajectories
            steps = [r["step"] for r in records]
            values = [np.nan if r.get("k95_utility") is None else r["k95_utility"] for r in records]
            curves.append((steps, values, {"linestyle": style, "color": colour, "marker": marker,
                                           "label": f"{label}: k95 of " + r"$\hat{\Pi}$"}))
    every_step = sorted({r["step"] for r in [*records_a, *records_b]})
    _step_axis(ax, every_step)  # the step axis of the trajectories figure
    _layered(ax, curves)  # two runs of the same k95 (two frozen runs: k95 = C throughout) drew B over A
    _x_cover(ax, every_step)
    # k95 counts eigenfunctions: whole-number ticks (2, 3, 4, not 2.5 nor 1.975), from 0 up
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    highest = max([v for _, values, _ in curves for v in values if np.isfinite(v)]
                  + [records_a[-1].get("n_outputs") or 0 if records_a else 0], default=0)
    ax.set_ylim(0, highest + max(1.0, 0.08 * highest))
    ax.set_xlabel("step")
    ax.set_ylabel("k95 of " + r"$\hat{\Pi}$" + " (eigenfunctions)")
    ax.set_title(r"eigenfunctions used by the learned function (k95 of $\hat{\Pi}$)")
    ax.grid(True, alpha=0.3)
    _outside_legend(figure, ax)
    # Stores of several series: the series compared in the names, as a report's (`run_figures`), or the compare
    # of layer fc2 into a folder wrote over that of fc1; B's series too where it is not A's (--probe-b, --layer-b).
    # The titles name them as well (a report's HTML titles do): a figure opened alone says what it compares.
    suffix = ""
    if run_a.several or run_b.several:
        suffix_a, suffix_b = _compared_suffix(run_a), _compared_suffix(run_b)
        label_a, label_b = run_a.series[0].label, run_b.series[0].label
        suffix = suffix_a if suffix_a == suffix_b else f"{suffix_a}_vs{suffix_b}"
        compared = label_a if label_a == label_b else f"A: {label_a}, B: {label_b}"
        for drawn in (trajectories, figure):
            _fit_title(drawn, drawn.axes[0].title, drawn.axes[0].get_title(), compared)
    return [("compare_trajectories" + suffix, trajectories), ("compare_k95_utility" + suffix, figure)]


def _compared_suffix(run: Run) -> str:
    """The name end of the run's selected series in a compare's figures: as the store's report names it among
    all the store's series (`_store_suffixes`), so that the compares of two series cleaned to one name (layers
    fc:input and fc_input) into one folder do not write over each other."""
    return _store_suffixes(run)[0]


def _store_suffixes(run: Run) -> list[str]:
    """The name ends (`series_suffixes`) of the run's selected series among every series of its store
    (`Run.available`; a Run built without the store's listing: among its selected series)."""
    keys = [(series.probe, series.layer) for series in run.series]
    every = list(getattr(run, "available", ())) or keys
    ends = dict(zip(every, series_suffixes(every), strict=True))
    return [ends.get(key) or _cleaned(*key) for key in keys]


def write_compare_figures(
    run_a: Run, run_b: Run, comparison: Comparison, directory: Path, *, notes: list[str] | None = None
) -> list[Path]:
    """Write the overlay figures of two runs (`compare_figures`) into `directory`; returns their paths. They are
    listed in the folder's FIGURE_LIST under the two stores and the series compared, as a report's under its
    store (`_write_listed`): a report and a compare into one folder never remove each other's figures."""
    drawer = ("compare", str(Path(run_a.path).resolve()), run_a.series[0].label,
              str(Path(run_b.path).resolve()), run_b.series[0].label)
    return _write_listed(directory, drawer, compare_figures(run_a, run_b, comparison), [] if notes is None else notes)
