"""Session 25 review of the session's store, TorchScript and metrics-file changes (h_s25_rev2)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from fdl_cli import store as store_module
from fdl_cli.errors import StoreError


def test_a_lock_file_that_cannot_be_written_is_removed_before_its_lock_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file that could not be written (a full disk) was closed, letting its flock go, and only then
    unlinked: a second fdl that opened and locked it in between held a lock on a file this one then removed,
    and a third, creating the lock file anew, wrote the same store beside the second. `release` unlinks first."""
    store = tmp_path / "run.h5"
    lock_path = tmp_path / "run.h5.lock"
    real_write, real_close = os.write, os.close
    others: list[str] = []  # what a second fdl met, trying the lock the moment this one's descriptor closed

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(lock_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def close(fd: int) -> None:
        ours = os.readlink(f"/proc/self/fd/{fd}").startswith(str(lock_path))
        real_close(fd)
        if ours:
            try:
                other = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                others.append("no lock file")
                return
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it is free: the second fdl holds it now
            others.append("locked")
            real_close(other)

    monkeypatch.setattr(store_module.os, "write", write)
    monkeypatch.setattr(store_module.os, "close", close)
    with pytest.raises(StoreError, match="cannot write the lock file"):
        store_module._WriterLock(store).acquire()
    monkeypatch.undo()
    assert others == ["no lock file"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["analyze", "inspect"])
def test_trust_pickle_help_names_torchscript(command: str) -> None:
    """TorchScript loads only with --trust-pickle since this session, but the option's help named pickled objects
    and .pt2 archives alone: a user refused on a TorchScript file read in --help that the option was not for it."""
    from click.testing import CliRunner

    from fdl_cli.cli import cli

    shown = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=500).output.split())
    said = shown.split("--trust-pickle", 1)[1].split(" --", 1)[0]
    assert "TorchScript" in said
