"""Session 15, a user in a shell: defects found running every command on small runs.

- an output folder that exists but cannot be written to (`--html /proc/r.html`, a read-only folder)
  passed the early check, so `report --format json --html ...` printed the whole report on stdout and
  only then failed with status 1;
- `export` and `compare` read a damaged store (a checkpoint never completed, trajectories missing)
  without the warnings `report` and `classify` print, so an export silently lacked a checkpoint;
- a bad checkpoint found by a folder scan was reported as "error: X: X is a text file ...";
- "no checkpoints found" told the user to "loosen --glob" when no --glob was given (and `inspect` has
  none);
- the reader of stderr (the human output) going away (`fdl report run.h5 2>&1 | head -1`) exited 1,
  rich's status for it, where a closed stdout gives 141 quietly;
- `--steps 10,30 --reference 20` said "no checkpoint has that step" of a step whose file is there;
- `--out` another program's HDF5 file advised "pass --overwrite to start a fresh store", which
  replaces that file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_analyze import fdl
from tests.test_distributed import _make_run
from tests.test_io_fixes import _unprivileged

REPO = Path(__file__).resolve().parents[1]

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not (PROC / "self").is_dir(), reason="a folder no one can write to: Linux's /proc")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("s15shell") / "run")


@pytest.fixture(scope="module")
def store(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s15store") / "run.h5"
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "probe.npz", "--out", out, "--steps", "0,10,20")
    assert done.code == 0, done.stderr
    return out


# ------------------------------------------------------------- an unwritable output folder, up front


@needs_proc
@pytest.mark.parametrize("option", ["--html", "--plots"])
def test_report_refuses_an_unwritable_output_before_printing_anything(store: Path, option: str) -> None:
    target = PROC / ("fdl-s15.html" if option == "--html" else "fdl-s15-plots")
    done = fdl("report", store, "--format", "json", option, target)
    assert done.code == 1
    assert done.stdout == ""  # was: the whole JSON report, then "error: could not write /proc/..."
    assert f"error: could not write {target}" in done.stderr
    assert "Traceback" not in done.stderr
    assert ".fdl-check" not in done.stderr  # the probe file's name is not the user's concern


@needs_proc
def test_compare_refuses_an_unwritable_plots_folder_before_comparing(store: Path) -> None:
    done = fdl("compare", store, store, "--format", "csv", "--plots", PROC / "fdl-s15-plots")
    assert done.code == 1 and done.stdout == ""
    assert f"error: could not write {PROC / 'fdl-s15-plots'}" in done.stderr


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_the_writability_check_leaves_no_file_behind(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    html = out / "r.html"
    done = fdl("report", store, "--format", "json", "--html", html, "--plots", out / "figs")
    assert done.code == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["figs", "r.html"]
    assert json.loads(done.stdout)[0]["step"] == 0


def test_an_existing_read_only_html_file_is_refused_up_front(store: Path, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    html.write_text("kept")
    html.chmod(0o444)
    try:  # as root, without the capability that writes any file (it skipped as root: it never ran there)
        done = _unprivileged(["-m", "fdl_cli", "report", str(store), "--format", "json", "--html", str(html)])
    finally:
        html.chmod(0o644)
    assert done.returncode == 1 and done.stdout == ""
    assert f"could not write {html}" in done.stderr
    assert html.read_text() == "kept"


# ------------------------------------------------------------- a damaged store: every reader warns


def _damaged(store: Path, tmp_path: Path) -> Path:
    """A copy of `store` whose step_10 was never completed (as a killed writer of an old fdl leaves it)."""
    copy = tmp_path / "damaged.h5"
    shutil.copy(store, copy)
    with h5py.File(copy, "r+") as handle:
        del handle["checkpoints/step_10"].attrs["complete"]
    return copy


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("what", ["eigenvalues", "trajectories"])
def test_export_of_a_damaged_store_warns_on_stderr_and_keeps_stdout_clean(
    store: Path, tmp_path: Path, what: str, fmt: str
) -> None:
    damaged = _damaged(store, tmp_path)
    done = fdl("export", damaged, "--what", what, "--format", fmt)
    assert done.code == 0, done.stderr
    # was: no word on stderr, and the export simply lacked step 10
    assert "warning: " in done.stderr and "step 10" in done.stderr and "never completed" in done.stderr
    if fmt == "json":
        data = json.loads(done.stdout)
        steps = data["step"] if what == "trajectories" else [row["step"] for row in data]
    else:
        lines = done.stdout.splitlines()
        steps = sorted({int(line.split(",")[0]) for line in lines[1:]})
    assert steps == [0, 20]


def test_export_to_a_file_warns_too(store: Path, tmp_path: Path) -> None:
    damaged = _damaged(store, tmp_path)
    done = fdl("export", damaged, "--what", "trajectories", "--format", "npy", "--out", tmp_path / "t.npz")
    assert done.code == 0, done.stderr
    assert "never completed" in done.stderr and done.stdout == ""


def test_compare_warns_about_a_damaged_store_naming_it(store: Path, tmp_path: Path) -> None:
    damaged = _damaged(store, tmp_path)
    done = fdl("compare", store, damaged, "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["b"] == str(damaged)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert any(f"{damaged}:" in line and "never completed" in line for line in warnings), done.stderr
    assert not any(f"{store}:" in line for line in warnings)  # the intact store has nothing to say


def test_a_healthy_store_exports_without_warnings(store: Path) -> None:
    done = fdl("export", store, "--what", "eigenvalues")
    assert done.code == 0 and "warning" not in done.stderr


# ------------------------------------------------------------- messages


def test_a_bad_checkpoint_of_a_folder_scan_is_named_once(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(run, folder)
    (folder / "step_35.safetensors").write_text("junk\n")
    done = fdl("analyze", folder, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "probe.npz", "--out", tmp_path / "m.h5", "--steps", "0,10")
    assert done.code == 1
    bad = folder / "step_35.safetensors"
    assert f"error: {bad} is a text file, not a checkpoint" in done.stderr  # was: "error: X: X is a text file"
    assert f"{bad}: {bad}" not in done.stderr


def test_no_checkpoints_found_names_glob_only_when_one_was_given(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = fdl("analyze", empty, "--model", "tests.tiny_models:mlp", "--out", tmp_path / "x.h5")
    assert plain.code == 1 and "no checkpoints found" in plain.stderr
    assert "--glob" not in plain.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    inspected = fdl("inspect", text)
    assert inspected.code == 1 and "no checkpoints found" in inspected.stderr
    assert "--glob" not in inspected.stderr  # inspect has no --glob option


def test_no_checkpoints_found_with_a_glob_says_to_loosen_it(run: Path, tmp_path: Path) -> None:
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--out", tmp_path / "x.h5", "--glob", "*.nothing")
    assert done.code == 1 and "no checkpoints found" in done.stderr and "loosen --glob" in done.stderr


# ------------------------------------------------------------- the reader of stderr goes away


def _with_stderr_closed(*args: object) -> subprocess.CompletedProcess[bytes]:
    """Run fdl with stderr a pipe whose reader has gone (`fdl report run.h5 2>&1 | head -1` once head
    has exited): every write to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-m", "fdl_cli", *map(str, args)], stderr=write_end,
                              stdout=subprocess.PIPE, env=env, cwd=str(REPO), timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["report", "classify"])
def test_a_closed_stderr_ends_quietly_with_the_sigpipe_status(store: Path, command: str) -> None:
    done = _with_stderr_closed(command, store)
    # was 1, "an error fdl explains", with nothing explained: rich's handler exits 1
    assert done.returncode == 141
    assert done.stdout == b""


def test_a_closed_stderr_leaves_machine_output_already_written(store: Path) -> None:
    done = _with_stderr_closed("report", store, "--format", "csv")  # nothing for stderr: all on stdout
    assert done.returncode == 0
    assert done.stdout.decode().splitlines()[0].startswith("step,path,sha256")


# ------------------------------------------------------------- --reference outside the selection


def test_a_reference_left_out_by_steps_is_not_said_to_have_no_checkpoint(run: Path, tmp_path: Path) -> None:
    args = ("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
            "--probe", run / "probe.npz", "--out", tmp_path / "r.h5")
    done = fdl(*args, "--steps", "10,30", "--reference", "20")
    assert done.code == 1
    # was: "--reference 20: no checkpoint has that step", while step_20.safetensors is there
    assert "no checkpoint has that step" not in done.stderr
    assert "error: --reference 20: no checkpoint selected by --steps / --every has that step" in done.stderr
    assert "select the reference too (--steps 10,20,30)" in done.stderr
    assert not (tmp_path / "r.h5").exists()
    fixed = fdl(*args, "--steps", "10,20,30", "--reference", "20", "--json")
    assert fixed.code == 0, fixed.stderr
    assert {r["step"]: r["cka_init"] for r in fixed.records}[20] == 1.0
    absent = fdl(*args, "--reference", "7")  # no selection: the step has no checkpoint at all
    assert absent.code == 1 and "error: --reference 7: no checkpoint has that step" in absent.stderr


# ------------------------------------------------------------- --out another program's HDF5 file


def test_analyze_into_another_programs_hdf5_does_not_advise_overwrite_as_the_cure(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "weights.h5"
    with h5py.File(other, "w") as handle:  # a Keras model, a dataset: HDF5 without fdl's format attribute
        handle["layer0/kernel"] = [[1.0, 2.0]]
    before = other.read_bytes()
    done = fdl("analyze", run, "--model", "tests.tiny_models:mlp", "--model-kwargs", '{"hidden": 8}',
               "--probe", run / "probe.npz", "--out", other, "--steps", "0,10")
    assert done.code == 1
    assert f"error: {other} is not an fdl store" in done.stderr
    # was: "fix: pass the .h5 file written by `fdl analyze --out`; or pass --overwrite to start a fresh store"
    assert "start a fresh store" not in done.stderr
    assert "give the store another --out; --overwrite would replace this file" in done.stderr
    assert other.read_bytes() == before
