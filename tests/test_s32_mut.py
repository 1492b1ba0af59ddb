"""Mutation testing of what the last session added: the raw-pixel check read in pieces, the CSV cell encoder, the
store's `refused` list and the lines that name it, compare's step alignment, the low-rank-reference and narrow-layer
notes. Each test here failed with a mutant (a comparison flipped, a branch dropped, a bound moved) that every
test of that code let pass: it asserts what the user reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.probes import Probe, raw_pixels_warning
from tests import test_s31_small as small
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _good, _make_run, _spoil
from tests.test_report import SCALARS, STEPS, make_store
from tests.test_s31_degen import _run as _degenerate_run
from tests.test_s31_refused import _analyze


def _said(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ the raw-pixel check, read in pieces


def _probe(x: np.ndarray) -> Probe:
    return Probe(name="probe", path=Path("probe.npz"), x=x, y=None, task=None, n_classes=None, sha256="")


def test_raw_pixel_check_of_rows_over_a_piece_each_takes_the_extremes_of_every_piece() -> None:
    """Rows of 4 MiB and one value (over a piece of 4 MiB: a piece is one row, never none), the largest and the
    smallest value in the first row: the verdict and its numbers are those of all the rows read, not of the last
    piece (whose 5 alone is no pixel range)."""
    x = np.full((3, 1, 2**20 + 1), 5.0, np.float32)
    x[0, 0, :2] = (0.0, 200.0)
    said = raw_pixels_warning(_probe(x))
    assert said is not None and "whole numbers from 0 to 200 as floats" in said, said


def test_raw_pixel_check_says_a_negative_zero_as_0() -> None:
    """Pixels of -0.0 (a sign flipped by a transform) are whole numbers from 0: said 0, not "-0"."""
    x = np.full((2, 1, 4), -0.0, np.float32)
    x[1, 0, 3] = 100.0
    said = raw_pixels_warning(_probe(x))
    assert said is not None and "whole numbers from 0 to 100 as floats" in said, said


def test_raw_pixel_check_of_samples_of_no_values_says_nothing() -> None:
    """x of shape (4, 0, 3): each sample holds no value (0 bytes), so nothing is read and nothing said."""
    assert raw_pixels_warning(_probe(np.zeros((4, 0, 3), np.float32))) is None


# ------------------------------------------------------------------ the store's `refused` list, said by report


def _refused_note(out: Path) -> str:
    done = fdl_in_process("report", out)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("refused:")]
    return line


def test_a_refusal_between_stored_steps_is_said_replaced_and_taken_out(tmp_path: Path) -> None:
    """Step 10 of 0 - 20 refused for NaN weights: the report covers 0 - 20 "without it" (one step, inside the
    span). Its file replaced by one whose forward pass overflows, a resume records that reason, not the first
    one kept as if the same. Its file mended, a resume stores it and the attribute is gone (docs/store.md: "removed
    once empty"), not left to name a step that a later --drop would show as refused again."""
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    _spoil(folder, 10, "nan")
    out = tmp_path / "run.h5"
    assert _analyze(folder, out).returncode == 1
    assert _refused_note(out) == ("refused: step 10 (NaN or Inf weights: the run diverged?), by `fdl analyze`: not "
                                  "in the store, so this report covers steps 0–20 without it")
    _good(folder, 10)
    _spoil(folder, 10, "overflow")
    assert _analyze(folder, out).returncode == 1
    assert _refused_note(out).startswith("refused: step 10 (a forward pass that overflowed to inf or NaN"), out
    _good(folder, 10)
    assert _analyze(folder, out).returncode == 0
    with h5py.File(out, "r") as store:
        assert "refused" not in store.attrs, store.attrs["refused"]


def test_refusals_found_by_a_resume_are_recorded_once_and_not_rewritten(tmp_path: Path) -> None:
    """A resume whose only news is two refused checkpoints (10 and 30; 0 and 20 stored) records them when it
    closes: the report covers 0 - 20 without them, not "only" (which says every refused step comes after the
    stored ones). Refused again for the same reason, they are kept as they are and the store is not written."""
    folder = _make_run(tmp_path / "run", [0, 10, 20, 30])
    for step in (10, 30):
        _spoil(folder, step, "nan").rename(tmp_path / f"step_{step}.safetensors")
    out = tmp_path / "run.h5"
    assert _analyze(folder, out).returncode == 0
    for step in (10, 30):
        (tmp_path / f"step_{step}.safetensors").rename(folder / f"step_{step}.safetensors")
    assert _analyze(folder, out).returncode == 1
    assert _refused_note(out).endswith("so this report covers steps 0–20 without them"), out
    before = out.stat()
    with h5py.File(out, "r") as store:
        items = store.attrs["refused"]
    assert _analyze(folder, out).returncode == 1
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with h5py.File(out, "r") as store:
        assert store.attrs["refused"] == items


# ------------------------------------------------------------------ the CSV cell encoder


def test_csv_rows_end_in_a_line_feed_alone(tmp_path: Path) -> None:
    """Every CSV of fdl ends its rows with a line feed (docs/usage.md): a carriage return before it is read by
    `cut`, awk or a shell loop as part of the last cell. The csv module reads either, so its tests did not tell."""
    store = make_store(tmp_path / "run.h5")
    text = fdl_in_process("report", store, "--format", "csv").stdout
    assert "\r" not in text and text.endswith("\n") and text.count("\n") == 1 + len(STEPS), repr(text[-200:])


def test_a_file_that_cannot_be_read_is_not_recorded_as_refused(tmp_path: Path) -> None:
    """A checkpoint cut short fails for its file, not its values: a failure as before, not in the `refused` list,
    and the report names no refused step (it said "refused: step 10 (its values)")."""
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    _spoil(folder, 10, "truncated")
    out = tmp_path / "run.h5"
    assert _analyze(folder, out).returncode == 1
    done = fdl_in_process("report", out)
    assert done.returncode == 0 and "refused" not in done.stderr, done.stderr


def _refusing(path: Path, *items: tuple[int, str]) -> Path:
    """The small store of tests/test_report.py (steps 0, 100, 200) whose `refused` list names (step, kind), as
    `fdl analyze` writes it."""
    make_store(path)
    with h5py.File(path, "a") as store:
        store.attrs["refused"] = json.dumps([
            {"step": step, "path": f"run/step_{step}.pt", "kind": kind, "reason": "tensor 'w' holds NaN or Inf",
             "refused": "2026-01-01T00:00:00Z", "fdl_version": "0.1.0"} for step, kind in items])
    return path


def test_export_of_chosen_steps_does_not_name_the_refused_ones(tmp_path: Path) -> None:
    """`fdl export --steps` names stored steps alone: the refused ones are no part of what it was asked for
    (without --steps, it names them, as report does)."""
    store = _refusing(tmp_path / "run.h5", (300, "weights"))
    chosen = fdl_in_process("export", store, "--what", "eigenvalues", "--steps", "0,100")
    assert chosen.returncode == 0 and "refused" not in chosen.stderr, chosen.stderr
    every = fdl_in_process("export", store, "--what", "eigenvalues")
    assert "note: refused: step 300 (NaN or Inf weights" in every.stderr, every.stderr


# ------------------------------------------------------------------ the low-rank-reference and narrow-layer notes


def _report_of(tmp_path: Path, **at: dict[str, Any]) -> str:
    """`fdl report`'s text of the small store (C = 2 outputs, steps 0, 100, 200) with the scalars `at` (step_0=...)
    over the usual ones: the notes beside its table, in one line each."""
    scalars = {step: {**values, **at.get(f"step_{step}", {})} for step, values in SCALARS.items()}
    done = fdl_in_process("report", make_store(tmp_path / "run.h5", scalars=scalars))
    assert done.returncode == 0, done.stderr
    return _said(done.stdout + done.stderr)


def test_a_layer_of_exactly_c_units_has_its_d_lr_bound_and_a_degenerate_reference(tmp_path: Path) -> None:
    """p = C = 2 units, and the reference of rank 1 < k = 2: the D_LR clause holds at p = C (outputs can span
    all p directions), and the reference is the degenerate one, not a layer "fewer than" k units."""
    said = _report_of(tmp_path, step_0={"n_features": 2, "rank": 1}, step_100={"n_features": 2},
                      step_200={"n_features": 2})
    assert "D_LR is bounded by the width too: outputs that span all p = 2 ≤ C = 2 feature directions" in said, said
    assert "the reference checkpoint (step 0) has features of rank 1 on the probe, below the overlaps' k = 2" in said
    assert "fewer than the overlaps' k" not in said, said


def test_a_layer_wider_than_c_gets_no_narrow_layer_line_in_the_report(tmp_path: Path) -> None:
    """p = 3 ≤ C + mf_extra = 3 but p > C = 2: the MF rule's limit is classify's to say beside its verdict; the
    report, showing D_LR and no verdict, says the line only where D_LR is fixed by the width (p ≤ C)."""
    said = _report_of(tmp_path, **{f"step_{step}": {"n_features": 3} for step in SCALARS})
    assert "too narrow" not in said and "D_LR is bounded" not in said, said


def test_a_reference_of_rank_equal_to_k_gets_no_low_rank_note(tmp_path: Path) -> None:
    """rank 2 = k = C at the reference: of full rank for the overlaps, nothing to say."""
    said = _report_of(tmp_path, step_0={"rank": 2})
    assert "overlaps' k" not in said, said


# ------------------------------------------------------------------ the buffers read before a layer


def test_a_buffer_given_by_keyword_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.mul(x, other=self.mask)`: the mask reaches torch as a keyword argument, and moved the features all
    the same; it is named as when given by position (tests/test_s31_small.py)."""
    model = small.MODEL.replace("return x * self.mask", "return torch.mul(x, other=self.mask)")
    assert model != small.MODEL
    monkeypatch.setattr(small, "MODEL", model)
    mask = torch.ones(8)
    mask[:5] = 0
    status, err = small._run(tmp_path, {"gate.mask": mask})
    assert status == 0, err
    assert "only buffers changed (gate.mask)" in err, err


def test_a_reference_of_low_rank_with_no_checkpoint_after_it_is_reported_without_the_note(tmp_path: Path) -> None:
    """One checkpoint, the reference, of rank 1 < k = 2: no overlap was taken from it, so no note (and no crash
    looking for the last checkpoint after it)."""
    store = make_store(tmp_path / "run.h5", steps=(0,), scalars={0: {**SCALARS[0], "rank": 1}})
    done = fdl_in_process("report", store)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "overlaps' k" not in _said(done.stdout + done.stderr), done.stderr


def test_analyze_tells_a_degenerate_reference_of_a_layer_of_exactly_k_units(tmp_path: Path) -> None:
    """3 units before a 3-class head, constant at the reference (rank 1 < k = 3): the overlaps of the later,
    full-rank checkpoints are taken at k = 3, so the warning is the degenerate reference's, not the narrow
    layer's "at most the top 3 ... (k ≤ 3, not 3)"."""
    warned = [line for line in (_degenerate_run(tmp_path, 3, constant_reference=True) / "analyze.txt").read_text()
              .splitlines() if "overlaps' k" in line]
    assert len(warned) == 1 and "(constant or collapsed features there" in warned[0], warned
