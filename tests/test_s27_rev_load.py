"""Fresh-eyes review of the model-code loader (session 27): what a user sees when the model folder's code fails to
import (on import, or lazily in the factory or the forward pass), whichever way the model is named (`--model
path/model.py:build`, or an fdl.toml's `model = "model:build"`, a module spec looked for beside it); and model code
that hands its own functions to a process it starts by spawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process
from tests.test_s23_sec2 import _linear_run
from tests.test_s26_rev_source import _clean_imports  # noqa: F401 - the fixture

_MODEL = "from torch import nn\nimport s27rl_parts\n\ndef build():\n    return nn.Linear(4, 3)\n"


def _said(text: str) -> str:
    return " ".join(text.split())


def _analyze(tmp_path: Path, parts: str, *, spec: str) -> tuple[Path, str]:
    """A run whose model.py imports its neighbour s27rl_parts.py (`parts`), analysed with the model named as
    `spec` ("toml": the fdl.toml's module spec; "file": --model path/model.py:build): the neighbour and what fdl
    said (exit 1, no traceback)."""
    run = _linear_run(tmp_path / "run", 'model = "model:build"\n' if spec == "toml" else "")
    (run / "model.py").write_text(_MODEL)
    (run / "s27rl_parts.py").write_text(parts)
    extra = [] if spec == "toml" else ["--model", f"{run / 'model.py'}:build"]
    done = fdl_in_process("analyze", run, *extra, "--out", tmp_path / "a.h5")
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "Traceback" not in said
    assert not (tmp_path / "a.h5").exists()
    return run / "s27rl_parts.py", said


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize("spec", ["toml", "file"])
def test_an_error_raised_by_the_folders_code_on_import_says_to_fix_that_file(tmp_path: Path, spec: str) -> None:
    """A KeyError in the neighbour model.py imports: for an fdl.toml's `model = "model:build"` the fix read
    "install the package or put it on PYTHONPATH, or use path/file.py:factory", as if the module were not found;
    for --model, "fix the error in that file", model.py, where the error is in its neighbour."""
    parts, said = _analyze(tmp_path, "CFG = {}\nWIDTH = CFG['width']\n", spec=spec)
    assert f"got: KeyError: 'width' (raised at {parts}, line 2: WIDTH = CFG['width'])" in said, said
    assert f"fix: fix the error in {parts}" in said, said
    assert "PYTHONPATH" not in said, said


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize("spec", ["toml", "file"])
def test_a_syntax_error_in_a_neighbour_names_its_whole_path_and_line(tmp_path: Path, spec: str) -> None:
    """A SyntaxError in the neighbour was said as Python's message gives it, "(s27rl_parts.py, line 2)": the file's
    name only, not which folder's (with several runs, each has one), nor the line's code."""
    parts, said = _analyze(tmp_path, "A = 1\nB = (2,\n", spec=spec)
    assert f"(raised at {parts}, line 2: B = (2,)" in said, said
    assert f"fix: fix the error in {parts}" in said, said


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize("spec", ["toml", "file"])
def test_a_missing_dependency_of_the_folders_code_names_it_and_how_to_install_it(tmp_path: Path, spec: str) -> None:
    """A library the neighbour imports that is not installed: the fdl.toml's module spec said "install the package
    or put it on PYTHONPATH, or use path/file.py:factory", as if model itself were missing."""
    parts, said = _analyze(tmp_path, "import s27rl_not_installed\n", spec=spec)
    assert "got: ModuleNotFoundError: No module named 's27rl_not_installed'" in said, said
    assert (f"fix: install the package that provides the module s27rl_not_installed, which {parts} imports "
            "(pip install") in said, said
    assert "path/file.py:factory" not in said, said


_SPAWNING_MODEL = """\
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from s27rl_shapes import Shape
from torch import nn


def width(shape):
    import s27rl_sizes  # a neighbour, imported in the child process only

    return s27rl_sizes.OUT * shape.times


def build():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return nn.Linear(4, pool.submit(width, Shape(1)).result())
"""


def test_model_code_that_starts_processes_by_spawn_gets_its_functions_there(tmp_path: Path) -> None:
    """Model code handing its own function, and a dataclass of its neighbour, to a process started by spawn (macOS's
    default, a DataLoader's multiprocessing_context="spawn"): the child process could not import them, "No module
    named 'fdl_user_model_...'" (the model's folder being on no sys.path), and the pool broke (a
    multiprocessing.Pool hung for good), where `python` running the same code from the folder works. The child's
    own lazy import of a neighbour is served too."""
    import sys

    from tests import warm
    from tests.cli_run import REPO

    run = _linear_run(tmp_path / "run", "")
    (run / "model.py").write_text(_SPAWNING_MODEL)
    (run / "s27rl_shapes.py").write_text("import dataclasses\n\n\n@dataclasses.dataclass\nclass Shape:\n"
                                         "    times: int\n")
    (run / "s27rl_sizes.py").write_text("OUT = 3\n")
    analyze = ["analyze", str(run), "--model", f"{run / 'model.py'}:build", "--out", str(tmp_path / "a.h5")]
    done = warm.run([sys.executable, "-m", "fdl_cli", *analyze], cwd=REPO)  # a process of its own: __main__ is fdl's
    assert done.returncode == 0, done.stderr
    assert "2 checkpoints analysed" in done.stderr, done.stderr


_LAZY_FORWARD = """\
from torch import nn


class Net(nn.Linear):
    def forward(self, x):
        import s27rl_kernels

        return super().forward(x)


def build():
    return Net(4, 3)
"""


@pytest.mark.usefixtures("_clean_imports")
@pytest.mark.parametrize(("kernels", "got", "fix"), [
    ("import s27rl_fast_attention\n", "ModuleNotFoundError: No module named 's27rl_fast_attention'",
     "install the package that provides the module s27rl_fast_attention, which {kernels} imports"),
    ("A = (1,\n", "SyntaxError: '(' was never closed", "fix the error in {kernels}"),
])
def test_a_lazy_import_failing_in_the_forward_pass_is_the_models_error_not_the_probes(
        tmp_path: Path, kernels: str, got: str, fix: str) -> None:
    """The forward pass importing a neighbour lazily that imports a library not installed (or holds a SyntaxError):
    said as "probe 'probe' does not fit the model", fix "give the probe inputs the shape and dtype the model's
    forward expects", sending the user to the probe file."""
    run = _linear_run(tmp_path / "run", "")
    (run / "model.py").write_text(_LAZY_FORWARD)
    (run / "s27rl_kernels.py").write_text(kernels)
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--out", tmp_path / "a.h5")
    said = _said(done.stderr)
    assert done.returncode == 1 and "Traceback" not in said, said
    assert "error: the model's forward pass failed on the first sample of probe 'probe'" in said, said
    assert f"got: {got}" in said, said
    assert "fix: " + fix.format(kernels=run / "s27rl_kernels.py") in said, said
    assert "does not fit" not in said, said


@pytest.mark.usefixtures("_clean_imports")
def test_inspect_says_a_lazy_import_failing_in_the_forward_pass_is_the_models_error(tmp_path: Path) -> None:
    """`fdl inspect` with --probe said the same as analyze: "probe ... does not fit the model", exit 1, for a
    library the forward pass imports that is not installed."""
    run = _linear_run(tmp_path / "run", "")
    (run / "model.py").write_text(_LAZY_FORWARD)
    (run / "s27rl_kernels.py").write_text("import s27rl_fast_attention\n")
    done = fdl_in_process("inspect", run / "step_0.safetensors", "--model", f"{run / 'model.py'}:build",
                          "--probe", run / "probe.npz")
    said = _said(done.stderr)
    assert done.returncode == 1 and "Traceback" not in said, said
    assert "error: the model's forward pass failed on a sample of shape (1, 4)" in said, said
    assert ("fix: install the package that provides the module s27rl_fast_attention, which "
            f"{run / 's27rl_kernels.py'} imports") in said, said
    assert "does not fit" not in said, said


@pytest.mark.usefixtures("_clean_imports")
def test_a_lazy_import_failing_in_the_factory_names_the_library_to_install(tmp_path: Path) -> None:
    """The factory importing a library that is not installed: the fix read "check --model and --model-kwargs"."""
    run = _linear_run(tmp_path / "run", "")
    (run / "model.py").write_text("def build():\n    import s27rl_timm_like\n")
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--out", tmp_path / "a.h5")
    said = _said(done.stderr)
    assert done.returncode == 1 and "Traceback" not in said, said
    assert ("fix: install the package that provides the module s27rl_timm_like, which "
            f"{run / 'model.py'} imports") in said, said
