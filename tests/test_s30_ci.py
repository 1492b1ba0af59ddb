"""Two failures of the twenty-ninth session's CI run, made deterministic.

1. Another folder's run under the same names, written in the same clock tick as the stored one: its files had the
   stored files' size and modification time, so a resume from that folder took them for the files analysed (not
   hashed) and named another step, or none, as another run's.
2. (test_s26_dcp's generator script) a gloo rank that aborted in torch's own teardown after the checkpoints were
   written; see `tests/test_s26_dcp.SHARDED`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests import warm
from tests.test_s29_rev1 import _resume_from, _two_runs


def _same_signature(source: Path, target: Path) -> None:
    """Give `target` the size-and-time signature of `source` (same size already: the same architecture)."""
    stat = source.stat()
    assert target.stat().st_size == stat.st_size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_another_folders_files_with_the_stored_size_and_time_are_hashed_and_named(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path, shared_reference=True)
    for step in (0, 10, 20):
        _same_signature(a / "run" / f"step_{step}.safetensors", b / "run" / f"step_{step}.safetensors")
    err = _resume_from(b)
    flat = " ".join(err.split())
    assert "hashing 3 stored checkpoint files whose recorded path names a file in another folder" in flat, err
    assert "holds other files' numbers: its step 10 was analysed from run/step_10.safetensors (relative to " \
        f"{a}" in flat, err
    assert "another file (and 1 more step so)" in flat, err
    assert "changed since" not in err and "--redo" not in err, err


def test_a_run_moved_whole_with_its_times_is_not_hashed_again(tmp_path: Path) -> None:
    """The same check leaves a moved run alone: its recorded files are gone, so their names are read as text."""
    a, _ = _two_runs(tmp_path, shared_reference=False)
    moved = tmp_path / "moved"
    moved.mkdir()
    a.rename(moved / "a")
    (tmp_path / "s.h5").rename(moved / "s.h5")
    (tmp_path / "probe.npz").rename(moved / "probe.npz")
    from tests.test_s28_relpath import MODEL, SMALL, _fdl_process

    done = _fdl_process(moved / "a", "analyze", "run", "--model", MODEL, "--probe", "../probe.npz", "--out", "../s.h5",
                        *SMALL)
    assert done.returncode == 0, done.stderr
    assert "hashing" not in done.stderr, done.stderr


# -- 2. a torchrun rank ends without the C/C++ teardown that can abort it --------------------------------------------

#: A model file whose import, in a rank of a torchrun job, registers libc's abort() to run as the process exits: the
#: stand-in for what CI met in a gloo job, a C++ destructor at exit ("terminate called without an active exception",
#: SIGABRT) after both ranks had left the process group, which torchrun reports as a failed job.
ABORTS_AT_EXIT = '''
import ctypes, os
from tests.tiny_models import mlp
if os.environ.get("RANK") is not None:
    libc = ctypes.CDLL(None)
    libc.__cxa_atexit(libc.abort, None, None)

def build():
    return mlp(n_in=4, hidden=8, n_out=3, seed=0)
'''


def test_a_rank_whose_process_teardown_would_abort_ends_with_the_commands_status(tmp_path: Path) -> None:
    import sys

    from tests.test_distributed import N_CHECKPOINTS, REPO, _args, _make_run, _stored_steps

    run = _make_run(tmp_path / "run")
    (tmp_path / "model.py").write_text(ABORTS_AT_EXIT)
    args = _args(run, tmp_path / "s.h5")
    args[args.index("tests.tiny_models:mlp")] = f"{tmp_path / 'model.py'}:build"
    args.remove('{"hidden": 8}')
    args.remove("--model-kwargs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = warm.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                     "-m", "fdl_cli", *args], env=env, cwd=REPO, timeout=300)  # the agent warm, its ranks fresh
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SIGABRT" not in done.stderr, done.stderr[-3000:]
    assert _stored_steps(tmp_path / "s.h5") == [10 * index for index in range(N_CHECKPOINTS)]
