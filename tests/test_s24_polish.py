"""Session 24, a new-user review's small items:

- a resume that changed --top-k alone was refused with `options.overlap_k: absent (store) vs 4 (this run)` beside
  the top_k line: overlap_k is recorded only where it is not min(top_k, C), so the change of top_k added it,
  though the overlaps' k was the same; it is said now only where that k differs;
- the unknown-layer error's fix said `fdl inspect CHECKPOINT`, not the checkpoint and the --model given;
- `classify --expect rich` got the list of choices alone, not that the rich regimes are MF and EF;
- `fdl report`'s text never said what MF and EF stand for (README and docs/regimes.md do).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.report import column_key
from tests.test_analyze import fdl
from tests.test_report import SCALARS, make_store

C = 4


def _run(tmp_path: Path, folder_name: str = "ckpts") -> tuple[Path, Path, Path]:
    """Two checkpoints of a 6-16-C MLP and a probe of 40: (folder, model file, probe)."""
    (tmp_path / "model.py").write_text(
        "from torch import nn\n\ndef build(hidden=16):\n"
        f"    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, {C}))\n"
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, C, 40))
    folder = tmp_path / folder_name
    folder.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))
    for step in (0, 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    return folder, tmp_path / "model.py", tmp_path / "probe.npz"


def _analyze(folder: Path, model: Path, probe: Path, out: Path, *extra: str) -> object:
    return fdl("analyze", folder, "--model", f"{model}:build", "--probe", probe, "--out", out, *extra)


# ------------------------------------------------------------------------------ a resume's differences


@pytest.mark.parametrize(("first", "then"), [((), ("--top-k", "2")), (("--top-k", "2"), ())])
def test_a_change_of_top_k_alone_is_said_alone(tmp_path: Path, first: tuple[str, ...], then: tuple[str, ...]) -> None:
    """--top-k 2 < C records overlap_k = C (the default k, no longer min(top_k, C)); the default 64 does not: the
    overlaps' k is C either way, and only top_k differs."""
    folder, model, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    assert _analyze(folder, model, probe, out, *first).code == 0
    before = out.read_bytes()
    refused = _analyze(folder, model, probe, out, *then)
    assert refused.code == 1 and "Traceback" not in refused.stderr
    got = next(line for line in refused.stderr.splitlines() if line.lstrip().startswith("got: "))
    top_k = ("64", "2") if then else ("2", "64")
    assert got.strip() == f"got: options.top_k: {top_k[0]} (store) vs {top_k[1]} (this run)"
    assert "overlap_k" not in refused.stderr
    assert "fix: pass --overwrite to replace it, or another --out to keep both" in refused.stderr
    assert out.read_bytes() == before


def test_an_overlap_k_of_its_own_is_still_said(tmp_path: Path) -> None:
    folder, model, probe = _run(tmp_path)
    out = tmp_path / "run.h5"
    assert _analyze(folder, model, probe, out).code == 0
    refused = _analyze(folder, model, probe, out, "--overlap-k", "2")
    assert refused.code == 1
    assert "got: options.overlap_k: absent (store) vs 2 (this run)\n" in refused.stderr
    refused = _analyze(folder, model, probe, out, "--overlap-k", "2", "--top-k", "3")  # both, each on its own account
    assert "got: options.overlap_k: absent (store) vs 2 (this run); options.top_k: 64 (store) vs 3 (this run)" in (
        refused.stderr)


# ------------------------------------------------------------------------------ the unknown layer's fix


def test_the_unknown_layer_fix_is_the_inspect_command_to_run(tmp_path: Path) -> None:
    folder, model, probe = _run(tmp_path, "my run")  # a space: quoted
    out = tmp_path / "run.h5"
    refused = _analyze(folder, model, probe, out, "--layer", "fc9", "--model-kwargs", '{"hidden": 16}')
    assert refused.code == 1 and "Traceback" not in refused.stderr
    command = ["inspect", str(folder / "step_0.pt"), "--model", f"{model}:build", "--model-kwargs", '{"hidden": 16}',
               "--probe", str(probe)]
    assert f"fix: list the modules with `{shlex.join(['fdl', *command])}` and pass one to --layer" in (
        " ".join(refused.stderr.split()))
    assert "'" + str(folder / "step_0.pt") + "'" in refused.stderr
    listed = fdl(*command, "--json")  # as given, it runs, and lists the modules
    assert listed.code == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)["modules"]] == ["", "0", "1", "2"]
    whole = _analyze(folder, model, probe, out, "--layer", "")
    assert f"(listed by `{shlex.join(['fdl', *command[:4], '--probe', str(probe)])}`)" in " ".join(whole.stderr.split())


def test_a_model_of_fdl_toml_is_left_to_inspect(tmp_path: Path) -> None:
    """fdl.toml's model is read by `fdl inspect` too, relative to the file: not repeated as a --model."""
    folder, model, probe = _run(tmp_path)
    (folder / "model.py").write_text(model.read_text())
    (folder / "fdl.toml").write_text(f'model = "model.py:build"\nprobe = "{probe}"\nlayer = ["fc9"]\n')
    refused = fdl("analyze", folder, "--out", tmp_path / "run.h5")
    assert refused.code == 1
    said = " ".join(refused.stderr.split())
    assert f"list the modules with `fdl inspect {folder / 'step_0.pt'}` and pass one to --layer" in said
    assert fdl("inspect", folder / "step_0.pt").code == 0


# ------------------------------------------------------------------------------ --expect in words


@pytest.mark.parametrize(("value", "hint"), [
    ("rich", "The rich regimes are MF (minimal feature) and EF (extended feature): --expect MF or --expect EF."),
    ("Rich", "The rich regimes are MF (minimal feature) and EF (extended feature): --expect MF or --expect EF."),
    ("lazy", "The lazy regime is coefficient (the features did not move): --expect coefficient."),
    ("minimal-feature", "MF is the minimal feature regime: --expect MF."),
    ("extended", "EF is the extended feature regime: --expect EF."),
])
def test_expect_in_words_names_the_regime_to_give(value: str, hint: str) -> None:
    done = fdl("classify", "run.h5", "--expect", value)
    assert done.code == 2
    said = " ".join(done.stderr.split())
    assert f"{value!r} is not one of 'coefficient', 'MF', 'EF' (any case). {hint}" in said
    assert "Did you mean" not in said


def test_expect_still_suggests_a_misspelt_regime() -> None:
    assert "(any case). Did you mean 'MF'?" in fdl("classify", "run.h5", "--expect", "mff").stderr


# ------------------------------------------------------------------------------ the report's key to the regimes


def test_the_report_says_what_the_regimes_are(tmp_path: Path) -> None:
    scalars = {step: {**values, "regime": "MF"} for step, values in SCALARS.items()}
    store = make_store(tmp_path / "run.h5", scalars=scalars)
    done = fdl("report", store)
    assert done.code == 0, done.stderr
    text = done.stdout + done.stderr
    key = next(line for line in text.splitlines() if line.startswith("columns: "))
    assert key.endswith(", regime = coefficient (lazy: the features did not move), MF (minimal feature) or EF "
                        "(extended feature)")
    assert "minimal feature" not in column_key(("step", "d_lr"))  # a key without the regime column says nothing of it
    for machine in (("--json",), ("--format", "csv"), ("--format", "markdown")):
        out = fdl("report", store, *machine)
        assert out.code == 0 and "minimal feature" not in out.stdout + out.stderr, machine
