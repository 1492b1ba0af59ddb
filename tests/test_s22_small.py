"""Session 22's small fixes (tiny MLPs on the CPU). Each test failed before its fix.

- A checkpoint file was hashed twice in one run where the take-in of a killed torchrun job's part stores
  (`sharding._take_in_rank_parts`) had hashed it to check it unchanged and the run then analysed it (the
  checkpoint the part's block was compared with, when not stored): the take-in hashes through `_sha256_once`
  and a load reuses what this run found for the file at the same signature. A part's checkpoint compared
  across one its rank found corrupt, refreshed once that one is analysed, was hashed a third time, and the
  one before it a second: what this run analysed is recorded for the refresh too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fdl_cli import checkpoints
from fdl_cli.store import StoreReader, StoreWriter
from tests.test_prev_walkback import _analyze, _assert_same, _good, _make_run, _spoil, _stored
from tests.test_s20_drop import _hashed

torch.set_num_threads(1)


# ------------------------------------------------------------- each file hashed once a run: part stores taken in


def test_a_part_store_taken_in_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchrun job killed with rank 0's block (10, 20) not stored and rank 1's (30 - 60) in its part, compared
    with step 20's file: the resume checks step 20's file unchanged to take the part in, then analyses 10 and 20.
    Step 20's file was read twice for its hash."""
    from fdl_cli.sharding import _write_rank_part_origin

    folder = _make_run(tmp_path / "run")
    full = tmp_path / "full.h5"
    _analyze(folder, full)
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _analyze(folder, out, steps=(0,))
    with StoreReader(full) as reader:
        entries = [reader.entry(step) for step in (30, 40, 50, 60)]
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreWriter(part, provenance=provenance, probes=probes) as writer:
        for entry in entries:
            writer.add(entry)
    sha = {step: checkpoints.sha256_file(folder / f"step_{step}.safetensors") for step in (0, 20)}
    _write_rank_part_origin(part, (0, sha[0]), (20, sha[20]))
    hashed = _hashed(monkeypatch)
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [10, 20] and not part.exists()
    assert sorted(hashed) == sorted(set(hashed)), " ".join(hashed)
    assert "step_20.safetensors" in hashed, hashed
    _assert_same(_stored(full), _stored(out))


def test_a_part_checkpoint_refreshed_across_a_fixed_file_hashes_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 found step 30 corrupt and compared its block (40 - 60) with step 20; 30 is fixed since. The resume
    takes the part in, analyses 10 - 30 and refreshes 40 to compare with 30: 40 was hashed by the take-in and
    again by the refresh, 30 by its analysis and again by the refresh."""
    from fdl_cli.sharding import _write_rank_part_origin

    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, "nan")
    walked = tmp_path / "walked.h5"
    _analyze(folder, walked)  # 40 compared with 20, as rank 1 computed it
    _good(folder, 30)
    out, part = tmp_path / "s.h5", tmp_path / "s.h5.rank-1"
    _analyze(folder, out, steps=(0,))
    with StoreReader(walked) as reader:
        entries = [reader.entry(step) for step in (40, 50, 60)]
        provenance, probes = reader.provenance, list(reader.probes().values())
    with StoreWriter(part, provenance=provenance, probes=probes) as writer:
        for entry in entries:
            writer.add(entry)
    sha = {step: checkpoints.sha256_file(folder / f"step_{step}.safetensors") for step in (0, 20)}
    _write_rank_part_origin(part, (0, sha[0]), (20, sha[20]))
    hashed = _hashed(monkeypatch)
    summary, _ = _analyze(folder, out)
    assert summary.analysed == [10, 20, 30] and summary.refreshed == [40], summary
    assert sorted(hashed) == sorted(set(hashed)), " ".join(hashed)
    assert {"step_30.safetensors", "step_40.safetensors"} <= set(hashed), hashed
    fresh = tmp_path / "fresh.h5"
    _analyze(folder, fresh)
    _assert_same(_stored(fresh), _stored(out))
