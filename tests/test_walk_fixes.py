"""Defects found by a researcher's walk through the reading commands on real small runs (digits MLPs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl

SMALL = ("--top-k", "4", "--anchor-size", "16", "--batch-size", "16")

MODEL_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _run_folder(root: Path) -> Path:
    """root/model.py, root/probe.npz and root/run/ckpt_step{0,10,20}.pt (training-loop dicts)."""
    (root / "model.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    np.savez(root / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    (root / "run").mkdir()
    for step in (0, 10, 20):
        torch.manual_seed(step)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        torch.save({"model_state_dict": net.state_dict(), "step": step}, root / "run" / f"ckpt_step{step}.pt")
    return root


def test_resume_accepts_the_same_model_file_spelled_another_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _run_folder(tmp_path)
    monkeypatch.chdir(root)
    first = fdl("analyze", "run", "--model", "model.py:build", "--probe", "probe.npz", "--out", "run.h5",
                "--steps", "0,10", *SMALL)
    assert first.code == 0, first.stderr
    # The same file and factory, as `./model.py` and by absolute path (a job started from another folder):
    # the code is the same (model_sha256), so the store is the same run, not "a different run" to --overwrite.
    for spec in ("./model.py:build", f"{root / 'model.py'}:build"):
        again = fdl("analyze", "run", "--model", spec, "--probe", "probe.npz", "--out", "run.h5", *SMALL)
        assert again.code == 0, again.stderr
        assert "different run" not in again.stderr


def test_resume_still_refuses_another_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _run_folder(tmp_path)
    (root / "model.py").write_text(MODEL_FILE + "\n\ndef build2():\n    return build()\n")
    monkeypatch.chdir(root)
    assert fdl("analyze", "run", "--model", "model.py:build", "--probe", "probe.npz", "--out", "run.h5",
               "--steps", "0,10", *SMALL).code == 0
    other = fdl("analyze", "run", "--model", "./model.py:build2", "--probe", "probe.npz", "--out", "run.h5", *SMALL)
    assert other.code == 1 and "different run" in other.stderr and "build2" in other.stderr


COMMON = """
import torch
from torch import nn


def make_builder(activation):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 3))
    return build
"""


def test_resume_refuses_another_file_that_configures_the_same_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files that each configure one shared factory (`build = make_builder(nn.ReLU)` against
    `nn.Tanh`, beside identical copies of common.py) have the same factory code (model_sha256) and name:
    a resume with the other file's spec was taken for the same model spelled another way, mixing Tanh
    numbers into a ReLU store (a review). Editing such a file under the same spec went unseen too."""
    root = _run_folder(tmp_path)
    for folder, activation in (("m", "ReLU"), ("m2", "Tanh")):
        (root / folder).mkdir()
        (root / folder / "common.py").write_text(COMMON)
        (root / folder / "net.py").write_text(f"from torch import nn\nfrom common import make_builder\n\n"
                                              f"build = make_builder(nn.{activation})\n")
    monkeypatch.chdir(root)
    first = fdl("analyze", "run", "--model", "m/net.py:build", "--probe", "probe.npz", "--out", "run.h5",
                "--steps", "0,10", *SMALL)
    assert first.code == 0, first.stderr
    other = fdl("analyze", "run", "--model", "m2/net.py:build", "--probe", "probe.npz", "--out", "run.h5", *SMALL)
    said = " ".join(other.stderr.split())
    assert other.code == 1 and f"run.h5 was analysed with the model file {root / 'm' / 'net.py'}" in said
    assert f"names {root / 'm2' / 'net.py'}, which holds other code" in said and "m/net.py:build" in said
    # The same file spelled another way is still the same run ...
    same = fdl("analyze", "run", "--model", f"{root / 'm' / 'net.py'}:build", "--probe", "probe.npz",
               "--out", "run.h5", "--steps", "0,10", *SMALL)
    assert same.code == 0 and "already in the store" in same.stderr, same.stderr
    # ... and an edit of the file the spec names is a changed model, though the factory's file is not
    (root / "m" / "net.py").write_text("from torch import nn\nfrom common import make_builder\n\n"
                                      "build = make_builder(nn.Tanh)\n")
    edited = fdl("analyze", "run", "--model", "m/net.py:build", "--probe", "probe.npz", "--out", "run.h5", *SMALL)
    assert edited.code == 1 and f"the model file {root / 'm' / 'net.py'} changed since" in edited.stderr
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10]


@pytest.mark.parametrize("command", [["report"], ["classify"], ["export", "--what", "eigenvalues"]])
def test_reading_a_checkpoint_or_probe_instead_of_a_store_says_so(tmp_path: Path, command: list[str]) -> None:
    """`fdl report run/ckpt_step0.pt` (the checkpoint, not the store) said the file was 'truncated, corrupt'
    and to 'restore it from a backup, or re-run fdl analyze --overwrite'; it is simply not a store."""
    root = _run_folder(tmp_path)
    for wrong in (root / "run" / "ckpt_step0.pt", root / "probe.npz", root / "model.py"):
        done = fdl(*command, str(wrong))
        assert done.code == 1 and "Traceback" not in done.stderr
        assert f"{wrong} is not an fdl store" in done.stderr, done.stderr
        assert "backup" not in done.stderr and "--overwrite" not in done.stderr
        assert "fdl analyze" in done.stderr  # says where a store comes from


def test_export_trajectories_csv_json_hold_path_and_sha256_as_the_help_says(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`fdl export --help`: "path, sha256 and regime are in the csv/json forms" (not in npy); they were not."""
    root = _run_folder(tmp_path)
    monkeypatch.chdir(root)
    assert fdl("analyze", "run", "--model", "model.py:build", "--probe", "probe.npz", "--out", "run.h5", *SMALL).code == 0
    records = fdl("report", "run.h5", "--format", "json").stdout
    import json

    expected = json.loads(records)
    as_json = json.loads(fdl("export", "run.h5", "--what", "trajectories", "--format", "json").stdout)
    assert as_json["path"] == [r["path"] for r in expected]
    assert as_json["sha256"] == [r["sha256"] for r in expected]
    header = fdl("export", "run.h5", "--what", "trajectories").stdout.splitlines()[0].split(",")
    assert {"path", "sha256", "regime"} <= set(header)
    assert fdl("export", "run.h5", "--what", "trajectories", "--format", "npy", "--out", "t.npz").code == 0
    with np.load(root / "t.npz") as archive:  # numeric fields only
        assert "path" not in archive and "sha256" not in archive and "regime" not in archive
        assert archive["d_lr"].dtype == np.float64
    help_text = " ".join(fdl("export", "--help").stdout.split())
    assert "path, sha256 and regime are in the csv/json forms" in help_text


def test_classify_help_names_the_thresholds_and_their_defaults() -> None:
    """`--threshold NAME=VALUE  Override a threshold.` gave no name: a user had to open docs/regimes.md."""
    from fdl_cli.regimes import Thresholds

    help_text = " ".join(fdl("classify", "--help").stdout.split())
    for name, value in Thresholds().as_dict().items():
        assert f"{name} ({value:g})" in help_text, name


def test_classify_with_the_last_checkpoint_as_reference_does_not_contradict_its_trajectory() -> None:
    """`fdl analyze --reference <last step>` then `fdl classify`: the trajectory listed MF checkpoints
    (moved relative to the reference, k95 small) while the next line said 'the run never became MF'."""
    from fdl_cli.regimes import classify_run, describe

    records = [
        {"step": 0, "cka_init": 0.6, "overlap_init": 0.6, "k95_utility": 5, "n_outputs": 10},
        {"step": 10, "cka_init": 0.7, "overlap_init": 0.7, "k95_utility": 5, "n_outputs": 10},
        {"step": 20, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 5, "n_outputs": 10},
    ]
    verdict = classify_run(records, reference_step=20)
    assert verdict.regime == "undetermined"
    lines = describe(verdict)
    assert any(line.startswith("trajectory") and "0–10: MF" in line for line in lines), lines
    assert "the run never became MF" not in lines
    # the evidence counts the checkpoints after the reference only (session 19); the text names the MF* before it
    assert "first_mf_step" not in verdict.evidence and "mf_since_step" not in verdict.evidence
    assert any(line.startswith("MF first at step 0 (before the reference, step 20: ") for line in lines), lines
    assert "nothing to measure movement against" not in verdict.rule  # 2 checkpoints were measured against it
    assert "the 2 before it" in verdict.rule


def test_classify_counts_the_checkpoints_before_a_reference_that_is_not_stored() -> None:
    """The count was len(records) - 1, as if the reference were stored: two checkpoints before an
    unstored reference were 'the 1 before it', and one was 'nothing to measure movement against'."""
    from fdl_cli.regimes import classify_run

    records = [
        {"step": 0, "cka_init": 0.6, "overlap_init": 0.6, "k95_utility": 5, "n_outputs": 10},
        {"step": 10, "cka_init": 0.7, "overlap_init": 0.7, "k95_utility": 5, "n_outputs": 10},
    ]
    assert "the 2 before it are classified" in classify_run(records, reference_step=20).rule
    assert "the 1 before it is classified" in classify_run(records[:1], reference_step=20).rule
