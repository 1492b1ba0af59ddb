"""Review of the default layer's second pass (`extract.outputs_made_from`) and of the usage hints and sweep lines of
classify: the cases where they were wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fdl_cli.extract import default_layer
from tests.cli_run import fdl_in_process
from tests.test_report import make_store


def _choice(model: nn.Module, sample: np.ndarray) -> tuple[str, list[str]]:
    said: list[str] = []
    spec = default_layer(model, sample=sample, note=said.append, warn=said.append)
    return spec.label, said


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class TiedWithValue(nn.Module):
    """A language model whose head is its embedding's weight (`F.linear(h, embed.weight)`, no nn.Linear), with a
    value head on the same last hidden state, run after it (an RLHF policy with a value head)."""

    def __init__(self, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([_Block(width), _Block(width)])
        self.norm = nn.LayerNorm(width)
        self.value = nn.Linear(width, 1)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return F.linear(h, self.embed.weight), self.value(h)


class ConvHead(nn.Module):
    """An nn.Linear stem, a 1x1 convolution as the classifier, and an auxiliary nn.Linear head run last."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.classifier = nn.Conv1d(6, 3, 1)
        self.aux = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.stem(x))
        return self.classifier(h.unsqueeze(-1)).squeeze(-1), self.aux(h)


def test_a_linear_the_outputs_reach_only_through_another_weight_is_no_head() -> None:
    """The outputs are computed from the last block's `down` projection, but through the tied embedding's matrix
    product: `down`'s input (the MLP's hidden units, 4x wide) is no head's input. It was taken, with a note saying
    that the outputs are computed from it; the rule before the second pass stands (the last nn.Linear to run, with
    the warning that the head is no nn.Linear), as for a 1x1 convolution's classifier after an nn.Linear stem,
    where the stem's input, the model's own input, was taken."""
    torch.manual_seed(0)
    label, said = _choice(TiedWithValue().eval(), np.zeros((1, 5), np.int64))
    assert label == "value:input", said
    assert len(said) == 1 and "the head is no nn.Linear (a functional or weight-tied one" in said[0], said
    label, said = _choice(ConvHead().eval(), np.ones((1, 4), np.float32))
    assert label == "aux:input", said
    assert not any("computed from the output of nn.Linear 'stem'" in text for text in said), said


@pytest.mark.parametrize(("args", "hint"), [
    (("classify", "{a}", "json"), "'json' is one of --format's choices: give it as --format json"),
    (("classify", "csv", "{a}"), "'csv' is one of --format's choices: give it as --format csv"),
    (("report", "markdown"), "'markdown' is one of --format's choices: give it as --format markdown"),
])
def test_a_choice_taken_as_a_store_that_is_not_there_names_the_option(
    tmp_path: Path, args: tuple[str, ...], hint: str,
) -> None:
    """classify takes several stores: `fdl classify run.h5 json` classified run.h5, then said "no fdl store at
    json" (exit 1), where report's and export's extra word got the hint; `fdl report markdown` (the store left out)
    said only that there is no store at markdown."""
    a = make_store(tmp_path / "a.h5")
    done = fdl_in_process(*(arg.format(a=a) for arg in args))
    assert done.returncode == 2, done.stderr
    assert hint in done.stderr
    assert done.stdout == "" and "regime" not in done.stderr.casefold()


def test_the_rule_command_of_a_row_without_a_final_step_is_quoted(tmp_path: Path) -> None:
    """The line of a sweep's row with no checkpoint after the reference gives the command that prints its rule:
    for a store whose path has a space, `fdl classify /path/my run.h5` classified two stores that are not there."""
    a = make_store(tmp_path / "a.h5")
    first = make_store(tmp_path / "my run.h5", steps=(0,), seed=2)
    done = fdl_in_process("classify", a, first)
    assert done.returncode == 0, done.stderr
    assert f"(its rule: fdl classify '{first}')\n" in done.stderr, done.stderr
