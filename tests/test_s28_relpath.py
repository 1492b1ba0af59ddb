"""A store records each checkpoint's path as typed: after `cd exp && fdl analyze run`, `run/step_0.safetensors`,
relative to exp/. A later command from another folder (`fdl analyze exp/run/... --out exp/s.h5`) looked for that
path in its own folder, did not find it, and told the user the file "is gone" (and counted the stored files
"gone") while it sat where the store was made. Stored relative paths are looked for where they were typed (the
history row's working directory) and in the store's folder before anything is called gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from safetensors.torch import save_file

from tests.cli_run import REPO, fdl_in_process
from tests.tiny_models import mlp

MODEL = f"{REPO / 'tests' / 'tiny_models.py'}:mlp"
SMALL = ["--top-k", "4", "--anchor-size", "16", "--batch-size", "16"]
torch.set_num_threads(1)


def _fdl_process(cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` run in `cwd` (this checkout's fdl_cli) in a process of its own, never raising."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"}
    return subprocess.run([sys.executable, "-m", "fdl_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, check=False, timeout=300)


def _fdl(cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` run in `cwd`, as `_fdl_process` answers, in this process (the relative paths are read against
    the working directory, which `fdl_in_process` sets; test_s30_ci's moved run keeps a process of its own)."""
    with mock.patch.dict(os.environ, {"COLUMNS": "1000"}):
        return fdl_in_process(*args, cwd=cwd)


def _exp(tmp_path: Path, out: str = "s.h5") -> Path:
    """tmp/exp/run/step_{0,10,20}.safetensors and tmp/exp/probe.npz, analysed from tmp/exp as
    `fdl analyze run --out OUT` (so the store records `run/step_0.safetensors`)."""
    exp = tmp_path / "exp"
    (exp / "run").mkdir(parents=True)
    for seed, step in enumerate((0, 10, 20)):
        weights = {k: v.contiguous() for k, v in mlp(seed=seed).state_dict().items()}
        save_file(weights, str(exp / "run" / f"step_{step}.safetensors"))
    rng = np.random.default_rng(1)
    np.savez(exp / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    done = _fdl(exp, "analyze", "run", "--model", MODEL, "--probe", "probe.npz", "--out", out, *SMALL)
    assert done.returncode == 0, done.stderr
    return exp


def _resume_without_reference(tmp_path: Path, out: str) -> subprocess.CompletedProcess[str]:
    """From tmp/: the newest checkpoint alone into the store, so the reference (step 0) is not among the run's."""
    return _fdl(tmp_path, "analyze", "exp/run/step_20.safetensors", "--model", MODEL, "--probe", "exp/probe.npz",
                "--out", out, *SMALL)


def test_a_reference_left_out_is_not_called_gone_from_another_folder(tmp_path: Path) -> None:
    _exp(tmp_path)
    done = _resume_without_reference(tmp_path, "exp/s.h5")
    assert done.returncode == 1
    assert "was analysed with step 0 as the reference, which none of this run's checkpoints has" in done.stderr
    assert "gone" not in done.stderr, done.stderr
    assert "this run leaves out or reads at another step" in done.stderr
    # the message says which folder the stored relative path is relative to, and where the file is
    assert f"run/step_0.safetensors (relative to {tmp_path / 'exp'}" in done.stderr, done.stderr


def test_a_store_outside_the_folder_it_was_made_from_finds_its_files_through_the_history(tmp_path: Path) -> None:
    """`cd exp && fdl analyze run --out ../s.h5`: the store's folder is not the one the paths are relative to; the
    history row records the working directory."""
    _exp(tmp_path, out="../s.h5")
    done = _resume_without_reference(tmp_path, "s.h5")
    assert done.returncode == 1
    assert "gone" not in done.stderr, done.stderr
    assert f"run/step_0.safetensors (relative to {tmp_path / 'exp'}" in done.stderr, done.stderr


def test_a_reference_really_gone_is_said_so_and_where_it_was_looked_for(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    (exp / "run" / "step_0.safetensors").unlink()
    done = _resume_without_reference(tmp_path, "exp/s.h5")
    assert done.returncode == 1
    assert "the store's step 0 is run/step_0.safetensors, which is gone" in done.stderr, done.stderr
    assert str(tmp_path / "exp" / "run" / "step_0.safetensors") in done.stderr
    # step 10's file is there (relative to exp/): only the reference's is counted gone
    assert "without the stored checkpoint whose file is gone" in done.stderr, done.stderr
