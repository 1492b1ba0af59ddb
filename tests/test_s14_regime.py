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
