"""Checkpoints `fdl analyze` refused (a diverged run's NaN weights): the store records them, and `fdl report` and
`fdl classify` say which steps their numbers and verdict leave out, until a later run analyses those steps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.tiny_models import mlp

TRAINED = (0, 10, 20)
DIVERGED = (30, 40)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-8-3 MLP trained 20 SGD steps (checkpoints 0, 10, 20), then two checkpoints with NaN weights (30, 40):
    a run that diverged after step 20. `good_30.pt` holds finite weights, to replace step 30's file with."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refused")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "probe.npz", x=x, y=y)
    (root / "ckpts").mkdir()
    model = mlp(4, 8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(max(TRAINED) + 1):
        if step in TRAINED:
            torch.save(model.state_dict(), root / "ckpts" / f"step_{step}.pt")
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), root / "good_30.pt")
    for step in DIVERGED:
        state = {name: value.clone() for name, value in model.state_dict().items()}
        state["0.weight"][0, 0] = float("nan")
        torch.save(state, root / "ckpts" / f"step_{step}.pt")
    return root


def _analyze(folder: Path, probe: Path, out: Path):
    return fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs",
                          json.dumps({"n_in": 4, "hidden": 8, "n_out": 3}), "--probe", probe, "-o", out)


def _refused_attribute(out: Path) -> list[dict]:
    with h5py.File(out, "r") as store:
        return json.loads(store.attrs["refused"])


@pytest.fixture(scope="module")
def store(run: Path) -> Path:
    out = run / "run.h5"
    done = _analyze(run / "ckpts", run / "probe.npz", out)
    assert done.returncode == 1, done.stderr  # two checkpoints failed: the run says so, as before
    assert "2 failed" in done.stderr, done.stderr
    return out


def test_the_store_records_each_refused_checkpoint_with_its_file_and_reason(run: Path, store: Path) -> None:
    items = _refused_attribute(store)
    assert [item["step"] for item in items] == [30, 40], items
    for item, step in zip(items, DIVERGED, strict=True):
        assert Path(item["path"]).name == f"step_{step}.pt", item
        assert "tensor '0.weight' (8, 4) holds NaN or Inf" in item["reason"], item
        assert "\n" not in item["reason"], item  # one line


def test_report_says_the_table_leaves_the_refused_steps_out(store: Path, tmp_path: Path) -> None:
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

    page = tmp_path / "report.html"
    shown = fdl_in_process("report", store, "--html", page)
    assert shown.returncode == 0, shown.stderr
    assert "refused: steps 30, 40" in page.read_text(), "the HTML page does not say it"


def test_classify_names_the_refused_steps_and_keeps_its_verdict_and_exit_status(run: Path, store: Path) -> None:
    done = fdl_in_process("classify", store, "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    refused = verdict["refused_steps"]
    assert [item["step"] for item in refused] == [30, 40], refused
    assert all("holds NaN or Inf" in item["reason"] and item["path"].endswith(".pt") for item in refused), refused
    assert [point["step"] for point in verdict["trajectory"]] == list(TRAINED)

    text = fdl_in_process("classify", store, "--expect", verdict["regime"])
    assert text.returncode == 0, text.stderr  # --expect judges the verdict alone, as before
    said = text.stdout + text.stderr
    lines = [line for line in said.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1 and "steps 30, 40" in lines[0] and "the verdict covers steps 0–20 only" in lines[0], said


def test_a_resume_that_analyses_a_refused_step_takes_it_out_and_keeps_one_entry_per_step(
        run: Path, store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for path in (run / "ckpts").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "run.h5"
    out.write_bytes(store.read_bytes())
    (folder / "step_30.pt").write_bytes((run / "good_30.pt").read_bytes())  # the user replaced the file
    for _ in range(2):  # step 40 refused again, by two resumes: still one entry
        done = _analyze(folder, run / "probe.npz", out)
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
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "step_0.pt").write_bytes((run / "ckpts" / "step_0.pt").read_bytes())
    state = torch.load(run / "good_30.pt")
    state["0.weight"][:] = 3e38  # finite weights whose float32 forward pass overflows
    torch.save(state, folder / "step_10.pt")
    out = tmp_path / "run.h5"
    done = _analyze(folder, run / "probe.npz", out)
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
