"""Session 26, a researcher's notebook after `fdl analyze`: the store read with StoreReader and plain h5py.

1. A step read from `fdl export --format csv` with the `csv` module is a str: `run.array("50", ...)` said
   `step 50 is not in RUN.h5`, then listed 50 among the steps it holds. The reader now says what it was given
   (a str) and that steps are integers; its fix names `run.steps()`, the Python way to list them.
2. docs/store.md's layout (where each dataset lies, its shape and dtype, the attributes' types) is checked
   against a real store, entry by entry, shapes included (tests/test_s24_docs.py checks names and dtypes).
3. store.md's records snippet passes `Thresholds(cka_static=0.98)`, not the default, so its regimes are not
   `fdl classify`'s: the snippet now names the command it matches, and that command gives its verdict.
4. The anchors' inputs (`anchor_x`, for e_k(x) plots) had no Python recipe: `run.probes()[probe].anchor_x`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli import fields
from fdl_cli.errors import StoreError
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.test_s16_docs import SAMPLES, STORE

SAMPLE_STEPS = "0,50,1000"


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("nb") / "sample.fdl.h5"
    done = fdl_in_process("analyze", SAMPLES, "--steps", SAMPLE_STEPS, "-o", store)
    assert done.returncode == 0, done.stderr
    return store


@pytest.fixture(scope="module")
def regression_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A centered two-output regression of scalar inputs (anchors, feature_mean, quality, r2_outputs: every
    dataset of the layout) with --top-k 3 below the rank, so K is not r."""
    folder = tmp_path_factory.mktemp("nb_reg")
    (folder / "model.py").write_text(
        "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 2))\n")
    x = np.linspace(-1, 1, 40, dtype=np.float32)[:, None]
    np.savez(folder / "probe.npz", x=x, y=np.hstack([np.sin(3 * x), x**2]))
    (folder / "run").mkdir()
    for step in (0, 10, 20):
        torch.manual_seed(step)
        net = torch.nn.Sequential(torch.nn.Linear(1, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
        torch.save(net.state_dict(), folder / "run" / f"step_{step}.pt")
    store = folder / "reg.h5"
    done = fdl_in_process("analyze", folder / "run", "--model", f"{folder / 'model.py'}:build", "--probe",
                          f"train={folder / 'probe.npz'}", "--center", "--top-k", "3", "--anchor-size", "30",
                          "-o", store)
    assert done.returncode == 0, done.stderr
    return store


# ------------------------------------------------------------------ 1. a step of the wrong type


@pytest.mark.parametrize("given", ["50", True])
def test_a_step_that_is_no_integer_is_named_with_its_type_not_listed_as_missing(sample_store: Path,
                                                                                given: object) -> None:
    exported = fdl_in_process("export", sample_store, "--what", "eigenvalues", "--steps", "50")
    step = exported.stdout.splitlines()[1].split(",")[0]  # as the csv module gives a cell: "50"
    assert step == "50"
    with StoreReader(sample_store) as run:
        for call in (lambda: run.array(given, "eigenvalues"), lambda: run.arrays(given),  # type: ignore[arg-type]
                     lambda: run.entry(given), lambda: run.computed_by(given)):  # type: ignore[arg-type]
            with pytest.raises(StoreError) as raised:
                call()
            message = str(raised.value)
            kind = type(given).__name__
            assert message.startswith(f"step {given!r} is a {kind}, not a step: steps are integers"), message
            assert "run.steps()" in message and "0, 50, 1000" in message
        # numbers that are integers stay steps: a NumPy int64 from h5py, a float 50.0 from a float64 column
        for number in (np.int64(50), np.float64(50.0), 50.0):
            assert run.array(number, "eigenvalues").shape == run.array(50, "eigenvalues").shape  # type: ignore[union-attr]


def test_a_step_not_stored_lists_the_steps_and_names_run_steps(sample_store: Path) -> None:
    with StoreReader(sample_store) as run:
        for call in (lambda: run.array(51, "eigenvalues"), lambda: run.entry(51), lambda: run.computed_by(51)):
            with pytest.raises(StoreError) as raised:
                call()
            message = str(raised.value)
            assert message.startswith(f"step 51 is not in {sample_store}"), message
            assert "got: 3 steps: 0, 50, 1000" in message and "run.steps()" in message


# ------------------------------------------------------------------ 2. store.md's layout, shapes included


def _layout_datasets() -> dict[str, tuple[str, list[str], str]]:
    """name -> (the group it lies in, its shape's symbols, dtype), from store.md's layout block."""
    block = STORE.split("## Layout", 1)[1].split("```", 2)[1]
    where = ""
    out: dict[str, tuple[str, list[str], str]] = {}
    for line in block.splitlines():
        group = re.match(r"(/\S+/)\s", line)
        if group:
            where = group.group(1)
            continue
        series = re.match(r"\s{4}(<probe>/<layer>/)\s", line)
        if series:
            where = "/checkpoints/step_<step>/<probe>/<layer>/"
            continue
        dataset = re.match(r"\s{4,}([a-z][a-z0-9_]*)\s+(\(.*?\)(?: or \(.*?\))?)\s+(float32|float64|int64)", line)
        if dataset:
            shapes = [shape.strip("()") for shape in dataset.group(2).split(" or ")]
            out[dataset.group(1)] = (where, shapes, dataset.group(3))
    return out


def test_every_dataset_of_the_layout_lies_where_store_md_says_with_its_shape_and_dtype(regression_store: Path) -> None:
    layout = _layout_datasets()
    assert set(layout) == {"anchor_x", "anchor_y", "eigenvalues", "eigenvectors", "eigenfunctions", "utility",
                           "quality", "feature_mean", "r2_outputs"}
    with h5py.File(regression_store, "r", locking=False) as store:
        options = json.loads(store.attrs["provenance"])["options"]
        probe = store["probes/train"]
        steps = sorted(int(name.split("_", 1)[1]) for name in store["checkpoints"])
        for step in steps:
            group = store[f"checkpoints/step_{step}"]
            leaf = group["train/2:input"]
            r, p, C = int(leaf.attrs["rank"]), int(leaf.attrs["n_features"]), int(leaf.attrs["n_outputs"])
            m = min(int(probe.attrs["n"]), options["anchor_size"])
            k = options.get("overlap_k", C)
            sizes = {"r": r, "p": p, "C": C, "m": m, "K": min(r, max(options["top_k"], k))}
            assert (m, sizes["K"]) == (30, 3)  # the options make every symbol a number of its own
            for name, (where, shapes, dtype) in layout.items():
                parent = probe if where == "/probes/<probe>/" else leaf
                assert where in ("/probes/<probe>/", "/checkpoints/step_<step>/<probe>/<layer>/"), where
                assert name in parent, (where, name)
                dataset = parent[name]
                assert str(dataset.dtype) == dtype, name
                expected = [tuple(sizes[symbol.strip()] for symbol in shape.split(",") if symbol.strip())
                            for shape in shapes]
                assert dataset.shape in expected, (name, dataset.shape, expected)
            values = leaf["eigenvalues"][()]
            assert np.all(np.diff(values) <= 0)  # descending
            # attributes: int64 for integer fields, float64 for the others, str for regime
            for name, value in leaf.attrs.items():
                if name in fields.INT_FIELDS:
                    assert np.asarray(value).dtype == np.int64, name
                elif name in fields.STR_FIELDS:
                    assert isinstance(value, str), name
                elif name in fields.MEASURE_FIELDS:
                    assert np.asarray(value).dtype == np.float64, name
            for name, kind in (("step", np.int64), ("history", np.int64), ("complete", np.bool_)):
                assert np.asarray(group.attrs[name]).dtype == kind, name
            assert group.attrs["step"] == step and group.attrs["complete"]
            assert all(isinstance(group.attrs[name], str) for name in ("path", "sha256", "file_signature"))
        for name, kind in (("n", np.int64), ("n_outputs", np.int64), ("zero_one_targets", np.bool_)):
            assert np.asarray(probe.attrs[name]).dtype == kind, name
        assert probe.attrs["task"] == "regression" and isinstance(probe.attrs["x_sha256"], str)
        np.testing.assert_array_equal(probe["anchor_x"][()], np.linspace(-1, 1, 40, dtype=np.float32)[:30])
        assert store.attrs["format"] == "fdl-store" and np.asarray(store.attrs["schema_version"]).dtype == np.int64
        # /trajectories/<probe>/<layer>/<field>: one value per complete checkpoint, sorted by step
        trajectory = store["trajectories/train/2:input"]
        assert trajectory["step"].dtype == np.int64 and trajectory["step"][()].tolist() == steps
        for name in fields.RECORD_FIELDS:
            data = trajectory[name]
            assert data.shape == (len(steps),), name
            if name in ("path", "sha256", "regime"):
                assert h5py.check_string_dtype(data.dtype).encoding == "utf-8", name
            elif name != "step":
                assert data.dtype == np.float64, name


# ------------------------------------------------------------------ 3. and 4. the notebook recipes


def _python_blocks() -> list[str]:
    section = STORE.split("## Reading from Python (with fdl installed)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_records_snippet_names_the_classify_command_it_matches(sample_store: Path) -> None:
    code = _python_blocks()[0]
    named = re.search(r"as `fdl classify (.*?)`", code)
    assert named, "the snippet's Thresholds(...) line names the `fdl classify` it matches"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace('"sample.fdl.h5"', repr(str(sample_store))), "docs/store.md", "exec"), {})
    done = fdl_in_process("classify", sample_store, *named.group(1).split())
    assert done.returncode == 0, done.stderr
    assert printed.getvalue().splitlines()[1:] == done.stderr.splitlines()[1:]


def test_the_anchor_inputs_recipe_gives_the_x_of_the_eigenfunctions(regression_store: Path) -> None:
    section = STORE.split("## Reading from Python (with fdl installed)", 1)[1]
    recipe = re.search(r"`(run\.probes\(\)\[probe\]\.anchor_x)`", section)
    assert recipe, "store.md names how to read the anchors' inputs from Python"
    with StoreReader(regression_store) as run:
        probe, layer = run.series()[0]
        anchor_x = eval(recipe.group(1), {"run": run, "probe": probe})  # noqa: S307 - the doc's own expression
        e_k = run.array(20, "eigenfunctions", probe=probe, layer=layer)
    assert e_k is not None and anchor_x.shape == (e_k.shape[0],)
    np.testing.assert_array_equal(anchor_x, np.linspace(-1, 1, 40, dtype=np.float32)[:30].astype(np.float64))
