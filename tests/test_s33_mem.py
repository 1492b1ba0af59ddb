"""The memory estimate counts what is alive together at a checkpoint's peak: the eigen-decomposition's arrays
(the symmetrized matrix, its eigenvectors, LAPACK syevd's workspace), the previous checkpoint's anchors, the
anchors as the model gave them. At p = 4 096 it predicted 537 MB where the run peaked 1.07 GB above a run of
negligible arrays, so the 70 % warning came about twice too late (docs/benchmarks.md, "The memory estimate
against the peak")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fdl_cli import resources
from fdl_cli.store import StoreReader
from tests.test_s16_memory import _run
from tests.test_spectral import stats


def _syevd(size: int) -> int:
    return 1 + 6 * size + 2 * size * size


def _total(needs: list[resources.Need]) -> int:
    return sum(need.bytes for need in needs)


def test_the_p_by_p_route_counts_its_decomposition_and_the_anchors_alive_at_it() -> None:
    p, n, m = 2048, 2100, 2100
    needs = resources.run_needs([resources.Pass("probe", {"l": p}, n, m)])
    decomposition = [need for need in needs if "decomposition" in need.what]
    assert [(need.what, need.bytes, need.on_device) for need in decomposition] == [
        (
            "probe/l: the decomposition of the p×p second moment: its symmetrized copy, its eigenvectors and LAPACK's "
            "workspace (p = 2,048)",
            8 * (2 * p * p + _syevd(p)),
            False,
        )
    ]
    # the sums and their copy over the anchors; the decomposition; this checkpoint's float32 anchors (its float64
    # copy comes after the decomposition, and is smaller); the reference's float64 anchors in padded rows
    assert _total(needs) == 8 * ((p + 1) ** 2 + p * p) + 8 * (2 * p * p + _syevd(p)) + 4 * m * p + 8 * m * (p + 8)
    # the uncentered spectrum is taken from a copy of the sums about 0 (`Moments.unshifted`)
    uncentered = resources.run_needs([resources.Pass("probe", {"l": p}, n, m)], uncentered=True)
    assert _total(uncentered) - _total(needs) == 8 * p * p
    # with the previous checkpoint's anchors too
    third = resources.run_needs([resources.Pass("probe", {"l": p}, n, m)], anchor_copies=3)
    assert _total(third) - _total(needs) == 8 * m * (p + 8)
    assert "probe/l: the float64 anchors, the reference's and the previous checkpoint's (m = 2,100)" in [
        need.what for need in third
    ]


def test_the_gram_route_counts_the_centered_features_the_gram_its_eigenvectors_and_workspace() -> None:
    p, n, m = 3000, 1000, 1000
    needs = resources.run_needs([resources.Pass("probe", {"l": p}, n, m)], anchor_copies=3)
    # the kept n×p features; the centered copy, the Gram, its eigenvectors, syevd's workspace; the float32
    # anchors; the reference's and the previous checkpoint's float64 anchors with CKA's m×m Gram of each
    assert _total(needs) == (8 * n * p + 8 * (n * p + 2 * n * n + _syevd(n)) + 4 * m * p + 2 * 8 * (m * p + m * m))
    # on a GPU the host holds a copy of the features and decomposes there
    gpu = resources.run_needs([resources.Pass("probe", {"l": p}, n, m)], gpu=True, anchor_copies=3)
    assert sum(need.bytes for need in gpu if need.on_device) == 2 * 8 * n * p
    assert sum(need.bytes for need in gpu if not need.on_device) == _total(needs)


def test_one_decomposition_at_a_time_and_the_anchor_copies_when_larger() -> None:
    # two layers decomposed one after the other: only the wider's decomposition counts
    two = resources.run_needs([resources.Pass("probe", {"a": 1000, "b": 500}, 4000, 64)], anchor_copies=1)
    assert _total(two) == (8 * (1001**2 + 1000**2 + 501**2 + 500**2) + 8 * (2 * 1000**2 + _syevd(1000)) + 4 * 64 * 1500)
    # a narrow layer with many anchors: this checkpoint's float64 copies, made once the decompositions are done,
    # are larger than its decomposition, and counted in its place
    narrow = resources.run_needs([resources.Pass("probe", {"a": 64}, 60_000, 4096)], anchor_copies=1)
    assert _total(narrow) == 8 * (65**2 + 64**2) + 4 * 4096 * 64 + 8 * 4096 * (64 + 8)
    # on a GPU the p×p route's measures take host copies of the sums, and decompose there
    gpu = resources.run_needs([resources.Pass("probe", {"a": 1000}, 4000, 64)], gpu=True, anchor_copies=1)
    assert sum(need.bytes for need in gpu if not need.on_device) == (
        2 * 8 * 1000**2 + 8 * (2 * 1000**2 + _syevd(1000)) + 4 * 64 * 1000
    )


def test_the_stored_top_eigenvectors_do_not_hold_all_of_them() -> None:
    """The store writer buffers each entry until its commit: a view of the top K columns kept the p × rank
    eigenvectors alive there, one p×p float64 more at the next checkpoint's peak."""
    from fdl_cli.spectral import measure

    rng = np.random.default_rng(0)
    measures = measure(stats(rng.normal(size=(80, 12)), rng.normal(size=(80, 3))), top_k=2)
    assert measures.eigenvectors.shape == (12, 2)
    assert measures.eigenvectors.base is None or measures.eigenvectors.base.size == 24


@pytest.mark.parametrize(
    ("steps", "said"), [("0,10", "88.0 kB, 80 % of the 110 kB"), ("0,10,20", "126 kB, 84 % of the 150 kB")]
)
def test_the_warning_counts_the_previous_checkpoint_s_anchors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], steps: str, said: str
) -> None:
    """A third checkpoint is compared with the second, whose anchors stay beside the reference's."""
    from fdl_cli.cli import main

    ckpts, probe = _run(tmp_path, 300)
    # head's input: p = 8, n = m = 300, C = 3 outputs with labels: 88.0 kB with two float64 anchor copies of
    # 300 × (8 + 8), 126 kB with three
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: 110_000 if steps == "0,10" else 150_000)
    main(
        [
            "analyze",
            str(ckpts),
            "--model",
            f"{tmp_path}/model.py:build",
            "--probe",
            str(probe),
            "-o",
            str(tmp_path / "run.h5"),
            "--steps",
            steps,
        ]
    )
    err = capsys.readouterr().err
    assert (
        f"warning: this analysis needs at least {said.split(',')[0]} of memory for its float64 statistics, "
        f"their decomposition and the anchors alone,{said.split(',')[1]} available"
    ) in " ".join(err.split()), err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.steps() == [int(step) for step in steps.split(",")]
