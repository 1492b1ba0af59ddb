"""Session 25: a count and its noun agree in what fdl says (`errors.counted`), as its summary's counts do.

Messages wrote "(s)" beside their counts: "1 CUDA GPU(s) visible", "lacks 1 shard(s)", "1 missing key(s)",
"1 shape mismatch(es)", "1 tensor(s) on the meta device", "1 regression target(s) per sample", "(and 1 more
step(s) so)", "(and 1 more file(s) so)", "on 2 distinct anchor point(s)"; and before a list whose length is known,
"layer(s) spare did not run", "--steps asks for step(s) 20", "unknown scalar field(s) ['dlr']", "lacks the
dataset(s) ['utility']", "probe(s) ['nope'] are not among the writer's probes". Each now says the singular for
one and the plural (with the verb's agreement) for more. Each message is pinned in both forms below, through its
smallest trigger (the function that words it where the real trigger needs GPUs).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.checkpoints import CheckpointRef, _call_factory, _key_report, _peek_hf_dir, _select
from fdl_cli.distributed import World, detect_world, device_for
from fdl_cli.errors import CheckpointError, FdlError, ModelError, ProbeError
from fdl_cli.extract import LayerSpec, _not_called, resolve_device
from fdl_cli.pipeline import _other_files, _read_at_other_steps, _stored_twice
from fdl_cli.probes import load_probe, validate_probe
from fdl_cli.report import CrossOverlaps
from fdl_cli.store import CheckpointEntry, SeriesEntry, StoreReader, StoreWriter
from tests.test_s18_device import _gpus
from tests.test_store import probes, provenance, random_entry, random_series, write

torch.set_num_threads(1)


# -- GPUs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "said"), [(1, "1 CUDA GPU visible: cuda:0"),
                                             (2, "2 CUDA GPUs visible: cuda:0 .. cuda:1")])
def test_a_gpu_index_past_the_visible_ones_counts_them(monkeypatch: pytest.MonkeyPatch, count: int,
                                                       said: str) -> None:
    _gpus(monkeypatch, count)
    with pytest.raises(ModelError) as caught:
        resolve_device("cuda:3")
    assert caught.value.got == said


@pytest.mark.parametrize(("count", "what", "got"), [
    (1, "this machine shows 1 CUDA GPU", "2 ranks, 1 GPU visible"),
    (2, "this machine shows 2 CUDA GPUs", "3 ranks, 2 GPUs visible"),
])
def test_more_torchrun_ranks_than_gpus_counts_them(monkeypatch: pytest.MonkeyPatch, count: int, what: str,
                                                   got: str) -> None:
    _gpus(monkeypatch, count)
    with pytest.raises(FdlError) as caught:
        device_for(World(rank=count, size=count + 1, local_rank=count), "cuda")
    assert caught.value.what.endswith(f"LOCAL_RANK={count}, but {what}")
    assert caught.value.got == got


@pytest.mark.parametrize(("count", "got"), [(1, "RANK=1, WORLD_SIZE=2, 1 CUDA GPU visible"),
                                            (2, "RANK=3, WORLD_SIZE=4, 2 CUDA GPUs visible")])
def test_a_rank_without_local_rank_past_the_gpus_counts_them(monkeypatch: pytest.MonkeyPatch, count: int,
                                                             got: str) -> None:
    _gpus(monkeypatch, count)
    with pytest.raises(FdlError) as caught:
        device_for(detect_world({"RANK": str(2 * count - 1), "WORLD_SIZE": str(2 * count)}), "cuda")
    assert caught.value.got == got


# -- checkpoints and models ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("present", "said"), [(("a.safetensors",), "lacks 1 shard"), ((), "lacks 2 shards")])
def test_a_sharded_checkpoint_lacking_shards_counts_them(tmp_path: Path, present: tuple[str, ...],
                                                         said: str) -> None:
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}))
    for name in present:
        (folder / name).write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        _peek_hf_dir(folder)
    assert caught.value.what == f"the sharded checkpoint {folder} {said}"


def test_missing_unexpected_and_misshapen_keys_are_counted() -> None:
    model = {"a": torch.Size([2]), "b": torch.Size([3]), "c": torch.Size([1]), "d": torch.Size([1])}
    one = _key_report(Path("w.pt"), model, {"b": torch.zeros(4), "c": torch.zeros(1), "d": torch.zeros(1),
                                            "x": torch.zeros(1)})
    assert one == "1 missing key: a; 1 unexpected key: x; 1 shape mismatch: b: checkpoint (4,) vs model (3,)"
    two = _key_report(Path("w.pt"), model, {"a": torch.zeros(1), "b": torch.zeros(4), "x": torch.zeros(1),
                                            "y": torch.zeros(1)})
    assert two == ("2 missing keys: c, d; 2 unexpected keys: x, y; "
                   "2 shape mismatches: a: checkpoint (1,) vs model (2,); b: checkpoint (4,) vs model (3,)")


@pytest.mark.parametrize(("bias", "said"), [(False, "1 tensor on the meta device, e.g. weight"),
                                            (True, "2 tensors on the meta device, e.g. weight")])
def test_a_model_built_on_the_meta_device_counts_its_tensors(bias: bool, said: str) -> None:
    with pytest.raises(ModelError) as caught:
        _call_factory(lambda: nn.Linear(2, 2, bias=bias, device="meta"), None, Path("w.pt"))
    assert caught.value.got == said


@pytest.mark.parametrize(("steps", "said"), [((0, 20), "--steps asks for step 20 which no checkpoint has"),
                                             ((20, 30), "--steps asks for steps 20, 30 which no checkpoint has")])
def test_steps_no_checkpoint_has_are_named_in_the_number_they_are(steps: tuple[int, ...], said: str) -> None:
    refs = [CheckpointRef(Path(f"step_{step}.pt"), step, "name", "state_dict") for step in (0, 10)]
    with pytest.raises(CheckpointError) as caught:
        _select(refs, steps=steps, every=None)
    assert caught.value.what == said


@pytest.mark.parametrize(("names", "said"), [
    (("spare",), "layer spare did not run in the model's forward pass: no hook on the module saw a call, so it is "
                 "unused, or the module around it"),
    (("spare", "other"), "layers spare, other did not run in the model's forward pass: no hook on these modules saw "
                         "a call, so each is unused, or the module around it"),
])
def test_layers_that_did_not_run_are_named_in_the_number_they_are(names: tuple[str, ...], said: str) -> None:
    modules = {name: nn.Linear(1, 1) for name in names}
    error = _not_called([LayerSpec(name, use_input=False) for name in names], modules, set())
    assert error.what.startswith(said), error.what


# -- probes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "said"), [(1, "has 1 regression target per sample"),
                                             (2, "has 2 regression targets per sample")])
def test_regression_targets_that_do_not_fit_are_counted(tmp_path: Path, width: int, said: str) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "r.npz"
    np.savez(path, x=rng.normal(size=(6, 3)).astype(np.float32), y=rng.normal(size=(6, width)) + 0.5)
    with pytest.raises(ProbeError) as caught:
        validate_probe(load_probe(path), n_outputs=3)
    assert f"(probe) {said} but the model has 3 outputs" in caught.value.what


# -- a store of other files, files at other steps, files stored twice ------------------------------------------


def _refs(count: int) -> list[tuple[int, CheckpointRef]]:
    return [(100 + n, CheckpointRef(Path(f"step_{n}.pt"), n, "name", "state_dict")) for n in range(count)]


@pytest.mark.parametrize(("count", "said"), [(2, "another file (and 1 more step so)"),
                                             (3, "another file (and 2 more steps so)")])
def test_a_store_of_other_files_counts_the_other_steps(count: int, said: str) -> None:
    pairs = [(n, f"a/step_{n}.pt", f"b/step_{n}.pt") for n in range(count)]
    error = _other_files(Path("s.h5"), pairs, "0" * 64, "1" * 64)
    assert error.what.endswith(f"this run's step 0 is b/step_0.pt, {said}")


@pytest.mark.parametrize(("count", "said"), [(2, "(and 1 more file so)"), (3, "(and 2 more files so)")])
def test_files_read_at_other_steps_are_counted(count: int, said: str) -> None:
    error = _read_at_other_steps(Path("s.h5"), _refs(count))
    assert error.what == (f"step_0.pt, which s.h5 analysed as step 100, is step 0 in this run (from its name) {said}: "
                          "the store would hold the same checkpoint at two steps")


@pytest.mark.parametrize(("count", "said"), [(4, "; and 1 more file so"), (5, "; and 2 more files so")])
def test_files_stored_twice_are_counted(count: int, said: str) -> None:
    error = _stored_twice(Path("s.h5"), _refs(count), ())
    assert error.what.startswith("s.h5 holds the same checkpoint file at two steps: step_0.pt at steps 0 and 100; "
                                 f"step_1.pt at steps 1 and 101; step_2.pt at steps 2 and 102{said} (stored")


@pytest.mark.parametrize(("files", "said"), [(4, "; and 1 more file so"), (5, "; and 2 more files so")])
def test_a_store_holding_files_twice_counts_them_in_its_warning(tmp_path: Path, files: int, said: str) -> None:
    entries = [random_entry(step) for step in range(2 * files)]
    for n in range(files):  # steps n and files + n: the same file
        for step in (n, files + n):
            entries[step] = CheckpointEntry(step, f"/runs/a/f{n}.pt", f"{n:064x}", entries[step].series)
    write(tmp_path / "s.h5", entries)
    with StoreReader(tmp_path / "s.h5") as reader:
        said_twice = [w for w in reader.warnings if "the same checkpoint file at two steps" in w]
    assert len(said_twice) == 1 and (f"/runs/a/f2.pt at steps 2, {files + 2}{said} (stored") in said_twice[0]


# -- the store's own checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("names", "said"), [(("dlr",), "unknown scalar field ['dlr']"),
                                             (("dlr", "nc"), "unknown scalar fields ['dlr', 'nc']")])
def test_unknown_scalar_fields_are_named_in_the_number_they_are(names: tuple[str, ...], said: str) -> None:
    series = random_series(np.random.default_rng(0))
    arrays = (series.eigenvalues, series.eigenvectors, series.eigenfunctions, series.utility)
    with pytest.raises(ValueError) as caught:
        SeriesEntry("train", "fc1", dict.fromkeys(names, 0.1), *arrays)
    assert str(caught.value).startswith(f"{said}; the known ones are")


@pytest.mark.parametrize(("dropped", "said"), [(("utility",), "lacks the dataset ['utility']"),
                                               (("eigenvalues", "utility"),
                                                "lacks the datasets ['eigenvalues', 'utility']")])
def test_a_group_lacking_datasets_names_them_in_the_number_they_are(tmp_path: Path, dropped: tuple[str, ...],
                                                                    said: str) -> None:
    write(tmp_path / "s.h5", [random_entry(step) for step in range(2)])
    with h5py.File(tmp_path / "s.h5", "r+") as store:
        for name in dropped:
            del store[f"checkpoints/step_1/train/fc2:input/{name}"]
    with StoreReader(tmp_path / "s.h5") as reader:
        damaged = [w for w in reader.warnings if "step 1" in w and "damaged" in w]
    assert len(damaged) == 1 and damaged[0].endswith(f"(ValueError: train/fc2:input {said})"), reader.warnings


@pytest.mark.parametrize(("unknown", "said"), [(("nope",), "probe ['nope'] is not among"),
                                               (("nope", "other"), "probes ['nope', 'other'] are not among")])
def test_a_writer_given_unknown_probes_names_them_in_the_number_they_are(tmp_path: Path, unknown: tuple[str, ...],
                                                                         said: str) -> None:
    entry = random_entry(0, tuple((name, "fc2:input") for name in ("train", *unknown)))
    with StoreWriter(tmp_path / "s.h5", provenance=provenance(), probes=probes()) as writer, \
            pytest.raises(ValueError) as caught:
        writer.add(entry)
    assert str(caught.value) == f"step 0: {said} the writer's probes ['test', 'train']"


# -- compare -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("points", "said"), [(1, "on 1 distinct anchor point, which the top 3 span whole"),
                                              (2, "on 2 distinct anchor points, which the top 3 span whole")])
def test_an_unmeasured_overlap_counts_the_anchor_points(points: int, said: str) -> None:
    note = CrossOverlaps(spanned={(points, 3)}).note()
    assert note is not None and f"the stores hold the eigenfunctions {said} (the overlap" in note
