"""Session 23, the docs run as written: every option a command's `--help` lists is described in docs/usage.md
(the reference README.md sends the reader to), every option usage.md names is one of fdl's, and the snippets
of the docs that can run on the sample run do, and print what the text around them says."""

from __future__ import annotations

import re

from fdl_cli.cli import cli
from tests.test_s16_docs import USAGE

#: options usage.md names that are another program's: torchrun's, `python -m json.tool`'s
FOREIGN = {"--nproc-per-node", "--nnodes", "--rdzv-endpoint", "--json-lines"}


def _options() -> dict[str, set[str]]:
    """Each long option of fdl (its commands' and the top level's), with the commands that take it."""
    found: dict[str, set[str]] = {}
    for name, command in [("fdl", cli), *cli.commands.items()]:
        for param in command.params:
            for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
                if opt.startswith("--"):
                    found.setdefault(opt, set()).add(name)
    found["--help"] = {"fdl", *cli.commands}  # click adds it to each
    return found


def test_every_option_help_lists_is_in_usage_md() -> None:
    """`--dlr-energy`, `--every`, `--reference` (analyze), `--overlap-steps` (compare) and `--version` were
    described only in measures.md or regimes.md, or nowhere, though usage.md is "every rule the commands follow"."""
    missing = sorted(f"{sorted(commands)} {opt}" for opt, commands in _options().items()
                     if opt != "--help" and not re.search(rf"{re.escape(opt)}(?![-\w])", USAGE))
    assert missing == []


def test_every_option_usage_md_names_is_one_of_fdls() -> None:
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", USAGE))
    assert sorted(named - set(_options()) - FOREIGN) == []
