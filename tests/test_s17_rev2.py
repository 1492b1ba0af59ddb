"""Defects found reviewing the seventeenth session's GPU, TF32, store and binary-classifier changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.extract import prepare_model
from tests.cli_run import fdl_in_process as fdl  # exit status, stdout, stderr and files only: no fresh interpreter

# -- TF32 set through torch's newer fp32_precision flags ------------------------------------------------------

NEWER_FLAGS = hasattr(torch.backends, "fp32_precision")


@pytest.fixture
def tf32_by_newer_flags() -> Iterator[None]:
    """The process's TF32 flags as they were, after the test changed them through either API."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        yield
    finally:
        torch.backends.fp32_precision = "none"
        torch.backends.cudnn.fp32_precision = "none"
        # the legacy setters reset each operation's own flag (conv, rnn: tf32 / none; matmul: tf32 / ieee)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not NEWER_FLAGS, reason="torch before 2.9 has no fp32_precision flags")
@pytest.mark.parametrize("level", ["global", "cudnn"])
def test_tf32_turned_on_through_the_newer_flags_is_turned_off_for_the_forward_passes(
    tf32_by_newer_flags: None, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """A model file's `torch.backends.fp32_precision = "tf32"` (the newer API torch documents): the legacy
    `torch.backends.cudnn.allow_tf32 = False` only cleared the convolutions' own flag, which then inherited
    the global "tf32": cuDNN's float32 convolutions stayed in TF32 on a GPU. The flags read back are the
    ones torch resolves for each operation; the legacy ones read without torch's mixed-API error."""
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)  # no GPU: the flags are checked
    if level == "global":
        torch.backends.fp32_precision = "tf32"
    else:
        torch.backends.cudnn.fp32_precision = "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    prepare_model(nn.Linear(2, 2), device=torch.device("cuda"), dtype="float32")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


# -- the binary-classifier mode ---------------------------------------------------------------------------------

BINARY_MODEL = """
from torch import nn


def one():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
"""


def _binary_run(folder: Path) -> tuple[Path, Path, Path]:
    """Two checkpoints of a model of one output, a probe of 0/1 labels and the model file."""
    runs = folder / "runs"
    runs.mkdir(parents=True)
    (folder / "model.py").write_text(BINARY_MODEL)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    for step in (0, 10):
        torch.save({"model": network.state_dict(), "step": step}, runs / f"ckpt_{step}.pt")
        with torch.no_grad():
            network[2].weight.add_(0.3)
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(folder / "labels.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    return runs, folder / "labels.npz", folder / "model.py"


def test_a_probe_of_three_classes_beside_0_1_labels_is_refused_with_the_models_own_width(tmp_path: Path) -> None:
    """Beside a probe of 0/1 labels (which makes the one output a binary logit, C = 2), a probe of labels
    0..2 was refused with "the model has 2 outputs": the model has one."""
    runs, labels, model = _binary_run(tmp_path)
    three = tmp_path / "three.npz"
    np.savez(three, x=np.load(labels)["x"], y=np.arange(60) % 3)
    result = fdl("analyze", runs, "--model", f"{model}:one", "--probe", f"l={labels}", "--probe", f"t={three}",
                 "-o", tmp_path / "run.h5")
    assert result.returncode == 1
    assert f"error: the probe {three} (t) has class label 2 but the model has 1 output\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run.h5").exists()


# -- a probe renamed on resume ----------------------------------------------------------------------------------


def test_a_renamed_probe_is_not_said_to_resume_when_the_store_differs_in_more(tmp_path: Path) -> None:
    """`--probe test=PROBE --top-k 8` on a store analysed as `probe` with --top-k 64: the fix said "name it
    so, --probe probe=PATH, to resume", and the run so named still differed (in top_k)."""
    runs, labels, model = _binary_run(tmp_path)
    out = tmp_path / "run.h5"
    first = fdl("analyze", runs, "--model", f"{model}:one", "--probe", f"probe={labels}", "-o", out)
    assert first.returncode == 0, first.stderr
    both = fdl("analyze", runs, "--model", f"{model}:one", "--probe", f"test={labels}", "--top-k", "8", "-o", out)
    assert both.returncode == 1
    fix = next(line for line in both.stderr.splitlines() if line.startswith("  fix: "))
    assert fix.startswith("  fix: this run's probe 'test' is the store's probe 'probe' (the same file, sha256 ")
    assert "to resume" not in fix
    assert ": name it so, --probe probe=PATH (the other differences above remain: options.top_k); else pass " \
        "--overwrite" in fix
    renamed = fdl("analyze", runs, "--model", f"{model}:one", "--probe", f"probe={labels}", "--top-k", "8", "-o", out)
    assert renamed.returncode == 1 and "options.top_k: 64 (store) vs 8 (this run)" in renamed.stderr
    # the rename alone still resumes, as the fix says
    alone = fdl("analyze", runs, "--model", f"{model}:one", "--probe", f"test={labels}", "-o", out)
    assert alone.returncode == 1 and ": name it so, --probe probe=PATH, to resume; else" in alone.stderr
