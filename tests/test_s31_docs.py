"""What the user docs say of checkpoints `fdl analyze` refused (a run that diverged) is what the commands print and
what a script reading the store from Python gets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fdl_cli.regimes import Thresholds, classify_run
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _make_run, _spoil

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MLP's run stored at steps 0 - 20, its NaN checkpoints at 30 and 40 refused: the docs' example."""
    folder = _make_run(tmp_path_factory.mktemp("docs") / "run", [0, 10, 20, 30, 40])
    for step in (30, 40):
        _spoil(folder, step, "nan")
    out = folder.parent / "run.h5"
    done = fdl_in_process("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
                          "--probe", folder / "probe.npz", "--anchor-size", "100", "-o", out)
    assert done.returncode == 1, done.stderr
    return out


def test_usage_md_quotes_the_refused_line_classify_prints(store: Path) -> None:
    text = (DOCS / "usage.md").read_text()
    section = text.split("### What is skipped or refused", 1)[1]
    quoted = re.search(r"``(refused: .*?)``", section, re.S)
    assert quoted is not None, "usage.md quotes no refused: line in 'What is skipped or refused'"
    said = " ".join(quoted.group(1).split())
    done = fdl_in_process("classify", store)
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("refused:")]
    assert printed == [said], (printed, said)


def test_store_md_names_every_key_classify_adds_to_the_python_verdict(store: Path) -> None:
    """store.md's Python section says which keys of `fdl classify --json` `verdict.as_json()` lacks: a script
    writer reading refused checkpoints from Python must learn where they are."""
    done = fdl_in_process("classify", store, "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    with StoreReader(store) as run:
        records = run.records()
        reference = run.provenance.get("reference_step")
    mine = classify_run(records, Thresholds(), reference_step=reference).as_json()
    missing = sorted(set(printed) - set(mine)) + sorted(set(printed["evidence"]) - set(mine["evidence"]))
    bullet = next(part for part in (DOCS / "store.md").read_text().split("\n- ") if "verdict.as_json()" in part)
    # the probe's chance, the snippet adds itself (probe_chance)
    unsaid = [key for key in missing if f"`{key}`" not in bullet and key not in ("chance_accuracy", "label_entropy")]
    assert unsaid == [], (unsaid, bullet)
