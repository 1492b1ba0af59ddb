"""Review of session 19's `fdl analyze --drop` (session 20, tiny MLPs on the CPU). Each test failed before its fix.

- A stored checkpoint of a store written before file signatures, whose file now sits at another step (a file
  training rewrites, a file renamed over another): hashed again at every resume, as no signature was
  recorded for it. Hashed once: the file's signature recorded at the step it holds (verified there) tells
  the next resume that it is that step's file, not the other's.
- `fdl analyze --drop S --json` printed nothing of what it removed (nothing at all where no checkpoint was
  compared again), and its summary only "2 dropped": now a line `{"dropped": [steps]}` and the steps.
- The history row of the resume that stored those copies named no checkpoint once they were dropped, and
  nothing said what it had computed or that a drop removed it: the store's `dropped` attribute records each
  removed checkpoint (the history stays append-only), and `fdl report` says it in a line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import checkpoints
from fdl_cli.store import StoreReader
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_s19_store import _drop_signatures, _records, _run, _steps, damaged, fdl  # noqa: F401 - damaged: a fixture

torch.set_num_threads(1)


# ------------------------------------------- a store without signatures: a stored file now at another step


def _hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files fdl hashes from now on (`checkpoints.sha256_file`), in order."""
    names: list[str] = []
    real = checkpoints.sha256_file

    def counting(path: Path) -> str:
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(checkpoints, "sha256_file", counting)
    return names


@pytest.mark.parametrize("how", ["rewritten", "renamed"])
def test_a_stored_file_now_at_another_step_is_hashed_once_in_a_store_without_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """rewritten: latest.safetensors held step 10 when it was stored and holds step 20 now (training saves over
    it). renamed: a.safetensors (step 10) and b.safetensors (step 20), b moved over a. Either way the file of
    stored step 10 is another step's checkpoint now: hashed at the first resume (it might have been step 10's
    file, read at another step) and found another; it was hashed again at every resume after it."""
    folder, probe = _run(tmp_path, steps=(0,))
    first = folder / ("latest.safetensors" if how == "rewritten" else "a.safetensors")
    save_file(_weights(1), str(first), metadata={"step": "10"})
    if how == "renamed":
        save_file(_weights(2), str(folder / "b.safetensors"), metadata={"step": "20"})
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    _drop_signatures(out)
    if how == "rewritten":
        save_file(_weights(2), str(first), metadata={"step": "20"})
    else:
        (folder / "b.safetensors").replace(first)
    hashed = _hashed(monkeypatch)
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, " ".join(err.split())
    assert _steps(out) == [0, 10, 20]
    # once by the check (where it was checked for two steps, too); rewritten: not again as step 20 is analysed
    # (the load reuses the check's hash at the same signature, session 22: it was hashed twice)
    assert hashed.count(first.name) == 1, hashed
    stored = _records(out)
    for _ in range(2):
        hashed.clear()
        status, _, err = fdl(capsys, "analyze", *common)
        flat = " ".join(err.split())
        assert status == 0 and "hashing" not in flat, flat
        assert first.name not in hashed, hashed
        assert _records(out) == stored


# --------------------------------------------------------- which steps --drop removed: --json and the summary


def test_drop_says_which_steps_it_removed_in_its_json_and_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """`--drop 120,110 --json` printed nothing on stdout (no checkpoint was compared again), and the summary
    said "2 dropped (--drop)": a script, or a log read later, could not tell which steps were removed."""
    common, run2, out, twenty, _ = damaged(tmp_path)
    status, stdout, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20",
                              "--drop", "120,110", "--json")
    flat = " ".join(err.split())
    assert status == 0, flat
    assert [json.loads(line) for line in stdout.splitlines()] == [{"dropped": [110, 120]}]
    assert f"0 checkpoints analysed, 5 already in the store, 2 dropped (--drop 110,120) → {out}" in flat, flat
    assert _records(out) == _records(twenty)


# ----------------------------------------------------------------------- the history of a store --drop mended


def _history(store: Path) -> tuple[list[dict[str, Any]], dict[int | None, list[int]], Any]:
    with StoreReader(store) as reader:
        return reader.history, reader.history_steps(), getattr(reader, "dropped", None)


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_a_drop_is_recorded_and_the_history_row_of_the_dropped_checkpoints_is_not_left_pointing_at_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """The resume that stored run2's files again at 110 and 120 is a row of the history of its own. --drop
    removed both, and left that row naming no checkpoint, with nothing in the store or in `fdl report` to say
    what it had computed or that a drop removed it. The history stays as it was (append-only: the run did
    happen); the store's `dropped` attribute names each removed checkpoint, its file, the step that keeps
    that file and the row that computed it, and `fdl report` says it in a line; its JSON stays records."""
    common, run2, out, _, _ = damaged(tmp_path)
    rows, steps, _ = _history(out)
    assert len(rows) == 2 and steps == {0: [0, 10, 20, 30, 40], 1: [110, 120]}
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110,120")
    assert status == 0, err
    after, steps, dropped = _history(out)
    assert after == rows and steps == {0: [0, 10, 20, 30, 40]}
    with h5py.File(out, "r") as store:
        assert json.loads(store.attrs["dropped"]) == dropped
    assert [{key: value for key, value in item.items() if key not in ("dropped", "host", "fdl_version")}
            for item in dropped] == [
        {"step": 110, "path": str(run2 / "step_10.safetensors"), "sha256": _records(out)[3]["sha256"], "kept": 30,
         "history": 1},
        {"step": 120, "path": str(run2 / "step_20.safetensors"), "sha256": _records(out)[4]["sha256"], "kept": 40,
         "history": 1},
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", dropped[0]["dropped"]), dropped
    day = dropped[0]["dropped"][:10]

    status, _, err = fdl(capsys, "report", out)
    lines = [line.strip() for line in err.splitlines()]
    assert status == 0, err
    assert [line for line in lines if line.startswith(("computed:", "dropped:"))] == [
        "computed: all 5 checkpoints on cpu, host " + rows[0]["host"] + f" (torch {rows[0]['torch_version']}, fdl "
        f"{rows[0]['fdl_version']}, float32)",
        "dropped: steps 110, 120 (second copies of the files the store keeps at steps 30, 40) by `fdl analyze "
        f"--drop` on {day} {dropped[0]['dropped'][11:16]} UTC",
    ], lines
    html = tmp_path / "report.html"
    status, _, err = fdl(capsys, "report", out, "--html", html)
    assert status == 0 and "dropped: steps 110, 120 (second copies" in html.read_text(), err
    status, stdout, err = fdl(capsys, "report", out, "--format", "json")
    assert status == 0 and [record["step"] for record in json.loads(stdout)] == [0, 10, 20, 30, 40]
    assert "dropped" not in stdout


def test_a_damaged_dropped_attribute_is_a_reader_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    status, _, err = fdl(capsys, "analyze", folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL)
    assert status == 0, err
    with h5py.File(out, "r+") as store:
        store.attrs["dropped"] = "{not json"
    status, _, err = fdl(capsys, "report", out)
    flat = " ".join(err.split())
    assert status == 0 and f"warning: {out}: its dropped attribute is damaged and was ignored" in flat, flat
    assert "dropped:" not in flat


def test_a_writer_adds_no_item_to_a_damaged_dropped_list(tmp_path: Path) -> None:
    """A `dropped` attribute that is no JSON list is kept as it is (the reader warns of it): items put after
    it would write over what it held. The drop itself goes on."""
    from dataclasses import replace

    from fdl_cli.store import StoreWriter
    from tests.test_s19_store import fdl_quiet

    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    assert fdl_quiet(folder, probe, out) == 0
    with h5py.File(out, "r+") as store:
        store.attrs["dropped"] = "{not json"
    with StoreReader(out) as reader:
        provenance, probes, entry = reader.provenance, list(reader.probes().values()), reader.entry(20)
    changed = replace(entry, series=tuple(replace(item, scalars={**item.scalars, "prev_step": None, "cka_prev": None,
                                                                  "overlap_prev": None}) for item in entry.series))
    with StoreWriter(out, provenance=provenance, probes=probes, background=False) as writer:
        assert writer.drop([10], changed) == [changed]
    assert _steps(out) == [0, 20]
    with h5py.File(out, "r") as store:
        assert store.attrs["dropped"] == "{not json"


# ---------------------------------------------------------------------------------------- --drop of what is not
# a copy


def test_drop_on_a_store_without_copies_refuses_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--drop 10` on a healthy store was refused as "would hold step_10 (step 10) at no step any more", with
    "got: steps whose file is stored at another step too: none" and the fix "to analyse it again use --redo
    10"; for the reference, `--redo 0`, which is refused. It now says the store holds no file at two steps, so
    there is nothing to drop, and a fix for each thing the user may have meant."""
    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common)
    assert status == 0, err
    before = out.read_bytes()
    for step in (10, 0):
        status, stdout, err = fdl(capsys, "analyze", *common, "--drop", step)
        flat = " ".join(err.split())
        assert status == 1 and stdout == "", flat
        assert (f"error: --drop {step}: {out} holds no checkpoint file at two steps, so there is nothing to drop: "
                "--drop removes only a second copy of a file the store keeps at another step") in flat, flat
        assert f"got: step {step} is the only copy of {folder / f'step_{step}.safetensors'}" in flat, flat
        assert "fix: leave out --drop (`fdl analyze` names the steps to drop when a store holds a file at two steps)" \
            in flat, flat
        assert ("to analyse step 10 again use --redo 10" in flat) == (step == 10), flat
        assert ("step 0 is the reference: to analyse it again, re-analyse everything with --overwrite" in flat) == (
            step == 0), flat
        assert "Traceback" not in err
        assert out.read_bytes() == before
    status, _, err = fdl(capsys, "analyze", *common, "--drop", "5")
    assert status == 1 and f"error: --drop 5: {out} holds no checkpoint at step 5" in err, err
    assert out.read_bytes() == before


def test_drop_of_the_reference_s_only_copy_in_a_damaged_store_names_no_redo_of_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    common, run2, out, _, _ = damaged(tmp_path)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "0")
    flat = " ".join(err.split())
    assert status == 1 and f"error: --drop 0: {out} would hold" in flat, flat
    assert "--redo 0" not in flat and "step 0 is the reference" in flat, flat
    assert out.read_bytes() == before


@pytest.mark.parametrize("option", [["--watch"], ["--redo", "10"], ["--overwrite"], "torchrun"])
def test_drop_with_what_it_does_not_go_with_is_refused_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, option: Any,
) -> None:
    common, run2, out, _, _ = damaged(tmp_path)
    before = out.read_bytes()
    if option == "torchrun":
        for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29999"}.items():
            monkeypatch.setenv(name, value)
        said = "error: --drop 110,120 runs as one process, not under torchrun"
    else:
        said = f"error: --drop 110,120 and {option[0]} together: --drop removes steps from the store it resumes, alone"
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20", "--drop", "110,120",
                         *([] if option == "torchrun" else option))
    flat = " ".join(err.split())
    assert status == 1 and said in flat and "Traceback" not in err, flat
    assert out.read_bytes() == before
