"""Session 15: `fdl classify` explains a verdict whose movement rests on the overlap alone.

A run built to be lazy (a linear feature map whose weights take small random steps, on inputs whose two
leading directions are near-tied) keeps its CKA at 0.998, yet its top-1 eigenspace overlap falls to
0.89, so the rules read EF. The note gives the eigengaps at the cut k, checked here against a float64
eigen-decomposition of the features, and the overlap of the top-2 eigenspaces past the tie, which says
the features did not move: re-analysed with `--overlap-k 2`, the run is coefficient.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fdl_cli.cli import cli
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.regimes import NEAR_TIE_GAP, Thresholds, overlap_alone, overlap_tie_line, relative_gap

SCALES = np.array([1.0, 0.995, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def build(d: int = 8, p: int = 16) -> nn.Module:
    """A linear feature map (no bias) and a one-output head: the features are x Wᵀ."""
    return nn.Sequential(nn.Linear(d, p, bias=False), nn.Linear(p, 1))


def _lazy_tied_run(folder: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """6 checkpoints whose feature weights start at the identity and take steps of 0.01 · N(0, 1); the
    inputs' two leading directions have scales 1 and 0.995. Returns the probe, x and each step's W."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 8)) * SCALES).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(600)).astype(np.float32)
    probe = folder / "probe.npz"
    np.savez(probe, x=x, y=y)
    torch.manual_seed(0)
    return probe, x, save_lazy_steps(folder / "ck", build())


def save_lazy_steps(folder: Path, model: nn.Module) -> list[np.ndarray]:
    """Steps 0–5 of `model` (Linear(8, 16) features, any head) into `folder`: the feature weights start at
    the identity and take steps of 0.01 · N(0, 1), the head's 0.3 · N(0, 1). Returns each step's W."""
    weights = []
    folder.mkdir()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(16, 8))
        for step in range(6):
            if step:
                model[0].weight.add_(0.01 * torch.randn(16, 8))
                model[1].weight.add_(0.3 * torch.randn(*model[1].weight.shape))
            weights.append(model[0].weight.detach().numpy().copy())
            torch.save(model.state_dict(), folder / f"step_{step}.pt")
    return weights


def _analyze(folder: Path, probe: Path, out: str, **options: object) -> Path:
    path = folder / out
    run_analyze(AnalyzeOptions(sources=(str(folder / "ck"),), model_spec="tests.test_s15_tie:build",
                               probe_specs=(str(probe),), out=path, device="cpu", **options))  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("tied")
    probe, x, weights = _lazy_tied_run(folder)
    return folder, probe, x, weights


def _classify(store: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["classify", str(store), *extra])
    return result.exit_code, result.stdout, result.stderr


def _float64_gap(x: np.ndarray, weight: np.ndarray, k: int) -> float:
    """The brute-force relative eigengap at k of the uncentered second moment of the features x Wᵀ, as the
    float32 model gives them (then in float64)."""
    features = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(weight)).double().numpy()
    eigenvalues = np.linalg.eigvalsh(features.T @ features / len(features))[::-1]
    return float((eigenvalues[k - 1] - eigenvalues[k]) / eigenvalues[k - 1])


def test_a_near_tie_at_the_cut_is_named_with_the_overlap_past_it(tied) -> None:
    folder, probe, x, weights = tied
    store = _analyze(folder, probe, "k1.h5")
    code, out, err = _classify(store, "--json")
    assert code == 0
    verdict = json.loads(out)
    evidence = verdict["evidence"]
    # the known answer is coefficient; the top-1 overlap alone says otherwise
    assert verdict["regime"] == "EF"
    assert evidence["final_cka_init"] >= 0.99 and evidence["final_overlap_init"] < 0.95
    tie = evidence["overlap_tie"]
    assert tie["k"] == 1 and tie["step"] == 5 and tie["reference_step"] == 0 and tie["near_tie"] is True
    assert tie["gap_reference"] == pytest.approx(_float64_gap(x, weights[0], 1), rel=1e-9)
    assert tie["gap_final"] == pytest.approx(_float64_gap(x, weights[5], 1), rel=1e-9)
    assert tie["gap_reference"] < NEAR_TIE_GAP
    # past the tie, k' = 2: both gaps there clear it, and the top-2 eigenspaces barely moved
    assert min(_float64_gap(x, weights[0], 2), _float64_gap(x, weights[5], 2)) >= NEAR_TIE_GAP
    assert tie["wider_k"] == 2 and tie["wider_overlap"] > 0.999
    code, _, text = _classify(store)
    assert code == 0
    line = next(line for line in text.splitlines() if line.startswith("the move at step 5"))
    assert "a near-tie (below 0.2) on both sides of the cut k = 1" in line
    assert f"(λ_1 − λ_2) / λ_1 is {100 * tie['gap_reference']:.3g} %" in line
    assert "`fdl analyze --overlap-k 2`" in line
    assert "overlap_tie" not in next(line for line in text.splitlines() if line.startswith("evidence: "))


def test_the_suggested_overlap_k_classifies_the_lazy_run_as_coefficient(tied) -> None:
    folder, probe, _, _ = tied
    store = _analyze(folder, probe, "k2.h5", overlap_k=2)
    code, out, _ = _classify(store, "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["regime"] == "coefficient"
    assert verdict["evidence"]["min_overlap_init"] > 0.999
    assert "overlap_tie" not in verdict["evidence"]


def test_relative_gap_edges() -> None:
    assert relative_gap([4.0, 3.0, 1.0], 1) == pytest.approx(0.25)
    assert relative_gap([4.0, 3.0, 1.0], 3) == 1.0  # nothing stored past the rank: λ_{k+1} = 0
    assert relative_gap([4.0, 3.0], 3) is None  # λ_k not stored
    assert relative_gap([4.0, 0.0, 0.0], 2) is None  # λ_k = 0: the top-k space holds null directions
    assert relative_gap([4.0], 0) is None


def test_overlap_alone_needs_both_measures_and_a_static_cka() -> None:
    th = Thresholds()
    assert overlap_alone({"cka_init": 0.995, "overlap_init": 0.9}, th)
    assert overlap_alone({"cka_init": 0.995, "overlap_init": 0.5}, th)  # the conflict band too
    assert not overlap_alone({"cka_init": 0.98, "overlap_init": 0.5}, th)  # CKA moved: not the overlap alone
    assert not overlap_alone({"cka_init": 0.995, "overlap_init": 0.96}, th)  # static
    assert not overlap_alone({"cka_init": None, "overlap_init": 0.5}, th)


def test_without_a_near_tie_the_note_says_the_eigenspace_turned() -> None:
    tie = {"k": 10, "step": 40, "reference_step": 0, "cka_init": 0.995, "overlap_init": 0.7,
           "gap_reference": 0.35, "gap_final": 0.5, "near_tie": False, "wider_k": None, "wider_overlap": None}
    line = overlap_tie_line(tie, Thresholds())
    assert "(λ_10 − λ_11) / λ_10 is 35 % at the reference (step 0) and 50 % at step 40" in line
    assert "no near-tie (below 0.2), so the top-10 eigenspace itself turned" in line
    assert "--overlap-k" not in line
    stuck = {**tie, "gap_reference": 0.1, "gap_final": 0.05, "near_tie": True, "wider_limit": 20}
    assert "no k up to 20 clears the tie" in overlap_tie_line(stuck, Thresholds())


def test_no_note_when_cka_moved_or_the_verdict_is_coefficient(tied) -> None:
    """With cka_static above the run's CKA, CKA says moved too: the move does not rest on the overlap."""
    folder, probe, _, _ = tied
    store = _analyze(folder, probe, "k1b.h5")
    code, out, _ = _classify(store, "--json", "--threshold", "cka_static=0.9999")
    assert code == 0 and json.loads(out)["regime"] == "EF" and "overlap_tie" not in json.loads(out)["evidence"]
    code, out, _ = _classify(store, "--json", "--threshold", "overlap_static=0.8",
                             "--threshold", "overlap_moved=0.8")
    assert code == 0 and json.loads(out)["regime"] == "coefficient"
    assert "overlap_tie" not in json.loads(out)["evidence"]


# ------------------------------------------------------------------ a direction trained past another

CROSS_SCALES = np.array([1.0, .95, .9, .85, .8, .75, .7, .65, .6, .55, .547, .3, .25, .2, .15, .1])
CROSS_TARGETS = [*range(9), 10]  # the 11th input direction, just past the near-tie at k = C = 10


class _Linear(nn.Module):
    def __init__(self, d: int = 16, p: int = 32, c: int = 10) -> None:
        super().__init__()
        self.body = nn.Linear(d, p, bias=False)
        self.head = nn.Linear(p, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_crossing() -> nn.Module:
    return _Linear()


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear net trained by gradient descent on y = the input directions 1–9 and 11 (session 15's study,
    `swap_trained_C10`): the 10th and 11th input directions are near-tied (0.55, 0.547), and learning
    amplifies the 11th until it overtakes the 10th. The features moved: the top-10 eigenspace of the
    last checkpoint is well defined (no tie there) and holds the learned direction, while CKA stays
    above 0.99."""
    folder = tmp_path_factory.mktemp("crossing")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 16)) * CROSS_SCALES).astype(np.float32)
    y = (x[:, CROSS_TARGETS] / CROSS_SCALES[CROSS_TARGETS]).astype(np.float32)
    np.savez(folder / "probe.npz", x=x, y=y)
    torch.manual_seed(0)
    model = _Linear()
    with torch.no_grad():
        model.body.weight.copy_(torch.eye(32, 16))
        model.head.weight.mul_(0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    (folder / "ck").mkdir()
    for step in range(1001):
        if step in (0, 10, 100, 316, 1000):
            torch.save(model.state_dict(), folder / "ck" / f"step_{step}.pt")
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run_analyze(AnalyzeOptions(sources=(str(folder / "ck"),), model_spec="tests.test_s15_tie:build_crossing",
                               probe_specs=(str(folder / "probe.npz"),), out=folder / "run.h5", device="cpu"))
    return folder / "run.h5"


def test_a_direction_trained_past_another_is_a_crossing_not_a_tie(crossing: Path) -> None:
    """The study's counterexample: the note called this run's drop of the overlap a near-tie "rather than
    moved features" and advised --overlap-k 11, which reads the trained run coefficient."""
    code, out, _ = _classify(crossing, "--json")
    verdict = json.loads(out)
    tie = verdict["evidence"]["overlap_tie"]
    assert code == 0 and verdict["regime"] == "MF"
    assert tie["k"] == 10 and tie["gap_reference"] < NEAR_TIE_GAP <= tie["gap_final"]
    assert tie["crossing"] is True and tie["near_tie"] is False
    assert tie["wider_k"] == 11 and tie["wider_overlap"] > 0.999  # the same 11 directions, reordered
    _, _, text = _classify(crossing)
    line = next(line for line in text.splitlines() if line.startswith("the move at step 1000"))
    assert "near-tied (below 0.2) at the reference (step 0) only, so eigenvalues crossed the cut k = 10" in line
    assert "the top-10 eigenspace of step 1000 is well defined and differs" in line
    assert "--overlap-k" not in line and "rather than moved features" not in line
