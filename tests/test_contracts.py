"""Architecture contracts of DESIGN.md: which module may import which framework.

- spectral, regimes, fields, errors import no torch, h5py, click or rich (the pure core);
- store and report never import torch (`fdl report` stays fast);
- h5py is imported by store.py only (and, for `.h5` probe files, lazily inside probes.py's reader);
- `fdl --help` and `fdl report --help` load no torch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fdl_cli"
HEAVY = ("torch", "h5py", "click", "rich")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["spectral", "regimes", "fields", "errors", "moments"])
def test_pure_core_imports_no_framework(module: str) -> None:
    loaded = _loaded_after(f"import fdl_cli.{module}")
    assert not loaded & set(HEAVY), f"fdl_cli.{module} pulls in {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize("module", ["store", "report"])
def test_readers_do_not_import_torch(module: str) -> None:
    if not (PACKAGE / f"{module}.py").exists():
        pytest.fail(f"fdl_cli/{module}.py is missing")
    assert "torch" not in _loaded_after(f"import fdl_cli.{module}")


def test_help_does_not_load_torch() -> None:
    for args in ("['--help']", "['report', '--help']", "['classify', '--help']"):
        statement = (
            "from fdl_cli.cli import main\n"
            "try:\n"
            f"    main({args})\n"
            "except SystemExit:\n"
            "    pass"
        )
        assert "torch" not in _loaded_after(statement), args


def test_blas_threads_are_configured_before_numpy_loads() -> None:
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when numpy loads: the entry point must set it first."""
    assert "numpy" not in _loaded_after("import fdl_cli.cli")
    code = (
        "import os, sys\n"
        "os.environ.pop('OPENBLAS_THREAD_TIMEOUT', None)\n"
        "from fdl_cli.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "4"
    from fdl_cli.cli import configure_blas_threads

    mine = {"OPENBLAS_THREAD_TIMEOUT": "20"}
    configure_blas_threads(mine)
    assert mine == {"OPENBLAS_THREAD_TIMEOUT": "20"}  # the user's choice is kept


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_h5py_lives_in_the_store() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        if path.name == "store.py":
            continue
        if "h5py" in _top_level_imports(path):
            offenders.append(path.name)
    assert offenders == []
    # probes.py may read `.h5` probe files, but only lazily, inside its reader.
    text = (PACKAGE / "probes.py").read_text()
    assert "h5py" not in _top_level_imports(PACKAGE / "probes.py")
    assert text.count("import h5py") <= 1


def test_every_module_says_what_it_owns() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"


def _tool(name: str) -> str:
    import shutil

    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return path


def test_ruff_is_clean() -> None:
    root = PACKAGE.parent
    result = subprocess.run([_tool("ruff"), "check", "fdl_cli", "tests", "benchmarks", "examples"],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    """No cache written (os.devnull, mypy's documented way): a fresh cache was written for torch's and numpy's
    stubs and thrown away with tmp_path, ~8 % of the check's CPU; the errors reported are the same."""
    root = PACKAGE.parent
    result = subprocess.run([_tool("mypy"), "--cache-dir", os.devnull, "fdl_cli"],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cli_choices_are_the_ones_report_serves() -> None:
    """cli.py spells report's choices out (importing report there would load it, and rich, for every command):
    they must stay the ones report knows (`EXPORT_WHATS`, `FORMATTERS` with its table)."""
    from fdl_cli import report
    from fdl_cli.cli import cli

    def choices(command: str, option: str) -> list[str]:
        params = {param.name: param for param in cli.commands[command].params}
        return list(params[option].type.choices)  # type: ignore[attr-defined]

    assert choices("export", "what") == list(report.EXPORT_WHATS)
    for command in ("report", "compare"):
        assert set(choices(command, "fmt")) == {"table", *report.FORMATTERS}
