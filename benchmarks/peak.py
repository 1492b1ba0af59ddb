"""Run a command and report its peak resident memory: `python peak.py CMD ARGS...`.

Prints `FDL_BENCH_PEAK_MIB=<MiB>` on stderr after the command ends (the maximum RSS of the command's
process tree as the kernel's rusage of the waited-for child records it) and exits with its status.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    sys.stderr.write(f"\nFDL_BENCH_PEAK_MIB={usage.ru_maxrss / 1024:.1f}\n")
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
