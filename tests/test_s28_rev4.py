"""Review of the statistics' products on gathered rows (`moments.SYRK_ROWS`, `MomentAccumulator._flush`).

- benchmarks/steps.py's "statistics" row timed `MomentAccumulator.update` only, while the rows still gathered at the
  end of a pass (and at the anchors' boundary) are summed when the sums are read (`moments()`,
  `second_moment_so_far`): a probe of one chunk had all of its products outside the row.
- Every sum against a float64 brute force of the full F, Ŷ, Y (SPEC's sums), and against the block rows' path,
  for seeded random batch sequences: batches larger than a chunk, a short last one, p + 1 above the chunk,
  half-precision and float64 features, the three tasks, a read mid-chunk; and stores of five batch sizes.
- A resume's anchor pass ran a shorter last batch than a fresh run's where the anchors end inside one: its float32
  features, and so cka_init / cka_prev of the checkpoints it adds, were rounded otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import moments
from fdl_cli.moments import MomentAccumulator
from tests import warm
from tests.cli_run import REPO
from tests.test_s28_perf import one_thread  # noqa: F401  (autouse there and here: torch on one thread, numpy's dsyrk)


def test_the_steps_benchmark_counts_every_product_as_statistics(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A probe of 300 rows (one chunk): its products are all summed when the sums are read, and the "statistics"
    row of `steps.py --role fdl` must hold them. A fake clock advances by the rows each `_flush` sums, so the row
    is the rows summed under its timers, compared with every row summed."""
    # benchmarks/common.py and the models.py it imports, by their plain names, then out of sys.modules again: a
    # later test in this worker whose model folder does `from common import ...` found this `common` instead
    # (test_walk_fixes, in a full run)
    before = {name: sys.modules.get(name) for name in ("common", "models")}
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import make_checkpoints, make_probe

        make_checkpoints(tmp_path, "proj", 2, kwargs={"width": 16})
        probe = make_probe(tmp_path, "proj", 300)
    finally:
        sys.path.pop(0)
        for name, module in before.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    code = f"""
import atexit, runpy, sys, time
sys.path[0] = {str(REPO)!r}  # as `python -c` run from the repository has it
from fdl_cli import moments
clock, summed = [0.0], [0]
time.thread_time = lambda: clock[0]
flush = moments.MomentAccumulator._flush
def counted(self):
    clock[0] += self._pending
    summed[0] += self._pending
    return flush(self)
moments.MomentAccumulator._flush = counted
atexit.register(lambda: print("SUMMED", summed[0]))
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
sys.argv = ["steps.py", "--role", "fdl", {str(tmp_path)!r}, "--model", {str(REPO / 'benchmarks' / 'models.py')!r} + ":proj",
            "--model-kwargs", '{{"width": 16}}', "--probe", {str(probe)!r}, "--out", {str(tmp_path / 's.h5')!r},
            "--device", "cpu"]
runpy.run_path({str(REPO / 'benchmarks' / 'steps.py')!r}, run_name="__main__")
"""
    env = {"FDL_STEPS_CLOCK": "thread", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # a script (a warm process, tests/warm.py, runs no `python -c`), out of the run's folder
    script = tmp_path_factory.mktemp("script") / "counted.py"
    script.write_text(code)
    done = warm.run([sys.executable, script], cwd=REPO, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    summed = int(done.stdout.strip().splitlines()[-1].split()[1])
    report = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("FDL_STEPS="))[10:])
    assert summed == 2 * 300  # two checkpoints, one layer
    assert report["steps"]["statistics"] == summed


#: (p, C, SYRK_ROWS, batch sizes): a chunk filled unevenly, batches larger than a chunk and a short last one,
#: p + 1 above the chunk's rows, one batch alone, and the real chunk of 1 024 rows with batches around it
SHAPES = [
    (9, 3, 64, "random"),
    (70, 4, 64, "random"),
    (5, 1, 64, [200, 64, 63, 1, 65, 7]),
    (33, 6, 64, [640]),
    (12, 2, 1024, [1500, 700, 1024, 1, 3]),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _feed(task: str, f: np.ndarray, o: np.ndarray, t: np.ndarray | None, sizes: list[int], dtype: torch.dtype,
          read_after: int) -> tuple[moments.Moments, tuple]:
    acc = MomentAccumulator(task=task)
    snapshot: tuple = ()
    bounds = np.cumsum([0, *sizes])
    with torch.inference_mode():  # as `extract` runs it
        for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            acc.update(torch.from_numpy(f[lo:hi]).to(dtype), torch.from_numpy(o[lo:hi]).to(dtype),
                       None if t is None else torch.from_numpy(t[lo:hi]))
            if index == read_after:
                snapshot = tuple(part.numpy() for part in acc.second_moment_so_far())  # type: ignore[union-attr]
    return acc.moments(), snapshot


def _scale(x: np.ndarray, y: np.ndarray) -> float:
    """The size a sum Σ xᵢyᵢᵀ's rounding is relative to: Σ |xᵢ||yᵢ|ᵀ's largest entry."""
    return float((np.abs(x).T @ np.abs(y)).max())


@pytest.mark.parametrize("task", ["classes", "regression", "none"])
def test_gathered_sums_equal_a_float64_brute_force_and_the_block_rows(monkeypatch: pytest.MonkeyPatch,
                                                                      task: str) -> None:
    """Seeded batch sequences of every shape in SHAPES, features and outputs of each dtype in DTYPES (shifted far
    from 0 for half of them): every sum Moments holds, unshifted, equals the float64 sums of the whole F, Ŷ, Y
    (the values the model gave, widened), and the block rows' (numpy's dsyrk off) to 1e-12 of Σ|x||y|ᵀ; the
    anchors' second moment read mid-chunk equals Σ(φ − a)(φ − a)ᵀ and Σ(φ − a) of the rows so far."""
    rng = np.random.default_rng(["classes", "regression", "none"].index(task))
    for case, (p, c, chunk, plan) in enumerate(SHAPES):
        monkeypatch.setattr(moments, "SYRK_ROWS", chunk)
        sizes = [int(b) for b in rng.integers(1, 2 * chunk, size=int(rng.integers(3, 9)))] if plan == "random" else plan
        n, dtype, offset = sum(sizes), DTYPES[case % len(DTYPES)], 30.0 * (case % 2)
        f = rng.normal(size=(n, p)) + offset
        o = rng.normal(size=(n, c)) * 2.0
        t = {"classes": rng.integers(0, c, size=n), "regression": rng.normal(size=(n, c)) + offset, "none": None}[task]
        read_after = int(rng.integers(0, len(sizes)))
        monkeypatch.setattr(moments, "NUMPY_SYRK_ON_CPU", True)
        got, snapshot = _feed(task, f, o, t, sizes, dtype, read_after)
        monkeypatch.setattr(moments, "NUMPY_SYRK_ON_CPU", False)
        block, block_snapshot = _feed(task, f, o, t, sizes, dtype, read_after)
        # the values the accumulator saw: the model's dtype, widened
        f64, o64 = (torch.from_numpy(a).to(dtype).double().numpy() for a in (f, o))
        y = np.eye(c)[t] if task == "classes" else t
        plain = got.unshifted()
        brute = {"sum_ff": (f64, f64), "sum_fo": (f64, o64), "sum_oo": (o64, o64),
                 "sum_f": (f64, np.ones((n, 1))), "sum_o": (o64, np.ones((n, 1)))}
        if y is not None:
            brute.update(sum_fy=(f64, y), sum_oy=(o64, y), sum_yy=(y, y), sum_y=(y, np.ones((n, 1))))
        where = f"{task} case {case}: {dtype}, p={p}, C={c}, chunk {chunk}, batches {sizes}"
        for name, (x, z) in brute.items():
            expected = (x.T @ z).reshape(np.shape(getattr(plain, name)))
            for value in (getattr(plain, name), getattr(block.unshifted(), name)):
                np.testing.assert_allclose(value, expected, rtol=0, atol=1e-12 * _scale(x, z), err_msg=f"{name}, {where}")
            np.testing.assert_allclose(getattr(got, name), getattr(block, name), rtol=0,
                                       atol=1e-12 * _scale(x, z), err_msg=f"{name} against the block rows, {where}")
        np.testing.assert_array_equal(got.sum_ff, got.sum_ff.T)
        assert got.n == block.n == n, where
        if task == "classes":
            assert t is not None and got.class_counts is not None and got.class_sum_f is not None
            np.testing.assert_array_equal(got.class_counts, np.bincount(t, minlength=c))
            np.testing.assert_allclose(got.unshifted().class_sum_f, (f64.T @ y).T, rtol=0,
                                       atol=1e-12 * _scale(f64, y), err_msg=where)
            assert got.n_correct == block.n_correct == int((o64.argmax(1) == t).sum()), where
            top = o64.max(1)
            xent = float((np.log(np.exp(o64 - top[:, None]).sum(1)) + top - o64[np.arange(n), t]).sum())
            assert got.sum_xent == pytest.approx(xent, rel=1e-12) and block.sum_xent == pytest.approx(xent, rel=1e-12)
        rows = sum(sizes[: read_after + 1])
        head = f64[:rows] - (got.shift_f if got.shift_f is not None else 0.0)
        for part, other, expected, z in zip(snapshot, block_snapshot, (head.T @ head, head.sum(0)),
                                            (head, np.ones((rows, 1))), strict=True):
            for value in (part, other):
                np.testing.assert_allclose(value, expected, rtol=0, atol=1e-12 * _scale(head, z),
                                           err_msg=f"anchors' moment after {rows} rows, {where}")


E2E_MODEL = '''
import torch
from torch import nn


class Wide(nn.Linear):
    """A float32 nn.Linear that computes in float64."""

    def forward(self, x):
        return nn.functional.linear(x.double(), self.weight.double(), self.bias.double())


class Net(nn.Module):
    """6-12-3 tanh MLP computing in float64 (float32 weights): a batch's features and outputs hardly depend on
    its size."""

    def __init__(self):
        super().__init__()
        self.l1, self.head = Wide(6, 12), Wide(12, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.l1(x)))


def build():
    return Net()
'''


def _stored(path: Path) -> dict[str, object]:
    """Every dataset and attribute of a store by its path (attributes after '@'), but the run's dates and history."""
    import h5py

    found: dict[str, object] = {}
    with h5py.File(path, "r") as store:
        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset):
                found[name] = item[()]
            for key, value in item.attrs.items():  # type: ignore[attr-defined]
                found[f"{name}@{key}"] = value

        store.visititems(visit)
        found.update({f"@{key}": value for key, value in store.attrs.items() if key not in ("created", "history")})
    return found


def test_stores_of_every_batch_size_agree(tmp_path: Path) -> None:
    """`fdl analyze` of one run at --batch-size 7, 512, 1000, 1025 and 3000 (a probe of 1 100 rows: one chunk of
    gathered rows, batches around 1 024, a batch larger than the probe): every stored field agrees with the run at
    512 (float64 fields to 1e-10 of their largest value, the float32 eigenfunctions to one float32 ulp; everything
    else to the bit). The model computes in float64, so its values hardly depend on the batch: what differs is
    the order of the sums."""
    from safetensors.torch import save_file

    from tests.cli_run import fdl_in_process

    (tmp_path / "model.py").write_text(E2E_MODEL)
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.l1, net.head = torch.nn.Linear(6, 12), torch.nn.Linear(12, 3)
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        state = {name: value.detach() + 0.05 * step * torch.randn_like(value) for name, value in net.state_dict().items()}
        save_file(state, str(run / f"step_{step}.safetensors"), metadata={"step": str(step)})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(1100, 6)).astype(np.float32), y=rng.integers(0, 3, 1100))
    stores = {}
    for batch in (512, 7, 1000, 1025, 3000):
        out = tmp_path / f"b{batch}.h5"
        done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                              tmp_path / "probe.npz", "--batch-size", batch, "-o", out, "--device", "cpu")
        assert done.returncode == 0, done.stderr[-2000:]
        stores[batch] = _stored(out)
    reference = stores.pop(512)
    for batch, found in stores.items():
        assert found.keys() == reference.keys(), batch
        for name, expected in reference.items():
            value = found[name]
            kind = np.asarray(expected).dtype
            if kind.kind == "f" and np.size(expected):
                finite = np.abs(np.asarray(expected))[np.isfinite(expected)]
                scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
                tolerance = 1e-10 if kind == np.float64 else 1.2e-7  # measured: 3.5e-13 (eigenvectors); 0
                np.testing.assert_allclose(value, expected, rtol=0, atol=tolerance * scale,  # type: ignore[arg-type]
                                           err_msg=f"{name} at --batch-size {batch}")
            else:
                assert np.array_equal(np.asarray(value), np.asarray(expected)), f"{name} at --batch-size {batch}"


RESUME_MODEL = '''
from torch import nn


def build():
    return nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 3))
'''


def test_a_resume_whose_anchors_end_inside_a_batch_stores_what_a_fresh_run_does(tmp_path: Path) -> None:
    """--batch-size 7, --anchor-size 50: the anchors end one row into the eighth batch. A fresh run's anchors come
    from that batch of 7; a resume recomputed the stored checkpoint's anchors from a forward pass of the one row
    left, whose float32 features the BLAS rounds otherwise (here by 1.2e-7), and stored cka_init and cka_prev of
    the new checkpoint 1e-9 off a fresh run's. Every field of the checkpoint added by the resume is the fresh
    run's, to the bit."""
    from safetensors.torch import save_file

    from tests.cli_run import fdl_in_process

    (tmp_path / "model.py").write_text(RESUME_MODEL)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3))
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10, 20):
        state = {name: value.detach() + 0.05 * step * torch.randn_like(value) for name, value in net.state_dict().items()}
        save_file(state, str(run / f"step_{step}.safetensors"), metadata={"step": str(step)})
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(80, 6)).astype(np.float32), y=rng.integers(0, 3, 80))
    options = ["--model", f"{tmp_path / 'model.py'}:build", "--probe", tmp_path / "probe.npz", "--batch-size", 7,
               "--anchor-size", 50, "--device", "cpu"]
    for out, more in (("fresh.h5", []), ("resumed.h5", ["--steps", "0,10"]), ("resumed.h5", [])):
        done = fdl_in_process("analyze", run, *options, *more, "-o", tmp_path / out)
        assert done.returncode == 0, done.stderr[-2000:]
    fresh, resumed = _stored(tmp_path / "fresh.h5"), _stored(tmp_path / "resumed.h5")
    added = [name for name in fresh if name.startswith("checkpoints/step_20/")]
    assert any(name.endswith("@cka_prev") for name in added)
    for name in added:
        value, expected = np.asarray(resumed[name]), np.asarray(fresh[name])
        assert np.array_equal(value, expected, equal_nan=expected.dtype.kind == "f"), name
