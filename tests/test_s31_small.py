"""Two warnings of `fdl analyze` made true and cheap.

1. The warning that a layer's features moved though no parameter before it changed said "only BatchNorm running
   statistics did" and named every BatchNorm whose statistics differed from the reference's: one inside the hooked
   module (which runs after the module's input is taken), one run after the layer, and never another buffer that
   moved (a pruning mask, a registered constant), which is then a cause the warning denied.
2. The raw-pixels warning read the probe's first rows whole and rounded a copy of them (~300 MB for 512 ImageNet
   images): it reads them in bounded pieces now, with the same verdicts, pinned here on the edge cases.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.probes import Probe, raw_pixels_warning
from tests.cli_run import fdl_in_process

torch.set_num_threads(1)

# ------------------------------------------------------------------ what moved, before the layer

MODEL = """
import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("mask", torch.ones(n))

    def forward(self, x):
        return x * self.mask


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 3))  # registered first, runs last but one
        self.body = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.gate = Gate(8)
        self.post = nn.BatchNorm1d(3)  # runs after the head

    def forward(self, x):
        return self.post(self.head(self.gate(self.bn(self.body(x)))))


def build():
    return Net()
"""


def _run(tmp_path: Path, change: dict[str, torch.Tensor], layer: str = "head:input",
         model: str | None = None) -> tuple[int, str]:
    """`fdl analyze` of a run of two checkpoints of `model` (its text; MODEL, read when called), the second the
    first with the buffers `change` replaced and every parameter unchanged, at `layer`; the exit status and stderr."""
    model = MODEL if model is None else model
    (tmp_path / "model.py").write_text(model, encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(model, namespace)  # noqa: S102 - the test's own model text
    torch.manual_seed(0)
    state = namespace["build"]().state_dict()  # type: ignore[operator]
    run = tmp_path / "run"
    run.mkdir()
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "step_0.safetensors"))
    state.update(change)
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "step_10.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(60, 6)).astype(np.float32), y=rng.integers(0, 3, 60))
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                                    tmp_path / "probe.npz", "--out", tmp_path / "out.h5", "--layer", layer,
                                    "--anchor-size", "32", "--top-k", "3")
    return done.returncode, " ".join(done.stderr.split())


def _stats(mean: float, var: float, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), mean), torch.full((n,), var)


@pytest.mark.parametrize("layer", ["head:input", "gate"])
def test_a_moved_buffer_beside_the_statistics_is_named_and_modules_after_the_layer_are_not(
    tmp_path: Path, layer: str
) -> None:
    """The features of head:input (the output of `gate`) moved because `bn`'s statistics and `gate.mask`
    changed; the statistics of head.0 (inside the hooked module: it runs after its input is taken; after `gate`)
    and of `post` (after the layer) changed too. The warning said "only BatchNorm running statistics did (bn,
    head.0, post)": the mask, a cause, unsaid, and two modules that cannot have moved these features named."""
    mask = torch.ones(8)
    mask[:4] = 0
    bn_mean, bn_var = _stats(0.7, 3.0)
    head_mean, head_var = _stats(-2.0, 0.1)
    post_mean, post_var = _stats(5.0, 9.0, 3)
    status, err = _run(tmp_path, {"gate.mask": mask, "bn.running_mean": bn_mean, "bn.running_var": bn_var,
                                  "head.0.running_mean": head_mean, "head.0.running_var": head_var,
                                  "post.running_mean": post_mean, "post.running_var": post_var}, layer)
    assert status == 0, err
    assert f"probe/{layer}: the features moved from the reference at step 10" in err, err
    assert "no parameter before it changed" in err, err
    assert "only BatchNorm running statistics" not in err, err
    assert "BatchNorm running statistics (bn)" in err, err
    assert "gate.mask" in err, err
    assert "head.0" not in err and "post" not in err, err


def test_a_moved_buffer_alone_is_said_without_batchnorm(tmp_path: Path) -> None:
    """Only `gate.mask` moved before the layer (and `post`'s statistics after it): the features moved with no
    parameter changed and no word was said, or BatchNorm was blamed for `post`."""
    mask = torch.ones(8)
    mask[:5] = 0
    post_mean, post_var = _stats(5.0, 9.0, 3)
    status, err = _run(tmp_path, {"gate.mask": mask, "post.running_mean": post_mean, "post.running_var": post_var})
    assert status == 0, err
    assert "head:input: the features moved from the reference at step 10" in err, err
    assert "only buffers changed (gate.mask)" in err, err
    assert "BatchNorm" not in err and "post" not in err, err


# ------------------------------------------------------------------ the raw-pixels check


def _probe(x: np.ndarray) -> Probe:
    return Probe(name="probe", path=Path("probe.npz"), x=x, y=None, task=None, n_classes=None, sha256="")


def _images(top: float, rows: int = 512) -> np.ndarray:
    """(rows, 3, 64, 64) float32 whole numbers 0..20 (48 KiB a row), the last row's first value `top`."""
    x = np.random.default_rng(0).integers(0, 21, (rows, 3, 64, 64)).astype(np.float32)
    x[-1, 0, 0, 0] = top
    return x


def test_raw_pixel_check_reads_the_probe_in_bounded_memory() -> None:
    """512 rows of 48 KiB (24 MiB): the check allocated a rounded copy of them all and a mask (30 MiB)."""
    x = _images(200.0)
    tracemalloc.start()
    try:
        said = raw_pixels_warning(_probe(x))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert said is not None and "whole numbers from 0 to 200 as floats, raw pixel values?" in said
    assert peak < 12 * 2**20, f"{peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    ("top", "warned"),
    [(32.0, True), (31.0, False), (255.0, True), (256.0, False), (200.5, False), (-1.0, False),
     (float("nan"), False), (float("inf"), False)],
)
def test_raw_pixel_verdicts_on_the_edges(top: float, warned: bool) -> None:
    """The rule kept: float x of 3 or more dimensions whose first 512 rows are whole numbers, none below 0, the
    largest from 32 to 255; a NaN or an infinity anywhere in them is no pixel. The deciding value is in the last
    of the rows read, after the others."""
    x = _images(top)
    x[:, :, :, 1:] = np.minimum(x[:, :, :, 1:], 20)
    said = raw_pixels_warning(_probe(x))
    assert (said is not None) == warned, said
    if warned:
        assert f"whole numbers from 0 to {top:g} as floats" in str(said)


def test_raw_pixel_verdicts_outside_the_rows_read_and_shapes() -> None:
    """A NaN after the first 512 rows is not read; exactly 32 warns; a table (2 dimensions) or integers never."""
    x = np.zeros((520, 2, 2), np.float32)
    x[0, 0, 0] = 32
    x[515, 0, 0] = np.nan
    said = raw_pixels_warning(_probe(x))
    assert said is not None and "whole numbers from 0 to 32 as floats" in said
    assert raw_pixels_warning(_probe(x.reshape(520, 4))) is None
    assert raw_pixels_warning(_probe(np.full((10, 2, 2), 40, np.int64))) is None
    assert raw_pixels_warning(_probe(np.zeros((0, 2, 2), np.float32))) is None
