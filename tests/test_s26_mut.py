"""Tests that kill mutants of session 25's code which its own tests let live (a mutation testing pass): each
pins down a behaviour a user sees (what stderr shows, a message's words) that no test asserted before."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cli_run import REPO, fdl_in_process

SAMPLE = REPO / "sample_checkpoints"
FINE = "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), " \
       "nn.ReLU(), nn.Linear(64, 10))\n"


def _sample_run(folder: Path) -> Path:
    """The sample run's fdl.toml, probe, two checkpoints and a model.py of the same network, in `folder`."""
    folder.mkdir()
    for name in ("fdl.toml", "probe.npz", "step_0.safetensors", "step_10.safetensors"):
        shutil.copy(SAMPLE / name, folder / name)
    (folder / "model.py").write_text(FINE)
    return folder


def test_the_report_tables_title_shows_a_stores_control_characters_escaped(tmp_path: Path) -> None:
    """The table's title names the store's file (`run.h5: probe ..., layer ...`) and is drawn as rich segments of
    fdl's own, which no `render_str` reads: only the console's escaping of what it writes (`_render_buffer`) kept
    a name's escape sequence (here one clearing the screen) from reaching the terminal."""
    store = tmp_path / "run\x1b[2J.h5"
    made = fdl_in_process("analyze", _sample_run(tmp_path / "ck"), "--out", store)
    assert made.returncode == 0, made.stderr
    done = fdl_in_process("report", store)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr, done.stderr
    assert "run\\x1b[2J.h5: probe " in done.stderr, done.stderr


def test_the_model_code_note_shows_a_folders_control_characters_escaped(tmp_path: Path) -> None:
    """`fdl inspect` says the fdl.toml's model-code note itself (`say_on_stderr`), before the code runs: a folder
    named with an escape sequence reached the terminal raw there, where fdl's other lines escape it."""
    folder = _sample_run(tmp_path / "run\x1b]0;owned\x07")
    done = fdl_in_process("inspect", folder)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr, done.stderr
    note = next(line for line in done.stderr.splitlines() if line.startswith("note: running the model code"))
    assert "run\\x1b]0;owned\\x07" in note, note


def test_exports_warnings_show_a_stores_names_escaped(tmp_path: Path) -> None:
    """`fdl export` says the reader's warnings itself (click.echo, not the console): a group of the store named
    with an escape sequence reached the terminal raw in 'is not a step_<step> group: ignored'."""
    import h5py

    store = tmp_path / "run.h5"
    made = fdl_in_process("analyze", _sample_run(tmp_path / "ck"), "--out", store)
    assert made.returncode == 0, made.stderr
    with h5py.File(store, "a") as handle:
        handle["checkpoints"].create_group("odd\x1b[2J")
    done = fdl_in_process("export", store, "--what", "trajectories")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr, done.stderr
    assert "warning: /checkpoints/odd\\x1b[2J is not a step_<step> group: ignored" in done.stderr, done.stderr


def test_the_guarded_file_reads_zeros_past_its_size_where_the_disk_is_longer(tmp_path: Path) -> None:
    """After a refusal HDF5's truncation reaches no disk (the file stays as long as it was): what HDF5 reads past
    the size it set is zeros, as its own driver reads past an end, not the disk's stale bytes there."""
    from fdl_cli import store as store_module

    path = tmp_path / "f"
    path.write_bytes(b"abcdefgh")
    fd = os.open(path, os.O_RDONLY)  # every write refused (EBADF): the refusal comes at the first
    try:
        guarded = store_module._GuardedFile(fd)
        guarded.seek(1)
        assert guarded.write(b"Z") == 1
        assert guarded.error is not None
        assert guarded.truncate(3) == 3
        assert path.read_bytes() == b"abcdefgh"  # the disk as it was
        guarded.seek(0)
        assert guarded.read(6) == b"aZc\0\0\0"
    finally:
        os.close(fd)


def test_a_second_writer_is_refused_once_its_tries_for_the_lock_run_out(tmp_path: Path) -> None:
    """`_take` tries the flock for ~0.1 s (a reader's test holds it shared a moment), then gives up: the second
    writer of a store is refused, naming the first, and the first keeps its lock file."""
    from fdl_cli.errors import StoreLockedError
    from fdl_cli.store import claim

    path = tmp_path / "run.h5"
    first = claim(path)
    try:
        with pytest.raises(StoreLockedError, match="being written by another fdl process") as refused:
            claim(path)
        assert f"pid {os.getpid()} on host " in str(refused.value.got)
        assert (tmp_path / "run.h5.lock").exists()
    finally:
        first.release()
    assert not (tmp_path / "run.h5.lock").exists()
    claim(path).release()  # free again


def test_where_no_flock_is_taken_a_lock_files_running_process_is_its_writer(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flock (Lustre without -o flock), `_live_writer` reads the lock file: a process of this host that
    runs, or one of another host, writes the store; only a dead process of this host does not."""
    import errno
    import json
    import socket
    import subprocess
    import sys

    from fdl_cli import store as store_module

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(store_module.fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path, lock = tmp_path / "run.h5", tmp_path / "run.h5.lock"
    said = {}
    here = socket.gethostname()
    for case, pid, host in (("alive", os.getpid(), here), ("dead", int(dead.stdout), here),
                            ("elsewhere", int(dead.stdout), "another-host.example")):
        lock.write_text(json.dumps({"pid": pid, "host": host, "command": "fdl analyze run", "started": "noon"}))
        said[case] = store_module._live_writer(path)
    ran = "running `fdl analyze run` since noon"
    assert said == {"alive": f"pid {os.getpid()} on host {socket.gethostname()}, {ran}", "dead": None,
                    "elsewhere": f"pid {int(dead.stdout)} on host another-host.example, {ran}"}
