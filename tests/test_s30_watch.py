"""`fdl analyze --overwrite --watch` over a store another run wrote, as a user following a training job meets it.

The watch (in this process: each poll's sleep replaced by what the trainer and the user do between two polls, then
Ctrl-C, `tests.test_prev_walkback._polls`) neither reads nor keeps the old store's checkpoints: it is replaced at the
first commit, and a Ctrl-C before that leaves it as it was. What was found, failing before its fix:

- `fdl report` (or classify, compare, export) run in another terminal while such a watch waited for its first
  checkpoint showed the other run's store, its checkpoints and options, without a word that it is about to be
  replaced: read as the watched run's first numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli_run import fdl_in_process
from tests.test_analyze import fdl
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored

MODEL = ("--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}', "--anchor-size", "100", "--device",
         "cpu")


def _analyze(folder: Path, probe: Path, out: Path, *more: object) -> Any:
    return fdl_in_process("analyze", folder, "--probe", probe, "--out", out, *MODEL, *more)


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A store of another run (steps 0 - 30, --top-k 5) at the --out the watch is given."""
    other = _make_run(tmp_path / "other", [0, 10, 20, 30])
    out = tmp_path / "s.h5"
    done = _analyze(other, other / "probe.npz", out, "--top-k", "5")
    assert done.returncode == 0, done.stderr
    return out


def test_overwrite_watch_replaces_another_runs_store_and_report_says_so_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_store: Path
) -> None:
    """The watch starts before the trainer's first save. A report meanwhile warns that the store it shows is the
    one the watch replaces; once the first checkpoints are committed, the store holds this run's alone (the old
    steps 20 and 30 are not kept, nor its --top-k) and the report has no such warning."""
    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    reports: list[Any] = []
    with _polls(monkeypatch, lambda: reports.append(fdl("report", old_store)),
                lambda: _arrive(source, folder, "step_0.safetensors", "step_10.safetensors"),
                lambda: reports.append(fdl("report", old_store))):
        done = _analyze(folder, source / "probe.npz", old_store, "--overwrite", "--watch", "--poll", "0.1")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert {step: record["prev_step"] for step, record in _stored(old_store).items()} == {0: None, 10: 0}
    (before, said_before), (after, said_after) = [(report.code, report.stdout + report.stderr) for report in reports]
    assert before == 0, said_before
    assert "top_k 5" in said_before  # the old store, as it is on disk until the first commit
    assert f"warning: {old_store} is about to be replaced: `fdl analyze --overwrite` (pid" in said_before
    assert "replaces it at its first commit; shown is the store as it was before that run" in said_before
    assert after == 0, said_after
    assert "top_k 64" in said_after and "about to be replaced" not in said_after


def test_overwrite_watch_stopped_before_a_checkpoint_leaves_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_store: Path
) -> None:
    """Ctrl-C while waiting for the first checkpoint: the old store is kept whole, and no lock file is left."""
    folder = tmp_path / "run"
    folder.mkdir()
    with _polls(monkeypatch, lambda: None):
        done = _analyze(folder, tmp_path / "other" / "probe.npz", old_store, "--overwrite", "--watch", "--poll",
                        "0.1")
    assert done.returncode == 130, done.stderr
    assert sorted(_stored(old_store)) == [0, 10, 20, 30]
    assert not old_store.with_name("s.h5.lock").exists()
    report = fdl("report", old_store)
    said = report.stdout + report.stderr
    assert report.code == 0 and "top_k 5" in said and "about to be replaced" not in said
