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

# ------------------------------------------------------------------ chance: the probe's, or 1/C whole


@pytest.mark.parametrize("recorded", [{"chance_accuracy": 0.8}, {"label_entropy": 0.5}])
def test_a_store_recording_one_of_the_probe_s_chance_values_reads_both_as_one_over_c(recorded) -> None:
    """A store whose probe keeps one of the two (the other ignored as out of range, with a warning): classify reads
    the accuracy and the cross-entropy against 1/C and log C, both named so, not a mix (or a crash on the missing
    one)."""
    fit = reference_fit({"accuracy": 0.9, "n_outputs": 4, "cross_entropy": 0.3}, recorded)
    assert fit is not None
    assert fit[1] == "accuracy 0.900, chance 1/C = 0.250, cross-entropy 0.300 against log C = 1.386"
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
    assert len(near) == 1 and "accuracy is 0.850 (chance 0.800: the largest class's share of the probe's labels)" \
        in near[0], near


def test_the_near_chance_line_takes_in_one_and_a_half_times_chance_itself() -> None:
    """1.5/C = 0.375 of 4 classes: an accuracy of exactly that is within the factor (`NEAR_CHANCE`), said so."""
    near = [line for line in _mf_run(0.375, {}) if NEAR in line]
    assert len(near) == 1 and "accuracy is 0.375 (chance 1/C = 0.250)" in near[0], near


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
        assert f"(accuracy {accuracy:.3f}, chance " in said[0]


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


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_zero_openblas_thread_count_is_passed_over_as_openblas_does(monkeypatch, one_torch_thread) -> None:
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
def test_threadpoolctl_s_blas_libraries_all_run_one_thread_for_numpy_s_dsyrk(monkeypatch, one_torch_thread, libraries,
                                                                               numpy) -> None:
    import sys

    import torch

    from fdl_cli import moments

    controller = SimpleNamespace(lib_controllers=[SimpleNamespace(user_api=api, num_threads=threads)
                                                  for api, threads in libraries])
    monkeypatch.setitem(sys.modules, "threadpoolctl", SimpleNamespace())
    monkeypatch.setattr(moments, "_blas_controller", lambda _module: controller)
    assert moments._numpy_syrk(torch.device("cpu")) is numpy
