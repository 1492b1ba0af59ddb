"""Model folders whose code relies on import machinery, run as a plain `import` of the folder runs them. The model
file fdl imports under a name of its own (`fdl_user_model_...`, no clash with an installed `model`); a neighbour's
`import model` (a registry, a circular import, an isinstance check on a class of model.py) ran model.py a second
time as another module: the circular import failed ("cannot import name 'Block' from partially initialized module"),
the registry the factory read stayed empty."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_s23_sec2 import _linear_run


@pytest.fixture
def _clean_imports(tmp_path: Path) -> Iterator[None]:
    """sys.meta_path as it was, and no module of the test's folder left imported (under any name)."""
    meta_path, modules = list(sys.meta_path), set(sys.modules)
    yield
    sys.meta_path[:] = meta_path
    for name in set(sys.modules) - modules:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _run(tmp_path: Path, code: dict[str, str], *, spec: str = "s26rs_model.py:build") -> Path:
    run = _linear_run(tmp_path / "run", f'model = "{spec}"\n')
    for name, text in code.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    return run


def _steps(done: object) -> list[int]:
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    return [json.loads(line)["step"] for line in done.stdout.splitlines()]  # type: ignore[attr-defined]


#: model.py and its neighbour import each other; the neighbour registers its class in model.py's registry and checks
#: the config the factory passes is model.py's Cfg
_MUTUAL = {
    "s26rs_model.py": "import torch.nn as nn\n\nREGISTRY = {}\n\n\ndef register(cls):\n    REGISTRY[cls.__name__] = cls\n"
                      "    return cls\n\n\nclass Cfg:\n    n_out = 3\n\n\nfrom s26rs_layers import Block  # noqa: E402\n\n\n"
                      "def build():\n    assert list(REGISTRY) == ['Block'], REGISTRY\n    return Block(Cfg())\n",
    "s26rs_layers.py": "import torch.nn as nn\n\nimport s26rs_model\nfrom s26rs_model import Cfg, register\n\n\n"
                       "@register\nclass Block(nn.Linear):\n    def __init__(self, cfg):\n"
                       "        assert isinstance(cfg, Cfg) and s26rs_model.Cfg is Cfg, (type(cfg), Cfg)\n"
                       "        super().__init__(4, cfg.n_out)\n",
}


@pytest.mark.parametrize("own", [False, True])
def test_a_neighbour_importing_the_model_file_gets_the_module_fdl_runs(tmp_path: Path, own: bool,
                                                                        _clean_imports: None) -> None:
    """`from s26rs_model import register` in the neighbour model.py imports: the model file fdl is running, as a
    plain `import s26rs_model` gives it, not a second copy (which failed on the circular import, or registered
    into a registry the factory never reads); by the fdl.toml and by --model alike."""
    run = _run(tmp_path, _MUTUAL)
    extra = ["--model", f"{run / 's26rs_model.py'}:build"] if own else []
    done = fdl_in_process("analyze", run, *extra, "--out", tmp_path / "a.h5", "--json", "--batch-size", "8")
    assert _steps(done) == [0, 10]
    model = sys.modules["s26rs_model"]
    assert model is next(module for name, module in sys.modules.items() if name.startswith("fdl_user_model_")
                         and getattr(module, "__file__", None) == str(run / "s26rs_model.py"))
    assert model.__spec__.name.startswith("fdl_user_model_")  # the module's own spec, as fdl imported it


def test_a_model_file_that_failed_is_not_left_under_the_name_its_neighbour_imported(tmp_path: Path,
                                                                                   _clean_imports: None) -> None:
    """model.py raised after its neighbour imported it: gone from sys.modules under that name too, as Python takes
    out a module that failed; a later `import s26rs_model` found the broken half-run module there."""
    code = {**_MUTUAL, "s26rs_model.py": _MUTUAL["s26rs_model.py"] + "raise RuntimeError('half done')\n"}
    run = _run(tmp_path, code)
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json")
    assert done.returncode == 1 and "got: RuntimeError: half done" in done.stderr, done.stderr
    assert "s26rs_model" not in sys.modules and "s26rs_layers" in sys.modules


def test_an_fdl_toml_models_import_of_a_model_file_run_for_model_is_checked_afresh(tmp_path: Path,
                                                                                   _clean_imports: None) -> None:
    """The model file ran for --model, which took the sourceless .pyc beside it, as Python does; an fdl.toml's model
    importing that file in the same process (the Python API) gets it imported afresh, and the .pyc refused, not the
    module --model ran with the compiled code in it."""
    import py_compile

    from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory

    run = _run(tmp_path, {"s26rs_model.py": "import torch.nn as nn\n\nimport s26rs_helpers\n\n\n"
                                            "def build():\n    return nn.Linear(s26rs_helpers.IN, 3)\n",
                          "s26rs_entry.py": "import s26rs_model\n\nbuild = s26rs_model.build\n"})
    (tmp_path / "src.py").write_text("IN = 4\n")
    py_compile.compile(str(tmp_path / "src.py"), cfile=str(run / "s26rs_helpers.pyc"), doraise=True)
    assert resolve_model_factory(f"{run / 's26rs_model.py'}:build")().in_features == 4
    with pytest.raises(CompiledCodeError, match=r"s26rs_helpers\.pyc, which Python would import as s26rs_helpers"):
        resolve_model_factory("s26rs_entry:build", module_dir=run, named_by=run / "fdl.toml")


#: the folder's model.py imports layers.py, which fails at import, in the factory or in the forward pass: its code,
#: the code that raises, and the error
_RAISES = {
    "import": ("X = {}\nY = X['missing']\n", "raise_at_import", "Y = X['missing']", "KeyError: 'missing'"),
    "build": ("", "raise_in_build", "return nn.Linear(4, cfg['width'])", "KeyError: 'width'"),
    "forward": ("", "raise_in_forward", "raise ValueError('boom in forward')", "ValueError: boom in forward"),
    # the first sample runs (the check before the analysis), a batch of more fails; inspect runs that one sample
    "batch": ("", "raise_in_batch", "raise ValueError('boom in forward')", "ValueError: boom in forward"),
}
_LAYERS = ("import torch.nn as nn\n\n\n\n{top}\n\n\nclass Block(nn.Linear):\n    def forward(self, x):\n"
           "        if {guard}:\n            raise ValueError('boom in forward')\n"
           "        return super().forward(x)\n\n\ndef make(cfg):\n    return nn.Linear(4, cfg['width'])\n")


def _raising_run(tmp_path: Path, when: str) -> tuple[Path, int]:
    top, _, code, _ = _RAISES[when]
    layers = _LAYERS.format(top=top, guard="len(x) > 1" if when == "batch" else "True")
    factory = "make({'width': 3})" if when != "build" else "make({})"
    if when in ("forward", "batch"):
        factory = "Block(4, 3)"
    run = _run(tmp_path, {"s26rs_model.py": f"from s26rs_layers import Block, make\n\n\ndef build():\n"
                                            f"    return {factory}\n", "s26rs_layers.py": layers})
    return run, next(number for number, text in enumerate(layers.splitlines(), 1) if text.strip() == code)


@pytest.mark.parametrize(("command", "when"), [*(("analyze", when) for when in _RAISES),
                                               *(("inspect", when) for when in _RAISES if when != "batch")])
def test_an_error_of_the_model_code_says_the_file_and_line_it_was_raised_at(tmp_path: Path, when: str, command: str,
                                                                           _clean_imports: None) -> None:
    """Python's traceback shows the line of the model folder's code that raised; fdl's error said only
    "KeyError: 'missing'" with "fix the error in that file" (model.py, where layers.py raised it), or a forward pass's
    ValueError as a probe that does not fit, with no place to look. It names the file, line and code now."""
    run, line = _raising_run(tmp_path, when)
    out = ["--out", tmp_path / "a.h5"] if command == "analyze" else []
    done = fdl_in_process(command, run, *out)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said, said
    _, _, code, error = _RAISES[when]
    assert f"{error} (raised at {run / 's26rs_layers.py'}, line {line}: {code})" in said, said


def test_the_note_of_a_packages_module_names_the_module_that_runs(tmp_path: Path, _clean_imports: None) -> None:
    """`model = "s26rs_pkg.net:build"`: the note before it runs named s26rs_pkg/__init__.py (empty), not the file
    whose code runs and is to be read, s26rs_pkg/net.py; its relative imports run as a plain import runs them."""
    run = _run(tmp_path, {"s26rs_pkg/__init__.py": "",
                          "s26rs_pkg/net.py": "from .layers import Block\n\n\ndef build():\n    return Block(4, 3)\n",
                          "s26rs_pkg/layers.py": "import torch.nn as nn\n\n\nclass Block(nn.Linear):\n    pass\n"},
               spec="s26rs_pkg.net:build")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json")
    assert _steps(done) == [0, 10]
    said = " ".join(done.stderr.split())
    assert (f"note: running the model code s26rs_pkg.net:build ({run / 's26rs_pkg' / 'net.py'}), named by "
            f"{run / 'fdl.toml'}") in said, said


@pytest.mark.parametrize("own", [False, True])
def test_a_model_file_of_a_package_with_relative_imports_is_told_to_be_named_as_a_module(
    tmp_path: Path, own: bool, _clean_imports: None
) -> None:
    """`model = "s26rs_pkg/net.py:build"` runs the file as `python s26rs_pkg/net.py` does, outside its package: its
    `from .layers import Block` failed with "attempted relative import with no known parent package" and "fix the
    error in that file", though the file is right. The fix names the module spec that imports it in its package."""
    run = _run(tmp_path, {"s26rs_pkg/__init__.py": "",
                          "s26rs_pkg/net.py": "from .layers import Block\n\n\ndef build():\n    return Block(4, 3)\n",
                          "s26rs_pkg/layers.py": "import torch.nn as nn\n\n\nclass Block(nn.Linear):\n    pass\n"},
               spec="s26rs_pkg/net.py:build")
    extra = ["--model", f"{run / 's26rs_pkg' / 'net.py'}:build"] if own else []
    done = fdl_in_process("analyze", run, *extra, "--out", tmp_path / "a.h5")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "attempted relative import with no known parent package" in said, said
    fix = (f"fix: {run / 's26rs_pkg' / 'net.py'} is a module of the package s26rs_pkg, whose relative imports need "
           "it imported as s26rs_pkg.net: name it so, ")
    fix += (f"--model s26rs_pkg.net:build with PYTHONPATH={run}" if own
            else f'model = "s26rs_pkg.net:build" in {run / "fdl.toml"}')
    assert fix in said, said


def test_a_model_file_imported_again_imports_its_neighbours_again(tmp_path: Path, _clean_imports: None) -> None:
    """The Python API resolving the model file of a folder a second time (run_analyze called again in a notebook)
    runs model.py afresh, but its neighbour stayed imported from the first time: registered into the first run's
    registry (the second's empty, KeyError), and as it was then, edits ignored. The folder's code is read again
    together, as a new `fdl` process reads it."""
    from fdl_cli.checkpoints import resolve_model_factory

    run = _run(tmp_path, _MUTUAL)
    spec = f"{run / 's26rs_model.py'}:build"
    assert resolve_model_factory(spec)().out_features == 3
    layers = run / "s26rs_layers.py"
    layers.write_text(layers.read_text().replace("cfg.n_out)", "cfg.n_out + 1)"))
    assert resolve_model_factory(spec)().out_features == 4
