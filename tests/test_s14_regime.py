"""Session 14's regime review: runs whose answer is known by construction (docs/regimes.md).

Each test is a defect the review found, failing before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.store import StoreReader
from tests.tiny_models import mlp


def _twin_run(folder: Path) -> list[dict]:
    """One checkpoint saved twice (steps 0 and 1) of an MLP whose hidden units sit far from 0 (bias +20:
    the statistics are summed about a shift point), analysed on 60 probe points."""
    folder.mkdir()
    model = mlp(4, 16, 3, seed=2)
    with torch.no_grad():
        model[0].bias.add_(20.0)
    for step in (0, 1):
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    rng = np.random.default_rng(2)
    probe = folder.parent / "probe.npz"
    np.savez(probe, x=rng.normal(size=(60, 4)).astype(np.float32), y=rng.integers(0, 3, 60))
    out = folder.parent / "twin.h5"
    run_analyze(AnalyzeOptions(sources=(str(folder),), model_spec="tests.tiny_models:mlp",
                               model_kwargs={"hidden": 16, "seed": 2}, probe_specs=(str(probe),), out=out,
                               device="cpu"))
    with StoreReader(out) as reader:
        return list(reader.records())


def test_identical_checkpoints_have_cka_and_overlap_exactly_one(tmp_path: Path) -> None:
    """docs/measures.md: identical centered anchors (a frozen network) give CKA exactly 1. In float64
    the self-norms come from the pass's shifted sums and the cross product from the anchors, so the
    twin's CKA was 0.9999999999999997 (and its overlap 0.9999999999999996), shown by `fdl compare` as
    "cka_init: differs at 1 step, largest B − A −0.0000"."""
    records = _twin_run(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 1]
    assert records[1]["cka_init"] == 1.0 and records[1]["cka_prev"] == 1.0
    assert records[1]["overlap_init"] == 1.0 and records[1]["overlap_prev"] == 1.0


def test_the_richer_verdict_names_both_steps_of_a_nearest_step_pair(tmp_path: Path) -> None:
    """`fdl compare mf.h5 bn.h5` said "Run B is richer than run A (lower D_LR) from step 55 on" where step
    55 of A was paired with step 60 of B (B has no step 55): the step is now named for both runs."""
    from fdl_cli import report
    from tests.test_compare import SCALARS, make_store

    a = make_store(tmp_path / "a.h5")
    lazier = {step: {**values, "d_lr": [0.9, 0.01, 0.01][i]} for i, (step, values) in enumerate(SCALARS.items())}
    b = make_store(tmp_path / "b.h5", steps=(0, 105, 200), seed=7,
                   scalars={0: lazier[0], 105: lazier[100], 200: lazier[200]})
    verdict = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).verdict
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 100 of A and 105 of B on (")
    same = make_store(tmp_path / "c.h5", seed=7, scalars=lazier)  # exact pairs: one step, as before
    verdict = report.compare_runs(report.load_run(a), report.load_run(same), overlap=False).verdict
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 100 on (")


def test_a_coefficient_verdict_says_when_the_reference_already_fits_the_probe() -> None:
    """A trained network (100 % probe accuracy) saved as step 0 and trained on for 1 000 steps: CKA to it
    stays ≥ 0.9957, so the run is coefficient, and the text said only "no checkpoint after the reference
    moved": a researcher reads "lazy, features never learned". It now says the reference already fits."""
    from fdl_cli.regimes import classify_run, describe
    from tests.test_regimes import record

    trained = [record(0, 1.0, 1.0, 6, accuracy=1.0), record(100, 0.998, 0.997, 6, accuracy=1.0),
               record(1000, 0.9957, 0.9951, 6, accuracy=1.0)]
    verdict = classify_run(trained)
    assert verdict.regime == "coefficient"
    text = "\n".join(describe(verdict, trained))
    assert ("the reference checkpoint (step 0) already fits the probe (accuracy 1.0000, chance 1/C = 0.1000): "
            "'coefficient' says its features did not move after it") in text
    # an initialised (or head-reinitialised) reference near chance: no such line
    fresh = [{**r, "accuracy": a} for r, a in zip(trained, (0.131, 0.9, 1.0), strict=True)]
    assert "already fits" not in "\n".join(describe(classify_run(fresh), fresh))
    # regression: R² of the reference
    fitted = [{**r, "accuracy": None, "n_outputs": 1, "r2": 0.97} for r in trained]
    assert "already fits the probe (R² 0.970)" in "\n".join(describe(classify_run(fitted), fitted))
    # a run whose features moved is not coefficient: no such line either
    moved = [*trained[:2], record(1000, 0.6, 0.5, 6, accuracy=1.0)]
    assert "already fits" not in "\n".join(describe(classify_run(moved), moved))


def test_the_report_of_a_single_checkpoint_does_not_read_as_a_coefficient_run(tmp_path: Path) -> None:
    """A trained MLP (100 % accuracy) analysed alone: `fdl report` said "1 checkpoints", "regime:
    coefficient (3000)" and "final: ... regime coefficient", while `fdl classify` says undetermined."""
    from fdl_cli import report

    records = [{"step": 3000, "d_lr": 0.06, "cka_init": 1.0, "k95_utility": 10, "regime": "coefficient",
                "accuracy": 1.0, "n_outputs": 10}]
    lines = report.summary_lines(report.summarize(records))
    assert lines[0] == "1 checkpoint, step 3000"
    assert lines[1] == "regime: coefficient (3000)"
    assert "its regime is 'coefficient' by definition" in lines[2] and "undetermined" in lines[2]
    moved = report.summary_lines(report.summarize([{**records[0], "cka_init": 0.6, "regime": "MF"}]))
    assert not any("by definition" in line for line in moved)  # alone, but not the reference (a stopped run)
    # by the parameters where the record has them: the reference is 0 from itself, also without a CKA
    # (fewer than 3 anchor points); a frozen network's checkpoint before an unstored --reference has
    # CKA exactly 1 but other parameters (its head)
    unmeasured = report.summary_lines(report.summarize([{**records[0], "cka_init": None, "param_dist_init": 0.0}]))
    assert any("by definition" in line for line in unmeasured)
    frozen = report.summary_lines(report.summarize([{**records[0], "param_dist_init": 0.31}]))
    assert not any("by definition" in line for line in frozen)
    two = report.summary_lines(report.summarize([{**records[0], "step": 0}, records[0]]))
    assert two[0] == "2 checkpoints, steps 0–3000" and not any("by definition" in line for line in two)


def test_a_lazy_run_s_cka_is_not_printed_as_exactly_one() -> None:
    """A 4096-wide net trained 300 steps at a small learning rate ends at cka_init = 0.9999987: the verdict
    read "min cka_init = 1 ≥ 0.99", as a frozen backbone's bit-identical features (exactly 1) do."""
    from fdl_cli.regimes import classify_run, describe
    from tests.test_regimes import record

    lazy = [record(0, 1.0, 1.0, 13), record(100, 0.99999957, 0.9999985, 13), record(300, 0.9999987, 0.9999956, 13)]
    verdict = classify_run(lazy)
    assert verdict.regime == "coefficient"
    assert "min cka_init = 1 − 1.3e-06 ≥ 0.99 and min overlap_init = 1 − 4.4e-06 ≥ 0.95" in verdict.rule
    assert "final_cka_init = 1 − 1.3e-06" in "\n".join(describe(verdict, lazy))
    frozen = [record(0, 1.0, 1.0, 10), record(100, 1.0, 1.0, 10)]
    assert "min cka_init = 1 ≥ 0.99 and min overlap_init = 1 ≥ 0.95" in classify_run(frozen).rule
    assert "cka_init = 0.9957" in classify_run([*frozen, record(200, 0.9957, 0.99, 10)]).rule


def test_mf_before_a_mid_run_reference_is_said_to_be_before_it() -> None:
    """`analyze --reference 1232` of an MLP trained to collapse: every checkpoint after 1232 is static
    (coefficient), those before it differ from it, so the initialisation (6 % accuracy) is "MF", and the
    text read "MF first at step 0, but the run did not stay MF", as if the network had been MF at init."""
    from fdl_cli.regimes import classify_run, describe
    from tests.test_regimes import record

    rows = [record(0, 0.55, 0.50, 8, accuracy=0.061), record(85, 0.8, 0.7, 10, accuracy=0.99),
            record(1232, 1.0, 1.0, 10, accuracy=1.0), record(3000, 0.9966, 0.9989, 10, accuracy=1.0)]
    verdict = classify_run(rows, reference_step=1232)
    assert verdict.regime == "coefficient"
    text = "\n".join(describe(verdict, rows))
    assert ("MF first at step 0 (before the reference, step 1232: its movement is measured against a later "
            "checkpoint") in text
    plain = [record(0, 1.0, 1.0, 8), record(10, 0.6, 0.5, 5), record(20, 0.6, 0.5, 30), record(30, 0.6, 0.5, 30)]
    assert "MF first at step 10, but the run did not stay MF" in "\n".join(describe(classify_run(plain), plain))
