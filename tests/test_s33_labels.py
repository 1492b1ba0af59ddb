"""Class labels as other tools save them: a column of labels, a one-hot matrix of another width than the
model's outputs, ±1 labels, a probe saved as .npy arrays. Each is refused with what, where and the fix (exit 1,
no traceback), never read as other classes than the file's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from fdl_cli.errors import ProbeError
from fdl_cli.probes import load_probe
from tests.cli_run import fdl_in_process
from tests.test_reliability_inputs import MODEL, SMALL, _weights

N = 24


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One checkpoint of a 4-8-n_out MLP for n_out 1 and 3 (each refusal comes before any checkpoint is read)."""
    root = tmp_path_factory.mktemp("labels")
    folders = {}
    for n_out in (1, 3):
        folder = root / f"out{n_out}"
        folder.mkdir()
        save_file(_weights(0, n_out=n_out), str(folder / "step_0.safetensors"))
        folders[n_out] = folder
    return folders


def _analyze(folder: Path, n_out: int, y: np.ndarray, tmp_path: Path) -> tuple[int, str, Path]:
    x = np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32)
    probe, out = tmp_path / "probe.npz", tmp_path / "run.h5"
    np.savez(probe, x=x, y=y)
    done = fdl_in_process(
        "analyze",
        folder,
        "--model",
        MODEL,
        "--model-kwargs",
        f'{{"n_out": {n_out}}}',
        *SMALL,
        "--device",
        "cpu",
        "--probe",
        probe,
        "-o",
        out,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, " ".join(done.stderr.split()), out


def test_a_column_of_ones_is_refused_not_read_as_class_0(runs: dict[int, Path], tmp_path: Path) -> None:
    """Integer labels in a column, (n, 1), all 1 (a probe of the positive class): read as a one-hot matrix of
    one column, they became class 0 in every row, the opposite class, with no word said."""
    code, err, out = _analyze(runs[1], 1, np.ones((N, 1), np.int64), tmp_path)
    assert code == 1 and not out.exists(), err
    assert "integer 'y' of shape (24, 1): one label per sample, in a column" in err, err
    assert "save the labels as a vector, shape (n,): y = y[:, 0]" in err, err


def test_a_boolean_column_of_true_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, x=np.zeros((5, 2), np.float32), y=np.ones((5, 1), bool))
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    assert "boolean 'y' of shape (5, 1): one label per sample, in a column" in raised.value.message


def test_an_integer_one_hot_of_another_width_than_the_outputs_is_refused(runs: dict[int, Path], tmp_path: Path) -> None:
    """An integer one-hot matrix of 2 columns for a model of 3 outputs said 2 classes, and was read as labels of
    3 classes, where a float one of 2 columns is refused: the width says it is another model's probe."""
    labels = np.arange(N) % 2
    code, err, out = _analyze(runs[3], 3, np.eye(2, dtype=np.int64)[labels], tmp_path)
    assert code == 1 and not out.exists(), err
    assert "'y' is a one-hot matrix of 2 columns (classes) but the model has 3 outputs" in err, err
    assert "save y.argmax(1)" in err, err


def test_a_one_hot_of_two_columns_is_a_binary_classifier_s(runs: dict[int, Path], tmp_path: Path) -> None:
    """Of a model of one output, a one-hot of 2 columns are the binary classifier's two classes (C = 2)."""
    labels = np.arange(N) % 2
    code, err, out = _analyze(runs[1], 1, np.eye(2, dtype=np.int64)[labels], tmp_path)
    assert code == 0 and "analysed as a binary classifier" in err, err


def test_plus_minus_one_labels_get_their_conversion(runs: dict[int, Path], tmp_path: Path) -> None:
    code, err, _ = _analyze(runs[1], 1, np.where(np.arange(N) % 2 == 0, -1, 1), tmp_path)
    assert code == 1 and "'y' holds a negative class label (-1 at 0)" in err, err
    assert "labels -1 and +1 (a binary ±1 encoding): save y = (y > 0).astype(np.int64)" in err, err


def test_a_probe_of_npy_files_gets_the_savez_that_joins_them(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 2), np.float32))
    with pytest.raises(ProbeError) as raised:
        load_probe(path)
    assert "np.savez('probe.npz', x=np.load('x.npy'), y=np.load('y.npy'))" in raised.value.fix


def test_soft_labels_are_said_to_be_analysed_as_regression_targets(runs: dict[int, Path], tmp_path: Path) -> None:
    """Rows of class probabilities (soft labels, distillation targets) were analysed as regression targets of the
    logits with no word: r2 far below 0 for a good classifier, and no accuracy."""
    soft = np.random.default_rng(3).random((N, 3))
    code, err, out = _analyze(runs[3], 3, soft / soft.sum(axis=1, keepdims=True), tmp_path)
    assert code == 0 and out.exists(), err
    assert "warning: probe 'probe': each row of y lies in [0, 1] and sums to 1: soft labels (class probabilities)?" in err
    assert "to analyse classes save integer labels: y = y.argmax(1)" in err, err
