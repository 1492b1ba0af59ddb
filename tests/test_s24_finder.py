"""Review of the model folders' import machinery (`_FolderModules`) and of what an fdl.toml's `model` may name:
imports an unpickler or torch.compile makes for the folder's code, a module beside the model whose name the
standard library holds, and callables a folder's module only re-exports."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.errors import ModelError
from tests.cli_run import fdl_in_process
from tests.test_s23_sec import _own_import_state, _planted, _ran

__all__ = ["_own_import_state"]  # a fixture

#: a model file whose factory reads its width from a pickle of a class defined in its neighbour s24_cfg
_UNPICKLING_MODEL = """\
import os
import pickle

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))


def build(kind):
    if kind == "python":  # pickle's pure-Python unpickler (joblib's, dill's kind)
        with open(os.path.join(HERE, "cfg.pkl"), "rb") as f:
            cfg = pickle._Unpickler(f).load()
    else:  # torch.load of what the trainer torch.save'd
        cfg = torch.load(os.path.join(HERE, "cfg.pt"), weights_only=False)
    return nn.Linear(2, cfg.width)
"""


@pytest.mark.parametrize("kind", ["python", "torch"])
def test_model_code_unpickling_its_own_data_gets_the_classes_of_its_neighbours(
    tmp_path: Path, kind: str, _own_import_state: None
) -> None:
    """A factory that unpickles its own data (torch.load of a config object whose class its neighbour s24_cfg
    defines): the unpickler's frame made the import, no code of the folder, and it said "No module named 's24_cfg'"
    (`python model.py` finds it). An unpickling run by fdl itself still gets none of the folder's modules."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "s24_cfg.py").write_text("class Cfg:\n    def __init__(self, width):\n        self.width = width\n")
    (folder / "model.py").write_text(_UNPICKLING_MODEL)
    sys.path.insert(0, str(folder))  # the trainer's own import, as it saved the config
    cfg = __import__("s24_cfg").Cfg(5)
    (folder / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    torch.save(cfg, folder / "cfg.pt")
    sys.path.remove(str(folder))
    del sys.modules["s24_cfg"]
    factory = resolve_model_factory(f"{folder / 'model.py'}:build")
    assert factory(kind).out_features == 5
    del sys.modules["s24_cfg"]
    with pytest.raises(ModuleNotFoundError, match="s24_cfg"):  # this test's (fdl's) own unpickling
        pickle._Unpickler(open(folder / "cfg.pkl", "rb")).load()


def test_a_torch_compiled_function_of_the_model_imports_its_neighbour_lazily(
    tmp_path: Path, _own_import_state: None
) -> None:
    """`@torch.compile(fullgraph=True)` on a function of the model file that imports its neighbour: dynamo's
    interpreter made the import for the traced code ("Import failure" where `python model.py` runs it)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "s24_act.py").write_text("import torch\n\n\ndef act(x):\n    return torch.relu(x) * 2\n")
    (folder / "model.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\n"
        "@torch.compile(backend='eager', fullgraph=True)\ndef act(x):\n    from s24_act import act\n"
        "    return act(x)\n\n\nclass Net(nn.Linear):\n    def forward(self, x):\n        return act(super().forward(x))\n"
        "\n\ndef build():\n    return Net(2, 2)\n")
    net = resolve_model_factory(f"{folder / 'model.py'}:build")()
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
        net.bias.zero_()
        out = net(torch.tensor([[1.0, -1.0]]))
    assert out.tolist() == [[2.0, 0.0]]
    torch._dynamo.reset()


def test_torch_compile_called_by_model_code_gets_none_of_the_folders_modules(tmp_path: Path) -> None:
    """Guard of the rule above: only the unpickler's and the traced code's imports count as the model's. Deciding by
    the whole stack (any frame of the folder's code) ran a `triton.py`, `gmpy2.py` or `colorama.py` beside a model
    whose factory calls torch.compile: torch's own optional imports, made while the factory was on the stack."""
    folder = tmp_path / "code"
    folder.mkdir()
    names = ("triton", "gmpy2", "colorama", "tabulate", "z3", "tqdm")
    _planted(folder, tmp_path, names)
    (folder / "model.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\ndef build():\n"
        "    torch.compile(lambda x: torch.relu(x) * 2, backend='eager', fullgraph=True)(torch.ones(2))\n"
        "    return nn.Linear(2, 3)\n")
    # a real process: the planted modules stand in for torch's optional imports (what gets imported, and from where)
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from fdl_cli.checkpoints import resolve_model_factory as r; "
         "print(r(sys.argv[1])().out_features)", f"{folder / 'model.py'}:build"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=300)
    assert run.stdout.split() == ["3"], run.stderr
    assert _ran(tmp_path) == []


def _run_naming(folder: Path, model: str, kwargs: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.ones(2, 2), "bias": torch.ones(2)}, folder / "step_1.pt")
    np.savez(folder / "probe.npz", x=np.ones((8, 2), dtype=np.float32))
    (folder / "fdl.toml").write_text(f'model = "{model}"\nprobe = "probe.npz"\n[model_kwargs]\n{kwargs}\n')
    return folder


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.path}",)


def test_a_library_function_a_folders_model_file_only_imports_is_not_its_own(
    tmp_path: Path, _own_import_state: None
) -> None:
    """A model.py of `from torch import *` (torch.load among the names) and `model = "model.py:load"` with
    `model_kwargs = { f = "evil.pkl", weights_only = false }`: load is an attribute of the folder's module, so it
    counted as the folder's code, and `fdl analyze run` unpickled the folder's pickle (a shell command) without
    --trust-pickle. A library's function (Python's, an installed library's, fdl's) is not the folder's code."""
    run = _run_naming(tmp_path / "run", "model.py:load", f'f = "{tmp_path / "run" / "evil.pkl"}"\nweights_only = false')
    (run / "model.py").write_text("from torch import *  # noqa\nimport torch.nn as nn\n\n\n"
                                  "def build():\n    return nn.Linear(2, 2)\n")
    (run / "evil.pkl").write_bytes(pickle.dumps(_Marker(tmp_path / "ran_pickle")))
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert _ran(tmp_path) == []
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "neither a model defined in its folder" in said and "load is a function of torch" in said, said


def test_a_factory_defined_in_the_folder_may_be_wrapped_or_partial(tmp_path: Path, _own_import_state: None) -> None:
    """What the folder defines still counts through a library's wrapper (torch.no_grad()(build), a partial of it),
    and so does a factory of one's own project that model.py imports; a partial of a library's function does not."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "fdl.toml").write_text('model = "model.py:build"\n')
    (run / "model.py").write_text(
        "import functools\n\nimport torch\nimport torch.nn as nn\n\n\ndef _build(width):\n    return nn.Linear(2, width)\n"
        "\n\nbuild = torch.no_grad()(_build)\nthree = functools.partial(_build, 3)\n"
        "load = functools.partial(torch.load, weights_only=False)\nfrom tests.tiny_models import mlp  # noqa\n")
    spec = f"{run / 'model.py'}"
    assert resolve_model_factory(f"{spec}:build", named_by=run / "fdl.toml")(4).out_features == 4
    assert resolve_model_factory(f"{spec}:three", named_by=run / "fdl.toml")().out_features == 3
    assert resolve_model_factory(f"{spec}:mlp", named_by=run / "fdl.toml")().__class__.__name__ == "Sequential"
    with pytest.raises(ModelError, match="load is a function of torch"):
        resolve_model_factory(f"{spec}:load", named_by=run / "fdl.toml")


def test_a_link_into_another_pythons_library_is_not_the_folders_code(tmp_path: Path, _own_import_state: None) -> None:
    """A link `sp.py` to another Python's subprocess.py (the system's /usr/lib/python3.X, not the interpreter fdl runs
    on, whose library was the only one recognised) and `model = "sp.py:run"` with `args`, `shell = true`: fdl ran
    the shell command."""
    other = tmp_path / "usr" / "lib" / "python3.11"
    other.mkdir(parents=True)
    (other / "subprocess.py").write_text(Path(subprocess.__file__).read_text())
    run = _run_naming(tmp_path / "run", "sp.py:run", f'args = "touch {tmp_path / "ran_shell"}"\nshell = true')
    (run / "sp.py").symlink_to(other / "subprocess.py")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert _ran(tmp_path) == []
    assert done.returncode == 1
    assert "neither a model defined in its folder" in " ".join(done.stderr.split()), done.stderr
