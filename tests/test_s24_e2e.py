"""End-to-end checks of session 24's merges against what the docs show of the bundled sample run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_analyze import fdl
from tests.test_s16_docs import REPO

USAGE_MD = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")


def test_usage_md_s_fdl_toml_note_is_what_analyze_of_the_sample_folder_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # usage.md, "What runs Python code": the note quoted there, the checkout's folder standing for /home/you/fdl
    quoted = re.findall(r"`(note: running the model code [^`]*)`", USAGE_MD)
    assert len(quoted) == 1
    monkeypatch.chdir(REPO)  # the folder given as the README gives it, relative to the checkout
    result = fdl("analyze", "sample_checkpoints", "--steps", "0", "--out", tmp_path / "s.h5")
    assert result.code == 0, result.stderr
    said = [line.replace(str(REPO.resolve()), "/home/you/fdl") for line in result.stderr.splitlines()]
    assert quoted[0] in said, (quoted[0], said)
