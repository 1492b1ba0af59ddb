"""Resuming stores that hold, or would hold, one checkpoint file at two steps (session 19, tiny MLPs on the CPU).

- A store written before fdl recorded file signatures, resumed with step options that read a stored file
  at a step past every stored step (another --step-offset or --step-regex): the file was analysed again and
  stored a second time, exit 0, where a store with signatures refuses it (session 18). Now hashed and
  refused alike.
- A store already damaged so by an fdl before session 18 (a file stored at two steps): every resume was
  refused (whichever step options), with a fix that could not work, and only --overwrite, which computes
  everything again, went on. The error now names the steps and `--drop` of the steps this run does not
  read, which removes them (and compares the checkpoints after them with the one before again), keeping
  every other checkpoint as stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.store import StoreReader
from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_reliability_inputs import fdl as _fdl

torch.set_num_threads(1)


def fdl(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """`fdl ARGV` in this process, as the console script runs it: (exit status, stdout, stderr)."""
    return _fdl(capsys, *(str(arg) for arg in argv))


def _run(tmp_path: Path, steps: tuple[int, ...] = (0, 10, 20)) -> tuple[Path, Path]:
    """A folder of step_<step>.safetensors (distinct weights) and a probe."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate(steps):
        save_file(_weights(index), str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return folder, probe


def _steps(store: Path) -> list[int]:
    with StoreReader(store) as reader:
        return [record["step"] for record in reader.records()]


def _drop_signatures(store: Path) -> None:
    """Make `store` a store written before fdl recorded file signatures."""
    with h5py.File(store, "r+") as handle:
        for group in handle["checkpoints"].values():
            del group.attrs["file_signature"]


# ------------------------------------------------------------- a store without signatures, a file read later


def _restarted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """run1: steps 0, 10, 20; run2: the job restarted after step 20 with its step count reset, its step_10 and
    step_20 the steps 30 and 40 (`--step-offset run2=20`); and the probe."""
    run1, probe = _run(tmp_path)
    run2 = tmp_path / "run2"
    run2.mkdir()
    for index, step in enumerate((10, 20)):
        save_file(_weights(3 + index), str(run2 / f"step_{step}.safetensors"))
    return run1, run2, probe


@pytest.mark.parametrize("signatures", [True, False], ids=["signatures", "no-signatures"])
def test_a_stored_file_read_past_every_stored_step_is_refused_with_or_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signatures: bool
) -> None:
    """Stored with `--step-offset run2=20` (steps 0 .. 40), resumed with run2=100: run2's files, unchanged,
    at steps 110 and 120, after every stored step. Refused when the store recorded signatures (session 18);
    a store written before them analysed both again and stored each at a second step, exit 0."""
    run1, run2, probe = _restarted(tmp_path)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    assert _steps(out) == [0, 10, 20, 30, 40]
    if not signatures:
        _drop_signatures(out)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=100")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 110 in this run "
            "(from its name + 100, --step-offset) (and 1 more file(s) so)") in flat, flat
    assert out.read_bytes() == before


def test_a_file_rewritten_past_every_stored_step_is_no_refusal_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file training goes on rewriting (latest.safetensors, its step in its metadata) holds a later step
    now: with its content changed it is a new checkpoint, not a stored one read at another step, in a store
    without signatures as in one with."""
    folder, probe = _run(tmp_path, steps=(0,))
    latest = folder / "latest.safetensors"
    save_file(_weights(1), str(latest), metadata={"step": "10"})
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    assert _steps(out) == [0, 10]
    _drop_signatures(out)
    save_file(_weights(2), str(latest), metadata={"step": "20"})  # training saved step 20 over it
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, " ".join(err.split())
    assert _steps(out) == [0, 10, 20]


def test_a_stored_file_read_at_another_stored_step_without_signatures_names_both_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored with `--step-offset run2=20`, signatures not recorded, resumed with run2=10: run2/step_20
    (stored as 40) is read at 30, a stored step, and run2/step_10 (stored as 30) at 20. Said "holds other
    files' numbers ... restore the files", which sent the user to files that are as they were; with
    signatures it is the refusal that names both steps and the step options (session 18)."""
    run1, run2, probe = _restarted(tmp_path)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    _drop_signatures(out)
    before = out.read_bytes()
    (run1 / "step_20.safetensors").unlink()  # run2/step_10 read at 20 is then the only file of step 20
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=10")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 20 in this run "
            "(from its name + 10, --step-offset) (and 1 more file(s) so)") in flat, flat
    assert "other --step-offset / --step-regex options than the run that made the store" in flat
    assert "holds other files' numbers" not in flat
    assert out.read_bytes() == before
