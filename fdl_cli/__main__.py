"""`python -m fdl_cli` and the `fdl` script run the command line (also under torchrun)."""

from __future__ import annotations

import sys
from typing import NoReturn

from fdl_cli import signals


def run() -> NoReturn:
    """The command line as the process's one command: `main`, then the process's end with its status.

    Here, not in `main`: the signals the command took stay taken until the process is gone (`signals.own_process`:
    a SIGINT or SIGTERM while the interpreter ends ends it at once with the command's status), which a program that
    calls `main` (pytest) must not inherit."""
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


def _status(code: object) -> int:
    """The exit status Python gives `sys.exit(code)`: None is 0, a number itself, anything else (said on stderr) 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    run()
