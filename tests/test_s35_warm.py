"""tests/warm.py: a process forked from a zygote that imported torch is, to the program it runs, the fresh process
`subprocess` starts: the same argv, paths, cwd, environment, streams, signal dispositions, open descriptors and
exit status, checked here against a real `subprocess.run` of the same command."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests import warm

STATE = textwrap.dedent(
    """\
    import atexit, json, os, signal, sys, tempfile
    atexit.register(lambda: print("atexit ran", flush=True))
    line = sys.stdin.readline()
    streams = [[s.encoding, s.errors, s.line_buffering, s.write_through, s.newlines, s.fileno()]
               for s in (sys.stdin, sys.stdout, sys.stderr)]
    print(json.dumps({
        "argv": sys.argv, "orig_argv": sys.orig_argv[1:], "path0": sys.path[0], "path": sys.path, "cwd": os.getcwd(),
        "env": os.environ.get("S35_WARM"), "name": __name__, "file": globals().get("__file__"), "line": line,
        "main": sorted(k for k in vars(sys.modules["__main__"]) if not k.startswith("__")),
        "streams": streams, "stdio_same": [sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__],
        "signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD,
                                                       signal.SIGPIPE, signal.SIGHUP)],
        "wakeup": signal.set_wakeup_fd(-1), "fds": sorted(os.listdir("/proc/self/fd")),
        "tmp": tempfile.gettempdir(), "no_pyc": sys.dont_write_bytecode, "session": os.getsid(0) == os.getpid(),
        "imported": [m for m in ("fdl_cli", "tests", "matplotlib", "h5py") if m in sys.modules],
    }))
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[-1]))
    """
)


def _both(argv: list[str], **kwargs: object) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    fresh = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    return fresh, warm.run(argv, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("unbuffered", "variables"), [(False, "1"), (True, ""), (False, "")], ids=["buffered", "u", "variables-unset"]
)
def test_a_script_sees_what_a_fresh_process_sees(tmp_path: Path, unbuffered: bool, variables: str) -> None:
    """-u, PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE set or not: one zygote serves them all, each child's stdio
    and bytecode writing are its own."""
    script = tmp_path / "state.py"
    script.write_text(STATE, encoding="utf-8")
    (tmp_path / "tmp").mkdir()
    # PYTHONPATH's empty entry is the current folder, the test's, not the zygote's
    env = {
        **os.environ,
        "S35_WARM": "yes",
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONPATH": f"{warm.REPO}{os.pathsep}",
        "PYTHONUNBUFFERED": variables,
        "PYTHONDONTWRITEBYTECODE": variables,
    }
    argv = [sys.executable, *(["-u"] if unbuffered else []), str(script), "x", "3"]
    fresh, forked = _both(argv, input="given\n", env=env, cwd=str(tmp_path))
    assert forked.returncode == fresh.returncode == 3
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr == "to stderr\n"
    assert '"tmp": "' + str(tmp_path / "tmp") + '"' in forked.stdout and '"line": "given\\n"' in forked.stdout
    assert forked.stdout.endswith("atexit ran\n")


def test_a_module_run_with_m_sees_what_python_m_gives_it(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "pkg" / "state.py").write_text(STATE, encoding="utf-8")
    fresh, forked = _both([sys.executable, "-m", "pkg.state", "0"], env={**os.environ, "PYTHONPATH": ""}, cwd=str(tmp_path))
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert '"name": "__main__"' in forked.stdout and '"argv": ["' + str(tmp_path / "pkg" / "state.py") in forked.stdout


def test_code_given_with_c_sees_what_python_c_gives_it(tmp_path: Path) -> None:
    fresh, forked = _both([sys.executable, "-c", STATE, "a", "5"], input="", cwd=str(tmp_path))
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.returncode == 5 and '"argv": ["-c", "a", "5"]' in forked.stdout and '"path0": ""' in forked.stdout


def test_what_ends_a_program_is_printed_as_a_fresh_interpreter_prints_it(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("def boom():\n    raise ValueError('no')\nboom()\n", encoding="utf-8")
    for entry in (["boom.py"], ["-m", "boom"], ["-c", "import boom"]):
        fresh, forked = _both([sys.executable, *entry], cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
        assert fresh.returncode == 1 and fresh.stderr.startswith("Traceback") and "ValueError: no" in fresh.stderr


def test_a_process_started_by_spawn_finds_the_script_and_a_key_of_its_own(tmp_path: Path) -> None:
    """multiprocessing (imported with torch, in the zygote) took its start folder and authkey there: a child has
    its own, as a fresh process, so a relative script's spawned process finds it."""
    (tmp_path / "spawns.py").write_text(
        "import multiprocessing\n\ndef work():\n    pass\n\nif __name__ == '__main__':\n"
        "    process = multiprocessing.get_context('spawn').Process(target=work)\n    process.start()\n"
        "    process.join()\n    print(process.exitcode, multiprocessing.current_process().authkey.hex())\n",
        encoding="utf-8",
    )
    runs = [warm.run([sys.executable, "spawns.py"], cwd=tmp_path, timeout=120) for _ in range(2)]
    assert [run.stdout.split()[0] for run in runs] == ["0", "0"], runs[0].stderr
    assert runs[0].stdout != runs[1].stdout


def test_a_session_of_its_own_signals_and_statuses_are_a_processs(tmp_path: Path) -> None:
    script = tmp_path / "wait.py"
    script.write_text(
        "import os, sys, time\nprint(os.getsid(0) == os.getpid(), flush=True)\ntime.sleep(60)\n", encoding="utf-8"
    )
    for sig, session in ((signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGKILL, True)):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = warm.spawn([sys.executable, str(script)], stdout=out, stderr=err, start_new_session=session)
            deadline = time.monotonic() + 60
            while out.seek(0) == 0 and not out.read() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert process.poll() is None
            (os.killpg if session else os.kill)(process.pid, sig)
            assert process.wait(timeout=60) == -sig
            out.seek(0)
            err.seek(0)
            assert out.read() == f"{session}\n".encode()
            assert (b"KeyboardInterrupt" in err.read()) == (sig == signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(script)], timeout=0.5)


def test_a_child_outlives_its_zygote_being_closed_for_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One zygote kept: starting a child of another environment closes the first zygote, which ends only once its
    child has, whose status still arrives."""
    monkeypatch.setattr(warm, "_KEEP", 1)
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\nsys.exit(4)\n", encoding="utf-8")
    first = warm.spawn([sys.executable, str(script), "2"], stdout=subprocess.DEVNULL)
    other = warm.run([sys.executable, str(script), "0"], env={**os.environ, "S35_WARM_OTHER": "1", "OMP_NUM_THREADS": "2"})
    assert other.returncode == 4 and len(warm._zygotes) == 1
    assert first.wait(timeout=60) == 4


def test_the_import_time_environment_picks_the_zygote(tmp_path: Path) -> None:
    """torch's thread count is read from OMP_NUM_THREADS (and MKL_NUM_THREADS) when torch is imported: a child asked
    for with another value is forked from a zygote that imported torch under that value."""
    script = tmp_path / "threads.py"
    script.write_text(
        "import numpy, torch\nprint(torch.get_num_threads(), numpy.random.randint(1 << 30))\n", encoding="utf-8"
    )
    seen = {}
    for threads in ("1", "2", "1"):
        done = warm.run(
            [sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        )
        count, draw = done.stdout.split()
        assert (done.returncode, count) == (0, threads), done.stderr
        seen.setdefault(threads, []).append(draw)
    assert seen["1"][0] != seen["1"][1]  # numpy's global random state drawn anew per child, as per fresh process


def test_pipes_communicate_and_a_terminal_are_as_popens(tmp_path: Path) -> None:
    script = tmp_path / "echo.py"
    script.write_text(
        "import sys\nprint(sys.stdin.read().upper(), sys.stdout.isatty(), sys.stdout.line_buffering)\n"
        "print('err', file=sys.stderr)\n",
        encoding="utf-8",
    )
    argv = [sys.executable, str(script)]
    for merged in (False, True):
        pipes = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT if merged else subprocess.PIPE,
        }
        with subprocess.Popen(argv, text=True, **pipes) as fresh:  # type: ignore[call-overload]
            expected = fresh.communicate("abc", timeout=60)
        with warm.spawn(argv, text=True, **pipes) as forked:  # type: ignore[arg-type]
            assert forked.communicate("abc", timeout=60) == expected
        out, err = expected  # merged: in the order the buffers were flushed (stdout's at the exit unless unbuffered)
        assert (sorted(out.splitlines()), err) == (
            (["ABC False False", "err"], None) if merged else (["ABC False False"], "err\n")
        )
        assert forked.returncode == fresh.returncode == 0
    seen = []
    for start in (subprocess.Popen, warm.spawn):
        leader, follower = pty.openpty()
        try:
            process = start(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)  # type: ignore[operator]
            assert process.wait(timeout=60) == 0
            seen.append(os.read(leader, 1000))
        finally:
            os.close(leader)
            os.close(follower)
    assert seen[0] == seen[1]  # line buffered on a terminal, but not under PYTHONUNBUFFERED, as CPython decides
    assert seen[0].startswith(b" True ") and seen[0].endswith(b"\r\nerr\r\n")


def test_another_interpreter_or_option_is_refused() -> None:
    with pytest.raises(ValueError, match="interpreter"):
        warm.spawn(["python3", "x.py"])
    with pytest.raises(ValueError, match="-m MODULE"):
        warm.spawn([sys.executable, "-X", "dev", "x.py"])
