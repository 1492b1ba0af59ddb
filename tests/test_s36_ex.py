"""mypy does not analyse torch's subsystems that fdl_cli does not use (pyproject.toml, `follow_imports = "skip"`):
a name of one of them in fdl_cli would be typed Any there without a word. fdl_cli must then name none of them,
in an import or as `torch.<...>` in its code (a string, a comment or a docstring may)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _skipped() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    return [
        pattern.removesuffix(".*")
        for override in config.get("overrides", [])
        if override.get("follow_imports") == "skip"
        for pattern in ([override["module"]] if isinstance(override["module"], str) else override["module"])
    ]


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _named(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of each module imported and each `a.b.c` chain in the code."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Attribute) and (name := _dotted(node)) is not None:
            names.append((node.lineno, name))
    return names


def _uses(source: str, skipped: list[str]) -> list[str]:
    return sorted({f"{line}: {name}" for line, name in _named(ast.parse(source))
                   for prefix in skipped if name == prefix or name.startswith(prefix + ".")})  # fmt: skip


def test_fdl_cli_names_no_module_mypy_skips() -> None:
    skipped = _skipped()
    assert "torch._dynamo" in skipped and "torch.fx" not in skipped  # the list is read, and fdl_cli's own are off it
    used = {path.name: _uses(path.read_text(), skipped) for path in sorted((REPO / "fdl_cli").glob("*.py"))}
    assert {name: lines for name, lines in used.items() if lines} == {}, (
        "fdl_cli uses modules that pyproject.toml's [[tool.mypy.overrides]] skip: take them off that list"
    )


def test_the_check_sees_imports_and_attribute_chains() -> None:
    source = (
        "import torch\nimport torch._dynamo\nfrom torch._inductor import config\nfrom torch import fx\n"
        "x = torch.distributed.fsdp.FullyShardedDataParallel\ny = torch.fx.GraphModule\n"
        "s = 'torch._dynamo.symbolic_convert'  # a string names nothing\n"
    )
    assert _uses(source, _skipped()) == [
        "2: torch._dynamo", "3: torch._inductor.config", "5: torch.distributed.fsdp",
        "5: torch.distributed.fsdp.FullyShardedDataParallel",
    ]  # fmt: skip
