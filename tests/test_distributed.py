"""torchrun scale-out on the CPU (gloo, 2 processes): sharded checkpoints / probe == one process.

Each case writes a tiny run (tests.tiny_models:mlp, 7 drifting checkpoints, a 300-sample probe with
labels), analyses it once in this process and once under `torchrun --nproc-per-node 2`, and compares
every record field. Sums are exact but added in another order, so floats agree to rtol 1e-9.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fdl_cli.distributed import World, block, block_bounds, detect_world
from fdl_cli.errors import FdlError
from fdl_cli.pipeline import AnalyzeOptions, AnalyzeSummary, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.ranks import spawn, torchrun
from tests.tiny_models import mlp

REPO = Path(__file__).resolve().parents[1]
N_CHECKPOINTS = 7


def _make_run(folder: Path, *, n: int = 300, hidden: int = 8) -> Path:
    folder.mkdir()
    net = mlp(n_in=4, hidden=hidden, n_out=3, seed=0)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for index in range(N_CHECKPOINTS):
        state = {k: (v + 0.2 * index * torch.randn(v.shape, generator=generator)).contiguous() for k, v in start.items()}
        save_file(state, str(folder / f"step_{index * 10}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 3, size=n))
    return folder


def _args(run: Path, out: Path, *extra: str) -> list[str]:
    return [
        "analyze", str(run), "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
        "--probe", str(run / "probe.npz"), "--out", str(out), "--device", "cpu", "--batch-size", "64",
        "--anchor-size", "200", "--json", *extra,
    ]


def _torchrun_process(run: Path, out: Path, *extra: str, direct: bool = True) -> subprocess.CompletedProcess[str]:
    """`fdl analyze` of `run` by two ranks: started directly as torchrun starts them (`tests.ranks`), or by torchrun
    itself (`direct=False`: one test of each main path)."""
    return torchrun("-m", "fdl_cli", *_args(run, out, *extra), direct=direct)


def _torchrun(run: Path, out: Path, *extra: str) -> list[dict]:
    done = _torchrun_process(run, out, *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _single(run: Path, out: Path, model: str = "tests.tiny_models:mlp", **options: object) -> list[dict]:
    """One process's analysis of `run` into `out`; the records it printed (--json)."""
    return _resume(run, out, model, **options)[1]


def _stored(out: Path) -> dict[int, dict]:
    with StoreReader(out) as reader:
        return {record["step"]: record for record in reader.records()}


def _assert_same(expected: dict[int, dict], got: dict[int, dict]) -> None:
    assert sorted(got) == sorted(expected)
    for step, record in expected.items():
        for name, value in record.items():
            other = got[step][name]
            if isinstance(value, float) and other is not None:
                np.testing.assert_allclose(other, value, rtol=1e-9, atol=1e-12, err_msg=f"step {step} {name}")
            else:
                assert other == value, (step, name)


@pytest.fixture(scope="module")
def run_and_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("dist")
    run = _make_run(root / "run")
    _single(run, root / "single.h5")
    return run, _stored(root / "single.h5")


def _assert_two_ranks_equal_one_process(
    done: subprocess.CompletedProcess[str], expected: dict[int, dict], out: Path, *kept: str
) -> None:
    """`done`, a torchrun job's analysis into `out`, gave `expected` (one process's store), said once; of
    `out`'s folder only `out` and `kept` are left."""
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert sorted(r["step"] for r in records) == sorted(expected)  # rank 0 alone prints the records
    assert done.stderr.count(f"{N_CHECKPOINTS} checkpoints analysed") == 1  # and the summary (every rank printed it)
    _assert_same(expected, _stored(out))
    assert sorted(path.name for path in out.parent.iterdir()) == sorted([out.name, *kept])  # rank 1's part served and went


def test_two_ranks_equal_one_process(run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path) -> None:
    """Sharded checkpoints; sharded probe: test_shard_probe_with_one_slice_far_from_zero_equals_one_process."""
    run, expected = run_and_single
    done = _torchrun_process(run, tmp_path / "two.h5", direct=False)  # torchrun itself: this main path's real job
    _assert_two_ranks_equal_one_process(done, expected, tmp_path / "two.h5")


def test_shard_probe_with_a_later_reference_equals_one_process(
    run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path
) -> None:
    """--reference 30 is analysed ahead of its turn. Rank 1 held no entry for it, so at its place in
    step order it contributed its probe slice a second time while rank 0 only completed its held
    entry: both ranks waited for each other for ever (gloo's 30 min timeout; found by a review)."""
    run, _ = run_and_single
    _single(run, tmp_path / "single.h5", reference_step=30)
    expected = _stored(tmp_path / "single.h5")
    records = _torchrun(run, tmp_path / "two.h5", "--shard-probe", "--reference", "30")
    assert sorted(r["step"] for r in records) == sorted(expected)
    _assert_same(expected, _stored(tmp_path / "two.h5"))


def test_two_ranks_resume_a_partial_store(run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path) -> None:
    """The steps already stored are read back; step 30, stored with step 0 as its previous checkpoint,
    is updated to compare with step 20 once that is analysed (as in one process)."""
    run, _ = run_and_single
    single, out = tmp_path / "single.h5", tmp_path / "partial.h5"
    for store in (single, out):
        _single(run, store, steps=(0, 30))
    _single(run, single)
    records = _torchrun(run, out)
    assert sorted(r["step"] for r in records) == [10, 20, 30, 40, 50, 60]
    assert next(r for r in records if r["step"] == 30)["prev_step"] == 20
    _assert_same(_stored(single), _stored(out))


#: A model whose forward pass stalls on the checkpoint whose first bias is STALL: the job then hangs
#: there, mid-run, for as long as the test needs.
STALLING_MODEL = """
import time
import torch
from torch import nn

STALL = 1234.5


class Stalling(nn.Sequential):
    def forward(self, x):
        if float(self[0].bias[0]) == STALL:
            time.sleep(600)
        return super().forward(x)


def factory(hidden=8):
    torch.manual_seed(0)
    return Stalling(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def _stored_steps(out: Path) -> list[int]:
    if not out.exists():
        return []
    try:
        with StoreReader(out) as reader:
            return reader.steps()
    except FdlError:  # not a store yet
        return []


@pytest.mark.parametrize(
    ("extra", "durable", "in_part"),
    [((), [0, 10, 20, 30], [40]), (("--shard-probe",), None, None)],
    ids=["checkpoints", "probe"],
)
def test_checkpoints_are_durable_during_the_run(
    run_and_single: tuple[Path, dict[int, dict]],
    tmp_path: Path,
    extra: tuple,
    durable: list[int] | None,
    in_part: list[int] | None,
) -> None:
    """Every rank's checkpoints become durable while the job runs, not only once every rank is done.
    The job hangs at step 50: in rank 1's block, rank 0 then commits its whole block (steps 0 - 30) and
    waits, and rank 1 has step 40 in its part store (s.h5.rank-1); with --shard-probe every rank hangs
    there, and what rank 0 analysed before is committed as in one process (step 0 at once, the rest as
    the writer's throttle allows: a prefix of 0 - 40), with no part. The stored records are those of
    one process, a kill -9 of every process keeps them, and resuming takes in the part (step 40 is
    not analysed again) and completes the store."""
    original, expected = run_and_single
    run = tmp_path / "run"
    shutil.copytree(original, run)
    stalled = run / "step_50.safetensors"
    state = load_file(str(stalled))
    state["0.bias"][0] = 1234.5
    save_file(state, str(stalled))
    model = tmp_path / "stalling.py"
    model.write_text(STALLING_MODEL)
    out = tmp_path / "s.h5"
    part = tmp_path / "s.h5.rank-1"
    args = _args(run, out, "--commit-interval", "0", *extra)
    args[args.index("--model") + 1] = f"{model}:factory"
    with spawn("-m", "fdl_cli", *args) as job:  # the ranks run directly: a kill -9 of the job is one of each rank
        deadline = time.monotonic() + 180
        while job.poll() is None and time.monotonic() < deadline:
            stored = _stored_steps(out)
            if (stored == durable and _stored_steps(part) == in_part) or (durable is None and stored):
                break
            time.sleep(0.2)
        if durable is None:  # give the throttled commits of steps 10 - 40 their chance to land
            time.sleep(2)
        assert job.poll() is None, job.output()[1][-4000:]  # still running: stalled at step 50
        during, during_in_part = _stored_steps(out), _stored_steps(part)
        job.kill()
        job.wait(60)
    if durable is None:
        assert during and during == [0, 10, 20, 30, 40][: len(during)], during
        assert not part.exists()
    else:
        assert during == durable and during_in_part == in_part
    got = _stored(out)
    assert sorted(got) == during  # the kill -9 kept them
    expected = {step: {**record, "path": str(run / Path(record["path"]).name)} for step, record in expected.items()}
    _assert_same({step: expected[step] for step in during}, got)
    if in_part is not None:
        _assert_same({step: expected[step] for step in in_part}, _stored(part))
    shutil.copyfile(original / "step_50.safetensors", stalled)
    summary, _, _ = _resume(run, out, f"{model}:factory")
    assert summary.analysed == sorted(set(expected) - set(during) - set(in_part or ()))
    assert not part.exists()
    _assert_same(expected, _stored(out))


def _resume(
    run: Path, out: Path, model: str = "tests.tiny_models:mlp", **options: object
) -> tuple[AnalyzeSummary, list[dict], NullReporter]:
    reporter, records = NullReporter(), []
    settings: dict[str, object] = {"anchor_size": 200, **options}
    summary = run_analyze(
        AnalyzeOptions(
            sources=(str(run),), model_spec=model, model_kwargs={"hidden": 8},
            probe_specs=(str(run / "probe.npz"),), out=out, device="cpu", batch_size=64,
            **settings,  # type: ignore[arg-type]
        ),
        reporter=reporter,
        on_record=records.append,
    )
    return summary, records, reporter


def _here(expected: dict[int, dict], run: Path) -> dict[int, dict]:
    return {step: {**record, "path": str(run / Path(record["path"]).name)} for step, record in expected.items()}


def test_part_stores_are_taken_in_only_where_this_run_would_compute_the_same(
    run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path
) -> None:
    """What a killed job's rank left in RUN.h5.rank-K. A resume takes in the checkpoints the store
    lacks (printed by --json, not analysed again) and removes the part; the stored checkpoint after
    them is refreshed to compare with them. A checkpoint whose file changed is analysed again, and so
    is the next one of the part (compared with the old file); so is one whose previous
    checkpoint is another in this run's order (--steps). --overwrite removes parts unread. Each time
    the store equals one process's. (Each part gets the sidecar its rank writes: the block starts at
    step 0, so it names the reference alone.)"""
    from fdl_cli.checkpoints import sha256_file
    from fdl_cli.sharding import _write_rank_part_origin

    run, expected = run_and_single
    full = tmp_path / "full.h5"
    _single(run, full)
    part_of = tmp_path / "first.h5"
    _single(run, part_of, steps=(0, 10, 20))

    def copy_part(source: Path, part: Path, folder: Path = run) -> None:
        shutil.copyfile(source, part)
        _write_rank_part_origin(part, (0, sha256_file(folder / "step_0.safetensors")), None)

    # the part's steps join an empty store
    out, part = tmp_path / "a.h5", tmp_path / "a.h5.rank-1"
    copy_part(part_of, part)
    summary, records, reporter = _resume(run, out)
    assert summary.analysed == [30, 40, 50, 60] and sorted(summary.already) == [0, 10, 20]
    assert sorted(record["step"] for record in records) == sorted(expected)  # --json printed them all
    assert any("3 checkpoints" in note and "a.h5.rank-1" in note for note in reporter.notes), reporter.notes
    assert not part.exists()
    _assert_same(_here(expected, run), _stored(out))

    # a stored checkpoint after the part's block compares with the part's last one
    out, part = tmp_path / "b.h5", tmp_path / "b.h5.rank-1"
    _single(run, out, steps=(0, 60))
    copy_part(full, part)
    summary, records, _ = _resume(run, out)
    assert summary.analysed == [] and summary.refreshed == [60]
    assert _stored(out)[60]["prev_step"] == 50
    _assert_same(_here(expected, run), _stored(out))

    # a file changed since: it and every later checkpoint of the part are analysed again
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    state = load_file(str(changed / "step_40.safetensors"))
    state["0.bias"] += 0.5
    save_file(state, str(changed / "step_40.safetensors"))
    fresh = tmp_path / "fresh.h5"
    _single(changed, fresh)
    out = tmp_path / "c.h5"
    copy_part(full, tmp_path / "c.h5.rank-1", changed)
    summary, _, _ = _resume(changed, out)
    assert summary.analysed == [40, 50]  # 60 was compared with 50, whose file is unchanged: taken in
    _assert_same(_stored(fresh), _stored(out))

    # --steps: the part's step 50 was compared with 40, this run's order puts 30 before it
    out, selected = tmp_path / "d.h5", tmp_path / "selected.h5"
    _single(run, selected, steps=(30, 50))
    copy_part(full, tmp_path / "d.h5.rank-1")
    summary, _, _ = _resume(run, out, steps=(30, 50))
    assert summary.analysed == [30, 50]
    _assert_same(_stored(selected), _stored(out))

    # --overwrite removes the part unread
    copy_part(part_of, part)
    summary, _, _ = _resume(run, tmp_path / "b.h5", resume=False)
    assert summary.analysed == sorted(expected) and not part.exists()


def _part_with(full: Path, part: Path, steps: Sequence[int]) -> None:
    """A part store holding `steps` as one uninterrupted run computed them (prev_step and all)."""
    from fdl_cli.store import StoreWriter

    with StoreReader(full) as reader:
        entries = [reader.entry(step) for step in steps]
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreWriter(part, provenance=provenance, probes=probes) as writer:
        for entry in entries:
            writer.add(entry)


def test_a_stored_checkpoint_is_refreshed_whatever_run_stored_the_one_before_it(
    run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path
) -> None:
    """A torchrun job killed after rank 0 committed its block (steps 10, 20), with 30 stored before and
    compared with 0: no later run refreshed 30, as 20 was not new to it. Now any stored checkpoint whose
    prev_step is older than the stored one before it is refreshed."""
    run, expected = run_and_single
    full, out = tmp_path / "full.h5", tmp_path / "s.h5"
    _single(run, full)
    _single(run, out, steps=(0, 30, 60))
    from fdl_cli.store import StoreWriter

    with StoreReader(out) as reader:
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreReader(full) as reader, StoreWriter(out, provenance=provenance, probes=probes) as writer:
        for step in (10, 20):  # committed by the killed job's rank 0
            writer.add(reader.entry(step))
    assert _stored(out)[30]["prev_step"] == 0
    summary, _, _ = _resume(run, out)
    assert summary.analysed == [40, 50] and sorted(summary.refreshed) == [30, 60]
    _assert_same(_here(expected, run), _stored(out))


def test_a_part_whose_block_follows_an_unfinished_one_is_taken_in_by_the_file_before_it(
    run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path
) -> None:
    """Rank 1 finished 40 - 60 while rank 0 stalled in its block: the store has only step 0. The part
    records the files rank 1 compared its block with (step 30's and the reference's sha256), so its
    checkpoints are taken in while 10 - 30 are analysed; a file without that record is no part (a
    rank writes it first): never read nor removed, its steps analysed; a reference whose file
    changed makes the part's checkpoints stale (removed); a --steps run that does not select them
    keeps the part for a later run."""
    from fdl_cli.checkpoints import sha256_file
    from fdl_cli.sharding import _write_rank_part_origin

    run, expected = run_and_single
    full = tmp_path / "full.h5"
    _single(run, full)
    sha = {step: sha256_file(run / f"step_{step}.safetensors") for step in expected}

    def killed(name: str, origin: bool = True, reference_sha: str = sha[0]) -> tuple[Path, Path]:
        out, part = tmp_path / f"{name}.h5", tmp_path / f"{name}.h5.rank-1"
        _single(run, out, steps=(0,))
        _part_with(full, part, [40, 50, 60])
        if origin:
            _write_rank_part_origin(part, (0, reference_sha), (30, sha[30]))
        return out, part

    out, part = killed("a")
    summary, _, reporter = _resume(run, out)
    assert summary.analysed == [10, 20, 30] and not part.exists() and not Path(f"{part}.json").exists()
    _assert_same(_here(expected, run), _stored(out))

    out, part = killed("b", origin=False)
    before = part.read_bytes()
    summary, _, reporter = _resume(run, out)
    assert summary.analysed == [10, 20, 30, 40, 50, 60] and part.read_bytes() == before
    assert any("b.h5.rank-1 is named like a part" in warning for warning in reporter.warnings), reporter.warnings
    summary, _, _ = _resume(run, out)
    assert summary.analysed == [] and part.read_bytes() == before
    _assert_same(_here(expected, run), _stored(out))

    out, part = killed("c", reference_sha="0" * 64)
    summary, _, _ = _resume(run, out)
    assert summary.analysed == [10, 20, 30, 40, 50, 60] and not part.exists()

    out, part = killed("d")
    summary, _, _ = _resume(run, out, steps=(0, 10))
    assert summary.analysed == [10] and part.exists()
    summary, _, _ = _resume(run, out)
    assert summary.analysed == [20, 30] and not part.exists()
    _assert_same(_here(expected, run), _stored(out))

    # Step 60's file was deleted: nothing can take it in any more, so it no longer keeps the part
    # (which was kept for ever, with a note that "a later run takes them in").
    gone = tmp_path / "gone"
    shutil.copytree(run, gone)
    full_gone = tmp_path / "full_gone.h5"
    _single(gone, full_gone)
    out, part = tmp_path / "f.h5", tmp_path / "f.h5.rank-1"
    _single(gone, out, steps=(0,))
    _part_with(full_gone, part, [40, 50, 60])
    _write_rank_part_origin(part, (0, sha[0]), (30, sha[30]))
    (gone / "step_60.safetensors").unlink()
    summary, _, _ = _resume(gone, out)
    assert summary.analysed == [10, 20, 30] and not part.exists()
    assert sorted(_stored(out)) == [0, 10, 20, 30, 40, 50]

    # Step 30 was replaced, and a run stored the new one, after rank 1 compared 40 with the old one:
    # 40 is analysed again (it was taken in, with the old file's cka_prev: the store's step 30 was
    # not compared with the file the part recorded; found by a review).
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    state = load_file(str(changed / "step_30.safetensors"))
    state["0.bias"] += 0.5
    save_file(state, str(changed / "step_30.safetensors"))
    fresh = tmp_path / "fresh.h5"
    _single(changed, fresh)
    out, part = tmp_path / "e.h5", tmp_path / "e.h5.rank-1"
    _single(changed, out, steps=(0, 10, 20, 30))
    _part_with(full, part, [40, 50, 60])
    _write_rank_part_origin(part, (0, sha[0]), (30, sha[30]))
    summary, _, _ = _resume(changed, out)
    assert summary.analysed == [40] and part.exists()  # 40 was analysed again: removed by the next run
    _assert_same(_stored(fresh), _stored(out))
    summary, _, _ = _resume(changed, out)
    assert summary.analysed == [] and not part.exists()


def test_a_part_of_another_run_is_left_as_it_is(run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path) -> None:
    """By one process and by torchrun, whose rank 1 would otherwise have written its own part over it."""
    run, expected = run_and_single
    foreign = tmp_path / "o.h5.rank-1"
    _single(run, foreign, steps=(0, 10), anchor_size=100)
    before = foreign.read_bytes()
    summary, _, reporter = _resume(run, tmp_path / "o.h5")
    assert summary.analysed == sorted(expected) and foreign.read_bytes() == before
    assert any("o.h5.rank-1 is named like a part" in warning and "left as it is" in warning
               for warning in reporter.warnings), reporter.warnings
    store = tmp_path / "t.h5"
    _single(run, store, steps=(0, 10))  # rank 1's block (steps 50, 60) is then still to do
    shutil.copyfile(foreign, tmp_path / "t.h5.rank-1")
    done = _torchrun_process(run, store)
    assert done.returncode == 0 and "left as it is" in done.stderr, done.stderr[-4000:]
    assert (tmp_path / "t.h5.rank-1").read_bytes() == before
    _assert_same(_here(expected, run), _stored(store))


@pytest.mark.parametrize("extra", [(), ("--shard-probe",)], ids=["checkpoints", "probe"])
def test_a_damaged_checkpoint_fails_alone_on_every_rank(tmp_path: Path, extra: tuple) -> None:
    """Exit 1 with the damaged file named (no rank left waiting); every other checkpoint is stored."""
    run = _make_run(tmp_path / "run")
    damaged = run / "step_40.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    done = _torchrun_process(run, tmp_path / "s.h5", *extra)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "step_40.safetensors" in done.stderr
    assert sorted(_stored(tmp_path / "s.h5")) == [0, 10, 20, 30, 50, 60]


def test_blocks_cover_every_item_once() -> None:
    for count in range(0, 12):
        for size in range(1, 5):
            parts = [block(list(range(count)), World(rank=rank, size=size)) for rank in range(size)]
            assert [item for part in parts for item in part] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert block_bounds(10, World(rank=1, size=3)) == (4, 7)


def test_world_from_environment() -> None:
    assert detect_world({}) == World()
    assert detect_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(rank=1, size=2, local_rank=1)
    with pytest.raises(FdlError, match="RANK must lie"):
        detect_world({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(FdlError, match="not integers"):
        detect_world({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_0_store_errors_wait_for_the_end() -> None:
    """A store error while rank 0 stores its own checkpoints is kept and warned of once, never raised
    there (the other ranks may be waiting in a collective); the entries count as handed over (the
    writer keeps them buffered) and the other checkpoints are still kept for the gather."""
    from fdl_cli.errors import StoreError
    from fdl_cli.pipeline import Announcer
    from fdl_cli.progress import NullReporter
    from fdl_cli.sharding import _StoringWriter
    from fdl_cli.store import CheckpointEntry

    class FullDisk:
        calls = 0

        def add(self, entry: CheckpointEntry) -> list[CheckpointEntry]:
            self.calls += 1
            raise StoreError("could not write s.h5 (the store on disk is unchanged)")

        def flush(self) -> list[CheckpointEntry]:
            raise StoreError("could not write s.h5 (the store on disk is unchanged)")

    class Warnings(NullReporter):
        def __init__(self) -> None:
            self.warned: list[str] = []

        def warn(self, message: str) -> None:
            self.warned.append(message)

    announced: list[CheckpointEntry] = []
    reporter, store = Warnings(), FullDisk()
    local = _StoringWriter({}, store, {0, 10}, Announcer(lambda entry, again: announced.append(entry), None, {}), reporter)
    entries = [CheckpointEntry(step=step, path=f"step_{step}.pt", sha256="0" * 64, series=()) for step in (0, 10, 20)]
    for entry in entries:
        assert local.add(entry) == []
    local.flush()
    assert store.calls == 2 and local.handed == {0, 10}
    assert [entry.step for entry in local.entries] == [0, 10, 20] and announced == []
    assert isinstance(local.error, StoreError) and len(reporter.warned) == 1
    assert "retried when the other ranks' checkpoints are written" in reporter.warned[0]


PICKY_MODEL = """
import torch
from torch import nn


class Picky(nn.Sequential):
    def forward(self, x):
        if bool((x[:, 0] > 100).any()):
            raise ValueError("input out of the range this model accepts")
        return super().forward(x)


def build(hidden=8):
    torch.manual_seed(0)
    return Picky(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def test_a_failure_on_one_ranks_probe_slice_stops_every_rank(tmp_path: Path) -> None:
    """--shard-probe: the model fails on rows that only rank 1's slice holds. Every rank raises that
    error before the all-reduce (rank 0 used to wait in it for ever), exit 1 with the model's error."""
    run = _make_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x[250:, 0] = 1000.0  # in the second half: rank 1's slice
    np.savez(run / "probe.npz", x=x, y=rng.integers(0, 3, size=300))
    (tmp_path / "picky.py").write_text(PICKY_MODEL)
    args = _args(run, tmp_path / "s.h5", "--shard-probe")
    args[args.index("--model") + 1] = f"{tmp_path / 'picky.py'}:build"
    done = torchrun("-m", "fdl_cli", *args, direct=True)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "forward pass failed" in done.stderr and "(on rank 1's probe slice)" in done.stderr
    assert "ValueError: input out of the range this model accepts" in done.stderr


#: `python -u -c _LATE_RANK ARGS`: `python -m fdl_cli ARGS`, rank 1 held until the file $FDL_TEST_GO exists
_LATE_RANK = """
import os, runpy, time
from pathlib import Path
if os.environ.get("RANK") == "1":
    go = Path(os.environ["FDL_TEST_GO"])
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
runpy.run_module("fdl_cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("extra", [(), ("--shard-probe",)], ids=["checkpoints", "probe"])
def test_a_checkpoint_written_between_the_ranks_discoveries_is_left_to_the_next_run(
    run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path, extra: tuple
) -> None:
    """Every rank discovered the checkpoints on its own: one written after rank 0's discovery and
    before rank 1's (a training job still running, a slow node) gave rank 1 one more checkpoint, and
    one more round of collectives, for ever (found by a review with --shard-probe). Rank 0's list is
    now every rank's; the newcomer is for the next run. Rank 1 is held at start-up until the test has
    seen rank 0's discovery (its note on a text file of the folder: since session 19 the --probe file
    has none, and the test waited out its 60 s deadline instead) and added the checkpoint. The ranks
    are started as torchrun starts them (`tests.ranks`, direct): the agent has no part in this."""
    run, expected = run_and_single
    folder = tmp_path / "live"
    folder.mkdir()
    for path in run.iterdir():
        if path.name != "step_60.safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not a checkpoint: discovery notes it\n")
    go, err = tmp_path / "go", tmp_path / "err.txt"
    done: list[subprocess.CompletedProcess[str]] = []
    args = _args(folder, tmp_path / "two.h5", *extra)

    def ranks() -> None:
        done.append(torchrun("-c", _LATE_RANK, *args, direct=True, stderr=err, env={"FDL_TEST_GO": str(go)}, timeout=120))

    job = threading.Thread(target=ranks)
    job.start()
    try:
        deadline = time.monotonic() + 60
        while not (err.exists() and "notes.txt" in err.read_text()) and job.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "notes.txt" in err.read_text(), "rank 0 never said what its discovery skipped"
        (folder / "step_60.safetensors").write_bytes((run / "step_60.safetensors").read_bytes())
    finally:
        go.touch()  # rank 1 goes on (or, the test failed, ends): the job ends within its timeout
        job.join()
    assert done and done[0].returncode == 0, err.read_text()[-3000:]
    steps = sorted(json.loads(line)["step"] for line in done[0].stdout.splitlines() if line.strip())
    assert steps == [0, 10, 20, 30, 40, 50]
    _assert_same({step: record for step, record in _here(expected, folder).items() if step < 60},
                 _stored(tmp_path / "two.h5"))


def test_shard_probe_with_one_slice_far_from_zero_equals_one_process(tmp_path: Path) -> None:
    """Rank 0's probe slice gives features far from 0 (summed about its first batch's means), rank 1's
    near 0 (plain sums): the sums are moved to one point before they are added. With a shift taken
    only where needed, a rank-dependent collective would leave the other rank waiting for ever.

    Also --shard-probe's case of test_two_ranks_equal_one_process (the same job, on a plainer probe, before:
    one torchrun job fewer): rank 0 alone prints the records and the summary, and nothing is left beside
    the store."""
    run = _make_run(tmp_path / "run")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x[:150] += 50.0
    np.savez(run / "probe.npz", x=x, y=rng.integers(0, 3, size=300))
    _single(run, tmp_path / "single.h5")
    expected = _stored(tmp_path / "single.h5")
    done = _torchrun_process(run, tmp_path / "two.h5", "--shard-probe", direct=False)
    _assert_two_ranks_equal_one_process(done, expected, tmp_path / "two.h5", "run", "single.h5")
