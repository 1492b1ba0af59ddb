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
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 100 of A (105 of B) on (")
    same = make_store(tmp_path / "c.h5", seed=7, scalars=lazier)  # exact pairs: one step, as before
    verdict = report.compare_runs(report.load_run(a), report.load_run(same), overlap=False).verdict
    assert verdict.startswith("Run B is richer than run A (lower D_LR) from step 100 on (")
