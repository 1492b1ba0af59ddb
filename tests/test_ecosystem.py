"""Defects found running fdl on what real training libraries write (transformers 5 Trainer, timm's
CheckpointSaver, Lightning's ModelCheckpoint, torch.compile), pinned with torch-only stand-ins that
reproduce the file layouts, keys and objects those libraries produced (the libraries are not installed
on CI). Each test failed before its fix."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_analyze import Result, fdl
from tests.test_usability import _analyze, _lightning, _LitWithLoss, _probe, _sd
from tests.tiny_models import mlp

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def test_lightning_default_root_dir_names_the_checkpoints_folder(tmp_path: Path) -> None:
    """`fdl analyze ROOT` on a Lightning `default_root_dir` (ROOT/lightning_logs/version_0/checkpoints,
    what `Trainer(default_root_dir=ROOT)` or a run from ROOT writes) said 'got: nothing': the search for
    sub-folders holding checkpoints stopped one level above checkpoints/."""
    root = tmp_path / "run"
    checkpoints = root / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints.parent / "hparams.yaml").write_text("lr: 0.05\n")
    (checkpoints.parent / "metrics.csv").write_text("step,train_loss\n")
    for epoch, step in ((0, 20), (1, 40)):
        _lightning(checkpoints / f"epoch={epoch}-step={step}.ckpt", _LitWithLoss(epoch), epoch, step)
    _lightning(checkpoints / "last.ckpt", _LitWithLoss(1), 1, 40)
    result = _analyze([root], _probe(tmp_path / "probe.npz"), tmp_path / "run.h5")
    assert result.code == 1
    assert "got: nothing" not in result.stderr, result.stderr
    assert f"fdl analyze {checkpoints}" in result.stderr, result.stderr


def _timm_save(path: Path, seed: int, epoch: int, metric: float | None = None) -> None:
    """A checkpoint as timm's CheckpointSaver._save writes it (train.py's args as a Namespace, model EMA)."""
    model = mlp(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"epoch": epoch, "arch": "resnet10t", "optimizer": optimizer.state_dict(), "version": 2,
             "args": argparse.Namespace(model="resnet10t", epochs=6, out="out_timm"),
             "state_dict": _sd(seed), "state_dict_ema": _sd(seed + 100),
             "saver": {"checkpoint_files": [], "best_epoch": None, "best_metric": None, "pending": (epoch, metric)}}
    if metric is not None:
        state["metric"] = metric
    torch.save(state, path)


def _follow_the_clash_fix(run: Path, tmp_path: Path, *, step: int) -> Result:
    """`fdl analyze RUN` fails on a step clash at `step`; the run again with the option its fix names."""
    probe = _probe(tmp_path / "probe.npz")
    clash = _analyze([run], probe, tmp_path / "clash.h5")
    assert clash.code == 1 and f"same step {step}" in clash.stderr, clash.stderr
    fix = re.search(r"fix: pass (--\S+) '([^']+)'", clash.stderr)
    assert fix is not None, clash.stderr
    followed = _analyze([run], probe, tmp_path / "run.h5", fix.group(1), fix.group(2), "--json")
    assert followed.code == 0, followed.stderr
    return followed


def test_timm_recovery_checkpoint_step_clash_suggests_a_fix_that_keeps_the_epoch_checkpoints(tmp_path: Path) -> None:
    """timm's CheckpointSaver writes checkpoint-E.pth.tar per epoch and, mid-epoch, recovery-E-B.pth.tar (B the
    batch index): both hold only the epoch, so epoch E clashes. The error's fix was a --step-regex built from
    the recovery file's name ('recovery\\-\\d+\\-(\\d+)\\.pth\\.tar'): following it analysed the recovery file
    alone, at step B, and skipped every epoch checkpoint. The fix now keeps the names of the run's pattern."""
    run = tmp_path / "out_timm"
    run.mkdir()
    for epoch in range(3):
        _timm_save(run / f"checkpoint-{epoch}.pth.tar", epoch, epoch, metric=0.5 + epoch / 10)
    _timm_save(run / "recovery-1-10.pth.tar", 7, 1)
    followed = _follow_the_clash_fix(run, tmp_path, step=1)
    assert [r["step"] for r in followed.records] == [0, 1, 2], followed.stderr


COMPILED_FACTORY = """
import torch
from tests.tiny_models import mlp


def build():
    # the training script's own factory: it compiles the network (compilation happens at the first call)
    return torch.compile(mlp(), backend="eager")
"""


def test_a_factory_that_returns_a_compiled_model(tmp_path: Path) -> None:
    """A --model factory that returns torch.compile(net) (an OptimizedModule: its keys carry `_orig_mod.`)
    was refused for every checkpoint, plain or compiled, with 'do not fit the model built by --model ...
    wrong --model?': fdl strips `_orig_mod.` from the checkpoint's keys but not from the model's."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 20):
        compiled = {f"_orig_mod.{k}": v for k, v in _sd(step).items()}
        torch.save({"model_state_dict": compiled, "step": step}, run / f"ckpt_{step}.pt")
    plain = tmp_path / "plain"
    plain.mkdir()
    for step in (0, 20):
        torch.save({"model_state_dict": _sd(step), "step": step}, plain / f"ckpt_{step}.pt")
    (tmp_path / "compiled_model.py").write_text(COMPILED_FACTORY)
    probe = _probe(tmp_path / "probe.npz")
    reference = _analyze([plain], probe, tmp_path / "plain.h5", "--json")
    assert reference.code == 0, reference.stderr
    for source, out in ((run, "compiled.h5"), (plain, "plain_by_compiled.h5")):
        result = _analyze([source], probe, tmp_path / out, "--json", model=f"{tmp_path / 'compiled_model.py'}:build")
        assert result.code == 0, result.stderr
        assert [r["d_lr"] for r in result.records] == [r["d_lr"] for r in reference.records]
    inspected = fdl("inspect", str(run / "ckpt_20.pt"), "--model", f"{tmp_path / 'compiled_model.py'}:build",
                    "--probe", str(probe), "--json")
    assert inspected.code == 0, inspected.stderr
    assert json.loads(inspected.stdout)["default_layer"] == "2:input"


HF_FACTORY = '''
import logging
import sys

import torch
from torch import nn


class TinyViTConfig:
    model_type = "vit"

    def __init__(self, hidden=8):
        self.hidden = hidden


class TinyViTForImageClassification(nn.Module):
    """Stands in for a transformers 5 PreTrainedModel whose modules were renamed (ViT: layers.N.attention.q_proj)
    while save_pretrained() keeps writing the older names (encoder.layer.N.attention.attention.query), and
    whose from_pretrained(None, config=, state_dict=) renames them back, as transformers' conversion mapping does."""

    _renames = (("vit.encoder.layer.0.attention.attention.query.", "vit.layers.0.attention.q_proj."),)

    def __init__(self, config):
        super().__init__()
        self.config = config
        torch.manual_seed(0)
        self.vit = nn.Module()
        self.vit.layers = nn.ModuleList([nn.Module()])
        self.vit.layers[0].attention = nn.Module()
        self.vit.layers[0].attention.q_proj = nn.Linear(4, config.hidden)
        self.classifier = nn.Linear(config.hidden, 3)

    def forward(self, pixel_values):
        return {"logits": self.classifier(torch.relu(self.vit.layers[0].attention.q_proj(pixel_values)))}

    @classmethod
    def from_pretrained(cls, path, *, config, state_dict, output_loading_info=False, dtype=None):
        assert path is None
        renamed = {}
        for key, value in state_dict.items():
            for old, new in cls._renames:
                key = key.replace(old, new)
            renamed[key] = value
        model = cls(config)
        result = model.load_state_dict(renamed, strict=False)
        logging.getLogger("transformers.modeling_utils").warning("LOAD REPORT from: None")
        print("Loading weights: 100%", file=sys.stderr)
        print("LOAD REPORT", file=sys.stdout)
        info = {"missing_keys": set(result.missing_keys), "unexpected_keys": set(result.unexpected_keys),
                "mismatched_keys": set(), "error_msgs": []}
        return (model.eval(), info) if output_loading_info else model.eval()


def build(hidden=8):
    return TinyViTForImageClassification(TinyViTConfig(hidden))
'''


def test_hf_model_saved_under_its_older_weight_names(tmp_path: Path) -> None:
    """transformers 5 renamed the modules of some models (ViT's encoder.layer.N.attention.attention.query is
    layers.N.attention.q_proj) but save_pretrained() - and so the Trainer's checkpoint-N/model.safetensors -
    keeps the old names, which its from_pretrained() converts. fdl loaded the file's keys as they are and
    refused every checkpoint ('32 missing key(s) ... wrong --model?'), with no way around it short of
    re-saving the run. fdl now lets such a model's own from_pretrained(None, config=, state_dict=) rename
    them (accepted only when every key then fits), without its messages on stdout."""
    (tmp_path / "hf_model.py").write_text(HF_FACTORY)
    spec = f"{tmp_path / 'hf_model.py'}:build"
    renamed = tmp_path / "out_vit"
    native = tmp_path / "native"
    for step in (0, 50):
        torch.manual_seed(step)
        weights = {"vit.layers.0.attention.q_proj.weight": torch.randn(8, 4),
                   "vit.layers.0.attention.q_proj.bias": torch.randn(8),
                   "classifier.weight": torch.randn(3, 8), "classifier.bias": torch.randn(3)}
        old = {k.replace("vit.layers.0.attention.q_proj.", "vit.encoder.layer.0.attention.attention.query."): v
               for k, v in weights.items()}
        for folder, state in ((renamed, old), (native, weights)):
            (folder / f"checkpoint-{step}").mkdir(parents=True)
            save_file(state, str(folder / f"checkpoint-{step}" / "model.safetensors"), metadata={"format": "pt"})
            (folder / f"checkpoint-{step}" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    probe = _probe(tmp_path / "probe.npz")
    reference = _analyze([native], probe, tmp_path / "native.h5", "--json", model=spec)
    assert reference.code == 0, reference.stderr
    result = _analyze([renamed], probe, tmp_path / "vit.h5", "--json", model=spec)
    assert result.code == 0, result.stderr
    assert "LOAD REPORT" not in result.stdout and "Loading weights" not in result.stderr
    assert [r["step"] for r in result.records] == [0, 50]
    for got, want in zip(result.records, reference.records, strict=True):
        assert np.isclose(got["d_lr"], want["d_lr"], rtol=0, atol=0) and got["accuracy"] == want["accuracy"]
    # a checkpoint the conversion does not fully fit is still refused, with fdl's own message
    wrong = tmp_path / "wrong" / "checkpoint-0"
    wrong.mkdir(parents=True)
    save_file({"vit.encoder.layer.0.attention.attention.query.weight": torch.randn(8, 4),
               "classifier.weight": torch.randn(3, 8), "classifier.bias": torch.randn(3)},
              str(wrong / "model.safetensors"))
    refused = _analyze([wrong.parent], probe, tmp_path / "wrong.h5", model=spec)
    assert refused.code == 1 and "do not fit" in refused.stderr, refused.stderr
    # A loader whose report leaves out a key it initialised afresh (transformers' _keys_to_ignore_on_load_missing)
    # is not taken at its word: every weight must be one of the file's.
    (tmp_path / "hf_quiet.py").write_text(HF_FACTORY.replace(
        '{"missing_keys": set(result.missing_keys)', '{"missing_keys": set(result.missing_keys) - {"classifier.bias"}'))
    partial = tmp_path / "partial" / "checkpoint-0"
    partial.mkdir(parents=True)
    whole = load_file(str(renamed / "checkpoint-0" / "model.safetensors"))
    kept = {k: v for k, v in whole.items() if k != "classifier.bias"}
    save_file(kept, str(partial / "model.safetensors"))
    quiet = f"{tmp_path / 'hf_quiet.py'}:build"
    assert _analyze([renamed], probe, tmp_path / "quiet.h5", model=quiet).code == 0
    refused = _analyze([partial.parent], probe, tmp_path / "partial.h5", model=quiet)
    assert refused.code == 1 and "do not fit" in refused.stderr and "classifier.bias" in refused.stderr, refused.stderr


LONG_NAMES = """
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.intermediate_dense_projection = nn.Linear(4, 8)

    def forward(self, x):
        return self.intermediate_dense_projection(x).relu()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert_encoder_layers = nn.ModuleList([Block()])
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.bert_encoder_layers[0](x))


def build():
    return Net()
"""


def test_inspect_never_cuts_a_module_name_in_a_narrow_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fdl inspect ... | less` (stderr not a terminal: 80 columns) printed 'bert.encoder.lay…' for every
    module of a transformer: the names `--layer` takes were cut. They now fold onto a second line."""
    monkeypatch.setenv("COLUMNS", "80")
    (tmp_path / "net.py").write_text(LONG_NAMES)
    namespace: dict[str, object] = {}
    exec(compile(LONG_NAMES, "net.py", "exec"), namespace)  # noqa: S102 - the test's own model code
    torch.save(namespace["build"]().state_dict(), tmp_path / "step_0.pt")  # type: ignore[operator]
    result = fdl("inspect", str(tmp_path / "step_0.pt"), "--model", f"{tmp_path / 'net.py'}:build",
                 "--probe", str(_probe(tmp_path / "probe.npz")))
    assert result.code == 0, result.stderr
    assert "…" not in result.stderr, result.stderr
    rows = [line.split("│")[1].strip() for line in result.stderr.splitlines() if line.startswith("│")]
    names = []
    for cell in rows:  # a folded name continues on the next row, whose other cells are empty
        if names and names[-1] == "bert_encoder_layers.0.intermediate_dense" and cell == "_projection":
            names[-1] += cell
        else:
            names.append(cell)
    assert "bert_encoder_layers.0.intermediate_dense_projection" in names, result.stderr
    assert "bert_encoder_layers.0" in names and "classifier" in names


PER_POSITION_HEAD = """
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(11, 8)
        self.lm_head = nn.Linear(8, 11, bias=False)

    def forward(self, input_ids):
        return {"logits": self.lm_head(self.wte(input_ids).tanh())}


def build():
    return TinyLM()
"""


def test_inspect_counts_the_features_analyze_takes_from_a_per_position_head(tmp_path: Path) -> None:
    """A GPT2LMHeadModel's default layer is lm_head:input, of shape (1, L, d) per sample: analyze flattens it
    to L*d features (n_features 512 for L=16, d=32), but inspect said '32 features' (lm_head.in_features)."""
    (tmp_path / "lm.py").write_text(PER_POSITION_HEAD)
    namespace: dict[str, object] = {}
    exec(compile(PER_POSITION_HEAD, "lm.py", "exec"), namespace)  # noqa: S102 - the test's own model code
    torch.save(namespace["build"]().state_dict(), tmp_path / "step_0.pt")  # type: ignore[operator]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.integers(0, 11, size=(24, 5)).astype(np.int64))
    spec = f"{tmp_path / 'lm.py'}:build"
    inspected = fdl("inspect", str(tmp_path / "step_0.pt"), "--model", spec, "--probe", str(tmp_path / "probe.npz"),
                    "--json")
    assert inspected.code == 0, inspected.stderr
    analysed = fdl("analyze", str(tmp_path / "step_0.pt"), "--model", spec, "--probe", str(tmp_path / "probe.npz"),
                   "--out", str(tmp_path / "lm.h5"), "--top-k", "4", "--anchor-size", "16", "--json")
    assert analysed.code == 0, analysed.stderr
    assert analysed.records[0]["n_features"] == 40
    assert json.loads(inspected.stdout)["default_features"] == 40


def test_a_wrong_weights_name_is_said_even_where_a_last_copy_shares_a_step(tmp_path: Path) -> None:
    """`--weights state_dict_ema` (timm's name) on a Lightning folder (epoch=N-step=M.ckpt and last.ckpt, the
    same weights at the same step) said 'two checkpoints have the same step ...' with a --step-regex/--glob
    fix: the duplicate check loads both files' --weights copy, failed, and took them for two runs. The
    error is now the --weights one, which says what the files hold."""
    run = tmp_path / "checkpoints"
    run.mkdir()
    for epoch, step in ((0, 20), (1, 40)):
        _lightning(run / f"epoch={epoch}-step={step}.ckpt", _LitWithLoss(epoch), epoch, step)
    _lightning(run / "last.ckpt", _LitWithLoss(1), 1, 40)
    result = _analyze([run], _probe(tmp_path / "probe.npz"), tmp_path / "run.h5", "--weights", "state_dict_ema")
    assert result.code == 1
    assert "same step" not in result.stderr, result.stderr
    assert "--weights state_dict_ema" in result.stderr and "model." in result.stderr, result.stderr


def test_trainer_checkpoint_folders_given_one_by_one_say_their_skipped_files_once(tmp_path: Path) -> None:
    """`fdl analyze out/checkpoint-*` (the shell's way to pick a Trainer's checkpoints) printed four notes
    per folder (optimizer.pt, rng_state.pth, scheduler.pt, training_args.bin: 24 lines for 6 checkpoints)
    and 'config.json, config.json, config.json, ...'. Each kind of skipped file is now said once, counted."""
    from tests.test_usability import _hf_checkpoint

    out = tmp_path / "out"
    for seed, step in ((0, 20), (1, 40), (2, 60)):
        _hf_checkpoint(out / f"checkpoint-{step}", seed, step)
    result = _analyze(sorted(out.glob("checkpoint-*")), _probe(tmp_path / "probe.npz"), tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: skipped")]
    assert len(notes) == 2, result.stderr
    assert "optimizer.pt ×3" in result.stderr and "training_args.bin ×3" in result.stderr, result.stderr
    assert "config.json ×3" in result.stderr, result.stderr


def test_classify_says_when_the_reference_is_not_the_initialisation(tmp_path: Path) -> None:
    """A Trainer, timm's CheckpointSaver and Lightning save no step 0, so the default reference is the first
    save (step 20 of a Trainer run): classify printed '20: coefficient' and cka_init values with nothing
    to say they miss the features learned before step 20. A line now says so (printed only)."""
    run = tmp_path / "run"
    run.mkdir()
    for seed, step in ((0, 20), (1, 40)):
        torch.save({"model_state_dict": _sd(seed), "step": step}, run / f"ckpt_{step}.pt")
    probe = _probe(tmp_path / "probe.npz")
    assert _analyze([run], probe, tmp_path / "run.h5").code == 0
    said = fdl("classify", str(tmp_path / "run.h5"))
    assert said.code == 0, said.stderr
    assert "the reference is step 20, the first checkpoint, not the initialisation" in said.stderr, said.stderr
    torch.save({"model_state_dict": _sd(9), "step": 0}, run / "ckpt_0.pt")
    assert _analyze([run], probe, tmp_path / "from0.h5").code == 0
    assert "not the initialisation" not in fdl("classify", str(tmp_path / "from0.h5")).stderr


def test_a_file_without_the_weights_named_is_its_own_failure_where_another_has_its_weights(tmp_path: Path) -> None:
    """--weights state_dict_ema on a run whose step 20 file has no EMA copy (saved by another callback)
    and the same network weights as step 10 (a frozen stretch): the check for duplicates at two steps
    loaded both EMA copies, and the WeightsNotFoundError it now lets through ended discovery ('--weights
    state_dict_ema: ...'), where that file failed on its own and the others were analysed."""
    from fdl_cli.checkpoints import discover_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 0, "state_dict": _sd(0), "state_dict_ema": _sd(100)}, run / "step_0.pt")
    torch.save({"step": 10, "state_dict": _sd(1), "state_dict_ema": _sd(101)}, run / "step_10.pt")
    torch.save({"step": 20, "state_dict": _sd(1)}, run / "step_20.pt")
    found = discover_checkpoints([run], weights="state_dict_ema")
    assert [ref.step for ref in found.checkpoints] == [0, 10, 20] and found.duplicates == []


@pytest.mark.parametrize(("name", "copy"), [
    ("step_{}.pt", "step_{}_ema.pt"), ("step_{}.pt", "step_{}.pt.bak.pt"),
    ("epoch=0-step={}.ckpt", "epoch=0-step={}-v1.ckpt"),
])
def test_a_step_clash_between_name_patterns_suggests_a_fix_that_separates_them(
    tmp_path: Path, name: str, copy: str
) -> None:
    """The --glob that the clash between two name patterns suggests ('step_*.pt', from step_0.pt) matched
    the other pattern too (step_0_ema.pt, an EMA copy saved beside each checkpoint): following the fix gave
    the same error. The glob keeps to numbers ('step_*[0-9].pt'), and names no glob can separate
    (Lightning's -v1 copies) get an anchored --step-regex."""
    run = tmp_path / "run"
    run.mkdir()
    for index, step in enumerate((0, 10, 20)):
        torch.save({"global_step": step, "state_dict": _sd(index)}, run / name.format(step))
        if step < 20:
            torch.save({"global_step": step, "state_dict": _sd(index + 50)}, run / copy.format(step))
    followed = _follow_the_clash_fix(run, tmp_path, step=0)
    assert [(r["step"], Path(r["path"]).name) for r in followed.records] == [
        (step, name.format(step)) for step in (0, 10, 20)
    ], followed.stderr


def test_a_library_loader_whose_tensors_cannot_be_read_back_is_refused_not_a_traceback() -> None:
    """`_all_from` compares values: a converted tensor left on the meta device (no data) is not one of the
    file's, and a tensor of the file that has no dense float value (sparse) matches none; neither raises
    (the checkpoint is refused with fdl's own message, or taken, instead of a traceback)."""
    from fdl_cli.checkpoints import _all_from

    assert not _all_from({"a": torch.empty(2, device="meta")}, {"a": torch.zeros(2)})
    assert _all_from({"a": torch.ones(2)}, {"a": torch.ones(2), "s": torch.zeros(2).to_sparse()})


def test_a_weight_initialised_afresh_is_not_taken_for_an_equal_one_of_the_file() -> None:
    """A library loader that fills a key the file lacks with a fresh LayerNorm's ones (and reports nothing
    missing) passed the value check when another LayerNorm of the file held ones too, as every one does
    at initialisation: each of the file's tensors now stands for one of the model's at most, a tied
    weight (one tensor under two names) counting once."""
    from fdl_cli.checkpoints import _all_from

    ones = torch.ones(4)
    assert not _all_from({"norm1.weight": torch.ones(4), "norm2.weight": torch.ones(4)}, {"norm1.weight": ones})
    assert _all_from({"norm1.weight": torch.ones(4), "norm2.weight": torch.ones(4)},
                     {"norm1.weight": ones, "norm2.weight": torch.ones(4)})
    embedding = torch.randn(5, 3)
    tied = {"embed.weight": embedding, "head.weight": embedding}  # one tensor, as a tied model's state_dict holds it
    assert _all_from(tied, {"embed.weight": embedding.clone()})
    assert not _all_from({"embed.weight": embedding, "head.weight": embedding.clone()}, {"embed.weight": embedding})
