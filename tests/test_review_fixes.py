"""Defects found in review, each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.checkpoints import discover_checkpoints, resolve_model_factory
from fdl_cli.errors import CheckpointError, ModelError, ProbeError
from fdl_cli.extract import LayerSpec, default_layer, extract, forward_one_shapes, model_outputs, resolve_layers
from fdl_cli.inspection import inspect_checkpoint
from fdl_cli.probes import load_probe
from fdl_cli.store import StoreReader
from tests.test_analyze import fdl

torch.set_num_threads(1)


# ------------------------------------------------------------------ outputs of a dict without logits


def test_dict_without_logits_is_refused_naming_its_keys() -> None:
    raw = {"features": torch.zeros(2, 8), "out": torch.ones(2, 3)}
    with pytest.raises(ModelError, match="logits") as err:
        model_outputs(raw)
    assert "'features', 'out'" in str(err.value) and "fix:" in str(err.value)


def test_dict_with_logits_and_tuple_first_element_are_the_outputs() -> None:
    logits = torch.arange(6.0).reshape(2, 3)
    torch.testing.assert_close(model_outputs({"hidden": torch.zeros(2, 8), "logits": logits}), logits)
    torch.testing.assert_close(model_outputs((logits, torch.zeros(2, 8))), logits)
    with pytest.raises(ModelError, match="did not return a tensor"):
        model_outputs(("not a tensor",))


# ------------------------------------------------------------- a --layer whose module returns a dict


class _DictBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": self.linear(x)}


class _DictInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _DictBlock()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x)["hidden"])


def test_layer_returning_a_dict_is_a_model_error_naming_layer_and_type() -> None:
    model = _DictInside().eval()
    layers = resolve_layers(model, ["block"])
    sample = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ModelError, match="'block'") as err:
        forward_one_shapes(model, layers, sample, device=torch.device("cpu"), dtype="float32")
    assert "dict" in str(err.value) and "fdl inspect" in str(err.value)
    widths, n_outputs, _shape = forward_one_shapes(model, resolve_layers(model, ["head:input"]), sample,
                                                   device=torch.device("cpu"), dtype="float32")
    assert (widths, n_outputs) == ({"head:input": 8}, 3)


# ------------------------------------------------------------------------------ duplicate --layer


def test_duplicate_layer_is_hooked_once_in_first_mention_order() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    layers = resolve_layers(model, ["1", "2:input", "1", "2:input", "0"])
    assert [spec.label for spec in layers] == ["1", "2:input", "0"]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    results = extract(model, layers, x, None, task="none", device=torch.device("cpu"), batch_size=2)
    assert sorted(results) == ["0", "1", "2:input"]
    np.testing.assert_allclose(results["1"].anchor_features, results["2:input"].anchor_features)


# ------------------------------------------------------------------------------ --probe DIRECTORY


def test_probe_that_is_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="is a directory; expected a probe file") as err:
        load_probe(tmp_path)
    assert "not found" not in str(err.value) and str(tmp_path) in str(err.value)


# ---------------------------------------------------------------------- a step that overflows int64


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(4, 3).state_dict()


def test_step_beyond_int64_is_refused_at_discovery_naming_the_file(tmp_path: Path) -> None:
    torch.save(_state(0), tmp_path / "step_5.pt")
    torch.save(_state(1), tmp_path / "step_99999999999999999999.pt")
    with pytest.raises(CheckpointError, match="step_99999999999999999999.pt") as err:
        discover_checkpoints([tmp_path])
    assert "2^63" in str(err.value)
    torch.save({"state_dict": _state(2), "step": -(2**63) - 1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="meta.pt"):
        discover_checkpoints([tmp_path / "meta.pt"])


def test_steps_at_the_int64_limits_and_negative_steps_are_kept(tmp_path: Path) -> None:
    torch.save(_state(0), tmp_path / f"step_{2**63 - 1}.pt")
    torch.save({"state_dict": _state(1), "step": -3}, tmp_path / "init.pt")
    found = discover_checkpoints([tmp_path])
    assert [(ref.path.name, ref.step) for ref in found.checkpoints] == [("init.pt", -3), (f"step_{2**63 - 1}.pt", 2**63 - 1)]


# ------------------------------------------------------------- default layer by execution order

HEAD_FIRST = '''
import torch
from torch import nn


class HeadFirst(nn.Module):
    """Registers `head` before `body`: the last nn.Linear registered is NOT the last one to run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(16, 3)
        self.body = nn.Linear(4, 16)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def build():
    return HeadFirst()
'''


@pytest.fixture()
def head_first(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(HEAD_FIRST)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    factory = resolve_model_factory(f"{tmp_path}/model.py:build")
    for step in (0, 1):
        model = factory()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * step)
        torch.save(model.state_dict(), ckpts / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    np.savez(tmp_path / "probe.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    return tmp_path


def test_default_layer_is_the_last_linear_to_run_not_the_last_registered(head_first: Path) -> None:
    model = resolve_model_factory(f"{head_first}/model.py:build")().eval()
    sample = np.zeros((1, 4), dtype=np.float32)
    assert default_layer(model, sample=sample).label == "head:input"
    assert resolve_layers(model, [], sample=sample, device=torch.device("cpu")) == [LayerSpec("head", use_input=True)]
    assert default_layer(model).label == "body:input"  # no sample: registration order, a guess


def test_analyze_hooks_the_input_of_the_last_linear_to_run(head_first: Path) -> None:
    out = head_first / "run.h5"
    result = fdl("analyze", head_first / "ckpts", "--model", f"{head_first}/model.py:build",
                 "--probe", head_first / "probe.npz", "--out", out, "--device", "cpu", "--json")
    assert result.code == 0, result.stderr
    assert [(record["step"], record["n_features"]) for record in result.records] == [(0, 16), (1, 16)]
    with StoreReader(out) as reader:
        assert reader.series() == [("probe", "head:input")]


def test_inspect_says_how_it_chose_the_default_layer(head_first: Path) -> None:
    checkpoint = str(head_first / "ckpts" / "step_0.pt")
    spec = f"{head_first}/model.py:build"
    with_probe = inspect_checkpoint(checkpoint=checkpoint, model_spec=spec, probe_spec=str(head_first / "probe.npz"))
    assert (with_probe["default_layer"], with_probe["default_features"]) == ("head:input", 16)
    assert "the last nn.Linear to run" in with_probe["default_basis"]
    # Parameters of a module and its children: the model's row is its size (it said 0, its own only).
    counts = {row["name"]: row["parameters"] for row in with_probe["modules"]}
    assert counts == {"": 16 * 3 + 3 + 4 * 16 + 16, "head": 16 * 3 + 3, "body": 4 * 16 + 16}
    # Without a probe the random input is shaped for `head` (the first nn.Linear), the forward pass
    # fails, and the default can only be guessed from the registration order.
    guessed = inspect_checkpoint(checkpoint=checkpoint, model_spec=spec)
    assert (guessed["default_layer"], guessed["default_features"]) == ("body:input", 4)
    assert guessed["default_basis"].startswith("a guess") and "--probe" in guessed["default_basis"]


# ------------------------------------------------- programs: fixed batch sizes, and `fdl inspect`


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    """A TorchScript and a torch.export checkpoint of one MLP (4 -> 8 -> 8 -> 3), the export traced
    with a batch of 1 (static: it refuses any other batch size), and a 10-sample probe."""
    from tests.tiny_models import mlp

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    (tmp_path / "exported").mkdir()
    torch.export.save(torch.export.export(model, (torch.randn(1, 4),)), tmp_path / "exported" / "step_0.pt2")
    torch.jit.save(torch.jit.script(mlp(seed=2)), tmp_path / "scripted_3.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(10, 4)).astype(np.float32), y=rng.integers(0, 3, size=10))
    return tmp_path


def test_a_failing_forward_pass_is_a_clear_error(programs: Path) -> None:
    """A program exported for batches of 1 fails on a batch of 10: exit 1, the rows and the model's own
    error named, a fix given, no traceback (it was an AssertionError traceback)."""
    done = fdl("analyze", programs / "exported", "--probe", programs / "probe.npz", "--out", programs / "s.h5",
               "--trust-pickle")
    assert done.code == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "forward pass failed on probe rows 0..9" in done.stderr and "Guard failed" in done.stderr
    assert "--batch-size" in done.stderr and "torch.export.Dim" in done.stderr
    again = fdl("analyze", programs / "exported", "--probe", programs / "probe.npz", "--out", programs / "b1.h5",
                "--batch-size", "1", "--trust-pickle")
    assert again.code == 0, again.stderr


def test_inspect_reads_program_checkpoints_as_analyze_does(programs: Path) -> None:
    """`fdl inspect` on TorchScript and torch.export files: no traceback (it hooked the program's own
    modules, refused there, and called eval() on an exported program), the default layer analyze
    uses, and its width from one forward pass of the probe's first sample."""
    for checkpoint, width in ((programs / "scripted_3.pt", 8), (programs / "exported" / "step_0.pt2", 8)):
        result = inspect_checkpoint(checkpoint=str(checkpoint), probe_spec=str(programs / "probe.npz"), trust_pickle=True)
        assert (result["default_layer"], result["default_features"]) == ("last_linear_op:input", width), checkpoint
        assert "last linear operation" in result["default_basis"]
        shown = fdl("inspect", checkpoint, "--trust-pickle")
        assert shown.code == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "last_linear_op:input" in shown.stderr


# ------------------------------------------------------- --json records while a terminal shows progress


def test_json_records_reach_stdout_while_the_progress_bar_runs_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """`fdl analyze --json | jq` typed in a terminal: stderr is a terminal, so the progress bar is live,
    and rich's live display used to take sys.stdout over and paint the records on the terminal; the
    pipe got nothing. Records written while the bar runs must reach the real stdout."""
    import io

    from rich.console import Console

    from fdl_cli.cli import _emit_json
    from fdl_cli.progress import RichReporter

    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=100)
    with RichReporter(console) as reporter:
        reporter.start_run(2)
        reporter.start_checkpoint(0, 2, "step 0")
        _emit_json({"step": 0, "d_lr": 0.5})
        reporter.end_checkpoint()
    assert capsys.readouterr().out == '{"step": 0, "d_lr": 0.5}\n'
    assert "d_lr" not in terminal.getvalue()


# ------------------------------------------------------------ parameter norms: parameters, once each


TIED_MODEL = """
import torch
from torch import nn


class Tied(nn.Module):
    '''Token ids (b, 4) -> embedding -> mean -> ReLU(Linear) -> logits through the embedding itself
    (GPT-2's tying), with a float buffer that is not a parameter.'''

    def __init__(self, vocab=7, dim=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((vocab,), 3.0))

    def forward(self, x):
        return self.head(torch.relu(self.body(self.embed(x).mean(1)))) * self.scale


def build(seed=0):
    torch.manual_seed(seed)
    return Tied()
"""


def test_parameter_norms_count_each_parameter_once_and_no_buffer(tmp_path: Path) -> None:
    """param_norm = ‖θ‖² and param_dist_init = ‖θ − θ_0‖ / ‖θ_0‖ over the model's parameters (SPEC §6).
    They were taken over the .pt state_dict: the tied embedding counted twice and the buffer once
    (113.9 instead of 35.55 here). Under --dtype bfloat16 they keep the file's float32 values."""
    import importlib.util

    (tmp_path / "model.py").write_text(TIED_MODEL)
    spec = importlib.util.spec_from_file_location("tied_model", tmp_path / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "ckpts").mkdir()
    models = [module.build(seed=seed) for seed in (0, 1)]
    for step, model in enumerate(models):
        torch.save(model.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.integers(0, 7, (40, 4)), y=rng.integers(0, 7, 40))
    theta = [torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]) for model in models]
    assert len(theta[0]) == 7 * 6 + 6 * 6 + 6  # the tied weight once, no buffer
    for extra in ((), ("--dtype", "bfloat16")):
        out = tmp_path / f"s{len(extra)}.h5"
        done = fdl("analyze", tmp_path / "ckpts", "--model", f"{tmp_path}/model.py:build", "--probe",
                   tmp_path / "probe.npz", "--out", out, *extra)
        assert done.code == 0, done.stderr
        with StoreReader(out) as reader:
            records = reader.records()
        for record, values in zip(records, theta, strict=True):
            assert record["param_norm"] == pytest.approx(float(values @ values), rel=1e-12), extra
        assert records[1]["param_dist_init"] == pytest.approx(
            float((theta[1] - theta[0]).norm() / theta[0].norm()), rel=1e-12), extra


def test_parameter_norms_of_program_checkpoints_use_the_files_values_under_bfloat16(tmp_path: Path) -> None:
    """A TorchScript checkpoint is converted in place by --dtype bfloat16; its param_norm was that of
    the rounded parameters (12.2875 instead of 12.2902 on one run). The file's values are kept now."""
    from tests.tiny_models import mlp

    (tmp_path / "ckpts").mkdir()
    models = [mlp(seed=seed) for seed in (0, 1)]
    for step, model in enumerate(models):
        torch.jit.save(torch.jit.script(model), str(tmp_path / "ckpts" / f"step_{step}.pt"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    theta = [torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]) for model in models]
    out = tmp_path / "s.h5"
    done = fdl("analyze", tmp_path / "ckpts", "--probe", tmp_path / "probe.npz", "--out", out, "--dtype", "bfloat16",
               "--trust-pickle")  # a TorchScript program is code (test_s25_sec.py)
    assert done.code == 0, done.stderr
    with StoreReader(out) as reader:
        records = reader.records()
    for record, values in zip(records, theta, strict=True):
        assert record["param_norm"] == pytest.approx(float(values @ values), rel=1e-12)
    assert records[1]["param_dist_init"] == pytest.approx(float((theta[1] - theta[0]).norm() / theta[0].norm()), rel=1e-12)


def test_anchor_only_passes_keep_no_copy_of_a_program_checkpoints_parameters(tmp_path: Path) -> None:
    """Under --dtype bfloat16 a program checkpoint's float32 parameters are copied before conversion,
    for param_norm. Passes that only take a stored checkpoint's anchor features (the previous
    checkpoint's series, a refreshed successor) made that copy too, for nothing."""
    from fdl_cli.checkpoints import load_checkpoint
    from fdl_cli.pipeline import AnalyzeOptions, _Context, _prepare
    from fdl_cli.progress import NullReporter
    from tests.tiny_models import mlp

    torch.jit.save(torch.jit.script(mlp(seed=0)), str(tmp_path / "step_0.pt"))
    ref = discover_checkpoints([str(tmp_path)]).checkpoints[0]
    options = AnalyzeOptions(sources=(str(tmp_path),), dtype="bfloat16")
    ctx = _Context(options=options, probes=[], factory=None, model_kwargs={}, layer_names=(),
                   device=torch.device("cpu"), reporter=NullReporter())
    anchors_only = load_checkpoint(ref, trust_pickle=True)  # a TorchScript program is code (test_s25_sec.py)
    model = _prepare(ctx, anchors_only, parameters=False)
    assert anchors_only.parameters is None
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    analysed = load_checkpoint(ref, trust_pickle=True)
    _prepare(ctx, analysed)
    assert analysed.parameters is not None
    expected = [p.detach() for p in mlp(seed=0).parameters()]
    assert all(torch.equal(kept, value) for kept, value in zip(analysed.parameters, expected, strict=True))
    assert all(kept.dtype == torch.float32 for kept in analysed.parameters)


def test_overlaps_at_the_reference_are_one_when_the_first_inputs_repeat(tmp_path: Path) -> None:
    """The first 20 probe inputs (the anchors) are 5 distinct ones: the reference's top-10
    eigenfunctions span 5 dimensions there. The overlap divided by k = 10 gave overlap_init 0.5 at the
    reference, and for every later checkpoint, with no warning (found by an independent check)."""
    from safetensors.torch import save_file

    from fdl_cli.spectral import eigenspace_overlap
    from tests.tiny_models import mlp

    kwargs = {"hidden": 24, "n_out": 10}
    (tmp_path / "ckpts").mkdir()
    for step in (0, 1, 2):
        save_file(mlp(seed=step, **kwargs).state_dict(), str(tmp_path / "ckpts" / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    x[:20] = np.tile(x[:5], (4, 1))
    np.savez(tmp_path / "probe.npz", x=x, y=rng.integers(0, 10, 200))
    out = tmp_path / "s.h5"
    done = fdl("analyze", tmp_path / "ckpts", "--model", "tests.tiny_models:mlp", "--model-kwargs", json.dumps(kwargs),
               "--probe", tmp_path / "probe.npz", "--out", out, "--anchor-size", "20")
    assert done.code == 0, done.stderr
    # Session 13 review: the top-10 bases span all 5 distinct anchor inputs at every checkpoint, so the
    # overlap is 1 whatever the features do (below): not measured (null), as for 5 distinct anchor points.
    assert "hold only 5 distinct ones" in done.stderr and "overlaps are not measured (null)" in done.stderr
    assert "span only 5 dimensions" not in done.stderr
    with StoreReader(out) as reader:
        records = reader.records()
        values = [reader.arrays(step).eigenfunctions for step in (0, 1, 2)]
    assert records[0]["cka_init"] == 1.0 and records[0]["overlap_init"] is None
    for record, later in zip(records[1:], values[1:], strict=True):
        assert record["overlap_init"] is None and record["cka_init"] is not None
        assert eigenspace_overlap(values[0], later, k=10) == pytest.approx(1.0, rel=1e-9)  # what it stored
    assert eigenspace_overlap(values[0], values[0], k=10) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.exit(0)\n",  # ended fdl with status 0, no store and no word
        "import argparse\nargparse.ArgumentParser().parse_args()\n",  # exit 2 with a usage of another program
        "import sys\ndef build():\n    sys.exit(7)\n",  # exit 7, no message
    ],
)
def test_model_code_that_calls_sys_exit_is_explained(
    tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from safetensors.torch import save_file

    from tests.tiny_models import mlp

    (tmp_path / "ckpts").mkdir()
    save_file(mlp(seed=0).state_dict(), str(tmp_path / "ckpts" / "step_0.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(20, 4)).astype(np.float32), y=rng.integers(0, 3, 20))
    (tmp_path / "script.py").write_text(source)
    out = tmp_path / "s.h5"
    argv = ["analyze", str(tmp_path / "ckpts"), "--model", f"{tmp_path}/script.py:build", "--probe",
            str(tmp_path / "probe.npz"), "--out", str(out), "--json"]
    monkeypatch.setattr(sys, "argv", ["fdl", *argv])  # what argparse parses in the console script
    done = fdl(*argv)
    assert done.code == 1, (done.code, done.stderr)
    assert "called sys.exit(" in done.stderr and '__name__ == "__main__"' in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr and "usage:" not in done.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------- messages that misled


def test_interrupted_overwrite_does_not_say_run_it_again_to_resume(tmp_path: Path) -> None:
    """After Ctrl-C under --overwrite the same command starts afresh; the summary said it resumes."""
    from fdl_cli.pipeline import AnalyzeSummary

    resumed = AnalyzeSummary(store=tmp_path / "s.h5", analysed=[0], interrupted=True).message()
    assert "run the same command again to resume" in resumed
    overwritten = AnalyzeSummary(store=tmp_path / "s.h5", analysed=[0], interrupted=True, resume=False).message()
    assert "run the same command again" not in overwritten
    assert "without --overwrite to resume" in overwritten


def test_a_probe_of_pickled_objects_gets_no_advice_to_unpickle_it(tmp_path: Path) -> None:
    """numpy's error said "load it unsafely using allow_pickle"; fdl passed that advice on."""
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, np.int64))
    with pytest.raises(ProbeError) as err:
        load_probe(tmp_path / "objects.npz")
    message = str(err.value)
    assert "cannot read the probe" in message and "pickled Python objects" in message
    assert "allow_pickle" not in message and "unsafely" not in message


# ------------------------------------------------------------- a checkpoint read that hangs a while


def test_a_hanging_checkpoint_read_does_not_hold_back_the_analysed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits are throttled (one a second by default), so the last checkpoints analysed wait in the
    writer's buffer for the next add. When the next read hangs (a stalled network file system), they
    stayed there, not durable and not announced, for as long as the hang lasted. Now the wait for the
    read commits them when the throttle allows."""
    import time

    import fdl_cli.pipeline as pipeline
    from tests.tiny_models import mlp

    (tmp_path / "ckpts").mkdir()
    for step in range(8):
        torch.save(mlp(seed=step).state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    out = tmp_path / "run.h5"
    seen_during_the_hang: list[int] = []
    real_load = pipeline._load

    def hanging_load(ref, *args):  # runs in the loader thread
        if ref.step == 6:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(seen_during_the_hang) < 6:
                time.sleep(0.1)
                if out.exists():
                    with StoreReader(out) as reader:
                        seen_during_the_hang[:] = reader.steps()
        return real_load(ref, *args)

    monkeypatch.setattr(pipeline, "_load", hanging_load)
    done = fdl("analyze", tmp_path / "ckpts", "--model", "tests/tiny_models.py:mlp", "--probe",
               tmp_path / "probe.npz", "--out", out, "--json", "--top-k", "4", "--anchor-size", "16")
    assert done.code == 0, done.stderr
    assert seen_during_the_hang == list(range(6)), "steps 0-5 were analysed before the hang"
    assert [record["step"] for record in done.records] == list(range(8))


SLOW_MODEL = """
import os, time
import torch
from torch import nn

seen = []  # the store's steps, as read during the slow checkpoint's batches


class Slow(nn.Sequential):
    def forward(self, x):
        if float(self[0].bias[0]) == 1234.5:  # the slow checkpoint: each batch takes a while
            time.sleep(0.15)
            from fdl_cli.errors import FdlError
            from fdl_cli.store import StoreReader

            try:
                with StoreReader(os.environ["SLOW_STORE"]) as reader:
                    seen.append(reader.steps())
            except FdlError:
                seen.append([])
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return Slow(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""


def test_a_long_computation_does_not_hold_back_the_analysed_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same while one checkpoint computes for long (a big model, a big probe): between its probe
    batches the due commit starts, so the checkpoints analysed before it become durable meanwhile."""
    import sys

    from tests.tiny_models import mlp

    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    (tmp_path / "ckpts").mkdir()
    for step in range(7):
        state = mlp(seed=step).state_dict()
        if step == 5:
            state["0.bias"][0] = 1234.5
        torch.save(state, tmp_path / "ckpts" / f"step_{step}.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(64, 4)).astype(np.float32), y=rng.integers(0, 3, 64))
    out = tmp_path / "run.h5"
    monkeypatch.setenv("SLOW_STORE", str(out))
    done = fdl("analyze", tmp_path / "ckpts", "--model", f"{tmp_path}/slow.py:build", "--probe",
               tmp_path / "probe.npz", "--out", out, "--batch-size", "4", "--anchor-size", "16")
    assert done.code == 0, done.stderr
    module = next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(tmp_path / "slow.py"))
    seen = module.seen
    assert len(seen) >= 16, seen  # 16 batches of the slow checkpoint (and its anchors)
    assert seen[-1] == list(range(5)), "steps 0-4 were analysed before the slow checkpoint"


def test_the_loader_keeps_no_checkpoint_once_it_is_used() -> None:
    """The daemon loader (pipeline._Loader) first kept every future it made, and with it every loaded
    checkpoint of the run: peak memory grew with the number of checkpoints (+110 MiB over 50 MLP
    checkpoints in benchmark (a)). A loaded checkpoint is now freed once its caller drops it."""
    import gc
    import threading
    import time
    import weakref

    from fdl_cli.pipeline import _Loader

    class Checkpoint:
        pass

    with _Loader() as loader:
        future = loader.submit(Checkpoint)
        loaded = future.result(timeout=10)
        alive = weakref.ref(loaded)
        del future, loaded
        gc.collect()
        assert alive() is None
        started = threading.Event()
        running = loader.submit(lambda: (started.set(), time.sleep(0.3)))
        queued = loader.submit(Checkpoint)
        assert started.wait(10)
    assert queued.cancelled() and not running.cancelled()  # what had not started is not loaded
    assert running.result(timeout=10)
