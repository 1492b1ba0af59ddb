"""Session 41: the reference's ‖θ_ref‖² is summed once a run, not at every checkpoint.

`parameter_vector_norms` takes the reference's per-tensor squared norms from a cache that the pipeline keeps
for as long as the reference's parameters are the same object (`pipeline._reference_squares`); the numbers
are those of summing them anew (the same `_squared_norm` of the same tensors)."""

from __future__ import annotations

import torch

from fdl_cli.extract import _squared_norm, parameter_vector_norms
from fdl_cli.pipeline import _reference_squares


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(300, 70, generator=g),
        "a.bias": torch.randn(70, dtype=torch.float64, generator=g),
        "b.weight": torch.randn(5, 4, generator=g),
        "bn.running_mean": torch.randn(4, generator=g),  # a buffer: not in the norms
    }


def test_cached_reference_squares_give_the_same_digits() -> None:
    reference = _state(0)
    cache: dict[str, float] = {}
    for seed in (1, 2, 3):
        state = _state(seed)
        assert parameter_vector_norms(state, reference, reference_squares=cache) == parameter_vector_norms(
            state, reference
        )
    # filled once, with the reference's own squared norms (no buffer, no tensor of another shape)
    assert cache == {name: _squared_norm(reference[name].reshape(-1)) for name in ("a.weight", "a.bias", "b.weight")}


def test_the_cache_is_read() -> None:
    reference, state = _state(0), _state(1)
    _, plain = parameter_vector_norms(state, reference)
    cache = {name: 4 * _squared_norm(reference[name].reshape(-1)) for name in ("a.weight", "a.bias", "b.weight")}
    _, cached = parameter_vector_norms(state, reference, reference_squares=cache)
    assert plain is not None and cached is not None
    assert abs(cached - plain / 2) <= 1e-12 * plain  # ‖θ − θ_ref‖ / ‖θ_ref‖ with ‖θ_ref‖² four times as large


def test_shapes_that_differ_are_left_out_as_before() -> None:
    reference = {"w": torch.ones(4), "v": torch.ones(2)}
    state = {"w": torch.zeros(4), "v": torch.ones(3)}
    cache: dict[str, float] = {}
    assert parameter_vector_norms(state, reference, reference_squares=cache) == parameter_vector_norms(state, reference)
    assert cache == {"w": 4.0}


class _Ctx:
    reference_state: dict[str, torch.Tensor] | None = None
    reference_squares = None


def test_the_pipeline_keeps_one_cache_per_reference() -> None:
    ctx = _Ctx()
    assert _reference_squares(ctx) is None  # type: ignore[arg-type]
    ctx.reference_state = _state(0)
    first = _reference_squares(ctx)  # type: ignore[arg-type]
    assert first == {}
    first["a.weight"] = 1.0
    assert _reference_squares(ctx) is first  # type: ignore[arg-type]
    ctx.reference_state = dict(ctx.reference_state)  # another reference (a new dict): a new cache
    second = _reference_squares(ctx)  # type: ignore[arg-type]
    assert second == {} and second is not first
