"""Session 15, second review: classify's overlap-tie note, and resuming a store whose reference step no
checkpoint of the run has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fdl_cli.cli import cli
from fdl_cli.errors import StoreError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.regimes import Thresholds, overlap_tie_line
from tests.test_s15_tie import _lazy_tied_run
from tests.tiny_models import mlp


def _classify(store: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["classify", str(store), *extra])
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- the overlap past the tie


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tied")
    probe, _, _ = _lazy_tied_run(folder)
    return folder, probe


def _analyze_tied(folder: Path, probe: Path, out: str, top_k: int) -> Path:
    path = folder / out
    run_analyze(AnalyzeOptions(sources=(str(folder / "ck"),), model_spec="tests.test_s15_tie:build",
                               probe_specs=(str(probe),), out=path, device="cpu", top_k=top_k))
    return path


def test_a_store_with_no_eigenfunction_past_the_cut_says_so_and_how_to_look_past_the_tie(tied) -> None:
    """A store analysed with --top-k 1 holds one eigenfunction: the note said "no k up to 1 clears the
    tie", as if k' = 2 had been tried and failed, when it was never looked at; with --top-k 2 it clears
    the tie, and the overlap past it (0.9996) says the run is lazy."""
    folder, probe = tied
    code, out, _ = _classify(_analyze_tied(folder, probe, "top1.h5", top_k=1), "--json")
    tie = json.loads(out)["evidence"]["overlap_tie"]
    assert code == 0 and tie["near_tie"] is True and tie["k"] == 1 and tie["wider_k"] is None
    assert tie["columns"] == 1 and tie["wider_limit"] == 1 and tie["top_k"] == 1
    _, _, text = _classify(folder / "top1.h5")
    line = next(line for line in text.splitlines() if line.startswith("the move at step 5"))
    assert ("(the store holds no eigenfunction past k = 1 (--top-k 1): `fdl analyze --top-k 2` stores enough to "
            "look up to 2k = 2)") in line
    assert "no k up to 1" not in line
    # the advice holds: with --top-k 2, k' = 2 clears the tie
    code, out, _ = _classify(_analyze_tied(folder, probe, "top2.h5", top_k=2), "--json")
    tie = json.loads(out)["evidence"]["overlap_tie"]
    assert code == 0 and tie["wider_k"] == 2 and tie["wider_overlap"] > 0.999


NEAR_TIE = {"k": 10, "step": 40, "reference_step": 0, "cka_init": 0.995, "overlap_init": 0.7,
            "gap_reference": 0.1, "gap_final": 0.05, "near_tie": True, "crossing": False, "wider_k": None,
            "wider_overlap": None}


def test_a_search_cut_short_by_the_stored_eigenfunctions_names_them() -> None:
    """C = 10, 15 eigenfunctions stored (--top-k 15): k' = 16 to 20 were never looked at."""
    line = overlap_tie_line({**NEAR_TIE, "columns": 15, "wider_limit": 15, "top_k": 15}, Thresholds())
    assert ("(no k from 11 to 15, the eigenfunctions stored (--top-k 15), clears the tie: `fdl analyze --top-k 20` "
            "stores enough to look up to 2k = 20)") in line
    # fewer stored than --top-k asked for: the features span no more directions, a larger --top-k cannot help
    line = overlap_tie_line({**NEAR_TIE, "columns": 12, "wider_limit": 12, "top_k": 64}, Thresholds())
    assert "(no k from 11 to 12 clears the tie, and the features span no more directions on the anchor points)" in line
    assert "--top-k" not in line
    # searched up to 2k
    line = overlap_tie_line({**NEAR_TIE, "columns": 64, "wider_limit": 20, "top_k": 64}, Thresholds())
    assert "(no k up to 20 clears the tie)" in line


CROSSING = {**NEAR_TIE, "gap_reference": 0.07, "gap_final": 0.55, "near_tie": False, "crossing": True,
            "wider_k": 11, "columns": 64, "wider_limit": 20, "top_k": 64}


def test_a_crossing_calls_the_wider_eigenspaces_the_same_directions_only_when_they_overlap() -> None:
    """The crossing note said "the same directions, in another order" of any overlap past the tie: of 0.6
    too, where the wider eigenspace moved as well."""
    moved = overlap_tie_line({**CROSSING, "wider_overlap": 0.6}, Thresholds())
    assert "the same directions" not in moved
    assert ("past the tie, the top-11 eigenspaces of step 0 and step 40 overlap 0.6 (from the stored "
            "eigenfunctions), below overlap_static = 0.95: the wider eigenspace moved too") in moved
    same = overlap_tie_line({**CROSSING, "wider_overlap": 0.99997}, Thresholds())
    assert same.endswith("(from the stored eigenfunctions): the same directions, in another order")


# ----------------------------------------------------------- a store whose reference this run lacks


def _epoch_run(root: Path) -> tuple[Path, Path]:
    """Checkpoints epoch_1..3.pt holding {"model", "epoch", "iteration": 390 · epoch}, and a probe."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(root / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    folder = root / "ck"
    folder.mkdir()
    model = mlp()
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        torch.save({"model": model.state_dict(), "epoch": epoch, "iteration": 390 * epoch}, folder / f"epoch_{epoch}.pt")
    return folder, root / "probe.npz"


def _fdl_analyze(folder: Path, probe: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["analyze", str(folder), "--model", "tests.tiny_models:mlp", "--probe",
                                      str(probe), "--out", str(out), *extra])
    if isinstance(result.exception, StoreError):
        return 1, result.exception.message
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def test_a_store_whose_reference_is_read_at_another_step_is_not_sent_to_that_reference(tmp_path: Path) -> None:
    """A store made when fdl read these files at their epochs (fdl before `iteration` was a step key; here
    with --step-regex) was resumed with "pass --reference 1 to add to it", and --reference 1 then failed:
    no checkpoint has step 1 now. The error names the file and the step it is read at now."""
    folder, probe = _epoch_run(tmp_path)
    out = tmp_path / "run.h5"
    code, _ = _fdl_analyze(folder, probe, out, "--step-regex", r"epoch_(\d+)")
    assert code == 0
    before = out.read_bytes()
    code, message = _fdl_analyze(folder, probe, out)
    assert code == 1
    assert f"{out} was analysed with step 1 as the reference, which none of this run's checkpoints has" in message
    assert f"this run reads {folder / 'epoch_1.pt'} as step 390 (from its metadata:iteration)" in message
    assert "--reference 1" not in message
    assert out.read_bytes() == before  # nothing stored is lost
    # the advice holds: the --step-regex that read the steps adds to the store
    code, text = _fdl_analyze(folder, probe, out, "--step-regex", r"epoch_(\d+)")
    assert code == 0 and "3 already in the store" in text


def test_a_store_whose_reference_file_is_left_out_or_gone_says_so(tmp_path: Path) -> None:
    """Its reference checkpoint left out by --glob, or deleted, a resume advised --reference 390, which
    no checkpoint of the run has."""
    folder, probe = _epoch_run(tmp_path)
    out = tmp_path / "run.h5"
    assert _fdl_analyze(folder, probe, out)[0] == 0
    code, message = _fdl_analyze(folder, probe, out, "--glob", "epoch_[23].pt")
    assert code == 1
    assert f"{out} was analysed with step 390 as the reference, which none of this run's checkpoints has" in message
    assert f"the store's step 390 is {folder / 'epoch_1.pt'}, which this run leaves out or reads at another step" in message
    assert "select it at step 390 (--glob, --step-regex)" in message and "--reference 390" not in message
    (folder / "epoch_1.pt").unlink()
    code, message = _fdl_analyze(folder, probe, out)
    assert code == 1
    assert f"{out} was analysed with step 390 as the reference, which none of this run's checkpoints has" in message
    assert f"the store's step 390 is {folder / 'epoch_1.pt'}, which is gone" in message
    assert "restore that checkpoint" in message and "--reference 390" not in message
