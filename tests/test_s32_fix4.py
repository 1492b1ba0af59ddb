"""A resume that adds a probe said "adding probe 'test' to the 4 stored checkpoints of run.h5" before the store
writer opened the store, and then the writer refused it (the store read-only, another fdl writing it): nothing
was added. The note is said once the writer took the store (`pipeline._store_opened`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fdl_cli.store import claim
from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture


@pytest.mark.parametrize("refusal", ["read-only", "locked"])
def test_an_addition_refused_by_the_writer_is_not_said_to_be_made(
    run: Path, tmp_path: Path, refusal: str  # noqa: F811 - the fixture's value
) -> None:
    store = tmp_path / "s.h5"
    assert analyze(run, store).code == 0
    test = ("--probe", f"test={run / 'test.npz'}")
    if refusal == "read-only":
        store.chmod(0o444)
        try:
            done = analyze(run, store, *test)
        finally:
            store.chmod(0o644)
        refused = f"{store} is read-only"
    else:
        lock = claim(store)  # another writer of the store holds its lock
        try:
            done = analyze(run, store, *test)
        finally:
            lock.release()
        refused = f"{store} is being written by another fdl process"
    said = " ".join(done.stderr.split())
    assert done.code == 1, said
    assert refused in said, said
    assert "adding probe 'test'" not in said, said
    # the same command, once the store is writable and free, adds it (and says so)
    added = analyze(run, store, *test)
    assert added.code == 0, added.stderr
    assert f"adding probe 'test' to the 4 stored checkpoints of {store}" in " ".join(added.stderr.split())
    assert not os.path.exists(f"{store}.lock")
