"""Session 23, join follow-ups: `fdl inspect --model` says what the file's other weights are and when the weights
it lists are an averaged copy, as inspect without a model says; and a torchrun rank whose MASTER_ADDR:MASTER_PORT
is served by something that is no TCPStore gives up joining when FDL_TORCHRUN_TIMEOUT says (it hung in torch's
store client). Each test failed before its fix; those marked "guard" pin what the fix must not break."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fdl_cli import distributed
from tests import warm
from tests.cli_run import fdl_in_process as fdl
from tests.test_distributed import REPO, _args, _make_run
from tests.test_io_fixes import MODEL
from tests.test_s16_ecosystems import _mmengine_run, _sd
from tests.test_s23_eco import _weight_averaging_run
from tests.tiny_models import mlp

# -- 1. inspect --model says the file's other weights, and that the weights are an EMA's ---------------------------


def test_inspect_with_a_model_of_lightnings_weight_averaging_says_the_weights_are_the_averaged_ones(
        tmp_path: Path) -> None:
    """1. With --model, inspect listed the modules and said nothing of `current_model_state`, nor that the
    weights put in the model (and analysed) are the averaged ones, which it says without --model."""
    run = tmp_path / "checkpoints"
    _weight_averaging_run(run)
    shown = fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stderr.splitlines()
    assert ("other weights in the file: current_model_state (--weights NAME lists or analyses those instead)"
            in lines), shown.stderr
    assert ("epoch=0-step=100.ckpt is Lightning's with its WeightAveraging callback, which saves the averaged "
            "weights under 'state_dict' and the trained model's under 'current_model_state': fdl analyses the "
            "averaged ones; --weights current_model_state analyses the trained model's") in lines, shown.stderr
    listed = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] == "lightning" and listed["other_weights"] == ["current_model_state"]
    assert listed["default_layer"] == "2:input"  # the listing's own keys as before
    trained = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--model", MODEL, "--weights",
                             "current_model_state", "--json").stdout)
    assert trained["weights_averaged_by"] is None and trained["other_weights"] == []


def test_inspect_with_a_model_of_mmengines_ema_hook_says_the_weights_are_the_emas(tmp_path: Path) -> None:
    """1. mmengine's EMAHook swaps the EMA's weights into state_dict, the trained model's into ema_state_dict."""
    run = tmp_path / "work_dir"
    _mmengine_run(run, ema=True)
    shown = fdl("inspect", run / "epoch_1.pth", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert ("epoch_1.pth is mmengine's with its EMAHook, which saves the EMA's weights under 'state_dict' and the "
            "trained model's under 'ema_state_dict': fdl analyses the EMA's; --weights ema_state_dict analyses the "
            "trained model's") in shown.stderr.splitlines(), shown.stderr
    listed = json.loads(fdl("inspect", run / "epoch_1.pth", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] == "mmengine" and listed["other_weights"] == ["ema_state_dict"]


def test_inspect_with_a_model_beside_an_ema_copy_names_the_copy_and_says_nothing_of_averaged_weights(
        tmp_path: Path) -> None:
    """1. The model's own weights beside an EMA of its own entry: the copy is named, the weights are not averaged;
    (guard) a file without a copy says neither."""
    torch.save({"state_dict": _sd(1), "state_dict_ema": mlp(seed=1).state_dict()}, tmp_path / "ema_7.pt")
    shown = fdl("inspect", tmp_path / "ema_7.pt", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert "other weights in the file: state_dict_ema (--weights NAME" in shown.stderr
    assert "fdl analyses" not in shown.stderr
    listed = json.loads(fdl("inspect", tmp_path / "ema_7.pt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] is None and listed["other_weights"] == ["state_dict_ema"]
    torch.save(_sd(1), tmp_path / "plain_7.pt")
    plain = fdl("inspect", tmp_path / "plain_7.pt", "--model", MODEL)
    assert plain.returncode == 0 and "other weights" not in plain.stderr and "fdl analyses" not in plain.stderr
    listed = json.loads(fdl("inspect", tmp_path / "plain_7.pt", "--model", MODEL, "--json").stdout)
    assert listed["weights_averaged_by"] is None and listed["other_weights"] == []


# -- 2. a rank joining at an address served by something that is no torch store ------------------------------------


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port where a program that is no torch store listens: it accepts every connection and says nothing (as a
    service speaking another protocol, which waits for its client to speak first); its port number."""
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    held.append(server.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        try:
            yield server.getsockname()[1]
        finally:
            for connection in held:
                connection.close()


def test_a_rank_whose_rendezvous_address_never_answers_gives_up_when_told(tmp_path: Path) -> None:
    """2. Rank 1's MASTER_ADDR:MASTER_PORT served by a program that accepts and says nothing: torch's store client
    waited for its answer for ever (over 60 s with FDL_TORCHRUN_TIMEOUT=3), in C++, where no Python can end it."""
    run = _make_run(tmp_path / "run")
    with _silent_server() as port:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "FDL_TORCHRUN_TIMEOUT": "1"}
        began = time.monotonic()
        try:
            done = warm.run([sys.executable, "-m", "fdl_cli", *_args(run, tmp_path / "s.h5")], env=env, cwd=REPO,
                            timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 1 waited on past FDL_TORCHRUN_TIMEOUT and its grace")
    took = time.monotonic() - began
    assert done.returncode == 1, done.stderr[-4000:]
    lines = done.stderr.splitlines()
    assert (f"error on rank 1: gave up after waiting 1 s for the other ranks to join the job at 127.0.0.1:{port} "
            "(MASTER_ADDR:MASTER_PORT) as rank 1 of 2 (the longest a rank of a torchrun job waits, "
            "FDL_TORCHRUN_TIMEOUT)") in lines, done.stderr[-4000:]
    assert (f"  got: torch was still joining after {1 + distributed.JOIN_GRACE_S:g} s, waiting for the job's "
            f"rendezvous store at 127.0.0.1:{port} (or another rank) to answer") in lines, done.stderr[-4000:]
    assert any(line.startswith("  fix: ") and "no other program listens on that port" in line
               and "FDL_TORCHRUN_TIMEOUT=SECONDS" in line for line in lines), done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "s.h5").exists()
    assert took < distributed.JOIN_GRACE_S + 1 + 30  # the wait, its grace, and starting Python and torch
