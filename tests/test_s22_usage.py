"""docs/usage.md stays readable: its rules are short bullets and paragraphs under sub-topics.

Its sections had been moved word for word from an old README, as paragraphs of up to 21 lines (Store,
Output, Several processes); they were split into sub-topics with short bullets, every fact kept. This keeps a
rule added later from growing one of them back into a wall."""

from __future__ import annotations

import re

from tests.test_s16_docs import USAGE

LONGEST = 8  # lines of one paragraph or one bullet (its own lines, not its sub-bullets')


def _blocks(text: str) -> list[list[str]]:
    """The paragraphs and bullets of a Markdown text, each as its lines; code blocks and headings left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    blocks: list[list[str]] = []
    for line in text.splitlines():
        starts = re.match(r"\s*(?:[-*] |\d+\. )", line) is not None
        if not line.strip() or line.startswith("#") or starts or not blocks or not blocks[-1]:
            blocks.append([line] if line.strip() and not line.startswith("#") else [])
        else:
            blocks[-1].append(line)
    return [block for block in blocks if block]


def test_the_blocks_are_found_as_markdown_writes_them() -> None:
    text = ("## A\n\none\ntwo\n- a\n  b\n  - c\n1. d\n   e\n\n```python\nx = 1\ny = 2\nz = 3\n```\nthree\n")
    assert _blocks(text) == [["one", "two"], ["- a", "  b"], ["  - c"], ["1. d", "   e"], ["three"]]


def test_no_paragraph_or_bullet_of_usage_md_runs_on() -> None:
    long = {block[0][:60]: len(block) for block in _blocks(USAGE) if len(block) > LONGEST}
    assert long == {}
