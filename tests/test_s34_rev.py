"""A review of the recent code (compare's previous checkpoints, ...): each test fails without its fix."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.cli_run import fdl_in_process
from tests.test_report import make_store
from tests.test_s33_fix import LAYERS, PACKAGE, _analyze, _recorded, package_run  # noqa: F401 - a fixture


def _chained(steps: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Scalars of a store analysed at every one of `steps`: each compared with the step before it."""
    return {
        step: {"prev_step": steps[i - 1] if i else None, "cka_prev": None if i == 0 else 0.9 - 0.01 * i}
        for i, step in enumerate(steps)
    }


def test_compare_keeps_cka_prev_where_the_previous_checkpoints_are_matched_to_each_other(tmp_path: Path) -> None:
    """Two runs saved a step apart (0, 100, 200 against 1, 101, 201) are matched to the nearest steps, and so are
    their previous checkpoints: compare left cka_prev / overlap_prev out at every step ("the runs' previous
    checkpoints differ (e.g. at steps 100↔101: A's is step 0, B's step 1)"), though 0 and 1 are a matched pair."""
    a = make_store(tmp_path / "a.h5", steps=(0, 100, 200), scalars=_chained((0, 100, 200)))
    b = make_store(tmp_path / "b.h5", steps=(1, 101, 201), scalars=_chained((1, 101, 201)))
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert "prev_step_differs" not in data
    assert [step["differences"]["cka_prev"] for step in data["steps"]] == [None, 0, 0]
    done = fdl_in_process("compare", a, b, "--no-overlap")
    said = " ".join((done.stdout + done.stderr).split())
    assert "previous checkpoints differ" not in said, said
    from fdl_cli.report import previous_differs

    # a previous checkpoint of one run against none in the other, or against one not its partner, still differs
    assert previous_differs({"prev_step": 10, "cka_prev": 0.5}, {"prev_step": None, "cka_prev": None}, {10: 11})
    assert previous_differs({"prev_step": 10, "cka_prev": 0.5}, {"prev_step": 5, "cka_prev": 0.5}, {10: 11})


def test_python_m_records_a_symlinked_package_of_the_current_folder_as_fdl_does(
    package_run: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The current folder's package a symlink to a checkout elsewhere (`ln -s ../repo/src/pkg pkg`): `python -m fdl_cli`
    took its real path for one outside the current folder and imported it through sys.path, recording and checking
    none of its modules (model_imports absent), so a store it made resumed in silence after an edit of pkg/layers.py,
    while `fdl` refused."""
    root = package_run
    elsewhere = root / "checkout" / PACKAGE
    elsewhere.parent.mkdir()
    (root / PACKAGE).rename(elsewhere)
    (root / PACKAGE).symlink_to(elsewhere, target_is_directory=True)
    assert _analyze(root, "m.h5", python_m=True, monkeypatch=monkeypatch).startswith("exit 0")
    recorded = _recorded(root / "m.h5")
    assert recorded is not None and f"{PACKAGE}.layers" in recorded
    (elsewhere / "layers.py").write_text(LAYERS.format("Tanh"))
    said = _analyze(root, "m.h5", python_m=True, monkeypatch=monkeypatch, steps="0,10,20")
    assert said.startswith("exit 1: error: the model code ") and f"(the module {PACKAGE}.layers, which the model" in said


def test_python_m_records_a_namespace_package_of_the_current_folder_as_fdl_does(
    package_run: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The current folder's package without an __init__.py (a namespace package, as many a research folder is):
    `python -m fdl_cli` left it to sys.path's finder, recording and checking none of its modules, while `fdl` served it
    and recorded pkg.layers: a store made by fdl, resumed by python -m after an edit of pkg/layers.py, resumed silently."""
    root = package_run
    (root / PACKAGE / "__init__.py").unlink()
    for python_m in (True, False):
        out = f"{'m' if python_m else 'script'}.h5"
        assert _analyze(root, out, python_m=python_m, monkeypatch=monkeypatch).startswith("exit 0")
        assert list(_recorded(root / out) or {}) == [f"{PACKAGE}.layers"], out
    (root / PACKAGE / "layers.py").write_text(LAYERS.format("Tanh"))
    said = _analyze(root, "script.h5", python_m=True, monkeypatch=monkeypatch, steps="0,10,20")
    assert said.startswith("exit 1: error: the model code ") and f"(the module {PACKAGE}.layers, which the model" in said


def test_a_served_namespace_package_leaves_the_folders_other_namespace_folders_to_python(
    package_run: Path,  # noqa: F811 - the fixture
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python takes a regular package found anywhere on sys.path over a namespace portion: a run folder `s34revlib/` of
    no __init__.py (as `wandb/` beside a training script) does not stand in for the installed s34revlib that the model
    imports, under python -m as under fdl, once the model's own namespace package is served."""
    root = package_run
    (root / PACKAGE / "__init__.py").unlink()
    (root / PACKAGE / "layers.py").write_text("import s34revlib\n\n\ndef act():\n    return s34revlib.activation()\n")
    (root / "s34revlib").mkdir()  # a folder of run outputs, no code
    installed = tmp_path_factory.mktemp("site") / "s34revlib"
    installed.mkdir()
    (installed / "__init__.py").write_text("from torch import nn\n\n\ndef activation():\n    return nn.ReLU()\n")
    monkeypatch.syspath_prepend(str(installed.parent))
    try:
        for python_m in (True, False):
            said = _analyze(root, f"{python_m}.h5", python_m=python_m, monkeypatch=monkeypatch)
            assert said.startswith("exit 0"), said
    finally:
        sys.modules.pop("s34revlib", None)
