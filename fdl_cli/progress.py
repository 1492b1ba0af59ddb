"""Progress and messages of long work: a rich progress bar on stderr, or nothing (tests, libraries).

The pipeline talks to a `Reporter`; it never imports rich itself.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol


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


class RichReporter(NullReporter):
    """Checkpoint i of N with ETA, and the probe batches of the current checkpoint, on stderr."""

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
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # Only a terminal shows a live display: on a pipe or a log file (a batch job's stderr) rich
            # renders nothing while it runs, and its stop() then wrote a blank line before the summary.
            disable=quiet or not console.is_terminal,
            # stdout carries the machine output (--json records): never let the live display take it
            # over (rich's default when stderr is a terminal), or `fdl analyze --json | jq` gets nothing.
            redirect_stdout=False,
        )
        self._run: Any = None
        self._batches: Any = None
        self._started = False

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
        if self._run is None:
            self._run = self.progress.add_task("checkpoints", total=total)
        else:
            self.progress.update(self._run, total=total)

    def start_checkpoint(self, index: int, total: int, label: str) -> None:
        if self._run is None:
            self.start_run(total)
        self.progress.update(self._run, description=f"checkpoint {label}", total=total, completed=index)
        if self._batches is None:
            self._batches = self.progress.add_task("probe batches", total=1)
        self.progress.update(self._batches, completed=0, total=1)

    def batch(self, done: int, total: int) -> None:
        if self._batches is not None:
            self.progress.update(self._batches, completed=done, total=total)

    def end_checkpoint(self) -> None:
        if self._run is not None:
            self.progress.advance(self._run)
