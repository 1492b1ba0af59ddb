"""Session 15, from the shell review: `-o` for `--out`, `--out -` refused before a file named "-" is
written, and a bad threshold's example naming a value of that threshold's kind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fdl_cli.errors import FdlError
from fdl_cli.regimes import Thresholds
from tests.cli_run import fdl_in_process
from tests.test_analyze import fdl

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    for name in ("step_0.safetensors", "step_10.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    return folder


def test_short_o_writes_the_store_and_the_export(two_checkpoints: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fdl("analyze", two_checkpoints, "--model", str(SAMPLES / "model.py") + ":build",
                 "--probe", SAMPLES / "probe.npz", "-o", "short.h5")
    assert result.code == 0, result.stderr
    assert (tmp_path / "short.h5").is_file()
    result = fdl("export", "short.h5", "--what", "trajectories", "--format", "json", "-o", "t.json")
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert json.loads((tmp_path / "t.json").read_text())["step"] == [0, 10]


def test_out_dash_is_refused_and_writes_nothing(two_checkpoints: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fdl("analyze", two_checkpoints, "--out", "-")
    assert result.code == 1
    assert "error: --out -: the store is an HDF5 file, which cannot go to stdout" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("name", [field.name for field in dataclasses.fields(Thresholds)])
def test_a_bad_threshold_value_gets_an_example_of_its_own(name: str) -> None:
    with pytest.raises(FdlError) as caught:
        Thresholds.with_overrides([f"{name}=abc"])
    example = caught.value.fix.removeprefix("e.g. --threshold ")
    assert example.split("=")[0] == name
    # the example is valid and changes the threshold
    changed = Thresholds.with_overrides([example])
    assert getattr(changed, name) != getattr(Thresholds(), name)


def test_an_early_error_is_the_first_line_of_stderr(two_checkpoints: Path, tmp_path: Path) -> None:
    """The progress display started before any work and, stopped on a non-terminal, printed a blank line
    ahead of the error (the resume review)."""
    done = fdl_in_process("analyze", two_checkpoints, "--probe", tmp_path / "missing.npz", "--out", tmp_path / "s.h5")
    assert done.returncode == 1
    assert done.stderr.startswith("error: probe file "), repr(done.stderr[:80])
    assert done.stdout == ""


def test_a_damaged_store_names_overwrite_once(two_checkpoints: Path, tmp_path: Path) -> None:
    """The fix of a store analyze could not read said "re-run `fdl analyze ... --overwrite` to rebuild it;
    or pass --overwrite to start a fresh store, or another --out" (the resume review)."""
    store = tmp_path / "s.h5"
    done = fdl("analyze", two_checkpoints, "--model", str(SAMPLES / "model.py") + ":build",
               "--probe", SAMPLES / "probe.npz", "--out", store)
    assert done.code == 0, done.stderr
    data = store.read_bytes()
    store.write_bytes(data[:2048])
    done = fdl("analyze", two_checkpoints, "--model", str(SAMPLES / "model.py") + ":build",
               "--probe", SAMPLES / "probe.npz", "--out", store)
    assert done.code == 1 and store.read_bytes() == data[:2048]
    fix = next(line for line in done.stderr.splitlines() if line.startswith("  fix: "))
    assert fix.count("--overwrite") == 1 and fix.endswith("; or give another --out"), fix
