"""The two changes to the model-code loader of session 26 together: per-load import isolation (`_Load`, each load's
code gets its own modules of a name) and a neighbour's `import model` getting the model file fdl runs (`_Running`).
The model file's module a neighbour imported by its own name was no load's: another load's code importing that name
got whichever model file ran last, another folder's or the one --model ran with compiled code taken."""

from __future__ import annotations

import contextlib
import gc
import py_compile
import sys
import weakref
from pathlib import Path

import pytest

import fdl_cli.checkpoints as loader
from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory
from fdl_cli.errors import ModelError
from tests.test_s26_rev_source import _clean_imports  # noqa: F401 - the fixture


def _folder(folder: Path, code: dict[str, str]) -> Path:
    for name, text in code.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _width_folder(folder: Path, width: int) -> Path:
    """model.py imports layers.py, which imports model.py at its top and again in the factory it defines."""
    return _folder(folder, {
        "s26r3_model.py": f"import s26r3_layers\n\nWIDTH = {width}\n\n\ndef build():\n    return s26r3_layers.make()\n",
        "s26r3_layers.py": "import torch.nn as nn\n\nimport s26r3_model\n\n\ndef make():\n"
                           "    import s26r3_model\n\n    return nn.Linear(4, s26r3_model.WIDTH)\n",
    })


@pytest.mark.usefixtures("_clean_imports")
def test_a_folders_code_importing_its_model_file_gets_its_own_after_another_folder_loaded(tmp_path: Path) -> None:
    """Two folders with a model.py of the same name (the Python API analysing two runs in turn): folder a's factory,
    called after b's model was loaded, imports its model.py and got b's (a network of b's width)."""
    build_a = resolve_model_factory(f"{_width_folder(tmp_path / 'a', 3) / 's26r3_model.py'}:build")
    assert build_a().out_features == 3
    build_b = resolve_model_factory(f"{_width_folder(tmp_path / 'b', 5) / 's26r3_model.py'}:build")
    assert build_b().out_features == 5
    assert [build_a().out_features, build_b().out_features, build_a().out_features] == [3, 5, 3]


@pytest.mark.usefixtures("_clean_imports")
def test_an_fdl_toml_models_import_of_the_model_file_never_gets_the_one_model_ran(tmp_path: Path) -> None:
    """The fdl.toml's model (s26r3_entry:build, which imports model.py in its factory) resolved first, then --model
    of model.py (its neighbour imports it by name) with the sourceless .pyc beside it taken, as Python takes it:
    the fdl.toml's factory got that module, the compiled code in it, not refused."""
    run = _folder(tmp_path / "run", {
        "fdl.toml": 'model = "s26r3_entry:build"\n',
        "s26r3_model.py": "import torch.nn as nn\n\nimport s26r3_helpers\nimport s26r3_layers\n\n\n"
                          "def build():\n    return nn.Linear(s26r3_helpers.IN, 3)\n",
        "s26r3_layers.py": "import s26r3_model\n",
        "s26r3_entry.py": "def build():\n    import s26r3_model\n\n    return s26r3_model.build()\n",
    })
    (tmp_path / "src.py").write_text("IN = 4\n")
    py_compile.compile(str(tmp_path / "src.py"), cfile=str(run / "s26r3_helpers.pyc"), doraise=True)
    entry = resolve_model_factory("s26r3_entry:build", module_dir=run, named_by=run / "fdl.toml")
    assert resolve_model_factory(f"{run / 's26r3_model.py'}:build")().in_features == 4
    with pytest.raises(CompiledCodeError, match=r"s26r3_helpers\.pyc, which Python would import as s26r3_helpers"):
        entry()


@pytest.mark.usefixtures("_clean_imports")
def test_a_model_file_that_failed_is_no_loads_module(tmp_path: Path) -> None:
    """model.py raised after its neighbour imported it: out of sys.modules (`_forget_model_file`) and out of the
    load that took it in, whose code importing it later (after another folder's model.py of that name) would
    have got the half-run module back, where Python imports the file again."""
    a = _width_folder(tmp_path / "a", 3)
    model = a / "s26r3_model.py"
    good = model.read_text()
    model.write_text(good.replace("\nWIDTH", "\nraise RuntimeError('half done')\nWIDTH"))
    with pytest.raises(ModelError, match="half done"):
        resolve_model_factory(f"{model}:build")
    layers_a = sys.modules["s26r3_layers"]
    resolve_model_factory(f"{_width_folder(tmp_path / 'b', 5) / 's26r3_model.py'}:build")
    model.write_text(good)
    assert layers_a.make().out_features == 3  # model.py imported again (the half-run module has no WIDTH)


@pytest.mark.usefixtures("_clean_imports")
def test_resolving_a_folder_again_and_again_keeps_nothing_per_resolution(tmp_path: Path) -> None:
    """The same folder resolved 50 times, by its fdl.toml and by --model in turn, its factory called each time: the
    modules, loads, owners, served names and finders stay as many as after the first, the old modules collected."""
    run = _folder(tmp_path / "run", {
        "fdl.toml": 'model = "s26r3_model.py:build"\n',
        "s26r3_model.py": "REGISTRY = {}\n\nfrom s26r3_layers import Block  # noqa: E402\nimport s26r3_pkg.sub  # noqa\n"
                          "\n\ndef build():\n    import s26r3_lazy\n\n    return Block(4, s26r3_lazy.OUT)\n",
        "s26r3_layers.py": "import torch.nn as nn\n\nimport s26r3_model\n\n\nclass Block(nn.Linear):\n    pass\n\n\n"
                           "s26r3_model.REGISTRY['Block'] = Block\n",
        "s26r3_lazy.py": "OUT = 3\n",
        "s26r3_pkg/__init__.py": "",
        "s26r3_pkg/sub.py": "from . import other  # noqa\n",
        "s26r3_pkg/other.py": "",
    })
    spec, kept = f"{run / 's26r3_model.py'}:build", []

    def counts() -> tuple[int, ...]:
        gc.collect()
        return (len(sys.modules), len(loader._LOADS), len(loader._OWNERS), len(loader._SERVED), len(sys.meta_path),
                sum(len(load.modules) + len(load.judged) for load in loader._LOADS.values()),
                sum(ref() is not None for ref in kept))

    for turn in range(50):
        for named_by in (None, run / "fdl.toml"):
            assert resolve_model_factory(spec, named_by=named_by)().out_features == 3
            kept.append(weakref.ref(sys.modules["s26r3_layers"]))
        if turn == 1:
            first = counts()
    assert counts() == first
    assert first[-1] == 2  # the modules of the last resolution by each way, no older one


#: the ways one folder's model is resolved: by its fdl.toml (the model file; a module importing it lazily, in its
#: factory; one importing it at its top) and by --model (the model file; the module importing it at its top)
_WAYS = {
    "path": ("s26r3_model.py:build", True), "lazy": ("s26r3_lazy:build", True), "eager": ("s26r3_eager:build", True),
    "own": ("s26r3_model.py:build", False), "own_eager": ("s26r3_eager.py:build", False),
}


@pytest.mark.usefixtures("_clean_imports")
def test_an_fdl_toml_models_code_refuses_the_compiled_code_in_every_order(tmp_path: Path) -> None:
    """Every order of three resolutions of one folder, by its fdl.toml or by --model (which takes the sourceless .pyc
    its model file imports), then each fdl.toml factory called: the fdl.toml's resolution or its factory is refused
    (CompiledCodeError), never a network built with the compiled code."""
    import itertools

    (tmp_path / "src.py").write_text("IN = 4\n")
    built: list[tuple[str, ...]] = []
    for number, order in enumerate(itertools.product(_WAYS, repeat=3)):
        run = _folder(tmp_path / str(number), {
            "s26r3_model.py": "import torch.nn as nn\n\nimport s26r3_helpers\nimport s26r3_layers\n\n\n"
                              "def build():\n    return nn.Linear(s26r3_helpers.IN, 3)\n",
            "s26r3_layers.py": "import s26r3_model\n",
            "s26r3_lazy.py": "def build():\n    import s26r3_model\n\n    return s26r3_model.build()\n",
            "s26r3_eager.py": "import s26r3_model\n\nbuild = s26r3_model.build\n",
        })
        py_compile.compile(str(tmp_path / "src.py"), cfile=str(run / "s26r3_helpers.pyc"), doraise=True)
        factories = []
        for way in order:
            spec, checked = _WAYS[way]
            spec = str(run / spec) if ".py:" in spec else spec
            try:
                factory = resolve_model_factory(spec, module_dir=run, named_by=run / "fdl.toml" if checked else None)
            except CompiledCodeError:
                assert checked, order
                continue
            (factories.append if checked else lambda made: made())(factory)
        for factory in factories:
            with contextlib.suppress(CompiledCodeError):
                factory()
                built.append(order)
    assert built == []
