"""Mutation testing of what had little: the files fdl tells as another framework's or as not yet a checkpoint
(fdl_cli/foreign.py), the error helpers (fdl_cli/errors.py), the regime rules (fdl_cli/regimes.py) and compare's
verdict and notes (fdl_cli/report.py); and the rare paths of --trust-pickle's placeholders and of a signal at the
end of a process that ended with a traceback. Each test here failed with a mutant that every other test let pass
(a comparison flipped, a branch dropped, an offset moved): it asserts what the user reads."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import REPO
from tests.test_analyze import fdl
from tests.test_s28_foreign import _msgpack_str, flax_msgpack, torch_bytes

MODEL = ("--model", "tests.tiny_models:mlp")


def _said(text: str) -> str:
    return " ".join(text.split())


def _inspect(path: Path) -> str:
    done = fdl("inspect", str(path), *MODEL)
    assert "Traceback" not in done.stderr
    return _said(done.stdout + done.stderr)


# ---------------------------------------------------------------------------------------------- foreign.py


def _flax_map16(path: Path) -> Path:
    """flax.serialization.to_bytes of a dict of 16 or more keys (a model of many top-level modules): a map 16
    (0xde, its 2-byte size), then its first key."""
    body = b"\xde" + struct.pack(">H", 16) + b"".join(_msgpack_str(f"Dense_{i}") + b"\xc0" for i in range(16))
    path.write_bytes(body)
    return path


def _flax_map32(path: Path) -> Path:
    body = b"\xdf" + struct.pack(">I", 1) + _msgpack_str("params") + b"\xc0"
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("make", [_flax_map16, _flax_map32], ids=["map16", "map32"])
def test_a_flax_save_of_many_modules_without_a_suffix_is_told_flax(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    """A msgpack map of 16 keys or more begins 0xde and its size: its first key follows two bytes later, not four
    (a swapped offset said nothing of Flax)."""
    said = _inspect(make(tmp_path / "checkpoint_100"))
    assert "is a Flax checkpoint (msgpack, flax.serialization), not PyTorch weights" in said, said


def test_a_safetensors_file_whose_header_length_reads_as_a_msgpack_map_is_not_flax(tmp_path: Path) -> None:
    """A safetensors file's 8-byte header length may begin as a msgpack map with a string key (0x81, 0xa1: a header
    of 41 345 bytes); its JSON header after it tells it. Named without a suffix, it was not called Flax."""
    header = b'{"__metadata__":{"step":"100"}}'
    header += b" " * (0xA181 - len(header))
    path = tmp_path / "model_100"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    said = _inspect(path)
    assert "Flax" not in said, said


@pytest.mark.parametrize("name", ["run.tar.zst", "run.tgz", "run.tar.gz"])
def test_a_compressed_tar_is_said_to_be_a_tar_archive(tmp_path: Path, name: str) -> None:
    """`run.tar.zst` is a tar archive to unpack (tar -xf), not a zstd file to decompress and give fdl; `.tgz` too."""
    path = tmp_path / name
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64) if name.endswith("zst") else b"\x1f\x8b" + bytes(64))
    said = _inspect(path)
    assert f"{path} is a tar archive" in said and "tar -xf FILE" in said, said


def test_an_index_file_without_a_data_shard_is_no_tensorflow_checkpoint(tmp_path: Path) -> None:
    """PREFIX.index is TensorFlow's only beside PREFIX.data-NNNNN-of-NNNNN; a lone `faiss.index` is not."""
    (tmp_path / "faiss.index").write_bytes(bytes(64))
    (tmp_path / "step_1.pt").write_bytes(torch_bytes())
    done = fdl("inspect", str(tmp_path / "faiss.index"), *MODEL)
    assert "TensorFlow" not in _said(done.stderr), done.stderr


@pytest.mark.parametrize(("head", "said"), [
    (b"BZh9" + bytes(60), "is a bzip2-compressed file"),
    (b"\x04\x22\x4d\x18" + bytes(60), "is a lz4-compressed file"),
    (b'model_checkpoint_path: "ckpt-100"\n', "is a TensorFlow checkpoint"),
], ids=["bzip2", "lz4", "tf-checkpoint-file"])
def test_a_file_without_a_suffix_is_told_by_its_first_bytes(tmp_path: Path, head: bytes, said: str) -> None:
    path = tmp_path / "checkpoint"
    path.write_bytes(head)
    text = _inspect(path)
    assert f"{path} {said}" in text, text


def test_a_file_beginning_bzh_without_a_block_size_is_not_bzip2(tmp_path: Path) -> None:
    """bzip2's magic is BZh then the block size, a digit 1-9; a text file beginning "BZh " is not one."""
    path = tmp_path / "notes"
    path.write_bytes(b"BZh is how bzip2 files begin\n")
    assert "bzip2" not in _inspect(path)


def test_a_tar_without_a_suffix_is_told_by_its_ustar_magic(tmp_path: Path) -> None:
    path = tmp_path / "backup"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        data = torch_bytes()
        info = tarfile.TarInfo("run/step_100.pt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    said = _inspect(path)
    assert f"{path} is a tar archive" in said, said


def test_an_empty_zip_is_said_to_be_a_zip_archive(tmp_path: Path) -> None:
    path = tmp_path / "run.zip"
    with zipfile.ZipFile(path, "w"):
        pass
    said = _inspect(path)
    assert f"{path} is a zip archive" in said, said


@pytest.mark.parametrize("name", ["step_100.zip", "step_100.tar"])
def test_a_torch_save_file_named_zip_or_tar_is_read_as_a_checkpoint(tmp_path: Path, name: str) -> None:
    """torch.save writes a zip whose first member is ARCHIVE/data.pkl; PyTorch's tutorial names a general checkpoint
    `.tar`: such a file is a checkpoint fdl reads, not an archive to unpack."""
    path = tmp_path / name
    path.write_bytes(torch_bytes())
    done = fdl("inspect", str(path), *MODEL)
    assert done.code == 0, done.stderr
    assert "archive" not in _said(done.stderr)


def test_a_zip_whose_first_member_only_begins_as_torch_s_is_an_archive(tmp_path: Path) -> None:
    """torch.save's first member is exactly ARCHIVE/version, data.pkl...; `run/version.txt` first is a plain zip."""
    path = tmp_path / "run.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("run/version.txt", "1\n")
        archive.writestr("run/step_100.pt", torch_bytes())
    said = _inspect(path)
    assert f"{path} is a zip archive" in said, said


def _keras_h5(path: Path, *, padding: int = 0) -> Path:
    """A tf.keras 2 model.save(".h5"); `padding` bytes of a user block before the HDF5 data move its root attributes
    further into the file."""
    with h5py.File(path, "w", userblock_size=padding or 0) as handle:
        handle.attrs["keras_version"] = b"2.15.0"
        handle.attrs["backend"] = b"tensorflow"
        handle["dense/kernel:0"] = np.zeros((4, 8), np.float32)
    return path


@pytest.mark.parametrize("name", ["model_100.hdf5", "model_100"])
def test_a_keras_hdf5_named_hdf5_or_without_a_suffix_is_told_keras(tmp_path: Path, name: str) -> None:
    said = _inspect(_keras_h5(tmp_path / name))
    assert "is a Keras model or its weights, saved as HDF5, not PyTorch weights" in said, said


def test_a_keras_hdf5_whose_attributes_lie_past_the_first_kilobyte_is_told_keras(tmp_path: Path) -> None:
    """The keras_version attribute is searched in the first 64 KiB: an HDF5 user block (4 KiB here) puts it past
    the first 512 bytes."""
    said = _inspect(_keras_h5(tmp_path / "model_100.h5", padding=4096))
    assert "is a Keras model or its weights, saved as HDF5" in said, said


def test_an_orbax_folder_with_only_its_metadata_file_is_told_orbax(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint_100"
    folder.mkdir()
    (folder / "_METADATA").write_text("{}")
    said = _inspect(folder)
    assert "an Orbax checkpoint folder (JAX)" in said, said


def test_a_partial_download_is_said_not_finished(tmp_path: Path) -> None:
    path = tmp_path / "step_100.pt.partial"
    path.write_bytes(torch_bytes()[:100])
    said = _inspect(path)
    assert f"{path} is a download not finished" in said, said


def test_a_gzip_fix_keeps_the_file_with_gunzip_k(tmp_path: Path) -> None:
    """gunzip -k FILE keeps FILE; a file named otherwise is piped with gunzip -c (the fix named them swapped)."""
    path = tmp_path / "step_100.pt.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(64))
    said = _inspect(path)
    assert "gunzip -k FILE keeps FILE" in said and "gunzip -c FILE > OUT" in said, said


def test_a_numpy_archive_is_not_said_to_be_another_framework_s_weights(tmp_path: Path) -> None:
    path = tmp_path / "params_100.npz"
    np.savez(path, w=np.zeros(3))
    said = _inspect(path)
    assert "a NumPy archive (.npz), not a checkpoint" in said and "not PyTorch weights" not in said, said


def test_flax_helper_is_what_the_other_tests_build_on(tmp_path: Path) -> None:
    """The fixmap Flax file of test_s28_foreign, without a suffix, stays told (a control for the map 16 / 32 cases)."""
    said = _inspect(flax_msgpack(tmp_path / "checkpoint_7"))
    assert "is a Flax checkpoint" in said, said


# ------------------------------------------------------------- a second signal at the end of fdl's own process

_ENDING = textwrap.dedent("""
    import atexit, os, signal, sys, types

    from fdl_cli import __main__ as entry, signals

    HOW = sys.argv[1]
    # as Python starts in a terminal: a job started in the background by a shell inherits SIGINT ignored, which fdl
    # keeps ignored (a background job's convention), and the second signal would then not be one
    signal.signal(signal.SIGINT, signal.default_int_handler)


    def second_signal() -> None:  # registered after fdl's own: run before its last handler, as torch's are
        os.kill(os.getpid(), signal.SIGNUM)
        print("the teardown went on after the signal", flush=True)


    def main() -> None:
        atexit.register(second_signal)
        with signals.installed():  # a command that took SIGINT and SIGTERM, over
            pass
        if HOW == "traceback":
            raise RuntimeError("a bug of the command's")
        sys.exit(None if HOW == "none" else "said on stderr")


    sys.modules["fdl_cli.cli"] = types.SimpleNamespace(main=main)  # the command line, without its imports
    entry.run()
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(("how", "status"), [("traceback", 1), ("text", 1), ("none", 0)])
def test_a_signal_while_the_process_ends_keeps_the_status_of_how_the_command_ended(
    tmp_path: Path, signum: int, how: str, status: int
) -> None:
    """A command that ended with a traceback (status 1, as Python's), with sys.exit("text") (1) or sys.exit(None)
    (0), then a SIGINT or SIGTERM while the interpreter ran its atexit handlers: the process ends at once with
    that status (not 0, not the signal's -2 or -15), and what the teardown had left to do is not done."""
    script = tmp_path / "ending.py"
    script.write_text(_ENDING.replace("signal.SIGNUM", f"signal.{signal.Signals(signum).name}"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "the teardown went on" not in done.stdout, done.stdout
    if how == "traceback":
        assert "RuntimeError: a bug of the command's" in done.stderr, done.stderr
    assert "KeyboardInterrupt" not in done.stderr, done.stderr


# --------------------------------------------------------- --trust-pickle: the rare ends of a placeholder's load


class _Reduced:
    """An object the pickle rebuilds by calling `call(*args)` (what a `__reduce__` of the file's own does)."""

    def __init__(self, call: object, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.call, self.args  # type: ignore[return-value]


def _gone_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> type:
    """`Cfg` of the module `name`, importable while the file is saved; `_forget` then takes the module away, as
    where fdl runs without the training code."""
    folder = tmp_path / "code"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text("class Cfg:\n    lr = 0.1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    return importlib.import_module(name).Cfg  # type: ignore[no-any-return]


def _forget(tmp_path: Path, name: str) -> None:
    (tmp_path / "code" / f"{name}.py").unlink()
    sys.modules.pop(name, None)


def _trusted_inspect(path: Path) -> tuple[int, str]:
    done = fdl("inspect", str(path), "--trust-pickle")
    said = _said(done.stderr)
    assert "Traceback" not in said, said
    return done.code, said


def test_a_files_own_code_importing_a_module_not_here_is_said_so_not_corrupt(tmp_path: Path) -> None:
    """The file's own code (a `__reduce__` calling importlib.import_module) importing a module not installed here
    raises ImportError from the load, not from the unpickler's class lookup: said as a class not importable here,
    with the module named, not as a truncated or corrupt file to re-copy."""
    import importlib

    path = tmp_path / "step_5.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(),
                "plugin": _Reduced(importlib.import_module, "fdl_s29_no_such_module")}, path)
    code, said = _trusted_inspect(path)
    assert code == 1, said
    assert f"cannot unpickle {path}: it holds an object whose class cannot be imported here" in said, said
    assert "No module named 'fdl_s29_no_such_module'" in said and "corrupt" not in said, said


def test_a_placeholder_that_the_load_needed_is_said_as_the_class_not_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class read as a placeholder that the rest of the load then used (an object of it added to a number, in a
    `__reduce__` of the file's): the load's TypeError is the placeholder's doing, and the error says the class that
    could not be imported (its ModuleNotFoundError), not a damaged file."""
    import operator

    cfg = _gone_module(tmp_path, monkeypatch, "fdl_s29_cfg_needed")
    path = tmp_path / "step_5.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "lr": _Reduced(operator.add, cfg(), 1)}, path)
    _forget(tmp_path, "fdl_s29_cfg_needed")
    code, said = _trusted_inspect(path)
    assert code == 1, said
    assert "holds an object whose class cannot be imported here" in said, said
    assert "got: ModuleNotFoundError: No module named 'fdl_s29_cfg_needed'" in said and "corrupt" not in said, said


def test_of_two_classes_not_importable_the_error_names_the_first_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two classes the pickle names cannot be imported, the second holding the weights (a trainer object pickled
    whole): the error says the first one met, what a load without placeholders would have raised."""
    first = _gone_module(tmp_path, monkeypatch, "fdl_s29_first")
    second = _gone_module(tmp_path, monkeypatch, "fdl_s29_second")
    holder = second()
    holder.weights = torch.nn.Linear(2, 2).state_dict()
    path = tmp_path / "step_5.pt"
    torch.save({"config": first(), "trainer": holder}, path)
    _forget(tmp_path, "fdl_s29_first")
    _forget(tmp_path, "fdl_s29_second")
    code, said = _trusted_inspect(path)
    assert code == 1, said
    assert "got: ModuleNotFoundError: No module named 'fdl_s29_first'" in said, said


# ----------------------------------------------------------------------------------------------- errors.py
# Each helper returns the words a message shows (named beside each case): asserted as the user reads them.


def test_sizes_read_in_bytes_below_one_mib_and_in_mib_from_it() -> None:
    from fdl_cli.errors import size_text

    # `ulimit -f`'s limit in the refusal of a write: "at most 1.0 MiB", "at most 1048575 bytes"
    assert [size_text((1 << 20) - 1), size_text(1 << 20), size_text(3 << 19)] == ["1048575 bytes", "1.0 MiB", "1.5 MiB"]


def test_lists_say_how_many_more_follow_and_nothing_when_none_do() -> None:
    from fdl_cli.errors import counted, first_and_more, first_few, first_names, listed_names

    # compare's "left unmatched ... (steps 1, 2, 3, 4, 5, 6 and 3 more)"; analyze's "skipped 9 files, each ..."
    assert first_and_more(list(range(1, 10)), 6) == "1, 2, 3, 4, 5, 6 and 3 more"
    assert first_and_more(list(range(1, 7)), 6) == "1, 2, 3, 4, 5, 6"
    assert first_few([1, 2, 3], 3) == "1, 2, 3" and first_few([1, 2, 3, 4], 3) == "1, 2, 3, ..."
    # a checkpoint's keys: "a, b, c, ..." where more follow
    assert first_names(["a", "b", "c", "d"], 3) == "a, b, c, ..." and first_names(["a", "b", "c"], 3) == "a, b, c"
    # not_loaded_said's "(a, b, c, ...)": the caller says whether more follow, listed_names never does
    assert listed_names(["a", "b", "c", "d"], 3) == "a, b, c"
    assert listed_names(["tab\there", "esc\x1b[2J"], 2) == "tab\\x09here, esc\\x1b[2J"
    assert [counted(0, "step"), counted(1, "step"), counted(2, "step")] == ["0 steps", "1 step", "2 steps"]


def test_a_quoted_name_is_pythons_repr_of_its_first_80_characters_and_its_length() -> None:
    from fdl_cli.errors import quoted_name, shown_name

    # "also holds weights under 'ema', 'model_ema'": quoted as Python does, its escapes kept
    assert quoted_name("a\nb") == "'a\\nb'"
    assert quoted_name("w" * 80) == repr("w" * 80)
    assert quoted_name("w" * 100) == repr("w" * 80) + "… (100 characters)"
    assert shown_name("w" * 81) == "w" * 80 + "… (81 characters)" and shown_name("w" * 80) == "w" * 80


def test_control_characters_of_a_name_are_written_as_escapes() -> None:
    from fdl_cli.errors import shown_path, terminal_safe, utf8_path

    # C1 controls (NEL, CSI) and the bidirectional isolates drive a terminal or reorder what it shows
    assert terminal_safe("a\x85b\x9bc") == "a\\x85b\\x9bc"
    assert terminal_safe("x\u2067y\u2069") == "x\\u2067y\\u2069"
    # a name's byte that is not UTF-8 (read as a lone surrogate) is shown as that byte
    assert shown_path("\udcffstep_0.pt") == "\\xffstep_0.pt" and not utf8_path("\udcffstep_0.pt")


def test_special_files_are_named_for_what_they_are() -> None:
    import stat as st

    from fdl_cli.errors import special_file, special_kind

    assert special_kind(st.S_IFCHR | 0o666) == "a character device"
    assert special_kind(st.S_IFBLK | 0o660) == "a block device"
    assert special_kind(st.S_IFDIR | 0o755) is None and special_kind(st.S_IFREG | 0o644) is None
    assert special_file("bad\x00name") is None  # a NUL in a path: os.stat's ValueError, not a traceback


def test_a_refused_write_says_why_and_where_else_to_write() -> None:
    import errno
    import resource

    from fdl_cli.errors import FdlError, write_refused

    assert FdlError("what", got="this", fix="that").message == "what\n  got: this\n  fix: that"
    full = write_refused(OSError(errno.ENOSPC, "No space left on device"), another="another --out", one="an --out")
    assert full == ("", "free disk space or choose another --out")
    device = write_refused(OSError(errno.EIO, "Input/output error"), another="another --out", one="an --out")
    assert device is not None and "the device failed the write" in device[0]
    big = write_refused(OSError(errno.EFBIG, "File too large"), another="another --out", one="an --out")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    assert big is not None
    if limit == resource.RLIM_INFINITY:
        assert big[0] == ": the file system there takes no larger file", big
    else:
        assert "its file size limit, `ulimit -f`" in big[0], big


def test_a_files_own_code_that_calls_sys_exit_ends_fdl_as_python_would(tmp_path: Path) -> None:
    """A `__reduce__` of the file's own that calls sys.exit(3) (no import of a class: the code the user trusted) ends
    the command with that status, as Python ends on it; it was not said to be a damaged file."""
    path = tmp_path / "step_5.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "end": _Reduced(sys.exit, 3)}, path)
    done = fdl("inspect", str(path), "--trust-pickle")
    assert done.code == 3, done.stderr
    assert "corrupt" not in done.stderr and "cannot unpickle" not in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------ compare (report.py)


def _steps(*pairs: tuple[float, float], static: bool = False, flat: int | None = None) -> list:  # type: ignore[type-arg]
    """Matched steps 0, 100, 200, ... with D_LR (A, B) each; `static`: run A's features never moved (CKA and overlap
    1) and run B's did; `flat`: the index of a step where run A's outputs are constant (output_rank 0)."""
    from fdl_cli.report import ComparedStep, Match

    steps = []
    for index, (d_a, d_b) in enumerate(pairs):
        record_a: dict = {"d_lr": d_a, "step": 100 * index}  # type: ignore[type-arg]
        record_b: dict = {"d_lr": d_b, "step": 100 * index}  # type: ignore[type-arg]
        if static:
            record_a.update(cka_init=1.0, overlap_init=1.0)
            record_b.update(cka_init=0.5, overlap_init=0.5)
        if flat == index:
            record_a["output_rank"] = 0
        steps.append(ComparedStep(Match(100 * index, 100 * index), record_a, record_b, {}, None))
    return steps


def test_the_verdict_names_the_richer_run_from_where_it_stays_richer() -> None:
    from fdl_cli.report import richer_run

    word, said = richer_run(_steps((0.5, 0.4), (0.5, 0.25)))
    assert word == "b" and "Run B is richer than run A (lower D_LR) at every matched step" in said, said
    assert "D_LR A 0.5000, B 0.2500, 50% lower" in said, said  # of the larger: (0.5 − 0.25) / 0.5
    word, said = richer_run(_steps((0.3, 0.4), (0.5, 0.49), (0.5, 0.45)))
    assert word == "b" and "from step 100 on" in said and "10% lower" in said, said
    _, said = richer_run(_steps((0.5, 0.49)))
    assert "2% lower" in said, said  # a gap of 2 % is said, not "<1% lower"


def test_d_lr_values_exactly_dlr_tie_apart_are_a_tie_and_equal_ones_the_same() -> None:
    from fdl_cli.report import richer_run

    word, said = richer_run(_steps((0.5, 0.25)), tie=0.25)
    assert word == "equal" and "D_LR within dlr_tie = 0.25" in said, said
    word, said = richer_run(_steps((0.5, 0.5), (0.4, 0.4)))
    assert word == "equal" and "The runs are equally rich (same D_LR) at every matched step." in said, said


def test_a_step_of_constant_outputs_is_left_out_of_the_verdict() -> None:
    from fdl_cli.report import richer_run

    word, said = richer_run(_steps((0.5, 0.4), (1.0, 0.4), flat=1))
    assert word == "b" and "Left out of this verdict: step 100, where run A's outputs are constant" in said, said


def test_a_lazy_run_is_said_to_have_fixed_features_only_across_two_steps_or_more() -> None:
    from fdl_cli.report import richer_run

    _, said = richer_run(_steps((0.3, 0.5), (0.3, 0.5), static=True))
    assert "Run A's features did not move" in said, said
    assert "only B's features moved" in said and "A's lower D_LR comes from its readout of fixed features" in said
    _, said = richer_run(_steps((0.5, 0.3), (0.5, 0.3), static=True))
    assert "readout of fixed features" not in said, said  # B, which moved, is the richer one
    _, said = richer_run(_steps((0.3, 0.5), static=True))
    assert "did not move" not in said, said  # one matched step: nothing to say it never moved


def test_steps_pair_equal_then_mutual_nearest_lower_on_a_tie() -> None:
    from fdl_cli.report import Match, align_steps

    assert align_steps([10], [10, 20]) == [Match(10, 10)]
    assert align_steps([5], [0, 10]) == [Match(5, 0)]  # 0 and 10 as near: the lower
    assert align_steps([0, 1], [1]) == [Match(1, 1)]  # B's step 1 is 1's, not also 0's


def test_the_notes_say_what_is_left_unmatched_and_outside_the_matched_span() -> None:
    from fdl_cli.report import align_steps, few_matches_note, span_note, unmatched_note

    a, b = [0, 1, 2, 3], [0, 1, 20, 30]
    matches = align_steps(a, b)
    assert few_matches_note(a, b, matches) is None  # half of the shorter run matched: no note
    assert unmatched_note([10, 20], [10, 20, 30, 40], align_steps([10, 20], [10, 20, 30, 40])) == (
        "left unmatched: 0 checkpoints of A, 2 of B (steps 30, 40)")
    a, b = [0, 10, 20], [10, 20]
    assert span_note(a, b, align_steps(a, b)) == (
        "the comparison covers steps 10–20, the span of the matched steps: run A's 1 checkpoint before it (step 0) "
        "is in neither the table nor the verdict")


def test_differences_are_b_minus_a_and_signed_so() -> None:
    from fdl_cli.report import ComparedStep, Comparison, Match, difference_lines, field_differences

    record_a, record_b = {"step": 0, "d_lr": 0.5, "k95_utility": 3}, {"step": 0, "d_lr": 0.25, "k95_utility": None}
    differences = field_differences(record_a, record_b)
    assert differences["d_lr"] == -0.25
    comparison = Comparison(Path("a.h5"), Path("b.h5"), [ComparedStep(Match(0, 0), record_a, record_b, differences,
                                                                        None)], [], "")
    lines = difference_lines(comparison)
    assert any(line.startswith("d_lr: differs at 1 step, largest B − A −") for line in lines), lines
    assert "k95_utility: null in one run only at 1 step (run B at 1, where run A has a value)" in lines, lines


def test_a_dlr_tie_of_zero_is_taken() -> None:
    from fdl_cli.report import compare_thresholds, spread

    assert compare_thresholds(["dlr_tie=0"]) == {
        "dlr_tie": 0.0, "cka_static": 0.99, "overlap_static": 0.95, "overlap_moved": 0.8}
    assert spread([1, 2, 3], 1) == [3]  # --overlap-steps 1: the last matched step


def test_a_folder_scan_tells_a_keras_hdf5_named_hdf5(tmp_path: Path) -> None:
    """The folder scan reads the first bytes of an .hdf5 as of an .h5: `model_100.hdf5` is a Keras model."""
    run = tmp_path / "run"
    run.mkdir()
    _keras_h5(run / "model_100.hdf5")
    said = _inspect(run)
    assert "skipped model_100.hdf5: a Keras model or its weights, saved as HDF5" in said, said


def test_a_quoted_error_is_its_first_line() -> None:
    from fdl_cli.errors import first_line

    # "got: RuntimeError: CUDA_HOME is not set": the first line of the module's error, not its last
    assert first_line(RuntimeError("CUDA_HOME is not set\n  at line 3")) == "CUDA_HOME is not set"


# ---------------------------------------------------------------------------------------------- regimes.py


def test_thresholds_at_their_bounds_are_taken() -> None:
    """cka_static=0 and overlap_moved equal to overlap_static lie within what the error says is allowed."""
    from fdl_cli.regimes import Thresholds

    assert Thresholds.with_overrides(["cka_static=0"]).cka_static == 0.0
    assert Thresholds.with_overrides(["overlap_moved=0.95"]).overlap_moved == 0.95


def test_a_moved_checkpoint_without_outputs_is_undetermined() -> None:
    from fdl_cli.regimes import checkpoint_regime

    verdict = checkpoint_regime({"cka_init": 0.5, "overlap_init": 0.5, "k95_utility": 1, "n_outputs": None})
    assert verdict.regime == "undetermined" and "the outputs carry no utility to count" in verdict.rule, verdict
