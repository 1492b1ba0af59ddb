"""`python -m fdl_cli ...` and `python SCRIPT ...` started without paying `import torch` each time.

Importing torch costs ~3.5 CPU-s on CI's machine, and the suite starts a few hundred processes that do (every
`fdl analyze` a test runs in a process of its own, two per torchrun job): half the suite's CPU went to it. Here a
"zygote", one per pytest worker and per import-time environment, imports torch and numpy once and then forks: each
child becomes the process the test asked for, a real process of its own (its own pid, signals, exit status, session
when asked, file descriptors 0–2) that runs the entry exactly as the interpreter would (`runpy`'s `-m` path into a
fresh `__main__`), from the test's cwd and environment.

What a child shares with the zygote, and why a test still sees what a fresh process shows:
- torch and numpy (and what they import) are already imported. A zygote serves only requests whose environment
  is the same as its own in every variable read while importing them (`_IMPORT_TIME`: TORCH*, OMP_*, OPENBLAS*,
  PYTHON*, locale, ...); any other environment gets a zygote of its own. Nothing of fdl's and nothing of the
  test's is imported there (the zygote's code is exec'd, never imported), nor matplotlib, h5py, safetensors.
- the interpreter's flags: `-u` or not (stdio is made per child, from it, PYTHONUNBUFFERED and, for bytecode,
  PYTHONDONTWRITEBYTECODE of the child's environment); `-m MODULE`, `-c CODE` or `SCRIPT` after it, nothing else.
- stdio is made anew as CPython makes it, over the child's fds; sys.path from the child's PYTHONPATH and cwd;
  tempfile's directory, numpy's global random state, multiprocessing's start folder and authkey and (by CPython
  itself) `random`'s are drawn anew; an uncaught exception's traceback is printed without the zygote's frames.
- signal dispositions are the interpreter's defaults: SIGINT raises KeyboardInterrupt even where the test process
  inherited it ignored (a fresh interpreter keeps an inherited SIG_IGN); no preexec_fn, no other user.
- str hashes: a child shares the zygote's PYTHONHASHSEED draw (a fresh process draws its own).
- exit handlers torch and numpy register when imported were registered in the zygote, before the program's: they
  run after the program's own at exit, where a fresh process that imports torch late runs them first.
- memory: a child starts with the zygote's pages (shared, copied on write) and its peak RSS (`ru_maxrss`).
Not for a test of the order of exit handlers or of a process's peak memory, then.
Not for a test of import-time behaviour (what gets imported, when, in which order: a module planted to stand in for
torch or numpy, say) or of the interpreter's start-up: those keep a real `subprocess`. Nor for a command that
never imports torch (`fdl report`, `classify`, ...): a child pays the exit of an interpreter holding torch
(~0.5 s), more than such a fresh process costs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]

#: Prefixes of the environment variables torch's and numpy's import reads (found with a spy on os.environ while
#: importing them, plus the C libraries' own: OpenMP, OpenBLAS, MKL, glibc) and the interpreter's own start-up
#: reads; two environments that agree on all of them can share a zygote.
_IMPORT_TIME = (
    "TORCH",
    "PYTORCH",
    "COMPILE_",
    "FX_",
    "KINETO",
    "NPY_",
    "NUMPY",
    "OPENBLAS",
    "GOTO",
    "OMP_",
    "GOMP",
    "KMP_",
    "MKL",
    "LD_",
    "MALLOC",
    "GLIBC",
    "PYTHON",
    "LC_",
    "LANG",
    "CUDA",
    "NVIDIA",
)
#: ... but not those torchrun sets per job and rank (read when the process group starts, not at import), nor those
#: that only shape the interpreter's stdio and bytecode writing, which a child sets up anew from its own (`_become`).
_PER_JOB = ("TORCHELASTIC_", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")


def _key(env: Mapping[str, str]) -> tuple[Any, ...]:
    relevant = {
        name: value for name, value in env.items() if name.startswith(_IMPORT_TIME) and not name.startswith(_PER_JOB)
    }
    # PYTHONPATH's entries are put on a child's sys.path anew (`_python_path`); only a folder that could hold
    # something torch's import would find (a sitecustomize, a module of the same name) needs a zygote of its own,
    # and neither the repository nor the current folder (an empty entry) is one.
    entries = [entry for entry in relevant.pop("PYTHONPATH", "").split(os.pathsep) if entry and entry != str(REPO)]
    return (tuple(sorted(relevant.items())), tuple(entries))


def _python_path(value: str, cwd: str) -> list[str]:
    """The folders PYTHONPATH=`value` puts on sys.path of an interpreter started in `cwd`, as CPython does: each
    made absolute, an empty entry the current folder, the first of equal ones kept (site's removeduppaths)."""
    folders = [os.path.abspath(os.path.join(cwd, entry)) for entry in value.split(os.pathsep)] if value else []
    return list(dict.fromkeys(folders))


class WarmProcess:
    """A child of a zygote, as much of `subprocess.Popen` as the tests use: pid, poll, wait, communicate,
    send_signal, terminate, kill, returncode (negative: the signal that ended it), and stdin/stdout/stderr
    (file objects where PIPE was asked for, else None)."""

    def __init__(self, args: list[str], pid: int, status_fd: int, pipes: Sequence[IO[Any] | None]) -> None:
        self.args, self.pid, self._status_fd, self.returncode = args, pid, status_fd, None
        self.stdin, self.stdout, self.stderr = pipes

    def __enter__(self) -> WarmProcess:
        return self

    def __exit__(self, *_: object) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.wait()

    def communicate(self, input: str | bytes | None = None, timeout: float | None = None) -> tuple[Any, Any]:
        """As Popen.communicate: `input` written to stdin (then closed), stdout and stderr read to their end
        (None where not a PIPE), the process waited for; TimeoutExpired past `timeout` (the process left running)."""
        results: dict[int, Any] = {}

        def drain(index: int, pipe: IO[Any]) -> None:
            results[index] = pipe.read()
            pipe.close()

        readers = [
            threading.Thread(target=drain, args=(index, pipe), daemon=True)
            for index, pipe in enumerate((self.stdout, self.stderr))
            if pipe is not None
        ]
        for reader in readers:
            reader.start()
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                if input:
                    self.stdin.write(input)
                self.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results.get(0), results.get(1)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._status_fd], [], [], 0)[0]:
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._status_fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._collect()
        assert self.returncode is not None
        return self.returncode

    def _collect(self) -> None:
        data = b""
        while len(data) < 4:
            chunk = os.read(self._status_fd, 4 - len(data))
            if not chunk:
                raise RuntimeError(f"the zygote of {self.pid} ended before it: its status is lost")
            data += chunk
        os.close(self._status_fd)
        self.returncode = os.waitstatus_to_exitcode(struct.unpack("i", data)[0])

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # as Popen: never a signal to a pid that may since be another process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.close(self._status_fd)


class _Zygote:
    def __init__(self, env: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        code = (
            f"path = {str(Path(__file__))!r}; zygote = {{'__name__': '__fdl_zygote__', '__file__': path}}; "
            f"exec(compile(open(path).read(), path, 'exec'), zygote); zygote['_zygote']({theirs.fileno()})"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=dict(env),
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.socket, self.lock = ours, threading.Lock()

    def spawn(self, request: dict[str, Any], fds: Sequence[int]) -> int:
        payload = pickle.dumps(request)
        with self.lock:
            self.socket.sendmsg(
                [struct.pack("q", len(payload))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            )
            self.socket.sendall(payload)
            answer = _receive_exactly(self.socket, 8)
        if len(answer) < 8:
            raise RuntimeError(f"the zygote (pid {self.process.pid}) ended: status {self.process.poll()}")
        return int(struct.unpack("q", answer)[0])

    def close(self, wait: float = 0) -> None:
        """No more children: the zygote ends once those it has are done (their statuses still reach their
        processes). With `wait`, waited for that long, then killed."""
        self.socket.close()
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


_zygotes: dict[tuple[Any, ...], _Zygote] = {}  # the most recently used last
#: Zygotes kept per test process (each holds torch's ~300 MB); the least recently used is closed for another.
_KEEP = 4
_at_exit: list[bool] = []
_zygotes_lock = threading.Lock()


def _close_all() -> None:
    """Every zygote closed and waited for (at this process's exit: its children should be done by then)."""
    for zygote in _zygotes.values():
        zygote.socket.close()
    for zygote in _zygotes.values():
        zygote.close(wait=10)
    _zygotes.clear()


def _entry(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(unbuffered, the rest) of `[sys.executable, ("-u"), ("-m" MODULE | "-c" CODE | SCRIPT), ARGS...]`."""
    args = [str(arg) for arg in argv]
    if not args or args[0] != sys.executable:
        raise ValueError(f"a warm process runs this interpreter ({sys.executable}), not {args[:1]}")
    unbuffered = len(args) > 1 and args[1] == "-u"
    rest = args[2:] if unbuffered else args[1:]
    if not rest or (rest[0].startswith("-") and (rest[0] not in ("-m", "-c") or len(rest) < 2)):
        raise ValueError(f"a warm process takes `-m MODULE`, `-c CODE` or `SCRIPT` after -u at most, not {rest[:2]}")
    return unbuffered, rest


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    start_new_session: bool = False,
    text: bool = False,
) -> WarmProcess:
    """Start `argv` (see `_entry`) as `subprocess.Popen` would, as a child of a warm zygote: each stream a file
    object, a descriptor, `subprocess.PIPE` (then a file object of this process's end: text with `text`),
    `subprocess.STDOUT` for stderr, `subprocess.DEVNULL` or None (this process's own)."""
    unbuffered, rest = _entry([str(arg) for arg in argv])
    environ = dict(os.environ if env is None else env)
    opened: list[int] = []  # descriptors of ours given to the child, closed here once it has them
    fds: list[int] = []
    pipes: list[IO[Any] | None] = [None, None, None]
    try:
        for index, (stream, default) in enumerate(((stdin, 0), (stdout, 1), (stderr, 2))):
            if stream is None:
                fd = default
            elif stream == subprocess.STDOUT and index == 2:
                fd = fds[1]
            elif stream == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                opened.append(fd)
            elif stream == subprocess.PIPE:
                read, write = os.pipe()
                ours, fd = (write, read) if index == 0 else (read, write)
                opened.append(fd)
                mode = "w" if index == 0 else "r"
                pipes[index] = (
                    open(ours, mode, buffering=1 if index == 0 else -1, encoding="utf-8")
                    if text
                    else open(ours, mode + "b", buffering=0 if index == 0 else -1)
                )
            elif isinstance(stream, int):
                fd = stream
            else:
                stream.flush()
                fd = stream.fileno()
            fds.append(fd)
        status_r, status_w = os.pipe()
        opened.append(status_w)
        key = _key(environ)
        with _zygotes_lock:
            zygote = _zygotes.pop(key, None)
            if zygote is not None and zygote.process.poll() is not None:
                zygote.close()
                zygote = None
            if zygote is None:
                while len(_zygotes) >= _KEEP:
                    _zygotes.pop(next(iter(_zygotes))).close()
                if not _at_exit:
                    import atexit

                    atexit.register(_close_all)
                    _at_exit.append(True)
                zygote = _Zygote(environ)
            _zygotes[key] = zygote
        request = {
            "rest": rest,
            "env": environ,
            "cwd": str(Path(cwd) if cwd is not None else Path.cwd()),
            "new_session": start_new_session,
            "u": unbuffered,
        }
        try:
            pid = zygote.spawn(request, [*fds, status_w])
        except BaseException:
            os.close(status_r)
            raise
    except BaseException:
        for pipe in pipes:
            if pipe is not None:
                pipe.close()
        raise
    finally:
        for fd in opened:
            os.close(fd)
    return WarmProcess([str(arg) for arg in argv], pid, status_r, pipes)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(argv, input=..., capture_output=True, text=True, env=..., cwd=..., timeout=...)`, warm:
    killed (SIGKILL) and TimeoutExpired past `timeout`, as subprocess.run does."""
    with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if input is not None:
            given.write(input.encode())
            given.seek(0)
        process = spawn(
            argv, env=env, cwd=cwd, stdin=given if input is not None else subprocess.DEVNULL, stdout=out, stderr=err
        )
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([str(arg) for arg in argv], status, decoded(out.read()), decoded(err.read()))


def decoded(data: bytes) -> str:
    """As `text=True` decodes: the locale's encoding (UTF-8 here), universal newlines (also for `ranks`)."""
    return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ---- in the zygote (this file exec'd by `python -c`, never imported there) ----

_SITE_PATH: list[str] = []


def _zygote(fd: int) -> None:
    import numpy  # noqa: F401
    import torch  # noqa: F401

    gc.freeze()  # what was imported here is never collected: a child's collections (and exit) leave those pages shared
    global _SITE_PATH
    ours = _python_path(os.environ.get("PYTHONPATH", ""), os.getcwd())
    assert sys.path[1 : 1 + len(ours)] == ours, (sys.path, ours)
    _SITE_PATH = sys.path[1 + len(ours) :]  # the interpreter's own folders, after PYTHONPATH's
    control = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    statuses: dict[int, int] = {}
    open_for_more = True
    while open_for_more or statuses:
        readable = select.select([control, wake_r] if open_for_more else [wake_r], [], [])[0]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            _reap(statuses)
        if control not in readable:
            continue
        header, ancillary, _flags, _address = control.recvmsg(8, socket.CMSG_SPACE(4 * struct.calcsize("i")))
        if not header:  # no more children: end once those there are have ended
            open_for_more = False
            continue
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(data) // struct.calcsize('i')}i", data)
        size = struct.unpack("q", header)[0]
        request = pickle.loads(_receive_exactly(control, size))
        pid = os.fork()
        if pid == 0:
            for other in (control.detach(), wake_r, wake_w, *statuses.values()):
                os.close(other)
            _become(request, fds)
            return
        for given in fds[:3]:
            os.close(given)
        statuses[pid] = fds[3]
        control.sendall(struct.pack("q", pid))
        _reap(statuses)


def _reap(statuses: dict[int, int]) -> None:
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, struct.pack("i", status))
            os.close(fd)


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become `python [-u] REST` as started by Popen with the request's cwd, environment,
    session and streams, then run it; what it raises ends this interpreter as it would end a fresh one."""
    import io
    import runpy
    import types

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.close(fds[3])
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds[:3]):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds[:3]) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    old = (sys.stdin, sys.stdout, sys.stderr)
    unbuffered = request["u"] or bool(os.environ.get("PYTHONUNBUFFERED"))  # as CPython reads -u and the variable
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    streams = []
    for fd, was in enumerate(old):
        write = fd > 0
        buffering = 0 if unbuffered and write else -1
        binary = open(fd, "wb" if write else "rb", buffering=buffering, closefd=False)
        line = not unbuffered and (fd == 2 or os.isatty(fd))
        text = io.TextIOWrapper(
            binary, encoding=was.encoding, errors=was.errors, newline="\n", line_buffering=line, write_through=unbuffered
        )
        streams.append(text)
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]
    tempfile.tempdir = None
    import numpy.random

    numpy.random.seed()
    if "multiprocessing.process" in sys.modules:  # imported by torch: what it took from the zygote's start, anew
        import multiprocessing.process

        multiprocessing.process.ORIGINAL_DIR = os.getcwd()  # type: ignore[attr-defined]
        multiprocessing.process.current_process().authkey = os.urandom(32)
    sys.excepthook = _without_the_zygote
    rest = request["rest"]
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.orig_argv = [sys.executable, *(["-u"] if request["u"] else []), *rest]
    sys.path[:] = ["", *dict.fromkeys([*_python_path(os.environ.get("PYTHONPATH", ""), os.getcwd()), *_SITE_PATH])]
    if rest[0] == "-m":
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *rest[2:]]
        runpy._run_module_as_main(rest[1], alter_argv=True)  # type: ignore[attr-defined]
        return
    import builtins

    main.__builtins__ = builtins  # type: ignore[attr-defined]
    if rest[0] == "-c":
        sys.path[0] = ""
        sys.argv = ["-c", *rest[2:]]
        source, name = rest[1].encode(), "<string>"
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(rest[0]))
        sys.argv = list(rest)
        main.__file__ = name = os.path.abspath(rest[0])  # as CPython gives a script's path since 3.9
        with open(rest[0], "rb") as file:
            source = file.read()
    exec(compile(source, name, "exec"), main.__dict__)


def _without_the_zygote(kind: type[BaseException], value: BaseException, trace: Any) -> None:
    """sys.excepthook of a child: the traceback of what ended it without the zygote's frames under the program's
    (its `-c` line and this file's functions), as a fresh interpreter prints it."""
    if trace is not None and trace.tb_next is not None and trace.tb_next.tb_frame.f_code.co_filename == __file__:
        trace = trace.tb_next  # the zygote's `-c` line
    while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
        trace = trace.tb_next
    sys.__excepthook__(kind, value.with_traceback(trace), trace)  # CPython prints the exception's own traceback
