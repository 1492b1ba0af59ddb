"""fdl in a pipeline: a Makefile, a shell script, Python's `subprocess` + `json.loads`, pandas' `read_csv`.

What such a script relies on (docs/usage.md, "Output: for people and for machines"): stdout holds the machine
output alone, the columns of a CSV do not depend on the runs' values, and a process started as a script starts
it (stderr closed by `2>&-`) still does its work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fdl_cli.store import StoreReader
from tests.cli_run import REPO, fdl_in_process

SAMPLES = REPO / "sample_checkpoints"

#: A model whose code writes below Python's sys.stdout, to file descriptor 1, as a C extension, a CUDA kernel's
#: printf or a child process (`git describe`, `nvidia-smi`) does; and to file descriptor 2 in its forward pass.
NOISY_MODEL = '''
import os
import subprocess

from torch import nn

os.write(1, b"noise: fd 1 at import\\n")


class Noisy(nn.Sequential):
    def forward(self, x):
        os.write(2, b"noise: fd 2 in forward\\n")
        return super().forward(x)


def build(hidden=64, n_classes=10):
    os.write(1, b"noise: fd 1 in the factory\\n")
    subprocess.run(["echo", "noise: a child process in the factory"], check=True)
    return Noisy(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
'''


def _noisy_run(folder: Path) -> Path:
    """Two of the sample run's checkpoints, its probe, and NOISY_MODEL as the model of its fdl.toml."""
    run = folder / "run"
    run.mkdir()
    for name in ("step_0.safetensors", "step_10.safetensors", "probe.npz"):
        shutil.copy(SAMPLES / name, run / name)
    (run / "model.py").write_text(NOISY_MODEL, encoding="utf-8")
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\n', encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of two of the sample run's checkpoints (a classification probe: no r2)."""
    import torch

    from fdl_cli.pipeline import AnalyzeOptions, run_analyze

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("store") / "run.h5"
    assert not run_analyze(AnalyzeOptions(sources=(str(SAMPLES),), steps=(0, 10), out=out, device="cpu")).failed
    return out


def test_classify_csv_has_the_same_columns_whatever_the_runs_hold(store: Path) -> None:
    """A script that concatenates the CSVs of classification and regression runs (or reads `final_r2`) needs a
    fixed header: the table leaves out a column no row fills, the CSV and markdown kept that as well, so that
    `final_r2`, which --json's evidence holds (null), was missing from the CSV of a classification run."""
    done = fdl_in_process("classify", store, "--format", "csv")
    assert done.returncode == 0, done.stderr
    evidence = json.loads(fdl_in_process("classify", store, "--json").stdout)["evidence"]
    assert evidence["final_r2"] is None
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 1
    assert rows[0]["final_r2"] == "" and float(rows[0]["final_accuracy"]) == evidence["final_accuracy"]
    markdown = fdl_in_process("classify", store, "--format", "markdown").stdout
    header = [cell.strip() for cell in markdown.splitlines()[0].strip("|").split("|")]
    assert header == list(rows[0])


def test_model_code_writing_to_file_descriptor_1_stays_off_stdout(tmp_path: Path) -> None:
    """`fdl analyze --json | jq` and `inspect --json`: what the model's code writes to file descriptor 1 itself
    (not through print(), which already went to stderr) went into stdout, before and between the records."""
    run = _noisy_run(tmp_path)
    done = fdl_in_process("analyze", run, "--out", tmp_path / "run.h5", "--json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 10], done.stdout
    assert "noise: fd 1 at import" in done.stderr and "noise: fd 1 in the factory" in done.stderr
    assert "noise: a child process in the factory" in done.stderr
    listed = fdl_in_process("inspect", run / "step_0.safetensors", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["checkpoint"] == str(run / "step_0.safetensors")
    assert "noise: fd 1 in the factory" in listed.stderr


def test_a_process_started_with_stderr_closed_does_its_work(tmp_path: Path) -> None:
    """`fdl analyze ... --json 2>&-` (a script's way of silencing it): Python starts with sys.stderr None, and the
    model file's import failed on it, exit 1 with nothing said; and the first file opened took file descriptor 2,
    where C code's messages (the model's fd 2 writes here) went into it: it was the store. Now the messages go
    nowhere, as `2>/dev/null` sends them, the records to stdout alone, the store whole. A process test: what the
    interpreter does with a closed descriptor at start-up."""
    run = _noisy_run(tmp_path)
    out = tmp_path / "run.h5"
    done = subprocess.run([sys.executable, "-m", "fdl_cli", "analyze", str(run), "--out", str(out), "--json"],
                          stdout=subprocess.PIPE, text=True, cwd=REPO, check=False,
                          preexec_fn=lambda: os.close(2))  # noqa: PLW1509 - the shell's 2>&-
    assert done.returncode == 0
    assert [json.loads(line)["step"] for line in done.stdout.splitlines()] == [0, 10], done.stdout
    with StoreReader(out) as reader:
        assert [record["step"] for record in reader.records()] == [0, 10]


def test_csv_piped_from_a_process_of_another_encoding_is_utf8(store: Path, tmp_path: Path) -> None:
    """stdout's encoding is the locale's: under an ASCII one (PYTHONIOENCODING=ascii, a C locale that Python does
    not coerce) a store named `störe.h5` was written `st\\xf6re.h5`, the notation of a byte that is no UTF-8, naming
    another file; under Latin-1 the CSV was Latin-1, which pandas' read_csv (UTF-8) refuses. Piped or redirected,
    the machine output is now UTF-8, as the files fdl writes (`--out`) are. A process test: the encoding is chosen
    as the interpreter starts."""
    named = tmp_path / "störe.h5"
    shutil.copy(store, named)
    done = subprocess.run([sys.executable, "-m", "fdl_cli", "classify", str(named), "--format", "csv"],
                          capture_output=True, cwd=REPO, check=False, env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode("utf-8"))))
    assert [row["store"] for row in rows] == [str(named)]
