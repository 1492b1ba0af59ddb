"""Review of the twenty-seventh session's last merges (h_s27_rev_last): the cost of asking threadpoolctl how
many threads numpy's BLAS runs, which `moments._numpy_syrk` does for every layer of every checkpoint."""

from __future__ import annotations

import pytest
import torch

from fdl_cli import moments
from tests.test_s27_left import one_torch_thread  # noqa: F401  (the fixture: torch on one thread)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_loaded_libraries_are_scanned_once_not_per_layer_and_checkpoint(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """threadpoolctl's `threadpool_info()` walks every library loaded (torch loads many): 0.5 ms a call, asked
    for each layer of each checkpoint (100 s of a run of 10 000 checkpoints of 20 layers). The libraries are
    found once; their thread counts are read each time, so a `threadpool_limits` set later is still seen."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    scans = []
    real = threadpoolctl.ThreadpoolController

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        scans.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", counted)
    moments._blas_controller.cache_clear()
    answers = [moments._numpy_syrk(torch.device("cpu")) for _ in range(50)]
    assert len(scans) <= 1 and len(set(answers)) == 1
    # threadpool_limits scans the libraries itself; what is asserted is the answer under it
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert moments._numpy_syrk(torch.device("cpu")) is True
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert moments._numpy_syrk(torch.device("cpu")) is False
