"""Checkpoints of other frameworks, and files that are not yet (or no longer) a checkpoint: a Keras model, a
TensorFlow SavedModel or checkpoint, a Flax or Orbax save, ONNX, GGUF, a JAX .npz, an archive or a compressed
file, a Git LFS pointer, a download not finished. fdl reads PyTorch weights; for each of these it says what the
file is and how to get PyTorch weights from it, found by a look at its name, its first bytes or its folder's
markers (never by importing the framework)."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests import warm
from tests.cli_run import REPO
from tests.test_analyze import fdl
from tests.tiny_models import mlp

MODEL = ("--model", "tests.tiny_models:mlp")


# ------------------------------------------------------------------ the files, as their frameworks write them


def _probe(path: Path) -> Path:
    torch.save({"x": torch.randn(6, 4), "y": torch.arange(6) % 3}, path)
    return path


def _state() -> dict[str, torch.Tensor]:
    return mlp(seed=0).state_dict()


def _h5_bytes(fill) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        fill(handle)
    return buffer.getvalue()


def _keras3_weights(handle: h5py.File) -> None:
    """Keras 3's weights file (H5IOStore): `layers/NAME/vars/0, 1, ...`, an empty `vars` for the model."""
    handle.create_group("vars")
    dense = handle.create_group("layers/dense/vars")
    dense["0"] = np.zeros((4, 8), np.float32)
    dense["1"] = np.zeros(8, np.float32)


def keras_zip(path: Path) -> Path:
    """A Keras 3 `.keras` file: a zip of metadata.json, config.json and model.weights.h5."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.3.3", "date_saved": "2024-05-01@10:00:00"}))
        archive.writestr("config.json", json.dumps({"module": "keras", "class_name": "Sequential", "config": {}}))
        archive.writestr("model.weights.h5", _h5_bytes(_keras3_weights))
    return path


def keras_h5(path: Path, *, weights_only: bool = False) -> Path:
    """A tf.keras 2 `model.save("model.h5")` (root attributes keras_version, backend, model_config; the weights
    under model_weights, its layer_names) or `save_weights("w.h5")` (layer_names at the root)."""
    with h5py.File(path, "w") as handle:
        top = handle if weights_only else handle.create_group("model_weights")
        if not weights_only:
            handle.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        for group in {id(handle): handle, id(top): top}.values():
            group.attrs["keras_version"] = b"2.15.0"
            group.attrs["backend"] = b"tensorflow"
        top.attrs["layer_names"] = np.array([b"dense"])
        layer = top.create_group("dense")
        layer.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        layer["dense/kernel:0"] = np.zeros((4, 8), np.float32)
        layer["dense/bias:0"] = np.zeros(8, np.float32)
    return path


def keras3_weights_h5(path: Path) -> Path:
    path.write_bytes(_h5_bytes(_keras3_weights))
    return path


def saved_model(folder: Path) -> Path:
    """A TensorFlow SavedModel: saved_model.pb (a SavedModel protobuf: schema version 1, a meta graph) beside
    variables/ (a TensorFlow checkpoint) and assets/."""
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x01\x12\x0a\x0a\x08\x12\x06serve" + bytes(32))
    (folder / "fingerprint.pb").write_bytes(b"\x08\x95\x9a\xef\x01")
    tf_checkpoint(folder / "variables", "variables")
    return folder


def tf_checkpoint(folder: Path, prefix: str = "ckpt-100") -> Path:
    """A TensorFlow checkpoint: PREFIX.index (an SSTable, its footer's magic number last) and its data shard."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}.index").write_bytes(b"\x00\x00" + bytes(40) + struct.pack("<Q", 0xDB4775248B80FB57))
    (folder / f"{prefix}.data-00000-of-00001").write_bytes(np.zeros(40, np.float32).tobytes())
    if prefix != "variables":
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return folder / f"{prefix}.index"


def _msgpack_str(text: str) -> bytes:
    data = text.encode()
    return bytes([0xA0 | len(data)]) + data


def flax_msgpack(path: Path) -> Path:
    """flax.serialization.to_bytes of {"params": {"Dense_0": {"kernel": array}}}: msgpack maps, each array an
    extension (code 1) holding msgpack of (shape, dtype name, bytes)."""
    array = np.zeros((4, 8), np.float32)
    inner = b"\x93" + b"\x92\x04\x08" + _msgpack_str("<f4") + b"\xc5" + struct.pack(">H", array.nbytes) + array.tobytes()
    ext = b"\xc8" + struct.pack(">H", len(inner)) + b"\x01" + inner
    body = b"\x81" + _msgpack_str("params") + b"\x81" + _msgpack_str("Dense_0") + b"\x81" + _msgpack_str("kernel") + ext
    path.write_bytes(body)
    return path


def orbax(folder: Path) -> Path:
    """An Orbax checkpoint folder (checkpoint_100/): _CHECKPOINT_METADATA, _METADATA, the OCDBT manifest and
    its ocdbt.process_0/ and d/ folders."""
    (folder / "ocdbt.process_0" / "d").mkdir(parents=True)
    (folder / "d").mkdir()
    (folder / "_CHECKPOINT_METADATA").write_text(json.dumps({"item_handlers": None, "init_timestamp_nsecs": 1}))
    (folder / "_METADATA").write_text(json.dumps({"tree_metadata": {"('params', 'Dense_0', 'kernel')": {}}}))
    (folder / "manifest.ocdbt").write_bytes(b"\x0a\x0b\x0c\x0d" + bytes(20))
    (folder / "d" / "0123abcd").write_bytes(bytes(64))
    return folder


def onnx(path: Path) -> Path:
    """An ONNX ModelProto: ir_version (field 1), producer_name (2), producer_version (3), then the graph (7)."""
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.1.0\x3a\x10\x0a\x0e\x12\x06linear" + bytes(8))
    return path


def gguf(path: Path) -> Path:
    """A GGUF file (llama.cpp): the magic GGUF, version 3, its tensor and key-value counts."""
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2, 1) + bytes(64))
    return path


def jax_npz(path: Path) -> Path:
    """A JAX model's params flattened into an .npz (np.savez of flax.traverse_util.flatten_dict, joined by /)."""
    np.savez(path, **{"params/Dense_0/kernel": np.zeros((4, 8), np.float32), "params/Dense_0/bias": np.zeros(8)})
    return path


def lfs_pointer(path: Path) -> Path:
    path.write_text("version https://git-lfs.github.com/spec/v1\n"
                    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 2450\n")
    return path


def torch_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(_state(), buffer)
    return buffer.getvalue()


def _zipped(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("checkpoints/step_100.pt", torch_bytes())
    return path


def _gzipped(path: Path) -> Path:
    path.write_bytes(gzip.compress(torch_bytes()))
    return path


def _zstd(path: Path) -> Path:
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(50))  # zstd's magic number, then a frame (not needed to tell it)
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _cut(path: Path) -> Path:
    path.write_bytes(torch_bytes()[:100])
    return path


# (what is made in the run's folder, then the words the error must hold: the format, and its fix)
FOREIGN = {
    "keras": (lambda d: keras_zip(d / "model.keras"), ["a Keras model", "PyTorch", "get_weights()", "torch.save"]),
    "keras_h5": (lambda d: keras_h5(d / "model_100.h5"), ["a Keras model", "HDF5", "PyTorch", "get_weights()"]),
    "keras_h5_weights": (lambda d: keras_h5(d / "weights_100.h5", weights_only=True), ["a Keras model", "HDF5"]),
    "keras3_weights": (lambda d: keras3_weights_h5(d / "model_100.weights.h5"), ["a Keras model", "HDF5"]),
    "saved_model": (lambda d: saved_model(d / "saved_model"), ["a TensorFlow SavedModel", "PyTorch",
                                                                "tf.train.load_checkpoint"]),
    "tf_checkpoint": (lambda d: tf_checkpoint(d), ["a TensorFlow checkpoint", "tf.train.load_checkpoint"]),
    "flax": (lambda d: flax_msgpack(d / "params_100.msgpack"), ["a Flax", "msgpack", "PyTorch", "from_flax=True"]),
    "flax_no_suffix": (lambda d: flax_msgpack(d / "checkpoint_100"), ["a Flax", "msgpack", "PyTorch"]),
    "orbax": (lambda d: orbax(d / "checkpoint_100"), ["an Orbax checkpoint", "JAX", "PyTorch", "orbax.checkpoint"]),
    "onnx": (lambda d: onnx(d / "model.onnx"), ["an ONNX model", "PyTorch", "torch.save"]),
    "gguf": (lambda d: gguf(d / "model-q4.gguf"), ["a GGUF file", "llama.cpp", "PyTorch", "gguf_file="]),
    "zip": (lambda d: _zipped(d / "checkpoints.zip"), ["a zip archive", "unzip", "the folder it holds"]),
    "gz": (lambda d: _gzipped(d / "step_100.pt.gz"), ["a gzip-compressed file", "gunzip -k"]),
    "zst": (lambda d: _zstd(d / "step_100.pt.zst"), ["a zstd-compressed file", "zstd -d"]),
    "incomplete": (lambda d: _cut(d / "model.safetensors.incomplete"), ["a download not finished", "wait"]),
    "part": (lambda d: _cut(d / "step_100.pt.part"), ["a download not finished", "wait"]),
    "crdownload": (lambda d: _cut(d / "step_100.pt.crdownload"), ["a download not finished", "wait"]),
    "lock": (lambda d: _empty(d / "model.safetensors.lock"), ["a lock file", "wait"]),  # empty, as HF's are
    "download_begun": (lambda d: _empty(d / "step_100.pt.part"), ["a download not finished", "wait"]),
}


def _said(text: str) -> str:
    return " ".join(text.split())  # the words, however the error's lines are wrapped


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_inspect_names_the_format_and_its_fix(tmp_path: Path, kind: str) -> None:
    """`fdl inspect FILE` (or FOLDER, for a SavedModel or an Orbax folder) of another framework's save said
    "the file is truncated or corrupt" (a Keras .h5: "an fdl store, or an .h5 probe"; a SavedModel: "no
    checkpoints found ... skipped 2 files without a checkpoint suffix"): it says what the file is, that fdl
    reads PyTorch weights where that is why, and how to get them."""
    make, words = FOREIGN[kind]
    target = make(tmp_path)
    done = fdl("inspect", str(target), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1, done.stderr
    assert "Traceback" not in said
    for word in words:
        assert word in said, (word, done.stderr)
    for wrong in ("corrupt", "an fdl store", "no checkpoints found", "without a checkpoint suffix", "empty"):
        assert wrong not in said, (wrong, done.stderr)


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_analyze_a_folder_of_them_names_the_format_and_its_fix(tmp_path: Path, kind: str) -> None:
    """`fdl analyze DIR` of a folder holding only another framework's checkpoints said "no checkpoints found",
    got "not a checkpoint suffix" (a SavedModel or an Orbax sub-folder: "got: nothing"), fix "point at a folder
    of .pt ... files": it names what it skipped, and the fix is the format's."""
    run = tmp_path / "run"
    run.mkdir()
    make, words = FOREIGN[kind]
    make(run)
    done = fdl("analyze", str(run), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")
    said = _said(done.stderr)
    assert done.code == 1, done.stderr
    assert "no checkpoints found" in said
    for word in words:
        assert word in said, (word, done.stderr)
    assert "got: nothing" not in said and "point at a folder of" not in said, done.stderr
    assert not (tmp_path / "out.h5").exists()


def test_a_run_with_an_export_beside_its_checkpoints_is_analysed_and_the_export_named(tmp_path: Path) -> None:
    """The files another framework (or an export) leaves beside a run's checkpoints are skipped as before, but
    the note says what each is; the checkpoints are analysed."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    onnx(run / "model.onnx")
    keras_h5(run / "model_10.h5")
    orbax(run / "checkpoint_10")
    done = fdl("analyze", str(run), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")
    said = _said(done.stderr)
    assert done.code == 0, done.stderr
    assert "2 checkpoints analysed" in said
    assert "skipped model.onnx: an ONNX model" in said
    assert "skipped model_10.h5: a Keras model" in said
    assert "skipped checkpoint_10: an Orbax checkpoint" in said


def test_the_store_and_an_h5_probe_given_among_the_files_are_still_named_so(tmp_path: Path) -> None:
    """An HDF5 file that is no Keras save (the store, an .h5 probe) is still said to be one."""
    with h5py.File(tmp_path / "probe.h5", "w") as handle:
        handle["x"] = np.zeros((6, 4), np.float32)
    done = fdl("inspect", str(tmp_path / "probe.h5"), *MODEL)
    assert done.code == 1
    assert "an fdl store, or an .h5 probe" in _said(done.stderr)
    assert "Keras" not in done.stderr


def test_a_jax_npz_of_params_says_how_to_make_it_a_state_dict(tmp_path: Path) -> None:
    """An .npz of a JAX model's params (not a probe) given to inspect failed deep in torch ("Expected
    hasRecord("version") to be true"): it is a NumPy archive, and the fix makes tensors of it."""
    done = fdl("inspect", str(jax_npz(tmp_path / "params_100.npz")), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1
    assert "a NumPy archive (.npz)" in said and "params/Dense_0/bias" in said
    assert "torch.from_numpy" in said and "hasRecord" not in said


@pytest.mark.parametrize("name", ["model.onnx", "model.keras", "params.msgpack"])
def test_a_git_lfs_pointer_of_a_foreign_file_is_said_to_be_a_pointer(tmp_path: Path, name: str) -> None:
    """A pointer Git LFS left in place of the file is a pointer first, whatever format its name says."""
    done = fdl("inspect", str(lfs_pointer(tmp_path / name)), *MODEL)
    said = _said(done.stderr)
    assert done.code == 1
    assert "is a Git LFS pointer" in said and "git lfs pull" in said


@pytest.mark.parametrize(("name", "make", "words"), [
    ("model.bin", gguf, ["a GGUF file", "with the checkpoint suffix .bin", "gguf_file="]),
    ("step_100.pt", lambda path: _gzipped(path), ["a gzip-compressed file", "with the checkpoint suffix .pt", "gunzip"]),
])
def test_a_foreign_file_named_as_a_checkpoint_is_a_bad_checkpoint_named_for_what_it_is(
        tmp_path: Path, name: str, make, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A file with a checkpoint suffix that PyTorch cannot load is a bad checkpoint, as before, but said to be
    the GGUF file or the compressed checkpoint it is rather than "truncated or corrupt"."""
    run = tmp_path / "run"
    run.mkdir()
    make(run / name)
    done = fdl("analyze", str(run), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")
    said = _said(done.stderr)
    assert done.code == 1
    for word in words:
        assert word in said, (word, done.stderr)
    assert "corrupt" not in said


def test_the_tensorflow_checkpoint_list_is_named_too(tmp_path: Path) -> None:
    """The `checkpoint` file TensorFlow keeps beside its checkpoints (model_checkpoint_path: ...) was "not a
    checkpoint suffix" beside its files said to be a TensorFlow checkpoint."""
    tf_checkpoint(tmp_path)
    done = fdl("inspect", str(tmp_path / "checkpoint"), *MODEL)
    assert done.code == 1
    assert "is a TensorFlow checkpoint" in _said(done.stderr)


def test_a_named_pipe_a_folder_scan_skips_is_not_opened_to_tell_what_it_is(tmp_path: Path) -> None:
    """The first bytes read of a file without a suffix, or of an .h5, are read of a regular file only: a named
    pipe so named, opened, waits for a writer for ever (the child is killed after 60 s, failing the test)."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=0).state_dict(), run / "step_0.pt")
    os.mkfifo(run / "checkpoint_5")
    os.mkfifo(run / "weights.h5")
    probe, out = _probe(tmp_path / "probe.pt"), tmp_path / "out.h5"
    analyze = ["analyze", str(run), *MODEL, "--probe", str(probe), "--out", str(out), "--device", "cpu"]
    done = warm.run([sys.executable, "-m", "fdl_cli", *analyze], cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 checkpoint analysed" in done.stderr
