"""Rank 0 of a torchrun job stopped while it takes in the part stores of an interrupted job (`sharding`): the other
ranks learn of it before rank 0 prints the records of the parts it stored, and those records are printed on every
way out (docs/reliability.md, 53)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.ranks import torchrun
from tests.test_s37_user import _printed_steps, _stored_steps
from tests.test_s38_takenin import _left_by_the_job, stopped_job  # noqa: F401 - the module's fixture, shared
from tests.test_s39_review import _RANK_REMOVING

#: rank 0's stdout a pipe that is full and that nobody reads (`| less`, scrolled no further)
_STDOUT_FULL = """
import fcntl, os
if os.environ["RANK"] == "0":
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: a page
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"x" * 512)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    os.dup2(write, 1)
"""

#: rank 0 given a Ctrl-C as it checks, with the other ranks, the checkpoints it stored (the second wait of the job)
_RANK_AFTER = """
import os, signal, sys
from fdl_cli import cli, distributed
if os.environ["RANK"] == "0":
    broadcast = distributed.broadcast_from_writer
    def broadcasting(payload, world, waiting_for="rank 0"):
        if waiting_for.startswith("rank 0 to check the stored checkpoints"):
            signal.raise_signal(signal.SIGINT)
        return broadcast(payload, world, waiting_for)
    distributed.broadcast_from_writer = broadcasting
cli.main(sys.argv[1:])
"""


def _resumed(
    stopped_job: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
    rank: str,
    env: dict[str, str] | None = None,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The resume of the stopped job (`_left_by_the_job`) by two ranks that run the script `rank`: the store, and how
    the job ended."""
    out = tmp_path / "s.h5"
    _, args = _left_by_the_job(stopped_job, out)
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(rank, encoding="utf-8")
    return out, torchrun(str(wrapper), *args, direct=True, env=env)


def test_the_other_ranks_stop_with_rank_0_whose_take_in_was_stopped_though_its_stdout_takes_nothing(
    stopped_job: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Rank 0, given a Ctrl-C as it removed the part it took in, printed the records of the checkpoints it had stored
    before it told the other ranks that it stopped: its print waited on the full pipe, and rank 1 waited for rank 0's
    word until FDL_TORCHRUN_TIMEOUT (a week by default), saying at last that it gave up. Told first, rank 1 stops
    with rank 0 (quietly: rank 0 says why)."""
    out, done = _resumed(stopped_job, tmp_path, _STDOUT_FULL + _RANK_REMOVING, {"FDL_TORCHRUN_TIMEOUT": "60"})
    assert done.returncode != 0
    assert "gave up after waiting" not in done.stderr, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert _stored_steps(out) == [0, 10, 20]  # the part left as it was: stopped before its removal


def test_a_ctrl_c_of_rank_0_after_the_take_in_before_its_records_were_printed_leaves_none_unprinted(
    stopped_job: tuple[Path, Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The take-in over and said to the other ranks, rank 0's Ctrl-C came before it printed the records of the
    checkpoints taken in (as the ranks check the stored checkpoints read back): stored, never printed."""
    out, done = _resumed(stopped_job, tmp_path, _RANK_AFTER)
    assert done.returncode != 0
    assert _stored_steps(out) == [0, 10, 20] and not Path(f"{out}.rank-1").exists()
    assert sorted(_printed_steps(done.stdout)) == [10, 20], done.stderr[-4000:]
