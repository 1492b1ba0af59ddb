"""Defects found in review, each pinned by a test that failed before its fix."""

from __future__ import annotations

import pytest
import torch

from fdl_cli.errors import ModelError
from fdl_cli.extract import model_outputs

torch.set_num_threads(1)


# ------------------------------------------------------------------ outputs of a dict without logits


def test_dict_without_logits_is_refused_naming_its_keys() -> None:
    raw = {"features": torch.zeros(2, 8), "out": torch.ones(2, 3)}
    with pytest.raises(ModelError, match="logits") as err:
        model_outputs(raw)
    assert "'features', 'out'" in str(err.value) and "fix:" in str(err.value)


def test_dict_with_logits_and_tuple_first_element_are_the_outputs() -> None:
    logits = torch.arange(6.0).reshape(2, 3)
    torch.testing.assert_close(model_outputs({"hidden": torch.zeros(2, 8), "logits": logits}), logits)
    torch.testing.assert_close(model_outputs((logits, torch.zeros(2, 8))), logits)
    with pytest.raises(ModelError, match="did not return a tensor"):
        model_outputs(("not a tensor",))
