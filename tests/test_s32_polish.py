"""Small follow-ups of classify, compare and the commands' usage errors.

- A binary classifier of one logit z is analysed as the two-class logits (0, z), so its C is 2: classify's
  rule ("k95_utility ≤ C + mf_extra = 3") and compare's "top C" / Π̂(C) never said why, to a user whose
  model has one output.
- `fdl export run.h5 trajectories` (the kind given as a word, not as --what) was told "Missing option
  '--what'", and `fdl report run.h5 json` that report "reads one store" (a glob's hint): the word is one of an
  option's choices.
- A sweep whose row has no checkpoint after the reference (no final step) said "None in run.h5".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter
from tests.cli_run import fdl_in_process
from tests.test_report import N_OUTPUTS, N_PROBE, SCALARS, STEPS, _entry, make_store


def _binary_store(path: Path, *, binary: bool = True) -> Path:
    """tests/test_report.py's run (C = 2) as a store of a one-logit model whose options record binary_logit (or,
    not `binary`, the same records of a model of two outputs)."""
    probe = ProbeInfo(name="train", sha256="a" * 64, n=N_PROBE, task="classes", n_outputs=N_OUTPUTS)
    provenance = {"model": "model.py:build", "layers": ["fc1"], "host": "testhost", "fdl_version": "0.1.0",
                  "options": {"top_k": 4, **({"binary_logit": True} if binary else {})}}
    scalars = {**SCALARS, 100: {**SCALARS[100], "k95_utility": 3}}  # MF from step 100: the rule names C
    with StoreWriter(path, provenance=provenance, probes=[probe]) as writer:
        for step in STEPS:
            entry = _entry(step, probe="train", layer="fc1", seed=0, scalars=scalars[step])
            writer.add(CheckpointEntry(step=step, path=f"ckpt/step_{step}.pt", sha256=f"{step:064x}", series=(entry,)))
    return path


BINARY_LINE = ("C = 2 for a model of one output: its output z is a binary classifier's logit, analysed as the "
               "two classes' logits (0, z) (the store's options: binary_logit)")


def test_classify_says_why_a_one_logit_model_has_c_2(tmp_path: Path) -> None:
    binary = _binary_store(tmp_path / "binary.h5")
    done = fdl_in_process("classify", binary)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("rule: "))
    assert "C + mf_extra = 3" in lines[rule]
    assert lines[rule + 1] == BINARY_LINE
    # a store of a model of two outputs has no such line
    plain = make_store(tmp_path / "plain.h5")
    said = fdl_in_process("classify", plain)
    assert said.returncode == 0 and "binary" not in said.stderr
    # a row per store: the line names the store it is of
    sweep = fdl_in_process("classify", binary, plain)
    assert sweep.returncode == 0, sweep.stderr
    assert f"{binary}: {BINARY_LINE}\n" in sweep.stderr
    # the JSON is the verdict's, as before: the store's options carry binary_logit
    two = _binary_store(tmp_path / "two.h5", binary=False)
    assert "binary" not in fdl_in_process("classify", two).stderr
    verdicts = [json.loads(fdl_in_process("classify", store, "--json").stdout) for store in (binary, two)]
    assert verdicts[0] == verdicts[1] and verdicts[0]["regime"] == "MF"


def test_compare_says_why_a_one_logit_model_has_c_2(tmp_path: Path) -> None:
    binary, plain = _binary_store(tmp_path / "binary.h5"), make_store(tmp_path / "plain.h5")
    done = fdl_in_process("compare", binary, plain, "--no-overlap")
    assert done.returncode == 0, done.stderr
    assert f"note: run A's {BINARY_LINE}\n" in done.stderr
    assert "run B's" not in done.stderr
    both = fdl_in_process("compare", binary, binary, "--no-overlap", "--format", "csv")
    assert both.returncode == 0, both.stderr
    assert f"note: runs A and B: {BINARY_LINE}\n" in both.stderr
    assert "binary" not in fdl_in_process("compare", plain, plain, "--no-overlap").stderr


@pytest.mark.parametrize(("args", "hint"), [
    (("export", "{a}", "trajectories"), "'trajectories' is one of --what's choices: give it as --what trajectories"),
    (("export", "{a}", "--what", "trajectories", "json"), "'json' is one of --format's choices: give it as --format json"),
    (("report", "{a}", "json"), "'json' is one of --format's choices: give it as --format json"),
    (("report", "markdown", "{a}"), "'markdown' is one of --format's choices: give it as --format markdown"),
    (("compare", "{a}", "{a}", "csv"), "'csv' is one of --format's choices: give it as --format csv"),
])
def test_an_option_s_choice_given_as_a_word_names_the_option(tmp_path: Path, args: tuple[str, ...], hint: str) -> None:
    a = make_store(tmp_path / "a.h5")
    done = fdl_in_process(*(arg.format(a=a) for arg in args))
    assert done.returncode == 2
    assert hint in done.stderr
    assert "reads one store" not in done.stderr and "reads two stores" not in done.stderr
    assert done.stdout == ""


def test_a_word_that_is_a_file_keeps_the_one_store_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store named `json` in the current folder is a second store given, as a glob gives it. (click's runner:
    `fdl_in_process` runs from the repository's root, and the usage error comes before any store is read.)"""
    from click.testing import CliRunner

    from fdl_cli.cli import cli

    a = make_store(tmp_path / "a.h5")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "json").write_bytes(b"")
    done = CliRunner().invoke(cli, ["report", str(a), "json"], terminal_width=500)
    assert done.exit_code == 2
    assert "fdl report reads one store" in done.output
    assert "--format json" not in done.output
    # the same word where no such file is: the option's choice
    (tmp_path / "json").unlink()
    again = CliRunner().invoke(cli, ["report", str(a), "json"], terminal_width=500)
    assert again.exit_code == 2 and "give it as --format json" in again.output


def test_a_row_without_a_final_step_is_not_named_none(tmp_path: Path) -> None:
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    first = make_store(tmp_path / "first.h5", steps=(0,), seed=2)  # the reference alone: nothing after it
    done = fdl_in_process("classify", a, first, b)
    assert done.returncode == 0, done.stderr
    assert "None" not in done.stderr
    assert "final steps differ" not in done.stderr  # a and b end at one step
    assert (f"{first} has no checkpoint after the reference: its row has no final measures (its rule: "
            f"fdl classify {first})\n") in done.stderr
    short = make_store(tmp_path / "short.h5", steps=(0, 100), seed=3)
    other = fdl_in_process("classify", a, first, short)
    assert f"the final steps differ: 200 in {a}; 100 in {short}: those rows measure other points of training\n" \
        in other.stderr
    assert "None" not in other.stderr
    again = make_store(tmp_path / "again.h5", steps=(0,), seed=4)
    two = fdl_in_process("classify", a, first, again)
    assert (f"{first}, {again} have no checkpoint after the reference: their rows have no final measures (each "
            "one's rule: fdl classify STORE)\n") in two.stderr
