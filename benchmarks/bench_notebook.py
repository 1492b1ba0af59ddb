"""Benchmark (b): fdl's per-checkpoint analysis against "the notebook way", n = 2 000, 5 000, 10 000.

The notebook way keeps every feature in memory, forms the n×n Gram matrix FFᵀ/n, diagonalises it
with numpy.linalg.eigh, and projects the targets and outputs on the eigenvectors explicitly. fdl
streams the probe through `fdl_cli.extract.extract` into float64 statistics and runs
`fdl_cli.spectral.measure` (p×p) plus the anchor eigenfunctions. One checkpoint of the benchmark MLP
(p = 512); each (method, n) runs in its own process (peak RSS of that process), with --timeout
seconds at most: the notebook way "stops" where it runs out of time or memory.

    python benchmarks/bench_notebook.py [--sizes 2000,5000,10000] [--timeout 600] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,  # noqa: E402
    machine,
    make_run,
    measured_command,
    peak_from_output,
    write_json,
)

RESULT_TAG = "FDL_BENCH_RESULT="


def _features(run: Path, n: int):  # type: ignore[no-untyped-def]
    import models  # type: ignore[import-not-found]
    import numpy as np
    from safetensors.torch import load_file

    model = models.mlp().eval()
    model.load_state_dict(load_file(str(sorted(run.glob("step_*.safetensors"))[-1])))
    probe = np.load(run / "probe.npz")
    return model, probe["x"][:n], probe["y"][:n]


def work_fdl(run: Path, n: int) -> dict[str, float]:
    import torch

    from fdl_cli.extract import extract, resolve_layers
    from fdl_cli.spectral import eigenfunctions, measure

    model, x, y = _features(run, n)
    started = time.perf_counter()
    layers = resolve_layers(model, ())
    result = extract(model, layers, x, y, task="classes", device=torch.device("cpu"))[layers[0].label]
    measures = measure(result.moments)
    eigenfunctions(result.anchor_features, measures.spectrum, k=64)
    return {"seconds": time.perf_counter() - started, "d_lr": measures.scalars["d_lr"],
            "pi_star_C": measures.scalars["pi_star_C"]}


def work_notebook(run: Path, n: int) -> dict[str, float]:
    import numpy as np
    import torch

    model, x, y = _features(run, n)
    started = time.perf_counter()
    captured = []
    model[-1].register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.inference_mode():
        outputs = model(torch.from_numpy(x)).double().numpy()
    features = captured[0].double().numpy()  # (n, p): every feature in memory
    gram = features @ features.T / n  # (n, n)
    eigenvalues, vectors = np.linalg.eigh(gram)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    rank = int(np.count_nonzero(eigenvalues > eigenvalues[0] * 1e-10))
    eigenfunctions = vectors[:, :rank] * np.sqrt(n)  # e_k on the probe, orthonormal under <.,.>
    targets = np.eye(outputs.shape[1])[y]
    quality = np.sum((eigenfunctions.T @ targets / n) ** 2, axis=1) / np.sum(targets**2 / n)
    utility = np.sum((eigenfunctions.T @ outputs / n) ** 2, axis=1) / np.sum(outputs**2 / n)
    return {"seconds": time.perf_counter() - started, "pi_star_C": float(np.sum(quality[:10])),
            "pi_hat_C": float(np.sum(utility[:10]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000,10000")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as stopped")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "RUN", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, run, n = args.worker
        result = (work_fdl if method == "fdl" else work_notebook)(Path(run), int(n))
        print(RESULT_TAG + json.dumps(result))
        return
    sizes = [int(v) for v in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fdl-bench-b-"))
    run = make_run(workdir, "mlp", n=max(sizes), checkpoints=1)
    rows = []
    for n in sizes:
        row: dict[str, object] = {"n": n, "p": 512}
        for method in ("fdl", "notebook"):
            command = measured_command([sys.executable, __file__, "--worker", method, str(run), str(n)])
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                                      cwd=str(REPO), env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
            except subprocess.TimeoutExpired:
                row[method] = {"stopped": f"over {args.timeout:.0f} s"}
                continue
            if done.returncode != 0 or RESULT_TAG not in done.stdout:
                tail = done.stderr.strip().splitlines()[-2:] if done.stderr else ""
                row[method] = {"stopped": f"exit {done.returncode}: {tail}"}
                continue
            result = json.loads(done.stdout.split(RESULT_TAG, 1)[1].splitlines()[0])
            result["peak_mib"] = peak_from_output(done.stderr)
            row[method] = result
            print(f"  n={n} {method}: {result}", file=sys.stderr)
        fdl, notebook = row["fdl"], row["notebook"]
        if isinstance(fdl, dict) and isinstance(notebook, dict) and "seconds" in fdl and "seconds" in notebook:
            row["speed_ratio_notebook_over_fdl"] = notebook["seconds"] / fdl["seconds"]
            row["memory_ratio_notebook_over_fdl"] = notebook["peak_mib"] / fdl["peak_mib"]
        rows.append(row)
    write_json(args.json, {"benchmark": "fdl_vs_notebook", "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
