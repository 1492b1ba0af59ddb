"""torch.distributed.checkpoint (DCP) folders, as FSDP, FSDP2 and torchtitan save them (session 26): a run of
them is analysed as the same weights saved as plain state_dicts, in one process or in shards of two ranks, and
their `.metadata` pickle is read without running code."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

from fdl_cli.checkpoints import discover_checkpoints, load_checkpoint
from fdl_cli.dcp import read_metadata
from fdl_cli.errors import UnsafeCheckpointError
from tests.ranks import torchrun
from tests.test_analyze import fdl
from tests.test_s15_formats import MODEL, _probe, _weights

REPO = Path(__file__).resolve().parents[1]
STEPS = (0, 10, 20)


def _save(state: dict[str, Any], folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process saves it all
        dcp.save(state, checkpoint_id=str(folder))
    return folder


def _optimizer_state(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"state": {name: {"exp_avg": torch.ones_like(value), "step": torch.tensor(3.0)}
                      for name, value in weights.items() if value.is_floating_point()},
            "param_groups": [{"lr": 0.1, "params": list(weights)}]}


def _dcp_run(run: Path, *, with_step: bool = True) -> Path:
    """A run as an FSDP training loop saves it: one folder per checkpoint, `{"model", "optim", "step"}`."""
    for step in STEPS:
        weights = _weights(step)
        state: dict[str, Any] = {"model": weights, "optim": _optimizer_state(weights)}
        if with_step:
            state["step"] = step
        _save(state, run / f"step-{step}")
    return run


def _plain_run(folder: Path) -> Path:
    folder.mkdir()
    for step in STEPS:
        torch.save(_weights(step), folder / f"step_{step}.pt")
    return folder


def _dump(store: Path) -> dict[str, Any]:
    """Every attribute and dataset of a store but those that tell where, when and from which files it was made."""
    items: dict[str, Any] = {}
    with h5py.File(store, "r") as handle:
        items.update({f"/@{k}": v for k, v in handle.attrs.items() if k not in ("created", "history", "sources")})

        def visit(name: str, node: Any) -> None:
            items.update({f"{name}@{k}": v for k, v in node.attrs.items()
                          if k not in ("history", "path", "sha256", "file_signature", "kind")})
            if isinstance(node, h5py.Dataset):
                items[name] = node[()]

        handle.visititems(visit)
    return items


def _assert_same_store(got: Path, expected: Path) -> None:
    mine, theirs = _dump(got), _dump(expected)
    assert sorted(mine) == sorted(theirs)
    arrays = 0
    for key, value in mine.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            assert value.dtype == theirs[key].dtype and value.shape == theirs[key].shape, key
            assert np.array_equal(value, theirs[key], equal_nan=value.dtype.kind == "f"), key
            arrays += 1
    assert arrays > 10


def _analyze(source: Path, out: Path, *extra: str) -> Any:
    return fdl("analyze", source, *MODEL, "--probe", _probe(out.with_suffix(".probe.pt")), "--out", out,
               "--device", "cpu", "--json", *extra)


# ----------------------------------------------------------------------------------------- one process


def test_a_dcp_run_gives_the_store_of_its_plain_state_dicts(tmp_path: Path) -> None:
    """An FSDP run's step-N/ folders (`.metadata` + `__0_0.distcp`) were refused with a conversion to run by
    hand for each; they are read as the training loop's dict they hold: the model's weights, the optimizer's
    state left out, the step its `step` entry."""
    run = _dcp_run(tmp_path / "run")
    found = discover_checkpoints([run])
    assert [(ref.step, ref.kind, ref.step_source) for ref in found.checkpoints] == [
        (step, "dcp", "metadata:step") for step in STEPS]
    loaded = load_checkpoint(found.checkpoints[1])
    assert loaded.state_dict is not None and loaded.state_dict.keys() == _weights(10).keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in _weights(10).items())
    done = _analyze(run, tmp_path / "dcp.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == list(STEPS)
    plain = _analyze(_plain_run(tmp_path / "plain"), tmp_path / "plain.h5")
    assert plain.code == 0, plain.stderr
    _assert_same_store(tmp_path / "dcp.h5", tmp_path / "plain.h5")


def test_the_step_comes_from_the_folder_name_without_a_step_entry(tmp_path: Path) -> None:
    run = _dcp_run(tmp_path / "run", with_step=False)
    (run / "step-10").rename(run / "checkpoint_10")
    found = discover_checkpoints([run])
    assert [(ref.step, ref.step_source, ref.path.name) for ref in found.checkpoints] == [
        (0, "name", "step-0"), (10, "name", "checkpoint_10"), (20, "name", "step-20")]
    nested = tmp_path / "job"
    nested.mkdir()
    run.rename(nested / "checkpoints")  # a level too deep: the error names the folder to give
    done = fdl("analyze", nested, *MODEL, "--probe", _probe(tmp_path / "p.pt"), "--out", tmp_path / "x.h5")
    assert done.code == 1 and f"fdl analyze {nested / 'checkpoints'}" in " ".join(done.stderr.split())


def test_fdl_inspect_lists_the_tensors_of_a_dcp_folder(tmp_path: Path) -> None:
    folder = _save({"model": _weights(1), "step": 1, "optim": _optimizer_state(_weights(1))}, tmp_path / "step-1")
    listed = fdl("inspect", folder)
    assert listed.code == 0, listed.stderr
    rows = [line.split("│")[1:-1] for line in listed.stderr.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows][:3] == [
        ["0", "weight", "[4, 1, 3, 3]", "float32", "36"], ["", "bias", "[4]", "float32", "4"],
        ["1", "weight", "[4]", "float32", "4"]]
    assert "total: 72 values in 9 tensors" in listed.stderr and "step: 1 (from its metadata's step)" in listed.stderr
    modules = fdl("inspect", folder, *MODEL)
    assert modules.code == 0 and "BatchNorm2d" in modules.stderr, modules.stderr


def test_a_shard_given_by_name_says_to_give_its_folder(tmp_path: Path) -> None:
    folder = _save({"model": _weights(1), "step": 1}, tmp_path / "step-1")
    done = _analyze(folder / "__0_0.distcp", tmp_path / "a.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert f"give the folder, {folder}" in " ".join(done.stderr.split())


# ---------------------------------------------------------------------------------------------- safety


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_metadata_naming_a_callable_is_refused_without_running_it(tmp_path: Path) -> None:
    """`.metadata` is a pickle: torch unpickles it whole (`pickle.load`). fdl's unpickler knows the metadata
    classes only, as records it builds itself, and refuses any other global before it is called, with or
    without --trust-pickle (nothing in a DCP folder needs it)."""
    folder = _save({"model": _weights(1), "step": 1}, tmp_path / "run" / "step-1")
    marker = tmp_path / "ran"
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    metadata.planner_data = {"model.x": _RunsCode(marker)}
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    for extra in ((), ("--trust-pickle",)):
        done = _analyze(tmp_path / "run", tmp_path / "a.h5", *extra)
        assert done.code == 1 and "Traceback" not in done.stderr
        said = " ".join(done.stderr.split())
        assert "posix.system" in said and "fdl refused to read it" in said, said
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        discover_checkpoints([folder])
    assert not marker.exists()


def test_an_item_that_pickles_an_object_is_never_unpickled(tmp_path: Path) -> None:
    """A dataloader's or a config's state beside the model is a torch.save of an object: fdl's restricted loader
    refuses it and the item is left out; the weights are read."""
    marker = tmp_path / "ran"
    folder = _save({"model": _weights(2), "step": 20, "dataloader": _RunsCode(marker)}, tmp_path / "step-20")
    loaded = load_checkpoint(discover_checkpoints([folder]).checkpoints[0], trust_pickle=True)
    assert loaded.ref.step == 20 and loaded.state_dict is not None
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in _weights(2).items())
    assert not marker.exists()


# ------------------------------------------------------------------------------------ damaged folders


def _rewrite_metadata(folder: Path, change: Any) -> None:
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    change(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _overlap(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.0.weight"]
    whole = entry.chunks[0]
    entry.chunks.append(ChunkStorageMetadata(offsets=whole.offsets, sizes=whole.sizes))


def _short(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.0.weight"]
    sizes = list(entry.chunks[0].sizes)
    sizes[0] -= 1
    entry.chunks[0] = ChunkStorageMetadata(offsets=entry.chunks[0].offsets, sizes=torch.Size(sizes))


@pytest.mark.parametrize(("damage", "said"), [
    ("missing", "the shard __0_0.distcp that its .metadata names is not in it"),
    ("truncated", "__0_0.distcp is cut short"),
    ("overlap", "two chunks of model.0.weight overlap"),
    ("short", "the chunks of model.0.weight hold"),
    ("garbage", ".metadata is not a readable pickle"),
])
def test_a_damaged_dcp_folder_is_a_bad_checkpoint_saying_what(tmp_path: Path, damage: str, said: str) -> None:
    run = _dcp_run(tmp_path / "run")
    folder = run / "step-10"
    shard = folder / "__0_0.distcp"
    if damage == "missing":
        (folder / "__1_0.distcp").write_bytes(shard.read_bytes())  # still a DCP folder, with the wrong shard
        shard.unlink()
    elif damage == "truncated":
        cut = read_metadata(folder)["model.5.bias"].chunks[0].start + 100  # within the model's last tensor
        shard.write_bytes(shard.read_bytes()[:cut])
    elif damage == "garbage":
        (folder / ".metadata").write_bytes(b"\x80\x04not a pickle")
    else:
        _rewrite_metadata(folder, _overlap if damage == "overlap" else _short)
    done = _analyze(run, tmp_path / "a.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    assert said in text and str(folder) in text, text
    assert [record["step"] for record in done.records] == [0, 20]  # the others are analysed


# --------------------------------------------------------------------------------- two ranks' shards

SHARDED = '''
import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,))
for source in sys.argv[2:]:
    state = torch.load(source, weights_only=True)
    placed = {k: distribute_tensor(v, mesh, [Shard(0)]) if v.dim() else v for k, v in state.items()}
    step = int(source.rsplit("_", 1)[1].split(".")[0])
    dcp.save({"model": placed, "step": step}, checkpoint_id=f"{sys.argv[1]}/step-{step}")
dist.barrier()
# Every file is written and closed once the barrier is passed: end here, not through gloo's teardown, which
# aborted a rank once on CI ("terminate called without an active exception", SIGABRT) after the work was done.
sys.stdout.flush(); sys.stderr.flush()
import os; os._exit(0)
'''


def test_two_ranks_shards_are_assembled_into_the_whole_tensors(tmp_path: Path) -> None:
    """FSDP2's layout: each rank saves its rows of each weight (a DTensor sharded on dim 0) to its own
    `__<rank>_0.distcp`; fdl places each chunk at its offsets."""
    plain = _plain_run(tmp_path / "plain")
    script = tmp_path / "save_sharded.py"
    script.write_text(SHARDED)
    # the ranks as torchrun starts them (`tests.ranks`): what is tested is torch's saving and fdl's reading
    done = torchrun(str(script), str(tmp_path / "run"), *(str(plain / f"step_{step}.pt") for step in STEPS),
                    direct=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "run" / "step-10"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    chunks = read_metadata(folder)["model.0.weight"].chunks
    assert sorted(chunk.file for chunk in chunks) == ["__0_0.distcp", "__1_0.distcp"]
    analysed = _analyze(tmp_path / "run", tmp_path / "dcp.h5")
    assert analysed.code == 0, analysed.stderr
    expected = _analyze(plain, tmp_path / "plain.h5")
    assert expected.code == 0, expected.stderr
    _assert_same_store(tmp_path / "dcp.h5", tmp_path / "plain.h5")
