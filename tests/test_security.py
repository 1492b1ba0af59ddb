"""Hostile pickles: every discovery and loading path refuses them and never runs their payload."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from fdl_cli.checkpoints import CheckpointRef, discover_checkpoints, load_checkpoint
from fdl_cli.errors import CheckpointError, ProbeError, UnsafeCheckpointError
from fdl_cli.probes import load_probe
from tests.tiny_models import mlp

torch.set_num_threads(1)


class Payload:
    """Runs ``touch MARKER`` when unpickled (if anything ever unpickles it unsafely)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _weights() -> dict[str, torch.Tensor]:
    return dict(mlp().state_dict())


def _layouts(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """One hostile checkpoint per loading path; returns the path each discovery source should use."""
    evil = Payload(marker)
    (tmp_path / "scan").mkdir()
    torch.save({**_weights(), "x": evil}, tmp_path / "scan" / "model_1.pt")  # type: ignore[dict-item]
    torch.save({"model_state_dict": _weights(), "step": 3, "cb": evil}, tmp_path / "loop_3.pt")
    torch.save({"state_dict": _weights(), "extra": [evil]}, tmp_path / "pytorch_4.bin")
    torch.save({"state_dict": _weights(), "hparams": evil}, tmp_path / "light_5.ckpt")
    (tmp_path / "checkpoint-6").mkdir()
    torch.save({**_weights(), "x": evil}, tmp_path / "checkpoint-6" / "pytorch_model.bin")  # type: ignore[dict-item]
    torch.save({**_weights(), "x": evil}, tmp_path / "legacy_7.pt", _use_new_zipfile_serialization=False)  # type: ignore[dict-item]
    with open(tmp_path / "plain_8.pth", "wb") as handle:
        pickle.dump({"w": evil}, handle)
    return {
        "scan": tmp_path / "scan",
        "loop": tmp_path / "loop_3.pt",
        "bin": tmp_path / "pytorch_4.bin",
        "ckpt": tmp_path / "light_5.ckpt",
        "hf": tmp_path / "checkpoint-6",
        "legacy": tmp_path / "legacy_7.pt",
    }


def test_hostile_pickles_refused_everywhere_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    layouts = _layouts(tmp_path, marker)
    for label, source in layouts.items():
        found = discover_checkpoints([source])
        assert [r.kind for r in found.checkpoints] == ["pickle"], label
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint(found.checkpoints[0])
        message = str(err.value)
        assert "--trust-pickle" in message and "could run code" in message, label
        assert "system" in message, label
        assert not marker.exists(), label
    # a pickle with no tensors at all is skipped with a note, and an explicit load is refused too
    with pytest.raises(CheckpointError, match="plain_8.pth"):
        discover_checkpoints([tmp_path / "plain_8.pth"])
    for path in (tmp_path / "plain_8.pth", tmp_path / "loop_3.pt"):
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(CheckpointRef(path=path, step=0, step_source="name", kind="state_dict"))
    whole_folder = discover_checkpoints([tmp_path])
    assert {r.kind for r in whole_folder.checkpoints} == {"pickle"}
    assert any("plain_8.pth" in n for n in whole_folder.notes)
    assert not marker.exists()


def test_hostile_probe_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"x": torch.zeros(3, 2), "y": Payload(marker)}, tmp_path / "probe.pt")
    with pytest.raises(ProbeError, match="probe.pt") as err:
        load_probe(tmp_path / "probe.pt")
    assert "refused" in str(err.value)
    assert not marker.exists()


def _export_variants(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A clean torch.export archive (batch dimension dynamic) and four hostile copies, one per way
    torch.export.load runs code from the file: a weight marked use_pickle, an opaque constant
    (pickle.loads), the sample inputs (torch.load retried without weights_only), and a shape
    expression of model.json (evaluated by sympy.sympify)."""
    import io
    import json
    import re
    import zipfile

    program = torch.export.export(mlp(seed=3), (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},))
    clean = tmp_path / "clean_1.pt2"
    torch.export.save(program, clean)
    evil_save = io.BytesIO()
    torch.save(Payload(marker), evil_save)
    evil_pickle = pickle.dumps(Payload(marker))

    def weight(name: str, data: bytes) -> bytes:
        if name.endswith("weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return evil_save.getvalue() if name.endswith("weights/weight_0") else data

    def opaque(name: str, data: bytes) -> bytes:
        if name.endswith("constants/model_constants_config.json"):
            entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
            return json.dumps({"config": {"hook": entry}}).encode()
        return data

    def sample(name: str, data: bytes) -> bytes:
        return evil_save.getvalue() if name.endswith("sample_inputs/model.pt") else data

    def expression(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        text = data.decode()
        symbol = sorted(set(re.findall(r'"expr_str": ?"([^"]+)"', text)))[0]
        payload = f"__import__('os').system('touch {marker}') or {symbol}"
        pattern = rf'"expr_str": ?"{re.escape(symbol)}"'
        assert re.search(pattern, text)
        return re.sub(pattern, lambda _: f'"expr_str": "{payload}"', text, count=1).encode()

    variants = {"weight": weight, "opaque": opaque, "sample": sample, "expression": expression}
    paths = {"clean": clean}
    with zipfile.ZipFile(clean) as source:
        names = source.namelist()
        for index, (label, change) in enumerate(variants.items(), start=2):
            path = paths[label] = tmp_path / f"{label}_{index}.pt2"
            with zipfile.ZipFile(path, "w") as target:
                for name in names:
                    target.writestr(name, change(name, source.read(name)))
                if label == "opaque":
                    folder = next(n for n in names if n.endswith("constants/model_constants_config.json")).rpartition("/")[0]
                    target.writestr(f"{folder}/opaque_obj_0", evil_pickle)
    return paths


def test_export_archives_load_only_on_trust_and_never_run_otherwise(tmp_path: Path) -> None:
    """torch.export.load runs code from a .pt2 in several ways (pickles without weights_only, shape
    expressions through sympy, compiled libraries); each hostile archive here runs its payload under a
    plain torch.export.load. fdl refuses every .pt2 without --trust-pickle, before torch reads it, and
    loads a clean one with it. (A check of the pickled parts alone, tried first, missed the sympy and
    the library routes: the review of the sixth session ran code through both.)"""
    marker = tmp_path / "pwned"
    paths = _export_variants(tmp_path, marker)
    for label in ("weight", "sample", "expression"):  # the hostile archives are hostile
        try:
            torch.export.load(str(paths[label]))
        except Exception:  # noqa: BLE001, S110 - it runs the payload first, then may fail on its result
            pass
        assert marker.exists(), label
        marker.unlink()
    for label in ("clean", "weight", "opaque", "sample", "expression"):
        found = discover_checkpoints([paths[label]])
        assert [r.kind for r in found.checkpoints] == ["export"], label
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint(found.checkpoints[0])
        assert "--trust-pickle" in str(err.value) and "can run code" in str(err.value), label
        assert not marker.exists(), label
    trusted = load_checkpoint(discover_checkpoints([paths["clean"]]).checkpoints[0], trust_pickle=True)
    assert trusted.module is not None and not marker.exists()


_LOAD_PROBE = (
    "import sys\nfrom pathlib import Path\nfrom fdl_cli.checkpoints import discover_checkpoints, load_checkpoint\n"
    "from fdl_cli.errors import FdlError\n"
    "try:\n    found = discover_checkpoints([Path(sys.argv[1])])\n"
    "    loaded = load_checkpoint(found.checkpoints[0])\n    print('loaded', sorted(loaded.state_dict))\n"
    "except FdlError as exc:\n    print('refused', type(exc).__name__)\n"
)


def _in_a_process(source: str, script: Path, *args: str) -> Any:
    """`python SCRIPT ARGS` of `source`, in another process (a crash is its exit status, not this run's): a warm one
    (tests/warm.py), forked from an interpreter that imported torch already, with the repository on PYTHONPATH."""
    import sys

    from tests import warm

    script.write_text(source, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return warm.run([sys.executable, str(script), *args], env=env)


def _load_in_a_subprocess(path: Path) -> Any:
    """Discover and load `path` in another process (a crash is its exit status, not this run's):
    stdout 'loaded KEYS' or 'refused ERROR'; the process must exit 0."""
    result = _in_a_process(_LOAD_PROBE, path.parent / "load_probe.py", str(path))
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return result


_FORGED_NUMPY = r'''
import sys
import numpy as np
import torch

try:
    from numpy._core.multiarray import scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar

# An object dtype whose pickled state (BUILD) clears its flags: numpy then takes it for a dtype that
# holds no Python objects, and rebuilds arrays and scalars of it from raw bytes read as PyObject pointers.
forged = np.dtype("O8", False, True)
forged.__setstate__((3, "|", None, None, None, -1, -1, 0))
pointers = b"\x41" * 16


class Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


payloads = {
    "array": Call(set, np.ndarray((2,), dtype=forged, buffer=pointers)),  # set() reads each item
    "scalar": Call(scalar, forged, pointers[:8]),
    "field": Call(scalar, Call(np.dtype, [("x", forged)]), pointers[:8]),
    "bare": np.ndarray((2,), dtype=forged, buffer=pointers),  # the array alone, as numpy pickles it
}
torch.save({"model": {"w": torch.zeros(3)}, "step": 1, "x": payloads[sys.argv[2]]}, sys.argv[1])
'''


@pytest.mark.parametrize("kind", ["array", "scalar", "field", "bare"])
def test_forged_numpy_dtype_neither_crashes_nor_loads_raw_pointers(tmp_path: Path, kind: str) -> None:
    """A dtype's pickled state can clear an object dtype's flags (numpy accepts it): an array or scalar
    of it is then rebuilt from raw bytes taken as PyObject pointers, and the first read of an item
    dereferences them (a segfault, or worse, in the restricted unpickler). Found by a review while
    numpy arrays were allowed to the restricted unpickler (withdrawn since): fdl rebuilds no array
    (`NumpyArrayNotLoaded`) and admits no object dtype, so such a file is refused, without a crash."""
    path = tmp_path / "forged_1.pt"
    forged = _in_a_process(_FORGED_NUMPY, tmp_path / "forge.py", str(path), kind)
    assert forged.returncode == 0, forged.stderr
    result = _load_in_a_subprocess(path)
    assert result.stdout.startswith("refused"), result.stdout


def test_numpy_arrays_in_a_checkpoint_are_read_as_placeholders_and_payloads_in_them_never_run(tmp_path: Path) -> None:
    """Training loops save arrays beside the weights (np.random.get_state(), loss histories). They are
    read as `NumpyArrayNotLoaded` (shape and dtype, no data): numpy never rebuilds an array from the
    file's bytes. An object array's items are unpickled under the same rules: a payload is refused."""
    import numpy as np

    from fdl_cli.checkpoints import NumpyArrayNotLoaded, _load_weights_only

    weights = _weights()
    path = tmp_path / "loop_3.pt"
    torch.save({"model_state_dict": weights, "epoch": 3, "numpy_rng": np.random.get_state(),
                "losses": np.array([0.9, 0.5, 0.25]), "seen": np.arange(6, dtype=np.uint16).reshape(2, 3)}, path)
    loaded = _load_weights_only(path)
    assert isinstance(loaded["losses"], NumpyArrayNotLoaded)
    assert (loaded["losses"].shape, loaded["losses"].dtype) == ((3,), "float64")
    assert (loaded["seen"].shape, loaded["seen"].dtype) == ((2, 3), "uint16")
    assert loaded["numpy_rng"][0] == "MT19937" and loaded["numpy_rng"][1].shape == (624,)
    assert not hasattr(loaded["losses"], "__array__") and not hasattr(loaded["losses"], "data")
    found = discover_checkpoints([tmp_path])
    assert [(ref.step, ref.kind) for ref in found.checkpoints] == [(3, "state_dict")] and not found.bad
    checkpoint = load_checkpoint(found.checkpoints[0])
    assert checkpoint.state_dict is not None
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in weights.items())

    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    torch.save({"model_state_dict": weights, "step": 1, "history": np.array([Payload(marker), 1], dtype=object)},
               hostile / "objects_1.pt")
    torch.save({"model_state_dict": weights, "step": 2, "names": np.array([1, "a"], dtype=object)},
               hostile / "plain_objects_2.pt")
    torch.save({"model_state_dict": weights, "step": 3, "classes": np.array(["cat", "dog"])}, hostile / "strings_3.pt")
    said = {}
    for name in ("objects_1.pt", "plain_objects_2.pt", "strings_3.pt"):
        for kind in ("state_dict", "pickle"):  # as loaded directly, and as discovery classifies it
            ref = CheckpointRef(path=hostile / name, step=1, step_source="name", kind=kind)
            with pytest.raises(UnsafeCheckpointError) as refused:
                load_checkpoint(ref)
            said[name, kind] = refused.value.message
    assert not marker.exists()
    assert "posix.system" in said["objects_1.pt", "state_dict"] and "could run code" in said["objects_1.pt", "pickle"]
    for name, dtype in (("plain_objects_2.pt", "ObjectDType"), ("strings_3.pt", "StrDType")):
        for kind in ("state_dict", "pickle"):
            assert f"holds a numpy array fdl does not read without unpickling it (numpy.dtypes.{dtype}" in said[name, kind]
            assert "numeric arrays are fine" in said[name, kind]
    assert [ref.kind for ref in discover_checkpoints([hostile]).checkpoints] == ["pickle"] * 3


def _with_entry(path: Path, opcodes: bytes) -> None:
    """A checkpoint of weights whose data.pkl also holds hand-written ``opcodes`` (one value) under 'x'."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"model_state_dict": _weights(), "step": 1}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert data.endswith(b"u.")  # ... SETITEMS STOP
                data = data[:-1] + b"X\x01\x00\x00\x00x" + opcodes + b"s."  # SETITEM 'x', then STOP
            dst.writestr(name, data)


def _op_str(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


_DTYPE_COPY = b"cnumpy\ndtype\n(" + _op_str("f8") + b"\x89\x88tR"  # numpy.dtype('f8', False, True)
_HOSTILE_NUMPY = {
    # BUILD of a v2 state without names: numpy's __setstate__ dereferences the NULL names
    "null_names": _DTYPE_COPY + b"(K\x02" + _op_str("<") + b"N}J\xff\xff\xff\xffJ\xff\xff\xff\xfftb",
    # BUILD of a v2 state whose field "dtype" is a str: numpy reads it as a dtype and writes its flags
    "field_confusion": _DTYPE_COPY + b"(K\x02" + _op_str("<") + b"N(" + _op_str("a") + b"t}" + _op_str("a")
    + b"(" + _op_str("x" * 80) + b"K\x00tsJ\xff\xff\xff\xffJ\xff\xff\xff\xfftb",
    # scalar() of a void dtype without data: numpy allocates the dtype's size (up to 2 GiB) per scalar
    "void_scalar": b"cnumpy._core.multiarray\nscalar\n(cnumpy\ndtype\n(" + _op_str("V100000") + b"tRtR",
}


@pytest.mark.parametrize("kind", sorted(_HOSTILE_NUMPY))
def test_hostile_numpy_dtype_states_and_scalars_neither_crash_nor_allocate(tmp_path: Path, kind: str) -> None:
    """numpy's dtype.__setstate__ trusts the state a pickle BUILDs into a dtype copy (a v2 state without
    names, a field whose dtype is a str: a segfault), and its scalar() builds a void scalar of any size
    from nothing. The restricted unpickler reaches numpy's dtype only through `_shared_dtype` (numpy's
    shared dtypes ignore any state) and scalar() only for numbers, from exactly their bytes."""

    path = tmp_path / f"{kind}_1.pt"
    _with_entry(path, _HOSTILE_NUMPY[kind])
    result = _load_in_a_subprocess(path)
    if kind == "void_scalar":
        assert result.stdout.startswith("refused UnsafeCheckpointError"), result.stdout
    else:  # the state is ignored: the weights load
        assert result.stdout.startswith("loaded"), result.stdout


def test_numpy_values_as_numpy_1_pickles_them_load_and_placeholders_made_by_newobj_print(tmp_path: Path) -> None:
    """numpy < 2 pickles scalars and arrays under numpy.core (numpy 2: numpy._core): both are read. A
    placeholder made by a pickle's NEWOBJ (no __init__ call) still has its (unknown) shape and dtype."""
    import io
    import zipfile

    import numpy as np

    from fdl_cli.checkpoints import NumpyArrayNotLoaded, _load_weights_only

    buf = io.BytesIO()
    torch.save({"model_state_dict": _weights(), "step": np.int64(3), "best": np.float32(0.5),
                "losses": np.array([1.0, 2.0])}, buf)
    path = tmp_path / "old_3.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    found = discover_checkpoints([path])
    assert [(ref.step, ref.kind) for ref in found.checkpoints] == [(3, "state_dict")]
    loaded = _load_weights_only(path)
    assert loaded["best"] == np.float32(0.5) and loaded["losses"].shape == (2,)

    _with_entry(tmp_path / "newobj_1.pt", b"cnumpy\nndarray\n)\x81")  # NEWOBJ numpy.ndarray ()
    placeholder = _load_weights_only(tmp_path / "newobj_1.pt")["x"]
    assert isinstance(placeholder, NumpyArrayNotLoaded) and repr(placeholder) == "<numpy array None None, not loaded>"


def test_a_load_in_another_thread_does_not_take_the_allowlist_from_under_a_load(tmp_path: Path, monkeypatch) -> None:
    """torch's allowlist is process-global and its safe_globals context removes the entries on exit:
    a load that ended in fdl's loader thread took them from a load still running in the main thread,
    which was then refused as unsafe (numpy scalars). Played here in one thread: a whole load runs
    inside another's torch.load. No entry of fdl's is left in torch's allowlist afterwards."""
    import io

    import numpy as np

    from fdl_cli import checkpoints

    buf = io.BytesIO()
    torch.save({"model_state_dict": _weights(), "step": np.int64(3)}, buf)
    raw = buf.getvalue()
    real_load = torch.load
    interleaved = []

    def load_while_another_ends(*args, **kwargs):
        if not interleaved:
            interleaved.append("started")
            interleaved.append(checkpoints._load_weights_only(io.BytesIO(raw)))  # the other thread's load
        return real_load(*args, **kwargs)

    before = set(map(repr, torch.serialization.get_safe_globals()))
    monkeypatch.setattr(torch, "load", load_while_another_ends)
    assert checkpoints._load_weights_only(io.BytesIO(raw))["step"] == 3
    assert interleaved[1]["step"] == 3
    assert set(map(repr, torch.serialization.get_safe_globals())) == before


def test_shadowed_methods_in_a_loaded_dict_or_tensor_are_no_traceback(tmp_path: Path) -> None:
    """torch's restricted unpickler lets a pickle set instance attributes on an OrderedDict or a tensor:
    `od.get = 5` or a tensor's `numel = 5` shadowed the methods fdl calls, a TypeError traceback in
    discovery and `fdl inspect`. The loaded object is rebuilt of plain containers first."""
    from collections import OrderedDict

    from tests.test_analyze import fdl

    weights = OrderedDict(_weights())
    weights.get = 5  # type: ignore[method-assign, assignment]
    step = torch.tensor(3)
    step.numel = 5  # type: ignore[method-assign, assignment]
    outer = OrderedDict(model_state_dict=weights, step=step)
    outer.get = "x"  # type: ignore[method-assign, assignment]
    torch.save(outer, tmp_path / "shadow_3.pt")
    found = discover_checkpoints([tmp_path])
    assert [(ref.step, ref.kind) for ref in found.checkpoints] == [(3, "state_dict")], found
    loaded = load_checkpoint(found.checkpoints[0])
    assert loaded.state_dict is not None and set(loaded.state_dict) == set(_weights())
    listed = fdl("inspect", str(tmp_path / "shadow_3.pt"), "--model", "tests.tiny_models:mlp", "--json")
    assert listed.code == 0 and "Traceback" not in listed.stderr, listed.stderr
