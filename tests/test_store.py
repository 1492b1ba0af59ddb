"""The HDF5 store: exact round trips, resume, the one-writer lock, damaged files and kill -9 safety."""

from __future__ import annotations

import json
import os
import random
import runpy
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli.errors import StoreError, StoreLockedError
from fdl_cli.fields import FLOAT_FIELDS, INT_FIELDS, MEASURE_FIELDS, RECORD_FIELDS, REGIMES
from fdl_cli.store import (
    SCHEMA_VERSION,
    CheckpointEntry,
    ProbeInfo,
    SeriesEntry,
    StoreReader,
    StoreWriter,
)

REPO = Path(__file__).resolve().parents[1]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a store, as `StoreReader.records` gives them (its warnings dropped)."""
    with StoreReader(path) as reader:
        return reader.records()


def provenance(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "model.py:build", "layers": ["fc2:input"], "options": {"top_k": 3}}
    base.update(changes)
    return base


def probes() -> list[ProbeInfo]:
    return [
        ProbeInfo("train", "a" * 64, 6, "regression", 1, anchor_x=np.linspace(-1, 1, 6), anchor_y=np.arange(6.0)),
        ProbeInfo("test", "b" * 64, 6, "classes", 3),
    ]


def random_scalars(rng: np.random.Generator) -> dict[str, Any]:
    """Plain Python values for every MEASURE field, about a third of them null."""
    scalars: dict[str, Any] = {}
    for name in MEASURE_FIELDS:
        if rng.random() < 0.3:
            scalars[name] = None
        elif name in INT_FIELDS:
            scalars[name] = int(rng.integers(0, 1000))
        elif name == "regime":
            scalars[name] = str(rng.choice(REGIMES))
        else:
            scalars[name] = float(rng.normal())
    return scalars


def random_series(rng: np.random.Generator, probe: str = "train", layer: str = "fc2:input") -> SeriesEntry:
    rank, width, anchors, top_k = 5, 4, 6, 3
    return SeriesEntry(
        probe=probe,
        layer=layer,
        scalars=random_scalars(rng),
        eigenvalues=rng.normal(size=rank),
        eigenvectors=rng.normal(size=(width, top_k)),
        eigenfunctions=rng.normal(size=(anchors, top_k)),
        utility=rng.random(rank),
        quality=rng.random(rank) if rng.random() < 0.7 else None,
        feature_mean=rng.normal(size=width) if rng.random() < 0.5 else None,
    )


def random_entry(step: int, series: tuple[tuple[str, str], ...] = (("train", "fc2:input"),)) -> CheckpointEntry:
    rng = np.random.default_rng(step + 1000 * len(series))
    return CheckpointEntry(
        step=step,
        path=f"/runs/a/checkpoint-{step}.pt",
        sha256=f"{step:064x}",
        series=tuple(random_series(rng, probe, layer) for probe, layer in series),
    )


def expected_record(entry: CheckpointEntry, raw_scalars: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": entry.step, "path": entry.path, "sha256": entry.sha256}
    record.update((name, raw_scalars[name]) for name in MEASURE_FIELDS)
    return record


def write(path: Path, entries: list[CheckpointEntry], **kwargs: Any) -> None:
    kwargs.setdefault("provenance", provenance())
    kwargs.setdefault("probes", probes())
    with StoreWriter(path, **kwargs) as writer:
        for entry in entries:
            writer.add(entry)


def group_snapshot(path: Path, name: str) -> dict[str, Any]:
    """Every attribute and dataset byte under /checkpoints/<name>, read with plain h5py."""
    snapshot: dict[str, Any] = {}
    with h5py.File(path, "r") as store:
        group = store["checkpoints"][name]

        def visit(key: str, node: Any) -> None:
            attrs = {k: repr(v) for k, v in node.attrs.items()}
            data = node[()].tobytes() if isinstance(node, h5py.Dataset) else None
            snapshot[key] = (attrs, data)

        visit(".", group)
        group.visititems(visit)
    return snapshot


# ------------------------------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(7)
    raw = [random_scalars(rng) for _ in range(4)]
    raw[0] = dict.fromkeys(MEASURE_FIELDS)  # everything null
    entries = []
    for step, scalars in zip((0, 10, 20, 30), raw, strict=True):
        series = random_series(rng)
        series = SeriesEntry(
            "train",
            "fc2:input",
            scalars,
            series.eigenvalues,
            series.eigenvectors,
            series.eigenfunctions,
            series.utility,
            series.quality if step != 10 else None,
            series.feature_mean if step != 20 else np.arange(4.0),
        )
        entries.append(CheckpointEntry(step, f"ckpt/{step}.pt", f"{step:064x}", (series,)))
    write(path, entries)

    with StoreReader(path) as reader:
        assert reader.schema_version == SCHEMA_VERSION
        assert reader.provenance == provenance()
        assert reader.warnings == []
        assert reader.probes() == {probe.name: probe for probe in probes()}
        np.testing.assert_array_equal(reader.probes()["train"].anchor_x, np.linspace(-1, 1, 6))
        assert reader.series() == [("train", "fc2:input")]
        assert reader.steps() == [0, 10, 20, 30]
        records = reader.records()
        assert records == [expected_record(e, s) for e, s in zip(entries, raw, strict=True)]
        for record in records:
            assert list(record) == list(RECORD_FIELDS)
            for name, value in record.items():
                if value is not None and name in INT_FIELDS:
                    assert type(value) is int, name
                if value is not None and name in FLOAT_FIELDS:
                    assert type(value) is float, name
        for entry in entries:
            stored = reader.arrays(entry.step)
            assert stored == entry.series[0]
            assert stored.eigenfunctions.dtype == np.float32
            np.testing.assert_array_equal(stored.eigenvectors, entry.series[0].eigenvectors)
        assert reader.arrays(10).quality is None
        np.testing.assert_array_equal(reader.arrays(20).feature_mean, np.arange(4.0))
    assert read_records(path) == records


def test_plain_h5py_sees_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    scalars = dict.fromkeys(MEASURE_FIELDS)
    scalars.update(d_lr=0.25, rank=4, regime="MF")
    series = SeriesEntry("train", "fc2:input", scalars, np.ones(5), np.ones((4, 3)), np.ones((6, 3)), np.ones(5))
    write(path, [CheckpointEntry(3, "c3.pt", "f" * 64, (series,))])
    with h5py.File(path, "r") as store:
        assert store.attrs["format"] == "fdl-store" and store.attrs["schema_version"] == 1
        assert json.loads(store.attrs["provenance"]) == provenance()
        group = store["checkpoints/step_3"]
        assert bool(group.attrs["complete"]) and group.attrs["step"] == 3
        leaf = group["train/fc2:input"]
        assert leaf.attrs["d_lr"] == 0.25 and "loss" not in leaf.attrs
        assert leaf["eigenfunctions"].dtype == np.float32 and leaf["eigenvectors"].shape == (4, 3)
        assert "quality" not in leaf and "feature_mean" not in leaf
        trajectory = store["trajectories/train/fc2:input"]
        assert trajectory["step"][()].tolist() == [3]
        assert trajectory["d_lr"].dtype == np.float64 and trajectory["d_lr"][0] == 0.25
        assert np.isnan(trajectory["loss"][0])
        assert trajectory["regime"].asstr()[0] == "MF" and trajectory["sha256"].asstr()[0] == "f" * 64


def test_records_are_sorted_by_step_whatever_the_add_order(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    entries = {step: random_entry(step) for step in (30, 0, 20, 10)}
    write(path, list(entries.values()), background=False)  # one commit per add: appends and rewrites
    assert StoreReader(path).steps() == [0, 10, 20, 30]
    replacement = random_entry(110)
    replacement = CheckpointEntry(10, "new/10.pt", "e" * 64, replacement.series)
    with StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
        assert writer.add(replacement) == [replacement]
        assert writer.completed()[10] == "e" * 64
    with StoreReader(path) as reader:
        assert [r["step"] for r in reader.records()] == [0, 10, 20, 30]
        assert reader.records()[1]["path"] == "new/10.pt"
        assert reader.arrays(10) == replacement.series[0]
        assert reader.arrays(20) == entries[20].series[0]
        assert reader.warnings == []


def test_several_series_are_tagged_and_selectable(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    keys = (("train", "fc2:input"), ("train", "blocks.0.attn"), ("test", "fc2:input"))
    entries = [random_entry(step, keys) for step in (5, 1)]
    write(path, entries)
    with StoreReader(path) as reader:
        assert reader.series() == sorted(keys)
        records = reader.records(all_series=True)
        assert [(r["step"], r["probe"], r["layer"]) for r in records] == [
            (step, probe, layer) for step in (1, 5) for probe, layer in sorted(keys)
        ]
        assert list(records[0])[:5] == ["step", "path", "sha256", "probe", "layer"]
        assert {r["layer"] for r in reader.records(probe="train", all_series=True)} == {"fc2:input", "blocks.0.attn"}
        only = reader.records(probe="test", layer="fc2:input")
        assert [r["step"] for r in only] == [1, 5] and {r["probe"] for r in only} == {"test"}
        assert only[1]["d_lr"] == entries[0].series[2].scalars["d_lr"]
        assert reader.steps(probe="test") == [1, 5]
        assert reader.arrays(5, probe="train", layer="blocks.0.attn") == entries[0].series[1]
        with pytest.raises(StoreError, match="several") as excinfo:
            reader.steps()
        assert "layer=blocks.0.attn" in str(excinfo.value)
        with pytest.raises(StoreError, match="choose one"):
            reader.arrays(5, probe="train")
        with pytest.raises(StoreError, match="probe 'nope'") as excinfo:
            reader.records(probe="nope")
        assert "test, train" in str(excinfo.value)
        with pytest.raises(StoreError, match="layer 'fc9'") as excinfo:
            reader.records(layer="fc9")
        assert "blocks.0.attn, fc2:input" in str(excinfo.value)
        with pytest.raises(StoreError, match="step 7 is not in"):
            reader.arrays(7, probe="test")


def test_resume_keeps_old_checkpoints_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(0), random_entry(1)])
    before = {name: group_snapshot(path, name) for name in ("step_0", "step_1")}
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        assert writer.completed() == {0: f"{0:064x}", 1: f"{1:064x}"}
        writer.add(random_entry(2))
        assert writer.completed() == {0: f"{0:064x}", 1: f"{1:064x}", 2: f"{2:064x}"}
    assert {name: group_snapshot(path, name) for name in ("step_0", "step_1")} == before
    with StoreReader(path) as reader:
        assert reader.steps() == [0, 1, 2]
        assert reader.arrays(1) == random_entry(1).series[0]


def test_other_provenance_is_refused_naming_the_keys_and_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(0)])
    changed = provenance(model="other.py:build", options={"top_k": 8})
    with pytest.raises(StoreError) as excinfo:
        StoreWriter(path, provenance=changed, probes=probes())
    message = str(excinfo.value)
    assert "model: 'model.py:build' (store) vs 'other.py:build' (this run)" in message
    assert "options.top_k: 3 (store) vs 8 (this run)" in message
    assert "--overwrite" in message and "layers" not in message
    other_probes = [probes()[0], ProbeInfo("test", "c" * 64, 6, "classes", 3)]
    with pytest.raises(StoreError, match="probe test: sha256=bbbbbbbbbbbb"):
        StoreWriter(path, provenance=provenance(), probes=other_probes)
    assert not (tmp_path / "run.h5.lock").exists()

    with StoreWriter(path, provenance=changed, probes=probes(), overwrite=True) as writer:
        assert writer.completed() == {}
        assert StoreReader(path).steps() == [0]  # the old store stays until the first commit
        writer.add(random_entry(5))
    with StoreReader(path) as reader:
        assert reader.provenance == changed
        assert reader.steps() == [5]


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        writer.add(random_entry(0))
        writer.flush()  # the commit runs in the background: durable only once flushed
        lock = json.loads((tmp_path / "run.h5.lock").read_text())
        assert lock["pid"] == os.getpid()
        with pytest.raises(StoreLockedError) as excinfo:  # same process, separate open of the lock file
            StoreWriter(path, provenance=provenance(), probes=probes())
        assert f"pid {os.getpid()}" in str(excinfo.value)
        child = subprocess.run(
            [sys.executable, "-c", _SECOND_WRITER, str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert child.returncode == 3, child.stderr
        assert f"pid {os.getpid()}" in child.stdout and "being written" in child.stdout
        assert StoreReader(path).steps() == [0]  # readers take no lock
    assert not (tmp_path / "run.h5.lock").exists()
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        assert list(writer.completed()) == [0]


_SECOND_WRITER = """
import sys
from fdl_cli.errors import StoreLockedError
from fdl_cli.store import StoreWriter
try:
    StoreWriter(sys.argv[1], provenance={}, probes=[])
except StoreLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(0)])
    with h5py.File(path, "r+") as store:
        store.attrs["schema_version"] = 2
        store.attrs["fdl_version"] = "9.9.0"
    for open_store in (lambda: StoreReader(path), lambda: StoreWriter(path, provenance=provenance(), probes=probes())):
        with pytest.raises(StoreError, match="newer fdl 9.9.0") as excinfo:
            open_store()
        assert "pip install -U fdl-cli" in str(excinfo.value)


def test_an_hdf5_file_of_another_kind_is_not_an_fdl_store(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as store:
        store["x"] = np.arange(3)
    with pytest.raises(StoreError, match="not an fdl store"):
        StoreReader(path)
    with pytest.raises(StoreError, match="not an fdl store") as excinfo:
        StoreWriter(path, provenance=provenance(), probes=probes())
    assert "--overwrite" in str(excinfo.value)
    with pytest.raises(StoreError, match="no fdl store at"):
        StoreReader(tmp_path / "absent.h5")


def test_damaged_files_raise_store_error_not_a_traceback(tmp_path: Path) -> None:
    good = tmp_path / "good.h5"
    write(good, [random_entry(step) for step in range(3)])
    data = good.read_bytes()
    bad_files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "text": b"step,d_lr\n0,0.5\n",
    }
    for name, content in bad_files.items():
        (tmp_path / f"{name}.h5").write_bytes(content)
        with pytest.raises(StoreError) as excinfo:
            StoreReader(tmp_path / f"{name}.h5")
        assert f"{name}.h5" in str(excinfo.value) and "fix:" in str(excinfo.value), name
    with pytest.raises(StoreError, match="--overwrite"):
        StoreWriter(tmp_path / "truncated.h5", provenance=provenance(), probes=probes())
    write(tmp_path / "truncated.h5", [random_entry(4)], overwrite=True)
    assert read_records(tmp_path / "truncated.h5") == [
        expected_record(random_entry(4), dict(random_entry(4).series[0].scalars))
    ]
    outcomes = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        flipped = bytearray(data)
        for offset in rng.integers(0, len(data), size=16):
            flipped[offset] ^= 0xFF
        (tmp_path / "flipped.h5").write_bytes(bytes(flipped))
        try:  # a flip in raw data can go unnoticed; any detected damage must be a StoreError
            with StoreReader(tmp_path / "flipped.h5") as reader:
                for step in reader.steps():
                    reader.arrays(step)
            outcomes.append("read")
        except StoreError:
            outcomes.append("StoreError")
    assert "StoreError" in outcomes, outcomes


def test_a_group_without_complete_is_skipped_then_redone(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(step) for step in range(3)])
    with h5py.File(path, "r+") as store:
        del store["checkpoints/step_1"].attrs["complete"]
    with StoreReader(path) as reader:
        assert reader.steps() == [0, 2]
        assert any("step 1" in w and "never completed" in w for w in reader.warnings), reader.warnings
        assert any("rebuilt" in w for w in reader.warnings)
        assert reader.records()[1] == expected_record(random_entry(2), dict(random_entry(2).series[0].scalars))
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        assert sorted(writer.completed()) == [0, 2]
        writer.add(random_entry(1))
    with StoreReader(path) as reader:
        assert reader.steps() == [0, 1, 2] and reader.warnings == []


def test_trajectories_of_a_series_left_without_groups_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(0, (("test", "fc1"),))])
    with h5py.File(path, "r+") as store:
        del store["checkpoints/step_0"].attrs["complete"]
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        assert writer.completed() == {}
        writer.add(random_entry(1))
    with StoreReader(path) as reader:
        assert reader.warnings == []
        assert reader.series() == [("train", "fc2:input")] and reader.steps() == [1]


def test_a_group_missing_a_dataset_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(step) for step in range(3)])
    with h5py.File(path, "r+") as store:
        del store["checkpoints/step_2/train/fc2:input/eigenvectors"]
    with StoreReader(path) as reader:
        assert reader.steps() == [0, 1]
        assert any("step 2" in w and "eigenvectors" in w for w in reader.warnings), reader.warnings


def test_missing_or_broken_trajectories_are_rebuilt_from_the_groups(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(step) for step in (4, 2, 9)])
    original = read_records(path)
    for damage in ("trajectories", "trajectories/train/fc2:input/d_lr"):
        copy = tmp_path / f"copy{len(damage)}.h5"
        copy.write_bytes(path.read_bytes())
        with h5py.File(copy, "r+") as store:
            del store[damage]
        with StoreReader(copy) as reader:
            assert reader.records() == original
            assert any("rebuilt from the checkpoint groups" in w for w in reader.warnings), reader.warnings
        with StoreWriter(copy, provenance=provenance(), probes=probes()) as writer:
            writer.add(random_entry(11))
        with StoreReader(copy) as reader:
            assert reader.warnings == [] and reader.steps() == [2, 4, 9, 11]


@pytest.mark.parametrize("background", [True, False])
def test_throttled_adds_are_announced_by_flush(tmp_path: Path, background: bool) -> None:
    path = tmp_path / "run.h5"
    with StoreWriter(
        path, provenance=provenance(), probes=probes(), min_interval=3600, background=background
    ) as writer:
        entries = [random_entry(step) for step in range(3)]
        assert [writer.add(entry) for entry in entries] == [[], [], []]
        assert sorted(writer.completed()) == [0, 1, 2]
        assert not path.exists()
        assert writer.flush() == entries
        assert StoreReader(path).steps() == [0, 1, 2]
        assert writer.flush() == []
        assert writer.add(random_entry(3)) == []
    assert StoreReader(path).steps() == [0, 1, 2, 3]  # close committed the rest
    with StoreWriter(path, provenance=provenance(), probes=probes(), background=background) as writer:
        entry = random_entry(4)
        if background:  # min_interval 0: the add starts a commit, and the next call reports it
            assert writer.add(entry) == []
            assert writer.flush() == [entry]
        else:  # min_interval 0: every add commits
            assert writer.add(entry) == [entry]
        assert StoreReader(path).steps() == [0, 1, 2, 3, 4]


def test_an_interrupt_still_commits_what_was_added(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, provenance=provenance(), probes=probes(), min_interval=3600) as writer:
            writer.add(random_entry(8))
            raise KeyboardInterrupt
    assert StoreReader(path).steps() == [8]
    assert not (tmp_path / "run.h5.lock").exists()


def test_stale_tmp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"run.h5.tmp-{dead.pid}"
    alive = tmp_path / f"run.h5.tmp-{os.getppid()}"
    stale.write_bytes(b"half a store")
    alive.write_bytes(b"not ours to judge")
    with StoreWriter(path, provenance=provenance(), probes=probes()):
        assert not stale.exists()
        assert alive.exists()


_KILL_CHILD = """
import sys

import numpy as np

from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter

PROBES = [ProbeInfo("train", "0" * 64, 32, "regression", 1)]


def make_entry(step):
    rng = np.random.default_rng(step)
    series = SeriesEntry(
        "train", "fc1", {"d_lr": float(rng.normal()), "rank": step},
        rng.normal(size=64), rng.normal(size=(64, 16)), rng.normal(size=(32, 16)), rng.normal(size=64),
    )
    return CheckpointEntry(step, f"ckpt/{step}.pt", f"{step:064x}", (series,))


if __name__ == "__main__":
    with StoreWriter(sys.argv[1], provenance={"run": "kill"}, probes=PROBES) as writer:
        first = max(writer.completed(), default=-1) + 1
        print("ready", flush=True)
        for step in range(first, first + 100000):
            durable = writer.add(make_entry(step))
            if step % 2:  # half the commits forced, so kills land in commits often
                durable += writer.flush()
            for entry in durable:
                print(entry.step, flush=True)
"""


def test_kill_9_at_random_moments_loses_nothing_announced(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_KILL_CHILD)
    make_entry = runpy.run_path(str(script), run_name="child_lib")["make_entry"]
    path = tmp_path / "run.h5"
    delays = random.Random(1234)
    announced: list[int] = []
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        # Killed at a random moment after its first announced commit, however slow the machine: every
        # trial checks announced checkpoints (a fixed delay could end a trial on a busy machine before
        # anything was announced).
        first = child.stdout.readline()
        time.sleep(delays.uniform(0.0, 0.9))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        announced += [int(line) for line in (first + out).split()]
        with StoreReader(path) as reader:
            assert reader.warnings == []
            stored = reader.steps()
            assert set(announced) <= set(stored)
            for step in announced[-5:] + stored[:2]:
                assert reader.arrays(step) == make_entry(step).series[0]
    assert len(announced) >= 3
    with StoreWriter(path, provenance={"run": "kill"}, probes=[ProbeInfo("train", "0" * 64, 32, "regression", 1)]):
        pass
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_records_of_1000_checkpoints_read_fast_enough(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(step) for step in range(1000)], min_interval=3600)
    started = time.perf_counter()
    records = read_records(path)
    elapsed = time.perf_counter() - started
    print(f"records() of 1000 checkpoints: {elapsed:.3f} s")
    assert [r["step"] for r in records] == list(range(1000))
    assert records[999]["sha256"] == f"{999:064x}"


def test_entries_are_validated() -> None:
    rng = np.random.default_rng(0)
    series = random_series(rng)
    arrays = (series.eigenvalues, series.eigenvectors, series.eigenfunctions, series.utility)
    with pytest.raises(ValueError, match="unknown scalar field"):
        SeriesEntry("train", "fc1", {"dlr": 0.1}, *arrays)
    with pytest.raises(ValueError, match="'/'"):
        SeriesEntry("train", "fc/1", {}, *arrays)
    with pytest.raises(ValueError, match="identifier"):
        SeriesEntry("my probe", "fc1", {}, *arrays)
    with pytest.raises(ValueError, match="rank"):
        SeriesEntry("train", "fc1", {"rank": 2.5}, *arrays)
    with pytest.raises(ValueError, match="same K"):
        SeriesEntry("train", "fc1", {}, arrays[0], arrays[1], arrays[2][:, :2], arrays[3])
    assert SeriesEntry("train", "fc1", {"loss": float("nan")}, *arrays).scalars["loss"] is None


def test_the_store_module_does_not_import_torch() -> None:
    code = "import sys, fdl_cli.store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_commits_keep_the_stores_mode_and_write_through_a_link(tmp_path: Path) -> None:
    """Copy-on-write replaced the store by a new file: a private store (600) became 644, a read-only
    one was replaced without a word, and a store reached through a symbolic link became a plain file
    while the link's target went stale (found by a review)."""
    path = tmp_path / "run.h5"
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        writer.add(random_entry(0))
    os.chmod(path, 0o600)
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        writer.add(random_entry(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with StoreWriter(path, provenance=provenance(), probes=probes(), overwrite=True) as writer:
        writer.add(random_entry(2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="read-only"):
        StoreWriter(path, provenance=provenance(), probes=probes())
    assert path.read_bytes() == before
    os.chmod(path, 0o644)

    real = tmp_path / "real"
    real.mkdir()
    path.rename(real / "run.h5")
    path.symlink_to(real / "run.h5")
    with StoreWriter(path, provenance=provenance(), probes=probes()) as writer:
        writer.add(random_entry(3))
    assert path.is_symlink()
    assert StoreReader(real / "run.h5").steps() == [2, 3]
