"""The one error root of fdl: every message says what was expected, what was got, and how to fix it.

The command line turns any `FdlError` into exit status 1 and prints its message without a traceback.
"""

from __future__ import annotations

import codecs
import errno
import os
import re
import resource
import stat
from collections.abc import Sequence
from pathlib import Path


def size_text(size: int) -> str:
    """A size in bytes as a user reads it: bytes below 1 MiB, MiB (one decimal) from there."""
    return f"{size} bytes" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"


def no_room(exc: OSError, *, another: str, one: str) -> tuple[str, str] | None:
    """Why the system refused a write for want of room, said after its own words (`exc.strerror`), and how to
    make room: no disk space (ENOSPC), a disk quota (EDQUOT), this process's file size limit (EFBIG under
    `ulimit -f`) or the largest file of the file system (EFBIG); None for another refusal. `another` and `one`
    name another place to write in the fix ("another --out", "an --out")."""
    if exc.errno == errno.ENOSPC:
        return "", f"free disk space or choose {another}"
    if exc.errno == getattr(errno, "EDQUOT", None):
        return "", f"free space within your disk quota (`quota -s` shows it) or choose {one} outside it"
    if exc.errno != errno.EFBIG:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return (f": this process may write files of at most {size_text(limit)} (its file size limit, `ulimit -f`)",
                "raise that limit (`ulimit -f unlimited` in the shell that runs fdl)")
    return ": the file system there takes no larger file", f"choose {one} on a file system that takes larger files"


def io_error(exc: OSError, *, another: str) -> tuple[str, str] | None:
    """Why the system refused a write for an I/O error (EIO: the device failed it, not for want of room, which
    freeing disk space would not mend), said after its own words, and what to do; None for another refusal."""
    if exc.errno != errno.EIO:
        return None
    return (": the device failed the write (a failing disk, a network file system that lost its server)",
            f"check the disk (`dmesg` shows the kernel's errors) or choose {another}")


def read_only(exc: OSError, *, another: str) -> tuple[str, str] | None:
    """Why the system refused a write on a read-only file system (EROFS), said after its own words, and what to do;
    None for another refusal. Not for want of room nor of permission (which the fixes of those sent the user
    after): ext4 remounts itself read-only after a disk error, mid-run."""
    if exc.errno != errno.EROFS:
        return None
    return (": the file system there is read-only (mounted so, or remounted so by the kernel after a disk error: "
            "`dmesg` says which)", f"choose {another} on a file system this user can write")


def write_refused(exc: OSError, *, another: str, one: str) -> tuple[str, str] | None:
    """`no_room`, `io_error` or `read_only`: why the system refused a write, said after its own words, and the
    fix."""
    return (io_error(exc, another=another) or read_only(exc, another=another)
            or no_room(exc, another=another, one=one))


class FdlError(Exception):
    """An error the tool explains to its user.

    Args:
        what: what went wrong, naming the path, layer or shape involved.
        got: what was found instead of what was expected (optional).
        fix: how the user can fix it (optional but strongly preferred).
    """

    #: Raised alike by every rank of a torchrun job ("job": agreed through a collective, or following from
    #: the command line alone; rank 0 says it, once) or by every rank of one machine ("machine": from its
    #: GPUs and the command line; its local rank 0 says it); see `distributed.voice`. An error not so
    #: marked ("") is said by each rank that raises it, naming the rank: it may be that rank's alone.
    alike: str = ""
    #: What refused a checkpoint for its own values, not for its file ("weights", NaN or Inf weights;
    #: "overflow", a forward pass that overflowed; "overflow_float16", one in --dtype float16, whose range
    #: float32 passes): `fdl analyze` records such a checkpoint in the store's `refused` list (docs/store.md), which
    #: the reading commands name (`report.refused_line`). "": another error.
    refused_as: str = ""

    def __init__(self, what: str, *, got: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.got = got
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        lines = [self.what]
        if self.got:
            lines.append(f"  got: {self.got}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message


class CheckpointError(FdlError):
    """A checkpoint could not be found, trusted, loaded or matched to the model."""

    #: size and modification time of the file before the read that failed (`checkpoints.file_signature`),
    #: when known: --watch tries a file again once it has changed since (it was still being written)
    file_signature: str = ""


class SameStepError(CheckpointError):
    """Two checkpoints have the same step and not the same weights (`paths`: the two files)."""

    def __init__(self, what: str, *, paths: tuple[Path, Path], got: str | None = None, fix: str | None = None) -> None:
        self.paths = paths
        super().__init__(what, got=got, fix=fix)


class WeightsMismatchError(CheckpointError):
    """The weights a checkpoint holds do not fit the model built (missing or unexpected keys, shapes)."""


class UnsafeCheckpointError(CheckpointError):
    """Loading this checkpoint would execute code; refused without --trust-pickle."""


class WeightsNotFoundError(CheckpointError):
    """--weights NAME names no copy of the weights this checkpoint holds."""


class ModelError(FdlError):
    """The model specification could not be resolved or built, or a layer is unknown."""


class ProbeError(FdlError):
    """The probe set is missing, malformed or does not fit the model."""


class StoreError(FdlError):
    """The HDF5 store is missing, corrupt, locked, from a newer schema, or inconsistent with the run."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class ResourceError(FdlError):
    """The analysis needs more memory than the machine (or its GPU) has."""


class NumericalError(FdlError):
    """The measures cannot be defined for these inputs (e.g. non-finite features)."""


_SPECIAL_FILES = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(mode: int) -> str | None:
    """What a file of `mode` (`os.stat`'s st_mode) is, in words, when it is neither a regular file nor a folder
    ("a named pipe (FIFO)", "a character device"); None for a regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL_FILES if test(mode)), "not a regular file")


def special_file(path: str | os.PathLike[str]) -> str | None:
    """What `path` is (through links), in words, when it exists but is neither a regular file nor a folder:
    opened to be read, a named pipe waits for a writer that never comes, /dev/zero never ends. None for a regular
    file, a folder, or a path that cannot be looked at (missing, a dangling link: the reader says why)."""
    try:
        return special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def special_store(path: str | os.PathLike[str], *, named: str) -> StoreError | None:
    """The refusal of a store path (`named` as the message says it: "--out run.h5", the path) that is a named pipe,
    a device or a socket (`special_file`), which a commit would replace (as root, /dev/null too) and a reader could
    not read; None for any other path."""
    kind = special_file(path)
    if kind is None:
        return None
    return StoreError(f"{named} is {kind}, not a regular file: fdl will not replace it",
                      fix="give the store a name of its own, such as run.h5 (a file fdl makes)")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), or "" when it has none:
    what a message quotes of a library's or the user's own error."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def counted(number: int, noun: str) -> str:
    """"1 point", "2 points": a count and its noun, plural but for 1 (messages said "1 points", "1 steps
    matched"); the plural adds an s (`noun` is one whose plural does)."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def first_few(items: Sequence[object], limit: int) -> str:
    """The first `limit` of `items`, comma-separated, with ", ..." where more follow (a message's list)."""
    return ", ".join(map(str, items[:limit])) + (", ..." if len(items) > limit else "")


def first_and_more(items: Sequence[object], limit: int) -> str:
    """The first `limit` of `items`, comma-separated, and how many more follow: "a, b and 3 more"."""
    return ", ".join(map(str, items[:limit])) + (f" and {len(items) - limit} more" if len(items) > limit else "")


#: The codec error handler that writes what an encoding cannot hold as escapes (`"x".encode(enc, ESCAPE)`):
#: a lone surrogate Python read for a byte of a name that is not UTF-8 (`\\udcff` for 0xff) as that byte,
#: `\\xff` (as the shell's `$'...'` and `ls -b` write it), any other character as `\\xfc`, `\\u4e2d`.
ESCAPE = "fdl.escape"


def _escape(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    said = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF
                   else char.encode("ascii", "backslashreplace").decode("ascii") for char in said), exc.end


codecs.register_error(ESCAPE, _escape)

#: The codec error handler for text written for people (stderr; stdout on a terminal) on a stream whose
#: encoding lacks fdl's typography (PYTHONIOENCODING=ascii, a Latin-1 terminal): each glyph fdl prints has an
#: ASCII stand-in (`STAND_INS`: "─" -, "₀" 0, "Π̂" Pi^, "→" ->, "≤" <=), a run of superscripts a leading ^
#: ("10⁶" 10^6); any other character is escaped as `ESCAPE` does (a path's "ü" stays \\xfc, a name one can
#: find). Escaping the glyphs too gave a table rule 540 characters long and headers off their columns. A file
#: name that holds one of these glyphs shows its stand-in there; JSON and a piped stdout (UTF-8) are exact.
PLAIN = "fdl.plain"

_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻ᵀ", "0123456789+-T", strict=True))
STAND_INS: dict[str, str] = {
    **dict(zip("₀₁₂₃₄₅₆₇₈₉₋", "0123456789-", strict=True)),
    "─": "-", "━": "-", "│": "|", "┃": "|", "┼": "+", "•": "*", "\u00a0": " ",
    "−": "-", "–": "-", "—": "-", "→": "->", "←": "<-", "↔": "<->", "≤": "<=", "≥": ">=", "≠": "!=",
    "≈": "~", "×": "x", "·": ".", "…": "...", "√": "sqrt", "μ": "u", "µ": "u", "‖": "||", "⟨": "<", "⟩": ">",
    "‘": "'", "’": "'", "“": '"', "”": '"', "§": "sec. ", "\u0302": "^", "\u0303": "~", "ŷ": "y^", "Ŷ": "Y^",
    "ȳ": "ybar", "Δ": "Delta", "Π": "Pi", "Σ": "Sum", "Φ": "Phi", "α": "alpha", "η": "eta", "θ": "theta",
    "λ": "lambda", "ρ": "rho", "σ": "sigma", "τ": "tau", "φ": "phi",
}


def _plain(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text, said = exc.object, []
    for at in range(exc.start, exc.end):
        char = text[at]
        if char in _SUPERSCRIPTS:  # "¹²³" (Latin-1's) among them
            after = at > exc.start and text[at - 1] in _SUPERSCRIPTS
            said.append(("" if after else "^") + _SUPERSCRIPTS[char])
        else:
            said.append(STAND_INS.get(char) or _escape(UnicodeEncodeError(exc.encoding, char, 0, 1, exc.reason))[0])
    return "".join(said), exc.end


codecs.register_error(PLAIN, _plain)


def legible(text: str, encoding: str | None) -> str:
    """`text` as a stream of `encoding` writes it with `PLAIN` (itself for UTF-8): what a table measures, so that
    its columns line up with the stand-ins written."""
    if encoding is None or codecs.lookup(encoding).name == "utf-8":
        return text
    return text.encode(encoding, PLAIN).decode(encoding)


def utf8_path(path: object) -> bool:
    """Whether a path's text is UTF-8: False for a name of bytes that are not (`$'\\xffstep_0.pt'`), which
    Python keeps as lone surrogates (`\\udcff`) and which a library given text cannot encode (torch's file
    mapping, safetensors, TorchScript, HDF5's strings)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: object) -> str:
    """A path as text that any UTF-8 writer takes: the path itself, but for the bytes of a name that are not
    UTF-8, written `\\xNN` (`ESCAPE`: the file `$'\\xffstep_0.pt'` is `\\xffstep_0.pt`). What the store records
    as a checkpoint's `path` and a model file's, and how fdl's messages show a path."""
    return str(path).encode("utf-8", ESCAPE).decode("utf-8")


#: What a terminal takes as a command rather than text: the C0 controls but tab and newline (ESC, BEL, a carriage
#: return), DEL and the C1 controls; and what makes it show text in another order than it is written or break a
#: line ("Trojan Source"): the Unicode bidirectional controls (the embeddings and overrides U+202A..U+202E, the
#: isolates U+2066..U+2069), the direction marks (U+200E, U+200F, U+061C) and the line and paragraph separators
#: (U+2028, U+2029)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` as fdl writes it for people (stderr, a log): each control character written `\\x1b`, as the bytes of
    a name that are not UTF-8 are, so that a file, tensor or module name of a folder from someone else cannot
    drive the terminal (an escape sequence setting its title, clearing the screen, hiding text); a bidirectional
    control or a line separator written `\\u202e`, so that such a name cannot show its text in a misleading order
    or break the line. Tab and newline stay, as does any other character (accents, CJK, emoji)."""
    return _CONTROLS.sub(lambda found: _escaped(ord(found.group())), text)


NAME_SHOWN = 80  # characters of a name from someone else's file that a message shows


#: The characters `terminal_safe` leaves in text that a name shown in a message may not hold: a newline in a key
#: broke the message's line where the name was shown, and a tab moved what followed it
_NAME_BREAKS = re.compile("[\t\n]")


def _length_said(name: str, limit: int) -> str:
    return f"… ({len(name)} characters)" if len(name) > limit else ""


def shown_name(name: str, limit: int = NAME_SHOWN) -> str:
    """A name read from a file (a tensor's, a shard's, an extension's, a pickled class's) as a message shows it:
    its first `limit` characters and, for a longer one, its length (`model.w… (1048583 characters)`), control
    characters escaped (`terminal_safe`, and newline and tab too, `\\x0a`: a name is one line): a forged name
    may be megabytes long, which written whole fills the terminal or a --json error."""
    safe = _NAME_BREAKS.sub(lambda found: _escaped(ord(found.group())), terminal_safe(name[:limit]))
    return safe + _length_said(name, limit)


def quoted_name(name: str, limit: int = NAME_SHOWN) -> str:
    """`shown_name` for a message that quotes the name as Python does (`'model.'`, `repr`, whose escapes of
    control characters it keeps: `'a\\nb'`): a short name exactly as `repr` writes it."""
    return repr(name[:limit]) + _length_said(name, limit)


def first_names(names: Sequence[str], limit: int) -> str:
    """`first_few` of names read from someone else's file (a checkpoint's keys), each as `shown_name` shows it."""
    return first_few([shown_name(name) for name in names[:limit + 1]], limit)


def listed_names(names: Sequence[str], limit: int) -> str:
    """The first `limit` of `names` (read from someone else's file), comma-separated, each as `shown_name` shows
    it, and nothing said of the rest: for a message whose own words say whether more follow."""
    return ", ".join(shown_name(name) for name in names[:limit])


def _escaped(code: int) -> str:
    """A character's escape as Python writes it: `\\x1b` (up to U+00FF), `\\u202e`."""
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
