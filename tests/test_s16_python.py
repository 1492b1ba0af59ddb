"""docs/store.md's "Reading from Python" snippet runs as written and agrees with the commands."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import REPO
from tests.cli_run import fdl_in_process as _fdl  # exit status, stdout, stderr and files only: no fresh interpreter


def _snippet() -> str:
    text = (REPO / "docs" / "store.md").read_text(encoding="utf-8")
    section = text.split("## Reading from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/store.md: no python block under 'Reading from Python'"
    return match.group(1)


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("python") / "sample.fdl.h5"
    done = _fdl("analyze", "sample_checkpoints", "--steps", "0,50,100,250,500,1000", "-o", store)
    assert done.returncode == 0, done.stderr
    return store


def test_snippet_runs_and_matches_the_commands(sample_store: Path) -> None:
    code = _snippet()
    assert '"sample.fdl.h5"' in code
    scope: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace('"sample.fdl.h5"', repr(str(sample_store))), "docs/store.md", "exec"), scope)

    report = _fdl("report", sample_store, "--format", "json")
    assert report.returncode == 0, report.stderr
    assert scope["records"] == json.loads(report.stdout)
    assert list(scope["d_lr"]) == [0, 50, 100, 250, 500, 1000]  # type: ignore[arg-type]

    exported = _fdl("export", sample_store, "--what", "eigenvalues", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    spectrum = scope["spectrum"]
    assert isinstance(spectrum, np.ndarray) and spectrum.dtype == np.float64
    assert np.all(np.diff(spectrum) <= 0)
    exported_values = [row["eigenvalues"] for row in json.loads(exported.stdout) if row["step"] == 1000]
    np.testing.assert_array_equal(spectrum, np.asarray(exported_values[0]))

    classify = _fdl("classify", sample_store, "--threshold", "cka_static=0.98", "--json")
    assert classify.returncode == 0, classify.stderr
    expected = json.loads(classify.stdout)
    verdict = scope["verdict"].as_json()  # type: ignore[attr-defined]
    for key in ("probe", "layer", "note", "overlap_tie"):
        expected["evidence"].pop(key, None)
    assert verdict == expected
    lines = printed.getvalue().splitlines()
    assert lines[0] == f"{expected['regime']} {scope['verdict'].rule}"  # type: ignore[attr-defined]
    human = _fdl("classify", sample_store, "--threshold", "cka_static=0.98")
    # the command's lines, less its first (which store and series); this run has no overlap-alone note
    assert "overlap_tie" not in json.loads(classify.stdout)["evidence"]
    assert lines[1:] == human.stderr.splitlines()[1:]
    assert len(lines) > 4 and lines[1] == f"regime: {expected['regime']}"
