"""The docs followed as a new user runs them: what `fdl inspect --json` prints is what usage.md says it prints,
and the notes usage.md quotes are quoted whole."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from tests.cli_run import fdl_in_process
from tests.test_s16_docs import REPO, SAMPLES, USAGE

RELIABILITY = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    """usage.md's section `heading` (a `## ` heading), up to the next one."""
    start = USAGE.index(f"\n## {heading}\n")
    end = USAGE.find("\n## ", start + 1)
    return USAGE[start:end]


def _json_keys_named(text: str) -> set[str]:
    return set(re.findall(r'"([a-z_]+)"', text))


def test_every_key_of_inspect_json_is_named_in_usage_md(tmp_path: Path) -> None:
    """usage.md's "Inspecting a checkpoint" lists the keys of `fdl inspect --json`; the JSON also held
    `checkpoint`, `default_module` and `default_basis`, which it did not name, with a model or without."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(SAMPLES / "step_100.safetensors", alone)
    named = _json_keys_named(_section("Inspecting a checkpoint"))
    for args in ([SAMPLES / "step_100.safetensors"], [alone / "step_100.safetensors"]):
        done = fdl_in_process("inspect", *args, "--json")
        assert done.returncode == 0, done.stderr
        listing = json.loads(done.stdout)
        rows = {key for row in listing.get("modules") or [] for key in row}
        assert sorted((set(listing) | rows) - named) == []


def test_the_note_of_an_added_probe_is_quoted_as_analyze_says_it(tmp_path: Path) -> None:
    """usage.md quotes the note of a probe added to a store; the note went on past the quote."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("step_0.safetensors", "step_1000.safetensors", "model.py", "probe.npz"):
        shutil.copy(SAMPLES / name, run)
    probe = np.load(run / "probe.npz")
    np.savez(tmp_path / "b.npz", x=probe["x"][:100], y=probe["y"][:100])
    store = tmp_path / "run.h5"
    common = ("analyze", run, "--model", run / "model.py:build", "--out", store)
    assert fdl_in_process(*common, "--probe", f"train={run / 'probe.npz'}").returncode == 0
    done = fdl_in_process(*common, "--probe", f"train={run / 'probe.npz'}", "--probe", f"test={tmp_path / 'b.npz'}")
    assert done.returncode == 0, done.stderr
    said = next(line for line in done.stderr.splitlines() if line.startswith("note: adding probe"))
    quoted = re.search(r"`(note: adding probe [^`]*)`", USAGE)
    assert quoted, "usage.md no longer quotes the note of an added probe"
    # the quote's store has 300 checkpoints and is called run.h5; this one has 2
    assert said.replace(str(store), "run.h5").replace(" 2 ", " 300 ") == quoted.group(1)


def test_the_lines_of_a_bad_checkpoint_are_quoted_as_analyze_prints_them(tmp_path: Path) -> None:
    """reliability.md quoted `error: PATH: ...` and `failed: PATH: reason`; a file that cannot be read is said
    `error: cannot read the checkpoint PATH` (its reason names the path, so fdl does not put it first again)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(SAMPLES / "step_0.safetensors", run)
    (run / "step_7.pt").write_bytes(bytes(range(256)) + bytes(44))  # 300 bytes, no zip archive nor pickle
    done = fdl_in_process("analyze", run, "--model", SAMPLES / "model.py:build", "--probe", SAMPLES / "probe.npz",
                          "--out", tmp_path / "run.h5")
    assert done.returncode == 1
    bad = str(run / "step_7.pt")
    lines = done.stderr.splitlines()
    quoted = RELIABILITY.replace("PATH", bad)
    for said in (f"error: cannot read the checkpoint {bad}", f"  failed: cannot read the checkpoint {bad}"):
        assert said in lines
        assert f"`{said.strip()}`" in quoted


def test_every_short_option_help_lists_is_in_usage_md() -> None:
    """Each command's `--help` lists `-h, --help` (and analyze's and export's `-o, --out`); usage.md, which
    tests/test_s23_docs.py holds to every long option, never named `-h`."""
    from fdl_cli.cli import cli

    short = {opt for command in (cli, *cli.commands.values()) for param in command.params for opt in param.opts
             if re.fullmatch(r"-\w", opt)}
    short |= {opt for opt in cli.context_settings["help_option_names"] if re.fullmatch(r"-\w", opt)}
    assert sorted(opt for opt in short if not re.search(rf"`[^`]*(?<![\w-]){opt}(?![\w-])[^`]*`", USAGE)) == []
