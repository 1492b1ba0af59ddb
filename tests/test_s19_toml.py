"""fdl.toml with several folders, globs and explicit files (session 19).

`fdl analyze run1 run2` (a job restarted into a second folder) read neither folder's fdl.toml, without a
word: its options (top_k, center, ...) were dropped even when the command line gave the model and probe.
Now the fdl.toml of every folder given, and of every given file's folder, is a candidate: one found is
read for all, several are read when they say the same, and otherwise they are an error naming both
files and the keys.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.cli_run import tiny_model_beside
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL
from tests.tiny_models import mlp


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


def _probe(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))


def _runs(root: Path) -> tuple[Path, Path]:
    """run1 (steps 0, 10, 20) and run2 (its restart: steps 0, 10, placed at 30, 40 by --step-offset run2=30),
    each with the same probe.npz (a copy) beside its checkpoints."""
    run1, run2 = root / "run1", root / "run2"
    for folder, steps in ((run1, (0, 10, 20)), (run2, (0, 10))):
        folder.mkdir()
        for step in steps:
            torch.save(mlp(seed=step + (100 if folder == run2 else 0)).state_dict(), folder / f"step_{step}.pt")
        _probe(folder / "probe.npz")
    return run1, run2


def _toml(folder: Path, extra: str = "") -> Path:
    path = folder / "fdl.toml"
    path.write_text(f'model = "{tiny_model_beside(folder)}"\nprobe = "probe.npz"\n{extra}\n')
    return path


def _analyze(*args: str | Path) -> Result:
    result = fdl("analyze", *map(str, args), "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _said(result: Result) -> str:
    return " ".join(result.stderr.split())


def _options(store: Path) -> dict:
    with StoreReader(store) as reader:
        return dict(reader.provenance["options"])


def test_two_folders_with_the_same_fdl_toml_read_it(tmp_path: Path) -> None:
    """A restarted run whose second folder holds a copy of the first's fdl.toml, probe and all: the files
    say the same (the two probe.npz hold the same bytes), so it is read; before, 'no probe set was given'."""
    run1, run2 = _runs(tmp_path)
    _toml(run1, "top_k = 3")
    _toml(run2, "top-k = 3")
    done = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "a.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [0, 10, 20, 30, 40]
    assert _options(tmp_path / "a.h5")["top_k"] == 3
    said = _said(done)
    assert f"{run1 / 'fdl.toml'} sets top_k = 3" in said
    assert "probe.npz" not in said  # each folder's own probe is no file to note
    assert "holds no fdl.toml" not in said


def test_one_folder_of_two_with_an_fdl_toml_is_read_for_both_and_said(tmp_path: Path) -> None:
    """Only run1 holds one: read for run2's checkpoints too, with a note. Before, the command line's
    --model and --probe ran with top_k 64, silently dropping the file's top_k = 3."""
    run1, run2 = _runs(tmp_path)
    _toml(run1, "top_k = 3")
    done = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "a.h5",
                    "--model", MODEL, "--probe", run1 / "probe.npz")
    assert done.code == 0, done.stderr
    assert _options(tmp_path / "a.h5")["top_k"] == 3
    assert f"{run1 / 'fdl.toml'} is read for the checkpoints of every folder given ({run2} holds no fdl.toml)" in _said(done)
    # Files of the two folders, as a shell's run1/*.pt run2/*.pt give them, the same.
    files = _analyze(*sorted(run1.glob("*.pt")), *sorted(run2.glob("*.pt")), "--step-offset", f"{run2}=30",
                     "--out", tmp_path / "files.h5")
    assert files.code == 0, files.stderr
    assert _options(tmp_path / "files.h5")["top_k"] == 3


def test_two_fdl_tomls_that_disagree_are_an_error_naming_both_and_the_keys(tmp_path: Path) -> None:
    run1, run2 = _runs(tmp_path)
    _toml(run1, "top_k = 3\ncenter = true")
    _toml(run2, "top_k = 5\ncenter = true")
    _probe(run2 / "probe.npz", seed=1)  # another probe under the same name
    bad = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "bad.h5")
    assert bad.code == 1
    said = _said(bad)
    assert f"{run1 / 'fdl.toml'} and {run2 / 'fdl.toml'} set probe, top_k differently" in said
    assert "top_k: 3 and 5" in said and "center" not in said.split("got:")[1]
    assert "give --probe, --top-k on the command line, which overrides both files" in said
    assert not (tmp_path / "bad.h5").exists()
    # The fix it gives: the command line settles both keys, and the files' common center = true holds.
    fixed = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "ok.h5",
                     "--probe", run1 / "probe.npz", "--top-k", "5")
    assert fixed.code == 0, fixed.stderr
    options = _options(tmp_path / "ok.h5")
    assert (options["top_k"], options["center"]) == (5, True)
    # A model file of other bytes under the same name is another model.
    (run2 / "model.py").write_text("from tests.tiny_models import mlp\n")
    (run1 / "model.py").write_text("from tests.tiny_models import mlp as mlp\n")
    for folder in (run1, run2):
        (folder / "fdl.toml").write_text('model = "model.py:mlp"\nprobe = "probe.npz"\n')
    shutil.copy(run1 / "probe.npz", run2 / "probe.npz")
    models = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "m.h5")
    assert models.code == 1 and "set model differently" in _said(models)
    shutil.copy(run1 / "model.py", run2 / "model.py")
    same = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "m.h5")
    assert same.code == 0, same.stderr
    # A key one file leaves out reads "not set", whichever the key (the model read "None", the probe "none")
    (run2 / "fdl.toml").write_text("top_k = 5\n")
    unset = _said(_analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "u.h5"))
    assert (f"model: '{run1.resolve() / 'model.py'}:mlp' and not set; probe: {run1.resolve() / 'probe.npz'} and not "
            "set; top_k: not set and 5") in unset, unset


def _folder_per_step(root: Path, layout: str) -> Path:
    """root with a sub-folder per step (10, 20) holding `layout` (its step as {}), probe.npz and an fdl.toml
    setting top_k = 3."""
    for step in (10, 20):
        path = root / layout.format(step)
        path.parent.mkdir(parents=True)
        torch.save(mlp(seed=step).state_dict(), path)
    _probe(root / "probe.npz")
    _toml(root, "top_k = 3")
    return root


def test_a_glob_of_one_folder_with_hf_sub_folders_reads_its_fdl_toml(tmp_path: Path) -> None:
    """`fdl analyze run/*` gives run/fdl.toml, run/probe.npz and the sub-folders run/checkpoint-N/: the
    folders were several, so no fdl.toml was read (the command line's top_k 64 ran instead of the file's 3)
    and fdl.toml itself was noted as a skipped text file."""
    run = _folder_per_step(tmp_path / "run", "checkpoint-{}/pytorch_model.bin")
    done = _analyze(*sorted(run.iterdir()), "--out", tmp_path / "g.h5", "--probe", run / "probe.npz")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [10, 20]
    assert _options(tmp_path / "g.h5")["top_k"] == 3
    said = _said(done)
    assert "skipped fdl.toml" not in said and "holds no fdl.toml" not in said and "hold no fdl.toml" not in said


def test_the_fdl_toml_above_one_folder_per_step_is_said_to_be_unread(tmp_path: Path) -> None:
    """`fdl analyze ckpts/step_*` (one folder per step): ckpts/fdl.toml is not read, and says so."""
    ckpts = _folder_per_step(tmp_path / "ckpts", "step_{}/model.pt")
    done = _analyze(*sorted(ckpts.glob("step_*")), "--step-regex", r"step_(\d+)/", "--out", tmp_path / "s.h5",
                    "--model", MODEL, "--probe", ckpts / "probe.npz")
    assert done.code == 0, done.stderr
    assert _options(tmp_path / "s.h5")["top_k"] == 64
    assert f"{ckpts / 'fdl.toml'} is not read: fdl reads the fdl.toml of a folder given" in _said(done)


def test_an_fdl_toml_beside_paths_read_from_stdin_is_said_to_be_unread(tmp_path: Path) -> None:
    """`find run -name '*.pt' | fdl analyze -`: the folder's fdl.toml is not read (the paths come after the
    options are settled), and says so; before, its top_k = 3 was dropped without a word."""
    run1, _ = _runs(tmp_path)
    _toml(run1, "top_k = 3")
    paths = "\n".join(str(path) for path in sorted(run1.glob("*.pt"))) + "\n"
    result = fdl("analyze", "-", "--out", str(tmp_path / "in.h5"), "--model", MODEL, "--probe", str(run1 / "probe.npz"),
                 stdin=paths)
    assert result.code == 0, result.stderr
    assert _options(tmp_path / "in.h5")["top_k"] == 64
    assert f"{run1 / 'fdl.toml'} not read: the checkpoints' paths came from stdin (-)" in _said(result)


def test_named_probes_in_a_list_of_fdl_toml_are_named_as_on_the_command_line(tmp_path: Path) -> None:
    """probe = ["train=probe.npz", "test=held.npz"], the --probe form, said 'probe file .../train=probe.npz
    not found'; the table form worked."""
    run1, _ = _runs(tmp_path)
    _probe(run1 / "held.npz", seed=1)
    (run1 / "fdl.toml").write_text(f'model = "{tiny_model_beside(run1)}"\nprobe = ["train=probe.npz", "test=held.npz"]\n')
    done = _analyze(run1, "--out", tmp_path / "n.h5")
    assert done.code == 0, done.stderr
    assert sorted({record["probe"] for record in done.records}) == ["test", "train"]
    assert "held.npz" not in _said(done)  # fdl.toml's own probes are no files to note


OTHER_MODEL = """
import torch
from torch import nn


def other(width=8, *, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
"""


def test_the_model_kwargs_of_fdl_toml_go_with_its_model_not_another_given(tmp_path: Path) -> None:
    """--model another factory: fdl.toml's model_kwargs (for its own model) were passed to it, failing with
    'unexpected keyword argument hidden' and a fix naming a --model-kwargs nobody gave."""
    run1, _ = _runs(tmp_path)
    _toml(run1, "model_kwargs = { hidden = 8 }")
    (tmp_path / "other.py").write_text(OTHER_MODEL)
    done = _analyze(run1, "--out", tmp_path / "o.h5", "--model", f"{tmp_path / 'other.py'}:other")
    assert done.code == 0, done.stderr
    assert len(done.records) == 3
    assert f"{run1 / 'fdl.toml'}'s model_kwargs {{'hidden': 8}} are not used: they go with its model" in _said(done)
    # The file's own factory named on the command line (by its path relative to the folder) keeps them.
    (run1 / "model.py").write_text("from tests.tiny_models import mlp\n")
    (run1 / "fdl.toml").write_text('model = "model.py:mlp"\nprobe = "probe.npz"\nmodel_kwargs = { hidden = 16 }\n')
    same = _analyze(run1, "--out", tmp_path / "s.h5", "--model", "model.py:mlp")
    assert same.code == 1 and "not used" not in same.stderr
    assert "size mismatch" in same.stderr or "shape" in same.stderr  # hidden = 16 was passed: checkpoints of 8
    assert "0.weight: checkpoint (8, 4) vs model (16, 4)" in same.stderr, same.stderr  # the model of hidden = 16


def test_an_unknown_layer_of_fdl_toml_names_the_file(tmp_path: Path) -> None:
    """layer = "fc9" in fdl.toml said 'pass one to --layer', of a --layer nobody gave."""
    run1, _ = _runs(tmp_path)
    _toml(run1, 'layer = "fc9"')
    bad = _analyze(run1, "--out", tmp_path / "l.h5")
    assert bad.code == 1 and "unknown layer 'fc9'" in bad.stderr
    assert f"the layer is {run1 / 'fdl.toml'}'s (layer = ['fc9']): fix it there, or give --layer" in _said(bad)
    # Given on the command line, the same error says nothing of the file (the note of the model code it names does)
    given = _analyze(run1, "--out", tmp_path / "l.h5", "--layer", "fc8")
    error = given.stderr.partition("error:")[2]
    assert given.code == 1 and "unknown layer 'fc8'" in error and "fdl.toml" not in error


def test_watch_reads_the_fdl_toml_a_trainer_writes_with_its_first_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--watch started before the trainer made its folder (or wrote its fdl.toml): the file, written with
    the first checkpoint, was never read, so its top_k = 3 was dropped without a word."""
    from fdl_cli.pipeline import AnalyzeOptions, run_analyze
    from fdl_cli.progress import NullReporter
    from tests.test_prev_walkback import _arrive, _make_run, _polls

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "logs" / "run"

    def first_save() -> None:
        folder.mkdir(parents=True)
        shutil.copy(source / "probe.npz", folder / "probe.npz")
        (folder / "fdl.toml").write_text('top_k = 3\nglob = "step_*.safetensors"\n')
        _arrive(source, folder, "step_0.safetensors", "step_10.safetensors")

    reporter, records = NullReporter(), []
    options = AnalyzeOptions(sources=(str(folder),), model_spec="tests.tiny_models:mlp", model_kwargs={"hidden": 8},
                             probe_specs=(str(source / "probe.npz"),), anchor_size=100, device="cpu",
                             out=tmp_path / "w.h5", watch=True, poll_seconds=0.01)
    with _polls(monkeypatch, lambda: None, first_save):
        run_analyze(options, reporter=reporter, on_record=records.append)
    assert [record["step"] for record in records] == [0, 10]
    assert _options(tmp_path / "w.h5")["top_k"] == 3
    assert any(note.startswith(f"{folder / 'fdl.toml'} sets top_k = 3") for note in reporter.notes)


def test_a_folder_given_whose_files_the_glob_of_fdl_toml_leaves_out_is_said(tmp_path: Path) -> None:
    """run1's fdl.toml read for run2 too brings its glob = "step_*.pt", which none of run2's resume_*.pt
    match: run2 gave nothing, exit 0, without a word (so did an empty folder given beside another)."""
    run1, run2 = _runs(tmp_path)
    for step in (0, 10):
        (run2 / f"step_{step}.pt").rename(run2 / f"resume_{step}.pt")
    _toml(run1, 'glob = "step_*.pt"')
    done = _analyze(run1, run2, "--out", tmp_path / "g.h5")
    assert done.code == 0, done.stderr
    assert [record["step"] for record in done.records] == [0, 10, 20]
    assert f"no checkpoint found in {run2} that the glob 'step_*.pt' matches, set by {run1 / 'fdl.toml'}" in _said(done)
    empty = tmp_path / "empty"
    empty.mkdir()
    quiet = _analyze(run1, empty, "--out", tmp_path / "e.h5")
    assert quiet.code == 0 and f"no checkpoint found in {empty} that the glob" in _said(quiet)
    # --glob of the command line: said, without a file to blame; --steps leaves folders out on purpose.
    given = _analyze(run1, run2, "--out", tmp_path / "c.h5", "--glob", "step_*.pt")
    assert f"no checkpoint found in {run2} that the glob 'step_*.pt' matches: none" in _said(given)
    chosen = _analyze(run1, run2, "--out", tmp_path / "s.h5", "--steps", "0,10")
    assert chosen.code == 0 and "no checkpoint found" not in chosen.stderr


def test_each_fdl_toml_read_names_its_ignored_keys_once(tmp_path: Path) -> None:
    run1, run2 = _runs(tmp_path)
    _toml(run1, 'layers = "2"')
    _toml(run2, 'device = "cpu"')
    done = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "i.h5")
    assert done.code == 0, done.stderr
    said = _said(done)
    assert said.count(f"{run1 / 'fdl.toml'}: ignored layers (did you mean layer?)") == 1
    assert said.count(f"{run2 / 'fdl.toml'}: ignored device") == 1


def test_a_copied_fdl_toml_whose_files_were_not_copied_says_which_is_missing(tmp_path: Path) -> None:
    """run2 holds a copy of run1's fdl.toml but not the model.py it names beside it: the two files say the
    same text and mean other files, and the error says which one is missing."""
    run1, run2 = _runs(tmp_path)
    (run1 / "model.py").write_text("from tests.tiny_models import mlp\n")
    for folder in (run1, run2):
        (folder / "fdl.toml").write_text('model = "model.py:mlp"\nprobe = "probe.npz"\n')
    bad = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "x.h5")
    assert bad.code == 1
    model1, model2 = run1 / "model.py", run2 / "model.py"
    assert f"model: '{model1}:mlp' and '{model2}:mlp' ({model2}: no such file)" in _said(bad)
    # --model settles it (the probes, copies of one file, agree).
    fixed = _analyze(run1, run2, "--step-offset", f"{run2}=30", "--out", tmp_path / "x.h5", "--model", MODEL)
    assert fixed.code == 0, fixed.stderr
