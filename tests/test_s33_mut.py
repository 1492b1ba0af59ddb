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
        "e.g. --redo 100,500",
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


def test_the_numeric_options_leave_out_the_defaults_stores_of_older_fdl_lack() -> None:
    """A store records these options and refuses a resume whose differ: cka_dtype float64 and no --weights are
    left out, as stores written before those options were."""
    base = {
        "center": False,
        "top_k": 64,
        "anchor_size": 4096,
        "dlr_energy": 0.99,
        "dtype": "float32",
        "product_dtype": "float64",
    }
    assert AnalyzeOptions(sources=("run",)).numeric_options() == base
    given = AnalyzeOptions(sources=("run",), cka_dtype="float32", weights="ema.").numeric_options()
    assert given == {**base, "cka_dtype": "float32", "weights": "ema."}


def test_one_source_given_as_a_path_is_a_tuple_of_one() -> None:
    assert AnalyzeOptions(sources=Path("run"), probe_specs=Path("probe.npz")).sources == ("run",)
    assert AnalyzeOptions(sources=Path("run"), probe_specs=Path("probe.npz")).probe_specs == ("probe.npz",)


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
    def kept(copies: int) -> resources.Need:
        return resources.layer_needs("fc", 8, 100, 50, probe="test", anchor_copies=copies)[-1]

    assert resources.layer_needs("fc", 8, 100, 50, probe="test", anchor_copies=1)[-1].what == (
        "test/fc: this checkpoint's float64 copy of its anchors (m = 50)"
    )
    assert kept(2).what == "test/fc: the float64 anchors, the reference's (m = 50)"
    assert kept(3).what == "test/fc: the float64 anchors, the reference's and the previous checkpoint's (m = 50)"
    assert (kept(2).bytes, kept(3).bytes) == (8 * 50 * 16, 2 * 8 * 50 * 16)  # rows padded to p + 8 = 16 (p ≤ m)


def test_a_layer_as_wide_as_the_probe_takes_the_moments_route_on_a_gpu_too() -> None:
    """p = n: the (p+1)² sums, not the n×p features of the Gram route (p > n only), wherever they are taken."""
    needs = resources.layer_needs("fc", 100, 100, 50, probe="test", gpu=True, anchor_copies=0)
    assert (needs[0].what, needs[0].bytes, needs[0].on_device) == (
        "test/fc: the p×p second moment and its copy over the anchors (p = 100)",
        8 * (101**2 + 100**2),
        True,
    )
    assert not any("Gram" in need.what for need in needs)


@pytest.mark.parametrize("text", ["Out of memory.", "HIP OUT OF MEMORY"])
def test_an_allocation_failure_said_in_capitals_is_one(text: str) -> None:
    assert resources.out_of_memory(RuntimeError(text)) and not resources.out_of_memory(ValueError(text))


def test_a_gpu_gram_route_under_shard_probe_counts_this_process_s_slice_on_the_gpu() -> None:
    """--shard-probe: the features kept on the GPU are this rank's n_here rows; the host's copy holds all n."""
    gpu, host, decomposition = resources.layer_needs("fc", 200, 100, 50, probe="test", gpu=True, n_here=40, anchor_copies=0)
    assert (gpu.what, gpu.bytes, gpu.on_device) == (
        "test/fc: the n×p features of the Gram route kept on the GPU and their concatenation (n = 40, p = 200)",
        2 * 8 * 40 * 200,
        True,
    )
    assert (host.bytes, host.on_device) == (8 * 100 * 200, False)
    assert (decomposition.bytes, decomposition.on_device) == (8 * (100 * 200 + 2 * 100 * 100 + 1 + 600 + 20000), False)


def test_the_least_room_of_nested_cgroup_limits_is_what_the_process_has(tmp_path: Path) -> None:
    """A job's group of 8 GiB (5 of them in use) above a task's of 4 GiB (2 in use): 2 GiB left, the task's; a limit
    of 2⁶³ rounded down to a page, as cgroup v1 writes 'none', is no limit."""
    from tests.test_s16_rev import _fake_machine

    top = _fake_machine(tmp_path, cgroup="0::/job/task\n")
    job, task = top / "job", top / "job" / "task"
    task.mkdir(parents=True)
    for group, limit, anon in ((job, 8 << 30, 5 << 30), (task, 4 << 30, 2 << 30)):
        (group / "memory.max").write_text(f"{limit}\n")
        (group / "memory.swap.max").write_text("0\n")
        (group / "memory.stat").write_text(f"anon {anon}\n")
    assert resources.available_host_bytes(tmp_path) == 2 << 30
    for group in (job, task):
        (group / "memory.max").write_text("9223372036854771712\n")
    assert resources.available_host_bytes(tmp_path) == 50_000_000 * 1024  # MemAvailable's


def test_a_cgroup_v1_swap_allowance_less_the_swap_in_use_counts(tmp_path: Path) -> None:
    """v1: memsw 12 GiB over a limit of 8 GiB leaves 4 GiB of swap, 1 GiB of it used: 3 GiB beside the 2 free."""
    from tests.test_s16_rev import _fake_machine

    v1 = _fake_machine(tmp_path, cgroup="4:memory:/\n", swap_free_kb=16 << 20) / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.stat").write_text(
        f"hierarchical_memory_limit {8 << 30}\nhierarchical_memsw_limit {12 << 30}\ntotal_rss {6 << 30}\n"
        f"total_swap {1 << 30}\n"
    )
    assert resources.available_host_bytes(tmp_path) == (2 << 30) + (3 << 30)


# --------------------------------------------------------------------------------------------------- html.py


def test_the_html_table_s_cells_and_figures_as_the_page_shows_them() -> None:
    """A checkpoint before the reference with no regime shows '—', not a lone '*'; a step is a number (right
    aligned) with its full value on hover, a missing value has no hover text; a figure's title is escaped in
    its alt text and its caption; every summary sentence is listed."""
    from fdl_cli.html import Section, render_html

    section = Section(
        heading="h",
        summary=["first", "second"],
        records=[{"step": 10}, {"step": 200, "regime": "MF"}],
        figures=[('a "b" <c>', b"PNG")],
        reference_step=100,
    )
    page = render_html(title="t", provenance=[], warnings=[], sections=[section])
    rows = page.split("<tbody>", 1)[1].split("</tr>")
    assert rows[0].startswith('<tr><td class="num" title="10">10</td><td class="text">—</td>')
    assert rows[0].count('<td class="text">—</td>') == 3  # path, sha256 and the regime: no '*' without one
    assert '<td class="text" title="MF">MF</td>' in rows[1]
    escaped = "a &quot;b&quot; &lt;c&gt;"
    assert f'<img alt="{escaped}" src="data:image/png;base64,UE5H"><figcaption>{escaped}</figcaption>' in page
    assert '<ul class="summary"><li>first</li><li>second</li></ul>' in page
