"""Small gaps closed: what `fdl analyze` says moved, what `fdl compare --json` carries, and where
`fdl classify --json` and `fdl report --json` agree.

1. The buffers compared with the reference's (the warning that features moved though no parameter before the layer
   did) included non-persistent ones (`register_buffer(..., persistent=False)`): with a weights-only checkpoint
   these come from the model code, not the file, so they cannot move between checkpoints; one the forward pass
   writes (a monitor of the last batch) was named as a cause; and each was copied once more on the device.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from tests.cli_run import fdl_in_process
from tests.test_report import make_store

torch.set_num_threads(1)

# ------------------------------------------------------------------ 1. non-persistent buffers

CACHED = """
import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("mask", torch.ones(n))
        # written by each forward pass (a monitor of the last batch's mean): in no state_dict
        self.register_buffer("seen", torch.zeros(n), persistent=False)

    def forward(self, x):
        self.seen.copy_(x.detach().mean(0))
        return x * self.mask


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.gate = Gate(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.gate(self.body(x)))


def build():
    return Net()
"""


def test_a_non_persistent_buffer_is_not_named_as_moved(tmp_path: Path) -> None:
    """Two weights-only checkpoints, the second with `gate.mask` changed and every parameter as it was: the features
    of head:input moved because of the mask alone. `gate.seen`, in no checkpoint, is written by each forward pass
    (the last batch's mean): the warning named it beside the mask, as if the file had changed it."""
    (tmp_path / "model.py").write_text(CACHED, encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(CACHED, namespace)  # noqa: S102 - the test's own model text
    torch.manual_seed(0)
    state = namespace["build"]().state_dict()  # type: ignore[operator]
    assert "gate.seen" not in state
    run = tmp_path / "run"
    run.mkdir()
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "step_0.safetensors"))
    state["gate.mask"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "step_10.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(60, 6)).astype(np.float32), y=rng.integers(0, 3, 60))
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          tmp_path / "probe.npz", "--out", tmp_path / "out.h5", "--layer", "head:input",
                          "--anchor-size", "32", "--top-k", "3")
    err = " ".join(done.stderr.split())
    assert done.returncode == 0, err
    assert "head:input: the features moved from the reference at step 10" in err, err
    assert "only buffers changed (gate.mask)" in err, err
    assert "gate.seen" not in err, err


# ------------------------------------------------------------------ 2. compare --json's refused steps

REFUSED = [{"step": 300, "path": "ckpt/step_300.pt", "kind": "weights",
            "reason": "tensor 'fc1.weight' (8, 4) holds NaN or Inf", "refused": "2026-01-01T00:00:00+00:00"}]


def test_compare_json_carries_each_sides_refused_steps_as_classify_does(tmp_path: Path) -> None:
    """Run A's step 300 was refused; run B records none. `compare --json` said so on stderr alone, so a script
    reading its object took run A as ending at step 200."""
    a, b = make_store(tmp_path / "a.h5"), make_store(tmp_path / "b.h5", seed=1)
    with h5py.File(a, "a") as handle:
        handle.attrs["refused"] = json.dumps(REFUSED)
    done = fdl_in_process("compare", a, b, "--json")
    assert done.returncode == 0, done.stderr
    compared = json.loads(done.stdout)
    classified = json.loads(fdl_in_process("classify", a, "--json").stdout)["refused_steps"]
    assert compared["refused_steps"] == {"a": classified, "b": None}, compared.get("refused_steps")
    assert [item["step"] for item in classified] == [300]

    clean = json.loads(fdl_in_process("compare", b, b, "--json").stdout)
    assert "refused_steps" not in clean  # no store records any: the object as it was


# ------------------------------------------------------------------ 3. CSV cells that look like formulas


def test_csv_writes_names_as_they_are_and_negative_numbers_as_numbers(tmp_path: Path) -> None:
    """Layers named `=SUM(1,2)` and `-b` (a model's module names) and a negative `param_dist_init`: the CSV holds
    the names unchanged (a script matches them against the model's) and the number as a number."""
    store = make_store(tmp_path / "run.h5", layers=("=SUM(1,2)", "-b"), scalars={100: {"d_lr": -0.25}})
    done = fdl_in_process("report", store, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {row["layer"] for row in rows} == {"=SUM(1,2)", "-b"}, rows
    assert {row["d_lr"] for row in rows if row["step"] == "100"} == {"-0.25"}, rows
    assert '"=SUM(1,2)"' in done.stdout  # quoted for its comma, as every text with one, and nothing added
