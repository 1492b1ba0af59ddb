"""Shared helpers of the benchmark scripts: synthetic runs on disk and whole-process measurements.

A "run" is a folder of checkpoints `step_<k>.safetensors` of one benchmark model (weights drifting
from a seeded initialisation, as a training run's do), plus `probe.npz` (x, integer labels y).
"""

from __future__ import annotations

import compileall
import functools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MODELS_FILE = BENCH_DIR / "models.py"


def _models() -> Any:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import models  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return models


def make_probe(
    folder: Path, model: str, n: int, *, n_classes: int = 10, seed: int = 0, shape: tuple[int, ...] | None = None
) -> Path:
    """probe.npz with x (n, *input shape) float32 and y (n,) int64 labels."""
    shape = shape or _models().INPUT_SHAPES[model]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n)
    path = folder / "probe.npz"
    np.savez(path, x=x, y=y)
    return path


def make_checkpoints(
    folder: Path, model: str, count: int, *, seed: int = 0, drift: float = 0.3, kwargs: dict[str, Any] | None = None
) -> list[Path]:
    """`count` safetensors checkpoints whose floating parameters drift linearly from the initialisation."""
    import torch
    from safetensors.torch import save_file

    net = _models().FACTORIES[model](seed=seed, **(kwargs or {}))
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    direction = {
        k: torch.randn(v.shape, generator=generator) * (v.float().std() if v.numel() > 1 else 0.0) * drift
        for k, v in start.items()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        step = index * 100
        fraction = index / max(count - 1, 1)
        state = {k: (v + fraction * direction[k] if k in direction else v).contiguous() for k, v in start.items()}
        path = folder / f"step_{step}.safetensors"
        save_file(state, str(path), metadata={"step": str(step)})
        paths.append(path)
    return paths


def make_run(root: Path, model: str, *, n: int, checkpoints: int, seed: int = 0) -> Path:
    """A folder with the checkpoints and probe of one benchmark run (reused when already complete)."""
    folder = root / f"{model}-n{n}-c{checkpoints}"
    marker = folder / ".complete"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        make_checkpoints(folder, model, checkpoints, seed=seed)
        make_probe(folder, model, n, seed=seed)
        marker.write_text("ok\n")
    return folder


@dataclass(frozen=True)
class Measured:
    """One whole process: wall seconds, peak resident memory (MiB), exit status, output, CPU seconds."""

    seconds: float
    peak_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float


def run_process(command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run `command` (wrapped by `measured_command`) as a child process: wall time and reported peak RSS."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH", "")]))
    compiled_fdl(Path(cwd or REPO))
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=str(cwd or REPO), text=True
    )
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    peak = peak_from_output(stderr)
    return Measured(seconds, peak, process.returncode, stdout, stderr, peak_from_output(stderr, CPU_TAG))


@functools.cache
def compiled_fdl(root: Path) -> None:
    """fdl_cli's bytecode under `root` written (`__pycache__`) before any process is timed, as an installed fdl has it
    (pip compiles a package as it installs it). A checkout run under PYTHONDONTWRITEBYTECODE=1 (this project's
    machines set it) compiled fdl's own modules in every process: ~0.29 s of CPU a `fdl analyze` that no user pays
    (docs/benchmarks.md, "Twenty-ninth session: start-up"). compileall writes whatever that variable says."""
    package = root / "fdl_cli"
    if package.is_dir():
        compileall.compile_dir(str(package), quiet=1, maxlevels=0)


PEAK_TAG = "FDL_BENCH_PEAK_MIB="
CPU_TAG = "FDL_BENCH_CPU_S="


def peak_from_output(text: str, tag: str = PEAK_TAG) -> float:
    """The value peak.py reported on stderr under `tag` (NaN when absent)."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag):
            return float(line[len(tag) :])
    return float("nan")


def measured_command(command: list[str]) -> list[str]:
    """Wrap a command so that it reports its peak RSS (including its own children) on stderr."""
    return [sys.executable, str(BENCH_DIR / "peak.py"), *command]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and how loaded the machine was)."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_gib"] = round(
            int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
            / 2**20,
            1,
        )
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Path | None, payload: Any) -> None:
    text = json.dumps(payload, indent=2, default=float)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)


def best_ms(call: Any, repeats: int, clock: Any = time.perf_counter) -> float:
    """The fastest of `repeats` calls of `call()`, in milliseconds of `clock` (wall time by default;
    time.process_time for CPU seconds, which a busy machine's other work does not count)."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        call()
        best = min(best, clock() - start)
    return best * 1e3


def print_results(results: dict[str, Any], path: Path | None) -> None:
    """The results as indented JSON on stdout, and in `path` too when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def in_process_arguments(doc: str, repeats: int) -> Any:
    """The command line of an in-process timing script: --repeats (default `repeats`) and --json PATH."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()
