"""A review of three changes of this session: machine output on stdout (its encoding, fd 1 while model code runs),
the BatchNorm-statistics warning, and the readers' warning of an --overwrite writer about to replace a store.

What was found, each failing before its fix:

- A piped stdout made UTF-8 (`tolerate_unencodable_output`) lost its escaping error handler: Python's
  `reconfigure(encoding=...)` resets `errors` to strict, so under PYTHONIOENCODING=ascii or latin-1 a store whose
  name is not UTF-8 (`$'\\xffrun.h5'`) ended `fdl classify ... --format csv | cat` in a UnicodeEncodeError traceback.
"""

from __future__ import annotations

import io
import sys

import pytest


def test_piped_stdout_made_utf8_still_escapes_a_name_that_is_no_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout piped under an ASCII locale: made UTF-8, and a file name's undecodable byte (surrogateescape's
    \\udcff) is still written as the escape `\\xff`, not a UnicodeEncodeError that ended the command."""
    from fdl_cli.cli import tolerate_unencodable_output

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # pytest's own stream left as it is
    tolerate_unencodable_output()
    sys.stdout.write("/runs/\udcffrun.h5,st\u00f6re\n")
    sys.stdout.flush()
    assert raw.getvalue() == "/runs/\\xffrun.h5,st\u00f6re\n".encode()
