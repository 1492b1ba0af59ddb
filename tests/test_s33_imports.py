"""The modules of the model's folder that a --model file imports (`from mylayers import act` beside model.py) are
hashed into the store (its root attribute `model_imports`): an edit of one between two `fdl analyze` runs on the
same store resumed in silence, mixing checkpoints analysed with two versions of the model's code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import pytest

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl
from tests.test_store import random_entry, write
from tests.test_walk_fixes import SMALL, _run_folder

MODEL = """
import torch
from torch import nn
from mylayers import act


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 3))
"""
LAYERS = "from torch import nn\n\n\ndef act():\n    return nn.{}()\n"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _helper_run(root: Path) -> Path:
    """_run_folder's run, whose model.py imports its activation from mylayers.py beside it."""
    root.mkdir(exist_ok=True)
    _run_folder(root)
    (root / "model.py").write_text(MODEL)
    (root / "mylayers.py").write_text(LAYERS.format("ReLU"))
    return root


def _analyze(root: Path, *extra: str) -> tuple[int, str]:
    done = fdl(
        "analyze",
        root / "run",
        "--model",
        f"{root / 'model.py'}:build",
        "--probe",
        root / "probe.npz",
        "--out",
        root / "run.h5",
        *extra,
        *SMALL,
    )
    return done.code, " ".join(done.stderr.split())


def _sha(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_an_edited_helper_module_is_refused_and_an_unchanged_or_moved_one_resumes(tmp_path: Path) -> None:
    root = _helper_run(tmp_path / "a")
    assert _analyze(root, "--steps", "0,10")[0] == 0
    recorded = _sha(root / "mylayers.py")
    (root / "mylayers.py").write_text(LAYERS.format("Tanh"))
    code, said = _analyze(root)
    assert code == 1 and "Traceback" not in said
    assert (
        f"error: the model code {root / 'mylayers.py'} (the module mylayers, which the model imports) changed since"
    ) in said
    assert f"mylayers: sha256 {_sha(root / 'mylayers.py')[:16]}… now" in said and "--overwrite" in said
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10] and reader.model_imports == {"mylayers": recorded}
        assert "model_imports" not in reader.provenance  # an fdl before it compares the provenance: left as it was
    # restored, and the run moved whole to another folder (the recorded model file gone): resumed, not a word of it
    (root / "mylayers.py").write_text(LAYERS.format("ReLU"))
    moved = root.rename(tmp_path / "b")
    code, said = _analyze(moved)
    assert code == 0, said
    assert "mylayers" not in said and "different run" not in said and "2 already in the store" in said
    with StoreReader(moved / "run.h5") as reader:
        assert reader.steps() == [0, 10, 20] and reader.model_imports == {"mylayers": _sha(moved / "mylayers.py")}


def test_a_store_written_before_they_were_recorded_resumes_and_records_them(tmp_path: Path) -> None:
    root = _helper_run(tmp_path)
    assert _analyze(root, "--steps", "0,10")[0] == 0
    with h5py.File(root / "run.h5", "r+") as store:  # as an fdl before this one wrote it
        del store.attrs["model_imports"]
    code, said = _analyze(root)
    assert code == 0, said
    assert (
        f"note: {root / 'run.h5'} holds no record of the modules its model file imports: their "
        "sha256 (mylayers) is recorded now"
    ) in said
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10, 20] and reader.model_imports == {"mylayers": _sha(root / "mylayers.py")}
    (root / "mylayers.py").write_text(LAYERS.format("Tanh"))
    code, said = _analyze(root)
    assert code == 1 and "(the module mylayers, which the model imports) changed since" in said


def test_a_model_file_that_imports_no_module_of_its_folder_records_none(tmp_path: Path) -> None:
    root = _run_folder(tmp_path)
    assert _analyze(root, "--steps", "0")[0] == 0
    with h5py.File(root / "run.h5", "r") as store:
        assert json.loads(store.attrs["model_imports"]) == {}


def test_the_writer_records_them_once_and_keeps_them(tmp_path: Path) -> None:
    """A store's `model_imports` is written by its first commit, or the first that resumes a store without it, and
    never changed; a writer given none (an fdl before it, which copies the store at each commit) keeps it."""
    path = tmp_path / "run.h5"
    write(path, [random_entry(0)], model_imports={"layers": "a" * 64})
    write(path, [random_entry(1)])
    write(path, [random_entry(2)], model_imports={"layers": "b" * 64})
    with StoreReader(path) as reader:
        assert reader.steps() == [0, 1, 2] and reader.model_imports == {"layers": "a" * 64}
    write(path, [random_entry(0)], overwrite=True)
    with StoreReader(path) as reader:
        assert reader.model_imports is None and not reader.has_model_imports
