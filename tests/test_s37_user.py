"""A first-time user's real training run (digits, a CNN, checkpoints saved the ways people save them), the defects it
met, each pinned by what the user sees."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fdl_cli import cli, signals
from tests.cli_run import fdl_in_process
from tests.test_s27_compat import _run


def test_folders_of_one_checkpoint_each_holding_global_steps_are_not_told_to_take_epochs_from_names(tmp_path: Path) -> None:
    """A Lightning-like loop saving `epoch_E/last.ckpt` ({"state_dict": {"model.…"}, "global_step", "epoch"}) from
    epoch 0, the initialisation: its first folder's global_step 0 equals the 0 of its name, and the fix told the
    user `--step-regex 'epoch_(\\d+)/'`, which stores the run at its epochs over the steps its files hold (a compare
    with a run stored by steps then matches step 0 alone). The fix names the folders alone, as the docs say."""
    run = tmp_path / "run"
    for epoch in range(3):
        (run / f"epoch_{epoch}").mkdir(parents=True)
        torch.save(
            {"state_dict": {"model.weight": torch.full((2, 3), float(epoch))}, "global_step": 22 * epoch, "epoch": epoch},
            run / f"epoch_{epoch}" / "last.ckpt",
        )
    done = fdl_in_process("analyze", run, "--out", tmp_path / "run.h5", cwd=tmp_path)
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert (
        f"fix: pass the folders, whose checkpoints hold their steps (global_step): fdl analyze {run}/epoch_* ..." in said
    ), said
    assert "--step-regex" not in said


def test_folders_of_one_checkpoint_each_holding_only_epochs_are_told_to_take_the_steps_from_their_names(
    tmp_path: Path,
) -> None:
    """`step_N/model.pt` holding only an epoch: an epoch is no step of the file's own (docs/usage.md, "Epochs only"),
    so the names' steps are the ones to take, whichever folder the advice reads."""
    run = tmp_path / "run"
    for epoch, step in enumerate((0, 50, 100)):
        (run / f"step_{step}").mkdir(parents=True)
        torch.save(
            {"model_state_dict": {"weight": torch.full((2, 3), float(epoch))}, "epoch": epoch},
            run / f"step_{step}" / "model.pt",
        )
    done = fdl_in_process("analyze", run, "--out", tmp_path / "run.h5", cwd=tmp_path)
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert f"fdl analyze {run}/step_* --step-regex 'step_(\\d+)/' ..." in said, said


# ------------------------------------------------------------------ analyze --json stopped by Ctrl-C / SIGTERM


def _stored_steps(out: Path) -> list[int]:
    done = fdl_in_process("report", out, "--json")
    assert done.returncode == 0, done.stderr
    return sorted(record["step"] for record in json.loads(done.stdout))


def _printed_steps(stdout: str) -> list[int]:
    return sorted(json.loads(line)["step"] for line in stdout.splitlines())


def test_a_ctrl_c_while_records_are_printed_leaves_none_of_the_batch_unprinted(tmp_path, monkeypatch) -> None:
    """`fdl analyze --json` stopped by Ctrl-C or SIGTERM while it printed the records of one commit (in the flush of
    stdout after step 10's): the rest of that commit's checkpoints were stored but neither printed nor counted (a run
    of 8 said `1 checkpoint analysed`, printed one record and stored 4), so a `| jq` consumer, and the resume that
    finds them stored, never saw them. With commits throttled (--commit-interval), steps 10 and 20 are one commit."""
    ckpts = _run(tmp_path, (0, 10, 20))
    emit = cli._emit_json

    def interrupted_emit(obj, stream=None):
        emit(obj, stream)
        if isinstance(obj, dict) and obj.get("step") == 10 and not getattr(interrupted_emit, "done", False):
            interrupted_emit.done = True  # type: ignore[attr-defined]
            raise signals.Interrupted

    monkeypatch.setattr(cli, "_emit_json", interrupted_emit)
    out = tmp_path / "run.h5"
    done = fdl_in_process(
        "analyze",
        ckpts,
        "--model",
        f"{tmp_path}/model.py:build",
        "--probe",
        tmp_path / "probe.npz",
        "-o",
        out,
        "--device",
        "cpu",
        "--json",
        "--commit-interval",
        "1000",
    )
    monkeypatch.undo()
    assert done.returncode == 130, done.stderr
    assert _stored_steps(out) == [0, 10, 20]
    assert _printed_steps(done.stdout) == [0, 10, 20]
    assert "3 checkpoints analysed" in done.stderr, done.stderr


def _analyze_json(tmp_path: Path, ckpts: Path, out: Path):
    return fdl_in_process(
        "analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe", tmp_path / "probe.npz", "-o", out,
        "--device", "cpu", "--json", "--commit-interval", "1000",
    )


def _emitting(monkeypatch, signals_at_step_10: int) -> list[str]:
    """`cli._emit_json` met by `signals_at_step_10` real SIGINTs (fdl's handler in place) as it prints step 10's
    record, before writing a byte of it, as where the print waits on a pipe its reader does not empty. What it
    did: "printed" once the print went on past the signals."""
    import signal

    emit, did = cli._emit_json, []

    def emitting(obj, stream=None):
        if isinstance(obj, dict) and obj.get("step") == 10 and not did:
            did.append("signalled")
            for _ in range(signals_at_step_10):
                signal.raise_signal(signal.SIGINT)
            did.append("printed")
        emit(obj, stream)

    monkeypatch.setattr(cli, "_emit_json", emitting)
    return did


def test_one_ctrl_c_during_a_records_print_lets_it_end_whole_then_stops(tmp_path, monkeypatch) -> None:
    ckpts = _run(tmp_path, (0, 10, 20))
    did = _emitting(monkeypatch, 1)
    done = _analyze_json(tmp_path, ckpts, tmp_path / "run.h5")
    monkeypatch.undo()
    assert done.returncode == 130 and did == ["signalled", "printed"], done.stderr
    assert _printed_steps(done.stdout) == [0, 10, 20] and _stored_steps(tmp_path / "run.h5") == [0, 10, 20]
    assert done.stderr.strip().splitlines()[-1].startswith("interrupted: "), done.stderr


def test_a_second_ctrl_c_during_a_records_print_stops_it_there(tmp_path, monkeypatch) -> None:
    """A print that waits for ever (`fdl analyze --json | less`, scrolled no further, its Ctrl-C fdl's too): the
    first Ctrl-C waits for the record, the second stops fdl in the print, which never went on. The others are
    printed in the way out, every checkpoint stored."""
    ckpts = _run(tmp_path, (0, 10, 20))
    did = _emitting(monkeypatch, 2)
    done = _analyze_json(tmp_path, ckpts, tmp_path / "run.h5")
    monkeypatch.undo()
    assert done.returncode == 130 and did == ["signalled"], done.stderr
    assert _printed_steps(done.stdout) == [0, 20] and _stored_steps(tmp_path / "run.h5") == [0, 10, 20]
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("interrupted: ")


def test_deferred_signals_one_delivered_on_the_way_out_or_the_second_at_once() -> None:
    import signal

    previous = signal.signal(signal.SIGINT, signals._on_sigint)
    try:
        reached = []
        try:
            with signals.deferred():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                reached.append("end of the block")
        except signals.Interrupted:
            reached.append("delivered")
        assert reached == ["end of the block", "delivered"]
        reached.clear()
        try:
            with signals.deferred(second_through=True):
                signal.raise_signal(signal.SIGINT)
                reached.append("past the first")
                signal.raise_signal(signal.SIGINT)
                reached.append("past the second")
        except signals.Interrupted:
            reached.append("delivered")
        assert reached == ["past the first", "delivered"]
        assert signal.getsignal(signal.SIGINT) is signals._on_sigint  # the handler given back
    finally:
        signal.signal(signal.SIGINT, previous)
        signals._pending = False


# ------------------------------------------------------------------ fdl inspect of one folder of a run's


def test_inspect_of_one_checkpoint_folder_says_the_runs_fdl_toml_above_it_is_not_read(tmp_path: Path) -> None:
    """`fdl inspect runH/checkpoint-22` listed the tensors and advised adding the model to
    runH/checkpoint-22/fdl.toml, silent of runH/fdl.toml, which names it; `fdl analyze runH/checkpoint-*` says it
    is not read (the fdl.toml of a folder given is read, not of the folder above)."""
    run = tmp_path / "runH"
    for step in (0, 22):
        (run / f"epoch_{step}").mkdir(parents=True)
        torch.save({"state_dict": {"weight": torch.full((2, 3), float(step))}, "global_step": step},
                   run / f"epoch_{step}" / "last.ckpt")
    (run / "fdl.toml").write_text('model = "model.py:build"\n')
    note = (f"note: {run / 'fdl.toml'} is not read: fdl reads the fdl.toml of a folder given, or of the folder of "
            "the files given, not of the folder above them")
    for given in (run / "epoch_22", run / "epoch_22" / "last.ckpt"):
        done = fdl_in_process("inspect", given, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert note in " ".join(done.stderr.split()), done.stderr
    (run / "epoch_22" / "fdl.toml").write_text("")  # the folder given holds one: that one is read, no note
    done = fdl_in_process("inspect", run / "epoch_22", cwd=tmp_path)
    assert done.returncode == 0 and "is not read" not in done.stderr, done.stderr
