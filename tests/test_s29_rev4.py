"""A review of `fdl classify STORE...`, the frozen-copy warning and compare's movement thresholds.

- The sweep's table did not say which probe and layer each row measured: stores analysed at different layers (or
  holding other series) read as one sweep of the same measure.
- A store name with a newline (a glob expands whatever names a folder holds) split its row over two lines.
- The frozen-copy warning fired for a fixed (frozen) readout whose hidden layer is as wide as the outputs, and sent
  the user to that hidden layer's input: the raw inputs.
- Compare called a run "a lazy (coefficient) run" ("moved": false) that classify calls undetermined: static at
  the matched steps, a conflict (or no measure) at a checkpoint the other run does not match.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.cli_run import fdl_in_process, model_file
from tests.test_report import make_store
from tests.test_s29_rev2 import _store  # a store of given steps with given columns of scalars

LAZY = "a lazy (coefficient) run"


def _rows(err: str, stores: list[Path]) -> list[str]:
    """The table's lines that begin with one of `stores`' names (as the table shows them)."""
    return [line for line in err.splitlines() if any(line.startswith(str(store)) for store in stores)]


def test_sweep_table_says_the_layer_of_each_row_where_the_stores_differ(tmp_path: Path) -> None:
    first = make_store(tmp_path / "alpha_1.h5", layers=("fc1",))
    second = make_store(tmp_path / "alpha_2.h5", layers=("fc2",))
    done = fdl_in_process("classify", first, second)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stderr, [first, second])
    assert len(rows) == 2 and " fc1 " in rows[0] and " fc2 " in rows[1], done.stderr
    header = next(line for line in done.stderr.splitlines() if line.startswith("store"))
    assert header.split()[:4] == ["store", "regime", "probe", "layer"]


def test_sweep_table_says_the_series_once_where_every_row_has_the_same(tmp_path: Path) -> None:
    first = make_store(tmp_path / "alpha_1.h5", layers=("fc1", "fc2"))
    second = make_store(tmp_path / "alpha_2.h5", layers=("fc1",))
    done = fdl_in_process("classify", first, second)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert "every row: probe train, layer fc1" in said, said
    # the store that holds another series says so, as one store's header does
    assert f"{first} holds 1 other series: choose with --probe/--layer" in said, said


def test_a_store_name_with_a_newline_keeps_its_row_on_one_line(tmp_path: Path) -> None:
    odd = make_store(tmp_path / "alpha\n1.h5")
    plain = make_store(tmp_path / "alpha_2.h5")
    done = fdl_in_process("classify", odd, plain, plain, "--expect", "MF")
    assert done.returncode == 3
    shown = str(odd).replace("\n", "\\x0a")
    lines = done.stderr.splitlines()
    assert sum(line.startswith(shown + " ") for line in lines) == 1, done.stderr
    assert not any(line.startswith("1.h5") for line in lines), done.stderr
    assert f"stores differ: {shown} (" in done.stderr
    # csv is for a program: the name as it is, quoted
    done = fdl_in_process("classify", odd, plain, "--format", "csv")
    assert done.returncode == 0
    assert [row["store"] for row in csv.DictReader(io.StringIO(done.stdout))] == [str(odd), str(plain)]


FIXED_READOUT = '''
import torch
from torch import nn


class FixedReadout(nn.Module):
    """A trained hidden layer as wide as the outputs under a fixed (frozen) random readout, scaled."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 3)
        self.readout = nn.Linear(3, 3).requires_grad_(False)

    def forward(self, x):
        return self.readout(torch.relu(self.hidden(x))) / 3


def build():
    return FixedReadout()
'''


def test_a_frozen_readout_fed_by_a_layer_of_the_outputs_width_is_not_called_a_frozen_copy(tmp_path: Path) -> None:
    import torch

    model = model_file(tmp_path, FIXED_READOUT).build()
    torch.save(model.state_dict(), tmp_path / "step_0.pt")
    shown = fdl_in_process("inspect", tmp_path / "step_0.pt", "--model", f"{tmp_path / 'model.py'}:build")
    assert shown.returncode == 0, shown.stderr
    said = " ".join((shown.stdout + shown.stderr).split())
    assert "readout:input" in said
    assert "default feature layer: readout:input" in said
    assert "hidden:input" not in said and "parameters are frozen" not in said, said  # (tmp_path's name has "frozen")


def _compared(a: Path, b: Path) -> dict:
    done = fdl_in_process("compare", a, b, "--no-overlap", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _regime(store: Path) -> str:
    done = fdl_in_process("classify", store, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["regime"]


@pytest.mark.parametrize(("cka", "overlap"), [(1.0, 0.5), (None, None)])
def test_a_run_unsettled_where_the_other_has_no_checkpoint_is_not_called_lazy(tmp_path: Path, cka: float | None,
                                                                             overlap: float | None) -> None:
    # static at steps 0-200, which both runs have; at step 300, which B lacks, a conflict (CKA static, the
    # eigenspace rotated) or no measure: classify calls A undetermined, not coefficient
    longer = _store(tmp_path / "longer.h5", 3, {"d_lr": [0.9, 0.6, 0.4, 0.3], "cka_init": [1.0, 1.0, 1.0, cka],
                                                "overlap_init": [1.0, 1.0, 1.0, overlap]}, steps=(0, 100, 200, 300))
    moved = _store(tmp_path / "moved.h5", 5, {"d_lr": [0.3, 0.2, 0.1], "cka_init": [1.0, 0.5, 0.4],
                                              "overlap_init": [1.0, 0.4, 0.3]})
    assert _regime(longer) == "undetermined"
    data = _compared(longer, moved)
    assert data["moved"] == {"a": None, "b": True}
    verdict = data["verdict"]
    assert LAZY not in verdict and "A did not" not in verdict, verdict
    assert "Run A's features did not move at the matched steps" in verdict
    assert "at step 300, which no checkpoint of B matches" in verdict, verdict
