"""`fdl analyze --drop S --json` stopped by a Ctrl-C as it printed its `{"dropped": [...]}` line: the drop was
durable, and so was the checkpoint it compared again with a new previous one, but that checkpoint's record was
never printed (the signal ended the print, and nothing printed the rest on the way out), so a `| jq` consumer
never saw the values the store now holds for it. Now the line is printed whole, and the records after it on the
way out, as for the records of a commit (docs/reliability.md 48).

The store of tests/test_s19_store.py's `_read_by_regex_too` (tiny MLPs): files stored at steps 1, 2, 3 and again at
their names' steps; dropping 1, 2, 3 compares step 10 again (its previous checkpoint was 3, now 0)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import cli
from tests.test_reliability_inputs import _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _read_by_regex_too, _steps, fdl


def test_a_ctrl_c_as_the_dropped_line_is_printed_leaves_the_record_compared_again_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    common, _, out, _ = _read_by_regex_too(tmp_path, capsys)
    emit, did = cli._emit_json, []

    def emitting(obj: Any, stream: Any = None) -> None:
        if isinstance(obj, dict) and "dropped" in obj and not did:
            did.append("signalled")
            signal.raise_signal(signal.SIGINT)  # fdl's handler in place: as a Ctrl-C in the line's print
            did.append("printed")
        emit(obj, stream)

    monkeypatch.setattr(cli, "_emit_json", emitting)
    status, stdout, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3", "--json")
    monkeypatch.undo()
    assert status == 130 and did == ["signalled", "printed"], err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[0] == {"dropped": [1, 2, 3]}
    assert [(line["step"], line["prev_step"]) for line in lines[1:]] == [(10, 0)], lines
    assert _steps(out) == [0, 10, 20, 30]
    assert err.strip().splitlines()[-1].startswith("interrupted: "), err
