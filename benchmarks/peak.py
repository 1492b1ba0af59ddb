"""Run a command and report its peak resident memory: `python peak.py CMD ARGS...`.

Prints `FDL_BENCH_PEAK_MIB=<MiB>` and `FDL_BENCH_CPU_S=<s>` on stderr after the command ends (the
maximum RSS of the command's process tree, and its user + system CPU seconds, as the kernel's rusage
of the waited-for child records them) and exits with its status. CPU seconds count work rather than
waiting, so they are steadier than wall time on a shared machine.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    try:
        process = subprocess.Popen(sys.argv[1:])
    except OSError as exc:
        sys.exit(f"peak.py: cannot run {sys.argv[1]!r}: {exc.strerror or exc}")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    sys.stderr.write(f"\nFDL_BENCH_PEAK_MIB={usage.ru_maxrss / 1024:.1f}\n")
    sys.stderr.write(f"FDL_BENCH_CPU_S={usage.ru_utime + usage.ru_stime:.2f}\n")
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
