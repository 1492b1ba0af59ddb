"""Review of last session's merged changes, by a user who tries odd inputs.

1. The statistics warning names the buffers read before a layer's features are taken. For NAME:input it took
   them before the module's own forward pre-hooks ran, to leave out what a pre-hook reads for the module's
   weights (pruning's mask); but a pre-hook may change the input itself (`args[0] * self.gain`), and the features
   taken are the input those hooks return. A buffer outside the module read there moved the features and the
   warning fell silent.
2. An option given before its command (`fdl --device cpu analyze ...`) was told to go after it "as in 'fdl
   analyze ... --device'", its value lost; an option's value that is a command's name (`fdl -o report analyze`)
   was taken for the command (but a command's name with none after it is the command: `fdl --device analyze`);
   and an option of one command, given with none, was told "after one of them".
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.cli_run import fdl_in_process
from tests.test_s31_small import _run

torch.set_num_threads(1)

# ------------------------------------------------------------------ buffers read in a forward pre-hook

HOOKED = """
import torch
from torch import nn
from torch.nn.utils import prune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("gain", torch.ones(8))  # scales head's input, in head's own pre-hook
        self.head.register_forward_pre_hook(lambda _module, args: (args[0] * self.gain,))
        prune.identity(self.head, "weight")  # head.weight_mask: read for head's weight, not its input

    def forward(self, x):
        return self.head(self.body(x))


def build():
    return Net()
"""


def test_a_buffer_read_by_a_pre_hook_that_changes_the_input_is_named(tmp_path: Path) -> None:
    status, err = _run(tmp_path, {"gain": torch.linspace(0.1, 5.0, 8)}, model=HOOKED)
    assert status == 0, err
    assert "head:input: the features moved from the reference at step 10" in err, err
    assert "only buffers changed (gain)" in err, err


def test_the_layers_own_pruning_mask_is_still_not_named_at_its_input(tmp_path: Path) -> None:
    """head's weight_mask, read by pruning's pre-hook, makes head's weight, not its input: of the two buffers that
    moved, only gain is named."""
    mask = torch.ones(3, 8)
    mask[0, :4] = 0
    status, err = _run(tmp_path, {"gain": torch.linspace(0.1, 5.0, 8), "head.weight_mask": mask}, model=HOOKED)
    assert status == 0, err
    assert "only buffers changed (gain)" in err, err


# ------------------------------------------------------------------ an option given before its command


def test_an_option_before_its_command_is_shown_with_its_value() -> None:
    """`fdl --device cpu analyze ...` was told 'as in fdl analyze ... --device', which, copied, lacks its value."""
    for given in (["--device", "cpu"], ["--device=cpu"]):
        done = fdl_in_process(*given, "analyze", "ckpts", "--model", "m.py:build")
        assert done.returncode == 2, done.stderr
        said = " ".join(done.stderr.split())
        assert "'--device' is an option of 'fdl analyze', not of fdl" in said, said
        assert "as in 'fdl analyze ... --device cpu'" in said, said


def test_an_options_value_is_not_taken_for_the_command() -> None:
    """`fdl -o report analyze ckpts`: 'report' is -o's value (a store's name), the command is analyze; click's bare
    "No such option '-o'" was all it said, as report takes no -o."""
    done = fdl_in_process("-o", "report", "analyze", "ckpts")
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "'-o' is an option of 'fdl analyze', not of fdl" in said and "'fdl analyze ... -o report'" in said, said


def test_an_option_of_one_command_given_with_no_command_names_that_command() -> None:
    """`fdl --device cpu`: 'give it after one of them' of the one command that takes it."""
    done = fdl_in_process("--device", "cpu")
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert ("'--device' is an option of 'fdl analyze', not of fdl: give it after the command, as in "
            "'fdl analyze ... --device cpu'") in said, said


def test_an_option_missing_its_value_before_the_command_is_not_given_the_command_as_value() -> None:
    """`fdl --device analyze ckpts` (no value): analyze is the command, not --device's value (the example's DEVICE
    stands for the value left out: tests/test_s32_fix3.py)."""
    done = fdl_in_process("--device", "analyze", "ckpts")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "as in 'fdl analyze ... --device DEVICE'" in said, said
