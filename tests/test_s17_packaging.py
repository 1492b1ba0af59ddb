"""The installed package: a wheel built from this tree holds every module and the PEP 561 marker, so
a script using the documented reading API (docs/store.md, "Reading from Python") is type-checked
against fdl's annotations rather than treated as untyped."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in this env")
    # a copy without setuptools' build/ folder, which a build reuses: a file left there by an earlier
    # build would be in the wheel whether the package declares it or not
    tree = tmp_path_factory.mktemp("tree") / "fdl"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "tests", "sample_checkpoints"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tree)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("fdl_cli-*.whl")
    return built


def test_wheel_holds_every_module_and_the_typed_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"fdl_cli/{path.name}" for path in (ROOT / "fdl_cli").glob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "fdl_cli/py.typed" in names
    entry = next(name for name in names if name.endswith("entry_points.txt"))
    assert "fdl = fdl_cli.__main__:run" in zipfile.ZipFile(wheel).read(entry).decode()
