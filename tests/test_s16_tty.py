"""Narrow terminals: `fdl report` / `fdl compare` keep their key columns whole and name the ones left out.

Each command runs in a real pseudo-terminal of the given width (stderr, where the tables go, is the
terminal), as in a narrow tmux pane; the same command piped keeps the whole table as before.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import warm
from tests.test_report import SCALARS, make_store

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: A classification run: accuracy and cross-entropy, so the narrow table shows acc and CE.
CLASSES: dict[int, dict[str, Any]] = {
    step: {**values, "accuracy": 0.25 + step / 1000, "cross_entropy": 2.3 - step / 200, "r2": None}
    for step, values in SCALARS.items()
}


def _env(columns: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    env.update(PYTHONPATH=str(REPO), COLUMNS=str(columns), LINES="50", TERM="xterm-256color")
    return env


def on_terminal(columns: int, *args: str) -> tuple[int, str]:
    """`fdl ARGS` with stdin, stdout and stderr on a pseudo-terminal `columns` wide: (status, text seen)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    argv = [sys.executable, "-m", "fdl_cli", *args]
    if args[0] == "inspect":  # imports torch: a warm process (tests/warm.py)
        process: subprocess.Popen[bytes] | warm.WarmProcess = warm.spawn(
            argv, stdin=slave, stdout=slave, stderr=slave, env=_env(columns), cwd=REPO)
    else:  # report and compare never import torch: a fresh process is the cheaper
        process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env(columns), cwd=REPO,
                                   close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = process.wait(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return status, ANSI.sub("", text)


def piped(columns: int, *args: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "fdl_cli", *args]
    if args[0] == "inspect":  # as in on_terminal
        done = warm.run(argv, env=_env(columns), cwd=REPO, timeout=120)
    else:
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(columns), cwd=REPO, timeout=120)
    return done.returncode, done.stderr


def table_lines(text: str, first: str) -> tuple[str, list[str]]:
    """The header of the table starting with `first`, and the lines from it to the last row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = start + 2
    while end < len(lines) and lines[end][:1] == " ":
        end += 1
    return lines[start], lines[start:end]


def columns_of(header: str) -> list[str]:
    return [name.strip() for name in re.split(r" {3,}", header.strip())]


def left_out(text: str) -> list[str]:
    """The columns the note below the table names as left out."""
    flat = " ".join(text.split())
    found = re.search(r"\(left out for this terminal's width: (.*?); ", flat)
    assert found, flat
    return found.group(1).split(", ")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tty")
    return (make_store(folder / "a.h5", scalars=CLASSES),
            make_store(folder / "b.h5", scalars=CLASSES, seed=5))


@pytest.mark.parametrize("columns", [40, 60, 80])
def test_report_on_a_narrow_terminal_keeps_step_regime_dlr_and_accuracy_whole(
        stores: tuple[Path, Path], columns: int) -> None:
    """At 40 columns `acc` and the regime were cut to "acc…" / "0.2500…" and the note named only the
    columns dropped before the cut (cross_entropy, eff_dim, pi_hat_C, overlap_init)."""
    store = stores[0]
    status, full_text = piped(columns, "report", str(store))
    assert status == 0
    full = columns_of(table_lines(full_text, "step")[0])
    status, text = on_terminal(columns, "report", str(store))
    assert status == 0, text
    header, lines = table_lines(text, "step")
    shown = columns_of(header)
    assert "…" not in "\n".join(lines), text
    assert all(len(line) <= columns for line in lines), text
    for key in ("step", "D_LR", "acc", "regime"):
        assert key in shown, text
    assert lines[2].rstrip().endswith("coefficient") and lines[-1].rstrip().endswith("MF"), text
    hidden = left_out(text)
    assert sorted(hidden) == sorted(set(full) - set(shown)) and hidden, text  # every one, and only those
    flat = " ".join(text.split())
    for way in (f"fdl report {store} --wide 2>&1 | less -S", "--json", "--format csv",
                f"fdl export {store} --what trajectories"):
        assert way in flat, flat


@pytest.mark.parametrize("columns", [120, 200])
def test_report_on_a_wide_terminal_is_the_whole_table(stores: tuple[Path, Path], columns: int) -> None:
    status, text = on_terminal(columns, "report", str(stores[0]))
    assert status == 0
    header, lines = table_lines(text, "step")
    assert columns_of(header) == ["step", "D_LR", "CKA₀", "overlap₀", "k95 Π̂", "Π̂(C)", "D_ρ", "acc", "CE", "regime"]
    assert "left out" not in text and "…" not in text


def test_report_piped_is_unchanged_whatever_columns_says(stores: tuple[Path, Path]) -> None:
    """A pipe or a log has no width: the whole table, no note, as before (COLUMNS=40 notwithstanding)."""
    status, text = piped(40, "report", str(stores[0]))
    assert status == 0
    header, lines = table_lines(text, "step")
    assert columns_of(header) == ["step", "D_LR", "CKA₀", "overlap₀", "k95 Π̂", "Π̂(C)", "D_ρ", "acc", "CE", "regime"]
    assert "left out" not in text and "…" not in text
    assert len(lines[0]) > 40


def test_report_wide_on_a_terminal_leaves_out_whole_columns_and_names_them(stores: tuple[Path, Path]) -> None:
    """`--wide` at 120 columns cut every line at the edge ("out…", a column cut in two) and said nothing
    of the 25 columns past it."""
    store = stores[0]
    status, text = on_terminal(120, "report", "--wide", str(store))
    assert status == 0
    header, lines = table_lines(text, "step")
    shown = columns_of(header)
    assert "…" not in "\n".join(lines) and all(len(line) <= 120 for line in lines), text
    assert shown[0] == "step" and "regime" in shown
    _, full_text = piped(120, "report", "--wide", str(store))
    full = columns_of(table_lines(full_text, "step")[0])
    hidden = left_out(text)
    assert sorted(hidden) == sorted(set(full) - set(shown)) and "param_norm" in hidden
    assert f"fdl report {store} --wide 2>&1 | less -S" in " ".join(text.split())


def test_report_on_a_terminal_too_narrow_for_step_and_regime_says_its_lines_are_cut(
        stores: tuple[Path, Path]) -> None:
    status, text = on_terminal(14, "report", str(stores[0]))
    assert status == 0
    header, lines = table_lines(text, "step")
    assert all(len(line) <= 14 for line in lines)
    flat = " ".join(text.split())
    assert "lines cut at the terminal's edge" in flat
    assert "D_LR" in left_out(text) and "regime" not in left_out(text)


@pytest.mark.parametrize("columns", [40, 80])
def test_compare_on_a_narrow_terminal_keeps_the_dlr_difference_and_overlap_whole(
        stores: tuple[Path, Path], columns: int) -> None:
    """At 80 columns the overlap A·B column was cut to "ov…" / "…"; at 40 all but Δ D_LR and Δ CKA₀."""
    a, b = stores
    status, full_text = piped(columns, "compare", str(a), str(b))
    assert status == 0, full_text
    full = columns_of(table_lines(full_text, "step A")[0])
    status, text = on_terminal(columns, "compare", str(a), str(b))
    assert status == 0, text
    header, lines = table_lines(text, "step A")
    shown = columns_of(header)
    assert "…" not in "\n".join(lines) and all(len(line) <= columns for line in lines), text
    for key in ("step A", "step B", "Δ D_LR", "overlap A·B"):
        assert key in shown, text
    hidden = left_out(text)
    assert sorted(hidden) == sorted(set(full) - set(shown)) and hidden, text
    flat = " ".join(text.split())
    assert "--format csv" in flat and "--json" in flat


def test_compare_on_a_wide_terminal_and_piped_is_the_whole_table(stores: tuple[Path, Path]) -> None:
    a, b = stores
    whole = ["step A", "step B", "Δ D_LR", "Δ CKA₀", "Δ overlap₀", "Δ k95 Π̂", "Δ Π̂(C)", "Δ acc", "overlap A·B"]
    for status, text in (on_terminal(120, "compare", str(a), str(b)), piped(40, "compare", str(a), str(b))):
        assert status == 0
        assert columns_of(table_lines(text, "step A")[0]) == whole
        assert "left out" not in text


LONG_NAMES = '''
import torch.nn as nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_output_dense = nn.Linear(8, 8)

    def forward(self, x):
        return self.attention_output_dense(x).relu()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList([Block() for _ in range(3)])})
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        for block in self.encoder["layer"]:
            x = block(x)
        return self.classifier(x)


def build():
    return Net()
'''


@pytest.fixture(scope="module")
def long_names(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model whose module names run to 38 characters (encoder.layer.0.attention_output_dense), saved."""
    import torch
    folder = tmp_path_factory.mktemp("long")
    (folder / "model.py").write_text(LONG_NAMES)
    namespace: dict[str, Any] = {}
    exec(compile(LONG_NAMES, str(folder / "model.py"), "exec"), namespace)
    torch.save(namespace["build"]().state_dict(), folder / "step_1.pt")
    return folder / "step_1.pt", folder / "model.py"


def box_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


@pytest.mark.parametrize("columns", [40, 60, 80])
def test_inspect_on_a_narrow_terminal_stays_within_it_and_names_what_it_leaves_out(
        long_names: tuple[Path, Path], columns: int) -> None:
    """Beside a 38-column name the table was drawn 72 columns wide on a 40-column terminal (88 at 60,
    95 at 80): each line wrapped, and no column was named as missing."""
    checkpoint, model = long_names
    status, text = on_terminal(columns, "inspect", str(checkpoint), "--model", f"{model}:build")
    assert status == 0, text
    lines = box_lines(text)
    assert lines and all(len(line) <= columns for line in lines), text
    header = " ".join(line for line in lines if line.startswith("┃"))
    assert "module" in header and "type" in header
    hidden = left_out(text)
    assert hidden == [name for name in ("output shape", "parameters") if name not in header], text
    assert "--json" in " ".join(text.split())
    assert "default feature layer: classifier:input" in text
    # every name whole on the wider terminals, folded (never cut) on the narrowest
    names = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert "encoder.layer.2.attention_output_dense" in names and "…" not in text


def test_inspect_at_40_columns_keeps_the_type_whole(long_names: tuple[Path, Path]) -> None:
    """The sample model's "Sequential" was folded to "Sequent" / "ial", "parameters" to "parame" / "ters"."""
    status, text = on_terminal(40, "inspect", str(REPO / "sample_checkpoints" / "step_0.safetensors"),
                               "--model", str(REPO / "sample_checkpoints" / "model.py") + ":build")
    assert status == 0, text
    assert any("│ Sequential │" in line for line in box_lines(text)), text
    assert left_out(text) == ["parameters"]


def test_inspect_piped_prints_the_table_whole(long_names: tuple[Path, Path]) -> None:
    """Piped (a log), the table was folded at rich's 80 columns: "ModuleD" / "ict", "paramet" / "ers"."""
    checkpoint, model = long_names
    status, text = piped(40, "inspect", str(checkpoint), "--model", f"{model}:build")
    assert status == 0, text
    lines = box_lines(text)
    assert any("│ ModuleDict │" in line for line in lines), text
    assert any("│ 27 ← default (input) │" in line for line in lines), text
    assert len([line for line in lines if line.startswith("│")]) == 10  # one line a module, none folded


# ------------------------------------------------------------------ signals during `import torch`

#: A `torch` package found before the real one: its import says so, then waits (signals held back
#: as for the real one) until the test creates the file $FAKE_TORCH_RELEASE - a hung import.
FAKE_TORCH = '''
import os, sys, time
sys.stderr.write("fake torch: importing\\n")
sys.stderr.flush()
while not os.path.exists(os.environ["FAKE_TORCH_RELEASE"]):
    time.sleep(0.05)
sys.stderr.write("fake torch: loaded\\n")
sys.stderr.flush()
'''

#: The entry point with Ctrl-C as from a terminal (a test runner started in the background would
#: otherwise hand down SIGINT ignored).
LAUNCH = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from fdl_cli.cli import main; main(sys.argv[1:])")

AGAIN = "fdl stops once torch has loaded; press Ctrl-C again to stop now"


class Stderr:
    """The stderr of a running process, read as it comes (no sleeps: each step waits for a line)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self.fd = process.stderr.fileno()
        self.text = ""
        self.closed = False

    def _read(self, until: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.closed = True
            return False
        self.text += chunk.decode("utf-8", "replace")
        return True

    def wait_for(self, needle: str, timeout: float = 120.0) -> None:
        until = time.monotonic() + timeout
        while needle not in self.text and not self.closed and time.monotonic() < until:
            self._read(until)
        assert needle in self.text, self.text

    def to_end(self, timeout: float = 120.0) -> str:
        until = time.monotonic() + timeout
        while not self.closed and time.monotonic() < until:
            self._read(until)
        return self.text


@pytest.fixture
def slow_torch(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "fake" / "torch").mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (tmp_path / "ckpts").mkdir()
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    env.update(PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{REPO}", FAKE_TORCH_RELEASE=str(tmp_path / "release"),
               COLUMNS="200")
    return env


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Stderr]:
    # a real process, not a warm one: the test is of `import torch` itself (a planted torch), at start-up
    process = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return process, Stderr(process)


COMMANDS = {"analyze": ("analyze", "{tmp}/ckpts", "--model", "m.py:build", "--probe", "p.npz", "--out", "{tmp}/run.h5"),
            "inspect": ("inspect", "{tmp}/ckpts/step_1.pt", "--model", "m.py:build")}


def during_import(env: dict[str, str], tmp_path: Path, command: str,
                  act: Callable[[subprocess.Popen[bytes], Stderr], None]) -> tuple[int, str, subprocess.Popen[bytes]]:
    """Start `fdl COMMAND` under the fake torch, wait until it imports torch, `act` (send signals, release
    the import), then read stderr to its end: (exit status, stderr, the process)."""
    process, stderr = start(env, *(arg.format(tmp=tmp_path) for arg in COMMANDS[command]))
    try:
        stderr.wait_for("fake torch: importing")
        act(process, stderr)
        text = stderr.to_end()
        status = process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    return status, text, process


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_second_ctrl_c_during_a_hung_import_torch_stops_fdl_at_once(
        tmp_path: Path, slow_torch: dict[str, str], command: str) -> None:
    """Ctrl-C was held back for as long as `import torch` ran (a fake 6 s import: status 130 only at
    7.6 s; a hung one, for ever). The first now says fdl stops once torch has loaded, and a second
    ends it there and then: 130, "interrupted", no traceback, no abort (134), what was on disk kept."""
    (tmp_path / "run.h5").write_bytes(b"an older store, kept")
    def twice(process: subprocess.Popen[bytes], stderr: Stderr) -> None:
        process.send_signal(signal.SIGINT)
        stderr.wait_for(AGAIN)
        assert process.poll() is None  # the first one waits for the import
        process.send_signal(signal.SIGINT)

    status, text, process = during_import(slow_torch, tmp_path, command, twice)
    assert not (tmp_path / "release").exists()  # the import never ended: the second Ctrl-C did it
    assert status == 130, (status, text)
    assert "fake torch: loaded" not in text and "Traceback" not in text and "terminate called" not in text
    assert text.rstrip().endswith("interrupted"), text
    assert text.count(AGAIN) == 1
    assert (tmp_path / "run.h5").read_bytes() == b"an older store, kept"
    assert process.stdout is not None and process.stdout.read() == b""


def test_one_ctrl_c_during_import_torch_stops_fdl_once_it_has_loaded(
        tmp_path: Path, slow_torch: dict[str, str]) -> None:
    def once(process: subprocess.Popen[bytes], stderr: Stderr) -> None:
        process.send_signal(signal.SIGINT)
        stderr.wait_for(AGAIN)
        (tmp_path / "release").touch()

    status, text, _ = during_import(slow_torch, tmp_path, "analyze", once)
    assert status == 130, (status, text)
    assert "Traceback" not in text
    assert text.index(AGAIN) < text.index("fake torch: loaded") < text.rindex("interrupted")
    assert text.rstrip().endswith("interrupted")


@pytest.mark.parametrize("first_ctrl_c", [False, True])
def test_sigterm_during_a_hung_import_torch_stops_fdl_at_once_with_143(
        tmp_path: Path, slow_torch: dict[str, str], first_ctrl_c: bool) -> None:
    """SIGTERM (Slurm's, Kubernetes') waited for the import too, and a hung one ran into SIGKILL."""
    def term(process: subprocess.Popen[bytes], stderr: Stderr) -> None:
        if first_ctrl_c:
            process.send_signal(signal.SIGINT)
            stderr.wait_for(AGAIN)
        process.send_signal(signal.SIGTERM)

    status, text, _ = during_import(slow_torch, tmp_path, "analyze", term)
    assert status == 143, (status, text)
    assert "fake torch: loaded" not in text and "Traceback" not in text
    assert text.rstrip().endswith("interrupted")
    assert (AGAIN in text) == first_ctrl_c


def test_under_torchrun_sigterm_during_import_torch_ends_fdl_by_the_signal(
        tmp_path: Path, slow_torch: dict[str, str]) -> None:
    """Under torchrun fdl leaves SIGTERM its default action (a rank ends at once, torchrun ends the job):
    during the import it now does so at once too, by the signal, rather than after the import."""
    status, text, _ = during_import({**slow_torch, "WORLD_SIZE": "2"}, tmp_path, "analyze",
                                    lambda process, _stderr: process.send_signal(signal.SIGTERM))
    assert status == -signal.SIGTERM, (status, text)
    assert "fake torch: loaded" not in text


def test_an_ignored_ctrl_c_stays_ignored_during_import_torch(tmp_path: Path, slow_torch: dict[str, str]) -> None:
    """A background job (`fdl analyze ... &` in a script) has SIGINT ignored: it is not taken meanwhile."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fdl_cli", *(arg.format(tmp=tmp_path) for arg in COMMANDS["analyze"])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=slow_torch,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # noqa: PLW1509
    stderr = Stderr(process)
    try:
        stderr.wait_for("fake torch: importing")
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        (tmp_path / "release").touch()
        stderr.wait_for("fake torch: loaded")
        text = stderr.to_end()
        status = process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert AGAIN not in text and "interrupted" not in text
    assert status not in (130, 143)  # it went on (and failed on the fake torch: what comes after is not tested)
