"""Progress and messages of long work: a rich progress bar on a terminal's stderr, a progress line every
`FDL_PROGRESS_INTERVAL` seconds (30) in a log that is no terminal, or nothing (tests, libraries).

The pipeline talks to a `Reporter`; it never imports rich itself.
"""

from __future__ import annotations

import math
import os
import time
from types import TracebackType
from typing import Any, Protocol

from fdl_cli.errors import terminal_safe


class Reporter(Protocol):
    def note(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def start_run(self, total: int) -> None: ...
    def start_checkpoint(self, index: int, total: int, label: str) -> None: ...
    def batch(self, done: int, total: int) -> None: ...
    def end_checkpoint(self) -> None: ...


def escape(text: str) -> str:
    """`text` as rich prints it literally (square brackets are not markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class NullReporter:
    """Collects messages; shows nothing."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def start_run(self, total: int) -> None:
        pass

    def start_checkpoint(self, index: int, total: int, label: str) -> None:
        pass

    def batch(self, done: int, total: int) -> None:
        pass

    def end_checkpoint(self) -> None:
        pass


#: Environment variable: seconds between two progress lines when stderr is not a terminal (default
#: `LOG_INTERVAL`; 0 writes one after every checkpoint).
LOG_INTERVAL_ENV = "FDL_PROGRESS_INTERVAL"
LOG_INTERVAL = 30.0


def log_interval() -> float:
    """`FDL_PROGRESS_INTERVAL` when it holds a number ≥ 0, else `LOG_INTERVAL` (progress never stops a run)."""
    try:
        value = float(os.environ.get(LOG_INTERVAL_ENV, LOG_INTERVAL))
    except ValueError:
        return LOG_INTERVAL
    return value if math.isfinite(value) and value >= 0 else LOG_INTERVAL


def clock(seconds: float) -> str:
    """H:MM:SS, as rich's progress columns show elapsed and remaining time."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def redraws(console: Any) -> bool:
    """Whether `console` writes to a terminal that a live display can redraw. rich's `is_terminal` is true
    wherever FORCE_COLOR is set (a request for colour that CI systems and cluster profiles set): a batch job's
    log file then got the progress bar redrawn ten times a second, kilobytes a second of cursor moves; it gets
    the plain progress lines instead, in colour. rich's TTY_COMPATIBLE=1 ("this is a terminal") still redraws,
    as does a console made with `force_terminal=True` (a program's own choice). A terminal rich draws no live
    display on, `TERM=dumb` (Emacs' M-x shell) or rich's `TTY_INTERACTIVE=0` (its `is_interactive` false), gets
    the plain lines: it was given the live display, which rich then left blank until the summary."""
    if not console.is_terminal:
        return False
    if getattr(console, "_force_terminal", None):
        return True
    if not console.is_interactive:
        return False
    if os.environ.get("TTY_COMPATIBLE") == "1":
        return True
    try:
        return bool(console.file.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class RichReporter(NullReporter):
    """Checkpoint i of N with ETA, and the probe batches of the current checkpoint, on stderr: a live
    display on a terminal; on a pipe or a log file (a batch job's stderr), where none shows, a plain
    line at a checkpoint's end once `log_interval()` seconds passed since the run began or since the
    last line, so a long run's log says how far it is (a short one prints none). Under --watch each poll
    that finds checkpoints is a run of its own (`start_run`): its counts, elapsed time and time left,
    never the hours spent waiting for the training job between them."""

    def __init__(self, console: Any, *, quiet: bool = False) -> None:
        super().__init__()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.quiet = quiet
        live = redraws(console)
        self.progress = Progress(
            # the description names the checkpoint's file: not read as markup or emoji codes (a name's `[bold]`,
            # `:rocket:`), its control characters written `\\x07` before rich's Text drops them (terminal_safe)
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # Only a terminal shows a live display: on a pipe or a log file (a batch job's stderr) rich
            # renders nothing while it runs, and its stop() then wrote a blank line before the summary.
            disable=quiet or not live,
            # stdout carries the machine output (--json records): never let the live display take it
            # over (rich's default when stderr is a terminal), or `fdl analyze --json | jq` gets nothing.
            redirect_stdout=False,
        )
        self._run: Any = None
        self._batches: Any = None
        self._started = False
        #: plain progress lines instead of the live display (stderr not a terminal)
        self._lines = not quiet and not live
        self._interval = log_interval()
        self._began: float | None = None  # when this run's first checkpoint started (time.monotonic)
        self._last_line: float | None = None  # when the last line was written (or the first run began)
        self._done = 0  # checkpoints of this run ended
        self._current: tuple[int, int, str] = (0, 0, "")  # index, total, label of the checkpoint in work

    def __enter__(self) -> RichReporter:
        return self

    def _start(self) -> None:
        """The live display starts with its first bar: started on entry, an error before any work (a
        bad --probe) was printed after a blank line, the empty display rich renders on a non-terminal."""
        if not self._started:
            self._started = True
            self.progress.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started:
            self.progress.stop()

    def note(self, message: str) -> None:
        super().note(message)
        # Messages hold paths and user text: "[bold]" in a file name must print as is, not as markup.
        self.console.print(f"[dim]note:[/dim] {escape(message)}", highlight=False, markup=True)

    def warn(self, message: str) -> None:
        super().warn(message)
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    def error(self, message: str) -> None:
        super().error(message)
        self.console.print(f"[red]error:[/red] {escape(message)}", highlight=False)

    def start_run(self, total: int) -> None:
        self._start()
        # a run of its own (--watch: the checkpoints one poll found): "elapsed" and the time left counted
        # the wait for them too (an hour idle, then "1/4 checkpoints; 1:00:25 elapsed, about 3:01:15 left")
        self._began, self._done = None, 0
        if self._run is None:
            self._run = self.progress.add_task("checkpoints", total=total)
        else:
            self.progress.update(self._run, total=total)

    def start_checkpoint(self, index: int, total: int, label: str) -> None:
        if self._run is None:
            self.start_run(total)
        if self._began is None:
            self._began = time.monotonic()
            if self._last_line is None:
                self._last_line = self._began
        self._current = (index, total, label)
        self.progress.update(self._run, description=f"checkpoint {terminal_safe(label)}", total=total, completed=index)
        if self._batches is None:
            self._batches = self.progress.add_task("probe batches", total=1)
        self.progress.update(self._batches, completed=0, total=1)

    def batch(self, done: int, total: int) -> None:
        if self._batches is not None:
            self.progress.update(self._batches, completed=done, total=total)

    def end_checkpoint(self) -> None:
        if self._run is not None:
            self.progress.advance(self._run)
        self._done += 1
        now = time.monotonic()
        if not self._lines or self._began is None or self._last_line is None or now - self._last_line < self._interval:
            return
        self._last_line = now
        index, total, label = self._current
        elapsed = now - self._began
        # this run's own counts (index of total); the time left assumes the checkpoints to come take
        # what those done so far took on average
        left = elapsed / self._done * (total - index - 1) if total > index + 1 else 0.0
        self.console.print(
            f"progress: {index + 1}/{total} checkpoints, last {label}; {clock(elapsed)} elapsed"
            + (f", about {clock(left)} left" if left >= 1 else ""),
            highlight=False, markup=False, soft_wrap=True,
        )
