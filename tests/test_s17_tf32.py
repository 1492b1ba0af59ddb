"""float32 on a CUDA GPU is full float32: torch runs cuDNN's float32 convolutions in TF32 (10-bit
mantissa) by default, and a model file may turn TF32 on for matrix products; a CNN's float32 features
on an Ampere-or-later GPU then differed from the CPU's by ~1e-3 relative. `prepare_model` turns both
off on a CUDA device (after the model file ran)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fdl_cli.extract import prepare_model
from tests.tiny_models import cnn


@pytest.fixture
def tf32_on() -> Iterator[None]:
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_a_model_prepared_for_a_cuda_device_runs_float32_without_tf32(
    tf32_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without a GPU: the move itself is left out, the flags are what is checked
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)
    prepare_model(nn.Linear(2, 2), device=torch.device("cuda"), dtype="float32")
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_the_cpu_leaves_the_flags_as_they_are(tf32_on: None) -> None:
    prepare_model(nn.Linear(2, 2), device=torch.device("cpu"), dtype="float32")
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is True


def _cnn_run(folder: Path) -> Path:
    folder.mkdir()
    net = cnn(channels=3, width=16, n_out=4, seed=0)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for index in range(3):
        state = {k: (v + 0.2 * index * torch.randn(v.shape, generator=generator)).contiguous()
                 if v.is_floating_point() else v for k, v in start.items()}
        save_file(state, str(folder / f"step_{index * 10}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(256, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, size=256))
    return folder


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_a_cnn_in_float32_gives_the_cpu_numbers(tf32_on: None, tmp_path: Path) -> None:
    """With TF32 on (as torch's default leaves cuDNN, and as set here for matrix products too), the
    GPU's convolutions round their inputs to 10 bits; fdl's float32 measures agree with the CPU's to
    the float32 comparison of tests/test_cuda.py (rtol 1e-4)."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.store import StoreReader
    from tests.test_cuda import _assert_close

    run = _cnn_run(tmp_path / "run")
    records = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.h5"
        run_analyze(AnalyzeOptions(sources=(str(run),), model_spec="tests.tiny_models:cnn",
                                   model_kwargs={"channels": 3, "width": 16, "n_out": 4},
                                   probe_specs=(str(run / "probe.npz"),), out=out, device=device, batch_size=64,
                                   anchor_size=200))
        with StoreReader(out) as reader:
            records[device] = {record["step"]: record for record in reader.records()}
    assert sorted(records["cpu"]) == [0, 10, 20]
    _assert_close(records["cpu"], records["cuda"], 1e-4)
