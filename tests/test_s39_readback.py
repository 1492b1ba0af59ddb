"""The successor refresh's view of the store (`_refresh_successors`): where the writer wrote the whole store (a
fresh one), its memory gives what reading the store back gave (each series' prev_step, each checkpoint's sha256
and series), and the store is not opened again; a resume reads it. A stored successor whose previous checkpoint
arrives later (--watch, out of order) is refreshed all the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fdl_cli import pipeline
from fdl_cli.store import StoreReader, StoreWriter
from tests.test_prev_walkback import _analyze, _arrive, _assert_same, _make_run, _polls, _spoil, _stored


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Counts the stores opened for reading by the successor refresh and its reads of the store; checks that each
    view the writer gives from memory is the one read back from the store."""
    seen: dict[str, list[Any]] = {"opened": [], "read": [], "memory": [], "refreshing": []}
    opened, refresh = StoreReader.__init__, pipeline._refresh_successors
    read = getattr(pipeline, "_read_previous", None)
    memory = getattr(StoreWriter, "committed_previous", None)

    def count_open(self: StoreReader, path: Any) -> None:
        if seen["refreshing"]:
            seen["opened"].append(Path(path))
        opened(self, path)

    def refreshing(*args: Any) -> None:
        seen["refreshing"].append(True)
        try:
            refresh(*args)
        finally:
            seen["refreshing"].pop()

    def count_read(out: Path) -> Any:
        seen["read"].append(out)
        return read(out)

    def compare(self: StoreWriter) -> Any:
        known = memory(self)
        if known is not None:
            before = len(seen["opened"])
            stored = read(self._path)
            del seen["opened"][before:]  # this check's own
            # the same values, and each checkpoint's series in the same order (the order refreshes are made in)
            assert [(step, list(keys.items())) for step, keys in known[0].items()] == [
                (step, list(keys.items())) for step, keys in stored[0].items()
            ]
            assert known[1:] == stored[1:]
            seen["memory"].append(self._path)
        return known

    monkeypatch.setattr(StoreReader, "__init__", count_open)
    monkeypatch.setattr(pipeline, "_refresh_successors", refreshing)
    monkeypatch.setattr(pipeline, "_read_previous", count_read, raising=False)
    monkeypatch.setattr(StoreWriter, "committed_previous", compare, raising=False)
    return seen


def test_a_fresh_store_is_not_read_back(tmp_path: Path, watched: dict[str, list[Any]]) -> None:
    """A fresh run over files one of which fails, the reference analysed ahead of its turn: its store is not
    opened at the end (it was, every run, ~60 ms of a small one), and holds what it held."""
    folder = _make_run(tmp_path / "run")
    _spoil(folder, 30, "nan")
    out = tmp_path / "s.h5"
    _analyze(folder, out, reference_step=40)
    assert watched["opened"] == [] and watched["read"] == [] and watched["memory"] == [out]
    stored = _stored(out)
    assert sorted(stored) == [0, 10, 20, 40, 50, 60]
    assert [stored[step]["prev_step"] for step in sorted(stored)] == [None, 0, 10, 20, 40, 50]
    # a resume reads the store (another run's numbers may be there)
    _analyze(folder, out, reference_step=40)
    assert watched["read"] == [out] and watched["memory"] == [out]


def test_watch_refreshes_a_successor_stored_before_its_previous_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watched: dict[str, list[Any]]
) -> None:
    """--watch into a fresh store: step 30 arrives after 40 is stored (compared with 20): 40 is refreshed to
    compare with 30, from the writer's memory, and the store is one run's over all the files."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0, 10, 20, 40])
    out = tmp_path / "s.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors")):
        summary, _ = _analyze(folder, out, watch=True, poll_seconds=0.01)
    assert summary.refreshed == [40] and watched["read"] == [] and watched["memory"]
    stored = _stored(out)
    assert stored[40]["prev_step"] == 30
    _analyze(_make_run(tmp_path / "all", [0, 10, 20, 30, 40]), tmp_path / "one.h5")
    _assert_same(_stored(tmp_path / "one.h5"), stored)
