"""The user's documentation and `--help` texts say what this fdl does, not when it came to do it.

Every store says fdl 0.1.0, so "before the nineteenth session" or "an earlier fdl" names nothing a user can
check: an older store is told apart by what it lacks (`pending_series`, `prev_step`, `file_signature`, ...).
docs/benchmarks.md is a dated lab notebook by design and is not read here."""

from __future__ import annotations

import re

import click
import pytest

from fdl_cli.cli import cli
from tests.test_s16_docs import MEASURES, README, REGIMES, RELIABILITY, REPO, STORE

_ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
             "fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|twenty-\\w+|thirtieth|"
             "\\d+(?:st|nd|rd|th)")
#: "the nineteenth session", "session 18", "this session", "an earlier fdl", "an older fdl's"
HISTORY = re.compile(rf"\b(?:(?:{_ORDINALS})\s+session|sessions?\s+\d+|(?:this|that|previous|last)\s+session"
                     r"|(?:earlier|older)\s+fdl)\b", re.IGNORECASE)

USER_DOCS = {"README.md + docs/usage.md": README, "docs/measures.md": MEASURES, "docs/store.md": STORE,
             "docs/regimes.md": REGIMES, "docs/reliability.md": RELIABILITY,
             "docs/findings.md": (REPO / "docs" / "findings.md").read_text(encoding="utf-8")}


def _history(text: str) -> list[str]:
    flat = " ".join(text.split())  # a phrase broken over two lines is found too
    return [flat[max(match.start() - 40, 0): match.end() + 20] for match in HISTORY.finditer(flat)]


def test_the_pattern_finds_the_phrases_it_is_for() -> None:
    for phrase in ("until the twenty-first session k", "before the\n  nineteenth session", "(session 15 review)",
                   "a store an earlier fdl filled", "such as an older fdl's", "the 12th session"):
        assert _history(phrase), phrase
    for phrase in ("a session of training", "first sessions", "an fdl that does not know the field"):
        assert not _history(phrase), phrase


@pytest.mark.parametrize("name", sorted(USER_DOCS))
def test_user_docs_hold_no_development_history(name: str) -> None:
    assert _history(USER_DOCS[name]) == []


def _help_texts() -> dict[str, str]:
    texts = {}
    for name, command in sorted(cli.commands.items()):
        with click.Context(command, info_name=name) as ctx:
            texts[name] = command.get_help(ctx)
    return texts


def test_help_texts_hold_no_development_history() -> None:
    """`fdl analyze --help`'s --drop said 'as an earlier fdl resumed with other step options stored it'."""
    texts = _help_texts()
    assert "analyze" in texts and "--drop" in texts["analyze"]
    assert {name: _history(text) for name, text in texts.items() if _history(text)} == {}
