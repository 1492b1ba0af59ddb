"""Session 21 review: what the reading commands say of targets and outputs that carry no energy, and the fix
for a stored layer left out on resume.

- All-zero float targets were recorded as float 0/1 targets, so report, classify, compare and export said the
  0/1 caveat ("multi-label ..., loss and r2 compare the logit with 0/1") where analyze warned that they carry
  no energy (their quality 0/0).
- A network whose outputs are constant over the probe (a zero head) has D_LR 1.0 by its degenerate rule:
  compare called the other run "richer ... 65% lower" on its strength, and analyze said nothing.
- A store of layers [2:input, 0] resumed with `--layer 2:input` alone was told only "--overwrite / another
  --out", where a left-out probe is told to give it too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_s19_reg import CAVEAT, _multi_hot
from tests.tiny_models import mlp

MODEL = "tests.tiny_models:mlp"


def _checkpoints(folder: Path, *, head: str = "trained", steps: int = 4, seed: int = 0, flat_steps: int = 99) -> Path:
    """`steps` mlp checkpoints; head "zero": a zero last layer (outputs all 0), "constant": a zero weight
    and a bias (outputs the same in every row), at the first `flat_steps` steps (a trained head after)."""
    folder.mkdir()
    for step in range(steps):
        model = mlp(4, 8, 3, seed=seed + step)
        if head != "trained" and step < flat_steps:
            with torch.no_grad():
                model[2].weight.zero_()
                model[2].bias.copy_(torch.tensor([1.0, -2.0, 0.5]) if head == "constant" else torch.zeros(3))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    return folder


def _probe(path: Path, y: np.ndarray) -> Path:
    np.savez(path, x=np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), y=y)
    return path


def _analyze(checkpoints: Path, probe: Path, out: Path, *extra: str):
    return fdl_in_process("analyze", checkpoints, "--model", MODEL, "--probe", probe, "-o", out, *extra)


# ------------------------------------------------------------------ a stored layer left out on resume


def test_a_stored_layer_left_out_on_resume_is_named_with_the_layer_list_that_resumes(tmp_path: Path) -> None:
    checkpoints = _checkpoints(tmp_path / "ck", steps=2)
    probe = _probe(tmp_path / "probe.npz", np.arange(50) % 3)
    store = tmp_path / "run.h5"
    done = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert done.returncode == 0, done.stderr
    before = store.read_bytes()
    resumed = _analyze(checkpoints, probe, store, "--layer", "2:input")
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert ("fix: the store also holds the layer '0', at every checkpoint: give it too, with the store's layers in "
            "its order, --layer 2:input --layer 0, to resume; else pass --overwrite to replace it, or another --out "
            "to keep both") in resumed.stderr
    other = _analyze(checkpoints, probe, store, "--layer", "0", "--top-k", "5")
    assert other.returncode == 1
    assert ("the store also holds the layer '2:input', at every checkpoint: give it too, with the store's layers in "
            "its order, --layer 2:input --layer 0 (the other differences above remain: options.top_k)") in other.stderr
    assert store.read_bytes() == before  # nothing stored is lost
    again = _analyze(checkpoints, probe, store, "--layer", "2:input", "--layer", "0")
    assert again.returncode == 0, again.stderr  # what the fix names resumes


# ------------------------------------------------------------------ targets that carry no energy


def _said(done) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


NO_ENERGY = ("probe 'probe' holds targets that carry no energy (all 0): the quality Q*, Π* is 0/0, not a "
             "measurement, so pi_star_C and k90/k95/k99_quality are null at every checkpoint (and r2, of a "
             "regression); the spectrum, the utility, D_LR, CKA, the overlaps and the regime do not read the targets")


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_all_zero_float_targets_are_said_to_carry_no_energy_not_to_be_0_1_targets(tmp_path: Path) -> None:
    probe = _probe(tmp_path / "zero.npz", np.zeros((50, 3), np.float32))
    run_a, run_b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert _analyze(_checkpoints(tmp_path / "ck"), probe, run_a).returncode == 0
    assert _analyze(_checkpoints(tmp_path / "ck_b", seed=10), probe, run_b).returncode == 0
    for command in (("report", run_a), ("report", run_a, "--html", tmp_path / "r.html"), ("classify", run_a),
                    ("export", run_a, "--what", "trajectories", "-o", tmp_path / "t.csv"), ("compare", run_a, run_b)):
        said = _said(fdl_in_process(*command))
        if "--html" in command:
            said = html.unescape((tmp_path / "r.html").read_text(encoding="utf-8"))
        assert "multi-label" not in said and "BCEWithLogitsLoss" not in said, command  # the 0/1 caveat: was said
        line = NO_ENERGY.replace("'probe'", "'probe' of runs A and B") if command[0] == "compare" else NO_ENERGY
        assert said.count(line) == 1, command
    # the machine field stays what the store records: the targets are float 0s (a 0/1 matrix)
    records = json.loads(fdl_in_process("report", run_a, "--format", "json").stdout)
    records = records["records"] if isinstance(records, dict) else records
    assert [record["step"] for record in records] == [0, 1, 2, 3]  # all() over no records would pass
    assert all(record["zero_one_targets"] is True for record in records)
    assert json.loads(fdl_in_process("classify", run_a, "--json").stdout)["evidence"]["zero_one_targets"] is True


def test_constant_targets_under_center_are_said_to_carry_none_and_real_0_1_targets_keep_their_line(
    tmp_path: Path,
) -> None:
    checkpoints = _checkpoints(tmp_path / "ck", steps=2)
    constant = _probe(tmp_path / "constant.npz", np.tile(np.float32([0.3, -1.0, 2.0]), (50, 1)))
    assert _analyze(checkpoints, constant, tmp_path / "c.h5", "--center").returncode == 0
    said = _said(fdl_in_process("report", tmp_path / "c.h5"))
    assert "holds targets that carry no energy (constant or one class, which --center removes)" in said
    assert _analyze(checkpoints, constant, tmp_path / "plain.h5").returncode == 0  # uncentered: measured
    assert "carry no energy" not in _said(fdl_in_process("report", tmp_path / "plain.h5"))
    assert _analyze(checkpoints, _probe(tmp_path / "multi.npz", _multi_hot(50)), tmp_path / "m.h5").returncode == 0
    said = _said(fdl_in_process("report", tmp_path / "m.h5"))
    assert CAVEAT in said and "carry no energy" not in said


# ------------------------------------------------------------------ outputs that carry no energy

HEAD_SAID = ("probe 'probe': the model's outputs are constant over the probe (a zero or constant head?) at steps "
             "0, 1, 2, 3: they carry no energy about their mean, so D_LR is 1.0 there by its degenerate rule "
             "(output_rank 0), not a measurement of the features")


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("heads")
    probe = _probe(folder / "probe.npz", np.arange(50) % 3)
    for name, head, flat in (("trained", "trained", 0), ("zero", "zero", 99), ("zero_init", "zero", 1),
                             ("constant", "constant", 99)):
        done = _analyze(_checkpoints(folder / name, head=head, flat_steps=flat, seed=0 if name == "trained" else 20),
                        probe, folder / f"{name}.h5")
        assert done.returncode == 0, done.stderr
        (folder / f"{name}.stderr").write_text(done.stderr, encoding="utf-8")
    return folder


def test_analyze_warns_once_of_outputs_that_carry_no_energy(heads: Path) -> None:
    zero = (heads / "zero.stderr").read_text(encoding="utf-8")
    assert zero.count("constant over the probe") == 1
    assert HEAD_SAID + (", and Π̂ is 0/0 as well (the outputs all 0): pi_hat_C and k90/k95/k99_utility are null, "
                        "and the regime has no utility to count; `fdl compare` leaves such steps out of its verdict "
                        "of which run is richer") in zero
    constant = (heads / "constant.stderr").read_text(encoding="utf-8")  # uncentered: Π̂ of a constant is measured
    assert HEAD_SAID + "; `fdl compare` leaves such steps out" in constant
    assert "the model's outputs are constant over the probe (a zero or constant head?) at step 0: " in (
        heads / "zero_init.stderr").read_text(encoding="utf-8")
    assert "constant over the probe" not in (heads / "trained.stderr").read_text(encoding="utf-8")
    # classify is not confident of a run whose outputs carry no energy at the end
    verdict = json.loads(fdl_in_process("classify", heads / "zero.h5", "--json").stdout)
    assert verdict["regime"] == "undetermined" and verdict["evidence"]["final_pi_hat_C"] is None
    assert "the outputs carry no utility to count (k95_utility is null)" in verdict["evidence"]["rule"]


@pytest.mark.parametrize("run", ["zero", "constant"])
def test_compare_does_not_call_a_run_richer_on_outputs_without_energy(heads: Path, run: str) -> None:
    said = _said(fdl_in_process("compare", heads / f"{run}.h5", heads / "trained.h5", "--no-overlap"))
    assert "is richer than" not in said  # was "Run B is richer than run A (lower D_LR) ... 65% lower"
    assert ("D_LR is not measured at the matched steps: cannot say which run is richer. Left out of this verdict: "
            "step 0, step 1, step 2, step 3, where run A's outputs are constant over the probe (output_rank 0, a zero "
            "or constant head?), so D_LR is 1.0 there by its degenerate rule, not a measurement.") in said


def test_compare_leaves_out_only_the_steps_whose_outputs_carry_no_energy(heads: Path) -> None:
    """A zero-initialised head (constant outputs at step 0 alone): the verdict rests on steps 1–3."""
    done = fdl_in_process("compare", heads / "trained.h5", heads / "zero_init.h5", "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)["verdict"]
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 2 on (last matched step: D_LR A ")
    assert verdict.endswith(" Left out of this verdict: step 0, where run B's outputs are constant over the probe "
                            "(output_rank 0, a zero or constant head?), so D_LR is 1.0 there by its degenerate rule, "
                            "not a measurement.")


def test_records_that_hold_no_quality_are_not_read_as_targets_without_energy(tmp_path: Path) -> None:
    """A store whose records hold neither Π*(C) nor D of the quality (a program's store, written without the
    quality arrays) says nothing of its targets' energy: no "carry no energy" line (the rule first read any
    null Π*(C) so, and `fdl compare` of two such stores printed it)."""
    from fdl_cli import report
    from tests.test_s12_rev2 import _store_with_ranks

    a = _store_with_ranks(tmp_path / "a.h5", {0: 4, 1: 4}, seed=0)
    with report.opened_run(a) as run:
        assert not report.targets_without_energy(run, run.series[0])
    result = fdl_in_process("compare", a, _store_with_ranks(tmp_path / "b.h5", {0: 4, 1: 4}, seed=10))
    assert result.returncode == 0, result.stderr
    assert "carry no energy" not in result.stderr
