"""What an fdl.toml's `model` may name: a callable of its own folder (a model file there, a module beside it) or an
nn.Module class. It named any callable, which fdl called with its model_kwargs: `os:system` ran a shell command with
no code file in the folder, and `torch:load` unpickled a file, a folder vouching for itself past --trust-pickle.
Each refused payload would write a marker file; `--model`, which the user typed, stays unrestricted."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.errors import ModelError
from tests.cli_run import fdl_in_process
from tests.test_s20_toml import _own_sys_path

__all__ = ["_own_sys_path"]  # a fixture


class _Opens:
    """A pickle that creates the file `path` when unpickled (as `torch.load(weights_only=False)` does)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _linear_run(folder: Path, manifest: str) -> Path:
    """Two checkpoints of nn.Linear(4, 3), a probe of 4 inputs and 3 classes, and the fdl.toml `manifest`."""
    folder.mkdir(parents=True)
    for step in (0, 10):
        layer = torch.nn.Linear(4, 3)
        torch.manual_seed(step)
        save_file({name: tensor.detach().clone() for name, tensor in layer.state_dict().items()},
                  str(folder / f"step_{step}.safetensors"))
    generator = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=generator.standard_normal((24, 4)).astype(np.float32),
             y=np.arange(24) % 3)
    (folder / "fdl.toml").write_text('probe = "probe.npz"\n' + manifest)
    return folder


def _said(text: str) -> str:
    return " ".join(text.split())


def _refused(done: object, toml: Path, spec: str) -> None:
    said = _said(done.stderr)  # type: ignore[attr-defined]
    assert done.returncode == 1, said  # type: ignore[attr-defined]
    assert "Traceback" not in said
    assert (f"error: {toml} names the model {spec!r}, which is neither a model defined in its folder "
            f"({toml.parent}) nor an nn.Module class, and fdl does not call it") in said, said
    assert f"--model {spec}" in said and "model.py beside" in said, said


@pytest.mark.parametrize(("spec", "kwargs"), [
    ("os:system", 'command = "touch {marker}"'),
    ("subprocess:run", 'args = ["touch", "{marker}"]'),
    ("builtins:open", 'file = "{marker}"\nmode = "w"'),
])
def test_a_manifest_naming_a_library_function_is_refused_before_it_runs(tmp_path: Path, spec: str,
                                                                        kwargs: str) -> None:
    """`model = "os:system"` with `model_kwargs = { command = "touch X" }` ran the command: no code file needed."""
    marker = tmp_path / "ran"
    run = _linear_run(tmp_path / "run", f'model = "{spec}"\n[model_kwargs]\n{kwargs.format(marker=marker)}\n')
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert not marker.exists()
    _refused(done, run / "fdl.toml", spec)
    assert "running the model code" not in done.stderr  # nothing runs, so nothing is announced
    assert not (tmp_path / "a.h5").exists()
    shown = fdl_in_process("inspect", run / "step_0.safetensors")
    assert not marker.exists()
    _refused(shown, run / "fdl.toml", spec)


def test_a_manifest_cannot_unpickle_a_file_through_torch_load(tmp_path: Path) -> None:
    """`model = "torch:load"` with `{ f = "evil.pt", weights_only = false }` unpickled evil.pt without
    --trust-pickle; `torch.hub:load` from the folder ran its hubconf.py, which the fdl.toml never named."""
    marker = tmp_path / "ran"
    run = _linear_run(tmp_path / "run", "")
    torch.save(_Opens(marker), run / "evil.pt")
    (run / "hubconf.py").write_text(f"open({str(marker)!r}, 'w')\n")
    toml = run / "fdl.toml"
    for spec, kwargs in [("torch:load", f'{{ f = "{run / "evil.pt"}", weights_only = false }}'),
                         ("torch.hub:load", f'{{ repo_or_dir = "{run}", model = "x", source = "local" }}')]:
        toml.write_text(f'model = "{spec}"\nmodel_kwargs = {kwargs}\nprobe = "probe.npz"\n')
        done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
        assert not marker.exists(), spec
        _refused(done, toml, spec)
        assert "running the model code" not in done.stderr  # torch is imported already: told before any note


@pytest.fixture()
def _on_path(tmp_path: Path) -> Iterator[Path]:
    """A folder outside the run on sys.path, holding s23_sec2_lib.py (an installed library's stand-in)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    marker = tmp_path / "ran"
    (lib / "s23_sec2_lib.py").write_text(
        "from torch import nn\n\n"
        f"def build():\n    open({str(marker)!r}, 'w')\n    return nn.Linear(4, 3)\n\n"
        "class Net(nn.Linear):\n    def __init__(self):\n        super().__init__(4, 3)\n")
    sys.path.insert(0, str(lib))
    yield lib
    sys.path.remove(str(lib))
    sys.modules.pop("s23_sec2_lib", None)


def test_an_installed_factory_function_is_refused_and_its_model_class_allowed(tmp_path: Path, _on_path: Path) -> None:
    """A library's function (a factory, here one that would write the marker) is not called; its nn.Module
    class is (as `torch.nn:Linear`), since building a network is all a class of nn.Module is for."""
    toml = tmp_path / "run" / "fdl.toml"
    toml.parent.mkdir()
    toml.write_text("")
    with pytest.raises(ModelError) as refused:
        resolve_model_factory("s23_sec2_lib:build", module_dir=toml.parent, named_by=toml)
    assert "s23_sec2_lib:build" in refused.value.what and "a function" in str(refused.value.got)
    assert not (tmp_path / "ran").exists()
    net = resolve_model_factory("s23_sec2_lib:Net", module_dir=toml.parent, named_by=toml)
    assert isinstance(net(), torch.nn.Linear)
    # typed on the command line (no named_by): the user's own choice, as before
    assert isinstance(resolve_model_factory("s23_sec2_lib:build")(), torch.nn.Linear)
    assert (tmp_path / "ran").exists()


def test_a_model_file_outside_the_manifest_folder_is_not_imported(tmp_path: Path) -> None:
    """A path spec reaching out of the folder (`../x.py`, an absolute path) named code the folder did not bring, run
    at its import (a package's `__main__.py` runs its program)."""
    marker = tmp_path / "ran"
    (tmp_path / "elsewhere.py").write_text(f"open({str(marker)!r}, 'w')\nfrom torch import nn\nbuild = nn.Linear\n")
    run = _linear_run(tmp_path / "run", 'model = "../elsewhere.py:build"\n'
                                        "model_kwargs = { in_features = 4, out_features = 3 }\n")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert not marker.exists()
    _refused(done, run / "fdl.toml", f"{tmp_path / 'elsewhere.py'}:build")
    # a model file linked into the folder is one the folder brings (a model.py shared by several runs' folders)
    (run / "model.py").symlink_to(tmp_path / "elsewhere.py")
    (run / "fdl.toml").write_text('model = "model.py:build"\nmodel_kwargs = { in_features = 4, out_features = 3 }\n'
                                  'probe = "probe.npz"\n')
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json")
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_a_standard_library_module_is_refused_before_it_is_imported(tmp_path: Path) -> None:
    """No module of the standard library defines an nn.Module: refused unimported (`this` prints the Zen of Python
    when imported, `antigravity` opens a web browser), even where the folder holds a file of that name, which is
    never imported for it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "this.py").write_text("def build():\n    pass\n")
    sys.modules.pop("this", None)
    with pytest.raises(ModelError) as refused:
        resolve_model_factory("this:build", module_dir=run, named_by=run / "fdl.toml")
    assert "this" not in sys.modules
    assert "standard library" in str(refused.value.got)


def test_an_nn_module_class_with_model_kwargs_analyses(tmp_path: Path) -> None:
    """`model = "torch.nn:Linear"` with its arguments in model_kwargs: a model with no code file, allowed."""
    run = _linear_run(tmp_path / "run", 'model = "torch.nn:Linear"\n'
                                        "model_kwargs = { in_features = 4, out_features = 3 }\n")
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    assert "note: running the model code torch.nn:Linear, named by" in _said(done.stderr)


def test_a_module_beside_the_manifest_and_a_model_file_in_a_sub_folder_are_allowed(tmp_path: Path) -> None:
    """The folder's own code: a module beside the fdl.toml, a package there, a model file in a sub-folder."""
    run = _linear_run(tmp_path / "run", 'model = "s23_sec2_beside:build"\n')
    (run / "s23_sec2_beside.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    (run / "src").mkdir()
    (run / "src" / "model.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    try:
        done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json")
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
        (run / "fdl.toml").write_text('model = "src/model.py:build"\nprobe = "probe.npz"\n')
        done = fdl_in_process("analyze", run, "--out", tmp_path / "b.h5", "--json")
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
    finally:
        sys.modules.pop("s23_sec2_beside", None)


def test_model_on_the_command_line_overrides_a_refused_manifest_model(tmp_path: Path) -> None:
    """--model is what the user typed: the manifest's refused model is not looked at, and not run."""
    marker = tmp_path / "ran"
    run = _linear_run(tmp_path / "run", f'model = "os:system"\nmodel_kwargs = {{ command = "touch {marker}" }}\n')
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--json", "--model", "torch.nn:Linear",
                          "--model-kwargs", '{"in_features": 4, "out_features": 3}')
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    assert not marker.exists()


def test_a_factory_function_of_the_current_folder_is_not_the_folders_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """A module the fdl.toml's folder does not hold is looked for as --model's, in the current folder too: code of
    whoever runs fdl, not of the folder, so the fdl.toml may take an nn.Module class from it, not call a function."""
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    here = tmp_path / "here"
    here.mkdir()
    (here / "s23_sec2_here.py").write_text(
        f"from torch import nn\n\ndef build():\n    open({str(marker)!r}, 'w')\n    return nn.Linear(4, 3)\n\n"
        "class Net(nn.Linear):\n    def __init__(self):\n        super().__init__(4, 3)\n")
    monkeypatch.chdir(here)
    try:
        with pytest.raises(ModelError, match="neither a model defined in its folder"):
            resolve_model_factory("s23_sec2_here:build", module_dir=run, named_by=run / "fdl.toml")
        assert not marker.exists()
        assert isinstance(resolve_model_factory("s23_sec2_here:Net", module_dir=run, named_by=run / "fdl.toml")(),
                          torch.nn.Linear)
    finally:
        sys.modules.pop("s23_sec2_here", None)
