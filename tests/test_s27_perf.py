"""Twenty-seventh session: exact speedups of `fdl analyze`'s CPU path (docs/benchmarks.md, "Twenty-seventh
session: profile of analyze against the floor"). A faster way to the same numbers must give them: each test
compares what a user reads (the statistics, the store's records) with the float64 path as it was, to rtol
1e-12, and with an independent float64 sum."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import moments
from fdl_cli.moments import MomentAccumulator
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.store import StoreReader

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-12
#: eff_dim_quality weighs weak directions by a²/ρ_k, so any other order of the same float64 sums moves it by
#: ~1e-11 (the block rows themselves, 8 columns wide instead of 128: 3.7e-11 on the sample run; numpy's dsyrk:
#: 2.6e-11). Its bound here is that conditioning, not an error of either path.
QUALITY_RTOL = 1e-9


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """torch on one thread, where the CPU sums by numpy's dsyrk (`moments.NUMPY_SYRK_ON_CPU`); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _accumulate(features: np.ndarray, outputs: np.ndarray, labels: np.ndarray, batch: int) -> moments.Moments:
    acc = MomentAccumulator(task="classes")
    with torch.inference_mode():  # as `extract` runs it: the buffers are inference tensors
        for lo in range(0, features.shape[0], batch):
            acc.update(
                torch.from_numpy(features[lo : lo + batch]),
                torch.from_numpy(outputs[lo : lo + batch]),
                torch.from_numpy(labels[lo : lo + batch]),
            )
    return acc.moments()


@pytest.mark.parametrize("p, offset", [(1, 0.0), (7, 0.0), (130, 5.0), (300, 0.0)])
def test_cpu_statistics_equal_the_block_rows_and_the_plain_sums(
    monkeypatch: pytest.MonkeyPatch, p: int, offset: float
) -> None:
    """Σφφᵀ, Σφ and the rest, summed on the CPU by numpy's dsyrk (one thread), equal torch's block rows (the path before
    the twenty-seventh session, still the one on an accelerator) and the plain float64 sums, with a short
    last batch, a one-feature layer, and features far from 0 (summed about a shift)."""
    rng = np.random.default_rng(p)
    n, c = 700, 4
    features = (np.maximum(rng.normal(size=(n, p)), 0.0) + offset).astype(np.float32)
    outputs = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    fast = _accumulate(features, outputs, labels, 256)
    monkeypatch.setattr(moments, "NUMPY_SYRK_ON_CPU", False)
    blocks = _accumulate(features, outputs, labels, 256)
    f = features.astype(np.float64)
    scale = float(np.abs(f.T @ f).max())
    for name in ("sum_ff", "sum_f", "sum_fo", "sum_oo", "sum_o", "sum_fy", "class_sum_f", "class_counts"):
        got, before = getattr(fast, name), getattr(blocks, name)
        np.testing.assert_allclose(got, before, rtol=RTOL, atol=RTOL * float(np.abs(before).max()), err_msg=name)
    plain = fast.unshifted()
    np.testing.assert_allclose(plain.sum_ff, f.T @ f, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_array_equal(fast.sum_ff, fast.sum_ff.T)  # both triangles, the same numbers
    np.testing.assert_allclose(plain.sum_f, f.sum(0), rtol=1e-13)
    assert fast.n == blocks.n == n and fast.n_correct == blocks.n_correct


SAMPLE_STEPS = (0, 15, 150, 1000)  # eff_dim_quality's largest move was at step 150


def _sample_run(folder: Path) -> Path:
    """Four checkpoints of the bundled sample run, with its model, probe and fdl.toml."""
    sample = REPO / "sample_checkpoints"
    folder.mkdir()
    for name in ("model.py", "probe.npz", "fdl.toml", *(f"step_{step}.safetensors" for step in SAMPLE_STEPS)):
        shutil.copyfile(sample / name, folder / name)
    return folder


def _records(run: Path, out: Path) -> dict[int, dict]:
    run_analyze(AnalyzeOptions(sources=(str(run),), out=out, device="cpu"))
    with StoreReader(out) as reader:
        return {record["step"]: record for record in reader.records()}


def test_sample_run_records_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints of the bundled sample run, every field: the same records as the block rows give, floats to
    rtol 1e-12, everything else (ranks, counts, the regime, the steps) equal."""
    run = _sample_run(tmp_path / "run")
    fast = _records(run, tmp_path / "fast.h5")
    monkeypatch.setattr(moments, "NUMPY_SYRK_ON_CPU", False)
    before = _records(run, tmp_path / "before.h5")
    assert sorted(fast) == sorted(before) == list(SAMPLE_STEPS)
    for step, record in before.items():
        assert fast[step].keys() == record.keys()
        for name, value in record.items():
            got = fast[step][name]
            if isinstance(value, float) and not isinstance(got, bool):
                rtol = QUALITY_RTOL if name == "eff_dim_quality" else RTOL
                assert isinstance(got, float) and math.isclose(got, value, rel_tol=rtol, abs_tol=1e-300), (step, name)
            else:
                assert got == value, (step, name)
