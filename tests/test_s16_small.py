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
    assert caught.value.got == "1 CUDA GPU(s) visible: cuda:0 (CUDA_VISIBLE_DEVICES=2)"
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
