"""One BLAS/OpenMP thread per test process (docs/benchmarks.md, "Test suite CPU (twenty-seventh session)").

`pytest -n auto` on CI's 2 cores runs 2 workers; each worker's torch (OpenMP) and numpy (OpenBLAS) started
a team of 2 threads, and every `fdl` subprocess a test launches did too: up to 4 busy threads per core, and
OpenBLAS's idle workers spin after each call. Set here, before any test module imports numpy or torch, and
only where the user set nothing (`setdefault`: `OMP_NUM_THREADS=4 pytest` still means 4).

Subprocesses inherit it on purpose: the numbers a test checks do not depend on the thread count (fdl's
parameter norms are thread-invariant by design, tests/test_param_norm_threads.py), and a test whose point is
threads sets its own count (`torch.set_num_threads(2)` in tests/test_checkpoints.py and test_s22_join2.py, a
loop over 1, 2, 4 in test_param_norm_threads.py), which overrides this default. fdl has no thread option of
its own: its own environment default, OPENBLAS_THREAD_TIMEOUT, is not touched here (tests/test_contracts.py).
"""

from __future__ import annotations

import os
import signal

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# A test run started in the background by a shell without job control (`pytest ... &` in a script, a CI runner
# that does so) inherits SIGINT ignored, and so does every process a test starts: fdl keeps an inherited SIG_IGN
# as it is (a background job's convention), so the tests of what a Ctrl-C does would test nothing. Each test
# process takes SIGINT as a terminal gives it; the processes it starts then begin with SIGINT at its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
