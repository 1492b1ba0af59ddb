"""Progress in a log file: stderr that is not a terminal shows no live display, so a long `fdl analyze`
in a batch job said nothing until its summary. It now writes a plain progress line at a checkpoint's
end once FDL_PROGRESS_INTERVAL seconds (30 by default) passed since the run began or the last line."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fdl_cli import progress
from tests.cli_run import REPO, fdl_in_process

SAMPLE = REPO / "sample_checkpoints"
LINE = re.compile(r"^progress: (\d+)/25 checkpoints, last step (\d+) \((step_\d+\.safetensors)\); "
                  r"\d+:\d\d:\d\d elapsed(, about \d+:\d\d:\d\d left)?$")


def analyze(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`fdl analyze` of the sample run, FDL_PROGRESS_INTERVAL set to `interval` (unset: None); in this process, since
    fdl reads the variable as each run starts (`progress.log_interval`), not as the interpreter does."""
    if interval is None:
        monkeypatch.delenv(progress.LOG_INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(progress.LOG_INTERVAL_ENV, interval)
    return fdl_in_process("analyze", SAMPLE, "-o", tmp_path / "run.h5", *extra)


def test_a_line_after_every_checkpoint_with_interval_zero_and_stdout_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = analyze(tmp_path, monkeypatch, "0", "--json")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("progress:")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches if m] == list(range(1, 26))
    steps = [int(m.group(2)) for m in matches if m]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 1000
    assert all(m.group(3) == f"step_{m.group(2)}.safetensors" for m in matches if m)
    assert matches[-1] is not None and matches[-1].group(4) is None  # nothing left after the last
    records = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: the records alone
    assert [record["step"] for record in records] == steps


def test_a_short_run_prints_no_progress_line_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = analyze(tmp_path, monkeypatch, None)
    assert done.returncode == 0, done.stderr
    assert "progress:" not in done.stderr
    assert "25 checkpoints analysed" in done.stderr


def test_interval_values() -> None:
    for text, expected in [("0", 0.0), ("2.5", 2.5), ("-1", progress.LOG_INTERVAL), ("nan", progress.LOG_INTERVAL),
                           ("often", progress.LOG_INTERVAL), ("inf", progress.LOG_INTERVAL)]:
        os.environ[progress.LOG_INTERVAL_ENV] = text
        try:
            assert progress.log_interval() == expected, text
        finally:
            del os.environ[progress.LOG_INTERVAL_ENV]
    assert progress.clock(0) == "0:00:00" and progress.clock(3725.9) == "1:02:05"


def test_the_interval_counts_from_the_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "10")
    out = io.StringIO()
    reporter = progress.RichReporter(Console(file=out, force_terminal=False, width=200))
    with reporter:
        reporter.start_run(6)
        for index, advance in enumerate([4.0, 4.0, 4.0, 9.0, 1.0, 30.0]):  # ends at 104, 108, 112, 121, 122, 152
            reporter.start_checkpoint(index, 6, f"step {index}")
            now[0] += advance
            reporter.end_checkpoint()
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress: 3/6 checkpoints, last step 2; 0:00:12 elapsed, about 0:00:12 left",
        "progress: 5/6 checkpoints, last step 4; 0:00:22 elapsed, about 0:00:04 left",  # 10 s after 112
        "progress: 6/6 checkpoints, last step 5; 0:00:52 elapsed",
    ]


def test_a_terminal_or_quiet_gets_no_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "0")
    for console, quiet in [(Console(file=io.StringIO(), force_terminal=True, width=120), False),
                           (Console(file=io.StringIO(), force_terminal=False, width=120), True)]:
        with progress.RichReporter(console, quiet=quiet) as reporter:
            reporter.start_run(1)
            reporter.start_checkpoint(0, 1, "step 0")
            reporter.end_checkpoint()
        assert "progress:" not in console.file.getvalue()

