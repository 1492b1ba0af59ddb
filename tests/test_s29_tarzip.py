"""torch.save files named `.tar` or `.zip` in a folder scan. PyTorch's tutorial saves a general checkpoint as
`.tar` (the ImageNet example as `checkpoint.pth.tar`, `model_best.pth.tar`), and some name theirs `.zip`: given by
name they were read, but `fdl analyze run_dir/` skipped them ("not a checkpoint suffix"). A folder scan now reads
one whose bytes are torch.save's (a zip of torch's entries, the pickle stream of PyTorch before 1.6, the tar of
PyTorch 0.1), and still names a real archive (a zip of a checkpoint folder, a tarball of a run) as one.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import torch

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl
from tests.tiny_models import mlp

MODEL = ("--model", "tests.tiny_models:mlp")


def _said(text: str) -> str:
    return " ".join(text.split())


def _analyze(tmp_path: Path, *sources: Path):  # type: ignore[no-untyped-def]
    probe = tmp_path / "probe.pt"
    torch.save({"x": torch.randn(6, 4), "y": torch.arange(6) % 3}, probe)
    return fdl("analyze", *map(str, sources), *MODEL, "--probe", str(probe), "--out", str(tmp_path / "out.h5"),
               "--device", "cpu")


def _steps(tmp_path: Path) -> dict[int, str]:
    """The stored steps, each with the name of the file read for it."""
    with StoreReader(tmp_path / "out.h5") as reader:
        return {record["step"]: Path(record["path"]).name for record in reader.records()}


def _legacy_tar_save(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save's format of PyTorch 0.1: a tar of `sys_info`, `storages`, `tensors` and `pickle` (the state, its
    tensors by key), which torch.load still reads, by full unpickling only (weights_only=False)."""
    tensors = [tensor.contiguous().float() for tensor in state.values()]
    storages, heads, body = io.BytesIO(), io.BytesIO(), io.BytesIO()
    pickle.dump(len(tensors), storages, protocol=2)
    pickle.dump(len(tensors), heads, protocol=2)
    for key, tensor in enumerate(tensors):
        pickle.dump((f"s{key}", "cpu", torch.FloatStorage), storages, protocol=2)
        storages.write(struct.pack("<q", tensor.numel()) + tensor.numpy().tobytes())
        pickle.dump((key, f"s{key}", torch.FloatTensor), heads, protocol=2)
        heads.write(struct.pack("<ii", tensor.dim(), 0) + struct.pack(f"<{tensor.dim()}q", *tensor.shape)
                    + struct.pack(f"<{tensor.dim()}q", *tensor.stride()) + struct.pack("<q", 0))
    pickle.dump([], storages, protocol=2)
    ids = {id(tensor): key for key, tensor in enumerate(tensors)}

    class _ByKey(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return str(ids[id(obj)]) if id(obj) in ids else None

    _ByKey(body, protocol=2).dump(dict(zip(state, tensors, strict=True)))
    members = {"sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
               "storages": storages.getvalue(), "tensors": heads.getvalue(), "pickle": body.getvalue()}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_folder_scan_reads_torch_saves_named_tar_or_zip(tmp_path: Path) -> None:
    """The tutorial's `.tar`, a `.zip`, the ImageNet example's `.pth.tar` and a pre-1.6 save named `.tar` are each a
    step, read from its name; `model_best.tar`, a copy of the last, is said to be one (as `model_best.pt` is); a zip
    of a checkpoint folder and a tarball of a run beside them are still archives, with their fix."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=1).state_dict(), run / "checkpoint_epoch1.tar")
    torch.save(mlp(seed=2).state_dict(), run / "checkpoint_epoch2.zip")
    torch.save(mlp(seed=3).state_dict(), run / "checkpoint_epoch3.TAR")
    torch.save(mlp(seed=4).state_dict(), run / "checkpoint_epoch4.tar", _use_new_zipfile_serialization=False)
    torch.save(mlp(seed=12).state_dict(), run / "checkpoint_epoch12.pth.tar")
    torch.save(mlp(seed=12).state_dict(), run / "model_best.tar")
    with zipfile.ZipFile(run / "checkpoint-500.zip", "w") as archive:  # a zip of an HF checkpoint folder
        archive.write(run / "checkpoint_epoch1.tar", "checkpoint-500/pytorch_model.bin")
        archive.writestr("checkpoint-500/config.json", "{}")
    with zipfile.ZipFile(run / "project.zip", "w") as archive:  # first named as torch's ARCHIVE/data/0 is
        archive.writestr("project/data/train.csv", "x,y\n")
        archive.writestr("project/train.py", "print()\n")
    with tarfile.open(run / "old_run.tar", "w") as archive:  # a tarball of a run
        archive.add(run / "checkpoint_epoch2.zip", arcname="old_run/step_2.pt")
    done = _analyze(tmp_path, run)
    said = _said(done.stderr)
    assert done.code == 0, done.stderr
    assert "5 checkpoints analysed" in said
    assert _steps(tmp_path) == {1: "checkpoint_epoch1.tar", 2: "checkpoint_epoch2.zip", 3: "checkpoint_epoch3.TAR",
                                4: "checkpoint_epoch4.tar", 12: "checkpoint_epoch12.pth.tar"}
    assert ("skipped model_best.tar: no step of its own; the same weights as checkpoint_epoch12.pth.tar (step 12), "
            "analysed there") in said
    assert "skipped 2 files, each a zip archive: checkpoint-500.zip, project.zip" in said, done.stderr
    assert "skipped old_run.tar: a tar archive" in said
    assert "not a checkpoint suffix" not in said


def test_one_step_saved_as_pt_and_as_tar(tmp_path: Path) -> None:
    """ckpt_10.pt beside ckpt_10.tar: the same weights are one checkpoint, the copy skipped with the note a `.pt`
    copy gets; different weights at one step are the error two `.pt` files at one step get."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=5).state_dict(), run / "ckpt_5.pt")
    torch.save(mlp(seed=10).state_dict(), run / "ckpt_10.pt")
    torch.save(mlp(seed=10).state_dict(), run / "ckpt_10.tar")
    done = _analyze(tmp_path, run)
    assert done.code == 0, done.stderr
    assert "skipped ckpt_10.tar: same weights and step (10) as ckpt_10.pt" in _said(done.stderr)
    assert _steps(tmp_path) == {5: "ckpt_5.pt", 10: "ckpt_10.pt"}
    torch.save(mlp(seed=11).state_dict(), run / "ckpt_10.tar")
    done = _analyze(tmp_path, run)
    said = _said(done.stderr)
    assert done.code == 1
    assert f"two checkpoints have the same step 10: {run / 'ckpt_10.pt'} (name) and {run / 'ckpt_10.tar'} (name)" \
        in said, done.stderr
    assert "--glob 'ckpt_*.pt'" in said


def test_a_torch_save_named_tar_cut_short_in_a_folder_scan(tmp_path: Path) -> None:
    """A download cut short (no zip central directory) named `.tar` or `.pth.tar` is a checkpoint that failed,
    "cut short", not a file skipped for its suffix nor a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=1).state_dict(), run / "checkpoint_epoch1.tar")
    for name in ("checkpoint_epoch2.tar", "checkpoint_epoch3.pth.tar"):
        torch.save(mlp(seed=2).state_dict(), run / name)
        whole = (run / name).read_bytes()
        (run / name).write_bytes(whole[: len(whole) // 2])
    done = _analyze(tmp_path, run)
    said = _said(done.stderr)
    assert "Traceback" not in done.stderr
    assert "1 checkpoint analysed, 2 failed" in said, done.stderr
    for name in ("checkpoint_epoch2.tar", "checkpoint_epoch3.pth.tar"):
        assert f"cannot read the checkpoint {run / name} got: a zip archive cut short" in said


def test_a_legacy_tar_save_is_not_told_to_be_untarred(tmp_path: Path) -> None:
    """The tar PyTorch 0.1's torch.save wrote: in a folder scan or named, it is no archive to unpack (`tar -xf`
    gives files no tool reads); torch.load reads it only by running its pickle, so the fix is to re-save it."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=1).state_dict(), run / "checkpoint_epoch1.tar")
    state = mlp(seed=2).state_dict()
    _legacy_tar_save(state, run / "checkpoint_epoch2.pth.tar")
    back = torch.load(run / "checkpoint_epoch2.pth.tar", weights_only=False)  # the format torch.load reads
    assert all(torch.equal(back[key], value) for key, value in state.items())
    _legacy_tar_save(mlp(seed=3).state_dict(), run / "checkpoint_epoch3.tar")
    done = _analyze(tmp_path, run)
    said = _said(done.stderr)
    assert "1 checkpoint analysed, 2 failed" in said, done.stderr
    assert "tar archive" not in said and "tar -xf" not in said
    for name in ("checkpoint_epoch2.pth.tar", "checkpoint_epoch3.tar"):
        assert f"cannot read the checkpoint {run / name} got: PyTorch 0.1's torch.save format (a tar" in said
    assert "torch.load(FILE, weights_only=False)" in said
