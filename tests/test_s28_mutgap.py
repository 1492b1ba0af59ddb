"""Mutants that outlived the whole suite (DCP byte ranges and chunk keys, the numpy dsyrk path of the moments, the
memory check's task, stepless copies' notes): each test here kills one, and asserts what the user is told or what
the store holds."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as torch_dcp
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import SavePlan, WriteItem, WriteItemType

from fdl_cli import moments, resources
from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.dcp import read_metadata
from fdl_cli.probes import dominant_class_note
from fdl_cli.regimes import classify_run, describe
from fdl_cli.report import r2_outputs_line, records_to_markdown
from fdl_cli.store import r2_output_fields
from tests.cli_run import fdl_in_process
from tests.test_analyze import fdl
from tests.test_s15_formats import _weights
from tests.test_s26_dcp import _analyze, _assert_same_store
from tests.test_s27_dcp import _forge_range, _run
from tests.test_s27_scale import _run as _scale_run
from tests.tiny_models import mlp

# ------------------------------------------------------------------------------------------ DCP byte ranges


def test_a_byte_range_of_two_counts_that_ends_past_2_63_is_refused_by_what_it_is(tmp_path: Path) -> None:
    """A start and a length each below 2**63 whose end is not: without the check of the end, the fingerprint's seek
    to the chunk's last bytes failed with the bare OS error "Invalid argument", which file and why unsaid."""
    run = _run(tmp_path)
    _forge_range(run / "step-10", "model.0.weight", offset=2**63 - 1, length=2**63 - 1)
    done = _analyze(run, tmp_path / "a.h5")
    text = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in done.stderr, text[-2000:]
    assert "a byte range of __0_0.distcp that does not end below 2**63" in text, text[-2000:]
    assert [record["step"] for record in done.records] == [0]


def test_a_shard_named_by_255_bytes_is_read(tmp_path: Path) -> None:
    """255 bytes is the longest name a file system gives a file: a shard so named is read, not refused as one no
    file can have."""
    run = _run(tmp_path)
    long_name = "s" * 248 + ".distcp"
    assert len(long_name.encode()) == 255
    folder = run / "step-10"
    (folder / "__0_0.distcp").rename(folder / long_name)
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    for index, info in list(metadata.storage_data.items()):
        metadata.storage_data[index] = dataclasses.replace(info, relative_path=long_name)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    done = _analyze(run, tmp_path / "a.h5")
    assert done.code == 0, done.stderr[-2000:]
    assert [record["step"] for record in done.records] == [0, 10]


def test_a_shard_cut_short_is_said_with_the_bytes_it_holds(tmp_path: Path) -> None:
    """"the file holds N" is the shard's size, which the user compares with the range the chunk lies at."""
    run = _run(tmp_path)
    shard = run / "step-10" / "__0_0.distcp"
    _forge_range(run / "step-10", "model.0.weight", length=2**40)
    done = _analyze(run, tmp_path / "a.h5")
    text = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in done.stderr, text[-2000:]
    assert f"the file holds {os.path.getsize(shard)}" in text, text[-2000:]


def test_a_chunk_shorter_than_the_bytes_sampled_is_said_to_be_unreadable(tmp_path: Path) -> None:
    """A chunk of 100 bytes at the shard's start (a damaged .metadata; torch's own are archives of a kilobyte or
    more): the fingerprint samples its 100 bytes, not 256 from before the file's start, which failed with a bare
    "Invalid argument"; the chunk is then named as unreadable."""
    run = _run(tmp_path)
    _forge_range(run / "step-10", "model.0.weight", offset=0, length=100)
    done = _analyze(run, tmp_path / "a.h5")
    text = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in done.stderr, text[-2000:]
    assert "the chunk of model.0.weight at [0, 0, 0, 0] in __0_0.distcp is not a readable tensor" in text, text[-2000:]


# ------------------------------------------------------------------------------ a tensor saved in columns


class _ByColumns(DefaultSavePlanner):
    """torch's own save, each tensor of two or more columns written as two chunks of its columns (as a DTensor
    sharded on dim 1 is, tensor parallelism's row-parallel layers): the chunks share their first offset, 0.
    `backwards`: the right-hand chunk written and listed first."""

    def __init__(self, backwards: bool = False) -> None:
        super().__init__()
        self.backwards = backwards

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        items: list[WriteItem] = []
        for item in plan.items:
            data = item.tensor_data
            if item.type != WriteItemType.TENSOR or data is None or len(data.size) < 2 or data.size[1] < 2:
                items.append(item)
                continue
            half = data.size[1] // 2
            spans = [(0, half), (half, data.size[1] - half)]
            for start, span in spans[::-1] if self.backwards else spans:
                offsets = torch.Size([0, start] + [0] * (len(data.size) - 2))
                chunk = ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([data.size[0], span, *data.size[2:]]))
                items.append(dataclasses.replace(item, index=MetadataIndex(item.index.fqn, offsets),
                                                 type=WriteItemType.SHARD,
                                                 tensor_data=dataclasses.replace(data, chunk=chunk)))
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> Any:
        if write_item.type != WriteItemType.SHARD or write_item.tensor_data is None:
            return super().resolve_data(write_item)
        chunk = write_item.tensor_data.chunk
        return self.state_dict[write_item.index.fqn].narrow(1, chunk.offsets[1], chunk.sizes[1]).clone()


def test_a_tensor_saved_in_columns_is_analysed_as_the_same_weights_saved_whole(tmp_path: Path) -> None:
    """Chunks of one tensor that share their first offset ([0, 0] and [0, 2]) are two chunks, each found by all
    its offsets: keyed by the first alone, the folder was refused as holding "two storage entries" for one chunk."""
    plain, run = tmp_path / "plain", tmp_path / "run"
    plain.mkdir()
    for step in (0, 10):
        torch.save(_weights(step), plain / f"step_{step}.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": one process saves it all
            torch_dcp.save({"model": _weights(step), "step": step}, checkpoint_id=str(run / f"step-{step}"),
                           planner=_ByColumns())
    chunks = read_metadata(run / "step-10")["model.5.weight"].chunks
    assert sorted((chunk.offsets, chunk.sizes) for chunk in chunks) == [((0, 0), (3, 2)), ((0, 2), (3, 2))]
    analysed = _analyze(run, tmp_path / "dcp.h5")
    assert analysed.code == 0, analysed.stderr[-2000:]
    expected = _analyze(plain, tmp_path / "plain.h5")
    assert expected.code == 0, expected.stderr[-2000:]
    _assert_same_store(tmp_path / "dcp.h5", tmp_path / "plain.h5")


# ------------------------------------------------------------------------------- moments, batch after batch


def _numbers(records: list[dict[str, Any]]) -> dict[tuple[int, str], float]:
    return {(record["step"], key): value for record in records for key, value in record.items()
            if isinstance(value, float)}


def test_a_probe_in_many_batches_gives_the_measures_of_one_batch_on_numpy_s_dsyrk(tmp_path: Path) -> None:
    """On the CPU with one thread (the tests' default) each batch's Σ[F | 1]ᵀ[F | 1] is numpy's dsyrk into a
    scratch, then added to the sums: the probe's 40 samples in batches of 7 give the measures of one batch of all
    40 (to rounding). Copied instead of added, the sums held the last batch's alone."""
    assert moments._numpy_syrk(torch.device("cpu")), "the tests run one thread: numpy's dsyrk path is taken"
    plain = tmp_path / "plain"
    plain.mkdir()
    for step in (0, 10):
        torch.save(_weights(step), plain / f"step_{step}.pt")
    whole = _analyze(plain, tmp_path / "whole.h5", "--batch-size", "512")
    batched = _analyze(plain, tmp_path / "batched.h5", "--batch-size", "7")
    assert whole.code == 0 and batched.code == 0, (whole.stderr + batched.stderr)[-2000:]
    expected, got = _numbers(whole.records), _numbers(batched.records)
    assert sorted(got) == sorted(expected) and len(got) > 10
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


# --------------------------------------------------------------------- the memory check, by the probe's task


def test_a_class_label_probe_s_output_sums_are_what_refuses_the_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """C = 600 outputs and a probe of class labels: the outputs' sums with the class sums, 8 (601² + 600·601) B,
    and the measures' copies of Σŷŷᵀ, Σŷyᵀ and Σyyᵀ, 8 · 3 · 600² B, are 14.4 MB, over the 10 MB available
    (patched). Counted as for a probe of no labels (Σŷŷᵀ alone: 5.8 MB) the run went ahead."""
    ckpts, probe = _scale_run(tmp_path, 600, True)
    monkeypatch.setattr(resources, "available_host_bytes", lambda *_args, **_kw: 10_000_000)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--model-kwargs",
                          '{"outputs": 600}', "--probe", probe, "-o", out, "--device", "cpu")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said, said
    assert "error: this analysis needs at least 14.4 MB of memory for its float64 statistics" in said, said
    assert ("the measures' copies of the outputs' C×C sums of products (the predictions with themselves and with "
            "the targets, the targets with themselves): 8.6 MB") in said, said
    assert not out.exists()


# ------------------------------------------------------------------------- what the user reads, to the letter


@pytest.mark.parametrize("count", [3, 4])
def test_the_classes_not_loaded_are_followed_by_dots_only_past_three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     count: int) -> None:
    """The note names the first three classes that cannot be imported and says ", ..." only where more follow."""
    classes = [type(name, (), {}) for name in ("Config", "Optim", "Sched", "Logger")[:count]]
    path = tmp_path / "ckpt_5.pt"
    state = {"model": mlp(seed=0).state_dict(), "step": 5, **{cls.__name__: cls() for cls in classes}}
    for cls in classes:
        cls.__module__, cls.__qualname__ = "__main__", cls.__name__
        monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    torch.save(state, path)
    for cls in classes:
        monkeypatch.delattr(sys.modules["__main__"], cls.__name__)
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join((done.stdout + done.stderr).split())
    assert done.code == 0, said
    named = "__main__.Config, __main__.Optim, __main__.Sched"
    assert f"cannot be imported here ({named}{', ...' if count > 3 else ''}; a script run" in said, said


def test_a_minus_zero_in_a_markdown_table_reads_zero() -> None:
    """`fdl report --format markdown` writes a measure that is −0.0 (the cross-entropy of a probe of one class,
    −1·log 1) as 0, as the text table does, not −0."""
    table = records_to_markdown([{"step": 5, "cross_entropy": -0.0, "d_lr": 0.25}])
    header, _, row = (line.strip("|").split("|") for line in table.splitlines())
    cells = {name.strip(): cell.strip() for name, cell in zip(header, row, strict=True)}
    assert (cells["step"], cells["cross_entropy"], cells["d_lr"]) == ("5", "0", "0.25"), table


def test_an_output_s_r2_that_rounds_to_zero_reads_zero_in_the_per_output_line() -> None:
    """An output fitted no better than its mean, R² = −0.00001, reads "y1 0.0000" in the report's per-output line,
    as in its table, not "-0.0000"."""
    record = {"step": 5, "r2": 0.6, **r2_output_fields(np.array([0.9, -0.00001, 0.5]))}
    line = r2_outputs_line(types.SimpleNamespace(records=[record]))  # type: ignore[arg-type]
    assert line is not None and "y0 0.9000, y1 0.0000, y2 0.5000;" in line, line


@pytest.mark.parametrize("outputs", [3, 10])
def test_a_class_holding_half_the_labels_is_said_to_be_what_a_constant_guess_scores(outputs: int) -> None:
    """Half the probe's labels one class (20 of 40), at least 1.5/C of them: analyze's note says a constant guess
    of it scores 0.500, not chance 1/C; a share a hair under half is no such class."""
    labels = np.array([0] * 20 + [1] * 10 + [2] * 10)
    note = dominant_class_note(types.SimpleNamespace(task="classes", y=labels, name="probe"),  # type: ignore[arg-type]
                               n_outputs=outputs)
    assert note == (f"probe 'probe': 20 of 40 labels (50.0 %) are class 0: a constant guess of it scores accuracy "
                    f"0.5000 and cross_entropy 1.040 (the labels' entropy), not chance 1/C = {1 / outputs:.4f} and "
                    f"log C = {np.log(outputs):.3f}: read accuracy and cross_entropy against those, as fdl classify's "
                    "lines on a near-chance or already fitting checkpoint do")
    fewer = np.array([0] * 20 + [1] * 11 + [2] * 10)
    assert dominant_class_note(types.SimpleNamespace(task="classes", y=fewer, name="probe"),  # type: ignore[arg-type]
                               n_outputs=outputs) is None


def test_a_model_of_no_outputs_is_not_said_to_have_a_layer_too_narrow_for_ef() -> None:
    """A model whose head has no outputs (C = 0, which analyze stores: nn.Linear(1, 0)) and a one-unit layer:
    p = 1 ≤ C + mf_extra, but there is no utility to count, and classify says nothing of the layer's width (the
    constant outputs' line says why the regime reads nothing)."""
    base = {"n_outputs": 0, "n_features": 1, "rank": 1, "k95_utility": None, "output_rank": 0, "d_lr": 1.0}
    records = [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0},
               {**base, "step": 10, "cka_init": 1.0, "overlap_init": 1.0}]
    verdict = classify_run(records)
    assert "narrow_layer" not in verdict.evidence, verdict.evidence
    lines = describe(verdict, records)
    assert not any("too narrow" in line for line in lines), lines
    assert any("the model's outputs are constant over the probe" in line for line in lines), lines


def _saved_by_a_script(path: Path, monkeypatch: pytest.MonkeyPatch, cls: type, obj: Any) -> Path:
    """torch.save of `{"model", "step", "extra": obj}` as `python train.py` does, `cls` being train.py's own class
    (pickled as `__main__.<name>`, which no other process can import)."""
    cls.__module__, cls.__qualname__ = "__main__", cls.__name__
    monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    torch.save({"model": mlp(seed=0).state_dict(), "step": 5, "extra": obj}, path)
    monkeypatch.delattr(sys.modules["__main__"], cls.__name__)
    return path


def _unimportable_said(path: Path) -> str:
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join((done.stdout + done.stderr).split())
    assert done.code == 1 and "Traceback" not in said, said
    assert f"error: cannot unpickle {path}: it holds an object whose class cannot be imported here" in said, said
    return said


@pytest.mark.parametrize("items", [1, 2])
def test_weights_among_the_items_of_a_list_class_that_cannot_be_imported_are_not_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, items: int) -> None:
    """A list class of the script holding tensors (pickled as its items: one by APPEND, more by APPENDS, both of
    which CPython's unpickler hands to `extend`): not read as a placeholder, whose items would be lost unsaid; the
    error says the class cannot be imported."""
    class Params(list):  # type: ignore[type-arg]
        pass

    path = _saved_by_a_script(tmp_path / "ckpt_5.pt", monkeypatch, Params, Params([torch.ones(3)] * items))
    _unimportable_said(path)


def test_a_module_inside_an_object_of_a_class_that_cannot_be_imported_is_not_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object of the script's own class holding a torch module (an EMA wrapper's copy of the network): its
    weights are in that module, so it is not read as a placeholder that drops them unsaid."""
    class Wrapper:
        def __init__(self) -> None:
            self.net = torch.nn.Linear(2, 2)

    path = _saved_by_a_script(tmp_path / "ckpt_5.pt", monkeypatch, Wrapper, Wrapper())
    _unimportable_said(path)


def test_the_same_columns_saved_again_in_the_other_order_are_one_checkpoint(tmp_path: Path) -> None:
    """A step saved twice, its tensors' column chunks listed in the other order the second time: the same weights
    and step, skipped as a copy, not two checkpoints of one step."""
    run = tmp_path / "run"
    for folder, backwards in (("step-10", False), ("step-10-again", True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_dcp.save({"model": _weights(10), "step": 10}, checkpoint_id=str(run / folder),
                           planner=_ByColumns(backwards))
    listed = [chunk.offsets for chunk in read_metadata(run / "step-10-again")["model.5.weight"].chunks]
    assert listed == [(0, 2), (0, 0)]
    found = discover_checkpoints([run])
    assert [(ref.step, ref.path.name) for ref in found.checkpoints] == [(10, "step-10")]
    assert "skipped step-10-again: same weights and step (10) as step-10" in found.notes
