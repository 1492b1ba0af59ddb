"""Session 21: an fdl.toml edited during --watch, SIGTERM in a torchrun job's script, --drop's fix under a
--glob, and the reference file of an old store hashed once (tiny MLPs on the CPU). Each test failed before
its fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_run import REPO
from tests.test_s19_store import _run, fdl_quiet

# --------------------------------------------------------------- 1. an fdl.toml edited during --watch


def _watched_with_toml(tmp_path: Path) -> tuple[Path, Path, str]:
    """(a training run's files, the folder it saves into: its probe, a settled fdl.toml with top_k = 3 and its
    first checkpoint, the fdl.toml's text)."""
    from tests.cli_run import tiny_model_beside
    from tests.test_prev_walkback import _arrive, _make_run
    from tests.test_s20_toml import _settled_write

    source = _make_run(tmp_path / "source")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "probe.npz").write_bytes((source / "probe.npz").read_bytes())
    first = f'model = "{tiny_model_beside(folder)}"\nprobe = "probe.npz"\ntop_k = 3\n'
    _settled_write(folder / "fdl.toml", first)
    _arrive(source, folder, "step_0.safetensors")
    return source, folder, first


def test_watch_says_once_a_change_that_an_fdl_toml_it_read_is_edited_or_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's fdl.toml (top_k = 3), read as --watch started, edited meanwhile (top_k = 8, a layer): it was
    ignored without a word, as was its removal. Each change is said once, once settled, naming what differs
    from what the run uses, which it keeps until it is restarted (one store, one way); an edit that sets what
    the run uses is a note. Between changes the file is not read again (its size and time are looked at)."""
    from fdl_cli import checkpoints
    from tests.test_prev_walkback import _arrive
    from tests.test_s20_toml import _settled_write, _top_k, _watch

    source, folder, first = _watched_with_toml(tmp_path)
    toml = folder / "fdl.toml"
    reads: list[str] = []
    real = checkpoints.read_manifest

    def counting(where: Path) -> object:
        reads.append(str(where))
        return real(where)

    monkeypatch.setattr(checkpoints, "read_manifest", counting)
    polls: list[int] = []  # fdl.toml files read so far, as each poll's sleep begins

    def poll(action: Callable[[], object] | None = None) -> Callable[[], None]:
        def step() -> None:
            polls.append(len(reads))
            if action is not None:
                action()
        return step

    edited = 'model = "model.py:mlp"\nprobe = "probe.npz"\ntop_k = 8\nlayer = "0"\n'
    model = f"{folder / 'model.py'}:mlp"
    reporter, records = _watch(monkeypatch, folder, tmp_path / "w.h5", [
        poll(lambda: _arrive(source, folder, "step_10.safetensors")),
        poll(lambda: toml.write_text(edited)),  # being written: not read yet
        poll(lambda: os.utime(toml, (time.time() - 60, time.time() - 60))),  # settled
        poll(),
        poll(lambda: _settled_write(toml, "# the same settings\n" + first)),
        poll(lambda: _arrive(source, folder, "step_20.safetensors")),
        poll(toml.unlink),
        poll(),
        poll(),
    ])
    assert [record["step"] for record in records] == [0, 10, 20]
    assert _top_k(tmp_path / "w.h5") == 3  # as for step 0: one store, one way
    assert reporter.warnings == [
        f"{toml} changed after this run started, and is not read again: it sets layer = ['0'] (this run: the default "
        "layer), top_k = 8 (this run: 3), and the running watch keeps its settings until it is restarted, as the "
        "checkpoints of one store are measured one way; to apply it, stop, and run fdl analyze again with "
        "--overwrite (or another --out)",
        f"{toml} was removed after this run started: the running watch keeps the settings it read from it (model = "
        f"{model!r}, probe = {[str(folder / 'probe.npz')]}, top_k = 3) until it is restarted; started again without it, "
        "fdl analyze would not use them (put the file back, or give them on the command line)",
    ]
    assert f"{toml} changed after this run started: it sets what the run uses already" in reporter.notes
    # read at the start, then only at the polls after the file settled, was edited again, was removed
    assert [later - earlier for earlier, later in zip(polls[:-1], polls[1:], strict=True)] == [0, 0, 1, 0, 1, 0, 1, 0], polls


# ------------------------------------------------------- 2. SIGTERM of a command run in a torchrun job's script

#: `fdl ARGV` in a fresh interpreter whose store reading says "reading" on stderr and then waits, so that a
#: signal is sent while the command runs (after its name is parsed, before it has read anything)
_WAITING_FDL = """
import sys, time
from fdl_cli import cli, report
real = report._read_run  # under load_run and opened_run (classify's) alike
def waiting(*args, **kwargs):
    sys.stderr.write("reading\\n")
    sys.stderr.flush()
    time.sleep(60)
    return real(*args, **kwargs)
report._read_run = waiting
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["report", "classify"])
def test_a_command_in_a_torchrun_jobs_script_takes_sigterm_as_a_plain_process(tmp_path: Path, command: str) -> None:
    """`fdl classify run.h5 --expect MF` after training, in a script torchrun runs (WORLD_SIZE=2 inherited):
    SIGTERM kept its default there, as for a rank of `fdl analyze` waiting in a collective, and ended the
    process by the signal (status -15) without a word. It stops as a plain process does: "interrupted",
    status 143, the store as it was."""
    folder, probe = _run(tmp_path, steps=(0, 10))
    store = tmp_path / "run.h5"
    assert fdl_quiet(folder, probe, store) == 0
    before = store.read_bytes()
    environment = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _WAITING_FDL, command, str(store)], cwd=tmp_path,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert process.stderr.readline() == "reading\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    assert store.read_bytes() == before


def test_fdl_analyze_as_a_torchrun_rank_keeps_sigterms_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason SIGTERM keeps its default under torchrun stays where it applies: `fdl analyze` as a rank (one
    waiting in a collective would run a Python handler only once the collective returns); any other command
    takes SIGTERM once its name is parsed."""
    import click

    from fdl_cli import cli, signals

    previous_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        for command, taken in (("analyze", False), ("report", True), ("compare", True), ("inspect", True)):
            with signals.installed():
                cli.cli.resolve_command(click.Context(cli.cli), [command])
                assert (signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL) == taken, command
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        cli._command = None


# ------------------------------------------------------------- 4. an old store's reference file, hashed once


def test_the_reference_file_of_a_store_without_signatures_is_hashed_once_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before file signatures, resumed with a new checkpoint: its reference file was hashed
    three times (read as the reference, checked as a stored file, read again for its stored series), and the
    stored checkpoint the new one is compared with twice. Each is hashed once; the store is the one a fresh
    run gives."""
    from safetensors.torch import save_file

    from tests.test_reliability_inputs import MODEL, SMALL, _weights
    from tests.test_s19_store import _drop_signatures, _records, fdl
    from tests.test_s20_drop import _hashed

    folder, probe = _run(tmp_path, steps=(0, 10))
    out = tmp_path / "run.h5"
    common = [folder, "--model", MODEL, "--probe", probe, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "-o", out)
    assert status == 0, err
    _drop_signatures(out)
    save_file(_weights(7), str(folder / "step_20.safetensors"))
    hashed = _hashed(monkeypatch)
    status, _, err = fdl(capsys, "analyze", *common, "-o", out)
    assert status == 0, err
    assert sorted(hashed) == ["step_0.safetensors", "step_10.safetensors", "step_20.safetensors"]
    status, _, err = fdl(capsys, "analyze", *common, "-o", tmp_path / "fresh.h5")
    assert status == 0, err
    assert _records(out) == _records(tmp_path / "fresh.h5")


# --------------------------------------------------------- 3. --drop and --redo: a file the glob leaves out


def test_drop_and_redo_say_that_the_glob_leaves_out_a_file_that_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stored checkpoint compared again by --drop (or by --redo) whose file --glob leaves out: the fix said
    "restore the file of step 10", a file that is there. It says the glob leaves it out, and to widen it; a
    file that is gone is still to be restored."""
    from tests.test_s19_store import _read_by_regex_too, _records, fdl

    common, folder, out, names = _read_by_regex_too(tmp_path, capsys)
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3", "--glob", "step_[023]*.safetensors")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"got: {out} analysed step 10 from {folder / 'step_10.safetensors'}, which is there, but --glob "
            "'step_[023]*.safetensors' leaves it out fix: widen --glob to match step_10.safetensors too (or leave "
            "--glob out), or re-analyse everything with --overwrite (or another --out)") in flat, flat
    assert "restore" not in flat
    # the glob of the folder's fdl.toml: named as the file's, overridden by --glob
    (folder / "fdl.toml").write_text('glob = "step_[023]*.safetensors"\n')
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3")
    flat = " ".join(err.split())
    assert status == 1, flat
    assert (f"which is there, but the glob 'step_[023]*.safetensors' that {folder / 'fdl.toml'} sets leaves it out "
            "fix: give a --glob that matches step_10.safetensors too (it overrides fdl.toml's)") in flat, flat
    (folder / "fdl.toml").unlink()
    assert out.read_bytes() == before
    # --redo 10 recomputes step 20's comparison with it: its file, left out by the glob, is named so too
    status, _, err = fdl(capsys, "analyze", *common, "-o", names, "--redo", "10", "--glob", "step_[01]*.safetensors")
    flat = " ".join(err.split())
    assert status == 1 and "which is there, but --glob 'step_[01]*.safetensors' leaves it out" in flat, flat
    # without the glob the drop goes through
    status, _, err = fdl(capsys, "analyze", *common, "-o", out, "--drop", "1,2,3")
    assert status == 0, err
    assert _records(out) == _records(names)
