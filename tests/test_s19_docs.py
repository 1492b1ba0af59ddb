"""Session 19, documentation audit: the claims this session added to README.md and docs/*.md, run as written.

Each test takes a claim of the nineteenth session's docs (an example command, a number, a field name) and
checks it against what the code does now; the first three pin claims that were wrong or unclear."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fdl_cli import distributed, inspection, pipeline
from tests.test_analyze import fdl
from tests.test_s16_docs import README, REGIMES, STORE
from tests.test_s19_store import damaged  # noqa: F401 - a fixture
from tests.tiny_models import mlp, token_mlp


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_readme_s_probe_among_the_files_example_runs_as_the_shell_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "`fdl analyze run/*.pt --probe run/probe.pt` says nothing of `probe.pt`". It was written
    quoted, 'run/*.pt', which no shell expands and fdl refused then ("no such checkpoint file or folder"); fdl now
    expands such a pattern itself, to the same files."""
    text = _one_line(README)
    assert "`fdl analyze run/*.pt --probe run/probe.pt` says nothing of `probe.pt`" in text
    assert "'run/*.pt'" not in text
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), run / f"step_{step}.pt")
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "y": (x[:, 0] > 0).long()}, run / "probe.pt")
    monkeypatch.chdir(tmp_path)
    expanded = sorted(str(path.relative_to(tmp_path)) for path in run.glob("*.pt"))  # what the shell passes
    assert "run/probe.pt" in expanded
    done = fdl("analyze", *expanded, "--probe", "run/probe.pt", "--model", "tests.tiny_models:mlp", "--out", "r.h5")
    assert done.code == 0, done.stderr
    assert "probe.pt" not in done.stderr and "2 checkpoints analysed" in done.stderr
    # quoted, fdl expands it itself (the pattern --watch expands at each poll): the same, probe.pt unsaid
    quoted = fdl("analyze", "run/*.pt", "--probe", "run/probe.pt", "--model", "tests.tiny_models:mlp", "--out", "q.h5")
    assert quoted.code == 0, quoted.stderr
    assert "probe.pt" not in quoted.stderr and "2 checkpoints analysed" in quoted.stderr


ZERO_ONE_MODEL = """
import torch
from torch import nn


def build():
    # outputs 8·x[:, :3]: sigmoid(outputs) > 0.5 exactly where the probe's targets are 1
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(8 * torch.eye(3, 4))
    return layer
"""


@pytest.fixture(scope="module")
def zero_one_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two equal checkpoints of a model whose sigmoid fits a probe of multi-label float 0/1 targets."""
    folder = tmp_path_factory.mktemp("zero_one")
    (folder / "model.py").write_text(ZERO_ONE_MODEL)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    np.savez(folder / "probe.npz", x=x.numpy(), y=(x[:, :3] > 0).float().numpy())
    state = {"weight": 8 * torch.eye(3, 4)}
    for step in (0, 10):
        torch.save(state, folder / f"step_{step}.pt")
    store = folder / "z.h5"
    done = fdl("analyze", *(folder / f"step_{step}.pt" for step in (0, 10)), "--model", f"{folder / 'model.py'}:build",
               "--probe", folder / "probe.npz", "--out", store)
    assert done.code == 0, done.stderr
    assert "multi-label targets?" in done.stderr
    return store


def test_regimes_md_names_the_evidence_fields_of_the_final_accuracy_and_r2(zero_one_run: Path) -> None:
    """regimes.md said the evidence names "the final checkpoint's `accuracy` and `r2`" and that `r2` compares
    the raw outputs with 0/1: the evidence's fields are `final_accuracy` and `final_r2` (no `r2`)."""
    text = _one_line(REGIMES)
    assert "the final checkpoint's accuracy and r2 (`final_accuracy`, `final_r2`), which no rule reads" in text
    assert "docs/store.md) `final_r2` compares the raw outputs, logits for a sigmoid model, with 0/1" in text
    done = fdl("classify", zero_one_run, "--json")
    assert done.code == 0, done.stderr
    evidence = json.loads(done.stdout)["evidence"]
    assert {"final_accuracy", "final_r2"} <= set(evidence) and not {"accuracy", "r2"} & set(evidence)
    assert evidence["final_accuracy"] is None and evidence["final_r2"] < 0  # the logits 8·x against 0/1
    assert evidence["zero_one_targets"] is True


def test_the_reference_line_judges_float_0_1_targets_by_the_r2_of_the_raw_outputs(zero_one_run: Path) -> None:
    """regimes.md: such a probe is a regression probe to the line on a reference that already fits the
    probe, which can stay silent over one that fits it (here every target is sigmoid(output) > 0.5, and
    the run reads coefficient); the caveat line says loss and r2 do not measure the fit."""
    text = _one_line(REGIMES)
    assert "so the line can stay silent over a reference that fits the probe" in text
    done = fdl("classify", zero_one_run)
    assert done.code == 0, done.stderr
    assert "regime: coefficient" in done.stderr
    assert "already fits the probe" not in done.stderr
    assert "holds float 0/1 targets" in done.stderr and "do not measure its fit" in done.stderr


def test_the_machine_output_of_the_reading_commands_carries_zero_one_targets(zero_one_run: Path) -> None:
    """README said "their JSON carries" it, listing `report --format csv|markdown`, which are no JSON: the
    field is a column of the CSV and the Markdown table too (docs/store.md: every record of those formats)."""
    text = _one_line(README)
    assert ("their machine output carries `zero_one_targets` (a field of each record of "
            "`report --format json|csv|markdown`") in text
    assert "a `zero_one_targets` field of every record of `fdl report --format json|csv|markdown`" in _one_line(STORE)
    rows = list(csv.DictReader(io.StringIO(fdl("report", zero_one_run, "--format", "csv").stdout)))
    assert [row["zero_one_targets"] for row in rows] == ["True", "True"]
    header = fdl("report", zero_one_run, "--format", "markdown").stdout.splitlines()[0]
    assert "zero_one_targets" in header
    records = json.loads(fdl("report", zero_one_run, "--format", "json").stdout)
    assert [record["zero_one_targets"] for record in records] == [True, True]
    compared = json.loads(fdl("compare", zero_one_run, zero_one_run, "--json").stdout)
    assert compared["zero_one_targets"] == {"a": True, "b": True}


def test_inspect_s_random_token_ids_are_the_readme_s(tmp_path: Path) -> None:
    """README: token ids `(1, 8)`, int64, in `[0, V)`, fewer than 8 where an embedding table is smaller, and
    a line `sample:` (`"sample"` in `--json`) says which input ran."""
    text = _one_line(README)
    assert "token ids `(1, 8)`, int64, in `[0, V)` for an `nn.Embedding` of V rows (fewer than 8" in text
    assert 'A line `sample:` (`"sample"` in `--json`) says which input ran' in text
    assert inspection.INSPECT_TOKENS == 8
    for vocab, length in ((11, 8), (5, 5)):
        checkpoint = tmp_path / f"tokens_{vocab}.pt"
        torch.save(token_mlp(vocab=vocab).state_dict(), checkpoint)
        spec = ("--model", "tests.tiny_models:token_mlp", "--model-kwargs", json.dumps({"vocab": vocab}))
        said = fdl("inspect", checkpoint, *spec)
        assert said.code == 0, said.stderr
        line = next(line for line in said.stderr.splitlines() if line.startswith("sample: "))
        assert line.startswith(f"sample: random token ids in [0, {vocab}) of shape (1, {length}), int64")
        listed = fdl("inspect", checkpoint, *spec, "--json")
        assert json.loads(listed.stdout)["sample"] == line.removeprefix("sample: ")


def test_the_readme_s_counts_of_the_summary_and_of_a_quiet_rank() -> None:
    """README: failed files of one reason are named "10 of them, then a count"; under torchrun "a rank that
    keeps quiet waits up to 10 s for rank 0 to have said it"."""
    text = _one_line(README)
    assert "the others named on a line after it, 10 of them, then a count" in text
    assert "a rank that keeps quiet waits up to 10 s for rank 0 to have said it" in text
    assert pipeline.FAILED_SHOWN == 10 and distributed.QUIET_EXIT_GRACE == 10.0
    failed = [(f"s_{index}.pt", "not a checkpoint") for index in range(12)]
    last = pipeline.AnalyzeSummary(store=Path("r.h5"), failed=failed).message().splitlines()[-1]
    assert last.endswith("s_10.pt and 1 more (the same reason as s_0.pt)") and "s_11.pt" not in last


def test_store_md_quotes_the_stored_twice_error_as_fdl_says_it() -> None:
    """docs/store.md quotes `RUN.h5 holds the same checkpoint file at two steps: run2/step_10.pt at steps
    30 and 110; ...` and the fix `--drop 110,...`: the error's own words, the step this run reads first."""
    text = _one_line(STORE)
    assert ("`RUN.h5 holds the same checkpoint file at two steps: run2/step_10.pt at steps 30 and 110; ...`) and "
            "the fix `--drop 110,...`") in text
    from fdl_cli.checkpoints import CheckpointRef

    ref = CheckpointRef(path=Path("run2/step_10.pt"), step=30, step_source="metadata", kind="state_dict")
    error = pipeline._stored_twice(Path("RUN.h5"), [(110, ref)], ())
    assert error.what.startswith("RUN.h5 holds the same checkpoint file at two steps: run2/step_10.pt at steps 30 "
                                 "and 110 (")
    assert error.fix is not None and error.fix.startswith("run the same command with --drop 110:")



def test_an_older_store_resumed_with_nothing_to_analyse_is_left_as_it_was(zero_one_run: Path, tmp_path: Path) -> None:
    """docs/store.md: a store written before `zero_one_targets` is given it by the first commit of a resume
    that stores a checkpoint; "one that finds nothing to analyse writes nothing"."""
    import shutil

    import h5py

    assert "(one that finds nothing to analyse writes nothing)" in _one_line(STORE)
    old = tmp_path / "old.h5"
    shutil.copyfile(zero_one_run, old)
    with h5py.File(old, "r+") as store:
        del store["probes/probe"].attrs["zero_one_targets"]
    before = old.read_bytes()
    folder = zero_one_run.parent
    done = fdl("analyze", *(folder / f"step_{step}.pt" for step in (0, 10)), "--model", f"{folder / 'model.py'}:build",
               "--probe", folder / "probe.npz", "--out", old)
    assert done.code == 0 and "0 checkpoints analysed, 2 already in the store" in done.stderr, done.stderr
    assert old.read_bytes() == before


def test_a_drop_records_no_invocation_in_the_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: Any  # noqa: F811
) -> None:
    """docs/store.md: "The history records no invocation for a drop, which analyses no checkpoint"; the
    checkpoints kept keep their invocation."""
    import h5py

    from tests.test_s19_store import fdl as fdl_captured

    assert "history records no invocation for a drop, which analyses no checkpoint" in _one_line(STORE)
    common, run2, out, _, _ = damaged(tmp_path)

    def history() -> tuple[list, dict[str, int]]:
        with h5py.File(out, "r") as store:
            rows = json.loads(store.attrs["history"])
            return rows, {name: int(group.attrs["history"]) for name, group in store["checkpoints"].items()}

    rows, indices = history()
    status, _, err = fdl_captured(capsys, "analyze", *common, "-o", out, "--step-offset", f"{run2}=20",
                                  "--drop", "110,120")
    assert status == 0 and "2 dropped (--drop 110,120)" in err, err
    after, kept = history()
    assert after == rows
    assert kept == {name: index for name, index in indices.items() if name not in ("step_110", "step_120")}
