"""Defects found by the second review of the twelfth session's last commits (compare's cross-run overlap,
outputs to /dev/stdout and other streams), each as the behaviour that was wrong."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli import report
from fdl_cli.spectral import eigenspace_overlap
from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreWriter
from tests.test_analyze import fdl
from tests.test_report import N_OUTPUTS, SCALARS, make_store

# ------------------------------------------------------------------------------- compare's overlap


def _store_with_ranks(path: Path, columns: dict[int, int], seed: int, overlap_k: int | None = None) -> Path:
    """A store whose checkpoint at each step holds `columns[step]` eigenfunctions (0: rank 0), C = 2,
    analysed with `--overlap-k overlap_k` when given."""
    anchors = 16
    x = np.linspace(-1.0, 1.0, anchors)
    probe = ProbeInfo(name="train", sha256="a" * 64, n=anchors, task="regression", n_outputs=2,
                      anchor_x=x[:, None], anchor_y=np.sin(x)[:, None])
    provenance: dict[str, Any] = {"model": "model.py:build", "layers": ["fc1"], "host": "testhost",
                                  "fdl_version": "0.1.0"}
    if overlap_k is not None:
        provenance["options"] = {"overlap_k": overlap_k}
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step, k in columns.items():
            rng = np.random.default_rng(seed + step)
            series = SeriesEntry(
                probe="train", layer="fc1", scalars={"n_outputs": 2, "rank": k, "d_lr": 0.5},
                eigenvalues=np.ones(k), eigenvectors=rng.normal(size=(8, k)),
                eigenfunctions=rng.normal(size=(anchors, k)), utility=np.full(k, 1.0 / max(k, 1)),
            )
            writer.add(CheckpointEntry(step=step, path=f"ckpt/{step}.pt", sha256=f"{step:064x}", series=(series,)))
    return path


def test_a_step_of_rank_0_does_not_set_the_cross_overlaps_k(tmp_path: Path) -> None:
    """A checkpoint of rank 0 (no eigenfunction stored) has no overlap A·B ("—"), but its k of 0 was
    taken for the k compared: "eigenspace overlap A·B (top 0–2)" and a note "compares the top 0
    eigenfunctions, not the top 2: run A stores 0 a checkpoint"."""
    a = _store_with_ranks(tmp_path / "a.h5", {0: 4, 1: 0, 2: 4}, seed=0)
    b = _store_with_ranks(tmp_path / "b.h5", {0: 4, 1: 4, 2: 4}, seed=10)
    result = fdl("compare", a, b, "--overlap-steps", "all")
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split()[-1] for line in lines if line.lstrip().startswith(("0 ", "1 ", "2 "))][1] == "—"
    assert [line.split(":")[0] for line in lines if line.startswith("eigenspace overlap")] == [
        "eigenspace overlap A·B (top C)"
    ]
    assert not [line for line in lines if "the cross-run overlap compares" in line]
    with report.opened_run(a) as run_a, report.opened_run(b) as run_b:
        comparison = report.compare_runs(run_a, run_b, overlap_steps=None)
    assert comparison.overlap_label == "top C" and [step.overlap is None for step in comparison.steps] == [
        False, True, False
    ]
    # the rank-0 step is named as the one where the overlap is not measured, and no note about a smaller k
    notes = report.comparison_to_dict(comparison)["notes"]
    assert len(notes) == 1 and notes[0].startswith("the cross-run overlap is not measured at 1 step of the 3 "), notes


def test_fewer_than_run_as_overlap_k_are_not_named_its_overlap_k(tmp_path: Path) -> None:
    """Run A analysed with --overlap-k 3, run B storing 2 columns: the line said "(top 2, run A's
    --overlap-k)" above a note saying run A's k is 3."""
    a = _store_with_ranks(tmp_path / "a.h5", {0: 4, 1: 4}, seed=0, overlap_k=3)
    b = _store_with_ranks(tmp_path / "b.h5", {0: 2, 1: 2}, seed=10)
    result = fdl("compare", a, b)
    assert result.code == 0, result.stderr
    assert "eigenspace overlap A·B (top 2): min" in result.stderr
    assert ("note: the cross-run overlap compares the top 2 eigenfunctions, not the top 3: run B stores 2 a "
            "checkpoint (its --top-k / --overlap-k, or its rank)") in result.stderr
    c = _store_with_ranks(tmp_path / "c.h5", {0: 3, 1: 3}, seed=20)
    assert "eigenspace overlap A·B (top 3, run A's --overlap-k): min" in fdl("compare", a, c).stderr


def test_a_null_n_outputs_record_takes_c_from_the_probe(tmp_path: Path) -> None:
    """A record whose n_outputs is null had its cross-run overlap taken over the top 1 eigenfunction,
    printed as "top C": C is the probe's n_outputs, which the store records for every probe."""
    null = {step: {**scalars, "n_outputs": None} for step, scalars in SCALARS.items()}
    a = make_store(tmp_path / "a.h5", scalars=null)
    b = make_store(tmp_path / "b.h5", seed=1)
    with report.opened_run(a) as run_a, report.opened_run(b) as run_b:
        assert all(record["n_outputs"] is None for record in run_a.series[0].records)
        comparison = report.compare_runs(run_a, run_b, overlap_steps=None)
        expected, top_1 = (
            [
                eigenspace_overlap(run_a.reader.array(step.match.step_a, "eigenfunctions"),
                                   run_b.reader.array(step.match.step_b, "eigenfunctions"), k=k)
                for step in comparison.steps
            ]
            for k in (N_OUTPUTS, 1)
        )
    assert comparison.overlap_label == "top C"
    assert [step.overlap for step in comparison.steps] == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(top_1, abs=1e-3)  # (O_1 would not pass)


# ------------------------------------------------------------------------------- outputs to streams


CODE = "from fdl_cli.cli import main; main()"


def _fdl_process(*args: Any, stdout: Any, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """fdl in a process of its own whose stdout is `stdout` (a file the test opened, or PIPE)."""
    # a real process, not a warm one: report and export never import torch
    return subprocess.run(
        [sys.executable, "-c", CODE, *(str(a) for a in args)], stdout=stdout, stderr=subprocess.PIPE,
        timeout=timeout, cwd=Path(__file__).resolve().parents[1],
    )


def test_a_link_to_dev_stdout_is_appended_to(tmp_path: Path) -> None:
    """`--out out.csv` where out.csv is a link to /dev/stdout, run with `>> log.csv`: the log was
    replaced (eigenvalues, written through a file beside it) or truncated (trajectories, --html)."""
    store = make_store(tmp_path / "run.h5")
    link = tmp_path / "out.csv"
    link.symlink_to("/dev/stdout")
    log = tmp_path / "log.txt"
    for args in (["export", store, "--what", "eigenvalues", "--format", "csv", "--out", link],
                 ["export", store, "--what", "trajectories", "--format", "csv", "--out", link],
                 ["report", store, "--html", link]):
        log.write_text("first line\n")
        with log.open("a") as stream:
            result = _fdl_process(*args, stdout=stream)
        assert result.returncode == 0, result.stderr
        text = log.read_text()
        assert text.startswith("first line\n") and len(text) > 100, text[:200]
        if args[0] == "export":
            assert text == "first line\n" + fdl(*args[:-2]).stdout


def test_a_file_under_dev_that_is_no_stream_is_replaced(tmp_path: Path) -> None:
    """A regular file that lies under /dev (a RAM disk, /dev/shm) was appended to like /dev/stdout:
    an export written there twice held two CSV tables."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    store = make_store(tmp_path / "run.h5")
    folder = shm / f"fdl-test-{os.getpid()}"
    folder.mkdir()
    try:
        out = folder / "eigenvalues.csv"
        trajectories = folder / "trajectories.csv"
        for _ in range(2):
            assert fdl("export", store, "--what", "eigenvalues", "--format", "csv", "--out", out).code == 0
            assert fdl("export", store, "--what", "trajectories", "--format", "csv", "--out", trajectories).code == 0
        assert out.read_text() == fdl("export", store, "--what", "eigenvalues", "--format", "csv").stdout
        assert trajectories.read_text() == fdl("export", store, "--what", "trajectories", "--format", "csv").stdout
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def _npz_members(data: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            name.removesuffix(".npy"): np.lib.format.read_array(archive.open(name)) for name in archive.namelist()
        }


def test_npz_to_dev_stdout_appended_to_a_file_keeps_its_first_lines(tmp_path: Path) -> None:
    """`--format npy --out /dev/stdout >> file` opened /dev/stdout "wb", truncating the file the shell
    opened for appending (its first bytes lost); appended, the archive is readable after them, and
    one written alone (`> file`) loads with np.load."""
    store = make_store(tmp_path / "run.h5")
    reference = tmp_path / "reference.npz"
    assert fdl("export", store, "--what", "eigenvalues", "--format", "npy", "--out", reference).code == 0
    expected = dict(np.load(reference))
    log = tmp_path / "log.bin"
    log.write_bytes(b"first line\n")
    with log.open("ab") as stream:
        result = _fdl_process("export", store, "--what", "eigenvalues", "--format", "npy", "--out", "/dev/stdout",
                              stdout=stream)
    assert result.returncode == 0, result.stderr
    data = log.read_bytes()
    assert data.startswith(b"first line\nPK")
    members = _npz_members(data)
    assert sorted(members) == sorted(expected)
    assert all(np.array_equal(members[name], expected[name]) for name in expected)
    alone = tmp_path / "alone.npz"
    with alone.open("wb") as stream:
        assert _fdl_process("export", store, "--what", "eigenvalues", "--format", "npy", "--out", "/dev/stdout",
                            stdout=stream).returncode == 0
    loaded = np.load(alone)
    assert all(np.array_equal(loaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_out_dev_stdout_into_a_pipe_does_not_hang(tmp_path: Path, fmt: str) -> None:
    """`fdl export ... --out /dev/stdout | gzip` never ended: the check that the output is no HDF5
    store read its first bytes, from the pipe fdl was to write to."""
    store = make_store(tmp_path / "run.h5")
    result = _fdl_process("export", store, "--what", "eigenvalues", "--format", fmt, "--out", "/dev/stdout",
                          stdout=subprocess.PIPE, timeout=60)
    assert result.returncode == 0, result.stderr
    if fmt == "csv":
        assert result.stdout.decode() == fdl("export", store, "--what", "eigenvalues", "--format", "csv").stdout
    else:
        assert sorted(_npz_members(result.stdout)) == ["step_0", "step_100", "step_200", "steps"]


def test_out_a_fifo_does_not_hang(tmp_path: Path) -> None:
    """`--out` a FIFO that another process reads: fdl opened it for reading first (the HDF5 check),
    waiting for a writer that never came while its reader waited for fdl."""
    store = make_store(tmp_path / "run.h5")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        result = _fdl_process("export", store, "--what", "eigenvalues", "--format", "csv", "--out", fifo,
                              stdout=subprocess.DEVNULL, timeout=60)
        received, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert result.returncode == 0, result.stderr
    assert received.decode() == fdl("export", store, "--what", "eigenvalues", "--format", "csv").stdout
