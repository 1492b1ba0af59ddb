"""Session 25: a write the system refuses in the middle of a store's commit, after its free-space check passed
(`tests/test_s24_err.py`): a file size limit (`ulimit -f`, RLIMIT_FSIZE: the write fails with EFBIG, Python
ignoring SIGXFSZ), a disk quota, a disk another program filled meanwhile. HDF5 met the failed write itself:
`fdl analyze` printed hundreds of "Exception ignored in: h5py._objects.ObjectID.__dealloc__" tracebacks, an
h5py traceback, and often died by a segmentation fault, leaving its copy `RUN.h5.tmp-<pid>` and the lock
file behind. HDF5 now writes the copy through `store._GuardedFile`, which keeps a refused write in memory so
that HDF5 closes the copy as usual; the commit stops, the copy is removed, and fdl says what the system
refused (no space, quota, file size limit) and how to fix it. The store on disk is the one before the commit.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fdl_cli import store as store_module
from tests import warm
from tests.test_analyze import REPO, analysed_copy, analyze, fdl, run  # noqa: F401 - `run`, `analysed_copy`: fixtures


def _contents(path: Path) -> dict[str, Any]:
    """Every group's and dataset's attributes and every dataset's values, by name (as text: NaN equals NaN)."""
    found: dict[str, Any] = {}
    with h5py.File(path, "r", locking=False) as handle:
        def visit(name: str, node: Any) -> None:
            attrs = {key: np.asarray(value).tolist() for key, value in node.attrs.items()}
            values = np.asarray(node[()]).tolist() if isinstance(node, h5py.Dataset) else None
            found[name] = repr((attrs, values))

        visit("/", handle)
        handle.visititems(visit)
    return found


def _report(path: Path) -> list[dict[str, Any]]:
    done = fdl("report", path, "--format", "json")
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


#: `python limited.py LIMIT ARGS`: `python -m fdl_cli ARGS` (run as `-m` runs it) in a process that may write no file
#: past LIMIT bytes, the limit set before fdl is imported (a warm process, tests/warm.py, takes no preexec_fn)
_LIMITED = """
import os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv, sys.path[0] = ["-m", *sys.argv[2:]], os.getcwd()
runpy._run_module_as_main("fdl_cli")
"""


def _analyze_limited(run: Path, out: Path, limit: int, *extra: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    """`python -m fdl_cli analyze` of the tiny run into `out`, in a process that may write no file past `limit` bytes."""
    with tempfile.TemporaryDirectory() as folder:
        limited = Path(folder) / "limited.py"
        limited.write_text(_LIMITED)
        return warm.run(
            [sys.executable, limited, str(limit), "analyze", str(run / "ckpts"), "--model",
             f"{run}/model.py:build", "--probe", str(run / "probe.npz"), "--out", str(out), "--json", *extra],
            timeout=240, cwd=out.parent, env={**os.environ, "PYTHONPATH": str(REPO)},
        )


def _assert_clean_error(done: subprocess.CompletedProcess[str], store: Path, got: str, fix: str) -> None:
    assert done.returncode == 1, done.stderr[-3000:]  # not -11, a segmentation fault
    for noise in ("Traceback", "dealloc", "Exception ignored", "RuntimeError"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert f"error: could not write {store} (the store on disk is unchanged)" in done.stderr
    assert f"  got: {got}" in done.stderr and f"  fix: {fix}" in done.stderr


@pytest.mark.parametrize("watch", [False, True], ids=["analyze", "watch"])
def test_a_file_size_limit_met_by_hdf5_in_a_resume_leaves_the_store_as_it_was(
    run: Path, tmp_path: Path, analysed_copy: Any, watch: bool  # noqa: F811
) -> None:
    store = analysed_copy(tmp_path / "run.h5", "--steps", "0,10")
    before, contents, records = store.read_bytes(), _contents(store), _report(store)
    limit = len(before) + 4096  # the store's copy fits: HDF5 meets the limit while it adds steps 20 and 30
    done = _analyze_limited(run, store, limit, *(("--watch", "--poll", "1") if watch else ()))
    _assert_clean_error(
        done, store,
        f"File too large in {tmp_path} while writing the store's updated copy: this process may write files of "
        f"at most {limit} bytes (its file size limit, `ulimit -f`)",
        "raise that limit (`ulimit -f unlimited` in the shell that runs fdl), then run again (finished checkpoints "
        "are kept)",
    )
    assert done.stdout == ""  # no checkpoint announced: none was stored
    assert store.read_bytes() == before and _contents(store) == contents and _report(store) == records
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.h5"]  # no copy, no lock file left
    again = analyze(run, store)  # the limit lifted, the same command resumes
    assert again.code == 0, again.stderr
    assert [record["step"] for record in again.records] == [20, 30]


def test_a_file_size_limit_met_by_the_first_commit_leaves_no_file(run: Path, tmp_path: Path) -> None:  # noqa: F811
    store = tmp_path / "run.h5"
    done = _analyze_limited(run, store, 20_000)
    _assert_clean_error(
        done, store,
        f"File too large in {tmp_path} while writing the store's updated copy: this process may write files of "
        "at most 20000 bytes (its file size limit, `ulimit -f`)",
        "raise that limit (`ulimit -f unlimited` in the shell that runs fdl), then run again",
    )
    assert list(tmp_path.iterdir()) == []


_PWRITE = os.pwrite


class _Refusing:
    """os.pwrite that writes `budget` bytes, then refuses every write with `code` (a disk filled or a quota met
    after the free-space check); counts the calls it refused."""

    def __init__(self, budget: int, code: int) -> None:
        self.budget, self.code, self.refused = budget, code, 0

    def __call__(self, fd: int, data: Any, offset: int) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self.budget:
            self.refused += 1
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= size
        return _PWRITE(fd, data, offset)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("budget", [0, 6000], ids=["first_write", "midway"])
def test_a_full_disk_or_quota_met_by_hdf5_gives_one_error_and_keeps_the_store(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],  # noqa: F811
    analysed_copy: Any, code: int, budget: int,  # noqa: F811
) -> None:
    store = analysed_copy(tmp_path / "run.h5", "--steps", "0,10")
    before, contents = store.read_bytes(), _contents(store)
    refusing = _Refusing(budget, code)
    monkeypatch.setattr(store_module.os, "pwrite", refusing)
    done = analyze(run, store)
    monkeypatch.undo()
    assert done.code == 1 and done.records == []
    assert "Traceback" not in done.stderr and refusing.refused >= 1
    fix = ("free disk space or choose another --out" if code == errno.ENOSPC else
           "free space within your disk quota (`quota -s` shows it) or choose an --out outside it")
    assert done.stderr.endswith(
        f"error: could not write {store} (the store on disk is unchanged)\n"
        f"  got: {os.strerror(code)} in {tmp_path} while writing the store's updated copy\n"
        f"  fix: {fix}, then run again (finished checkpoints are kept)\n"
    )
    assert store.read_bytes() == before and _contents(store) == contents
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.h5"]
    # HDF5 closed the copy as usual: nothing printed beside the error, and this process writes the store again
    assert "Exception ignored" not in capfd.readouterr().err
    again = analyze(run, store)
    assert again.code == 0, again.stderr
    assert [record["step"] for record in again.records] == [20, 30]
    whole = tmp_path / "whole" / "run.h5"
    whole.parent.mkdir()
    assert _report(store) == _report(analysed_copy(whole))  # the store of one analyze of every step


def test_a_lock_file_that_cannot_be_written_is_an_error(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A disk full before the run began: writing who holds the lock failed with an OSError traceback."""
    store = tmp_path / "run.h5"
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(store_module.os, "write", write)
    done = analyze(run, store)
    monkeypatch.undo()
    assert done.code == 1 and done.records == []
    assert done.stderr.endswith(
        f"error: cannot write the lock file {store}.lock\n"
        "  got: OSError: [Errno 28] No space left on device\n"
        "  fix: free disk space (or space within your disk quota) or choose another --out\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_at_any_write_of_a_commit_leaves_the_store_and_hdf5_sound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every point of a commit (its checkpoints, its trajectories, HDF5's metadata at close) where the disk
    may fill: the commit raises fdl's error and the store stays as it was; HDF5 is left sound each time."""
    from tests.test_store import probes, provenance, random_entry

    path = tmp_path / "run.h5"
    with store_module.StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
        writer.add(random_entry(0))
    before = path.read_bytes()
    sizes: list[int] = []

    def counting(fd: int, data: Any, offset: int) -> int:
        sizes.append(len(memoryview(data).cast("B")))
        return _PWRITE(fd, data, offset)

    monkeypatch.setattr(store_module.os, "pwrite", counting)
    probe = tmp_path / "probe.h5"
    with store_module.StoreWriter(probe, provenance=provenance(), probes=probes(), background=False) as writer:
        writer.add(random_entry(0))
        sizes.clear()
        writer.add(random_entry(1))
    assert len(sizes) > 40
    # every fourth write, and each of the last ten (HDF5's metadata written as it closes the copy)
    for calls in sorted({*range(0, len(sizes), 4), *range(len(sizes) - 10, len(sizes))}):
        refusing = _Refusing(sum(sizes[:calls]), errno.ENOSPC)
        monkeypatch.setattr(store_module.os, "pwrite", refusing)
        with pytest.raises(store_module.StoreError, match="No space left on device") as excinfo:  # noqa: PT012
            with store_module.StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
                writer.add(random_entry(1))
        assert "the store on disk is unchanged" in str(excinfo.value) and refusing.refused >= 1, calls
        assert path.read_bytes() == before, calls
        assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.h5", "run.h5"], calls
    monkeypatch.undo()
    assert "Exception ignored" not in capfd.readouterr().err
    with store_module.StoreWriter(path, provenance=provenance(), probes=probes(), background=False) as writer:
        writer.add(random_entry(1))
    with store_module.StoreReader(path) as reader:
        assert reader.checkpoint_steps() == [0, 1]


def test_the_guarded_file_reads_back_what_it_kept_after_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    fd = os.open(path, os.O_RDWR)
    try:
        guarded = store_module._GuardedFile(fd)
        guarded.seek(2)
        assert guarded.write(b"XY") == 2  # written to the file
        monkeypatch.setattr(store_module.os, "pwrite", _Refusing(0, errno.EDQUOT))
        guarded.seek(4)
        assert guarded.write(b"1234") == 4  # refused, kept: the file seems to grow
        assert guarded.error is not None and guarded.error.errno == errno.EDQUOT
        assert guarded.seek(0, os.SEEK_END) == 8
        guarded.seek(0)
        assert guarded.read(10) == b"abXY1234\0\0"  # past the end: zeros, as HDF5's own driver reads
        guarded.truncate(6)
        guarded.seek(0)
        assert guarded.read() == b"abXY12"
        with pytest.raises(OSError, match="Disk quota exceeded"):
            guarded.check()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abXYef"  # the disk holds what it took, no more
