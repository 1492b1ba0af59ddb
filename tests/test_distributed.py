"""torchrun scale-out on the CPU (gloo, 2 processes): sharded checkpoints / probe == one process.

Each case writes a tiny run (tests.tiny_models:mlp, 7 drifting checkpoints, a 300-sample probe with
labels), analyses it once in this process and once under `torchrun --nproc-per-node 2`, and compares
every record field. Sums are exact but added in another order, so floats agree to rtol 1e-9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.distributed import World, block, block_bounds, detect_world
from fdl_cli.errors import FdlError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.store import StoreReader
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


def _torchrun_process(run: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "fdl_cli", *_args(run, out, *extra)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)


def _torchrun(run: Path, out: Path, *extra: str) -> list[dict]:
    done = _torchrun_process(run, out, *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _single(run: Path, out: Path, **options: object) -> list[dict]:
    records: list[dict] = []
    run_analyze(
        AnalyzeOptions(
            sources=(str(run),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(run / "probe.npz"),), out=out, device="cpu", batch_size=64, anchor_size=200,
            **options,  # type: ignore[arg-type]
        ),
        on_record=records.append,
    )
    return records


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


@pytest.mark.parametrize("extra", [(), ("--shard-probe",)], ids=["checkpoints", "probe"])
def test_two_ranks_equal_one_process(run_and_single: tuple[Path, dict[int, dict]], tmp_path: Path, extra: tuple) -> None:
    run, expected = run_and_single
    records = _torchrun(run, tmp_path / "two.h5", *extra)
    assert sorted(r["step"] for r in records) == sorted(expected)  # rank 0 alone prints the records
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
