"""Review of this round's changes: a terminal whose encoding has the table rule "─" but not the other glyphs, a
missing store under a folder whose name holds "[", and a module whose name starts with "lora_"."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

from tests.cli_run import fdl_in_process
from tests.test_io_fixes import _run_on_ascii_streams
from tests.test_report import make_store
from tests.test_s32_term import _ends, _table


def test_a_koi8_terminal_keeps_the_headers_over_their_columns(tmp_path: Path) -> None:
    # KOI8-R (a Russian locale) has box drawing, so the rule "─" is written as it is, but not "Π̂" or "ρ": those
    # headers are written "Pi^(C)", "D_rho" and must be measured so
    store = make_store(tmp_path / "run.h5")
    code, _, err = _run_on_ascii_streams("report", str(store), encoding="koi8-r")
    assert code == 0, err
    header, _, row = _table(err, "step")
    assert "Pi^(C)" in header and "D_rho" in header, header
    assert _ends(header)[:-1] == _ends(row)[:-1], f"{header}\n{row}"


def test_a_line_cut_at_an_ascii_terminals_edge_fits_it_with_its_ellipsis(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # a narrow terminal cuts a row wider than it with "…", written "..." on ASCII: two characters more than the
    # terminal has, so each cut row wrapped onto a second line
    from rich.console import Console

    from fdl_cli.errors import PLAIN
    from fdl_cli.report import PlainTable

    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors=PLAIN)
    monkeypatch.setattr(sys, "stderr", err)
    table = PlainTable.fitted(["step", "store"], ["right", "left"], [["100", "runs/" + "x" * 40 + ".h5"]],
                              max_width=24, always=2)
    Console(file=err, width=24, force_terminal=True, color_system=None).print(table)
    err.flush()
    lines = err.buffer.getvalue().decode("ascii").splitlines()  # type: ignore[attr-defined]
    assert lines[2].endswith("...") and "100   runs/xxx" in lines[2], lines
    assert max(len(line) for line in lines) == 24, lines


def test_a_missing_store_in_a_folder_whose_name_holds_a_bracket_is_not_called_a_pattern(tmp_path: Path) -> None:
    # "exp[seed=1]" is a folder that exists (as written: no shell pattern matched nothing there): its store is
    # missing because the run was not analysed yet, so the fix is fdl analyze's, not "check the pattern"
    folder = tmp_path / "exp[seed=1]"
    folder.mkdir()
    done = fdl_in_process("report", folder / "run.h5")
    assert done.returncode == 1, done.stderr
    assert "no file matches this pattern" not in done.stderr, done.stderr
    assert "fix: run `fdl analyze CKPT_DIR --out" in done.stderr, done.stderr
    # a pattern below that folder is still one
    done = fdl_in_process("report", folder / "*.h5")
    assert "got: no file matches this pattern" in done.stderr, done.stderr


def test_a_module_named_lora_something_is_no_adapter(tmp_path: Path) -> None:
    # a gate that happens to be called "lora_gate" (no LoRA tensor: lora_A/B, lora_down/up...) in a model that
    # does not fit the file: the older "wrong --model" message, not one about LoRA adapters
    from tests.test_s32_finetune import _probe, _run

    model = tmp_path / "gated.py"
    model.write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, deep=False, gate=True):\n"
        "        super().__init__()\n"
        "        self.body = nn.Linear(4, 8)\n"
        "        self.lora_gate = nn.Linear(8, 8) if gate else None\n"
        "        self.more = nn.Linear(8, 8) if deep else None\n"
        "        self.head = nn.Linear(8, 3)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n"
        "def build(deep=False, gate=True):\n"
        "    return Net(deep, gate)\n")
    def state(*names: str) -> dict[str, torch.Tensor]:
        sizes = {"body": (8, 4), "lora_gate": (8, 8), "head": (3, 8)}
        return {f"{name}.{kind}": torch.zeros(sizes[name] if kind == "weight" else sizes[name][:1])
                for name in names for kind in ("weight", "bias")}

    for name, kwargs, file in (("deeper", '{"deep": true}', state("body", "lora_gate", "head")),
                               ("ungated", "{}", state("body", "head"))):
        done = fdl_in_process("analyze", _run(tmp_path, name, file), "--model", f"{model}:build",
                              "--model-kwargs", kwargs, "--probe", _probe(tmp_path), "--out", tmp_path / f"{name}.h5")
        said = " ".join(done.stderr.split())
        assert done.returncode == 1 and "LoRA" not in said and "wrong --model or --model-kwargs?" in said, said


def test_a_part_that_two_twin_modules_fit_names_both(tmp_path: Path) -> None:
    # a distillation model holds a student and a teacher of one shape; a file of one of them alone (its keys
    # without the prefix) fits both: the message named one of them, which one as the hash seed fell
    from tests.test_s32_finetune import _probe, _run

    model = tmp_path / "twins.py"
    model.write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.student = nn.Linear(4, 3)\n"
        "        self.teacher = nn.Linear(4, 3)\n"
        "    def forward(self, x):\n"
        "        return self.student(x)\n"
        "def build():\n"
        "    return Net()\n")
    file = {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    done = fdl_in_process("analyze", _run(tmp_path, "run", file), "--model", f"{model}:build",
                          "--probe", _probe(tmp_path), "--out", tmp_path / "out.h5")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, said
    assert ("the file holds the weights of the model's student or teacher alone (its keys without 'student.' or "
            "'teacher.')") in said, said


LORA_NET = """
import torch
from torch import nn


class LoRA(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(torch.zeros(2, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, 2))

    def forward(self, x):
        return self.base_layer(x) + x @ self.lora_A.T @ self.lora_B.T


class Net(nn.Module):
    def __init__(self, deep=False):
        super().__init__()
        self.a = LoRA(nn.Linear(4, 8))
        self.b = LoRA(nn.Linear(8, 8)) if deep else None
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.a(x)
        return self.head(x if self.b is None else self.b(x))


def build(deep=False):
    return Net(deep)
"""


def test_a_model_with_adapters_one_layer_deeper_than_the_file_is_the_wrong_model(tmp_path: Path) -> None:
    # model and file both hold adapters, named alike; the model has a layer the file lacks (adapters and all): a
    # wrong --model-kwargs, not "adapters without the base weights they adapt"
    from tests.test_s32_finetune import _probe, _run

    (tmp_path / "lora_net.py").write_text(LORA_NET, encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(LORA_NET, namespace)  # noqa: S102 - the test's own model text
    file = namespace["build"]().state_dict()  # type: ignore[operator]
    done = fdl_in_process("analyze", _run(tmp_path, "run", file), "--model", f"{tmp_path / 'lora_net.py'}:build",
                          "--model-kwargs", '{"deep": true}', "--probe", _probe(tmp_path), "--out", tmp_path / "o.h5")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "got: 4 missing keys: b.lora_A, b.lora_B, b.base_layer.weight" in said, said
    assert "LoRA" not in said and "wrong --model or --model-kwargs?" in said, said
