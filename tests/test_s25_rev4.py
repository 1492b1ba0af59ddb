"""Session 25 review (rev4) of the merged fixes: the default layer's look-up of the first call on the same input
(`LinearCalls`), and a writer's lock refused for want of flock. Each test failed on 3455b57 and passes with its fix.

Two storages may hold one buffer (`torch.from_numpy` of one array twice): the look-up kept one call a memory, the
first, so once its storage was freed a later call on the other storage no longer found the calls on that one, and
the default layer's choice differed from the pass that compared the calls' inputs themselves (4ed2bbb).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.extract import default_layer, linear_calls


class Aliased(nn.Module):
    """Heads on a constant table read with torch.from_numpy at each use: t1 and t2 are two storages of one buffer;
    `head` gives the outputs, `aux` runs last on the same t2."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.head, self.aux = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 2)
        self.table = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t1 = torch.from_numpy(self.table)
        self.first(t1)
        t2 = torch.from_numpy(self.table)
        y = self.head(t2)
        del t1  # the first storage of the buffer freed: t2's stays
        self.aux(t2)
        return y


def test_calls_on_a_second_storage_of_one_buffer_stay_one_input_once_the_first_is_freed() -> None:
    model = Aliased().eval()
    with torch.no_grad(), linear_calls(model) as calls:
        model(torch.randn(1, 4))
    assert [(call.name, call.input_first) for call in calls] == [("first", 0), ("head", 0), ("aux", 0)]
    said: list[str] = []
    spec = default_layer(model, sample=torch.randn(1, 4), note=said.append, warn=said.append)
    # as 4ed2bbb chose: head and aux take one input (the same features), so the last to run, without a note
    assert (spec.label, said) == ("aux:input", [])


# -- a file system without flock: nothing left behind ----------------------------------------------------------


def test_a_lock_refused_for_want_of_flock_leaves_no_lock_file_nor_the_folders_made_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS without its lock service answers flock() with ENOLCK (Lustre without -o flock ENOSYS, others EOPNOTSUPP):
    the error was said, but the empty lock file it had made stayed, and with it the --out folders `claim` made for
    it, which a lock refused otherwise removes."""
    from fdl_cli import store

    real = store.fcntl.flock
    for number in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
        def no_flock(fd: int, operation: int, number: int = number) -> None:
            if operation & store.fcntl.LOCK_EX:
                raise OSError(number, os.strerror(number))
            real(fd, operation)

        monkeypatch.setattr(store.fcntl, "flock", no_flock)
        with pytest.raises(store.StoreError, match=r"a\.h5\.lock: its file system takes no file lock") as raised:
            store.claim(tmp_path / "new" / "deeper" / "a.h5")
        assert f"got: OSError: [Errno {number}]" in str(raised.value)
        assert list(tmp_path.iterdir()) == [], number
    (tmp_path / "a.h5.lock").write_text("")  # one that was there before is not this writer's to remove
    with pytest.raises(store.StoreError):
        store.claim(tmp_path / "a.h5")
    assert [path.name for path in tmp_path.iterdir()] == ["a.h5.lock"]
