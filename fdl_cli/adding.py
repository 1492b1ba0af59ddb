"""Adding a probe or a layer to a stored run: which stored checkpoints lack which (probe, layer) series, what
a resume that adds them says, and what it refuses, before any work (docs/store.md, "Adding a probe or a layer").

`fdl analyze` with probes or layers beside every one a store holds (every other option as the store's)
analyses, at each stored checkpoint, only the series it lacks (`pipeline._analyze_one(wanted=...)`, whose
entries the store writes into the stored groups: `CheckpointEntry(series_only=True)`), and everything at new
checkpoints. A store whose adding stopped midway (Ctrl-C, a failure) records the series still missing
somewhere (`pending_series`), and the next resume with the store's probes and layers adds them. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdl_cli.errors import FdlError, StoreError

Series = tuple[str, str]


@dataclass(frozen=True)
class Addition:
    """The stored checkpoints of a resume that lack series of this run: `lacking` step -> those series."""

    lacking: Mapping[int, frozenset[Series]]
    #: what the run adds ("probe 'test'"), or None when the store recorded them already (a resumed adding)
    added: str | None
    stored: int  # the checkpoints the store holds
    #: with `added`: step -> the series an earlier `fdl analyze` that stopped was adding (`pending_series`) that
    #: the stored checkpoint lacks yet, which this run adds too
    unfinished: Mapping[int, frozenset[Series]] = field(default_factory=dict)
    #: step -> path of the stored checkpoints of `lacking` whose file is there but cannot be read (a bad
    #: checkpoint of the run, said as such): they fail, as in any run, and the others are given the series
    unreadable: Mapping[int, str] = field(default_factory=dict)

    def note(self, out: Path) -> str:
        """'adding probe 'test' to the 300 stored checkpoints of run.h5'."""
        count = len(self.lacking)
        if self.added is not None:
            if count == self.stored:
                where = f"the {count} stored checkpoints" if count > 1 else "the stored checkpoint"
            else:
                where = f"{count} of the {self.stored} stored checkpoints"
            text = f"adding {self.added} to {where} of {out} (analysing only the series they lack)"
            if self.unfinished:  # said too: the summary counts those checkpoints with the others
                text += f", and {self._earlier(self.unfinished, of='them')}"
            return text + self._unreadable()
        return f"adding {self._earlier(self.lacking, of=f'the {self.stored} stored checkpoints of {out}')}" + (
            self._unreadable())

    def _unreadable(self) -> str:
        """'; not to step 20, whose file cannot be read ...', or ''."""
        if not self.unreadable:
            return ""
        steps = sorted(self.unreadable)
        one = len(steps) == 1
        return (f"; not to step{'' if one else 's'} {', '.join(map(str, steps))}, whose file{'' if one else 's'} "
                f"({', '.join(self.unreadable[step] for step in steps)}) cannot be read now (a bad checkpoint, "
                f"said above): the store keeps {'it' if one else 'them'} as {'it is' if one else 'they are'}, and "
                "the same command adds the rest once the file is mended")

    @staticmethod
    def _earlier(lacking: Mapping[int, frozenset[Series]], *, of: str) -> str:
        """'test/fc to 120 of OF, which lack it (an earlier `fdl analyze` that added it stopped ...)'."""
        series = sorted({key for keys in lacking.values() for key in keys})
        shown = ", ".join(f"{probe}/{layer}" for probe, layer in series)
        it = "it" if len(series) == 1 else "them"
        return (f"{shown} to {len(lacking)} of {of}, which lack {it} (an earlier `fdl analyze` that added {it} "
                "stopped before it was done)")


def stored_addition(out: Path, provenance: Mapping[str, Any], probes: Sequence[Any]) -> Addition | None:
    """What a resume of `out` with this run's `provenance` and `probes` (ProbeInfo) adds; None when it adds
    nothing, or when the store is no resume of this run (the writer refuses it, saying why) or cannot be read."""
    from fdl_cli.store import StoreReader, resume_differences

    try:
        with StoreReader(out) as reader:
            differences, grown = resume_differences(
                reader.provenance, reader.probes(), provenance, {probe.name: probe for probe in probes})
            if differences:
                return None
            series = set(reader.pending_series) | (set(grown.series) if grown is not None else set())
            lacking = reader.lacking(series)
            unfinished = reader.lacking(reader.pending_series)
            stored = len(reader.checkpoint_steps())
    except FdlError:
        return None
    if not lacking and grown is None:
        return None
    if grown is None:
        return Addition(lacking=lacking, added=None, stored=stored)
    return Addition(lacking=lacking, added=grown.describe(), stored=stored, unfinished=unfinished)


def check_addition(
    addition: Addition, out: Path, *, steps_now: Mapping[int, str], drop: bool, distributed: bool
) -> None:
    """Refuse, before anything is read or written, what a resume that adds series cannot do: run under
    torchrun, go with --drop (which mends a store of an earlier fdl, alone), or leave a stored checkpoint
    without them because its file is not among this run's checkpoints (`steps_now`: step -> path) (deleted,
    or left out by --glob / --step-regex): each stored checkpoint holds every series of its store. --redo
    goes with it: a checkpoint analysed again is analysed whole."""
    added = addition.added or "the series " + ", ".join(
        sorted({f"{probe}/{layer}" for keys in addition.lacking.values() for probe, layer in keys}))
    if distributed:
        raise FdlError(
            f"adding {added} to {out} runs as one process, not under torchrun",
            fix="run `fdl analyze ...` (or `python -m fdl_cli analyze ...`) without torchrun to add it; later runs "
                "of new checkpoints may use torchrun again",
        )
    if drop:
        raise FdlError(
            f"--drop and adding {added} to {out} together: --drop mends a store alone",
            fix="run `fdl analyze ... --drop STEPS` with the store's own probes and layers first, then this command "
                "without --drop",
        )
    gone = [step for step in addition.lacking if step not in steps_now]
    if gone:
        shown = ", ".join(map(str, gone[:8])) + (f" and {len(gone) - 8} more" if len(gone) > 8 else "")
        raise StoreError(
            f"cannot add {added} to {out}: the file{'s' if len(gone) > 1 else ''} of its stored step"
            f"{'s' if len(gone) > 1 else ''} {shown} {'are' if len(gone) > 1 else 'is'} not among this run's "
            "checkpoints (deleted, or not found by its sources, --glob or --step-regex), and every stored checkpoint "
            "holds each series of its store",
            fix="restore the files (or select them), or analyse this run's probes and layers into a store of their "
                "own (another --out), or re-analyse the checkpoints present with --overwrite",
        )
