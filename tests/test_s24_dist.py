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


# -- 2. a rank never opens its part afresh over another job's part ----------------------------------------------


def test_a_rank_leaves_a_part_that_another_job_wrote_after_rank_0s_take_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A (its rank 0 gone) left part 1 with its checkpoint 10 just after job B's rank 0 took in the parts; B's rank
    1 then opens part 1. It goes on without a part (its block reaches rank 0 at the end all the same), saying why:
    A's part and sidecar stay as A wrote them, and the same command takes A's checkpoint in. Before, B's rank wrote
    its sidecar beside A's part (A's checkpoint read as compared with B's files) and its first commit replaced A's
    part (A's checkpoint gone)."""
    from types import SimpleNamespace

    from fdl_cli import sharding
    from fdl_cli.progress import NullReporter
    from fdl_cli.store import StoreReader
    from tests.test_distributed import _make_run, _part_with, _resume, _single
    from tests.test_s23_race import _reference

    run = _make_run(tmp_path / "run")
    full, out, part = tmp_path / "full.h5", tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _single(run, full, steps=(0, 10))
    _part_with(full, part, [10])  # job A's part 1: its block, step 10, compared with step 0's file
    sharding._write_rank_part_origin(part, _reference(run), _reference(run))
    identity = sharding._file_identity(part)
    sidecar = sharding._rank_part_origin(part).read_text()
    with StoreReader(full) as reader:
        provenance, probes, entry = reader.provenance, list(reader.probes().values()), reader.entry(10)
    monkeypatch.setattr(sharding, "_probe_infos", lambda ctx: probes)
    monkeypatch.setattr(sharding, "invocation", lambda ctx: {"rank": 1, "world_size": 2})
    reporter = NullReporter()
    ctx = SimpleNamespace(world=World(rank=1, size=2, local_rank=1), options=SimpleNamespace(min_commit_interval=0.0),
                          reporter=reporter)
    other_reference = (0, "0" * 64)  # job B's reference file: not the one A's checkpoint was compared with
    opened = sharding._open_rank_part(ctx, out, provenance, other_reference, None)  # type: ignore[arg-type]
    if opened is not None:  # job B's rank stores a checkpoint of its block in it
        opened.add(entry)
        opened.close()
    assert sharding._rank_part_origin(part).read_text() == sidecar
    assert sharding._file_identity(part) == identity
    assert opened is None
    assert reporter.warnings == [
        f"{part} was written after rank 0 took in the part stores, by a rank of another torchrun job on this --out: "
        "left as it is (a later run takes it in); rank 1 keeps its checkpoints in memory until rank 0 stores them"
    ]
    # the same command, as one process (job B stopped before it stored anything): A's checkpoint is taken in
    summary, _, _ = _resume(run, out, steps=(0, 10))
    assert summary.analysed == [0] and not part.exists()
    with StoreReader(out) as stored, StoreReader(full) as expected:
        assert stored.entry(10).sha256 == expected.entry(10).sha256
        assert [r["cka_prev"] for r in stored.records()] == [r["cka_prev"] for r in expected.records()]
