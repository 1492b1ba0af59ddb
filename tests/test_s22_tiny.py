"""Small findings of session 22's reviews, each failing before its fix:

- `fdl inspect`'s `not called` line said no --layer can hook such a module, where `analyze --layer` names the
  module around it to take instead: the line now names it too.
- A missing absolute `--model /tmp/x/model.py:build` said "looked in /tmp/x, /tmp/x".
- fdl.toml's `probe = "train="` was read as a file named `train=`, where `--probe train=` is refused.
- `fdl classify` of a probe without labels read MF from a checkpoint whose outputs ride on one eigenfunction
  (k95 of Π̂ = 1) with nothing to say so, where a labelled probe gets the near-chance line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fdl_cli.checkpoints import read_manifest, resolve_model_factory
from fdl_cli.errors import FdlError
from fdl_cli.regimes import classify_run, describe
from tests.cli_run import fdl_in_process, model_file
from tests.test_analyze import fdl
from tests.test_regimes import record
from tests.test_report import SCALARS, make_store
from tests.test_s22_user import TRANSFORMER


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long lines at 80 columns otherwise


def test_inspect_names_the_module_to_take_for_one_its_parent_never_calls(tmp_path: Path) -> None:
    module = model_file(tmp_path, TRANSFORMER.replace("self.head = nn.Linear(8, 3)",
                                                      "self.head = nn.Linear(8, 3)\n        self.spare = nn.Linear(2, 2)"))
    checkpoint = tmp_path / "ckpt_3.pt"
    torch.save({"model": module.build().state_dict(), "step": 3}, checkpoint)
    done = fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build")
    assert done.code == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("not called: "))
    # analyze's fix for --layer encoder.self_attn.out_proj, word for word; the unused `spare` has no parent to take
    assert line.endswith("so no --layer can hook it; take the output of the module around it, which ran: --layer "
                         "encoder.self_attn (of a module that returns a tuple, fdl takes the first element, here "
                         "nn.MultiheadAttention's output, out_proj's output itself, not its attention weights)"), line
    assert "--layer spare" not in done.stderr


def test_inspect_of_a_module_nothing_calls_without_a_parent_keeps_the_plain_line(tmp_path: Path) -> None:
    source = "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n" \
             "    class Net(nn.Module):\n        def __init__(self):\n            super().__init__()\n" \
             "            self.fc = nn.Linear(4, 3)\n            self.spare = nn.Linear(2, 2)\n\n" \
             "        def forward(self, x):\n            return self.fc(x)\n\n    return Net()\n"
    module = model_file(tmp_path, source)
    checkpoint = tmp_path / "ckpt_1.pt"
    torch.save(module.build().state_dict(), checkpoint)
    done = fdl("inspect", checkpoint, "--model", f"{tmp_path / 'model.py'}:build")
    assert done.code == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("not called: "))
    assert line.endswith("so no --layer can hook it"), line


def test_a_missing_absolute_model_file_names_its_folder_once(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "model.py"
    with pytest.raises(FdlError) as raised:  # base_dir: the checkpoint folder, as analyze and inspect pass it
        resolve_model_factory(f"{missing}:build", base_dir=tmp_path / "run")
    assert raised.value.got == f"looked in {(tmp_path / 'x').resolve()}"
    # a relative path, looked for in two folders, names both
    with pytest.raises(FdlError) as raised:
        resolve_model_factory("x/model.py:build", base_dir=tmp_path / "run")
    assert raised.value.got == f"looked in {(Path.cwd() / 'x').resolve()}, {(tmp_path / 'run' / 'x').resolve()}"


@pytest.mark.parametrize("probe", ['"train="', '["train=  "]'])
def test_fdl_toml_probe_name_without_a_path_is_refused_as_the_command_lines(tmp_path: Path, probe: str) -> None:
    manifest = tmp_path / "fdl.toml"
    manifest.write_text(f"probe = {probe}\n", encoding="utf-8")
    with pytest.raises(FdlError) as raised:
        read_manifest(tmp_path)
    text = probe.strip('[]"')
    assert raised.value.what == f"{manifest}: probe {text!r} has no path after '='"
    assert raised.value.fix == f'e.g. probe = "train=a.npz" in {manifest}'


def test_fdl_toml_probe_of_a_file_named_so_stays_a_path(tmp_path: Path) -> None:
    (tmp_path / "train=").write_bytes(b"")  # fdl.toml's rule: a file of that whole text is a path
    (tmp_path / "fdl.toml").write_text('probe = "train="\n', encoding="utf-8")
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.probe == [str(tmp_path.resolve() / "train=")]


ONE_EIGENFUNCTION = "k95 of Π̂ is 1 for C = 10 outputs: 95 % of their energy lies on one eigenfunction"


def test_classify_of_a_probe_without_labels_says_when_its_first_mf_rides_on_one_eigenfunction() -> None:
    unlabelled = [record(0, 1.0, 1.0, 1), record(10, 0.6, 0.5, 1), record(20, 0.6, 0.5, 5), record(30, 0.6, 0.5, 5)]
    verdict = classify_run(unlabelled)
    assert verdict.regime == "MF" and verdict.evidence["first_mf_step"] == 10
    lines = describe(verdict, unlabelled)
    assert any(line.startswith(f"at step 10, the first MF checkpoint, {ONE_EIGENFUNCTION}") for line in lines), lines
    assert verdict.as_json() == classify_run(unlabelled).as_json()  # printed only
    # a first MF checkpoint spread over more eigenfunctions; one output; a labelled probe (its own line): no note
    for records in ([dict(r, k95_utility=3) if r["step"] == 10 else r for r in unlabelled],
                    [dict(r, n_outputs=1) for r in unlabelled],
                    [dict(r, accuracy=0.9) for r in unlabelled],
                    [dict(r, r2=0.9) for r in unlabelled]):
        assert "on one eigenfunction" not in "\n".join(describe(classify_run(records), records))


def test_fdl_classify_of_an_unlabelled_store_prints_the_note(tmp_path: Path) -> None:
    scalars = {step: {**values, "r2": None} for step, values in SCALARS.items()}
    scalars[100] = {**scalars[100], "k95_utility": 1}  # C = 2 (make_store): MF at step 100, on one eigenfunction
    done = fdl_in_process("classify", make_store(tmp_path / "run.h5", scalars=scalars))
    assert done.returncode == 0, done.stderr
    assert "at step 100, the first MF checkpoint, k95 of Π̂ is 1 for C = 2 outputs" in done.stderr
    assert "k95 of Π̂ is 1" not in fdl_in_process("classify", make_store(tmp_path / "other.h5")).stderr
