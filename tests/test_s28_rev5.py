"""A review of how fdl names other frameworks' files (fdl_cli/foreign.py): PyTorch's own files and runs it read
before are still read, and what it says of the rest is true. Each test failed before its fix:

1. a torch.save file named `.tar` (the PyTorch tutorial's convention for a general checkpoint) or `.zip`, given
   explicitly, was analysed; it became "a tar archive: unpack it (tar -xf ...)", and in a folder scan the note
   and fix said so too, which `tar` refuses;
2. a run's folder holding a `saved_model.pb` (or an Orbax marker) beside its PyTorch checkpoints was skipped
   whole as a SavedModel: "no checkpoints";
3. the fix of a compressed checkpoint told by its first bytes (a gzip named `step_100.pt`) said `gunzip -k FILE`,
   which refuses a name without `.gz`;
4. under --watch a lock or a download left beside each save (`step_20.safetensors.lock`, then `step_30...`) was
   a new note at every save, where "not a checkpoint suffix" was said once, numbers aside;
5. 40 files of one kind (a folder of .gguf, or the files given) made an error 4 KB long, each said in full;
6. the tar fix (`tar -xf FILE -C OUT`) failed for an OUT not made yet; a Hugging Face tf_model.h5 was not told
   transformers' from_tf=True.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import torch

from tests.test_analyze import fdl
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored
from tests.test_s24_watch import _watch
from tests.tiny_models import mlp

MODEL = ("--model", "tests.tiny_models:mlp")


def _said(text: str) -> str:
    return " ".join(text.split())


def _probe(path: Path) -> Path:
    torch.save({"x": torch.randn(6, 4), "y": torch.arange(6) % 3}, path)
    return path


def _analyze(tmp_path: Path, *sources: Path):  # type: ignore[no-untyped-def]
    return fdl("analyze", *map(str, sources), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")


def _saves(folder: Path, suffix: str, **kwargs: bool) -> list[Path]:
    """Two torch.save checkpoints (a training loop's dict, its step inside) named checkpoint_N`suffix`."""
    folder.mkdir(exist_ok=True)
    paths = [folder / f"checkpoint_{step}{suffix}" for step in (1, 2)]
    for step, path in zip((1, 2), paths, strict=True):
        torch.save({"model": mlp(seed=step).state_dict(), "step": step}, path, **kwargs)
    return paths


# ----------------------------------------------------------- 1. torch.save files named .tar or .zip


@pytest.mark.parametrize(("suffix", "legacy"), [(".tar", False), (".zip", False), (".tar", True)])
def test_torch_saves_named_tar_or_zip_given_explicitly_are_analysed(tmp_path: Path, suffix: str, legacy: bool) -> None:
    """PyTorch's tutorial saves a general checkpoint as `.tar` (a torch.save zip, or a pickle in the old format):
    given by name, fdl analysed it, as any file it is given; it is no archive to unpack."""
    paths = _saves(tmp_path / "run", suffix, _use_new_zipfile_serialization=not legacy)
    done = _analyze(tmp_path, *paths)
    assert done.code == 0, done.stderr
    assert "2 checkpoints analysed" in done.stderr
    assert "archive" not in done.stderr


def test_a_folder_of_torch_saves_named_tar_is_not_told_to_untar_them(tmp_path: Path) -> None:
    """A folder scan does not call a torch.save file named `.tar` a tar archive, whose fix (`tar -xf`) fails on it:
    it reads it as a checkpoint (it skipped it for its suffix before; tests/test_s29_tarzip.py); a real tar beside
    them still is one."""
    run = tmp_path / "run"
    _saves(run, ".tar")
    done = _analyze(tmp_path, run)
    said = _said(done.stderr)
    assert done.code == 0 and "2 checkpoints analysed" in said, done.stderr
    assert "tar archive" not in said and "tar -xf" not in said, done.stderr
    with tarfile.open(run / "code.tar", "w") as archive:
        archive.add(run / "checkpoint_1.tar", arcname="checkpoint_1.pt")
    done = _analyze(tmp_path, run / "code.tar")
    assert done.code == 1 and "is a tar archive" in _said(done.stderr), done.stderr


# ------------------------------------------------ 2. a marker file beside a run's PyTorch checkpoints


@pytest.mark.parametrize("marker", ["saved_model.pb", "_METADATA"])
def test_a_run_with_a_framework_marker_beside_its_checkpoints_is_analysed(tmp_path: Path, marker: str) -> None:
    """A run that exported a SavedModel's graph (or keeps a file named as Orbax's) beside its .pt checkpoints
    was skipped whole as that framework's folder; its checkpoints are analysed."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    (run / marker).write_bytes(b"\x08\x01\x12\x00")
    done = _analyze(tmp_path, run)
    assert done.code == 0, done.stderr
    assert "2 checkpoints analysed" in done.stderr


# ------------------------------------------------ 3. the fix of a compressed file named as a checkpoint


@pytest.mark.skipif(shutil.which("gunzip") is None, reason="gunzip is not installed")
def test_the_fix_of_a_gzip_named_pt_decompresses_it(tmp_path: Path) -> None:
    """The gzip told by its magic number, named step_100.pt: the command the fix gives, run as said, makes a
    file fdl reads (`gunzip -k step_100.pt` refuses: "unknown suffix -- ignored")."""
    buffer = io.BytesIO()
    torch.save(mlp(seed=0).state_dict(), buffer)
    packed = tmp_path / "step_100.pt"
    packed.write_bytes(gzip.compress(buffer.getvalue()))
    done = fdl("inspect", str(packed), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1 and "a gzip-compressed file" in said
    command = said.split("a file named otherwise: ", 1)[1].split(")", 1)[0]  # `gunzip -c FILE > OUT`
    out = tmp_path / "step_100_plain.pt"
    subprocess.run(command.replace("FILE", str(packed)).replace("OUT", str(out)), shell=True, check=True)
    assert fdl("inspect", str(out), *MODEL).code == 0


# ------------------------------------------------ 4. --watch: a lock or a download beside each save


def test_a_lock_left_beside_each_save_is_noted_once_under_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer that leaves `step_N.safetensors.lock` beside each save: the first is noted, for what it is, and
    the next saves' are not (as "not a checkpoint suffix" was said once for them, numbers aside)."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10])
    out = tmp_path / "s.h5"

    def save(step: int) -> None:
        lock = folder / f"step_{step}.safetensors.lock"
        lock.write_bytes(b"")
        past = time.time() - 60
        os.utime(lock, (past, past))
        _arrive(source, folder, f"step_{step}.safetensors")

    with _polls(monkeypatch, lambda: save(20), lambda: None, lambda: save(30), lambda: None):
        summary, reporter = _watch(folder, out)
    assert summary.interrupted and summary.failed == []
    assert sorted(_stored(out)) == [0, 10, 20, 30]
    locks = [note for note in reporter.notes if ".lock" in note]
    assert locks == ["skipped step_20.safetensors.lock: a lock file (held by a download or a save in progress), "
                     "no checkpoint"], reporter.notes


# ------------------------------------------------ 5. many files of one kind: one entry, the first named


@pytest.mark.parametrize("given", ["folder", "files"])
def test_many_files_of_one_foreign_kind_are_one_entry_of_the_error(tmp_path: Path, given: str) -> None:
    """A folder of 40 GGUF files (or the 40 given): the error said each in full, 4 KB before its fix, where
    files skipped for their suffix are one entry naming the first 6 (`_condensed`)."""
    run = tmp_path / "run"
    run.mkdir()
    for index in range(40):
        (run / f"model-{index:02d}.gguf").write_bytes(b"GGUF" + bytes(28))
    done = _analyze(tmp_path, *(sorted(run.iterdir()) if given == "files" else [run]))
    said = _said(done.stderr)
    assert done.code == 1
    assert said.count("a GGUF file") == 1, done.stderr
    assert "model-00.gguf" in said and "model-39.gguf" not in said and "34 more" in said, done.stderr
    assert "gguf_file=" in said


# ------------------------------------------------ 6. the fixes, as said, work


def test_the_fix_of_a_tar_unpacks_it_as_said(tmp_path: Path) -> None:
    """`tar -xf FILE -C OUT` refuses an OUT that does not exist ("Cannot open: No such file or directory"):
    the command the fix gives makes the folder, whose checkpoint fdl then reads."""
    buffer = io.BytesIO()
    torch.save(mlp(seed=0).state_dict(), buffer)
    (tmp_path / "step_100.pt").write_bytes(buffer.getvalue())
    with tarfile.open(tmp_path / "run.tar", "w") as archive:
        archive.add(tmp_path / "step_100.pt", arcname="step_100.pt")
    done = fdl("inspect", str(tmp_path / "run.tar"), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1 and "a tar archive" in said
    command = said.split("unpack it (", 1)[1].split(")", 1)[0]
    out = tmp_path / "unpacked"
    subprocess.run(command.replace("FILE", str(tmp_path / "run.tar")).replace("OUT", str(out)), shell=True,
                   check=True, capture_output=True)
    assert fdl("inspect", str(out / "step_100.pt"), *MODEL).code == 0


def test_a_hugging_face_tf_model_h5_is_told_its_transformers_conversion(tmp_path: Path) -> None:
    """A Hugging Face TF model's tf_model.h5 (Keras' save_weights: keras_version at its root) got no word of
    `from_pretrained(FOLDER, from_tf=True)`, which a TensorFlow checkpoint's fix gives."""
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "tf_model.h5", "w") as handle:
        handle.attrs["keras_version"] = b"2.15.0"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["layer_names"] = np.array([b"bert"])
        handle.create_group("bert")
    done = fdl("inspect", str(tmp_path / "tf_model.h5"), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1 and "a Keras model" in said
    assert "from_tf=True" in said, done.stderr
