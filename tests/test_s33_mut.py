"""Mutation testing of code earlier rounds left alone: the option parsing of fdl_cli/options.py (step lists, the
model's JSON kwargs, the recorded overlap k), the notes and refusals of adding a probe or a layer (fdl_cli/adding.py)
and the memory estimate's words and sizes (fdl_cli/resources.py). Each test here failed with a mutant (a comparison
flipped, a bound moved, a branch dropped) that every test of that code let pass: it asserts what the user reads or
what the store records. All in-process and without a model: each test is a few function calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdl_cli import resources
from fdl_cli.adding import Addition, check_addition
from fdl_cli.errors import FdlError, StoreError
from fdl_cli.options import AnalyzeOptions, overlap_k_recorded

# ------------------------------------------------------------------------------------------------ options.py


@pytest.mark.parametrize(
    ("option", "fix"),
    [
        ("steps", "give the steps to analyse (e.g. --steps 0,100,500), or leave --steps out for all of them"),
        ("redo", "give the stored steps to analyse again (e.g. --redo 100,500)"),
        ("drop", "give the stored steps to remove (e.g. --drop 100,500)"),
    ],
)
def test_an_empty_step_list_s_fix_names_its_own_option(option: str, fix: str) -> None:
    """--redo ',' was told the --steps fix (or --steps the --redo one) with the option test flipped."""
    with pytest.raises(FdlError) as caught:
        AnalyzeOptions.from_cli(sources=("run",), **{option: ","})
    assert (caught.value.what, caught.value.got, caught.value.fix) == (f"--{option} is an empty list of steps", "','", fix)


def test_a_step_list_of_other_words_is_named_with_the_option_and_an_example() -> None:
    with pytest.raises(FdlError) as caught:
        AnalyzeOptions.from_cli(sources=("run",), redo="10,a")
    assert (caught.value.what, caught.value.got, caught.value.fix) == (
        "--redo must be integers separated by commas",
        "10,a",
        "e.g. --redo 0,100,500",
    )


def test_model_kwargs_of_json_that_is_no_object_are_refused() -> None:
    """'[1]' parses: without the check it reached the model as kwargs of a list (a TypeError deep in the run)."""
    with pytest.raises(FdlError) as caught:
        AnalyzeOptions.from_cli(sources=("run",), model_kwargs="[1]")
    assert (caught.value.what, caught.value.got) == ("--model-kwargs must be a JSON object", "[1]")


@pytest.mark.parametrize(("length", "shortened"), [(200, False), (201, True)])
def test_model_kwargs_that_are_not_json_are_shown_whole_up_to_200_characters(length: int, shortened: bool) -> None:
    text = "{" + "x" * (length - 1)
    with pytest.raises(FdlError) as caught:
        AnalyzeOptions.from_cli(sources=("run",), model_kwargs=text)
    shown = f"{text[:60]}...{text[-20:]}" if shortened else text
    assert caught.value.got is not None and caught.value.got.startswith(f"{shown!r} (")


@pytest.mark.parametrize(
    ("options", "outputs", "k"),
    [
        ({"overlap_k": 5, "top_k": 64}, 10, 5),
        ({"overlap_k": True, "top_k": 64}, 10, None),  # a bool is no k (a hand-edited store)
        ({"top_k": 64}, 10, 10),  # unrecorded: min(top_k, C)
        ({"top_k": 4}, 10, 4),
        ({"top_k": 64}, None, None),
        ({"top_k": True}, 10, None),
    ],
)
def test_the_recorded_overlap_k_is_the_option_else_top_k_capped_at_the_outputs(options, outputs, k) -> None:
    assert overlap_k_recorded(options, outputs) == k


# ------------------------------------------------------------------------------------------------- adding.py

ONE = frozenset({("test", "fc")})


def test_adding_to_the_only_stored_checkpoint_says_it_in_the_singular() -> None:
    assert Addition(lacking={0: ONE}, added="probe 'test'", stored=1).note(Path("run.h5")) == (
        "adding probe 'test' to the stored checkpoint of run.h5 (analysing only the series they lack)"
    )
    assert Addition(lacking={0: ONE}, added="probe 'test'", stored=3).note(Path("run.h5")) == (
        "adding probe 'test' to 1 of the 3 stored checkpoints of run.h5 (analysing only the series they lack)"
    )


def test_an_unfinished_addition_of_two_series_to_one_checkpoint_says_them() -> None:
    """'it' or 'them' follows the series, not the checkpoints that lack them."""
    two = frozenset({("test", "fc"), ("test", "out")})
    note = Addition(lacking={10: two}, added=None, stored=2).note(Path("run.h5"))
    assert note == (
        "adding test/fc, test/out to 1 of the 2 stored checkpoints of run.h5, which lack them (an "
        "earlier `fdl analyze` that added them stopped before it was done)"
    )


def test_two_unreadable_checkpoints_are_said_in_the_plural() -> None:
    addition = Addition(
        lacking={0: ONE, 10: ONE, 20: ONE}, added="probe 'test'", stored=3, unreadable={20: "b.pt", 10: "a.pt"}
    )
    assert addition.note(Path("run.h5")).endswith(
        "; not to steps 10, 20, whose files (a.pt, b.pt) cannot be read now (a bad checkpoint, said above): the store "
        "keeps them as they are, and the same command adds the rest once the file is mended"
    )


@pytest.mark.parametrize(
    ("gone", "shown"),
    [
        (2, "the files of its stored steps 0, 1 are not among"),
        (8, "the files of its stored steps 0, 1, 2, 3, 4, 5, 6, 7 are not among"),
        (10, "the files of its stored steps 0, 1, 2, 3, 4, 5, 6, 7 and 2 more are not among"),
    ],
)
def test_stored_checkpoints_whose_files_are_gone_are_listed_eight_at_most(gone: int, shown: str) -> None:
    addition = Addition(lacking={step: ONE for step in range(gone)}, added=None, stored=gone)
    with pytest.raises(StoreError) as caught:
        check_addition(addition, Path("run.h5"), steps_now={}, drop=False, distributed=False)
    assert caught.value.what.startswith(f"cannot add the series test/fc to run.h5: {shown} this run's checkpoints")


# ---------------------------------------------------------------------------------------------- resources.py


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (1_000, "1.0 kB"),
        (999_999, "1000 kB"),
        (1_000_000_000, "1.0 GB"),
        (99_949_999_999, "99.9 GB"),
        (100_000_000_000, "100 GB"),
        (1e12, "1.0 TB"),
        (2_500_000_000_000_000, "2500 TB"),
    ],
)
def test_sizes_are_said_in_the_largest_unit_they_reach_with_a_decimal_below_100(count: float, text: str) -> None:
    """The memory refusal's '28.8 GB': a size of exactly a unit is said in it; from 100 units on, no decimal."""
    assert resources.size_text(count) == text


def test_the_anchors_needs_name_whose_copies_they_count() -> None:
    def anchors(copies: int) -> resources.Need:
        return resources.layer_needs("fc", 8, 100, 50, probe="test", anchor_copies=copies)[-1]

    assert anchors(1).what == "test/fc: the anchors' features, this checkpoint's (m = 50)"
    assert anchors(2).what == "test/fc: the anchors' features, this checkpoint's and the reference's (m = 50)"
    assert (anchors(1).bytes, anchors(2).bytes) == (8 * 50 * 16, 2 * 8 * 50 * 16)


def test_a_layer_as_wide_as_the_probe_takes_the_moments_route_on_a_gpu_too() -> None:
    """p = n: the (p+1)² sums, not the n×p features of the Gram route (p > n only), wherever they are taken."""
    needs = resources.layer_needs("fc", 100, 100, 50, probe="test", gpu=True, anchor_copies=0)
    assert [(need.what, need.bytes, need.on_device) for need in needs] == [
        ("test/fc: the p×p second moment and its copy over the anchors (p = 100)", 8 * (101**2 + 100**2), True)
    ]


@pytest.mark.parametrize("text", ["Out of memory.", "HIP OUT OF MEMORY"])
def test_an_allocation_failure_said_in_capitals_is_one(text: str) -> None:
    assert resources.out_of_memory(RuntimeError(text)) and not resources.out_of_memory(ValueError(text))
