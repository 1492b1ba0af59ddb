"""A probe too small for the MF-vs-EF rule to find EF (n ≤ C + mf_extra inputs before a wider layer): `fdl classify`
said so in its evidence `small_probe`, but `fdl report` printed "final: ... regime MF" (its table, --html, --json,
--format csv) and `fdl compare` its runs' regimes with no word of it. They now give classify's line
(`regimes.small_probe_line`), and their machine outputs a `small_probe` field."""

from __future__ import annotations

import csv
import html
import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import fdl_in_process
from tests.test_report import SCALARS, STEPS, make_store

#: classify's line for make_store's layer of 8 units before C = 2 outputs, on a probe of 3 inputs (≤ C + mf_extra = 3)
LINE = (
    "k95_utility ≤ rank ≤ n = 3 probe inputs ≤ C + mf_extra = 3: the probe is too small for the rule to find EF, "
    "whatever the layer's 8 units learned; analyse with a probe of more than 3 inputs"
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a run whose records say n_probe = 3, the make_store run of 16 probe inputs): both end MF."""
    root = tmp_path_factory.mktemp("small")
    small = make_store(root / "small.h5", scalars={step: {**SCALARS[step], "n_probe": 3} for step in STEPS})
    return small, make_store(root / "big.h5")


def _said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stdout + done.stderr).split())


def test_report_gives_classify_s_small_probe_line(stores: tuple[Path, Path]) -> None:
    small, big = stores
    verdict = json.loads(fdl_in_process("classify", small, "--json").stdout)
    assert verdict["evidence"]["small_probe"] == LINE  # whatever its verdict (undetermined here)
    text = fdl_in_process("report", small)
    assert text.returncode == 0, text.stderr
    said = _said(text)
    assert "final: D_LR 0.1250, CKA₀ 0.6250, k95 Π̂ 2, regime MF" in said, said
    assert LINE in said, said
    assert "too small" not in _said(fdl_in_process("report", big))


def test_report_json_and_csv_carry_a_small_probe_field_and_the_line_on_stderr(stores: tuple[Path, Path]) -> None:
    small, big = stores
    done = fdl_in_process("report", small, "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)  # stdout stays JSON alone
    assert [record["small_probe"] for record in records] == [True, True, True]
    assert [record["regime"] for record in records] == ["coefficient", "EF", "MF"]  # the stored keys kept
    assert f"note: {LINE}" in " ".join(done.stderr.split())
    rows = list(csv.DictReader(io.StringIO(fdl_in_process("report", small, "--format", "csv").stdout)))
    assert [row["small_probe"] for row in rows] == ["True"] * 3 and rows[-1]["regime"] == "MF"
    plain = fdl_in_process("report", big, "--json")
    assert all("small_probe" not in record for record in json.loads(plain.stdout))  # others as before
    assert "too small" not in plain.stderr
    assert "small_probe" not in fdl_in_process("report", big, "--format", "csv").stdout


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_the_html_page_gives_the_line(stores: tuple[Path, Path], tmp_path: Path) -> None:
    small, _ = stores
    done = fdl_in_process("report", small, "--html", tmp_path / "page.html")
    assert done.returncode == 0, done.stderr
    assert LINE in " ".join(html.unescape((tmp_path / "page.html").read_text()).split())


def test_compare_names_the_run_whose_probe_is_too_small(stores: tuple[Path, Path]) -> None:
    small, big = stores
    text = _said(fdl_in_process("compare", small, big))
    assert f"note: run A: {LINE}" in text, text
    assert "run B: k95_utility" not in text
    done = fdl_in_process("compare", small, big, "--json")
    compared = json.loads(done.stdout)
    assert compared["small_probe"] == {"a": True, "b": False}
    assert f"run A: {LINE}" in compared["notes"]
    rows = list(csv.DictReader(io.StringIO(fdl_in_process("compare", big, small, "--format", "csv").stdout)))
    assert {(row["a_small_probe"], row["b_small_probe"]) for row in rows} == {("False", "True")}
    assert "small_probe" not in fdl_in_process("compare", big, big, "--json").stdout


def test_under_center_a_probe_of_c_plus_mf_extra_plus_1_inputs_is_too_small(tmp_path: Path) -> None:
    """--center leaves rank ≤ n − 1: 4 inputs before C = 2 outputs read no EF there, and only there."""
    four = {step: {**SCALARS[step], "n_probe": 4} for step in STEPS}
    centered = make_store(tmp_path / "center.h5", scalars=four, options={"center": True})
    done = fdl_in_process("report", centered, "--json")
    assert {record["small_probe"] for record in json.loads(done.stdout)} == {True}
    assert (
        "note: k95_utility ≤ rank ≤ n − 1 = 3 (--center) ≤ C + mf_extra = 3: the probe is too small for the rule "
        "to find EF, whatever the layer's 8 units learned; analyse with a probe of more than 4 inputs"
    ) in " ".join(done.stderr.split())
    plain = fdl_in_process("report", make_store(tmp_path / "plain.h5", scalars=four), "--json")
    assert "small_probe" not in plain.stdout and "too small" not in plain.stderr


def test_a_sweep_names_the_store_whose_probe_is_too_small(stores: tuple[Path, Path]) -> None:
    """`fdl classify A B`: a row per store and its regime, with the line below the table for the small probe's store,
    and a `small_probe` column, last, in its CSV where a row has such a probe."""
    small, big = stores
    text = fdl_in_process("classify", small, big)
    assert f"{small}: {LINE}" in " ".join(text.stderr.split()), text.stderr
    assert f"{big}: k95" not in text.stderr
    rows = list(csv.DictReader(io.StringIO(fdl_in_process("classify", small, big, "--format", "csv").stdout)))
    assert [(row["store"], row["small_probe"]) for row in rows] == [(str(small), "True"), (str(big), "False")]
    assert list(rows[0])[-2:] == ["refused_steps", "small_probe"]
    assert "small_probe" not in fdl_in_process("classify", big, big, "--format", "csv").stdout  # others as before


def test_export_of_the_trajectories_gives_the_line_beside_the_regime_column(stores: tuple[Path, Path]) -> None:
    small, big = stores
    done = fdl_in_process("export", small, "--what", "trajectories")
    assert done.returncode == 0, done.stderr
    assert f"note: {LINE}" in " ".join(done.stderr.split())
    assert "small_probe" not in done.stdout  # its columns are the stored fields', as before
    assert "too small" not in fdl_in_process("export", big, "--what", "trajectories").stderr
