"""Session 22, adversarial review of the day's merges (h_s22_rev2).

- fdl.toml: a probe name refused as --probe's, whose path holds '{' or '}' (`"my probe=runs/{a}.npz"`), was a
  ValueError/KeyError traceback: the fix's example was filled in with str.format, the path part of its template.
- `--drop 0` of the store's reference whose file is gone said to put it back and `--redo 0`, which is refused.
- `fdl inspect` listed a safetensors file's tensors in text order: h.10 and h.11 between h.1 and h.2.
- FDL_TORCHRUN_TIMEOUT=1e10 made torch's rendezvous give up at once (its clocks overflow); 1e15 was a traceback.
- `fdl inspect` called an nn.ModuleList `not called` and sent the user to the block around it.
- A negative token id (a padding of -100) was hinted at with the row of the highest id, which fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import read_manifest
from fdl_cli.errors import FdlError
from tests.cli_run import model_file
from tests.test_analyze import fdl as run_fdl
from tests.test_reliability_inputs import MODEL, SMALL
from tests.test_s19_store import _run, fdl
from tests.test_s22_user import TOKENS
from tests.test_s22_user import _run as _token_run


@pytest.mark.parametrize(("probe", "fix"), [
    ('"my probe=a{1}.npz"', 'probe = "my_probe=a{1}.npz"'),
    ('["my probe=runs/{x}/a.npz"]', 'probe = "my_probe=runs/{x}/a.npz"'),
    ('{ "my probe" = "a{x}.npz" }', 'probe = { my_probe = "a{x}.npz" }'),
    ('{ "2nd" = "{}.npz" }', 'probe = { _2nd = "{}.npz" }'),
])
def test_fdl_toml_probe_name_refused_with_braces_in_its_path(tmp_path: Path, probe: str, fix: str) -> None:
    manifest = tmp_path / "fdl.toml"
    manifest.write_text(f"probe = {probe}\n", encoding="utf-8")
    with pytest.raises(FdlError) as raised:
        read_manifest(tmp_path)
    assert "the probe name" in raised.value.what
    assert raised.value.fix == f"e.g. {fix} in {manifest}"


def test_drop_of_the_stores_reference_whose_file_is_gone_names_no_redo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's reference (step 0) deleted, then `--drop 0`: this run's first checkpoint (step 10) is its
    reference, so step 0 was taken for an ordinary step and the fix said "put the file back and use --redo 0",
    which --redo refuses (step 0 is the store's reference). It names the reference: restored, the store resumes;
    analysed again, only with --overwrite."""
    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    assert fdl(capsys, "analyze", *common)[0] == 0
    (folder / "step_0.safetensors").unlink()
    before = out.read_bytes()
    status, stdout, err = fdl(capsys, "analyze", *common, "--drop", "0")
    flat = " ".join(err.split())
    assert status == 1 and stdout == "" and "Traceback" not in err and out.read_bytes() == before, flat
    assert "--redo 0" not in flat, flat
    assert ("step 0 is the store's reference, whose file is not among this run's checkpoints (deleted, moved, or "
            "left out of the files or steps given): put it back among them to resume the store; to analyse it again, "
            "re-analyse everything with --overwrite (or another --out)") in flat, flat


def test_inspect_lists_safetensors_blocks_in_number_order(tmp_path: Path) -> None:
    """`fdl inspect` lists a safetensors file's tensors by name (it keeps no writer's order): in text order a
    12-block model's h.10 and h.11 came between h.1 and h.2; the numbers in a name now count as numbers."""
    state = {f"h.{block}.{part}": torch.zeros(2) for block in range(12) for part in ("mlp.weight", "attn.weight")}
    state["wte.weight"] = torch.zeros(3, 2, dtype=torch.float16)
    path = tmp_path / "step_5.safetensors"
    save_file(state, str(path))
    done = run_fdl("inspect", path, "--json")
    assert done.code == 0 and "note: no model was given" in done.stderr, done.stderr
    names = [row["name"] for row in json.loads(done.stdout)["tensors"]]
    assert names == [f"h.{block}.{part}" for block in range(12) for part in ("attn.weight", "mlp.weight")] + [
        "wte.weight"]


@pytest.mark.parametrize("huge", ["1e10", "99999999999999999", "1e15"])
def test_a_torchrun_wait_too_long_for_torchs_clocks_is_refused(huge: str) -> None:
    """FDL_TORCHRUN_TIMEOUT set very large, to mean "never give up": 1e10 s overflowed the C++ clocks of torch's
    rendezvous, which then gave up at once ("The client socket has timed out after 10000000000000ms", measured
    with gloo), and 1e15 s was an OverflowError traceback of datetime.timedelta. Refused in words, naming the most
    fdl takes."""
    from fdl_cli import distributed

    with pytest.raises(FdlError) as caught:
        distributed.wait_seconds({"FDL_TORCHRUN_TIMEOUT": huge})
    assert caught.value.what == "FDL_TORCHRUN_TIMEOUT is longer than a rank can wait: at most 1000000000 s (about 31 years)"
    assert caught.value.got == f"FDL_TORCHRUN_TIMEOUT={huge!r}"
    assert caught.value.alike == "machine"
    assert distributed.wait_seconds({"FDL_TORCHRUN_TIMEOUT": "1e9"}) == 1e9


BLOCKS = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def build():
    torch.manual_seed(0)
    return nn.Sequential(Block(), nn.Linear(4, 3))
'''


def test_inspect_does_not_call_a_module_list_not_called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nn.ModuleList (GPT-2's transformer.h, BERT's encoder.layer) is never called, its modules are: `fdl
    inspect` listed it as `not called` and said to take the output of the block around it, `--layer 0`, as if the
    forward pass had used its weights without calling them. A container's row says so, and no line follows."""
    monkeypatch.setenv("COLUMNS", "1000")
    module = model_file(tmp_path, BLOCKS)
    checkpoint = tmp_path / "ckpt_1.pt"
    torch.save(module.build().state_dict(), checkpoint)
    done = run_fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build")
    assert done.code == 0, done.stderr
    row = next(line for line in done.stderr.splitlines() if "0.layers " in line)
    assert "ModuleList" in row and "container" in row and "not called" not in row, done.stderr
    assert "not called" not in done.stderr and "--layer 0 " not in done.stderr, done.stderr
    # --json as before: a container has no output shape
    done = run_fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build", "--json")
    rows = {row["name"]: row for row in json.loads(done.stdout)["modules"]}
    assert rows["0.layers"]["output_shape"] is None and rows["0.layers.1"]["output_shape"] == [1, 4]


def test_a_later_rows_negative_token_id_names_its_row_and_that_ids_start_at_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids padded with -100 (the labels' ignore index, reused for the inputs) in a later row: the hint named the
    row of the highest id, one that fits, and said only to keep ids below the vocabulary size, which they were."""
    monkeypatch.setenv("COLUMNS", "1000")
    x = np.random.default_rng(0).integers(0, 11, (20, 6))
    x[:, 0] = np.arange(20) % 11  # the highest id, 10, in row 10 first
    x[13, 4] = -100
    run, probe = _token_run(tmp_path, x)
    done = run_fdl("analyze", run, "--model", TOKENS, "--probe", probe, "--out", tmp_path / "s.h5")
    flat = " ".join(done.stderr.split())
    assert done.code == 1 and "Traceback" not in flat, flat
    assert ("x holds token ids from -100 to 10 (the lowest at probe row 13), in sequences of 6; the model's "
            "nn.Embedding tables: embed 11 rows: an nn.Embedding takes ids from 0 to its number of rows − 1, so a "
            "negative id (a padding of -100 or -1) is none: pad with an id of the vocabulary") in flat, flat
    assert "probe row 10" not in flat, flat
