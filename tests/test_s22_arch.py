"""docs/architecture.md, the contributors' map of the code, names every module there is and no other,
and every path and test it points at exists, so the map cannot drift from the package unnoticed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_s16_docs import REPO

ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
MODULES = {path.name for path in (REPO / "fdl_cli").glob("*.py")}


def test_every_module_of_the_package_is_on_the_map() -> None:
    named = set(re.findall(r"`(\w+\.py)`", ARCHITECTURE))
    assert MODULES - named == set(), f"modules missing from docs/architecture.md: {sorted(MODULES - named)}"


def test_the_map_names_no_module_that_is_not_there() -> None:
    named = set(re.findall(r"`(\w+\.py)`", ARCHITECTURE))
    outside_the_package = {"reference.py", "ref.py", "cli_run.py"}  # tests' modules, named with their folder
    ghosts = named - MODULES - outside_the_package
    assert not ghosts, f"docs/architecture.md names modules fdl_cli/ lacks: {sorted(ghosts)}"


def test_every_path_the_map_points_at_exists() -> None:
    paths = set(re.findall(r"`((?:tests|benchmarks|docs)/[\w./]+\.(?:py|md))`", ARCHITECTURE))
    links = set(re.findall(r"\]\((\w+\.md)\)", ARCHITECTURE))
    assert paths and links
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    missing += sorted(f"docs/{link}" for link in links if not (REPO / "docs" / link).is_file())
    assert not missing, missing


def test_the_functions_and_threads_it_names_are_in_the_code() -> None:
    code = {name: (REPO / "fdl_cli" / name).read_text(encoding="utf-8") for name in MODULES}
    for module, needle in (("pipeline.py", "def run_analyze("), ("pipeline.py", "def _run_refs("),
                           ("pipeline.py", '"fdl-load"'), ("store.py", '"fdl-store-scheduler"'),
                           ("store.py", "fdl-store-commit"), ("moments.py", "class MomentAccumulator"),
                           ("probes.py", "class RowReader"), ("regimes.py", "class Thresholds"),
                           ("options.py", "class AnalyzeOptions"), ("progress.py", "class Reporter"),
                           ("cli_run.py", None)):
        if needle is None:
            assert (REPO / "tests" / module).is_file()
            continue
        assert needle in code[module], (module, needle)


def test_the_readme_leads_contributors_to_it() -> None:
    assert "docs/architecture.md" in (REPO / "README.md").read_text(encoding="utf-8")


PURE_CORE = {"spectral", "regimes", "fields", "errors", "moments"}


def _every_import(path: Path) -> set[str]:
    """The fdl_cli modules and top-level packages `path` imports anywhere: at its top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.removeprefix("fdl_cli.").split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fdl_cli":
                names.update(alias.name for alias in node.names)
            else:
                names.add(node.module.removeprefix("fdl_cli.").split(".")[0])
    return names


def test_the_pure_core_imports_nothing_outside_it_even_lazily() -> None:
    """tests/test_contracts.py checks what importing a core module loads; an import inside a function (regimes
    importing report, hence rich, for one message) escapes that check, so every import of the core is read."""
    fdl_modules = {path.stem for path in (REPO / "fdl_cli").glob("*.py")}
    heavy = {"torch", "h5py", "click", "rich", "matplotlib", "scipy"}
    offenders = {}
    for module in sorted(PURE_CORE):
        imported = _every_import(REPO / "fdl_cli" / f"{module}.py")
        bad = (imported & fdl_modules - PURE_CORE) | (imported & heavy - ({"torch"} if module == "moments" else set()))
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}, offenders  # moments may take a torch batch (it imports torch then, never at its top)


def test_the_lazy_import_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import math\ndef f():\n    from fdl_cli.report import x\n    import rich.console\n"
                      "    from fdl_cli import store\n")
    assert _every_import(source) == {"math", "report", "rich", "store"}
