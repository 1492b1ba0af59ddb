"""A researcher new to fdl (session 24): a small MLP on scikit-learn's digits, checkpoints saved the usual ways,
and the mistakes a first try makes; each papercut met fails here before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tests.cli_run import model_file
from tests.test_analyze import fdl

MLP = """
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


def build(hidden=8):
    return MLP(hidden)


def sequential(hidden=8):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long messages at 80 columns otherwise


def _digits(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.data[:n] / 16).astype(np.float32), digits.target[:n]


def _run(tmp_path: Path) -> Path:
    """Three checkpoints of the MLP, `torch.save(model.state_dict(), f"ckpts/epoch_{e}.pt")`, and model.py."""
    module = model_file(tmp_path, MLP)
    run = tmp_path / "ckpts"
    run.mkdir()
    for epoch in range(3):
        torch.manual_seed(epoch)
        torch.save(module.build().state_dict(), run / f"epoch_{epoch}.pt")
    return run


def _analyze(tmp_path: Path, run: Path, probe: Path, *more: object) -> tuple[object, Path]:
    out = tmp_path / "run.h5"
    done = fdl("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe, "--out", out, *more)
    return done, out


def test_sklearn_target_key_is_read_as_the_labels(tmp_path: Path) -> None:
    """np.savez(probe, data=bunch.data, target=bunch.target), scikit-learn's own names: `data` was read as the
    inputs, `target` was not read (a note spoke of a model of several inputs), and the run was analysed without
    labels: no accuracy, no loss, no Π*. `target` is now a name of y."""
    run = _run(tmp_path)
    x, y = _digits()
    probe = tmp_path / "probe.npz"
    np.savez(probe, data=x, target=y)
    done, out = _analyze(tmp_path, run, probe)
    assert done.code == 0, done.stderr
    assert "not read" not in done.stderr
    report = fdl("report", out, "--format", "csv")
    header, *rows = report.stdout.splitlines()
    accuracy = header.split(",").index("accuracy")
    assert len(rows) == 3 and all(row.split(",")[accuracy] != "" for row in rows)


def test_labels_under_another_name_are_said_to_be_unread_targets(tmp_path: Path) -> None:
    """np.savez(probe, x=X_test, y_test=y_test): the labels were left unread with a note that fdl gives the model
    'x' alone (a model of several inputs), and the run analysed without targets; a warning now says the probe
    has no targets, that y_test (a value a sample) may be them, and how to save them."""
    run = _run(tmp_path)
    x, y = _digits()
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y_test=y, mean=x.mean(0))
    done, _ = _analyze(tmp_path, run, probe)
    assert done.code == 0, done.stderr
    assert (f"warning: probe 'probe' ({probe}) has no targets under the names fdl reads (y, targets, labels, Y, "
            "label, target): y_test, one value a sample, is not read; if it holds the targets, save it as y: "
            "np.savez(FILE, x=x, y=y_test)") in done.stderr
    assert "accuracy, the loss and the quality Π* need targets" in done.stderr
    assert f"note: probe 'probe' ({probe}): not read: mean; fdl gives the model 'x' alone" in done.stderr


def test_an_attention_mask_beside_unlabelled_token_ids_is_no_unread_target(tmp_path: Path) -> None:
    """The warning over unread targets is for arrays of one value a sample; a mask of the inputs' own shape is a
    second input, of which the note says what it said."""
    from fdl_cli.probes import load_probe, unread_targets_warning, unused_note

    probe = tmp_path / "tokens.npz"
    np.savez(probe, input_ids=np.ones((6, 5), np.int64), attention_mask=np.ones((6, 5), np.int64))
    loaded = load_probe(probe)
    assert unread_targets_warning(loaded) is None
    assert unused_note(loaded) == (f"probe 'probe' ({probe}): not read: attention_mask; fdl gives the model "
                                   "'input_ids' alone, forward(x) (a model of several inputs: docs/usage.md, Probe)")


def test_a_model_class_of_other_module_names_is_said_so(tmp_path: Path) -> None:
    """Weights of the training script's MLP (modules fc1, head) into an nn.Sequential of the same sizes (0, 2):
    the fix said "the sizes in the checkpoint say which width/depth it was", of sizes that all agree; it now
    says the shapes fit under other names, and names both sets of modules."""
    run = _run(tmp_path)
    x, y = _digits()
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y=y)
    out = tmp_path / "run.h5"
    done = fdl("analyze", run, "--model", f"{tmp_path / 'model.py'}:sequential", "--probe", probe, "--out", out)
    assert done.code == 1 and "Traceback" not in done.stderr
    assert ("fix: wrong --model? the file's tensors have the model's shapes under other names (the file's modules: "
            "fc1, head; the model's: 0, 2): the factory builds another class than the one whose weights were saved; "
            "build that one (the training script's), whose modules are fc1, head") in done.stderr
    assert "width/depth" not in done.stderr
    assert not out.exists()


def test_a_model_that_fdl_toml_names_is_not_called_model_of_the_flag(tmp_path: Path) -> None:
    """The run's fdl.toml names the model (no --model given) and its weights do not fit: the error said "the
    model built by --model" and "wrong --model or --model-kwargs?"; it now names the fdl.toml's model and
    where to fix it."""
    run = _run(tmp_path)
    (run / "model.py").write_text(MLP, encoding="utf-8")
    x, y = _digits()
    np.savez(run / "probe.npz", x=x, y=y)
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\nmodel_kwargs = { hidden = 16 }\n',
                                  encoding="utf-8")
    out = tmp_path / "run.h5"
    done = fdl("analyze", run, "--out", out)
    assert done.code == 1 and "Traceback" not in done.stderr
    toml = run / "fdl.toml"
    assert f"do not fit the model built by {toml}'s model (model.py:build)" in done.stderr
    assert (f"fix: wrong model or model_kwargs in {toml}? (the sizes in the checkpoint say which width/depth it "
            "was); fix it there, or give --model (and --model-kwargs), which overrides it") in done.stderr
    assert "--model or --model-kwargs?" not in done.stderr
    assert not out.exists()
    # a later checkpoint of another width, among the run's: its fix names the fdl.toml as well
    (run / "fdl.toml").write_text('model = "model.py:build"\nprobe = "probe.npz"\n', encoding="utf-8")
    torch.save(model_file(tmp_path, MLP).build(16).state_dict(), run / "epoch_7.pt")
    done = fdl("analyze", run, "--out", out)
    assert done.code == 1 and "3 checkpoints analysed, 1 failed" in done.stderr
    assert f"or, if it is the run's, check the model and model_kwargs in {toml}" in done.stderr


def test_the_report_of_a_probe_without_targets_says_why_acc_and_loss_are_blank(tmp_path: Path) -> None:
    """A probe of x alone: the table's acc and loss columns are — at every checkpoint while the key below it
    explained loss as the error "against the one-hot labels (or targets)", of labels there are none; a line
    now says the probe has no targets, what that leaves unmeasured and what the regime reads."""
    run = _run(tmp_path)
    x, _ = _digits()
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x)
    done, out = _analyze(tmp_path, run, probe)
    assert done.code == 0, done.stderr
    line = ("probe 'probe' has no targets (no y): accuracy, the loss, r2 and the quality Π* are not measured (null "
            "in the records); the spectrum, the utility Π̂, D_LR, CKA, the overlaps and the regime do not read targets")
    report = fdl("report", out)
    assert report.code == 0 and line in report.stderr.splitlines()
    classify = fdl("classify", out)
    assert classify.code == 0 and line in classify.stderr.splitlines()
