"""Mutation testing, second round: what a mutant of fdl_cli/regimes.py, errors.py, report.py (compare), cli.py
(`fdl classify STORE...`) or checkpoints.py (--trust-pickle's placeholders) left passing every other test. Each test
here failed with such a mutant (a comparison flipped, a branch dropped, an argument swapped): it asserts what the
user reads."""

from __future__ import annotations

import os
import py_compile
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.test_s23_sec2 import _linear_run, _said
from tests.test_s25_pyc import _clean_imports  # noqa: F401 - the fixture: the model folder's imports undone

# ------------------------------------------------------------------------------------------- checkpoints.py


@pytest.mark.usefixtures("_clean_imports")
def test_compiled_code_a_trusted_checkpoint_would_import_is_refused_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted pickle naming a class of a module of the fdl.toml's folder that is there only as a .pyc: fdl's
    refusal of compiled code, with its fix (delete it), not "the file is truncated or corrupt ... re-save it"."""
    run = _linear_run(tmp_path / "run", 'model = "model.py:build"\n')
    (run / "model.py").write_text("import torch.nn as nn\n\n\ndef build():\n    return nn.Linear(4, 3)\n")
    module = types.ModuleType("s29m2_cfg")
    config = type("Config", (), {"__module__": "s29m2_cfg"})  # the training script's config, pickled whole
    module.Config = config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "s29m2_cfg", module)
    for step in (0, 10):
        (run / f"step_{step}.safetensors").unlink()
        torch.save({"model": torch.nn.Linear(4, 3).state_dict(), "config": config()}, run / f"step_{step}.pt")
    monkeypatch.delitem(sys.modules, "s29m2_cfg")
    source = tmp_path / "elsewhere" / "s29m2_cfg.py"
    source.parent.mkdir()
    source.write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n\n\nclass Config:\n    pass\n")
    pyc = run / "s29m2_cfg.pyc"
    py_compile.compile(str(source), cfile=str(pyc), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    done = fdl_in_process("analyze", run, "--trust-pickle", "--out", tmp_path / "a.h5", "--batch-size", "8")
    said = _said(done.stderr)
    assert done.returncode == 1 and "Traceback" not in said, said
    assert not (tmp_path / "ran").exists()
    assert (f"error: the model folder of {run / 'fdl.toml'} holds compiled code, which fdl does not run for an "
            f"fdl.toml's model: {pyc}, which Python would import as s29m2_cfg, and the folder holds no source of it "
            "(a .py) to read") in said, said
    assert f"fix: delete {pyc}, or give --model of your own" in said, said
    assert "corrupt" not in said, said


def _gone(monkeypatch: pytest.MonkeyPatch, base: type = object) -> type:
    """`s29m2_gone.Cfg` (a subclass of `base`), importable while the file is saved only: where fdl runs without the
    training code."""
    module = types.ModuleType("s29m2_gone")
    module.Cfg = type("Cfg", (base,), {"__module__": "s29m2_gone"})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "s29m2_gone", module)
    return module.Cfg  # type: ignore[attr-defined,no-any-return]


def _nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = {"inner": value}
    return value


def _held(config: object, path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`fdl inspect --trust-pickle` of a checkpoint of weights and `config`, whose class is gone when it runs."""
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "config": config}, path)
    monkeypatch.delitem(sys.modules, "s29m2_gone")
    from tests.test_analyze import fdl

    done = fdl("inspect", str(path), "--trust-pickle")
    assert "Traceback" not in done.stderr, done.stderr
    return done.code, _said(done.stderr)


_HELD = "it holds an object whose class cannot be imported here"


@pytest.mark.parametrize("holds", [True, False])
@pytest.mark.parametrize("how", ["items", "list", "deep"])
def test_a_class_not_importable_that_holds_weights_is_an_error_however_it_holds_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, holds: bool) -> None:
    """Weights in an object of a class not importable here are not dropped with its placeholder, whether the pickle
    gives them as a dict subclass's items (SETITEMS), a list subclass's (APPENDS: extend), or deeper than fdl looks
    (more than 16 dicts down its state); without them (a 3 deep), the placeholder stands in and the file reads."""
    weights: object = torch.zeros(2) if holds else 0.5
    if how == "items":
        config = _gone(monkeypatch, dict)({"lr": 0.1, "ema": weights})
    elif how == "list":
        config = _gone(monkeypatch, list)([0.1, weights])
    else:
        config = _gone(monkeypatch)()
        config.state = _nested(weights, 20 if holds else 3)
    path = tmp_path / "step_5.pt"
    code, said = _held(config, path, monkeypatch)
    if holds:
        assert code == 1 and f"cannot unpickle {path}: {_HELD}" in said, said
    else:
        assert code == 0 and _HELD not in said, said
        assert "step_5.pt holds objects of classes that cannot be imported here (s29m2_gone.Cfg;" in said, said


# ------------------------------------------------------------- a signal at the end of fdl's own process (signals.py)

_END = """
import os, signal, sys, types

from fdl_cli import __main__ as entry, signals


class Late:
    def __del__(self) -> None:  # run as the interpreter cleans up the modules, past the atexit handlers
        if WHEN == "cleanup":
            os.kill(os.getpid(), signal.SIGINT)
            print("cleaned up after the signal", flush=True)


def main() -> None:
    with signals.installed():  # a command that took SIGINT and SIGTERM, over
        pass
    if WHEN == "said":  # before its end is said (the few lines of an error message)
        os.kill(os.getpid(), signal.SIGINT)
        print("error: said after the signal", file=sys.stderr, flush=True)
    sys.exit(3)


WHEN = sys.argv[1]
# Python's own SIGINT handler, as in a terminal: pytest started in the background by a script (`cmd &`) hands its
# children SIGINT ignored, and this test then passed with the signal never delivered
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.modules["fdl_cli.cli"] = types.SimpleNamespace(main=main)  # the command line, without its imports
late = Late()
entry.run()
"""


@pytest.mark.parametrize("when", ["said", "cleanup"])
def test_a_ctrl_c_as_the_command_ends_leaves_its_status_and_its_message(tmp_path: Path, when: str) -> None:
    """A SIGINT while the command's end is said (before its status is known: dropped) or while the interpreter
    cleans up the modules (past fdl's last atexit handler: ignored) ends the process neither with status 0 nor by
    the signal (130), and what was being said is said."""
    import subprocess

    from tests.cli_run import REPO

    script = tmp_path / "end.py"
    script.write_text(_END, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), when], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    said = done.stderr if when == "said" else done.stdout
    assert ("error: said after the signal" if when == "said" else "cleaned up after the signal") in said, said
    assert "KeyboardInterrupt" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------- regimes.py


def test_a_reference_exactly_half_way_from_chance_to_a_perfect_fit_already_fits() -> None:
    """TRAINED_REFERENCE is "at least this far": an accuracy of 0.625 on 4 classes is (0.625 − 1/4) / (1 − 1/4) =
    0.5 exactly, and the coefficient verdict says the reference already fits the probe."""
    from tests.test_s28_mut import FITS, _coefficient_run

    said = [line for line in _coefficient_run(0.625, {}) if FITS in line]
    assert len(said) == 1 and "(accuracy 0.6250, chance 1/C = 0.2500)" in said[0], said


@pytest.mark.parametrize(("rank", "said"), [(11, True), (12, False)])
def test_an_mf_layer_of_rank_exactly_c_plus_mf_extra_is_said_to_follow_from_the_layer(rank: int, said: bool) -> None:
    """An MF verdict of 64 units whose rank on the probe is 11 at the reference and 11 at the end, before 10
    outputs (mf_extra 1): k95_utility ≤ rank ≤ C + mf_extra, so MF follows from the layer; a rank of 12 can read EF."""
    from fdl_cli.regimes import classify_run, describe

    base = {"n_outputs": 10, "n_features": 64, "k95_utility": 3}
    records = [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0, "rank": 11},
               {**base, "step": 10, "cka_init": 0.5, "overlap_init": 0.5, "rank": rank}]
    verdict = classify_run(records)
    assert verdict.regime == "MF"
    line = ("the layer spans 11 directions on the probe at step 10 (rank 11 ≤ C + mf_extra = 11; its rank was 11 at "
            "the reference (step 0) already), so k95_utility cannot exceed the MF limit")
    assert any(text.startswith(line) for text in describe(verdict, records)) == said


# ------------------------------------------------------------------------------- cli.py: fdl classify STORE...


def test_down_the_rows_says_each_way_a_column_moves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Four stores of a sweep, each column moving its own way down the rows: strictly ("falls", "rises"), with a tie
    ("never rises"), not at all ("constant"), or unsaid where a store lacks it; the MF step is no measure to trend.
    --expect lists every store that differs."""
    from tests.test_report import make_store
    from tests.test_s29_sweep import classify

    columns = {"cka_init": (0.9, 0.8, 0.7, 0.6), "overlap_init": (0.5, 0.6, 0.7, 0.8), "d_lr": (0.5, 0.4, 0.4, 0.3),
               "accuracy": (0.7, 0.8, 0.9, None)}
    stores = []
    for row in range(4):
        final = {"k95_utility": 2, "r2": 0.5, **{name: values[row] for name, values in columns.items()}}
        start = {"cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 2, "d_lr": 0.9, "accuracy": 0.5}
        stores.append(make_store(tmp_path / f"alpha_{row}.h5", steps=(0, 100), scalars={0: start, 100: final}))
    code, _, err = classify(capsys, *stores, "--expect", "EF")
    said = next(line for line in err.splitlines() if line.startswith("down the rows: "))
    for words in ("CKA₀ falls;", "overlap₀ rises;", "D_LR never rises;",
                  f"acc rises (over 3 of 4 stores; {stores[3]} has none);", "k95 Π̂ constant;", "r2 constant"):
        assert words in said, said
    assert "MF since" not in said, said
    assert code == 3
    assert ("expected EF: 4 of 4 stores differ: " + ", ".join(f"{store} (MF)" for store in stores)) in err, err


# ------------------------------------------------------------------------------------ report.py: fdl compare


def _compare(a: Path, b: Path) -> dict:  # type: ignore[type-arg]
    import json

    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_run_whose_output_count_changes_is_said_to_differ_where_it_does(tmp_path: Path) -> None:
    """Run B's head grows from 2 outputs to 3 (a class-incremental run), run A's stays at 2: at the steps where
    their C differ, the note says the differences compare different tasks, though at others C agree."""
    from tests.test_s29_rev2 import _store

    a = _store(tmp_path / "a.h5", 0, {})
    b = _store(tmp_path / "b.h5", 1, {"n_outputs": [2, 2, 3]})
    notes = " ".join(_compare(a, b)["notes"])
    assert "the runs have different numbers of outputs C (A 2, B 3)" in notes, notes


def test_a_run_that_moved_and_came_back_moved_and_a_dead_unmatched_step_is_no_move(tmp_path: Path) -> None:
    """`moved` in --json and the verdict: run A's features moved at step 100 and were back at the reference by
    step 200 (moved, though static at the last matched step); run C, static at the matched steps, has a checkpoint
    past them that no step of B matches where neither measure exists (a dead layer): no sign that it moved."""
    from tests.test_s29_cmpthr import FROZEN
    from tests.test_s29_rev2 import _store

    back = _store(tmp_path / "back.h5", 3, {**FROZEN, "cka_init": [1.0, 0.5, 1.0], "overlap_init": [1.0, 0.5, 1.0]})
    frozen = _store(tmp_path / "frozen.h5", 0, FROZEN)
    data = _compare(back, frozen)
    assert data["moved"] == {"a": True, "b": False}, data
    assert "Of the two runs, only A's features moved" in data["verdict"], data["verdict"]
    dead = _store(tmp_path / "dead.h5", 3, {"d_lr": [0.9, 0.6, 0.4, 0.3], "cka_init": [1.0, 1.0, 1.0, None],
                                            "overlap_init": [1.0, 1.0, 1.0, None]}, steps=(0, 100, 200, 300))
    data = _compare(dead, frozen)
    # a checkpoint past the matched steps where neither measure exists tells neither moved nor static
    # (docs/measures.md, "Verdict"): undetermined, not a move
    assert data["moved"] == {"a": None, "b": False}, data
    assert "Run A's features did not move at the matched steps (at every matched step" in data["verdict"], data["verdict"]
    assert "at step 300, which no checkpoint of B matches, its measures tell neither moved nor static" \
        in data["verdict"], data["verdict"]
