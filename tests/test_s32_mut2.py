"""Mutation testing of this session's additions (and three survivors of an earlier round): each test here failed
with a mutant (a comparison flipped, a branch dropped, a key swapped, an escape skipped) that every test of that
code let pass. It asserts what the user reads: the message, the store's list, the number."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fdl_cli.errors import FdlError
from fdl_cli.probes import load_probe
from tests.cli_run import fdl_in_process, model_file
from tests.test_analyze import fdl
from tests.test_prev_walkback import _analyze as _analyze_here
from tests.test_prev_walkback import _arrive, _make_run, _polls, _spoil
from tests.test_report import make_store
from tests.test_s31_small import _run as _small_run
from tests.test_s32_heads import _run as _heads_run
from tests.test_s32_mut import _report_of
from tests.test_s32_repro import _moved_run
from tests.test_s32_rev import HOOKED
from tests.test_walk_fixes import SMALL
from tests.tiny_models import mlp


def _said(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ the store's `refused` list under --watch


def test_watch_keeps_an_earlier_refusal_when_a_later_one_is_committed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 0 - 20, then a diverged 30 (committed as refused at that wait), then a good 40 and a diverged 50: the
    store's `refused` list names 30 and 50. The writer forgetting what it committed wrote [50] alone."""
    source = _make_run(tmp_path / "source")
    for step in (30, 50):
        _spoil(source, step, "nan")
    folder = _make_run(tmp_path / "run", [0, 10, 20])
    out = tmp_path / "run.h5"
    with _polls(monkeypatch, lambda: _arrive(source, folder, "step_30.safetensors"),
                lambda: _arrive(source, folder, "step_40.safetensors", "step_50.safetensors")):
        summary, _ = _analyze_here(folder, out, watch=True, poll_seconds=0.01)
    assert summary.interrupted
    with h5py.File(out, "r") as store:
        assert [item["step"] for item in json.loads(store.attrs["refused"])] == [30, 50]


# ------------------------------------------------------------------ fdl's glyphs on a stream without them


def test_an_ascii_stderr_writes_superscripts_r2_and_other_names_as_they_read() -> None:
    """stderr as fdl sets it on an ASCII terminal (`errors.PLAIN`): R² is R^2 (its ² is Latin-1's, not among the
    superscripts), a run of superscripts takes one ^ (10⁻¹⁰ is 10^-10, not 10^-^1^0), Π̂ is Pi^, and a character
    of no stand-in (a path's ü) is escaped as a name one can find, \\xfc."""
    from fdl_cli.errors import PLAIN

    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors=PLAIN)
    err.write("R² 0.950; eps 10⁻¹⁰; Π̂(C); runs/lr_ü.h5")
    err.flush()
    said = err.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert said == "R^2 0.950; eps 10^-10; Pi^(C); runs/lr_\\xfc.h5", said


# ------------------------------------------------------------------ the low-rank reference's D_LR clause


@pytest.mark.parametrize(("feature_pr", "said"), [(1.0, True), (1.6, False)])
def test_a_reference_of_d_lr_zero_is_called_rank_one_only_where_its_feature_pr_is_one(
        tmp_path: Path, feature_pr: float, said: bool) -> None:
    """The reference of rank 1 < k = 2 and D_LR 0: with feature_pr 1, the report says that D_LR 0 is the formula's
    for one direction the outputs span, not richness; with feature_pr 1.6 (not one direction), it says nothing of
    the kind."""
    text = _report_of(tmp_path, step_0={"rank": 1, "feature_pr": feature_pr, "d_lr": 0.0})
    assert "the reference checkpoint (step 0) has features of rank 1" in text, text
    clause = ("its D_LR 0.0000 there is that of features of centered rank 1 (feature_pr 1) whose one direction the "
              "outputs span: 0 by the formula, not a measure of richness")
    assert (clause in text) is said, text


# ------------------------------------------------------------------ a table's title and cells on an ASCII terminal


def test_a_narrow_ascii_terminal_cuts_a_title_and_a_cell_of_escaped_names_at_its_edge(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The title and a row name a path with "ü", written \\xfc (4 characters for the 1 cell "ü" takes): each is
    measured as written, so its line, cut at a terminal 24 columns wide, ends at the edge with "...". Measured as
    "ü", each was 3 characters wider than the terminal and wrapped."""
    from rich.console import Console

    from fdl_cli.errors import PLAIN
    from fdl_cli.report import PlainTable

    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors=PLAIN)
    monkeypatch.setattr(sys, "stderr", err)
    name = "runs/lr_ü_" + "x" * 30 + ".h5"
    table = PlainTable.fitted(["step", "store"], ["right", "left"], [["100", name]], title=f"{name}: probe train",
                              max_width=24, always=2)
    Console(file=err, width=24, force_terminal=True, color_system=None).print(table)
    err.flush()
    lines = err.buffer.getvalue().decode("ascii").splitlines()  # type: ignore[attr-defined]
    assert lines[0] == "runs/lr_\\xfc_xxxxxxxx...", lines
    assert lines[3] == " 100   runs/lr_\\xfc_x...", lines
    assert max(len(line) for line in lines) == 24, lines


# ------------------------------------------------------------------ a markdown cell's raw text


def test_a_markdown_cell_escapes_githubs_math_and_leaves_a_file_names_underscore_bare() -> None:
    """GitHub draws `$1e-3$` as math: the cell's `$` are escaped. A `_` inside a word (`step_0.pt`) opens no
    emphasis, so the raw table reads the path as written: not `step\\_0.pt`. Emphasis at a word's edge is escaped."""
    from fdl_cli.report import markdown_table

    table = markdown_table(["step", "path"], [{"step": 0, "path": "runs/lr$1e-3$/_best_/step_0.pt"}])
    assert table.splitlines()[2] == "| 0 | runs/lr\\$1e-3\\$/\\_best\\_/step_0.pt |", table


# ------------------------------------------------------------------ compare's thresholds line


def test_a_tie_the_user_sets_below_the_default_is_not_called_rounding(tmp_path: Path) -> None:
    """dlr_tie = 0.0001, stricter than the default 0.001: the user's still, not rounding's."""
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    done = fdl_in_process("compare", a, b, "--no-overlap", "--threshold", "dlr_tie=0.0001")
    assert done.returncode == 0, done.stderr
    assert "thresholds: dlr_tie = 0.0001 (a D_LR difference up to it is a tie, as given; the default 0.001 is " \
           "rounding's); cka_static" in done.stderr, done.stderr


# ------------------------------------------------------------------ an option before its command, a missing store


def test_an_option_before_its_command_is_shown_with_its_value_quoted_for_the_shell() -> None:
    """`fdl --model-kwargs '{"hidden": 8}' analyze ckpts`: the example, copied into a shell, gives the value whole."""
    done = fdl_in_process("--model-kwargs", '{"hidden": 8}', "analyze", "ckpts")
    assert done.returncode == 2, done.stderr
    assert "as in 'fdl analyze ... --model-kwargs '{\"hidden\": 8}''" in _said(done.stderr), done.stderr


def test_a_missing_store_named_with_brackets_in_a_missing_folder_is_a_pattern(tmp_path: Path) -> None:
    """`fdl report runs/seed[0-2]/run.h5` where no such folder exists: a pattern the shell matched to nothing."""
    done = fdl_in_process("report", tmp_path / "seed[0-2]" / "run.h5")
    assert done.returncode == 1, done.stderr
    assert "got: no file matches this pattern" in done.stderr, done.stderr


# ------------------------------------------------------------------ a moved run, a copy of its model file


def test_a_copy_of_the_model_file_with_other_layers_is_not_told_to_use_the_recorded_file(tmp_path: Path) -> None:
    """A copy of the recorded model file, and other layers than the store's: --model of the recorded file would not
    make it the same run, so the fix does not say so."""
    old, new = _moved_run(tmp_path)
    other = fdl("analyze", new / "run", "--model", f"{new / 'model.py'}:build", "--probe", new / "probe.npz",
                "--out", new / "run.h5", "--layer", "0", *SMALL)
    assert other.code == 1 and "different run" in other.stderr, other.stderr
    assert "layers" in other.stderr and "a copy of" not in other.stderr, other.stderr


def test_the_recorded_model_file_in_a_folder_with_a_space_is_quoted_in_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "my runs"
    root.mkdir()
    old, new = _moved_run(root)
    other = fdl("analyze", new / "run", "--model", f"{new / 'model.py'}:build", "--probe", new / "probe.npz",
                "--out", new / "run.h5", *SMALL)
    assert other.code == 1, other.stderr
    assert f"give --model '{old / 'model.py'}:build' to go on" in _said(other.stderr), other.stderr


# ------------------------------------------------------------------ fine-tuning's fixes where they do not apply


def _refused_with_wrong_model(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(state, runs / "step_0.pt")
    np.savez(tmp_path / "probe.npz", x=np.zeros((8, 4), np.float32))
    done = fdl_in_process("analyze", runs, "--model", "tests.tiny_models:mlp", "--probe", tmp_path / "probe.npz",
                          "--out", tmp_path / "s.h5")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    return _said(done.stderr)


def test_a_first_layer_of_other_inputs_is_no_replaced_head(tmp_path: Path) -> None:
    """Only Linear 0's weight differs, in its inputs (6 in the file, 4 in the model): not "only the outputs of
    module '0' differ (8 in the file, 8 in the model)", but the wrong model's words."""
    state = mlp().state_dict()
    state["0.weight"] = torch.zeros(8, 6)
    said = _refused_with_wrong_model(tmp_path, state)
    assert "only the outputs of" not in said and "wrong --model or --model-kwargs?" in said, said


def test_a_part_of_other_shapes_saved_alone_is_not_named_as_the_models_part(tmp_path: Path) -> None:
    """A Linear's weight and bias saved alone, 16 outputs wide: named like each of mlp's Linears but fitting neither,
    so no "the file holds the weights of the model's 0 or 2 alone"."""
    said = _refused_with_wrong_model(tmp_path, {"weight": torch.zeros(16, 4), "bias": torch.zeros(16)})
    assert "alone" not in said and "wrong --model or --model-kwargs?" in said, said


# ------------------------------------------------------------------ probes of Python objects


def test_a_pt_probes_regression_targets_kept_as_a_python_list_of_floats_are_read(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(4, 2), "y": [0.5, 1.5, -2.0, 3.25]}, tmp_path / "probe.pt")
    probe = load_probe(tmp_path / "probe.pt")
    assert probe.task == "regression" and probe.y is not None and probe.y.ravel().tolist() == [0.5, 1.5, -2.0, 3.25]


def test_an_npz_of_inputs_and_targets_as_python_objects_names_both_and_asks_for_numeric_targets(
        tmp_path: Path) -> None:
    np.savez(tmp_path / "probe.npz", x=np.array([[1.0], [2.0]], dtype=object), y=np.array(["a", "b"], dtype=object))
    with pytest.raises(FdlError) as caught:
        load_probe(tmp_path / "probe.npz")
    said = _said(f"{caught.value.got} {caught.value.fix}")
    assert "its arrays 'x', 'y' hold pickled Python objects" in said, said
    assert "save the targets as numbers" in said, said


# ------------------------------------------------------------------ buffers a layer's pre-hook reads


#: head's pre-hook scales its input by a buffer of head_scale, a sibling whose name starts with "head"
SIBLING = HOOKED.replace('self.register_buffer("gain", torch.ones(8))',
                         'self.head_scale = nn.Module()\n        self.head_scale.register_buffer("gain", torch.ones(8))'
                         ).replace("args[0] * self.gain", "args[0] * self.head_scale.gain")


def test_a_buffer_of_a_sibling_module_whose_name_extends_the_layers_is_named(tmp_path: Path) -> None:
    """head_scale.gain, read by head's pre-hook for head's input, is not one of head's own buffers ("head." ones)."""
    assert SIBLING != HOOKED and "self.gain" not in SIBLING
    status, err = _small_run(tmp_path, {"head_scale.gain": torch.linspace(0.1, 5.0, 8)}, model=SIBLING)
    assert status == 0, err
    assert "only buffers changed (head_scale.gain)" in err, err


# ------------------------------------------------------------------ a tuple's first element as the outputs


def test_a_tuple_of_more_than_five_elements_says_there_are_more() -> None:
    from fdl_cli.extract import tuple_outputs

    said = tuple_outputs(tuple(torch.zeros(1, size) for size in range(1, 8)))
    assert said.startswith("the first of the 7 elements of the tuple the model returns (element 1: shape (1, 2), ")
    assert said.endswith("element 4: shape (1, 5), ...)"), said


def test_the_note_on_a_tuples_one_output_is_said_once_for_two_probes(tmp_path: Path) -> None:
    model, probe = _heads_run(tmp_path, "three", np.arange(12) % 3)
    x = np.arange(12, dtype=np.float32)[:, None] / 12 + np.zeros((12, 4), np.float32)
    np.savez(probe, x=x)
    np.savez(tmp_path / "other.npz", x=x[::-1].copy())
    done = fdl_in_process("analyze", tmp_path / "runs", "--model", model, "--probe", f"a={probe}",
                          "--probe", f"b={tmp_path / 'other.npz'}", "-o", tmp_path / "s.h5")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("tuple the model returns") == 1, done.stderr


# ------------------------------------------------------------------ LoRA adapters in the file, in the model


def test_lora_adapters_saved_beside_every_base_weight_are_said_to_be_beside_them(tmp_path: Path) -> None:
    """The plain model's every key and two adapters more (nothing missing): "beside the base weights", not
    "without the base weights they adapt ()"."""
    state = {**mlp().state_dict(), "0.lora_A.weight": torch.zeros(2, 4), "0.lora_B.weight": torch.zeros(8, 2)}
    said = _refused_with_wrong_model(tmp_path, state)
    assert "holds LoRA adapters (0.lora_A.weight, 0.lora_B.weight) beside the base weights" in said, said


LORA_MODEL = """
from torch import nn


class Adapted(nn.Module):
    def __init__(self, rank):
        super().__init__()
        self.base = nn.Linear(4, 8)
        self.lora_A = nn.Linear(4, rank, bias=False)
        self.lora_B = nn.Linear(rank, 8, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


def build(rank=4):
    return nn.Sequential(Adapted(rank), nn.ReLU(), nn.Linear(8, 3))
"""


def test_adapters_of_another_rank_than_the_models_are_the_wrong_model_kwargs(tmp_path: Path) -> None:
    """Model and file both hold the adapters, of rank 4 and 2: every key there, only their shapes differ. Not "the
    file holds LoRA adapters beside the base weights, which the model built does not hold": it does."""
    module = model_file(tmp_path, LORA_MODEL)
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(module.build(rank=2).state_dict(), runs / "step_0.pt")
    np.savez(tmp_path / "probe.npz", x=np.zeros((8, 4), np.float32))
    done = fdl_in_process("analyze", runs, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          tmp_path / "probe.npz", "--out", tmp_path / "s.h5")
    said = _said(done.stderr)
    assert done.returncode == 1 and "LoRA" not in said and "wrong --model or --model-kwargs?" in said, said
