"""`fdl analyze -` under torchrun: the paths on stdin are read once, by rank 0, and every rank analyses that list.

Twenty-third session: `find runs/a -name '*.pt' | torchrun --nproc-per-node 2 -m fdl_cli analyze - ...` failed.
torchrun's ranks inherit its stdin, and every rank read it: the first to read took every path, the other found
none ("no checkpoints found in the paths read from stdin (-) (on rank 0)"), or each took a part of the pipe and
rank 0's part was the run's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from fdl_cli import distributed, pipeline
from fdl_cli.distributed import World
from fdl_cli.errors import CheckpointError
from fdl_cli.pipeline import AnalyzeOptions
from tests.test_analyze import fdl
from tests.test_distributed import _args, _assert_same, _make_run, _stored
from tests.test_s19_rank import _no_traceback_of_fdl, _torchrun


def _piped_args(run: Path, out: Path) -> list[str]:
    """`_args` reading the checkpoints' paths from stdin (`-`) instead of the folder."""
    args = _args(run, out)
    args[args.index(str(run))] = "-"
    return args


def test_paths_piped_into_a_torchrun_job_are_analysed_as_one_process_analyses_them(tmp_path: Path) -> None:
    """Five of the run's seven checkpoints, out of step order, piped in: the job stores the numbers one process
    stores of the same paths (steps 0 and 60 are left out, so a rank that found the folder's list instead, or
    a part of it, would differ)."""
    run = _make_run(tmp_path / "run")
    paths = "".join(f"{run / f'step_{step}.safetensors'}\n" for step in (40, 10, 50, 20, 30))
    one = fdl(*_piped_args(run, tmp_path / "one.h5"), stdin=paths)
    assert one.code == 0, one.stderr
    two = _torchrun(*_piped_args(run, tmp_path / "two.h5"), stdin=paths)
    assert two.returncode == 0, two.stderr[-4000:]
    _no_traceback_of_fdl(two.stderr)
    assert two.stderr.count("5 checkpoints analysed") == 1
    expected = _stored(tmp_path / "one.h5")
    assert sorted(expected) == [10, 20, 30, 40, 50]
    _assert_same(expected, _stored(tmp_path / "two.h5"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one.h5", "run", "two.h5"]  # no part store left


def test_nothing_on_stdin_under_torchrun_is_said_once_as_one_process_says_it(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "run")
    one = fdl(*_piped_args(run, tmp_path / "one.h5"), stdin="")
    two = _torchrun(*_piped_args(run, tmp_path / "two.h5"), stdin="")
    assert one.code == two.returncode == 1, two.stderr[-4000:]
    said = [line for line in one.stderr.splitlines() if line.startswith("error: ")]
    assert said == ["error: no checkpoints found in the paths read from stdin (-)"]
    assert [line for line in two.stderr.splitlines() if line.startswith("error")] == said, two.stderr[-4000:]
    _no_traceback_of_fdl(two.stderr)
    assert not (tmp_path / "two.h5").exists()


# -- the hand-over, rank by rank ----------------------------------------------------------------------------


class _Unread(io.StringIO):
    def read(self, size: int | None = -1) -> str:
        raise AssertionError("a rank other than 0 read stdin")


class _Closed(io.StringIO):
    def read(self, size: int | None = -1) -> str:
        raise OSError(9, "Bad file descriptor")


def _handed_over(monkeypatch: pytest.MonkeyPatch, payload: Any) -> list[Any]:
    """No process group: joining is a no-op and the broadcast gives `payload` (rank 0's) to any other rank;
    what this rank offered is recorded."""
    offered: list[Any] = []
    monkeypatch.setattr(distributed, "init_process_group", lambda world, device: None)

    def broadcast(mine: Any, world: World, waiting_for: str = "rank 0") -> Any:
        offered.append(mine)
        return mine if world.writes else payload

    monkeypatch.setattr(distributed, "broadcast_from_writer", broadcast)
    return offered


def _piped_options() -> AnalyzeOptions:
    return AnalyzeOptions(sources=("-",), out=Path("s.h5"))


def test_a_rank_other_than_0_takes_rank_0s_paths_and_never_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    _handed_over(monkeypatch, ("/runs/a/step_10.pt\n", None))
    text, refused = pipeline._job_stdin_text(_piped_options(), _Unread(), World(rank=1, size=2, local_rank=1), "cpu")
    assert (text, refused) == ("/runs/a/step_10.pt\n", None)


def test_a_stdin_that_rank_0_cannot_read_refuses_every_rank_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's refusal of a closed stdin reaches the other ranks as the same what/got/fix, so `agree_on_refusal`
    has rank 0 say it once and no rank waits for one that stopped."""
    offered = _handed_over(monkeypatch, None)
    _, mine = pipeline._job_stdin_text(_piped_options(), _Closed(), World(rank=0, size=2), "cpu")
    assert isinstance(mine, CheckpointError)
    assert mine.what == "`-` reads the checkpoints' paths from stdin, which cannot be read"
    assert offered == [(None, (mine.what, "Bad file descriptor", mine.fix))]
    _handed_over(monkeypatch, offered[0])
    text, theirs = pipeline._job_stdin_text(_piped_options(), _Unread(), World(rank=1, size=2, local_rank=1), "cpu")
    assert text is None and isinstance(theirs, CheckpointError)
    assert (theirs.what, theirs.got, theirs.fix) == (mine.what, mine.got, mine.fix)
