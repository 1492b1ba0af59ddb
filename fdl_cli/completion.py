"""Shell completion of arguments click cannot complete alone (docs/usage.md, "Shell completion").

click completes the options and choices; these complete what only fdl knows: the paths of
`analyze`'s checkpoints, probes and model files, a model file's factories after `file.py:`, the
devices, classify's threshold names, and the probes and layers a store holds. They run on every
Tab, so each is quick, imports no torch, runs no user code (a model file is parsed, never executed)
and never fails: anything unreadable completes to nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from click.shell_completion import BashComplete, CompletionItem, add_completion_class

DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1")
_MODEL_FILE_BYTES = 2_000_000  # a larger "model file" is not parsed on a Tab


def paths(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Files and folders, left to the shell (as click does for a `click.Path`)."""
    return [CompletionItem(incomplete, type="file")]


def model_spec(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`path/file.py:factory`: the file's top-level functions, classes and names after the colon (zsh
    and fish pass the word whole; bash splits it at the colon, so there it completes the path only),
    the path before it. A `pkg.module:factory` spec is not completed: that would import the package."""
    file, colon, prefix = incomplete.rpartition(":")
    if not colon or not file.endswith(".py"):
        return paths(ctx, param, incomplete)
    return [CompletionItem(f"{file}:{name}") for name in _top_level_names(Path(file)) if name.startswith(prefix)]


def _top_level_names(path: Path) -> list[str]:
    import ast  # on a Tab only: 2 ms of every fdl command's start otherwise

    try:
        if not path.is_file() or path.stat().st_size > _MODEL_FILE_BYTES:
            return []
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # RecursionError, MemoryError: an expression nested too deep (`x = 1 + 1 + ...`, 3 000 terms)
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    public = [name for name in dict.fromkeys(names) if not name.startswith("_")]
    return public


def device(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in DEVICES if name.startswith(incomplete)]


def threshold(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`--threshold NAME=VALUE` of classify (the regime rules) and of compare (its verdict's tie and the movement
    thresholds it shares with classify): the names, each with its default as the value to edit."""
    if ctx.command.name in ("compare", "diff"):
        from fdl_cli.report import COMPARE_THRESHOLDS

        items = [f"{name}={value:g}" for name, value in COMPARE_THRESHOLDS.items()]
    else:
        from fdl_cli.regimes import Thresholds

        items = [f"{field.name}={field.default:g}" for field in dataclasses.fields(Thresholds)]
    return [CompletionItem(item) for item in items if item.startswith(incomplete)]


def store_names(kind: str, store_param: str) -> Any:
    """Completion of `--probe`/`--layer` of a reading command: the names in the store given as
    `store_param` before the option (nothing when the store is not given yet or cannot be read); of
    classify's several stores, the names in any of them that can be read."""

    def complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        given = ctx.params.get(store_param) or _unparsed_argument(ctx, store_param)
        stores = [given] if isinstance(given, str) else list(given or ())
        pairs: list[tuple[str, str]] = []
        for store in stores:
            try:
                from fdl_cli.report import open_store

                with open_store(store) as reader:
                    pairs += [(str(probe), str(layer)) for probe, layer in reader.series()]
            except Exception:  # noqa: BLE001, S112 - a Tab must never print a traceback into the command line
                continue
        names = [probe if kind == "probe" else layer for probe, layer in pairs]
        return [CompletionItem(name) for name in dict.fromkeys(names) if name.startswith(incomplete)]

    return complete


def _unparsed_argument(ctx: click.Context, name: str) -> str | list[str] | None:
    """The command-line value of the positional argument `name` when click left it unassigned: while
    an option's value is being completed (`fdl report run.h5 --layer <Tab>`) click's resilient parse
    stops at the option and keeps the positionals, in order, in `ctx.args` only."""
    arguments = [param for param in ctx.command.params if isinstance(param, click.Argument)]
    positionals = [param.name for param in arguments]
    index = positionals.index(name) if name in positionals else len(ctx.args)
    if index < len(ctx.args) and arguments[index].nargs == -1:  # classify's STORE...: every one given
        return ctx.args[index:]
    return ctx.args[index] if index < len(ctx.args) else None


@add_completion_class
class _Bash(BashComplete):
    """bash's completion, with the words bash splits put back together. bash breaks the command line
    at '=' and ':' too (COMP_WORDBREAKS), so `--format=json` reaches fdl as '--format', '=', 'json' and
    a layer `fc2:input` as 'fc2', ':', 'input': click then took '=' for the format, 'json' for the
    store, and ':' for store B after `--layer fc2:input`, and `--probe`/`--layer` completed to nothing.
    The complete words before the one being completed are joined again ("a = b" with spaces is no
    word fdl takes); that word itself is left as bash gives it (after a ':', the part after it)."""

    def get_completion_args(self) -> tuple[list[str], str]:
        args, incomplete = super().get_completion_args()
        joined: list[str] = []
        glue = False  # the last word joined ended at an '=' or ':' that bash split off
        for word in args:
            if joined and (word in ("=", ":") or glue):
                joined[-1] += word
            else:
                joined.append(word)
            glue = word in ("=", ":")
        if glue and len(joined) > 0 and joined[-1].endswith("=") and joined[-1].startswith("-"):
            # `--layer=fc<Tab>`: the value being completed is the option's, as click reads `--layer=fc`
            incomplete = joined.pop() + incomplete
        return joined, incomplete
