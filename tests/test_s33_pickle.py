"""A model pickled whole (`torch.save(model)`, read with --trust-pickle) leaves the provenance's `model`,
`model_sha256` and `model_file` null: the pickle names its classes, whose code unpickling imports as it is now. An
edit of the module that defines the class (netdef.py) or of a helper that module imports, between two `fdl analyze`
runs on one store, resumed in silence, mixing checkpoints run through two versions of the model's code. The store's
`model_imports` now records those modules' sha256 too, and a resume compares them."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.test_analyze import fdl
from tests.test_s33_imports import _sha, _wide_terminal
from tests.test_walk_fixes import SMALL

NETDEF = """
from torch import nn
from s33pk_layers import act


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(act(self.inp(x)))
"""
LAYERS = "import torch\n\n\ndef act(x):\n    return torch.{}(x)\n"

__all__ = ["_wide_terminal"]  # an autouse fixture


def _forget() -> None:
    """The run's modules out of sys.modules, as each `fdl` process starts without them."""
    for name in [name for name in sys.modules if name.startswith("s33pk_")]:
        del sys.modules[name]


@pytest.fixture()
def pickled_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path/run/step_{0,10,20}.pt: s33pk_netdef.Net pickled whole, whose forward calls s33pk_layers.act; the
    folder on sys.path, as PYTHONPATH puts a trainer's code there for fdl; and probe.npz."""
    (tmp_path / "s33pk_netdef.py").write_text(NETDEF)
    (tmp_path / "s33pk_layers.py").write_text(LAYERS.format("tanh"))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = importlib.import_module("s33pk_netdef").Net
    (tmp_path / "run").mkdir()
    for step in (0, 10, 20):
        torch.manual_seed(step)
        torch.save(net(), tmp_path / "run" / f"step_{step}.pt")
    _forget()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    yield tmp_path
    _forget()


def _analyze(root: Path, run: str, store: str, *extra: str) -> tuple[int, str]:
    _forget()
    done = fdl("analyze", root / run, "--trust-pickle", "--probe", root / "probe.npz", "--out", root / store, *extra, *SMALL)
    return done.code, " ".join(done.stderr.split())


def test_an_edited_module_of_the_pickled_models_code_is_refused_and_an_unchanged_one_resumes(pickled_run: Path) -> None:
    root = pickled_run
    assert _analyze(root, "run", "run.h5", "--steps", "0,10")[0] == 0
    recorded = {name: _sha(root / f"{name}.py") for name in ("s33pk_layers", "s33pk_netdef")}
    with StoreReader(root / "run.h5") as reader:
        assert reader.model_imports == recorded  # the class's module, and the helper's its forward calls
        assert reader.provenance["model_sha256"] is None and "model_imports" not in reader.provenance
    (root / "s33pk_layers.py").write_text(LAYERS.format("relu"))
    code, said = _analyze(root, "run", "run.h5")
    assert code == 1 and "Traceback" not in said
    assert (
        f"error: the model code {root / 's33pk_layers.py'} (the module s33pk_layers, code of the model the checkpoints "
        f"pickle) changed since {root / 'run.h5'} was analysed: its checkpoints were run through another version of it"
    ) in said
    assert f"got: s33pk_layers: sha256 {_sha(root / 's33pk_layers.py')[:16]}… now, {recorded['s33pk_layers'][:16]}…" in said
    assert "fix: restore the file (e.g. git stash / git checkout), or re-analyse everything with --overwrite" in said
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10]
    (root / "s33pk_layers.py").write_text(LAYERS.format("tanh"))  # restored: resumed without a word of it
    code, said = _analyze(root, "run", "run.h5")
    assert code == 0, said
    assert "s33pk" not in said and "2 already in the store" in said
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10, 20] and reader.model_imports == recorded


def test_a_store_without_the_record_resumes_with_a_note_and_records_it(pickled_run: Path) -> None:
    root = pickled_run
    assert _analyze(root, "run", "run.h5", "--steps", "0,10")[0] == 0
    with h5py.File(root / "run.h5", "r+") as store:  # as an fdl before this one wrote it
        del store.attrs["model_imports"]
    code, said = _analyze(root, "run", "run.h5")
    assert code == 0, said
    assert (
        f"note: {root / 'run.h5'} holds no record of the modules of its pickled model's code: their sha256 "
        "(s33pk_layers, s33pk_netdef) is recorded now, and an edit of them is refused from the next resume on; the "
        "checkpoints stored so far were not checked against them"
    ) in said
    with StoreReader(root / "run.h5") as reader:
        assert reader.steps() == [0, 10, 20]
        assert reader.model_imports == {name: _sha(root / f"{name}.py") for name in ("s33pk_layers", "s33pk_netdef")}


def test_a_model_of_torchs_layers_alone_records_no_module(pickled_run: Path) -> None:
    """nn.Sequential of torch's layers: no code of the user's to record (torch's, an installed package's, is not the
    run's business), so nothing a resume could refuse; the record is empty, not absent."""
    root = pickled_run
    (root / "plain").mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        torch.save(
            torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)),
            root / "plain" / f"step_{step}.pt",
        )
    code, said = _analyze(root, "plain", "plain.h5")
    assert code == 0, said
    with h5py.File(root / "plain.h5", "r") as store:
        assert json.loads(store.attrs["model_imports"]) == {}
