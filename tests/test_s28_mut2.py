"""Mutation testing of this session's compare notes, store commits, name escaping, DCP cover check, trusted
unpickling and `fdl export --json`: each test pins the output a user sees where a plausible slip in the code
(a bound off by one, an operand swapped, a branch dropped) left every earlier test passing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch

from fdl_cli import report
from tests import warm
from tests.cli_run import fdl_in_process
from tests.test_analyze import fdl
from tests.test_report import SCALARS, make_store
from tests.test_s15_formats import MODEL, _probe, _weights
from tests.test_s27_compat import _analyze
from tests.test_s28_polish import _scalars
from tests.test_s28_resume import old_store  # noqa: F401 - the fixture

# ------------------------------------------------------------------------------ compare's unmatched note


def test_exactly_six_unmatched_steps_are_all_named_with_no_and_none_more(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")  # steps 0, 100, 200
    steps = (0, 10, 20, 30, 40, 50, 60, 100, 200)
    b = make_store(tmp_path / "b.h5", steps=steps, scalars=_scalars(steps, 0.5))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert "left unmatched: 0 checkpoints of A, 6 of B (steps 10, 20, 30, 40, 50, 60)" in notes


def test_a_step_of_b_matched_to_a_nearest_step_of_a_is_not_left_unmatched(tmp_path: Path) -> None:
    """B's step 105 is matched to A's 100 (a nearest-step pair): only B's 300 has no partner."""
    a = make_store(tmp_path / "a.h5")  # steps 0, 100, 200
    steps = (0, 105, 200, 300)
    b = make_store(tmp_path / "b.h5", steps=steps, scalars=_scalars(steps, 0.5))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert "left unmatched: 0 checkpoints of A, 1 of B (step 300)" in notes, notes


# --------------------------------------------------------------------------------- compare's verdict


def _verdict(tmp_path: Path, scalars_a: dict[int, dict[str, Any]], scalars_b: dict[int, dict[str, Any]]) -> str:
    a = make_store(tmp_path / "a.h5", steps=tuple(scalars_a), scalars=scalars_a)
    b = make_store(tmp_path / "b.h5", steps=tuple(scalars_b), scalars=scalars_b, seed=1)
    return report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).verdict


def test_one_step_of_several_with_both_d_lr_is_named_the_only_one_with_both(tmp_path: Path) -> None:
    steps = (0, 100, 200)
    verdict = _verdict(tmp_path, _scalars(steps, [None, 0.5, None]), _scalars(steps, [None, 0.6, None]))
    assert verdict.startswith("Run A is richer than run B (lower D_LR) at the only matched step with both D_LR, "
                              "step 100: D_LR A 0.5000, B 0.6000, 17% lower."), verdict


def test_the_only_step_with_both_d_lr_beside_a_constant_head_says_measured(tmp_path: Path) -> None:
    """Step 0 has both D_LR, but run A's outputs are constant there (output_rank 0): left out of the verdict, so
    step 100 is the only one with both D_LR *measured*."""
    steps = (0, 100)
    a = _scalars(steps, [1.0, 0.5])
    a[0]["output_rank"] = 0
    verdict = _verdict(tmp_path, a, _scalars(steps, [0.7, 0.6]))
    assert verdict.startswith("Run A is richer than run B (lower D_LR) at the only matched step with both D_LR "
                              "measured, step 100: D_LR A 0.5000, B 0.6000, 17% lower."), verdict


def test_runs_that_end_tied_still_say_which_one_learned_features(tmp_path: Path) -> None:
    """A frozen run A and a learning run B, A richer at step 100 and tied at the last step: "end equally rich",
    and which run's features moved, as for a run ranked richer."""
    lazy = {step: {**values, "d_lr": d_lr, "cka_init": 1.0, "overlap_init": 1.0, "regime": "coefficient"}
            for (step, values), d_lr in zip(SCALARS.items(), [0.9, 0.4, 0.125], strict=True)}
    verdict = _verdict(tmp_path, lazy, SCALARS)
    assert verdict.startswith("The runs end equally rich (same D_LR at the last matched step)."), verdict
    assert "Run A's features did not move" in verdict
    assert verdict.endswith("Of the two runs, only B's features moved (CKA to its reference down to 0.6250, top-C "
                            "overlap to 0.5000): B learned features, A did not."), verdict


def _lazy() -> dict[int, dict[str, Any]]:
    return {step: {**values, "cka_init": 1.0, "overlap_init": 1.0, "regime": "coefficient"}
            for step, values in SCALARS.items()}


@pytest.mark.parametrize(("cka", "overlap", "evidence"), [
    (0.99, 0.9, "top-C overlap to 0.9000"),  # CKA at its static bound, not below it: no evidence of moving
    (0.9, 0.95, "CKA to its reference down to 0.9000"),
    (0.625, None, "CKA to its reference down to 0.6250"),  # no overlap measured: none said, not "to 0.0000"
])
def test_the_run_that_moved_is_said_to_by_the_measures_below_their_static_bound(
        tmp_path: Path, cka: float, overlap: float | None, evidence: str) -> None:
    moved = {step: {**values, "cka_init": 1.0 if step == 0 else cka, "overlap_init": overlap if step else
                    (None if overlap is None else 1.0)} for step, values in SCALARS.items()}
    verdict = _verdict(tmp_path, _lazy(), moved)
    assert f"Of the two runs, only B's features moved ({evidence}): B learned features, A did not" in verdict, verdict


# ------------------------------------------------------------------- a resume with nothing new to store


def test_a_resume_with_nothing_new_missing_only_zero_one_targets_writes_nothing(tmp_path, old_store) -> None:  # noqa: F811
    """docs/store.md: a missing zero_one_targets alone waits for a checkpoint (no note promises it, and a commit
    copies the store); only the chance is committed by a resume with nothing new."""
    ckpts, out, _ = old_store
    _analyze(tmp_path, ckpts, out)  # records the chance
    with h5py.File(out, "r+") as store:
        assert "zero_one_targets" in store["probes/probe"].attrs
        del store["probes/probe"].attrs["zero_one_targets"]
    stat = out.stat()
    done = _analyze(tmp_path, ckpts, out)
    assert "0 checkpoints analysed, 2 already in the store" in done.stderr, done.stderr
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    with h5py.File(out, "r") as store:
        assert "zero_one_targets" not in store["probes/probe"].attrs


# ------------------------------------------------------------------------------- the same run given twice

SAME_STORE = "A and B are the same store and series"
SAME_CONTENT = "stores A and B hold the same checkpoints (the same sha256 at every step) with the same fields"


def test_a_link_to_the_store_is_the_same_store(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    (tmp_path / "link.h5").symlink_to(a)
    notes = report.compare_runs(report.load_run(a), report.load_run(tmp_path / "link.h5")).notes
    assert [note for note in notes if note.startswith(SAME_STORE)] == [
        f"{SAME_STORE} ({a}): every difference is zero (was another run meant as B?)"]


def test_the_same_checkpoints_and_fields_on_another_probe_file_are_not_said_to_be_the_same(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", probe_sha="b" * 64)  # the same seed: every field the same
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert not any(SAME_CONTENT in note or SAME_STORE in note for note in notes), notes


def test_the_same_checkpoints_analysed_under_another_layer_name_are_said_to_be_the_same(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.h5", layers=("fc1",))
    b = make_store(tmp_path / "b.h5", layers=("features",))
    notes = report.compare_runs(report.load_run(a), report.load_run(b), overlap=False).notes
    assert any(note.startswith(SAME_CONTENT) for note in notes), notes


# ------------------------------------------------------------------------------- names from someone's file


def test_a_tab_in_an_entry_s_name_is_shown_escaped(tmp_path: Path) -> None:
    """A name is one line, its columns its own: a tab in it is shown \\x09, as a newline is \\x0a."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": _weights(0), "ema\tcopy": _weights(1)}, run / "step_2.pt")
    done = fdl("analyze", run, *MODEL, "--probe", _probe(tmp_path / "probe.pt"), "--out", tmp_path / "out.h5",
               "--device", "cpu", "--weights", "foo")
    assert done.code == 1
    assert "other entries holding weights: ema\\x09copy" in done.stderr, done.stderr
    assert "\t" not in done.stderr


def test_inspect_names_every_other_copy_of_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "step_2.pt"
    torch.save({"model": _weights(0), **{f"ema{i}": _weights(i) for i in range(1, 6)}}, path)
    done = fdl("inspect", path)
    assert done.code == 0, done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "other weights in the file: ema1, ema2, ema3, ema4, ema5 (--weights NAME" in said, said


# ---------------------------------------------------------------------- which copy an EMA swap names


def test_an_ema_swap_names_the_trained_models_entry_not_the_first_other_copy(tmp_path: Path) -> None:
    """An mmengine EMAHook checkpoint holding one more copy of the weights ahead of `ema_state_dict`: the note named
    that first copy (`copies[0]`) as the trained model's, and told --weights to take it."""
    from tests.test_s16_ecosystems import _analyze as analyze_mm
    from tests.test_s16_ecosystems import _averaged, _ema, _notes, _sd

    run = tmp_path / "mm"
    run.mkdir()
    for epoch in (1, 2):
        torch.save({"meta": {"epoch": epoch, "iter": 100 * epoch}, "state_dict": _ema(epoch), "aaa_copy": _sd(5),
                    "ema_state_dict": _averaged(_sd(epoch), "steps")}, run / f"epoch_{epoch}.pth")
    said = ("is mmengine's with its EMAHook, which saves the EMA's weights under 'state_dict' and the trained "
            "model's under 'ema_state_dict': fdl analyses the EMA's; --weights ema_state_dict analyses the trained "
            "model's")
    inspected = fdl("inspect", run / "epoch_1.pth")
    assert inspected.code == 0, inspected.stderr
    assert f"epoch_1.pth {said}" in " ".join((inspected.stdout + inspected.stderr).split())
    done = analyze_mm(tmp_path, [run], "mm.h5")
    assert done.code == 0, done.stderr
    assert f"epoch_1.pth {said}" in _notes(done), _notes(done)


# ------------------------------------------------------------- the chance alone, under torchrun, on a Ctrl-C

_INTERRUPTED_WRAPPER = """\
import os, sys
from fdl_cli import pipeline, signals
load = pipeline._load
def interrupted(ref, *args, **kwargs):
    if ref.step == 20:
        raise signals.Interrupted()
    return load(ref, *args, **kwargs)
pipeline._load = interrupted
from fdl_cli.cli import main
main(sys.argv[1:])
"""


def test_under_torchrun_a_ctrl_c_while_reading_the_new_checkpoint_leaves_an_old_store_as_it_was(
        tmp_path, old_store) -> None:  # noqa: F811
    """A Ctrl-C (no fdl error, which the ranks' own handlers hold the chance back for) while the new checkpoint is
    read: nothing of the run is stored, and the chance is not committed alone (docs/store.md), as in one
    process (tests/test_s28_rev1.py)."""
    import hashlib

    from tests.ranks import torchrun
    from tests.test_s27_compat import _chance, _run

    ckpts, out, _ = old_store
    _run(tmp_path, (20,))
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    wrapper = tmp_path / "interrupted.py"
    wrapper.write_text(_INTERRUPTED_WRAPPER, encoding="utf-8")
    done = torchrun(str(wrapper), "analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--probe",
                    str(tmp_path / "probe.npz"), "-o", str(out), "--device", "cpu", direct=True)
    assert done.returncode != 0, done.stderr
    assert _chance(out) == {}
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


# ------------------------------------------------------------------------------ a probe of unknown size


def test_a_refused_probe_whose_size_one_store_lacks_says_no_count_and_no_order(tmp_path: Path) -> None:
    """A store that does not record its probe's number of points (n): neither "probes of 16 and None points" nor
    the order as a cause, which only as many points can have."""
    from fdl_cli.errors import StoreError
    from tests.test_s28_polish import _with_inputs_digest

    a = _with_inputs_digest(make_store(tmp_path / "a.h5"), "1" * 64)
    b = _with_inputs_digest(make_store(tmp_path / "b.h5", probe_sha="b" * 64, seed=1), "2" * 64)
    with h5py.File(b, "r+") as store:
        del store["probes/train"].attrs["n"]
    with pytest.raises(StoreError) as caught:
        report.compare_runs(report.load_run(a), report.load_run(b))
    assert "points" not in str(caught.value.got), caught.value.got
    assert str(caught.value.fix) == ("analyse both runs with the same probe inputs (--probe; the labels may differ), or "
                                     "pass --no-overlap to compare only the per-checkpoint fields")


# ------------------------------------------------------------------- a signal as the interpreter ends

_SIGNALS_AT_EXIT = """\
import atexit, os, signal, time
from torch import nn


def _signalled():  # registered after fdl's own: it runs first as the interpreter ends
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(120)  # a hung atexit handler: the signal ends the process, with the command's status


atexit.register(_signalled)


def build():
    return nn.Sequential(nn.Linear(4, 3))
"""


def test_a_sigterm_as_the_interpreter_ends_keeps_the_status_of_a_command_that_succeeded(tmp_path: Path) -> None:
    """The command is over (inspect said all it says, status 0) when an atexit handler of the model's module gets
    a SIGTERM and hangs: fdl's process ends at once, with 0, not killed by the signal nor left hanging."""
    import sys

    from tests.cli_run import REPO

    (tmp_path / "model.py").write_text(_SIGNALS_AT_EXIT, encoding="utf-8")
    torch.save({"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3)}, tmp_path / "step_1.pt")
    done = warm.run([sys.executable, "-m", "fdl_cli", "inspect", str(tmp_path / "step_1.pt"), "--model",
                     f"{tmp_path}/model.py:build"], cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "default feature layer: 0:input (4 features" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------ trusted unpickling


def test_torchs_weights_only_switch_is_named_however_it_is_spelled(tmp_path: Path, monkeypatch) -> None:
    """torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD=TRUE as true (it lowers the value): fdl names it as for =1."""
    from tests.test_s28_placeholder import TrainConfig, _save
    from tests.tiny_models import mlp

    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"model": mlp().state_dict(), "config": TrainConfig()})
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TRUE")
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1 and "corrupt" not in said, said
    assert f"cannot unpickle {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD=TRUE in the environment" in said, said


class Holder:
    """A second class of the training script's (`__main__.Holder`), holding a tensor."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


def test_weights_in_the_second_class_that_cannot_be_imported_are_the_error_said_by_the_first(
        tmp_path: Path, monkeypatch) -> None:
    """A config of a class not importable here (a placeholder does) and then an object of another such class
    holding a tensor (none does): the load fails, and says what loading without placeholders would have met
    first, TrainConfig."""
    import sys

    from tests.test_s28_placeholder import TrainConfig, _save
    from tests.tiny_models import mlp

    monkeypatch.setattr(Holder, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Holder", Holder, raising=False)
    path = tmp_path / "step_5.pt"
    _save(monkeypatch, path, {"model": mlp().state_dict(), "config": TrainConfig(), "extra": Holder(torch.ones(2))})
    done = fdl("inspect", str(path), "--trust-pickle")
    said = " ".join(done.stderr.split())
    assert done.code == 1 and f"cannot unpickle {path}: it holds an object whose class cannot be imported here" in said
    assert "TrainConfig" in said and "Holder" not in said, said


def test_export_takes_json_said_twice(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5")
    both = fdl_in_process("export", store, "--what", "eigenvalues", "--json", "--format", "json")
    assert both.returncode == 0, both.stderr
    assert both.stdout == fdl_in_process("export", store, "--what", "eigenvalues", "--json").stdout


def test_a_copy_holding_half_the_models_keys_is_named_as_other_weights(tmp_path: Path) -> None:
    path = tmp_path / "step_2.pt"
    weights = dict(list(_weights(0).items())[:8])
    half = dict(list(weights.items())[:4])
    assert len(half) * 2 == len(weights)
    torch.save({"model": weights, "ema": half}, path)
    done = fdl("inspect", path)
    assert done.code == 0, done.stderr
    assert "other weights in the file: ema (--weights NAME" in " ".join((done.stdout + done.stderr).split())
