"""float32 statistics products (the library's `product_dtype`, SPEC.md §8): where the float32 per-batch
product keeps every measure within rtol 1e-6 of the all-float64 path, and where it does not (so the
CLI does not offer it: tests/test_product_dtype_sample.py).

The float32 product rounds each entry of FᵀF to ~1e-7 of its size, so an eigenvalue below ~1e-6·ρ_1
moves by a large fraction of itself: its quality/utility terms (a²/ρ_k), and through them k_τ and
the effective dimensions, can then move by far more than 1e-6. Features without such small
eigenvalues keep every measure; the first test shows that on a network's features through the whole
pipeline (record fields, CKA and overlaps included), the second shows the failure it guards against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.moments import MomentAccumulator
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.spectral import measure
from fdl_cli.store import StoreReader
from tests.tiny_models import mlp

RTOL = 1e-6


def _run(folder: Path) -> Path:
    folder.mkdir()
    net = mlp(n_in=6, hidden=32, n_out=4, seed=0)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    for index in range(4):
        state = {k: (v + 0.3 * index * torch.randn(v.shape, generator=generator)).contiguous() for k, v in start.items()}
        save_file(state, str(folder / f"step_{index}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(1500, 6)).astype(np.float32), y=rng.integers(0, 4, size=1500))
    return folder


def _records(run: Path, out: Path, product_dtype: str) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    run_analyze(AnalyzeOptions(
        sources=(str(run),), model_spec="tests.tiny_models:mlp", model_kwargs={"n_in": 6, "hidden": 32, "n_out": 4},
        probe_specs=(str(run / "probe.npz"),), out=out, device="cpu", batch_size=128, anchor_size=500,
        product_dtype=product_dtype,
    ))
    with StoreReader(out) as reader:
        records = {r["step"]: r for r in reader.records()}
        eigenvalues = {step: np.asarray(reader.arrays(step).eigenvalues) for step in records}
    return records, eigenvalues


def test_float32_product_keeps_every_measure_of_network_features(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    exact, exact_values = _records(run, tmp_path / "f64.h5", "float64")
    fast, fast_values = _records(run, tmp_path / "f32.h5", "float32")
    assert sorted(fast) == sorted(exact)
    compared = 0
    for step, record in exact.items():
        for name, value in record.items():
            if name in ("path", "sha256"):
                continue
            if isinstance(value, float):
                np.testing.assert_allclose(fast[step][name], value, rtol=RTOL, atol=1e-12, err_msg=f"step {step} {name}")
                compared += 1
            else:
                assert fast[step][name] == value, (step, name)  # rank, k_τ, output_rank, regime: identical
        np.testing.assert_allclose(fast_values[step], exact_values[step], rtol=RTOL, atol=RTOL * exact_values[step][0])
    assert compared > 60


def test_float32_product_breaks_small_eigenvalues_measures() -> None:
    """Nearly collinear features (ρ_min ≈ 1e-9 ρ_1): float32 products move quality-based measures by > 1e-6."""
    rng = np.random.default_rng(0)
    n, p = 4000, 12
    base = rng.normal(size=(n, p - 1)) + 0.5
    features = np.column_stack([base, base[:, 0] + 1e-4 * rng.normal(size=n)]).astype(np.float32)
    labels = (features[:, -1] - features[:, 0] > 0).astype(np.int64) + 2 * (features[:, 1] > 0.5)
    outputs = (features.astype(np.float64) @ rng.normal(size=(p, 4))).astype(np.float32)
    results = {}
    for dtype in ("float64", "float32"):
        accumulator = MomentAccumulator(task="classes", product_dtype=dtype)
        for start in range(0, n, 500):
            stop = start + 500
            accumulator.update(torch.from_numpy(features[start:stop]), torch.from_numpy(outputs[start:stop]),
                               torch.from_numpy(labels[start:stop]))
        results[dtype] = measure(accumulator.moments())
    exact, fast = results["float64"], results["float32"]
    assert exact.eigenvalues[-1] < 1e-7 * exact.eigenvalues[0]
    moved = [
        name for name, value in exact.scalars.items()
        if isinstance(value, float) and not np.isclose(fast.scalars[name], value, rtol=RTOL, atol=0.0)
    ]
    assert moved, "float32 products unexpectedly kept every measure on ill-conditioned features"
    assert abs(fast.eigenvalues[-1] - exact.eigenvalues[-1]) > RTOL * exact.eigenvalues[-1]


def test_float64_is_the_default() -> None:
    assert AnalyzeOptions(sources=("x",)).product_dtype == "float64"
    assert MomentAccumulator().product_dtype == "float64"
    with pytest.raises(ValueError, match="product_dtype"):
        MomentAccumulator(product_dtype="float16")
