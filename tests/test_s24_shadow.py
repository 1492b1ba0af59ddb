"""A model folder's module named like a module of the standard library or of a library fdl runs on (`csv.py`, a
`types/` package beside model.py), which `_FolderModules` never serves: model code's `from csv import Widget` got
Python's csv, and the error read "cannot import name 'Widget' from 'csv' (.../lib/python3.11/csv.py)" with the fix
"fix the error in that file" or "check --model and --model-kwargs". It now says which module of the folder is passed
over for which, and to rename it; any other error keeps its words."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.errors import ModelError
from tests.cli_run import fdl_in_process
from tests.test_s23_sec import _own_import_state
from tests.test_s23_sec2 import _linear_run, _said

__all__ = ["_own_import_state"]  # a fixture

_WIDGET = "import torch.nn as nn\n\n\nclass Widget(nn.Linear):\n    pass\n\n\ndef scale(x):\n    return 2 * x\n"


def _shadowing(folder: Path, name: str, kind: str) -> str:
    """The folder's module `name`, a file or a package, defining Widget and scale; what the error calls it."""
    if kind == "file":
        (folder / f"{name}.py").write_text(_WIDGET)
        return f"{name}.py ({folder / (name + '.py')})"
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text(_WIDGET)
    return f"the package {name}/ ({folder / name})"


def _analyze(run: Path, out: Path) -> str:
    done = fdl_in_process("analyze", run, "--out", out, "--json", "--batch-size", "8")
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "Traceback" not in said
    return said


def _told(said: str, entry: str, name: str, whose: str = "of Python's standard library") -> None:
    assert (f"the model's folder holds {entry}, named like the module {name} {whose}, which fdl never takes "
            f"from a model's folder (it would replace {name} for fdl and torch too): the import got that module "
            f"instead; rename it (my_{name}, say) and the imports of it") in said, said
    assert "check --model and --model-kwargs" not in said and "fix the error in that file" not in said, said


@pytest.mark.parametrize(("name", "kind"), [("csv", "file"), ("csv", "package"), ("types", "file"),
                                            ("numbers", "package")])
def test_the_model_files_import_of_a_shadowing_module_says_so(
    tmp_path: Path, name: str, kind: str, _own_import_state: None
) -> None:
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    entry = _shadowing(run, name, kind)
    (run / "model.py").write_text(f"from {name} import Widget\n\n\ndef build():\n    return Widget(4, 3)\n")
    said = _analyze(run, tmp_path / "a.h5")
    assert f"importing {run / 'model.py'} failed" in said and "cannot import name 'Widget'" in said, said
    _told(said, entry, name)


def test_renamed_as_the_error_says_the_model_analyses(tmp_path: Path, _own_import_state: None) -> None:
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    _shadowing(run, "csv", "file")
    (run / "model.py").write_text("from csv import Widget\n\n\ndef build():\n    return Widget(4, 3)\n")
    _told(_analyze(run, tmp_path / "a.h5"), f"csv.py ({run / 'csv.py'})", "csv")
    (run / "csv.py").rename(run / "my_csv.py")
    (run / "model.py").write_text("from my_csv import Widget\n\n\ndef build():\n    return Widget(4, 3)\n")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "b.h5", "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2


@pytest.mark.parametrize("kind", ["file", "package"])
def test_the_factorys_lazy_import_of_a_shadowing_module_says_so(
    tmp_path: Path, kind: str, _own_import_state: None
) -> None:
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    entry = _shadowing(run, "csv", kind)
    (run / "model.py").write_text("def build():\n    from csv import Widget\n    return Widget(4, 3)\n")
    said = _analyze(run, tmp_path / "a.h5")
    assert "building the model for" in said and "cannot import name 'Widget'" in said, said
    _told(said, entry, "csv")


_LAZY_FORWARD = """\
import torch.nn as nn


class Net(nn.Linear):
    def forward(self, x):
        if x.shape[0] > {rows}:
            from csv import scale
            return scale(super().forward(x))
        return super().forward(x)


def build():
    return Net(4, 3)
"""


@pytest.mark.parametrize("kind", ["file", "package"])
@pytest.mark.parametrize("rows", [0, 1])
def test_the_forward_passs_lazy_import_of_a_shadowing_module_says_so(
    tmp_path: Path, kind: str, rows: int, _own_import_state: None
) -> None:
    """On the probe's first sample (the pipeline's check, which said the probe did not fit the model) and on a batch
    (rows > 1 only)."""
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    entry = _shadowing(run, "csv", kind)
    (run / "model.py").write_text(_LAZY_FORWARD.format(rows=rows))
    said = _analyze(run, tmp_path / "a.h5")
    assert "the model's forward pass failed" in said and "cannot import name 'scale'" in said, said
    assert "does not fit the model" not in said, said
    _told(said, entry, "csv")


@pytest.mark.parametrize(("code", "kind", "got"), [
    ("import csv.widgets\n", "package", "ModuleNotFoundError: No module named 'csv.widgets'"),
    ("import csv\n\nWidget = csv.Widget\n", "file", "AttributeError: module 'csv' has no attribute 'Widget'"),
])
def test_other_imports_of_a_shadowing_module_say_so(
    tmp_path: Path, code: str, kind: str, got: str, _own_import_state: None
) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    entry = _shadowing(folder, "csv", kind)
    (folder / "model.py").write_text(code + "\n\ndef build():\n    return None\n")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory(f"{folder / 'model.py'}:build")
    assert got in str(refused.value.got)
    _told(_said(str(refused.value)), entry, "csv")


def test_a_module_named_like_a_library_fdl_runs_on_says_which(tmp_path: Path, _own_import_state: None) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    entry = _shadowing(folder, "click", "file")
    (folder / "model.py").write_text("from click import Widget\n\n\ndef build():\n    return Widget(4, 3)\n")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory(f"{folder / 'model.py'}:build")
    _told(_said(str(refused.value)), entry, "click", "of click, a library fdl runs on")


@pytest.mark.parametrize(("kind", "entry"), [("file", "types.py"), ("package", "the package types/"),
                                             ("folder", "the folder types/")])
def test_the_manifests_standard_library_model_names_what_the_folder_holds(
    tmp_path: Path, kind: str, entry: str
) -> None:
    """`model = "types:build"` beside a `types/` package said "types.py beside it is never imported for it"."""
    run = tmp_path / "run"
    run.mkdir()
    if kind == "folder":
        (run / "types").mkdir()
        (run / "types" / "nets.py").write_text("def build():\n    pass\n")
    else:
        _shadowing(run, "types", kind)
    with pytest.raises(ModelError) as refused:
        resolve_model_factory("types:build", module_dir=run, named_by=run / "fdl.toml")
    assert f"types is a module of Python's standard library, which defines no nn.Module ({entry} beside it is " \
           "never imported for it: rename it)" == refused.value.got


def test_other_import_errors_keep_their_words(tmp_path: Path, _own_import_state: None) -> None:
    """An ImportError of the folder's own module, beside an unimported `csv.py`; Python's csv lacking a name, with
    no module of that name in the folder: no word of shadowing."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "s24_shadow_layers.py").write_text("X = 1\n")
    (folder / "model.py").write_text("from s24_shadow_layers import Missing\n\n\ndef build():\n    return None\n")
    (folder / "csv.py").write_text(_WIDGET)
    with pytest.raises(ModelError) as refused:
        resolve_model_factory(f"{folder / 'model.py'}:build")
    assert refused.value.fix == f"fix the error in {folder / 'model.py'}"
    (folder / "csv.py").unlink()
    (folder / "model.py").write_text("from csv import Widget\n\n\ndef build():\n    return None\n")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory(f"{folder / 'model.py'}:build")
    assert refused.value.fix == f"fix the error in {folder / 'model.py'}"
    assert "cannot import name 'Widget' from 'csv'" in str(refused.value.got)


@pytest.mark.parametrize("body", ["from csv import Widget", "raise ImportError('no such kernel', name='csv')"])
def test_a_factorys_other_import_errors_keep_their_words(tmp_path: Path, body: str, _own_import_state: None) -> None:
    """A lazy import of Python's csv (no csv.py in the folder, a types.py there that the code never imports), and an
    ImportError naming csv that the code raises itself: no word of shadowing."""
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    (run / "types.py").write_text(_WIDGET)
    (run / "model.py").write_text(f"def build():\n    {body}\n")
    said = _analyze(run, tmp_path / "a.h5")
    assert "building the model for" in said and f"fix: fix the error in {run / 'model.py'}" in said, said
    assert "named like" not in said and "rename" not in said, said


def test_a_forward_passs_other_import_error_keeps_its_words(tmp_path: Path, _own_import_state: None) -> None:
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    (run / "csv.py").write_text(_WIDGET)
    (run / "model.py").write_text(_LAZY_FORWARD.format(rows=0).replace("from csv import scale", "from json import scale"))
    said = _analyze(run, tmp_path / "a.h5")
    assert "the model's forward pass failed" in said and "cannot import name 'scale' from 'json'" in said, said
    assert f"fix: fix the error in {run / 'model.py'}" in said, said
    assert "named like" not in said and "rename" not in said, said


@pytest.mark.parametrize("probe", [False, True])
def test_inspects_forward_pass_says_so_not_that_the_probe_misfits(
    tmp_path: Path, probe: bool, _own_import_state: None
) -> None:
    """`fdl inspect` said the probe (fdl.toml's, or --probe) did not fit the model: "give the probe inputs the shape
    and dtype the model's forward expects". The listing stands, and the model's error follows it."""
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    entry = _shadowing(run, "csv", "file")
    (run / "model.py").write_text(_LAZY_FORWARD.format(rows=0))
    done = fdl_in_process("inspect", run / "step_0.safetensors", *(["--probe", run / "probe.npz"] if probe else []))
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "Traceback" not in said and "does not fit the model" not in said, said
    assert "modules of" in said and "error: the model's forward pass failed on a sample of shape (1, 4)" in said, said
    _told(said, entry, "csv")


def test_a_module_the_manifest_names_importing_a_shadowing_module_says_so(
    tmp_path: Path, _own_import_state: None
) -> None:
    """`model = "s24_shadow_net:build"`, a module beside the fdl.toml: its import said "install the package or put
    it on PYTHONPATH"."""
    run = tmp_path / "run"
    run.mkdir()
    entry = _shadowing(run, "csv", "package")
    (run / "s24_shadow_net.py").write_text("from csv import Widget\n\n\ndef build():\n    return Widget(4, 3)\n")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory("s24_shadow_net:build", module_dir=run, named_by=run / "fdl.toml")
    assert "cannot import s24_shadow_net" in refused.value.what
    _told(_said(str(refused.value)), entry, "csv")
    assert "s24_shadow_net" not in sys.modules
