"""Session 26: special files (a named pipe, a character device, a socket, a symbolic link loop) where fdl opens a
path. Opening a FIFO for reading waits for a writer that never comes (`fdl report` of a store, or of a missing
store whose lock file was a FIFO, hung until Ctrl-C; so did `fdl analyze --out FIFO`); a FIFO, a device or a
socket named like a checkpoint was skipped in silence as "an empty file" (their size is 0), or given by name said
"no checkpoints found ... got: nothing"; a --model file that was a FIFO was "not found"; an fdl.toml that was one
was ignored, its options with it. Each is now an fdl error naming the path, what it is and the fix. Every fdl run
here runs in-process under a 60 s limit (pytest-timeout's SIGALRM, which interrupts a blocking open() and fails the
test): a hang fails the test instead of blocking the suite. A subprocess a run (two seconds of importing torch each)
was the time of this module, and no check here is about the process itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_analyze import fdl, run  # noqa: F401 - `run` is the module's fixture

#: Each test (its fixtures with it) within 60 s: a read that hangs fails it. The limit is the signal method's (the
#: default where SIGALRM exists): its exception, no Exception, passes through fdl's handlers out of the blocked read.
pytestmark = pytest.mark.timeout(60, method="signal")


def _fdl(*args: object) -> subprocess.CompletedProcess[str]:
    """`fdl ARGS` in-process, as the console script (exit status, stdout, stderr), with no input."""
    done = fdl(*map(str, args))
    return subprocess.CompletedProcess(["fdl", *map(str, args)], done.code, done.stdout, done.stderr)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))  # the file stays once the socket is closed


SPECIAL: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "a named pipe (FIFO)"),
    "device": (_zero, "a character device"),
    "socket": (_socket, "a socket"),
}


def _failed(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The tiny run copied (checkpoints, model file, probe), to put special files into."""
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("*.h5", "*.lock"))
    return tmp_path / "run"


def _analyze(copy: Path, *sources: object, out: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _fdl("analyze", *(sources or (copy / "ckpts",)), "--model", f"{copy}/model.py:build",
                "--probe", copy / "probe.npz", "--out", out or copy / "run.h5")


@pytest.fixture(scope="module")
def store(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("store") / "run.h5"
    done = _fdl("analyze", run / "ckpts", "--model", f"{run}/model.py:build", "--probe", run / "probe.npz",
                "--out", out)
    assert done.returncode == 0, done.stderr
    return out


# ------------------------------------------------ checkpoints


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_a_special_file_among_checkpoints_fails_alone_and_the_others_are_stored(copy: Path, kind: str) -> None:
    make, words = SPECIAL[kind]
    special = copy / "ckpts" / "epoch_40.pt"
    make(special)
    err = _failed(_analyze(copy))
    assert f"4 checkpoints analysed, 1 failed → {copy / 'run.h5'}" in err
    assert f"failed: cannot read the checkpoint {special}\n      got: it is {words}, not a regular file\n" in err
    assert "fix: replace it by the checkpoint file, or move it out of the folder" in err
    report = _fdl("report", copy / "run.h5", "--format", "csv")
    assert report.returncode == 0 and len(report.stdout.strip().splitlines()) == 5, report  # header + 4 steps


def test_a_fifo_given_as_the_checkpoint_says_what_it_is(copy: Path) -> None:
    fifo = copy / "model.safetensors"
    os.mkfifo(fifo)
    err = _failed(_analyze(copy, fifo))
    assert f"error: cannot read the checkpoint {fifo}\n  got: it is a named pipe (FIFO), not a regular file\n" in err
    assert not (copy / "run.h5").exists()


def test_dev_zero_given_as_the_checkpoint_is_refused_unread(copy: Path) -> None:
    err = _failed(_analyze(copy, "/dev/zero"))
    assert "error: cannot read the checkpoint /dev/zero\n  got: it is a character device, not a regular file\n" in err


# ------------------------------------------------ the model file and the manifest


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_model_file_that_is_no_regular_file_is_not_said_missing(copy: Path, kind: str) -> None:
    make, words = SPECIAL[kind]
    (copy / "model.py").unlink()
    make(copy / "model.py")
    err = _failed(_analyze(copy))
    assert f"{copy / 'model.py'} is {words}, not a Python file" in err, err
    assert "not found" not in err


def test_a_manifest_that_is_a_fifo_is_refused_not_ignored(copy: Path) -> None:
    manifest = copy / "ckpts" / "fdl.toml"
    os.mkfifo(manifest)
    err = _failed(_analyze(copy))
    assert f"error: cannot read the manifest {manifest}\n  got: it is a named pipe (FIFO), not a regular file\n" in err
    assert "fix: replace it by a TOML file, or remove it and give the options on the command line" in err


# ------------------------------------------------ the store, its lock


@pytest.mark.parametrize(("command", "kind"), [
    *((command, "fifo") for command in [("report",), ("classify",), ("export", "--what", "eigenvalues"), ("compare",)]),
    (("report",), "device"), (("report",), "socket"),
])
def test_a_store_that_is_no_regular_file_is_refused_unopened(store: Path, tmp_path: Path, command: tuple[str, ...],
                                                           kind: str) -> None:
    """A FIFO hung every reader; /dev/zero and a socket were "truncated, corrupt or another format"."""
    make, words = SPECIAL[kind]
    special = tmp_path / "s.h5"
    make(special)
    args = (command[0], store, special) if command == ("compare",) else (command[0], special, *command[1:])
    err = _failed(_fdl(*args))
    assert f"error: {special} is not an fdl store: it is {words}, not a regular file\n" in err, err
    assert "fix: pass the .h5 file that `fdl analyze CKPT_DIR --out RUN.h5` wrote" in err


def test_a_missing_store_whose_lock_file_is_a_fifo_is_said_missing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "run.h5.lock")
    err = _failed(_fdl("report", tmp_path / "run.h5"))
    assert f"error: no fdl store at {tmp_path / 'run.h5'}\n" in err


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_out_that_is_no_regular_file_is_refused(copy: Path, kind: str) -> None:
    make, words = SPECIAL[kind]
    out = copy / "out.h5"
    make(out)
    err = _failed(_analyze(copy, out=out))
    assert f"error: --out {out} is {words}, not a regular file: fdl will not replace it\n" in err, err
    assert "fix: give the store a name of its own, such as run.h5 (a file fdl makes)\n" in err
    assert out.is_symlink() if kind == "device" else out.is_fifo()


def test_an_out_that_is_a_symbolic_link_loop_is_refused(copy: Path) -> None:
    out = copy / "out.h5"
    out.symlink_to(out.name)
    err = _failed(_analyze(copy, out=out))
    assert f"error: cannot reach the store {out}\n  got: a symbolic link loop" in err, err


def test_a_lock_file_that_is_a_fifo_is_said_so_and_kept(copy: Path) -> None:
    """It said "cannot write the lock file ... free disk space", and removed it."""
    lock = copy / "run.h5.lock"
    os.mkfifo(lock)
    err = _failed(_analyze(copy))
    assert f"error: the lock file {lock} is a named pipe (FIFO), not a file fdl wrote\n" in err, err
    assert f"fix: remove it (rm {lock}) if no fdl writes {copy / 'run.h5'}, or choose another --out" in err
    assert not (copy / "run.h5").exists()
    assert lock.is_fifo()


@pytest.mark.parametrize("name", ["run.h5.rank-0.json", "run.h5.rank-0.json.tmp"])
def test_a_fifo_under_a_rank_sidecars_name_is_left_unread(copy: Path, name: str) -> None:
    """A leftover of a killed torchrun rank is read, to tell it from a file of the user's, at every analyze's start:
    a FIFO under its name hung `fdl analyze` before its first checkpoint."""
    fifo = copy / name
    os.mkfifo(fifo)
    done = _analyze(copy)
    assert done.returncode == 0, done.stderr
    assert f"4 checkpoints analysed → {copy / 'run.h5'}" in done.stderr
    assert fifo.is_fifo()  # not one a rank wrote: left as it is
