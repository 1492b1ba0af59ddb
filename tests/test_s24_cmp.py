"""Session 24: `fdl compare`'s human output, and what it said of runs of other lengths, probes and options.

- Two ordinary runs printed a line "FIELD: differs at N steps" for each of ~26 fields below the table: the
  table's fields and the regime keep their lines, the other fields that differ are named on one line.
- Two regression runs got a column "Δ acc" of "—" (the report's table shows R² for them).
- A run analysed with `--overlap-k 5` or `--cka-dtype float32` against one without: no warning (the store
  records those options only when not their defaults, and compare compared the options both record).
- A run 10 times as long as the other: "left unmatched: 15 checkpoints of A, 0 of B", and a verdict of the
  first 80 of 1000 steps with no word of where the comparison ended.
- `--no-overlap` on two probe files (a held-out and a training probe) said nothing of the probes at all.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fdl_cli import report
from fdl_cli.fields import RECORD_FIELDS
from tests.cli_run import REPO, fdl_in_process
from tests.test_report import SCALARS, make_store

SAMPLE = REPO / "sample_checkpoints"
STEPS = (0, 100, 1000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample run (A) and a second ordinary run (B: its checkpoints' weights perturbed), each analysed by the
    CLI at three steps; the sample run again with --overlap-k 5 --cka-dtype float32; and on its probe with the
    labels shuffled."""
    folder = tmp_path_factory.mktemp("runs")
    other = folder / "other"
    other.mkdir()
    generator = torch.Generator().manual_seed(1)
    for step in STEPS:
        name = f"step_{step}.safetensors"
        weights = {key: value * 1.2 + 0.05 * torch.randn(value.shape, generator=generator)
                   for key, value in load_file(SAMPLE / name).items()}
        save_file(weights, other / name, metadata={"step": str(step)})
    probe = np.load(SAMPLE / "probe.npz")
    shuffled = folder / "shuffled.npz"
    np.savez(shuffled, x=probe["x"], y=np.random.default_rng(0).permutation(probe["y"]))
    model = f"{SAMPLE / 'model.py'}:build"
    steps = ",".join(map(str, STEPS))
    stores = {"a": folder / "a.h5", "b": folder / "b.h5", "options": folder / "options.h5",
              "shuffled": folder / "shuffled.h5"}
    for key, source, used, extra in (("a", SAMPLE, SAMPLE / "probe.npz", []), ("b", other, SAMPLE / "probe.npz", []),
                                     ("options", SAMPLE, SAMPLE / "probe.npz",
                                      ["--overlap-k", "5", "--cka-dtype", "float32"]),
                                     ("shuffled", SAMPLE, shuffled, [])):
        done = fdl_in_process("analyze", source, "--model", model, "--probe", used, "--steps", steps, "--device", "cpu",
                              "--out", stores[key], *extra)
        assert done.returncode == 0, done.stderr
    return stores


def _differing(document: dict) -> list[str]:
    """The fields whose B − A is non-zero (or a text change) at some matched step, in record order."""
    return [name for name in RECORD_FIELDS
            if any(step["differences"].get(name) not in (None, 0) for step in document["steps"])]


def test_two_ordinary_runs_name_the_fields_beyond_the_table_on_one_line(runs: dict[str, Path]) -> None:
    done = fdl_in_process("compare", runs["a"], runs["b"])
    assert done.returncode == 0, done.stderr
    document = json.loads(fdl_in_process("compare", runs["a"], runs["b"], "--json").stdout)
    differing = _differing(document)
    first = (*report.COMPARE_FIELDS, "regime")
    others = [name for name in differing if name not in first]
    assert len(others) > report.OTHER_FIELDS_IN_FULL  # ordinary runs: most fields differ
    lines = done.stderr.splitlines()
    below = lines[lines.index(next(line for line in lines if line.startswith(f"{STEPS[-1]:>6}"))) + 1:]
    below = below[:below.index(next(line for line in below if line.startswith("eigenspace overlap A·B")))]
    shown = [name for name in first if name in differing]
    # the table's fields (in its order) and the regime, each on its line, then the others named on one line
    assert [line.split(":")[0] for line in below[:-1]] == shown
    assert all(line.startswith(f"{name}: differs at ") for name, line in zip(shown, below, strict=False))
    assert below[-1] == (f"{len(others)} other fields differ: {', '.join(others)} (B − A of every field at every "
                         "matched step: add --format csv or --json)")
    # nothing lost from the machine outputs: every field's difference at every step
    rows = list(csv.DictReader(io.StringIO(fdl_in_process("compare", runs["a"], runs["b"], "--format", "csv").stdout)))
    for name in others:
        assert any(step["differences"][name] not in (None, 0) for step in document["steps"])
        assert any(row[f"delta_{name}"] not in ("", "0", "0.0") for row in rows), name


def test_a_few_other_fields_that_differ_keep_their_lines(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", scalars={step: {**values, "loss": values["loss"] * 2, "param_norm": 10.0}
                                               for step, values in SCALARS.items()})
    lines = report.difference_lines(report.compare_runs(report.load_run(a), report.load_run(b), overlap=False))
    assert lines == ["param_norm: differs at 3 steps, largest B − A −1424", "loss: differs at 3 steps, largest B − A "
                     "+1.25"]


def test_regression_runs_show_r2_where_classification_runs_show_the_accuracy(tmp_path: Path,
                                                                          runs: dict[str, Path]) -> None:
    a = make_store(tmp_path / "a.h5")  # regression probes: r2 0.5, no accuracy
    b = make_store(tmp_path / "b.h5", scalars={step: {**values, "r2": 0.75} for step, values in SCALARS.items()})
    done = fdl_in_process("compare", a, b)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stderr.splitlines() if line.startswith("step A"))
    assert "Δ r2" in header and "Δ acc" not in header
    assert "r2: differs at 3 steps, largest B − A +0.2500" in done.stderr.splitlines()
    assert " other fields differ" not in done.stderr
    comparison = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False)
    # the last column: compared without the overlap, the table has no column of its dashes (test_s40_docs_audit.py)
    assert [row[-1] for row in (line.split() for line in report.render_comparison_table(comparison).lines[1:])] \
        == ["+0.2500"] * 3
    # a narrow terminal keeps R² where it keeps the accuracy: before CKA₀
    narrow = report.render_comparison_table(comparison, max_width=40)  # 50 before the overlap's column of dashes went
    assert "Δ r2" not in narrow.hidden and "Δ CKA₀" in narrow.hidden
    classified = fdl_in_process("compare", runs["a"], runs["b"])
    assert "Δ acc" in next(line for line in classified.stderr.splitlines() if line.startswith("step A"))


def test_options_a_store_records_only_when_not_their_defaults_are_compared(runs: dict[str, Path]) -> None:
    done = fdl_in_process("compare", runs["a"], runs["options"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["option_differences"] == [
        {"option": "cka_dtype", "a": "float64", "b": "float32"}, {"option": "overlap_k", "a": 10, "b": 5}]
    assert ("analysed with different options (cka_dtype: A float64 vs B float32; overlap_k: A 10 vs B 5)"
            in " ".join(done.stderr.split()))
    assert "different options" not in fdl_in_process("compare", runs["a"], runs["b"], "--json").stderr
    # absent, overlap_k is min(top_k, C): the same as one recorded equal to it
    plain, recorded = {"options": {"top_k": 64}}, {"options": {"top_k": 64, "overlap_k": 10}}
    assert report.option_differences(plain, recorded, outputs=(10, 10)) == []
    assert [(d.option, d.a, d.b) for d in report.option_differences(plain, recorded, outputs=(12, 10))] == [
        ("overlap_k", 12, 10)]
    assert report.option_differences(plain, recorded) == []  # C not known: compared only where both record it
    assert report.option_differences(plain, {"layers": ["fc1"]}) == []  # no options recorded in B


def _scalars(steps: tuple[int, ...]) -> dict[int, dict]:
    values = list(SCALARS.values())
    return {step: values[min(i, len(values) - 1)] for i, step in enumerate(steps)}


def test_a_longer_run_is_told_where_the_comparison_ends(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")  # steps 0, 100, 200
    longer = (0, 100, 200, 300, 400)
    b = make_store(tmp_path / "b.h5", steps=longer, scalars=_scalars(longer))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert notes == ["left unmatched: 0 checkpoints of A, 2 of B (steps 300, 400)",
                     "the comparison covers steps 0–200, the span of the matched steps: run B's 2 checkpoints after "
                     "it (steps 300–400) are in neither the table nor the verdict"]
    later = (100, 200)  # a run resumed later: A's first checkpoint before the span
    c = make_store(tmp_path / "c.h5", steps=later, scalars=_scalars(later))
    notes = report.compare_runs(report.load_run(a), report.load_run(c), overlap=False).notes
    assert notes[-1] == ("the comparison covers steps 100–200, the span of the matched steps: run A's 1 checkpoint "
                         "before it (step 0) is in neither the table nor the verdict")
    nearest = (0, 105, 205, 300)
    d = make_store(tmp_path / "d.h5", steps=nearest, scalars=_scalars(nearest))
    notes = report.compare_runs(report.load_run(a), report.load_run(d), overlap=False).notes
    assert notes[-1] == ("the comparison covers steps 0–200 of A (0–205 of B), the span of the matched steps: run "
                         "B's 1 checkpoint after it (step 300) is in neither the table nor the verdict")
    # the same steps, or unmatched ones within the span only: no such note
    # another run's store of the same probe (the same store twice is said to be: tests/test_s28_polish.py)
    same_probe = make_store(tmp_path / "same_probe.h5", seed=1)
    assert report.compare_runs(report.load_run(a), report.load_run(same_probe), overlap=False).notes == []
    gaps = (0, 50, 100, 150, 200)
    e = make_store(tmp_path / "e.h5", steps=gaps, scalars=_scalars(gaps))
    assert report.compare_runs(report.load_run(a), report.load_run(e), overlap=False).notes == [
        "left unmatched: 0 checkpoints of A, 2 of B (steps 50, 150)"]
    # steps that count other things: the few-matches note says it, and gives both ranges
    many = tuple(range(0, 1100, 100))
    f = make_store(tmp_path / "f.h5", steps=(0, 1, 2), scalars=_scalars((0, 1, 2)))
    g = make_store(tmp_path / "g.h5", steps=many, scalars=_scalars(many))
    notes = report.compare_runs(report.load_run(f), report.load_run(g), overlap=False).notes
    assert any(note.startswith("only 1 of A's 3 and B's 11 checkpoints") for note in notes)
    assert not any(note.startswith("the comparison covers") for note in notes)
    printed = fdl_in_process("compare", a, b)
    assert "note: the comparison covers steps 0–200" in printed.stderr


def test_no_overlap_notes_that_the_probes_differ(tmp_path: Path, runs: dict[str, Path]) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", probe_sha="b" * 64)
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["notes"] == [
        f"the runs were analysed on different probe files (A: 'train' sha256 {'a' * 12}…, B: 'train' sha256 "
        f"{'b' * 12}…): each run's fields describe its own probe's data, so their differences are the data's as "
        "well as training's"]
    # another run's store of the same probe (the same store twice is said to be: tests/test_s28_polish.py)
    same_probe = make_store(tmp_path / "same_probe.h5", seed=1)
    assert report.compare_runs(report.load_run(a), report.load_run(same_probe), overlap=False).notes == []
    # the same inputs with other labels: the fields of the labels are named
    labels = fdl_in_process("compare", runs["a"], runs["shuffled"], "--no-overlap", "--format", "csv")
    assert labels.returncode == 0, labels.stderr
    said = " ".join(labels.stderr.split())
    assert "note: the runs were analysed on different probe files (A: 'probe' sha256 " in said
    assert ("): the same inputs with other labels: the fields measured against the labels (accuracy, loss, r2, "
            "cross_entropy, Π*, nc1) are of other targets") in said
    # with the overlap, its own note says so (and a probe of other inputs is refused), as before
    overlap = fdl_in_process("compare", runs["a"], runs["shuffled"])
    assert "the probes differ in their labels only" in overlap.stderr and "different probe files" not in overlap.stderr

