"""What Python code a folder given to fdl can get run: only the model code its fdl.toml names (said on stderr),
and the modules beside it that this code imports; never a module fdl, torch or numpy import taken from the
checkpoint or model folder. Each hostile file writes a marker file when imported."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdl_cli.checkpoints import resolve_model_factory
from tests.cli_run import REPO, fdl, fdl_in_process  # fdl: a fresh process, for the planted imports alone

SAMPLE = REPO / "sample_checkpoints"

#: modules fdl and its libraries import (some only after the model's own import: safetensors for .safetensors files)
PLANTED = ("safetensors", "h5py", "scipy", "matplotlib", "rich", "numpy")


def _planted(folder: Path, marker_dir: Path, names: tuple[str, ...] = PLANTED) -> None:
    for name in names:
        (folder / f"{name}.py").write_text(
            f"open({str(marker_dir / ('ran_' + name))!r}, 'w').write('x')\nraise ImportError('planted {name}')\n")


def _ran(marker_dir: Path) -> list[str]:
    return sorted(path.name for path in marker_dir.glob("ran_*"))


def _sample_copy(folder: Path, model_text: str | None = None) -> Path:
    """The sample run, two of its checkpoints, with its fdl.toml, model.py and probe."""
    folder.mkdir(parents=True)
    for name in ("fdl.toml", "model.py", "probe.npz", "step_0.safetensors", "step_1000.safetensors"):
        shutil.copy(SAMPLE / name, folder / name)
    if model_text is not None:
        (folder / "model.py").write_text(model_text)
    return folder


def test_a_module_beside_the_manifest_model_never_stands_in_for_one_fdl_imports(tmp_path: Path) -> None:
    """The model file's folder was put first on sys.path for the rest of the run: a `safetensors.py` beside the
    sample run's model.py, which never imports it, ran when fdl read the first .safetensors checkpoint."""
    run = _sample_copy(tmp_path / "run")
    _planted(run, tmp_path)
    done = fdl("analyze", run, "--out", tmp_path / "a.h5", "--json")
    assert _ran(tmp_path) == []
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    # nor when the model file itself imports one of them at its top (python model.py would take the one beside)
    top = _sample_copy(tmp_path / "top", (SAMPLE / "model.py").read_text() + "\nimport safetensors  # noqa\n")
    _planted(top, tmp_path)
    done = fdl("analyze", top, "--out", tmp_path / "b.h5", "--json")
    assert _ran(tmp_path) == []
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def _own_import_state() -> Iterator[None]:
    path, meta_path, modules = list(sys.path), list(sys.meta_path), set(sys.modules)
    yield
    sys.path[:], sys.meta_path[:] = path, meta_path
    for name in set(sys.modules) - modules:
        if name.startswith(("s23_", "fdl_user_model_")):
            del sys.modules[name]


def test_the_model_folder_serves_its_own_modules_to_its_own_code_only(tmp_path: Path, _own_import_state: None) -> None:
    """The model file's neighbours import, at its top and lazily in its factory (as under `python model.py`);
    another importer (a library's optional import, here this test) does not get a module of that folder."""
    folder = tmp_path / "code"
    (folder / "s23_nets").mkdir(parents=True)
    (folder / "s23_blocks.py").write_text("WIDTH = 4\n")
    (folder / "s23_lazy.py").write_text("from tests.tiny_models import mlp\n")
    (folder / "s23_nets" / "__init__.py").write_text("import s23_blocks\nDEPTH = s23_blocks.WIDTH\n")
    (folder / "model.py").write_text(
        "import s23_blocks\nimport s23_nets\n\n"
        "def build():\n    from s23_lazy import mlp\n    assert s23_nets.DEPTH == s23_blocks.WIDTH\n    return mlp()\n")
    _planted(folder, tmp_path, ("s23_optional",))
    factory = resolve_model_factory(f"{folder / 'model.py'}:build")
    assert factory().__class__.__name__ == "Sequential"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("s23_optional")
    assert importlib.util.find_spec("s23_optional") is None
    assert _ran(tmp_path) == []
    assert str(folder) not in sys.path


def test_the_manifest_model_that_runs_is_said_once(tmp_path: Path) -> None:
    """`fdl analyze DIR` imported and ran DIR's model.py, which its fdl.toml names, and said nothing of it; a note
    now names the code and the fdl.toml (for `fdl inspect` too). A --model the user typed is not noted."""
    run = _sample_copy(tmp_path / "run")
    said = f"note: running the model code {run / 'model.py'}:build, named by {run / 'fdl.toml'}"
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5")
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stderr.split()).count(said) == 1, done.stderr
    shown = fdl_in_process("inspect", run / "step_0.safetensors")
    assert shown.returncode == 0, shown.stderr
    assert said in " ".join(shown.stderr.split()), shown.stderr
    own = fdl_in_process("analyze", run, "--out", tmp_path / "b.h5", "--model", f"{SAMPLE / 'model.py'}:build")
    assert own.returncode == 0, own.stderr
    assert "running the model code" not in own.stderr


def test_a_model_path_found_only_in_the_checkpoint_folder_is_said(tmp_path: Path) -> None:
    """`--model model.py:build` typed where the current folder holds no model.py ran the checkpoint folder's
    model.py (as documented) and said nothing: that is code which came with the checkpoints."""
    run = _sample_copy(tmp_path / "run")
    (run / "fdl.toml").unlink()
    done = fdl_in_process("analyze", run, "--out", tmp_path / "a.h5", "--model", "model.py:build",
                          "--probe", run / "probe.npz")
    assert done.returncode == 0, done.stderr
    said = (f"--model model.py:build: the current folder holds no model.py, so the checkpoint folder's "
            f"{run / 'model.py'} runs")
    assert said in " ".join(done.stderr.split()), done.stderr
