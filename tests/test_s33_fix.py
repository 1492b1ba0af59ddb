"""Three gaps of the store's `model_imports` and of the default layer: `python -m fdl_cli` with a module spec of a
package in the current folder recorded and checked none of its modules while `fdl` did; the default layer's graph walk
went through an operation of no derivative as if it applied no weight; and a head run in a reentrant checkpoint made
the default fall back in silence."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest

from tests.cli_run import fdl_in_process
from tests.test_walk_fixes import SMALL, _run_folder

PACKAGE = "s33fixpkg"  # a name of this test's own: the package stays in sys.modules for the in-process runs
MODEL = f"""
import torch
from torch import nn
from {PACKAGE}.layers import act


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 3))
"""
LAYERS = "from torch import nn\n\n\ndef act():\n    return nn.{}()\n"


@pytest.fixture
def package_run(tmp_path: Path) -> Iterator[Path]:
    """_run_folder's run, its model the factory of the package s33fixpkg/ in it (`--model s33fixpkg.model:build`),
    whose model.py imports its activation from s33fixpkg/layers.py; the package out of sys.modules after."""
    _run_folder(tmp_path)
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "model.py").write_text(MODEL)
    (tmp_path / PACKAGE / "layers.py").write_text(LAYERS.format("ReLU"))
    yield tmp_path
    for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
        del sys.modules[name]


def _analyze(root: Path, out: str, *, python_m: bool, monkeypatch: pytest.MonkeyPatch, steps: str = "0,10") -> str:
    """`fdl analyze` of the run with the package's factory, from the run's folder: as `python -m fdl_cli` runs it (the
    current folder first on sys.path) or as the `fdl` script does (not on it). Returns stderr, its lines joined."""
    here = root.resolve()
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    monkeypatch.setattr(sys, "path", [str(root), *path] if python_m else path)
    done = fdl_in_process(
        "analyze",
        "run",
        "--model",
        f"{PACKAGE}.model:build",
        "--probe",
        "probe.npz",
        "--out",
        out,
        "--steps",
        steps,
        *SMALL,
        cwd=root,
    )
    return f"exit {done.returncode}: " + " ".join(done.stderr.split())


def _recorded(store: Path) -> dict[str, str] | None:
    with h5py.File(store, "r") as file:
        value = file.attrs.get("model_imports")
    return None if value is None else json.loads(value)


def test_python_m_records_and_checks_the_current_folders_package_as_fdl_does(
    package_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = package_run
    layers = root / PACKAGE / "layers.py"
    expected = {
        name: hashlib.sha256(file.read_bytes()).hexdigest()
        for name, file in ((PACKAGE, root / PACKAGE / "__init__.py"), (f"{PACKAGE}.layers", layers))
    }
    assert _analyze(root, "m.h5", python_m=True, monkeypatch=monkeypatch).startswith("exit 0")
    assert _analyze(root, "script.h5", python_m=False, monkeypatch=monkeypatch).startswith("exit 0")
    assert _recorded(root / "m.h5") == expected == _recorded(root / "script.h5")
    layers.write_text(LAYERS.format("Tanh"))
    # each store resumed by the other entry point after the edit: refused, as by its own
    for out, python_m in (("script.h5", True), ("m.h5", False)):
        said = _analyze(root, out, python_m=python_m, monkeypatch=monkeypatch, steps="0,10,20")
        assert said.startswith("exit 1: error: the model code ") and "Traceback" not in said
        assert f"{layers} (the module {PACKAGE}.layers, which the model imports) changed since {out} was" in said
