"""Forty-first session, the lead's own fixes."""
from __future__ import annotations

import errno
from pathlib import Path

from fdl_cli.store import _write_error


def test_a_write_error_that_is_not_a_refusal_does_not_blame_the_disk(tmp_path: Path) -> None:
    store, tmp = tmp_path / "run.h5", tmp_path / "run.h5.tmp"
    hdf5 = OSError("Can't synchronously write data (no appropriate function for conversion path)")
    error = _write_error(store, tmp, hdf5, fresh=False)
    assert error.what == f"could not write {store} (the store on disk is unchanged)"
    assert error.got == "OSError: Can't synchronously write data (no appropriate function for conversion path)"
    assert error.fix is not None and "disk space" not in error.fix
    assert error.fix.startswith("choose another --out (a new store), then run again (finished checkpoints are kept)")
    # a refusal the system names keeps its own fix
    full = _write_error(store, tmp, OSError(errno.ENOSPC, "No space left on device"), fresh=True)
    assert full.fix == "free disk space or choose another --out, then run again"
