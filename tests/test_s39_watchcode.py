"""`fdl analyze --watch` runs the model code it imported at its start to its end: the code beyond the model file
too, edited or removed while the watch runs, as the model file is (tests/test_s37_watch_change.py): a module of the
model's folder that model.py imports (`from mylayers import act`, recorded in the store's `model_imports`), and the
user code of a model pickled whole (`torch.save(model)`, read with --trust-pickle). Each change is warned of once,
naming the file; the checkpoints that arrive after it run the code the watch started with (the edit raises once
imported) and are recorded as that code; the next plain run is refused for the change, and --accept-model-change
records it as a change of that module.

Two stores, each made in its module fixture by a plain run, a plain watch and a further run (tiny MLPs, a 24-input
probe), each watch's polls steps of the test in place of its sleeps (`_polls`), the last one's Ctrl-C. And a module of
the folder that the factory or a forward pass imports, recorded and so compared and watched as model.py's own."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import test_s33_imports as imports
from tests import test_s33_pickle as pickled
from tests.test_prev_walkback import _arrive, _polls
from tests.test_s37_watch_change import FLAG, WATCH, _attrs, _watch, _write_settled

RAISES = "\nraise RuntimeError('the code edited while the watch ran was imported')\n"
KEPT = "the watch goes on running the code it started with, which its checkpoints are recorded as"


def _hold(root: Path, steps: tuple[int, ...]) -> Path:
    """root/held/ckpt_step{steps}.pt (training-loop dicts of _run_folder's MLP), to arrive in run/ during a watch."""
    held = root / "held"
    held.mkdir()
    for step in steps:
        torch.manual_seed(step)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        torch.save({"model_state_dict": net.state_dict(), "step": step}, held / f"ckpt_step{step}.pt")
    return held


def _changed(file: Path, now: str, then: str) -> str:
    return (
        f"warning: the model code {file} changed while this watch runs (sha256 {now[:16]}… now, {then[:16]}… when it "
        f"started): {KEPT}; run again, "
    )


def _removed(file: Path) -> str:
    return f"warning: the model code {file} was removed (or cannot be read) while this watch runs: {KEPT}; put it back"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """model.py imports mylayers.py beside it (A: ReLU). Steps 0 and 10 stored; watched plainly while mylayers.py is
    edited (E: raises once imported), step 20 arrives, and mylayers.py is removed; then mylayers.py D (Tanh), run
    plainly (refused); then watched with the flag while step 30 arrives, mylayers.py is edited (E) and step 40
    arrives. What each said, and the store after each."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # each message on one line
        root = imports._helper_run(tmp_path_factory.mktemp("folder"))
        layers = root / "mylayers.py"
        held = _hold(root, (30, 40))
        (root / "run" / "ckpt_step20.pt").rename(held / "ckpt_step20.pt")
        got: dict[str, Any] = {"root": root, "layers": layers, "A": imports._sha(layers)}
        assert imports._analyze(root)[0] == 0
        code_e = imports.LAYERS.format("ReLU") + RAISES
        got["plain"] = _watch(
            root,
            [
                lambda: _write_settled(layers, code_e),
                lambda: _arrive(held, root / "run", "ckpt_step20.pt"),
                lambda: None,
                layers.unlink,
                lambda: None,
            ],
        )
        got["E"] = hashlib.sha256(code_e.encode()).hexdigest()  # mylayers.py removed since
        got["after_plain"] = _attrs(root / "run.h5"), _model_imports(root / "run.h5")
        _write_settled(layers, imports.LAYERS.format("Tanh"))
        got["D"] = imports._sha(layers)
        before = (root / "run.h5").read_bytes()
        got["rerun"] = imports._analyze(root)
        got["rerun_kept"] = (root / "run.h5").read_bytes() == before
        got["flagged"] = _watch(
            root,
            [
                lambda: _arrive(held, root / "run", "ckpt_step30.pt"),
                lambda: _write_settled(layers, code_e),
                lambda: _arrive(held, root / "run", "ckpt_step40.pt"),
                lambda: None,
            ],
            FLAG,
        )
        got["after_flagged"] = _attrs(root / "run.h5"), _model_imports(root / "run.h5")
        return got


def _model_imports(store: Path) -> dict[str, str] | None:
    from fdl_cli.store import StoreReader

    with StoreReader(store) as reader:
        return reader.model_imports


def test_a_folder_module_edited_or_removed_during_a_plain_watch_is_warned_of_once_each_and_never_run(
    folder: dict[str, Any],
) -> None:
    layers, a = folder["layers"], folder["A"]
    code, said = folder["plain"]
    assert code == 130 and "Traceback" not in said and "failed" not in said, said
    assert said.count(_changed(layers, folder["E"], a)) == 1, said
    assert (
        "run again, the same command is refused for the change: restore the file, or add --accept-model-change if it "
        "leaves the numbers as they were, or re-analyse everything with --overwrite (or another --out)"
    ) in said
    assert said.count(_removed(layers)) == 1 and said.index(_removed(layers)) > said.index("changed while"), said
    assert said.count("model code") == 2  # model.py, untouched, is not named
    assert "1 checkpoint analysed, 2 already in the store" in said  # step 20, after the edit that raises
    (steps, changes, _), recorded = folder["after_plain"]
    assert steps == [0, 10, 20] and changes is None and recorded == {"mylayers": a}  # the code the watch ran


def test_the_next_plain_run_is_refused_and_the_flag_records_the_modules_change(folder: dict[str, Any]) -> None:
    root, layers, a, d = folder["root"], folder["layers"], folder["A"], folder["D"]
    code, said = folder["rerun"]
    assert code == 1 and "Traceback" not in said and folder["rerun_kept"]
    assert f"error: the model code {layers} (the module mylayers, which the model imports) changed since" in said
    assert f"mylayers: sha256 {d[:16]}… now" in said
    code, said = folder["flagged"]
    assert code == 130 and "Traceback" not in said and "failed" not in said, said
    assert said.count(f"{FLAG}: the model code changed since {root / 'run.h5'} was analysed") == 1
    assert said.count(_changed(layers, folder["E"], d)) == 1, said
    assert "run again, the same command (--accept-model-change) records the change as a further one" in said
    assert "2 checkpoints analysed, 3 already in the store" in said  # step 40, after the edit that raises
    (steps, changes, provenance), recorded = folder["after_flagged"]
    assert steps == [0, 10, 20, 30, 40] and recorded == {"mylayers": d}  # D, which the watch ran, not E
    assert changes is not None and len(changes) == 1
    (change,) = changes
    assert change["from_step"] == 30 and change["kept_old"] == []
    assert change["changed"] == [{"code": str(layers), "module": "mylayers", "old": a, "new": d}]
    assert provenance["model_sha256"] == imports._sha(root / "model.py")  # the model file itself unchanged


@pytest.fixture(scope="module")
def pickle_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """s33pk_netdef.Net pickled whole, whose forward calls s33pk_layers.act (A: tanh). Steps 0 and 10 stored;
    watched plainly while s33pk_layers.py is edited (E: raises once imported) and step 20 arrives; then
    s33pk_layers.py D (relu), run plainly (refused), and with the flag once step 30 arrived. What each said, and the
    store after each."""
    root = tmp_path_factory.mktemp("pickled")
    layers = root / "s33pk_layers.py"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")
        patch.syspath_prepend(str(root))
        (root / "s33pk_netdef.py").write_text(pickled.NETDEF)
        layers.write_text(pickled.LAYERS.format("tanh"))
        pickled._forget()
        net = importlib.import_module("s33pk_netdef").Net
        (root / "run").mkdir()
        (root / "held").mkdir()
        for step in (0, 10, 20, 30):
            torch.manual_seed(step)
            torch.save(net(), root / ("run" if step < 20 else "held") / f"step_{step}.pt")
        rng = np.random.default_rng(0)
        np.savez(root / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
        got: dict[str, Any] = {"root": root, "layers": layers, "A": imports._sha(layers)}
        got["netdef"] = imports._sha(root / "s33pk_netdef.py")
        assert pickled._analyze(root, "run", "run.h5")[0] == 0
        code_e = pickled.LAYERS.format("tanh") + RAISES
        got["plain"] = _pickled_watch(
            root,
            [
                lambda: _write_settled(layers, code_e),
                lambda: _arrive(root / "held", root / "run", "step_20.pt"),
                lambda: None,
            ],
        )
        got["E"] = imports._sha(layers)
        got["after_plain"] = _attrs(root / "run.h5"), _model_imports(root / "run.h5")
        _write_settled(layers, pickled.LAYERS.format("relu"))
        got["D"] = imports._sha(layers)
        got["rerun"] = pickled._analyze(root, "run", "run.h5")
        _arrive(root / "held", root / "run", "step_30.pt")
        got["flagged"] = pickled._analyze(root, "run", "run.h5", FLAG)
        got["after_flagged"] = _attrs(root / "run.h5"), _model_imports(root / "run.h5")
    pickled._forget()  # the run's modules out of sys.modules, as the next test's fdl process starts without them
    return got


def _pickled_watch(root: Path, steps: list[Callable[[], object]]) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as patch, _polls(patch, *steps):
        return pickled._analyze(root, "run", "run.h5", *WATCH)


def test_a_pickled_models_module_edited_during_a_watch_is_warned_of_once_and_never_run(
    pickle_run: dict[str, Any],
) -> None:
    layers, a, e = pickle_run["layers"], pickle_run["A"], pickle_run["E"]
    code, said = pickle_run["plain"]
    assert code == 130 and "Traceback" not in said and "failed" not in said, said
    assert said.count(_changed(layers, e, a)) == 1, said
    assert said.count("model code") == 1  # s33pk_netdef.py, untouched, is not named
    assert "1 checkpoint analysed, 2 already in the store" in said  # step 20, unpickled after the edit that raises
    (steps, changes, _), recorded = pickle_run["after_plain"]
    assert steps == [0, 10, 20] and changes is None
    assert recorded == {"s33pk_layers": a, "s33pk_netdef": pickle_run["netdef"]}  # the code the watch ran


def test_the_next_plain_run_is_refused_and_the_flag_records_the_pickled_codes_change(
    pickle_run: dict[str, Any],
) -> None:
    root, layers, a, d = pickle_run["root"], pickle_run["layers"], pickle_run["A"], pickle_run["D"]
    code, said = pickle_run["rerun"]
    assert code == 1 and "Traceback" not in said
    assert (
        f"error: the model code {layers} (the module s33pk_layers, code of the model the checkpoints pickle) changed "
        f"since {root / 'run.h5'} was analysed"
    ) in said
    code, said = pickle_run["flagged"]
    assert code == 0 and "Traceback" not in said, said
    assert said.count(f"{FLAG}: the model code changed since {root / 'run.h5'} was analysed") == 1
    (steps, changes, _), recorded = pickle_run["after_flagged"]
    assert steps == [0, 10, 20, 30] and recorded == {"s33pk_layers": d, "s33pk_netdef": pickle_run["netdef"]}
    assert changes is not None and len(changes) == 1
    (change,) = changes
    assert change["from_step"] == 30
    assert change["changed"] == [{"code": str(layers), "module": "s33pk_layers", "old": a, "new": d}]


LAZY = """
import torch
from torch import nn


class Head(nn.Linear):
    def forward(self, x):
        from myhead import scale  # imported by the first forward pass

        return super().forward(x) * scale()


def build():
    from mylayers import act  # imported by the factory, not as model.py is

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act(), Head(8, 3))
"""


def test_a_folder_module_the_factory_or_forward_pass_imports_is_recorded_and_an_edit_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`def build(): from mylayers import act`, and an import in a forward pass, are imports of the model's code as
    model.py's own top-level ones: recorded (they were not, being made after model.py was imported), so an edit of
    one between two runs is refused, and one while a watch runs warned of, where both went on in silence."""
    monkeypatch.setenv("COLUMNS", "1000")
    root = imports._helper_run(tmp_path)
    (root / "model.py").write_text(LAZY)
    (root / "myhead.py").write_text("def scale():\n    return 1.0\n")
    assert imports._analyze(root, "--steps", "0,10")[0] == 0
    recorded = {name: imports._sha(root / f"{name}.py") for name in ("mylayers", "myhead")}
    assert _model_imports(root / "run.h5") == recorded
    _write_settled(root / "myhead.py", "def scale():\n    return 2.0\n")
    code, said = imports._analyze(root)
    assert code == 1 and "Traceback" not in said
    assert f"error: the model code {root / 'myhead.py'} (the module myhead, which the model imports) changed" in said
    _write_settled(root / "myhead.py", "def scale():\n    return 1.0\n")
    code, said = _watch(root, [lambda: _write_settled(root / "mylayers.py", imports.LAYERS.format("Tanh"))])
    assert code == 130 and said.count(f"warning: the model code {root / 'mylayers.py'} changed while this watch") == 1
