"""Compiled code in a model's folder: what runs is the source that can be read. A `__pycache__/*.pyc` compiled with
`invalidation_mode=UNCHECKED_HASH` from other source ran in place of the model.py (or of a module beside it, a
package's submodule, a module imported lazily in the forward pass) that the user had read; an extension module
(`helpers.so`) or a sourceless `helpers.pyc` beside model.py was imported too. fdl now compiles the folder's code
from its .py files (writing no `__pycache__` there), and refuses, for an fdl.toml's model, compiled code the folder's
imports would take. Each planted .pyc writes a marker file when run."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import py_compile
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.errors import ModelError
from tests.cli_run import fdl_in_process
from tests.test_s23_sec import _ran
from tests.test_s23_sec2 import _linear_run, _said

#: the model's folder: model.py imports a module beside it and a package's submodule (which imports its sibling
#: `from . import`), and its forward pass imports a third module lazily; nn.Linear(4, 3) as the checkpoints hold
_CODE = {
    "model.py": "import torch.nn as nn\n\nimport s25_helpers\nfrom s25_pkg import sub\n\n\n"
                "class Net(nn.Linear):\n    def forward(self, x):\n        import s25_lazy\n\n"
                "        return s25_lazy.act(super().forward(x))\n\n\n"
                "def build():\n    return Net(s25_helpers.IN, sub.OUT)\n",
    "s25_helpers.py": "IN = 4\n",
    "s25_lazy.py": "def act(x):\n    return x * 2\n",
    "s25_pkg/__init__.py": "",
    "s25_pkg/sub.py": "from . import consts\n\nOUT = consts.OUT\n",
    "s25_pkg/consts.py": "OUT = 3\n",
}

#: how the run names its model: by the fdl.toml, as a file or as the module beside it; or by the user's --model
_WAYS = {"manifest": 'model = "model.py:build"\n', "module": 'model = "model:build"\n', "own": ""}


@pytest.fixture
def _clean_imports() -> Iterator[None]:
    """sys.path, sys.meta_path and the modules the test imported (its folders' s25_ modules) as they were."""
    path, meta_path, modules = list(sys.path), list(sys.meta_path), set(sys.modules)
    yield
    sys.path[:], sys.meta_path[:] = path, meta_path
    for name in set(sys.modules) - modules:
        if name.startswith(("s25_", "fdl_user_model_")) or name == "model":
            del sys.modules[name]


def _run(tmp_path: Path, way: str) -> Path:
    run = _linear_run(tmp_path / "run", _WAYS[way])
    for name, text in _CODE.items():
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text(text)
    return run


def _evil(source: str, marker: Path) -> str:
    """`source` that first writes `marker`: what the planted compiled code holds."""
    return f"open({str(marker)!r}, 'w').write('x')\n{source}"


def _compiled(source_text: str, to: Path, *, tmp: Path) -> None:
    """`source_text` compiled to `to`, a .pyc Python runs without comparing it to any source."""
    tmp.mkdir(parents=True, exist_ok=True)
    source = tmp / (to.name + ".py")
    source.write_text(source_text)
    to.parent.mkdir(parents=True, exist_ok=True)
    py_compile.compile(str(source), cfile=str(to), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def _analyze(run: Path, way: str, out: Path) -> object:
    own = ["--model", f"{run / 'model.py'}:build"] if way == "own" else []
    return fdl_in_process("analyze", run, *own, "--out", out, "--json", "--batch-size", "8")


@pytest.mark.parametrize("way", list(_WAYS))
def test_bytecode_in_pycache_never_runs_in_place_of_the_source(tmp_path: Path, way: str,
                                                               _clean_imports: None) -> None:
    """Each .py of the folder has a `__pycache__` .pyc of other code (the marker's): it ran, the source read did
    not; now every one of them (the model file, its neighbour, the package's two submodules, the lazy import of the
    forward pass) is compiled from its source."""
    run = _run(tmp_path, way)
    for name, text in _CODE.items():
        file = run / name
        _compiled(_evil(text, tmp_path / f"ran_{file.stem}"), Path(importlib.util.cache_from_source(str(file))),
                  tmp=tmp_path / "evil" / file.parent.name)
    done = _analyze(run, way, tmp_path / "a.h5")
    assert _ran(tmp_path) == []
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    assert len(done.stdout.splitlines()) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("way", list(_WAYS))
def test_no_pycache_is_written_into_the_model_folder(tmp_path: Path, way: str, _clean_imports: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytecode fdl never reads there, it does not write there either: the folder is left as it was given."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs but for PYTHONDONTWRITEBYTECODE
    run = _run(tmp_path, way)
    before = sorted(path.relative_to(run) for path in run.rglob("*"))
    done = _analyze(run, way, tmp_path / "a.h5")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    assert sorted(path.relative_to(run) for path in run.rglob("*")) == before


def _refusal(said: str, file: Path, module: str, source: str | None, manifest: Path) -> None:
    assert "Traceback" not in said
    where = f" in place of its source {source}" if source else ", and the folder holds no source of it (a .py) to read"
    assert (f"error: the model folder of {manifest} holds compiled code, which fdl does not run for an fdl.toml's "
            f"model: {file}, which Python would import as {module}{where}") in said, said
    assert f"fix: delete {file}" in said and "or give --model of your own" in said, said


#: compiled code the imports of the model code would take: (file, module, its source's name or None)
_COMPILED = [
    ("s25_helpers" + importlib.machinery.EXTENSION_SUFFIXES[0], "s25_helpers", "s25_helpers.py"),
    ("s25_pkg/sub.abi3.so", "s25_pkg.sub", "sub.py"),
    ("s25_lazy.so", "s25_lazy", "s25_lazy.py"),  # imported in the forward pass
    ("s25_extra.so", "s25_extra", None),
    ("s25_extra.pyc", "s25_extra", None),  # the legacy place of a sourceless module
    ("s25_pkg/__init__.pyc", "s25_pkg", None),
]


@pytest.mark.parametrize(("name", "module", "source"), _COMPILED)
@pytest.mark.parametrize("way", ["manifest", "module"])
def test_compiled_code_the_manifests_model_would_import_is_refused(
    tmp_path: Path, way: str, name: str, module: str, source: str | None, _clean_imports: None
) -> None:
    """An extension module (a .so; its bytes are never loaded) or a .pyc of no source, which Python imports instead
    of the .py beside it or without one: refused, naming the file, for an fdl.toml's model."""
    run = _run(tmp_path, way)
    file = run / name
    if file.stem == "__init__":
        file.with_suffix(".py").unlink()
    if "extra" in name:
        (run / "s25_helpers.py").write_text("import s25_extra\n\nIN = 4\n")
    if name.endswith(".pyc"):
        _compiled(_evil("IN = 4\n", tmp_path / "ran_compiled"), file, tmp=tmp_path / "evil")
    else:
        file.write_bytes(b"\x7fELF not really a shared object")
    said = _said(_analyze(run, way, tmp_path / "a.h5").stderr)  # type: ignore[attr-defined]
    assert _ran(tmp_path) == []
    _refusal(said, file, module, source, run / "fdl.toml")


def test_a_manifest_naming_a_pyc_as_its_model_file_is_refused(tmp_path: Path, _clean_imports: None) -> None:
    run = _linear_run(tmp_path / "run", 'model = "./model.pyc:build"\n')
    _compiled(_evil("import torch.nn as nn\n\n\ndef build():\n    return nn.Linear(4, 3)\n", tmp_path / "ran_model"),
              run / "model.pyc", tmp=tmp_path / "evil")
    said = _said(_analyze(run, "manifest", tmp_path / "a.h5").stderr)  # type: ignore[attr-defined]
    assert _ran(tmp_path) == []
    assert "Traceback" not in said
    assert (f"error: the model folder of {run / 'fdl.toml'} holds compiled code, which fdl does not run for an "
            f"fdl.toml's model: {run / 'model.pyc'}, which it names as the model file") in said, said
    assert f"fix: delete {run / 'model.pyc'}" in said, said


def test_the_users_own_model_may_import_compiled_code_beside_it(tmp_path: Path, _clean_imports: None) -> None:
    """--model of your own imports what `python model.py` does: a module built in place (here a sourceless .pyc,
    of code the user compiled) is taken, as Python takes it."""
    run = _run(tmp_path, "own")
    (run / "s25_helpers.py").unlink()
    _compiled("IN = 4\n", run / "s25_helpers.pyc", tmp=tmp_path / "own")
    factory = resolve_model_factory(f"{run / 'model.py'}:build")
    assert factory().in_features == 4
    for name in [name for name in sys.modules if name.startswith("s25_")]:
        del sys.modules[name]
    with pytest.raises(ModelError, match="holds compiled code"):
        resolve_model_factory("model:build", module_dir=run, named_by=run / "fdl.toml")


def test_a_pyc_recording_the_sources_time_and_size_is_not_trusted_either(tmp_path: Path,
                                                                          _clean_imports: None) -> None:
    """A default (timestamp) .pyc is checked only against the time and size of its source that it records, which a
    downloaded folder's files keep: one of other code, recording model.py's, ran as model.py."""
    folder = tmp_path / "code"
    folder.mkdir()
    model = folder / "model.py"
    model.write_text("def build():\n    return 'source'\n")
    stat = model.stat()
    code = compile(_evil("def build():\n    return 'pyc'\n", tmp_path / "ran_model"), str(model), "exec")
    cached = Path(importlib.util.cache_from_source(str(model)))
    cached.parent.mkdir()
    cached.write_bytes(importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, int(stat.st_mtime) & 0xFFFFFFFF,
                                                                 stat.st_size) + marshal.dumps(code))
    assert resolve_model_factory(f"{model}:build")() == "source"
    assert _ran(tmp_path) == []
