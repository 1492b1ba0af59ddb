"""Tests that kill mutants of fdl's code (sessions 25 and 26) which the suite let live (a second mutation testing
pass): each pins down a behaviour a user sees that no test asserted before."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli import signals
from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory, weights_digest
from fdl_cli.report import r2_outputs_line
from fdl_cli.store import r2_output_fields
from tests.cli_run import REPO, fdl_in_process
from tests.test_s24_r2 import damaged_r2_outputs, run  # noqa: F401 - the fixture
from tests.test_s25_note import _clean_imports  # noqa: F401 - the fixture
from tests.test_s25_small import _store
from tests.test_s26_finder import compiled
from tests.test_s26_tfm import MODEL, D, T, _masked_run, _records


@pytest.mark.usefixtures("_clean_imports")
def test_an_fdl_toml_model_importing_by_importlib_refuses_what_the_users_own_took(tmp_path: Path) -> None:
    """--model's load took the folder's compiled s26f_mhelper (a .pyc of no source), then the folder's fdl.toml named
    the same model.py, whose factory imports it with importlib.import_module (no import statement, which each
    load's own `__import__` answers): the module --model's load left in sys.modules must not be what the fdl.toml's
    model gets (`_forget_other_folders` with `checked`), compiled code it refuses."""
    place = tmp_path / "run"
    place.mkdir()
    (place / "model.py").write_text("import importlib\n\nfrom torch import nn\n\n\ndef build():\n"
                                  "    return nn.Linear(importlib.import_module('s26f_mhelper').IN, 3)\n")
    manifest = place / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    compiled(place, "s26f_mhelper", tmp_path / "ran")
    own = resolve_model_factory(f"{place / 'model.py'}:build")
    assert own().in_features == 4
    assert (tmp_path / "ran").read_text() == "x"
    by_manifest = resolve_model_factory("model.py:build", base_dir=place, module_dir=place, named_by=manifest)
    with pytest.raises(CompiledCodeError, match=r"s26f_mhelper\.pyc, which Python would import as s26f_mhelper"):
        by_manifest()
    assert (tmp_path / "ran").read_text() == "x"


def test_a_store_whose_trajectory_is_a_virtual_dataset_of_another_file_is_refused(tmp_path: Path) -> None:
    """A virtual dataset's sources are files HDF5 opens at the read (a FIFO there hangs it): `data_files` names them
    as it names external storage, and the report refuses the store, naming the file, before reading it."""
    store, other = _store(tmp_path / "run.h5"), tmp_path / "other.h5"
    name = "trajectories/train/fc/d_lr"
    with h5py.File(store, "r+") as handle:
        values = handle[name][()]
        del handle[name]
        with h5py.File(other, "w") as source:
            source["d_lr"] = values
        layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
        layout[:] = h5py.VirtualSource(str(other), "d_lr", shape=values.shape)
        handle.create_virtual_dataset(name, layout)
    with h5py.File(store, "r") as handle:
        assert np.array_equal(handle[name][()], values)  # HDF5 reads it from other.h5
    done = fdl_in_process("report", store, "--json")
    assert done.returncode == 1, done.stderr
    assert f"{store} is not a store as fdl writes one: its /{name} is read from {other}, another file" in done.stderr


@pytest.mark.usefixtures("_clean_imports")
def test_a_package_the_fdl_toml_served_whose_compiled_submodule_the_users_own_took_is_checked_again(
        tmp_path: Path) -> None:
    """The fdl.toml's model imported the folder's package s26f_mpkg (checked), then --model's load took its compiled
    submodule (as Python does); the fdl.toml's model loaded again must not get that submodule from sys.modules: the
    package is marked unchecked when --model's load serves a submodule of it (`_FolderSubmodules`)."""
    place = tmp_path / "run"
    (place / "s26f_mpkg").mkdir(parents=True)
    (place / "s26f_mpkg" / "__init__.py").write_text("")
    compiled(place / "s26f_mpkg", "helper", tmp_path / "ran")
    (place / "model.py").write_text("import importlib\n\nfrom torch import nn\n\n\ndef build(sub=True):\n"
                                  "    importlib.import_module('s26f_mpkg')\n"
                                  "    width = importlib.import_module('s26f_mpkg.helper').IN if sub else 4\n"
                                  "    return nn.Linear(width, 3)\n")
    manifest = place / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    first = resolve_model_factory("model.py:build", base_dir=place, module_dir=place, named_by=manifest)
    assert first(sub=False).in_features == 4  # the package alone: plain source, taken
    assert resolve_model_factory(f"{place / 'model.py'}:build")().in_features == 4  # --model: compiled code taken
    assert (tmp_path / "ran").read_text() == "x"
    again = resolve_model_factory("model.py:build", base_dir=place, module_dir=place, named_by=manifest)
    with pytest.raises(CompiledCodeError, match=r"helper\.pyc, which Python would import as s26f_mpkg\.helper"):
        again()
    assert (tmp_path / "ran").read_text() == "x"


@pytest.mark.usefixtures("_clean_imports")
def test_a_submodule_a_folders_package_finds_outside_the_folder_is_not_the_folders_code(tmp_path: Path) -> None:
    """A package of the model's folder whose `__path__` reaches another folder (pkgutil.extend_path, a plugin
    folder): a submodule found there is no code of the model folder's, and an fdl.toml's model imports it as Python
    does, compiled code included; only the folder's own compiled code is refused."""
    place, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (place / "s26f_xpkg").mkdir(parents=True)
    elsewhere.mkdir()
    (place / "s26f_xpkg" / "__init__.py").write_text(f"__path__.append({str(elsewhere)!r})\n")
    compiled(elsewhere, "plugin", tmp_path / "ran")
    (place / "model.py").write_text("from torch import nn\n\n\ndef build():\n    from s26f_xpkg import plugin\n"
                                  "    return nn.Linear(plugin.IN, 3)\n")
    manifest = place / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    factory = resolve_model_factory("model.py:build", base_dir=place, module_dir=place, named_by=manifest)
    assert factory().in_features == 4
    assert (tmp_path / "ran").read_text() == "x"


class _Scale:
    """An extra state of a class of its own (pickled to be compared), equal by value."""

    def __init__(self, value: float) -> None:
        self.value = value


_TENSORS = {"fc.weight": torch.ones(2, 2)}


def test_extra_states_are_compared_by_their_contents() -> None:
    """Two checkpoints of equal tensors are copies (the later skipped) only where their extra states are equal:
    the bytes of a buffer (TransformerEngine's FP8 metadata), a tensor's dtype and shape, not only its bytes, and the
    module each belongs to; a dict's key order and an object's identity (unpickled afresh) do not count."""
    def digest(**extra: object) -> str:
        return weights_digest(_TENSORS, {f"{name}._extra_state": value for name, value in extra.items()})

    assert digest(te=io.BytesIO(b"fp8 scale 1")) == digest(te=io.BytesIO(b"fp8 scale 1"))
    assert digest(te=io.BytesIO(b"fp8 scale 1")) != digest(te=io.BytesIO(b"fp8 scale 2"))
    assert digest(q=torch.zeros(4, dtype=torch.uint8)) != digest(q=torch.zeros(2, dtype=torch.int16))
    assert digest(q=torch.zeros(2, 2)) != digest(q=torch.zeros(4))
    assert digest(q={"scale": 1.0, "zero": 0}) == digest(q={"zero": 0, "scale": 1.0})
    assert digest(q=_Scale(0.5)) == digest(q=_Scale(0.5))
    assert digest(q=_Scale(0.5)) != digest(q=_Scale(0.25))
    assert digest(a=1.0) != digest(b=1.0)


def test_deferred_delivers_a_held_sigterm_not_a_later_ctrl_c() -> None:
    """A SIGTERM then a Ctrl-C during one commit: the SIGTERM's handler runs (exit 143, a scheduler's stop), once;
    the later signal does not replace it (a SIGTERM replaces a held Ctrl-C, never the other way round)."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with signals.deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def test_deferred_outside_the_main_thread_leaves_the_handlers_alone() -> None:
    """A commit in another thread (the store's background writer): Python lets only the main thread set handlers,
    so `deferred` there holds nothing back, and raises nothing."""
    said: list[object] = []

    def commit() -> None:
        try:
            with signals.deferred() as held_back:
                said.append(dict(held_back.handlers))
        except Exception as exc:  # noqa: BLE001 - what the thread met is the test's result
            said.append(exc)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=commit)
    thread.start()
    thread.join()
    assert said == [{}]
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.usefixtures("_clean_imports")
def test_the_users_own_models_package_submodule_is_taken_after_an_fdl_toml_load_of_the_folder(
        tmp_path: Path) -> None:
    """--model's load, then the folder's fdl.toml (its finder inserted last): the user's own model's `from pkg import
    helper` is served under its own load's rules, which take compiled code, not by the last load of the folder."""
    place = tmp_path / "run"
    (place / "s26f_qpkg").mkdir(parents=True)
    (place / "s26f_qpkg" / "__init__.py").write_text("")
    compiled(place / "s26f_qpkg", "helper", tmp_path / "ran")
    (place / "model.py").write_text("from torch import nn\n\n\ndef build():\n    from s26f_qpkg import helper\n"
                                  "    return nn.Linear(helper.IN, 3)\n")
    manifest = place / "fdl.toml"
    manifest.write_text('model = "model.py:build"\n')
    own = resolve_model_factory(f"{place / 'model.py'}:build")
    by_manifest = resolve_model_factory("model.py:build", base_dir=place, module_dir=place, named_by=manifest)
    assert own().in_features == 4
    assert (tmp_path / "ran").read_text() == "x"
    with pytest.raises(CompiledCodeError, match=r"helper\.pyc, which Python would import as s26f_qpkg\.helper"):
        by_manifest()


def test_a_layer_inside_an_encoder_called_by_keyword_is_analysed_padded(tmp_path: Path, capsys) -> None:
    """`self.encoder(src=h, src_key_padding_mask=m)`: the sequences' length is read from the keyword too; the layer's
    features are T·d as where the encoder is called positionally, not refused as a nested tensor."""
    folder, model, probe = _masked_run(tmp_path)
    called = "self.encoder(h, src_key_padding_mask="
    assert MODEL.count(called) == 1
    model.write_text(MODEL.replace(called, "self.encoder(src=h, src_key_padding_mask="))
    records = _records(capsys, folder, "--model", f"{model}:build", "--probe", probe, "--layer",
                       "module.encoder.layers.1", "--out", tmp_path / "kw.h5")
    assert [record["n_features"] for record in records] == [T * D] * 3


def test_an_infinite_r2_of_an_output_is_null_as_a_nan_one() -> None:
    """`--json` writes each output's R² as null where it is not finite: an infinite one was written as -Infinity,
    which is no JSON, and taken as the worst output."""
    fields = r2_output_fields(np.array([0.5, -np.inf, np.nan, 0.75]))
    assert fields == {"r2_outputs": [0.5, None, None, 0.75], "r2_min": 0.5, "r2_min_output": 0}


def test_the_report_names_the_first_of_tied_worst_outputs_as_json_does() -> None:
    """Two outputs of the same lowest R²: the text's worst is the first, as `--json`'s r2_min_output."""
    record = {"step": 5, "r2": 0.6, **r2_output_fields(np.array([0.9, 0.25, 0.25]))}
    assert record["r2_min_output"] == 1
    line = r2_outputs_line(types.SimpleNamespace(records=[record]))  # type: ignore[arg-type]
    assert line is not None and "; worst y1 (r2 " in line, line


def test_classify_says_that_the_final_r2_of_each_output_is_damaged(run: dict, tmp_path: Path) -> None:  # noqa: F811
    """classify reads the last checkpoint's r2_outputs itself: a dataset of another shape is said, as by report,
    and the evidence's per-output fields are null."""
    done = fdl_in_process("classify", damaged_r2_outputs(run, tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert "the r2 of each output of probe/body at step 10 has the shape (3,), not (4,)" in done.stderr, done.stderr


def test_a_store_whose_trajectory_is_a_virtual_dataset_of_its_own_file_is_read(tmp_path: Path) -> None:
    """A virtual dataset whose source is the store itself (HDF5 names it ".") reads no other file: not refused."""
    store = _store(tmp_path / "run.h5")
    name = "trajectories/train/fc/d_lr"
    before = fdl_in_process("report", store, "--json")
    assert before.returncode == 0, before.stderr
    with h5py.File(store, "r+") as handle:
        values = handle[name][()]
        handle["kept_d_lr"] = values
        del handle[name]
        layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
        layout[:] = h5py.VirtualSource(".", "kept_d_lr", shape=values.shape)
        handle.create_virtual_dataset(name, layout)
    done = fdl_in_process("report", store, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == before.stdout


def test_an_hdf5_probe_reading_a_fifo_named_relative_to_the_current_folder_is_refused(tmp_path: Path) -> None:
    """External storage named `fifo`, which HDF5 opens in the current folder (none lies beside the probe): refused
    before the read, which waited for a writer for ever (the child is killed after 60 s, failing the test)."""
    (tmp_path / "probes").mkdir()
    os.mkfifo(tmp_path / "fifo")
    probe = tmp_path / "probes" / "stored.h5"
    with h5py.File(probe, "w") as handle:
        handle.create_dataset("x", shape=(16, 4), dtype=np.float32, external=[("fifo", 0, h5py.h5f.UNLIMITED)])
        handle["y"] = np.zeros(16, dtype=np.int64)
    code = ("import sys\nfrom fdl_cli.errors import ProbeError\nfrom fdl_cli.probes import load_probe\n"
            "try:\n    load_probe(sys.argv[1])\nexcept ProbeError as exc:\n    print(exc.what)\n")
    # a real process (no torch here, so no warm one): a read that waits for ever is killed with it
    done = subprocess.run([sys.executable, "-c", code, str(probe)], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.stdout.strip() == f"the probe {probe}: its 'x' is read from fifo, which is no regular file", done
