"""The everyday path with the checkpoint layouts and probes of the common training stacks.

Each test builds, with tiny models, the exact layout one stack writes (Hugging Face Trainer, PyTorch
Lightning, timm, plain loops) or a probe as researchers keep it, and pins a defect found in the
usability review: it failed before its fix. Commands run in-process through the console entry point.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.store import StoreReader
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import MODEL, SMALL
from tests.tiny_models import mlp

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


@dataclasses.dataclass
class TrainingArguments:
    """Stands in for transformers.TrainingArguments, which the Trainer pickles into training_args.bin."""

    output_dir: str = "out"
    learning_rate: float = 1e-3


def _probe(path: Path, n: int = 24, n_in: int = 4) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n, n_in)).astype(np.float32), y=rng.integers(0, 3, n))
    return path


def _analyze(sources: list[Path], probe: Path, out: Path, *extra: str, model: str = MODEL) -> Result:
    result = fdl("analyze", *map(str, sources), "--model", model, "--probe", str(probe), "--out", str(out),
                 *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _sd(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in mlp(seed=seed).state_dict().items()}


# --------------------------------------------------------------------- Hugging Face Trainer output


def _hf_checkpoint(folder: Path, seed: int, step: int, *, ranks: int = 1) -> None:
    """checkpoint-N/ as transformers.Trainer writes it (multi-GPU: one rng_state_K.pth per process)."""
    folder.mkdir(parents=True)
    model = mlp(seed=seed)
    save_file(_sd(seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "mlp", "hidden": 8}))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"base_lrs": [1e-3], "last_epoch": step}, folder / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    for rank in range(ranks):
        torch.save(rng, folder / ("rng_state.pth" if ranks == 1 else f"rng_state_{rank}.pth"))
    torch.save(TrainingArguments(), folder / "training_args.bin")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 500}))


def test_hf_multi_gpu_rng_states_are_no_checkpoints(tmp_path: Path) -> None:
    """rng_state_0.pth, rng_state_1.pth (a multi-GPU Trainer run) hold tensors and numpy objects: they
    were taken for pickled checkpoints at step 0 and 1, which broke every run over checkpoint folders."""
    out = tmp_path / "out"
    for seed, step in ((0, 500), (1, 1000)):
        _hf_checkpoint(out / f"checkpoint-{step}", seed, step, ranks=2)
    probe = _probe(tmp_path / "probe.npz")
    folders = sorted(out.glob("checkpoint-*"))
    found = discover_checkpoints(folders)
    assert [(r.path.name, r.step) for r in found.checkpoints] == [("checkpoint-500", 500), ("checkpoint-1000", 1000)]
    assert not found.bad
    assert any("rng_state_1.pth" in note and "training state" in note for note in found.notes), found.notes
    result = _analyze(folders, probe, tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    single = _analyze([out / "checkpoint-500"], probe, tmp_path / "one.h5")
    assert single.code == 0, single.stderr
    assert "1 checkpoint analysed" in single.stderr


def test_hf_output_dir_with_final_model_and_no_step(tmp_path: Path) -> None:
    """Trainer.save_model() leaves model.safetensors (no trainer_state.json) in the output folder above
    its checkpoint-N folders; `fdl analyze out/` failed on it ("cannot tell the training step of out")."""
    out = tmp_path / "out"
    for seed, step in ((0, 500), (1, 1000)):
        _hf_checkpoint(out / f"checkpoint-{step}", seed, step)
    save_file(_sd(1), str(out / "model.safetensors"), metadata={"format": "pt"})
    torch.save(TrainingArguments(), out / "training_args.bin")
    probe = _probe(tmp_path / "probe.npz")
    result = _analyze([out], probe, tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    assert "2 checkpoints analysed" in result.stderr
    # the final save is checkpoint-1000's weights (seed 1): named as that copy, not to be renamed
    assert ("skipped out/model.safetensors: no step of its own; the same weights as checkpoint-1000 (step 1000), "
            "analysed there") in result.stderr


# ------------------------------------------------------------------------ timm / ImageNet example


def _timm_checkpoint(path: Path, seed: int, epoch: int, **extra: object) -> None:
    """What timm's CheckpointSaver (and the PyTorch ImageNet example) writes: checkpoint-N.pth.tar."""
    model = mlp(seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": epoch, "arch": "mlp", "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "version": 2, "metric": 0.5, **extra}, path)


def test_pth_tar_checkpoints_are_found(tmp_path: Path) -> None:
    """timm and the ImageNet reference script name checkpoints checkpoint-N.pth.tar / model_best.pth.tar:
    a folder scan skipped them all ("not a checkpoint suffix"), and --glob could not bring them back."""
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (0, 1):
        _timm_checkpoint(run / f"checkpoint-{epoch}.pth.tar", epoch, epoch)
    _timm_checkpoint(run / "last.pth.tar", 1, 1)
    _timm_checkpoint(run / "model_best.pth.tar", 0, 0)
    found = discover_checkpoints([run])
    assert [(r.path.name, r.step) for r in found.checkpoints] == [("checkpoint-0.pth.tar", 0), ("checkpoint-1.pth.tar", 1)]
    result = _analyze([run], _probe(tmp_path / "probe.npz"), tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    assert "2 checkpoints analysed" in result.stderr


# ------------------------------------------------------------------------------ plain training loops


def test_trust_pickle_with_a_class_that_cannot_be_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training script's own config object (pickled as __main__.Config or train.Config) cannot be
    found when fdl unpickles it: --trust-pickle ended in an AttributeError / ModuleNotFoundError traceback."""
    import sys
    import types

    script = types.ModuleType("train_script_gone")

    @dataclasses.dataclass
    class Config:
        lr: float = 0.1

    Config.__module__, Config.__qualname__ = "train_script_gone", "Config"
    script.Config = Config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "train_script_gone", script)
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 100):
        torch.save({"model": _sd(step), "step": step, "config": Config()}, run / f"ckpt_{step:06d}.pt")
    monkeypatch.delitem(sys.modules, "train_script_gone")
    probe = _probe(tmp_path / "probe.npz")
    refused = _analyze([run], probe, tmp_path / "a.h5")
    assert refused.code == 1 and "train_script_gone.Config" in refused.stderr and "--trust-pickle" in refused.stderr
    trusted = _analyze([run], probe, tmp_path / "b.h5", "--trust-pickle")
    # session 27: a class fdl cannot import that holds no weights (this config) is read as a placeholder, with a
    # note; one holding them is still the error (tests/test_s27_role_hf.py)
    assert trusted.code == 0, trusted.stderr
    assert "train_script_gone.Config" in trusted.stderr and "not loaded" in trusted.stderr


# ------------------------------------------------------------------------------------ tied weights

TIED_MODEL = '''
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as tie_word_embeddings does


    def forward(self, tokens):
        return self.lm_head(torch.relu(self.hidden(self.embed(tokens).mean(1))))


def build(seed=0):
    torch.manual_seed(seed)
    return TinyLM()
'''


def test_tied_weights_saved_once(tmp_path: Path) -> None:
    """safetensors' save_model() and transformers' save_pretrained() store a tied weight under one name
    (lm_head.weight is dropped): strict loading reported '1 missing key(s): lm_head.weight' and 'wrong
    --model?', so no tied language model saved by those could be analysed."""
    import importlib.util

    from safetensors.torch import save_model

    (tmp_path / "tied.py").write_text(TIED_MODEL)
    spec = importlib.util.spec_from_file_location("tied_for_test", tmp_path / "tied.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for layout in ("save_model", "save_pretrained"):
        (tmp_path / layout).mkdir()
    for step in (0, 10):
        model = module.build(seed=step)
        save_model(model, str(tmp_path / "save_model" / f"step_{step}.safetensors"))
        folder = tmp_path / "save_pretrained" / f"checkpoint-{step}"
        folder.mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tokens.npz", x=rng.integers(0, 11, (24, 5)), y=rng.integers(0, 11, 24))
    for layout in ("save_model", "save_pretrained"):
        result = _analyze([tmp_path / layout], tmp_path / "tokens.npz", tmp_path / f"{layout}.h5",
                          model=f"{tmp_path / 'tied.py'}:build")
        assert result.code == 0, (layout, result.stderr)
    # the values analysed are the file's: the same numbers as a torch.save of the full state_dict
    (tmp_path / "full").mkdir()
    for step in (0, 10):
        torch.save(module.build(seed=step).state_dict(), tmp_path / "full" / f"step_{step}.pt")
    full = _analyze([tmp_path / "full"], tmp_path / "tokens.npz", tmp_path / "full.h5", "--json",
                    model=f"{tmp_path / 'tied.py'}:build")
    again = fdl("report", str(tmp_path / "save_pretrained.h5"), "--format", "json")
    assert [r["d_lr"] for r in full.records] == [r["d_lr"] for r in json.loads(again.stdout)]


# ------------------------------------------------------------------------------- PyTorch Lightning


class _LitWithLoss(torch.nn.Module):
    """A LightningModule's state: the network under `model.`, and a weighted loss whose weight is a buffer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.model = mlp(seed=seed)
        self.criterion = torch.nn.CrossEntropyLoss(weight=torch.ones(3))


class _LitWithEma(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.model = mlp(seed=seed)
        self.ema = mlp(seed=seed + 100)


def _lightning(path: Path, module: torch.nn.Module, epoch: int, step: int) -> None:
    optimizer = torch.optim.Adam(module.parameters())
    torch.save({"epoch": epoch, "global_step": step, "pytorch-lightning_version": "2.4.0",
                "state_dict": module.state_dict(), "loops": {"fit_loop": {"state_dict": {}}},
                "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "kth_value": torch.tensor(1.0)}},
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": {"lr": 1e-3}}, path)


def test_lightning_module_with_more_than_the_network(tmp_path: Path) -> None:
    """A LightningModule that holds a weighted loss (or a metric with state) besides `self.model`: its keys
    no longer share one prefix, and the checkpoint was refused with '7 unexpected key(s) ... wrong --model?'.
    The one prefix under which the keys fit the model exactly is taken; two such prefixes (an EMA copy)
    are an error that names them, not a guess."""
    run = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    for epoch, step in ((0, 300), (1, 600)):
        _lightning(run / f"epoch={epoch}-step={step}.ckpt", _LitWithLoss(epoch), epoch, step)
    _lightning(run / "last.ckpt", _LitWithLoss(1), 1, 600)
    probe = _probe(tmp_path / "probe.npz")
    result = _analyze([run], probe, tmp_path / "run.h5", "--json")
    assert result.code == 0, result.stderr
    assert [r["step"] for r in result.records] == [300, 600]
    # the numbers are those of the network's own weights
    plain = tmp_path / "plain"
    plain.mkdir()
    for epoch, step in ((0, 300), (1, 600)):
        torch.save({"state_dict": _sd(epoch), "global_step": step}, plain / f"s_{step}.ckpt")
    same = _analyze([plain], probe, tmp_path / "plain.h5", "--json")
    assert [r["d_lr"] for r in same.records] == [r["d_lr"] for r in result.records]
    ema = tmp_path / "ema"
    ema.mkdir()
    _lightning(ema / "epoch=0-step=300.ckpt", _LitWithEma(0), 0, 300)
    refused = _analyze([ema], probe, tmp_path / "ema.h5")
    assert refused.code == 1
    assert "under several prefixes" in refused.stderr and "'model.'" in refused.stderr and "'ema.'" in refused.stderr


# --------------------------------------------------------------------------------- --model factories


def test_model_file_imports_its_sibling_and_a_package_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python train.py` finds `from layers import Block` beside it, and `import mypkg` in the current
    folder; fdl's --model did neither: 'No module named layers' (with the fix 'fix the error in that
    file'), and, from the `fdl` console script (whose sys.path lacks the current folder), 'No module
    named mypkg' for --model mypkg.models:build run in the project's root."""
    import sys

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(Path.cwd()))])
    project = tmp_path / "project"
    (project / "usability_pkg").mkdir(parents=True)
    (project / "usability_layers.py").write_text(
        "from torch import nn\n\n\nclass Block(nn.Module):\n"
        "    def __init__(self, d):\n        super().__init__()\n        self.lin = nn.Linear(d, d)\n\n"
        "    def forward(self, x):\n        return self.lin(x).relu()\n"
    )
    body = ("from torch import nn\n{imp}\n\n\ndef build():\n"
            "    return nn.Sequential(nn.Linear(4, 8), Block(8), nn.Linear(8, 3))\n")
    (project / "net.py").write_text(body.format(imp="from usability_layers import Block"))
    (project / "usability_pkg" / "__init__.py").write_text("")
    (project / "usability_pkg" / "models.py").write_text(body.format(imp="from usability_layers import Block"))
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        block = torch.nn.Module()
        block.lin = torch.nn.Linear(8, 8)
        state = torch.nn.Sequential(torch.nn.Linear(4, 8), block, torch.nn.Linear(8, 3)).state_dict()
        torch.save({"model": state, "step": step}, run / f"ckpt_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    for name in ("usability_layers", "usability_pkg", "usability_pkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    result = _analyze([run], probe, tmp_path / "file.h5", model=f"{project / 'net.py'}:build")
    assert result.code == 0, result.stderr
    monkeypatch.chdir(project)
    for name in ("usability_layers", "usability_pkg", "usability_pkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])
    result = _analyze([run], probe, tmp_path / "package.h5", model="usability_pkg.models:build")
    assert result.code == 0, result.stderr
    # both factories built the same network: the same checkpoints analysed, to the same numbers
    with StoreReader(tmp_path / "file.h5") as from_file, StoreReader(tmp_path / "package.h5") as from_package:
        assert [r["step"] for r in from_file.records()] == [0, 10]
        assert [r["d_lr"] for r in from_package.records()] == [r["d_lr"] for r in from_file.records()]


FACTORIES = '''
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def build_half():
    return build().half()


def build_double():
    return build().double()


def build_meta():
    with torch.device("meta"):
        return build()
'''


def test_factory_dtype_and_meta_device(tmp_path: Path) -> None:
    """A factory that returns its model in float16 / float64 (as some training code builds it) failed with
    'probe does not fit the model: mat1 and mat2 must have the same dtype' (the probe was fine); one that
    builds on the meta device (to skip initialisation) ended in a NotImplementedError traceback."""
    (tmp_path / "factories.py").write_text(FACTORIES)
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(_sd(step), run / f"step_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    records = {}
    for name in ("build", "build_half", "build_double"):
        result = _analyze([run], probe, tmp_path / f"{name}.h5", "--json", model=f"{tmp_path / 'factories.py'}:{name}")
        assert result.code == 0, (name, result.stderr)
        records[name] = [r["d_lr"] for r in result.records]
    assert records["build_half"] == records["build"] == records["build_double"]  # the file's float32 values
    meta = _analyze([run], probe, tmp_path / "meta.h5", model=f"{tmp_path / 'factories.py'}:build_meta")
    assert meta.code == 1
    assert "meta device" in meta.stderr and "build it on the CPU" in meta.stderr


# ------------------------------------------------------------------------------------------ probes


def test_image_probe_that_does_not_fit_says_how_to_convert_it(tmp_path: Path) -> None:
    """uint8 images (N, H, W, C), as torchvision's .data and Keras keep them: fdl reads integers as int64
    token ids, and the conv's error was reported as 'one sample ... dtype int64' (the file holds uint8)
    with the fix 'give the probe inputs the shape and dtype the model's forward expects'. Now the message
    names the file's dtype and says what to do (floats after the model's preprocessing, channels first)."""
    from tests.tiny_models import cnn

    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(cnn(seed=step).state_dict(), run / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 6, 6, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 24)
    np.savez(tmp_path / "u8.npz", x=images, y=labels)
    np.savez(tmp_path / "nhwc.npz", x=(images / 255).astype(np.float32), y=labels)
    np.savez(tmp_path / "nchw.npz", x=(images / 255).astype(np.float32).transpose(0, 3, 1, 2), y=labels)
    model = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:cnn"
    u8 = _analyze([run], tmp_path / "u8.npz", tmp_path / "a.h5", model=model)
    assert u8.code == 1
    assert "dtype int64 (uint8 in the file)" in u8.stderr
    assert "astype(np.float32)" in u8.stderr and "transpose(0, 3, 1, 2)" in u8.stderr
    nhwc = _analyze([run], tmp_path / "nhwc.npz", tmp_path / "b.h5", model=model)
    assert nhwc.code == 1 and "transpose(0, 3, 1, 2)" in nhwc.stderr and "astype" not in nhwc.stderr
    inspected = fdl("inspect", str(run / "step_0.pt"), "--model", model, "--probe", str(tmp_path / "u8.npz"))
    assert inspected.code == 1 and "astype(np.float32)" in inspected.stderr
    fits = _analyze([run], tmp_path / "nchw.npz", tmp_path / "c.h5", model=model)
    assert fits.code == 0, fits.stderr


def test_pt_probe_holding_a_tensor_dataset(tmp_path: Path) -> None:
    """torch.save(TensorDataset(x, y)) is how many keep a probe: it was refused as 'pickled Python objects
    beyond tensors' with torch's link to its documentation as the 'got'. It is now read as (x, y); a .pt
    that holds other objects names them."""
    import argparse

    from torch.utils.data import TensorDataset

    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(_sd(step), run / f"step_{step}.pt")
    npz = _probe(tmp_path / "probe.npz")
    with np.load(npz) as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    torch.save(TensorDataset(x, y), tmp_path / "dataset.pt")
    reference = _analyze([run], npz, tmp_path / "npz.h5", "--json")
    dataset = _analyze([run], tmp_path / "dataset.pt", tmp_path / "pt.h5", "--json")
    assert dataset.code == 0, dataset.stderr
    assert [r["d_lr"] for r in dataset.records] == [r["d_lr"] for r in reference.records]
    torch.save({"x": x, "y": y, "args": argparse.Namespace(seed=0), "split": [TensorDataset(x)]}, tmp_path / "other.pt")
    other = _analyze([run], tmp_path / "other.pt", tmp_path / "other.h5")
    assert other.code == 1 and "argparse.Namespace" in other.stderr and "pytorch.org" not in other.stderr


def test_timm_checkpoint_with_argparse_namespace(tmp_path: Path) -> None:
    """timm, fairseq and many research scripts save their argparse.Namespace (`args`) in the checkpoint:
    weights_only loading refused it, so every such run needed --trust-pickle (full unpickling) for a
    class that only holds attributes. It is allowed to the restricted unpickler now; what the Namespace
    holds is still unpickled under the same restrictions (a hostile value inside is refused, never run)."""
    import argparse

    from tests.test_security import Payload

    run = tmp_path / "run"
    run.mkdir()
    args = argparse.Namespace(model="mlp", lr=0.1, epochs=2, model_ema=True)
    for epoch in (0, 1):
        _timm_checkpoint(run / f"checkpoint-{epoch}.pth", epoch, epoch, args=args, state_dict_ema=_sd(epoch + 50))
    probe = _probe(tmp_path / "probe.npz")
    result = _analyze([run], probe, tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    assert "--trust-pickle" not in result.stderr
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for epoch in (0, 1):
        _timm_checkpoint(hostile / f"checkpoint-{epoch}.pth", epoch, epoch,
                         args=argparse.Namespace(lr=0.1, hook=Payload(marker)))
    refused = _analyze([hostile], probe, tmp_path / "hostile.h5")
    assert refused.code == 1 and "--trust-pickle" in refused.stderr
    assert not marker.exists()


def test_labels_as_researchers_keep_them(tmp_path: Path) -> None:
    """Labels as strings, as floats (0.0, 1.0, 2.0 out of a float tensor) and as a float one-hot matrix
    (Keras' to_categorical): the first two were refused with fixes that did not say how to convert them
    ('y must hold integer class labels' / 'targets must be (n, C)'), the third was analysed silently as
    regression targets (no accuracy, no nc1). int32 / uint8 labels and a compressed npz just work."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        torch.save(_sd(step), run / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    np.savez(tmp_path / "strings.npz", x=x, y=np.array(["cat", "dog", "fox"])[labels])
    np.savez(tmp_path / "floats.npz", x=x, y=labels.astype(np.float32))
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(3, dtype=np.float32)[labels])
    for name, dtype in (("int32", np.int32), ("uint8", np.uint8)):
        np.savez_compressed(tmp_path / f"{name}.npz", x=x.astype(np.float64), y=labels.astype(dtype))
    strings = _analyze([run], tmp_path / "strings.npz", tmp_path / "s.h5")
    assert strings.code == 1 and "np.unique(y, return_inverse=True)" in strings.stderr
    floats = _analyze([run], tmp_path / "floats.npz", tmp_path / "f.h5")
    assert floats.code == 1 and "class labels" in floats.stderr and "astype(np.int64)" in floats.stderr
    onehot = _analyze([run], tmp_path / "onehot.npz", tmp_path / "o.h5")
    assert onehot.code == 0, onehot.stderr
    assert "one-hot" in onehot.stderr and "argmax" in onehot.stderr
    for name in ("int32", "uint8"):
        result = _analyze([run], tmp_path / f"{name}.npz", tmp_path / f"{name}.h5")
        assert result.code == 0, result.stderr


def test_same_epoch_in_metadata_suggests_a_step_regex_that_matches(tmp_path: Path) -> None:
    """A loop that saves every N steps with only `epoch` in the dict (ckpt_{global_step}.pt): the
    checkpoints of one epoch share a step, and the fix suggested --step-regex 'step_(\\d+)', which
    matches none of these names. It now suggests one built from the names, which works as given."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (100, 200, 300):
        torch.save({"model": _sd(step), "epoch": step // 250}, run / f"ckpt_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    result = _analyze([run], probe, tmp_path / "run.h5")
    assert result.code == 1 and "two checkpoints have the same step 0" in result.stderr
    suggested = result.stderr.split("--step-regex '")[1].split("'")[0]
    assert suggested == r"ckpt_(\d+)\.pt", suggested
    again = _analyze([run], probe, tmp_path / "run.h5", "--step-regex", suggested, "--json")
    assert again.code == 0, again.stderr
    assert [r["step"] for r in again.records] == [100, 200, 300]


def test_no_checkpoints_found_points_at_the_sub_folders_that_hold_them(tmp_path: Path) -> None:
    """`fdl analyze lightning_logs/version_0` (the checkpoints are in its checkpoints/ sub-folder, and
    folders are not searched) said 'got: skipped hparams.yaml ...', and `fdl analyze lightning_logs`
    'got: nothing'; a Trainer output of PEFT adapters (checkpoint-N/adapter_model.safetensors) also
    'got: nothing'. The error now names the sub-folders that hold checkpoints, and the adapters."""
    version = tmp_path / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "hparams.yaml").write_text("lr: 0.001\n")
    for epoch, step in ((0, 300), (1, 600)):
        _lightning(version / "checkpoints" / f"epoch={epoch}-step={step}.ckpt", _LitWithLoss(epoch), epoch, step)
    for source in (version, tmp_path / "lightning_logs"):
        result = _analyze([source], _probe(tmp_path / "probe.npz"), tmp_path / "run.h5")
        assert result.code == 1
        assert f"{version / 'checkpoints'} (2 checkpoints)" in result.stderr, result.stderr
        assert f"fdl analyze {version / 'checkpoints'}" in result.stderr
    out = tmp_path / "out"
    for step in (500, 1000):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"base_model.model.0.lora_A.weight": torch.zeros(2, 4)},
                  str(out / f"checkpoint-{step}" / "adapter_model.safetensors"))
    adapters = _analyze([out], tmp_path / "probe.npz", tmp_path / "lora.h5")
    assert adapters.code == 1 and "got: nothing" not in adapters.stderr
    assert "adapter" in adapters.stderr and "merge_and_unload" in adapters.stderr


def test_a_training_loop_that_saves_numpy_arrays_is_analysed_without_trust_pickle(tmp_path: Path) -> None:
    """A checkpoint dict holding np.random.get_state() or a numpy loss history was refused ("could run
    code", --trust-pickle), pushing the user to full unpickling. Its arrays are now read as placeholders
    (never rebuilt), and the numbers are those of the same weights saved alone."""
    loop, alone = tmp_path / "loop", tmp_path / "alone"
    loop.mkdir()
    alone.mkdir()
    for seed, step in ((0, 0), (1, 10)):
        torch.save({"model_state_dict": _sd(seed), "optimizer_state_dict": {}, "epoch": step,
                    "rng": {"numpy": np.random.get_state(), "torch": torch.random.get_rng_state()},
                    "val_losses": np.linspace(1.0, 0.1, 5)}, loop / f"epoch_{step}.pt")
        torch.save(_sd(seed), alone / f"epoch_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    got = _analyze([loop], probe, tmp_path / "loop.h5", "--json")
    assert got.code == 0, got.stderr
    assert "trust-pickle" not in got.stderr
    expected = _analyze([alone], probe, tmp_path / "alone.h5", "--json")
    skip = {"path", "sha256"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in got.records] == [
        {k: v for k, v in r.items() if k not in skip} for r in expected.records
    ]
    assert [r["step"] for r in got.records] == [0, 10]


def test_accelerate_save_counts_are_said_to_be_no_steps(tmp_path: Path) -> None:
    """accelerate's automatic checkpoint naming numbers save_state() folders by save (checkpoint_0, _1,
    ...), with no step inside: fdl used the counts as steps without a word."""
    run = tmp_path / "checkpoints"
    for index in range(3):
        folder = run / f"checkpoint_{index}"
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in mlp(seed=index).state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "random_states_0.pkl").write_bytes(b"not read")
        (folder / "optimizer.bin").write_bytes(b"not read")
    discovery = discover_checkpoints([run])
    assert [ref.step for ref in discovery.checkpoints] == [0, 1, 2]
    said = [note for note in discovery.notes if "accelerate" in note]
    assert said == ["the steps of 3 accelerate save_state() folders (checkpoint_0, ...) are their numbers, which "
                    "count saves, not training steps; to measure against steps, save with "
                    "accelerator.save_state(f\"ckpts/step_{step}\")"]
    (run / "checkpoint_1" / "random_states_0.pkl").unlink()
    (run / "checkpoint_0" / "random_states_0.pkl").unlink()
    (run / "checkpoint_2" / "random_states_0.pkl").unlink()
    assert not [note for note in discover_checkpoints([run]).notes if "accelerate" in note]


def _analyze_command(run: Path, tmp_path: Path) -> tuple[str, ...]:
    """`fdl analyze RUN ... --json` of the tiny MLP with a 40-sample probe, into tmp_path/s.h5."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 3)
    return ("analyze", str(run), "--model", MODEL, "--probe", str(tmp_path / "p.npz"), "--out", str(tmp_path / "s.h5"),
            "--json")


def test_resume_of_a_lightning_run_whose_last_ckpt_sorted_first(tmp_path: Path) -> None:
    """ModelCheckpoint(filename="{step}", save_last=True): last.ckpt sorts before step=9.ckpt, so the
    store recorded last.ckpt for step 9, and the resume after the next save (last.ckpt rewritten at
    step 19) refused: "1 checkpoint file changed since it was analysed ... step 9". The file named
    by its step is the one recorded."""
    run = tmp_path / "checkpoints"
    run.mkdir()
    for step, seed in ((0, 0), (9, 1)):
        torch.save({"state_dict": mlp(seed=seed).state_dict(), "global_step": step}, run / f"step={step}.ckpt")
    torch.save({"state_dict": mlp(seed=1).state_dict(), "global_step": 9}, run / "last.ckpt")
    command = _analyze_command(run, tmp_path)
    first = fdl(*command)
    assert first.code == 0, first.stderr
    assert [Path(r["path"]).name for r in first.records] == ["step=0.ckpt", "step=9.ckpt"]
    for name in ("step=19.ckpt", "last.ckpt"):
        torch.save({"state_dict": mlp(seed=2).state_dict(), "global_step": 19}, run / name)
    resumed = fdl(*command)
    assert resumed.code == 0, resumed.stderr
    assert [(r["step"], Path(r["path"]).name) for r in resumed.records] == [(19, "step=19.ckpt")]


def test_resume_of_a_run_whose_step_files_are_links_beside_a_real_last_ckpt(tmp_path: Path) -> None:
    """Step files moved to other storage and left as symbolic links (step=9.ckpt -> /bulk/step=9.ckpt),
    Lightning's last.ckpt a real file beside them: the link named by its step is the file recorded for
    step 9, not last.ckpt, which the next save rewrites (the resume then refused: 'changed since they
    were analysed')."""
    run, bulk = tmp_path / "checkpoints", tmp_path / "bulk"
    run.mkdir()
    bulk.mkdir()
    for step, seed in ((0, 0), (9, 1)):
        torch.save({"state_dict": mlp(seed=seed).state_dict(), "global_step": step}, bulk / f"step={step}.ckpt")
        (run / f"step={step}.ckpt").symlink_to(bulk / f"step={step}.ckpt")
    # the callbacks' state saved with last.ckpt differs from the step file's: other bytes, same weights
    torch.save({"state_dict": mlp(seed=1).state_dict(), "global_step": 9, "callbacks": {"last": 1}}, run / "last.ckpt")
    assert [r.path.name for r in discover_checkpoints([run]).checkpoints] == ["step=0.ckpt", "step=9.ckpt"]
    command = _analyze_command(run, tmp_path)
    first = fdl(*command)
    assert first.code == 0, first.stderr
    torch.save({"state_dict": mlp(seed=2).state_dict(), "global_step": 19}, bulk / "step=19.ckpt")
    (run / "step=19.ckpt").symlink_to(bulk / "step=19.ckpt")
    torch.save({"state_dict": mlp(seed=2).state_dict(), "global_step": 19, "callbacks": {"last": 2}}, run / "last.ckpt")
    resumed = fdl(*command)
    assert resumed.code == 0, resumed.stderr
    assert [(r["step"], Path(r["path"]).name) for r in resumed.records] == [(19, "step=19.ckpt")]
