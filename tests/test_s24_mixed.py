"""A model that mixes float32 with a float64 layer on purpose keeps its dtypes under the default --dtype float32
(session 24: `prepare_model` converted every model with a non-float32 tensor, so such a layer silently ran in
float32, or the forward's own `.double()` met float32 weights); a model none of whose tensors is float32 (one
pickled whole after `.half()`) is still converted."""

from __future__ import annotations

import torch
from torch import nn

from fdl_cli.extract import prepare_model


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2).double()
        self.register_buffer("scale", torch.tensor(1 / 3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)).double() * self.scale)


def test_a_float64_layer_kept_on_purpose_keeps_its_dtype() -> None:
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(5, 3)
    expected = model(x)
    prepared = prepare_model(model, device=torch.device("cpu"), dtype="float32")
    assert prepared.body.weight.dtype == torch.float32
    assert prepared.head.weight.dtype == torch.float64 and prepared.scale.dtype == torch.float64
    with torch.no_grad():
        got = prepared(x)
    assert got.dtype == torch.float64 and torch.equal(got, expected.detach())


def test_a_model_with_no_float32_tensor_is_converted() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).half()
    prepared = prepare_model(model, device=torch.device("cpu"), dtype="float32")
    assert {p.dtype for p in prepared.parameters()} == {torch.float32}
    with torch.no_grad():
        assert prepared(torch.randn(2, 3)).dtype == torch.float32
