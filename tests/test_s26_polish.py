"""Session 26's small leftovers from the reviewers.

1. `StoreWriter` (the Python API) given a FIFO or a device said "pass --overwrite to start a fresh store", and with
   `overwrite=True` replaced the FIFO (as root, /dev/null too): refused before the lock, as `--out` is.
2. `StoreReader.read_r2_outputs` of a series the store does not hold gave `{}`, read as "no such field": an error
   naming the series it holds, as the other lookups raise.
3. `fdl inspect` of a model whose forward takes two inputs put the whole error in the model's output-shape cell (a
   piped table as wide as the error, and `[ids, mask]` eaten as rich markup), and its default-layer line said
   "pass --probe FILE", which fails the same way: the cell is short, the error said once below, and the line gives
   the wrapper fix.
4. `fdl inspect` listed a module whose output has no batch dimension first (a table of positions) as any layer,
   while `fdl analyze --layer` refuses it: marked.
5. An I/O error (EIO) of a store's commit or lock file was told to free disk space: it says the device failed.
6. A Ctrl-C and then a SIGTERM held back in one commit delivered the Ctrl-C alone (status 130): the SIGTERM wins.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import signals
from fdl_cli import store as store_module
from fdl_cli.errors import FdlError, StoreError
from fdl_cli.report import writing
from fdl_cli.store import StoreReader, StoreWriter
from tests.cli_run import fdl_in_process, model_file
from tests.test_store import probes, provenance, random_entry, write

# ------------------------------------------------ 1. StoreWriter on a special file

_SPECIAL_FIX = "give the store a name of its own, such as run.h5 (a file fdl makes)"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_store_writer_refuses_a_fifo_and_leaves_it(tmp_path: Path, overwrite: bool) -> None:
    fifo = tmp_path / "run.h5"
    os.mkfifo(fifo)
    with pytest.raises(StoreError) as caught:
        write(fifo, [random_entry(0)], overwrite=overwrite, background=False)
    assert (caught.value.what, caught.value.fix) == (
        f"{fifo} is a named pipe (FIFO), not a regular file: fdl will not replace it", _SPECIAL_FIX)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]  # no lock file either


def test_a_store_writer_refuses_a_link_to_a_device(tmp_path: Path) -> None:
    """Not run with overwrite=True: before the fix that replaced the device itself (as root)."""
    link = tmp_path / "run.h5"
    link.symlink_to("/dev/zero")
    with pytest.raises(StoreError) as caught:
        write(link, [random_entry(0)], background=False)
    assert caught.value.what == "/dev/zero is a character device, not a regular file: fdl will not replace it"
    assert caught.value.fix == _SPECIAL_FIX and "--overwrite" not in str(caught.value)


# ------------------------------------------------ 2. read_r2_outputs of a series not held


def test_read_r2_outputs_of_a_series_not_held_names_those_held(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write(path, [random_entry(0), random_entry(1)])
    with StoreReader(path) as reader:
        assert reader.read_r2_outputs(("train", "fc2:input")) == {}  # held, one output: no such field
        for series in [("nope", "x"), ("train", "x"), ("test", "fc2:input")]:  # `test` is a probe with no series
            with pytest.raises(StoreError) as caught:
                reader.read_r2_outputs(series)
            assert caught.value.what == f"the series {series!r} is not in {path}"
            assert caught.value.got == "series in the store: ('train', 'fc2:input')"


# ------------------------------------------------ 3, 4. fdl inspect

_TWO_INPUTS = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids, mask):
        return self.fc((self.emb(ids) * mask.unsqueeze(-1)).mean(1))

def build():
    return Net()
"""


def test_inspect_of_a_model_of_two_inputs_keeps_the_error_out_of_the_table(tmp_path: Path) -> None:
    module = model_file(tmp_path, _TWO_INPUTS)
    torch.save(module.build().state_dict(), tmp_path / "step_0.pt")
    done = fdl_in_process("inspect", tmp_path / "step_0.pt", "--model", f"{tmp_path}/model.py:build")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    model_row = next(line for line in lines if "(model)" in line)
    assert "forward failed (see below)" in model_row and "TypeError" not in model_row
    assert max(len(line) for line in lines if line.startswith(("┃", "│"))) < 100  # as wide as the cells, no more
    errors = [line for line in lines if "missing 1 required positional argument: 'mask'" in line]
    assert len(errors) == 1 and "np.stack([ids, mask], 1)" in errors[0]  # once, below, whole
    default = next(line for line in lines if line.startswith("default feature layer:"))
    assert default == (
        "default feature layer: fc:input (16 features; a guess: the last nn.Linear in registration order, as no "
        "forward pass ran; its forward takes more inputs than x, which no probe gives: return it from the --model "
        "factory inside a wrapper whose forward(x) makes them from x (as the error says; docs/usage.md, \"A model "
        "of several inputs\") to find the one that runs last)")


_POSITIONS = """
import torch
from torch import nn

class Positions(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(12, 32))

    def forward(self, ids):
        return self.table[: ids.shape[1]]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.pos = Positions()
        self.fc = nn.Linear(32, 3)

    def forward(self, ids):
        return self.fc((self.emb(ids) + self.pos(ids)).mean(1))

def build():
    return Net()
"""


def test_inspect_marks_a_module_without_a_batch_dimension_as_analyze_refuses_it(tmp_path: Path) -> None:
    module = model_file(tmp_path, _POSITIONS)
    torch.manual_seed(0)
    (tmp_path / "ckpts").mkdir()
    torch.save(module.build().state_dict(), tmp_path / "ckpts" / "step_0.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.integers(0, 50, size=(16, 8)), y=rng.integers(0, 3, size=16))
    model = f"{tmp_path}/model.py:build"
    done = fdl_in_process("inspect", tmp_path / "ckpts" / "step_0.pt", "--model", model, "--json")
    assert done.returncode == 0, done.stderr
    notes = {row["name"]: (row["output_shape"], row["note"]) for row in json.loads(done.stdout)["modules"]}
    assert notes == {"": ([1, 3], None), "emb": ([1, 8, 32], None),
                     "pos": ([8, 32], "no batch dimension: not a feature layer"), "fc": ([1, 3], None)}
    table = fdl_in_process("inspect", tmp_path / "ckpts" / "step_0.pt", "--model", model)
    assert table.returncode == 0, table.stderr
    pos_row = next(line for line in table.stderr.splitlines() if line.startswith("│ pos "))
    assert "[8, 32] (no batch dim)" in pos_row
    assert ("no batch dim: the module's output does not begin with the sample's batch of 1 (a table shared by every "
            "sample, such as positions, or an output that lost its batch dimension to .squeeze(), .flatten(), "
            ".view(-1) or a mean over the batch): not a feature layer, its rows are no samples' (analyze refuses it "
            "as --layer)" in table.stderr)
    refused = fdl_in_process("analyze", tmp_path / "ckpts", "--model", model, "--probe", tmp_path / "probe.npz",
                             "--layer", "pos", "--out", tmp_path / "run.h5")
    assert refused.returncode == 1
    assert "layer 'pos' gives 8 rows of features for 1 sample: its output has no batch dimension first" in refused.stderr


# ------------------------------------------------ 5. an I/O error is no want of room

_EIO_FIX = "check the disk (`dmesg` shows the kernel's errors) or choose another --out"


def commit_refused_by(code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StoreError:
    """The StoreError of a commit whose fsync fails with OSError `code` (EIO, EROFS, ...)."""
    def fail(path: Path, *, directory: bool = False) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module, "_fsync_path", fail)
    writer = StoreWriter(tmp_path / "run.h5", provenance=provenance(), probes=probes(), background=False)
    with pytest.raises(StoreError) as caught:
        writer.add(random_entry(0))
    monkeypatch.undo()
    writer.close()
    return caught.value


def test_a_commit_refused_by_an_io_error_says_the_device_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = commit_refused_by(errno.EIO, tmp_path, monkeypatch)
    assert refused.got == (f"Input/output error in {tmp_path} while writing the store's updated copy: the device "
                           "failed the write (a failing disk, a network file system that lost its server)")
    assert refused.fix == f"{_EIO_FIX}, then run again"


def test_a_lock_file_refused_by_an_io_error_says_the_device_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write

    def write_lock(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, data)

    monkeypatch.setattr(store_module.os, "write", write_lock)
    with pytest.raises(StoreError) as caught:
        StoreWriter(tmp_path / "run.h5", provenance=provenance(), probes=probes(), background=False)
    monkeypatch.undo()
    assert caught.value.got == ("OSError: [Errno 5] Input/output error: the device failed the write (a failing disk, "
                                "a network file system that lost its server)")
    assert caught.value.fix == _EIO_FIX
    assert list(tmp_path.iterdir()) == []


def test_a_report_refused_by_an_io_error_says_the_device_failed(tmp_path: Path) -> None:
    with pytest.raises(FdlError) as caught, writing(tmp_path / "report.html"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert caught.value.got == ("Input/output error: the device failed the write (a failing disk, a network file "
                                "system that lost its server)")
    assert caught.value.fix == "check the disk (`dmesg` shows the kernel's errors) or choose another path"


# ------------------------------------------------ 6. a SIGTERM after a Ctrl-C in one commit


@pytest.mark.parametrize("order", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
                         ids=["int-then-term", "term-then-int"])
def test_a_sigterm_held_back_with_a_ctrl_c_is_the_one_delivered(order: tuple[int, int]) -> None:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        raise signals.Interrupted

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(signals.Interrupted), signals.deferred() as held_back:  # noqa: PT012
            for signum in order:
                signal.raise_signal(signum)
            assert seen == [] and held_back.signum == signal.SIGTERM
        assert seen == [signal.SIGTERM]  # one delivered, the SIGTERM: exit status 143
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def test_fdl_s_own_handler_then_says_143() -> None:
    previous = {signum: signal.signal(signum, signals._on_sigint) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        signals.terminated = False
        with pytest.raises(signals.Interrupted), signals.deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
        assert signals.exit_status() == 143
    finally:
        signals.terminated = False
        signals._pending = False
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
