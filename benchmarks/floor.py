"""The floor of benchmark (a): what no exact analysis of a run can avoid, as one whole process.

For every checkpoint of RUN_DIR (in step order; the next one is loaded in a thread meanwhile): load
its weights into the model, run the probe through it once in batches with the feature layer (the
input of the last Linear) hooked, add one p×p product FᵀF per batch to a float64 sum (in place and in
block rows, the symmetric half only, as fdl adds its sums; each batch converted into one reused float64
buffer whose rows are padded, seventeenth session), and eigen-decompose the p×p sum once. Nothing is
stored.

With --cka-anchors M it also does the one part of SPEC §5 that no exact analysis can avoid either and
that issue #6's floor leaves out: keep the features of the first M probe points, centre them in
float64 (in padded rows, as fdl holds them), and take the two M×p×p cross products of linear CKA,
‖A_tᵀA_ref‖² (the first checkpoint) and ‖A_tᵀA_prev‖² (the one before), as `fdl analyze` does at its
default --anchor-size 4096 (the anchors' own norms come from their sums, as in fdl). This "SPEC floor"
bounds what any implementation of SPEC can reach.

    python benchmarks/floor.py RUN_DIR --model mlp [--device cpu] [--batch-size 512] [--product-dtype float64]
        [--cka-anchors 4096 [--cka-dtype float64]] [--timings]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# As `fdl` does at its entry point (fdl_cli/cli.py, BLAS_ENVIRONMENT): OpenBLAS workers that spin
# after numpy's eigh would otherwise slow the next torch operations; the floor is the best case.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# As `fdl analyze` does (fdl_cli/cli.py, `_untracked_imports`): the imports run with the cyclic garbage
# collector off and their objects are frozen after, so that no full collection traverses torch's
# modules again (while importing, and as the interpreter shuts down: ~0.35 s of CPU a process).
gc.disable()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

from fdl_cli.moments import SYRK_ROWS, _numpy_syrk, row_bounds  # noqa: E402

gc.freeze()
gc.enable()

#: Values of padding after each float64 row, as fdl pads its anchors (fdl_cli.pipeline.ANCHOR_ROW_PAD; not
#: imported from there: fdl_cli.pipeline's imports would slow the floor's start).
ANCHOR_ROW_PAD = 8


class Clock:
    """Seconds per named step (`with clock(name):`), reported as JSON on stderr; off: nothing is timed.
    CPU only: on a GPU a step's time is not known without synchronising, which would change the run.
    Wall time, or the main thread's CPU time under FDL_STEPS_CLOCK=thread (`steps.py --cpu`)."""

    def __init__(self, on: bool) -> None:
        self.now = time.thread_time if os.environ.get("FDL_STEPS_CLOCK") == "thread" else time.perf_counter
        self.on, self.started = on, self.now()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.on:
            yield
            return
        start = self.now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.now() - start

    def report(self, checkpoints: int) -> None:
        if self.on:
            steps = {**self.seconds, "process CPU (all threads; not a step)": time.process_time()}
            total = {"checkpoints": checkpoints, "run": self.now() - self.started, "steps": steps}
            print("FDL_STEPS=" + json.dumps(total), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model", required=True, choices=sorted(models.FACTORIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--product-dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--cka-anchors", type=int, default=0, help="also CKA's two cross products on the first M points")
    parser.add_argument("--cka-dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of those products (float32: one product each, summed in float64)")
    parser.add_argument("--timings", action="store_true", help="also print the seconds of each step (JSON, stderr)")
    args = parser.parse_args()
    clock = Clock(args.timings and args.device == "cpu")
    device = torch.device(args.device)
    if device.type == "cuda":  # full-float32 forward passes, as fdl analyze runs them (extract.ieee_float32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    product = torch.float64 if args.product_dtype == "float64" else torch.float32
    paths = sorted(args.run_dir.glob("step_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    probe = np.load(args.run_dir / "probe.npz")
    x = torch.from_numpy(probe["x"])
    model = models.FACTORIES[args.model]().to(device).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    top, cka = [], []
    reference = previous = None
    wide = None  # the statistics' float64 buffer
    # On a CPU where torch and numpy's BLAS run one thread each, fdl sums FᵀF by numpy's dsyrk on up to
    # SYRK_ROWS gathered rows (fdl_cli.moments, `_flush`); the floor then does the same
    gathered = product == torch.float64 and _numpy_syrk(device)
    scratch = None  # numpy's product of the gathered rows, added into the sums
    unsummed = 0  # rows written into `wide` and not yet added

    def flush() -> None:
        nonlocal unsummed
        if unsummed:
            rows = wide[:unsummed].numpy()
            np.matmul(rows.T, rows, out=scratch.numpy())
            total.add_(scratch)
        unsummed = 0

    def padded(shape: tuple[int, int]) -> torch.Tensor:
        """An uninitialised float64 (rows, columns) tensor whose rows lie 8 values (a cache line) further
        apart than `columns`, as fdl pads its anchors (`fdl_cli.pipeline.ANCHOR_ROW_PAD`)."""
        return torch.empty((shape[0], shape[1] + ANCHOR_ROW_PAD), dtype=torch.float64, device=device)[:, : shape[1]]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_file, str(paths[0]))
        for index in range(len(paths)):
            with clock("load (waiting for the prefetch)"):
                state = pending.result()
            if index + 1 < len(paths):
                pending = pool.submit(load_file, str(paths[index + 1]))
            with clock("load (weights into the model)"):
                model.load_state_dict(state)
            total = None
            anchors: list[torch.Tensor] = []
            with torch.inference_mode():
                for start in range(0, x.shape[0], args.batch_size):
                    with clock("forward pass"):
                        model(x[start : start + args.batch_size].to(device, non_blocking=True))
                    if start < args.cka_anchors:
                        anchors.append(captured[-1][: args.cka_anchors - start].reshape(-1, head.in_features))
                    with clock("statistics"):
                        features = captured.pop().reshape(-1, head.in_features)
                        if product == torch.float64:  # added in place: no per-batch temporary (fdl does the same)
                            if total is None:
                                total = torch.zeros((features.shape[1],) * 2, dtype=torch.float64, device=device)
                                # Only the block rows on and above the diagonal, as fdl sums FᵀF (the
                                # symmetric half and the diagonal blocks; `eigh` reads the upper triangle).
                                rows = [(total[a:b, a:], a, b) for a, b in row_bounds(features.shape[1])]
                            # Converted into one reused float64 buffer (as fdl converts each batch), whose
                            # rows are padded: p = 512 rows 4 KiB apart slow the products by ~15 % on a CPU.
                            if gathered:
                                if wide is None or wide.shape[1] != features.shape[1]:
                                    wide = padded((max(args.batch_size, SYRK_ROWS), features.shape[1]))
                                    scratch = torch.empty_like(total)
                                if unsummed + features.shape[0] > wide.shape[0]:
                                    flush()
                                wide[unsummed : unsummed + features.shape[0]].copy_(features)
                                unsummed += features.shape[0]
                                continue
                            if wide is None or wide.shape[1] != features.shape[1]:
                                wide = padded((args.batch_size, features.shape[1]))
                            batch = wide[: features.shape[0]]
                            batch.copy_(features)
                            for part, a, b in rows:
                                part.addmm_(batch[:, a:b].T, batch[:, a:])
                        else:
                            features = features.to(product)
                            gram = (features.T @ features).to(torch.float64)
                            total = gram if total is None else total.add_(gram)
                with clock("statistics"):
                    flush()  # the rows of the last batches
            assert total is not None
            # On the host, through torch's LAPACK, as fdl_cli.spectral decomposes it in `fdl analyze` (p ≥ 128).
            with clock("eigen-decomposition"):
                eigenvalues, _ = torch.linalg.eigh(total.cpu() / x.shape[0], UPLO="U")
            top.append(float(eigenvalues[-1]))
            if anchors:
                with clock("CKA cross products"):
                    # float64 in padded rows, as `fdl analyze` holds its anchors (pipeline.ANCHOR_ROW_PAD)
                    current = padded((sum(len(a) for a in anchors), head.in_features))
                    current.copy_(torch.cat(anchors))
                    current -= current.mean(0)
                    if args.cka_dtype == "float32":
                        current = current.to(torch.float32)
                    if reference is None:
                        reference = current
                    else:
                        for other in (reference, previous):
                            cka.append(float(torch.linalg.matrix_norm((current.T @ other).to(torch.float64))) ** 2)
                    previous = current
    print(f"floor: {len(paths)} checkpoints, largest eigenvalue of the last {top[-1]:.6g}"
          + (f", {len(cka)} CKA cross products" if args.cka_anchors else ""))
    clock.report(len(paths))


if __name__ == "__main__":
    main()
