"""The note that an fdl.toml's model code runs ("running the model code ..."), said on stderr once, before that code
runs: `fdl inspect` said it only with its listing, after the code had run, and not at all where the code failed on
import, in its factory, or where fdl refused compiled code of its folder; `run_analyze` without a reporter (the
Python API) never said it."""

from __future__ import annotations

import json
import py_compile
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdl_cli.checkpoints import CompiledCodeError, resolve_model_factory
from fdl_cli.options import AnalyzeOptions
from fdl_cli.pipeline import run_analyze
from tests.cli_run import REPO, fdl_in_process

SAMPLE = REPO / "sample_checkpoints"
RAN = "MODEL CODE RAN"
LAYERS = "nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))"

#: model.py of each case: it says RAN on stderr when imported, then fails where the case says
MODELS = {
    "import": f"import sys\nprint({RAN!r}, file=sys.stderr)\nraise RuntimeError('boom at import')\n",
    "factory": f"import sys\nprint({RAN!r}, file=sys.stderr)\n\ndef build():\n    raise RuntimeError('boom in factory')\n",
    "compiled": f"import sys\nprint({RAN!r}, file=sys.stderr)\nimport s25_helpers  # noqa\nfrom torch import nn\n\n"
                f"def build():\n    return {LAYERS}\n",
    "forward": f"import sys\nfrom torch import nn\nprint({RAN!r}, file=sys.stderr)\n\n"
               "class Net(nn.Sequential):\n    def forward(self, x):\n        raise RuntimeError('boom in forward')\n\n"
               f"def build():\n    return Net(*{LAYERS})\n",
    "fine": f"import sys\nfrom torch import nn\nprint({RAN!r}, file=sys.stderr)\n\ndef build():\n    return {LAYERS}\n",
}


def _run_folder(tmp_path: Path, case: str) -> Path:
    """The sample run (two checkpoints, its probe and fdl.toml) with the case's model.py."""
    folder = tmp_path / case
    folder.mkdir()
    for name in ("fdl.toml", "probe.npz", "step_0.safetensors", "step_10.safetensors"):
        shutil.copy(SAMPLE / name, folder / name)
    (folder / "model.py").write_text(MODELS[case])
    if case == "compiled":
        (folder / "s25_helpers.so").write_bytes(b"\x7fELF not really")  # refused unread: CompiledCodeError
    return folder


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _said_first(stderr: str, folder: Path) -> list[str]:
    """The note, said once, and the lines that come after it: the model's own first, then fdl's."""
    note = f"note: running the model code {folder / 'model.py'}:build, named by "
    lines = _lines(stderr)
    said = [index for index, line in enumerate(lines) if line.startswith(note)]
    assert len(said) == 1, stderr
    assert lines[said[0]].endswith("fdl.toml"), stderr
    assert lines.count(RAN) == 1, stderr
    return lines[said[0] + 1:]


@pytest.mark.parametrize("case", ["import", "factory", "compiled"])
@pytest.mark.parametrize("extra", [(), ("--json",), ("--probe", SAMPLE / "probe.npz")])
def test_inspect_says_the_note_before_model_code_that_fails(tmp_path: Path, case: str, extra: tuple[object, ...]) -> None:
    """The note came only with the listing: model code failing on import, in its factory, or refused for compiled
    code of its folder ran with no word that fdl.toml named it."""
    folder = _run_folder(tmp_path, case)
    done = fdl_in_process("inspect", folder, *extra)
    assert done.returncode == 1 and done.stdout == "", done
    after = _said_first(done.stderr, folder)
    assert after[0] == RAN, done.stderr
    error = {"import": "importing", "factory": "building the model", "compiled": "holds compiled code"}[case]
    assert after[1].startswith("error: ") and error in after[1], done.stderr


@pytest.mark.parametrize("case", ["forward", "fine"])
def test_inspect_says_the_note_before_the_model_code_runs_then_lists(tmp_path: Path, case: str) -> None:
    """Where a listing comes, the note is still said before the code's own output, once, and before the error under
    the listing where the forward pass failed on fdl.toml's probe; --json's stdout is the JSON alone."""
    folder = _run_folder(tmp_path, case)
    failed = case == "forward"
    done = fdl_in_process("inspect", folder)
    assert done.returncode == failed, done
    after = _said_first(done.stderr, folder)
    assert after[0] == RAN and any(line.startswith("modules of ") for line in after), done.stderr
    assert after[-3].startswith("error: the probe ") if failed else "error" not in done.stderr, done.stderr
    shown = fdl_in_process("inspect", folder, "--json")
    assert shown.returncode == failed, shown
    listed = json.loads(shown.stdout)
    assert listed["default_layer"] == "4:input" and listed["default_features"] == 64, listed
    assert _said_first(shown.stderr, folder)[0] == RAN, shown.stderr


@pytest.mark.parametrize("case", ["import", "compiled", "forward"])
def test_analyze_says_the_note_before_model_code_that_fails(tmp_path: Path, case: str) -> None:
    """`fdl analyze` said it first already: kept so (a refusal of compiled code, a failed import, a probe the
    model's forward refuses), for --json too."""
    folder = _run_folder(tmp_path, case)
    done = fdl_in_process("analyze", folder, "--out", tmp_path / "run.h5", "--json")
    assert done.returncode == 1 and done.stdout == "", done
    after = _said_first(done.stderr, folder)
    assert after[0] == RAN and after[1].startswith("error: "), done.stderr


def test_run_analyze_without_a_reporter_says_the_note_on_stderr(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """The Python API (`run_analyze` with no reporter, as docs/benchmarks.md calls it) shows no progress nor notes,
    but ran the folder's model code without a word: that note alone is said, on stderr, before it runs."""
    folder = _run_folder(tmp_path, "fine")
    summary = run_analyze(AnalyzeOptions(sources=(str(folder),), out=tmp_path / "run.h5"))
    assert summary.message().startswith("2 checkpoints analysed"), summary.message()
    out, err = capfd.readouterr()
    assert out == ""
    after = _said_first(err, folder)
    assert after == [RAN], err  # nothing else: the run's other notes stay unsaid


@pytest.fixture
def _clean_imports() -> Iterator[None]:
    """sys.meta_path and the modules the test imported as they were."""
    meta_path, modules = list(sys.meta_path), set(sys.modules)
    yield
    sys.meta_path[:] = meta_path
    for name in set(sys.modules) - modules:
        if name.startswith(("s25n_", "s26f_", "fdl_user_model_")):
            del sys.modules[name]


def test_a_module_the_users_model_imported_is_checked_again_for_the_folders_fdl_toml(
        tmp_path: Path, _clean_imports: None) -> None:
    """In one process (the Python API), compiled code beside model.py that --model of the user's own imported (as
    Python does) stayed in sys.modules: the folder's fdl.toml naming that model.py then got it, not refused as a
    fresh process refuses it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.py").write_text("import s25n_helpers\nfrom torch import nn\n\n"
                                  "def build():\n    return nn.Linear(s25n_helpers.IN, 3)\n")
    (run / "fdl.toml").write_text('model = "model.py:build"\n')
    source = tmp_path / "helpers_source.py"
    source.write_text("IN = 4\n")
    py_compile.compile(str(source), cfile=str(run / "s25n_helpers.pyc"))  # a .pyc of no .py beside it
    assert resolve_model_factory(f"{run / 'model.py'}:build")().in_features == 4  # --model: taken
    with pytest.raises(CompiledCodeError, match="s25n_helpers.pyc, which Python would import as s25n_helpers"):
        resolve_model_factory("model.py:build", base_dir=run, module_dir=run, named_by=run / "fdl.toml")
    assert resolve_model_factory(f"{run / 'model.py'}:build")().in_features == 4  # and --model's again after
