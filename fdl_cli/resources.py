"""Memory: what one analysis needs at least, what the machine has, and an allocation failure explained.

`fdl analyze` checks, once the layers' widths are known and before any checkpoint is read, that the
memory the analysis cannot do without fits in what the machine (or the GPU) has free: a layer of
60 000 features needs a 60 000² float64 second moment, 28.8 GB, and failed at the first batch with
torch's allocator traceback. The estimate is a lower bound (the arrays named below, nothing else), so
a refusal is certain to be right; a run that passes can still need more (the model, the batch, the
eigen-decomposition's workspace), and an allocation that fails mid-run is explained by
`out_of_memory` instead of a traceback. No torch here: the pipeline passes the GPU's free memory in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: float64, the dtype of every accumulator, decomposition and anchor copy (SPEC §8)
FLOAT64 = 8
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
    on_device: bool  # on the GPU when the analysis runs there (the statistics); else in host memory


def layer_needs(label: str, p: int, n: int, m: int, *, probe: str) -> list[Need]:
    """The arrays one layer of width p needs on a probe of n inputs with m anchors (all float64).

    p ≤ n: the (p+1)×(p+1) sums of φφᵀ (φ with a ones column) and the p×p eigenvectors of their
    decomposition. p > n (the n×n Gram route, docs/measures.md): the n×p features kept, the n×n Gram
    and its eigenvectors. And the anchors: this checkpoint's m×p features and the reference's, which
    stay for the whole run (the previous checkpoint's, a third copy, are not counted: a run of one
    checkpoint has none)."""
    where = f"{probe}/{label}"
    if p > n:
        needs = [
            Need(f"{where}: the n×p features of the Gram route (n = {n:,}, p = {p:,})", FLOAT64 * n * p, True),
            Need(f"{where}: the n×n Gram and its eigenvectors", 2 * FLOAT64 * n * n, True),
        ]
    else:
        needs = [
            Need(f"{where}: the p×p second moment and its eigenvectors (p = {p:,})",
                 FLOAT64 * ((p + 1) ** 2 + p * p), True),
        ]
    needs.append(Need(f"{where}: the anchors' features, this checkpoint's and the reference's (m = {m:,})",
                      2 * FLOAT64 * m * p, False))
    return needs


def run_needs(series: Sequence[tuple[str, Mapping[str, int], int, int]]) -> list[Need]:
    """The needs of a run: `series` holds (probe, {layer: p}, n, m) for each probe. The probes are passed
    over one after another, so only the largest pass's statistics count; every series' anchors stay."""
    passes = [[need for label, p in widths.items() for need in layer_needs(label, p, n, m, probe=probe)]
              for probe, widths, n, m in series]
    anchors = [need for needs in passes for need in needs if not need.on_device]
    biggest = max(([need for need in needs if need.on_device] for needs in passes),
                  key=lambda needs: sum(need.bytes for need in needs), default=[])
    return [*biggest, *anchors]


def size_text(count: float) -> str:
    """Bytes for people, in powers of 1 000: '28.8 GB', '512 MB', '3 kB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(count)} B"


def _meminfo(root: Path) -> int | None:
    """MemAvailable + SwapFree of /proc/meminfo, in bytes; None when there is no such file (not Linux)."""
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
    return values["MemAvailable"] + values.get("SwapFree", 0)


def _stat(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = int(value)
    return values


def _cgroup_room(root: Path) -> int | None:
    """What a memory cgroup (a container's limit) leaves this process: the limit less the anonymous
    memory in use (page cache is given back under pressure, so it is not counted); None without a
    limit. cgroup v2 (memory.max of the process's group, else of the mount's root), then v1."""
    groups: list[Path] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (root / "proc" / "self" / "cgroup").read_text(encoding="ascii").splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" and controllers == "":
                groups.append(root / "sys" / "fs" / "cgroup" / path.lstrip("/"))
    groups.append(root / "sys" / "fs" / "cgroup")
    for group in groups:
        try:
            limit_text = (group / "memory.max").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= NO_LIMIT:
            return None
        return max(int(limit_text) - _stat(group / "memory.stat").get("anon", 0), 0)
    stat = _stat(root / "sys" / "fs" / "cgroup" / "memory" / "memory.stat")
    limit = stat.get("hierarchical_memory_limit")
    if limit is None or limit >= NO_LIMIT:
        return None
    return max(limit - stat.get("total_rss", 0), 0)


def available_host_bytes(root: Path = Path("/")) -> int | None:
    """Bytes of host memory the analysis can still take: the kernel's MemAvailable (+ free swap), or less
    when a cgroup limits this process to less; None where neither can be read (macOS, Windows)."""
    known = [value for value in (_meminfo(root), _cgroup_room(root)) if value is not None]
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
    """Whether `exc` is an allocation that failed: MemoryError, torch's OutOfMemoryError (CUDA), or the
    CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
