"""Session 15 review: defects found in the session's own changes.

- classify's overlap-tie note took its cut k as C where the store's overlaps compared fewer columns
  (--top-k 1 --overlap-k 1 on C = 2 records no overlap_k, as stores older than it): it gave the gap at
  λ_2 and "no near-tie" for an overlap taken at the near-tied λ_1.
- the note called a --center store's overlap uncentered.
- DeepSpeed's ZeRO optimizer shards made its one-folder-per-step layout read as folders of several
  checkpoints, and the hint named one folder (analysed alone).
- `fdl inspect --json` gave "step": 0 for a checkpoint without a step.
- `--reference N --steps ...` for a step no checkpoint has advised selecting it (a second error), and
  with --every advised a --steps that --every thins again.
- `fdl export -o -` and `fdl report --html -` wrote a file named "-".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl
from tests.test_s15_tie import _analyze as analyze_tied
from tests.test_s15_tie import _lazy_tied_run, save_lazy_steps

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
SAMPLE_MODEL = ("--model", f"{SAMPLES / 'model.py'}:build", "--probe", str(SAMPLES / "probe.npz"))
SCALES = np.array([1.0, 0.995, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def build2(d: int = 8, p: int = 16) -> nn.Module:
    """A linear feature map (no bias) and a two-class head: C = 2."""
    return nn.Sequential(nn.Linear(d, p, bias=False), nn.Linear(p, 2))


@pytest.fixture(scope="module")
def tied2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lazy run of tests/test_s15_tie.py (leading input scales 1 and 0.995, feature weights taking
    steps of 0.01·N(0, 1)) with two classes: its top-1 eigenspace is near-tied, its top-2 is not."""
    folder = tmp_path_factory.mktemp("tied2")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 8)) * SCALES).astype(np.float32)
    np.savez(folder / "probe.npz", x=x, y=(x[:, 0] - x[:, 1] > 0).astype(np.int64))
    torch.manual_seed(0)
    save_lazy_steps(folder / "ck", build2())
    return folder


def _analyze2(folder: Path, out: str, *extra: str) -> Path:
    done = fdl("analyze", folder / "ck", "--model", "tests.test_s15_rev:build2", "--probe", folder / "probe.npz",
               "--device", "cpu", "-o", folder / out, *extra)
    assert done.code == 0, done.stderr
    return folder / out


def _tie(store: Path, *extra: str) -> tuple[dict, str]:
    done = fdl("classify", store, "--json", *extra)
    assert done.code == 0, done.stderr
    text = fdl("classify", store, *extra)
    line = next((line for line in text.stderr.splitlines() if " rests on the overlap alone " in line), "")
    return json.loads(done.stdout)["evidence"].get("overlap_tie"), line


def test_the_tie_is_read_at_the_k_the_overlaps_were_taken_with(tied2: Path) -> None:
    store = _analyze2(tied2, "top1.h5", "--top-k", "1", "--overlap-k", "1")
    with StoreReader(store) as reader:
        assert "overlap_k" not in reader.provenance["options"]  # k = min(top_k, C): recorded as none
        assert reader.arrays(5).eigenfunctions.shape[1] == 1
    tie, line = _tie(store, "--threshold", "overlap_static=0.97")
    assert tie is not None and tie["k"] == 1 and tie["near_tie"] is True
    assert tie["gap_reference"] < 0.2 and tie["wider_k"] is None and tie["wider_limit"] == 1
    assert "(λ_1 − λ_2) / λ_1 is" in line and "a near-tie (below 0.2) on both sides of the cut k = 1" in line
    # no k' was looked at: the store holds one eigenfunction (session 15's second review)
    assert ("(the store holds no eigenfunction past k = 1 (--top-k 1): `fdl analyze --top-k 2` stores enough to "
            "look up to 2k = 2)") in line
    # the same run stored with --overlap-k 1 and the default --top-k: the same cut, the same gaps
    wide = _analyze2(tied2, "k1.h5", "--overlap-k", "1")
    tie_wide, _ = _tie(wide, "--threshold", "overlap_static=0.97")
    assert tie_wide["k"] == 1 and tie_wide["gap_reference"] == pytest.approx(tie["gap_reference"], rel=1e-12)
    assert tie_wide["gap_final"] == pytest.approx(tie["gap_final"], rel=1e-12)


def test_a_centered_store_is_not_called_uncentered(tied2: Path) -> None:
    centered = _analyze2(tied2, "center.h5", "--center")
    tie, line = _tie(centered, "--threshold", "overlap_static=0.9999")
    assert tie is not None and tie["k"] == 2 and tie["near_tie"] is False and tie["centered"] is True
    assert line.endswith("the top-2 eigenspace itself turned while the centered kernel stayed close (the overlap "
                         "weighs weak directions as much as strong ones)")
    plain = _analyze2(tied2, "plain.h5")
    tie, line = _tie(plain, "--threshold", "overlap_static=0.9999")
    assert tie is not None and tie["centered"] is False
    assert line.endswith("(the overlap is uncentered, and weighs weak directions as much as strong ones)")


def test_the_overlap_past_the_tie_is_what_analyze_overlap_k_stores(tmp_path: Path) -> None:
    """The note's wider_overlap and the overlap_init `fdl analyze --overlap-k k'` stores: the same number
    (tests/test_s15_tie.py asserted only that it exceeds 0.999)."""
    probe, _, _ = _lazy_tied_run(tmp_path)
    tie, _ = _tie(analyze_tied(tmp_path, probe, "k1.h5"))
    assert tie["wider_k"] == 2
    with StoreReader(analyze_tied(tmp_path, probe, "k2.h5", overlap_k=2)) as reader:
        stored = {record["step"]: record["overlap_init"] for record in reader.records()}
    assert tie["wider_overlap"] == pytest.approx(stored[tie["step"]], rel=1e-12)


# ----------------------------------------------------------------------------------- checkpoints


def _deepspeed(folder: Path) -> None:
    """DeepSpeed's layout: global_stepN/ with the model states and a ZeRO optimizer shard a rank."""
    for step in (0, 10, 100):
        sub = folder / f"global_step{step}"
        sub.mkdir(parents=True)
        torch.save({"module": load_file(str(SAMPLES / f"step_{step}.safetensors")), "global_steps": step},
                   sub / "mp_rank_00_model_states.pt")
        for rank in (0, 1):
            torch.save({"optimizer_state_dict": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []}},
                       sub / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        torch.save({"state": torch.zeros(2)}, sub / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text("global_step100")


def test_a_deepspeed_run_folder_gets_the_one_folder_per_step_hint(tmp_path: Path) -> None:
    _deepspeed(tmp_path / "ds")
    done = fdl("analyze", tmp_path / "ds", *SAMPLE_MODEL, "-o", tmp_path / "a.h5")
    assert done.code == 1
    assert ("one checkpoint in each of the sub-folders " + ", ".join(
        str(tmp_path / "ds" / f"global_step{step}") for step in (0, 10, 100))) in done.stderr
    assert (f"fix: one folder per step: pass the folders and take the steps from their names: fdl analyze "
            f"{tmp_path / 'ds'}/global_step* --step-regex 'global_step(\\d+)/' ...") in done.stderr
    folders = sorted((tmp_path / "ds").glob("global_step*"))
    done = fdl("analyze", *folders, *SAMPLE_MODEL, "--step-regex", "global_step(\\d+)/", "-o", tmp_path / "b.h5")
    assert done.code == 0, done.stderr
    # skipped by name, not peeked (a ZeRO shard a rank, each holding its share of the optimizer's state)
    assert "note: skipped 9 files of training state (optimizer, scheduler, RNG, arguments)" in done.stderr
    with StoreReader(tmp_path / "b.h5") as reader:
        assert [record["step"] for record in reader.records()] == [0, 10, 100]


def test_inspect_json_gives_no_step_to_a_checkpoint_without_one(tmp_path: Path) -> None:
    weights = load_file(str(SAMPLES / "step_10.safetensors"))
    torch.save(weights, tmp_path / "final.pt")
    torch.save(weights, tmp_path / "step_10.pt")
    steps = []
    for name in ("final.pt", "step_10.pt"):
        done = fdl("inspect", tmp_path / name, "--model", f"{SAMPLES / 'model.py'}:build", "--json")
        assert done.code == 0, done.stderr
        steps.append(json.loads(done.stdout)["step"])
    assert steps == [None, 10]


# ------------------------------------------------------------------------------------ --reference


def test_a_reference_no_checkpoint_has_is_not_said_to_be_unselected(tmp_path: Path) -> None:
    done = fdl("analyze", SAMPLES, "--steps", "100,200", "--reference", "7", "-o", tmp_path / "r.h5")
    assert done.code == 1
    assert "error: --reference 7: no checkpoint has that step" in done.stderr
    assert "got: steps 0, 5, 10, 15, 20, 30, 40, 50, 65, 80, 100, 125 ..." in done.stderr
    assert "--steps 7" not in done.stderr


def test_the_reference_left_out_by_every_is_selected_without_every(tmp_path: Path) -> None:
    done = fdl("analyze", SAMPLES, "--every", "5", "--reference", "10", "-o", tmp_path / "r.h5")
    assert done.code == 1
    assert "got: selected: steps 0, 30, 100, 250, 500, 1000" in done.stderr
    fix = "--steps 0,10,30,100,250,500,1000 without --every"
    assert f"fix: select the reference too ({fix}), or omit --reference" in done.stderr
    # the advice works as given (with --every kept, --steps would be thinned to 0, 500, 1000 again)
    done = fdl("analyze", SAMPLES, "--steps", "0,10,30,100,250,500,1000", "--reference", "10", "-o", tmp_path / "r.h5")
    assert done.code == 0, done.stderr
    with StoreReader(tmp_path / "r.h5") as reader:
        assert reader.provenance["reference_step"] == 10
        assert [record["step"] for record in reader.records()] == [0, 10, 30, 100, 250, 500, 1000]


def test_the_selected_reference_message_is_kept(tmp_path: Path) -> None:
    done = fdl("analyze", SAMPLES, "--steps", "100,200", "--reference", "0", "-o", tmp_path / "r.h5")
    assert done.code == 1
    assert "error: --reference 0: no checkpoint selected by --steps / --every has that step" in done.stderr
    assert "fix: select the reference too (--steps 0,100,200), or omit --reference" in done.stderr


# ------------------------------------------------------------------------------------------ "-"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dash")
    done = fdl("analyze", SAMPLES, "--steps", "0,10", "-o", folder / "s.h5")
    assert done.code == 0, done.stderr
    return folder / "s.h5"


@pytest.mark.parametrize(("args", "message"), [
    (("export", "--what", "eigenvalues", "-o", "-"),
     "error: --out -: fdl export writes to stdout without --out, and takes --out as a file's path"),
    (("export", "--what", "eigenvalues", "--format", "npy", "--out", "-"),
     "error: --out -: fdl export writes to stdout without --out, and takes --out as a file's path"),
    (("report", "--format", "json", "--html", "-"), "error: --html -: the HTML report is written to a file"),
])
def test_dash_as_an_output_file_is_refused(store: Path, tmp_path: Path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    command, *rest = args
    done = fdl(command, store, *rest)
    assert done.code == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "-").exists()


def test_an_existing_file_that_cannot_be_written_is_refused_up_front_even_as_root(store: Path) -> None:
    """tests/test_s15_shell.py checks a read-only --html file only as a user without root (skipped where
    the suite runs as root); /proc/version refuses writing to root too."""
    done = fdl("report", store, "--format", "json", "--html", "/proc/version")
    assert done.code == 1
    assert done.stdout == ""  # nothing printed before the refusal
    assert "error: could not write /proc/version" in done.stderr and "Traceback" not in done.stderr
