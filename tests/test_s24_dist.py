"""Session 24, torchrun follow-ups (`fdl_cli/pipeline.py`, `fdl_cli/sharding.py`). Each test failed before its fix.

1. A Ctrl-C or a failure during rank 0's hand-over of stdin's paths (`_job_stdin_text`, `fdl analyze -`) left the job's
   process group initialised: `distributed.shutdown` ran only from the next statement on (a program calling
   `run_analyze` under torchrun could not join a group again, nor did torch free the group's connections).
2. A rank opening its part store afresh over a part that appeared after rank 0 took in the parts (written by a rank
   of another job on the same --out, whose rank 0 is gone) wrote its sidecar beside that job's part (its checkpoints
   then read as compared with this job's files) and replaced the part at its first commit (its checkpoints lost).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch.distributed as dist

from fdl_cli import distributed, pipeline
from fdl_cli.distributed import World
from fdl_cli.pipeline import AnalyzeOptions

# -- 1. the process group is left however the stdin hand-over ends ----------------------------------------------


def _joined_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`init_process_group` joins a real gloo group of this process alone (rank 0 of a job of 2 to fdl)."""

    def join(world: World, device: object) -> None:
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=0, world_size=1, store=dist.FileStore(str(tmp_path / "rdzv"), 1))

    monkeypatch.setattr(distributed, "init_process_group", join)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), distributed.WaitError("lost the connection to another rank")],
                         ids=["ctrl-c", "lost-rank"])
def test_the_process_group_is_left_when_the_stdin_hand_over_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stop: BaseException
) -> None:
    _joined_alone(monkeypatch, tmp_path)
    handed: list[object] = []

    def broadcast(payload: object, world: World, waiting_for: str = "rank 0") -> object:
        handed.append(payload)
        raise stop

    monkeypatch.setattr(distributed, "broadcast_from_writer", broadcast)
    options = AnalyzeOptions(sources=("-",), out=tmp_path / "s.h5", device="cpu")
    try:
        with pytest.raises(type(stop)):
            pipeline._run_analyze(options, World(rank=0, size=2), "cpu", reporter=None, on_record=None,
                                  stdin=io.StringIO("/runs/a/step_10.pt\n"), started="")
        assert handed == [("/runs/a/step_10.pt\n", None)]  # it stopped in the hand-over, having joined
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert not (tmp_path / "s.h5").exists()
