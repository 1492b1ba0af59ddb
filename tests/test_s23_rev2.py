"""Session 23's review of the session's changes (bugs found, each with the test that failed before its fix)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from tests.test_prev_walkback import _polls, _stored
from tests.test_watch_fixes import _source_and_empty_run

torch.set_num_threads(1)


def test_watch_of_paths_read_from_stdin_scans_them_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`find run -name last.pt | fdl analyze - --watch`: each poll scanned stdin again, consumed at the start, so
    a rolling last.pt given on stdin was never seen again (given as an argument, each save is analysed). The
    paths read at the start are scanned at each poll."""
    source, folder = _source_and_empty_run(tmp_path)

    def save(step: int) -> None:
        torch.save({"step": step, "state_dict": load_file(str(source / f"step_{step}.safetensors"))},
                   folder / "last.pt")
        past = time.time() - 60
        os.utime(folder / "last.pt", (past, past))

    save(0)
    out, records = tmp_path / "s.h5", []
    with _polls(monkeypatch, lambda: save(10), lambda: None, lambda: save(20)):
        summary = run_analyze(
            AnalyzeOptions(sources=("-",), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
                           probe_specs=(str(folder / "probe.npz"),), out=out, anchor_size=100, batch_size=64,
                           device="cpu", watch=True, poll_seconds=0.01),
            reporter=NullReporter(), on_record=records.append, stdin=io.StringIO(f"{folder / 'last.pt'}\n"),
        )
    assert [r["step"] for r in records] == [0, 10, 20] and not summary.failed
    assert [_stored(out)[step]["prev_step"] for step in (0, 10, 20)] == [None, 0, 10]


def test_an_argument_holding_a_newline_is_not_said_as_nul_separated_stdin(tmp_path: Path) -> None:
    """`fdl analyze "$(find run -name '*.pt')"`: find's lines kept in one argument by the quotes were said as paths
    read NUL-separated from stdin, which the command did not read."""
    from fdl_cli.checkpoints import discover_checkpoints
    from fdl_cli.errors import CheckpointError

    (tmp_path / "a.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        discover_checkpoints([f"{tmp_path / 'a.pt'}\n{tmp_path / 'b.pt'}"])
    assert "stdin" not in (caught.value.got or "")
    assert caught.value.got == "the argument holds a newline: several paths given as one (a quoted `\"$(find ...)\"`?)"
    assert caught.value.fix.startswith("give each path as an argument of its own, or pipe them in")
    # read NUL-separated from stdin, a path holding a newline keeps its own words
    with pytest.raises(CheckpointError) as caught:
        discover_checkpoints(["-"], stdin=io.StringIO(f"{tmp_path / 'a.pt'}\n{tmp_path / 'b.pt'}\0"))
    assert (caught.value.got or "").startswith("the paths on stdin hold a NUL byte")


def test_analyze_dash_with_stdin_closed_says_so(tmp_path: Path) -> None:
    """`fdl analyze - <&-` (Python's sys.stdin None) was an AttributeError's traceback."""
    import subprocess
    import sys

    probe = tmp_path / "probe.npz"
    done = subprocess.run([sys.executable, "-c", "import os, sys; os.close(0); sys.stdin = None; from fdl_cli.cli import "
                           "main; main(['analyze', '-', '--probe', sys.argv[1], '--out', sys.argv[2]])",
                           str(probe), str(tmp_path / "s.h5")],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "error: `-` reads the checkpoints' paths from stdin, which cannot be read" in done.stderr
    assert "got: it is closed" in done.stderr
