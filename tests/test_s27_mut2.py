"""Mutation testing, second pass over session 26's additions: each test here kills a mutant that every earlier test
(tests/test_s27_mut.py's too) let live, or pins a fix of what such a mutant showed, and asserts what the user is
told or given."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli import signals
from fdl_cli.errors import FdlError, ModelError, StoreError
from fdl_cli.extract import LayerSpec, hooked, padded_sequences
from fdl_cli.report import writing
from fdl_cli.store import CheckpointEntry, SeriesEntry, StoreReader, StoreWriter
from tests.cli_run import REPO
from tests.test_s26_polish import commit_refused_by
from tests.test_s26_rev_dcp import _blob, _tensors
from tests.test_s27_mut import _forged
from tests.test_store import probes, provenance

# ------------------------------------------------ dcp: two entries for one place, a list with a gap


def test_two_storage_entries_for_one_chunk_are_refused_by_name(tmp_path: Path) -> None:
    """Two storage_data entries for the chunk of model.w at [0] (a forged .metadata: torch's dict holds one): the
    later one was read, silently, as the tensor (here 9s where the first entry's bytes hold 0..3)."""
    def change(metadata: Any) -> None:
        shard = tmp_path / "step-3" / "__0_0.distcp"
        before, other = shard.read_bytes(), _blob(torch.full((4,), 9.0))
        shard.write_bytes(before + other)
        index = next(index for index in metadata.storage_data if index.fqn == "model.w")
        twin = dataclasses.replace(index, fqn="model.x")  # renamed model.w in the pickle's bytes below
        metadata.storage_data[twin] = dataclasses.replace(metadata.storage_data[index], offset=len(before),
                                                          length=len(other))
        pickled = pickle.dumps(metadata)
        assert pickled.count(b"model.x") == 1
        (tmp_path / "step-3" / ".metadata").write_bytes(pickled.replace(b"model.x", b"model.w"))
        raise _Written

    with pytest.raises(_Written):
        _forged(tmp_path / "step-3", change)
    with pytest.raises(FdlError) as caught:
        _tensors(tmp_path / "step-3")
    said = " ".join(str(caught.value).split())
    assert "cannot read the torch.distributed.checkpoint folder" in said, said
    assert "two storage entries for the chunk of model.w at [0]" in said, said


class _Written(Exception):
    """`_forged`'s change wrote the .metadata itself (its bytes edited after pickling)."""


def test_two_items_at_one_place_are_refused_by_name(tmp_path: Path) -> None:
    """planner_data placing the step where model.w lies: one of them was dropped, silently."""
    said = _forged(tmp_path / "step-3", lambda metadata: metadata.planner_data.__setitem__("step", ("model", "w")))
    assert "its .metadata places two items at the place of step" in said, said


def test_a_list_saved_with_a_gap_in_its_indices_is_read_as_a_dict(tmp_path: Path) -> None:
    """Items placed at ("extra", 0) and ("extra", 2): not a list (no item 1), so kept a dict; taken as a list of
    two, item 2 was looked up and raised KeyError: 2, a traceback."""
    folder = tmp_path / "step-3"

    def change(metadata: Any) -> None:
        step = next(index for index in metadata.storage_data if index.fqn == "step")
        for place in (0, 2):
            name = f"extra.{place}"
            metadata.state_dict_metadata[name] = metadata.state_dict_metadata["step"]
            metadata.storage_data[dataclasses.replace(step, fqn=name)] = metadata.storage_data[step]
            metadata.planner_data[name] = ("extra", place)
        (folder / ".metadata").write_bytes(pickle.dumps(metadata))
        raise _Written

    with pytest.raises(_Written):
        _forged(folder, change)
    assert {name: tensor.tolist() for name, tensor in _tensors(folder).items()} == {"w": [0.0, 1.0, 2.0, 3.0]}


def test_a_shard_name_holding_a_nul_byte_is_said_missing_not_a_traceback(tmp_path: Path) -> None:
    """No file has a NUL in its name: os.stat raised ValueError ("embedded null byte") when fdl looked whether
    the shard is a named pipe."""
    def change(metadata: Any) -> None:
        for info in metadata.storage_data.values():
            object.__setattr__(info, "relative_path", "__0\x00_0.distcp")

    said = _forged(tmp_path / "step-3", change)
    assert "the shard __0\x00_0.distcp that its .metadata names is not in it" in said, said


# ------------------------------------------------ errors: a read-only file system


def test_a_report_refused_by_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    """EROFS (a file system mounted read-only, or remounted so by the kernel after a disk error): it was told as
    "did not let this user write", sending the user after permissions."""
    with pytest.raises(FdlError) as caught, writing(tmp_path / "report.html"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert caught.value.got == ("Read-only file system: the file system there is read-only (mounted so, or "
                                "remounted so by the kernel after a disk error: `dmesg` says which)")
    assert caught.value.fix == "choose another path on a file system this user can write"


def test_a_commit_refused_by_a_read_only_file_system_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = commit_refused_by(errno.EROFS, tmp_path, monkeypatch)
    assert refused.got is not None and refused.got.endswith(
        "while writing the store's updated copy: the file system there is read-only (mounted so, or remounted so by "
        "the kernel after a disk error: `dmesg` says which)")
    assert refused.fix == "choose another --out on a file system this user can write, then run again"


# ------------------------------------------------ signals: a held signal delivered once; default and ignored ones


def test_a_signal_delivered_at_a_safe_point_is_not_delivered_again_on_the_way_out() -> None:
    """The store's commit delivers a held Ctrl-C where HDF5 is not in the middle of a write (`deliver`), then
    `deferred` delivers on the way out: a handler that does not raise ran twice were the signal kept."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with signals.deferred() as held_back:
            signal.raise_signal(signal.SIGINT)
            held_back.deliver()
            assert seen == [signal.SIGINT]
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_signal_stays_ignored_while_held_back() -> None:
    """SIGTERM ignored (SIG_IGN, as `nohup` and some launchers leave it): not held back to be delivered (its
    handler, an int, is nothing to call: TypeError), and still ignored afterwards."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals.deferred() as held_back:
            signal.raise_signal(signal.SIGTERM)
            assert held_back.signum is None
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_at_its_default_action_ends_the_process_at_once_while_held_back(tmp_path: Path) -> None:
    """SIGTERM at its default action (under torchrun): it ends the process there and then, as documented, not
    after the commit (nor, delivered, with a TypeError)."""
    code = textwrap.dedent("""
        import signal, sys
        from fdl_cli import signals
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with signals.deferred():
            signal.raise_signal(signal.SIGTERM)
            print("survived the signal", flush=True)
        print("after", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGTERM and done.stdout == "" and "Traceback" not in done.stderr, done


# ------------------------------------------------ store: a filter named, an empty array read


def test_a_filter_this_hdf5_lacks_is_named_by_its_name_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset compressed with deflate read by an HDF5 without it (filter_avail says so): its name is said with
    its number, which alone a user cannot look up."""
    path = tmp_path / "run.h5"
    _store_with_ranks(path, [4])
    with h5py.File(path, "r+") as handle:
        name = next(f"checkpoints/{step}/train/fc/eigenvalues" for step in handle["checkpoints"])
        values = handle[name][()]
        del handle[name]
        handle.create_dataset(name, data=values, compression="gzip")
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != h5py.h5z.FILTER_DEFLATE)
    with StoreReader(path) as reader, pytest.raises(StoreError) as caught:
        reader.arrays(0)
    assert f"its /{name} is compressed with the HDF5 filter 1 (deflate), which this HDF5 does not have" in str(
        caught.value)


def _store_with_ranks(path: Path, ranks: list[int]) -> None:
    """A store of one series, its checkpoint i of rank ranks[i] (0: no eigenvalue, eigenvector or eigenfunction,
    as fdl stores a layer whose features do not vary)."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, provenance=provenance(), probes=probes(), overwrite=True) as writer:
        for step, k in enumerate(ranks):
            series = SeriesEntry(probe="train", layer="fc", scalars={"n_outputs": 2, "rank": k, "d_lr": 0.5},
                                 eigenvalues=np.ones(k), eigenvectors=rng.normal(size=(8, k)),
                                 eigenfunctions=rng.normal(size=(16, k)), utility=np.full(k, 1.0 / max(k, 1)))
            writer.add(CheckpointEntry(step=step, path=f"ckpt/{step}.pt", sha256=f"{step:064x}", series=(series,)))


def test_the_empty_arrays_of_a_checkpoint_of_rank_0_are_read(tmp_path: Path) -> None:
    """fdl stores a checkpoint of rank 0 (features that do not vary) with empty arrays: they declare no data and
    the file holds none for them, which the check of declared against held data must not refuse."""
    path = tmp_path / "run.h5"
    _store_with_ranks(path, [3, 0])
    with h5py.File(path, "r") as handle:
        assert sorted(handle[f"checkpoints/{step}/train/fc/eigenvalues"].size for step in handle["checkpoints"]) == [
            0, 3]
    with StoreReader(path) as reader:
        arrays = reader.arrays(1)
        assert arrays.eigenvalues.shape == (0,) and arrays.eigenvectors.shape == (8, 0)
        assert arrays.eigenfunctions.shape == (16, 0) and arrays.utility.shape == (0,)
        assert reader.array(1, "eigenvalues") is not None


# ------------------------------------------------ extract: NAME:input of a call by keyword; nested sequences


def _input_features(module: nn.Module, **kwargs: torch.Tensor) -> torch.Tensor:
    """The features `NAME:input` takes of `module` called `module(**kwargs)` (the model: a holder of it)."""
    model = nn.Module()
    model.add_module("blk", module)
    with hooked(model, [LayerSpec("blk", use_input=True)]) as captured:
        module(**kwargs)
    return captured["blk:input"]


class _KeywordOnly(nn.Module):
    def forward(self, *, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * 2


class _Starred(nn.Module):
    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return sum(kwargs.values(), torch.zeros(()))


class _KeywordsOnly(nn.Module):
    def forward(self, **kwargs: torch.Tensor) -> torch.Tensor:
        return sum(kwargs.values(), torch.zeros(()))


def test_the_input_of_a_forward_with_a_keyword_only_first_parameter_is_taken() -> None:
    """`forward(self, *, hidden)` called `blk(hidden=h)`: h is its input, as for a parameter before the star."""
    h = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(_input_features(_KeywordOnly(), hidden=h), h)


@pytest.mark.parametrize(("module", "keyword"), [(_Starred(), "args"), (_KeywordsOnly(), "kwargs")])
def test_a_keyword_that_fills_a_starred_parameter_is_not_taken_for_the_input(module: nn.Module, keyword: str) -> None:
    """`forward(self, *args, **kwargs)` called `blk(args=h)`: h went to **kwargs, which names no input; nor is
    `blk(kwargs=h)` of `forward(self, **kwargs)` its first parameter (a dict of every keyword)."""
    with pytest.raises(ModelError) as caught:
        _input_features(module, **{keyword: torch.ones(2, 3)})
    assert str(caught.value).splitlines()[:2] == [
        "layer 'blk:input' has no tensor input to take features from",
        f"  got: the module was called with keyword arguments alone ({keyword}), none of them its forward's first "
        "parameter"]


def test_a_forward_without_a_signature_called_by_keyword_is_said_so_not_a_traceback() -> None:
    """A module whose forward is a builtin (torch.relu, a C extension's function): `inspect.signature` raises
    ValueError, which stopped the forward pass with a traceback."""
    module = nn.Module()
    module.forward = torch.relu  # type: ignore[method-assign]
    with pytest.raises(ModelError) as caught:
        _input_features(module, input=torch.ones(2, 3))
    assert "layer 'blk:input' has no tensor input to take features from" in str(caught.value)


def _encoder(width: int = 4) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, 1, 8, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()


def _nested() -> torch.Tensor:
    """Two sequences, of 2 and 3 positions of 4 features: what a layer inside an encoder given a padding mask gives."""
    return torch.nested.nested_tensor([torch.ones(2, 4), torch.ones(3, 4)])


def test_a_nested_output_of_a_module_named_like_an_encoder_but_outside_it_is_refused() -> None:
    """An encoder `enc` and a module `enc2` beside it: `enc2` is not inside `enc` (its name begins with `enc`, not
    `enc.`), so a nested tensor it gives is refused, not padded to `enc`'s length."""
    model = nn.Module()
    model.add_module("enc", _encoder())
    model.add_module("enc2", nn.Identity())
    with torch.no_grad(), padded_sequences(model) as padded:
        model.enc(torch.ones(2, 5, 4))
        assert padded("enc.layers.0", "enc.layers.0", _nested()).shape == (2, 5, 4)
        with pytest.raises(ModelError, match="layer 'enc2' gives a nested tensor"):
            padded("enc2", "enc2", _nested())


def test_a_nested_output_inside_nested_encoders_is_padded_to_the_inner_one_s_length() -> None:
    """An encoder `outer` holding another, `outer.inner`, that received sequences of 3: a layer of the inner one
    is padded to 3 (what the inner encoder pads its output to), not to the outer one's 6."""
    model = nn.Module()
    model.add_module("outer", _encoder())
    model.outer.add_module("inner", _encoder())
    with torch.no_grad(), padded_sequences(model) as padded:
        model.outer(torch.ones(2, 6, 4))
        model.outer.inner(torch.ones(2, 3, 4))
        assert padded("x", "outer.inner.layers.0", _nested()).shape == (2, 3, 4)
        assert padded("x", "outer.layers.0", _nested()).shape == (2, 6, 4)


def test_an_encoder_given_one_unbatched_sequence_records_no_length() -> None:
    """An encoder called on one sequence (T, d), unbatched, which torch never nests: its d is no sequence length,
    so a nested tensor said to lie inside it is refused, not padded to d."""
    model = nn.Module()
    model.add_module("enc", _encoder(width=8))
    with torch.no_grad(), padded_sequences(model) as padded:
        model.enc(torch.ones(3, 8))
        with pytest.raises(ModelError, match="layer 'enc.layers.0' gives a nested tensor"):
            padded("enc.layers.0", "enc.layers.0", _nested())
