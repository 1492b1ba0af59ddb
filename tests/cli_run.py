"""Running `fdl` as a user does, in a subprocess from the repository root, and a model file a test writes."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, TextIO

REPO = Path(__file__).resolve().parents[1]


def fdl(*args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` (any path-like argument as text): exit status, stdout and stderr, never raising."""
    return subprocess.run([sys.executable, "-m", "fdl_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, check=False)


def fdl_in_process(*args: object, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` as `fdl` does, but in this process (tests/test_analyze.py's runner), answered as `fdl` is:
    for a test of exit status, stdout, stderr and the files written only, which needs no fresh interpreter
    (no signals, no environment read at start-up, no import-time behaviour), and so saves the ~2 s of
    `import torch`. What the process would show the user, this one shows too (`_as_a_fresh_process`)."""
    from tests.test_analyze import fdl as run

    text = [str(arg) for arg in args]
    with _as_a_fresh_process(cwd) as written_to_the_fds:
        done = run(*text)
    out, err = written_to_the_fds()
    return subprocess.CompletedProcess(["fdl", *text], done.code, done.stdout + out, done.stderr + err)


@contextlib.contextmanager
def _as_a_fresh_process(cwd: Path = REPO) -> Iterator[Callable[[], tuple[str, str]]]:
    """Run as `fdl` runs in its own process: from `cwd` (the repository root); Python's warnings filtered as a fresh
    interpreter filters them and printed on sys.stderr, and a library's logging (nothing configured) on it
    too, where pytest would record them and a test of stderr miss them; what C code writes to file
    descriptors 1 and 2 kept, to be added to stdout and stderr (the callable yielded, after the block); and
    sys.path and sys.meta_path as they were after (a --model file's folder is served through the latter)."""
    was, path, meta_path, root = Path.cwd(), list(sys.path), list(sys.meta_path), logging.getLogger()
    handlers, held = list(root.handlers), [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(held[0].fileno(), 1)
    os.dup2(held[1].fileno(), 2)
    os.chdir(cwd)
    root.handlers = []
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category, append=True)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = _show_on_stderr
            yield lambda: (_read(held[0]), _read(held[1]))
    finally:
        root.handlers = handlers
        os.chdir(was)
        sys.path[:], sys.meta_path[:] = path, meta_path
        for fd, copy in ((1, saved[0]), (2, saved[1])):
            os.dup2(copy, fd)
            os.close(copy)


def _read(file: IO[bytes]) -> str:
    with file:
        file.seek(0)
        return file.read().decode(errors="replace")


def _show_on_stderr(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
    """A warning as the interpreter prints it, on the sys.stderr of the moment (`fdl_in_process`'s)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


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


def tiny_model_beside(folder: Path, factory: str = "mlp") -> str:
    """`model = ...` of an fdl.toml in `folder` for tests.tiny_models' `factory`: a model.py there that imports it,
    since an fdl.toml names only its folder's own model code or an nn.Module class (tests/test_s23_sec2.py)."""
    (folder / "model.py").write_text(f"from tests.tiny_models import {factory}\n", encoding="utf-8")
    return f"model.py:{factory}"
