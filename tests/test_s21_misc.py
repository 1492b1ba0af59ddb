"""Small gaps the twenty-first session closed: a report's figures of several series name their series in the
drawn figure, compare's note on devices reads the history of the series compared, and a threshold of the other
command is named as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_analyze import analyze, fdl, run  # noqa: F401 - `run` is the module's fixture
from tests.test_report import make_store
from tests.test_s20_toml import _said


def _drawn_titles(figure: object) -> list[str]:
    """The figure's own title and its panels' titles, as drawn in its PNG and SVG."""
    suptitle = getattr(figure, "_suptitle", None)
    return ([suptitle.get_text()] if suptitle is not None else []) + [
        ax.get_title() for ax in figure.axes if ax.get_title()]  # type: ignore[attr-defined]


def test_a_reports_figures_of_several_series_name_the_series_in_the_drawn_figure(tmp_path: Path) -> None:
    """The HTML titles and the file names carried `train/fc1`, the PNG and SVG did not: a figure opened alone
    did not say which series it drew. One series: the figures stay as they were (no series to tell apart)."""
    from fdl_cli import report as rep
    from fdl_cli.figures import run_figures

    figures = run_figures(rep.load_run(make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))))
    assert {stem for stem, _, _ in figures} == {f"{kind}_train-{layer}" for layer in ("fc1", "fc2") for kind in
                                                 ("triptych", "trajectories", "spectrum", "eigenfunctions")}
    for stem, title, figure in figures:
        label = "train/" + stem.rpartition("-")[2]
        assert title.endswith(f" ({label})")
        drawn = _drawn_titles(figure)
        assert sum(label in text for text in drawn) == 1, (stem, drawn)
        assert not any(("fc2" if label.endswith("fc1") else "fc1") in text for text in drawn)
    trajectories = dict((stem, figure) for stem, _, figure in figures)["trajectories_train-fc2"]
    assert trajectories.axes[0].get_title() == "feature change over training (train/fc2)"
    triptych = dict((stem, figure) for stem, _, figure in figures)["triptych_train-fc1"]
    assert triptych._suptitle.get_text() == "train/fc1"  # over the three panels, whose titles stay theirs

    alone = run_figures(rep.load_run(make_store(tmp_path / "one.h5")))
    assert len(alone) == 4  # a loop over no figures would pass
    for stem, _, figure in alone:
        assert not any("train/fc1" in text for text in _drawn_titles(figure)), stem


def test_compare_notes_the_device_of_a_series_added_to_a_store(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - `run` is the fixture
) -> None:
    """A probe added on a GPU to a store analysed on the CPU, compared with a store analysed on the CPU: compare
    read the device of each checkpoint, not of the series added to it, and said nothing, though the added probe's
    numbers are the GPU's (the report's computed: lines say so). The store's own probe stays the CPU's."""
    import json

    import fdl_cli.pipeline

    gpu = "cuda:0 (NVIDIA H200)"
    test = ("--probe", f"test={run / 'test.npz'}", "--commit-interval", "0")
    added, whole = tmp_path / "added.h5", tmp_path / "whole.h5"
    assert analyze(run, added, "--commit-interval", "0").code == 0
    assert analyze(run, whole, *test).code == 0
    monkeypatch.setattr(fdl_cli.pipeline, "describe_device", lambda device: gpu)
    assert analyze(run, added, *test).code == 0

    def notes(*argv: object) -> list[str]:
        done = fdl("compare", *map(str, argv), "--json")
        assert done.code == 0, done.stderr
        return [note for note in json.loads(done.stdout)["notes"] if "different devices" in note]

    assert notes(added, whole, "--probe", "test") == [
        f"the runs were computed on different devices (A: {gpu}; B: cpu): the model's forward pass rounds differently "
        "on each, so the smallest differences between the runs may be the devices', not training's (analyse both on "
        "one device to compare training alone)"]
    assert notes(whole, added, "--probe", "test")[0].startswith(f"the runs were computed on different devices "
                                                                 f"(A: cpu; B: {gpu})")
    assert notes(added, whole, "--probe", "probe") == []


@pytest.mark.parametrize("given", ["dlr_tie", "DLR-TIE"])
def test_classify_says_dlr_tie_is_a_threshold_of_compare(tmp_path: Path, given: str) -> None:
    """classify --threshold dlr_tie=... said only "unknown threshold 'dlr_tie'" and listed its own: the user
    who read dlr_tie in compare's output was not told that it is compare's."""
    done = fdl("classify", make_store(tmp_path / "run.h5"), "--threshold", f"{given}=0.002")
    assert done.code == 1 and done.stdout == "" and "Traceback" not in done.stderr
    said = _said(done)
    assert f"error: unknown threshold {given!r}: dlr_tie is a threshold of fdl compare, not of fdl classify" in said
    assert "got: known thresholds: cka_static, final_window, mf_extra, overlap_moved, overlap_static" in said
    assert ("fix: pass it to fdl compare (--threshold dlr_tie=0.002); fdl classify takes --threshold NAME=VALUE "
            "with one of those names") in said


@pytest.mark.parametrize(("given", "value"), [("mf_extra=2", "2"), ("Final-Window=x", "VALUE")])
def test_compare_says_a_threshold_of_classify_is_classifys(tmp_path: Path, given: str, value: str) -> None:
    """As classify names compare's: compare named classify's thresholds only in general ("the thresholds of the
    regimes are fdl classify's"), not the one given. The movement thresholds (cka_static, ...) are compare's too;
    the regime's mf_extra and final_window are classify's alone."""
    store = make_store(tmp_path / "run.h5")
    done = fdl("compare", store, store, "--threshold", given)
    assert done.code == 1 and done.stdout == "" and "Traceback" not in done.stderr
    said = _said(done)
    name = given.partition("=")[0]
    meant = name.casefold().replace("-", "_")
    assert (f"error: unknown compare threshold {name!r}: {meant} is a threshold of fdl classify, not of fdl "
            "compare") in said
    assert (f"fix: pass it to fdl classify (--threshold {meant}={value}); fdl compare takes --threshold NAME=VALUE "
            "with one of those names") in said
