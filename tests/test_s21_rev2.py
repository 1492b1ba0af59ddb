"""Session 21, review of the second wave: what broke under odd stores and names.

- `fdl report` of a store whose provenance's probe_order was hand-edited to hold a list raised TypeError (the
  header's probe line), and a name given twice there was listed twice.
- The report's header left out the factory's `model_kwargs`: runs of mlp(hidden=8) and mlp(hidden=512) read alike.
- `compare --plots` of layers `fc:input` and `fc_input` into one folder wrote over each other (both clean to
  `_train-fc_input`; a report of the store tells them apart with `_I`).
- compare named `loss` `loss (MSE(logits, one-hot))` when only one run's probe was a classification one.
- compare's `--threshold DLR_TIE=...` got no did-you-mean, as classify's thresholds do; classify's `overlap=...`
  got `did you mean overlap_moved?` and a fix to copy, where overlap_static is as close.
- A verdict whose last matched step was left out (constant outputs) called the step before "the last with both
  D_LR", where the step left out has both (1.0 by the rule).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from fdl_cli import report
from fdl_cli.errors import FdlError
from fdl_cli.regimes import Thresholds
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store


def _edit_provenance(store: Path, **changes: object) -> None:
    with h5py.File(store, "r+") as file:
        provenance = json.loads(file.attrs["provenance"])
        provenance.update(changes)
        file.attrs["provenance"] = json.dumps(provenance)


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_a_hand_edited_probe_order_and_model_kwargs_in_the_report_header(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5")
    _edit_provenance(store, probe_order=[["x"], "train", "train"], probes={"train": "a" * 64},
                     model_kwargs={"hidden": 512, "act": "gelu"})
    done = fdl_in_process("report", store)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert f"probe: train (sha256 {'a' * 64})" in lines  # once
    assert lines[:2] == ["model: model.py:build", "model_kwargs: act gelu, hidden 512"]
    page = tmp_path / "run.html"
    assert fdl_in_process("report", store, "--html", page).returncode == 0
    assert "model_kwargs: act gelu, hidden 512" in page.read_text(encoding="utf-8")


def test_a_store_without_model_kwargs_has_no_such_line(tmp_path: Path) -> None:
    done = fdl_in_process("report", make_store(tmp_path / "run.h5"))
    assert done.returncode == 0 and "model_kwargs" not in done.stderr


def test_the_loss_is_named_one_hot_only_when_both_probes_are_classification_ones(tmp_path: Path) -> None:
    regression = make_store(tmp_path / "r.h5")
    classes = make_store(tmp_path / "c.h5", seed=3, scalars={step: {**values, "accuracy": 0.5, "loss": 2.0}
                                                            for step, values in SCALARS.items()})
    mixed = report.difference_lines(report.compare_runs(report.load_run(regression), report.load_run(classes),
                                                        overlap=False))
    assert any(line.startswith("loss: differs at 3 steps") for line in mixed), mixed
    both = report.difference_lines(report.compare_runs(report.load_run(classes), report.load_run(classes),
                                                       overlap=False))
    assert not any(line.startswith("loss") for line in both)  # no difference: nothing said
    other = make_store(tmp_path / "c2.h5", seed=4, scalars={step: {**values, "accuracy": 0.5, "loss": 3.0}
                                                           for step, values in SCALARS.items()})
    lines = report.difference_lines(report.compare_runs(report.load_run(classes), report.load_run(other),
                                                        overlap=False))
    assert any(line.startswith("loss (MSE(logits, one-hot)): differs at 3 steps") for line in lines), lines


@pytest.mark.parametrize(("given", "fix"), [
    ("DLR_TIE=0.002", "pass --threshold dlr_tie=0.002"),
    ("dlr-tie=0.002", "pass --threshold dlr_tie=0.002"),
    ("DLR_TIE=abc", "pass --threshold dlr_tie=VALUE"),  # never a bad value in the fix to copy
])
def test_a_misspelt_compare_threshold_gets_the_one_meant(given: str, fix: str) -> None:
    with pytest.raises(FdlError) as caught:
        report.compare_thresholds([given])
    assert f"unknown compare threshold {given.partition('=')[0]!r} (did you mean dlr_tie?)" in caught.value.what
    assert caught.value.fix.startswith(fix)


def test_a_threshold_name_as_close_to_two_names_both(tmp_path: Path) -> None:
    with pytest.raises(FdlError) as caught:
        Thresholds.with_overrides(["overlap=0.5"])
    assert "(did you mean overlap_moved or overlap_static?)" in caught.value.what
    assert caught.value.fix == "pass --threshold NAME=VALUE with one of those names"
    with pytest.raises(FdlError) as caught:
        Thresholds.with_overrides(["CKA_STATIC=0.5"])
    assert "(did you mean cka_static?)" in caught.value.what and caught.value.fix == "pass --threshold cka_static=0.5"


def test_a_verdict_before_a_step_left_out_says_the_last_measured(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")  # D_LR 0.9, 0.5, 0.125
    scalars = {step: {**values, "d_lr": [0.9, 0.6, 1.0][index], "output_rank": 0 if step == 200 else 2}
               for index, (step, values) in enumerate(SCALARS.items())}
    b = make_store(tmp_path / "b.h5", seed=3, scalars=scalars)
    verdict = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).verdict
    assert verdict.startswith("Run A is richer than run B (lower D_LR) from step 100 on (step 100, the last with "
                              "both D_LR measured: D_LR A 0.5000, B 0.6000"), verdict
    assert "Left out of this verdict: step 200, where run B's outputs are constant" in verdict


def test_inspect_counts_thousands_of_tensors_as_it_counts_their_values(tmp_path: Path) -> None:
    """`total: 6,000 values in 3000 tensors`: the two numbers of one line written alike."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "step_5.safetensors"
    save_file({f"layers.{index}.weight": torch.zeros(2) for index in range(1500)}, str(path))
    done = fdl_in_process("inspect", path)
    assert done.returncode == 0 and "note: no model was given" in done.stderr
    assert "total: 3,000 values in 1,500 tensors (" in done.stderr
