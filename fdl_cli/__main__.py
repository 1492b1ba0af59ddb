"""`python -m fdl_cli` and the `fdl` script run the command line (also under torchrun)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from fdl_cli import signals


def run() -> NoReturn:
    """The command line as the process's one command: `main`, then the process's end with its status.

    Here, not in `main`: the signals the command took stay taken until the process is gone (`signals.own_process`:
    a SIGINT or SIGTERM while the interpreter ends ends it at once with the command's status), which a program that
    calls `main` (pytest) must not inherit."""
    standard_descriptors_open()  # before any file is opened
    signals.own_process()  # first of all: its atexit handler runs last
    from fdl_cli.cli import main

    try:
        main()
    except SystemExit as exc:
        signals.leaving(_status(exc.code))
        raise
    except KeyboardInterrupt:
        raise  # before the command took SIGINT: Python's own end of a Ctrl-C
    except BaseException:
        signals.leaving(1)  # a traceback, as Python ends with one
        raise
    signals.leaving(0)
    sys.exit(0)


def standard_descriptors_open() -> None:
    """/dev/null in place of a standard file descriptor the shell closed (`2>&-`, `>&-`, `<&-`, a daemon's start).

    Left closed, it was the first file fdl opened that took its number: a store opened as fd 2 received what C code
    (HDF5, torch, the model's extensions) writes to stderr, and one opened as fd 1 what it writes to stdout. Python's
    view stays as it was for stdin and stdout (sys.stdin, sys.stdout None: reading the paths of `-` and writing
    machine output are errors that say so), while a closed stderr takes the messages as /dev/null does: the model
    file's import failed on a sys.stderr of None, exit 1 with nothing said."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # a standard descriptor, which a child process gets as fdl's
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115 - the process's stderr


def _status(code: object) -> int:
    """The exit status Python gives `sys.exit(code)`: None is 0, a number itself, anything else (said on stderr) 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    run()
