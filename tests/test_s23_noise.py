"""Session 23, noise: what a healthy, ordinary run prints on stderr (a first hour with README.md)."""

from __future__ import annotations

from pathlib import Path

from tests.cli_run import fdl_in_process
from tests.test_s21_user import _weights

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
SUFFIXES = "(.pt, .pth, .bin, .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar)"


def test_the_readme_main_analyze_says_the_code_it_runs_and_where_the_results_went_only(tmp_path: Path) -> None:
    """README's main command printed "note: skipped 1 file without a checkpoint suffix (.pt, .pth, .bin,
    .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar): make_samples.py" on every run: the script that made the
    sample, beside the model code fdl.toml names, which no one takes for a checkpoint."""
    out = tmp_path / "sample.fdl.h5"
    done = fdl_in_process("analyze", SAMPLES, "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"note: running the model code {SAMPLES / 'model.py'}:build, named by {SAMPLES / 'fdl.toml'}",
        f"25 checkpoints analysed → {out}",
    ]
    assert done.stdout == ""


def test_python_files_beside_the_model_code_that_runs_get_no_skipped_note(tmp_path: Path) -> None:
    """A run folder holding train.py beside the model.py --model names: train.py is the run's own code, not
    a checkpoint misnamed; other files (notes.txt) are still noted, and so is a .py file when the model that
    runs comes from elsewhere (the folder's code may be the model meant)."""
    run = _weights(tmp_path / "run", "from tests.tiny_models import mlp as build\n")
    (run / "train.py").write_text("print('training')\n", encoding="utf-8")
    (run / "notes.txt").write_text("lr 0.1\n", encoding="utf-8")
    done = fdl_in_process("analyze", run, "--model", f"{run / 'model.py'}:build", "--probe", run / "probe.npz",
                          "-o", tmp_path / "a.h5")
    assert done.returncode == 0, done.stderr
    assert f"note: skipped 1 file without a checkpoint suffix {SUFFIXES}: notes.txt\n" in done.stderr
    assert "train.py" not in done.stderr
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.py").write_text("from tests.tiny_models import mlp as build\n", encoding="utf-8")
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'elsewhere' / 'model.py'}:build",
                          "--probe", run / "probe.npz", "-o", tmp_path / "b.h5")
    assert done.returncode == 0, done.stderr
    assert f"note: skipped 3 files without a checkpoint suffix {SUFFIXES}: model.py, notes.txt, train.py\n" \
        in done.stderr
    # the same in a folder whose fdl.toml names its model: its make_samples.py-like scripts are said once
    # nothing of the folder's code runs
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\n', encoding="utf-8")
    done = fdl_in_process("analyze", run, "-o", tmp_path / "c.h5")
    assert done.returncode == 0, done.stderr
    assert f"note: skipped 1 file without a checkpoint suffix {SUFFIXES}: notes.txt\n" in done.stderr
    assert "train.py" not in done.stderr
