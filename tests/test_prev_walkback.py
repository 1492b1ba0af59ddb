"""cka_prev / overlap_prev / prev_step across a checkpoint whose file fails.

"Previous" is the nearest earlier checkpoint in the run's step order that is analysed successfully
(stored, taken in from a part, or analysed by this run); a file that fails (corrupt, NaN weights:
CheckpointError; features that overflow: NumericalError) is skipped over, as a deleted one is. Every
path must agree with one uninterrupted single-process run over the same files: a fresh run, a resume
(a corrupt file that appears between stored checkpoints, or a corrupt file fixed later), the
reference analysed ahead of its turn, --watch, torchrun (a rank whose checkpoint before its block
fails walks further back itself) and the part stores a killed torchrun job leaves behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fdl_cli import signals
from fdl_cli.pipeline import AnalyzeOptions, AnalyzeSummary, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.ranks import spawn, torchrun
from tests.test_distributed import STALLING_MODEL, _stored_steps
from tests.tiny_models import mlp

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
STEPS = [0, 10, 20, 30, 40, 50, 60]


def _make_run(folder: Path, steps: list[int] = STEPS) -> Path:
    """Drifting tiny-MLP checkpoints (the same weights for a step in every folder) and a probe."""
    folder.mkdir()
    net = mlp(n_in=4, hidden=8, n_out=3, seed=0)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for index, step in enumerate(STEPS):
        state = {k: (v + 0.2 * index * torch.randn(v.shape, generator=generator)).contiguous() for k, v in start.items()}
        if step in steps:
            save_file(state, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(200, 4)).astype(np.float32), y=rng.integers(0, 3, size=200))
    return folder


def _spoil(folder: Path, step: int, kind: str) -> Path:
    """Make step `step`'s checkpoint one that discovery accepts and analysis fails on; returns it."""
    path = folder / f"step_{step}.safetensors"
    state = load_file(str(path))
    if kind == "nan":  # CheckpointError when loaded
        state["0.weight"][1, 2] = float("nan")
        save_file(state, str(path))
    elif kind == "overflow":  # finite weights, infinite features: NumericalError in the measures
        state["0.weight"].fill_(3e38)
        save_file(state, str(path))
    else:  # a .pt whose tensor data is cut short: CheckpointError when loaded
        assert kind == "truncated"
        path.unlink()
        path = folder / f"step_{step}.pt"
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
            for item in src.infolist():
                payload = src.read(item)
                dst.writestr(item, payload[: len(payload) // 2] if "/data/" in item.filename else payload)
    return path


def _good(folder: Path, step: int) -> None:
    """Step `step`'s good checkpoint back in `folder` (from a fresh run's files)."""
    for path in folder.glob(f"step_{step}.*"):
        path.unlink()
    scratch = folder.parent / f"scratch-{step}"
    _make_run(scratch)
    shutil.copyfile(scratch / f"step_{step}.safetensors", folder / f"step_{step}.safetensors")
    shutil.rmtree(scratch)


def _analyze(folder: Path, out: Path, **options: Any) -> tuple[AnalyzeSummary, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"anchor_size": 100, "batch_size": 64, "device": "cpu", **options}
    summary = run_analyze(
        AnalyzeOptions(
            sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=out, **settings,
        ),
        reporter=NullReporter(),
        on_record=records.append,
    )
    return summary, records


def _stored(out: Path) -> dict[int, dict[str, Any]]:
    """The stored records, keyed by step, with the path reduced to the file's name."""
    with StoreReader(out) as reader:
        return {r["step"]: {**r, "path": Path(r["path"]).name} for r in reader.records()}


def _assert_same(expected: dict[int, dict[str, Any]], got: dict[int, dict[str, Any]], rtol: float = 1e-12) -> None:
    assert sorted(got) == sorted(expected)
    for step, record in expected.items():
        for name, value in record.items():
            other = got[step][name]
            if isinstance(value, float) and other is not None:
                np.testing.assert_allclose(other, value, rtol=rtol, atol=1e-15, err_msg=f"step {step} {name}")
            else:
                assert other == value, (step, name, other, value)


def _failed_steps(summary: AnalyzeSummary) -> list[int]:
    return sorted(int(Path(path).stem.split("_")[1]) for path, _ in summary.failed)


@pytest.fixture(scope="module")
def without_30(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """One run over the checkpoints without step 30."""
    root = tmp_path_factory.mktemp("without")
    folder = _make_run(root / "run", [s for s in STEPS if s != 30])
    _analyze(folder, root / "store.h5")
    return _stored(root / "store.h5")


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """One run over every checkpoint, all good."""
    root = tmp_path_factory.mktemp("everything")
    folder = _make_run(root / "run")
    _analyze(folder, root / "store.h5")
    return _stored(root / "store.h5")


# ------------------------------------------------------------------------------------ one process


@pytest.mark.parametrize("kind", ["nan", "overflow", "truncated"])
def test_a_failing_checkpoint_is_skipped_over_as_a_deleted_one_is(
    tmp_path: Path, kind: str, without_30: dict[int, dict[str, Any]]
) -> None:
    """Step 30 fails: step 40 compares with step 20 (prev_step 20), with the very numbers of a run over
    the same files with step 30 deleted (it had no previous checkpoint at all)."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, kind)
    summary, records = _analyze(folder, tmp_path / "s.h5")
    assert _failed_steps(summary) == [30]
    assert next(r for r in records if r["step"] == 40)["prev_step"] == 20
    _assert_same(without_30, _stored(tmp_path / "s.h5"), rtol=0)


def test_two_failing_checkpoints_in_a_row_are_skipped_over(tmp_path: Path) -> None:
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 20, "nan")
    _spoil(folder, 30, "overflow")
    summary, _ = _analyze(folder, tmp_path / "s.h5")
    assert _failed_steps(summary) == [20, 30]
    deleted = _make_run(tmp_path / "deleted", [0, 10, 40, 50, 60])
    _analyze(deleted, tmp_path / "d.h5")
    assert _stored(tmp_path / "s.h5")[40]["prev_step"] == 10
    _assert_same(_stored(tmp_path / "d.h5"), _stored(tmp_path / "s.h5"), rtol=0)


def test_the_reference_analysed_ahead_skips_over_a_failing_checkpoint(tmp_path: Path) -> None:
    """--reference 40 is analysed first; at its place in step order it compares with step 20."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, "nan")
    summary, _ = _analyze(folder, tmp_path / "s.h5", reference_step=40)
    assert _failed_steps(summary) == [30]
    deleted = _make_run(tmp_path / "deleted", [s for s in STEPS if s != 30])
    _analyze(deleted, tmp_path / "d.h5", reference_step=40)
    assert _stored(tmp_path / "s.h5")[40]["prev_step"] == 20
    _assert_same(_stored(tmp_path / "d.h5"), _stored(tmp_path / "s.h5"), rtol=0)


def test_a_failing_file_that_appears_between_stored_checkpoints_changes_nothing(tmp_path: Path) -> None:
    """Steps 20 and 40 were stored (40 compared with 20, no step 30 yet); a corrupt step 30 then
    appears. The resume reports it and leaves 40 as it is, which is what one run over the same files
    gives (it gave 40 no previous checkpoint: a fresh run and a resume disagreed)."""
    folder = _make_run(tmp_path / "run", [s for s in STEPS if s != 30])
    out = tmp_path / "s.h5"
    _analyze(folder, out)
    _good(folder, 30)
    _spoil(folder, 30, "nan")
    summary, _ = _analyze(folder, out)
    assert _failed_steps(summary) == [30] and summary.analysed == [] and summary.refreshed == []
    _analyze(folder, tmp_path / "fresh.h5")
    assert _stored(out)[40]["prev_step"] == 20
    _assert_same(_stored(tmp_path / "fresh.h5"), _stored(out), rtol=0)


@pytest.mark.parametrize("kind", ["nan", "overflow"])
def test_a_fixed_file_is_analysed_and_its_successor_refreshed(
    tmp_path: Path, kind: str, everything: dict[int, dict[str, Any]]
) -> None:
    """Step 30 failed, so 40 compared with 20; once 30's file is good a resume analyses it and 40 is
    refreshed to compare with it: the store is one run's over the good files."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, kind)
    out = tmp_path / "s.h5"
    _analyze(folder, out)
    _good(folder, 30)
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [30] and summary.refreshed == [40] and not summary.failed
    _assert_same(everything, _stored(out))


def test_a_stored_successor_whose_previous_file_now_fails_is_refreshed(tmp_path: Path) -> None:
    """Step 40 is stored compared with step 30, whose group in the store is damaged (so it is analysed
    again) and whose file now fails: 40 is refreshed to compare with 20, as one run over these files
    gives (the rule "a prev_step between the two is kept" held for files that are gone, not for a
    file that fails in this run)."""
    import h5py

    folder = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _analyze(folder, out)
    with h5py.File(out, "r+") as handle:
        del handle["checkpoints/step_30"].attrs["complete"]
    _spoil(folder, 30, "nan")
    summary, _ = _analyze(folder, out)
    assert _failed_steps(summary) == [30] and summary.refreshed == [40]
    _analyze(folder, tmp_path / "fresh.h5")
    assert _stored(out)[40]["prev_step"] == 20
    _assert_same(_stored(tmp_path / "fresh.h5"), _stored(out))


def test_steps_selected_later_skip_over_a_failing_checkpoint(tmp_path: Path) -> None:
    """--steps 0,20: then --steps 30,40 with 30 corrupt: 40 compares with the stored 20."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, "nan")
    out = tmp_path / "s.h5"
    _analyze(folder, out, steps=(0, 20))
    summary, _ = _analyze(folder, out, steps=(30, 40))
    assert _failed_steps(summary) == [30] and summary.analysed == [40]
    assert _stored(out)[40]["prev_step"] == 20
    _analyze(folder, tmp_path / "fresh.h5", steps=(0, 20, 30, 40))
    _assert_same(_stored(tmp_path / "fresh.h5"), _stored(out))


@pytest.mark.parametrize("times", ["new", "restored"])
def test_a_stored_checkpoint_whose_file_fails_now_is_a_changed_file(tmp_path: Path, times: str) -> None:
    """Steps 0 - 20 are stored; then step 20's file is spoilt. The resume's check of stored files
    refuses it ("new": its modification time changed). With its size and time as they were
    ("restored"), step 30 is compared with it: the run stops with "changed since it was analysed",
    as for any stored file replaced since. (Its load failure counted as step 30's, so step 40,
    skipping over 30, was compared with 20 in turn and failed alike, and so on to the last
    checkpoint.)"""
    from fdl_cli.errors import StoreError

    folder = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _analyze(folder, out, steps=(0, 10, 20))
    stat = (folder / "step_20.safetensors").stat()
    _spoil(folder, 20, "nan")
    if times == "restored":
        assert (folder / "step_20.safetensors").stat().st_size == stat.st_size
        os.utime(folder / "step_20.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        expected = "step 20 .* changed since it was analysed"
    else:
        expected = "1 checkpoint file changed since it was analysed into .*: step 20 "
    with pytest.raises(StoreError, match=expected):
        _analyze(folder, out)
    assert sorted(_stored(out)) == [0, 10, 20]


def test_a_stored_checkpoint_that_cannot_be_loaded_now_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 20 is stored, its file unchanged, but loading it fails now (as a pickle stored with
    --trust-pickle does without it): the run stops naming step 20, not with a failure of each later
    checkpoint."""
    from fdl_cli import checkpoints
    from fdl_cli.errors import CheckpointError, FdlError

    folder = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _analyze(folder, out, steps=(0, 10, 20))
    load = checkpoints.load_checkpoint

    def refusing(ref: Any, **kwargs: Any) -> Any:
        if Path(ref.path).name == "step_20.safetensors":
            raise CheckpointError(f"{ref.path} is refused", fix="pass --trust-pickle")
        return load(ref, **kwargs)

    monkeypatch.setattr(checkpoints, "load_checkpoint", refusing)
    with pytest.raises(FdlError, match="stored checkpoint at step 20 .* cannot be read now") as raised:
        _analyze(folder, out)
    assert not isinstance(raised.value, CheckpointError) and raised.value.fix == "pass --trust-pickle"
    assert sorted(_stored(out)) == [0, 10, 20]


@contextlib.contextmanager
def _polls(monkeypatch: pytest.MonkeyPatch, *between: Any) -> Iterator[None]:
    """--watch in this process: each `between` runs in place of one poll's sleep (then Ctrl-C)."""
    calls = iter(between)

    def sleep(_seconds: float) -> None:
        step = next(calls, None)
        if step is None:
            raise KeyboardInterrupt
        step()

    monkeypatch.setattr(signals, "sleep", sleep)
    yield


def _arrive(source: Path, folder: Path, *names: str) -> None:
    for name in names:
        shutil.copyfile(source / name, folder / name)
        past = time.time() - 60  # settled: --watch skips files modified in the last poll interval
        os.utime(folder / name, (past, past))


def test_watch_skips_over_a_failing_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, without_30: dict[int, dict[str, Any]]
) -> None:
    """Steps 0 - 20 first; then a corrupt 30 and a good 40; then the rest."""
    source = _make_run(tmp_path / "source")
    spoiled = _spoil(source, 30, "nan")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "s.h5"
    with _polls(
        monkeypatch,
        lambda: _arrive(source, folder, spoiled.name, "step_40.safetensors"),
        lambda: _arrive(source, folder, "step_50.safetensors", "step_60.safetensors"),
    ):
        summary, _ = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted and _failed_steps(summary) == [30]
    assert _stored(out)[40]["prev_step"] == 20
    _assert_same(without_30, _stored(out))


# --------------------------------------------------------------------------------------- torchrun


def _torchrun(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Two ranks started as torchrun starts them (`tests.ranks`)."""
    return torchrun(
        "-m", "fdl_cli", "analyze", str(folder), "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
        "--probe", str(folder / "probe.npz"), "--out", str(out), "--device", "cpu", "--batch-size", "64",
        "--anchor-size", "100", "--json", *extra, direct=True,
    )


@pytest.mark.parametrize(
    ("spoiled", "extra"),
    [([30], ()), ([20, 30], ()), ([30], ("--shard-probe",))],
    ids=["before-block", "two-before-block", "shard-probe"],
)
def test_two_ranks_skip_over_failing_checkpoints_as_one_process(
    tmp_path: Path, spoiled: list[int], extra: tuple[str, ...]
) -> None:
    """Rank 1's block is 40 - 60; the checkpoint before it fails (and the one before that too): rank 1
    walks back, loading and analysing earlier files itself, until one is analysed (step 10 or 20)."""
    folder = _make_run(tmp_path / "run")
    for step in spoiled:
        _spoil(folder, step, "nan" if step == 30 else "overflow")
    _analyze(folder, tmp_path / "single.h5")
    done = _torchrun(folder, tmp_path / "two.h5", *extra)
    assert done.returncode == 1, done.stderr[-4000:]
    for step in spoiled:
        assert f"step_{step}.safetensors" in done.stderr
    single, two = _stored(tmp_path / "single.h5"), _stored(tmp_path / "two.h5")
    assert two[40]["prev_step"] == min(spoiled) - 10
    # The probe's slices are summed in another order: d_lr differs by ~2e-9 (relative) at step 0
    _assert_same(single, two, rtol=1e-7 if extra else 1e-9)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "single.h5", "two.h5"]


def test_two_ranks_walk_back_to_a_stored_checkpoint(tmp_path: Path) -> None:
    """Steps 0 - 20 are stored; of 30 - 60, rank 1 has 50 and 60, and 40 and 30 before them fail:
    rank 1 compares 50 with the stored 20, read back from the store, as one process does."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, "nan")
    _spoil(folder, 40, "overflow")
    out = tmp_path / "two.h5"
    _analyze(folder, out, steps=(0, 10, 20))
    done = _torchrun(folder, out)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "step_30.safetensors" in done.stderr and "step_40.safetensors" in done.stderr
    _analyze(folder, tmp_path / "single.h5")
    two = _stored(out)
    assert two[50]["prev_step"] == 20
    _assert_same(_stored(tmp_path / "single.h5"), two, rtol=1e-9)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "single.h5", "two.h5"]


@pytest.fixture(scope="module")
def killed_over_30(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A torchrun job stalls at step 10 in rank 0's block; rank 1 walked back over the corrupt step 30,
    compared its block's first checkpoint (40) with step 20 and stored its block (40 - 60) in its part,
    whose sidecar names step 20's file. The job is killed. Run once for the module (the job is the same
    for every test of it): returns a callable that puts its folder, store and part back as the kill left
    them, at the very paths the job wrote (stored paths are absolute) and with their modification times
    (a resume compares them), and returns (folder, store, part, --model, the stalled file's own bytes, (whether
    the job was still running when killed, its stderr)). The tests that use it run in turn."""
    root = tmp_path_factory.mktemp("killed")
    job_dir, kept_dir = root / "job", root / "kept"
    job_dir.mkdir()
    folder = _make_run(job_dir / "run")
    _spoil(folder, 30, "nan")
    stalled = folder / "step_10.safetensors"
    kept = stalled.read_bytes()
    state = load_file(str(stalled))
    state["0.bias"][0] = 1234.5
    save_file(state, str(stalled))
    model = root / "stalling.py"
    model.write_text(STALLING_MODEL)
    out, part = job_dir / "s.h5", job_dir / "s.h5.rank-1"
    args = [
        "analyze", str(folder), "--model", f"{model}:factory", "--model-kwargs", '{"hidden": 8}',
        "--probe", str(folder / "probe.npz"), "--out", str(out), "--device", "cpu", "--batch-size", "64",
        "--anchor-size", "100", "--commit-interval", "0",
    ]
    with spawn("-m", "fdl_cli", *args) as job:  # the ranks run directly: a kill -9 of the job is one of each rank
        deadline = time.monotonic() + 180
        while job.poll() is None and time.monotonic() < deadline:
            if _stored_steps(out) == [0] and _stored_steps(part) == [40, 50, 60]:
                break
            time.sleep(0.2)
        running = job.poll() is None
        job.kill()
        job.wait(60)
        stderr = job.output()[1]
    shutil.copytree(job_dir, kept_dir)  # copy2: modification times kept

    def as_killed() -> tuple[Path, Path, Path, str, bytes, Any]:
        shutil.rmtree(job_dir)
        shutil.copytree(kept_dir, job_dir)
        return folder, out, part, f"{model}:factory", kept, (running, stderr)

    yield as_killed


@pytest.mark.parametrize("fixed", [False, True], ids=["still-corrupt", "fixed"])
def test_a_part_compared_across_a_failing_checkpoint_is_taken_in(tmp_path: Path, fixed: bool, killed_over_30: Any) -> None:
    """The job of `killed_over_30`, killed while it stalled at step 10 with rank 1's part stored. A resume
    takes the part in (40 with prev_step 20: step 30 lies between, and this run tries it again) and
    analyses 10 - 30: with 30 still corrupt the store is one run's over these files; with 30 fixed, 40 is
    refreshed to compare with it, and the store is one run's over the good files."""
    import json

    from fdl_cli.checkpoints import sha256_file

    folder, out, part, model, kept, (running, stderr) = killed_over_30()
    assert running, stderr[-4000:]  # still running when killed: stalled at step 10
    assert _stored_steps(out) == [0] and _stored_steps(part) == [40, 50, 60]
    assert _stored(part)[40]["prev_step"] == 20
    origin = json.loads(Path(f"{part}.json").read_text())
    assert origin["predecessor"] == [20, sha256_file(folder / "step_20.safetensors")]

    (folder / "step_10.safetensors").write_bytes(kept)  # the stalled file back as it was
    if fixed:
        _good(folder, 30)
    records: list[dict[str, Any]] = []
    summary = run_analyze(
        AnalyzeOptions(
            sources=(str(folder),), model_spec=model, model_kwargs={"hidden": 8},
            probe_specs=(str(folder / "probe.npz"),), out=out, device="cpu", batch_size=64, anchor_size=100,
        ),
        reporter=NullReporter(),
        on_record=records.append,
    )
    assert not part.exists()
    assert summary.analysed == ([10, 20, 30] if fixed else [10, 20])
    assert _failed_steps(summary) == ([] if fixed else [30])
    assert summary.refreshed == ([40] if fixed else [])
    single = tmp_path / "single.h5"
    _analyze(folder, single)
    _assert_same(_stored(single), _stored(out), rtol=1e-9)


def _walked_over_30(folder: Path, walked: Path) -> Path:
    """`walked`: the run of `folder` analysed while step 30 was corrupt (40 compared with 20, as a torchrun rank
    whose block begins at 40 computes it); step 30's file mended since."""
    _spoil(folder, 30, "nan")
    _analyze(folder, walked)
    _good(folder, 30)
    return walked


def test_a_part_compared_across_a_checkpoint_now_stored_is_analysed_again(tmp_path: Path) -> None:
    """The part's 40 was compared with 20 (its rank found 30 corrupt), but the store now holds step 30
    (fixed and analysed since): 40 is analysed again, not taken in."""
    from fdl_cli.checkpoints import sha256_file
    from fdl_cli.sharding import _write_rank_part_origin
    from fdl_cli.store import StoreWriter

    folder = _make_run(tmp_path / "run")
    walked = _walked_over_30(folder, tmp_path / "walked.h5")
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _analyze(folder, out, steps=(0, 10, 20, 30))
    with StoreReader(walked) as reader:
        entries = [reader.entry(step) for step in (40, 50, 60)]
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreWriter(part, provenance=provenance, probes=probes) as writer:
        for entry in entries:
            writer.add(entry)
    sha = sha256_file(folder / "step_0.safetensors")
    _write_rank_part_origin(part, (0, sha), (20, sha256_file(folder / "step_20.safetensors")))
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [40]  # 50 and 60 were compared with the part's own 40 and 50: taken in
    _analyze(folder, tmp_path / "fresh.h5")
    _assert_same(_stored(tmp_path / "fresh.h5"), _stored(out))


def test_a_stored_previous_checkpoint_that_cannot_be_read_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the stored previous checkpoint's file is hashed before it is loaded; an OSError there
    other than a missing file (EIO, EACCES, NFS's ESTALE) escaped as a traceback (on a torchrun rank:
    the job died with it)."""
    from fdl_cli import checkpoints
    from fdl_cli.errors import FdlError

    folder = _make_run(tmp_path / "run")
    out = tmp_path / "s.h5"
    _analyze(folder, out, steps=(0, 10, 20))
    sha256_file = checkpoints.sha256_file

    def failing(path: Any) -> str:
        if Path(path).name == "step_20.safetensors":
            raise OSError(5, "Input/output error", str(path))
        return sha256_file(path)

    monkeypatch.setattr(checkpoints, "sha256_file", failing)
    with pytest.raises(FdlError, match="stored checkpoint at step 20 .* cannot be read now") as raised:
        _analyze(folder, out)
    assert "Input/output error" in (raised.value.got or "")
    assert sorted(_stored(out)) == [0, 10, 20]
