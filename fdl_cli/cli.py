"""click commands: parse -> call -> render. torch is imported only by the commands that need it.

Exit status: 0 ok, 1 an error the tool explains (no traceback), 2 usage error, 3 `classify --expect`
mismatch. Human output goes to stderr; machine output (`--json`, `--format json|csv`) to stdout only.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import dataclasses
import functools
import gc
import json
import math
import os
import shlex
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TextIO, cast

import click

from fdl_cli import __version__, completion, signals
from fdl_cli.errors import ESCAPE, PLAIN, FdlError, StoreError, counted, listed_names, shown_name, terminal_safe
from fdl_cli.fields import MODEL_CHANGES_FIELD, SMALL_PROBE_FIELD, ZERO_ONE_FIELD
from fdl_cli.regimes import COMPARE_THRESHOLDS, MOVEMENT, Thresholds, near_names

if TYPE_CHECKING:
    from pathlib import Path

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

#: The exit status of a command killed by SIGPIPE (128 + 13): its output's reader went away.
SIGPIPE_STATUS = 141


def _stderr_console() -> Any:
    from rich.console import Console
    from rich.text import Text

    class StderrConsole(Console):
        def on_broken_pipe(self) -> None:
            """The reader of stderr went away (`fdl report run.h5 2>&1 | head -1`): end quietly with
            SIGPIPE's status, as for stdout. rich's own handler exits 1, an error with nothing said,
            after pointing stdout, where machine output may still be due, at /dev/null."""
            self.quiet = True
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())  # the exit's flush fails quietly
            raise SystemExit(SIGPIPE_STATUS)

        def render_str(self, text: str, **options: Any) -> Any:
            """A message's text with its control characters written `\\x1b` before rich reads it: rich drops
            BEL, backspace, CR, VT and FF from a string it prints, so a file named `step_3\\a.pt` was shown as
            `step_3.pt`, a name no file has."""
            return super().render_str(terminal_safe(text), **options)

        def print(self, *objects: Any, **options: Any) -> None:
            """On a terminal, a line of text (a note, a verdict, the key of a table's columns) wrapped at its
            spaces to the terminal's width (`word_breaks`), where the terminal itself broke it mid-word; elsewhere
            (a pipe, a log: no width) as it is, one line, which `grep` finds whole. A terminal as the progress
            display takes one (`progress.redraws`): FORCE_COLOR=1 makes rich take a batch job's log for one."""
            from fdl_cli.progress import redraws

            if len(objects) == 1 and isinstance(objects[0], str) and redraws(self):
                text = self.render_str(objects[0], markup=options.get("markup"), highlight=options.get("highlight"),
                                       emoji=options.get("emoji"))
                breaks = word_breaks(text.plain, self.width)
                if breaks:
                    ends = [0, *(at for space in breaks for at in (space, space + 1)), len(text.plain)]
                    lines = [text[start:end] for start, end in zip(ends[::2], ends[1::2], strict=True)]
                    objects = (Text("\n").join(lines),)
            super().print(*objects, **options)

        def _render_buffer(self, buffer: Any) -> str:
            """The text printed (names of files, tensors, modules: a folder's) with its control characters
            written `\\x1b` (`terminal_safe`); rich's own control segments (a progress bar's cursor moves) and
            styles still drive the terminal."""
            from rich.segment import Segment

            return str(super()._render_buffer(
                segment if segment.control else Segment(terminal_safe(segment.text), segment.style)
                for segment in buffer))

    # soft_wrap: messages are never broken at 80 columns when stderr is a pipe or a log, so a path in
    # an error stays on one line (greppable, copy-pastable).
    # emoji=False: a name holding `:rocket:` is shown as it is, not as an emoji
    return StderrConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def word_breaks(text: str, width: int) -> list[int]:
    """The spaces of `text` at which a terminal `width` columns wide breaks its lines, greedily. A word (a path)
    or a command in backticks (`fdl report run.h5 --wide 2>&1 | less -S`) wider than the terminal is never broken:
    its line is longer (the terminal folds it, and a copy of it is whole). Widths are terminal cells."""
    from rich.cells import cell_len

    breaks: list[int] = []
    start = 0
    for line in text.split("\n"):
        quoted = False
        spaces = []  # the spaces outside backticks, where the line may break
        for offset, char in enumerate(line):
            quoted = quoted != (char == "`")
            if char == " " and not quoted:
                spaces.append(start + offset)
        word_start, column = start, -1  # -1: the line's first word has no space before it
        for end in [*spaces, start + len(line)]:
            word = cell_len(text[word_start:end])
            if column >= 0 and column + 1 + word > width:
                breaks.append(word_start - 1)
                column = word
            else:
                column += 1 + word
            word_start = end + 1
        start += len(line) + 1
    return breaks


def _emit_json(obj: Any, stream: TextIO | None = None) -> None:
    """One JSON document on stdout (flushed, so `| jq` sees records as they complete).

    ``stream``: the real stdout, while `_user_output_to_stderr` sends everything else to stderr."""
    out = stream if stream is not None else sys.stdout
    try:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()
    except KeyboardInterrupt:
        # A Ctrl-C stopped the print (`analyze`'s second, `signals.deferred`): one that waited on a reader that reads
        # nothing (`| less`). What the stream holds, and what the way out prints, would wait again: dropped.
        _stdout_to_devnull(out)
        raise


@contextlib.contextmanager
def _user_output_to_stderr() -> Iterator[TextIO]:
    """While a command runs the user's model code, send Python-level writes to sys.stdout to stderr.

    A model file's own print() (at import, in its factory, in forward) would otherwise land between the
    JSON records of `--json` and break `| jq`. Yields the real stdout, for fdl's own machine output.

    So would what it writes below Python, to file descriptor 1 (a C extension, a CUDA kernel's printf, a child
    process such as `git describe`): fd 1 is pointed at stderr's file meanwhile (`_fd1_to_stderr`)."""
    real = sys.stdout
    with _fd1_to_stderr(real) as machine:
        sys.stdout = sys.stderr
        try:
            yield machine
        finally:
            sys.stdout = real


@contextlib.contextmanager
def _fd1_to_stderr(real: TextIO) -> Iterator[TextIO]:
    """File descriptor 1 pointed at fd 2's file while the block runs, and back after it. Yields the stream of fdl's
    own machine output: `real`, or, where `real` writes to fd 1 itself (a process's sys.stdout; a test's StringIO
    does not), a stream of the same encoding over a copy of fd 1 as it was, guarded as `real` is. Left as it is
    where fd 1 or fd 2 is closed (`__main__` opens /dev/null in their place in a process of fdl's own)."""
    real.flush()  # what went before goes out before; a failure to write it is said as any other
    try:
        saved = os.dup(1)  # not inherited by a child process: it sees fd 1 alone, pointed at stderr
    except OSError:
        yield real
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        yield real
        return
    inner = getattr(real, "stream", real)  # below `_GuardedStdout`
    machine, own = real, None
    with contextlib.suppress(AttributeError, OSError, ValueError):  # io.UnsupportedOperation: no descriptor
        if inner.fileno() == 1:
            own = open(saved, "w", buffering=1 if inner.line_buffering else -1,  # noqa: SIM115 - closed below
                       encoding=inner.encoding, errors=inner.errors, closefd=False)
            machine = cast(TextIO, _GuardedStdout(own))
    try:
        yield machine
        machine.flush()
    finally:
        if own is not None:
            with contextlib.suppress(OSError, ValueError):  # after a failed write: what it holds is lost anyway
                own.close()
        # what the model's code left in the buffer of a stream on fd 1 (sys.__stdout__, which a library may keep)
        # goes where fd 1 points now, to stderr, not after the records once fd 1 is stdout again
        for stream in {id(one): one for one in (inner, sys.__stdout__) if one is not None}.values():
            with contextlib.suppress(AttributeError, OSError, ValueError):
                if stream.fileno() == 1:
                    stream.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _untracked_imports() -> Iterator[None]:
    """Run a command's big imports (torch, h5py, rich, fdl's own modules) with the cyclic garbage
    collector off, then freeze what they made (`gc.freeze`): the ~170 000 objects of those modules
    live until the process ends, and a collector that tracked them traversed them all in each full
    collection: one or two during the imports, and one as the interpreter shuts down, ~0.35 s of CPU
    for torch alone (docs/benchmarks.md, seventeenth session). Only in a process that has not
    imported torch yet (a command line run): a test or a program calling `main` again is left as it
    is, since frozen objects are never collected, garbage cycles among them included."""
    if "torch" in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class _StdoutClosed(Exception):
    """stdout's reader went away (a BrokenPipeError), raised past click, which would exit 1 on it."""


class _StdoutFailed(Exception):
    """stdout could not be written (a full disk, an I/O error, closed by the shell's `>&-`): `main` says so.

    Not an FdlError, which `analyze` may take for a checkpoint's: it ends the command, as a BrokenPipeError does."""

    def __init__(self, reason: str, *, closed: bool = False) -> None:
        where = ("give the command a stdout (`> FILE`, `| jq`), not a closed one (`>&-`)" if closed else
                 "send the output where it can be written (`> FILE` on a disk with room; --out FILE for export)")
        self.error = FdlError(f"could not write to stdout: {reason}",
                              fix=f"{where}, then run the command again (a store `fdl analyze` wrote keeps what it "
                                  "committed)")
        super().__init__(reason)


class _GuardedStdout:
    """sys.stdout while a command runs: every write to it, fdl's machine output and click's help alike, that
    fails other than by its reader going away (a BrokenPipeError, status 141) raises `_StdoutFailed`, said in
    one paragraph, where an OSError's traceback was shown (or, for an output small enough to wait in the
    buffer, "Exception ignored" at the interpreter's last flush, status 120). A closed stdout (`>&-`, Python's
    sys.stdout None) fails at the first write, where the output was lost without a word."""

    def __init__(self, stream: TextIO | BinaryIO | None) -> None:
        self.stream = stream

    def write(self, text: Any) -> int:  # str, or bytes for the binary stream `buffer` gives
        if self.stream is None:
            raise _StdoutFailed("it is closed", closed=True)
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from None

    def flush(self) -> None:
        if self.stream is None:
            return
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from None

    @property
    def buffer(self) -> Any:
        """The binary stream below, guarded alike: click writes bytes there (the completion script of
        `_FDL_COMPLETE=bash_source fdl`), where a full disk's OSError was shown as a traceback."""
        if self.stream is None:
            raise _StdoutFailed("it is closed", closed=True)
        return _GuardedStdout(cast(TextIO, self.stream).buffer)  # a TextIO: a buffer has none

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the stream's own
        return getattr(self.stream, name)


class _Interrupted(BaseException):
    """A Ctrl-C in a command, raised past click to `main`, which says it: click's own blank line (it closes a
    terminal's "^C") came from every rank of a torchrun job, where rank 0 alone says "interrupted"."""


#: The command this process runs (`_Group.resolve_command`; None before one is known): only `analyze` runs as
#: a rank of a torchrun job, whose messages rank 0 says (`_voice_or_exit`).
_command: str | None = None


#: The commands that read or write a store (aliases included): on a system without POSIX file locks they are refused.
STORE_COMMANDS = frozenset({"analyze", "report", "summarize", "compare", "diff", "classify", "export"})


def _require_file_locks() -> None:
    """The stores need fcntl (`fcntl.flock`, the lock of a store's one writer), which only POSIX systems have: on
    Windows, a command of a store said so with an ImportError's traceback. fdl supports Linux and macOS."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        raise StoreError(
            "fdl's stores need a POSIX system (Linux or macOS): a store's writer locks it with fcntl.flock, and "
            "this platform has no such lock; fdl is not supported (nor tested) on Windows",
            got=f"Python's module fcntl cannot be imported here (sys.platform {sys.platform!r})",
            fix="run fdl under WSL (Windows Subsystem for Linux), in a Linux container, or on a Linux or macOS machine",
        ) from None


#: What a command that reads one store (two, compare) adds to click's "Got unexpected extra arguments" when given
#: more, as a glob over a sweep's stores does: the command that reads several, or a loop. {name}: the command's
#: name as given, an alias's too (`fdl diff a.h5 b.h5 c.h5`: "fdl diff reads two stores").
_ONE_STORE_HINTS = {
    "report": "fdl {name} reads one store: for a row per store, fdl classify STORE...; or one report per store "
              "(for s in runs/*.h5; do fdl {name} \"$s\"; done)",
    "compare": "fdl {name} reads two stores: for a row per store, fdl classify STORE...",
}

#: An alias's command (`_alias`): `fdl summarize` is `fdl report`, `fdl diff` is `fdl compare`.
_ALIAS_OF: dict[str, str] = {}


#: ctx.meta's key of the words after the `--` that ends a command's options (`_Command.operands`).
_OPERANDS = "fdl.operands"


class _Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click's parser takes the arguments out of `args` as it reads them
        ctx.meta[_OPERANDS] = self.operands(ctx, given)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.NoSuchOption) and (redirect := _redirect_hint(self, given, exc.option_name)):
                raise click.UsageError(redirect, ctx=ctx) from None
            if (isinstance(exc, click.BadOptionUsage) and exc.message.endswith(" requires an argument.")
                    and (listed := _choices_of(self, exc.option_name)) is not None):
                # `fdl report run.h5 --format`: the value forgotten, and click's message said not which it takes
                raise click.UsageError(f"{exc.message[:-1]}, {listed}", ctx=ctx) from None
            extra = exc.message.startswith("Got unexpected extra argument")
            if not extra and not isinstance(exc, click.MissingParameter):
                raise
            # `fdl export run.h5 trajectories`, `fdl report run.h5 json`: an option's value without its name; a word
            # after `--` is an operand by the user's say (`fdl report run.h5 -- json`: a store too many)
            left = self._left_over(ctx, given)
            hints = [None] if left is None else [
                None if word in ctx.meta[_OPERANDS] else _choice_hint(self, word) for word in left]
            choice = next((hint for hint in hints if hint is not None), None)
            # a word left over that is no choice is a store too many (`fdl compare a.h5 b.h5 c.h5 json`: c.h5)
            name = self.name or ""
            stores = _ONE_STORE_HINTS.get(_ALIAS_OF.get(name, name)) if extra and None in hints else None
            if choice is None and stores is None:
                raise
            message = exc.format_message() if stores is None else f"{exc.format_message()}: {stores.format(name=name)}"
            raise click.UsageError(message if choice is None else f"{message}\n{choice}", ctx=ctx) from None

    def operands(self, ctx: click.Context, given: list[str]) -> list[str]:
        """The words after the `--` that ends the options, as click's parser reads them: a `--` that is an option's
        value (`--layer --`) ends nothing."""
        takes = {name: param.nargs for param in self.get_params(ctx) if _takes_value(param) for name in param.opts}
        at = 0
        while at < len(given):
            if given[at] == "--":
                return given[at + 1:]
            at += 1 + takes.get(given[at], 0)
        return []

    def _left_over(self, ctx: click.Context, given: list[str]) -> list[str] | None:
        """The words that none of the command's arguments took (None where the arguments do not parse). A word
        taken as a store is StorePath's to hint (`fdl report json run.h5`)."""
        try:
            return self.make_parser(ctx).parse_args(args=list(given))[1]
        except click.UsageError:
            return None

    def invoke(self, ctx: click.Context) -> Any:
        # after the arguments are parsed: `fdl report --help` still prints its help
        if self.name in STORE_COMMANDS:
            _require_file_locks()
        return super().invoke(ctx)


#: The options of an output file that `report`, `classify` and `compare` lack (analyze and export take --out).
_OUT_OPTIONS = ("-o", "--out", "--output")


def _redirect_hint(command: click.Command, given: Sequence[str], option: str) -> str | None:
    """"fdl report has no --out: its machine output goes to stdout, so redirect it: fdl report run.h5 --format csv >
    r.csv ..." for an output file given to a command that writes to stdout (click suggested --format or --plots, and
    nothing for -o); None for any other option, or a command that has one."""
    name = command.name or ""
    if option not in _OUT_OPTIONS or _ALIAS_OF.get(name, name) not in ("report", "classify", "compare") or any(
            option in param.opts for param in command.params):
        return None
    words, target, at = [], "FILE", 0
    while at < len(given):
        word = given[at]
        if word == option and at + 1 < len(given):
            target, at = given[at + 1], at + 2
            continue
        if word.startswith(option + "=") or (word.startswith(option) and option == "-o" and len(word) > 2):
            target = word.split("=", 1)[1] if "=" in word else word[2:]
        elif word != option:
            words.append(word)
        at += 1
    page = "; --html FILE writes a page" if _ALIAS_OF.get(name, name) == "report" else ""
    chosen = any(word == "--json" or word.startswith("--format") for word in words)  # a format given: kept
    return (f"fdl {name} has no {option}: its machine output goes to stdout, so redirect it: fdl {name} "
            f"{shlex.join([*words, *(() if chosen else ('--format', 'csv'))])} > {shlex.quote(target)}"
            f"{'' if chosen else ' (or --format markdown, --json)'}{page}")


def _takes_value(param: click.Parameter) -> bool:
    """Whether `param` is an option given with a value (`--format json`), not a flag (`--json`) nor a count."""
    return isinstance(param, click.Option) and not param.is_flag and not param.count


def _choice_hint(command: click.Command, word: str) -> str | None:
    """"'json' is one of --format's choices: give it as --format json" where `word` is a choice of one of the
    command's options and no file (a store named `json` is a store)."""
    for param in command.params:
        if not isinstance(param, click.Option) or not isinstance(param.type, SuggestingChoice):
            continue
        named = param.type.named(word)
        if named is not None and not os.path.exists(word):
            option = max(param.opts, key=len)
            return f"'{named}' is one of {option}'s choices: give it as {option} {named}"
    return None


def _choices_of(command: click.Command, option: str) -> str | None:
    """"one of 'table', 'json', 'csv', 'markdown': give it as --format table" for a choice option of the command."""
    for param in command.params:
        if isinstance(param, click.Option) and option in param.opts and isinstance(param.type, click.Choice):
            choices = [str(choice) for choice in param.type.choices]
            return f"one of {', '.join(map(repr, choices))}: give it as {option} {choices[0]}"
    return None


class _Group(click.Group):
    """fdl's commands. Each has a short_help of at most 45 characters, so that `fdl --help` lists it whole in a
    terminal of 60 columns (click cuts a longer first sentence with "...")."""

    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click's parser takes the arguments out of `args` as it reads them
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise _misplaced(self, ctx, given, exc.option_name) or exc from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        global _command
        # `fdl help [COMMAND]`, git's and pip's way, had no hint from click; a Tab (resilient parsing) prints none
        if args and args[0] == "help" and not ctx.resilient_parsing:
            named = args[1] if len(args) > 1 and args[1] in self.commands else "COMMAND"
            raise click.UsageError(f"No such command 'help'. Did you mean 'fdl --help' (or 'fdl {named} --help')?",
                                   ctx=ctx)
        name, command, rest = super().resolve_command(ctx, args)
        _command = command.name if command is not None else None
        if _command is not None and _command != "analyze":  # no torchrun rank, whatever WORLD_SIZE says
            signals.take_term()
        return name, command, rest

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        # `fdl --help` and `fdl --version` print while their arguments are parsed, before invoke
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except BrokenPipeError:
            raise _StdoutClosed from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _StdoutClosed from None
        except KeyboardInterrupt:
            raise _Interrupted from None


def _misplaced(group: click.Group, ctx: click.Context, args: list[str], option: str) -> click.UsageError | None:
    """An option of the command given before the command's name (`fdl --json report run.h5`), where fdl's own
    options go: said so, where click suggested fdl's --version for it; with no command named, the commands that
    take it; the example says the option with the value given it, or with a stand-in for one left out
    (`_value_placeholder`). None when the command named, or every command, has no such option (click's message
    stands)."""
    def takes(command: click.Command) -> bool:
        return any(option in (*param.opts, *param.secondary_opts) for param in command.params)

    # the option as given, with its value (`--device cpu`, `--device=cpu`): the example then says it whole, and
    # that value is not the command's name (`fdl -o report analyze ckpts`: -o's store, then the command)
    valued = any(option in param.opts and _takes_value(param)
                 for command in group.commands.values() for param in command.params)
    at = next((i for i, arg in enumerate(args) if arg == option or arg.startswith(option + "=")), -1)
    value: str | None = None
    skipped = {at}
    if at >= 0 and valued and args[at] != option:
        value = args[at].partition("=")[2]
    elif at >= 0 and valued and at + 1 < len(args) and (  # a command's name with none after it is the command
            args[at + 1] not in group.commands or any(arg in group.commands for arg in args[at + 2:])):
        value = args[at + 1]
        skipped.add(at + 1)
    named = next((group.commands[arg] for i, arg in enumerate(args) if arg in group.commands and i not in skipped),
                 None)
    # those that take it, aliases left out
    owners = [name for name, command in sorted(group.commands.items()) if takes(command) and name not in _ALIAS_OF]
    if named is not None and not takes(named):  # `fdl --steps 1 report`: click's "Did you mean '--help'?" alone
        return _not_of(named, option, _listed(owners), len(owners), ctx) if owners else None
    if named is not None:
        owners = [named.name] if named.name else []
    if not owners:
        return None
    listed = _listed(owners)
    if value is not None:
        option_given = f"{option} {shlex.quote(value)}"
    else:  # given with no value (`fdl --format report run.h5`): the example says what the value is
        param = next(param for param in group.commands[owners[0]].params
                     if option in (*param.opts, *param.secondary_opts))
        flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
        option_given = option if flag else f"{option} {_value_placeholder(param)}"
    return click.UsageError(f"{option!r} is an option of {listed}, not of fdl: give it after "
                            f"{'the command' if len(owners) == 1 else 'one of them'}, as in "
                            f"'fdl {owners[0]} ... {option_given}'", ctx=ctx)


def _listed(owners: Sequence[str]) -> str:
    """"'fdl analyze', 'fdl report' and 'fdl export'": the commands `owners`, as a message names them."""
    return " and ".join(", ".join(f"'fdl {name}'" for name in owners).rsplit(", ", 1))


def _not_of(named: click.Command, option: str, listed: str, count: int, ctx: click.Context) -> click.UsageError:
    """`option`, given before the command `named`'s name, is an option of the `count` commands `listed`, not of it."""
    return click.UsageError(f"{option!r} is an option of {listed}, not of 'fdl {named.name}' nor of fdl: leave it out, "
                            f"or run {'that command' if count == 1 else 'one of them'} with it ("
                            f"'fdl {named.name} --help' lists the options of 'fdl {named.name}')", ctx=ctx)


def _value_placeholder(param: click.Parameter) -> str:
    """What stands for a valued option's value in an example that lacks it: the name --help gives it (FILE, NAME),
    its choices as `{a|b}` (one of them, where --help's `[a|b]` reads as optional), else the option's name in
    capitals (`--device DEVICE`, not --help's type name, TEXT)."""
    if param.metavar:
        return param.metavar
    if isinstance(param.type, click.Choice):
        return "{" + "|".join(map(str, param.type.choices)) + "}"
    if isinstance(param.type, click.Path):
        return param.type.name.upper()  # FILE, DIRECTORY, PATH
    return (param.name or "value").upper()


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="fdl")
def cli() -> None:
    """fdl — measure feature learning from training checkpoints.

    \b
    fdl analyze CKPT_DIR --model model.py:build \\
      --probe probe.npz  # checkpoints -> ./<folder>.fdl.h5
    fdl report STORE.h5      # table, summary, figures
    fdl classify STORE.h5    # coefficient / MF / EF
    fdl compare A.h5 B.h5    # two runs side by side

    fdl COMMAND --help lists a command's options; docs/usage.md has every rule.
    """


# ----------------------------------------------------------------------------------------- analyze


def _is_int(text: str) -> bool:
    """What AnalyzeOptions.from_cli's int() takes ('+-5' and '²' are digits after a sign strip, not integers)."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _steps_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A usage error (status 2), as any malformed value click checks: `--steps ''` (an unset shell
    variable, say) would select nothing and so analyse everything; `--steps 10,a` was status 1."""
    if value is None:
        return value
    option = f"--{_param.name}"  # --steps, --redo, --drop
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise click.BadParameter(f"the list of steps is empty (got {value!r})", param_hint=option)
    wrong = [part for part in parts if not _is_int(part)]
    if wrong:
        example = "0,100,500" if option == "--steps" else "100,500"  # --redo and --drop refuse the reference
        raise click.BadParameter(
            f"steps are integers separated by commas, e.g. {option} {example} (got {', '.join(map(repr, wrong))})",
            param_hint=option,
        )
    return value



def _step_offsets(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """--step-offset PAT=N, repeatable: (PAT, N) pairs; PAT may hold '=' (Lightning's 'epoch=*'), N is
    after the last one. A malformed value is a usage error (status 2), as `--steps a,b` is."""
    pairs = []
    for value in values:
        pattern, equals, number = value.rpartition("=")
        if not equals or not pattern.strip() or not _is_int(number.strip()):
            raise click.BadParameter(
                f"give PAT=N, a glob or folder and the integer added to its checkpoints' steps, e.g. "
                f"--step-offset 'run2=500' or --step-offset 'resume_step_*=500' (got {value!r})",
                param_hint="--step-offset",
            )
        pairs.append((pattern.strip(), int(number.strip())))
    return tuple(dict.fromkeys(pairs))


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without nan and inf, which it lets through (nan is neither below nor above a bound):
    `--commit-interval nan` was a ValueError's traceback, `--commit-interval inf` a scheduler thread's, and
    `--poll nan` or `--dlr-energy nan` an error only once checkpoints were read."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give one in the range {self._describe_range()}", param, ctx)
        return number


class OutputOption(click.Option):
    """An option naming where fdl writes (`--out`, `--html`, `--plots`): given twice with different values
    it is a usage error naming it, where click keeps the last in silence (`--html A.html --html B.html`
    wrote B alone, and A, which the user may have meant, was never written). The same value twice is
    that value. Other single-valued options keep click's rule, the last one given wins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True  # every value given is kept, to be checked here
        super().__init__(*args, **kwargs)

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        values = list(dict.fromkeys(super().process_value(ctx, value) or ()))
        if len(values) > 1:
            names = "/".join(self.opts + self.secondary_opts)
            raise click.UsageError(
                f"{names} given {'twice' if len(values) == 2 else f'{len(values)} times'} "
                f"({', '.join(map(repr, values))}): it names the one place this command writes; give one", ctx=ctx)
        return values[0] if values else None


class SuggestingChoice(click.Choice):  # type: ignore[type-arg]
    """Every choice option of the CLI: a value that is none of the choices is click's usage error (status 2) with
    the choice it is likely meant as, "'jsn' is not one of 'table', 'json', 'csv', 'markdown'. Did you mean
    'json'?", as click suggests for a misspelt option and `--threshold` for a misspelt name (`near_names`)."""

    def named(self, value: Any) -> str | None:
        """The choice `value` is in any case ('JSON': 'json'; 'mf': 'MF'), or None."""
        return next((str(choice) for choice in self.choices if str(choice).casefold() == str(value).casefold()), None)

    def suggestion(self, value: Any) -> str:
        """" Did you mean 'json'?" (in any case: 'mf' for 'MF'), or "" for a value close to no choice."""
        folded = {str(choice).casefold(): str(choice) for choice in self.choices}
        near = [folded[name] for name in near_names(str(value), folded)]
        return f" Did you mean {' or '.join(map(repr, near))}?" if near else ""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return super().get_invalid_choice_message(value, ctx) + self.suggestion(value)


class StorePath(click.Path):
    """A store argument (`report`, `classify`, `compare`, `export`): a file; a folder given there (the run's
    folder of checkpoints, for the store `fdl analyze` wrote of it) is the usage error click gives, "File
    'runs/a' is a directory.", said with the store meant: `fdl analyze FOLDER`'s, and whether it is there. A word
    that is one of the command's choices and no file (`fdl report json`) is named as that (`_choice_hint`)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and os.path.isdir(value):
            from fdl_cli.pipeline import default_store_path

            store = default_store_path([value])
            there = (f": ./{store} is here" if store.is_file() else
                     f" (its --out; ./{store} without one, which is not here)")
            self.fail(f"{value!r} is a folder, not an fdl store: pass the .h5 file that `fdl analyze {shlex.quote(value)}` "
                      f"wrote{there}", param, ctx)
        if (isinstance(value, str) and ctx is not None and value not in ctx.meta.get(_OPERANDS, ())
                and (hint := _choice_hint(ctx.command, value)) is not None):
            # `fdl classify run.h5 json` (several stores: no word is left over), `fdl report json` (the store left out)
            self.fail(f"no fdl store at {value!r}: {hint}", param, ctx)
        return super().convert(value, param, ctx)


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="Analyse checkpoints into an HDF5 store.")
@click.argument("sources", nargs=-1, required=True, shell_complete=completion.paths)
@click.option("--model", "model_spec", metavar="SPEC", shell_complete=completion.model_spec,
              help="pkg.module:factory or path/file.py:factory.")
@click.option("--model-kwargs", metavar="JSON", help="Keyword arguments of the factory, as JSON.")
@click.option(
    "--probe", "probe_specs", multiple=True, metavar="[NAME=]FILE", shell_complete=completion.paths,
    help="Probe set (.npz/.pt/.pth/.safetensors/.h5/.hdf5); repeatable, as NAME=FILE (NAME: letters, digits, _).",
)
@click.option(
    "--layer", "layers", multiple=True, metavar="NAME",
    help="Module whose output is the feature map (NAME:input for its input); repeatable. Default: input of the head, "
    "the nn.Linear whose output the model's outputs are (else the last nn.Linear to run).",
)
@click.option(
    "--out", "-o", "out", cls=OutputOption, type=click.Path(dir_okay=False),
    help="Store file (default: ./<folder>.fdl.h5 for one folder, else ./fdl.h5).",
)
@click.option("--device", default="auto", show_default=True, shell_complete=completion.device,
              help="auto, cpu, cuda or cuda:i.")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(min=1),
              help="Probe samples per forward pass (lower it when a batch does not fit in memory).")
@click.option("--dtype", type=SuggestingChoice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="dtype the model runs in (its weights are loaded as float32, then cast; the statistics are "
                   "float64 whatever it is).")
@click.option("--center/--no-center", default=False,
              help="Use the centered feature covariance (default: uncentered; --no-center overrides fdl.toml).")
@click.option("--top-k", default=64, show_default=True, type=click.IntRange(min=1),
              help="Eigenvectors / eigenfunctions stored per checkpoint (never fewer than the overlaps' k: C, or "
                   "--overlap-k; the overlaps are taken from them).")
@click.option("--overlap-k", type=click.IntRange(min=1), metavar="K",
              help="k of the eigenspace overlaps overlap_init / overlap_prev (default: C, the number of outputs, as "
                   "SPEC §5). max(--top-k, k) eigenvectors (p×k float64) and eigenfunctions (m×k float32) are stored "
                   "a checkpoint: ~48 MB at p = 4096, C = 1000; a smaller k keeps the store small.")
@click.option("--anchor-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="First m probe points on which CKA, overlaps and eigenfunction values are taken. CKA costs "
                   "two m×p×p products per checkpoint; a smaller m is faster but biases CKA upwards "
                   "(docs/benchmarks.md).")
@click.option("--reference", "reference_step", type=int, help="Step of the reference checkpoint (default: first).")
@click.option("--dlr-energy", default=0.99, show_default=True, type=FiniteFloatRange(0.0, 1.0, min_open=True),
              help="Share η of the centered output energy spanned in D_LR (1: every direction).")
@click.option("--steps", "steps", metavar="S1,S2,...", help="Analyse only these steps.",
              callback=_steps_list)
@click.option("--redo", "redo", metavar="S1,S2,...", callback=_steps_list,
              help="Analyse these stored checkpoints again from their files (changed, or their arrays damaged), "
                   "keeping the rest of the store; the checkpoints compared with them get cka_prev / overlap_prev "
                   "recomputed. Not the reference (--overwrite), not under torchrun.")
@click.option("--drop", "drop", metavar="S1,S2,...", callback=_steps_list,
              help="Remove these stored steps, each a second copy of a file the store holds at another step (stored so by "
                   "a resume with other step options that fdl now refuses); the checkpoints compared with them are "
                   "compared again. Not a step this run reads, not the reference, not under torchrun.")
@click.option("--abandon-addition", is_flag=True,
              help="Give up adding probes or layers to the store, an `fdl analyze` that stopped having added them to "
                   "some checkpoints: the store's probes and layers that this run leaves out are taken out of the "
                   "store (at every checkpoint), which is then as before the addition; then it resumes. Not under "
                   "torchrun.")
@click.option("--accept-model-change", is_flag=True,
              help="Resume although the model's code changed since the store was analysed (its --model file, a "
                   "module of its folder, a pickled model's code): the checkpoints stored so far keep the numbers of "
                   "the old code, the new ones get the new code's; the store records the change, which `fdl report` "
                   "and `fdl classify` name. Not under torchrun.")
@click.option("--every", type=click.IntRange(min=1),
              help="Analyse every N-th checkpoint (first and last kept; with --steps, every N-th of those steps).")
@click.option("--glob", "glob_pattern", metavar="PAT", help="Only checkpoint names matching this glob.")
@click.option("--step-regex", metavar="RE",
              help="Regex whose first group is the step, for odd names (with a /: searched in FOLDER/NAME).")
@click.option("--step-offset", "step_offsets", multiple=True, metavar="PAT=N", callback=_step_offsets,
              help="Add N to the steps of the checkpoints in folder PAT (or in its folders of one checkpoint each), or "
              "whose paths match the glob PAT (from the right, as --glob): a job restarted with its step count reset, "
              "e.g. 'run2=500'. Repeatable.")
@click.option("--resume/--overwrite", default=True, show_default=True, help="Keep what the store holds, or start afresh.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow checkpoints whose loading runs their code: pickled Python objects, TorchScript programs, "
                   "torch.export .pt2 archives.")
@click.option("--weights", metavar="NAME",
              help="Analyse other weights the checkpoints hold: an entry of their dict (state_dict_ema, "
              "extra_state.ema) or a key prefix (ema) - an EMA or teacher copy.")
@click.option("--strict", is_flag=True, help="Stop at the first bad checkpoint (default: report it, go on).")
@click.option("--cka-dtype", type=SuggestingChoice(["float64", "float32"]), default="float64", show_default=True,
              help="dtype of the anchors' cross products behind cka_init and cka_prev (summed in float64). "
                   "float32: about 2x faster; CKA moves by ~1e-7 on float32 models' features (up to a few "
                   "1e-6 on features of few distinct values; not used with --dtype bfloat16/float16; "
                   "see docs/measures.md).")
@click.option("--shard-probe", is_flag=True, help="Under torchrun: split the probe over ranks (all-reduced statistics).")
@click.option("--watch", is_flag=True, help="Keep polling for new checkpoints until interrupted.")
@click.option("--poll", "poll_seconds", default=10.0, show_default=True, type=FiniteFloatRange(min=0.1),
              help="Seconds between polls for new checkpoints under --watch.")
@click.option("--commit-interval", "min_commit_interval", default=1.0, show_default=True, type=FiniteFloatRange(min=0.0),
              help="Seconds between crash-safe store commits at least; a commit also waits 10x the last one's "
                   "duration (0: that wait only).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON record per checkpoint (and probe/layer series) on stdout once stored; a stored "
                   "checkpoint updated with a new previous one is printed again, one given a probe or layer added "
                   "to the store with those series. --drop first prints {\"dropped\": [steps]}, --abandon-addition "
                   "{\"abandoned\": [[probe, layer], ...]}.")
def analyze(**kwargs: Any) -> None:
    """Analyse checkpoints (a folder, files, or - for paths on stdin) into an HDF5 store."""
    with _untracked_imports():
        signals.import_torch(quiet=_a_quiet_rank())
        # and the modules a run imports on its way (the store's h5py, the loaders, rich's progress)
        import rich.console
        import rich.progress  # noqa: F401

        from fdl_cli import checkpoints, distributed, extract, probes, store  # noqa: F401
        from fdl_cli.pipeline import AnalyzeOptions, run_analyze
        from fdl_cli.progress import RichReporter

    ctx = click.get_current_context()
    from_user = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    given = {name for name in kwargs if ctx.get_parameter_source(name) in from_user}  # fdl.toml fills the others
    if kwargs["out"] == "-":  # a file named "-" was written in the current folder (session 15)
        raise distributed.alike(FdlError(
            "--out -: the store is an HDF5 file, which cannot go to stdout",
            fix="give it a path (--out run.h5); --json prints the records on stdout as they are stored"))
    try:
        options = AnalyzeOptions.from_cli(**kwargs, given=given)
    except FdlError as exc:
        raise distributed.alike(exc) from None  # the command line's alone: the same on every rank
    console = _stderr_console()
    with _user_output_to_stderr() as stdout, RichReporter(console, quiet=False) as reporter:
        summary = run_analyze(
            options,
            reporter=reporter,
            on_record=functools.partial(_emit_json, stream=stdout) if options.as_json else None,
            stdin=sys.stdin,
        )
    from fdl_cli.distributed import detect_world

    if detect_world().speaks:  # under torchrun rank 0 says it, once (every rank ends with rank 0's account)
        console.print(summary.message(), markup=False)
    if summary.interrupted:
        # like any Ctrl-C'd (130) or SIGTERM'd (143) command, so `fdl analyze ... && next` does not go on
        signals.exit_interrupted(signals.exit_status())
    if summary.failed:
        sys.exit(1)


def _check_plots_dir(plots_dir: str | None) -> None:
    """--plots of report and compare, refused before any work where writing it would fail at the end; "-"
    made a folder named "-" in the current one, where --out - and --html - are refused as not files."""
    if not plots_dir:
        return
    if plots_dir == "-":
        raise FdlError("--plots -: the figures are PNG and SVG files written into a folder, not to stdout",
                       fix="give it a folder (--plots figures/), created if missing")
    from fdl_cli import report as rep

    rep.check_output(plots_dir, folder=True)


def _in_new_plots_dir(html_path: str, plots_dir: str | None) -> bool:
    """Whether the --html page goes into the --plots folder, not there yet: the figures create it before the page
    is written (`--plots D --html D/r.html` was refused as "create the folder D first"); the folder's check then
    stands for the page's (a new file in a new folder)."""
    from pathlib import Path

    folder = Path(html_path).parent
    if not plots_dir or os.path.lexists(folder):
        return False
    return os.path.abspath(folder) == os.path.abspath(plots_dir)


# ----------------------------------------------------------------------------------------- inspect


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="List a model's modules and output shapes.")
@click.argument("checkpoint", shell_complete=completion.paths)
@click.option("--model", "model_spec", metavar="SPEC", shell_complete=completion.model_spec,
              help="pkg.module:factory or path/file.py:factory.")
@click.option("--model-kwargs", metavar="JSON", help="Keyword arguments of the factory, as JSON.")
@click.option("--probe", "probe_spec", metavar="FILE", shell_complete=completion.paths,
              help="A probe to take one sample from, for output shapes (default: fdl.toml's probe, else a random input "
              "for the first nn.Embedding (token ids), nn.Linear or Conv2d).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a checkpoint whose loading runs its code (a pickled Python object, TorchScript, a .pt2 archive).")
@click.option("--weights", metavar="NAME",
              help="Other weights the checkpoint holds: an entry (state_dict_ema, extra_state.ema) or key prefix (ema).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def inspect(**kwargs: Any) -> None:
    """List the model's named modules with output shapes, and the layer `analyze` hooks by default.

    CHECKPOINT is a checkpoint file, or a run's folder, whose first checkpoint is read; an fdl.toml in
    that folder gives --model and --probe when they are not given. Without a model, the tensors of a file
    of weights are listed (exit 0), with a note of what needs the model."""
    with _untracked_imports():
        signals.import_torch()
        from fdl_cli.inspection import inspect_checkpoint

    with _user_output_to_stderr():  # the model file's own print()s go to stderr, not into the JSON
        result = inspect_checkpoint(**{k: v for k, v in kwargs.items() if k != "as_json"})
    outputs_error = result.pop("outputs_error", None)  # raised below the listing, whose shapes stand
    not_called_fix = result.pop("not_called_fix", None)
    containers = frozenset(result.pop("containers", ()))  # no output shape: never called, their modules are
    unhooked = frozenset(result.pop("unhooked", ()))  # no output shape: scripted, not hooked (ran or not)
    for note in result.pop("notes", ()):
        click.echo(terminal_safe(f"note: {note}"), err=True)
    if result["needs_model"] is not None:  # weights only, no model: their tensors, then what needs one (exit 0)
        unused_error = result.pop("unused_error")
        if kwargs["as_json"]:
            _emit_json(result)
        else:
            _print_tensors(result)
        if unused_error is not None:
            raise unused_error  # --probe or --model-kwargs given, with no model to use them
        click.echo(terminal_safe(f"note: {result['needs_model']}"), err=True)
        return
    failure = next((said for row in result["modules"] if (said := _failure(row)) is not None), None)
    failed = failure is not None
    of_manifest = result.pop("probe_of_manifest", None)
    if kwargs["probe_spec"] is not None and failed and outputs_error is None:
        # inspect_checkpoint reports a failed forward pass as "shapes unknown"; with the user's own probe
        # that is the probe's error (as `analyze` would say), not a listing to exit 0 with; unless it is the model's
        # own (`shadowing_fix`: outputs_error, raised below the listing).
        raise _probe_misfit(kwargs["probe_spec"], result["checkpoint"], str(failure))
    if failed and of_manifest is not None and outputs_error is None:
        # fdl.toml's probe, which `analyze` would refuse alike: an error too, said below the listing, since
        # without --probe the file's probe is the one run (and --probe a probe of its own)
        outputs_error = _probe_misfit(of_manifest[0], result["checkpoint"], str(failure), manifest=of_manifest[1])
    if kwargs["as_json"]:
        _emit_json(result)
        if outputs_error is not None:
            raise outputs_error
        return
    console = _stderr_console()
    _print_whole(console, *_modules_table(result, console.width if console.is_terminal else None, containers,
                                          unhooked))
    console.print(f"sample: {result['sample']}", markup=False, highlight=False)
    if _hooks_told(result) and any(row["output_shape"] is None and row["name"] not in containers | unhooked
                                   for row in result["modules"]):
        console.print(f"{NOT_CALLED}: the forward pass did not call the module (unused, or its weights used "
                      "directly, as nn.MultiheadAttention uses its out_proj's), so no --layer can hook it"
                      + (f"; {not_called_fix}" if not_called_fix else ""), markup=False, highlight=False)
    if any(row.get("note") for row in result["modules"]):
        from fdl_cli.extract import NO_BATCH_CAUSES

        console.print(f"{NO_BATCH_CELL}: the module's output does not begin with the sample's batch of 1 "
                      f"({NO_BATCH_CAUSES}): not a feature layer, its rows are no samples' (analyze refuses it as "
                      "--layer)", markup=False, highlight=False)
    if failure is not None:  # under the table, once: the model's row says `FAILED`
        console.print(failure, markup=False, highlight=False)
    basis = result.get("default_basis", "the input of the last nn.Linear")
    width = result["default_features"]
    features = f"{width} features" if width else "width unknown: no forward pass ran (pass --probe FILE)"
    console.print(f"default feature layer: [bold]{result['default_layer']}[/bold] ({features}; {basis})")
    _print_weight_copies(console, result)
    if outputs_error is not None:
        raise outputs_error  # the forward pass ran, but `analyze` cannot tell its outputs: exit 1, said why


def _print_whole(console: Any, table: Any, hidden: list[str]) -> None:
    """Print an `fdl inspect` table, then the columns left out of it for the terminal's width (`hidden`)."""
    if not console.is_terminal:
        # As `fdl report`: a pipe or a log has no width, so the table is printed whole rather than
        # folded at rich's 80 columns ("ModuleD" / "ict", "paramet" / "ers" beside a long name).
        from rich.measure import Measurement

        console.width = max(console.width, Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
    if hidden:
        console.print(f"(left out for this terminal's width: {', '.join(hidden)}; a wider terminal shows "
                      f"{'it' if len(hidden) == 1 else 'them'}, as does --json)", markup=False, highlight=False)


def _print_tensors(result: dict[str, Any]) -> None:
    """`fdl inspect`'s listing of a checkpoint of weights only (`inspection._tensors_listing`): its tensors by
    module, their total and the step it is read at; the CLI then says what needs the model."""
    console = _stderr_console()
    _print_whole(console, *_tensors_table(result, console.width if console.is_terminal else None))
    count = len(result["tensors"])
    console.print(f"total: {result['values']:,} values in {count:,} tensor{'s' if count != 1 else ''} (parameters, "
                  "and buffers such as running means where the file holds them)", markup=False, highlight=False)
    source = result["step_source"]
    console.print("step: " + ("none (no step in its metadata or name: `fdl analyze` of its folder skips it)"
                              if result["step"] is None else
                              f"{result['step']} (from its {_step_source_said(source)})"),
                  markup=False, highlight=False)
    _print_weight_copies(console, result)


def _print_weight_copies(console: Any, result: dict[str, Any]) -> None:
    """`fdl inspect`'s lines (with a model or without) on the file's other copies of the weights (an EMA, for
    --weights) and, where an EMA's were swapped into state_dict, that the weights listed or put in the model are
    the averaged ones, as analyze's note says."""
    if copies := result["other_weights"]:
        console.print(f"other weights in the file: {listed_names(copies, len(copies))} (--weights NAME lists "
                      "or analyses those instead)", markup=False, highlight=False)
    if result.get("weights_averaged_by"):  # as analyze's note: the weights are the EMA's, not the trained model's
        from fdl_cli.checkpoints import ema_swap_said

        console.print(ema_swap_said(os.path.basename(result["checkpoint"]), result["weights_averaged_by"]),
                      markup=False, highlight=False)


def _step_source_said(source: str) -> str:
    """`CheckpointRef.step_source` in words, for `fdl inspect`'s "step:" line: `metadata's global_step`, `name`."""
    if source == "step_regex":
        return "name, by --step-regex"
    where, _, key = source.partition(":")
    return f"{where}'s {key}" if key else source


def _probe_misfit(spec: str, checkpoint: str, failure: str, *, manifest: Any = None) -> Exception:
    """The error of a probe (--probe's, or the fdl.toml `manifest`'s) whose first sample the model's
    forward pass refused: `failure`, with the conversion the probe's shape and dtype point to."""
    from fdl_cli.errors import ProbeError
    from fdl_cli.probes import fit_fix, load_probe, parse_probe_spec

    name, probe_path = parse_probe_spec(spec)
    fix = fit_fix(load_probe(probe_path, name=name), failure)
    if manifest is None:
        return ProbeError(f"probe {spec} does not fit the model of {checkpoint}", got=failure,
                          fix=fix + " (run `fdl inspect` without --probe to list the modules)")
    return ProbeError(f"the probe {probe_path} that {manifest} names does not fit the model of {checkpoint}",
                      got=failure, fix=f"{fix} (fix the probe in {manifest}, or pass --probe FILE of inputs that fit)")


#: `fdl inspect`'s output shape of a module the forward pass ran without calling
NOT_CALLED = "not called"
#: `fdl inspect`'s output shape of an nn.ModuleList or nn.ModuleDict: the pass calls the modules it holds, never it
CONTAINER = "container"


#: `fdl inspect`'s mark beside the output shape of a module whose output has no batch dimension first
#: (`inspection.NO_BATCH`, said whole below the table)
NO_BATCH_CELL = "no batch dim"
#: `fdl inspect`'s output shape of the model when its forward pass failed: the error, whole, is said below the table
#: (in the cell it made a piped table as wide as the error, and rich took its `[ids, mask]` for markup)
FAILED = "forward failed (see below)"


def _failure(row: dict[str, Any]) -> str | None:
    """The error of `fdl inspect`'s forward pass, which the model's row of `inspect_checkpoint` holds as its
    output shape ("forward failed on a sample of shape ..."); None for another row, or a pass that ran."""
    shape = row["output_shape"]
    return shape if row["name"] == "" and isinstance(shape, str) and shape.startswith("forward failed") else None


def _hooks_told(result: dict[str, Any]) -> bool:
    """Whether `fdl inspect`'s forward pass ran with every module hooked, so that a module without an output
    shape is one it did not call (nn.MultiheadAttention's out_proj, whose weights it uses directly), not one
    whose shape no pass told (the pass failed; a module inside a TorchScript program)."""
    from fdl_cli.extract import LAST_LINEAR_OP

    failed = any(_failure(row) is not None for row in result["modules"])
    return not failed and result["default_module"] != LAST_LINEAR_OP


def _modules_table(
    result: dict[str, Any], max_width: int | None, containers: Collection[str] = (), unhooked: Collection[str] = ()
) -> tuple[Any, list[str]]:
    """The table of `fdl inspect` and the columns left out of it for a terminal `max_width` wide; a module
    without an output shape is a `container`, `unknown` (`unhooked`: a TorchScript module, which no hook tells
    of), or `not called`.

    The names are what --layer takes: folded onto a second line when the terminal (or a pipe's 80
    columns) is too narrow, never cut to "bert.encoder.lay…". On a narrow terminal the parameters,
    then the output shapes, are left out whole (and named): rich squeezed them to nothing beside a
    40-column name, or drew the table wider than the terminal, whose lines then wrapped.
    """
    unknown = NOT_CALLED if _hooks_told(result) else "unknown"
    rows = [(row["name"] or "(model)", str(row["type"]),
             FAILED if _failure(row) is not None else
             str(row["output_shape"]) + (f" ({NO_BATCH_CELL})" if row.get("note") else "")
             if row["output_shape"] is not None else
             CONTAINER if row["name"] in containers else "unknown" if row["name"] in unhooked else unknown,
             f"{row['parameters']:,}",  # as the listing without a model writes its counts
             " ← default (input)" if row["name"] == result["default_module"] else "")
            for row in result["modules"]]
    longest = max((len(row["name"]) for row in result["modules"]), default=7)
    return _folding_table(f"modules of {result['checkpoint']}", ("module", "type", "output shape", "parameters"),
                          [(*row[:3], row[3] + row[4]) for row in rows], longest, max_width,
                          widths=[(len(row[3]) for row in rows)])


#: characters of a module's or tensor's name that `fdl inspect`'s table shows before its length: real names are far
#: shorter, so they fold over lines whole
INSPECT_NAME_SHOWN = 1000


def _tensors_table(result: dict[str, Any], max_width: int | None) -> tuple[Any, list[str]]:
    """The table of a checkpoint's tensors (`inspection._tensors_listing`), by module: each module's name on
    its first tensor's row only, beside each tensor's own name (`weight`, `bias`; the full name is the two
    joined by a dot, as --json gives it), and the columns left out of it for a terminal `max_width` wide, as
    `_modules_table` folds and leaves them out: the values, then the dtype."""
    rows = []
    previous = None
    for row in result["tensors"]:
        module, _, own = str(row["name"]).rpartition(".")
        # a name from the file, folded over lines, never cut: up to INSPECT_NAME_SHOWN characters, then its length
        # (a forged key of a megabyte made a megabyte of table); --json keeps it whole
        module, own = shown_name(module, INSPECT_NAME_SHOWN), shown_name(own, INSPECT_NAME_SHOWN)
        rows.append(("" if module == previous else module or "(top level)", own, str(list(row["shape"])),
                     str(row["dtype"]), f"{row['values']:,}"))
        previous = module
    longest = max((len(row[0]) for row in rows), default=6)
    table, hidden = _folding_table(f"tensors of {result['checkpoint']}", ("module", "tensor", "shape", "dtype", "values"),
                                   rows, longest, max_width, least=3)
    return table, hidden


def _folding_table(title: str, headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], longest: int,
                   max_width: int | None, *, least: int = 2, widths: Sequence[Any] = ()) -> tuple[Any, list[str]]:
    """A table of `fdl inspect` whose first column (names) folds onto further lines, never cut, within 40
    columns, or fewer on a narrow terminal `max_width` wide, where the last columns are left out whole, down to
    `least` (returned, named, for a line below it). `widths`: for the last columns, the width of their widest
    cells when that is not their text (a marker that may wrap)."""
    from rich.table import Table

    # The width each column takes unfolded, the name's up to 40 columns.
    measured = [min(max(longest, len(headers[0])), 40),
                *(max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers) if i)]
    for back, cells in enumerate(widths, start=len(headers) - len(widths)):
        measured[back] = max([len(headers[back]), *cells])
    keep = len(headers)
    if max_width is not None:
        while keep > least and sum(measured[:keep]) + 3 * keep + 1 > max_width:
            keep -= 1
    room = measured[0] if max_width is None else max(8, min(measured[0], max_width - sum(measured[1:keep]) - 3 * keep - 1))
    table = Table(title=title)
    table.add_column(headers[0], overflow="fold", min_width=room)
    for column in headers[1:keep]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row[:keep])
    return table, list(headers[keep:])


# ------------------------------------------------------------------------------- reading commands


def _alias(command: click.Command, name: str) -> click.Command:
    """`command` under another name (DESIGN.md's `fdl summarize` and `fdl diff`), listed by `fdl --help`
    as that command's other name rather than as a second command with the same description."""
    alias = copy.copy(command)
    alias.name = name
    alias.short_help = f"Same as `fdl {command.name}`."
    _ALIAS_OF[name] = command.name or name
    return alias

FORMATS = SuggestingChoice(["table", "json", "csv", "markdown"])
FORMAT_HELP = ("table: for people, on stderr like every message; json, csv, markdown: on stdout "
               "(`> file`, `| jq`).")


def _json_format(kwargs: dict[str, Any]) -> str:
    """The output format: --json is --format json, as analyze, inspect and classify spell it."""
    fmt = str(kwargs["fmt"])
    if kwargs.pop("as_json", False):
        if fmt not in ("table", "json"):
            raise click.UsageError(f"--json and --format {fmt} ask for two formats; pass one")
        return "json"
    return fmt


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="One row per checkpoint and a run summary.")
@click.argument("store", type=StorePath())
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=FORMAT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--wide", is_flag=True, help="Show every field in the table.")
@click.option("--html", "html_path", cls=OutputOption, type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report.")
@click.option("--plots", "plots_dir", cls=OutputOption, type=click.Path(file_okay=False),
              help="Write figures (PNG and SVG) here.")
@click.option("--probe", default=None, metavar="NAME", shell_complete=completion.store_names("probe", "store"),
              help="Select a probe when the store has several.")
@click.option("--layer", default=None, metavar="NAME", shell_complete=completion.store_names("layer", "store"),
              help="Select a layer when the store has several.")
def report(**kwargs: Any) -> None:
    """One row per checkpoint and a run summary; figures and HTML on request."""
    from pathlib import Path

    from fdl_cli import report as rep

    kwargs["fmt"] = _json_format(kwargs)

    if kwargs["html_path"] == "-":  # a file named "-" was written in the current folder
        raise FdlError("--html -: the HTML report is written to a file, not to stdout",
                       fix="give it a path (--html report.html)")
    if kwargs["html_path"] and not _in_new_plots_dir(kwargs["html_path"], kwargs["plots_dir"]):
        rep.check_output(kwargs["html_path"])
    _check_plots_dir(kwargs["plots_dir"])
    fmt = kwargs["fmt"]
    # where the checkpoints were computed: for the table and the HTML page (an attribute read per checkpoint)
    # one opening of the store for the records and the figures' arrays (they opened it anew, scanning it again, three
    # times a series): the figures are of the very commit the records are, while `fdl analyze --watch` commits others
    with rep.opened_run(kwargs["store"], probe=kwargs["probe"], layer=kwargs["layer"],
                        history=fmt == "table" or bool(kwargs["html_path"]), r2_outputs=True) as run:
        console = _stderr_console()
        for warning in run.warnings:
            console.print(f"warning: {warning}", markup=False, style="yellow")
        if fmt != "table":
            sys.stdout.write(rep.FORMATTERS[fmt](run.records()))
            # the records are the stored checkpoints', as before; what they leave out is said beside them
            if (refused := rep.refused_line(run, "this report")) is not None:
                console.print(f"note: {refused}", markup=False, highlight=False)
            if (mixed := rep.model_change_line(run)) is not None:
                console.print(f"note: {mixed}", markup=False, highlight=False)
            for series in run.series:  # what the table and the page say of a degenerate layer, as classify
                where = f"probe {series.probe}, layer {series.layer}: " if len(run.series) > 1 else ""
                for line in rep.degenerate_layer_lines(run, series):
                    console.print(f"note: {where}{line}", markup=False, highlight=False)
            # what CKA and the overlaps see: a probe's (its anchor rows are the same at every layer), once a probe
            for skew in dict.fromkeys(filter(None, (rep.anchor_skew_line(run, series) for series in run.series))):
                console.print(f"note: {skew}", markup=False, highlight=False)
        else:
            rep.print_run(console, run, wide=kwargs["wide"])
        # both: each figure drawn once, written as files and rendered for the page (it was drawn twice)
        page: dict[str, list[tuple[str, bytes]]] | None = {} if kwargs["plots_dir"] and kwargs["html_path"] else None
        if kwargs["plots_dir"]:
            from fdl_cli.figures import write_run_figures

            notes: list[str] = []
            paths = write_run_figures(run, Path(kwargs["plots_dir"]), notes=notes, page=page)
            console.print(f"wrote {len(paths)} figure files to {kwargs['plots_dir']}", markup=False)
            for note in notes:
                console.print(f"note: {note}", markup=False)
        if kwargs["html_path"]:
            from fdl_cli.html import run_page

            rep.write_text_file(kwargs["html_path"], run_page(run, figures=page))
            console.print(f"wrote {kwargs['html_path']}", markup=False)


cli.add_command(_alias(report, "summarize"))


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="Compare two runs step by step.")
@click.argument("store_a", type=StorePath())
@click.argument("store_b", type=StorePath())
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=FORMAT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--plots", "plots_dir", cls=OutputOption, type=click.Path(file_okay=False),
              help="Write overlay figures here.")
@click.option("--probe", default=None, metavar="NAME", shell_complete=completion.store_names("probe", "store_a"),
              help="Select a probe when the stores have several.")
@click.option("--layer", default=None, metavar="NAME", shell_complete=completion.store_names("layer", "store_a"),
              help="Select a layer when the stores have several.")
@click.option("--probe-b", default=None, metavar="NAME", shell_complete=completion.store_names("probe", "store_b"),
              help="Store B's probe, when it is named otherwise (default: --probe).")
@click.option("--layer-b", default=None, metavar="NAME", shell_complete=completion.store_names("layer", "store_b"),
              help="Store B's layer, when it is named otherwise (default: --layer).")
@click.option("--no-overlap", is_flag=True, help="Skip the cross-run eigenspace overlap (allows different probes).")
@click.option("--overlap-steps", default="20", show_default=True, metavar="N|all",
              help="Matched steps (spread over the run) at which to compute the cross-run overlap.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE", shell_complete=completion.threshold,
              help=f"Override a threshold of the verdict (repeatable): dlr_tie ({COMPARE_THRESHOLDS['dlr_tie']:g}), the "
                   "D_LR difference up to which the runs are equally rich (rounding's: docs/measures.md); " + ", ".join(
                       f"{name} ({COMPARE_THRESHOLDS[name]:g})" for name in MOVEMENT)
              + ", by which a run's features moved, as in fdl classify (docs/regimes.md).")
def compare(**kwargs: Any) -> None:
    """Compare two runs step by step: field differences, cross-run eigenspace overlap, who is richer."""
    from pathlib import Path

    from fdl_cli import report as rep

    kwargs["fmt"] = _json_format(kwargs)

    steps = kwargs["overlap_steps"]
    if steps != "all" and not (steps.isdigit() and int(steps) > 0):
        raise click.BadParameter(f"expected a positive integer or 'all', got {steps!r}", param_hint="--overlap-steps")
    _check_plots_dir(kwargs["plots_dir"])
    thresholds = rep.compare_thresholds(kwargs["thresholds"])
    selection = {"probe": kwargs["probe"], "layer": kwargs["layer"]}
    selection_b = {
        "probe": kwargs["probe_b"] if kwargs["probe_b"] is not None else kwargs["probe"],
        "layer": kwargs["layer_b"] if kwargs["layer_b"] is not None else kwargs["layer"],
    }
    with contextlib.ExitStack() as stack:
        # with where each checkpoint was computed: a note when the runs' devices differ
        run_a = stack.enter_context(rep.opened_run(kwargs["store_a"], **selection, history=True, r2_outputs=True))
        try:
            run_b = stack.enter_context(rep.opened_run(kwargs["store_b"], **selection_b, history=True, r2_outputs=True))
        except StoreError as exc:
            # --probe/--layer chose store A's series and, without --probe-b/--layer-b, store B's too: the
            # listing named options that would then fail on store A ("--probe probe" for a store A of
            # "test" and "train"); name store B's own options instead.
            if exc.what.startswith(f"{kwargs['store_b']} holds no series") and kwargs["probe_b"] is None \
                    and kwargs["layer_b"] is None and exc.got:
                exc.got = exc.got.replace("--probe ", "--probe-b ").replace("--layer ", "--layer-b ")
                exc.fix = ("store B names its series otherwise: pick one of those listed (--probe-b / --layer-b "
                           "select store B's; --probe / --layer select store A's, and store B's when not given)")
            raise
        comparison = rep.compare_runs(
            run_a, run_b, overlap=not kwargs["no_overlap"], overlap_steps=None if steps == "all" else int(steps),
            thresholds=thresholds,
        )
    console = _stderr_console()
    # each store's damage, named by its path (the two may differ) unless the warning begins with it ("a.h5:
    # a.h5: its history attribute is damaged"); once for a store given twice
    for said in dict.fromkeys(warning if warning.startswith(str(run.path)) else f"{run.path}: {warning}"
                              for run in (run_a, run_b) for warning in run.warnings):
        console.print(f"warning: {said}", markup=False, style="yellow")
    if (note := rep.option_difference_note(comparison)) is not None:
        console.print(f"warning: {note}", markup=False, style="yellow")
    # the checkpoints `fdl analyze` refused (NaN weights), which the matched steps lack: said as report says it
    # beside --json, on stderr in every format (the records are the stored checkpoints', as before)
    for name, run in [("run A", run_a), ("run B", run_b)] if run_b.path != run_a.path else [("runs A and B", run_a)]:
        if (refused := rep.refused_line(run, "the comparison")) is not None:
            console.print(f"note: {name} ({run.path}): {refused}", markup=False, highlight=False)
        if (mixed := rep.model_change_line(run)) is not None:  # --json: its `model_changes`, a list a run
            console.print(f"note: {name} ({run.path}): {mixed}", markup=False, highlight=False)
    if kwargs["fmt"] == "table":
        options = rep.compare_options(probe=kwargs["probe"], layer=kwargs["layer"], probe_b=kwargs["probe_b"],
                                      layer_b=kwargs["layer_b"], no_overlap=kwargs["no_overlap"],
                                      overlap_steps=steps, thresholds=kwargs["thresholds"])
        rep.print_comparison(console, comparison, options)
    else:
        sys.stdout.write(rep.comparison_to_text(comparison, kwargs["fmt"]))
        if kwargs["fmt"] != "json":  # JSON carries them; a CSV or markdown table has no place for them
            for note in comparison.notes:
                console.print(f"note: {note}", markup=False, highlight=False)
            # nor for the thresholds the verdict used (JSON's `thresholds`) or the verdict, said last as the table
            # format says them (the verdict was said nowhere, then the thresholds beside it were not)
            console.print(rep.thresholds_line(comparison.thresholds), markup=False, highlight=False)
            console.print(comparison.verdict, markup=False, highlight=False)
    if kwargs["plots_dir"]:
        from fdl_cli.figures import write_compare_figures

        figure_notes: list[str] = []
        paths = write_compare_figures(run_a, run_b, comparison, Path(kwargs["plots_dir"]), notes=figure_notes)
        click.echo(terminal_safe(f"wrote {len(paths)} figure files to {kwargs['plots_dir']}"), err=True)
        for note in figure_notes:
            click.echo(terminal_safe(f"note: {note}"), err=True)


cli.add_command(_alias(compare, "diff"))


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="Export stored arrays or trajectories.")
@click.argument("stores", nargs=-1, required=True, type=StorePath(), metavar="STORE...")
@click.option("--what", type=SuggestingChoice(["eigenvalues", "quality", "utility", "eigenfunctions", "trajectories"]),
              required=True,
              help="eigenvalues: the spectrum λ_k of each checkpoint; quality: Q*_k, the targets' share along each "
                   "eigenvector (stored when the probe has targets); utility: Q̂_k, the model outputs' share; "
                   "eigenfunctions: the top-K e_k(x) on the anchor points; trajectories: the per-checkpoint fields "
                   "of `fdl report`.")
@click.option("--format", "fmt", type=SuggestingChoice(["csv", "json", "npy"]), default="csv", show_default=True,
              help="csv, json: on stdout (or --out); npy: a NumPy .npz archive, to the file --out names (one store).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--out", "-o", "out", cls=OutputOption, type=click.Path(dir_okay=False),
              help="Output file (required for npy).")
@click.option("--steps", "steps", metavar="S1,S2,...", callback=_steps_list,
              help="Export only these stored steps (default: every checkpoint); of several stores, of each.")
@click.option("--probe", default=None, metavar="NAME", shell_complete=completion.store_names("probe", "stores"),
              help="Select a probe (needed when the store has several series).")
@click.option("--layer", default=None, metavar="NAME", shell_complete=completion.store_names("layer", "stores"),
              help="Select a layer (needed when the store has several series).")
def export(**kwargs: Any) -> None:
    """Export stored arrays or trajectories as CSV, JSON or NumPy.

    csv/json go to stdout (or --out). npy writes a NumPy .npz archive to --out: `steps` and one array
    `step_<N>` per checkpoint (ragged, never padded; NaN where a checkpoint stores no quality); for
    trajectories `steps` and one float64 array per numeric field (NaN = null; path, sha256 and regime are
    in the csv/json forms). Several stores (a sweep's runs, csv/json) give one table: each row's first
    column `store`, the path as given, in the order given.
    """
    from pathlib import Path

    from fdl_cli import report as rep

    if kwargs.pop("as_json"):  # as report's and compare's; --format csv is the default, so said or not
        given = click.get_current_context().get_parameter_source("fmt") is not click.core.ParameterSource.DEFAULT
        if given and kwargs["fmt"] != "json":
            raise click.UsageError(f"--json and --format {kwargs['fmt']} ask for two formats; pass one")
        kwargs["fmt"] = "json"
    if kwargs["out"] == "-":  # as analyze's: a file named "-" was written in the current folder
        raise FdlError("--out -: fdl export writes to stdout without --out, and takes --out as a file's path",
                       fix="omit --out to print CSV or JSON on stdout (npy needs a file: --out arrays.npz)")
    stores = kwargs.pop("stores")
    if len(stores) > 1 and kwargs["fmt"] == "npy":
        # an archive's arrays are named by step (`step_<N>`), which two runs share: one archive a store
        raise click.UsageError(
            f"--format npy exports one store ({len(stores)} given): its arrays are named by step, which the "
            "stores share; export each to its own archive (for s in runs/*.h5; do fdl export \"$s\" --what "
            f"{kwargs['what']} --format npy --out \"${{s%.h5}}.npz\"; done), or all as one table with --format csv "
            "or json")
    out = Path(kwargs["out"]) if kwargs["out"] else None
    steps = None if kwargs["steps"] is None else [int(part) for part in kwargs["steps"].split(",") if part.strip()]
    if len(stores) > 1:
        _export_several(stores, kwargs, out, steps)
        return
    # The store stays open while the arrays are streamed out, one checkpoint at a time.
    # the trajectories with the R² of each output, where a regression of several outputs stores them
    with rep.opened_run(stores[0], probe=kwargs["probe"], layer=kwargs["layer"],
                        r2_outputs=kwargs["what"] == "trajectories") as run:
        for kind, line in _export_lines(run, kwargs["what"], steps):
            click.echo(terminal_safe(f"{kind}: {line}"), err=True)
        note = rep.write_export(run, kwargs["what"], kwargs["fmt"], stdout=sys.stdout, out=out, steps=steps)
    if note:
        click.echo(terminal_safe(note), err=True)


def _export_lines(run: Any, what: str, steps: Sequence[int] | None) -> list[tuple[str, str]]:
    """What `fdl export` says of a store on stderr beside its rows: ("warning" or "note", the line)."""
    from fdl_cli import report as rep

    # what the reader skipped or rebuilt (a checkpoint never completed: absent from the export), as
    # report and classify say it
    lines = [("warning", warning) for warning in run.warnings]
    one = run.series[0] if len(run.series) == 1 else None
    # what the exported loss and r2 measure, as report's table and classify say it (the store records it)
    if what == "trajectories" and one is not None and (caveat := rep.targets_caveat(run, one)) is not None:
        lines.append(("note", caveat))
    # what the exported regime column cannot read, as report says it beside its --json
    if what == "trajectories" and one is not None and (small := rep.small_probe_note(run, one)) is not None:
        lines.append(("note", small))
    # what the exported CKA and overlap columns, and e_k(x) on the anchor points, see: as report says it
    if what in ("trajectories", "eigenfunctions") and one is not None \
            and (skew := rep.anchor_skew_line(run, one)) is not None:
        lines.append(("note", skew))
    # as report's beside --json; not of steps chosen (--steps), which name stored ones alone
    if steps is None and (refused := rep.refused_line(run, "this export")) is not None:
        lines.append(("note", refused))
    # the arrays of some checkpoints ran other model code: said as report says it beside --json (no column:
    # export's rows are the stored values alone, as for zero_one_targets and small_probe)
    if (mixed := rep.model_change_line(run)) is not None:
        lines.append(("note", mixed))
    return lines


def _export_several(stores: Sequence[str], kwargs: dict[str, Any], out: Path | None,
                    steps: Sequence[int] | None) -> None:
    """`fdl export STORE...` (csv/json): one table of every store's rows (`report.write_export_several`), each
    store's lines on stderr named by it, as `fdl classify STORE...` names them. A store that cannot be exported
    (unreadable, without the --probe/--layer/--steps asked for, an array asked for damaged: `report.export_part`
    reads them all) is an error naming it, every such store said after the others' lines, and the command exits 1
    writing nothing: a table that silently lacks a run of the sweep would be read as the whole sweep (classify shows
    the others: its table is read by a person, beside the error)."""
    from fdl_cli import report as rep

    what = kwargs["what"]
    parts: list[rep.ExportPart] = []
    failed: list[tuple[str, FdlError]] = []
    for store in stores:
        try:
            with rep.opened_run(store, probe=kwargs["probe"], layer=kwargs["layer"],
                                r2_outputs=what == "trajectories") as run:
                for kind, line in _export_lines(run, what, steps):
                    # once named: a line that begins with the store's path names it already
                    said = line if line.startswith(str(run.path)) else f"{_row_name(store)}: {line}"
                    click.echo(terminal_safe(f"{kind}: {said}"), err=True)
                parts.append(rep.export_part(run, store, what, steps))
        except FdlError as exc:
            failed.append((store, exc))
    if failed:
        for store, error in failed:
            said = error.message if error.message.startswith(store) else f"{_row_name(store)}: {error.message}"
            click.echo(terminal_safe(f"error: {said}"), err=True)
        written = "no output written" if out is None else f"{out} not written"
        them = "it" if len(failed) == 1 else "them"
        click.echo(terminal_safe(f"{counted(len(failed), 'store')} of {len(stores)} could not be exported, "
                                 f"{written}: fix {them} or leave {them} out"), err=True)
        sys.exit(1)
    note = rep.write_export_several(parts, what, kwargs["fmt"], stdout=sys.stdout, out=out,
                                    probe=kwargs["probe"], layer=kwargs["layer"])
    if note:
        click.echo(terminal_safe(note), err=True)


class _AnyCase(SuggestingChoice):
    """Choices taken in any case (`--expect mf`), shown as spelt (MF, EF, coefficient, as the verdict prints them):
    click's case_sensitive=False showed them casefolded, "[coefficient|mf|ef]", in --help and its errors.
    hints: a value that names a choice in other words (its letters alone, casefolded) -> what to give instead."""

    def __init__(self, choices: Sequence[str], hints: Mapping[str, str] | None = None) -> None:
        super().__init__(choices)
        self.hints = dict(hints or {})

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        taken = self.named(value)
        if taken is None:
            self.fail(self.get_invalid_choice_message(value, ctx), param, ctx)
        return taken

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        listed = f"{value!r} is not one of {', '.join(map(repr, self.choices))} (any case)."
        hint = self.hints.get("".join(filter(str.isalpha, str(value))).casefold())
        return listed + (f" {hint}." if hint else self.suggestion(value))

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(choice) for choice in self.choices
                if str(choice).casefold().startswith(incomplete.casefold())]


#: `--expect` values that name a regime in the words of README and docs/regimes.md: `--expect rich` got only the list
REGIME_WORDS = {
    "rich": "The rich regimes are MF (minimal feature) and EF (extended feature): --expect MF or --expect EF",
    "lazy": "The lazy regime is coefficient (the features did not move): --expect coefficient",
    **dict.fromkeys(("minimal", "minimalfeature"), "MF is the minimal feature regime: --expect MF"),
    **dict.fromkeys(("extended", "extendedfeature"), "EF is the extended feature regime: --expect EF"),
}


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="The run's regime: coefficient, MF or EF.")
@click.argument("stores", nargs=-1, required=True, type=StorePath(), metavar="STORE...")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout (of several stores, a list).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="table: for people, on stderr; json (= --json), csv, markdown: on stdout, a row per store.")
@click.option("--expect", type=_AnyCase(["coefficient", "MF", "EF"], hints=REGIME_WORDS),
              help="Exit 3 when the verdict differs (any case: mf = MF); of several stores, naming those that differ.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE", shell_complete=completion.threshold,
              help="Override a threshold (repeatable): " + ", ".join(
                  f"{field.name} ({field.default:g})" for field in dataclasses.fields(Thresholds)
              ) + ". Rules and calibration: docs/regimes.md.")
@click.option("--probe", default=None, metavar="NAME", shell_complete=completion.store_names("probe", "stores"),
              help="Select a probe (default: the first given to analyze; the first by name in an older store, which "
                   "does not record their order: classify's note says which).")
@click.option("--layer", default=None, metavar="NAME", shell_complete=completion.store_names("layer", "stores"),
              help="Select a layer (default: the first analysed).")
def classify(**kwargs: Any) -> None:
    """The run's regime (coefficient: lazy, MF: minimal feature, EF: extended feature) with its evidence and thresholds.

    The verdict is recomputed from the stored measures with the thresholds in force (docs/regimes.md);
    `--expect REGIME` exits 3 when it differs. Several stores (a sweep's runs) give one row each, in the
    order given.
    """
    from fdl_cli import regimes

    fmt = _json_format(kwargs)
    thresholds = regimes.Thresholds.with_overrides(kwargs["thresholds"])
    stores = kwargs["stores"]
    if len(stores) == 1 and fmt in ("table", "json"):
        _classify_one(stores[0], kwargs, thresholds, as_json=fmt == "json")
    else:
        _classify_several(stores, kwargs, thresholds, fmt)


@dataclasses.dataclass
class _Classified:
    """One store's verdict, and what its text output says around it."""

    store: str
    verdict: Any  # regimes.RunVerdict
    records: list[Any]
    header: str  # "STORE: probe P, layer L" and how the series was chosen
    caveat: str | None  # what the evidence's final_r2 measures
    warnings: list[str]
    others: int = 0  # the store's series besides the one classified
    probe_sha: str | None = None  # the classified series' probe file's sha256, as the store records it
    refused: str | None = None  # the line naming the checkpoints `fdl analyze` refused (`report.refused_line`)
    binary: bool = False  # a one-logit binary classifier's store, whose C is 2 (`report.BINARY_LOGIT_LINE`)
    mixed: str | None = None  # the line saying the store mixes model code (`report.model_change_line`)
    #: the line saying the anchor rows misrepresent the probe's classes, which the verdict's CKA and overlaps see
    #: alone (`report.anchor_skew_line`)
    anchors: str | None = None


def _classified(store: str, kwargs: dict[str, Any], thresholds: Thresholds) -> _Classified:
    """The verdict of `store`'s series that --probe/--layer select (FdlError when it cannot be read)."""
    from fdl_cli import regimes
    from fdl_cli import report as rep

    with rep.opened_run(store, probe=kwargs["probe"], layer=kwargs["layer"]) as run:
        # each output's R² of a regression of several outputs at the final checkpoint: the evidence's
        # final_r2_min beside final_r2
        rep.add_final_r2_outputs(run, run.series[0])
    provenance_warnings: list[str] = []
    _provenance_names(run.provenance, "layers", provenance_warnings)  # warns of a damaged value
    _provenance_names(run.provenance, "probes", provenance_warnings)
    reference_step = _provenance_step(run.provenance, "reference_step", provenance_warnings)
    chosen = run.series[0]  # load_run orders them: the first probe given to analyze, the first layer analysed
    given = rep.series_order(run.provenance)[2]
    if not chosen.records:
        raise FdlError(f"{store} holds no analysed checkpoints", fix="run `fdl analyze` first")
    verdict = regimes.classify_run(chosen.records, thresholds, reference_step=reference_step,
                                  center=rep.centered(run))
    verdict.evidence.update(probe=chosen.probe, layer=chosen.layer, note=regimes.NOTE)
    caveat = rep.targets_caveat(run, chosen)  # what the evidence's final_r2 measures (the store records it)
    if rep.zero_one_targets(run, chosen):
        verdict.evidence[ZERO_ONE_FIELD] = True
    verdict.evidence.update(rep.probe_chance(run, chosen))  # what describe reads accuracy and CE against
    # A reference of rank below the overlaps' k: its overlaps are at k = rank (a caveat, the verdict unchanged)
    low = rep.reference_rank_note(run, chosen, verdict.evidence.get("reference_step"))
    if low is not None:
        verdict.evidence["low_rank_reference"] = low
    # the anchor rows misrepresent the probe's classes: the verdict's CKA and overlaps saw them alone (a note only)
    anchors = rep.anchor_skew_evidence(run, chosen)
    if anchors is not None:
        verdict.evidence["anchor_skew"] = anchors
    if verdict.regime != "coefficient":
        tie = rep.overlap_tie(run, chosen, verdict.evidence, thresholds)
        if tie is not None:
            verdict.evidence["overlap_tie"] = tie
    others = len(run.series) - 1
    # Say how the series was chosen, rather than "the default layer" (the one analyze picks without
    # --layer). Stores written before probe_order was recorded keep their probes by name only.
    first_probe = "the first probe given to analyze" if given else "the first probe by name"
    how = f" ({first_probe}, the first layer analysed; {others} other series: choose with --probe/--layer)"
    header = f"{store}: probe {chosen.probe}, layer {chosen.layer}{how if others else ''}"
    refused = rep.refused_line(run, "the verdict")
    if refused is not None:  # said, and listed in the JSON; the verdict and --expect are the stored checkpoints'
        verdict = dataclasses.replace(verdict, refused=rep.refused_items(run))
    if run.model_changes:  # said, and listed in the JSON: the verdict's checkpoints ran two versions of the code
        verdict = dataclasses.replace(verdict, model_changes=rep.model_change_items(run))
    return _Classified(store, verdict, list(chosen.records), header, caveat, [*run.warnings, *provenance_warnings],
                       others, rep.probe_sha(run, chosen), refused, rep.binary_logit(run), rep.model_change_line(run),
                       anchors["note"] if anchors is not None else None)


def _classify_one(store: str, kwargs: dict[str, Any], thresholds: Thresholds, *, as_json: bool) -> None:
    """`fdl classify STORE`: the verdict, its rule, trajectory, evidence and thresholds (or its JSON object)."""
    from fdl_cli import regimes
    from fdl_cli import report as rep

    one = _classified(store, kwargs, thresholds)
    verdict = one.verdict
    console = _stderr_console()
    for warning in one.warnings:
        console.print(f"warning: {warning}", markup=False, style="yellow")
    if as_json:
        _emit_json(verdict.as_json())
        if one.anchors is not None:  # beside the JSON, as report says it beside its --json
            console.print(f"note: {one.anchors}", markup=False, highlight=False)
    else:
        console.print(one.header, markup=False)
        lines = regimes.describe(verdict, one.records)
        if one.caveat is not None:  # above the evidence, whose final_r2 it is about
            lines.insert(next(i for i, line in enumerate(lines) if line.startswith("evidence: ")), one.caveat)
        if one.refused is not None:  # after the trajectory, whose steps it qualifies
            lines.insert(next(i for i, line in enumerate(lines) if line.startswith("trajectory")) + 1, one.refused)
        if one.mixed is not None:  # after the trajectory, whose checkpoints ran two versions of the model's code
            lines.insert(next(i for i, line in enumerate(lines) if line.startswith("trajectory")) + 1,
                         f"note: {one.mixed}")
        if one.anchors is not None:  # after the trajectory, whose CKA and overlaps saw the anchor rows alone
            lines.insert(next(i for i, line in enumerate(lines) if line.startswith("trajectory")) + 1,
                         f"note: {one.anchors}")
        if one.binary:  # after the rule, whose "C + mf_extra = 3" it explains
            lines.insert(next(i for i, line in enumerate(lines) if line.startswith("rule: ")) + 1,
                         rep.BINARY_LOGIT_LINE)
        for line in lines:
            console.print(line, markup=False)
    if kwargs["expect"] and kwargs["expect"] != verdict.regime:
        console.print(f"expected {kwargs['expect']}, got {verdict.regime}", markup=False, style="red")
        sys.exit(3)


#: The columns of `fdl classify STORE...`: the evidence's fields, as its JSON names them, and the table's headers
SWEEP_FIELDS: Mapping[str, str] = {
    "regime": "regime", "final_cka_init": "CKA₀", "final_overlap_init": "overlap₀", "final_k95_utility": "k95 Π̂",
    "final_n_outputs": "C", "final_pi_hat_C": "Π̂(C)", "final_d_lr": "D_LR", "final_accuracy": "acc", "final_r2": "r2",
    "mf_since_step": "MF since", "final_step": "final step",
}
#: The columns of `fdl classify STORE...`'s table a narrow terminal keeps, in this order (the others follow).
SWEEP_PRIORITY = ("store", "regime", "probe", "layer", "final_d_lr", "final_accuracy", "final_r2", "final_cka_init",
                  "final_k95_utility", "final_overlap_init", "final_pi_hat_C")
#: The further columns of its csv and markdown. `refused_steps` last: the steps `fdl analyze` refused (a run that
#: diverged), ascending, a list as JSON text as every CSV list (`[30, 40]`); an empty cell where the store records
#: none, as `--json` then has no `refused_steps` (null), so a script tells a diverged run without reading stderr.
#: `small_probe` after it where some row's probe is too small for EF (evidence `small_probe`; the text's line says so):
#: true or false a row, absent otherwise, as `fdl report`'s field, so every other sweep's columns are as they were;
#: then, each likewise, `model_changes` (the row's list where its store mixes model code) and `anchor_skew` (true or
#: false: the row's anchor rows misrepresent its probe's classes, evidence `anchor_skew`)
SWEEP_MORE = ("min_cka_init", "min_overlap_init", "first_mf_step", "n_checkpoints", "reference_step", "probe", "layer",
              "probe_sha256", "refused_steps")


def _trend(stores: Sequence[str], values: Sequence[Any]) -> str:
    """How a column of `fdl classify STORE...` moves down its rows (the order the stores were given, a sweep's
    knob): "rises", "never falls" (with ties), "falls", "never rises", "constant", or "not monotone: falls
    at B, rises at C" naming the rows where it turns. Read over the stores that have a value, which then says
    how many and names those without one ("rises (over 3 of 4 stores; b.h5 has none)"): a run without accuracy
    (a regression probe) hid the trend of the others; "—" with fewer than two."""
    present = [(store, value) for store, value in zip(stores, values, strict=True) if value is not None]
    lacking = [store for store, value in zip(stores, values, strict=True) if value is None]
    if len(present) < 2:
        return f"— ({'no store' if not present else 'only ' + present[0][0]} has it)"
    steps = [(store, after - before) for (_, before), (store, after) in zip(present[:-1], present[1:], strict=True)]
    up = [store for store, step in steps if step > 0]
    down = [store for store, step in steps if step < 0]
    if up and down:
        trend = f"not monotone: falls at {', '.join(down)}; rises at {', '.join(up)}"
    elif up:
        trend = "rises" if len(up) == len(steps) else "never falls"
    elif down:
        trend = "falls" if len(down) == len(steps) else "never rises"
    else:
        trend = "constant"
    if not lacking:
        return trend
    return (f"{trend} (over {len(present)} of {len(stores)} stores; {', '.join(lacking)} "
            f"{'has' if len(lacking) == 1 else 'have'} none)")


def _classify_several(stores: Sequence[str], kwargs: dict[str, Any], thresholds: Thresholds, fmt: str) -> None:
    """`fdl classify STORE...`: one row per store, in the order given; the thresholds (the same for every
    row) and the note once. A store that cannot be read is an error naming it, said after the others are
    shown (and --expect's line), and the command then exits 1, not 3: one broken run of a sweep hides no other.

    The text names each store as `_row_name` shows it (one line, never cut); the table has probe and layer
    columns where the rows' series differ, else one line names the series of every row (a sweep's rows are
    comparable only where they measure the same layer with the same probe)."""
    from fdl_cli import regimes
    from fdl_cli import report as rep

    console = _stderr_console()
    done: list[_Classified] = []
    failed: list[tuple[str, FdlError]] = []
    for store in stores:
        try:
            one = _classified(store, kwargs, thresholds)
        except FdlError as exc:
            failed.append((store, exc))
            continue
        done.append(one)
        for warning in one.warnings:
            console.print(f"warning: {_row_name(store)}: {warning}", markup=False, style="yellow")
        if one.refused is not None:  # its row's verdict leaves those steps out (JSON: the row's refused_steps)
            console.print(f"note: {_row_name(store)}: {one.refused}", markup=False, highlight=False)
        if one.mixed is not None:
            console.print(f"note: {_row_name(store)}: {one.mixed}", markup=False, highlight=False)
        if one.anchors is not None:  # its row's regime rests on CKA and overlaps of the anchor rows alone
            console.print(f"note: {_row_name(store)}: {one.anchors}", markup=False, highlight=False)
    fields = [name for name in SWEEP_FIELDS
              if name not in ("final_accuracy", "final_r2")
              or any(one.verdict.evidence.get(name) is not None for one in done)]
    if fmt == "json":
        # each row's probe file (its sha256, as the store records it; null where it records none): the text's line
        # on probes of one name that differ between stores, for a script. Not in one store's JSON, kept as it was.
        _emit_json([{"store": one.store, **one.verdict.as_json(), "probe_sha256": one.probe_sha} for one in done])
    elif fmt in ("csv", "markdown"):
        # every column, filled or not: a script reads `final_r2` of a classification sweep (empty) and
        # concatenates sweeps of both kinds; only the table, for people, leaves out a column no row fills (and
        # `small_probe` is there only where a row's probe is too small for EF: SWEEP_MORE's note)
        small = any(one.verdict.evidence.get("small_probe") is not None for one in done)
        # likewise `model_changes` where a row's store mixes model code (the --json row's list, as report's CSV has
        # it; empty in the other rows) and `anchor_skew` where a row's anchor rows misrepresent its probe's classes
        mixed = any(one.verdict.model_changes for one in done)
        skewed = any(one.anchors is not None for one in done)
        names = ["store", *SWEEP_FIELDS, *SWEEP_MORE, *([SMALL_PROBE_FIELD] if small else []),
                 *([MODEL_CHANGES_FIELD] if mixed else []), *(["anchor_skew"] if skewed else [])]
        rows = [{"store": one.store, "regime": one.verdict.regime,
                 **{name: one.verdict.evidence.get(name) for name in names[2:]}, "probe_sha256": one.probe_sha,
                 "refused_steps": sorted(item["step"] for item in one.verdict.refused or ()) or None,
                 SMALL_PROBE_FIELD: one.verdict.evidence.get("small_probe") is not None,
                 MODEL_CHANGES_FIELD: one.verdict.model_changes or None, "anchor_skew": one.anchors is not None}
                for one in done]
        sys.stdout.write(rep.rows_to_text(names, rows, fmt))
        sys.stdout.flush()
    elif done:
        series = [(str(one.verdict.evidence.get("probe")), str(one.verdict.evidence.get("layer"))) for one in done]
        by_row = len(set(series)) > 1  # each row's probe and layer in the table, kept on a narrow terminal
        columns = [rep.column_texts(name.removeprefix("final_"), [one.verdict.evidence.get(name) for one in done])
                   for name in fields[1:]]
        cells = [[_row_name(one.store), one.verdict.regime, *(pair if by_row else ()), *(column[i] for column in columns)]
                 for i, (one, pair) in enumerate(zip(done, series, strict=True))]
        headers = ["store", SWEEP_FIELDS["regime"], *(("probe", "layer") if by_row else ()),
                   *(SWEEP_FIELDS[name] for name in fields[1:])]
        justify = ["left" if index < (4 if by_row else 2) else "right" for index in range(len(headers))]
        # a narrow terminal keeps D_LR and the accuracy (or R²) after the store and its regime, as `fdl report`
        # does: by the left-to-right order it kept C, 10 in every row, and left out D_LR
        keys = ["store", "regime", *(("probe", "layer") if by_row else ()), *fields[1:]]
        kept = [keys.index(name) for name in SWEEP_PRIORITY if name in keys]
        table = rep.PlainTable.fitted(headers, justify, cells, max_width=console.width if console.is_terminal else None,
                                      priority=kept, always=4 if by_row else 2)
        if not console.is_terminal:
            console.width = max(console.width, table.width)
        console.print(table)
        if (note := table.left_out_note("--format csv", "--json")) is not None:
            console.print(note, markup=False)
        console.print("the final checkpoint's measures; each store's rule and trajectory: fdl classify STORE",
                      markup=False)
        if not by_row:
            console.print(f"every row: probe {series[0][0]}, layer {series[0][1]}", markup=False)
        for line in [*_probe_files_differ(done), *_final_steps_differ(done)]:
            console.print(line, markup=False)
        for one in done:
            if one.binary:  # its C column's 2
                console.print(f"{_row_name(one.store)}: {rep.BINARY_LOGIT_LINE}", markup=False)
            if (small := one.verdict.evidence.get("small_probe")) is not None:  # its regime cannot be EF
                console.print(f"{_row_name(one.store)}: {small}", markup=False)
        for one in done:
            if one.others:
                console.print(f"{_row_name(one.store)} holds {one.others} other series: choose with --probe/--layer",
                              markup=False)
        if len(done) > 2:
            names = [_row_name(one.store) for one in done]
            trends = [f"{SWEEP_FIELDS[name]} {_trend(names, [one.verdict.evidence.get(name) for one in done])}"
                      for name in fields[1:] if name not in ("final_n_outputs", "final_step", "mf_since_step")]
            console.print("down the rows: " + "; ".join(trends), markup=False)
    if done:
        console.print(regimes.thresholds_line(thresholds), markup=False)
        console.print(f"note: {regimes.NOTE}", markup=False)
    differ = [one for one in done if kwargs["expect"] and one.verdict.regime != kwargs["expect"]]
    if differ:
        listed = ", ".join(f"{_row_name(one.store)} ({one.verdict.regime})" for one in differ)
        console.print(f"expected {kwargs['expect']}: {len(differ)} of {len(done)} stores differ: {listed}",
                      markup=False, style="red")
    for store, error in failed:
        click.echo(terminal_safe(f"error: {_row_name(store)}: {error.message}"), err=True)
    if failed or differ:
        sys.exit(1 if failed else 3)


def _probe_files_differ(done: Sequence[_Classified]) -> list[str]:
    """A line for each probe name whose file differs between the stores (its sha256, as each store records it):
    two runs' probes both named "train" may hold other data (a held-out split, another seed's sample), and the
    rows then differ by their data as well as by their training. A store that records no sha256 is not named."""
    by_name: dict[str, dict[str, list[str]]] = {}
    for one in done:
        if one.probe_sha is not None:
            by_name.setdefault(str(one.verdict.evidence.get("probe")), {}).setdefault(one.probe_sha, []).append(
                _row_name(one.store))
    return [f"the probes named {name} differ between stores: "
            + "; ".join(f"sha256 {sha[:12]}… in {', '.join(stores)}" if i == 0 else f"{sha[:12]}… in {', '.join(stores)}"
                        for i, (sha, stores) in enumerate(files.items()))
            + ": those rows measure other data"
            for name, files in by_name.items() if len(files) > 1]


def _final_steps_differ(done: Sequence[_Classified]) -> list[str]:
    """A line where the rows' final checkpoints are at other steps (a seed stopped early, a run still training):
    the columns are each run's last checkpoint, so such rows compare other points of training. A line, as for the
    probes; `final_step` is a column of the table and of --format/--json already, so machine output is as it was."""
    by_step: dict[Any, list[str]] = {}
    for one in done:
        by_step.setdefault(one.verdict.evidence.get("final_step"), []).append(_row_name(one.store))
    # A run with no checkpoint after the reference (its reference alone stored so far) has no final step, and its
    # row no final measures ("—"): said so, not compared as a step (it was "None in run.h5")
    lines: list[str] = []
    if (none := by_step.pop(None, None)) is not None:
        single = len(none) == 1
        rule = f"its rule: fdl classify {shlex.quote(none[0])}" if single else "each one's rule: fdl classify STORE"
        lines.append(f"{', '.join(none)} {'has' if single else 'have'} no checkpoint after the reference: "
                     f"{'its row has' if single else 'their rows have'} no final measures ({rule})")
    if len(by_step) > 1:
        lines.insert(0, "the final steps differ: " + "; ".join(f"{step} in {', '.join(stores)}"
                                                             for step, stores in by_step.items())
                     + ": those rows measure other points of training")
    return lines


def _row_name(store: str) -> str:
    """A store's name as `fdl classify STORE...`'s text shows it: on one line, control characters escaped
    (`shown_name`: a glob brings whatever names a folder holds), and whole: two runs' long paths may differ
    only in their last characters, which a cut name would hide."""
    return shown_name(store, limit=max(len(store), 1))


def _provenance_names(provenance: Any, key: str, warnings: list[str]) -> list[str]:
    """The names the store's provenance lists under ``key`` (a list, or a table's keys); a value of
    another type (a hand-edited or damaged store) is ignored with a warning."""
    value = provenance.get(key)
    if value is None:
        return []
    if isinstance(value, (list, dict)):
        return [str(name) for name in value]
    warnings.append(f"the store's provenance has {key} = {json.dumps(value)[:60]}, not a list of names; "
                    "ignored (the series is chosen by name)")
    return []


def _provenance_step(provenance: Any, key: str, warnings: list[str]) -> int | None:
    """An integer step recorded in the provenance; another type is ignored with a warning."""
    value = provenance.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    warnings.append(f"the store's provenance has {key} = {json.dumps(value)[:60]}, not an integer step; "
                    "ignored (the first stored step is taken as the reference)")
    return None


# -------------------------------------------------------------------------------------- entry point


#: OpenBLAS (numpy's BLAS) keeps its worker threads spinning for ~2^28 cycles (~0.1 s) after each
#: call. `fdl analyze` alternates numpy (eigh, SVDs, small products) with torch, whose OpenMP threads
#: want the same cores, dozens of times per checkpoint: the spinning workers slowed every torch
#: operation after a numpy call, `fdl analyze` by ~25 % on 2 cores (docs/benchmarks.md). 2^4 cycles
#: make them sleep at once; the libraries' thread counts are unchanged, and a user's setting wins.
#: It only takes effect before numpy is first imported, hence here, at the entry point.
BLAS_ENVIRONMENT = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def configure_blas_threads(environ: Any = os.environ) -> None:
    """Set BLAS_ENVIRONMENT's variables that the user has not set."""
    for name, value in BLAS_ENVIRONMENT.items():
        environ.setdefault(name, value)


def tolerate_unencodable_output() -> None:
    """Write what stdout's and stderr's encoding cannot (a path with "ü" under PYTHONIOENCODING=ascii or
    a Latin-1 terminal; a file name whose bytes are not UTF-8, `$'\\xffstep_0.pt'`) escaped as \\xfc, \\xff
    (`errors.ESCAPE`) instead of failing with UnicodeEncodeError, and fdl's own glyphs ("─", "₀", "→") as their
    ASCII stand-ins (`errors.PLAIN`). Only text the encoding cannot hold changes;
    fdl's JSON is ASCII (json.dumps escapes as \\u00fc) and stays valid.

    A stdout piped or redirected (a program's input, a file) is UTF-8 whatever the locale, as the files fdl writes
    are: a CSV of Latin-1 bytes was refused by pandas' read_csv, and under ASCII "ü" was written \\xfc, the
    notation of a byte that is no UTF-8 (another file's name). A terminal keeps its own encoding."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # io.TextIOWrapper; a StringIO has none
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors=PLAIN)  # a person reads it: ASCII stand-ins for fdl's glyphs, the rest escaped
            if stream is sys.stdout and codecs.lookup(stream.encoding).name != "utf-8":
                with contextlib.suppress(Exception):
                    if not stream.isatty():  # errors given again: a new encoding alone resets them to strict
                        reconfigure(encoding="utf-8", errors=ESCAPE)


def _voice_or_exit(*, alike: str, status: int, grace: float | None = None) -> str:
    """How this process says the message it ends with: "" plainly, "rank N" naming its rank; or, on a
    rank that leaves a message every rank has `alike` to rank 0, no word: it exits with `status` here,
    after `grace` seconds at most (`distributed.voice`, `exit_quietly`). Only `fdl analyze` runs as a
    rank of a torchrun job (WORLD_SIZE set): another command run in a job's script, where every process
    inherits WORLD_SIZE (`fdl classify run.h5 --expect MF` after training), is a process of its own and
    says all it meets. distributed, and numpy, are not imported for a usage error of one process."""
    if _command != "analyze" or "WORLD_SIZE" not in os.environ:
        return ""
    from fdl_cli import distributed

    voice = distributed.voice(alike)
    if voice is None:
        distributed.exit_quietly(status, grace)
    return voice


def _a_quiet_rank() -> bool:
    """Whether this `fdl analyze` is a rank of a torchrun job other than rank 0, which says for every rank
    what each meets alike (read from RANK and WORLD_SIZE as `distributed.detect_world` reads them, before
    torch and numpy are imported: a value that is no integer is said by every rank once it is read)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def _say_interrupted(*, closing_line: bool) -> NoReturn:
    """"interrupted" (after a blank line that closes a terminal's "^C", as click writes it, with
    `closing_line`) and the status of the signal. Under torchrun every rank is interrupted alike (torchrun
    passes the Ctrl-C on to each rank): rank 0 says it, the others exit at once, with no wait for it
    (torchrun, stopping the job, waits for rank 0 to exit; a wait only made the job end later)."""
    status = signals.exit_status()
    _voice_or_exit(alike="job", status=status, grace=0.0)
    if closing_line:
        click.echo(err=True)
    click.echo("interrupted", err=True)
    signals.exit_interrupted(status)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: FdlError -> message on stderr and exit 1, never a traceback."""
    global _command
    _command = None
    configure_blas_threads()
    tolerate_unencodable_output()
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _GuardedStdout(stdout))
    try:
        _run(argv)
    finally:
        sys.stdout = stdout


def _run(argv: list[str] | None) -> None:
    """`main`'s command, each way it can end said as the user should read it."""
    try:
        with signals.installed():
            try:
                cli.main(args=argv, prog_name="fdl", standalone_mode=False)
                sys.stdout.flush()  # here, not in the interpreter's last flush, where a failure is no error of fdl's
            except Exception as exc:
                # the last net for a Ctrl-C that C code turned into its own error (a SystemError whose cause is the
                # KeyboardInterrupt) where no handler on the way looked for one: "interrupted", not a traceback
                signals.through(exc)
                raise
    except click.exceptions.Abort:  # a Ctrl-C while click parses the command line: click wrote a blank line
        _say_interrupted(closing_line=False)
    except _Interrupted:
        _say_interrupted(closing_line=True)
    except click.ClickException as exc:
        _voice_or_exit(alike="job", status=exc.exit_code)  # a usage error: the command line's, alike on every rank
        exc.show()
        sys.exit(exc.exit_code)
    except (FdlError, _StdoutFailed) as exc:
        if isinstance(exc, _StdoutFailed):
            _stdout_to_devnull()
        error = exc.error if isinstance(exc, _StdoutFailed) else exc
        voice = _voice_or_exit(alike=error.alike, status=1)
        click.echo(terminal_safe(f"error{f' on {voice}' if voice else ''}: {error.message}"), err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _say_interrupted(closing_line=False)
    except (BrokenPipeError, _StdoutClosed):
        # The reader of stdout went away (`fdl ... --json | head -1`): stop quietly, as a Unix tool
        # killed by SIGPIPE does (status 128 + 13).
        _stdout_to_devnull()
        sys.exit(SIGPIPE_STATUS)


def _stdout_to_devnull(stream: Any = None) -> None:
    """Point stdout (or the descriptor of `stream`, fdl's machine output) at /dev/null, or the interpreter's last
    flush of what it still holds would fail, or wait, again on the way out."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = (sys.stdout if stream is None else stream).fileno()  # none for a test's StringIO: nothing opened
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
