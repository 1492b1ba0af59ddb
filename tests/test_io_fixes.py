"""Input/output defects found in review (third round), each pinned by a test that failed before its fix.

Discovery of odd folder entries (dangling links, link loops, unreadable entries, Git LFS pointers),
stdout kept clean of the model's own prints, output on streams that cannot encode a path, closed
pipes under `--help`, wrong-typed provenance in `classify`, and the accuracy of small messages.
Commands run in-process through the console entry point (`fdl_cli.cli.main`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.errors import CheckpointError
from tests.test_analyze import Result, fdl
from tests.tiny_models import mlp

torch.set_num_threads(1)
SMALL = ("--top-k", "4", "--anchor-size", "16", "--batch-size", "16")
MODEL = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:mlp"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths at 80 columns otherwise


def _run_folder(root: Path, steps: tuple[int, ...] = (0, 10)) -> Path:
    """A folder of safetensors checkpoints of tiny_models.mlp (4-8-3) and a probe beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        weights = {k: v.contiguous() for k, v in mlp(seed=step).state_dict().items()}
        save_file(weights, str(root / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root.parent / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return root


def _analyze(folder: Path, out: Path, *extra: str) -> Result:
    result = fdl("analyze", str(folder), "--model", MODEL, "--probe", str(folder.parent / "probe.npz"),
                 "--out", str(out), *SMALL, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ---------------------------------------------------------------- D4: dangling links and link loops


def test_dangling_link_and_link_loop_are_bad_checkpoints_not_tracebacks(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    (folder / "step_7.pt").symlink_to("nowhere.pt")
    (folder / "a.pt").symlink_to("b.pt")
    (folder / "b.pt").symlink_to("a.pt")
    found = discover_checkpoints([folder])
    assert [r.step for r in found.checkpoints] == [0, 10]
    reasons = {path.name: reason for path, reason in found.bad}
    assert set(reasons) == {"step_7.pt", "a.pt", "b.pt"}
    assert "a symbolic link to nowhere.pt, which does not exist" in reasons["step_7.pt"]
    assert "symbolic link loop" in reasons["a.pt"] and "symbolic link loop" in reasons["b.pt"]

    result = _analyze(folder, tmp_path / "s.h5", "--json")
    assert result.code == 1, result.stderr  # the others are analysed, the bad entries reported
    assert [r["step"] for r in result.records] == [0, 10]
    assert "error: cannot read the checkpoint " + str(folder / "step_7.pt") + "\n" in result.stderr  # named once
    assert "fix: restore the file it points to, or remove the link" in result.stderr
    assert "symbolic link loop" in result.stderr


def test_an_explicit_dangling_link_says_where_it_points(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    (folder / "last.pt").symlink_to("gone.pt")
    with pytest.raises(CheckpointError, match="a symbolic link to gone.pt, which does not exist"):
        discover_checkpoints([folder / "last.pt"])


# ------------------------------------------------------- D5: entries this user may not read


_NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
REPO = Path(__file__).resolve().parents[1]


def _unprivileged(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` where file modes apply: as is for a normal user; as root, without the capabilities
    that let root read any file (setpriv), or skip when that cannot be done here."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        probe = subprocess.run([*_NO_DAC, "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[:200]}")
        prefix = _NO_DAC
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"}
    return subprocess.run([*prefix, sys.executable, *argv], capture_output=True, text=True, env=env, check=False,
                          timeout=300)


#: `python -c _WITHOUT_DAC ARGS`: `python -m fdl_cli ARGS` (run as `-m` runs it) in a process where file modes apply:
#: as root, CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped from its bounding set and from the sets it holds
#: (where a root process run by `setpriv --bounding-set -dac_override,-dac_read_search` is left by its exec) before
#: fdl is imported, or it exits 77 saying why it cannot; for a warm child (tests/warm.py), which execs nothing
_WITHOUT_DAC = """
import ctypes, os, runpy, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    header, data, dac = Header(0x20080522, 0), (Data * 2)(), (1 << 1) | (1 << 2)
    dropped = all(libc.prctl(24, cap, 0, 0, 0) == 0 for cap in (1, 2))  # PR_CAPBSET_DROP
    if dropped and libc.capget(ctypes.byref(header), data) == 0:
        for name in ("effective", "permitted", "inheritable"):
            setattr(data[0], name, getattr(data[0], name) & ~dac)
        dropped = libc.capset(ctypes.byref(header), data) == 0
    if not dropped:
        sys.stderr.write(f"cannot drop the capabilities: {os.strerror(ctypes.get_errno())}")
        sys.exit(77)
sys.argv, sys.path[0] = ["-m", *sys.argv[1:]], os.getcwd()
runpy._run_module_as_main("fdl_cli")
"""


def _unprivileged_fdl(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fdl_cli ARGS` as `_unprivileged` runs it (file modes apply, or skip), in a warm child (tests/warm.py:
    an analyze's process without its own `import torch`; what is tested is the messages, not the process's start)."""
    from tests import warm

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"}
    done = warm.run([sys.executable, "-c", _WITHOUT_DAC, *args], cwd=REPO, env=env, timeout=300)
    if done.returncode == 77 and done.stderr.startswith("cannot drop the capabilities"):
        pytest.skip(f"running as root, and {done.stderr[:200]}: file modes cannot be enforced")
    return done


@pytest.fixture
def unreadable_run(tmp_path: Path) -> Iterator[Path]:
    """A run folder holding an unreadable checkpoint file (.pt and .safetensors) and sub-folder, beside
    two good checkpoints; and a second folder whose fdl.toml, and a third that, cannot be read."""
    folder = _run_folder(tmp_path / "run")
    torch.save(mlp(seed=3).state_dict(), folder / "step_20.pt")
    save_file({k: v.contiguous() for k, v in mlp(seed=4).state_dict().items()}, str(folder / "step_30.safetensors"))
    (folder / "checkpoint-5").mkdir()
    manifest = _run_folder(tmp_path / "manifest" / "run")
    (manifest / "fdl.toml").write_text(f'model = "{MODEL}"\n')
    closed = _run_folder(tmp_path / "closed" / "run")
    _run_folder(tmp_path / "probe" / "run")
    model = _run_folder(tmp_path / "model" / "run")
    shutil.copy(MODEL.partition(":")[0], model / "model.py")
    locked = [folder / "step_20.pt", folder / "step_30.safetensors", folder / "checkpoint-5",
              manifest / "fdl.toml", closed, tmp_path / "probe" / "probe.npz", model / "model.py"]
    for path in locked:
        path.chmod(0)
    try:
        yield tmp_path
    finally:
        for path in locked:
            path.chmod(0o755)


def test_unreadable_entries_are_reported_and_the_others_analysed(unreadable_run: Path) -> None:
    folder = unreadable_run / "run"
    result = _unprivileged_fdl("analyze", str(folder), "--model", MODEL, "--probe", str(unreadable_run / "probe.npz"),
                               "--out", str(unreadable_run / "s.h5"), "--json", *SMALL)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert [json.loads(line)["step"] for line in result.stdout.splitlines()] == [0, 10]
    for name, what in (("step_20.pt", "file"), ("step_30.safetensors", "file"), ("checkpoint-5", "folder")):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: cannot ")]
        assert any(line.endswith(f" {folder / name}") for line in errors), result.stderr  # named once
        assert f"permission denied: this user may not read the {what}" in result.stderr
    assert f"chmod a+rx {folder / 'checkpoint-5'}" in result.stderr
    assert f"chmod a+r {folder / 'step_30.safetensors'}" in result.stderr
    assert "truncated" not in result.stderr  # an unreadable file is not a damaged one


@pytest.mark.parametrize(("where", "message"), [
    ("manifest/run", "error: cannot read the manifest {path}/fdl.toml"),
    ("closed/run", "error: cannot look into the folder {path}"),
    ("probe/run", "error: cannot read the probe {path}/../probe.npz"),
    ("model/run", "importing {path}/model.py failed"),
])
def test_an_unreadable_manifest_folder_probe_or_model_is_a_clear_error(
    unreadable_run: Path, where: str, message: str
) -> None:
    folder = unreadable_run / where
    store = unreadable_run / "m.h5"
    model = f"{folder}/model.py:mlp" if where.startswith("model") else MODEL
    result = _unprivileged_fdl("analyze", str(folder), "--model", model, "--probe", f"{folder}/../probe.npz",
                               "--out", str(store), *SMALL)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert message.format(path=folder) in result.stderr
    if not where.startswith("model"):
        assert "got: permission denied: this user may not read the" in result.stderr
    assert "fix: make it readable (chmod a+r" in result.stderr  # not "corrupt" or "fix the error in that file"
    assert not store.exists()


def test_an_unreadable_checkpoint_file_is_not_called_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same messages in-process as any user (root reads mode-000 files): opening raises PermissionError."""
    import builtins

    from fdl_cli import checkpoints

    folder = _run_folder(tmp_path / "run", steps=(0, 10, 20))
    # a legacy (not zip) torch file: discovery opens it to tell a text file from a pickle
    torch.save(mlp(seed=3).state_dict(), folder / "step_30.pt", _use_new_zipfile_serialization=False)
    locked = {folder / "step_10.safetensors", folder / "step_30.pt"}
    real_open = builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(file)) in locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "open", guarded_open, raising=False)
    found = discover_checkpoints([folder])
    assert [r.step for r in found.checkpoints] == [0, 20]
    reasons = {path.name: reason for path, reason in found.bad}
    assert set(reasons) == {"step_10.safetensors", "step_30.pt"}
    for name, reason in reasons.items():
        assert "permission denied: this user may not read the file" in reason
        assert f"chmod a+r {folder / name}" in reason
        assert "truncated" not in reason


# ------------------------------------------- D13: Git LFS pointers and text files named like checkpoints

_LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 36328\n".format("4d7a2146" * 8)


def test_lfs_pointers_and_text_files_with_a_checkpoint_suffix_are_bad_checkpoints(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    (folder / "step_20.pt").write_text(_LFS)
    (folder / "step_30.safetensors").write_text(_LFS)
    (folder / "step_40.bin").write_text("not weights\n")
    (folder / "README.txt").write_text(_LFS)  # not a checkpoint suffix: skipped with a note, as before
    found = discover_checkpoints([folder])
    assert [r.step for r in found.checkpoints] == [0, 10]
    reasons = {path.name: reason for path, reason in found.bad}
    assert set(reasons) == {"step_20.pt", "step_30.safetensors", "step_40.bin"}
    for name in ("step_20.pt", "step_30.safetensors"):
        assert reasons[name].startswith(f"{folder / name} is a Git LFS pointer, not the checkpoint it stands for")
        assert "the real 36328-byte file" in reasons[name]
        assert "fix: run `git lfs pull`" in reasons[name]
    assert reasons["step_40.bin"].startswith(f"{folder / 'step_40.bin'} is a text file, not a checkpoint")
    assert "begins 'not weights'" in reasons["step_40.bin"]
    assert any(note.startswith("skipped README.txt: not a checkpoint suffix") for note in found.notes)

    result = _analyze(folder, tmp_path / "s.h5", "--json")
    assert result.code == 1  # the others analysed, the pointers reported: not exit 0 with a note
    assert [r["step"] for r in result.records] == [0, 10]
    # the path once: the reason names it already (session 13 found "failed: X: X is a Git LFS pointer")
    assert f"failed: {folder / 'step_20.pt'} is a Git LFS pointer" in result.stderr
    strict = _analyze(folder, tmp_path / "t.h5", "--strict")
    assert strict.code == 1 and "--strict: stopped at the unreadable checkpoint" in strict.stderr


# ------------------------------------------------------- D10: the model's own print()s stay off stdout


CHATTY_MODEL = '''
import sys

import torch
from torch import nn

print("chatty: imported")


class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        print("chatty: forward")
        sys.stdout.write("chatty: raw write\\n")
        return self.head(torch.relu(self.body(x)))


def build():
    print("chatty: factory")
    return Chatty()
'''


@pytest.mark.parametrize("command", ["analyze", "inspect"])
def test_the_models_prints_go_to_stderr_and_stdout_carries_only_json(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        weights = {"body.weight": torch.randn(8, 4), "body.bias": torch.randn(8),
                   "head.weight": torch.randn(3, 8), "head.bias": torch.randn(3)}
        save_file(weights, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    (tmp_path / f"chatty_{command}.py").write_text(CHATTY_MODEL)  # one file per test: imported afresh
    model = f"{tmp_path / f'chatty_{command}.py'}:build"
    if command == "analyze":
        result = fdl("analyze", str(folder), "--model", model, "--probe", str(tmp_path / "probe.npz"),
                     "--out", str(tmp_path / "s.h5"), "--json", *SMALL)
        assert result.code == 0, result.stderr
        assert [r["step"] for r in result.records] == [0, 10]  # every stdout line is a JSON record
    else:
        result = fdl("inspect", str(folder / "step_10.safetensors"), "--model", model,
                     "--probe", str(tmp_path / "probe.npz"), "--json")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["default_module"] == "head"  # one JSON document, nothing else
    assert "chatty" not in result.stdout
    for line in ("chatty: imported", "chatty: factory", "chatty: forward", "chatty: raw write"):
        assert line in result.stderr


# ------------------------------------------- D11: output on streams that cannot encode a path


def _run_on_ascii_streams(*argv: str, encoding: str = "ascii") -> tuple[int, str, str]:
    """`fdl ARGV` with stdout and stderr as PYTHONIOENCODING=ascii makes them (strict ASCII), or another
    `encoding` (strict)."""
    import io
    import sys

    from fdl_cli.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.stdout, sys.stderr = saved
    out.flush()
    err.flush()
    # click.echo writes UTF-8 to a stream it finds misconfigured as ASCII: its messages are read as UTF-8
    # stdout, no terminal, is made UTF-8 whatever the locale (a program reads it: pandas, jq)
    # (ASCII read as UTF-8 too, its superset); another encoding's stderr is read as that encoding
    said = "utf-8" if encoding == "ascii" else encoding
    return code, out.buffer.getvalue().decode("utf-8"), err.buffer.getvalue().decode(said)  # type: ignore[attr-defined]


def test_a_path_the_output_encoding_cannot_hold_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "ü" / "run")
    store = tmp_path / "s.h5"
    assert _analyze(folder, store).code == 0
    for fmt in ("csv", "markdown"):
        code, out, _ = _run_on_ascii_streams("report", str(store), "--format", fmt)
        assert code == 0
        assert "ü/run/step_10.safetensors" in out  # stdout piped: UTF-8, the name as it is, the rest of the row intact
    code, _, err = _run_on_ascii_streams("report", str(store), "--wide")
    assert code == 0 and "CKA0" in err and "final: D_LR" in err  # "CKA₀" in ASCII
    code, out, _ = _run_on_ascii_streams("report", str(store), "--format", "json")
    assert code == 0 and json.loads(out)[1]["path"] == str(folder / "step_10.safetensors")  # JSON stays valid
    code, _, err = _run_on_ascii_streams("report", str(tmp_path / "ü" / "missing.h5"))
    assert code == 1 and "error: " in err and "missing.h5" in err and "Traceback" not in err


# ------------------------------------------------ D14: classify with wrong-typed provenance values


@pytest.mark.parametrize(("key", "value", "warning"), [
    ("layers", 5, "the store's provenance has layers = 5, not a list of names; ignored"),
    ("probes", "probe", "the store's provenance has probes = \"probe\", not a list of names; ignored"),
    ("reference_step", "abc", "the store's provenance has reference_step = \"abc\", not an integer step; ignored"),
])
def test_classify_copes_with_wrong_typed_provenance(tmp_path: Path, key: str, value: Any, warning: str) -> None:
    import h5py

    store = tmp_path / "s.h5"
    assert _analyze(_run_folder(tmp_path / "run"), store).code == 0
    intact = fdl("classify", str(store), "--json")
    assert intact.code == 0, intact.stderr
    with h5py.File(store, "r+") as handle:
        provenance = json.loads(handle.attrs["provenance"])
        provenance[key] = value
        handle.attrs["provenance"] = json.dumps(provenance)
    result = fdl("classify", str(store), "--json")
    assert "Traceback" not in result.stderr
    assert result.code == 0, result.stderr
    assert f"warning: {warning}" in result.stderr
    assert json.loads(result.stdout) == json.loads(intact.stdout)  # the first step is the reference anyway


# ------------------------------------------------------------- D15: `fdl --help | true` exits 141


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["report", "--help"]])
def test_help_and_version_into_a_closed_pipe_exit_141_quietly(argv: list[str]) -> None:
    """`fdl --help | true`: the reader is gone before fdl writes. Like any other command (and a tool
    killed by SIGPIPE) fdl exits 141 without a word; click's own handler made it exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write meets EPIPE
    try:
        process = subprocess.run([sys.executable, "-m", "fdl_cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert process.returncode == 141, process.stderr
    assert process.stderr == ""


# ------------------------------------------------------------------------ small message accuracy


def test_an_unknown_layer_with_no_close_name_lists_the_models_modules() -> None:
    from fdl_cli.errors import ModelError
    from fdl_cli.extract import resolve_layers

    with pytest.raises(ModelError) as err:
        resolve_layers(mlp(), ["nope"])
    assert "got: no module name is close to it; the model's modules include: 0, 1, 2" in str(err.value)
    assert "(none)" not in str(err.value)
    wide = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(12)])
    with pytest.raises(ModelError, match=r"include: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(12 in all\)"):
        resolve_layers(wide, ["nope"])
    with pytest.raises(ModelError, match="closest module names: head"):  # close names are still preferred
        resolve_layers(torch.nn.Sequential(OrderedDict(head=torch.nn.Linear(2, 2))), ["haed"])


def test_a_probe_that_is_not_a_regular_file_says_so_not_not_found(tmp_path: Path) -> None:
    from fdl_cli.errors import ProbeError
    from fdl_cli.probes import load_probe

    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    cases = [(Path(os.devnull), "a character device"), (fifo, "a named pipe (FIFO)")]
    for path, kind in cases:
        with pytest.raises(ProbeError) as err:
            load_probe(path)
        assert str(err.value).startswith(f"probe {path} is not a regular file\n  got: {kind}\n  fix: pass a probe file")
    with pytest.raises(ProbeError, match="not found"):  # a missing file still says so
        load_probe(tmp_path / "missing.npz")
    folder = _run_folder(tmp_path / "run")
    result = fdl("analyze", str(folder), "--model", MODEL, "--probe", os.devnull, "--out", str(tmp_path / "s.h5"))
    assert result.code == 1 and f"error: probe {os.devnull} is not a regular file" in result.stderr


@pytest.mark.parametrize(("value", "got"), [
    ("cka_static=nan", "got: 'nan' (not finite)"),
    ("cka_static=inf", "got: 'inf' (not finite)"),
    ("cka_static=abc", "got: 'abc' (not a number)"),
])
def test_a_threshold_that_is_not_a_finite_number_says_so(tmp_path: Path, value: str, got: str) -> None:
    result = fdl("classify", str(tmp_path / "never-read.h5"), "--threshold", value)
    assert result.code == 1
    assert f"error: bad threshold {value!r}: its value must be a finite number\n  {got}\n" in result.stderr
    assert "fix: e.g. --threshold cka_static=0.98" in result.stderr
    assert "NAME=VALUE" not in result.stderr  # it was written as NAME=VALUE
    missing = fdl("classify", str(tmp_path / "never-read.h5"), "--threshold", "cka_static")
    assert missing.code == 1 and "fix: write it as NAME=VALUE" in missing.stderr


def test_inspect_with_a_probe_that_does_not_fit_the_model_exits_1(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run")
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 5), np.float32))  # the model takes 4 inputs
    checkpoint = str(folder / "step_10.safetensors")
    for json_flag in ((), ("--json",)):
        result = fdl("inspect", checkpoint, "--model", MODEL, "--probe", str(tmp_path / "wide.npz"), *json_flag)
        assert result.code == 1, result.stderr
        assert result.stdout == ""
        assert f"error: probe {tmp_path / 'wide.npz'} does not fit the model of {checkpoint}" in result.stderr
        assert "got: forward failed on a sample of shape (1, 5): RuntimeError" in result.stderr
        assert "mat1 and mat2 shapes cannot be multiplied" in result.stderr  # the model's own words
    fits = fdl("inspect", checkpoint, "--model", MODEL, "--probe", str(tmp_path / "probe.npz"), "--json")
    assert fits.code == 0 and json.loads(fits.stdout)["modules"][0]["output_shape"] == [1, 3]


@pytest.mark.parametrize("steps", ["", " , "])
def test_an_empty_steps_list_is_a_usage_error_not_every_step(tmp_path: Path, steps: str) -> None:
    folder = _run_folder(tmp_path / "run")
    store = tmp_path / "s.h5"
    result = _analyze(folder, store, "--steps", steps)
    assert result.code == 2, result.stderr
    assert f"Invalid value for --steps: the list of steps is empty (got {steps!r})" in result.stderr
    assert not store.exists()


def test_steps_that_are_not_integers_are_a_usage_error_too(tmp_path: Path) -> None:
    """`--steps ''` was status 2 and `--steps 10,a` status 1 (from the library's check)."""
    folder = _run_folder(tmp_path / "run")
    result = _analyze(folder, tmp_path / "s.h5", "--steps", "0, 10,a,2.5")
    assert result.code == 2, result.stderr
    assert "steps are integers separated by commas, e.g. --steps 0,100,500 (got 'a', '2.5')" in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_steps_the_usage_check_passes_are_integers(tmp_path: Path) -> None:
    """The usage check took a part for an integer when its characters, signs stripped, were digits:
    '+-5' and '²' passed it and int() refused them after (status 1, the library's message)."""
    folder = _run_folder(tmp_path / "run")
    result = _analyze(folder, tmp_path / "s.h5", "--steps", "0,+-5,\u00b2")
    assert result.code == 2, result.stderr
    assert "(got '+-5', '\u00b2')" in result.stderr


@pytest.mark.parametrize("steps", ["", " , "])
def test_an_empty_steps_list_is_refused_by_the_library_too(steps: str) -> None:
    """`AnalyzeOptions.from_cli`, which library callers use, refused no empty --steps: it selected
    every step ('') or none (',')."""
    from fdl_cli.errors import FdlError
    from fdl_cli.pipeline import AnalyzeOptions

    with pytest.raises(FdlError) as caught:
        AnalyzeOptions.from_cli(sources=("run",), steps=steps)
    assert caught.value.what == "--steps is an empty list of steps"
    assert AnalyzeOptions.from_cli(sources=("run",), steps=" 5, 7,").steps == (5, 7)
    assert AnalyzeOptions.from_cli(sources=("run",)).steps is None
