"""The wording of `fdl compare`, as a user comparing two runs reads it.

- The different-options warning said Python's reprs (`center: A False vs B True`, `layers: A ['4:input'] vs ...`)
  where `fdl report` says `center no` and `layer: 4:input`.
- A nearest-step pair in the verdict nested parentheses: "at the only matched step (step 350 of A (400 of B))
  (last matched step: ...)".
- "left unmatched: 0 checkpoints of A, 2 of B" said how many, never which.
- The same store given twice (or a copy of it) gave a table of zeros and said nothing of it.
- A probe of the same points in another order is refused as other inputs, with no word that the order counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import pytest

from fdl_cli import report
from fdl_cli.errors import StoreError
from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, make_store


def _said(stderr: str) -> str:
    """What fdl printed, lines rich wrapped joined again."""
    return " ".join(stderr.split())


def _with_provenance(path: Path, **extra: Any) -> Path:
    """The store at `path` with `extra` in its provenance (as `fdl analyze` records its options and layers)."""
    with h5py.File(path, "r+") as store:
        provenance = json.loads(store.attrs["provenance"])
        store.attrs["provenance"] = json.dumps({**provenance, **extra}, sort_keys=True)
    return path


def _scalars(steps: tuple[int, ...], d_lr: float | list[float | None]) -> dict[int, dict[str, Any]]:
    values = d_lr if isinstance(d_lr, list) else [d_lr] * len(steps)
    return {step: {**SCALARS[min(SCALARS)], "d_lr": value} for step, value in zip(steps, values, strict=True)}


def _nested_or_doubled(text: str) -> list[str]:
    """Parentheses opened inside others, or one closed and another opened right after: "(a (b))", "(a) (b)"."""
    found, depth = [], 0
    for i, char in enumerate(text):
        if char == "(":
            if depth:
                found.append(text[max(i - 30, 0):i + 30])
            depth += 1
        elif char == ")":
            depth -= 1
    return found + [text[max(i - 30, 0):i + 30] for i in range(len(text)) if text.startswith(") (", i)]


# ----------------------------------------------------------------------------------------- options in words


def test_options_that_differ_are_said_as_the_report_says_them(tmp_path: Path) -> None:
    a = _with_provenance(make_store(tmp_path / "a.h5"), layers=["4:input"],
                         options={"center": False, "cka_dtype": "float64", "anchor_size": 4096})
    b = _with_provenance(make_store(tmp_path / "b.h5", seed=1), layers=["4:input", "6:input"],
                         options={"center": True, "cka_dtype": "float32", "anchor_size": 512})
    done = fdl_in_process("compare", a, b, "--no-overlap")
    assert done.returncode == 0, done.stderr
    assert ("the two runs were analysed with different options (anchor_size: A 4096 vs B 512; center: A no vs "
            "B yes; cka_dtype: A float64 vs B float32); their field differences then mix") in _said(done.stderr)
    # the stores' lists of layers are not warned of, the layers compared are (tests/test_s40_docs_audit.py): both fc1
    assert "False" not in done.stderr and "['" not in done.stderr
    # as `fdl report` says the same values
    shown = _said(fdl_in_process("report", b).stderr + fdl_in_process("report", b).stdout)
    assert "center yes" in shown and "cka_dtype float32" in shown and "layers: 4:input, 6:input" in shown
    # --json keeps the values themselves
    document = json.loads(fdl_in_process("compare", a, b, "--no-overlap", "--json").stdout)
    assert {"option": "center", "a": False, "b": True} in document["option_differences"]
    assert [d["option"] for d in document["option_differences"]] == ["anchor_size", "center", "cka_dtype"]


# --------------------------------------------------------------------------------- the verdict's parentheses


def test_a_nearest_step_pair_in_the_verdict_nests_no_parentheses(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5", steps=(350,), scalars=_scalars((350,), 0.5))
    b = make_store(tmp_path / "b.h5", steps=(400,), scalars=_scalars((400,), 0.6), seed=1)
    verdict = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).verdict
    assert verdict == ("Run A is richer than run B (lower D_LR) at the only matched step, step 350 of A and 400 of "
                       "B: D_LR A 0.5000, B 0.6000, 17% lower.")
    tied = make_store(tmp_path / "tied.h5", steps=(400,), scalars=_scalars((400,), 0.5), seed=1)
    verdict = report.compare_runs(report.load_run(a), report.load_run(tied), overlap=False).verdict
    assert verdict == "The runs are equally rich (same D_LR) at the only matched step, step 350 of A and 400 of B."
    # a later step without D_LR: the verdict's values are of the last with both, a nearest-step pair
    steps_a, steps_b = (0, 100, 200), (0, 105, 200)
    c = make_store(tmp_path / "c.h5", steps=steps_a, scalars=_scalars(steps_a, [0.9, 0.5, None]))
    d = make_store(tmp_path / "d.h5", steps=steps_b, scalars=_scalars(steps_b, [0.9, 0.6, None]), seed=1)
    verdict = report.compare_runs(report.load_run(c), report.load_run(d), overlap=False).verdict
    assert _nested_or_doubled(verdict) == [], verdict
    assert "step 100 of A and 105 of B, the last with both D_LR: D_LR A 0.5000, B 0.6000" in verdict
    shown = _said(fdl_in_process("compare", a, b, "--no-overlap").stderr)
    assert _nested_or_doubled(shown[shown.index("Run A is richer"):]) == []


# ------------------------------------------------------------------------------------- unmatched checkpoints


def test_the_unmatched_note_names_the_steps_left_out(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")  # steps 0, 100, 200
    gaps = (0, 50, 100, 150, 200)
    b = make_store(tmp_path / "b.h5", steps=gaps, scalars=_scalars(gaps, 0.5))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert notes == ["left unmatched: 0 checkpoints of A, 2 of B (steps 50, 150)"]
    both = (0, 10, 20, 30, 40, 50, 60, 70, 80, 100, 200)  # 8 of B's, 1 of A's
    c = make_store(tmp_path / "c.h5", steps=(0, 100, 150, 200), scalars=_scalars((0, 100, 150, 200), 0.5))
    d = make_store(tmp_path / "d.h5", steps=both, scalars=_scalars(both, 0.5))
    notes = report.compare_runs(report.load_run(c), report.load_run(d), overlap=False).notes
    assert "left unmatched: 1 checkpoint of A (step 150), 8 of B (steps 10, 20, 30, 40, 50, 60 and 2 more)" in notes
    done = fdl_in_process("compare", a, b, "--no-overlap")
    assert "note: left unmatched: 0 checkpoints of A, 2 of B (steps 50, 150)" in _said(done.stderr)


# ------------------------------------------------------------------------------------ the same store twice


SAME_STORE = "A and B are the same store and series"
SAME_CONTENT = "stores A and B hold the same checkpoints (the same sha256 at every step) with the same fields"


def test_the_same_store_given_twice_is_said_in_one_line(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    done = fdl_in_process("compare", a, a)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if SAME_STORE in line]
    assert lines == [f"note: {SAME_STORE} ({a}): every difference is zero (was another run meant as B?)"]
    copy = Path(shutil.copyfile(a, tmp_path / "copy.h5"))
    said = _said(fdl_in_process("compare", a, copy, "--no-overlap").stderr)
    assert (f"note: {SAME_CONTENT}: every difference is zero (a copy of one store, or the run analysed twice "
            "alike; was another run meant as B?)") in said
    assert SAME_STORE not in said
    # --json carries it with the other notes
    assert any(note.startswith(SAME_CONTENT) for note in
               json.loads(fdl_in_process("compare", a, copy, "--json").stdout)["notes"])


def test_no_such_line_for_two_runs_or_two_series_of_one_store(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    other = make_store(tmp_path / "other.h5", seed=1)  # the same checkpoints, other numbers
    said = _said(fdl_in_process("compare", a, other, "--no-overlap").stderr)
    assert SAME_STORE not in said and "same checkpoints" not in said
    layers = make_store(tmp_path / "layers.h5", layers=("fc1", "fc2"))
    said = _said(fdl_in_process("compare", layers, layers, "--layer", "fc1", "--layer-b", "fc2").stderr)
    assert SAME_STORE not in said and "same checkpoints" not in said
    # the same checkpoints with one value other: not the same
    changed = {step: dict(values) for step, values in SCALARS.items()}
    changed[200]["loss"] = 0.07
    close = make_store(tmp_path / "close.h5", scalars=changed)
    assert "same checkpoints" not in _said(fdl_in_process("compare", a, close, "--no-overlap").stderr)


# ------------------------------------------------------------------------------------- a permuted probe


def _with_inputs_digest(path: Path, digest: str, *, n: int | None = None) -> Path:
    with h5py.File(path, "r+") as store:
        store["probes/train"].attrs["x_sha256"] = digest
        if n is not None:
            store["probes/train"].attrs["n"] = n
    return path


def test_a_refused_probe_of_as_many_points_names_their_order_as_a_cause(tmp_path: Path) -> None:
    """x_sha256 is a digest of the inputs in their order (docs/store.md): the store keeps nothing that tells the
    same points in another order from other points, so the refusal names the order as one possible cause where
    the two probes hold as many points, and not where their numbers differ."""
    a = _with_inputs_digest(make_store(tmp_path / "a.h5"), "1" * 64)
    b = _with_inputs_digest(make_store(tmp_path / "b.h5", probe_sha="b" * 64, seed=1), "2" * 64)
    with pytest.raises(StoreError) as caught:
        report.compare_runs(report.load_run(a), report.load_run(b))
    assert "not analysed on the same probe inputs" in caught.value.what
    assert str(caught.value.fix) == (
        "analyse both runs with the same probe inputs (--probe; the labels may differ), saved in one order: the same "
        "points in another order count as other inputs (their sha256 is taken in order); or pass --no-overlap to "
        "compare only the per-checkpoint fields")
    done = fdl_in_process("compare", a, b)
    assert done.returncode == 1 and "same points in another order" in _said(done.stderr)
    fewer = _with_inputs_digest(make_store(tmp_path / "c.h5", probe_sha="c" * 64, seed=2), "3" * 64, n=12)
    with pytest.raises(StoreError) as caught:
        report.compare_runs(report.load_run(a), report.load_run(fewer))
    assert str(caught.value.fix) == ("analyse both runs with the same probe inputs (--probe; the labels may differ), or "
                                     "pass --no-overlap to compare only the per-checkpoint fields")  # as before
    assert str(caught.value.got).endswith("; probes of 16 and 12 points")
