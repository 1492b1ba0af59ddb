"""Adding a probe or a layer to a stored run (twentieth session).

DESIGN.md: "Re-running only does what is missing". A store of probe `train` resumed with `--probe train=a.npz
--probe test=b.npz` (or with one `--layer` more) was refused as "the results of a different run", so a researcher
who had analysed 300 checkpoints with one probe recomputed them all into another store to get a second one.
A resume now analyses, at each stored checkpoint, only the (probe, layer) series it lacks, and everything at new
checkpoints; the store it leaves equals, dataset by dataset and attribute by attribute, one analysed with every
probe and layer at once (but for where and when each part was computed: `created`, the `history` attributes).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import fdl_cli.extract
import fdl_cli.pipeline
from fdl_cli.adding import Addition, check_addition
from fdl_cli.errors import FdlError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.test_analyze import analysed_copy, analyze, fdl, run  # noqa: F401 - `run`, `analysed_copy`: fixtures
from tests.test_prev_walkback import _arrive, _make_run, _polls
from tests.test_s15_redo import _dump, _retrain

STEPS = [0, 10, 20, 30]


def _comparable(store: Path) -> dict[str, Any]:
    """`_dump` (every dataset and attribute, not the root's `created` nor the history of its checkpoints) less
    the `history` of the series added to stored checkpoints, which names the invocation that added them."""
    return {key: value for key, value in _dump(store).items() if not key.endswith("@history")}


def _same(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(mine) == sorted(theirs)
    for key, a in mine.items():
        b = theirs[key]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), key  # bit for bit, NaN for null
        else:
            assert a == b, key


def _series_items(store: Path, series: str) -> dict[str, Any]:
    """Every dataset and attribute of one series, "probe/layer" (in its checkpoints' groups and trajectories)."""
    return {key: value for key, value in _dump(store).items()
            if f"/{series}/" in key or key.endswith(f"/{series}") or f"/{series}@" in key}


def _assert_as_analysed_at_once(run: Path, store: Path,  # noqa: F811 - the fixture's value
                                 *args: str, sources: tuple[str, ...] | None = None) -> None:
    """`store` equals (`_comparable`) a fresh one analysed by one `fdl analyze` with `args` (every probe and layer)."""
    fresh = store.with_name("fresh.h5")
    assert analyze(run, fresh, *args, sources=sources).code == 0
    _same(_comparable(store), _comparable(fresh))


@pytest.fixture(scope="module")
def at_once(analysed_copy: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    """`at_once(store, *args)`: `_assert_as_analysed_at_once(run, store, *args)`, each fresh store analysed once for
    the module (`analysed_copy`, which a test that reads such a store shares): the tests of a layer added before
    the stored one and of a layer addition resumed, and those of a probe and a layer added at once, compare with
    the same."""
    fresh: dict[tuple[str, ...], dict[str, Any]] = {}

    def check(store: Path, *args: str) -> None:
        if args not in fresh:
            fresh[args] = _comparable(analysed_copy(tmp_path_factory.mktemp("at_once") / "fresh.h5", *args))
        _same(_comparable(store), fresh[args])

    return check


@contextmanager
def _passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int, tuple[str, ...]]]]:
    """The forward passes a run makes: ("extract" | "anchors", probe rows, layers hooked), in order."""
    calls: list[tuple[str, int, tuple[str, ...]]] = []

    def counted(kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(model: Any, layers: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((kind, int(x.shape[0]), tuple(spec.label for spec in layers)))
            return function(model, layers, x, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(fdl_cli.extract, "extract", counted("extract", fdl_cli.extract.extract))
    monkeypatch.setattr(fdl_cli.extract, "anchor_features", counted("anchors", fdl_cli.extract.anchor_features))
    yield calls


@pytest.mark.parametrize(("extra", "added", "passes_made"), [
    (("--probe", "test=TEST"), ("test", "2:input"), [("extract", 30, ("2:input",))] * 4),  # the test probe (30) alone
    (("--layer", "2:input", "--layer", "0"), ("probe", "0"), [("extract", 60, ("0",))] * 4),  # layer 0 alone hooked
], ids=["probe", "layer"])
def test_a_probe_or_layer_added_to_a_store_is_all_that_is_analysed_and_the_store_is_that_of_all_at_once(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, analysed_copy: Any, at_once: Any,  # noqa: F811
    extra: tuple[str, ...], added: tuple[str, str], passes_made: list[Any],
) -> None:
    extra = tuple(arg.replace("TEST", str(run / "test.npz")) for arg in extra)
    store = analysed_copy(tmp_path / "s.h5")
    before = _series_items(store, "probe/2:input")
    assert len(before) > 4 * 5 and "trajectories/probe/2:input/d_lr" in before
    with _passes(monkeypatch) as passes:
        grown = analyze(run, store, *extra)
    assert grown.code == 0, grown.stderr
    assert passes == passes_made  # no pass of the stored probe, no anchor pass of a stored checkpoint
    what = f"probe '{added[0]}'" if added[0] == "test" else f"layer '{added[1]}'"
    assert f"note: adding {what} to the 4 stored checkpoints of {store}" in grown.stderr
    assert ("0 checkpoints analysed, 4 stored checkpoints given the added probe/layer series (those alone "
            "analysed)") in grown.stderr
    assert [(r["step"], r["probe"], r["layer"]) for r in grown.records] == [(step, *added) for step in STEPS]
    _same(_series_items(store, "probe/2:input"), before)  # the stored series, byte for byte as they were
    at_once(store, *extra)
    leaf = "/".join(added)
    with h5py.File(store, "r") as handle:
        assert "pending_series" not in handle.attrs
        assert [handle[f"checkpoints/step_{step}"].attrs["history"] for step in STEPS] == [0] * 4
        assert [handle[f"checkpoints/step_{step}/{leaf}"].attrs["history"] for step in STEPS] == [1] * 4
        assert "history" not in handle["checkpoints/step_0/probe/2:input"].attrs
    with StoreReader(store) as reader:
        assert len(reader.history) == 2 and not reader.warnings
        assert reader.arrays(10, probe=added[0], layer=added[1]).computed_by is not None
        assert reader.arrays(10, probe="probe", layer="2:input").computed_by is None
    again = analyze(run, store, *extra)
    assert again.code == 0 and again.records == [] and "0 checkpoints analysed, 4 already in the store" in again.stderr


def test_added_series_at_stored_checkpoints_beside_new_ones_and_a_reference_in_the_middle(
    run: Path, tmp_path: Path  # noqa: F811
) -> None:
    """Steps 10 and 20 stored (20 the reference); 0 and 30 new. The new series at 10 compare with 0, analysed
    now, and the stored ones of 10 are compared with 0 again (the successor refresh); the reference's new series
    are analysed first (every checkpoint's cka_init of them compares with it)."""
    store = tmp_path / "s.h5"
    assert analyze(run, store, "--steps", "10,20", "--reference", "20").code == 0
    more = ("--reference", "20", "--probe", f"test={run / 'test.npz'}", "--layer", "2:input", "--layer", "0")
    added = analyze(run, store, *more)
    assert added.code == 0, added.stderr
    assert "adding probe 'test' and layer '0' to the 2 stored checkpoints" in added.stderr
    assert ("2 checkpoints analysed, 2 stored checkpoints given the added probe/layer series (those alone "
            "analysed), 1 updated (a new previous checkpoint)") in added.stderr
    _assert_as_analysed_at_once(run, store, *more)


def test_steps_and_every_select_new_checkpoints_while_every_stored_one_is_given_the_added_series(
    run: Path, tmp_path: Path, at_once: Any  # noqa: F811
) -> None:
    store = tmp_path / "s.h5"
    assert analyze(run, store, "--steps", "0,10,20").code == 0
    test = ("--probe", f"test={run / 'test.npz'}")
    added = analyze(run, store, *test, "--every", "3")  # selects 0 and 30 of 0..30: 10 and 20 join, stored
    assert added.code == 0, added.stderr
    assert "adding probe 'test' to the 3 stored checkpoints" in added.stderr
    assert "1 checkpoint analysed, 3 stored checkpoints given the added probe/layer series" in added.stderr
    at_once(store, *test)


def test_an_addition_stopped_midway_leaves_a_store_that_reads_and_that_the_same_command_completes(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    store = tmp_path / "s.h5"
    assert analyze(run, store, "--commit-interval", "0").code == 0
    test = ("--probe", f"test={run / 'test.npz'}", "--commit-interval", "0")
    analyze_one = fdl_cli.pipeline._analyze_one

    def stopped_at_20(ctx: Any, ref: Any, *args: Any, **kwargs: Any) -> Any:
        if ref.step == 20:
            raise KeyboardInterrupt  # Ctrl-C while step 20 is analysed
        return analyze_one(ctx, ref, *args, **kwargs)

    monkeypatch.setattr(fdl_cli.pipeline, "_analyze_one", stopped_at_20)
    stopped = analyze(run, store, *test)
    monkeypatch.undo()
    assert stopped.code == 130 and "run the same command again to resume" in stopped.stderr
    with StoreReader(store) as reader:
        assert reader.steps(probe="probe") == STEPS and reader.steps(probe="test") == [0, 10]
        assert reader.pending_series == {("test", "2:input")}
        assert [warning for warning in reader.warnings if "test/2:input was added to this store by an `fdl analyze` "
                "that did not finish: 2 of its 4 checkpoints hold it (not steps 20, 30)" in warning]
    report = fdl("report", store, "--probe", "test", "--format", "json")
    assert report.code == 0 and [r["step"] for r in json.loads(report.stdout)] == [0, 10]
    assert "2 of its 4 checkpoints hold it" in report.stderr
    # the store now holds probe test: a resume without it is refused, the store left as it was
    on_disk = store.read_bytes()
    without = analyze(run, store)
    assert without.code == 1 and "give it too, --probe test=PATH" in without.stderr
    assert store.read_bytes() == on_disk
    resumed = analyze(run, store, *test)
    assert resumed.code == 0, resumed.stderr
    assert "adding test/2:input to 2 of the 4 stored checkpoints" in resumed.stderr
    assert [(r["step"], r["probe"]) for r in resumed.records] == [(20, "test"), (30, "test")]
    _assert_as_analysed_at_once(run, store, *test)


def test_what_cannot_be_added_is_refused_naming_what_differs_and_the_store_is_left_as_it_was(
    run: Path, tmp_path: Path  # noqa: F811
) -> None:
    folder = tmp_path / "ckpts"
    shutil.copytree(run / "ckpts", folder)
    store = tmp_path / "s.h5"
    assert analyze(run, store, "--layer", "2:input", "--layer", "0", sources=(str(folder),)).code == 0
    on_disk = store.read_bytes()
    test = f"test={run / 'test.npz'}"

    def refused(*extra: str) -> str:
        result = analyze(run, store, *extra, sources=(str(folder),))
        assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
        assert store.read_bytes() == on_disk
        return " ".join(result.stderr.split())

    # another option beside the added probe
    text = refused("--layer", "2:input", "--layer", "0", "--probe", test, "--top-k", "5")
    assert "holds the results of a different run" in text and "got: options.top_k: 64 (store) vs 5 (this run) fix:" in text
    assert ("this run adds probe 'test' to the store, which needs every other option as the store was analysed "
            "with, and options.top_k differs: give those as the store has them to add") in text
    # the stored layers in another order (beside a new one)
    text = refused("--layer", "0", "--layer", "2:input", "--layer", "1")
    assert "layers: ['2:input', '0'] (store) vs ['0', '2:input', '1'] (this run)" in text
    # a stored checkpoint whose file is gone cannot be given the added probe
    (folder / "epoch_10.pt").unlink()
    text = refused("--layer", "2:input", "--layer", "0", "--probe", test)
    assert (f"cannot add probe 'test' to {store}: the file of its stored step 10 is not among this run's "
            "checkpoints") in text
    # a stored probe's name given to another file
    named = tmp_path / "named.h5"
    common = (folder, "--model", f"{run}/model.py:build", "--out", named)
    assert fdl("analyze", *common, "--probe", f"train={run / 'probe.npz'}").code == 0
    on_disk = named.read_bytes()
    other = fdl("analyze", *common, "--probe", f"train={run / 'test.npz'}", "--probe", f"extra={run / 'test.npz'}")
    assert other.code == 1 and named.read_bytes() == on_disk
    assert "holds the results of a different run" in other.stderr and "probe train: sha256=" in other.stderr


def test_a_redo_beside_an_added_probe_analyses_that_checkpoint_whole(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "ckpts"
    shutil.copytree(run / "ckpts", folder)
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    _retrain(folder, 20)
    os.utime(folder / "epoch_0.pt", (1e9, 1e9))  # touched: hashed, found unchanged, its new signature recorded
    test = ("--probe", f"test={run / 'test.npz'}")
    assert analyze(run, store, *test, sources=(str(folder),)).code == 1  # a changed file, as without adding
    done = analyze(run, store, *test, "--redo", "20", sources=(str(folder),))
    assert done.code == 0, done.stderr
    assert "adding probe 'test' to 3 of the 4 stored checkpoints" in done.stderr
    assert ("1 checkpoint analysed (1 of them again: --redo), 3 stored checkpoints given the added probe/layer "
            "series (those alone analysed), 1 updated") in done.stderr
    _assert_as_analysed_at_once(run, store, *test, sources=(str(folder),))


def test_watch_adds_the_probe_to_the_stored_checkpoints_then_follows_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, size=40))

    def analysed(out: Path, *probes: str, **options: Any) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        run_analyze(AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(f"train={folder / 'probe.npz'}", *probes), out=out, anchor_size=100, batch_size=64,
            device="cpu", **options), reporter=NullReporter(), on_record=records.append)
        return records

    store = tmp_path / "s.h5"
    analysed(store)
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors", "step_40.safetensors")):
        records = analysed(store, f"test={tmp_path / 'test.npz'}", watch=True, poll_seconds=0.01)
    assert [(r["step"], r["probe"]) for r in records] == [
        (0, "test"), (10, "test"), (20, "test"), (30, "train"), (30, "test"), (40, "train"), (40, "test")]
    fresh = tmp_path / "fresh.h5"
    analysed(fresh, f"test={tmp_path / 'test.npz'}")
    _same(_comparable(store), _comparable(fresh))


def test_the_reading_commands_read_a_grown_store_as_one_made_at_once(
    run: Path, tmp_path: Path, analysed_copy: Any  # noqa: F811
) -> None:
    both = ("--probe", f"test={run / 'test.npz'}")
    store, fresh = analysed_copy(tmp_path / "s.h5"), analysed_copy(tmp_path / "fresh.h5", *both)
    assert analyze(run, store, *both).code == 0
    for command in (("report", "--format", "json"), ("classify", "--json", "--probe", "test"),
                    ("export", "--what", "trajectories", "--format", "csv", "--probe", "test"),
                    ("export", "--what", "eigenfunctions", "--format", "json", "--probe", "test")):
        grown, made = fdl(command[0], store, *command[1:]), fdl(command[0], fresh, *command[1:])
        assert grown.code == made.code == 0, grown.stderr
        assert grown.stdout == made.stdout and grown.stdout
    compared = fdl("compare", store, fresh, "--probe", "test")
    assert compared.code == 0 and "no field differs at any matched step" in compared.stdout + compared.stderr


def test_adding_is_refused_under_torchrun_and_with_drop() -> None:
    addition = Addition(lacking={0: frozenset({("test", "fc")}), 10: frozenset({("test", "fc")})},
                        added="probe 'test'", stored=2)
    store = Path("run.h5")
    with pytest.raises(FdlError) as torchrun:
        check_addition(addition, store, steps_now={0: "a", 10: "b"}, drop=False, distributed=True)
    assert torchrun.value.what == "adding probe 'test' to run.h5 runs as one process, not under torchrun"
    with pytest.raises(FdlError) as drop:
        check_addition(addition, store, steps_now={0: "a", 10: "b"}, drop=True, distributed=False)
    assert drop.value.what == "--drop and adding probe 'test' to run.h5 together: --drop mends a store alone"
    check_addition(addition, store, steps_now={0: "a", 10: "b"}, drop=False, distributed=False)
    assert addition.note(store) == ("adding probe 'test' to the 2 stored checkpoints of run.h5 (analysing only the "
                                    "series they lack)")


def test_torchrun_refuses_to_add_a_probe_once_and_leaves_the_store(tmp_path: Path) -> None:
    from tests.test_distributed import _make_run as _make_distributed_run
    from tests.test_distributed import _single, _torchrun_process
    from tests.test_s19_rank import _no_traceback_of_fdl

    folder = _make_distributed_run(tmp_path / "run")
    store = tmp_path / "s.h5"
    _single(folder, store)
    on_disk = store.read_bytes()
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, size=40))
    done = _torchrun_process(folder, store, "--probe", f"test={tmp_path / 'test.npz'}")
    assert done.returncode == 1, done.stderr[-4000:]
    assert done.stderr.count(f"error: adding probe 'test' to {store} runs as one process, not under torchrun") == 1
    _no_traceback_of_fdl(done.stderr)  # torchrun's own ChildFailedError traceback aside
    assert store.read_bytes() == on_disk


def test_the_writer_adds_series_into_stored_groups_and_records_which_are_pending(tmp_path: Path) -> None:
    from dataclasses import replace

    from fdl_cli.store import StoreWriter
    from tests.test_mutation_kills_io import PROBE, _entry, _series, _store

    store = _store(tmp_path / "s.h5", [_entry(step, _series("a", seed=step)) for step in (0, 10, 20)])
    grown = {"probes": {"probe": "c" * 64}, "layers": ["a", "b"]}
    with StoreWriter(store, provenance=grown, probes=[PROBE]) as writer:
        assert writer.growth is not None and writer.growth.layers == ("b",)
        writer.note_file_signatures({0: "1:2"})  # written alone: the store is not grown by a run that stores nothing
    with StoreReader(store) as reader:
        assert reader.provenance["layers"] == ["a"] and reader.pending_series == frozenset()
    stored = {step: _series("a", seed=step) for step in (0, 10, 20)}
    with StoreWriter(store, provenance=grown, probes=[PROBE], invocation={"run": 2}) as writer:
        lacks = frozenset({("probe", "b")})
        assert writer.lacking() == {0: lacks, 10: lacks, 20: lacks}
        with pytest.raises(ValueError, match="step 30: series are added to a stored checkpoint"):
            writer.add(replace(_entry(30, _series("b")), series_only=True))
        writer.add(replace(_entry(10, _series("b", seed=7)), series_only=True))
        writer.flush()
        assert writer.lacking() == {0: lacks, 20: lacks}
    with StoreReader(store) as reader:
        assert reader.provenance["layers"] == ["a", "b"] and reader.pending_series == {("probe", "b")}
        assert reader.steps(layer="a") == [0, 10, 20] and reader.steps(layer="b") == [10]
        assert all(reader.arrays(step, layer="a") == stored[step] for step in (0, 10, 20))
        assert reader.arrays(10, layer="b") == _series("b", seed=7)
        assert reader.arrays(10, layer="b").computed_by == '{"run": 2}'
        assert any("probe/b was added to this store" in warning for warning in reader.warnings)
    with h5py.File(store, "r+") as handle:  # a series of no probe or layer of the store: ignored, with a warning
        handle.attrs["pending_series"] = '[["probe", "b"], ["ghost", "x"]]'
    with StoreReader(store) as reader:
        assert reader.pending_series == {("probe", "b")} and reader.steps(layer="b") == [10]
        assert (f"{store}: its pending_series attribute names ghost/x, not a series of the store's probes and "
                "layers: ignored") in reader.warnings
    with h5py.File(store, "r+") as handle:
        handle.attrs["pending_series"] = "[oops"
    with StoreReader(store) as reader:  # no checkpoint is dropped as damaged for lacking a series
        assert reader.steps(layer="a") == [0, 10, 20] and reader.steps(layer="b") == [10]
        assert any("its pending_series attribute is damaged" in warning for warning in reader.warnings)
    with StoreWriter(store, provenance=grown, probes=[PROBE]) as writer:
        assert sorted(writer.lacking()) == [0, 20]
        for step in (0, 20):
            writer.add(replace(_entry(step, _series("b", seed=step)), series_only=True))
    with h5py.File(store, "r") as handle:
        assert "pending_series" not in handle.attrs  # every checkpoint holds every series
