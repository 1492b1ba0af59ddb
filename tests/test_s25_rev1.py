"""Session 25 review of the session's changes (per-output R², the default layer's pass without tensors, --watch's
lock). Each test failed on the session's merged code (1af785a) and passes with its fix.

1. The default layer's pass read each nn.Linear output's values a sample as the call returned (`output[:1]`): a
   Linear on a nested tensor (variable-length rows) broke the pass, said as a probe that does not fit the model,
   where the pass before read it only of the last Linear, and only when no Linear gave the outputs.
2. Each call looked for the first that took the same input by scanning every earlier call: n²/2 comparisons,
   2.5 s for the 12 000 calls of an nn.Linear cell unrolled over 6 000 steps (0.2 s before).
3. --watch made --out's folders as it took the lock at its start: stopped before its first commit it left them,
   empty, where it left nothing before the session (tests/test_s25_watch.py, its "new/deeper" case).
4. Through a symbolic link as --out, `fdl report` of a store a watch holds said "no fdl store" (the lock is
   beside the link's target, where the writer writes).
5. A growing set of files of training state or without a checkpoint suffix (optim_step_N.pt, metrics_N.json
   beside each checkpoint) got a note at every save of the watched run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fdl_cli.extract import default_layer, linear_calls
from tests.cli_run import fdl_in_process
from tests.test_prev_walkback import _arrive, _make_run, _polls, _stored
from tests.test_s24_watch import _watch
from tests.test_s25_watch import _empty_run


def _choice(model: nn.Module, sample: torch.Tensor) -> tuple[str, list[str]]:
    said: list[str] = []
    spec = default_layer(model, sample=sample, note=said.append, warn=said.append)
    return spec.label, said


# -- 1. a Linear on a nested tensor ----------------------------------------------------------------------------


class Nested(nn.Module):
    """body on each sample's rows as a nested tensor (strided or jagged layout), padded, pooled into the head."""

    def __init__(self, layout: torch.layout) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 3)
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [x[i].reshape(2, 4) for i in range(x.shape[0])]
        h = self.body(torch.nested.nested_tensor(rows, layout=self.layout))
        padded = torch.nested.to_padded_tensor(h, 0.0) if self.layout == torch.strided else h.to_padded_tensor(0.0)
        return self.head(torch.tanh(padded).mean(1))


def test_a_linear_on_a_nested_tensor_leaves_the_head_chosen() -> None:
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nested tensors are a prototype API
        for layout in (torch.strided, torch.jagged):
            assert _choice(Nested(layout).eval(), torch.randn(1, 8)) == ("head:input", []), layout


def test_a_nested_linear_last_to_run_gives_no_size_warning_it_cannot_read() -> None:
    """The last Linear's output nested and the outputs made from it (padded): its size unknown, no warning, where
    the pass before failed on it."""

    class NestedHead(Nested):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            rows = [x[i].reshape(2, 4) for i in range(x.shape[0])]
            h = self.head(torch.tanh(self.body(torch.nested.nested_tensor(rows))))
            return torch.nested.to_padded_tensor(h, 0.0).sum(1)

    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert _choice(NestedHead(torch.strided).eval(), torch.randn(1, 8)) == ("head:input", [])


# -- 2. the pass's cost grows with its calls, not their square -------------------------------------------------


class Unrolled(nn.Module):
    """An RNN of nn.Linear cells over `steps` steps: 2 × steps + 1 calls, each on a new input."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.cell, self.inp, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(x)
        for _ in range(self.steps):
            h = torch.tanh(self.cell(h) + self.inp(x))
        return self.head(h)


def test_the_pass_over_many_linear_calls_is_not_quadratic(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 001 calls: each call compares its input with a bounded number of earlier calls' (a scan of every earlier
    call cost n²/2 comparisons: 2.5 s for 12 001 calls, against 0.2 s before the session); the calls that took the
    same input (`inp`, on x at every step) still told as one. Counted, not timed."""
    from fdl_cli.extract import TensorMark

    counted = {"checks": 0}
    for method in ("is_alive", "is_memory_of"):
        real = getattr(TensorMark, method)

        def counting(self: TensorMark, *args: object, _real: object = real) -> object:
            counted["checks"] += 1
            return _real(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(TensorMark, method, counting)
    torch.manual_seed(0)
    model = Unrolled(2000).eval()
    with torch.no_grad(), linear_calls(model) as calls:
        model(torch.from_numpy(np.ones((1, 8), dtype=np.float32)))
    assert len(calls) == 4001
    assert counted["checks"] <= 4 * len(calls), counted
    inputs_first = {call.input_first for call in calls if call.name == "inp"}
    assert inputs_first == {1}  # the first inp call, the pass's second
    assert [call.input_first for call in calls[:6:2]] == [0, 2, 4]  # each cell call on a new h
    assert _choice(Unrolled(50).eval(), torch.randn(1, 8)) == ("head:input", [])


# -- 3. - 5. --watch --------------------------------------------------------------------------------------------


def test_report_through_a_linked_out_names_the_watch_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, folder = _empty_run(tmp_path)
    (tmp_path / "stores").mkdir()
    link = tmp_path / "s.h5"
    link.symlink_to(tmp_path / "stores" / "s.h5")  # dangling until the first commit
    seen = []
    with _polls(monkeypatch, lambda: seen.append(fdl_in_process("report", link)),
                lambda: _arrive(source, folder, "step_0.safetensors")):
        summary, _ = _watch(folder, link)
    assert summary.interrupted and sorted(_stored(link)) == [0]
    assert link.is_symlink()
    report = seen[0]
    assert report.returncode == 1
    assert report.stderr.startswith(f"error: no checkpoint is stored in {link} yet: it is being written by pid "
                                    f"{os.getpid()}"), report.stderr


def test_a_growing_set_of_training_state_and_metrics_files_is_noted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optim_step_N.pt and metrics_N.json saved beside each checkpoint: one note each kind of name (its numbers
    aside), at the save that brought the first; optimizer.pt, written again at each save, once too."""
    source = _make_run(tmp_path / "source")
    folder = _make_run(tmp_path / "run", [0])

    def save(step: int) -> None:
        torch.save({"state": {}, "param_groups": []}, folder / f"optim_step_{step}.pt")
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        (folder / f"metrics_{step}.json").write_text(f'{{"step": {step}}}')
        past = time.time() - 60
        for name in (f"optim_step_{step}.pt", "optimizer.pt", f"metrics_{step}.json"):
            os.utime(folder / name, (past, past))
        _arrive(source, folder, f"step_{step}.safetensors")

    with _polls(monkeypatch, *(lambda step=step: save(step) for step in (10, 20, 30, 40))):
        summary, reporter = _watch(folder, tmp_path / "s.h5")
    assert summary.interrupted and sorted(_stored(tmp_path / "s.h5")) == [0, 10, 20, 30, 40]
    suffixes = ".pt, .pth, .bin, .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar"
    assert [note for note in reporter.notes if note.startswith("skipped")] == [
        "skipped 2 files of training state (optimizer, scheduler, RNG, arguments), not model weights: "
        "optimizer.pt, optim_step_10.pt",
        f"skipped 1 file without a checkpoint suffix ({suffixes}): metrics_10.json",
    ], reporter.notes


# -- 6. - 7. each output's R² ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of a 4-output regression (steps 0, 10, 20) as a resume of an older one leaves it: no r2_outputs
    at steps 0 and 10."""
    import h5py

    from tests.cli_run import model_file
    from tests.test_s24_r2 import MODEL

    folder = tmp_path_factory.mktemp("resumed")
    module = model_file(folder, MODEL)
    (folder / "ck").mkdir()
    x = np.random.default_rng(0).normal(size=(48, 4)).astype(np.float32)
    for step in (0, 10, 20):
        torch.manual_seed(step)
        torch.save(module.build(constant=False).state_dict(), folder / "ck" / f"step_{step}.pt")
    np.savez(folder / "probe.npz", x=x, y=np.random.default_rng(1).normal(size=(48, 4)))
    store = folder / "run.h5"
    done = fdl_in_process("analyze", folder / "ck", "--model", f"{folder / 'model.py'}:build", "--model-kwargs",
                          '{"constant": false}', "--layer", "body", "--probe", folder / "probe.npz", "-o", store)
    assert done.returncode == 0, done.stderr
    with h5py.File(store, "r+") as handle:
        for step in (0, 10):
            del handle[f"checkpoints/step_{step}/probe/body/r2_outputs"]
    return store


def test_export_npy_of_steps_without_each_outputs_r2_keeps_its_columns(resumed: Path, tmp_path: Path) -> None:
    """--steps of the older checkpoints alone: r2_outputs (2, C) of NaN, as a checkpoint without them is among
    others; it was (2, 0)."""
    out = tmp_path / "old.npz"
    done = fdl_in_process("export", resumed, "--what", "trajectories", "--format", "npy", "--steps", "0,10",
                          "--out", out)
    assert done.returncode == 0, done.stderr
    archive = np.load(out)
    assert archive["r2_outputs"].shape == (2, 4) and np.isnan(archive["r2_outputs"]).all()
    every = tmp_path / "all.npz"
    assert fdl_in_process("export", resumed, "--what", "trajectories", "--format", "npy", "--out", every).returncode == 0
    whole = np.load(every)["r2_outputs"]
    assert whole.shape == (3, 4) and np.isnan(whole[:2]).all() and np.isfinite(whole[2]).all()


def test_classify_reads_each_outputs_r2_of_the_final_checkpoint_alone(
    resumed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its evidence gives the final checkpoint's: one dataset read, not one a checkpoint (0.4 s per 1 000
    checkpoints of every regression series of the store); the evidence as `fdl report --json`'s last record."""
    from fdl_cli.store import StoreReader

    reads: list[int] = []
    array = StoreReader.array

    def counted(self: StoreReader, step: int, name: str, **kwargs: object) -> object:
        if name == "r2_outputs":
            reads.append(step)
        return array(self, step, name, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StoreReader, "array", counted)
    done = fdl_in_process("classify", resumed, "--json")
    assert done.returncode == 0, done.stderr
    assert reads == [20]
    evidence = json.loads(done.stdout)["evidence"]
    monkeypatch.undo()
    last = json.loads(fdl_in_process("report", resumed, "--json").stdout)[-1]
    assert evidence["final_step"] == 20 and last["r2_outputs"] is not None
    assert [evidence[f"final_{name}"] for name in ("r2_outputs", "r2_min", "r2_min_output")] == [
        last["r2_outputs"], last["r2_min"], last["r2_min_output"]]
