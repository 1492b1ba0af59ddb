"""Session 23, small fixes: figure names unique for every store (also when compared case-insensitively),
`fdl inspect` saying that a file's `state_dict` holds an EMA's (averaged) weights, and a torchrun rank that
cannot join the process group (rendezvous address in use, no port, unset) said as an fdl error. Each test
failed before its fix; those marked "guard" pin what the fix must not break."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from fdl_cli import distributed
from fdl_cli.distributed import World
from fdl_cli.errors import FdlError
from fdl_cli.figures import series_suffixes
from tests import warm
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process as fdl
from tests.test_distributed import REPO, _args, _make_run
from tests.test_report import make_store
from tests.test_s16_ecosystems import _mmengine_run, _sd
from tests.test_s23_eco import _weight_averaging_run
from tests.tiny_models import mlp

# -- 1. figure names unique for every store ---------------------------------------------------------------------


def _folded(names: list[str]) -> set[str]:
    return {name.casefold() for name in names}


def test_series_numbered_into_the_name_of_another_series_take_their_place_again() -> None:
    """1. Layers a:b and a_b both clean to `_p-a_b` and were numbered `_p-a_b_1` and `_p-a_b_2`: the first then
    had the name of layer a_b_1's figures, one overwrote the other."""
    assert series_suffixes([("p", "a:b"), ("p", "a_b"), ("p", "a_b_1")]) == ["_p-a_b_1_1", "_p-a_b_2", "_p-a_b_1_3"]
    # however they chain, every name stays apart
    chained = [("p", "a"), ("p", "a_1"), ("p", "a"), ("p", "a_1_3"), ("p", "a_1_1")]
    assert len(_folded(series_suffixes(chained))) == len(chained)


def test_series_whose_names_differ_only_in_case_are_numbered() -> None:
    """1. Probes train and Train gave `_train-x` and `_Train-x`: one file on macOS's and Windows' default file
    systems, one report's figures overwrote the other's."""
    assert series_suffixes([("train", "x"), ("Train", "x")]) == ["_train-x_1", "_Train-x_2"]
    assert series_suffixes([("train", "fc"), ("train", "FC"), ("train", "fc1")]) == [
        "_train-fc_1", "_train-FC_2", "_train-fc1"]


def test_series_names_that_never_clashed_stay_as_they_were() -> None:
    """1 (guard). Today's names of a store whose names were apart."""
    assert series_suffixes([("train", "fc1"), ("train", "fc2"), ("test", "fc1")]) == [
        "_train-fc1", "_train-fc2", "_test-fc1"]
    assert series_suffixes([("train", "fc:input"), ("train", "fc_input"), ("train", "fc")]) == [
        "_train-fc_input_1", "_train-fc_input_2", "_train-fc"]


def _figures(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("trajectories") and path.suffix == ".png")


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_report_of_series_numbered_into_anothers_name_writes_one_figure_each(tmp_path: Path) -> None:
    """1. The report of a store of layers a:b, a_b and a_b_1 wrote two trajectories figures, the third series'
    over the first's; the names do not depend on --layer (a report of one series writes its own again)."""
    store = make_store(tmp_path / "run.h5", layers=("a:b", "a_b", "a_b_1"))
    plots = tmp_path / "plots"
    done = fdl("report", store, "--format", "csv", "--plots", plots)
    assert done.returncode == 0, done.stderr
    every = _figures(plots)
    assert every == ["trajectories_train-a_b_1_1.png", "trajectories_train-a_b_1_3.png",
                     "trajectories_train-a_b_2.png"]
    before = {name: hashlib.sha256((plots / name).read_bytes()).hexdigest() for name in every}
    one = fdl("report", store, "--layer", "a_b_1", "--format", "csv", "--plots", plots)
    assert one.returncode == 0, one.stderr
    assert _figures(plots) == every
    assert "removed" not in one.stderr
    assert {name for name in every
            if hashlib.sha256((plots / name).read_bytes()).hexdigest() == before[name]} >= {
        "trajectories_train-a_b_1_1.png", "trajectories_train-a_b_2.png"}  # the others' left as they were


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_report_of_layers_differing_in_case_writes_names_apart_on_a_case_insensitive_disk(tmp_path: Path) -> None:
    """1. Layers fc and FC: `_train-fc` and `_train-FC`, one file where case is not told apart."""
    store = make_store(tmp_path / "run.h5", layers=("fc", "FC"))
    plots = tmp_path / "plots"
    done = fdl("report", store, "--format", "csv", "--plots", plots)
    assert done.returncode == 0, done.stderr
    assert _figures(plots) == ["trajectories_train-FC_2.png", "trajectories_train-fc_1.png"]
    assert len(_folded(_figures(plots))) == 2


# -- 2. inspect says the weights listed are an EMA's ---------------------------------------------------------------


def test_inspect_of_lightnings_weight_averaging_says_the_weights_are_the_averaged_ones(tmp_path: Path) -> None:
    """2. Inspect listed `other weights in the file: current_model_state` and said nothing of the tensors listed
    (and analysed) being the averaged model's, as analyze's note says."""
    run = tmp_path / "checkpoints"
    _weight_averaging_run(run)
    shown = fdl("inspect", run / "epoch=0-step=100.ckpt")
    assert shown.returncode == 0 and "note: no model was given" in shown.stderr
    assert ("epoch=0-step=100.ckpt is Lightning's with its WeightAveraging callback, which saves the averaged "
            "weights under 'state_dict' and the trained model's under 'current_model_state': fdl analyses the "
            "averaged ones; --weights current_model_state analyses the trained model's") in shown.stderr.splitlines()
    listed = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--json").stdout)
    assert listed["weights_averaged_by"] == "lightning" and listed["other_weights"] == ["current_model_state"]
    # --weights current_model_state: the trained model's, no copy left and none averaged
    trained = json.loads(fdl("inspect", run / "epoch=0-step=100.ckpt", "--weights", "current_model_state",
                             "--json").stdout)
    assert trained["weights_averaged_by"] is None and trained["other_weights"] == []


def test_inspect_of_mmengines_ema_hook_says_the_weights_are_the_emas(tmp_path: Path) -> None:
    """2. mmengine's EMAHook swaps the EMA's weights into state_dict, the trained model's into ema_state_dict."""
    run = tmp_path / "work_dir"
    _mmengine_run(run, ema=True)
    shown = fdl("inspect", run / "epoch_1.pth")
    assert ("epoch_1.pth is mmengine's with its EMAHook, which saves the EMA's weights under 'state_dict' and the "
            "trained model's under 'ema_state_dict': fdl analyses the EMA's; --weights ema_state_dict analyses the "
            "trained model's") in shown.stderr.splitlines(), shown.stderr
    assert json.loads(fdl("inspect", run / "epoch_1.pth", "--json").stdout)["weights_averaged_by"] == "mmengine"


def test_inspect_of_a_model_beside_an_ema_copy_says_nothing_of_averaged_weights(tmp_path: Path) -> None:
    """2 (guard). The model's own weights beside an EMA of its own entry: the copy is the EMA."""
    torch.save({"state_dict": _sd(1), "state_dict_ema": mlp(seed=1).state_dict()}, tmp_path / "ema_7.pt")
    shown = fdl("inspect", tmp_path / "ema_7.pt")
    assert "other weights in the file: state_dict_ema (--weights NAME" in shown.stderr
    assert "fdl analyses" not in shown.stderr
    assert json.loads(fdl("inspect", tmp_path / "ema_7.pt", "--json").stdout)["weights_averaged_by"] is None


# -- 3. a rank that cannot join the process group ------------------------------------------------------------------


RANK1 = World(rank=1, size=2, local_rank=1)


@pytest.mark.parametrize("raised", [
    RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:144] Connection refused"),
    ValueError("invalid literal for int() with base 10: 'port'"),
])
def test_a_join_that_fails_otherwise_than_by_a_timeout_is_an_fdl_error(monkeypatch: pytest.MonkeyPatch,
                                                                      raised: Exception) -> None:
    """3. Neither a timeout nor a closed connection: torch's traceback reached the user."""
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("MASTER_PORT", "29511")
    with pytest.raises(FdlError) as caught, distributed.waiting(RANK1, "the other ranks to join the job", joining=True):
        raise raised
    assert caught.value.what == ("could not join the job's process group at 10.0.0.7:29511 (MASTER_ADDR:MASTER_PORT) "
                                 "as rank 1 of 2")
    assert caught.value.got == str(raised).split("] ")[-1]
    assert caught.value.fix is not None and "--rdzv-endpoint" in caught.value.fix
    assert "nothing was stored yet: run the same command again" in caught.value.fix


def test_a_failed_join_on_the_way_out_of_a_ctrl_c_stays_the_interrupt() -> None:
    """3 (guard). The interrupt is said as one, not as a join that failed."""
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught:
        try:
            raise interrupt
        finally:
            with distributed.waiting(RANK1, "the other ranks to join the job", joining=True):
                raise RuntimeError("Connection refused")
    assert caught.value is interrupt


def test_other_errors_of_a_collective_are_left_as_they_are() -> None:
    """3 (guard). Only the join says its failures so: a collective's ValueError is the program's own."""
    with pytest.raises(ValueError, match="^not a join$"), distributed.waiting(RANK1, "rank 0"):
        raise ValueError("not a join")


def test_rank_0_whose_rendezvous_port_is_in_use_says_so_and_leaves_the_store(tmp_path: Path) -> None:
    """3. MASTER_PORT taken by another program: rank 0's TCPStore cannot listen on it (torch's DistNetworkError
    traceback before); exit 1, the store as it was."""
    run = _make_run(tmp_path / "run")
    out = make_store(tmp_path / "s.h5")
    stored = out.read_bytes()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "FDL_TORCHRUN_TIMEOUT": "5"}
        # a warm child (tests/warm.py): a process of its own, without its own `import torch`
        done = warm.run([sys.executable, "-m", "fdl_cli", *_args(run, out)], env=env, cwd=str(REPO), timeout=90)
    assert done.returncode == 1, done.stderr[-4000:]
    lines = done.stderr.splitlines()
    assert (f"error on rank 0: could not join the job's process group at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT) "
            "as rank 0 of 2") in lines, done.stderr[-4000:]
    assert any(line.startswith("  got: ") and "EADDRINUSE" in line for line in lines), done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert out.read_bytes() == stored
