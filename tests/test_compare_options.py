"""`fdl compare` warns when the two stores were analysed with different options (provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdl_cli import report
from tests.test_report import run_fdl

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same sample checkpoints analysed twice: uncentered (A) and with --center (B)."""
    folder = tmp_path_factory.mktemp("stores")
    paths = folder / "plain.h5", folder / "centered.h5"
    for path, extra in zip(paths, ([], ["--center"]), strict=True):
        result = run_fdl("analyze", str(SAMPLES), "--steps", "0,100", "--out", str(path), *extra)
        assert result.returncode == 0, result.stderr
    return paths


def test_different_options_warned_on_stderr_and_listed_in_json(stores: tuple[Path, Path]) -> None:
    plain, centered = stores
    result = run_fdl("compare", str(plain), str(centered), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "analysed with different options (center: A no vs B yes)" in result.stderr
    assert "mix these analysis choices with differences in training" in result.stderr
    document = json.loads(result.stdout)
    assert document["option_differences"] == [{"option": "center", "a": False, "b": True}]
    assert {"a", "b", "steps", "notes", "verdict"} <= set(document)
    table = run_fdl("compare", str(plain), str(centered))
    assert "center: A no vs B yes" in table.stderr


def test_same_options_no_warning(stores: tuple[Path, Path]) -> None:
    plain, _ = stores
    result = run_fdl("compare", str(plain), str(plain), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "different options" not in result.stderr
    assert json.loads(result.stdout)["option_differences"] == []


def test_layers_and_reference_step_are_analysis_choices() -> None:
    a = {"options": {"center": False, "top_k": 64}, "layers": ["fc1"], "reference_step": 0, "model": "a.py:f"}
    b = {"options": {"center": False, "top_k": 32}, "layers": ("fc2",), "reference_step": 0, "model": "b.py:f"}
    differences = report.option_differences(a, b)
    assert [(d.option, d.a, d.b) for d in differences] == [("top_k", 64, 32), ("layers", ["fc1"], ["fc2"])]
    assert report.option_differences(a, {"layers": ["fc1"]}) == []  # not recorded in B: nothing to compare


def test_probe_b_selects_store_b_s_series_named_otherwise(tmp_path: Path) -> None:
    """Two runs analysed on the same probe file under other names (train / test): --probe train found
    no 'train' in B; --probe-b names B's series, and the overlap (same file, same sha256) is computed."""
    probe = SAMPLES / "probe.npz"
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path, name in ((a, "train"), (b, "test")):
        done = run_fdl("analyze", str(SAMPLES), "--steps", "0,100", "--probe", f"{name}={probe}", "--out", str(path))
        assert done.returncode == 0, done.stderr
    missing = run_fdl("compare", str(a), str(b), "--probe", "train", "--format", "json")
    assert missing.returncode == 1 and f"{b} holds no series for probe='train'" in missing.stderr
    named = run_fdl("compare", str(a), str(b), "--probe", "train", "--probe-b", "test", "--format", "json")
    assert named.returncode == 0, named.stderr
    document = json.loads(named.stdout)
    assert [step["overlap"] for step in document["steps"]] == pytest.approx([1.0, 1.0], abs=1e-9)
