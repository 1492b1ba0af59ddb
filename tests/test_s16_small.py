"""Small fixes of the sixteenth session."""

from __future__ import annotations

import pytest
import torch

from fdl_cli.errors import ModelError
from fdl_cli.extract import resolve_device


def test_a_gpu_index_past_the_visible_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:3` on a one-GPU machine failed later, in torch, with a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(ModelError) as caught:
        resolve_device("cuda:3")
    assert caught.value.what == "--device cuda:3: this machine has no GPU 3"
    assert caught.value.got == "1 CUDA GPU visible: cuda:0 (CUDA_VISIBLE_DEVICES=2)"
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize(("error", "expected"), [
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x4 and 8x3)"), False),
    (ValueError("out of memory"), False),
])
def test_the_cuda_libraries_allocation_failures_are_out_of_memory(error: BaseException, expected: bool) -> None:
    """cuBLAS/cuDNN failing to get their workspace on a full GPU said "forward pass failed" (the model's
    fault, fixed by --batch-size, it said) instead of running out of memory."""
    from fdl_cli.resources import out_of_memory

    assert out_of_memory(error) is expected
