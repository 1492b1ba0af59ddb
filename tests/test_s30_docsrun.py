"""The docs followed as a new user copies them: the columns `fdl classify STORE...` prints are the ones
docs/usage.md's "Several runs" names, in their order (a script reads a CSV by its header)."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

from tests import test_s16_docs
from tests.test_analyze import fdl
from tests.test_s16_docs import SAMPLES, USAGE

#: the sample run's first and last checkpoints, analysed as README's first command does: test_s16_docs' module-scoped
#: fixture, which pytest collects here too (one analysis for this module)
sample_store = test_s16_docs.sample_store


def _sweep_csv_columns_named() -> list[str]:
    """The columns usage.md gives for `fdl classify STORE... --format csv`, in the order it gives them."""
    section = USAGE.split("## Several runs: `fdl classify STORE...`", 1)[1].split("\n## ", 1)[0]
    sentence = section.split("`--format csv` (or `markdown`) a row per store on stdout:", 1)[1]
    sentence = sentence.split(", always all of them", 1)[0]
    return re.findall(r"`([a-z_0-9A-Z]+)`", sentence)


def test_the_sweep_csv_columns_are_those_usage_md_lists(sample_store: Path) -> None:
    """usage.md said the CSV holds "the evidence's `final_*` fields, `mf_since_step`, `min_cka_init`, ...":
    `final_step` came after `mf_since_step`. Every column is printed, filled or not (a classification probe's
    `final_r2` empty)."""
    done = fdl("classify", sample_store, sample_store, "--format", "csv")
    assert done.code == 0, done.stderr
    header = next(csv.reader(io.StringIO(done.stdout)))
    named = _sweep_csv_columns_named()
    assert "final_r2" in named and "probe_sha256" in named
    assert header == named  # every column, a class-label probe's empty final_r2 too


def test_the_model_file_fdl_toml_names_is_skipped_without_a_note_among_files_given(tmp_path: Path) -> None:
    """usage.md: "The probe and model files the run names (`--probe`, `--model run/model.py:build` or fdl.toml's)
    are skipped without a note". Given as files, `fdl analyze run/*`, the fdl.toml's model.py was noted
    "skipped model.py: text file, not a checkpoint" (its probe.npz and the fdl.toml itself were not)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("fdl.toml", "model.py", "probe.npz", "step_0.safetensors", "step_5.safetensors"):
        shutil.copy(SAMPLES / name, run)
    given = sorted(run.iterdir())  # as the shell expands run/*
    done = fdl("analyze", *given, "--out", tmp_path / "run.h5")
    assert done.code == 0, done.stderr
    assert "2 checkpoints analysed" in done.stderr
    assert [line for line in done.stderr.splitlines() if "model.py" in line and "skipped" in line] == []
    # the rule is the fdl.toml's model, not any .py: another script among the files is still named
    shutil.copy(SAMPLES / "make_samples.py", run)
    again = fdl("analyze", *sorted(run.iterdir()), "--out", tmp_path / "again.h5")
    assert again.code == 0, again.stderr
    assert "note: skipped make_samples.py: text file, not a checkpoint" in again.stderr.splitlines()
