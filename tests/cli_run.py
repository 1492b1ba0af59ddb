"""Running `fdl` as a user does, in a subprocess from the repository root, and a model file a test writes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def fdl(*args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` (any path-like argument as text): exit status, stdout and stderr, never raising."""
    return subprocess.run([sys.executable, "-m", "fdl_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, check=False)


def fdl_in_process(*args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` as `fdl` does, but in this process (tests/test_analyze.py's runner), answered as `fdl` is:
    for a test of exit status, stdout and stderr only, which needs no fresh interpreter (no signals, no
    environment read at start-up, no import-time behaviour), and so saves the ~2 s of `import torch`."""
    from tests.test_analyze import fdl as run

    text = [str(arg) for arg in args]
    done = run(*text)
    return subprocess.CompletedProcess(["fdl", *text], done.code, done.stdout, done.stderr)


def model_file(folder: Path, source: str) -> ModuleType:
    """Write `source` as FOLDER/model.py (for `--model FOLDER/model.py:build`) and import it under a name
    of its own, so that the test can build the networks whose checkpoints it saves."""
    path = folder / "model.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"model_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
