"""A binary classifier of one logit z (trained with BCEWithLogitsLoss) on a probe of 0/1 labels: it was
refused ("class label 1 but the model has 1 output"). It is the two-class classifier of logits (0, z)
(softmax((0, z)) = (1 − σ(z), σ(z))), and fdl analyses it as one: by construction its records equal
those of a two-output model whose first logit is 0, its accuracy thresholds z at 0 and its
cross-entropy is BCE-with-logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter
from tests.cli_run import model_file

MODEL = """
import torch
from torch import nn


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 16)
        self.act = nn.Tanh()
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


class Two(One):
    '''The same network and weights, with the logits (0, z) of the two classes.'''

    def forward(self, x):
        z = super().forward(x)
        return torch.cat([torch.zeros_like(z), z], 1)


def one():
    return One()


def two():
    return Two()
"""


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    module = model_file(tmp_path, MODEL)
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.manual_seed(0)
    network = module.one()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    optimiser = torch.optim.SGD(network.parameters(), lr=0.5)
    for step in range(0, 41):
        if step % 20 == 0:
            torch.save({"model": network.state_dict(), "step": step}, runs / f"ckpt_{step}.pt")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            network(torch.from_numpy(x))[:, 0], torch.from_numpy(y).float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=x, y=y)
    with torch.no_grad():
        network.load_state_dict(torch.load(runs / "ckpt_40.pt")["model"])
        z = network(torch.from_numpy(x))[:, 0].double().numpy()
    return runs, probe, y, z


def _records(path: Path) -> list[dict]:
    with StoreReader(path) as reader:
        return reader.records()


def test_a_one_logit_model_on_0_1_labels_is_the_two_class_model_of_logits_0_z(
    tmp_path: Path, run: tuple[Path, Path, np.ndarray, np.ndarray]
) -> None:
    runs, probe, y, z = run
    model = tmp_path / "model.py"
    one = fdl("analyze", runs, "--model", f"{model}:one", "--probe", probe, "-o", tmp_path / "one.h5")
    assert one.returncode == 0, one.stderr
    assert ("note: the model has one output and the probe's labels are 0/1: analysed as a binary classifier whose "
            "logit z gives the class probabilities softmax((0, z)) = (1 − σ(z), σ(z))") in one.stderr
    two = fdl("analyze", runs, "--model", f"{model}:two", "--probe", probe, "-o", tmp_path / "two.h5")
    assert two.returncode == 0, two.stderr
    assert "binary classifier" not in two.stderr
    binary, explicit = _records(tmp_path / "one.h5"), _records(tmp_path / "two.h5")
    assert [record["step"] for record in binary] == [0, 20, 40]
    for left, right in zip(binary, explicit, strict=True):
        assert {k: v for k, v in left.items() if k not in ("path", "sha256")} == \
            {k: v for k, v in right.items() if k not in ("path", "sha256")}
    last = binary[-1]
    assert last["n_outputs"] == 2
    # by hand, from the logit of the last checkpoint
    assert last["accuracy"] == pytest.approx(np.mean((z > 0) == (y == 1)), abs=0)
    bce = np.mean(np.logaddexp(0.0, z) - y * z)
    assert last["cross_entropy"] == pytest.approx(bce, rel=1e-9)
    assert last["accuracy"] > binary[0]["accuracy"]  # it learned
    with StoreReader(tmp_path / "one.h5") as reader:
        assert reader.provenance["options"]["binary_logit"] is True
    # the same store resumes, and the same checkpoints verdict alike
    again = fdl("analyze", runs, "--model", f"{model}:one", "--probe", probe, "-o", tmp_path / "one.h5")
    assert again.returncode == 0, again.stderr
    assert "0 checkpoints analysed, 3 already in the store" in again.stderr
    verdicts = [fdl("classify", tmp_path / name, "--json").stdout for name in ("one.h5", "two.h5")]
    assert verdicts[0] == verdicts[1] and '"regime"' in verdicts[0]


def test_a_regression_probe_beside_the_labels_is_refused(
    tmp_path: Path, run: tuple[Path, Path, np.ndarray, np.ndarray]
) -> None:
    runs, probe, y, _ = run
    targets = tmp_path / "targets.npz"
    np.savez(targets, x=np.load(probe)["x"], y=y.astype(np.float32))
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:one", "--probe", f"labels={probe}",
                 "--probe", f"scores={targets}", "-o", tmp_path / "run.h5")
    assert result.returncode == 1
    assert ("error: probe 'scores' holds regression targets, but the model's one output is analysed as a binary "
            "classifier's logit for the 0/1 labels of probe 'labels'") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run.h5").exists()
    # alone, float 0/1 targets are still a regression on the logit
    alone = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:one", "--probe", targets, "-o", tmp_path / "r.h5")
    assert alone.returncode == 0, alone.stderr
    assert _records(tmp_path / "r.h5")[-1]["n_outputs"] == 1


def test_labels_of_more_than_two_classes_for_one_output_are_still_refused(
    tmp_path: Path, run: tuple[Path, Path, np.ndarray, np.ndarray]
) -> None:
    runs, probe, y, _ = run
    np.savez(probe, x=np.load(probe)["x"], y=np.arange(len(y)) % 3)
    result = fdl("analyze", runs, "--model", f"{tmp_path / 'model.py'}:one", "--probe", probe, "-o", tmp_path / "r.h5")
    assert result.returncode == 1
    assert f"error: the probe {probe} (probe) has class label 2 but the model has 1 output" in result.stderr
