"""Session 22's review items (tiny MLPs on the CPU). Each test failed before its fix.

- Under torchrun, the warnings said once a batch for every step at which a series' features, or the model's
  outputs, are constant (a dead ReLU layer) came once per rank ("rank 1: ... at step 30" beside rank 0's "at
  step 10"): each rank now sends its steps with its messages, and rank 0 says one warning naming every step,
  as one process does.
- `StoreReader`'s refusal of an unknown probe or layer, which only a Python caller meets, said "pass one of them
  as --probe" (--layer), flags of the commands; it now says probe= (layer=).
- usage.md said each figure names its series "as the HTML page's titles do": the page names it in the heading
  of the series' section, which it now says.
- --drop of a stored step that is not among this run's checkpoints said its file was "deleted or moved", and to
  "put the file back": a step left out of the paths given (on stdin, as FILES, by --steps) is neither.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.errors import StoreError
from fdl_cli.html import run_page
from fdl_cli.report import load_run
from fdl_cli.store import StoreReader
from tests.test_reliability_inputs import MODEL, SMALL, _weights
from tests.test_report import make_store
from tests.test_s16_docs import USAGE
from tests.test_s19_rank import _torchrun
from tests.test_s19_store import _run, fdl
from tests.test_s22_api import KEYS
from tests.test_s22_small import _dead
from tests.test_store import random_entry, write

torch.set_num_threads(1)


# ------------------------------------------------- torchrun: one warning of constant features naming every step


def test_under_torchrun_the_constant_features_warnings_name_every_rank_s_steps_at_once(tmp_path: Path) -> None:
    """Steps 10 (rank 0's block) and 30 (rank 1's) have a dead ReLU layer: zero features, so the outputs are
    the head's bias, constant too. Each warning was said twice, rank 1's prefixed "rank 1: ..."."""
    folder = tmp_path / "run"
    folder.mkdir()
    for index, step in enumerate((0, 10, 20, 30, 40)):
        state = _dead(index, "zero", 8) if step in (10, 30) else _weights(index)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    done = _torchrun("analyze", str(folder), "--model", MODEL, "--probe", str(probe), "-o", str(tmp_path / "s.h5"),
                     "--device", "cpu", *SMALL)
    err = " ".join(done.stderr.split())
    assert done.returncode == 0, err
    anchors = "probe/2:input: the features are constant over the anchor points (a dead layer?) at steps 10, 30: "
    outputs = "probe 'probe': the model's outputs are constant over the probe (a zero or constant head?) at steps 10, 30: "
    assert err.count(anchors) == 1 and err.count(outputs) == 1, err
    assert err.count("are constant over the") == 2, err


# -------------------------------------------------- StoreReader: an unknown probe or layer, in Python's keywords


def test_an_unknown_probe_or_layer_is_refused_in_the_python_api_s_keywords(tmp_path: Path) -> None:
    """Only a Python caller reaches these (the commands select with `report.select_series`): they asked for
    --probe / --layer, flags the caller has none of."""
    path = tmp_path / "run.h5"
    write(path, [random_entry(step, KEYS) for step in (1, 5)])
    with StoreReader(path) as reader:
        for selection, keyword in (({"probe": "nope"}, "probe="), ({"probe": "train", "layer": "nope"}, "layer=")):
            with pytest.raises(StoreError) as excinfo:
                reader.records(**selection)
            assert excinfo.value.fix == f"pass one of them as {keyword}", excinfo.value.fix


# ---------------------------------------------------------- usage.md: where the HTML page names a figure's series


def test_usage_md_says_where_the_html_page_names_the_series_as_the_page_does(tmp_path: Path) -> None:
    """usage.md said each figure names its series "as the HTML page's titles do": the page's figure titles do
    not (`figures.page_figures`), the heading of the series' section does."""
    said = re.search(r"as the HTML page names it in the heading of the\s+series' section \(`([^`]+)`\)", USAGE)
    assert said is not None
    page = html.unescape(run_page(load_run(make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))), with_figures=False))
    assert f"<h2>{said.group(1)}</h2>" in page, page[:2000]


# ------------------------------------------------ --drop of a step left out of the paths given on stdin


def test_drop_of_a_step_left_out_of_the_paths_on_stdin_does_not_say_its_file_was_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fdl analyze -` given steps 0 and 20 of a store of 0, 10, 20 (step 10's file where it was) and --drop 10:
    refused, saying step 10's file was "deleted or moved" and to "put the file back"."""
    folder, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    common = ["--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    assert fdl(capsys, "analyze", folder, *common)[0] == 0
    before = out.read_bytes()
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{folder / f'step_{s}.safetensors'}\n" for s in (0, 20))))
    status, stdout, err = fdl(capsys, "analyze", "-", *common, "--drop", "10")
    flat = " ".join(err.split())
    assert status == 1 and stdout == "" and "Traceback" not in err and out.read_bytes() == before, flat
    assert ("step 10's file is not among this run's checkpoints (deleted, moved, or left out of the files or steps "
            "given): the store keeps what it analysed of it, in its place; to analyse it again, put the file back "
            "among them and use --redo 10;") in flat, flat
