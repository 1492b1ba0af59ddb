"""Memory: what one analysis needs at least, what the machine has, and an allocation failure explained.

`fdl analyze` checks, once the layers' widths are known and before any checkpoint is read, that the
memory the analysis cannot do without fits in what the machine (or the GPU) has free: a layer of
60 000 features needs a 60 000² float64 second moment, 28.8 GB, and failed at the first batch with
torch's allocator traceback. The estimate counts the float64 arrays alive together at a checkpoint's
peak (named below, nothing else), so a refusal is certain to be right; a run that passes can still need
more (the model, the batch, the allocator's unreturned free memory, arrays whose size depends on the
rank found), and an allocation that fails mid-run is explained by `out_of_memory` instead of a traceback.
No torch here: the pipeline passes the GPU's free memory in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fdl_cli.errors import ResourceError, first_line

#: float64, the dtype of every accumulator, decomposition and anchor copy (SPEC §8)
FLOAT64 = 8
#: Values of padding after each row of the float64 anchors that CKA multiplies (m, p ≤ m): one 64-byte
#: cache line. Rows of p = 512 float64 values lie 4 KiB apart, a stride at which the BLAS's loads of
#: successive rows fall into the same cache sets and evict each other: each of a checkpoint's two m×p×p
#: cross products took 40.5 ms at m = 4 096, p = 512, against 35.7 ms with the rows 8 values further
#: apart, and gave the same digits (docs/benchmarks.md, seventeenth session; p = 256 and 1 024 gain 7 – 8 %
#: too). Here because the memory estimate counts it (`layer_needs`); pipeline.py allocates them.
ANCHOR_ROW_PAD = 8
#: a need above this share of what is available gets a warning (other programs, the model and the
#: batches need memory too)
WARN_SHARE = 0.7
#: a cgroup "limit" this large is no limit (cgroup v1 writes 2⁶³ rounded down to a page)
NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class Need:
    """One array the analysis cannot do without: what it is, where it lives, and its bytes."""

    what: str
    bytes: int
    on_device: bool  # where the statistics are taken: the GPU when they are taken there; else host memory
    #: one probe pass's statistics (passes run one after another: only the largest counts); False: anchors,
    #: which stay for the whole run
    statistics: bool = True
    #: "decomposition": one layer's eigen-decomposition, made and let go a layer at a time (only a pass's
    #: largest counts); "copy": this checkpoint's float64 anchor copy, made after its decomposition (a pass
    #: counts the larger of its largest decomposition and its copies: `run_needs`); "": held through the pass
    transient: str = ""


class Pass(NamedTuple):
    """One probe pass: the probe, {layer: p}, its n inputs and m anchors; `n_here` the inputs this process
    passes over (its slice under --shard-probe; None: all n); the model's C `outputs` and the probe's
    `task` ("none", "classes", "regression")."""

    probe: str
    widths: Mapping[str, int]
    n: int
    m: int
    n_here: int | None = None
    outputs: int = 0
    task: str = "none"


def syevd_workspace(size: int) -> int:
    """The float64 values of LAPACK's syevd workspace for the eigenvalues and eigenvectors of a size×size
    matrix (`eigh`: 1 + 6·size + 2·size², its LWORK; the 3 + 5·size integers of IWORK beside it are left out)."""
    return 1 + 6 * size + 2 * size * size


def gram_decomposition(p: int, n: int, *, uncentered: bool) -> int:
    """The float64 values alive on the host at the peak of the n×n Gram route's decomposition of n×p features
    (`spectral.feature_spectrum`), less the kept features themselves: the larger of forming the Gram (the
    centered n×p features and the n×n Gram) and decomposing it (the Gram, its n×n eigenvectors and syevd's
    workspace, or torch's eigenvectors and their copy in descending order, the smaller; the centered
    features beside them for the centered spectrum, which takes its eigenvectors from them). The p × rank
    eigenvectors formed afterwards are not counted (`layer_needs`)."""
    centered = n * p
    return max(centered + n * n, (0 if uncentered else centered) + 2 * n * n + syevd_workspace(n))


def layer_needs(label: str, p: int, n: int, m: int, *, probe: str, gpu: bool = False, n_here: int | None = None,
                anchor_copies: int = 2, outputs: int = 0, task: str = "none", uncentered: bool = False) -> list[Need]:
    """The float64 arrays one layer of width p needs on a probe of n inputs with m anchors, each counted
    where and when it exists (extract.py, moments.py, spectral.py, pipeline.py):

    p ≤ n: the (p+1)×(p+1) sums of [φ 1][φ 1]ᵀ and their p×p copy taken at the last anchor (CKA's
    anchor moment), side by side where the statistics are taken (the GPU with `gpu`; on the host, their
    copies for the measures too); then, on the host, the decomposition: the symmetrized p×p matrix that
    `eigh` takes, its eigenvectors and LAPACK syevd's workspace (`syevd_workspace`), and for the `uncentered`
    spectrum the copy of the sums about 0 it is taken from (`Moments.unshifted`: made when some feature's
    mean lies SHIFT_RATIO standard deviations from 0, as in nearly every wide layer).
    p > n (the n×n Gram route, docs/measures.md): on a GPU, the n×p features kept there and their
    concatenation (n_here×p each: this process's slice of the probe under --shard-probe), and on the host
    a copy of all n×p; on the CPU, the n×p features; then, on the host, the decomposition, the larger of
    its two steps (`gram_decomposition`): the centered n×p features and the n×n Gram formed from them; then
    the Gram, its eigenvectors and syevd's workspace, with the centered features beside them only for the
    centered spectrum (the uncentered one lets them go first).
    A decomposition is made and let go a layer at a time (`Need.transient`). Not counted: the eigenvectors
    of the features (p × the rank found, which an unknown rank must not turn into a refusal; on the Gram
    route one array, divided and signed in place beside the n×n eigenvectors: within the Gram's forming
    step for the uncentered spectrum (rank ≤ n), past the decomposition's peak for the centered one from a
    rank of about 3n²/p on), CKA's p×p cross product, the GPU's own workspace.
    And the anchors' m×p features (`anchor_copies`: 0 on a rank that only contributes a probe slice):
    this checkpoint's as the model gave them (float32) and their float64 copy, made after the
    decomposition (`Need.transient`), with CKA's m×m Gram of them for p > m (kept with them); with 2
    copies also the reference's float64 anchors, with 3 the previous checkpoint's too, kept for the whole
    run. For p ≤ m each float64 row is padded by ANCHOR_ROW_PAD values, as they are allocated (m×(p + 8)).
    And, whatever p, the C `outputs`' own sums (moments.py), which a model of many outputs (a language
    model's vocabulary: C = 32 000 is 8.2 GB a C×C float64 array) makes the largest: where the statistics
    are taken, the (w+1)² products of [Ŷ Y 1] (w = C, or 2C with regression targets) and, with class
    labels, the C×(C+1) class sums of [Ŷ 1]; on the host, the copies of the C×C sums that the measures take,
    Σŷŷᵀ and with targets Σŷyᵀ and Σyyᵀ (they exist while the sums still do: `MomentAccumulator.moments`).
    Each layer's copies count: `extract.extract` makes every layer's Moments at the end of the one pass, while
    every layer's accumulator still holds its sums, and the pipeline measures them from that one dict."""
    where = f"{probe}/{label}"
    here = n if n_here is None else n_here
    if p > n:
        needs = [
            Need(f"{where}: the n×p features of the Gram route kept on the GPU and their concatenation "
                 f"(n = {here:,}, p = {p:,})", 2 * FLOAT64 * here * p, True),
            Need(f"{where}: the n×p features on the host (n = {n:,}, p = {p:,})", FLOAT64 * n * p, False),
        ] if gpu else [
            Need(f"{where}: the n×p features of the Gram route (n = {n:,}, p = {p:,})", FLOAT64 * n * p, True),
        ]
        needs.append(Need(f"{where}: the decomposition of the n×n Gram: the centered n×p features and the Gram, "
                          f"or the Gram, its eigenvectors{'' if uncentered else ', the centered features'} and "
                          f"LAPACK's workspace (n = {n:,})",
                          FLOAT64 * gram_decomposition(p, n, uncentered=uncentered), False,
                          transient="decomposition"))
    else:
        needs = [
            Need(f"{where}: the p×p second moment and its copy over the anchors (p = {p:,})",
                 FLOAT64 * ((p + 1) ** 2 + p * p), True),
        ]
        if gpu:
            needs.append(Need(f"{where}: the host copies of the p×p second moment and of its copy over the anchors",
                              2 * FLOAT64 * p * p, False))
        raw = " and the sums about 0 it is taken from" if uncentered else ""
        needs.append(Need(f"{where}: the decomposition of the p×p second moment: its symmetrized copy{raw}, its "
                          f"eigenvectors and LAPACK's workspace (p = {p:,})",
                          FLOAT64 * ((3 if uncentered else 2) * p * p + syevd_workspace(p)), False,
                          transient="decomposition"))
    if outputs:
        width = outputs * (2 if task == "regression" else 1)
        sums = (width + 1) ** 2 + (outputs * (outputs + 1) if task == "classes" else 0)
        needs += [
            Need(f"{where}: the outputs' C×C sums of products (C = {outputs:,})", FLOAT64 * sums, True),
            # Σŷŷᵀ (and with targets Σŷyᵀ, Σyyᵀ) said in words: through the ASCII stand-ins of a stream without
            # these glyphs (errors.PLAIN) the symbols read "Sumy^y^^T"
            Need(f"{where}: the measures' copies of the outputs' C×C sums of products (the predictions with "
                 f"{'themselves' if task == 'none' else 'themselves and with the targets, the targets with themselves'})",
                 FLOAT64 * outputs * outputs * (1 if task == "none" else 3), False),
        ]
    if anchor_copies:
        row = p + ANCHOR_ROW_PAD if p <= m else p  # as `pipeline._float64_copy` allocates them
        gram = m * m if p > m else 0  # `pipeline._Series.kernel`, cached with the anchors
        with_gram = " and CKA's m×m Gram of them" if gram else ""
        needs += [
            Need(f"{where}: this checkpoint's anchor features as the model gave them (m = {m:,}, float32)",
                 4 * m * p, False),
            Need(f"{where}: this checkpoint's float64 copy of its anchors{with_gram} (m = {m:,})",
                 FLOAT64 * (m * row + gram), False, transient="copy"),
        ]
        kept = min(anchor_copies, 3) - 1
        if kept:
            whose = "the reference's" if kept == 1 else "the reference's and the previous checkpoint's"
            needs.append(Need(f"{where}: the float64 anchors{with_gram}, {whose} (m = {m:,})",
                              kept * FLOAT64 * (m * row + gram), False, statistics=False))
    return needs


def _at_the_peak(needs: Sequence[Need]) -> list[Need]:
    """The needs of one pass alive together: what the pass holds, and the larger of its largest layer's
    decomposition and this checkpoint's float64 anchor copies (made once the decompositions are let go)."""
    held = [need for need in needs if need.statistics and not need.transient]
    decompositions = [need for need in needs if need.transient == "decomposition"]
    copies = [need for need in needs if need.transient == "copy"]
    largest = [max(decompositions, key=lambda need: need.bytes)] if decompositions else []
    later = copies if sum(need.bytes for need in copies) > sum(need.bytes for need in largest) else largest
    return held + later


def run_needs(series: Sequence[Pass | tuple[Any, ...]], *, gpu: bool = False, anchor_copies: int = 2,
              uncentered: bool = False) -> list[Need]:
    """The needs of a run: `series` holds a `Pass` (probe, {layer: p}, n, m[, n_here]) for each probe. The
    probes are passed over one after another, so only the largest pass's statistics count (on the GPU
    and on the host each), with one decomposition at a time (`_at_the_peak`); every series' anchors of
    the reference (and of the previous checkpoint: `anchor_copies` = 3) stay."""
    passes = [[need for label, p in entry.widths.items()
               for need in layer_needs(label, p, entry.n, entry.m, probe=entry.probe, gpu=gpu, n_here=entry.n_here,
                                       anchor_copies=anchor_copies, outputs=entry.outputs, task=entry.task,
                                       uncentered=uncentered)]
              for entry in (Pass(*item) for item in series)]
    anchors = [need for needs in passes for need in needs if not need.statistics]
    peaks = [_at_the_peak(needs) for needs in passes]

    def largest(on_device: bool) -> list[Need]:
        chosen = [[need for need in needs if need.on_device == on_device] for needs in peaks]
        return max(chosen, key=lambda needs: sum(need.bytes for need in needs), default=[])

    return [*largest(True), *largest(False), *anchors]


def size_text(count: float) -> str:
    """Bytes for people, in powers of 1 000: '28.8 GB', '512 MB', '3 kB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(count)} B"


def _meminfo(root: Path) -> tuple[int, int] | None:
    """(MemAvailable, SwapFree) of /proc/meminfo, in bytes; None when there is no such file (not Linux)
    or it has no MemAvailable (kernels before 3.14)."""
    try:
        text = (root / "proc" / "meminfo").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        with contextlib.suppress(ValueError, IndexError):
            values[name.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    if "MemAvailable" not in values:
        return None
    return values["MemAvailable"], values.get("SwapFree", 0)


def _stat(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = int(value)
    return values


def _number(path: Path) -> int | None:
    """A cgroup file's byte count; None for "max", a number too large to be a limit, or no such file."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) < NO_LIMIT else None


def _ancestors(top: Path, path: str) -> list[Path]:
    """`top`/`path` and each folder above it up to `top` itself, those that exist (a container may see
    its own group at `top` while /proc/self/cgroup names it by its path on the host)."""
    parts = [part for part in path.split("/") if part and part != ".."]
    folders = [top.joinpath(*parts[:count]) for count in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _cgroup_room(root: Path, swap_free: int) -> int | None:
    """What memory cgroups (a container's, a batch job's limit) leave this process: for each group with
    a limit, from the process's own up to the hierarchy's top, the limit less the anonymous memory in
    use (page cache is given back under pressure, so it is not counted), plus the swap it may still use;
    the least of them. None without a limit. cgroup v2 first (memory.max: Slurm sets it on the job's
    group, above the step's and the task's, which have none), then v1 (hierarchical_memory_limit, which
    already takes the groups above into account). `swap_free`: the host's free swap, which caps a
    group's own swap allowance (memory.swap.max; memsw in v1) and is all of it where swap is not
    accounted per group."""
    lines: list[tuple[str, str, str]] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (root / "proc" / "self" / "cgroup").read_text(encoding="ascii").splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            lines.append((hierarchy, controllers, path))
    top = root / "sys" / "fs" / "cgroup"
    unified = next((path for hierarchy, controllers, path in lines if hierarchy == "0" and controllers == ""), "")
    rooms = []
    for group in _ancestors(top, unified):
        limit = _number(group / "memory.max")
        if limit is None:
            continue
        swap = swap_free
        if (group / "memory.swap.max").is_file():
            allowed = _number(group / "memory.swap.max")
            if allowed is not None:
                swap = min(max(allowed - (_number(group / "memory.swap.current") or 0), 0), swap_free)
        rooms.append(max(limit - _stat(group / "memory.stat").get("anon", 0), 0) + swap)
    if rooms:
        return min(rooms)
    v1 = next((path for _, controllers, path in lines if "memory" in controllers.split(",")), "")
    for group in _ancestors(top / "memory", v1)[:1]:  # the group itself or the nearest above that exists
        stat = _stat(group / "memory.stat")
        limit = stat.get("hierarchical_memory_limit")
        if limit is None or limit >= NO_LIMIT:
            return None
        swap = swap_free
        both = stat.get("hierarchical_memsw_limit")
        if both is not None and both < NO_LIMIT:
            swap = min(max(both - limit - stat.get("total_swap", 0), 0), swap_free)
        return max(limit - stat.get("total_rss", 0), 0) + swap
    return None


def available_host_bytes(root: Path = Path("/")) -> int | None:
    """Bytes of host memory the analysis can still take: the kernel's MemAvailable (+ free swap), or less
    when a cgroup limits this process to less; None where neither can be read (macOS, Windows)."""
    memory = _meminfo(root)
    swap_free = memory[1] if memory is not None else 0
    known = [value for value in (sum(memory) if memory else None, _cgroup_room(root, swap_free)) if value is not None]
    return min(known) if known else None


def shortfall(needs: Sequence[Need], host: int | None, device: int | None) -> tuple[bool, int, int | None] | None:
    """(on the device?, bytes needed there, bytes available there) for the first memory the needs do not
    fit in, with `device` the GPU's free bytes (None: the analysis runs on the CPU, and everything is host
    memory); None when they fit, or when what is available is not known."""
    on_device = sum(need.bytes for need in needs if need.on_device)
    on_host = sum(need.bytes for need in needs if not need.on_device)
    if device is not None:
        if on_device > device:
            return True, on_device, device
    else:
        on_host += on_device
    if host is not None and on_host > host:
        return False, on_host, host
    return None


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation that failed: MemoryError, torch's OutOfMemoryError (CUDA), the CPU
    allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory", "not enough memory" on
    Windows), or a CUDA library's own ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
    cuSOLVER's and cuSPARSE's alike: workspace they could not get on a full GPU)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text
        or "out of memory" in text.lower() or "_STATUS_ALLOC_FAILED" in text
    )


#: What to do after an allocation failed during the run (`memory_error`)
MEMORY_FIX = ("free memory (other programs, or a GPU shared with training) and run the same command again: it "
              "resumes after the checkpoints stored; or need less: a smaller --batch-size, a narrower --layer, a "
              "smaller --anchor-size")


def memory_error(exc: BaseException, where: str) -> ResourceError:
    """The error for an allocation `exc` that failed `where` ("at step 10 (FILE)"), in place of its traceback
    or of an error that blames the file, the probe or the model."""
    return ResourceError(f"ran out of memory {where}", got=f"{type(exc).__name__}: {first_line(exc)}",
                         fix=MEMORY_FIX)
