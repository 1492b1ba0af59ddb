"""The Python reader and the exports of a store of several series (session 22, a power user's review).

1. `StoreReader.records()` of a store of several series, without a selection that leaves one, gave two series'
   records interleaved (docs/store.md's snippet then kept one series' `d_lr` a step, and `classify_run` got both
   mixed); it now refuses, as `array()` does, and `all_series=True` gives them all.
2. That refusal spoke to a Python caller in the CLI's flags and asked for probe= and layer= even where one is
   enough.
3. `fdl export` of one series of such a store wrote rows without `probe` / `layer` (`report --format csv` has
   them): two exports concatenated could not be told apart.
4. The resume refusal's `got:` said each differing probe twice (`probes.X` and `probe X`).
5. `--redo STEP` of an unchanged file said nothing of it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import StoreError
from fdl_cli.store import StoreReader
from tests.test_analyze import analyze, fdl, run  # noqa: F401 - `run` is the module's fixture
from tests.test_s16_python import _snippet
from tests.test_store import random_entry, write

KEYS = (("train", "fc2:input"), ("train", "blocks.0.attn"), ("test", "fc2:input"))


def _refusal(path: Path, **selection: str) -> StoreError:
    with StoreReader(path) as reader, pytest.raises(StoreError, match="several probe/layer series") as excinfo:
        reader.records(**selection)
    return excinfo.value


def test_records_of_several_series_refuse_a_selection_that_leaves_several_and_give_all_when_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(step, KEYS) for step in (1, 5)])
    assert "pass probe= (one of 'test', 'train') and layer= (one of " in str(_refusal(path))
    with StoreReader(path) as reader:
        everything = reader.records(all_series=True)
        assert [(r["step"], r["probe"], r["layer"]) for r in everything] == [
            (step, probe, layer) for step in (1, 5) for probe, layer in sorted(KEYS)]
        assert [(r["probe"], r["layer"]) for r in reader.records(probe="train", all_series=True)] == [
            ("train", "blocks.0.attn"), ("train", "fc2:input")] * 2
        one = reader.records(probe="test")  # one series left: no keyword needed
        assert [(r["step"], r["probe"]) for r in one] == [(1, "test"), (5, "test")]


def test_the_refusal_names_only_the_keywords_needed_in_pythons_terms(tmp_path: Path) -> None:
    two_probes, two_layers = tmp_path / "probes.h5", tmp_path / "layers.h5"
    write(two_probes, [random_entry(1, (("train", "fc2:input"), ("test", "fc2:input")))])
    write(two_layers, [random_entry(1, (("train", "fc2:input"), ("train", "blocks.0.attn")))],
          provenance={"model": "model.py:build", "layers": ["fc2:input", "blocks.0.attn"], "options": {"top_k": 3}})
    by_probe = _refusal(two_probes)
    assert by_probe.fix is not None and by_probe.fix.startswith("pass probe= (one of 'test', 'train');")
    assert "layer=" not in by_probe.fix and "--" not in by_probe.fix
    by_layer = _refusal(two_layers)
    assert by_layer.fix is not None and by_layer.fix.startswith("pass layer= (one of 'blocks.0.attn', 'fc2:input');")
    assert "probe=" not in by_layer.fix and "--" not in by_layer.fix
    with StoreReader(two_layers) as reader, pytest.raises(StoreError) as excinfo:
        reader.array(1, "eigenvalues", probe="train")  # array() says the same, but records' all_series=True
    assert excinfo.value.fix == "pass layer= (one of 'blocks.0.attn', 'fc2:input')"
    assert "all_series=True for every series' records" in by_layer.fix


@pytest.fixture(scope="module")
def two_probes(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    store = tmp_path_factory.mktemp("api") / "two.h5"
    done = analyze(run, store, "--probe", f"test={run / 'test.npz'}", "--top-k", "4")
    assert done.code == 0, done.stderr
    return store


def test_the_docs_snippet_reads_one_series_of_a_store_of_several(two_probes: Path) -> None:
    scope: dict[str, object] = {}
    with io.StringIO() as printed, contextlib.redirect_stdout(printed):
        exec(compile(_snippet().replace('"sample.fdl.h5"', repr(str(two_probes))), "docs/store.md", "exec"), scope)
    with StoreReader(two_probes) as reader:
        assert len(reader.series()) == 2
        expected = reader.records(probe=scope["probe"], layer=scope["layer"])  # type: ignore[arg-type]
    assert scope["records"] == expected and [r["step"] for r in expected] == [0, 10, 20, 30]
    assert scope["d_lr"] == {r["step"]: r["d_lr"] for r in expected}


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_exports_of_one_series_of_several_name_it_in_every_row(two_probes: Path, run: Path, tmp_path: Path) -> None:  # noqa: F811
    rows = []
    for probe in ("probe", "test"):
        done = fdl("export", str(two_probes), "--what", "trajectories", "--probe", probe)
        assert done.code == 0, done.stderr
        assert done.stdout.splitlines()[0].endswith(",cross_entropy,probe,layer")
        rows += _csv(done.stdout)
    assert [(row["step"], row["probe"], row["layer"]) for row in rows] == [
        (str(step), probe, "2:input") for probe in ("probe", "test") for step in (0, 10, 20, 30)]
    columns = json.loads(fdl("export", str(two_probes), "--what", "trajectories", "--probe", "test",
                             "--format", "json").stdout)
    assert columns["probe"] == ["test"] * 4 and columns["layer"] == ["2:input"] * 4
    values = fdl("export", str(two_probes), "--what", "eigenvalues", "--probe", "test", "--steps", "0").stdout
    assert values.splitlines()[0] == "step,k,eigenvalues,probe,layer"
    assert {(row["step"], row["probe"], row["layer"]) for row in _csv(values)} == {("0", "test", "2:input")}
    functions = fdl("export", str(two_probes), "--what", "eigenfunctions", "--probe", "test", "--steps", "0").stdout
    assert functions.splitlines()[:2] == [
        "step,point,k,value,probe,layer", functions.splitlines()[1].rsplit(",", 2)[0] + ",test,2:input"]
    [row] = json.loads(fdl("export", str(two_probes), "--what", "utility", "--probe", "test", "--steps", "10",
                           "--format", "json").stdout)
    assert list(row) == ["step", "utility", "probe", "layer"] and (row["probe"], row["layer"]) == ("test", "2:input")
    # a store of one series keeps its columns
    one = tmp_path / "one.h5"
    assert analyze(run, one, "--steps", "0").code == 0
    assert fdl("export", str(one), "--what", "eigenvalues").stdout.splitlines()[0] == "step,k,eigenvalues"
    assert list(json.loads(fdl("export", str(one), "--what", "trajectories", "--format", "json").stdout))[-1] == (
        "cross_entropy")


def test_the_resume_refusal_says_a_differing_probe_once(two_probes: Path, run: Path, tmp_path: Path) -> None:  # noqa: F811
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(5)
    x = rng.normal(size=(25, 4)).astype(np.float32)
    np.savez(other, x=x, y=(x[:, 0] > 0).astype(np.int64))
    before = two_probes.read_bytes()
    refused = analyze(run, two_probes, "--probe", f"test={other}", "--top-k", "4")
    assert refused.code == 1 and two_probes.read_bytes() == before, refused.stderr
    [got] = [line for line in refused.stderr.splitlines() if line.strip().startswith("got:")]
    assert "probe test: sha256=" in got and "probes.test" not in got, got


def test_redo_of_an_unchanged_file_says_so_and_still_redoes(run: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "ckpts"
    shutil.copytree(run / "ckpts", folder)
    store = tmp_path / "s.h5"
    assert analyze(run, store, sources=(str(folder),)).code == 0
    redone = analyze(run, store, "--redo", "20", sources=(str(folder),))
    assert redone.code == 0, redone.stderr
    assert [record["step"] for record in redone.records] == [20, 30]
    flat = " ".join(redone.stderr.split())
    assert "--redo 20: the file of step 20 is the one stored (same sha256 " in flat, flat
    assert "analysed again as asked: its numbers equal the stored ones" in flat
    state = torch.load(folder / "epoch_20.pt", weights_only=True)
    torch.save({name: value + 0.01 for name, value in state.items()}, folder / "epoch_20.pt")
    changed = analyze(run, store, "--redo", "20", sources=(str(folder),))
    assert changed.code == 0 and "is the one stored" not in changed.stderr, changed.stderr
