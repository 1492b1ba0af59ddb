"""Mutation testing of the twenty-seventh session's code (h_s28_mut): each test here kills a mutant that the
existing tests let live, by the output a user sees (classify's lines and --json evidence, a message's names)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fdl_cli.errors import first_names, shown_name
from fdl_cli.regimes import classify_run, describe, probe_chance, reference_fit
from tests.test_s27_left import one_torch_thread  # noqa: F401  # torch on one thread for the test, as there

# ------------------------------------------------------------------ chance: the probe's, or 1/C whole


@pytest.mark.parametrize("recorded", [{"chance_accuracy": 0.8}, {"label_entropy": 0.5}])
def test_a_store_recording_one_of_the_probe_s_chance_values_reads_both_as_one_over_c(recorded) -> None:
    """A store whose probe keeps one of the two (the other ignored as out of range, with a warning): classify reads
    the accuracy and the cross-entropy against 1/C and log C, both named so, not a mix (or a crash on the missing
    one)."""
    fit = reference_fit({"accuracy": 0.9, "n_outputs": 4, "cross_entropy": 0.3}, recorded)
    assert fit is not None
    assert fit[1] == "accuracy 0.9000, chance 1/C = 0.2500, cross-entropy 0.300 against log C = 1.386"
    assert fit[0] == pytest.approx(min((0.9 - 0.25) / 0.75, 1 - 0.3 / math.log(4)))


@pytest.mark.parametrize("chance", [{"chance_accuracy": 0.5, "label_entropy": 0.0},
                                    {"chance_accuracy": 1.0, "label_entropy": 0.5}])
def test_a_chance_of_one_or_an_entropy_of_zero_gives_no_fit_rather_than_a_division_by_zero(chance) -> None:
    """Labels of one class have chance 1 and entropy 0; a store that says one without the other (edited, damaged;
    the store reads each in its range alone) contradicts itself: no line read against it, and no
    ZeroDivisionError out of classify."""
    assert reference_fit({"accuracy": 0.9, "n_outputs": 4, "cross_entropy": 0.3}, chance) is None


def _mf_run(first_accuracy: float, chance: dict[str, float]) -> list[str]:
    base = {"n_outputs": 4, "n_features": 64, "rank": 64}
    records = [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 3, "accuracy": 0.5},
               {**base, "step": 10, "cka_init": 0.5, "overlap_init": 0.4, "k95_utility": 3,
                "accuracy": first_accuracy}]
    verdict = classify_run(records)
    assert verdict.regime == "MF" and verdict.evidence["first_mf_step"] == 10
    verdict.evidence.update(chance)
    return describe(verdict, records)


NEAR = "the network's function is still nearly constant"


def test_the_near_chance_line_stops_half_way_from_a_high_chance_to_one() -> None:
    """Chance 0.8 (a probe of 80 % one class): 1.5 × chance is past 1, so "nearly constant" is bounded by half way
    to a perfect fit, 0.9; an accuracy of 0.95 is no longer near chance."""
    chance = {"chance_accuracy": 0.8, "label_entropy": 0.5}
    assert not any(NEAR in line for line in _mf_run(0.95, chance))
    near = [line for line in _mf_run(0.85, chance) if NEAR in line]
    assert len(near) == 1 and "accuracy is 0.8500 (chance 0.8000: the largest class's share of the probe's labels)" \
        in near[0], near


def test_the_near_chance_line_takes_in_one_and_a_half_times_chance_itself() -> None:
    """1.5/C = 0.375 of 4 classes: an accuracy of exactly that is within the factor (`NEAR_CHANCE`), said so."""
    near = [line for line in _mf_run(0.375, {}) if NEAR in line]
    assert len(near) == 1 and "accuracy is 0.3750 (chance 1/C = 0.2500)" in near[0], near


def test_a_probe_of_one_class_has_no_near_chance_line_and_keeps_its_zero_entropy() -> None:
    """One class: chance 1 and entropy 0. A constant fits it: nothing to read an accuracy against (no "nearly
    constant" line at chance 1.000), and classify --json's evidence keeps label_entropy 0.0 beside it."""
    chance = probe_chance(SimpleNamespace(chance_accuracy=1.0, label_entropy=0.0))
    assert chance == {"chance_accuracy": 1.0, "label_entropy": 0.0}
    assert not any(NEAR in line for line in _mf_run(1.0, chance))


def test_the_labels_entropy_of_one_class_is_stored_and_shown_as_zero_not_minus_zero() -> None:
    from fdl_cli.probes import label_chance

    probe = SimpleNamespace(task="classes", y=np.zeros(40, dtype=np.int64))
    share, entropy = label_chance(probe)  # type: ignore[arg-type,misc]
    assert share == 1.0 and json.dumps({"label_entropy": entropy}) == '{"label_entropy": 0.0}'


def test_a_class_no_label_holds_takes_no_share_of_the_labels_entropy() -> None:
    """Labels 0 and 2 (no 1): the entropy of two equal classes, log 2, not NaN from 0·log 0 (which the store then
    ignored with a warning, and classify read 1/C)."""
    from fdl_cli.probes import label_chance

    share, entropy = label_chance(SimpleNamespace(task="classes", y=np.array([0, 0, 2, 2])))  # type: ignore[arg-type,misc]
    assert share == 0.5 and entropy == pytest.approx(math.log(2))


# ------------------------------------------------------------------ names from someone else's file


def test_a_name_of_exactly_the_shown_length_is_shown_whole_without_a_count() -> None:
    assert shown_name("w" * 80) == "w" * 80
    assert shown_name("w" * 81) == "w" * 80 + "… (81 characters)"


def test_first_names_says_that_more_follow() -> None:
    """The missing or unexpected keys of a load: "a, b, ..." when more follow the first few, as `first_few` says."""
    assert first_names(["model.a", "model.b", "model.c"], 2) == "model.a, model.b, ..."
    assert first_names(["model.a", "model.b"], 2) == "model.a, model.b"


def _coefficient_run(reference_accuracy: float, chance: dict[str, float], entropy: float | None = None) -> list[str]:
    base = {"n_outputs": 4, "n_features": 64, "rank": 64, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 3}
    records = [{**base, "step": 0, "accuracy": reference_accuracy, "cross_entropy": entropy},
               {**base, "step": 10, "accuracy": 0.99}]
    verdict = classify_run(records)
    assert verdict.regime == "coefficient"
    verdict.evidence.update(chance)
    return describe(verdict, records)


FITS = "the reference checkpoint (step 0) already fits the probe"


PROBE_S = {"chance_accuracy": 0.8, "label_entropy": 0.5}


@pytest.mark.parametrize(("accuracy", "chance", "entropy", "fits"), [
    (0.61, {}, None, False),  # (0.61 − 1/4) / (1 − 1/4) = 0.48: short of half way
    (0.64, {}, None, True),  # 0.52
    (0.88, PROBE_S, None, False),  # (0.88 − 0.8) / 0.2 = 0.4
    (0.92, PROBE_S, None, True),  # 0.6
    (0.92, PROBE_S, 0.4, False),  # the cross-entropy's share, 1 − 0.4 / 0.5 = 0.2, is the lesser
    (0.92, PROBE_S, 0.2, True),  # 0.6 both
    (0.9, {}, 1.3, False),  # 1 − 1.3 / log 4 = 0.06: the majority class guessed everywhere, as session 14's
])
def test_a_reference_already_fits_from_half_way_between_chance_and_one(accuracy, chance, entropy, fits) -> None:
    """The "already fits the probe" line of a coefficient verdict: from half way between chance (1/C, or the
    probe's own where the store records it) and a perfect fit, by the lesser of the accuracy's share and the
    cross-entropy's (against log C, or the labels' entropy), and not before."""
    said = [line for line in _coefficient_run(accuracy, chance, entropy) if FITS in line]
    assert len(said) == int(fits), said
    if fits:
        assert f"(accuracy {accuracy:.4f}, chance " in said[0]


# ------------------------------------------------------------------ the store's chance attributes, as classify reads them


@pytest.fixture(scope="module")
def one_class_store(tmp_path_factory) -> Path:
    """A store of a probe whose labels are all class 0: chance_accuracy 1.0, label_entropy 0.0 (both in range)."""
    import torch

    from tests.test_analyze import fdl
    from tests.test_io_fixes import MODEL, SMALL
    from tests.tiny_models import mlp

    folder = tmp_path_factory.mktemp("one_class")
    run = folder / "run"
    run.mkdir()
    for step in (0, 1):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    probe = folder / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32), y=np.zeros(24, np.int64))
    out = folder / "s.h5"
    done = fdl("analyze", run, "--model", MODEL, "--probe", probe, "--out", out, *SMALL)
    assert done.code == 0, done.stderr
    return out


def _classify(store: Path, tmp_path: Path, **attrs: object) -> tuple[dict, str]:
    import shutil

    import h5py

    from tests.test_analyze import fdl

    copy = tmp_path / "copy.h5"
    shutil.copy(store, copy)
    with h5py.File(copy, "r+") as opened:
        opened["probes/probe"].attrs.update(attrs)
    done = fdl("classify", copy, "--json")
    assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)["evidence"], done.stderr


def test_a_probe_of_one_class_is_stored_with_chance_one_and_entropy_zero_and_read_back_quietly(
        one_class_store, tmp_path) -> None:
    evidence, said = _classify(one_class_store, tmp_path)
    assert (evidence["chance_accuracy"], evidence["label_entropy"]) == (1.0, 0.0)
    assert math.copysign(1.0, evidence["label_entropy"]) == 1.0  # 0.0, not -0.0
    assert "not a number in" not in said, said


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("chance_accuracy", 1.5, "1.5, not a number in [0, 1]"),
    ("chance_accuracy", True, "True, not a number in [0, 1]"),
    ("label_entropy", math.inf, "inf, not a number in [0, inf]"),
    ("label_entropy", -0.5, "-0.5, not a number in [0, inf]"),
])
def test_a_chance_attribute_out_of_its_range_is_ignored_with_a_warning(one_class_store, tmp_path, name, value,
                                                                          shown) -> None:
    evidence, said = _classify(one_class_store, tmp_path, **{name: value})
    assert f"probe /probes/probe has {name} = {shown}: ignored" in said, said
    assert name not in evidence


# ------------------------------------------------------------------ a layer too narrow for EF


@pytest.mark.parametrize(("width", "narrow"), [(11, True), (12, False)])
def test_a_layer_of_exactly_c_plus_mf_extra_units_is_said_too_narrow(width, narrow) -> None:
    """p ≤ C + mf_extra: 11 units before 10 outputs (mf_extra 1) cannot read EF (k95_utility ≤ p = 11); 12 can."""
    base = {"n_outputs": 10, "n_features": width, "rank": width, "k95_utility": 3}
    records = [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0},
               {**base, "step": 10, "cka_init": 1.0, "overlap_init": 1.0}]
    verdict = classify_run(records)
    line = "k95_utility ≤ p = 11 ≤ C + mf_extra = 11: the layer is too narrow for the rule to find EF"
    assert verdict.as_json()["evidence"].get("narrow_layer") == (line if narrow else None)
    assert (line in describe(verdict, records)) == narrow


# ------------------------------------------------------------------ numpy's dsyrk: only where every BLAS runs one thread


@pytest.mark.usefixtures("one_torch_thread")
def test_a_zero_openblas_thread_count_is_passed_over_as_openblas_does(monkeypatch) -> None:
    """OPENBLAS_NUM_THREADS=0 is no count (OpenBLAS reads the next variable set to a positive integer)."""
    import sys

    import torch

    from fdl_cli import moments

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # the environment decides
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert moments._numpy_syrk(torch.device("cpu")) is True


@pytest.mark.parametrize(("libraries", "numpy"), [
    ([("blas", 1), ("blas", 4)], False),  # one BLAS of several on every core: numpy's may be that one
    ([("blas", 1), ("blas", 1), ("openmp", 4)], True),  # torch's OpenMP threads are torch's count, not a BLAS's
])
@pytest.mark.usefixtures("one_torch_thread")
def test_threadpoolctl_s_blas_libraries_all_run_one_thread_for_numpy_s_dsyrk(monkeypatch, libraries, numpy) -> None:
    import sys

    import torch

    from fdl_cli import moments

    controller = SimpleNamespace(lib_controllers=[SimpleNamespace(user_api=api, num_threads=threads)
                                                  for api, threads in libraries])
    monkeypatch.setitem(sys.modules, "threadpoolctl", SimpleNamespace())
    monkeypatch.setattr(moments, "_blas_controller", lambda _module: controller)
    assert moments._numpy_syrk(torch.device("cpu")) is numpy


# ------------------------------------------------------------------ a stepless file's note names a copy only when it is one


def test_a_stepless_file_whose_sampled_bytes_match_a_checkpoint_but_whose_weights_differ_is_no_copy(tmp_path) -> None:
    """The fingerprint samples each tensor's first and last bytes: a best.pt that differs from step_1.pt in the
    middle of a tensor has its fingerprint, but not its weights. Its note is the usual one, not "the same weights
    as step_1.pt", which would tell the user that best.pt was analysed there."""
    import torch

    from fdl_cli.checkpoints import discover_checkpoints

    weights = torch.arange(10_000, dtype=torch.float32)
    torch.save({"w": weights}, tmp_path / "step_1.pt")
    changed = weights.clone()
    changed[5_000] = -1.0
    torch.save({"w": changed}, tmp_path / "best.pt")
    torch.save({"w": weights.clone()}, tmp_path / "last.pt")  # the same weights: named as a copy
    notes = discover_checkpoints([tmp_path]).notes
    assert "skipped last.pt: no step of its own; the same weights as step_1.pt (step 1), analysed there" in notes
    best = [note for note in notes if note.startswith("skipped best.pt")]
    assert len(best) == 1 and "same weights" not in best[0], notes


def test_a_stepless_file_without_the_weights_entry_leaves_the_next_one_s_copy_note(tmp_path) -> None:
    """--weights ema: a_best.pt holds the model's weights alone (no ema: the comparison cannot be made, its note stays
    as it was); b_last.pt, after it, holds both as step_1.pt does, and is still named as its copy."""
    import torch

    from fdl_cli.checkpoints import discover_checkpoints

    model, ema = {"w": torch.arange(8.0)}, {"w": torch.arange(8.0) / 2}
    torch.save({"model": model, "ema": ema}, tmp_path / "step_1.pt")
    torch.save({"model": model}, tmp_path / "a_best.pt")
    torch.save({"model": model, "ema": ema}, tmp_path / "b_last.pt")
    notes = discover_checkpoints([tmp_path], weights="ema").notes
    assert "skipped b_last.pt: no step of its own; the same weights as step_1.pt (step 1), analysed there" in notes, notes
    assert any(note.startswith("skipped a_best.pt") and "same weights" not in note for note in notes), notes


# ------------------------------------------------------------------ --trust-pickle's placeholders never hide weights

_SAVES = """\
import sys

import torch


class Config(dict):  # a training script's own classes, pickled as __main__.Config and __main__.History
    pass


class History(list):
    pass


deep = torch.ones(3, 4)
for _ in range(20):
    deep = [deep]
extra = {  # by kind
    "dict": Config(ema=torch.ones(3, 4), lr=0.1),  # the tensor before a number
    "list": History([torch.ones(3, 4), 0.1]),  # APPENDS
    "one": History([torch.ones(3, 4)]),  # a single APPEND
    "deep": Config(nested=deep),  # deeper than fdl looks
    "inner": Config(optimizer=Config(lr=0.1)),  # a placeholder inside a placeholder: no weights
    "two": [Config(lr=0.1), Config(lr=0.2)],
}
for kind, value in extra.items():
    torch.save({"model": {"w": torch.ones(3, 4)}, "extra": value, "step": 5}, f"{sys.argv[1]}/{kind}.pt")
"""


@pytest.fixture(scope="module")
def saved_by_script(tmp_path_factory) -> Path:
    """The checkpoints a script run as `python train.py` saves, one of each kind: its classes are __main__'s."""
    import sys

    from tests import warm

    folder = tmp_path_factory.mktemp("saved")
    (folder / "train.py").write_text(_SAVES)
    warm.run([sys.executable, str(folder / "train.py"), str(folder)], timeout=120).check_returncode()
    return folder


@pytest.mark.parametrize(("kind", "placeholder"), [
    ("dict", False), ("list", False), ("one", False), ("deep", False), ("inner", True), ("two", True)])
def test_trust_pickle_reads_a_class_not_importable_here_as_a_placeholder_only_where_it_holds_no_weights(
        saved_by_script, kind, placeholder) -> None:
    """A training script's own class (`python train.py` pickles it as __main__.NAME): read as a placeholder, and
    said once, where it holds no tensor (a placeholder inside it holds none either); where it holds one, among its
    items, before a number or deeper than fdl looks, the error says the class is needed (no weights dropped)."""
    from tests.cli_run import fdl_in_process

    path = saved_by_script / f"{kind}.pt"
    done = fdl_in_process("inspect", "--trust-pickle", path)
    said = " ".join(done.stderr.split()) + " " + " ".join(done.stdout.split())
    if placeholder:
        assert done.returncode == 0, said
        assert "holds objects of classes that cannot be imported here (__main__.Config; a script run" in said, said
        assert "total: 12 values in 1 tensor" in said, said
    else:
        assert done.returncode == 1, said
        assert f"error: cannot unpickle {path}: it holds an object whose class cannot be imported here" in said, said


# ------------------------------------------------------------------ the memory check counts the outputs' sums by task


def test_the_memory_check_counts_the_targets_sums_of_a_class_label_probe() -> None:
    """With class labels the measures copy Σŷyᵀ and Σyyᵀ beside Σŷŷᵀ: 3 C² float64, as the refusal lists them."""
    from fdl_cli import resources

    needs = resources.run_needs([resources.Pass("probe", {"l": 8}, 100, 16, None, 1000, "classes")])
    copies = [need for need in needs if "the measures' copies" in need.what]
    assert [(need.what, need.bytes) for need in copies] == [
        ("probe/l: the measures' copies of the outputs' C×C sums of products (the predictions with themselves and "
         "with the targets, the targets with themselves)", 8 * 3 * 1000 * 1000)]
