"""Navigation of the user docs: usage.md's list of sections at its top names every `## ` section, in order
(the section on several runs and seed studies was missing from it), and every link between the pages
leads to a file and a heading that exist."""

from __future__ import annotations

import re

from tests.test_s16_docs import REPO, USAGE

PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def _prose(text: str) -> str:
    """`text` without its fenced code blocks, whose `# comment` lines are no headings and whose `](...)`
    no links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str, level: str = "#+") -> list[str]:
    return re.findall(rf"^{level} (.+)$", _prose(text), flags=re.MULTILINE)


def test_usage_md_lists_every_section_in_order_at_its_top() -> None:
    top = USAGE.split("\n## ", 1)[0]
    listed = re.findall(r"^- \[(.+?)\]\(#([^)]+)\)$", top, flags=re.MULTILINE)
    sections = _headings(USAGE, "##")
    assert [anchor for _, anchor in listed] == [_anchor(heading) for heading in sections]
    # and each entry reads as its heading, word for word
    assert [name for name, _ in listed] == [heading for heading in sections]


def test_every_link_between_the_docs_leads_to_a_page_and_heading_that_exist() -> None:
    anchors = {page.resolve(): {_anchor(h) for h in _headings(page.read_text(encoding="utf-8"))} for page in PAGES}
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            name, _, anchor = target.partition("#")
            destination = (page.parent / name).resolve() if name else page.resolve()
            if not destination.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and destination in anchors and anchor not in anchors[destination]:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
