"""A researcher's first afternoon with fdl (session 21): papercuts met on a digits CNN trained and saved the
ways people save, each failing before its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import report
from tests.test_analyze import fdl
from tests.test_report import make_store
from tests.tiny_models import mlp


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long messages at 80 columns otherwise


def _scalars(steps: tuple[int, ...], d_lr: float) -> dict[int, dict[str, object]]:
    return {step: {"d_lr": d_lr, "cka_init": 1.0 if step == 0 else 0.6, "overlap_init": 1.0 if step == 0 else 0.6}
            for step in steps}


def test_compare_says_when_the_runs_steps_barely_line_up(tmp_path: Path) -> None:
    """A frozen-backbone run saved as `epoch_N.pt` (steps 0–6) against a full run whose files hold the
    optimizer step (0, 43, ..., 258): only step 0 pairs up, and `fdl compare` said "The runs are equally
    rich (same D_LR) at every matched step." of the two initialisations, with no word but "left unmatched:
    6 checkpoints of A, 6 of B" that the comparison covered nothing trained."""
    epochs, optimizer_steps = tuple(range(7)), tuple(range(0, 259, 43))
    a = make_store(tmp_path / "frozen.h5", steps=epochs, scalars=_scalars(epochs, 0.3))
    b = make_store(tmp_path / "full.h5", steps=optimizer_steps, scalars=_scalars(optimizer_steps, 0.3))
    comparison = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False)
    assert [c.match.step_a for c in comparison.steps] == [0]
    assert ("only 1 of A's 7 and B's 7 checkpoints are matched by step (0; A's steps 0–6, B's 0–258), and the "
            "comparison covers those alone. If the runs count steps differently (epochs in one, optimizer steps "
            "in the other)") in "\n".join(comparison.notes)
    assert comparison.verdict == "The runs are equally rich (same D_LR) at the only matched step, step 0."
    # the CLI prints it, and --json carries it
    done = fdl("compare", a, b, "--no-overlap")
    assert done.code == 0 and "note: only 1 of A's 7 and B's 7 checkpoints are matched by step" in done.stderr


def test_compare_of_a_short_run_against_a_long_or_denser_one_gets_no_such_note(tmp_path: Path) -> None:
    """Every checkpoint of the shorter run matched (a run of 0–200 against one of 0–1000, or one saved every
    50 steps against one saved every 100): nothing to warn of, and the verdicts read as before."""
    short, long_run, dense = (0, 100, 200), tuple(range(0, 1001, 100)), tuple(range(0, 201, 50))
    a = make_store(tmp_path / "a.h5", steps=short, scalars=_scalars(short, 0.3))
    for steps, name in ((long_run, "long.h5"), (dense, "dense.h5")):
        b = make_store(tmp_path / name, steps=steps, scalars=_scalars(steps, 0.2))
        comparison = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False)
        assert not any(note.startswith("only ") for note in comparison.notes)
        assert comparison.verdict.startswith("Run B is richer than run A (lower D_LR) at every matched step (")
    assert report.few_matches_note((0, 1), (0, 50), [report.Match(0, 0)]) is None  # 1 of 2: half matched


def _weights(folder: Path, source: str) -> Path:
    folder.mkdir()
    (folder / "model.py").write_text(source, encoding="utf-8")
    torch.save(mlp(seed=0).state_dict(), folder / "step_0.pt")
    torch.save(mlp(seed=1).state_dict(), folder / "step_10.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(20, 4)).astype(np.float32), y=rng.integers(0, 3, 20))
    return folder


NEEDS_WIDTH = '''
from torch import nn
class Net(nn.Sequential):
    def __init__(self, hidden, *, n_out=3):
        super().__init__(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, n_out))
def broken(hidden=8):
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3, bogus=True))
'''


def test_a_factory_that_needs_an_argument_says_which_and_how_to_pass_it(tmp_path: Path) -> None:
    """`--model model.py:Net` of a class whose __init__ needs `hidden`: the error showed Python's "missing 1
    required positional argument: 'hidden'" and the fix "check --model and --model-kwargs", leaving the
    user to guess the JSON. It now gives it; a misspelt argument is named with the ones the factory takes."""
    run = _weights(tmp_path / "run", NEEDS_WIDTH)
    common = ("--probe", run / "probe.npz", "-o", tmp_path / "run.h5")
    done = fdl("analyze", run, "--model", f"{run / 'model.py'}:Net", *common)
    assert done.code == 1 and "Traceback" not in done.stderr
    assert ("fix: the factory needs 'hidden': pass it as --model-kwargs '{\"hidden\": VALUE}' "
            "(model_kwargs in fdl.toml)") in done.stderr
    done = fdl("analyze", run, "--model", f"{run / 'model.py'}:Net", "--model-kwargs", '{"hiden": 8, "n_out": 3}',
               *common)
    assert done.code == 1
    assert ("fix: the factory needs 'hidden': pass it as --model-kwargs '{\"n_out\": 3, \"hidden\": VALUE}' "
            "(model_kwargs in fdl.toml); it takes no 'hiden': its arguments are hidden, n_out") in done.stderr
    # given right, it runs
    ok = fdl("analyze", run, "--model", f"{run / 'model.py'}:Net", "--model-kwargs", '{"hidden": 8}', *common)
    assert ok.code == 0, ok.stderr
    # a TypeError from inside a factory whose arguments fit keeps the general fix
    inside = fdl("analyze", run, "--model", f"{run / 'model.py'}:broken", *common[:2], "-o", tmp_path / "b.h5")
    assert inside.code == 1 and "fix: check --model and --model-kwargs" in inside.stderr
    assert "bogus" in inside.stderr


def test_a_layer_given_instead_of_the_stored_ones_is_told_how_to_add_it(tmp_path: Path) -> None:
    """`fdl analyze run --layer 0 -o run.h5` on a store of the default layer, meant as one layer more (the
    README's "or one `--layer` more"): refused, rightly, but the fix named only --overwrite (which loses the
    stored series) and another --out; it now gives the --layer list that adds it, and that list works."""
    run = _weights(tmp_path / "run", "from tests.tiny_models import mlp as build\n")
    common = ("--model", f"{run / 'model.py'}:build", "--probe", run / "probe.npz", "-o", tmp_path / "run.h5")
    assert fdl("analyze", run, *common).code == 0
    done = fdl("analyze", run, *common, "--layer", "0")
    assert done.code == 1
    assert ("fix: to add the layer '0' to the store beside its own, give the store's layers too, first, in its "
            "order: --layer 2:input --layer 0; else pass --overwrite to replace it, or another --out to keep "
            "both") in done.stderr
    other = fdl("analyze", run, *common, "--layer", "0", "--top-k", "5")
    assert ("--layer 2:input --layer 0, and options.top_k as the store has it; else pass --overwrite"
            in other.stderr)
    added = fdl("analyze", run, *common, "--layer", "2:input", "--layer", "0")
    assert added.code == 0, added.stderr
    assert "note: adding layer '0' to the 2 stored checkpoints" in added.stderr


def test_the_model_file_named_by_model_gets_no_skipped_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder holding its model.py beside the checkpoints, named by --model (as a path, or as a module
    from inside the folder): `fdl analyze` noted "skipped 1 file without a checkpoint suffix (...): model.py"
    of the file just named, while the same model named by fdl.toml, and the --probe file, got none. Another
    model file in the folder, not the one --model names, is still noted."""
    run = _weights(tmp_path / "run", "from tests.tiny_models import mlp as build\n")
    (run / "notes.txt").write_text("lr 0.1\n", encoding="utf-8")
    done = fdl("analyze", run, "--model", f"{run / 'model.py'}:build", "--probe", run / "probe.npz",
               "-o", tmp_path / "a.h5")
    assert done.code == 0, done.stderr
    assert "without a checkpoint suffix (.pt, .pth, .bin, .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar): notes.txt\n" \
        in done.stderr
    (run / "model.py").rename(run / "s21_user_net.py")  # a module name no other test imports
    monkeypatch.chdir(run)
    monkeypatch.setattr(sys, "path", list(sys.path))  # fdl puts the current folder on it for the import
    done = fdl("analyze", ".", "--model", "s21_user_net:build", "--probe", "probe.npz", "-o", tmp_path / "b.h5")
    assert done.code == 0, done.stderr
    assert "s21_user_net.py" not in done.stderr and ": notes.txt\n" in done.stderr
    # a model file elsewhere: the folder's own model.py is not the one run, and is noted
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.py").write_text("from tests.tiny_models import mlp as build\n", encoding="utf-8")
    done = fdl("analyze", ".", "--model", f"{tmp_path / 'elsewhere' / 'model.py'}:build", "--probe", "probe.npz",
               "-o", tmp_path / "c.h5")
    assert done.code == 0, done.stderr
    assert ": notes.txt, s21_user_net.py\n" in done.stderr


def test_an_unknown_layer_of_a_store_is_named_without_python_s_none(tmp_path: Path) -> None:
    """`fdl report run.h5 --layer nope` said "run.h5 holds no series for probe=None layer='nope'": the
    --probe not given, as Python prints it."""
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    done = fdl("report", store, "--layer", "nope")
    assert done.code == 1
    assert f"error: {store} holds no series for layer='nope'\n" in done.stderr
    assert "None" not in done.stderr
    both = fdl("report", store, "--layer", "nope", "--probe", "train")
    assert "holds no series for probe='train' layer='nope'\n" in both.stderr


def test_a_model_file_given_without_its_factory_lists_what_it_defines(tmp_path: Path) -> None:
    """`--model model.py` (the `:build` forgotten, as `python model.py` would be typed): the error said
    "--model 'model.py' is not of the form module:factory", fix "e.g. --model mypkg.models:build or --model
    path/to/model.py:build", without the names the file holds; fdl.toml's `model = "model.py"` got the same."""
    run = _weights(tmp_path / "run", NEEDS_WIDTH.replace("def broken", "def build"))
    model = run / "model.py"
    done = fdl("analyze", run, "--model", model, "--probe", run / "probe.npz", "-o", tmp_path / "a.h5")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert (f"error: --model '{model}' names a file but not the factory in it that builds the network\n"
            "  got: callables there: Net, build\n"
            f"  fix: name it after a colon: --model {model}:NAME (e.g. {model}:Net, defined there)\n") in done.stderr
    (run / "fdl.toml").write_text('model = "model.py"\nprobe = "probe.npz"\n', encoding="utf-8")
    done = fdl("inspect", run)
    assert done.code == 1
    assert f"""fix: name it after a colon: model = "model.py:NAME" in {run / 'fdl.toml'} (e.g. model.py:Net""" in done.stderr
    # a spec that is no file and has no colon is refused as before
    assert "is not of the form module:factory" in fdl("inspect", run / "step_0.pt", "--model", "mymodel").stderr


def test_a_probe_given_among_the_checkpoints_is_named_in_the_missing_probe_error(tmp_path: Path) -> None:
    """`fdl analyze run run/probe.npz` (the probe given as a source, not as --probe) or `fdl analyze run/*`
    of a folder holding its probe: "note: skipped probe.npz: a probe set (x, y), not model weights", then
    "error: no probe set was given / fix: pass --probe FILE (...)", as if fdl had not just found it."""
    run = _weights(tmp_path / "run", "from tests.tiny_models import mlp as build\n")
    model = ("--model", f"{run / 'model.py'}:build", "-o", tmp_path / "a.h5")
    done = fdl("analyze", run / "step_0.pt", run / "step_10.pt", run / "probe.npz", *model)
    assert done.code == 1
    assert ("error: no probe set was given\n  got: probe.npz, found among the checkpoints, is a probe set (skipped "
            f"above)\n  fix: pass it as --probe {run / 'probe.npz'}, or add probe = \"...\" to fdl.toml\n") in done.stderr
    torch.save({"x": torch.zeros(5, 4), "y": torch.zeros(5, dtype=torch.int64)}, run / "probe.pt")
    (run / "probe.npz").unlink()
    done = fdl("analyze", run, *model)  # the folder scan finds probe.pt
    assert f"fix: pass it as --probe {run / 'probe.pt'}, or add" in done.stderr
    (run / "probe.pt").unlink()
    done = fdl("analyze", run, *model)  # none: the general fix
    assert "got:" not in done.stderr and "fix: pass --probe FILE (.npz/.pt/.safetensors/.h5" in done.stderr
