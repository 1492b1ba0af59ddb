"""Session 16: checkpoints as five more training stacks write them, without the stacks installed.

Each layout is written as the stack writes it (its dict keys, the objects it pickles, its folder and file
names, where it keeps its step): torchvision's reference scripts, fairseq, nanoGPT, accelerate's
save_state() and mmengine's runner. For each, `fdl analyze` must find the weights, read the step the file
holds, and give a store equal, dataset by dataset, to one analysed from plain state_dicts of the same
weights; an EMA copy the file holds is named in a note, and --weights analyses it. The tests of a fix
failed before it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import LoggedValuesNotLoaded, _torch_load_safe, _weight_copies, discover_checkpoints
from tests.test_analyze import Result, fdl
from tests.test_io_fixes import SMALL
from tests.test_s15_redo import _dump
from tests.tiny_models import mlp

torch.set_num_threads(1)
MODEL = "tests.tiny_models:mlp"
STEPS = (100, 200, 300)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _sd(seed: int) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in mlp(seed=seed).state_dict().items()}


def _ema(index: int) -> dict[str, torch.Tensor]:
    return _sd(100 + index)


def _optimizer(seed: int) -> torch.optim.SGD:
    model = mlp(seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return optimizer


def _averaged(state: dict[str, torch.Tensor], extra: str) -> dict[str, torch.Tensor]:
    """The state_dict of torch.optim.swa_utils.AveragedModel (torchvision's ExponentialMovingAverage: `extra`
    n_averaged) or of mmengine's ExponentialMovingAverage (`extra` steps): its own count, then the model's
    keys under `module.`."""
    return {extra: torch.tensor(7), **{f"module.{key}": value for key, value in state.items()}}


def _analyze(tmp_path: Path, sources: list[Path], name: str, *extra: str) -> Result:
    probe = tmp_path / "probe.npz"
    if not probe.exists():
        rng = np.random.default_rng(0)
        np.savez(probe, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 3)
    done = fdl("analyze", *sources, "--model", MODEL, "--probe", probe, "--out", tmp_path / name, "--device", "cpu",
               *SMALL, *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _plain(tmp_path: Path, name: str, weights: Any) -> Path:
    """The store of plain state_dicts, `weights(i)` at STEPS[i - 1]."""
    folder = tmp_path / f"plain_{name}"
    folder.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save(weights(index), folder / f"step_{step}.pt")
    done = _analyze(tmp_path, [folder], f"plain_{name}.h5")
    assert done.code == 0, done.stderr
    return tmp_path / f"plain_{name}.h5"


@pytest.fixture(scope="module", name="plain")
def _plain_stores(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Any], Path]:
    """`plain(name, weights)`: `_plain`'s store, made once for the module per name (the tests compare their stores'
    numbers with it, never its paths, and only read it)."""
    made: dict[str, tuple[Any, Path]] = {}

    def store(name: str, weights: Any) -> Path:
        if name not in made:
            made[name] = (weights, _plain(tmp_path_factory.mktemp("plain"), name, weights))
        assert made[name][0] is weights, name
        return made[name][1]

    return store


def _numbers(store: Path) -> dict[str, Any]:
    """Every dataset and attribute of a store but those naming its files (path, sha256, signature) and
    the run's provenance (its command and sources)."""
    return {key: value for key, value in _dump(store).items()
            if not re.search(r"(@|/)(path|sha256|file_signature|provenance)$", key)}


def _assert_same_numbers(store: Path, plain: Path) -> None:
    mine, theirs = _numbers(store), _numbers(plain)
    assert sorted(mine) == sorted(theirs)
    for key, value in mine.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == theirs[key].dtype, key
            assert np.array_equal(value, theirs[key], equal_nan=value.dtype.kind == "f"), key
        else:
            assert value == theirs[key], key
    assert any(key.endswith("/d_lr") or "d_lr" in key for key in mine)  # the numbers, not only the layout


def _notes(done: Result) -> list[str]:
    return [line[len("note: "):] for line in done.stderr.splitlines() if line.startswith("note: ")]


# ------------------------------------------------------------------------------ torchvision's references


def _torchvision_run(folder: Path) -> None:
    """references/classification/train.py with --model-ema: model_{epoch}.pth each epoch and checkpoint.pth,
    the latest, rewritten; `args` the script's argparse.Namespace of plain values."""
    folder.mkdir()
    for index, epoch in enumerate(STEPS, 1):
        optimizer = _optimizer(index)
        args = argparse.Namespace(
            data_path="/datasets01/imagenet/", model="resnet18", device="cuda", batch_size=32, epochs=90, lr=0.1,
            lr_scheduler="steplr", lr_step_size=30, output_dir="out", resume="", auto_augment=None, amp=False,
            model_ema=True, model_ema_steps=32, model_ema_decay=0.99998, distributed=False, world_size=1,
            dist_url="env://", weights=None, clip_grad_norm=None, ra_reps=3, val_resize_size=256,
        )
        checkpoint = {
            "model": _sd(index), "optimizer": optimizer.state_dict(),
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 30).state_dict(), "epoch": epoch,
            "args": args, "model_ema": _averaged(_ema(index), "n_averaged"),
        }
        torch.save(checkpoint, folder / f"model_{epoch}.pth")
        torch.save(checkpoint, folder / "checkpoint.pth")


def test_torchvision_reference_checkpoints_note_their_model_ema(tmp_path: Path, plain: Any) -> None:
    """The args Namespace loads without --trust-pickle, and the numbers are the plain state_dicts'. The
    `model_ema` an AveragedModel saves (n_averaged beside `module.` keys) went without the note that names
    --weights: its keys were compared with the model's only once every key lost `module.`."""
    run = tmp_path / "tv"
    _torchvision_run(run)
    _own_and_ema(tmp_path, plain, run, "tv", "model_ema", [
        "skipped checkpoint.pth: same weights and step (300) as model_300.pth",
        "model_100.pth also holds weights under 'model_ema' (an EMA or teacher copy?): fdl analyses the model's "
        "own; --weights model_ema analyses that copy",
    ])



def _own_and_ema(tmp_path: Path, plain: Any, run: Path, name: str, weights: str, notes: list[str]) -> None:
    """The run analysed as it is gives `notes` and the numbers of plain state_dicts of the model's own
    weights; with `--weights WEIGHTS`, those of the EMA's."""
    done = _analyze(tmp_path, [run], f"{name}.h5")
    assert done.code == 0, done.stderr
    assert _notes(done) == notes
    _assert_same_numbers(tmp_path / f"{name}.h5", plain("own", _sd))
    ema = _analyze(tmp_path, [run], f"{name}_ema.h5", "--weights", weights)
    assert ema.code == 0, ema.stderr
    _assert_same_numbers(tmp_path / f"{name}_ema.h5", plain("ema", _ema))

# ------------------------------------------------------------------------------------------------ fairseq


def _fairseq_state(index: int, epoch: int, updates: int, *, legacy: bool) -> dict[str, Any]:
    """fairseq's Trainer.state_dict() and save_checkpoint(): the number of updates in the last entry of
    optimizer_history, the EMA (--store-ema) in extra_state; `legacy`: fairseq < 0.10's `args` Namespace."""
    metrics = collections.OrderedDict(
        train=[(100, "loss", "AverageMeter", {"val": 2.5, "sum": 5.0, "count": 2, "round": 3})])
    state: dict[str, Any] = {
        "args": argparse.Namespace(arch="transformer_lm", lr=[0.25], save_dir="checkpoints", seed=1) if legacy else None,
        "model": _sd(index), "criterion": None,
        "optimizer_history": [
            {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqNAG",
             "lr_scheduler_state": {"best": 3.4}, "num_updates": updates - 40},  # before a resume
            {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqNAG",
             "lr_scheduler_state": {"best": 3.1}, "num_updates": updates},
        ],
        "task_state": {},
        "extra_state": {"metrics": metrics, "previous_training_time": 11.5, "val_loss": 3.2, "best": 3.1,
                        "train_iterator": {"version": 2, "epoch": epoch + 1, "iterations_in_epoch": 0, "shuffle": True},
                        "ema": _ema(index)},
        "last_optimizer_state": _optimizer(index).state_dict(),
    }
    if not legacy:
        state["cfg"] = {"common": {"seed": 1, "fp16": False}, "optimization": {"lr": [0.25], "max_update": 0},
                        "checkpoint": {"save_dir": "checkpoints"}, "ema": {"store_ema": True}}
    return state


@pytest.mark.parametrize("legacy", [False, True])
def test_fairseq_steps_are_its_updates_and_its_ema_is_reached(tmp_path: Path, plain: Any, legacy: bool) -> None:
    """checkpoint{epoch}.pt was read at its epoch (1, 2, 3: its name), beside checkpoint_best.pt and
    checkpoint_last.pt skipped for want of a step; the EMA under extra_state went unmentioned, and
    --weights could not reach it (`extra_state` holds no state_dict, `extra_state.ema` was taken as a key
    prefix). The steps are fairseq's number of updates, and --weights extra_state.ema takes the EMA."""
    run = tmp_path / "fairseq"
    run.mkdir()
    for index, (epoch, updates) in enumerate(zip((1, 2, 3), STEPS, strict=True), 1):
        state = _fairseq_state(index, epoch, updates, legacy=legacy)
        torch.save(state, run / f"checkpoint{epoch}.pt")
        torch.save(state, run / "checkpoint_last.pt")
        if epoch == 2:
            torch.save(state, run / "checkpoint_best.pt")
    found = discover_checkpoints([run])
    assert [(ref.path.name, ref.step, ref.step_source) for ref in found.checkpoints] == [
        (f"checkpoint{epoch}.pt", step, "metadata:optimizer_history[-1].num_updates")
        for epoch, step in zip((1, 2, 3), STEPS, strict=True)]
    _own_and_ema(tmp_path, plain, run, "fairseq", "extra_state.ema", [
        "skipped checkpoint_best.pt: same weights and step (200) as checkpoint2.pt",
        "skipped checkpoint_last.pt: same weights and step (300) as checkpoint3.pt",
        "checkpoint1.pt also holds weights under 'extra_state.ema' (an EMA or teacher copy?): fdl analyses the "
        "model's own; --weights extra_state.ema analyses that copy",
    ])
    wrong = _analyze(tmp_path, [run / "checkpoint1.pt"], "wrong.h5", "--weights", "extra_state")
    assert wrong.code == 1
    assert "got: dict whose entry extra_state.ema holds weights" in wrong.stderr
    assert "fix: pass --weights extra_state.ema" in wrong.stderr


# ------------------------------------------------------------------------------------------------ nanoGPT


def test_nanogpt_runs_one_a_folder_are_pointed_at_without_a_step_regex(tmp_path: Path, plain: Any) -> None:
    """nanoGPT writes out_dir/ckpt.pt (keys _orig_mod.-prefixed when compiled, its step in iter_num). For
    the folder above one out_dir a run, the error's fix was --step-regex 'out(\\d+)/', which overrides
    iter_num: following it stored the runs at steps 1, 2, 3. The fix names the folders alone."""
    root = tmp_path / "nanogpt"
    for index, step in enumerate(STEPS, 1):
        (root / f"out{index}").mkdir(parents=True)
        torch.save({
            "model": {f"_orig_mod.{key}": value for key, value in _sd(index).items()},
            "optimizer": _optimizer(index).state_dict(),
            "model_args": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "bias": False,
                           "vocab_size": 50304, "dropout": 0.0},
            "iter_num": step, "best_val_loss": torch.tensor(2.9),
            "config": {"out_dir": f"out{index}", "eval_interval": 2000, "compile": True, "dtype": "bfloat16"},
        }, root / f"out{index}" / "ckpt.pt")
    done = _analyze(tmp_path, [root], "refused.h5")
    assert done.code == 1
    said = " ".join(done.stderr.split())
    assert f"fix: pass the folders, whose checkpoints hold their steps (iter_num): fdl analyze {root}/out* ..." in said
    assert "--step-regex" not in said
    folders = sorted(root.glob("out*"))
    followed = _analyze(tmp_path, folders, "nanogpt.h5")
    assert followed.code == 0, followed.stderr
    _assert_same_numbers(tmp_path / "nanogpt.h5", plain("own", _sd))


# ------------------------------------------------------------------------------------ accelerate save_state


def test_accelerate_save_state_folders(tmp_path: Path, plain: Any) -> None:
    """accelerator.save_state(): model.safetensors (pytorch_model.bin with safe_serialization=False) beside
    optimizer.bin, scheduler.bin and random_states_0.pkl, in checkpoint_N under automatic naming (N counts
    saves: a note says so) or in the folder the script names. Already read right; pinned here."""
    named, counted = tmp_path / "named", tmp_path / "project" / "checkpoints"
    counted.mkdir(parents=True)
    named.mkdir()
    for index, step in enumerate(STEPS, 1):
        for folder, binary in ((named / f"step_{step}", True), (counted / f"checkpoint_{step}", False)):
            folder.mkdir()
            if binary:
                torch.save(_sd(index), folder / "pytorch_model.bin")
            else:
                save_file(_sd(index), str(folder / "model.safetensors"), metadata={"format": "pt"})
            optimizer = _optimizer(index)
            torch.save(optimizer.state_dict(), folder / "optimizer.bin")
            torch.save(torch.optim.lr_scheduler.StepLR(optimizer, 3).state_dict(), folder / "scheduler.bin")
            torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                        "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    own = plain("own", _sd)
    for source, name in ((named, "named.h5"), (counted, "counted.h5")):
        done = _analyze(tmp_path, [source], name)
        assert done.code == 0, done.stderr
        _assert_same_numbers(tmp_path / name, own)
    assert "which count saves, not training steps" in done.stderr


# ----------------------------------------------------------------------------------------------- mmengine


@contextlib.contextmanager
def _mmengine_installed() -> Iterator[type]:
    """A class pickled as mmengine.logging.history_buffer.HistoryBuffer is (a plain class: NEWOBJ, then
    BUILD with its __dict__ of numpy arrays), importable only while the checkpoints are written: fdl
    reads them where mmengine is not installed."""
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    assert not any(name in sys.modules for name in names)
    modules = {name: types.ModuleType(name) for name in names}

    class HistoryBuffer:
        def __init__(self, log_history: Any = (), count_history: Any = (), max_length: int = 1000000) -> None:
            self.max_length = max_length
            self._log_history = np.array(log_history)
            self._count_history = np.array(count_history)

    HistoryBuffer.__module__ = names[-1]
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    modules[names[-1]].HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]
    sys.modules.update(modules)
    try:
        yield HistoryBuffer
    finally:
        for name in names:
            del sys.modules[name]


def _mmengine_run(folder: Path, *, ema: bool) -> None:
    """Runner.save_checkpoint() of a by-epoch run: epoch_{E}.pth with meta's epoch and iter, the MessageHub's
    state (HistoryBuffers of logged values), the optimizer and schedulers; CheckpointHook's best copy
    (best_accuracy_top1_epoch_E.pth, without optimizer) and last_checkpoint (a text file naming the latest).
    With EMAHook, its before_save_checkpoint() swaps the EMA's weights into state_dict and the model's
    into ema_state_dict (`module.` keys beside the EMA's `steps`)."""
    folder.mkdir()
    with _mmengine_installed() as history_buffer:
        for index, (epoch, iteration) in enumerate(zip((1, 2, 3), STEPS, strict=True), 1):
            _mmengine_save(folder, history_buffer, index, epoch, iteration, ema=ema)


def _mmengine_save(folder: Path, history_buffer: type, index: int, epoch: int, iteration: int, *, ema: bool) -> None:
    meta = {"epoch": epoch, "iter": iteration, "cfg": "model = dict(type='ImageClassifier')\n", "seed": 42,
            "experiment_name": "resnet_20240101", "time": "20240101_000000", "mmengine_version": "0.10.4",
            "dataset_meta": {"classes": ("a", "b", "c")}}
    hub = {"log_scalars": collections.OrderedDict({"train/loss": history_buffer([0.5, 0.4], [1, 1]),
                                                   "train/lr": history_buffer([0.1], [1])}),
           "runtime_info": collections.OrderedDict(epoch=epoch, iter=iteration, max_iters=300),
           "resumed_keys": collections.OrderedDict({"train/loss": True, "epoch": True})}
    state = collections.OrderedDict(_ema(index) if ema else _sd(index))
    checkpoint = {"meta": meta, "state_dict": state, "message_hub": hub}
    if ema:
        checkpoint["ema_state_dict"] = collections.OrderedDict(_averaged(_sd(index), "steps"))
    if epoch == 2:
        torch.save(checkpoint, folder / "best_accuracy_top1_epoch_2.pth")
    checkpoint["optimizer"] = _optimizer(index).state_dict()
    checkpoint["param_schedulers"] = [{"by_epoch": True, "last_step": epoch, "base_values": [0.1]}]
    torch.save(checkpoint, folder / f"epoch_{epoch}.pth")
    (folder / "last_checkpoint").write_text(str(folder / f"epoch_{epoch}.pth"))


def test_mmengine_checkpoints_load_without_trust_at_their_iterations(tmp_path: Path, plain: Any) -> None:
    """mmengine's MessageHub pickles HistoryBuffer objects: every checkpoint was refused ("could run code")
    and, with --trust-pickle, failed where mmengine is not installed. They load as placeholders now; the
    step is meta's iter (the names hold epochs), and of the best copy and epoch_2.pth, which hold the same
    weights at one step, epoch_2.pth is kept (the best copy is deleted at the next better epoch)."""
    run = tmp_path / "mmengine"
    _mmengine_run(run, ema=False)
    done = _analyze(tmp_path, [run], "mm.h5")
    assert done.code == 0, done.stderr
    assert _notes(done)[0] == "skipped best_accuracy_top1_epoch_2.pth: same weights and step (200) as epoch_2.pth"
    found = discover_checkpoints([run])
    assert [(ref.path.name, ref.step, ref.step_source) for ref in found.checkpoints] == [
        (f"epoch_{epoch}.pth", step, "metadata:meta.iter") for epoch, step in zip((1, 2, 3), STEPS, strict=True)]
    _assert_same_numbers(tmp_path / "mm.h5", plain("own", _sd))


def test_mmengine_ema_hook_says_which_weights_are_which(tmp_path: Path, plain: Any) -> None:
    """With EMAHook, `state_dict` holds the EMA's weights and `ema_state_dict` the trained model's: fdl
    analysed the EMA's without a word (the `steps` key kept `ema_state_dict` from counting as a copy)."""
    run = tmp_path / "mmengine"
    _mmengine_run(run, ema=True)
    done = _analyze(tmp_path, [run], "mm.h5")
    assert done.code == 0, done.stderr
    assert "epoch_1.pth is mmengine's with its EMAHook, which saves the EMA's weights under 'state_dict' and the " \
           "trained model's under 'ema_state_dict': fdl analyses the EMA's; --weights ema_state_dict analyses the " \
           "trained model's" in _notes(done)
    _assert_same_numbers(tmp_path / "mm.h5", plain("ema", _ema))
    trained = _analyze(tmp_path, [run], "mm_trained.h5", "--weights", "ema_state_dict")
    assert trained.code == 0, trained.stderr
    _assert_same_numbers(tmp_path / "mm_trained.h5", plain("own", _sd))


class _Reduced:
    """Pickled as `mmengine.logging.history_buffer.HistoryBuffer(...)` called with arguments (REDUCE)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_named_global, ("rm -rf /", 10**9), {"max_length": [1, 2]})


def _named_global() -> None:  # pragma: no cover - never called: only its name is pickled
    raise AssertionError


def test_a_history_buffer_runs_no_code_and_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The placeholder takes whatever the pickle gives it (call arguments, a state) and keeps none of it;
    no module of mmengine is imported."""
    monkeypatch.setattr(_named_global, "__module__", "mmengine.logging.history_buffer")
    monkeypatch.setattr(_named_global, "__qualname__", "HistoryBuffer")
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[names[-1]].HistoryBuffer = _named_global  # type: ignore[attr-defined]
    torch.save({"state_dict": _sd(1), "message_hub": {"log_scalars": {"loss": _Reduced()}}}, tmp_path / "a.pth")
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    loaded = _torch_load_safe(tmp_path / "a.pth")
    placeholder = loaded["message_hub"]["log_scalars"]["loss"]
    assert isinstance(placeholder, LoggedValuesNotLoaded)
    assert repr(placeholder) == "<mmengine.logging.history_buffer.HistoryBuffer, not loaded>"
    assert not hasattr(placeholder, "__dict__") and not hasattr(placeholder, "max_length")
    assert not any(name in sys.modules for name in names)


# ------------------------------------------------------------------------------------------ weight copies


def test_weight_copies_below_the_top_level_and_beside_a_count() -> None:
    """`_weight_copies` looked at the top-level entries only, and compared keys after stripping `module.`
    from all or none of them: an AveragedModel's or mmengine's EMA (a count beside `module.` keys), an EMA
    inside the entry that holds the model or inside fairseq's extra_state, and an EMA module pickled whole
    were missed."""
    own, ema = _sd(0), _sd(1)
    optimizer = _optimizer(0).state_dict()
    cases = [
        ({"model": own, "model_ema": _averaged(ema, "n_averaged"), "optimizer": optimizer}, ("model_ema",)),
        ({"state_dict": own, "ema_state_dict": _averaged(ema, "steps")}, ("ema_state_dict",)),
        ({"model": own, "extra_state": {"ema": ema, "val_loss": 3.0}}, ("extra_state.ema",)),
        ({"model": {"model": own, "ema": ema}}, ("model.ema",)),
        ({"state_dict": {"model": own, "model_ema": {"module": ema}}}, ("state_dict.model_ema",)),
        ({"model": own, "ema": mlp(seed=1)}, ("ema",)),
        ({"model": own, "optimizer": optimizer, "scaler": {"scale": torch.tensor(2.0)}, "step": 3}, ()),
    ]
    for obj, copies in cases:
        assert _weight_copies(obj, own) == copies, obj.keys()


def test_weights_takes_an_entry_below_the_top_level(tmp_path: Path, plain: Any) -> None:
    """--weights model.ema of `{"model": {"model": ..., "ema": ...}}` was looked for as a key prefix of the
    model's own weights, and refused."""
    run = tmp_path / "nested"
    run.mkdir()
    for index, step in enumerate(STEPS, 1):
        torch.save({"model": {"model": _sd(index), "ema": _ema(index)}, "step": step}, run / f"ckpt_{step}.pt")
    done = _analyze(tmp_path, [run], "own.h5")
    assert done.code == 0, done.stderr
    assert "ckpt_100.pt also holds weights under 'model.ema'" in " ".join(done.stderr.split())
    _assert_same_numbers(tmp_path / "own.h5", plain("own", _sd))
    ema = _analyze(tmp_path, [run], "ema.h5", "--weights", "model.ema")
    assert ema.code == 0, ema.stderr
    _assert_same_numbers(tmp_path / "ema.h5", plain("ema", _ema))


def test_an_ema_module_pickled_whole(tmp_path: Path, plain: Any) -> None:
    """`{"model": state_dict, "ema": module, "step": N}` (an EMA kept as a deep copy of the model): without
    --trust-pickle, the error said the file held no step key (it was never read); with it, the step key
    was still not read (discovery peeks without unpickling) and the EMA went unmentioned."""
    run = tmp_path / "pickled"
    run.mkdir()
    for index, step in enumerate(STEPS, 1):
        ema = mlp(seed=0)
        ema.load_state_dict(_ema(index))
        torch.save({"model": _sd(index), "ema": ema, "step": step}, run / f"ckpt_{'abc'[index - 1]}.pt")
    refused = _analyze(tmp_path, [run / "ckpt_a.pt"], "refused.h5")
    assert refused.code == 1
    assert "got: its step keys are not read, since it pickles Python objects (read with --trust-pickle)" in \
        " ".join(refused.stderr.split())
    done = _analyze(tmp_path, [run], "own.h5", "--trust-pickle")
    assert done.code == 0, done.stderr
    assert "ckpt_a.pt also holds weights under 'ema'" in " ".join(done.stderr.split())
    _assert_same_numbers(tmp_path / "own.h5", plain("own", _sd))
    ema = _analyze(tmp_path, [run], "ema.h5", "--trust-pickle", "--weights", "ema")
    assert ema.code == 0, ema.stderr
    _assert_same_numbers(tmp_path / "ema.h5", plain("ema", _ema))
