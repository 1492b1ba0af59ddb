"""Checkpoints `fdl analyze` refused (a diverged run's NaN weights): the store records them, and `fdl report` and
`fdl classify` say which steps their numbers and verdict leave out, until a later run analyses those steps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from fdl_cli.html import run_page
from fdl_cli.report import load_run
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _analyze as _analyze_here
from tests.test_prev_walkback import _arrive, _good, _make_run, _polls, _spoil

TRAINED = (0, 10, 20)
DIVERGED = (30, 40)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny-MLP checkpoints 0 - 40 and a probe, with NaN weights at steps 30 and 40: a run that diverged after
    step 20."""
    folder = _make_run(tmp_path_factory.mktemp("refused") / "run", [*TRAINED, *DIVERGED])
    for step in DIVERGED:
        _spoil(folder, step, "nan")
    return folder


def _copy(folder: Path, into: Path) -> Path:
    into.mkdir()
    for path in folder.iterdir():
        (into / path.name).write_bytes(path.read_bytes())
    return into


def _analyze(folder: Path, out: Path):
    return fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
                          "--probe", folder / "probe.npz", "--anchor-size", "100", "-o", out)


def _refused_attribute(out: Path) -> list[dict]:
    with h5py.File(out, "r") as store:
        return json.loads(store.attrs["refused"])


@pytest.fixture(scope="module")
def store(run: Path) -> Path:
    out = run.parent / "run.h5"
    done = _analyze(run, out)
    assert done.returncode == 1, done.stderr  # two checkpoints failed: the run says so, as before
    assert "2 failed" in done.stderr, done.stderr
    return out


def test_the_store_records_each_refused_checkpoint_with_its_file_and_reason(run: Path, store: Path) -> None:
    items = _refused_attribute(store)
    assert [item["step"] for item in items] == [30, 40], items
    for item, step in zip(items, DIVERGED, strict=True):
        assert Path(item["path"]).name == f"step_{step}.safetensors", item
        assert "tensor '0.weight' (8, 4) holds NaN or Inf" in item["reason"], item
        assert "\n" not in item["reason"], item  # one line


def test_report_says_the_table_leaves_the_refused_steps_out(store: Path) -> None:
    done = fdl_in_process("report", store)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1, done.stderr
    assert "steps 30, 40" in lines[0] and "NaN or Inf weights" in lines[0] and "diverged" in lines[0], lines
    assert "steps 0–20 only" in lines[0], lines

    listed = fdl_in_process("report", store, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [record["step"] for record in json.loads(listed.stdout)] == list(TRAINED)  # the records as they were
    assert any(line.startswith("note: refused: steps 30, 40") for line in listed.stderr.splitlines()), listed.stderr

    # the page of `fdl report --html`, without its figures (matplotlib's drawing is no part of this)
    page = run_page(load_run(store, history=True), with_figures=False)
    assert "refused: steps 30, 40 (NaN or Inf weights" in page, "the HTML page does not say it"


def test_classify_names_the_refused_steps_and_keeps_its_verdict_and_exit_status(run: Path, store: Path) -> None:
    done = fdl_in_process("classify", store, "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    refused = verdict["refused_steps"]
    assert [item["step"] for item in refused] == [30, 40], refused
    assert all("holds NaN or Inf" in item["reason"] and item["path"].endswith(".safetensors") for item in refused)
    assert [point["step"] for point in verdict["trajectory"]] == list(TRAINED)

    text = fdl_in_process("classify", store, "--expect", verdict["regime"])
    assert text.returncode == 0, text.stderr  # --expect judges the verdict alone, as before
    said = text.stdout + text.stderr
    lines = [line for line in said.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1 and "steps 30, 40" in lines[0] and "the verdict covers steps 0–20 only" in lines[0], said


def test_a_resume_that_analyses_a_refused_step_takes_it_out_and_keeps_one_entry_per_step(
        run: Path, store: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    out = tmp_path / "run.h5"
    out.write_bytes(store.read_bytes())
    _good(folder, 30)  # the user replaced the file
    for _ in range(2):  # step 40 refused again, by two resumes: still one entry
        done = _analyze(folder, out)
        assert done.returncode == 1, done.stderr
        items = _refused_attribute(out)
        assert [item["step"] for item in items] == [40], items
    report = fdl_in_process("report", out)
    assert report.returncode == 0, report.stderr
    lines = [line for line in report.stderr.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1 and lines[0].startswith("refused: step 40 (NaN or Inf weights"), report.stderr
    assert "steps 0–30 only" in lines[0], lines


def test_a_store_without_the_record_reports_and_classifies_as_before(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.h5"
    old.write_bytes(store.read_bytes())
    with h5py.File(old, "a") as handle:
        del handle.attrs["refused"]  # as written by an fdl that did not record refusals
    done = fdl_in_process("report", old)
    assert done.returncode == 0, done.stderr
    assert "refused" not in done.stderr and "warning" not in done.stderr, done.stderr
    classified = fdl_in_process("classify", old, "--json")
    assert classified.returncode == 0, classified.stderr
    assert "refused_steps" not in json.loads(classified.stdout)


def test_a_forward_pass_that_overflows_is_recorded_as_such(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    for step in (20, 30, 40):
        (folder / f"step_{step}.safetensors").unlink()
    _spoil(folder, 10, "overflow")  # finite weights whose float32 forward pass overflows
    out = tmp_path / "run.h5"
    done = _analyze(folder, out)
    assert done.returncode == 1, done.stderr
    [item] = _refused_attribute(out)
    assert item["step"] == 10 and "overflowed to inf or NaN" in item["reason"], item
    said = fdl_in_process("classify", out)
    lines = [line for line in (said.stdout + said.stderr).splitlines() if line.startswith("refused:")]
    assert lines == ["refused: step 10 (a forward pass that overflowed to inf or NaN: the run diverged?), by "
                     "`fdl analyze`: not in the store, so the verdict covers step 0 only"], said.stderr


def test_a_listed_step_the_store_holds_is_not_called_refused(store: Path, tmp_path: Path) -> None:
    """An fdl that does not record refusals keeps the list as it is when it stores such a step (a commit copies the
    file): that step is analysed, and no reader calls it refused."""
    edited = tmp_path / "edited.h5"
    edited.write_bytes(store.read_bytes())
    with h5py.File(edited, "a") as handle:
        items = json.loads(handle.attrs["refused"])
        handle.attrs["refused"] = json.dumps([{**items[0], "step": 20}, *items])
    done = fdl_in_process("classify", edited, "--json")
    assert done.returncode == 0, done.stderr
    assert [item["step"] for item in json.loads(done.stdout)["refused_steps"]] == [30, 40]


def test_a_sweep_names_the_run_whose_checkpoints_were_refused(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.h5"
    old.write_bytes(store.read_bytes())
    with h5py.File(old, "a") as handle:
        del handle.attrs["refused"]
    done = fdl_in_process("classify", store, old)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "refused:" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "run.h5: refused: steps 30, 40" in notes[0], done.stderr
    rows = json.loads(fdl_in_process("classify", store, old, "--json").stdout)
    assert [[item["step"] for item in row.get("refused_steps", [])] for row in rows] == [[30, 40], []]


def test_watch_records_a_refused_checkpoint_while_it_runs(run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A --watch run ends by a Ctrl-C, after which the writer commits no refusal alone: it is committed at the
    run's next wait, so `fdl report` run meanwhile, and after the Ctrl-C, names it."""
    folder = _copy(run, tmp_path / "run")
    (folder / "step_30.safetensors").rename(tmp_path / "step_30.safetensors")
    (folder / "step_40.safetensors").unlink()
    out = tmp_path / "run.h5"
    seen: list[list[dict]] = []
    with _polls(monkeypatch, lambda: _arrive(tmp_path, folder, "step_30.safetensors"),
                lambda: seen.append(_refused_attribute(out))):
        summary, _ = _analyze_here(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted
    assert [[item["step"] for item in items] for items in seen] == [[30]]
    assert [item["step"] for item in _refused_attribute(out)] == [30]
