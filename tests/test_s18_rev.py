"""Session 18's review: the defects an adversarial user found in the session's own changes (--step-offset
on restarted jobs saved one folder per step or with an offset already given, ...). Tiny digits-sized MLPs
on the CPU, as tests/test_s18_runs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.errors import SameStepError
from tests.test_s18_runs import MODEL, SMALL, fdl
from tests.tiny_models import mlp

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


def _save(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mlp(seed=seed).state_dict().items()}, str(path))


def _restarted(tmp_path: Path, layout: str = "step_{step}.safetensors") -> tuple[Path, Path]:
    """run1: steps 0, 10, 20 (weights of seeds 0, 1, 2); run2: the job restarted from step 20 with its step
    count reset (its step 0 repeats step 20's weights), each checkpoint saved at `layout`."""
    for step in (0, 10, 20):
        _save(tmp_path / "run1" / layout.format(step=step), step // 10)
        _save(tmp_path / "run2" / layout.format(step=step), step // 10 + 2)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return tmp_path / "run1", tmp_path / "run2"


def _steps(root: Path, sources: list[Path], **options: object) -> list[tuple[str, int]]:
    """(path under `root`, step) of each checkpoint discovery keeps."""
    discovery = discover_checkpoints(sources, **options)  # type: ignore[arg-type]
    return [(ref.path.relative_to(root).as_posix(), ref.step) for ref in discovery.checkpoints]


# ------------------------------------------------------------------------ --step-offset, one folder per step


def test_step_offset_takes_in_a_restarted_job_saved_one_folder_per_step(tmp_path: Path) -> None:
    """DeepSpeed's run2/global_step0/mp_rank_00.safetensors: `--step-offset run2=20` took in only the files
    directly in run2, none here; the run then failed at the same steps, the offset only named in a note that
    the error hid, and the error advised the --step-regex that was given already."""
    run1, run2 = _restarted(tmp_path, "global_step{step}/mp_rank_00.safetensors")
    sources = sorted([*run1.glob("global_step*"), *run2.glob("global_step*")])
    regex = r"global_step(\d+)/"
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints(sources, step_regex=regex)
    message = " ".join(caught.value.message.split())
    assert f"pass --step-regex '{regex}'" not in message  # given already
    assert f"the folders {run1} (3 checkpoints) and {run2} (3) hold checkpoints of the same steps" in message
    assert f"--step-offset '{run2}=20' (mp_rank_00.safetensors holds the weights of " \
        f"{run1 / 'global_step20' / 'mp_rank_00.safetensors'})" in message
    assert _steps(tmp_path, sources, step_regex=regex, step_offsets=[(str(run2), 20)]) == [
        ("run1/global_step0/mp_rank_00.safetensors", 0), ("run1/global_step10/mp_rank_00.safetensors", 10),
        ("run1/global_step20/mp_rank_00.safetensors", 20), ("run2/global_step10/mp_rank_00.safetensors", 30),
        ("run2/global_step20/mp_rank_00.safetensors", 40)]


def test_a_first_save_in_the_restarted_folder_is_named_as_a_restart(tmp_path: Path) -> None:
    """--watch over run1 and run2 as the restarted job saves its first checkpoint in run2: one file there, at
    a step of run1's, was sent to a --step-regex of the names, which read the same steps."""
    run1, run2 = _restarted(tmp_path)
    for step in (10, 20):
        (run2 / f"step_{step}.safetensors").unlink()
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints([run1, run2])
    message = " ".join(caught.value.message.split())
    assert "--step-regex" not in message
    assert f"the folders {run1} (3 checkpoints) and {run2} (1) hold checkpoints of the same steps" in message
    assert f"--step-offset '{run2}=20' (step_0.safetensors holds the weights of {run1 / 'step_20.safetensors'})" \
        in message


# -------------------------------------------------------------------- --step-offset given, but the wrong N


def test_the_offset_advised_counts_from_the_steps_read_not_from_a_wrong_offset_given(tmp_path: Path) -> None:
    """`--step-offset run2=10` of a job restarted from step 20 puts run2's files on run1's steps; the error
    advised `--step-offset 'run2=10'`, the offset given (the gap counted from the offset steps), again."""
    run1, run2 = _restarted(tmp_path)
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints([run1, run2], step_offsets=[(str(run2), 10)])
    message = " ".join(caught.value.message.split())
    assert f"--step-offset '{run2}=20' (step_0.safetensors holds the weights of {run1 / 'step_20.safetensors'})" \
        in message
    # the same under other names in one folder (resume_step_N beside step_N)
    for step in (0, 10, 20):
        (run2 / f"step_{step}.safetensors").rename(run1 / f"resume_step_{step}.safetensors")
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints([run1], step_offsets=[("resume_step_*.safetensors", 10)])
    message = " ".join(caught.value.message.split())
    assert "--step-offset 'resume_step_*.safetensors=20' (resume_step_0.safetensors holds the weights of " \
        "step_20.safetensors)" in message


def test_step_offset_globs_match_the_path_as_a_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A glob matched from the right against the path as given missed `run2/*` for the folder given as `.`
    (fdl analyze ../run1 . run from inside run2) and an absolute glob for folders given relative."""
    run1, run2 = _restarted(tmp_path)
    expected = [("run1/step_0.safetensors", 0), ("run1/step_10.safetensors", 10), ("run1/step_20.safetensors", 20),
                ("run2/step_10.safetensors", 30), ("run2/step_20.safetensors", 40)]
    monkeypatch.chdir(run2)
    found = discover_checkpoints([Path("../run1"), Path(".")], step_offsets=[("run2/*", 20)])
    assert [(ref.path.resolve().relative_to(tmp_path).as_posix(), ref.step) for ref in found.checkpoints] == expected
    monkeypatch.chdir(tmp_path)
    found = discover_checkpoints([Path("run1"), Path("run2")], step_offsets=[(f"{run2}/*.safetensors", 20)])
    assert [(ref.path.as_posix(), ref.step) for ref in found.checkpoints] == expected


# ---------------------------------------------------------------- a resume reading stored files at other steps


def test_a_resume_whose_offset_puts_a_stored_file_on_another_stored_step_names_the_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored with --step-offset run2=20 (run2's step_10 as 30), resumed with run2=30: run2/step_10 unchanged
    is read as step 40, and run2/step_0 lands on the stored step 30. Refused as "holds other files' numbers
    ... if these are the same checkpoints moved or copied, restore the files", which sent the user to their
    files; store.md says a stored file found unchanged at another step is refused naming both steps."""
    run1, run2 = _restarted(tmp_path)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", tmp_path / "probe.npz", "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=30")
    assert status == 1
    flat = " ".join(err.split())
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 40 in this run (from "
            "its name + 30, --step-offset)") in flat, flat
    assert "other --step-offset / --step-regex options than the run that made the store" in flat
    assert "holds other files' numbers" not in flat
    assert out.read_bytes() == before


def test_a_step_offset_that_takes_in_no_checkpoint_is_an_error_but_under_watch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--step-offset run_2=20` (a typo) took in nothing: a note, and the run analysed run2's files at their
    reset steps, interleaved with run1's where those did not collide (`--steps 999` is an error too).
    --watch keeps the note: the folder may not exist yet."""
    run1, run2 = _restarted(tmp_path)
    for step in (0, 10, 20):  # run2 saved at steps 5, 15, 25 after its reset: no step of run1's
        (run2 / f"step_{step}.safetensors").rename(run2 / f"step_{step + 5}.safetensors")
    out = tmp_path / "run.h5"
    status, _, err = fdl(capsys, "analyze", run1, run2, "--model", MODEL, "--probe", tmp_path / "probe.npz",
                         "-o", out, *SMALL, "--step-offset", f"{tmp_path / 'run_2'}=20")
    assert status == 1
    flat = " ".join(err.split())
    assert f"error: --step-offset '{tmp_path / 'run_2'}=20' matches none of the checkpoints found" in flat, flat
    assert f"got: checkpoints in {run1}, {run2}" in flat
    assert not out.exists()
    found = discover_checkpoints([run1, run2], step_offsets=[("run_2", 20)], empty_ok=True)
    assert any("--step-offset 'run_2=20' matches none of the checkpoints found" in note for note in found.notes)


def test_a_folder_offset_leaves_out_a_run_kept_in_a_sub_folder_of_it(tmp_path: Path) -> None:
    """The first run moved into out/old and the job restarted into out itself: `--step-offset out=20` moves
    out's own files, not old's (a folder of several checkpoints is no folder of one step)."""
    run1, run2 = _restarted(tmp_path)
    run1.rename(run2 / "old")
    assert _steps(tmp_path, [run2 / "old", run2], step_offsets=[(str(run2), 20)]) == [
        ("run2/old/step_0.safetensors", 0), ("run2/old/step_10.safetensors", 10),
        ("run2/old/step_20.safetensors", 20), ("run2/step_10.safetensors", 30), ("run2/step_20.safetensors", 40)]
