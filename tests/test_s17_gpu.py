"""The CUDA-only paths, run without a GPU where they can be (seventeenth session).

No GPU was lent, so what only runs with `--device cuda` is exercised here on the CPU where its Python is
the same: on torch's `meta` device (a device other than the CPU whose tensors have shapes and no values:
anything that reads a value, a host transfer, fails there), or with torch.cuda's answers patched. The
tests marked `cuda` run on a GPU only (`pytest -m cuda`, benchmarks/gpu_check.sh) and compare with the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli import moments
from fdl_cli.checkpoints import CheckpointRef, load_checkpoint
from fdl_cli.distributed import World, device_for
from fdl_cli.errors import FdlError, ModelError
from fdl_cli.extract import extract, forward_one_shapes, prepare_model, resolve_device, resolve_layers

META = torch.device("meta")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")


# -- --device ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["meta", "mps", "xpu", "cpux"])
def test_a_device_fdl_cannot_run_on_is_refused_before_any_work(name: str) -> None:
    """`--device meta` / `mps` / `xpu` (names torch knows) passed, and the run failed later with torch's
    traceback (mps: "not linked with support", meta: "Tensor.item() cannot be called on meta tensors")."""
    with pytest.raises(ModelError) as caught:
        resolve_device(name)
    if name == "cpux":
        assert caught.value.what == "unknown device 'cpux'"
        return
    assert caught.value.what.startswith(f"--device {name}: fdl runs on the CPU or a CUDA GPU only")
    assert ("MPS has no float64" in caught.value.what) is (name == "mps")
    assert caught.value.fix == "use --device auto, cpu, cuda or cuda:i"
    assert resolve_device("cpu") == torch.device("cpu")


def test_device_meta_on_the_command_line_is_a_clear_error(tmp_path: Path) -> None:
    from tests.test_analyze import fdl
    from tests.test_distributed import _make_run

    run = _make_run(tmp_path / "run")
    result = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", run / "probe.npz",
                 "--out", tmp_path / "s.h5", "--device", "meta")
    assert result.code == 1, result.stderr
    assert "error: --device meta: fdl runs on the CPU or a CUDA GPU only" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_more_torchrun_ranks_than_gpus_is_said_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun `--device cuda` (or auto) becomes cuda:LOCAL_RANK; with 2 ranks on a one-GPU machine
    rank 1 was told "--device cuda:1: this machine has no GPU 1 ... or --device cuda for the current one",
    which is the option it had been given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_for(World(rank=0, size=2, local_rank=0), "cuda") == "cuda:0"
    assert device_for(World(rank=0, size=2, local_rank=0), "cpu") == "cpu"
    for requested in ("cuda", "auto"):
        with pytest.raises(FdlError) as caught:
            device_for(World(rank=1, size=2, local_rank=1), requested)
        assert caught.value.what == ("under torchrun each rank takes the GPU of its LOCAL_RANK, and rank 1 has "
                                     "LOCAL_RANK=1, but this machine shows 1 CUDA GPU")
        assert caught.value.got == "2 ranks, 1 GPU visible"
        assert caught.value.fix is not None and "--nproc-per-node 1 at most" in caught.value.fix
    assert device_for(World(rank=1, size=2, local_rank=1), "cpu") == "cpu"


# -- torch.export programs on another device ----------------------------------------------------------------


class _Positions(nn.Module):
    """An eager model that runs on any device (its one new tensor is made on the input's device) and holds a
    constant tensor that is neither a parameter nor a buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.scale = torch.linspace(0.5, 1.5, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(8, device=x.device, dtype=x.dtype) / 8
        return self.head(torch.relu(self.body(x)) * self.scale + offsets)


def _exported_run(folder: Path, steps: tuple[int, ...] = (0, 10)) -> Path:
    folder.mkdir()
    model = _Positions().eval()
    for step in steps:
        with torch.no_grad():
            for value in model.parameters():
                value.add_(0.1 * step / 10)
        program = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, folder / f"step_{step}.pt2")
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(300, 4)).astype(np.float32), y=rng.integers(0, 3, size=300))
    return folder


def test_a_torch_export_program_is_moved_to_the_device_with_what_it_creates_and_holds(tmp_path: Path) -> None:
    """torch.export writes into the program the device of every tensor its forward makes
    (`torch.arange(..., device=x.device)` became device=cpu when exported on the CPU), and keeps constants
    apart from the parameters and buffers, so `.to(device)` left both on the CPU: on a GPU the check pass
    failed with torch's "Expected all tensors to be on the same device", reported as "the probe does not fit
    the model". Here the device is `meta`, which mixes with the CPU no more than cuda does."""
    run = _exported_run(tmp_path / "run", steps=(0,))
    ref = CheckpointRef(path=run / "step_0.pt2", step=0, step_source="name", kind="export")
    loaded = load_checkpoint(ref, trust_pickle=True)
    assert loaded.module is not None
    model = prepare_model(loaded.module, device=META, dtype="float32")
    layers = resolve_layers(model, [], sample=np.zeros((1, 4), np.float32), device=META)
    widths, n_outputs, shape = forward_one_shapes(model, layers, np.zeros((3, 4), np.float32), device=META,
                                                  dtype="float32")
    assert (widths, n_outputs, shape) == ({"last_linear_op:input": 8}, 3, (3,))
    # on the CPU the program is the one loaded, and computes what the eager model does
    on_cpu = prepare_model(load_checkpoint(ref, trust_pickle=True).module, device=torch.device("cpu"), dtype="float32")
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32))
    eager = _Positions().eval()
    with torch.no_grad():
        torch.testing.assert_close(on_cpu(x), eager(x), rtol=0, atol=0)


# -- a model that makes tensors on the CPU -----------------------------------------------------------------

CPU_STATE_MODEL = '''
import torch
from torch import nn


class Recurrent(nn.Sequential):
    """tests.tiny_models:mlp's layers (its checkpoints load), with an initial state made on the CPU whatever
    the input's device: it runs on the CPU only."""

    def forward(self, x):
        state = torch.zeros(x.shape[0], 8)
        return self[2](self[1](self[0](x) + state))


def build():
    return Recurrent(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
'''


def test_a_model_that_makes_cpu_tensors_is_blamed_not_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, `torch.zeros(b, h)` in forward (no device=) fails with torch's "Expected all tensors to be
    on the same device"; the check pass reported it as "probe ... does not fit the model", with the fix
    "give the probe inputs the shape and dtype the model's forward expects". Run here on `meta` (refused
    on the command line, so resolve_device is patched), which torch refuses to mix with the CPU alike."""
    import fdl_cli.extract
    from tests.test_analyze import fdl
    from tests.test_distributed import _make_run

    run = _make_run(tmp_path / "run")
    (tmp_path / "net.py").write_text(CPU_STATE_MODEL)
    monkeypatch.setattr(fdl_cli.extract, "resolve_device", lambda name: META)
    result = fdl("analyze", str(run), "--model", f"{tmp_path}/net.py:build", "--probe", str(run / "probe.npz"),
                 "--out", str(tmp_path / "s.h5"), "--device", "cuda")
    assert result.code == 1
    assert "error: the model's forward pass makes or meets a tensor on another device than meta" in result.stderr
    assert "does not fit" not in result.stderr
    assert "device=x.device" in result.stderr and "register_buffer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.h5").exists()


# -- no value read back from the device batch by batch (issue #6) ------------------------------------------


@pytest.mark.parametrize(("task", "keep", "product_dtype", "dtype"), [
    ("classes", False, "float64", "float32"),   # the in-place sums; class sums as one-hot products (not index_add_)
    ("regression", False, "float64", "float64"),  # float64 features and targets: their running peaks
    ("none", False, "float32", "float32"),
    ("classes", True, "float64", "float32"),    # the Gram route: features kept on the device
])
def test_the_probe_pass_reads_no_value_back_from_the_device_batch_by_batch(
    monkeypatch: pytest.MonkeyPatch, task: str, keep: bool, product_dtype: str, dtype: str
) -> None:
    """The statistics stay on the device and no batch's values are read back (issue #6): on `meta`, where
    any such read fails, every batch of the pass runs (anchor boundary inside a batch included) and the
    pass fails only in `moments()`, the one transfer at its end. The first batch's shift points are one
    read a pass by design (`_shift_point`): taken as none here."""
    real = moments._shift_point
    monkeypatch.setattr(moments, "_shift_point", lambda values: None if values.device.type == "meta" else real(values))
    torch.manual_seed(0)
    model = prepare_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), device=META, dtype=dtype)
    layers = resolve_layers(model, [], sample=np.zeros((1, 4), np.float32), device=META, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = {"classes": rng.integers(0, 3, size=100), "regression": rng.normal(size=(100, 3)), "none": None}[task]
    done: list[tuple[int, int]] = []
    with pytest.raises((RuntimeError, NotImplementedError), match="meta") as caught:
        extract(model, layers, x, y, task=task, device=META, dtype=dtype, batch_size=16, anchor_size=40,
                keep_features=lambda width: keep, product_dtype=product_dtype,
                on_batch=lambda index, total: done.append((index, total)))
    assert done == [(index, 7) for index in range(1, 8)]
    frames = [frame.name for frame in caught.traceback]
    assert "moments" in frames and "update" not in frames



# -- on a GPU (pytest -m cuda) ----------------------------------------------------------------------------


def _targets_in_place(folder: Path, values: np.ndarray) -> Any:
    """`values` (n, C) float64 saved as .npy and read a batch at a time (a probes.RowReader)."""
    from fdl_cli.probes import RowReader

    path = folder / "targets.npy"
    np.save(path, values)
    with path.open("rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        offset = handle.tell()
    return RowReader(path, offset, np.dtype(np.float64), values.shape, np.dtype(np.float64))


@pytest.mark.cuda
@GPU
@pytest.mark.parametrize(("task", "keep", "product_dtype"), [
    ("classes", False, "float64"), ("regression", False, "float64"), ("classes", True, "float64"),
    ("classes", False, "float32"),
])
def test_cuda_the_probe_pass_synchronises_with_the_gpu_only_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, keep: bool, product_dtype: str
) -> None:
    """torch.cuda's sync debug mode raises at the first operation that makes the host wait for the GPU:
    every batch runs (the regression targets read in place from a file included: they were copied with a
    blocking copy, a wait at every batch) and the pass stops only in `moments()`, at its end. The first
    batch's shift points (one read a pass, by design) are taken as none here."""
    real = moments._shift_point
    monkeypatch.setattr(moments, "_shift_point", lambda values: None if values.is_cuda else real(values))
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = prepare_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), device=device, dtype="float32")
    layers = resolve_layers(model, [], sample=np.zeros((1, 4), np.float32), device=device)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=100) if task == "classes" else _targets_in_place(tmp_path, rng.normal(size=(100, 3)))
    done: list[tuple[int, int]] = []
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchronizing CUDA operation") as caught:
            extract(model, layers, x, y, task=task, device=device, batch_size=16, anchor_size=40,
                    keep_features=lambda width: keep, product_dtype=product_dtype,
                    on_batch=lambda index, total: done.append((index, total)))
    finally:
        torch.cuda.set_sync_debug_mode(before)
    assert done == [(index, 7) for index in range(1, 8)]
    frames = [frame.name for frame in caught.traceback]
    assert "moments" in frames and "update" not in frames


def _records(run: Path, out: Path, device: str, **options: Any) -> dict[int, dict]:
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.store import StoreReader

    run_analyze(AnalyzeOptions(sources=(str(run),), probe_specs=(str(run / "probe.npz"),), out=out, device=device,
                               batch_size=64, anchor_size=200, **options))
    with StoreReader(out) as reader:
        return {record["step"]: record for record in reader.records()}


@pytest.mark.cuda
@GPU
def test_cuda_a_torch_export_run_gives_the_cpu_numbers(tmp_path: Path) -> None:
    """The programs (an arange made on the input's device, a constant tensor) moved to the GPU whole:
    every measure within rtol 1e-6 of the CPU's, the model run in float64 on both devices."""
    from tests.test_cuda import _assert_close

    run = _exported_run(tmp_path / "run")
    cpu = _records(run, tmp_path / "cpu.h5", "cpu", dtype="float64", trust_pickle=True)
    gpu = _records(run, tmp_path / "gpu.h5", "cuda", dtype="float64", trust_pickle=True)
    assert sorted(cpu) == [0, 10]
    _assert_close(cpu, gpu, 1e-6)


@pytest.mark.cuda
@GPU
def test_cuda_a_model_that_makes_cpu_tensors_is_blamed_not_the_probe(tmp_path: Path) -> None:
    """torch's own CUDA message ("Expected all tensors to be on the same device ...") is recognised."""
    from tests.test_distributed import _make_run

    run = _make_run(tmp_path / "run")
    (tmp_path / "net.py").write_text(CPU_STATE_MODEL)
    with pytest.raises(ModelError) as caught:
        _records(run, tmp_path / "s.h5", "cuda", model_spec=f"{tmp_path}/net.py:build")
    assert caught.value.what.startswith("the model's forward pass makes or meets a tensor on another device than cuda")
    assert caught.value.fix is not None and caught.value.fix.endswith("; or run it on the CPU with --device cpu")
    assert not (tmp_path / "s.h5").exists()
