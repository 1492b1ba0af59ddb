"""A resume notices stored checkpoints whose files changed since they were analysed.

A stored checkpoint is not analysed again. Before, a file replaced since (a training re-run into the
same folder with another learning rate: with the same seed the step-0 file, the reference, is
bit-identical, so the reference check passed) kept the old file's numbers: the resume said "already
in the store" and exited 0. Now a resume compares each stored checkpoint's file size and
modification time with those recorded, hashes the file again when they differ, and refuses a file
whose hash changed; a file found unchanged gets its new size and time recorded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from fdl_cli.checkpoints import file_signature
from fdl_cli.store import StoreReader
from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture
from tests.test_distributed import _make_run, _single, _torchrun_process

HASHING = "hashing 1 stored checkpoint file whose size or modification time is not the one recorded"


def _copy(run: Path, folder: Path) -> Path:  # noqa: F811 - `run` is the fixture's value
    shutil.copytree(run / "ckpts", folder)
    return folder


def _signatures(store: Path) -> dict[int, str]:
    with h5py.File(store, "r") as handle:
        return {
            int(group.attrs["step"]): group.attrs.get("file_signature", "")
            for group in handle["checkpoints"].values()
        }


def test_a_replaced_stored_checkpoint_is_refused_not_kept(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    before = store.read_bytes()
    # the re-run's step-20 file: other weights (as a changed learning rate would give), same name
    state = torch.load(folder / "epoch_20.pt", weights_only=True)
    torch.save({name: value * 1.5 for name, value in state.items()}, folder / "epoch_20.pt")
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert (
        f"error: 1 checkpoint file changed since it was analysed into {store}: step 20 "
        f"({folder / 'epoch_20.pt'}); the store holds the numbers of the file it replaced"
    ) in refused.stderr
    assert "fix: restore the files, or re-analyse everything with --overwrite" in refused.stderr
    assert refused.records == [] and store.read_bytes() == before
    redone = analyze(run, store, "--overwrite", sources=(str(folder),))
    assert redone.code == 0 and [r["step"] for r in redone.records] == [0, 10, 20, 30]


def test_several_replaced_files_are_named_together(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    for step in (10, 30):
        (folder / f"epoch_{step}.pt").write_bytes((run / "ckpts" / "epoch_20.pt").read_bytes())
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1
    # both are copies of step 20's file, which the message says (session 16)
    copy = f"now a copy of {folder / 'epoch_20.pt'}, the file stored as step 20"
    assert (
        f"2 checkpoint files changed since they were analysed into {store}: step 10 ({folder / 'epoch_10.pt'}, "
        f"{copy}), step 30 ({folder / 'epoch_30.pt'}, {copy})"
    ) in refused.stderr
    assert "or remove the copies of steps 10, 30 (the store keeps the numbers of the files they replaced" in (
        refused.stderr)


def test_a_touched_file_is_hashed_once_then_its_new_time_is_recorded(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    recorded = _signatures(store)
    assert recorded == {step: file_signature(folder / f"epoch_{step}.pt") for step in (0, 10, 20, 30)}
    stat = (folder / "epoch_20.pt").stat()
    os.utime(folder / "epoch_20.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = analyze(run, store, sources=(str(folder),))
    assert touched.code == 0, touched.stderr
    assert HASHING in touched.stderr and touched.records == []
    assert _signatures(store) == {**recorded, 20: file_signature(folder / "epoch_20.pt")} != recorded
    again = analyze(run, store, sources=(str(folder),))
    assert again.code == 0 and "hashing" not in again.stderr


def test_a_store_without_recorded_times_is_checked_once(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """Stores written before fdl recorded file signatures: the first resume hashes every stored file,
    records their signatures, and catches a file replaced meanwhile."""
    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    with h5py.File(store, "r+") as handle:
        for group in handle["checkpoints"].values():
            del group.attrs["file_signature"]
    first = analyze(run, store, sources=(str(folder),))
    assert first.code == 0, first.stderr
    assert "hashing 4 stored checkpoint files" in first.stderr
    assert _signatures(store) == {step: file_signature(folder / f"epoch_{step}.pt") for step in (0, 10, 20, 30)}
    assert "hashing" not in analyze(run, store, sources=(str(folder),)).stderr
    with h5py.File(store, "r+") as handle:
        del handle["checkpoints/step_30"].attrs["file_signature"]
    (folder / "epoch_30.pt").write_bytes((run / "ckpts" / "epoch_10.pt").read_bytes())
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "step 30" in refused.stderr
    assert "1 checkpoint file changed since it was analysed" in refused.stderr, refused.stderr


def test_copied_checkpoints_with_new_times_resume(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """The run and its store copied elsewhere without their times (plain cp): same content, so the
    resume goes on, and a new checkpoint is analysed as before."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 10, 20):
        shutil.copyfile(run / "ckpts" / f"epoch_{step}.pt", folder / f"epoch_{step}.pt")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for step in (0, 10, 20):
        shutil.copyfile(folder / f"epoch_{step}.pt", elsewhere / f"epoch_{step}.pt")
        stat = (elsewhere / f"epoch_{step}.pt").stat()
        os.utime(elsewhere / f"epoch_{step}.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    shutil.copyfile(run / "ckpts" / "epoch_30.pt", elsewhere / "epoch_30.pt")
    moved = analyze(run, store, sources=(str(elsewhere),))
    assert moved.code == 0, moved.stderr
    assert "hashing 3 stored checkpoint files" in moved.stderr
    assert [r["step"] for r in moved.records] == [30]


def test_file_signature_of_a_folder_covers_each_weight_file(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(folder / "model.safetensors"))
    (folder / "notes.txt").write_text("not a weight file")
    signature = file_signature(folder)
    stat = (folder / "model.safetensors").stat()
    assert signature == f"model.safetensors:{stat.st_size}:{stat.st_mtime_ns}"
    (folder / "notes.txt").write_text("edited")
    assert file_signature(folder) == signature
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_signature(folder) != signature


@pytest.mark.slow
def test_torchrun_refuses_a_replaced_file_on_every_rank(tmp_path: Path) -> None:
    """Rank 0 checks the store when it opens it and tells the other ranks, which stop too (no hang)."""
    run_dir = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _single(run_dir, out)  # the store, made in this process: the torchrun job that resumes it is the point
    before = out.read_bytes()
    (run_dir / "step_20.safetensors").write_bytes((run_dir / "step_40.safetensors").read_bytes())
    refused = _torchrun_process(run_dir, out)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "error: 1 checkpoint file changed since it was analysed" in refused.stderr
    assert "rank 0 could not open the store" not in refused.stderr  # each rank checks, and says so itself
    assert "step 20" in refused.stderr
    assert "fdl_cli/" not in refused.stderr  # torchrun's own traceback of a failed child only
    assert out.read_bytes() == before


def test_a_stored_file_that_now_holds_another_step_is_refused(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """Review: the check went by step only. Training re-run into the same folder with another batch
    size: the files keep their names (epoch_N.pt) but their metadata's step changes (N * 120 instead
    of N * 100). No stored step was among this run's, so nothing was hashed: the resume added the new
    run's steps between the old run's (two trainings in one store, exit 0). A stored checkpoint's file
    that is now one of this run's checkpoints at another step is hashed too, and refused if changed,
    unless that step comes after every stored one (epoch_3's 360 > 300: a file that training goes on
    rewriting, see the next test)."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    states = {step: torch.load(run / "ckpts" / f"epoch_{step}.pt", weights_only=True) for step in (0, 10, 20, 30)}

    def train(per_epoch: int, scale: float) -> None:
        for epoch, step in enumerate((0, 10, 20, 30)):
            state = {k: v * (1.0 if epoch == 0 else scale) for k, v in states[step].items()}
            torch.save({"model_state_dict": state, "global_step": epoch * per_epoch}, folder / f"epoch_{epoch}.pt")

    train(100, 1.0)
    store = tmp_path / "s.h5"
    first = analyze(run, store, sources=(str(folder),))
    assert first.code == 0 and [r["step"] for r in first.records] == [0, 100, 200, 300]
    before = store.read_bytes()
    train(120, 1.5)
    refused = analyze(run, store, sources=(str(folder),))
    assert refused.code == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"2 checkpoint files changed since they were analysed into {store}: step 100 (" in refused.stderr
    assert "now step 120" in refused.stderr and "now step 240" in refused.stderr
    assert refused.records == [] and store.read_bytes() == before


def test_a_file_that_training_rewrites_is_no_changed_file(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """A loop that keeps its initial weights (the reference) and otherwise saves only latest.pt (its
    step in the dict), analysed as it goes: each resume finds the stored steps' file holding a later
    step. Their files are gone, not changed; the store keeps their numbers as analysed and the new
    step is added."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    store = tmp_path / "s.h5"
    shutil.copyfile(run / "ckpts" / "epoch_0.pt", folder / "init_0.pt")
    assert analyze(run, store, sources=(str(folder),)).code == 0
    for step in (10, 20, 30):
        state = torch.load(run / "ckpts" / f"epoch_{step}.pt", weights_only=True)
        torch.save({"model_state_dict": state, "step": step}, folder / "latest.pt")
        result = analyze(run, store, sources=(str(folder),))
        assert result.code == 0, result.stderr
        assert [r["step"] for r in result.records] == [step]
        assert "changed" not in result.stderr
    with StoreReader(store) as reader:
        assert reader.steps() == [0, 10, 20, 30]


def test_files_verified_before_a_ctrl_c_keep_their_new_times(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A resume that must hash many stored files (a store from before file signatures, a copied run)
    and is stopped half-way keeps what it verified: the next one hashes only the rest."""
    from fdl_cli import checkpoints

    folder = _copy(run, tmp_path / "ckpts")
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    for step in (0, 10, 20, 30):
        stat = (folder / f"epoch_{step}.pt").stat()
        os.utime(folder / f"epoch_{step}.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 3_000_000_000))
    real = checkpoints.sha256_file

    def interrupted_at_step_20(path: Path) -> str:
        if Path(path).name == "epoch_20.pt":
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(checkpoints, "sha256_file", interrupted_at_step_20)
    stopped = analyze(run, store, sources=(str(folder),))
    assert stopped.code == 130, stopped.stderr
    monkeypatch.setattr(checkpoints, "sha256_file", real)
    recorded = _signatures(store)
    assert [recorded[step] == file_signature(folder / f"epoch_{step}.pt") for step in (0, 10, 20, 30)] == [
        True, True, False, False,
    ]
    rest = analyze(run, store, sources=(str(folder),))
    assert rest.code == 0 and "hashing 2 stored checkpoint files" in rest.stderr


def test_a_file_that_changes_while_it_is_read_fails(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Its numbers would be of the content loaded, its recorded hash of the content hashed after."""
    from fdl_cli import checkpoints

    folder = _copy(run, tmp_path / "ckpts")
    real, seen = checkpoints.file_signature, []

    def moving(path: Path) -> str:
        if Path(path).name == "epoch_20.pt":
            seen.append(path)
            return f"{real(path)}-{len(seen)}"  # another size or time at each look
        return real(path)

    monkeypatch.setattr(checkpoints, "file_signature", moving)
    result = analyze(run, tmp_path / "s.h5", sources=(str(folder),))
    assert result.code == 1
    assert f"{folder / 'epoch_20.pt'} changed while fdl was reading it" in result.stderr
    assert [r["step"] for r in result.records] == [0, 10, 30]


@pytest.mark.slow
def test_torchrun_ranks_share_the_hashing_and_record_every_file(tmp_path: Path) -> None:
    """Every stored file touched: the ranks hash their shares, and rank 0 records every new signature
    (those rank 1 verified too), so the next resume hashes nothing."""
    run_dir = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _single(run_dir, out)  # the store, made in this process: the torchrun jobs that resume it are the point
    files = sorted(run_dir.glob("step_*.safetensors"))
    for path in files:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    resumed = _torchrun_process(run_dir, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"hashing {len(files)} stored checkpoint files" in resumed.stderr
    assert _signatures(out) == {int(path.stem.split("_")[1]): file_signature(path) for path in files}
    again = _torchrun_process(run_dir, out)
    assert again.returncode == 0 and "hashing" not in again.stderr
