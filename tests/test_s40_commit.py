"""The store's commit writes through h5py's low-level calls (`_write_array`, `_new_attr`, `_new_column`,
`_append_column`) the very objects h5py's high-level calls wrote before: each dataset's type, shape, chunks, filters,
fill value and creation properties, each attribute's type and value, and so the records the readers read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli import store
from fdl_cli.fields import STR_FIELDS
from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreReader, StoreWriter
from tests.cli_run import fdl_in_process
from tests.test_store import provenance, random_scalars

INVOCATION = {"argv": ["fdl", "analyze", "ck"], "version": "test"}
LATER = {"argv": ["fdl", "analyze", "ck", "--layer", "fc1"], "version": "test"}


def _high_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer as it was: each object through h5py's high-level calls (the reference the new writer matches)."""

    def write_array(group: h5py.Group, name: str, value: np.ndarray) -> None:
        if value.size:
            group.create_dataset(name, data=value, chunks=True, fletcher32=True)
        else:
            group.create_dataset(name, data=value)

    def new_attr(node: h5py.Group, name: str, value: Any) -> None:
        node.attrs[name] = value.item() if isinstance(value, np.bool_) else value

    def new_column(group: h5py.Group, name: str, column: np.ndarray) -> None:
        group.create_dataset(name, data=column, dtype=store._STR if name in STR_FIELDS else column.dtype,
                             maxshape=(None,), chunks=(store._TRAJECTORY_CHUNK,), fletcher32=name not in STR_FIELDS)

    def append_column(dataset: h5py.Dataset, start: int, length: int, column: np.ndarray) -> None:
        dataset.resize((length,))
        dataset[start:] = column

    monkeypatch.setattr(store, "_write_array", write_array)
    monkeypatch.setattr(store, "_new_attr", new_attr)
    monkeypatch.setattr(store, "_new_column", new_column)
    monkeypatch.setattr(store, "_append_column", append_column)


def _probes() -> list[ProbeInfo]:
    return [
        ProbeInfo("train", "a" * 64, 6, "regression", 2, anchor_x=np.linspace(-1, 1, 6), anchor_y=np.arange(6.0),
                  zero_one_targets=True, x_sha256="c" * 64),
        ProbeInfo("test", "b" * 64, 40, "classes", 3, anchor_x=np.linspace(0, 1, 40), anchor_y=np.arange(40) % 3,
                  zero_one_targets=False, chance_accuracy=0.4, label_entropy=1.05,
                  anchor_skew={"m": 40.0, "n": 40.0, "distance": 0.5}),
    ]


def _series(rng: np.random.Generator, probe: str, layer: str, *, empty: bool = False, wide: bool = False,
            **extra: Any) -> SeriesEntry:
    width, anchors, top_k, rank = (4, 6, 0, 0) if empty else (5000, 6, 40, 40) if wide else (300, 6, 3, 5)
    return SeriesEntry(
        probe=probe, layer=layer, scalars={**random_scalars(rng), "regime": "lazy", "n_outputs": 2},
        eigenvalues=rng.normal(size=rank), eigenvectors=rng.normal(size=(width, top_k)),
        eigenfunctions=rng.normal(size=(anchors, top_k)).astype(np.float32), utility=rng.random(rank),
        quality=rng.random(rank), feature_mean=rng.normal(size=width), r2_outputs=np.array([0.5, np.nan]), **extra)


def _entry(step: int, *, series_only: bool = False) -> CheckpointEntry:
    rng = np.random.default_rng(step)
    if series_only:  # a layer added to the stored checkpoint, by another invocation than the checkpoint's
        series: tuple[SeriesEntry, ...] = (_series(rng, "train", "fc1", computed_by=store.history_row(LATER)),)
    else:
        series = (_series(rng, "train", "fc2:input", wide=step == 20), _series(rng, "test", "层 ü", empty=step == 10))
    return CheckpointEntry(step=step, path=f"/runs/a/ck-{step}.pt", sha256=f"{step:064x}", series=series,
                           file_signature="" if step == 20 else f"{step} 1700000000", series_only=series_only)


def _write(path: Path) -> None:
    """A fresh store, then resumes: later steps (the trajectories appended), an earlier one and a stored one again
    (rewritten), and a series added to stored checkpoints."""
    for steps, kwargs in (([0, 10, 20], {}), ([30, 40], {}), ([5, 10], {}), ([], {"series_only": True})):
        with StoreWriter(path, provenance=provenance(), probes=_probes(), background=False,
                         invocation=INVOCATION) as writer:
            for step in steps:
                writer.add(_entry(step))
            if kwargs:
                for step in (0, 30):
                    writer.add(_entry(step, series_only=True))


def _type(htype: Any) -> tuple[Any, ...]:
    """An HDF5 type as the file holds it."""
    described: tuple[Any, ...] = (htype.get_class(), htype.get_size())
    if isinstance(htype, h5py.h5t.TypeStringID):
        described += (htype.get_cset(), htype.is_variable_str(), htype.get_strpad())
    elif isinstance(htype, h5py.h5t.TypeEnumID):
        described += (htype.get_super().get_size(),
                      [(htype.get_member_name(i), htype.get_member_value(i)) for i in range(htype.get_nmembers())])
    elif isinstance(htype, h5py.h5t.TypeAtomicID):
        described += (htype.get_order(), htype.get_precision(), htype.get_offset())
    return described


def _value(value: Any) -> Any:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return (array.dtype.str, array.shape, array.tobytes())  # NaN bytes alike too
    return (array.dtype.str, array.shape, array.tolist())


def _attrs(node: Any) -> dict[str, Any]:
    described = {}
    for name in node.attrs:
        attr = h5py.h5a.open(node.id, name.encode())
        described[name] = (_type(attr.get_type()), attr.shape, attr.get_space().get_simple_extent_type(),
                           _value(node.attrs[name]))
    return described


def _dataset(dataset: h5py.Dataset) -> dict[str, Any]:
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    return {
        "type": _type(dataset.id.get_type()), "dtype": dataset.dtype.str,
        "string": h5py.check_string_dtype(dataset.dtype), "shape": dataset.shape, "maxshape": dataset.maxshape,
        "chunks": dataset.chunks, "compression": dataset.compression, "shuffle": dataset.shuffle,
        "fletcher32": dataset.fletcher32, "scaleoffset": dataset.scaleoffset,
        "fillvalue": _value(dataset.fillvalue), "layout": layout,
        "plist_chunk": plist.get_chunk() if layout == h5py.h5d.CHUNKED else None, "filters": filters,
        "fill_defined": plist.fill_value_defined(), "fill_time": plist.get_fill_time(),
        "alloc_time": plist.get_alloc_time(), "track_times": plist.get_obj_track_times(),
        "attr_order": plist.get_attr_creation_order(), "space": dataset.id.get_space().get_simple_extent_type(),
        "storage": dataset.id.get_storage_size(), "attrs": _attrs(dataset),
        "data": _value(dataset[()]) if not h5py.check_string_dtype(dataset.dtype) else dataset.asstr()[()].tolist(),
    }


def _objects(path: Path) -> dict[str, Any]:
    """Every object of the store as the file holds it (the root's `created` attribute aside: a clock's)."""
    objects: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:
        root = _attrs(handle)
        root.pop("created")
        objects["/"] = root

        def visit(name: str, node: Any) -> None:
            objects[name] = _dataset(node) if isinstance(node, h5py.Dataset) else _attrs(node)

        handle.visititems(visit)
    return objects


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same commits written by the high-level reference and by the store's own writer."""
    folder = tmp_path_factory.mktemp("s40_commit")
    reference, written = folder / "reference.h5", folder / "written.h5"
    with pytest.MonkeyPatch.context() as patch:
        _high_level(patch)
        _write(reference)
    _write(written)
    return reference, written


def test_the_commits_write_what_the_reference_holds(stores: tuple[Path, Path]) -> None:
    reference, written = stores
    expected = _objects(reference)
    # the reference holds each kind of object the writer makes: an empty array, a bool attribute, a str scalar of a
    # series, a series' history, a non-ASCII layer, trajectories appended to and rewritten, float32 and int64 arrays
    leaf = expected["checkpoints/step_0/train/fc1"]
    assert leaf["history"][3] == ("<i8", (), 1) and leaf["regime"][3] == ("<U4", (), "lazy")
    assert expected["checkpoints/step_10/test/层 ü/eigenvectors"]["shape"] == (4, 0)
    assert expected["checkpoints/step_10/test/层 ü/eigenvectors"]["layout"] == h5py.h5d.CONTIGUOUS
    assert expected["checkpoints/step_0"]["complete"][3] == ("|b1", (), True)
    assert expected["probes/test/anchor_y"]["dtype"] == "<i8"
    assert expected["checkpoints/step_0/train/fc2:input/eigenfunctions"]["dtype"] == "<f4"
    assert expected["checkpoints/step_0/train/fc2:input/eigenvectors"]["chunks"] == (300, 3)
    assert expected["checkpoints/step_20/train/fc2:input/eigenvectors"]["chunks"] == (625, 5)  # h5py's guess
    assert expected["trajectories/train/fc2:input/step"]["data"][2] == [0, 5, 10, 20, 30, 40]
    assert tuple(expected["trajectories/train/fc2:input/regime"]["string"]) == ("utf-8", None)
    assert expected["trajectories/train/fc2:input/sha256"]["fletcher32"] is False
    assert expected["trajectories/train/fc2:input/d_lr"]["fletcher32"] is True
    got = _objects(written)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name


def test_the_types_are_equal_to_hdf5(stores: tuple[Path, Path]) -> None:
    """HDF5's own comparison of each dataset's and attribute's type (H5Tequal), beside the description above."""
    reference, written = stores
    with h5py.File(reference, "r") as old, h5py.File(written, "r") as new:
        names: list[str] = []
        old.visit(names.append)
        for name in ["/", *names]:
            before, after = old[name], new[name]
            if isinstance(before, h5py.Dataset):
                assert before.id.get_type() == after.id.get_type(), name
            for attr in before.attrs:
                if attr != "created":
                    assert (h5py.h5a.open(before.id, attr.encode()).get_type()
                            == h5py.h5a.open(after.id, attr.encode()).get_type()), (name, attr)


def test_the_readers_read_the_same(stores: tuple[Path, Path]) -> None:
    reference, written = stores
    with StoreReader(reference) as old, StoreReader(written) as new:
        assert old.records(all_series=True, r2_outputs=True) == new.records(all_series=True, r2_outputs=True)
        assert old.entries() == new.entries()
        assert old.history_steps() == new.history_steps() and old.added_history() == new.added_history()
    reports = [fdl_in_process("report", path, "--json") for path in stores]
    assert [report.returncode for report in reports] == [0, 0], reports[0].stderr
    assert json.loads(reports[0].stdout.replace(str(reference), str(written))) == json.loads(reports[1].stdout)
