"""`--device cuda:i`: which GPU a model's own tensors land on, torchrun ranks and explicit indices, a GPU
the machine lacks (eighteenth session).

No GPU was lent: torch.cuda's answers are patched (`is_available`, `device_count`, `device`) where the
code under test only asks them. The tests marked `cuda` run the real path on a GPU (`pytest -m cuda`,
benchmarks/gpu_check.sh); the one about GPU 0 staying untouched needs two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fdl_cli.extract
from fdl_cli.distributed import World, detect_world, device_for
from fdl_cli.errors import FdlError
from tests.test_analyze import fdl
from tests.test_distributed import _make_run
from tests.tiny_models import mlp

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """torch.cuda answers as on a machine with `count` GPUs (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# -- cuda:i is the current device while the model is built and run -----------------------------------------


class _Scope:
    """Stands for torch.cuda.device(...): records its device and whether the block is being run."""

    def __init__(self, log: list[tuple[str, Any]], device: Any) -> None:
        self.log, self.device = log, device

    def __enter__(self) -> None:
        self.log.append(("enter", str(self.device)))
        _Scope.active += 1

    def __exit__(self, *exc: Any) -> bool:
        _Scope.active -= 1
        self.log.append(("exit", str(self.device)))
        return False

    active = 0


def test_cuda_i_is_made_the_current_device_within_a_block_and_only_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:1` moved the model and the probe to GPU 1 but left GPU 0 current: a model's `.cuda()`
    or `device="cuda"` put its tensors on GPU 0. torch.cuda.device (a context) does it, not set_device,
    which would stay set for a library caller; `cuda` and the CPU are left as they are."""
    log: list[tuple[str, Any]] = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: _Scope(log, device))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device is not scoped"))
    with fdl_cli.extract.current_cuda_device(torch.device("cuda:1")):
        log.append(("inside", _Scope.active))
    assert log == [("enter", "cuda:1"), ("inside", 1), ("exit", "cuda:1")]
    log.clear()
    for device in ("cpu", "cuda"):
        with fdl_cli.extract.current_cuda_device(torch.device(device)):
            pass
    assert log == []


class _Calls:
    """What the factory and the forward passes saw: whether they ran inside the device block."""

    seen: list[tuple[str, Any]] = []


def scoped_mlp(hidden: int = 8) -> nn.Module:
    """tests.tiny_models:mlp (its checkpoints load) that records, when built and at each forward pass,
    how many device blocks (`_Scope`) it runs in."""
    _Calls.seen.append(("build", _Scope.active))
    model = mlp(hidden=hidden)
    model.register_forward_pre_hook(lambda module, args: _Calls.seen.append(("forward", _Scope.active)))
    return model


def test_the_model_is_built_and_run_inside_the_device_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_analyze enters the block once, with the device it resolved, around the factory and every forward
    pass, and leaves it before it returns. (The device is the CPU here: the block is the patched one.)"""
    run = _make_run(tmp_path / "run")
    log: list[tuple[str, Any]] = []
    monkeypatch.setattr(_Calls, "seen", log)
    monkeypatch.setattr(fdl_cli.extract, "current_cuda_device", lambda device: _Scope(log, device))
    result = fdl("analyze", run, "--model", "tests.test_s18_device:scoped_mlp", "--probe", run / "probe.npz",
                 "--out", tmp_path / "s.h5", "--device", "cpu", "--batch-size", "128", "--anchor-size", "100")
    assert result.code == 0, result.stderr
    assert log[0] == ("enter", "cpu") and log[-1] == ("exit", "cpu")
    inside = log[1:-1]
    assert ("build", 1) in inside and sum(1 for kind, _ in inside if kind == "forward") >= 5 * 3
    assert {depth for _, depth in inside} == {1}
    assert _Scope.active == 0


# -- a GPU the machine does not show: said before any work --------------------------------------------------


def test_a_gpu_the_machine_lacks_is_refused_before_any_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:7` on a two-GPU machine was refused only after the checkpoints had been found (a
    --trust-pickle folder's unpickled to read their steps), the probe read and checked and the model file
    imported: with a large probe, minutes before the one-line error."""
    import fdl_cli.checkpoints
    import fdl_cli.probes

    run = _make_run(tmp_path / "run")
    _gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    work: list[str] = []
    for module, name in ((fdl_cli.checkpoints, "discover_checkpoints"), (fdl_cli.probes, "load_probe"),
                         (fdl_cli.checkpoints, "resolve_model_factory")):
        monkeypatch.setattr(module, name, lambda *args, _name=name, **kwargs: work.append(_name))
    result = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", run / "probe.npz",
                 "--out", tmp_path / "s.h5", "--device", "cuda:7")
    assert result.code == 1
    assert "error: --device cuda:7: this machine has no GPU 7" in result.stderr
    assert "2 CUDA GPUs visible: cuda:0 .. cuda:1 (CUDA_VISIBLE_DEVICES=3,5)" in result.stderr
    assert "Traceback" not in result.stderr
    assert work == []
    assert not (tmp_path / "s.h5").exists()


def test_no_gpu_at_all_is_said_with_the_device_asked_for_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """It read "--device cuda was asked for but no CUDA GPU is available" for `--device cuda:1` too, and left
    the user to find out that their torch is a CPU build, or that CUDA_VISIBLE_DEVICES hides the GPUs."""
    from fdl_cli.errors import ModelError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(ModelError) as caught:
        fdl_cli.extract.resolve_device("cuda:1")
    assert caught.value.what == "--device cuda:1: no CUDA GPU is available"
    assert caught.value.got == f"torch {torch.__version__}, a build without CUDA"
    assert caught.value.fix == ("use --device cpu, or auto (a GPU when there is one); for the GPU, install a CUDA "
                                "build of torch")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ModelError) as caught:
        fdl_cli.extract.resolve_device("cuda")
    assert caught.value.what == "--device cuda: no CUDA GPU is available"
    assert caught.value.got == "CUDA_VISIBLE_DEVICES=''"
    assert caught.value.fix == "use --device cpu, or auto (a GPU when there is one)"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ModelError) as caught:
        fdl_cli.extract.resolve_device("cuda:0")
    assert caught.value.got is None
    assert fdl_cli.extract.resolve_device("auto") == torch.device("cpu")


# -- torchrun and an explicit index ------------------------------------------------------------------------


def test_an_explicit_gpu_for_every_rank_of_a_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun `--device cuda` gives rank r `cuda:LOCAL_RANK`, but `--device cuda:0` gave every rank
    GPU 0 while the others idled, and NCCL refuses a second rank on one GPU (a DistBackendError traceback
    at the first collective)."""
    _gpus(monkeypatch, 4)
    two_here = World(rank=1, size=2, local_rank=1, local_size=2)
    with pytest.raises(FdlError) as caught:
        device_for(two_here, "cuda:0")
    assert caught.value.what == ("--device cuda:0 under torchrun puts every rank of this machine on GPU 0, and NCCL "
                                 "refuses two ranks on one GPU")
    assert caught.value.got == "2 ranks on this machine, 4 CUDA GPUs visible"
    assert caught.value.fix is not None
    assert caught.value.fix.startswith("pass --device cuda: each rank then takes the GPU of its LOCAL_RANK "
                                       "(cuda:0 .. cuda:1); choose which GPUs those are with CUDA_VISIBLE_DEVICES")
    # without LOCAL_WORLD_SIZE every rank may be on this machine
    with pytest.raises(FdlError) as caught:
        device_for(World(rank=0, size=3, local_rank=0), "cuda:2")
    assert caught.value.got == "3 ranks on this machine (at most), 4 CUDA GPUs visible"
    # ... and no range of GPUs (WORLD_SIZE counts every machine's ranks), but how a launcher of one rank a
    # machine keeps its cuda:i (the fix read "cuda:0 .. cuda:2" and said nothing of it; session 19)
    assert caught.value.fix is not None and ".. cuda:" not in caught.value.fix
    assert caught.value.fix.endswith("with one rank on each machine, set LOCAL_WORLD_SIZE=1 (as torchrun does) and "
                                     "--device cuda:i is kept")
    # what stays as it was
    assert device_for(two_here, "cuda") == "cuda:1"
    assert device_for(two_here, "auto") == "cuda:1"
    assert device_for(two_here, "cpu") == "cpu"
    assert device_for(World(rank=1, size=2, local_rank=0, local_size=1), "cuda:2") == "cuda:2"  # one rank a machine
    assert device_for(World(), "cuda:2") == "cuda:2"  # one process
    _gpus(monkeypatch, 1)  # a launcher that shows each rank its own GPU, as cuda:0
    assert device_for(two_here, "cuda:0") == "cuda:0"


def test_local_world_size_is_read_from_torchrun() -> None:
    assert detect_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == World(
        rank=3, size=4, local_rank=1, local_size=2)
    assert detect_world({"RANK": "1", "WORLD_SIZE": "2"}).local_size is None
    with pytest.raises(FdlError) as caught:
        detect_world({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "two"})
    assert "LOCAL_WORLD_SIZE='two'" in (caught.value.got or "")


def test_an_explicit_gpu_under_torchrun_is_a_clear_error_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a rank prints (every rank alike, before any process group is joined or file read)."""
    run = _make_run(tmp_path / "run")
    _gpus(monkeypatch, 2)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    result = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", run / "probe.npz",
                 "--out", tmp_path / "s.h5", "--device", "cuda:1")
    assert result.code == 1
    assert "error: --device cuda:1 under torchrun puts every rank of this machine on GPU 1" in result.stderr
    assert "pass --device cuda" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.h5").exists()


# -- on a GPU (pytest -m cuda) -----------------------------------------------------------------------------

CURRENT_DEVICE_MODEL = '''
import torch
from torch import nn


class Net(nn.Sequential):
    """tests.tiny_models:mlp's layers (its checkpoints load) adding states made on the current GPU, as
    training scripts write them: `.cuda()`, `device="cuda"` (zeros: the mlp's function)."""

    def forward(self, x):
        state = torch.zeros(x.shape[0], 8, dtype=x.dtype).cuda()
        offset = torch.zeros(8, device="cuda", dtype=x.dtype)
        return self[2](self[1](self[0](x) + state + offset))


def build():
    torch.manual_seed(0)
    return Net(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
'''


def _records(run: Path, out: Path, device: str, **options: Any) -> dict[int, dict]:
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.store import StoreReader

    run_analyze(AnalyzeOptions(sources=(str(run),), probe_specs=(str(run / "probe.npz"),), out=out, device=device,
                               batch_size=64, anchor_size=200, dtype="float64", **options))
    with StoreReader(out) as reader:
        return {record["step"]: record for record in reader.records()}


@pytest.mark.cuda
@GPU
def test_cuda_a_model_that_uses_the_current_gpu_runs_on_the_gpu_asked_for(tmp_path: Path) -> None:
    """`--device cuda:i` (the last GPU): a model whose forward makes tensors with `.cuda()` and
    `device="cuda"` gives the CPU's numbers; with two GPUs or more, nothing of it lands on GPU 0 (it failed
    with "tensors on another device" before), and the caller's current device is its own again after."""
    from tests.test_cuda import _assert_close

    run = _make_run(tmp_path / "run")
    (tmp_path / "net.py").write_text(CURRENT_DEVICE_MODEL)
    index = torch.cuda.device_count() - 1
    torch.cuda.set_device(0)
    torch.cuda.synchronize(0)
    torch.cuda.reset_peak_memory_stats(0)
    before = torch.cuda.max_memory_allocated(0)
    gpu = _records(run, tmp_path / "gpu.h5", f"cuda:{index}", model_spec=f"{tmp_path}/net.py:build")
    assert torch.cuda.current_device() == 0
    if index > 0:
        assert torch.cuda.max_memory_allocated(0) == before
    cpu = _records(run, tmp_path / "cpu.h5", "cpu", model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8})
    assert sorted(cpu) == [0, 10, 20, 30, 40]
    _assert_close(cpu, gpu, 1e-6)


@pytest.mark.cuda
@GPU
def test_cuda_a_gpu_index_past_the_last_is_refused_before_any_work(tmp_path: Path) -> None:
    """torch.cuda's own answer, on the machine's real GPUs."""
    run = _make_run(tmp_path / "run")
    count = torch.cuda.device_count()
    result = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--probe", run / "probe.npz",
                 "--out", tmp_path / "s.h5", "--device", f"cuda:{count}")
    assert result.code == 1
    assert f"error: --device cuda:{count}: this machine has no GPU {count}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_the_model_file_of_the_gpu_test_is_the_tiny_mlp_on_the_cpu() -> None:
    """The GPU test compares that model file with tests.tiny_models:mlp: they must compute the same
    function (its state is zeros). Checked here with `cuda` read as the CPU, so a GPU run fails only on
    the device."""
    source = CURRENT_DEVICE_MODEL.replace('device="cuda"', 'device="cpu"').replace(".cuda()", "")
    assert "cuda" not in source.replace("GPU", "")
    namespace: dict[str, Any] = {}
    exec(compile(source, "net_cpu.py", "exec"), namespace)
    net, tiny = namespace["build"](), mlp(hidden=8)
    net.load_state_dict(tiny.state_dict())
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(net(x), tiny(x), rtol=0, atol=0)
