"""fdl_cli.moments: batched == one pass == merged shards, numpy == torch, float32 products (SPEC.md §8)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from fdl_cli.errors import NumericalError, ProbeError
from fdl_cli.moments import ROW_BLOCK, MomentAccumulator, row_bounds
from fdl_cli.spectral import Moments, measure, merge_all

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.reference import one_hot, reference_measures
except ImportError:  # pragma: no cover
    from reference import one_hot, reference_measures  # type: ignore[no-redef]

N, P, C = 60, 8, 3


def make_probe(seed: int, *, n: int = N, p: int = P, regression: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, p)) * np.linspace(2.0, 0.5, p) + 0.4
    outputs = features @ rng.normal(size=(p, C)) + 0.2 * rng.normal(size=(n, C))
    targets = rng.normal(size=(n, C)) if regression else rng.integers(0, C, size=n)
    return {"features": features, "outputs": outputs, "targets": targets}


def accumulate(probe: dict, *, task: str, sizes: list[int] | None = None, **options: object) -> Moments:
    acc = MomentAccumulator(task=task, **options)  # type: ignore[arg-type]
    bounds = np.cumsum([0] + (sizes or [len(probe["features"])]))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        targets = None if task == "none" else probe["targets"][lo:hi]
        acc.update(probe["features"][lo:hi], probe["outputs"][lo:hi], targets)
    return acc.moments()


def assert_same_moments(a: Moments, b: Moments, *, rtol: float = 1e-10) -> None:
    """The same raw sums (each pass sums about its own first batch's means: compared unshifted)."""
    a, b = a.unshifted(), b.unshifted()
    for item in fields(Moments):
        if item.name == "peaks":  # the largest |·| of the values that arrived in float64: no sum
            continue
        x, y = getattr(a, item.name), getattr(b, item.name)
        if isinstance(x, np.ndarray | float) or isinstance(y, np.ndarray | float):  # float: sum_xent
            assert x is not None and y is not None, item.name
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, err_msg=item.name)
        else:
            assert x == y, item.name


def assert_same_measures(a: Moments, b: Moments, *, rtol: float = 1e-10, center: bool = False) -> None:
    ma, mb = measure(a, center=center), measure(b, center=center)
    np.testing.assert_allclose(ma.eigenvalues, mb.eigenvalues, rtol=rtol)
    np.testing.assert_allclose(ma.utility, mb.utility, rtol=rtol, atol=1e-14)
    for name, value in ma.scalars.items():
        if isinstance(value, float):
            np.testing.assert_allclose(value, mb.scalars[name], rtol=rtol, atol=1e-14, err_msg=name)
        else:
            assert value == mb.scalars[name], name


@pytest.mark.parametrize("task", ["none", "classes", "regression"])
@pytest.mark.parametrize("keep_features", [False, True])
def test_batched_equals_one_pass_equals_merged_shards(task: str, keep_features: bool) -> None:
    probe = make_probe(1, regression=task == "regression")
    whole = accumulate(probe, task=task, keep_features=keep_features)
    batched = accumulate(probe, task=task, sizes=[7, 1, 20, 32], keep_features=keep_features)
    assert whole.n == batched.n == N
    assert_same_moments(whole, batched)
    shards = [
        accumulate({k: v[lo:hi] for k, v in probe.items()}, task=task, keep_features=keep_features)
        for lo, hi in ((0, 13), (13, 14), (14, 60))
    ]
    assert_same_moments(whole, merge_all(shards))
    assert_same_moments(whole, shards[0].merge(shards[1]).merge(shards[2]))
    for center in (False, True):
        assert_same_measures(whole, merge_all(shards), center=center)


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_statistics_are_the_plain_sums(offset: float) -> None:
    """Features near 0 (means under SHIFT_RATIO standard deviations): plain sums. Features and outputs
    10 away (~10 standard deviations): sums about the first batch's means, the plain ones recovered."""
    probe = make_probe(2)
    probe["features"] = probe["features"] + offset
    probe["outputs"] = probe["outputs"] + 2 * offset
    f, o, labels = probe["features"], probe["outputs"], probe["targets"]
    y = one_hot(labels, C)
    shifted = accumulate(probe, task="classes", sizes=[25, 35])
    assert shifted.shift_y is None  # class one-hot targets are never shifted
    if offset:
        np.testing.assert_allclose(shifted.shift_f, f[:25].mean(0), rtol=1e-14)
        np.testing.assert_allclose(shifted.shift_o, o[:25].mean(0), rtol=1e-14)
        np.testing.assert_allclose(shifted.sum_ff, (f - f[:25].mean(0)).T @ (f - f[:25].mean(0)), rtol=1e-12)
    else:
        assert shifted.shift_f is None and shifted.shift_o is None and shifted.unshifted() is shifted
    got = shifted.unshifted()
    want = {
        "sum_f": f.sum(0), "sum_ff": f.T @ f, "sum_o": o.sum(0), "sum_oo": o.T @ o, "sum_fo": f.T @ o,
        "sum_y": y.sum(0), "sum_yy": y.T @ y, "sum_fy": f.T @ y, "sum_oy": o.T @ y,
        "class_counts": np.bincount(labels, minlength=C).astype(float),
        "class_sum_f": np.stack([f[labels == c].sum(0) for c in range(C)]),
    }
    for name, value in want.items():
        np.testing.assert_allclose(getattr(got, name), value, rtol=1e-12, err_msg=name)
    assert got.n_correct == int(np.sum(o.argmax(1) == labels))
    assert got.features is None


def test_mixed_routes_merge_to_second_moments() -> None:
    probe = make_probe(3)
    gram = accumulate({k: v[:20] for k, v in probe.items()}, task="classes", keep_features=True)
    moments = accumulate({k: v[20:] for k, v in probe.items()}, task="classes")
    merged = gram.merge(moments)
    assert merged.features is None
    assert_same_moments(merged, accumulate(probe, task="classes"))


def test_merge_refuses_different_shapes() -> None:
    a = accumulate(make_probe(4), task="classes")
    b = accumulate(make_probe(4, p=5), task="classes")
    with pytest.raises(NumericalError, match="merge"):
        a.merge(b)


@pytest.mark.parametrize("task", ["classes", "regression"])
@pytest.mark.parametrize("keep_features", [False, True])
def test_numpy_and_torch_inputs_give_the_same_statistics(task: str, keep_features: bool) -> None:
    import torch
    probe = make_probe(5, regression=task == "regression")
    as_torch = {k: torch.from_numpy(v) for k, v in probe.items()}
    as_torch["features"] = as_torch["features"].reshape(N, 2, P // 2)  # (b, ...) is flattened
    from_numpy = accumulate(probe, task=task, sizes=[30, 30], keep_features=keep_features)
    from_torch = accumulate(as_torch, task=task, sizes=[30, 30], keep_features=keep_features)
    assert_same_moments(from_numpy, from_torch, rtol=1e-12)
    assert isinstance(from_torch.sum_f, np.ndarray) and from_torch.sum_f.dtype == np.float64


@pytest.mark.parametrize("task", ["none", "classes", "regression"])
def test_torch_in_place_sums_equal_the_plain_sums(task: str) -> None:
    """The torch float64 path writes F and [Ŷ | Y] into reused buffers and adds in place: batches that
    shrink and grow (the buffer is reallocated, then sliced), float32 inputs (converted exactly) and
    the snapshot in mid-pass must give the plain float64 sums of the whole probe."""
    import torch
    probe = make_probe(9, regression=task == "regression")
    probe["features"] = probe["features"] + 10.0  # far from 0: summed about the first batch's means
    f32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in probe.items()}
    acc = MomentAccumulator(task=task)
    snapshot = None
    for lo, hi in ((0, 5), (5, 25), (25, 26), (26, 60)):
        targets = None if task == "none" else torch.from_numpy(f32["targets"][lo:hi])
        acc.update(torch.from_numpy(f32["features"][lo:hi]), torch.from_numpy(f32["outputs"][lo:hi]), targets)
        if hi == 25:
            snapshot = acc.second_moment_so_far()
    shifted = acc.moments()
    got = shifted.unshifted()
    f, o = f32["features"].astype(np.float64), f32["outputs"].astype(np.float64)
    a = f[:5].mean(0)  # the shift: the first batch's mean
    np.testing.assert_allclose(shifted.shift_f, a, rtol=1e-14)
    np.testing.assert_allclose(shifted.sum_ff, (f - a).T @ (f - a), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.sum_ff, f.T @ f, rtol=1e-13)
    np.testing.assert_allclose(got.sum_f, f.sum(0), rtol=1e-13)
    np.testing.assert_allclose(got.sum_fo, f.T @ o, rtol=1e-13)
    np.testing.assert_allclose(got.sum_oo, o.T @ o, rtol=1e-13)
    np.testing.assert_allclose(got.sum_o, o.sum(0), rtol=1e-13)
    assert snapshot is not None
    np.testing.assert_allclose(snapshot[0].numpy(), (f[:25] - a).T @ (f[:25] - a), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(snapshot[1].numpy(), (f[:25] - a).sum(0), rtol=1e-12, atol=1e-12)
    if task == "none":
        assert got.sum_y is None and got.sum_fy is None
        return
    y = one_hot(f32["targets"], C) if task == "classes" else f32["targets"].astype(np.float64)
    np.testing.assert_allclose(got.sum_fy, f.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(got.sum_yy, y.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(got.sum_oy, o.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(got.sum_y, y.sum(0), rtol=1e-13)
    if task == "classes":
        np.testing.assert_array_equal(got.class_counts, np.bincount(f32["targets"], minlength=C))
        assert got.n_correct == int(np.sum(o.argmax(1) == f32["targets"]))


@pytest.mark.parametrize(("task", "by_index"), [("none", True), ("classes", True), ("classes", False), ("regression", True)])
def test_torch_sums_of_many_outputs_equal_the_plain_sums(task: str, by_index: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With C in the hundreds the outputs' products are summed in block rows, and class labels are
    added by class (index_add on the CPU; by_index False: the one-hot products of an accelerator)
    instead of as products with a one-hot matrix: every sum must still be the plain float64 one,
    outputs far from 0 (shifted) and a class without samples included."""
    import torch

    import fdl_cli.moments

    monkeypatch.setattr(fdl_cli.moments, "_adds_by_index", lambda device: by_index)
    rng = np.random.default_rng(12)
    n, p, c = 700, 16, 300
    assert len(row_bounds(c + 1)) > 1  # the outputs' block rows are taken
    f = rng.normal(size=(n, p)).astype(np.float32).astype(np.float64) + 3.0
    o = (rng.normal(size=(n, c)) + 50.0).astype(np.float32).astype(np.float64)
    labels = rng.integers(0, c - 1, size=n)  # class c - 1 has no sample
    targets = rng.normal(size=(n, c)) + 5.0 if task == "regression" else labels
    acc = MomentAccumulator(task=task)
    for lo in range(0, n, 256):
        batch_targets = None if task == "none" else torch.from_numpy(targets[lo : lo + 256])
        acc.update(torch.from_numpy(f[lo : lo + 256]), torch.from_numpy(o[lo : lo + 256]), batch_targets)
    shifted = acc.moments()
    assert shifted.shift_o is not None  # outputs ~50 ± 1: summed about the first batch's means
    got = shifted.unshifted()
    np.testing.assert_allclose(got.sum_ff, f.T @ f, rtol=1e-12)
    np.testing.assert_allclose(got.sum_fo, f.T @ o, rtol=1e-12)
    np.testing.assert_allclose(got.sum_oo, o.T @ o, rtol=1e-12)
    np.testing.assert_allclose(got.sum_o, o.sum(0), rtol=1e-12)
    if task == "none":
        assert got.sum_y is None and got.sum_fy is None and got.class_counts is None
        return
    y = one_hot(targets, c) if task == "classes" else targets
    np.testing.assert_allclose(got.sum_fy, f.T @ y, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.sum_oy, o.T @ y, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.sum_yy, y.T @ y, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.sum_y, y.sum(0), rtol=1e-12, atol=1e-9)
    if task == "classes":
        np.testing.assert_array_equal(got.class_counts, np.bincount(labels, minlength=c))
        assert got.class_counts[-1] == 0
        np.testing.assert_allclose(got.class_sum_f, y.T @ f, rtol=1e-12, atol=1e-9)
        assert got.n_correct == int(np.sum(o.argmax(1) == labels))
    # and the same measures as the numpy path's statistics
    assert_same_measures(shifted, accumulate({"features": f, "outputs": o, "targets": targets}, task=task), rtol=1e-8)


def test_second_moment_is_the_same_to_the_bit_whatever_the_task() -> None:
    """A resumed run rebuilds the previous checkpoint's anchor moment in a pass without targets
    (`anchor_features`: a plain MomentAccumulator()); its Σφφᵀ must equal the one the labelled pass
    summed, bit for bit (CKA's self-norm comes from it). Shapes large enough (batches of 512, p = 256)
    for BLAS to block the products differently when their widths differ."""
    import torch
    rng = np.random.default_rng(11)
    n, p, c = 1100, 256, 7
    features = torch.from_numpy(np.maximum(rng.normal(size=(n, p)), 0.0).astype(np.float32))
    outputs = torch.from_numpy(rng.normal(size=(n, c)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, c, size=n))
    labelled, plain = MomentAccumulator(task="classes"), MomentAccumulator()
    for lo in range(0, n, 512):
        labelled.update(features[lo : lo + 512], outputs[lo : lo + 512], labels[lo : lo + 512])
        plain.update(features[lo : lo + 512], outputs[lo : lo + 512])
    first, second = labelled.second_moment_so_far(), plain.second_moment_so_far()
    assert first is not None and second is not None
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())


def test_row_bounds_cover_every_width_in_blocks() -> None:
    """The block rows of the symmetric sum tile [0, width) in order: ROW_BLOCK wide each, the last
    between half a block and one and a half (one row alone below one and a half blocks)."""
    for width in range(1, 1200):
        bounds = row_bounds(width)
        assert bounds[0][0] == 0 and bounds[-1][1] == width
        assert all(stop == start for (_, stop), (start, _) in zip(bounds[:-1], bounds[1:], strict=True))
        assert all(stop - start == ROW_BLOCK for start, stop in bounds[:-1])
        last = bounds[-1][1] - bounds[-1][0]
        if len(bounds) == 1:
            assert width < 1.5 * ROW_BLOCK
        else:
            assert ROW_BLOCK // 2 <= last < 1.5 * ROW_BLOCK
    assert row_bounds(513) == [(0, 128), (128, 256), (256, 384), (384, 513)]


@pytest.mark.parametrize("offset", [0.0, 8.0])
@pytest.mark.parametrize("p", [100, 300, 700])
def test_block_rows_sum_the_whole_symmetric_product(p: int, offset: float) -> None:
    """The torch path sums FᵀF in block rows, on and above the diagonal only: read back (moments, the
    mid-pass snapshot) it is the whole float64 product, both triangles, for one block row (p = 100),
    two with a wide last row (300) and five (700); Σφ, its ones column, is the plain sum."""
    import torch
    rng = np.random.default_rng(p)
    n = 1300
    features = (np.maximum(rng.normal(size=(n, p)), 0.0) + offset).astype(np.float32)
    outputs = rng.normal(size=(n, C)).astype(np.float32)
    labels = rng.integers(0, C, size=n)
    acc = MomentAccumulator(task="classes")
    snapshot = None
    for lo in range(0, n, 512):
        hi = min(lo + 512, n)
        acc.update(torch.from_numpy(features[lo:hi]), torch.from_numpy(outputs[lo:hi]), torch.from_numpy(labels[lo:hi]))
        if hi == 1024:
            snapshot = acc.second_moment_so_far()
    f = features.astype(np.float64)
    shifted = acc.moments()
    got = shifted.unshifted()
    scale = float(np.abs(f.T @ f).max())
    np.testing.assert_allclose(got.sum_ff, f.T @ f, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_allclose(got.sum_ff, got.sum_ff.T, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_allclose(got.sum_f, f.sum(0), rtol=1e-13)
    assert snapshot is not None
    if offset:  # about the shift, the first batch's mean
        head = f[:1024] - f[:512].mean(0)
        np.testing.assert_allclose(shifted.shift_f, f[:512].mean(0), rtol=1e-14)
    else:  # ReLU features: means within SHIFT_RATIO standard deviations of 0, plain sums
        head = f[:1024]
        assert shifted.shift_f is None
    np.testing.assert_allclose(snapshot[0].numpy(), head.T @ head, rtol=1e-12, atol=1e-14 * scale)
    np.testing.assert_allclose(snapshot[0].numpy(), snapshot[0].numpy().T, rtol=1e-13, atol=1e-15 * scale)
    np.testing.assert_allclose(snapshot[1].numpy(), head.sum(0), rtol=1e-10, atol=1e-12 * np.abs(f[:1024]).sum())
    assert got.n == n and got.class_counts is not None and got.class_counts.sum() == n
    np.testing.assert_allclose(got.sum_o, outputs.astype(np.float64).sum(0), rtol=1e-12)


def test_torch_path_refuses_bad_batches_without_a_trace() -> None:
    """On the torch path, bad labels and width changes are refused as on the numpy path, and a refused
    batch (even the first) leaves nothing behind: the next valid batch, of other widths, is summed alone."""
    import torch
    rng = np.random.default_rng(12)
    acc = MomentAccumulator(task="classes")
    with pytest.raises(ProbeError, match="do not fit"):
        acc.update(torch.randn(8, 4), torch.randn(8, 3), torch.full((8,), 7))
    features, outputs = rng.normal(size=(8, 5)), rng.normal(size=(8, 2))
    labels = np.array([0, 1] * 4)
    acc.update(torch.from_numpy(features), torch.from_numpy(outputs), torch.from_numpy(labels))
    got = acc.moments().unshifted()
    assert got.n == 8 and got.sum_ff.shape == (5, 5) and got.sum_fy.shape == (5, 2)
    np.testing.assert_allclose(got.sum_ff, features.T @ features, rtol=1e-13)
    np.testing.assert_array_equal(got.class_counts, [4, 4])
    assert got.n_correct == int(np.sum(outputs.argmax(1) == labels))
    with pytest.raises(NumericalError, match="differ in width"):
        acc.update(torch.randn(8, 6), torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ProbeError, match="do not fit"):
        acc.update(torch.from_numpy(features), torch.from_numpy(outputs), torch.full((8,), 2))
    again = acc.moments().unshifted()
    assert again.n == 8 and again.n_correct == got.n_correct
    np.testing.assert_array_equal(again.sum_ff, got.sum_ff)
    regression = MomentAccumulator(task="regression")
    with pytest.raises(ProbeError, match="differ in width"):
        regression.update(torch.randn(8, 4), torch.randn(8, 3), torch.randn(8, 2))
    with pytest.raises(NumericalError, match="no samples"):
        regression.moments()


def test_torch_moments_are_copies_of_the_growing_sums() -> None:
    import torch
    acc = MomentAccumulator(task="regression")
    acc.update(torch.ones(4, 3), torch.ones(4, 2), torch.ones(4, 2))
    first = acc.moments()
    acc.update(2 * torch.ones(4, 3), torch.ones(4, 2), torch.ones(4, 2))  # about the shift 1: sums 4, 4
    np.testing.assert_array_equal(first.sum_ff, np.zeros((3, 3)))
    np.testing.assert_array_equal(first.sum_f, np.zeros(3))
    np.testing.assert_array_equal(first.shift_f, np.ones(3))
    first.sum_ff[:] = -1.0
    first.shift_f[:] = -1.0
    np.testing.assert_array_equal(acc.moments().sum_ff, np.full((3, 3), 4.0))
    np.testing.assert_array_equal(acc.moments().unshifted().sum_ff, np.full((3, 3), 20.0))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_torch_path_flattens_and_upcasts_like_numpy(dtype: str) -> None:
    """Features (b, 2, 3, 2) in half, bfloat16 or float64, and 1-D outputs: the torch path's sums equal
    the numpy path's on the same (exactly upcast) values."""
    import torch
    rng = np.random.default_rng(13)
    features = torch.from_numpy(rng.normal(size=(30, 2, 3, 2))).to(getattr(torch, dtype))
    outputs = torch.from_numpy(rng.normal(size=30)).to(getattr(torch, dtype))
    targets = rng.normal(size=(30, 1))
    acc = MomentAccumulator(task="regression")
    for lo, hi in ((0, 11), (11, 11), (11, 30)):
        acc.update(features[lo:hi], outputs[lo:hi], torch.from_numpy(targets[lo:hi]))
    got = acc.moments()
    f64 = features.to(torch.float64).reshape(30, -1).numpy()
    o64 = outputs.to(torch.float64).reshape(30, 1).numpy()
    want = accumulate({"features": f64, "outputs": o64, "targets": targets}, task="regression")
    assert_same_moments(got, want, rtol=1e-12)


def test_one_pass_matches_brute_force_measures() -> None:
    probe = make_probe(6)
    got = measure(accumulate(probe, task="classes", sizes=[11, 49]), center=True)
    ref = reference_measures(probe["features"], probe["outputs"], labels=probe["targets"], center=True)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-8)
    for name in ("d_lr", "nc1", "accuracy", "loss", "eff_dim_quality", "pi_star_C"):
        np.testing.assert_allclose(got.scalars[name], ref.scalars[name], rtol=1e-8, err_msg=name)


def relu_probe(seed: int, *, regression: bool) -> dict[str, np.ndarray]:
    """Realistic, well-conditioned probe: post-ReLU features, n = 2048, p = 32, 10 outputs."""
    rng = np.random.default_rng(seed)
    n, p, c = 2048, 32, 10
    features = np.maximum(rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) / 6.0, 0.0)
    outputs = 0.1 * features @ rng.normal(size=(p, c)) + rng.normal(size=(n, c))
    targets = rng.normal(size=(n, c)) if regression else rng.integers(0, c, size=n)
    return {"features": features, "outputs": outputs, "targets": targets}


def float64_and_float32(task: str, center: bool) -> tuple:
    probe = relu_probe(7, regression=task == "regression")
    sizes = [256] * 8
    m64 = accumulate(probe, task=task, sizes=sizes)
    m32 = accumulate(probe, task=task, sizes=sizes, product_dtype="float32")
    return measure(m64, center=center), measure(m32, center=center)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("task", ["classes", "regression"])
def test_float32_products_leave_spectrum_and_record_fields_unchanged(task: str, center: bool) -> None:
    """SPEC.md §8: a float32 per-batch product is allowed only where the measures agree to rtol 1e-6."""
    a, b = float64_and_float32(task, center)
    assert a.rank == b.rank == 32
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-6)
    for name, value in a.scalars.items():
        if isinstance(value, float):
            np.testing.assert_allclose(b.scalars[name], value, rtol=1e-6, err_msg=name)
        else:
            assert b.scalars[name] == value, name


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="finding: float32 products move per-eigenfunction shares Q*_k, Q̂_k of weak directions by "
    "~1e-5 relative (eigenvectors of close eigenvalues rotate); the stored arrays are not unchanged to 1e-6",
)
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("task", ["classes", "regression"])
def test_float32_products_leave_stored_arrays_unchanged(task: str, center: bool) -> None:
    a, b = float64_and_float32(task, center)
    np.testing.assert_allclose(b.utility, a.utility, rtol=1e-6)
    np.testing.assert_allclose(b.quality, a.quality, rtol=1e-6)
    np.testing.assert_allclose(b.spectrum.eigenvectors, a.spectrum.eigenvectors, rtol=1e-6, atol=1e-6)


def test_float32_products_on_torch() -> None:
    import torch
    probe = make_probe(8, n=256)
    as_torch = {k: torch.from_numpy(v) for k, v in probe.items()}
    m64 = accumulate(as_torch, task="classes", sizes=[128, 128])
    m32 = accumulate(as_torch, task="classes", sizes=[128, 128], product_dtype="float32")
    a, b = measure(m64), measure(m32)
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(b.scalars["d_lr"], a.scalars["d_lr"], rtol=1e-6)


def test_low_precision_torch_is_upcast_exactly() -> None:
    import torch
    probe = make_probe(9)
    half = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in probe.items() if k != "targets"}
    half["targets"] = torch.from_numpy(probe["targets"])
    got = accumulate(half, task="classes", sizes=[31, 29])
    upcast = {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in half.items()}
    assert_same_moments(got, accumulate(upcast, task="classes"), rtol=1e-12)


def test_errors_say_what_and_how_to_fix() -> None:
    probe = make_probe(10)
    acc = MomentAccumulator(task="classes")
    with pytest.raises(ProbeError, match="labels"):
        acc.update(probe["features"], probe["outputs"], probe["targets"] + C)
    with pytest.raises(ProbeError, match="targets"):
        MomentAccumulator(task="classes").update(probe["features"], probe["outputs"])
    with pytest.raises(NumericalError, match="differ in length"):
        MomentAccumulator().update(probe["features"], probe["outputs"][:5])
    # a shorter array whose size is a multiple of the batch must not be silently re-split
    with pytest.raises(NumericalError, match="differ in length"):
        MomentAccumulator().update(probe["features"], probe["outputs"][:20])
    with pytest.raises(NumericalError, match="differ in length"):
        MomentAccumulator(task="regression").update(probe["features"], probe["outputs"], np.zeros((20, 9)))
    with pytest.raises(NumericalError, match="differ in length"):
        MomentAccumulator(task="classes").update(probe["features"], probe["outputs"], probe["targets"][:30])
    with pytest.raises(ProbeError, match="width"):
        MomentAccumulator(task="regression").update(probe["features"], probe["outputs"], np.zeros((N, 1)))
    with pytest.raises(NumericalError, match="no samples"):
        MomentAccumulator().moments()
    widths = MomentAccumulator(task="classes")
    widths.update(probe["features"][:10], probe["outputs"][:10], probe["targets"][:10])
    with pytest.raises(NumericalError, match="differ in width") as info:
        widths.update(probe["features"][10:20, :5], probe["outputs"][10:20], probe["targets"][10:20])
    assert "5 features" in info.value.message and "fix:" in info.value.message
    with pytest.raises(NumericalError, match="differ in width"):
        widths.update(probe["features"][10:20], probe["outputs"][10:20, :2], probe["targets"][10:20])
    with pytest.raises(ValueError):
        MomentAccumulator(task="bogus")
    with pytest.raises(ValueError):
        MomentAccumulator(product_dtype="float16")


def test_empty_batch_is_ignored_and_single_sample_works() -> None:
    probe = make_probe(11)
    acc = MomentAccumulator(task="classes")
    acc.update(probe["features"][:0], probe["outputs"][:0], probe["targets"][:0])
    acc.update(probe["features"][:1], probe["outputs"][:1], probe["targets"][:1])
    moments = acc.moments()
    assert moments.n == 1
    np.testing.assert_allclose(moments.shift_f, probe["features"][0])  # the one sample is its own mean
    np.testing.assert_array_equal(moments.sum_ff, np.zeros((P, P)))
    np.testing.assert_allclose(moments.unshifted().sum_ff, np.outer(probe["features"][0], probe["features"][0]))
