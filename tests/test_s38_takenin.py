"""`fdl analyze --json` stopped by a Ctrl-C while it prints the records of the checkpoints it took in from the part
stores of an interrupted torchrun job: each is printed once all the same (docs/reliability.md, 48), by one process
and by rank 0 of a torchrun job alike.

Those records were printed in a plain loop: a Ctrl-C landing in one print lost the rest, stored (the part removed) and
never printed again by a later run, which finds them in the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fdl_cli import checkpoints
from fdl_cli.sharding import _write_rank_part_origin
from tests.cli_run import fdl_in_process
from tests.ranks import torchrun
from tests.test_distributed import _part_with
from tests.test_prev_walkback import _analyze, _make_run
from tests.test_s37_user import _emitting, _printed_steps, _stored_steps
from tests.test_s38_rankjson import RANK

INTERRUPTED = "interrupted: what was completed is in the store; run the same command again to resume"


@pytest.fixture(scope="module")
def stopped_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Steps 0, 10, 20 (tiny MLP): the run's folder, a store of all three, and one of step 0 alone (rank 0's)."""
    root = tmp_path_factory.mktemp("takenin")
    folder = _make_run(root / "run", [0, 10, 20])
    full, first = root / "full.h5", root / "first.h5"
    _analyze(folder, full)
    _analyze(folder, first, steps=(0,))
    return folder, full, first


def _left_by_the_job(stopped_job: tuple[Path, Path, Path], out: Path) -> tuple[Path, list[str]]:
    """The job stored step 0 in `out`, and its rank 1 steps 10 and 20 in its part (compared with step 0's file): the
    part, and the arguments of `fdl analyze --json` that resumes it (takes the part in, nothing left to analyse)."""
    folder, full, first = stopped_job
    part = Path(f"{out}.rank-1")
    shutil.copyfile(first, out)
    _part_with(full, part, (10, 20))
    sha0 = checkpoints.sha256_file(folder / "step_0.safetensors")
    _write_rank_part_origin(part, (0, sha0), (0, sha0))
    return part, [
        "analyze", str(folder), "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
        "--probe", str(folder / "probe.npz"), "--out", str(out), "--device", "cpu", "--batch-size", "64",
        "--anchor-size", "100", "--json",
    ]  # fmt: skip


def test_a_ctrl_c_while_the_taken_in_records_are_printed_leaves_none_unprinted(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume takes steps 10 and 20 in and prints their records; a Ctrl-C (a real SIGINT) as it began step 10's
    printed neither 10's nor 20's, both stored and the part removed: the next run printed nothing, finding them in
    the store."""
    out = tmp_path / "s.h5"
    part, args = _left_by_the_job(stopped_job, out)
    did = _emitting(monkeypatch, 1)
    done = fdl_in_process(*args)
    monkeypatch.undo()
    assert done.returncode == 130, done.stderr
    assert _stored_steps(out) == [0, 10, 20] and not part.exists()
    assert _printed_steps(done.stdout) == [10, 20], done.stderr  # each once
    assert did == ["signalled", "printed"]  # step 10's print ended whole
    said = done.stderr.strip().splitlines()
    assert "2 checkpoints that a rank of an interrupted torchrun job stored in s.h5.rank-1 were added" in " ".join(said), (
        done.stderr
    )
    # taken in, not analysed: not counted as analysed (a run not stopped counts them as already in the store)
    assert said[-2:] == [f"0 checkpoints analysed → {out}", INTERRUPTED], done.stderr


def test_a_ctrl_c_of_rank_0_while_the_taken_in_records_are_printed_leaves_none_unprinted(
    stopped_job: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The same resume by a torchrun job of two ranks: its rank 0 takes the part in and prints the records."""
    out = tmp_path / "s.h5"
    part, args = _left_by_the_job(stopped_job, out)
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(RANK, encoding="utf-8")
    done = torchrun(str(wrapper), *args, direct=True, env={"CTRL_C_AT": "printing:10"})
    assert done.returncode != 0
    assert _stored_steps(out) == [0, 10, 20] and not part.exists()
    printed = [json.loads(line)["step"] for line in done.stdout.splitlines()]
    assert sorted(printed) == [10, 20], done.stderr[-4000:]  # each once
    assert done.stderr.splitlines().count(INTERRUPTED) == 1, done.stderr[-4000:]
