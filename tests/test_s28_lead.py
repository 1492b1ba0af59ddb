"""Found by the lead while merging: files another framework (or a compressor) wrote, skipped beside a run's
checkpoints, each had a note line of its own, where files of no checkpoint suffix share one."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from tests.test_analyze import fdl
from tests.test_s28_foreign import MODEL, _probe, _said, onnx
from tests.tiny_models import mlp


def test_skipped_files_of_one_kind_share_one_note(tmp_path: Path) -> None:
    """A run folder with 12 gzipped logs said "skipped train_N.log.gz: a gzip-compressed file" 12 times; now
    one note counts them and names the first 6, as the note of files without a checkpoint suffix does. A
    kind met once keeps its own note."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    for index in range(12):
        (run / f"train_{index:02d}.log.gz").write_bytes(gzip.compress(b"loss 1.0\n"))
    onnx(run / "model.onnx")
    done = fdl("analyze", str(run), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")
    said = _said(done.stderr)
    assert done.code == 0, done.stderr
    assert "2 checkpoints analysed" in said
    lines = [line for line in done.stderr.splitlines() if "gzip-compressed" in line]
    assert lines == ["note: skipped 12 files, each a gzip-compressed file: train_00.log.gz, train_01.log.gz, "
                     "train_02.log.gz, train_03.log.gz, train_04.log.gz, train_05.log.gz and 6 more"], done.stderr
    assert "skipped model.onnx: an ONNX model" in said


def test_folders_of_one_kind_are_counted_as_folders(tmp_path: Path) -> None:
    """Orbax's checkpoint_N folders beside a run's checkpoints: one note, which counts folders."""
    from tests.test_s28_foreign import orbax

    run = tmp_path / "run"
    run.mkdir()
    torch.save(mlp(seed=0).state_dict(), run / "step_0.pt")
    for step in (10, 20):
        orbax(run / f"checkpoint_{step}")
    done = fdl("analyze", str(run), *MODEL, "--probe", str(_probe(tmp_path / "probe.pt")),
               "--out", str(tmp_path / "out.h5"), "--device", "cpu")
    assert done.code == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "Orbax" in line]
    assert len(lines) == 1 and lines[0].startswith("note: skipped 2 folders, each an Orbax checkpoint folder"), lines
    assert "checkpoint_10, checkpoint_20" in lines[0]
