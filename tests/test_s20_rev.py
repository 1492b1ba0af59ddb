"""Session 20's review (rev): what the merged branches said or did wrong, each test failing before its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import resolve_model_factory
from fdl_cli.progress import NullReporter
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_io_fixes import MODEL
from tests.test_s20_toml import MLP_FILE, _analyze, _own_sys_path, _run, _said, _settled_write, _watch

__all__ = ["_own_sys_path"]  # a fixture

#: tests.tiny_models.mlp's architecture (4-8-3) as an nn.Module class, which an fdl.toml may name wherever it is
#: defined (a module of the current folder); a factory function there it may not (tests/test_s23_sec2.py)
MLP_CLASS_FILE = """from torch import nn


class build(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""

# --------------------------------------------------------------- a late fdl.toml under --watch


def _late_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, text: str) -> tuple[Path, NullReporter]:
    """--watch of a run folder NAME with --model and --probe, an fdl.toml `text` written after step 0 was measured:
    (the fdl.toml, the reporter)."""
    from tests.test_prev_walkback import _arrive, _make_run

    source = tmp_path / "source"
    if not source.exists():
        _make_run(source)
    folder = tmp_path / name
    folder.mkdir()
    _arrive(source, folder, "step_0.safetensors")
    toml = folder / "fdl.toml"
    reporter, _ = _watch(monkeypatch, folder, tmp_path / f"{name}.h5", [lambda: _settled_write(toml, text), lambda: None],
                         model_spec=MODEL, probe_specs=(str(source / "probe.npz"),))
    return toml, reporter


def test_a_late_fdl_toml_naming_what_the_run_settled_on_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--reference and --overlap-k unset are the first checkpoint and the number of outputs, and no --layer the
    default layer: a late fdl.toml naming those was warned of as a change ("reference = 0 (this run: None)"),
    telling the user to start the store again with --overwrite for nothing; an option the run leaves unset is
    "not set", not Python's None."""
    toml, reporter = _late_toml(monkeypatch, tmp_path, "run", 'reference = 0\noverlap_k = 3\nlayer = "2:input"\n')
    assert reporter.warnings == []
    assert f"{toml} was written after this run started: it sets what the run uses already" in reporter.notes
    # another reference: the run's own named, not the None of an option left unset
    _, reporter = _late_toml(monkeypatch, tmp_path, "again", 'reference = 10\noverlap_k = 2\nglob = "*.safetensors"\n')
    warnings = reporter.warnings
    assert len(warnings) == 1, warnings
    assert (": it sets reference = 10 (this run: 0), overlap_k = 2 (this run: 3), glob = '*.safetensors' (this run: "
            "not set), and") in warnings[0]


# ------------------------------------------------------------------------- report --plots: stale figures


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_the_note_of_removed_figures_does_not_say_their_series_left_the_report(tmp_path: Path) -> None:
    """A store of two layers analysed again with one: its figures are this report's, named without the
    series' suffix now, and the note of the old names removed said "(of series not in this report)"."""
    from fdl_cli import report as rep
    from fdl_cli.figures import write_run_figures
    from tests.test_report import make_store

    plots = tmp_path / "plots"
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    write_run_figures(rep.load_run(store), plots)
    notes: list[str] = []
    store.unlink()
    write_run_figures(rep.load_run(make_store(store, layers=("fc1",))), plots, notes=notes)
    assert notes == [f"removed 16 figure files an earlier report of this store wrote into {plots} that this one "
                     "does not write: eigenfunctions_train-fc1.png, eigenfunctions_train-fc1.svg, "
                     "eigenfunctions_train-fc2.png, eigenfunctions_train-fc2.svg, spectrum_train-fc1.png, "
                     "spectrum_train-fc1.svg and 10 more"]


# ------------------------------------------------------------------------------- a module beside fdl.toml


def test_a_folder_beside_fdl_toml_named_as_its_module_does_not_hide_the_current_folders_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """model = "s20_rev_ns:build" with s20_rev_ns.py in the current folder, and the run folder holding a
    sub-folder of that name (no package: a namespace portion): the current folder was no longer searched
    once something of that name was beside fdl.toml, and the sub-folder was imported ("s20_rev_ns has no
    callable 'build'"), where fdl before this session ran. A package beside fdl.toml still wins."""
    run = _run(tmp_path / "run")
    (run / "s20_rev_ns").mkdir()
    (run / "s20_rev_ns" / "notes.txt").write_text("a folder of the run's")
    (run / "fdl.toml").write_text('model = "s20_rev_ns:build"\nprobe = "probe.npz"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "s20_rev_ns.py").write_text(MLP_CLASS_FILE)
    monkeypatch.chdir(elsewhere)
    try:
        done = _analyze(run, "--out", tmp_path / "m.h5")
        assert done.code == 0, done.stderr
        assert [record["step"] for record in done.records] == [0, 10]
        sys.modules.pop("s20_rev_ns", None)
        # a namespace package beside fdl.toml, and no module of that name elsewhere: still found there
        (run / "s20_rev_ns" / "nets.py").write_text(MLP_FILE)
        (elsewhere / "s20_rev_ns.py").unlink()
        factory = resolve_model_factory("s20_rev_ns.nets:build", module_dir=run)
        assert isinstance(factory(), torch.nn.Sequential)
    finally:
        for name in ("s20_rev_ns", "s20_rev_ns.nets"):
            sys.modules.pop(name, None)


def test_two_fdl_tomls_beside_folders_of_their_modules_name_are_read_as_one_or_refused_truly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_sys_path: list[str]
) -> None:
    """Two runs, each fdl.toml saying model = "s20_rev_pk:build", each folder holding a sub-folder of that name:
    refused as models "(run1/s20_rev_pk, run2/s20_rev_pk: no such file)". A folder of no package is not the
    module (the current folder's s20_rev_pk.py is run, as before this session); a package is, and is said so."""
    run1, run2 = _run(tmp_path / "run1"), _run(tmp_path / "run2", steps=(20, 30))
    for folder in (run1, run2):
        (folder / "fdl.toml").write_text('model = "s20_rev_pk:build"\nprobe = "probe.npz"\n')
        (folder / "s20_rev_pk").mkdir()
    (tmp_path / "s20_rev_pk.py").write_text(MLP_CLASS_FILE)
    monkeypatch.chdir(tmp_path)
    try:
        done = _analyze(run1, run2, "--out", tmp_path / "a.h5")
        assert done.code == 0, done.stderr
        assert [record["step"] for record in done.records] == [0, 10, 20, 30]
        sys.modules.pop("s20_rev_pk", None)
        for folder in (run1, run2):
            (folder / "s20_rev_pk" / "__init__.py").write_text(MLP_FILE)
        packages = _analyze(run1, run2, "--out", tmp_path / "b.h5")
        assert packages.code == 1
        assert (f"model: 's20_rev_pk:build' and 's20_rev_pk:build' ({run1 / 's20_rev_pk'}, {run2 / 's20_rev_pk'}: "
                "a package beside the fdl.toml, whose files fdl does not compare)") in _said(packages)
    finally:
        sys.modules.pop("s20_rev_pk", None)


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_a_plots_folder_that_cannot_be_listed_is_written_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder this user may write into but not list (a drop box, mode 1733, as for a user other than root):
    the figures and their list were written, then listing the folder for the figure files left there raised
    PermissionError, a traceback and exit 1 after the report's work was done."""
    import errno

    from tests.test_analyze import fdl
    from tests.test_report import make_store

    plots = tmp_path / "plots"
    plots.mkdir()
    listing = Path.iterdir

    def unlistable(self: Path) -> object:
        if self == plots:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", unlistable)
    done = fdl("report", str(make_store(tmp_path / "run.h5")), "--format", "csv", "--plots", str(plots))
    assert "Traceback" not in done.stderr
    assert done.code == 0, done.stderr
    assert done.stderr == f"wrote 8 figure files to {plots}\n"
    assert len(list(listing(plots))) == 9  # and the list
