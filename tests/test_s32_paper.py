"""A reviewer reproducing the paper's findings from docs/findings.md: the reproduction script's options.

`examples/run_all.sh [OUT] [--tiny]` took its first argument as OUT whatever it was, so the quick run
a reviewer tries first, `examples/run_all.sh --tiny`, handed `--out --tiny/rich_vs_lazy` to every
example (argparse: "expected one argument"). A stub `python` on PATH records what the script runs, so
the test imports no torch and trains nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[1] / "examples" / "run_all.sh"
NAMES = ("rich_vs_lazy", "label_shuffle", "batchnorm", "grokking")


def _run_all(tmp_path: Path, *args: str) -> list[str]:
    stub = tmp_path / "bin"
    stub.mkdir()
    log = tmp_path / "calls.log"
    (stub / "python").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\necho True\n')
    (stub / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", str(RUN_ALL), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in log.read_text().splitlines() if not line.startswith("-c ")]


@pytest.mark.parametrize("args", [("--tiny",), ("--tiny", "out"), ("out", "--tiny")])
def test_run_all_takes_tiny_before_or_after_the_folder(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = "out" if "out" in args else "runs/examples"
    calls = _run_all(tmp_path, *args)
    assert calls == [f"{RUN_ALL.parent / name}.py --out {out}/{name} --tiny" for name in NAMES]


def test_run_all_without_options_runs_full_size_into_the_default_folder(tmp_path: Path) -> None:
    calls = _run_all(tmp_path)
    assert calls == [f"{RUN_ALL.parent / name}.py --out runs/examples/{name}" for name in NAMES]
