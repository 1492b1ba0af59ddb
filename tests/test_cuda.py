"""CUDA path (`pytest -m cuda`; skipped with the reason when no GPU): CUDA results == CPU results.

With the model run in float64 on both devices the only differences are summation orders, so every
measure agrees to rtol 1e-6; with the default float32 forward pass the model's own outputs differ
between devices by float32 rounding, so that comparison gets rtol 1e-4. The statistics stay on the
GPU during the pass (no per-batch host transfer): the accumulator's sums live there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.moments import MomentAccumulator
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.store import StoreReader
from tests.test_distributed import _make_run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]


def _analyze(run: Path, out: Path, device: str, dtype: str) -> dict[int, dict]:
    run_analyze(AnalyzeOptions(
        sources=(str(run),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
        probe_specs=(str(run / "probe.npz"),), out=out, device=device, dtype=dtype, batch_size=64, anchor_size=200,
    ))
    with StoreReader(out) as reader:
        return {r["step"]: r for r in reader.records()}


def _assert_close(cpu: dict[int, dict], gpu: dict[int, dict], rtol: float) -> None:
    assert sorted(gpu) == sorted(cpu)
    for step, record in cpu.items():
        for name, value in record.items():
            if isinstance(value, float) and gpu[step][name] is not None:
                np.testing.assert_allclose(gpu[step][name], value, rtol=rtol, atol=1e-9, err_msg=f"step {step} {name}")
            else:
                assert gpu[step][name] == value, (step, name)


@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-6), ("float32", 1e-4)])
def test_cuda_pipeline_matches_cpu(tmp_path: Path, dtype: str, rtol: float) -> None:
    run = _make_run(tmp_path / "run")
    cpu = _analyze(run, tmp_path / "cpu.h5", "cpu", dtype)
    gpu = _analyze(run, tmp_path / "gpu.h5", "cuda", dtype)
    _assert_close(cpu, gpu, rtol)


def test_statistics_stay_on_the_gpu_and_match_the_cpu() -> None:
    """p = 700: five block rows of the symmetric FᵀF (summed into strided views, mirrored when read),
    on the GPU as on the CPU, at the end and in mid-pass."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1000, 700, generator=generator, dtype=torch.float64) + 10.0  # shifted sums
    outputs = torch.randn(1000, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (1000,), generator=generator)
    accumulators, snapshots = {}, {}
    for device in ("cpu", "cuda"):
        accumulator = MomentAccumulator(task="classes")
        for start in range(0, 1000, 128):
            accumulator.update(*(t[start : start + 128].to(device) for t in (features, outputs, labels)))
            if start == 384:
                snapshots[device] = [part.cpu().numpy() for part in accumulator.second_moment_so_far()]
        accumulators[device] = accumulator
    assert all(value.device.type == "cuda" for value in accumulators["cuda"]._sums.values())
    cpu, gpu = accumulators["cpu"].moments(), accumulators["cuda"].moments()
    plain = features.numpy()
    # about the first batch's mean, on both devices
    np.testing.assert_allclose(gpu.shift_f, plain[:128].mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gpu.shift_f, cpu.shift_f, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gpu.unshifted().sum_ff, plain.T @ plain, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gpu.sum_ff, cpu.sum_ff, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gpu.sum_f, cpu.sum_f, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gpu.sum_fo, cpu.sum_fo, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gpu.class_sum_f, cpu.class_sum_f, rtol=1e-10, atol=1e-9)
    head = plain[:512] - plain[:128].mean(0)
    np.testing.assert_allclose(snapshots["cuda"][0], head.T @ head, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(snapshots["cuda"][1], head.sum(0), rtol=1e-10, atol=1e-9)
    assert gpu.n_correct == cpu.n_correct
    assert gpu.sum_xent is not None and cpu.sum_xent is not None  # a 0-d tensor on the GPU until moments()
    np.testing.assert_allclose(gpu.sum_xent, cpu.sum_xent, rtol=1e-12)


def test_cli_analyze_on_cuda(tmp_path: Path) -> None:
    from tests.test_analyze import fdl

    run = _make_run(tmp_path / "run")
    result = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
                 "--probe", run / "probe.npz", "--out", tmp_path / "s.h5", "--device", "cuda", "--json")
    assert result.code == 0, result.stderr
    assert len(result.records) == 7


def test_parameter_norms_on_the_gpu_equal_the_cpu_ones_bit_for_bit() -> None:
    """A module checkpoint's parameters may live on the GPU (`_parameters_of`'s fallback): their norms are
    summed on the host in the same order as the CPU's, so the digits are the same."""
    from fdl_cli.extract import _NORM_CHUNK, parameter_vector_norms

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(2 * _NORM_CHUNK + 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16)}
    reference = {name: value * 1.01 for name, value in state.items()}
    on_gpu = {name: value.cuda() for name, value in state.items()}
    ref_gpu = {name: value.cuda() for name, value in reference.items()}
    assert parameter_vector_norms(on_gpu, ref_gpu) == parameter_vector_norms(state, reference)


def test_a_layer_too_wide_for_the_gpu_is_refused_naming_the_gpu(tmp_path: Path) -> None:
    """resources.shortfall on the device: the statistics against torch.cuda.mem_get_info's free bytes
    (p = 200 000: 640 GB of float64 sums and eigenvectors, more than any GPU has)."""
    from fdl_cli.errors import ResourceError
    from tests.test_s16_memory import _run

    ckpts, probe = _run(tmp_path, 200_000)
    with pytest.raises(ResourceError) as caught:
        run_analyze(AnalyzeOptions(
            sources=(str(ckpts),), model_spec=f"{tmp_path}/model.py:build", model_kwargs={"copies": 12_500},
            layers=("expand",), probe_specs=(str(probe),), out=tmp_path / "run.h5", device="cuda",
        ))
    assert "of GPU memory" in caught.value.what and "free" in caught.value.what
    assert caught.value.fix is not None and caught.value.fix.endswith("; or --device cpu")
    assert not (tmp_path / "run.h5").exists()
