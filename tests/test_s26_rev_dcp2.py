"""A second hostile review of fdl's reader of torch.distributed.checkpoint `.metadata` pickles (session 26), opcode
by opcode against Python's own unpickler: a small forged file must neither hang fdl, nor make it allocate far more
than its own size, nor end in a traceback; and nothing fdl or torch owns may change."""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fdl_cli import dcp
from fdl_cli.errors import CheckpointError
from tests import warm
from tests.test_analyze import fdl
from tests.test_s26_rev_dcp import PROTO, _global, _handmade, _metadata_file, _tuple_tower

REPO = Path(__file__).resolve().parents[1]
_P = 2**61 - 1  # the modulus of Python's hash of numbers: k * _P hashes as 0 for every k


def _long(value: int) -> bytes:
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


_SIZE = _global("torch", "Size") + b"\x94"  # memo 0
_ZEROS = b"(K\x00" + b"2" * 100_000 + b"l\x94"  # memo 1: a list of 100001 zeros, one byte each
_PATH = _global("pathlib", "PosixPath") + b"\x94" + b"(\x8c\x00" + b"2" * 100_000 + b"t\x94"  # memo 1: 100001 ''s

#: Each a few bytes to a few hundred kB; each cost fdl, unguarded, a hang, gigabytes, or minutes (quadratically).
ATTACKS = {
    # DICT builds its dict from MARKed items: a key that is a tower of tuples 60 high is hashed for ever
    "dict-key": (PROTO + _tuple_tower(60) + b"(h\x3cNd.", "a dict key or set item that is a tuple"),
    # BYTEARRAY8 allocates (and zeroes) the length it declares before reading a byte: 12 bytes, 6 GiB
    "bytearray": (PROTO + b"\x96" + struct.pack("<Q", 6 * 2**30) + b".", "opcode BYTEARRAY8 is not allowed"),
    "buffer": (PROTO + b"N\x98.", "opcode READONLY_BUFFER is not allowed"),
    # torch.Size of a memoized list of 100001 zeros, 7 bytes a call: 800 kB a call, all kept
    "size-copy": (PROTO + _SIZE + _ZEROS + b"h\x00h\x01\x85R" * 3000 + b".", "torch.Size of over 64 values"),
    # a path of 100001 empty parts has no characters but 100000 slashes: 100 kB a call of 6 bytes
    "path-slashes": (PROTO + _PATH + b"h\x00h\x01R" * 3000 + b".", "of over 4096 characters"),
    # dict keys that all hash alike: each insertion compares with every key before it, the whole quadratic
    "int-keys": (PROTO + b"}(" + b"".join(_long(k * _P) + b"N" for k in range(1, 40_000)) + b"u.",
                 "a dict key or set item that is a int"),
    "float-keys": (PROTO + b"\x8f(" + b"G" + struct.pack(">d", 0.5) + b"\x90.", "a dict key or set item that is a float"),
    # the memo is a dict keyed by PUT's number, which may be any integer
    "put-keys": (PROTO + b"N" + b"".join(b"p%d\n" % (k * _P) for k in range(1, 40_000)) + b".",
                 "a memo index that is not a number below"),
}

_DRIVER = textwrap.dedent("""
    import json, os, resource, sys
    from pathlib import Path
    from fdl_cli import dcp
    from fdl_cli.errors import FdlError
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
    said = {}
    for folder in sys.argv[1:]:
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # a child an attack: a hang inside one C call (a hash) is ended by its CPU limit only
            os.close(read)
            resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 2**30, resource.RLIM_INFINITY))
            resource.setrlimit(resource.RLIMIT_CPU, (20, 25))
            try:
                dcp.read_metadata(Path(folder))
                text = "read"
            except (FdlError, MemoryError) as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(write, text.encode()[:10000])
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            text = pipe.read().decode()
        _, status = os.waitpid(child, 0)
        said[folder] = text if os.WIFEXITED(status) else f"killed by signal {os.WTERMSIG(status)} (over 20 s)"
    print(json.dumps(said))
""")


def test_a_small_forged_metadata_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """Each attack read in a child process capped at 1 GiB over its imports and 20 s of CPU (a hang or a flood
    is ended, and said, rather than left to the machine); each must be refused by name."""
    folders = {name: _metadata_file(tmp_path / name, data) for name, (data, _) in ATTACKS.items()}
    driver = tmp_path / "driver.py"  # a script: a warm process (tests/warm.py) runs no `python -c`
    driver.write_text(_DRIVER)
    done = warm.run([sys.executable, driver, *folders.values()], timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout)
    for name, (_, expected) in ATTACKS.items():
        got = " ".join(said[str(folders[name])].split())
        assert got.startswith("CheckpointError") and expected in got, (name, got[:500])
        assert len(got) < 2000, (name, len(got))


def test_a_float_that_is_text_is_not_said_whole(tmp_path: Path) -> None:
    """FLOAT's text, 5 MB of it, was written whole into fdl's message by the ValueError it raised."""
    folder = _metadata_file(tmp_path / "step-1", PROTO + b"F" + b"x" * 5_000_000 + b"\n.")
    with pytest.raises(CheckpointError) as caught:
        dcp.read_metadata(folder)
    said = str(caught.value)
    assert "not a readable pickle (ValueError: could not convert string to float" in said and len(said) < 2000


def test_a_size_past_any_tensor_is_a_bad_checkpoint_not_a_traceback(tmp_path: Path) -> None:
    """A tensor's size of 10**5000 passed every check (non-negative integers) and ended in the ValueError of
    writing it out (over 4300 digits), a traceback of `fdl inspect` and `fdl analyze`."""
    from tests.test_s15_formats import MODEL, _probe

    metadata = _handmade(tmp_path / "run" / "step-3", "w", torch.float32, (4,), [((0,), (4,), torch.ones(4))])
    object.__setattr__(metadata.state_dict_metadata["model.w"], "size", (10**5000,))
    (tmp_path / "run" / "step-3" / ".metadata").write_bytes(pickle.dumps(metadata))
    for args in (("inspect",), ("analyze", *MODEL, "--probe", _probe(tmp_path / "probe.pt"), "--out",
                                tmp_path / "a.h5", "--device", "cpu")):
        done = fdl(*args[:1], tmp_path / "run", *args[1:])
        said = " ".join(done.stderr.split())
        assert done.code == 1 and "Traceback" not in said, said[-2000:]
        assert "the size of model.w holds values that are not non-negative integers below 2**63" in said, said


def test_hostile_opcodes_run_nothing_and_change_nothing(tmp_path: Path) -> None:
    """Each opcode that stores into the object below it (BUILD, SETITEM(S), APPEND(S), ADDITEMS) tried on each
    kind of object `find_class` gives (a record's class, an allowed function, a dtype), and a global that would
    run a command: all refused, and the allowed objects, fdl's reader and Python's unpickler as they were."""
    marker = tmp_path / "ran"
    record = _global("torch.distributed.checkpoint.metadata", "Metadata")
    targets = {"record class": record, "function": _global("torch", "Size"), "dtype": _global("torch", "float32"),
               "path function": _global("pathlib", "PosixPath")}
    stores = {"BUILD": b"}\x8c\x01xNsb", "BUILD slots": b"N}\x8c\x01xNs\x86b", "SETITEM": b"\x8c\x01xNs",
              "SETITEMS": b"(\x8c\x01xNu", "APPEND": b"Na", "APPENDS": b"(Ne", "ADDITEMS": b"(K\x01\x90"}
    pickles = [PROTO + target + store + b"." for target in targets.values() for store in stores.values()]
    pickles.append(PROTO + _global("os", "system") + b"\x8c" + bytes([len(f"touch {marker}")])
                   + f"touch {marker}".encode() + b"\x85R.")
    pickles.append(b"(ctorch.distributed.checkpoint.metadata\nMetadata\n\x8c\x01xo.")  # INST-like OBJ with an argument

    def snapshot() -> object:
        return (dict(vars(dcp)), {name: dict(vars(cls)) for name, cls in dcp._RECORDS.items()},
                dict(vars(dcp._size)), dcp._size.__defaults__, dict(vars(torch.Size)), dict(pickle._Unpickler.dispatch),
                dict(vars(dcp._MetadataUnpickler)), torch.float32.is_floating_point)

    before = snapshot()
    for number, data in enumerate(pickles):
        with pytest.raises(CheckpointError):
            dcp.read_metadata(_metadata_file(tmp_path / str(number), data))
    assert snapshot() == before
    assert not marker.exists()
