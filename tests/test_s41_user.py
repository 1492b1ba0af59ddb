"""A first-time user's runs (a tiny MLP saved as state_dicts, as whole pickled modules, as loose files) and the
messages that misled them, each pinned by what the user sees."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import fdl_in_process
from tests.test_overlap_top_k import C
from tests.test_overlap_top_k import _run as _mlp_run


def _run(tmp_path: Path, *, whole: bool = False, seed: int = 0) -> Path:
    """Three checkpoints of a 6-16-C MLP with model.py and probe.npz beside them (test_overlap_top_k's run: its
    folder `ckpts`, `ckpts1` of seed 1); `whole`: each saved again as the pickled module (`torch.save(model)`)."""
    folder = _mlp_run(tmp_path, seed)[0]
    for path in sorted(folder.glob("*.pt")) if whole else ():
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))
        model.load_state_dict(torch.load(path))
        torch.save(model, path)
    return folder


def _said(text: str) -> str:
    return " ".join(text.split())


def test_overlap_k_refusal_of_a_default_store_does_not_say_top_k_was_below_C(tmp_path: Path) -> None:
    """`--overlap-k 2` on a store analysed with the defaults (top_k 64 >= C = 4, k = C, so no overlap_k recorded):
    the fix explained that the store's overlaps "were taken over --top-k, below the model's outputs", which is false
    of it (its --top-k is 64); they were taken over C, the default."""
    folder = _run(tmp_path)
    out = tmp_path / "run.h5"
    common = ("analyze", folder, "--model", "model.py:build", "--probe", "probe.npz", "--out", out)
    assert fdl_in_process(*common, cwd=tmp_path).returncode == 0
    refused = fdl_in_process(*common, "--overlap-k", "2", cwd=tmp_path)
    said = _said(refused.stderr)
    assert refused.returncode == 1, said
    assert "options.overlap_k: absent (store) vs 2 (this run)" in said
    assert "below the model's outputs" not in said and "taken over --top-k" not in said
    assert ("the store's overlaps compare the top 4 eigenfunctions (the store records no overlap_k: they were taken "
            "over C, the model's outputs, the default): pass --overlap-k 4 to go on as it was analysed") in said, said


def test_a_store_of_whole_pickled_modules_is_said_in_words_not_as_none(tmp_path: Path) -> None:
    """A run saved as `torch.save(model)`, analysed with --trust-pickle (no --model: each file is its own model), then
    resumed with --model: the refusal said `got: model: None (store) vs 'model.py:build' (this run)`, Python's None
    for "no --model", with no word of how to resume; and `fdl report`'s provenance had no model line at all."""
    folder = _run(tmp_path, whole=True)
    out = tmp_path / "run.h5"
    common = ("analyze", folder, "--probe", "probe.npz", "--out", out, "--trust-pickle")
    assert fdl_in_process(*common, cwd=tmp_path).returncode == 0
    refused = fdl_in_process(*common, "--model", "model.py:build", cwd=tmp_path)
    said = _said(refused.stderr)
    assert refused.returncode == 1, said
    assert "None" not in said, said
    assert ("got: model: the modules the checkpoints hold, saved whole (no --model) (store) vs 'model.py:build' "
            "(this run)") in said, said
    assert ("fix: the store was analysed with the modules its checkpoints hold: leave --model out to resume it; else "
            "pass --overwrite to replace it, or another --out to keep both") in said, said
    shown = fdl_in_process("report", out, cwd=tmp_path)
    assert shown.returncode == 0
    assert shown.stderr.splitlines()[0] == "model: the modules the checkpoints hold, saved whole (no --model)", shown.stderr


def test_two_runs_given_as_files_without_out_are_told_the_default_store_they_share(tmp_path: Path) -> None:
    """`fdl analyze runA/*.pt` then `fdl analyze runB/*.pt`, neither with --out: both write ./fdl.h5, and the
    second was refused with `give this run its own --out (the default is ./<folder>.fdl.h5)`, which is the default
    of one folder, not of files: the user's next try, files again, met the same store."""
    first, second = _run(tmp_path), _run(tmp_path, seed=1)
    model = ("--model", "model.py:build", "--probe", "probe.npz")
    assert fdl_in_process("analyze", *sorted(first.glob("*.pt")), *model, cwd=tmp_path).returncode == 0
    assert (tmp_path / "fdl.h5").is_file()
    refused = fdl_in_process("analyze", *sorted(second.glob("*.pt")), *model, cwd=tmp_path)
    said = _said(refused.stderr)
    assert refused.returncode == 1, said
    assert "fdl.h5 holds other files' numbers" in said
    assert "the default is ./<folder>.fdl.h5" not in said
    assert ("fix: give this run its own --out (without one, a run of files (or -, several folders, a pattern) writes "
            "./fdl.h5, a run of one folder ./<folder>.fdl.h5), or --overwrite to replace that store") in said, said


def test_inspect_counts_a_models_parameters_as_it_counts_a_files_values(tmp_path: Path) -> None:
    """`fdl inspect CKPT` without a model wrote its counts `1,200`; with `--model` the parameters column wrote
    `1200`, and a ResNet's `25557032` beside a listing of `2,359,296`: one command, two ways of writing a count."""
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(6, 200), nn.Tanh(), nn.Linear(200, 4))\n"
    )
    model = torch.nn.Sequential(torch.nn.Linear(6, 200), torch.nn.Tanh(), torch.nn.Linear(200, 4))
    torch.save(model.state_dict(), tmp_path / "step_0.pt")
    plain = fdl_in_process("inspect", "step_0.pt", cwd=tmp_path)
    assert plain.returncode == 0 and "total: 2,204 values in 4 tensors" in plain.stderr, plain.stderr
    built = fdl_in_process("inspect", "step_0.pt", "--model", "model.py:build", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[4].strip() for line in built.stderr.splitlines()
            if line.startswith("│")}
    assert rows == {"(model)": "2,204", "0": "1,400", "1": "0", "2": "804 ← default (input)"}, built.stderr
    assert not re.search(r"\b2204\b|\b1400\b", built.stderr), built.stderr


def test_readme_exit_statuses_include_the_closed_pipe() -> None:
    """`fdl export run.h5 --what eigenvalues | head -1` exits 141 (docs/usage.md, "Exit status"), a status the
    README's list, which reads as every status fdl gives, did not hold: a user seeing it in a CI log found no word."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    statuses = _said(readme.split("- **Exit status**:", 1)[1].split("\n\n", 1)[0])
    assert "141 when a reader closes the pipe fdl writes to (`| head -1`)" in statuses, statuses


def test_compare_of_runs_of_other_C_warns_of_no_overlap_k_neither_chose(tmp_path: Path) -> None:
    """Two runs of 4 and 3 outputs, both analysed with the defaults (the overlaps' k is each run's C): compare warned
    `analysed with different options (overlap_k: A 4 vs B 3)`, an option neither run was given, with the fix to
    re-analyse one with the other's; the difference is C's, which its own note says."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(40, 6)).astype(np.float32))
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build(c):\n    return nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, c))\n"
    )
    stores = []
    for outputs in (4, 3):
        folder = tmp_path / f"c{outputs}"
        folder.mkdir()
        torch.manual_seed(outputs)
        model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, outputs))
        for step in (0, 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.4 * step * torch.randn_like(p))
            torch.save(model.state_dict(), folder / f"step_{step}.pt")
        out = tmp_path / f"c{outputs}.h5"
        done = fdl_in_process("analyze", folder, "--model", "model.py:build", "--model-kwargs", f'{{"c": {outputs}}}',
                              "--probe", "probe.npz", "--out", out, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        stores.append(out)
    shown = fdl_in_process("compare", *stores, cwd=tmp_path)
    said = _said(shown.stderr)
    assert shown.returncode == 0, said
    assert "overlap_k" not in said and "different options" not in said, said
    assert "the runs have different numbers of outputs C (A 4, B 3)" in said, said
    machine = fdl_in_process("compare", *stores, "--json", cwd=tmp_path)
    assert machine.returncode == 0 and json.loads(machine.stdout)["option_differences"] == [], machine.stderr


def test_a_store_written_into_the_folder_analysed_is_not_noted_as_skipped_on_the_next_run(tmp_path: Path) -> None:
    """`cd run && fdl analyze .` writes ./run.fdl.h5 into the folder it scans; the same command again (a resume, or
    a later look at a run still training) noted `skipped 1 file without a checkpoint suffix (...): run.fdl.h5`, the
    store it was writing, on every run after the first (as `--watch` never did, docs/usage.md)."""
    folder = _run(tmp_path)
    command = ("analyze", ".", "--model", "../model.py:build", "--probe", "../probe.npz")
    assert fdl_in_process(*command, cwd=folder).returncode == 0
    assert (folder / "ckpts.fdl.h5").is_file()
    again = fdl_in_process(*command, cwd=folder)
    assert again.returncode == 0, again.stderr
    assert "ckpts.fdl.h5" in again.stderr and "skipped" not in again.stderr, again.stderr
    # an --out beside the checkpoints likewise; another file there is still said
    (folder / "notes.txt").write_text("lr 0.1\n")
    out = ("--out", folder / "store.h5")
    assert fdl_in_process("analyze", folder, *command[2:], *out, cwd=folder).returncode == 0
    later = fdl_in_process("analyze", folder, *command[2:], *out, cwd=folder)
    assert later.returncode == 0, later.stderr
    skipped = [line for line in later.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].endswith(": ckpts.fdl.h5, notes.txt"), later.stderr


def test_an_ef_verdict_at_chance_does_not_say_few_eigenfunctions_carry_the_function() -> None:
    """classify's line on a final checkpoint near chance said "so EF says how the features moved and how few
    eigenfunctions carry that function": EF is the verdict of many (k95 of Π̂ above C + mf_extra), so the words
    contradicted the rule line above them; the lines of MF and EF say how many."""
    from fdl_cli import regimes

    base = {"n_outputs": 4, "accuracy": 0.25, "cka_prev": None}
    records = [
        {**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0, "k95_utility": 14},
        {**base, "step": 10, "cka_init": 0.98, "overlap_init": 0.97, "k95_utility": 14},
        {**base, "step": 20, "cka_init": 0.98, "overlap_init": 0.97, "k95_utility": 14},
    ]
    lines = {}
    for regime, k95 in (("EF", 14), ("MF", 3)):
        run = [{**record, "k95_utility": k95} if record["step"] else record for record in records]
        verdict = regimes.classify_run(run)
        assert verdict.regime == regime
        lines[regime] = regimes.final_near_chance_line(verdict, run)
    assert lines["EF"] is not None and "how few eigenfunctions" not in lines["EF"], lines
    assert lines["EF"].endswith("so EF says how the features moved and how many eigenfunctions carry that function, "
                                "not that the task was learned"), lines
    assert lines["MF"] is not None and lines["MF"].endswith("so MF says how the features moved and how many "
                                                            "eigenfunctions carry that function, not that the task "
                                                            "was learned"), lines


def test_a_step_regex_that_matches_no_name_says_so_once_and_how_to_write_one(tmp_path: Path) -> None:
    """`--step-regex 'step(\\d+)'` on step_0.pt ... (the underscore forgotten): "no checkpoints found", got the
    same skip note once per file, and the fix "point at a folder of .pt/.pth/... files (or pass the files)", which
    is where the user had pointed; the regex is what to change."""
    folder = _run(tmp_path)
    done = fdl_in_process("analyze", folder, "--model", "model.py:build", "--probe", "probe.npz",
                          "--step-regex", r"step(\d+)", cwd=tmp_path)
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert f"error: no checkpoints found in {folder}" in said
    assert (r"got: --step-regex 'step(\d+)' matches none of the 3 files' names: step_0.pt, step_1.pt, step_2.pt "
            r"fix: give a --step-regex whose first group is the step in these names (--step-regex 'step_(\d+)\.pt' "
            r"reads step_0.pt), or leave --step-regex out: the step is then read from each file's metadata, else "
            r"the last number of its name") in said, said
    assert said.count("does not match") == 0, said


def test_a_glob_that_matches_no_checkpoint_names_the_ones_it_left_out(tmp_path: Path) -> None:
    """`--glob '*.pth'` over a folder of .pt files: "no checkpoints found", `got: nothing`: nothing said which files
    were there for the glob to match, or what a glob that keeps them looks like."""
    folder = _run(tmp_path)
    done = fdl_in_process("analyze", folder, "--model", "model.py:build", "--probe", "probe.npz",
                          "--glob", "*.pth", cwd=tmp_path)
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "got: nothing" not in said, said
    assert (f"error: no checkpoints found in {folder} got: --glob '*.pth' matches none of the 3 checkpoint files there: "
            "step_0.pt, step_1.pt, step_2.pt fix: loosen --glob to match their names (--glob 'step_*.pt' keeps "
            "step_0.pt), or leave it out") in said, said


def test_a_step_regex_that_misses_a_file_given_suggests_one_that_reads_it(tmp_path: Path) -> None:
    """A file given (not a folder) that --step-regex 'step(\\d+)' does not match: the fix said "e.g. --step-regex
    'step(\\d+)'", the very regex that had just failed; it gives one that reads that file's name."""
    folder = _run(tmp_path)
    done = fdl_in_process("analyze", folder / "step_0.pt", folder / "step_1.pt", "--model", "model.py:build",
                          "--probe", "probe.npz", "--step-regex", r"step(\d+)", cwd=tmp_path)
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert (r"error: --step-regex 'step(\d+)' does not match step_0.pt with a group fix: use one capture group "
            r"around the step, e.g. --step-regex 'step_(\d+)\.pt' (which reads step_0.pt), or --glob") in said, said


def test_report_classify_compare_given_out_say_where_their_output_goes(tmp_path: Path) -> None:
    """`fdl report run.h5 --out report.csv` (as analyze and export take --out): click answered "No such option
    '--out'. (Did you mean one of: '--format', '--plots'?)", and `-o` had no hint at all; these commands write
    their machine output on stdout, to redirect."""
    cases = {
        ("report", "run.h5", "--out", "r.csv"): "fdl report has no --out: its machine output goes to stdout, so "
        "redirect it: fdl report run.h5 --format csv > r.csv (or --format markdown, --json); --html FILE writes a page",
        ("summarize", "run.h5", "-o", "r.md"): "fdl summarize has no -o: its machine output goes to stdout, so "
        "redirect it: fdl summarize run.h5 --format csv > r.md (or --format markdown, --json); --html FILE writes a "
        "page",
        ("classify", "a.h5", "b.h5", "--output=s.csv"): "fdl classify has no --output: its machine output goes to "
        "stdout, so redirect it: fdl classify a.h5 b.h5 --format csv > s.csv (or --format markdown, --json)",
        ("compare", "a.h5", "b.h5", "-o", "c.csv"): "fdl compare has no -o: its machine output goes to stdout, so "
        "redirect it: fdl compare a.h5 b.h5 --format csv > c.csv (or --format markdown, --json)",
    }
    for args, hint in cases.items():
        done = fdl_in_process(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"Error: {hint}" in done.stderr, done.stderr
    # an option of no such kind keeps click's words
    other = fdl_in_process("report", "run.h5", "--jsn", cwd=tmp_path)
    assert other.returncode == 2 and "No such option '--jsn'. Did you mean '--json'?" in other.stderr


def test_a_misspelt_probe_or_layer_of_a_reading_command_gets_the_name_meant(tmp_path: Path) -> None:
    """`fdl report run.h5 --layer Tanh` of a store of layers 1 and 2:input, or `--probe tset` of probes train and test:
    "holds no series for layer=..." listed every series and said "pick one of the series listed above" (a store of
    12 blocks x 3 probes lists 36); analyze's own `--layer` typo gets the closest module names, these none."""
    folder = _run(tmp_path)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", folder, "--model", "model.py:build", "--probe", "train=probe.npz", "--probe",
                          "test=probe.npz", "--layer", "2:input", "--layer", "1", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    wrong_layer = fdl_in_process("report", out, "--layer", "2:Input", cwd=tmp_path)
    said = _said(wrong_layer.stderr)
    assert wrong_layer.returncode == 1, said
    assert ("fix: did you mean --layer 2:input? (the store's name nearest to '2:Input'); else pick one of the series "
            "listed above") in said, said
    wrong_probe = fdl_in_process("classify", out, "--probe", "tset", cwd=tmp_path)
    said = _said(wrong_probe.stderr)
    assert wrong_probe.returncode == 1, said
    assert "fix: did you mean --probe test? (the store's name nearest to 'tset'); else pick one" in said, said
    nothing_near = fdl_in_process("export", out, "--what", "eigenvalues", "--probe", "validation", cwd=tmp_path)
    assert "did you mean" not in nothing_near.stderr and "pick one of the series listed above" in nothing_near.stderr


def test_a_measure_just_below_its_threshold_is_not_shown_equal_to_it() -> None:
    """A run whose final cka_init is 0.98996 (moved: below cka_static 0.99) read "rule: final checkpoint (step 20):
    cka_init = 0.99, overlap_init = 0.99: features moved (below 0.99 or 0.95)": 0.99 is not below 0.99. Such a value
    is shown with the digits that put it below; others keep their 4 significant digits."""
    from fdl_cli import regimes

    base = {"n_outputs": 4, "k95_utility": 3}
    run = [{**base, "step": 0, "cka_init": 1.0, "overlap_init": 1.0},
           {**base, "step": 10, "cka_init": 0.98996, "overlap_init": 0.99},
           {**base, "step": 20, "cka_init": 0.98996, "overlap_init": 0.9912345}]
    rule = regimes.classify_run(run).rule
    assert "cka_init = 0.98996, overlap_init = 0.9912: features moved (below 0.99 or 0.95)" in rule, rule
    conflict = regimes.feature_movement({"cka_init": 0.995, "overlap_init": 0.799996}, regimes.Thresholds())[1]
    assert "(overlap_init = 0.799996 < 0.8)" in conflict, conflict


def test_a_name_error_in_the_models_forward_is_the_codes_fault_not_the_probes(tmp_path: Path) -> None:
    """A typo in forward (`undefined_thing(h)`): analyze said "probe 'probe' (probe.npz) does not fit the model",
    fix "give the probe inputs the shape and dtype the model's forward expects", and inspect without a probe "pass
    --probe FILE": no probe mends a NameError. Said as the model code's error, with the line to fix (as an
    ImportError there already was)."""
    folder = _run(tmp_path)
    (tmp_path / "typo.py").write_text(
        "from torch import nn\n\nclass Net(nn.Sequential):\n    def forward(self, x):\n"
        "        return self[2](undefined_thing(self[0](x)))\n\n"
        f"def build():\n    return Net(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, {C}))\n"
    )
    done = fdl_in_process("analyze", folder, "--model", "typo.py:build", "--probe", "probe.npz", cwd=tmp_path)
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "does not fit the model" not in said and "give the probe inputs" not in said, said
    assert ("error: the model's forward pass failed on the first sample of probe 'probe' got: NameError: name "
            "'undefined_thing' is not defined (raised at") in said, said
    assert f"fix: fix the error in {tmp_path / 'typo.py'}" in said, said
    listed = fdl_in_process("inspect", folder, "--model", "typo.py:build", cwd=tmp_path)
    said = _said(listed.stderr)
    assert listed.returncode == 1, said
    assert "--probe FILE to find" not in said and f"fix: fix the error in {tmp_path / 'typo.py'}" in said, said
    assert "as no forward pass ran; mend the model's code (its error below) to find the one that runs last" in said


def test_the_runs_own_store_among_the_files_given_is_not_noted(tmp_path: Path) -> None:
    """`fdl analyze run/* --out run/run.h5`, run again: the shell's `run/*` now holds the store, which was noted
    "skipped run.h5: an HDF5 file (an fdl store, or an .h5 probe), not a checkpoint" on every run after the first."""
    folder = _run(tmp_path)
    out = folder / "run.h5"
    model = ("--model", "model.py:build", "--probe", "probe.npz", "--out", out)
    assert fdl_in_process("analyze", *sorted(folder.iterdir()), *model, cwd=tmp_path).returncode == 0
    again = fdl_in_process("analyze", *sorted(folder.iterdir()), *model, cwd=tmp_path)
    assert again.returncode == 0 and "skipped" not in again.stderr, again.stderr


def test_a_pickled_class_whose_module_lies_beside_the_run_names_the_pythonpath_that_imports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`torch.save(model)` of a `mynet.Net`, mynet.py beside the run's folder: --trust-pickle said "No module named
    'mynet'", fix "run fdl where the training code imports (PYTHONPATH=FOLDER_OF_THAT_CODE ...)"; fdl imports nothing
    from the folder it runs in or the run's (docs/usage.md, Safety), so "where" was no fix. It names the file found and
    the PYTHONPATH that imports it."""
    (tmp_path / "mynet.py").write_text("from torch import nn\n\nclass Net(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynet  # type: ignore[import-not-found]

    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(mynet.Net(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, C)), folder / "step_0.pt")
    monkeypatch.delitem(sys.modules, "mynet")
    sys.path.remove(str(tmp_path))  # as in a fresh `fdl` (syspath_prepend restores sys.path whole at the end)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.savez(elsewhere / "probe.npz", x=np.zeros((8, 6), np.float32))
    done = fdl_in_process("analyze", folder, "--probe", "probe.npz", "--trust-pickle", cwd=elsewhere)
    said = _said(done.stderr)
    assert done.returncode == 1, said
    assert "got: ModuleNotFoundError: No module named 'mynet'" in said, said
    assert (f"fix: {tmp_path / 'mynet.py'} is that module, which fdl does not import on its own (no folder of a run "
            f"or the current one is on the path): if you trust it, PYTHONPATH={tmp_path} fdl ...; else ") in said, said
