"""Small defects of the eighteenth session's usability pass: `fdl inspect FOLDER` took a probe file for its
checkpoint, the renamed-probe hint of a resume contradicted itself for two probes, the memory estimate
left out the anchors' row padding, a store written before `prev_step` warned once a series as if damaged,
and checkpoints before a mid-run --reference were labelled MF / EF without a word."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from fdl_cli import regimes, report, resources
from fdl_cli.store import ProbeInfo, StoreReader, _rename_fix, _renamed_probes
from tests.cli_run import REPO, fdl_in_process, tiny_model_beside
from tests.tiny_models import mlp

SAMPLE = REPO / "sample_checkpoints"
SAMPLE_PROBE = SAMPLE / "probe.npz"


def _probe_dict(n: int = 20) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"x": torch.randn(n, 4, generator=generator), "y": torch.randint(0, 3, (n,), generator=generator)}


# -- 1. a probe file beside the checkpoints is no checkpoint -----------------------------------------------------


def test_inspect_of_a_folder_lists_its_checkpoint_not_the_probe_beside_it(tmp_path: Path) -> None:
    """A folder of `final.pt`-like weights without a step and the probe its fdl.toml names: the probe,
    first by name, was listed as the checkpoint and failed with "unexpected key(s): x, y"."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(mlp(seed=1).state_dict(), folder / "weights.pt")
    torch.save(_probe_dict(), folder / "a_probe.pt")
    (folder / "fdl.toml").write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = "a_probe.pt"\n', encoding="utf-8")
    done = fdl_in_process("inspect", folder, "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert Path(listed["checkpoint"]).name == "weights.pt"
    assert listed["default_layer"] == "2:input" and listed["default_features"] == 8
    # the probe named alone is not a checkpoint, and the message says what it is
    alone = fdl_in_process("inspect", folder / "a_probe.pt", "--model", "tests.tiny_models:mlp")
    assert alone.returncode == 1 and "Traceback" not in alone.stderr
    assert f"error: {folder / 'a_probe.pt'} is a probe (tensors named only as a probe's x and y)" in alone.stderr
    assert "got: a_probe.pt: a probe set (x, y), not model weights" in alone.stderr
    assert "fix: give it as --probe" in alone.stderr


def test_a_probe_named_like_a_step_is_left_out_of_analyze_and_inspect(tmp_path: Path) -> None:
    """probe_0.pt beside step_0.pt: `analyze` refused "two checkpoints have the same step 0", and
    `inspect` listed the probe, first by path among the step-0 files."""
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 10):
        torch.save(mlp(seed=step).state_dict(), folder / f"step_{step}.pt")
    torch.save(_probe_dict(), folder / "probe_0.pt")
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--probe", folder / "probe_0.pt", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "probe_0.pt" not in done.stderr  # the file given as --probe: skipped without a note (session 19)
    from fdl_cli.checkpoints import discover_checkpoints

    assert "skipped probe_0.pt: a probe set (x, y), not model weights" in discover_checkpoints([folder]).notes
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 10]
    listed = fdl_in_process("inspect", folder, "--model", "tests.tiny_models:mlp", "--json")
    assert listed.returncode == 0, listed.stderr
    assert Path(json.loads(listed.stdout)["checkpoint"]).name == "step_0.pt"
    # named by the folder's fdl.toml, the probe is not noted at all (as its probe.npz is not)
    (folder / "fdl.toml").write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = "probe_0.pt"\n', encoding="utf-8")
    again = fdl_in_process("analyze", folder, "-o", tmp_path / "manifest.h5")
    assert again.returncode == 0, again.stderr
    assert "probe_0.pt" not in again.stderr


def test_a_safetensors_probe_is_no_checkpoint_and_weights_still_are(tmp_path: Path) -> None:
    from fdl_cli.checkpoints import discover_checkpoints

    save_file(_probe_dict(), str(tmp_path / "probe.safetensors"))
    save_file({"inputs": torch.zeros(3, 4)}, str(tmp_path / "inputs_only.safetensors"))
    save_file(dict(mlp().state_dict()), str(tmp_path / "step_5.safetensors"))
    torch.save({"x": torch.zeros(2, 2), "weight": torch.zeros(2, 2)}, tmp_path / "step_7.pt")  # x beside weights
    found = discover_checkpoints([tmp_path])
    assert [ref.path.name for ref in found.checkpoints] == ["step_5.safetensors", "step_7.pt"]
    assert "skipped probe.safetensors: a probe set (x, y), not model weights" in found.notes
    assert "skipped inputs_only.safetensors: a probe set (inputs), not model weights" in found.notes


# -- 2. the renamed-probe hint for several probes ----------------------------------------------------------------


def _info(name: str, sha: str) -> ProbeInfo:
    return ProbeInfo(name=name, sha256=sha * 64, n=10, task="classes", n_outputs=3)


def test_two_probes_of_one_file_are_not_both_told_to_take_the_same_name() -> None:
    stored = {"probe": _info("probe", "a")}
    run = {"x": _info("x", "a"), "z": _info("z", "a")}
    assert _renamed_probes(stored, run) == [("x", "probe", "a" * 64)]  # one name for one probe
    stored = {"test": _info("test", "a"), "train": _info("train", "a")}
    pairs = _renamed_probes(stored, run)
    assert pairs == [("x", "test", "a" * 64), ("z", "train", "a" * 64)]
    assert _rename_fix(pairs) == ("this run's probes 'x' and 'z' are the store's probes 'test' and 'train', in that "
                                  "order (the same file, sha256 aaaaaaaaaaaa): name them so, --probe test=PATH "
                                  "--probe train=PATH")
    # of two files: each run probe goes with the store's probe of its own file
    stored = {"test": _info("test", "b"), "train": _info("train", "a")}
    assert _renamed_probes(stored, {"p": _info("p", "a"), "q": _info("q", "b")}) == [
        ("p", "train", "a" * 64), ("q", "test", "b" * 64)]
    assert "(the same files, sha256 aaaaaaaaaaaa, bbbbbbbbbbbb)" in _rename_fix(
        _renamed_probes(stored, {"p": _info("p", "a"), "q": _info("q", "b")}))


def test_a_resume_with_two_renamed_probes_gets_one_fix_that_resumes(tmp_path: Path) -> None:
    """A store of `train` and `test` (one file) resumed as `a` and `b`: both hints said "name it so,
    --probe train=PATH", and claimed `test` still differed."""
    out = tmp_path / "run.h5"
    first = fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "--probe", f"train={SAMPLE_PROBE}", "--probe",
                           f"test={SAMPLE_PROBE}", "-o", out)
    assert first.returncode == 0, first.stderr
    renamed = fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "--probe", f"a={SAMPLE_PROBE}", "--probe",
                             f"b={SAMPLE_PROBE}", "-o", out)
    assert renamed.returncode == 1
    fix = next(line for line in renamed.stderr.splitlines() if line.startswith("  fix: "))
    assert fix.startswith("  fix: this run's probes 'a' and 'b' are the store's probes 'test' and 'train', in that order")
    assert ": name them so, --probe test=PATH --probe train=PATH, to resume; else pass --overwrite" in fix
    assert fix.count("this run's probe") == 1 and "remain" not in fix
    resumed = fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "--probe", f"test={SAMPLE_PROBE}", "--probe",
                             f"train={SAMPLE_PROBE}", "-o", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 checkpoints analysed, 2 already in the store" in resumed.stderr
    # a store of one probe resumed with two of its file: one of them is named, the other then added
    one = tmp_path / "one.h5"
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "-o", one).returncode == 0
    both = fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "--probe", f"a={SAMPLE_PROBE}", "--probe",
                          f"b={SAMPLE_PROBE}", "-o", one)
    fix = next(line for line in both.stderr.splitlines() if line.startswith("  fix: "))
    assert fix.count("is the store's probe 'probe'") == 1 and "to resume" not in fix
    assert ": name it so, --probe probe=PATH, which resumes and adds the probe 'b' to the store; else " in fix


# -- 3. the memory estimate counts the anchors as they are allocated ----------------------------------------------


def test_the_anchor_estimate_is_the_padded_allocation() -> None:
    from fdl_cli.pipeline import ANCHOR_ROW_PAD, _float64_copy, _padded_float64

    m = 50
    for p in (8, 50):  # p ≤ m: float64 rows padded by ANCHOR_ROW_PAD values
        needs = resources.layer_needs("head", p, 200, m, probe="probe")
        [kept] = [need for need in needs if not need.statistics]  # the reference's
        [mine] = [need for need in needs if need.transient == "copy"]  # this checkpoint's
        allocated = _padded_float64((m, p)).untyped_storage().nbytes()
        assert allocated == 8 * m * (p + ANCHOR_ROW_PAD)
        assert kept.bytes == mine.bytes == allocated
        copy = _float64_copy(np.ones((m, p), dtype=np.float32))
        assert copy.strides == ((p + ANCHOR_ROW_PAD) * 8, 8)  # what the pipeline allocates
    p = 60  # p > m: multiplied through the m×m Gram (kept with them), not padded
    [need] = [need for need in resources.layer_needs("head", p, 200, m, probe="probe", anchor_copies=1)
              if need.transient == "copy"]
    assert need.bytes == _float64_copy(np.ones((m, p), dtype=np.float32)).nbytes + 8 * m * m == 8 * m * (p + m)


# -- 4. a store written before prev_step ---------------------------------------------------------------------------


def _as_written_before_prev_step(store: Path) -> None:
    """What an fdl before prev_step wrote (it came before cross_entropy too, whose own test covers that):
    no attribute in the checkpoint groups, no trajectory dataset."""
    with h5py.File(store, "r+") as handle:
        for group in handle["checkpoints"].values():
            for probe in group.values():
                for leaf in probe.values():
                    if "prev_step" in leaf.attrs:  # null (the first step): not written
                        del leaf.attrs["prev_step"]
        for probe in handle["trajectories"].values():
            for layer in probe.values():
                del layer["prev_step"]


def test_a_store_before_prev_step_warns_once_a_command_and_says_what_to_do(tmp_path: Path) -> None:
    """Two series: "trajectories of test/4:input are unreadable (KeyError: ... 'prev_step' doesn't exist)"
    and the same for train, at every report, classify and compare, as if the store were damaged."""
    store = tmp_path / "old.h5"
    probes = ("--probe", f"train={SAMPLE_PROBE}", "--probe", f"test={SAMPLE_PROBE}")
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", *probes, "-o", store).returncode == 0
    with StoreReader(store) as reader:
        cka_prev = {(r["probe"], r["step"]): r["cka_prev"] for r in reader.records(all_series=True)}
    _as_written_before_prev_step(store)

    with StoreReader(store) as reader:
        [warning] = reader.warnings
        records = reader.records(all_series=True)
    assert [r["prev_step"] for r in records] == [None] * 6
    assert {(r["probe"], r["step"]): r["cka_prev"] for r in records} == cka_prev  # nothing else lost
    assert warning.startswith("cka_prev and overlap_prev of steps 5, 10 were stored without the field "
                              "prev_step")
    assert f"run `fdl analyze` on the same checkpoints with --out {store}" in warning
    for command in (("report", store), ("report", store, "--json"), ("classify", store), ("compare", store, store,
                                                                                        "--probe", "train")):
        done = fdl_in_process(*command)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
        assert len(said) == 1, (command, said)
        assert "without the field prev_step" in said[0] and "unreadable" not in said[0]

    resumed = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", *probes, "-o", store)  # as the warning says
    assert resumed.returncode == 0, resumed.stderr
    assert "0 checkpoints analysed" in resumed.stderr
    with StoreReader(store) as reader:
        assert reader.warnings == []
        assert {(r["probe"], r["step"]): r["prev_step"] for r in reader.records(all_series=True)} == {
            (probe, step): previous for probe in ("train", "test") for step, previous in ((0, None), (5, 0), (10, 5))}
    assert "warning" not in fdl_in_process("report", store).stderr


# -- 5. checkpoints before a mid-run --reference -------------------------------------------------------------------


def _record(step: int, cka: float, overlap: float, k95: int, regime: str) -> dict[str, object]:
    return {"step": step, "cka_init": cka, "overlap_init": overlap, "k95_utility": k95, "n_outputs": 10,
            "regime": regime, "accuracy": 0.9}


RECORDS = [_record(0, 0.6, 0.5, 1, "MF"), _record(5, 0.62, 0.5, 1, "MF"), _record(100, 1.0, 1.0, 5, "coefficient"),
           _record(500, 0.95, 0.88, 6, "MF"), _record(1000, 0.95, 0.87, 6, "MF")]


def test_classify_text_marks_the_checkpoints_before_the_reference() -> None:
    verdict = regimes.classify_run(RECORDS, reference_step=100)
    assert verdict.regime == "MF"  # the rules are unchanged
    assert [(step, v.regime) for step, v in verdict.trajectory] == [
        (0, "MF"), (5, "MF"), (100, "coefficient"), (500, "MF"), (1000, "MF")]
    lines = regimes.describe(verdict, RECORDS)
    assert lines[2] == "trajectory (step: regime): 0–5: MF* | 100: coefficient | 500–1000: MF"
    assert lines[3].startswith("* before the reference (step 100): their movement (cka_init, overlap_init) is "
                               "measured against a later checkpoint")
    # first_mf_step counts the checkpoints after the reference only (session 19: it named step 0 here)
    assert "MF from step 500 to the end (first MF checkpoint after the reference: step 500)" in lines
    assert (verdict.evidence["first_mf_step"], verdict.evidence["mf_since_step"]) == (500, 500)
    # coefficient before and after the reference: two spans, not one
    flat = [{**record, "cka_init": 1.0, "overlap_init": 1.0, "regime": "coefficient"} for record in RECORDS]
    flat_lines = regimes.describe(regimes.classify_run(flat, reference_step=100), flat)
    assert flat_lines[2] == "trajectory (step: regime): 0–5: coefficient* | 100–1000: coefficient"
    # the first checkpoint as the reference (the default): no mark, no line
    plain = regimes.describe(regimes.classify_run(RECORDS[2:], reference_step=100), RECORDS[2:])
    assert plain[2] == "trajectory (step: regime): 100: coefficient | 500–1000: MF"
    assert not any(line.startswith("* before") for line in plain)


def test_report_marks_the_checkpoints_before_the_reference() -> None:
    lines = report.summary_lines(report.summarize(RECORDS, reference_step=100))
    assert lines[1] == "regime: MF* (0–5) → coefficient (100) → MF (500–1000)"
    assert lines[2].startswith("* before the reference (step 100)")
    assert report.summary_lines(report.summarize(RECORDS))[1] == "regime: MF (0–5) → coefficient (100) → MF (500–1000)"
    table = report.render_table(RECORDS, reference_step=100)
    assert table.lines[0].split()[-1] == "regime"
    assert [line.split()[-1] for line in table.lines[1:]] == ["MF*", "MF*", "coefficient", "MF", "MF"]


def test_report_and_classify_of_a_store_analysed_with_a_mid_run_reference(tmp_path: Path) -> None:
    store = tmp_path / "run.h5"
    done = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,100,500", "--reference", "100", "-o", store)
    assert done.returncode == 0, done.stderr
    shown = fdl_in_process("report", store)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[-1] for line in shown.stderr.splitlines() if line.split()[:1] in
            (["0"], ["5"], ["100"], ["500"])}
    assert rows == {"0": "MF*", "5": "MF*", "100": "coefficient", "500": "MF"}
    assert "* before the reference (step 100)" in shown.stderr
    as_json = json.loads(fdl_in_process("report", store, "--json").stdout)  # the data are unchanged
    assert [r["regime"] for r in as_json] == ["MF", "MF", "coefficient", "MF"]
    text = fdl_in_process("classify", store)
    assert "trajectory (step: regime): 0–5: MF* | 100: coefficient | 500: MF" in text.stderr
    verdict = json.loads(fdl_in_process("classify", store, "--json").stdout)
    assert [entry["regime"] for entry in verdict["trajectory"]] == ["MF", "MF", "coefficient", "MF"]
