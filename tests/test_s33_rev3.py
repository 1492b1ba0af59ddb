"""Review of the day's changes: a model pickled whole whose module holds a class of a hostile metaclass; a probe too
small for EF under --center; soft-label wording on targets that are proportions; a binary run's one-hot refusal."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import pickled_model_modules
from tests.test_s33_labels import _analyze, runs

__all__ = ["runs"]  # a module-scoped fixture: one checkpoint of the 4-8-n_out MLP for n_out 1 and 3

HOSTILE = """
from torch import nn


class Meta(type):
    def __getattribute__(cls, name):
        if name == "__module__":
            raise RuntimeError("a metaclass that runs code on __module__")
        return super().__getattribute__(name)


class Registry(metaclass=Meta):
    pass


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 3)
"""


@pytest.fixture()
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "s33rv_hostile.py"
    path.write_text(HOSTILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("s33rv_hostile", None)


def test_a_class_whose_metaclass_runs_code_on_its_module_name_is_walked_without_running_it(hostile: Path) -> None:
    """The walk of the pickled model's modules read each class's `__module__` through its metaclass, whose code
    raised: `fdl analyze --trust-pickle` ended in a traceback, before any checkpoint, for a record of provenance."""
    model = importlib.import_module("s33rv_hostile").Net()
    assert pickled_model_modules(model) == {"s33rv_hostile": str(hostile)}
    assert isinstance(model, torch.nn.Module)


def test_a_centered_probe_of_one_more_input_than_the_mf_limit_is_said_too_small(tmp_path: Path) -> None:
    """--center takes the mean out: rank ≤ n − 1, so n = C + mf_extra + 1 = 5 inputs (C = 3) cannot read EF either.
    classify said nothing of the probe there, and its narrow-layer line blamed the layer's 8 units ("its width, or a
    bottleneck before it")."""
    import json

    import numpy as np
    from safetensors.torch import save_file

    from tests.cli_run import fdl_in_process
    from tests.test_reliability_inputs import MODEL, _weights

    (tmp_path / "run").mkdir()
    for step in (0, 10):
        save_file(_weights(step // 10, n_out=3), str(tmp_path / "run" / f"step_{step}.safetensors"))
    x = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=np.arange(5) % 3)
    done = fdl_in_process(
        "analyze",
        tmp_path / "run",
        "--model",
        MODEL,
        "--center",
        "--probe",
        tmp_path / "probe.npz",
        "--device",
        "cpu",
        "-o",
        tmp_path / "run.h5",
    )
    assert done.returncode == 0, done.stderr
    text = fdl_in_process("classify", tmp_path / "run.h5")
    said = " ".join((text.stdout + text.stderr).split())
    assert (
        "k95_utility ≤ rank ≤ n − 1 = 4 (--center) ≤ C + mf_extra = 4: the probe is too small for the rule to "
        "find EF, whatever the layer's 8 units learned; analyse with a probe of more than 5 inputs"
    ) in said, said
    assert "bottleneck" not in said, said
    evidence = json.loads(fdl_in_process("classify", tmp_path / "run.h5", "--json").stdout)["evidence"]
    assert "n − 1 = 4 (--center)" in evidence["small_probe"]


def test_rows_summing_to_1_are_asked_about_not_said_to_be_class_probabilities(runs: dict[int, Path], tmp_path: Path) -> None:
    """Proportions a model regresses (compositional data: shares of 3 parts) sum to 1 a row too: the warning said
    "y holds class probabilities" of them, and its one fix, y.argmax(1), threw their values away."""
    import numpy as np

    shares = np.random.default_rng(3).random((24, 3))
    code, err, _ = _analyze(runs[3], 3, shares / shares.sum(axis=1, keepdims=True), tmp_path)
    assert code == 0, err
    assert (
        "warning: probe 'probe': each row of y lies in [0, 1] and sums to 1: soft labels (class probabilities)? "
        "They are analysed as regression targets (r2, but no accuracy or nc1)"
    ) in err, err
    assert "y holds class probabilities" not in err, err
    assert (
        "if they are class probabilities, to analyse classes save integer labels: y = y.argmax(1); proportions "
        "the model regresses (compositional data) are analysed rightly as they are"
    ) in err, err


def test_a_one_hot_of_3_columns_beside_binary_labels_names_the_models_one_output(
    runs: dict[int, Path], tmp_path: Path
) -> None:
    """A model of one output, a probe of 0/1 labels (C = 2, the binary logit) and one of a one-hot matrix of 3
    columns: the refusal said "the model has 2 outputs" of a model of one."""
    import numpy as np

    from tests.cli_run import fdl_in_process
    from tests.test_reliability_inputs import MODEL, SMALL

    labels, x = np.arange(24) % 2, np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=labels)
    np.savez(tmp_path / "b.npz", x=x, y=np.eye(3, dtype=np.int64)[labels])
    probes = ["--probe", f"a={tmp_path / 'a.npz'}", "--probe", f"b={tmp_path / 'b.npz'}"]
    done = fdl_in_process("analyze", runs[1], "--model", MODEL, "--model-kwargs", '{"n_out": 1}', *SMALL, *probes,
                          "-o", tmp_path / "run.h5")  # fmt: skip
    code, err = done.returncode, " ".join(done.stderr.split())
    assert code == 1, err
    assert "'y' is a one-hot matrix of 3 columns (classes) but the model has 1 output" in err, err


@pytest.mark.parametrize("option", ["--drop", "--redo"])
def test_a_malformed_drop_or_redo_is_shown_an_example_without_the_reference(option: str, tmp_path: Path) -> None:
    """--drop and --redo refuse the reference (step 0, most often); their usage error's example was
    `--drop 0,100,500`, a list the next run refuses, where the empty list's fix says `--drop 100,500`."""
    from tests.cli_run import fdl_in_process

    done = fdl_in_process("analyze", tmp_path, option, "1,a", "-o", tmp_path / "run.h5")
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert f"steps are integers separated by commas, e.g. {option} 100,500 (got 'a')" in said, said


def test_the_walk_of_a_projects_modules_reads_the_library_folders_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk asked sysconfig for the library folders, and resolved each, at every user module it met: ~5 ms a
    module, 10 s of `fdl analyze --trust-pickle` for a project of 2 000 modules (a source checkout on PYTHONPATH)."""
    import sysconfig

    from fdl_cli import checkpoints

    for index in range(3):
        (tmp_path / f"s33rv_part{index}.py").write_text("import torch\n\n\ndef f(x):\n    return x\n")
    (tmp_path / "s33rv_net.py").write_text(
        "from torch import nn\nimport s33rv_part0, s33rv_part1, s33rv_part2\n\n\nclass Net(nn.Module):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoints._protected_modules()  # read once a process, with the installed metadata (which may ask sysconfig)
    asked = []  # fdl's calls, of no arguments (sysconfig calls itself with some, the first time)
    real = sysconfig.get_paths
    monkeypatch.setattr(sysconfig, "get_paths", lambda *args, **kwargs: asked.append(args) or real(*args, **kwargs))
    checkpoints._library_homes.cache_clear()
    try:
        found = pickled_model_modules(importlib.import_module("s33rv_net").Net())
    finally:
        for name in ("s33rv_net", "s33rv_part0", "s33rv_part1", "s33rv_part2"):
            sys.modules.pop(name, None)
    assert sorted(found) == ["s33rv_net", "s33rv_part0", "s33rv_part1", "s33rv_part2"]
    assert asked.count(()) <= 1
