"""Review of the model folders' import machinery (`_FolderModules`): which importer counts as a folder's own code,
and which folder's modules a second model, from another folder, gets."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.checkpoints import _serve_folder, resolve_model_factory
from fdl_cli.errors import ModelError
from tests.cli_run import fdl_in_process
from tests.test_s23_sec import _own_import_state, _planted, _ran

__all__ = ["_own_import_state"]  # a fixture


def _model_folder(folder: Path, width: int) -> Path:
    """A model.py whose factory imports its neighbour s23_rev3_layers lazily, the width the neighbour says."""
    folder.mkdir(parents=True)
    (folder / "s23_rev3_layers.py").write_text(f"WIDTH = {width}\n")
    (folder / "model.py").write_text(
        "import importlib\n\nimport torch.nn as nn\n\n\n"
        "def build():\n    from s23_rev3_layers import WIDTH\n"
        "    assert importlib.import_module('s23_rev3_layers').WIDTH == WIDTH\n    return nn.Linear(2, WIDTH)\n")
    return folder / "model.py"


def test_a_second_model_folder_gets_its_own_neighbours_not_the_first_ones(tmp_path: Path, _own_import_state: None) -> None:
    """The Python API analysing two runs in turn, each with its model.py and a layers module beside it of the same
    name: the second model was built with the first folder's module (sys.modules kept it), a network of the first
    run's shape."""
    assert resolve_model_factory(f"{_model_folder(tmp_path / 'a', 3)}:build")().out_features == 3
    assert resolve_model_factory(f"{_model_folder(tmp_path / 'b', 5)}:build")().out_features == 5
    assert resolve_model_factory(f"{tmp_path / 'a' / 'model.py'}:build")().out_features == 3  # and back


def test_code_compiled_from_a_string_is_not_the_folders_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_import_state: None
) -> None:
    """exec'd code (a library's generated code: dataclasses', torch.fx's) has a file name such as `<string>`, which
    read as a path lay in the current folder: in a model folder one works in, its import took the folder's module."""
    folder = tmp_path / "run"
    folder.mkdir()
    _planted(folder, tmp_path, ("s23_rev3_optional",))
    monkeypatch.chdir(folder)
    _serve_folder(folder, first=True)
    with pytest.raises(ModuleNotFoundError):
        exec(compile("import s23_rev3_optional", "<string>", "exec"), {})
    assert _ran(tmp_path) == []
    assert "s23_rev3_optional" not in sys.modules
    assert importlib.util.find_spec("s23_rev3_optional") is None


def test_a_trusted_pickle_takes_its_classes_from_the_model_folders_modules(
    tmp_path: Path, _own_import_state: None
) -> None:
    """`fdl analyze run --trust-pickle` of modules pickled whole (`torch.save(model)`) by a trainer that imported the
    model file fdl.toml names (the class is `s23_rev3_model.Net`): the folder was on sys.path and the pickles
    loaded; served to the model's code only, unpickling (torch's code imports the class) said "No module named
    's23_rev3_model'"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "s23_rev3_model.py").write_text(
        "import torch.nn as nn\n\n\nclass Net(nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(nn.Linear(2, 3))\n\n\ndef build():\n    return Net()\n")
    (run / "fdl.toml").write_text('model = "s23_rev3_model.py:build"\nprobe = "probe.npz"\n')
    np.savez(run / "probe.npz", x=np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32))
    sys.path.insert(0, str(run))  # the trainer's own import, as it saved the modules
    torch.manual_seed(0)
    for step in (0, 10):
        torch.save(importlib.import_module("s23_rev3_model").Net(), run / f"step_{step}.pt")
    sys.path.remove(str(run))
    del sys.modules["s23_rev3_model"]
    done = fdl_in_process("analyze", run, "--trust-pickle", "--out", tmp_path / "a.h5", "--json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 10]


def test_a_linked_module_beside_the_manifest_imports_its_neighbours_there(
    tmp_path: Path, _own_import_state: None
) -> None:
    """`model = "s23_rev3_net:build"`, s23_rev3_net.py a symbolic link into the fdl.toml's folder (shared code), its
    neighbour a file of that folder: as `import s23_rev3_net` with the folder on sys.path, the neighbour comes from
    the folder. Its code read as the link's target, outside the folder, got no module there: "No module named"."""
    shared, run = tmp_path / "shared", tmp_path / "run"
    shared.mkdir()
    run.mkdir()
    (shared / "s23_rev3_net.py").write_text(
        "import torch.nn as nn\n\nimport s23_rev3_width\n\n\n"
        "def build():\n    return nn.Linear(2, s23_rev3_width.WIDTH)\n")
    (run / "s23_rev3_net.py").symlink_to(shared / "s23_rev3_net.py")
    (run / "s23_rev3_width.py").write_text("WIDTH = 4\n")
    (run / "fdl.toml").write_text('model = "s23_rev3_net:build"\n')
    factory = resolve_model_factory("s23_rev3_net:build", module_dir=run, named_by=run / "fdl.toml")
    assert factory().out_features == 4


def test_a_second_manifest_naming_a_module_of_the_same_name_beside_it_builds_its_own(
    tmp_path: Path, _own_import_state: None
) -> None:
    """Two runs in turn (the Python API), each fdl.toml naming `s23_rev3_mod:build`, a module beside it: the second
    was refused as "a function of s23_rev3_mod (the first run's file), outside" its folder (sys.modules held the
    first run's module, checked before the import); before the check, it built the first run's network."""
    widths = {"a": 3, "b": 5}
    for name, width in widths.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "s23_rev3_mod.py").write_text(
            f"import torch.nn as nn\n\n\ndef build():\n    return nn.Linear(2, {width})\n")
        (tmp_path / name / "fdl.toml").write_text('model = "s23_rev3_mod:build"\n')
    for name, width in [*widths.items(), ("a", 3)]:
        run = tmp_path / name
        factory = resolve_model_factory("s23_rev3_mod:build", module_dir=run, named_by=run / "fdl.toml")
        assert factory().out_features == width


def test_a_link_to_a_librarys_file_does_not_make_its_module_the_folders_own(tmp_path: Path) -> None:
    """`model = "torch:load"` (refused: it unpickles, a folder vouching for itself past --trust-pickle) was taken
    once the folder held a symbolic link, of any name, to torch's __init__.py: torch's file was "where a link in the
    folder leads", so torch counted as the folder's code, and `fdl analyze run` ran the pickle model_kwargs named."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "innocent.py").symlink_to(torch.__file__)
    (run / "fdl.toml").write_text('model = "torch:load"\n')
    with pytest.raises(ModelError, match="neither a model defined in its folder") as refused:
        resolve_model_factory("torch:load", module_dir=run, named_by=run / "fdl.toml")
    assert "load is a function of torch" in str(refused.value)


def test_a_spectrum_of_equal_eigenvalues_and_a_smaller_one_keeps_a_ratio_panel() -> None:
    """Four equal eigenvalues and one at 1e-3: no spread between the quartiles, so Tukey's fence was the top ratio
    itself; the triptych's ρ panel ran from 1 to 1 (a singular axis matplotlib warned of) and said all below 1 not
    drawn. The limit lies a decade below the largest ratio at least."""
    from fdl_cli.figures import Curves, ratio_floor, triptych_figure

    ratios = np.array([1.0, 1.0, 1.0, 1.0, 1e-3])
    assert ratio_floor([ratios]) == (0.1, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Attempting to set identical low and high ylims"
        figure = triptych_figure([Curves(step=0, eigenvalues=ratios, quality=None, utility=np.full(5, 0.2))],
                                 n_outputs=2)
    low, high = figure.axes[2].get_ylim()
    assert low == 0.1 and high > 1.0


@pytest.mark.parametrize("linked", ["file", "folder"])
def test_a_link_into_pythons_own_library_is_not_the_folders_code(
    tmp_path: Path, linked: str, _own_import_state: None
) -> None:
    """A folder holding no code but a link to the standard library (a file: `sp.py` to subprocess.py; or a folder:
    `s23_rev3_lib` to the library's folder) named `subprocess.run` as its own model, which fdl called with
    model_kwargs (`args = "...", shell = true`): a shell command. Python's and the installed libraries' files are
    nobody's model code; a link to a model.py of one's own still counts."""
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    if linked == "file":
        (run / "sp.py").symlink_to(subprocess.__file__)
        spec = f"{run / 'sp.py'}:run"
    else:
        (run / "s23_rev3_lib").symlink_to(Path(subprocess.__file__).parent)
        spec = "s23_rev3_lib.subprocess:run"
    (run / "fdl.toml").write_text(f"model = {spec!r}\n")
    with pytest.raises(ModelError, match="neither a model defined in its folder"):
        resolve_model_factory(spec, module_dir=run, base_dir=run, named_by=run / "fdl.toml")
