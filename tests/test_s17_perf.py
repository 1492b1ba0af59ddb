"""Seventeenth session, issue #6: fdl's own costs over the SPEC floor (docs/benchmarks.md)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fdl_cli import cli
from tests.cli_run import fdl_in_process

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # a real process, never a warm one: these tests are of what fdl does while it imports torch (gc freezing)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)


def test_analyze_freezes_its_imports_and_leaves_the_collector_on(tmp_path: Path) -> None:
    """`fdl analyze` in a fresh process: torch's and the other imports' objects are frozen (no full
    collection traverses them again, at exit neither: ~0.35 s of CPU a run), the collector is on again
    for the run's own objects, and the results are those of the run."""
    out = tmp_path / "run.h5"
    code = f"""
import atexit, gc, json, sys
seen = {{}}
atexit.register(lambda: print(json.dumps(seen)))
from fdl_cli import cli
from tests.cli_run import fdl_in_process
run = cli.analyze.callback
def spy(**kwargs):
    try:
        return run(**kwargs)
    finally:
        seen.update(frozen=gc.get_freeze_count(), enabled=gc.isenabled())
cli.analyze.callback = spy
try:
    cli.main(["analyze", "sample_checkpoints", "--steps", "0,100", "--out", {str(out)!r}])
except SystemExit as exc:
    seen["exit"] = exc.code
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "exit" not in seen
    assert seen["enabled"] is True
    assert seen["frozen"] > 50_000  # torch's modules alone make ~150 000 objects
    listed = fdl_in_process("export", out, "--what", "trajectories", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["step"] == [0, 100]


def test_untracked_imports_turn_the_collector_on_again_after_a_failed_import() -> None:
    code = """
import gc, json
from fdl_cli import cli
from tests.cli_run import fdl_in_process
try:
    with cli._untracked_imports():
        import torch  # noqa: F401
        import fdl_no_such_module  # noqa: F401
except ImportError:
    pass
print(json.dumps([gc.isenabled(), gc.get_freeze_count() > 0, "torch" in __import__("sys").modules]))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True, True]


def test_untracked_imports_leave_a_process_with_torch_as_it_is() -> None:
    """A test, or a program calling `main` again: torch is loaded, nothing is frozen (its garbage cycles
    would never be collected) and the collector stays as it was."""
    import torch  # noqa: F401

    before = gc.get_freeze_count()
    with cli._untracked_imports():
        assert gc.isenabled()
    assert gc.get_freeze_count() == before
    assert gc.isenabled()


def _anchors(rows: int, columns: int, seed: int) -> np.ndarray:
    """float32 features far from 0 (ReLU-like, a mean of ~3), as a model gives them."""
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal((rows, columns)), 0.0) * 2.0 + 3.0).astype(np.float32)


def test_anchor_copies_are_exact_and_padded_only_where_cka_multiplies_them() -> None:
    from fdl_cli.pipeline import ANCHOR_ROW_PAD, _float64_copy

    tall = _anchors(300, 64, 0)
    copy = _float64_copy(tall)
    assert copy.dtype == np.float64 and copy.shape == tall.shape
    assert np.array_equal(copy, tall.astype(np.float64))
    assert copy.strides == ((64 + ANCHOR_ROW_PAD) * 8, 8)  # 512 B rows become 576 B apart
    wide = _anchors(20, 64, 1)  # p > m: CKA takes the m×m Gram of these, left as they were
    assert _float64_copy(wide).flags.c_contiguous
    assert np.array_equal(_float64_copy(wide), wide.astype(np.float64))


def test_cka_of_padded_anchors_is_that_of_contiguous_ones_to_the_bit() -> None:
    """The anchors in padded rows (owned: centered in place) give the digits of the same anchors held
    C-contiguous (not owned: copied), for float64 and float32 cross products, and spectral.cka's value."""
    from fdl_cli.pipeline import _cka, _float64_copy, _Series
    from fdl_cli.spectral import cka

    first = _anchors(600, 512, 2)
    second = first + _anchors(600, 512, 3) * np.float32(0.1)
    for dtype in ("float64", "float32"):
        padded = [_float64_copy(a) for a in (first, second)]
        assert not padded[0].flags.c_contiguous
        owned = [_Series(anchor=a, eigenfunctions=np.zeros((600, 1)), owned=True, cka_dtype=dtype) for a in padded]
        plain = [_Series(anchor=np.ascontiguousarray(a, dtype=np.float64), eigenfunctions=np.zeros((600, 1)),
                         cka_dtype=dtype) for a in (first, second)]
        value = _cka(owned[0], owned[1])
        assert value == _cka(plain[0], plain[1])
        assert value is not None and 0.0 < value < 1.0
        rtol = 1e-12 if dtype == "float64" else 1e-6
        assert abs(value - cka(first.astype(np.float64), second.astype(np.float64))) <= rtol * value
        # owned anchors are centered in place (the kernel is a view of them), without a copy
        kernel, _ = owned[0].kernel()
        assert np.allclose(padded[0].mean(0), 0.0, atol=1e-12)
        if dtype == "float64":
            assert kernel.data_ptr() == padded[0].__array_interface__["data"][0]
