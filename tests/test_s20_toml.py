"""fdl.toml's paths and model, wherever fdl runs from (session 20).

A run's fdl.toml is written once and read from anywhere: `~` in its paths is the home folder (as the
shell makes `--probe ~/x`; environment variables are expanded nowhere), a module it names is looked
for beside it, and its relative paths are relative to its folder (a symbolic link's own folder), while a
relative path on the command line is relative to the current folder. Under --watch, an fdl.toml the
trainer writes after its first checkpoint is waited for when the run cannot start without it, and
warned of, not mixed in, once checkpoints were measured without it. `fdl inspect` refuses the
fdl.toml's probe that does not fit the model as it refuses --probe's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import read_manifest, resolve_model_factory
from fdl_cli.store import StoreReader
from tests.cli_run import tiny_model_beside
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL
from tests.tiny_models import mlp

#: a model file of tests.tiny_models.mlp's architecture (4-8-3)
MLP_FILE = "from tests.tiny_models import mlp as build\n"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


@pytest.fixture()
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """sys.path as it was, given back after the test, and sys.meta_path (through which fdl serves model folders)."""
    before = list(sys.path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield before


def _run(folder: Path, steps: tuple[int, ...] = (0, 10), n_probe: int = 30) -> Path:
    folder.mkdir(parents=True)
    for step in steps:
        torch.save(mlp(seed=step).state_dict(), folder / f"step_{step}.pt")
    _probe(folder / "probe.npz", n_probe)
    return folder


def _probe(path: Path, n: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 3, n))


def _said(result: Result) -> str:
    return " ".join(result.stderr.split())


def _analyze(*args: str | Path) -> Result:
    result = fdl("analyze", *map(str, args), "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ------------------------------------------------------------------------------------------ 1. ~ in paths


def test_tilde_in_the_paths_of_fdl_toml_is_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """probe = "~/data/probe.npz" was looked for as run/~/data/probe.npz, where `--probe ~/data/probe.npz`
    (the shell's ~) reads the home folder's."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    run = _run(tmp_path / "run")
    _probe(home / "data" / "probe.npz", n=20)  # not the run's own probe.npz (30 samples)
    (home / "code").mkdir()
    (home / "code" / "s20_home_net.py").write_text(MLP_FILE)
    (run / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)}"\nprobe = "~/data/probe.npz"\n')
    done = _analyze(run, "--out", tmp_path / "a.h5")
    assert done.code == 0, done.stderr
    assert [record["n_probe"] for record in done.records] == [20, 20]
    (run / "fdl.toml").write_text('model = "~/code/s20_home_net.py:build"\nprobe = "~/data/probe.npz"\n')
    manifest = read_manifest(run)
    assert manifest is not None and manifest.probe == [str(home / "data" / "probe.npz")]
    assert manifest.model == f"{home / 'code' / 's20_home_net.py'}:build"
    # a model file of the home folder is outside the run's folder, whose fdl.toml names only its own model code
    refused = _analyze(run, "--out", tmp_path / "b.h5")
    assert refused.code == 1 and f"got: {home / 'code' / 's20_home_net.py'} is outside {run}" in _said(refused)
    # named probes, as a list or a table, alike
    (run / "fdl.toml").write_text('probe = ["train=~/data/probe.npz", "test=probe.npz"]\n')
    listed = read_manifest(run)
    assert listed is not None and listed.probe == [f"train={home / 'data' / 'probe.npz'}", f"test={run / 'probe.npz'}"]
    (run / "fdl.toml").write_text('probe = { train = "~/data/probe.npz" }\n')
    table = read_manifest(run)
    assert table is not None and table.probe == [f"train={home / 'data' / 'probe.npz'}"]


def test_environment_variables_in_the_paths_of_fdl_toml_are_not_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fdl expands no environment variable anywhere: "$DATA/probe.npz" is that path, in the file's folder;
    the error says where it looked and that variables are not expanded."""
    run = _run(tmp_path / "run")
    _probe(tmp_path / "data" / "probe.npz")
    monkeypatch.setenv("FDL_S20_DATA", str(tmp_path / "data"))
    (run / "fdl.toml").write_text(f'model = "{MODEL}"\nprobe = "$FDL_S20_DATA/probe.npz"\n')
    manifest = read_manifest(run)
    assert manifest is not None and manifest.probe == [str(run / "$FDL_S20_DATA" / "probe.npz")]
    bad = _analyze(run, "--out", tmp_path / "v.h5")
    assert bad.code == 1
    said = _said(bad)
    assert f"error: the probe {run / '$FDL_S20_DATA' / 'probe.npz'} that {run / 'fdl.toml'} names is not there" in said
    assert "environment variables are not expanded" in said
    assert not (tmp_path / "v.h5").exists()


# ------------------------------------------------------------------------- 2. a module beside fdl.toml


def test_a_module_fdl_toml_names_is_found_beside_it_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """model = "s20_beside_a:build", the module beside fdl.toml, was found only when fdl ran in that folder
    ("No module named 's20_beside_a'" elsewhere)."""
    run = _run(tmp_path / "run")
    (run / "s20_beside_a.py").write_text(MLP_FILE)
    (run / "fdl.toml").write_text('model = "s20_beside_a:build"\nprobe = "probe.npz"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a module of the same name in the current folder is not the run's: the one beside fdl.toml wins
    (elsewhere / "s20_beside_a.py").write_text("def build():\n    raise SystemExit('the current folder s module')\n")
    monkeypatch.chdir(elsewhere)
    finders = list(sys.meta_path)
    try:
        done = _analyze(run, "--out", tmp_path / "m.h5")
        assert done.code == 0, done.stderr
        assert len(done.records) == 2
        # fdl.toml's own file: no "skipped" note; the note of the code that runs names it
        assert not [line for line in done.stderr.splitlines() if "s20_beside_a.py" in line and "skipped" in line]
        assert f"running the model code s20_beside_a:build ({run / 's20_beside_a.py'})" in _said(done)
        # sys.path is left as it was: the folder's modules are served to the folder's code alone (the factory and
        # forward may import its neighbours lazily; tests/test_s23_sec.py), never to fdl or torch's imports
        assert sys.path == _own_sys_path
        sys.meta_path[:] = finders  # inspect finds it from elsewhere too
        sys.modules.pop("s20_beside_a", None)
        shown = fdl("inspect", run, "--json")
        assert shown.code == 0, shown.stderr
        assert json.loads(shown.stdout)["default_layer"] == "2:input"
    finally:
        sys.modules.pop("s20_beside_a", None)


def test_a_module_named_by_model_keeps_its_meaning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """--model s20_beside_b:build names a module installed, on PYTHONPATH or in the current folder, not one
    beside the run's fdl.toml; and a package beside fdl.toml is found as a module is."""
    run = _run(tmp_path / "run")
    (run / "s20_beside_b.py").write_text(MLP_FILE)
    (run / "fdl.toml").write_text('probe = "probe.npz"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        missing = _analyze(run, "--out", tmp_path / "b.h5", "--model", "s20_beside_b:build")
        assert missing.code == 1 and "cannot import s20_beside_b" in missing.stderr
        assert str(run) not in sys.path
        package = run / "s20_pkg_c"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "nets.py").write_text(MLP_FILE)
        factory = resolve_model_factory("s20_pkg_c.nets:build", module_dir=run)
        assert isinstance(factory(), torch.nn.Sequential)
    finally:
        for name in ("s20_beside_b", "s20_pkg_c", "s20_pkg_c.nets"):
            sys.modules.pop(name, None)


def test_two_fdl_tomls_naming_a_module_beside_each_compare_the_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """A run restarted into a second folder with a copy of fdl.toml (model = "s20_beside_d:build"): the module
    is each folder's own now, so the files compare by the modules' bytes, as model files do."""
    run1, run2 = _run(tmp_path / "run1"), _run(tmp_path / "run2", steps=(20, 30))
    for folder in (run1, run2):
        (folder / "fdl.toml").write_text('model = "s20_beside_d:build"\nprobe = "probe.npz"\n')
    (run1 / "s20_beside_d.py").write_text(MLP_FILE)
    monkeypatch.chdir(tmp_path)
    try:
        alone = _analyze(run1, run2, "--out", tmp_path / "d1.h5")
        assert alone.code == 1
        assert (f"model: 's20_beside_d:build' and 's20_beside_d:build' (beside {run1 / 'fdl.toml'}: "
                f"{run1 / 's20_beside_d.py'}; beside {run2 / 'fdl.toml'}: no such module)") in _said(alone)
        (run2 / "s20_beside_d.py").write_text(MLP_FILE + "# trained with another version\n")
        other = _analyze(run1, run2, "--out", tmp_path / "d2.h5")
        assert other.code == 1 and "(files of other bytes)" in _said(other)
        shutil.copy(run1 / "s20_beside_d.py", run2 / "s20_beside_d.py")
        copies = _analyze(run1, run2, "--out", tmp_path / "d3.h5")
        assert copies.code == 0, copies.stderr
        assert [record["step"] for record in copies.records] == [0, 10, 20, 30]
    finally:
        sys.modules.pop("s20_beside_d", None)


# ------------------------------------------------------------ 3. command-line paths: the current folder


def test_a_relative_model_path_on_the_command_line_is_the_current_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """`fdl analyze run/* --model model.py:build` (a Trainer's checkpoint-N folders) took
    run/checkpoint-0/model.py, in the first folder given, before the model.py of the current folder,
    which the shell user means."""
    run = tmp_path / "run"
    for step in (0, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        weights = {key: value.contiguous() for key, value in mlp(seed=step).state_dict().items()}
        save_file(weights, str(run / f"checkpoint-{step}" / "model.safetensors"))
    _probe(tmp_path / "probe.npz")
    (run / "checkpoint-0" / "model.py").write_text("def build():\n    raise SystemExit('the sub-folder s model')\n")
    (tmp_path / "model.py").write_text(MLP_FILE)
    monkeypatch.chdir(tmp_path)
    given = ["run/checkpoint-0", "run/checkpoint-10", "--model", "model.py:build", "--probe", "probe.npz"]
    done = _analyze(*given, "--out", "h.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [0, 10]
    # the other model.py is named, as the one a user may have meant
    assert (f"--model model.py:build is {tmp_path / 'model.py'} (a path on the command line is relative to the "
            f"current folder); {Path('run/checkpoint-0/model.py')} differs: give its path to use it") in _said(done)
    shown = fdl("inspect", "run/checkpoint-0", "--model", "model.py:build", "--probe", "probe.npz")
    assert shown.code == 0, shown.stderr
    # Without a model.py here, the one in the checkpoint folder given is taken, as before.
    (tmp_path / "model.py").unlink()
    (run / "checkpoint-0" / "model.py").write_text(MLP_FILE)
    fallback = _analyze(*given, "--out", "f.h5")
    assert fallback.code == 0, fallback.stderr
    assert "differs" not in fallback.stderr


# ---------------------------------------------------------------------------- 4. a linked fdl.toml


def test_a_linked_fdl_toml_reads_its_relative_paths_from_the_links_folder(tmp_path: Path) -> None:
    """One fdl.toml kept in a shared place and linked into each run folder names each run's probe.npz: its
    relative paths are the link's folder's (as a copy's would be), not the target's."""
    shared = tmp_path / "shared"
    _probe(shared / "probe.npz", n=20)
    run = _run(tmp_path / "run", n_probe=30)
    (shared / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)}"\nprobe = "probe.npz"\n')  # run/model.py
    (run / "fdl.toml").symlink_to(shared / "fdl.toml")
    done = _analyze(run, "--out", tmp_path / "l.h5")
    assert done.code == 0, done.stderr
    assert [record["n_probe"] for record in done.records] == [30, 30]  # run/probe.npz, not shared/probe.npz
    # A run folder without the file: the error says whose folder the path is relative to.
    (run / "probe.npz").unlink()
    missing = _analyze(run, "--out", tmp_path / "m.h5")
    assert missing.code == 1
    said = _said(missing)
    assert f"error: the probe {run / 'probe.npz'} that {run / 'fdl.toml'} names is not there" in said
    assert (f"{run / 'fdl.toml'} is a link to {shared / 'fdl.toml'}: its relative paths are relative to the link's "
            f"folder, {run}") in said


# --------------------------------------------------------------------- 5. --watch and a late fdl.toml


def _watch(monkeypatch: pytest.MonkeyPatch, folder: Path, out: Path, steps: list, **given: object) -> tuple:
    """--watch over `folder` in this process, each of `steps` run in place of one poll's sleep."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter
    from tests.test_prev_walkback import _polls

    reporter, records = NullReporter(), []
    options = AnalyzeOptions(sources=(str(folder),), anchor_size=100, device="cpu", out=out, watch=True,
                             poll_seconds=0.01, **given)  # type: ignore[arg-type]
    with _polls(monkeypatch, *steps):
        run_analyze(options, reporter=reporter, on_record=records.append)
    return reporter, records


def _settled_write(path: Path, text: str) -> None:
    """Write `path` as a trainer did a while ago: --watch reads a file once it has settled."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _top_k(store: Path) -> int:
    with StoreReader(store) as reader:
        return int(reader.provenance["options"]["top_k"])


@pytest.mark.parametrize("given", ["nothing", "probe"])
def test_watch_waits_for_the_fdl_toml_it_needs_written_after_the_first_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """A trainer that writes fdl.toml after its first checkpoint: --watch without --probe stopped at that
    checkpoint with "no probe set was given" (without --model, "holds weights only"); it now waits for the
    file, then reads it."""
    from tests.test_prev_walkback import _arrive, _make_run

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()

    def write_toml() -> None:
        shutil.copy(source / "probe.npz", folder / "probe.npz")
        _settled_write(folder / "fdl.toml", f'model = "{tiny_model_beside(folder)}"\nprobe = "probe.npz"\ntop_k = 3\n')

    options = {"probe_specs": (str(source / "probe.npz"),)} if given == "probe" else {}
    reporter, records = _watch(monkeypatch, folder, tmp_path / "w.h5", [
        lambda: _arrive(source, folder, "step_0.safetensors"),
        write_toml,
        lambda: _arrive(source, folder, "step_10.safetensors"),
    ], **options)
    assert [record["step"] for record in records] == [0, 10]
    assert _top_k(tmp_path / "w.h5") == 3
    missing = ("no probe set was given" if given == "nothing"
               else f"{folder / 'step_0.safetensors'} holds weights only, and no model was given")
    assert any(note.startswith(f"{missing}: waiting for an fdl.toml in {folder}") for note in reporter.notes)
    assert any(note.startswith(f"{folder / 'fdl.toml'} sets top_k = 3") for note in reporter.notes)


def test_watch_warns_of_an_fdl_toml_written_once_checkpoints_were_measured_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--model and --probe given, fdl.toml (top_k = 3) written after step 0 was analysed: it was never read,
    without a word. Applying it would mix two ways of measuring in one store: the run keeps its options
    and says so, once."""
    from tests.test_prev_walkback import _arrive, _make_run

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    _arrive(source, folder, "step_0.safetensors")
    toml = folder / "fdl.toml"
    reporter, records = _watch(monkeypatch, folder, tmp_path / "w.h5", [
        lambda: _settled_write(toml, 'top_k = 3\nlayer = "0"\n'),
        lambda: _arrive(source, folder, "step_10.safetensors"),
        lambda: None,
    ], model_spec=MODEL, probe_specs=(str(source / "probe.npz"),))
    assert [record["step"] for record in records] == [0, 10]
    assert _top_k(tmp_path / "w.h5") == 64  # as for step 0: one store, one way
    late = [warning for warning in reporter.warnings if warning.startswith(f"{toml} was written after")]
    assert late == [f"{toml} was written after this run started, and is not read: it sets layer = ['0'] (this run: the "
                    "default layer), top_k = 3 (this run: 64), and the checkpoints of one store are measured "
                    "one way; to apply it, stop, and run fdl analyze again with --overwrite (or another --out)"]
    # An fdl.toml that says what the run uses already: a note, no warning.
    again = tmp_path / "again"
    again.mkdir()
    _arrive(source, again, "step_0.safetensors")
    reporter, _ = _watch(monkeypatch, again, tmp_path / "a.h5", [
        lambda: _settled_write(again / "fdl.toml", "top_k = 64\n"),
        lambda: None,
    ], model_spec=MODEL, probe_specs=(str(source / "probe.npz"),))
    assert not reporter.warnings
    assert f"{again / 'fdl.toml'} was written after this run started: it sets what the run uses already" in reporter.notes


# ------------------------------------------------------------------- 6. inspect with fdl.toml's probe


def test_inspect_refuses_the_probe_of_fdl_toml_that_does_not_fit_as_it_refuses_probe(tmp_path: Path) -> None:
    """The forward pass over fdl.toml's probe failed: `fdl inspect` listed 'forward failed' and exited 0,
    where --probe of the same file is an error (exit 1). The listing still comes first: without --probe
    fdl.toml's probe is the one run, and no other command lists the modules."""
    run = _run(tmp_path / "run")
    np.savez(run / "wide.npz", x=np.zeros((4, 5), np.float32))  # the model takes 4 inputs
    (run / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)}"\nprobe = "wide.npz"\n')
    for json_flag in ((), ("--json",)):
        result = fdl("inspect", run, *json_flag)
        assert result.code == 1, result.stderr
        said = _said(result)
        assert (f"error: the probe {run / 'wide.npz'} that {run / 'fdl.toml'} names does not fit the model of "
                f"{run / 'step_0.pt'}") in said
        assert "got: forward failed on a sample of shape (1, 5): RuntimeError" in said
        assert f"fix the probe in {run / 'fdl.toml'}, or pass --probe FILE" in said
        assert "Traceback" not in result.stderr
    listed = json.loads(result.stdout)
    assert listed["modules"][1]["name"] == "0"  # the listing, then the error
    # its guess of the default layer points at fdl.toml's probe ("pass --probe FILE" read as if none were given)
    assert listed["default_basis"] == ("a guess: the last nn.Linear in registration order, as no forward pass ran; "
                                       "give a probe that fits the model (fix the one fdl.toml names, or pass "
                                       "--probe FILE) to find the one that runs last")
    (run / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)}"\nprobe = "probe.npz"\n')
    fits = fdl("inspect", run, "--json")
    assert fits.code == 0 and json.loads(fits.stdout)["modules"][0]["output_shape"] == [1, 3]


def test_errors_of_fdl_tomls_model_name_the_file_not_a_model_option_never_given(tmp_path: Path) -> None:
    """A model of fdl.toml that cannot be built was said as "--model '...'", an option the user never typed;
    the error names fdl.toml's `model` and the file, in analyze and in inspect. --model keeps its wording."""
    run = _run(tmp_path / "run")
    (run / "fdl.toml").write_text(f'model = "{tiny_model_beside(run)[:-len("mlp")]}nope"\nprobe = "probe.npz"\n')
    spec = f"{run / 'model.py'}:nope"
    for command in (("analyze", run, "-o", tmp_path / "s.h5"), ("inspect", run)):
        result = fdl(*map(str, command))
        assert result.code == 1, result.stderr
        said = _said(result)
        assert f"error: model = {spec!r} of {run / 'fdl.toml'}: " in said and "has no callable 'nope'" in said
        assert "--model" not in said.split("fix:")[0]
        assert "Traceback" not in result.stderr
    given = fdl("inspect", str(run), "--model", spec)
    assert given.code == 1 and f"error: --model {spec!r}: " in _said(given)
    assert not (tmp_path / "s.h5").exists()
