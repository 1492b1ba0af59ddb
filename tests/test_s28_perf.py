"""The CPU statistics gather batches' rows before numpy's dsyrk (`moments.SYRK_ROWS`; docs/benchmarks.md, "Twenty-eighth
session: the statistics' products on 1 024 rows"). Rows summed a chunk at a time must give the sums a user's
measures come from: those of the block rows (the accelerators' path) and the plain float64 sums, whatever the batch
sizes, at the anchor boundary (CKA's anchor moment, taken mid-chunk) and at the end of a pass."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli import moments
from fdl_cli.extract import LayerSpec, extract
from fdl_cli.moments import MomentAccumulator

RTOL = 1e-12
#: batch sizes that fill a 100-row chunk unevenly, one larger than the chunk, a tiny one, a short last one
SIZES = [37, 64, 64, 150, 5, 90, 40, 3]
SNAPSHOT_AFTER = 3  # batches: second_moment_so_far mid-chunk (37 + 64 + 64 = 165 rows: 65 of them not yet summed)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """torch on one thread, where the CPU sums by numpy's dsyrk (conftest.py sets numpy's BLAS to one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert moments._numpy_syrk(torch.device("cpu")), "numpy's BLAS runs more than one thread here"
    yield
    torch.set_num_threads(threads)


def _probe(task: str, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(7)
    n, p, c = sum(SIZES), 23, 4
    features = (np.maximum(rng.normal(size=(n, p)), 0.0) + offset).astype(np.float32)
    outputs = rng.normal(size=(n, c)).astype(np.float32)
    targets = {"classes": rng.integers(0, c, size=n), "regression": rng.normal(size=(n, c)), "none": None}[task]
    return features, outputs, targets


def _accumulate(task: str, features: np.ndarray, outputs: np.ndarray, targets: np.ndarray | None) -> tuple:
    acc = MomentAccumulator(task=task)
    snapshot = None
    bounds = np.cumsum([0, *SIZES])
    with torch.inference_mode():  # as `extract` runs it
        for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            acc.update(torch.from_numpy(features[lo:hi]), torch.from_numpy(outputs[lo:hi]),
                       None if targets is None else torch.from_numpy(targets[lo:hi]))
            if index + 1 == SNAPSHOT_AFTER:
                snapshot = acc.second_moment_so_far()
    return acc.moments(), snapshot


@pytest.mark.parametrize("task, offset", [("classes", 0.0), ("regression", 6.0), ("none", 0.0)])
def test_rows_summed_a_chunk_at_a_time_give_the_same_sums(monkeypatch: pytest.MonkeyPatch, task: str,
                                                          offset: float) -> None:
    """Chunks of 100 rows, batches that do not divide them: every sum (Σφφᵀ, Σφ, Σφŷᵀ, Σŷŷᵀ, class sums, the
    cross-entropy, the counts) and the mid-chunk snapshot of the anchors' second moment equal the block rows'
    and the plain float64 sums."""
    monkeypatch.setattr(moments, "SYRK_ROWS", 100)
    features, outputs, targets = _probe(task, offset)
    (got, snapshot) = _accumulate(task, features, outputs, targets)
    monkeypatch.setattr(moments, "NUMPY_SYRK_ON_CPU", False)
    (before, snapshot_before) = _accumulate(task, features, outputs, targets)
    assert snapshot is not None and snapshot_before is not None
    for name in ("sum_ff", "sum_f", "sum_fo", "sum_oo", "sum_o", "sum_fy", "sum_oy", "sum_y", "sum_yy",
                 "class_sum_f", "class_counts", "shift_f", "shift_o", "shift_y"):
        value, previous = getattr(got, name), getattr(before, name)
        assert (value is None) == (previous is None), name
        if value is not None:
            np.testing.assert_allclose(value, previous, rtol=RTOL, atol=RTOL * float(np.abs(previous).max()),
                                       err_msg=name)
    if task == "classes":
        assert got.n_correct == before.n_correct and got.sum_xent is not None and before.sum_xent is not None
        assert got.sum_xent == pytest.approx(before.sum_xent, rel=RTOL)
    f, o = features.astype(np.float64), outputs.astype(np.float64)
    plain = got.unshifted()
    scale = float(np.abs(f.T @ f).max())
    np.testing.assert_allclose(plain.sum_ff, f.T @ f, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_allclose(plain.sum_fo, f.T @ o, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_allclose(plain.sum_oo, o.T @ o, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(plain.sum_f, f.sum(0), rtol=1e-13)
    np.testing.assert_array_equal(got.sum_ff, got.sum_ff.T)
    rows = sum(SIZES[:SNAPSHOT_AFTER])
    a = got.shift_f if got.shift_f is not None else np.zeros(f.shape[1])
    head = f[:rows] - a
    for part, expected in zip(snapshot, (head.T @ head, head.sum(0)), strict=True):
        np.testing.assert_allclose(part.numpy(), expected, rtol=1e-12, atol=1e-14 * scale)
    assert got.n == before.n == len(f)


def test_extract_anchor_moment_and_statistics_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny model's pass (`extract`) with its anchor boundary inside a chunk (anchors 100, batches of 64, chunks
    of 192 rows): the statistics and the anchors' second moment, which CKA's self-norm comes from, equal those
    summed one batch at a time (a chunk of one batch) to rounding, and the anchors themselves to the bit."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=300)
    layers = [LayerSpec(module="2", use_input=True)]

    def run(rows: int) -> tuple:
        monkeypatch.setattr(moments, "SYRK_ROWS", rows)
        result = extract(model, layers, x, y, task="classes", device=torch.device("cpu"), batch_size=64,
                         anchor_size=100)
        return result[layers[0].label]

    gathered, one_batch = run(192), run(1)
    np.testing.assert_array_equal(gathered.anchor_features, one_batch.anchor_features)
    assert gathered.anchor_moment is not None and one_batch.anchor_moment is not None
    for part, previous in zip(gathered.anchor_moment, one_batch.anchor_moment, strict=True):
        np.testing.assert_allclose(part, previous, rtol=RTOL, atol=RTOL * float(np.abs(previous).max()))
    for name in ("sum_ff", "sum_f", "sum_fo", "sum_oo", "class_sum_f"):
        value, previous = getattr(gathered.moments, name), getattr(one_batch.moments, name)
        np.testing.assert_allclose(value, previous, rtol=RTOL, atol=RTOL * float(np.abs(previous).max()), err_msg=name)
    assert gathered.moments.n == one_batch.moments.n == 300
