"""Session 24: file names, and counts in messages.

- A checkpoint whose name is not UTF-8 (`$'\\xffstep_0.pt'`: Python reads it as `'\\udcffstep_0.pt'`) failed as
  "cannot read the checkpoint …: 'utf-8' codec can't encode character '\\udcff'" with the fix "the file is
  truncated or corrupt": torch maps a file by its name as UTF-8 text (the peek loads with mmap), as safetensors
  and TorchScript open one; the store's `path` (an HDF5 UTF-8 string) could not hold it either, nor could a
  --model file of such a name be imported, nor an --html report name such a store. Such a file is now read
  (through a file fdl opens), its path stored and shown with those bytes as `\\xNN`, and a library that still
  takes the name as text only is said to be the name's fault, with the rename that fixes it.
- Names of other characters (é, 中文, an emoji, spaces, quotes, commas, a line break, a leading dash) work end
  to end; a failed file whose name holds a line break was named twice in the summary.
- Counts: compare's note said "1 steps matched to the nearest step", the report's provenance "computed: all 1
  checkpoints", export "wrote … of 1 checkpoints".
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from fdl_cli.checkpoints import _corrupt_error, discover_checkpoints, load_checkpoint
from fdl_cli.errors import CheckpointError
from tests import warm
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, fdl_in_process
from tests.tiny_models import mlp

MODEL = "tests.tiny_models:mlp"
FF = os.fsdecode(b"\xff")  # a byte that is no UTF-8, as Python reads it in a file name: '\udcff'


def _probe(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    probe = folder / "probe.npz"
    np.savez(probe, x=rng.standard_normal((30, 4)).astype(np.float32), y=rng.integers(0, 3, 30))
    return probe


def _pt(path: Path, seed: int, step: int) -> None:
    torch.save({"state_dict": mlp(4, 8, 3, seed=seed).state_dict(), "step": step}, path)


def _non_utf8_run(folder: Path) -> Path:
    """torch.save files and a safetensors file, each named with the byte 0xff."""
    run = folder / "run"
    run.mkdir()
    _pt(run / f"{FF}step_0.pt", 0, 0)
    (run / f"{FF}step_1.safetensors").write_bytes(safetensors_bytes(mlp(4, 8, 3, seed=1).state_dict()))
    _pt(run / f"{FF}step_2.pt", 2, 2)
    return run


def test_checkpoints_named_with_bytes_that_are_not_utf8_are_analysed_and_stored_escaped(tmp_path: Path) -> None:
    run, probe, out = _non_utf8_run(tmp_path), _probe(tmp_path), tmp_path / "run.h5"
    done = fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"3 checkpoints analysed → {out}" in done.stderr and "codec" not in done.stderr
    with h5py.File(out, "r") as store:
        paths = {step: store[f"checkpoints/step_{step}"].attrs["path"] for step in (0, 1, 2)}
    assert paths == {0: f"{run}/\\xffstep_0.pt", 1: f"{run}/\\xffstep_1.safetensors", 2: f"{run}/\\xffstep_2.pt"}

    again = fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", out)
    assert again.returncode == 0 and f"0 checkpoints analysed, 3 already in the store → {out}" in again.stderr

    table = fdl_in_process("report", out, "--format", "csv")
    assert [row["path"] for row in csv.DictReader(io.StringIO(table.stdout))] == list(paths.values())

    # the stored path is still matched with the file: a rewritten one is said to have changed
    (run / f"{FF}step_1.safetensors").write_bytes(safetensors_bytes(mlp(4, 8, 3, seed=7).state_dict()))
    changed = fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", out)
    assert changed.returncode == 1
    # (this process's stderr holds the name as Python reads it; fdl's own stderr writes it \\xff, as below)
    assert (f"1 checkpoint file changed since it was analysed into {out}: step 1 ({run}/{FF}step_1.safetensors)"
            in changed.stderr)


def test_a_torchscript_file_named_so_is_loaded(tmp_path: Path) -> None:
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(mlp(4, 8, 3, seed=2)), scripted)
    path = tmp_path / f"{FF}step_2.pt"
    path.write_bytes(scripted.getvalue())
    ref = discover_checkpoints([path]).checkpoints[0]
    assert (ref.step, ref.kind) == (2, "torchscript")
    loaded = load_checkpoint(ref, trust_pickle=True)  # a TorchScript program is code (test_s25_sec.py)
    assert loaded.module is not None
    x = torch.ones(2, 4)
    assert torch.equal(loaded.module(x), mlp(4, 8, 3, seed=2)(x))


def test_such_a_name_is_shown_escaped_on_the_terminal(tmp_path: Path) -> None:
    """Printed as \\xff (as `ls -b` and bash's $'...' write it), not as Python's \\udcff, on stdout as on stderr."""
    run = tmp_path / "run"
    run.mkdir()
    _pt(run / f"{FF}step_0.pt", 0, 0)
    (run / f"{FF}step_1.pt").write_text("garbage\n")
    inspect = [sys.executable, "-m", "fdl_cli", "inspect"]  # a process of its own: its stdout's and stderr's encoding
    shown = warm.run([*inspect, run / f"{FF}step_0.pt", "--model", MODEL], cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    assert f"modules of {run}/\\xffstep_0.pt" in shown.stdout + shown.stderr
    failed = warm.run([*inspect, run / f"{FF}step_1.pt", "--model", MODEL], cwd=REPO)
    assert failed.returncode == 1
    assert f"error: {run}/\\xffstep_1.pt is a text file, not a checkpoint" in failed.stderr
    assert "udcff" not in shown.stdout + shown.stderr + failed.stderr
    listed = fdl_in_process("inspect", run / f"{FF}step_0.pt", "--model", MODEL, "--json")
    assert json.loads(listed.stdout)["checkpoint"] == f"{run}/\\xffstep_0.pt"


@pytest.mark.usefixtures("cheap_figures")  # the page's title, not its images
def test_a_model_file_and_a_store_named_so(tmp_path: Path) -> None:
    run, probe = tmp_path / "run", _probe(tmp_path)
    run.mkdir()
    for step in (0, 1):
        _pt(run / f"step_{step}.pt", step, step)
    model = tmp_path / f"mod{FF}el.py"
    model.write_text("import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
                     "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    out = tmp_path / f"st{FF}ore.h5"
    done = fdl_in_process("analyze", run, "--model", f"{model}:build", "--probe", probe, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "2 checkpoints analysed" in done.stderr
    page = tmp_path / f"r{FF}.html"
    report = fdl_in_process("report", out, "--html", page)
    assert report.returncode == 0, report.stderr
    assert "<title>fdl report: st\\xffore.h5" in page.read_text(encoding="utf-8")


def test_a_library_that_takes_such_a_name_as_text_only_is_the_names_fault_with_the_rename() -> None:
    path = Path(f"/runs/it's {FF}step_0.pt")
    error = _corrupt_error(path, UnicodeEncodeError("utf-8", str(path), 12, 13, "surrogates not allowed"))
    assert isinstance(error, CheckpointError)
    assert error.what == "cannot read the checkpoint /runs/it's \\xffstep_0.pt: its name is not UTF-8 text " \
                         "(the bytes written \\xNN)"
    assert error.fix == "rename it to a UTF-8 name (in bash: mv $'/runs/it\\'s \\xffstep_0.pt' NEW_NAME)"
    assert "truncated" not in error.message
    from fdl_cli.errors import shown_path

    assert shown_path("é 中文 😀") == "é 中文 😀"


ODD = ["é_step_0.pt", "中文 step_1.pt", "😀,'\"step_2.pt", "line\nbreak_step_3.pt", "-step_4.pt"]


def test_names_of_other_characters_work_end_to_end(tmp_path: Path) -> None:
    run, probe = tmp_path / "rün 中文 😀, 'q\"", _probe(tmp_path)
    run.mkdir()
    for step, name in enumerate(ODD):
        _pt(run / name, step, step)
    out = tmp_path / "störe 中😀.h5"
    done = fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", out)
    assert done.returncode == 0, done.stderr
    table = fdl_in_process("report", out, "--format", "csv", "--plots", tmp_path / "figs ü")
    assert [row["path"] for row in csv.DictReader(io.StringIO(table.stdout))] == [str(run / n) for n in ODD]
    assert (tmp_path / "figs ü" / "trajectories.png").stat().st_size > 0
    exported = json.loads(fdl_in_process("export", out, "--what", "trajectories", "--format", "json").stdout)
    assert exported["path"] == [str(run / n) for n in ODD]
    other = tmp_path / "b é.h5"
    other.write_bytes(out.read_bytes())
    compared = fdl_in_process("compare", out, other)
    assert compared.returncode == 0 and "no field differs at any matched step" in compared.stderr
    listed = fdl_in_process("inspect", run / "-step_4.pt", "--model", MODEL, "--json")
    assert json.loads(listed.stdout)["checkpoint"] == str(run / "-step_4.pt")


def test_a_failed_file_whose_name_holds_a_line_break_is_named_once(tmp_path: Path) -> None:
    run, probe = tmp_path / "run", _probe(tmp_path)
    run.mkdir()
    _pt(run / "step_0.pt", 0, 0)
    bad = run / "li\nne_step_1.pt"
    bad.write_text("garbage\n")
    done = fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", tmp_path / "run.h5")
    assert done.returncode == 1
    assert f"error: {bad} is a text file, not a checkpoint" in done.stderr
    # the summary indents each line of the reason, the path's second line too; it named the path twice
    shown = str(bad).replace("\n", "\n    ")
    assert f"  failed: {shown} is a text file, not a checkpoint" in done.stderr
    assert f"{shown}: {shown}" not in done.stderr


def test_counts_of_one_take_the_singular(tmp_path: Path) -> None:
    from tests.test_report import make_store

    a = make_store(tmp_path / "a.h5", steps=(0, 100, 200))
    b = make_store(tmp_path / "b.h5", steps=(0, 100, 210))
    compared = fdl_in_process("compare", a, b)
    assert compared.returncode == 0, compared.stderr
    assert "1 step matched to the nearest step of the other run: 200↔210" in compared.stdout + compared.stderr
    assert "1 steps" not in compared.stdout + compared.stderr

    run, probe = tmp_path / "run", _probe(tmp_path)
    run.mkdir()
    _pt(run / "step_0.pt", 0, 0)
    out = tmp_path / "one.h5"
    assert fdl_in_process("analyze", run, "--model", MODEL, "--probe", probe, "--out", out).returncode == 0
    report = fdl_in_process("report", out)
    assert "computed: step 0 on cpu" in report.stderr and "all 1 checkpoints" not in report.stderr
    wrote = fdl_in_process("export", out, "--what", "eigenvalues", "--format", "npy", "--out", tmp_path / "e.npz")
    assert f"wrote eigenvalues of 1 checkpoint to {tmp_path / 'e.npz'}" in wrote.stdout + wrote.stderr
    wrote = fdl_in_process("export", out, "--what", "trajectories", "--format", "npy", "--out", tmp_path / "t.npz")
    assert "trajectories of 1 checkpoint to" in wrote.stdout + wrote.stderr
