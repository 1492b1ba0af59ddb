"""A vision researcher's first run: a small ResNet-style CNN (conv, BatchNorm, a residual block, global average
pooling, a Linear head) saved in PyTorch Lightning's `.ckpt` layout, analysed with an image probe.

1. The documented `--model` wrapper (`self.module = net`, docs/usage.md "A model of several inputs"), here one that
   normalises uint8 images, was refused for a Lightning `.ckpt`: its `model.` keys were not matched to the
   wrapper's `module.` ones, and the fix said the factory built "another class".
2. Raw pixel values saved as floats (`x.astype(np.float32)` of uint8 images, 0..255) were analysed silently: the
   network, trained on normalised images, scored chance and the run still read MF.
3. A frozen-backbone run trained with the backbone in train mode: BatchNorm's running statistics moved though no
   parameter before the head did, so the features fdl measures (eval mode) moved and the run read MF, with no word
   why; with the backbone in eval mode the same run reads coefficient.
4. uint8 images of shape (N, H, W) given to that CNN: the refusal said to save floats, and only the next run that
   the channel axis was missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_reliability_inputs import _wide_terminal, fdl  # noqa: F401 (an autouse fixture)

torch.set_num_threads(1)

MEAN, STD = 0.3, 0.4
SMALL = ["--top-k", "4", "--anchor-size", "32", "--batch-size", "64"]

MODEL_PY = f'''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.bn(self.conv(h)))
        return self.head(self.pool(h).flatten(1))

class Normalised(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.module = net
    def forward(self, x):
        x = x.to(self.module.head.weight.dtype)[:, None]  # uint8 arrive as int64; the model runs in --dtype
        return self.module((x / 255 - {MEAN}) / {STD})

def build():
    return Net()

def wrapped():
    return Normalised(Net())
'''


def _images(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """uint8 8×8 images of 3 classes (a bright left, middle or right band), and their labels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 8, 8))
    for i, label in enumerate(y):
        x[i, :, 3 * label: 3 * label + 2] += 190
    return x.astype(np.uint8), y


def _normalised(x: np.ndarray) -> np.ndarray:
    return ((x[:, None] / 255 - MEAN) / STD).astype(np.float32)


def _lightning(model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path, epoch: int, step: int) -> None:
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "epoch": epoch,
                "global_step": step, "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                "pytorch-lightning_version": "2.4.0"}, path / f"epoch={epoch}-step={step}.ckpt")


def _train(tmp_path: Path, name: str, *, frozen: bool = False, backbone_eval: bool = False) -> Path:
    """A run of Lightning checkpoints at steps 0, 4, 8, 12 (only the head trained when `frozen`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"s30_cnn_{name}", tmp_path / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build()
    if frozen:
        for key, parameter in model.named_parameters():
            parameter.requires_grad_(key.startswith("head."))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = _images()
    inputs, labels = torch.from_numpy(_normalised(x)), torch.from_numpy(y)
    folder = tmp_path / name
    folder.mkdir()
    _lightning(model, opt, folder, 0, 0)
    for step in range(1, 13):
        model.train()
        if backbone_eval:
            model.stem.eval()
            model.bn.eval()
        batch = torch.arange(20) + 20 * (step % 3)
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 4 == 0:
            _lightning(model, opt, folder, step // 6, step)
    return folder


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(MODEL_PY)
    x, y = _images()
    np.savez(tmp_path / "uint8.npz", x=x, y=y)
    np.savez(tmp_path / "normalised.npz", x=_normalised(x), y=y)
    np.savez(tmp_path / "raw.npz", x=x[:, None].astype(np.float32), y=y)
    return tmp_path


def _records(capsys: pytest.CaptureFixture[str], store: Path) -> list[dict[str, object]]:
    status, out, err = fdl(capsys, "report", str(store), "--json")
    assert status == 0, err
    return list(json.loads(out))


def test_lightning_ckpt_loads_into_the_documented_normalising_wrapper(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(setup, "trained")
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:wrapped", "--probe",
                         str(setup / "uint8.npz"), "--out", str(setup / "wrapped.h5"), *SMALL)
    assert status == 0, err
    assert "another class" not in err
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:build", "--probe",
                         str(setup / "normalised.npz"), "--out", str(setup / "plain.h5"), *SMALL)
    assert status == 0, err
    wrapped, plain = _records(capsys, setup / "wrapped.h5"), _records(capsys, setup / "plain.h5")
    assert [r["step"] for r in wrapped] == [0, 4, 8, 12]
    for a, b in zip(wrapped, plain, strict=True):  # the wrapper normalises as the float probe was: same numbers
        assert a["accuracy"] == b["accuracy"]
        assert a["d_lr"] == pytest.approx(b["d_lr"], abs=1e-6)
        assert a["param_dist_init"] == b["param_dist_init"]
    # in bfloat16 too, param_dist_init takes the file's float32 weights, not the model's rounded ones
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:wrapped", "--probe",
                         str(setup / "uint8.npz"), "--out", str(setup / "bf16.h5"), "--dtype", "bfloat16", *SMALL)
    assert status == 0, err
    bf16 = _records(capsys, setup / "bf16.h5")
    assert [r["param_dist_init"] for r in bf16] == [r["param_dist_init"] for r in plain]


def test_raw_pixel_values_saved_as_floats_are_warned_of(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(setup, "trained")
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:build", "--probe",
                         str(setup / "raw.npz"), "--out", str(setup / "raw.h5"), *SMALL)
    assert status == 0, err
    flat = " ".join(err.split())
    assert "whole numbers from 0 to 2" in flat and "raw pixel values" in flat, err
    assert "normalise" in flat
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:build", "--probe",
                         str(setup / "normalised.npz"), "--out", str(setup / "ok.h5"), *SMALL)
    assert status == 0, err
    assert "raw pixel" not in err


def test_frozen_backbone_whose_batchnorm_statistics_moved_is_said(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, probe = f"{setup / 'model.py'}:build", str(setup / "normalised.npz")
    drifting = _train(setup, "frozen_train_mode", frozen=True)
    status, _, err = fdl(capsys, "analyze", str(drifting), "--model", model, "--probe", probe,
                         "--out", str(setup / "drift.h5"), *SMALL)
    assert status == 0, err
    flat = " ".join(err.split())
    assert "BatchNorm running statistics" in flat, err
    assert "no parameter before it changed" in flat and ".eval()" in flat
    frozen = _train(setup, "frozen_eval_mode", frozen=True, backbone_eval=True)
    status, _, err = fdl(capsys, "analyze", str(frozen), "--model", model, "--probe", probe,
                         "--out", str(setup / "frozen.h5"), *SMALL)
    assert status == 0, err
    assert "BatchNorm" not in err
    status, _, err = fdl(capsys, "classify", str(setup / "frozen.h5"))
    assert status == 0 and "regime: coefficient" in err, err


def test_uint8_images_without_a_channel_axis_get_the_whole_conversion_at_once(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal of uint8 (N, H, W) images said to save floats, and only the next run said the channel axis was
    missing: both are said at once, with the wrapper that keeps them uint8."""
    run = _train(setup, "trained")
    status, _, err = fdl(capsys, "analyze", str(run), "--model", f"{setup / 'model.py'}:build", "--probe",
                         str(setup / "uint8.npz"), "--out", str(setup / "u8.h5"), *SMALL)
    assert status == 1
    flat = " ".join(err.split())
    assert "astype(np.float32)[:, None]" in flat and "without the channel axis" in flat, err
    assert "--model wrapper" in flat
