"""docs/store.md as a reader's contract: a real store, walked whole with h5py, holds what the layout names, at the
place it names it, in the dtype and shape it gives, and `fdl export`'s columns are those docs/usage.md gives.

tests/test_s16_docs.py and tests/test_s24_docs.py compare the set of names a store holds with store.md's text;
this file checks each object at its level of the layout (a name listed under /probes is not accepted on a
checkpoint), the attributes' types, the keys of the JSON attributes (`provenance` with its `options` and
`environment`, `history`, `refused`, `pending_series`, `model_imports`) and the trajectories. Found so: the
environment's keys (`torch_version`, `numpy_version`, `fdl_version`) were described as "torch, numpy and fdl
versions", the integer record fields stored as int64 were not named, a pending series' trajectory holds fewer
steps than the store, the string trajectories carry no checksum, and export's trajectories lack the
`zero_one_targets` column of `fdl report --format csv`.

One store (tiny 1-D ReLU MLPs, CPU): two probes, float 0/1 targets of two outputs (anchors, `r2_outputs`,
`zero_one_targets`) and class labels (their chance), `--center`, a checkpoint of NaN weights (`refused`), then a
probe added that overflows at one stored checkpoint (`pending_series`, a series' `history`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli import fields
from tests.cli_run import fdl_in_process as fdl
from tests.test_s24_docs import _layout_levels

REPO = Path(__file__).resolve().parents[1]
STORE_MD = (REPO / "docs" / "store.md").read_text(encoding="utf-8")
USAGE_MD = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
LAYOUT = " ".join(STORE_MD.split("## Layout", 1)[1].split("```", 2)[1].split())
MODEL = "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 2))\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("storedoc")
    (folder / "model.py").write_text(MODEL)
    x = np.linspace(-1, 1, 24, dtype=np.float32)[:, None]
    np.savez(folder / "zo.npz", x=x, y=np.hstack([x > 0, x > 0.5]).astype(np.float64))  # float 0/1, not one-hot
    np.savez(folder / "cls.npz", x=x[::2], y=(x[::2, 0] > 0).astype(np.int64))
    np.savez(folder / "big.npz", x=np.full((8, 1), 1e30, dtype=np.float32))  # no targets
    for step in (0, 10, 20, 30):
        torch.manual_seed(step)
        net = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        with torch.no_grad():
            if step == 20:  # finite, but 1e30 inputs overflow float32 here: the added probe fails at step 20 alone
                net[0].weight.mul_(1e9)
            if step == 30:
                net[0].weight[0, 0] = float("nan")  # refused for its values
        torch.save(net.state_dict(), folder / f"step_{step}.pt")
    out = folder / "run.h5"
    common = [folder, "--model", f"{folder / 'model.py'}:build", "--center", "--out", out]
    first = fdl("analyze", *common, "--probe", f"zo={folder / 'zo.npz'}", "--probe", f"cls={folder / 'cls.npz'}")
    assert first.returncode == 1 and "step_30.pt" in first.stderr, first.stderr
    added = fdl(
        "analyze",
        *common,
        "--probe",
        f"zo={folder / 'zo.npz'}",
        "--probe",
        f"cls={folder / 'cls.npz'}",
        "--probe",
        f"big={folder / 'big.npz'}",
    )
    assert added.returncode == 1 and "adding big/2:input to the stored checkpoint at step 20" in added.stderr, added.stderr
    return out


# ---------------------------------------------------------------------------------------------- the layout


def test_the_layout_is_read_by_level() -> None:
    levels = _layout_levels()
    assert set(levels) == {
        "/",
        "/probes/<probe>/",
        "/checkpoints/step_<step>/",
        "<probe>/<layer>/",
        "/trajectories/<probe>/<layer>/<field>",
    }
    assert {"provenance", "model_imports", "pending_series", "refused"} <= levels["/"][0]
    assert levels["/probes/<probe>/"][1] == {"anchor_x": "float64", "anchor_y": "float64"}
    assert levels["<probe>/<layer>/"][1]["eigenfunctions"] == "float32"
    assert "history" in levels["<probe>/<layer>/"][0] and "complete" in levels["/checkpoints/step_<step>/"][0]


def test_every_object_of_the_store_is_in_the_layout_at_its_own_level(store: Path) -> None:
    """Every group, dataset and attribute of the store, at the level the layout lists it; and each dataset and
    attribute the layout lists is in this store (but for `dropped`: no drop here, tests/test_s20_drop.py;
    `model_changes`: tests/test_s34_accept.py; and a probe's `anchor_skew`: tests/test_s39_anchors.py)."""
    levels = _layout_levels()
    found: dict[str, tuple[set[str], dict[str, str]]] = {level: (set(), {}) for level in levels}
    strays: list[str] = []

    def visit(name: str, node: Any) -> None:
        parts = name.split("/")
        if len(parts) == 1:  # /probes, /checkpoints, /trajectories: no attribute
            strays.extend(f"{name}@{attribute}" for attribute in node.attrs)
            return
        if parts[0] == "probes" and len(parts) in (2, 3):
            level = "/probes/<probe>/"
        elif parts[0] == "checkpoints" and len(parts) == 2 and re.fullmatch(r"step_-?\d+", parts[1]):
            level = "/checkpoints/step_<step>/"
        elif parts[0] == "checkpoints" and len(parts) == 3:  # the probe's group: no attribute, no dataset
            strays.extend(f"{name}@{attribute}" for attribute in node.attrs)
            assert isinstance(node, h5py.Group), name
            return
        elif parts[0] == "checkpoints" and len(parts) in (4, 5):
            level = "<probe>/<layer>/"
        elif parts[0] == "trajectories" and len(parts) in (2, 3, 4):
            level = "/trajectories/<probe>/<layer>/<field>"
            strays.extend(f"{name}@{attribute}" for attribute in node.attrs)  # none listed
            return
        else:
            strays.append(name)
            return
        if isinstance(node, h5py.Dataset):
            found[level][1][parts[-1]] = str(node.dtype)
            strays.extend(f"{name}@{attribute}" for attribute in node.attrs)
        else:
            found[level][0].update(node.attrs)

    with h5py.File(store, "r", locking=False) as opened:
        assert set(opened) == {"probes", "checkpoints", "trajectories"}
        found["/"][0].update(opened.attrs)
        opened.visititems(visit)
    assert strays == []
    for level, (attributes, datasets) in found.items():
        listed_attributes, listed_datasets = levels[level]
        if level == "<probe>/<layer>/":
            listed_attributes = listed_attributes | set(fields.MEASURE_FIELDS)  # "every MEASURE field that applies"
        assert sorted(attributes - listed_attributes) == [], level
        assert datasets == listed_datasets, level
    # no drop here (tests/test_s20_drop.py), nor a change of the model's code (tests/test_s34_accept.py)
    assert sorted(levels["/"][0] - found["/"][0]) == ["dropped", "model_changes"]
    # nor a probe whose anchor rows misrepresent its classes (`anchor_skew`: tests/test_s39_anchors.py)
    assert sorted(levels["/probes/<probe>/"][0] - found["/probes/<probe>/"][0]) == ["anchor_skew"]
    assert levels["/checkpoints/step_<step>/"][0] <= found["/checkpoints/step_<step>/"][0]


def test_attribute_types_shapes_and_orders_are_the_layout_s(store: Path) -> None:
    """The types store.md gives (int64 for the integer fields, named in its prose), the arrays' shapes (K = min(r,
    max(top_k, k)), m anchors), eigenvalues descending, eigenvectors signed as docs/measures.md says, NaN = null."""
    prose = " ".join(STORE_MD.split("- The fields are those of `fdl_cli.fields`", 1)[1].split("\n- ", 1)[0].split())
    assert sorted(name for name in fields.INT_FIELDS - {"step"} if f"`{name}`" not in prose) == []
    assert "each signed so that its largest-|·| entry is positive" in LAYOUT and "descending" in LAYOUT
    with h5py.File(store, "r", locking=False) as opened:
        root = opened.attrs
        assert root["format"] == "fdl-store" and root["schema_version"] == 1
        assert isinstance(root["schema_version"], np.int64) and str(root["created"]).endswith("+00:00")
        options = json.loads(root["provenance"])["options"]
        for name, probe in opened["probes"].items():
            attrs = probe.attrs
            assert isinstance(attrs["n"], np.int64) and isinstance(attrs["n_outputs"], np.int64), name
            assert attrs["task"] in ("classes", "regression", "none") and isinstance(attrs["zero_one_targets"], np.bool_)
            assert ("chance_accuracy" in attrs) == (attrs["task"] == "classes") == ("label_entropy" in attrs), name
            m = min(int(attrs["n"]), options["anchor_size"])
            assert probe["anchor_x"].shape == (m,)
            if attrs["task"] == "none":  # no targets, no anchor_y
                assert "anchor_y" not in probe and "anchor_x, and absent for a probe without targets" in LAYOUT
            else:
                assert probe["anchor_y"].shape == ((m,) if attrs["task"] == "classes" else (m, int(attrs["n_outputs"])))
        assert bool(opened["probes/zo"].attrs["zero_one_targets"]) and opened["probes/big"].attrs["task"] == "none"
        for name, checkpoint in opened["checkpoints"].items():
            assert isinstance(checkpoint.attrs["step"], np.int64) and name == f"step_{checkpoint.attrs['step']}"
            assert checkpoint.attrs["complete"] is np.True_ and isinstance(checkpoint.attrs["history"], np.int64)
            for probe, group in checkpoint.items():
                for series in group.values():
                    attrs, n_probe = series.attrs, int(opened[f"probes/{probe}"].attrs["n"])
                    for field, value in attrs.items():
                        kind = (
                            np.int64
                            if field in fields.INT_FIELDS or field == "history"
                            else str
                            if field in fields.STR_FIELDS
                            else np.float64
                        )
                        assert isinstance(value, kind) and (kind is not np.float64 or not np.isnan(value)), field
                    r, p, outputs = int(attrs["rank"]), int(attrs["n_features"]), int(attrs["n_outputs"])
                    k = min(r, max(options["top_k"], options.get("overlap_k", outputs)))
                    values, vectors = series["eigenvalues"][()], series["eigenvectors"][()]
                    assert values.shape == (r,) and np.all(np.diff(values) <= 0)
                    assert vectors.shape == (p, k) and series["eigenfunctions"].dtype == np.float32
                    assert series["eigenfunctions"].shape == (min(n_probe, options["anchor_size"]), k)
                    top = np.abs(vectors).argmax(axis=0)
                    assert np.all(vectors[top, np.arange(k)] > 0)
                    assert series["utility"].shape == (r,) and series["feature_mean"].shape == (p,)
                    assert ("quality" in series) == (probe != "big")
                    assert ("r2_outputs" in series) == (probe == "zo")
                    assert ("history" in attrs) == (probe == "big")  # a series added later names its invocation


def _bullet(text: str, start: str) -> str:
    return " ".join(text.split(start, 1)[1].split("\n- ", 1)[0].split())


def test_the_keys_of_the_json_attributes_are_named_where_store_md_describes_them(store: Path) -> None:
    provenance_md = _bullet(STORE_MD, "- `provenance` holds")
    history_md = STORE_MD.split("### History", 1)[1].split("\n- Each `/checkpoints", 1)[0]
    refused_md = _bullet(STORE_MD, "- **Refused checkpoints: the root attribute `refused`.**")
    environment_md = provenance_md.split("`environment` (", 1)[1].split("where each checkpoint was computed", 1)[0]
    with h5py.File(store, "r", locking=False) as opened:
        provenance = json.loads(opened.attrs["provenance"])
        history = json.loads(opened.attrs["history"])
        refused = json.loads(opened.attrs["refused"])
        pending = json.loads(opened.attrs["pending_series"])
        imports = json.loads(opened.attrs["model_imports"])
    assert sorted(key for key in {*provenance, *provenance["options"]} if f"`{key}`" not in provenance_md) == []
    assert sorted(key for key in provenance["environment"] if f"`{key}`" not in environment_md) == []
    assert len(history) == 2 and sorted(key for row in history for key in row if f"`{key}`" not in history_md) == []
    assert [item["step"] for item in refused] == [30] and refused[0]["kind"] == "weights"
    assert sorted(key for key in refused[0] if f"`{key}`" not in refused_md) == []
    assert pending == [["big", "2:input"]] and imports == {}


# ------------------------------------------------------------------------------------------ trajectories


def test_the_trajectories_are_the_record_fields_one_value_per_checkpoint_holding_the_series(store: Path) -> None:
    layout = " ".join(STORE_MD.split("/trajectories/<probe>/<layer>/<field>", 1)[1].split(":\n", 1)[0].split())
    assert "pending_series" in layout  # a pending series lacks the steps whose checkpoints lack it
    checksums = _bullet(STORE_MD, "- Array datasets are chunked with Fletcher-32")
    assert "`path`, `sha256`, `regime`" in checksums
    with h5py.File(store, "r", locking=False) as opened:
        stored = sorted(int(group.attrs["step"]) for group in opened["checkpoints"].values())
        for probe, group in opened["trajectories"].items():
            for layer, trajectory in group.items():
                assert list(trajectory) == sorted(fields.RECORD_FIELDS), (probe, layer)  # h5py: in name order
                steps = trajectory["step"][()].tolist()
                assert steps == [step for step in stored if layer in opened[f"checkpoints/step_{step}"].get(probe, {})]
                assert steps == (stored if probe != "big" else [0, 10])
                for name, data in trajectory.items():
                    assert data.maxshape == (None,) and data.chunks and data.shape == (len(steps),), name
                    if name in fields.STR_FIELDS:
                        assert h5py.check_string_dtype(data.dtype).encoding == "utf-8" and not data.fletcher32, name
                    else:
                        assert data.dtype == (np.int64 if name == "step" else np.float64) and data.fletcher32, name
                for index, step in enumerate(steps):  # NaN / "" = an absent attribute
                    attrs = opened[f"checkpoints/step_{step}/{probe}/{layer}"].attrs
                    for name in fields.MEASURE_FIELDS:
                        value = trajectory[name][index]
                        absent = value == b"" if name in fields.STR_FIELDS else np.isnan(value)
                        assert absent == (name not in attrs), (step, probe, name)


# ---------------------------------------------------------------------------------------------- export


def test_export_s_columns_are_those_usage_md_gives(store: Path) -> None:
    """`--what trajectories`: the record fields, each output's R² for a regression of C > 1 outputs, then `probe`,
    `layer` (several series): report's CSV columns but `zero_one_targets`, which export says on stderr instead."""
    export = _bullet(USAGE_MD, "- `trajectories`: the record fields")
    assert "`zero_one_targets`" in export
    done = fdl("export", store, "--what", "trajectories", "--probe", "zo")
    header = next(csv.reader(io.StringIO(done.stdout)))
    assert header == [*fields.RECORD_FIELDS, *fields.R2_OUTPUT_FIELDS, *fields.SERIES_FIELDS]
    assert "probe 'zo' holds float 0/1 targets" in done.stderr
    report = fdl("report", store, "--probe", "zo", "--format", "csv")  # probe, layer before the R² (store.md)
    assert next(csv.reader(io.StringIO(report.stdout))) == [
        *fields.RECORD_FIELDS,
        *fields.SERIES_FIELDS,
        *fields.R2_OUTPUT_FIELDS,
        "zero_one_targets",
    ]
    records = " ".join(STORE_MD.split("### Records", 1)[1].split("\n## ", 1)[0].split())
    assert "`fdl export --what trajectories` puts the three before `probe` and `layer`" in records
    columns = json.loads(fdl("export", store, "--what", "trajectories", "--probe", "cls", "--json").stdout)
    assert list(columns) == [*fields.RECORD_FIELDS, *fields.SERIES_FIELDS]
    export_md = " ".join(USAGE_MD.split("### What each `--what` gives", 1)[1].split("\n### ", 1)[0].split())
    assert "CSV `step,k,W`" in export_md and "CSV `step,point,k,value`" in export_md
    assert "(CSV `step,k,W,probe,layer`" in export_md  # a store of several series
    for what in ("eigenvalues", "utility", "quality", "eigenfunctions"):
        first = "step,point,k,value" if what == "eigenfunctions" else f"step,k,{what}"
        rows = fdl("export", store, "--what", what, "--probe", "cls", "--steps", "0").stdout.splitlines()
        assert rows[0] == f"{first},probe,layer", what
