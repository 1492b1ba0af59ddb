"""Session 25's small leftovers.

- A store whose HDF5 external link, external storage or virtual dataset names another file: HDF5 opened it at the
  read, so a FIFO there hung `fdl report`/`export` and a resume (past Ctrl-C), and a regular file's bytes were read
  as the store's. fdl writes none: such a store is refused before the read.
- A report, export or figure the system refused for want of room: "File too large" under `ulimit -f` (EFBIG) was
  told "<folder> did not let this user write <file> there"; EFBIG, EDQUOT and ENOSPC now say which room is lacking,
  in the words of a store's commit (`errors.no_room`).
- A writer's lock file left by `kill -9` whose pid another process had since: a reader that found no store said it
  was "being written by" that process. It tests the lock's flock now (held by a writer as long as it runs).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from fdl_cli.errors import FdlError, StoreError
from fdl_cli.report import writing
from fdl_cli.store import CheckpointEntry, ProbeInfo, SeriesEntry, StoreReader, StoreWriter, claim
from tests.cli_run import REPO

_PROVENANCE = {"model": "tests:tiny", "layers": ["fc"], "host": "test", "fdl_version": "test"}
_PROBE = ProbeInfo(name="train", sha256="0" * 64, n=16, task="classes", n_outputs=3)


def _store(path: Path) -> Path:
    """A store of three checkpoints (synthetic arrays), as the store writer writes it."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, provenance=_PROVENANCE, probes=[_PROBE], overwrite=True) as writer:
        for index in range(3):
            scalars = {"n_probe": 16, "n_features": 4, "n_outputs": 3, "rank": 4, "d_lr": 0.5 + 0.1 * index,
                       "regime": "EF"}
            series = SeriesEntry(probe="train", layer="fc", scalars=scalars, eigenvalues=np.sort(rng.random(4))[::-1],
                                 eigenvectors=rng.normal(size=(4, 2)), eigenfunctions=rng.normal(size=(8, 2)),
                                 utility=rng.dirichlet(np.ones(4)), quality=rng.dirichlet(np.ones(4)))
            writer.add(CheckpointEntry(step=10 * index, path=f"ckpt/{index}.pt", sha256=f"{index:064x}",
                                       series=(series,)))
    return path


def _python(*args: object) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the repository root, killed after 30 s (a read that hangs fails the test)."""
    # a real process, not a warm one: report and export never import torch
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, check=False,
                          timeout=30)


def _stored_in(store: Path, name: str, file: Path) -> None:
    """Replace the store's dataset `name` by one of its shape and dtype whose data HDF5 keeps in `file`."""
    with h5py.File(store, "r+") as handle:
        shape, dtype = handle[name].shape, handle[name].dtype
        del handle[name]
        handle.create_dataset(name, shape=shape, dtype=dtype, external=[(str(file), 0, h5py.h5f.UNLIMITED)])


_EIGENVALUES = "checkpoints/step_10/train/fc/eigenvalues"


@pytest.mark.parametrize("where", ["trajectory", "link", "array", "regular file"])
def test_a_store_reading_another_file_is_refused_before_it_is_opened(tmp_path: Path, where: str) -> None:
    store, fifo = _store(tmp_path / "run.h5"), tmp_path / "fifo"
    os.mkfifo(fifo)
    named, shown = fifo, "/trajectories/train/fc/d_lr"
    if where == "trajectory":
        _stored_in(store, "trajectories/train/fc/d_lr", fifo)
    elif where == "link":
        with h5py.File(store, "r+") as handle:
            del handle[_EIGENVALUES]
            handle[_EIGENVALUES] = h5py.ExternalLink("fifo", "/x")
        named, shown = Path("fifo"), f"/{_EIGENVALUES}"
    elif where == "array":  # read by export only, not by report
        _stored_in(store, _EIGENVALUES, fifo)
        shown = f"/{_EIGENVALUES}"
    else:  # no hang, but another file's bytes read as the store's
        named = tmp_path / "secret"
        named.write_bytes(b"\x00" * 64)
        _stored_in(store, "trajectories/train/fc/d_lr", named)
    command = ("export", store, "--what", "eigenvalues") if where == "array" else ("report", store, "--json")
    done = _python("-m", "fdl_cli", *command)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert f"{store} is not a store as fdl writes one: its {shown} is read from {named}, another file" in done.stderr
    assert "use the store as `fdl analyze` wrote it, or rebuild it with `fdl analyze ... --overwrite`" in done.stderr


def test_a_resume_onto_a_store_reading_a_fifo_is_refused(tmp_path: Path) -> None:
    """The writer reads the store it resumes (every trajectory) before its first commit."""
    store, fifo = _store(tmp_path / "run.h5"), tmp_path / "fifo"
    os.mkfifo(fifo)
    _stored_in(store, "trajectories/train/fc/loss", fifo)
    done = _python(
        "-c",
        "import sys\n"
        "from fdl_cli.errors import StoreError\n"
        "from fdl_cli.store import ProbeInfo, StoreWriter\n"
        f"probe = ProbeInfo(name='train', sha256='0' * 64, n=16, task='classes', n_outputs=3)\n"
        "try:\n"
        f"    StoreWriter(sys.argv[1], provenance={_PROVENANCE!r}, probes=[probe]).close()\n"
        "except StoreError as exc:\n"
        "    print(exc.what)\n", store)
    assert done.returncode == 0, done
    where = "/trajectories/train/fc/loss"
    assert done.stdout == f"{store} is not a store as fdl writes one: its {where} is read from {fifo}, another file\n"


# ------------------------------------------------ 2. a report or export refused for want of room


def test_an_export_past_the_file_size_limit_says_so_not_that_the_folder_refused(tmp_path: Path) -> None:
    """`ulimit -f`: the write fails with EFBIG ("File too large"); the fix said the folder "did not let this user
    write" the file there, sending the user after permissions."""
    store = _store(tmp_path / "run.h5")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    # a real process (its own file size limit), not a warm one: export never imports torch
    done = subprocess.run([sys.executable, "-m", "fdl_cli", "export", str(store), "--what", "eigenvalues", "--out",
                           str(tmp_path / "out.csv")], capture_output=True, text=True, cwd=REPO, check=False,
                          timeout=60, preexec_fn=limited)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.endswith(
        f"error: could not write {tmp_path / 'out.csv'}\n"
        "  got: File too large: this process may write files of at most 200 bytes (its file size limit, `ulimit -f`)\n"
        "  fix: raise that limit (`ulimit -f unlimited` in the shell that runs fdl)\n"
    ), done.stderr


@pytest.mark.parametrize(("code", "got", "fix"), [
    (errno.EFBIG, "File too large: the file system there takes no larger file",
     "choose a path on a file system that takes larger files"),
    (errno.EDQUOT, "Disk quota exceeded", "free space within your disk quota (`quota -s` shows it) or choose a path "
                                          "outside it"),
    (errno.ENOSPC, "No space left on device", "free disk space or choose another path"),
], ids=["EFBIG", "EDQUOT", "ENOSPC"])
def test_a_report_refused_for_want_of_room_says_which_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, got: str, fix: str) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with pytest.raises(FdlError) as caught, writing(tmp_path / "report.html"):
        raise OSError(code, os.strerror(code))
    assert (caught.value.what, caught.value.got, caught.value.fix) == (
        f"could not write {tmp_path / 'report.html'}", got, fix)


# ------------------------------------------------ 3. a writer's lock file left by kill -9, its pid reused


def _lock_file(store: Path, pid: int) -> None:
    """The lock file a writer killed by `kill -9` leaves, naming `pid` (of this host), whose flock nobody holds."""
    store.with_name(store.name + ".lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "command": "fdl analyze ckpts --out run.h5 --watch",
         "started": "2026-12-01T00:00:00.000000Z"}))


def test_a_killed_writers_lock_file_naming_a_live_pid_is_no_writer(tmp_path: Path) -> None:
    store = tmp_path / "run.h5"
    _lock_file(store, os.getpid())  # a process that runs, and writes no store
    with pytest.raises(StoreError) as caught:
        StoreReader(store)
    assert caught.value.what == f"no fdl store at {store}"
    assert store.with_name("run.h5.lock").exists()  # read only: the reader removes nothing


def test_a_writer_holding_the_lock_is_still_named_and_one_starting_meanwhile_is_not_refused(tmp_path: Path) -> None:
    store = tmp_path / "run.h5"
    lock = claim(store)  # as `fdl analyze --watch` holds it before its first commit
    try:
        with pytest.raises(StoreError) as caught:
            StoreReader(store)
        assert caught.value.what.startswith(f"no checkpoint is stored in {store} yet: it is being written by pid "
                                            f"{os.getpid()} on host {socket.gethostname()}, running `")
    finally:
        lock.release()
    # a reader's test of the lock, held shared for a moment, while a writer takes it: the writer tries again
    _lock_file(store, os.getpid())
    fd = os.open(store.with_name("run.h5.lock"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    timer = threading.Timer(0.02, os.close, (fd,))
    timer.start()
    try:
        lock = claim(store)
    finally:
        timer.join()
    lock.release()
