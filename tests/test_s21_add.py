"""Adding a probe or a layer to a stored run, the gaps the twentieth session left (twenty-first session).

A stored checkpoint at which an added series failed stopped the run, so one bad file kept every later checkpoint
from the addition; it is now a failed checkpoint as in any run (said, the others given the series, exit 1), and
the same command adds the series there once the file is mended.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import fdl_cli.pipeline
from fdl_cli.errors import NumericalError
from fdl_cli.store import StoreReader
from tests import warm
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_analyze import analysed_copy, analyze, fdl, run  # noqa: F401 - `run`, `analysed_copy`: the module's fixtures
from tests.test_s15_redo import _dump
from tests.test_s20_add import _assert_as_analysed_at_once, _same, _series_items, at_once  # noqa: F401 - at_once: a fixture
from tests.test_s20_rev2 import _stopped_at_20, stopped_copy  # noqa: F401 - stopped_copy: a fixture

NON_FINITE = "the features or outputs contain non-finite values"


@contextmanager
def _failing_at(monkeypatch: pytest.MonkeyPatch, *steps: int) -> Iterator[None]:
    """Every analysis of a checkpoint at `steps` fails (as a model whose features overflow there would)."""
    analyze_one = fdl_cli.pipeline._analyze_one

    def failing(ctx: Any, ref: Any, *args: Any, **kwargs: Any) -> Any:
        if ref.step in steps:
            raise NumericalError(NON_FINITE, fix="check the model's dtype")
        return analyze_one(ctx, ref, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fdl_cli.pipeline, "_analyze_one", failing)
        yield


def _added(store: Path, series: str = "test/2:input") -> dict[str, Any]:
    """`_series_items` less the `history` attributes, which name the invocation that added the series."""
    return {key: value for key, value in _series_items(store, series).items() if not key.endswith("@history")}


def _assert_added_as_in_a_run_where_20_fails(
    run: Path, store: Path, monkeypatch: pytest.MonkeyPatch, *args: str  # noqa: F811 - the fixture's value
) -> None:
    """The added probe's series in `store` is that of a fresh run of every probe in which step 20 failed."""
    fresh = store.with_name("failed_at_20.h5")
    with _failing_at(monkeypatch, 20):
        assert analyze(run, fresh, *args).code == 1
    _same(_added(store), _added(fresh))


def test_a_stored_checkpoint_that_fails_for_the_added_probe_is_a_failed_checkpoint_and_the_others_get_the_probe(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: Any, stopped_copy: Any  # noqa: F811
) -> None:
    store = stopped_copy(tmp_path / "s.h5")  # the run analysed, with --commit-interval 0
    before = _series_items(store, "probe/2:input")
    test = ("--probe", f"test={run / 'test.npz'}")
    with _failing_at(monkeypatch, 20):
        failed = analyze(run, store, *test)
    assert failed.code == 1 and "Traceback" not in failed.stderr
    text = " ".join(failed.stderr.split())
    assert (f"{run / 'ckpts' / 'epoch_20.pt'}: {NON_FINITE} (adding test/2:input to the stored checkpoint at step 20: "
            "its stored series are kept, and the store lists test/2:input as pending until it holds it there too) "
            "fix: check the model's dtype; then run the same command again: it adds test/2:input to step 20 alone"
            ) in text
    assert "0 checkpoints analysed, 3 stored checkpoints given the added probe/layer series" in text
    assert "1 failed" in text and f"failed: {run / 'ckpts' / 'epoch_20.pt'}: {NON_FINITE}" in text
    assert [(r["step"], r["probe"]) for r in failed.records] == [(0, "test"), (10, "test"), (30, "test")]
    _same(_series_items(store, "probe/2:input"), before)  # the stored series, byte for byte (30's compared with 20)
    with StoreReader(store) as reader:
        assert reader.steps(probe="test") == [0, 10, 30] and reader.pending_series == {("test", "2:input")}
        assert any("3 of its 4 checkpoints hold it (not step 20)" in warning for warning in reader.warnings)
    _assert_added_as_in_a_run_where_20_fails(run, store, monkeypatch, *test)  # 30's compared with 10
    # mended: the same command adds the probe at step 20 alone, and compares 30's with it
    done = analyze(run, store, *test)
    assert done.code == 0, done.stderr
    assert "adding test/2:input to 1 of the 4 stored checkpoints" in done.stderr
    assert "1 stored checkpoint given the added probe/layer series (those alone analysed)" in done.stderr
    assert [(r["step"], r["probe"]) for r in done.records if r["probe"] == "test"] == [(20, "test"), (30, "test")]
    at_once(store, *test)


def test_a_stored_file_that_became_unreadable_is_said_and_once_restored_is_given_the_added_layer(
    run: Path, tmp_path: Path  # noqa: F811
) -> None:
    folder = tmp_path / "ckpts"
    shutil.copytree(run / "ckpts", folder)
    store = tmp_path / "s.h5"
    layers = ("--layer", "2:input", "--layer", "0")
    assert analyze(run, store, "--layer", "2:input", sources=(str(folder),)).code == 0
    before = _series_items(store, "probe/2:input")
    damaged = folder / "epoch_10.pt"
    good, stat = damaged.read_bytes(), damaged.stat()
    damaged.write_bytes(b"\0" * len(good))  # its size and time as stored: not hashed by the resume's check
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    failed = analyze(run, store, *layers, sources=(str(folder),))
    assert failed.code == 1 and "Traceback" not in failed.stderr
    text = " ".join(failed.stderr.split())
    assert f"error: cannot read the checkpoint {damaged}" in text  # a bad checkpoint, as in any run
    assert (f"note: adding layer '0' to the 4 stored checkpoints of {store} (analysing only the series they lack); not "
            f"to step 10, whose file ({damaged}) cannot be read now (a bad checkpoint, said above): the store keeps it "
            "as it is, and the same command adds the rest once the file is mended") in text
    assert "3 stored checkpoints given the added probe/layer series" in text and "1 failed" in text
    _same(_series_items(store, "probe/2:input"), before)
    with StoreReader(store) as reader:
        assert reader.steps(layer="0") == [0, 20, 30] and reader.pending_series == {("probe", "0")}
        assert reader.records(layer="0")[1]["prev_step"] == 0  # step 20's new layer skips over step 10
        assert reader.records(layer="2:input")[2]["prev_step"] == 10  # its stored one does not
    damaged.write_bytes(good)
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done = analyze(run, store, *layers, sources=(str(folder),))
    assert done.code == 0, done.stderr
    _assert_as_analysed_at_once(run, store, *layers, sources=(str(folder),))


def test_two_stored_checkpoints_failing_in_a_row_mended_one_at_a_time(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: Any  # noqa: F811
) -> None:
    """Step 30's added series compares with the nearest checkpoint that holds it at each stage: 0, then 10 once
    step 10 is mended while step 20 still fails (its stored series keep comparing with 20), then 20."""
    store = tmp_path / "s.h5"
    assert analyze(run, store).code == 0
    before = _series_items(store, "probe/2:input")
    test = ("--probe", f"test={run / 'test.npz'}")
    with _failing_at(monkeypatch, 10, 20):
        assert analyze(run, store, *test).code == 1
    with _failing_at(monkeypatch, 20):
        mended = analyze(run, store, *test)
    assert mended.code == 1 and "1 failed" in mended.stderr
    _same(_series_items(store, "probe/2:input"), before)
    with StoreReader(store) as reader:
        assert reader.steps(probe="test") == [0, 10, 30]
    _assert_added_as_in_a_run_where_20_fails(run, store, monkeypatch, *test)  # 30's compared with 10
    assert analyze(run, store, *test).code == 0
    at_once(store, *test)


def test_watch_goes_on_past_a_stored_checkpoint_the_added_probe_fails_at_and_leaves_its_stored_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not tried again at each poll (its file unchanged), nor skipped over by the stored series of the next
    checkpoint (the successor refresh of each poll)."""
    import numpy as np

    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter
    from tests.test_prev_walkback import _arrive, _make_run, _polls

    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, size=40))

    def analysed(out: Path, *probes: str, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
        records: list[dict[str, Any]] = []
        summary = run_analyze(AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(f"train={folder / 'probe.npz'}", *probes), out=out, anchor_size=100, batch_size=64,
            device="cpu", min_commit_interval=0, **options), reporter=NullReporter(), on_record=records.append)
        return summary, records

    store = tmp_path / "s.h5"
    analysed(store)
    before = {key: value for key, value in _series_items(store, "train/2:input").items()
              if not key.startswith("trajectories/")}
    assert len(before) > 3 * 5
    test = f"test={tmp_path / 'test.npz'}"
    with _failing_at(monkeypatch, 10), _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors"),
                                              lambda: None):
        summary, records = analysed(store, test, watch=True, poll_seconds=0.01)
    assert [path for path, _ in summary.failed] == [str(folder / "step_10.safetensors")]
    assert [(r["step"], r["probe"]) for r in records] == [(0, "test"), (20, "test"), (30, "train"), (30, "test")]
    stored = {key: value for key, value in _series_items(store, "train/2:input").items() if "step_30" not in key
              and not key.startswith("trajectories/")}
    _same(stored, before)  # step 20's stored series still compares with 10, every poll's refresh notwithstanding
    with StoreReader(store) as reader:
        assert [r["prev_step"] for r in reader.records(probe="test")] == [None, 0, 20]
        assert reader.pending_series == {("test", "2:input")}


def test_the_reference_failing_for_the_added_probe_stops_the_run_as_a_reference_that_fails_does(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    store = tmp_path / "s.h5"
    assert analyze(run, store).code == 0
    on_disk = store.read_bytes()
    with _failing_at(monkeypatch, 0):
        failed = analyze(run, store, "--probe", f"test={run / 'test.npz'}")
    assert failed.code == 1 and "Traceback" not in failed.stderr
    text = " ".join(failed.stderr.split())
    assert ("(adding test/2:input to the stored checkpoint at step 0: its stored series are kept, and the store lists "
            "test/2:input as pending until it holds it there too) (the reference checkpoint, which every other one is "
            "compared with: the run cannot go on)") in text
    assert store.read_bytes() == on_disk


# -- giving an addition up (--abandon-addition) ---------------------------------------------------------------

ADDED = {
    "probe": (("--probe", "test=TEST"), "probe 'test'", [["test", "2:input"]]),
    "layer": (("--layer", "2:input", "--layer", "0"), "layer '0'", [["probe", "0"]]),
    "both": (("--probe", "test=TEST", "--layer", "2:input", "--layer", "0"), "probe 'test' and layer '0'",
             [["probe", "0"], ["test", "0"], ["test", "2:input"]]),
}


def _given(run: Path, extra: tuple[str, ...]) -> tuple[str, ...]:  # noqa: F811
    return tuple(arg.replace("TEST", str(run / "test.npz")) for arg in extra)


@pytest.mark.parametrize("added", list(ADDED))
def test_an_addition_stopped_midway_is_given_up_and_the_store_is_as_before_it(
    run: Path, tmp_path: Path, at_once: Any, stopped_copy: Any, added: str  # noqa: F811
) -> None:
    extra, what, series = ADDED[added]
    extra = _given(run, extra)
    before = _dump(stopped_copy(tmp_path / "before.h5"))
    store = stopped_copy(tmp_path / "s.h5", *extra)
    refused = analyze(run, store)  # the store's probes and layers before the addition: the option is named
    assert refused.code == 1
    assert ("or, to give the addition up, this command with --abandon-addition, which takes "
            f"{'it' if added != 'both' else 'them'} out of the store; else pass --overwrite") in " ".join(
        refused.stderr.split())
    given_up = analyze(run, store, "--abandon-addition")
    assert given_up.code == 0, given_up.stderr
    assert given_up.records == [{"abandoned": series}]
    assert (f"0 checkpoints analysed, 4 already in the store, {what} given up (--abandon-addition: taken out of the "
            "2 checkpoints that held some of it) →") in given_up.stderr
    _same(_dump(store), before)  # every dataset and attribute but where and when (the history) as before
    with StoreReader(store) as reader:
        assert not reader.warnings and len(reader.history) == 2  # the addition's run stays in the history
    on_disk = store.read_bytes()
    again = analyze(run, store, "--abandon-addition")  # as after a kill once the store was given it up
    assert again.code == 0 and again.records == []
    assert f"note: --abandon-addition: {store} holds no unfinished addition of a probe or layer: nothing to give up" \
        in again.stderr
    assert store.read_bytes() == on_disk
    assert analyze(run, store, *extra).code == 0  # added afresh, whole
    at_once(store, *extra)


def test_giving_up_an_addition_is_refused_where_the_run_leaves_out_another_part_or_goes_with_other_work(
    run: Path, tmp_path: Path, stopped_copy: Any  # noqa: F811
) -> None:
    both = _given(run, ADDED["both"][0])
    store = stopped_copy(tmp_path / "s.h5", *both)
    on_disk = store.read_bytes()
    extra = tmp_path / "extra.npz"
    shutil.copyfile(run / "test.npz", extra)
    with extra.open("ab") as handle:
        handle.write(b"\0")  # other bytes: another probe

    def refused(*args: str) -> str:
        result = analyze(run, store, "--abandon-addition", *args)
        assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
        assert store.read_bytes() == on_disk
        return " ".join(result.stderr.split())

    text = refused("--probe", f"test={run / 'test.npz'}")  # the layer alone: the probe's addition would stay
    assert (f"--abandon-addition gives up the unfinished addition of probe 'test' and layer '0' to {store} "
            "(probe/0, test/0, test/2:input), and this run leaves out layer '0' fix: leave out those it added, giving "
            "every other probe and layer as the store has them (not --probe test=PATH --layer 0), to give it up") in text
    text = refused(*both)
    assert "and this run leaves out none of them" in text
    text = refused("--probe", f"other={extra}")
    assert (f"--abandon-addition gives up adding probe 'test' and layer '0' to {store}, and this run adds probe "
            "'other': one at a time") in text
    text = refused("--overwrite")
    assert "--abandon-addition and --overwrite together" in text
    text = refused("--drop", "10")
    assert "--abandon-addition and --drop together" in text


KILLED = '''
import os, signal, sys
real = os.replace
def replace(source, target, *args, **kwargs):
    after = os.environ["FDL_KILL"] == "after"
    if os.fspath(target) == os.environ["FDL_STORE"] and after:
        real(source, target, *args, **kwargs)
    if os.fspath(target) == os.environ["FDL_STORE"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, target, *args, **kwargs)
os.replace = replace
from fdl_cli.cli import main
main(sys.argv[1:])
'''


@pytest.mark.parametrize("when", ["before", "after"])
def test_giving_up_an_addition_killed_in_its_commit_leaves_a_store_that_reads_and_the_same_command_finishes(
    run: Path, tmp_path: Path, stopped_copy: Any, when: str  # noqa: F811
) -> None:
    """kill -9 as the commit that takes the addition out puts its copy in place (before, or after the rename); the
    killed command is a warm child (tests/warm.py), a process of its own without its own `import torch`."""
    import signal
    import sys

    before = _dump(stopped_copy(tmp_path / "before.h5"))
    store = stopped_copy(tmp_path / "s.h5", "--probe", f"test={run / 'test.npz'}")
    command = ("analyze", str(run / "ckpts"), "--model", f"{run}/model.py:build", "--probe", str(run / "probe.npz"),
               "--out", str(store), "--abandon-addition")
    killed = warm.run([sys.executable, "-c", KILLED, *command], cwd=tmp_path, timeout=300,
                      env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "FDL_KILL": when,
                           "FDL_STORE": str(store)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with StoreReader(store) as reader:  # it reads: the addition whole (as it stopped), or given up
        assert reader.steps(probe="probe") == [0, 10, 20, 30]
        assert reader.pending_series == ({("test", "2:input")} if when == "before" else frozenset())
    done = analyze(run, store, "--abandon-addition")
    assert done.code == 0, done.stderr
    _same(_dump(store), before)
    assert not list(tmp_path.glob("s.h5.tmp-*"))


# -- `fdl report`'s computed: lines name the run that added a series --------------------------------------------


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_report_says_where_the_series_added_to_the_store_were_computed(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_copy: Any  # noqa: F811
) -> None:
    """A probe added on a GPU to a store analysed on the CPU: the computed: lines named the CPU alone, for every
    checkpoint, though the added probe's numbers are the GPU's."""
    import socket

    import torch

    from fdl_cli import __version__

    store = stopped_copy(tmp_path / "s.h5")  # the run analysed, with --commit-interval 0
    test = ("--probe", f"test={run / 'test.npz'}", "--commit-interval", "0")
    monkeypatch.setattr(fdl_cli.pipeline, "describe_device", lambda device: "cuda:0 (NVIDIA H200)")
    _stopped_at_20(monkeypatch, run, store, *test)
    software = f"host {socket.gethostname()} (torch {torch.__version__}, fdl {__version__}, float32)"
    stopped = fdl("report", store, "--html", tmp_path / "r.html")
    assert stopped.code == 0, stopped.stderr
    said = [f"computed: all 4 checkpoints on cpu, {software}",
            f"computed: test/2:input added to steps 0, 10 on cuda:0 (NVIDIA H200), {software}"]
    assert [line for line in stopped.stderr.splitlines() if line.startswith("computed:")] == said
    assert all(line in (tmp_path / "r.html").read_text() for line in said)
    monkeypatch.setattr(fdl_cli.pipeline, "describe_device", lambda device: "cuda:1 (NVIDIA H100)")
    assert analyze(run, store, *test).code == 0
    done = fdl("report", store)
    assert [line for line in done.stderr.splitlines() if line.startswith("computed:")] == [
        f"computed: all 4 checkpoints on cpu, {software}",
        f"computed: test/2:input added to steps 0, 10 on cuda:0 (NVIDIA H200), {software}",
        f"computed: test/2:input added to steps 20, 30 on cuda:1 (NVIDIA H100), {software}",
    ]


def test_the_lines_of_added_series_stay_few() -> None:
    from fdl_cli.report import history_lines

    row = {"device": "cpu", "host": "a", "world_size": 1, "rank": 0, "torch_version": "2", "fdl_version": "1",
           "dtype": "float32"}
    checkpoints = [(row, list(range(0, 50, 10)))]
    added = [({**row, "started": f"t{i}"}, ("test", f"l{i}"), [0, 10, 20, 30, 40]) for i in range(6)]
    assert history_lines(checkpoints, added=added) == [
        "computed: all 5 checkpoints on cpu, host a (torch 2, fdl 1, float32)",
        "computed: test/l0, test/l1, test/l2, test/l3 and 2 more series added to all 5 checkpoints on cpu, host a "
        "(torch 2, fdl 1, float32)",
    ]
    places = [({**row, "host": f"h{i}"}, ("test", "fc"), [i * 10]) for i in range(5)]
    assert history_lines(checkpoints, added=places, store="run.h5") == [
        "computed: all 5 checkpoints on cpu, host a (torch 2, fdl 1, float32)",
        "computed: test/fc added to step 0 on cpu, host h0 (torch 2, fdl 1, float32)",
        "computed: test/fc added to step 10 on cpu, host h1 (torch 2, fdl 1, float32)",
        "computed: series added in 3 other places (the store's history: `h5dump -a /history run.h5`)",
    ]
