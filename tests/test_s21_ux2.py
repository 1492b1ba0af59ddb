"""Session 21, a user's papercuts: `fdl inspect` of weights without a model lists the file's tensors (it only
refused, "holds weights only"); `fdl report`'s provenance header in words (it was JSON: `layers: ["4:input"]`,
`options: {"center": false, ...}`); `fdl classify --threshold` suggests the name meant, and `--expect` shows
the regimes as the verdict prints them (`[coefficient|mf|ef]` before)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.shell_completion import ShellComplete
from safetensors.torch import save_file

from fdl_cli import cli, report
from tests.test_analyze import fdl
from tests.test_classify_cli import store  # noqa: F401 - the module's fixture: the sample run's six checkpoints, MF
from tests.test_s16_tty import left_out, on_terminal
from tests.test_s20_toml import MODEL, _run, _said
from tests.tiny_models import mlp

# ------------------------------------------------------------------ 1. inspect of weights without a model


def test_inspect_without_a_model_lists_the_tensors_then_says_the_model_is_needed(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    state = mlp(seed=10).state_dict()
    done = fdl("inspect", run / "step_10.pt")
    # the listing is the answer: exit 0 (session 24; it was exit 1, an error below the listing)
    assert done.code == 0 and done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert f"tensors of {run / 'step_10.pt'}" in lines[0]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    # by module: its name on its first tensor's row, each tensor's own name, shape, dtype and values
    assert rows == [["0", "weight", "[8, 4]", "float32", "32"], ["", "bias", "[8]", "float32", "8"],
                    ["2", "weight", "[3, 8]", "float32", "24"], ["", "bias", "[3]", "float32", "3"]]
    assert sum(tensor.numel() for tensor in state.values()) == 67
    assert "total: 67 values in 4 tensors" in done.stderr
    assert "step: 10 (from its name)" in done.stderr
    said = _said(done)
    assert ("note: no model was given, so only the file's tensors are listed: the modules, their output shapes and "
            "the default feature layer (and its number of features) need the model; pass --model path/model.py:factory "
            f"(or pkg.module:factory), or add model = \"path/model.py:factory\" to {run / 'fdl.toml'}") in said
    assert "error" not in said
    # with the model, the modules as before
    modelled = fdl("inspect", run / "step_10.pt", "--model", MODEL)
    assert modelled.code == 0 and "tensors of" not in modelled.stderr and "default feature layer: 2:input" in modelled.stderr


def test_inspect_json_of_weights_without_a_model_is_one_clean_document(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    state = {"encoder.norm.weight": torch.ones(4), "encoder.norm.running_mean": torch.zeros(4),
             "head.weight": torch.zeros(3, 4, dtype=torch.float16)}
    save_file(state, str(run / "step_20.safetensors"), metadata={"step": "25"})
    done = fdl("inspect", run / "step_20.safetensors", "--json")
    assert done.code == 0 and "note: no model was given" in done.stderr
    listed = json.loads(done.stdout)  # stdout holds the listing alone
    assert sorted(listed["tensors"], key=lambda row: row["name"]) == [
        {"name": "encoder.norm.running_mean", "shape": [4], "dtype": "float32", "values": 4},
        {"name": "encoder.norm.weight", "shape": [4], "dtype": "float32", "values": 4},
        {"name": "head.weight", "shape": [3, 4], "dtype": "float16", "values": 12},
    ]
    assert listed["values"] == 20 and listed["step"] == 25 and listed["step_source"] == "metadata:step"
    assert listed["modules"] is None and listed["default_layer"] is None and listed["other_weights"] == []
    shown = fdl("inspect", run / "step_20.safetensors")
    assert "step: 25 (from its metadata's step)" in shown.stderr


def test_inspect_of_weights_says_a_step_missing_and_the_other_copies_of_the_weights(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(mlp().state_dict(), folder / "final.pt")
    final = fdl("inspect", folder / "final.pt")
    assert final.code == 0 and "step: none (no step in its metadata or name" in final.stderr
    assert json.loads(fdl("inspect", folder / "final.pt", "--json").stdout)["step"] is None
    torch.save({"state_dict": mlp().state_dict(), "state_dict_ema": mlp(seed=1).state_dict()}, folder / "ema_7.pt")
    ema = fdl("inspect", folder / "ema_7.pt")
    assert "other weights in the file: state_dict_ema (--weights NAME" in ema.stderr
    picked = fdl("inspect", folder / "ema_7.pt", "--weights", "state_dict_ema", "--json")
    assert json.loads(picked.stdout)["other_weights"] == []


def test_inspect_without_a_model_never_unpickles_a_whole_module(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(mlp(), folder / "step_3.pt")  # a pickled nn.Module: code runs when loaded
    refused = fdl("inspect", folder / "step_3.pt")
    assert refused.code == 1 and "--trust-pickle" in refused.stderr
    assert "tensors of" not in refused.stderr and "Traceback" not in refused.stderr


def test_inspect_of_weights_on_a_narrow_terminal_folds_names_and_leaves_out_columns(tmp_path: Path) -> None:
    path = tmp_path / "step_5.safetensors"
    save_file({"encoder.layer.0.attention.output.dense.weight": torch.zeros(16, 16)}, str(path))
    status, text = on_terminal(40, "inspect", str(path))
    assert status == 0, text
    assert left_out(text) == ["dtype", "values"]
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert all(len(line) <= 40 for line in rows), text
    assert "".join(line.split("│")[1].strip() for line in rows) == "encoder.layer.0.attention.output.dense"
    assert "…" not in text and "[16, 16]" in "".join(line.split("│")[3].strip() for line in rows)


# ------------------------------------------------------------------------------------ 2. report's header


PROVENANCE = {
    "model": "model.py:build", "model_kwargs": {}, "layers": ["4:input", "fc"],
    "probes": {"test": "b" * 64, "train": "a" * 64}, "probe_order": ["train", "test"],
    "options": {"top_k": 64, "center": False, "anchor_size": 4096, "dlr_energy": 0.99, "binary_logit": True},
}


def test_report_header_says_provenance_in_words_keeping_every_value() -> None:
    assert report.provenance_lines(PROVENANCE) == [
        "model: model.py:build",
        "layers: 4:input, fc",
        f"probes: train (sha256 {'a' * 64}), test (sha256 {'b' * 64})",  # in the order given to analyze
        "options: anchor_size 4096, binary_logit yes, center no, dlr_energy 0.99, top_k 64",
    ]
    one = {**PROVENANCE, "layers": ["4:input"], "probes": {"probe": "c" * 64}, "probe_order": ["probe"]}
    assert report.provenance_lines(one)[1:3] == ["layer: 4:input", f"probe: probe (sha256 {'c' * 64})"]
    # a hand-edited value of another type is still said, as JSON; a probe missing from probe_order by name
    odd = {"layers": 5, "probes": {"b": "1", "a": "2"}, "probe_order": ["b", "gone"], "options": {"x": [1, 2]}}
    assert report.provenance_lines(odd) == ["layers: 5", "probes: b (sha256 1), a (sha256 2)", "options: x [1, 2]"]


def test_report_of_an_analysed_run_opens_with_the_readable_header(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    out = tmp_path / "s.h5"
    assert fdl("analyze", run, "--model", MODEL, "--probe", run / "probe.npz", "-o", out).code == 0
    done = fdl("report", out)
    assert done.code == 0
    sha = hashlib.sha256((run / "probe.npz").read_bytes()).hexdigest()
    lines = done.stderr.splitlines()
    assert lines[:3] == [f"model: {MODEL}", "layer: 2:input", f"probe: probe (sha256 {sha})"]
    assert lines[3].startswith("options: anchor_size 4096, center no, dlr_energy 0.99, dtype float32")
    assert not any(line.startswith(("layers: [", "probes: {", "options: {")) for line in lines)
    records = json.loads(fdl("report", out, "--format", "json").stdout)  # machine output: records alone
    assert [record["step"] for record in records] == [0, 10]


# ------------------------------------------------------------------------------------------- 3. classify


@pytest.mark.parametrize(("given", "meant"), [("cka_statc", "cka_static"), ("CKA_STATIC", "cka_static"),
                                              ("final_windows", "final_window")])
def test_a_misspelt_threshold_name_is_met_with_the_name_meant(store: Path, given: str, meant: str) -> None:  # noqa: F811
    done = fdl("classify", store, "--threshold", f"{given}=0.98")
    assert done.code == 1 and done.stdout == "" and "Traceback" not in done.stderr
    said = _said(done)
    assert f"error: unknown threshold {given!r} (did you mean {meant}?)" in said
    assert "got: known thresholds: cka_static, final_window, mf_extra, overlap_moved, overlap_static" in said
    assert f"fix: pass --threshold {meant}=0.98" in said


def test_a_threshold_name_like_none_gets_no_suggestion(store: Path) -> None:  # noqa: F811
    said = _said(fdl("classify", store, "--threshold", "zzz=1"))
    assert "error: unknown threshold 'zzz' got:" in said and "did you mean" not in said
    assert "fix: pass --threshold NAME=VALUE with one of those names" in said


def test_expect_shows_the_regimes_as_printed_and_takes_any_case(store: Path) -> None:  # noqa: F811
    helped = " ".join(fdl("classify", "--help").stdout.split())
    assert "--expect [coefficient|MF|EF]" in helped
    bad = fdl("classify", store, "--expect", "good")
    assert bad.code == 2 and "'good' is not one of 'coefficient', 'MF', 'EF' (any case)" in bad.stderr
    verdict = json.loads(fdl("classify", store, "--json").stdout)["regime"]
    assert verdict == "MF"
    for spelt in (verdict, verdict.lower(), verdict.upper()):
        assert fdl("classify", store, "--expect", spelt).code == 0, spelt
    other = next(regime for regime in ("coefficient", "MF", "EF") if regime != verdict)
    missed = fdl("classify", store, "--expect", other.lower())
    assert missed.code == 3 and f"expected {other}, got {verdict}" in missed.stderr  # as the report spells it
    completion = ShellComplete(cli.cli, {}, "fdl", "_FDL_COMPLETE")
    assert [item.value for item in completion.get_completions(["classify", str(store), "--expect"], "m")] == ["MF"]
    assert [item.value for item in completion.get_completions(["classify", str(store), "--expect"], "")] == [
        "coefficient", "MF", "EF"]
