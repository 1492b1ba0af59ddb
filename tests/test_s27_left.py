"""Review of the twenty-seventh session's merges: numpy's dsyrk only where numpy's BLAS runs one thread too,
`fdl inspect --trust-pickle` reading the step keys of a pickled dict, and `--weights` naming an entry whose
class could not be imported."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from fdl_cli import moments
from tests.test_analyze import fdl
from tests.tiny_models import mlp

# ------------------------------------------------------------------ 1. numpy's dsyrk and numpy's own threads

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("environment", "numpy"), [
    ({}, False),  # nothing set: OpenBLAS starts a thread per core
    ({"OPENBLAS_NUM_THREADS": "1"}, True),
    ({"OMP_NUM_THREADS": "1"}, True),  # what OpenBLAS reads when OPENBLAS_NUM_THREADS is not set
    ({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "4"}, False),  # OpenBLAS's own variable first
    ({"OPENBLAS_NUM_THREADS": "2"}, False),
])
def test_numpy_dsyrk_only_where_numpy_blas_runs_one_thread_as_its_environment_says(
    monkeypatch: pytest.MonkeyPatch, one_torch_thread: None, environment: dict[str, str], numpy: bool
) -> None:
    """A Python-API user who only calls `torch.set_num_threads(1)` keeps numpy's BLAS on every core: the
    batch sums stay torch's block rows there (threadpoolctl, when importable, is asked instead: made absent)."""
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails: the environment decides
    for name in BLAS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert moments._numpy_syrk(torch.device("cpu")) is numpy
    torch.set_num_threads(2)  # torch on more than one thread: never numpy's
    assert moments._numpy_syrk(torch.device("cpu")) is False


def test_numpy_dsyrk_asks_threadpoolctl_where_importable(monkeypatch: pytest.MonkeyPatch,
                                                         one_torch_thread: None) -> None:
    """threadpoolctl reads the thread count numpy's BLAS runs now (after `threadpool_limits` too), which
    the environment at start cannot say."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for name in BLAS_VARIABLES:
        monkeypatch.setenv(name, "1")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert moments._numpy_syrk(torch.device("cpu")) is True
    if not threadpoolctl.threadpool_info():
        pytest.skip("no BLAS threadpoolctl can see")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert moments._numpy_syrk(torch.device("cpu")) is False


# ------------------------------------------------------------------ 3. inspect --trust-pickle reads the step keys


def _main_class(monkeypatch: pytest.MonkeyPatch, name: str) -> type:
    """A class as `python train.py` pickles it: `__main__.NAME`, importable only while the test saves."""
    made = dataclasses.make_dataclass(name, [("decay", float, 0.999)])
    made.__module__, made.__qualname__ = "__main__", name
    monkeypatch.setattr(sys.modules["__main__"], name, made, raising=False)
    return made


def test_inspect_trust_pickle_shows_the_step_of_a_pickled_dict(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = _main_class(monkeypatch, "TrainConfig")
    torch.save({"model": mlp(seed=0).state_dict(), "step": 5, "config": config()}, tmp_path / "final.pt")
    monkeypatch.delattr(sys.modules["__main__"], "TrainConfig")
    shown = fdl("inspect", tmp_path / "final.pt", "--trust-pickle")
    assert shown.code == 0, shown.stderr
    said = " ".join(shown.stderr.split())  # the listing of a weights-only checkpoint is on stderr
    assert "step: 5 (from its" in said and "skips it" not in said, said


# ------------------------------------------------------------------ 4. --weights naming a placeholder


def test_weights_naming_an_entry_of_an_unimportable_class_says_so(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ema = _main_class(monkeypatch, "EMA")
    torch.save({"model": mlp(seed=0).state_dict(), "step": 5, "ema": ema()}, tmp_path / "ckpt_5.pt")
    monkeypatch.delattr(sys.modules["__main__"], "EMA")
    shown = fdl("inspect", tmp_path / "ckpt_5.pt", "--trust-pickle", "--weights", "ema")
    assert shown.code == 1 and "Traceback" not in shown.stderr
    said = " ".join(shown.stderr.split())
    assert "__main__.EMA" in said and "cannot be imported here" in said, said
    assert "holds no state_dict" not in said
    assert "state_dict()" in said  # how to fix: save the entry's state_dict (or make the class importable)
