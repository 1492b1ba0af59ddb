"""param_norm / param_dist_init: the same digits whatever the thread count (fdl_cli.extract._squared_norm).

torch.dot (BLAS) splits its sum by thread: ‖θ‖² of an 11M-parameter vector differed in the 12th digit
between torch.set_num_threads(1) and 2, so one run analysed with --threads 1 and resumed with 2, or
a torchrun rank against one process, stored different param_norm for the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fdl_cli.extract import _NORM_CHUNK, parameter_vector_norms


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "big.weight": torch.randn(3 * _NORM_CHUNK + 12_345, generator=g).reshape(-1, 3),  # several chunks
        "double.weight": torch.randn(300, 70, dtype=torch.float64, generator=g),
        "half.bias": torch.randn(17, generator=g).to(torch.bfloat16),
        "bn.running_mean": torch.full((4,), 1e6),  # a buffer: not a parameter of SPEC §6
        "bn.num_batches_tracked": torch.tensor(7),
    }


def _exact(state: dict[str, torch.Tensor], minus: dict[str, torch.Tensor] | None = None) -> float:
    """Σ x² (or Σ (x − y)²) added exactly rounded over float64 squares: the slow obvious reference."""
    parts = []
    for name, tensor in state.items():
        if "running" in name or "num_batches" in name:
            continue
        x = tensor.reshape(-1).to(torch.float64).numpy()
        if minus is not None:
            x = x - minus[name].reshape(-1).to(torch.float64).numpy()
        parts.extend((x * x).tolist())
    return math.fsum(parts)


def test_norms_are_thread_invariant_and_exact_to_rounding(threads):
    state, reference = _state(0), _state(1)
    kept = {name: tensor.clone() for name, tensor in state.items()}
    got = []
    for count in (1, 2, 4, 1):
        torch.set_num_threads(count)
        got.append(parameter_vector_norms(state, reference))
    assert len(set(got)) == 1, got  # bit for bit
    squared, distance = got[0]
    assert squared == pytest.approx(_exact(state), rel=1e-14)
    assert distance == pytest.approx(math.sqrt(_exact(state, reference) / _exact(reference)), rel=1e-14)
    for name, tensor in kept.items():  # the checkpoint's own tensors untouched (float64 ones are not copied by .to)
        assert torch.equal(state[name], tensor), name


def test_reference_edge_cases():
    zero = {"w": torch.zeros(10, dtype=torch.float64)}
    assert parameter_vector_norms(zero, {"w": torch.zeros(10, dtype=torch.float64)}) == (0.0, 0.0)
    assert parameter_vector_norms({"w": torch.ones(10)}, zero) == (10.0, None)
    assert parameter_vector_norms({"w": torch.ones(10)}, None) == (10.0, None)
    # a reference tensor of another shape is left out of the distance (as before)
    got = parameter_vector_norms({"w": torch.ones(4), "v": torch.ones(3)}, {"w": torch.zeros(4), "v": torch.ones(2)})
    assert got == (7.0, None)


def test_chunk_boundary_does_not_change_the_sum():
    """A vector of exactly one chunk and one of one chunk plus one element (the extra 0) give one sum."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(_NORM_CHUNK, dtype=torch.float64, generator=g)
    y = torch.cat([x, torch.zeros(1, dtype=torch.float64)])
    assert parameter_vector_norms({"w": x}, None)[0] == parameter_vector_norms({"w": y}, None)[0]
    assert parameter_vector_norms({"w": x}, None)[0] == pytest.approx(float(np.sum(x.numpy() ** 2)), rel=1e-15)
