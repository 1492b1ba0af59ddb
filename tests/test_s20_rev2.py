"""Review of adding a probe or a layer to a stored run (twentieth session, second review).

A layer given before the stored ones was added, and the store then listed the stored layers first: the same
command, run again (or to finish an addition that was stopped, as "run the same command again to resume" said)
was refused as another run. A store midway through an addition, resumed with its old probes or layers alone (the
user gave up adding), was refused saying the probe was "analysed with this run's at each checkpoint", or, for a
layer, with no word of the addition at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import fdl_cli.pipeline
from tests.test_analyze import analysed_copy, analyze, run  # noqa: F401 - `run`, `analysed_copy`: the module's fixtures
from tests.test_s20_add import at_once  # noqa: F401 - a fixture


@pytest.mark.parametrize(("stored", "given", "ordered"), [
    (("2:input",), ("0", "2:input"), ("2:input", "0")),
    (("0", "2"), ("0", "1", "2"), ("0", "2", "1")),
], ids=["before", "between"])
def test_a_layer_given_before_a_stored_one_is_refused_naming_the_order_that_adds_it(
    run: Path, tmp_path: Path, at_once: Any,  # noqa: F811
    stored: tuple[str, ...], given: tuple[str, ...], ordered: tuple[str, ...],
) -> None:
    def layers(names: tuple[str, ...]) -> list[str]:
        return [arg for name in names for arg in ("--layer", name)]

    store = tmp_path / "s.h5"
    assert analyze(run, store, *layers(stored)).code == 0
    on_disk = store.read_bytes()
    refused = analyze(run, store, *layers(given))
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert store.read_bytes() == on_disk
    text = " ".join(refused.stderr.split())
    added = [name for name in given if name not in stored]
    assert (f"fix: to add the layer {added[0]!r} to the store, give the store's layers first, in its order, then the "
            f"new ones: {' '.join(layers(ordered))} (a store keeps its layers in that order") in text
    grown = analyze(run, store, *layers(ordered))
    assert grown.code == 0 and "4 stored checkpoints given the added probe/layer series" in grown.stderr
    again = analyze(run, store, *layers(ordered))  # the command that added it resumes the store it left
    assert again.code == 0 and "0 checkpoints analysed, 4 already in the store" in again.stderr
    at_once(store, *layers(ordered))


def _stopped_at_20(monkeypatch: pytest.MonkeyPatch, run: Path, store: Path, *extra: str) -> None:  # noqa: F811
    """An `fdl analyze` with `extra` on `store` interrupted (Ctrl-C) when it reaches step 20."""
    analyze_one = fdl_cli.pipeline._analyze_one

    def stopped(ctx: Any, ref: Any, *args: Any, **kwargs: Any) -> Any:
        if ref.step == 20:
            raise KeyboardInterrupt
        return analyze_one(ctx, ref, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fdl_cli.pipeline, "_analyze_one", stopped)
        assert analyze(run, store, *extra).code == 130


@pytest.fixture(scope="module")
def stopped_copy(run: Path, analysed_copy: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    """`stopped_copy(to, *extra)`: `to` becomes a copy of the run analysed with --commit-interval 0 and then, with
    `extra` (and --commit-interval 0), stopped at step 20 (`_stopped_at_20`: an addition stopped midway); with no
    `extra`, the analysed store alone. Each store is made once for the module, the first time it is asked for
    (the tests here and in test_s21_add start from the same few), and each test changes its own copy."""
    made: dict[tuple[str, ...], Path] = {}

    def copy(to: Path, *extra: str) -> Path:
        if not extra:
            return analysed_copy(to, "--commit-interval", "0")
        if extra not in made:
            path = analysed_copy(tmp_path_factory.mktemp("stopped") / to.name, "--commit-interval", "0")
            with pytest.MonkeyPatch.context() as patch:
                _stopped_at_20(patch, run, path, *extra, "--commit-interval", "0")
            made[extra] = path
        shutil.copyfile(made[extra], to)
        return to

    return copy


PROBE_SAID = ("the store also holds the probe 'test', added to 2 of its 4 checkpoints by an `fdl analyze` that "
              "stopped before it was done (the same command with it adds it to the other 2): give it too, --probe "
              "test=PATH (sha256 ")
LAYER_SAID = ("the store also holds the layer '0', added to 2 of its 4 checkpoints by an `fdl analyze` that stopped "
              "before it was done (the same command with it adds it to the other 2): give it too, with the store's "
              "layers in its order, --layer 2:input --layer 0, to resume")


@pytest.mark.parametrize(("extra", "said"), [
    (("--probe", "test=TEST"), (PROBE_SAID,)),
    (("--layer", "2:input", "--layer", "0"), (LAYER_SAID,)),
    (("--probe", "test=TEST", "--layer", "2:input", "--layer", "0"), (PROBE_SAID, LAYER_SAID)),
], ids=["probe", "layer", "both"])
def test_a_store_midway_through_an_addition_resumed_without_it_says_how_far_it_got_and_how_to_finish(
    run: Path, tmp_path: Path, at_once: Any, stopped_copy: Any,  # noqa: F811
    extra: tuple[str, ...], said: tuple[str, ...],
) -> None:
    extra = tuple(arg.replace("TEST", str(run / "test.npz")) for arg in extra)
    store = stopped_copy(tmp_path / "s.h5", *extra)
    on_disk = store.read_bytes()
    gave_up = analyze(run, store)  # the store's probes and layers before the addition
    assert gave_up.code == 1 and "Traceback" not in gave_up.stderr
    assert store.read_bytes() == on_disk
    text = " ".join(gave_up.stderr.split())
    assert all(part in text for part in said) and "analysed with this run's at each checkpoint" not in text
    assert "else pass --overwrite to replace it, or another --out to keep both" in text
    assert analyze(run, store, *extra).code == 0
    at_once(store, *extra)


def test_adding_a_layer_to_a_store_midway_through_adding_a_probe_says_it_adds_both(
    run: Path, tmp_path: Path, at_once: Any, stopped_copy: Any  # noqa: F811
) -> None:
    test = ("--probe", f"test={run / 'test.npz'}")
    store = stopped_copy(tmp_path / "s.h5", *test)
    both = (*test, "--layer", "2:input", "--layer", "0")
    done = analyze(run, store, *both)
    assert done.code == 0, done.stderr
    assert (f"note: adding layer '0' to the 4 stored checkpoints of {store} (analysing only the series they lack), "
            "and test/2:input to 2 of them, which lack it (an earlier `fdl analyze` that added it stopped before it "
            "was done)") in " ".join(done.stderr.split())
    at_once(store, *both)
