"""Review of session 31's CSV, compare, progress and token-id changes: each test failed before its fix.

- A terminal on which rich draws no live display (TERM=dumb, as Emacs' M-x shell sets; rich's TTY_INTERACTIVE=0)
  was taken for one that redraws: fdl turned its plain progress lines off and rich showed nothing either, so a
  long `fdl analyze` said nothing until its summary (checked under a real pseudo-terminal with `script`).
- A model that takes one token id a sample (x of shape (n,), an nn.Embedding of it: a shape that works) given an id
  beyond its table was told to save x as (n, L) sequences, on top of the id's range; on a GPU, where torch says
  such an id only as "device-side assert triggered", that was all it was told.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import progress
from tests.cli_run import fdl_in_process, model_file


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (a pseudo-terminal's, as `script` gives)."""

    def isatty(self) -> bool:
        return True


def _progress_text(**environ: str) -> str:
    """What RichReporter writes on a terminal stream of a run of two checkpoints, lines every checkpoint."""
    from rich.console import Console

    console = Console(file=_Terminal(), width=120, _environ={**environ, progress.LOG_INTERVAL_ENV: "0"})
    with progress.RichReporter(console) as reporter:
        reporter.start_run(2)
        for index in range(2):
            reporter.start_checkpoint(index, 2, f"step_{index}.pt")
            reporter.end_checkpoint()
    return console.file.getvalue()


@pytest.mark.parametrize("environ", [{"TERM": "dumb"}, {"TERM": "xterm", "TTY_INTERACTIVE": "0"}],
                         ids=["dumb", "tty-interactive-0"])
def test_a_terminal_rich_does_not_redraw_gets_the_progress_lines(monkeypatch: pytest.MonkeyPatch,
                                                                 environ: dict[str, str]) -> None:
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "0")
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    said = _progress_text(**environ)
    lines = [line for line in said.splitlines() if line.startswith("progress:")]
    assert [line.split(",")[0] for line in lines] == ["progress: 1/2 checkpoints", "progress: 2/2 checkpoints"], said


def test_an_interactive_terminal_still_gets_the_live_display_not_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "0")
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    said = _progress_text(TERM="xterm")
    assert "progress:" not in said and "checkpoint step_" in said, said


ONE_ID = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.tok(ids))


def build():
    return Net()
"""


def _analyze(tmp_path: Path, source: str, x: np.ndarray) -> str:
    """stderr of `fdl analyze` of one checkpoint of the model `source` on a probe of inputs `x`, which fails."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model_state_dict": model_file(tmp_path, source).build().state_dict(), "step": 0}, run / "step_0.pt")
    np.savez(tmp_path / "probe.npz", x=x, y=np.arange(len(x)) % 3)
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          tmp_path / "probe.npz", "--out", tmp_path / "s.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "s.h5").exists()
    return done.stderr


def test_one_id_a_sample_beyond_the_table_is_not_told_to_add_a_sequence_axis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nn.Embedding(5, 8) of x of shape (20,) (a shape it takes) with ids up to 8: the fix names the table and the
    ids' range, and no longer says x should be (n, L) token sequences."""
    monkeypatch.setenv("COLUMNS", "1000")
    x = np.arange(20) % 9
    x[0] = 7
    said = _analyze(tmp_path, ONE_ID, x)
    assert "index out of range in self" in said
    assert "the model's nn.Embedding tables: tok 5 rows" in said
    assert "takes x of shape (n, L)" not in said and "x[:, None]" not in said, said


#: An nn.Embedding of one id a sample that, like torch's kernels on a GPU, reports an id beyond its table as a
#: device-side assert (torch's words on CUDA), which names neither the id nor the table
ONE_ID_ON_A_GPU = ONE_ID.replace("        return self.head(self.tok(ids))", """        if int(ids.max()) >= 5:
            raise RuntimeError("CUDA error: device-side assert triggered\\nCUDA kernel errors might be asynchronously "
                               "reported at some other API call, so the stacktrace below might be incorrect.")
        return self.head(self.tok(ids))""")


def test_a_device_side_assert_points_to_the_cpu_and_not_to_a_sequence_axis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU torch reports an id beyond an nn.Embedding's table as "CUDA error: device-side assert triggered"
    (the range hint reads torch's CPU words, "index out of range in self"): x of shape (20,) was told to be
    (n, L) sequences, the id's error was not named; the fix now says to run on the CPU to see torch's own error."""
    monkeypatch.setenv("COLUMNS", "1000")
    assert "return self.head(self.tok(ids))" in ONE_ID and ONE_ID_ON_A_GPU != ONE_ID
    said = _analyze(tmp_path, ONE_ID_ON_A_GPU, np.arange(20) % 9 + 5)
    assert "device-side assert triggered" in said
    assert "run with --device cpu to see torch's own error" in said, said
    assert "takes x of shape (n, L)" not in said, said
