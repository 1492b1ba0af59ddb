"""torchrun (scale-out) of `fdl analyze`: each rank analyses a block of the checkpoints (or, with
--shard-probe, a slice of the probe of each, its statistics all-reduced), rank 0 writes the store.

A rank other than 0 keeps its block in a part store of its own (`_rank_part`) until rank 0 has written
it; a later run takes in the parts an interrupted job left (`_take_in_rank_parts`). Built on the
pipeline's one-process loop (`pipeline._run_refs`), which calls back here for the probe slices.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fdl_cli import signals
from fdl_cli.errors import FdlError, StoreError, StoreLockedError, counted, shown_path
from fdl_cli.pipeline import (
    AnalyzeSummary,
    Announcer,
    _check_stored_files,
    _check_stored_to_read,
    _file_identity,
    _gram_route,
    _note_moved,
    _prepare,
    _probe_infos,
    _recorded_imports,
    _refresh_successors,
    _run_refs,
    _sha256_once,
    _store_opened,
    _stored_places,
    _WalkBack,
    _warn_constant_anchors,
    _warn_constant_outputs,
    _warn_statistics_moved,
    _watch_under_torchrun,
    invocation,
    record_shape,
)
from fdl_cli.progress import Reporter

if False:  # typing only
    from fdl_cli.checkpoints import CheckpointRef, LoadedCheckpoint
    from fdl_cli.pipeline import _Context
    from fdl_cli.probes import Probe
    from fdl_cli.store import CheckpointEntry


def _rank_part(out: Path, rank: int) -> Path:
    """Where rank `rank` (> 0) of a torchrun job keeps the checkpoints of its block until rank 0 has
    written them into `out`: a store of its own, so that they survive the job being killed."""
    return out.with_name(f"{out.name}.rank-{rank}")


def _rank_parts(out: Path) -> list[Path]:
    import glob as globbing

    prefix = f"{out.name}.rank-"
    found = out.parent.glob(globbing.escape(prefix) + "*")
    parts = [path for path in found if path.name[len(prefix):].isdigit() and path.is_file()]
    return sorted(parts, key=lambda path: int(path.name[len(prefix):]))  # in step order: rank 2 after rank 1


def _rank_part_origin(part: Path) -> Path:
    """Beside a part: the checkpoints its rank compared its block with, as files (step, sha256)."""
    return part.with_name(part.name + ".json")


def _rank_part_origin_copy(part: Path) -> Path:
    """The sidecar's copy under way (`_write_rank_part_origin`), renamed onto it once whole."""
    return part.with_name(part.name + ".json.tmp")


def _write_rank_part_origin(part: Path, reference: tuple[int, str], predecessor: tuple[int, str] | None) -> None:
    """Call it holding the part's lock (its writer open): `_remove_orphan_sidecars` removes, under that lock,
    a sidecar and a copy of one beside no part."""
    origin = {"reference": list(reference), "predecessor": list(predecessor) if predecessor else None}
    tmp = _rank_part_origin_copy(part)
    tmp.write_text(json.dumps(origin))
    os.replace(tmp, _rank_part_origin(part))


def _read_rank_part_origin(part: Path) -> dict[str, Any] | None:
    """The sidecar beside `part` (`_write_rank_part_origin`), or None where there is none that reads as JSON's
    object. Read it holding the part's lock to use it: its writer rewrites it (with the part) holding that lock."""
    try:
        origin = json.loads(_regular_bytes(_rank_part_origin(part)))
    except (OSError, ValueError):
        return None
    return origin if isinstance(origin, dict) else None


def _regular_bytes(path: Path) -> bytes:
    """The bytes of the regular file `path`; OSError for anything else: read, a named pipe left under a sidecar's
    name waits for a writer that never comes (`fdl analyze` hung at its start), /dev/zero never ends."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read()


def _kept_locked(part: Path, exc: StoreError) -> str:
    """The warning for a part a take-in or --overwrite keeps: another process holds the part's lock (`exc`)."""
    holder = f": {exc.got}" if exc.got else ""
    return (
        f"{part} is kept: another fdl process is writing it, probably a rank of another torchrun job on this "
        f"--out{holder}; wait for that process to end, or stop it, then run again"
    )


def _remove_rank_part(part: Path) -> None:
    """Call it holding the part's lock (`_WriterLock`), as its writer holds it: never a part that another process
    writes, nor one that a rank of another job opened afresh once the lock was free."""
    for path in (part, _rank_part_origin(part)):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_served_part(part: Path, identity: tuple[int, ...]) -> None:
    """A rank's end: its part (`identity`, as it closed it) once rank 0 has written its checkpoints into the store.

    Checked and removed holding the part's lock, which whoever writes a part or its sidecar holds: this job's rank 0
    may have released the store already, and a later job's rank that opens the part afresh in between would lose
    its new part and sidecar. Where another process holds the lock (a later job's take-in, which removes the part as
    its checkpoints are stored, or its rank writing a part of its own), the part is left to it."""
    from fdl_cli.store import _WriterLock

    lock = _WriterLock(part)
    try:
        lock.acquire()
    except FdlError:
        return
    try:
        with contextlib.suppress(OSError):
            if _file_identity(part) == identity:  # not a later job's part
                _remove_rank_part(part)
    finally:
        lock.release()  # removes the lock file


def _is_rank_part_origin_copy(path: Path) -> bool:
    """Whether `path` reads as what `_write_rank_part_origin` left of a sidecar when killed while writing
    it: the start of one (as short as nothing), or one whole; not a file of the user's."""
    try:
        text = _regular_bytes(path)
    except OSError:
        return False
    start = b'{"reference": '  # how json.dumps begins the sidecar
    return start.startswith(text) or text.startswith(start)


def _is_rank_part_origin(path: Path) -> bool:
    """Whether `path` reads as a sidecar a rank wrote (`_write_rank_part_origin`), not a file of the user's."""
    try:
        origin = json.loads(_regular_bytes(path))
    except (OSError, ValueError):
        return False
    return isinstance(origin, dict) and set(origin) == {"reference", "predecessor"}


def _remove_orphan_sidecars(out: Path) -> None:
    """What a rank killed before its part's first commit left beside `out`: the sidecar (`_rank_part_origin`), the
    part's lock file, its copies of a commit under way (STORE.rank-K.tmp-<pid>) and of the sidecar
    (STORE.rank-K.json.tmp, written holding the part's lock), without the part itself.
    Removed quietly, as the writer removes a store's own leftovers (its lock file, its copies of dead
    processes), and only holding the part's lock (no rank writes it now) with no part there: a part store,
    whatever it holds, is never removed here; a sidecar that does not read as one a rank wrote is left."""
    import glob as globbing
    import re

    from fdl_cli.store import _WriterLock, remove_stale_copies

    leftover = re.compile(re.escape(f"{out.name}.rank-") + r"(\d+)(\.json|\.json\.tmp|\.lock|\.tmp-\d+)")
    ranks = set()
    for path in out.parent.glob(globbing.escape(f"{out.name}.rank-") + "*"):
        if (match := leftover.fullmatch(path.name)) is not None:
            ranks.add(int(match.group(1)))
    for rank in sorted(ranks):
        part = _rank_part(out, rank)
        if os.path.lexists(part):
            continue  # a part (taken in, kept or left): its lock and sidecar are its own
        lock = _WriterLock(part)
        try:
            lock.acquire()
        except FdlError:
            continue  # a rank still running holds it (or it cannot be taken): left as it is
        try:
            if os.path.lexists(part):
                continue  # written meanwhile
            remove_stale_copies(part)
            if _is_rank_part_origin(_rank_part_origin(part)):
                with contextlib.suppress(OSError):
                    _rank_part_origin(part).unlink()
            if _is_rank_part_origin_copy(_rank_part_origin_copy(part)):
                with contextlib.suppress(OSError):
                    _rank_part_origin_copy(part).unlink()
        finally:
            lock.release()  # removes the lock file


def _take_in_rank_parts(
    ctx: _Context,
    writer: Any,
    out: Path,
    provenance: dict[str, Any],
    refs: Sequence[CheckpointRef],
    reference: tuple[int, str],
    *,
    into: Announcer,
) -> list[str]:
    """The checkpoints that ranks of a torchrun job stored in their part files before the job was
    stopped join the store (under --overwrite, the parts are removed unread).

    A part's checkpoint is taken in only if this run would have computed it alike: the store lacks
    it, it is among this run's checkpoints, its file is unchanged (same sha256), the reference's
    file is the one its rank compared with, and the checkpoint it was compared with (prev_step) is
    among this run's checkpoints, with none stored or taken in between the two, and unchanged:
    stored, taken in, or the file the part's rank compared its block with (recorded beside the
    part). A checkpoint between the two (its file failed for the part's rank, `_walk_back`, or its
    job did not select it) is not stored, so this run tries it: if it fails, the comparison stands,
    as in one run; if it is analysed, the part's checkpoint is refreshed to compare with it
    (`_refresh_successors`). The others are analysed again. A part is removed once each of its
    checkpoints is in the store, damaged or of a changed file (holding its lock, before releasing it);
    otherwise (not selected by --steps / --every, or analysed again by this run) it is kept for a
    later run, as is a part that is locked (a rank still running), unreadable or of another run, with
    a note; under --overwrite, a part that is locked is kept alike, with a warning.
    Each part's entries taken in are handed to the writer, committed and queued in `into` (the caller's announcer,
    `Announcer.queue_only`) with the signals held back throughout: a Ctrl-C anywhere from here on (the next part, a
    removal, the caller's next statement) finds them queued, and the caller's way out prints them. Returns the names
    of the parts kept."""
    from fdl_cli.store import StoreReader, StoreWriter, _WriterLock

    by_step = {ref.step: ref for ref in refs}
    order = sorted(by_step)
    kept: list[str] = []

    def unchanged(step: int, sha: str) -> bool:
        try:
            return step in by_step and _sha256_once(ctx, by_step[step].path) == sha
        except (OSError, FdlError):
            return False

    def no_part(part: Path) -> None:
        # A rank writes the sidecar before its part: without one this is no part of a torchrun job
        # (a user's own store named like one), never to be taken in or removed.
        ctx.reporter.warn(
            f"{part} is named like a part store of a torchrun job but has no readable "
            f"{_rank_part_origin(part).name} beside it: left as it is"
        )
        kept.append(part.name)

    def unopened(part: Path, exc: StoreError) -> None:
        # A part whose lock another process holds (a rank still writing it: never "remove it"; a later run takes
        # it in), or that could not be opened: kept, with a warning saying which
        ctx.reporter.warn(_kept_locked(part, exc) if isinstance(exc, StoreLockedError)
                          else f"{part} was left as it is ({exc.message}); remove it if it is not needed")
        kept.append(part.name)

    for part in _rank_parts(out):
        if _read_rank_part_origin(part) is None:  # a user's file; a take-in reads the sidecar again holding the lock
            no_part(part)
            continue
        if not ctx.options.resume:
            lock = _WriterLock(part)  # never a part that a rank still running writes
            try:
                lock.acquire()
            except StoreError as exc:
                unopened(part, exc)
                continue
            try:
                _remove_rank_part(part)  # nothing if its rank removed it since it was found
            finally:
                lock.release()  # removes the lock file
            continue
        taken: list[CheckpointEntry] = []
        settled = 0  # the part's steps now in the store, damaged, or of a changed file
        removed = False
        try:
            # its writer's lock: never a part that a rank still running writes; the part looked for holding it
            with StoreWriter(part, provenance=provenance, probes=_probe_infos(ctx)) as locking, (
                StoreReader(part) if os.path.lexists(part) else contextlib.nullcontext()
            ) as reader:
                # given nothing, it writes nothing: not the probe chance that a part of an older fdl lacks, into a
                # part removed below (whose commit failed, and the part, taken in, was said to be left as it is)
                locking.hold_back_chance()
                if reader is None:
                    continue  # removed since it was found, by its rank at its end (`_remove_served_part`)
                # The sidecar as it is under that lock (whoever writes the part writes it holding the lock): read
                # before, it might be an older job's, beside a part that a rank of another job wrote afresh since.
                origin = _read_rank_part_origin(part)
                if origin is None:
                    no_part(part)
                    continue
                same_reference = origin.get("reference") == list(reference)
                predecessor = origin.get("predecessor")
                have = dict(writer.completed())  # step -> sha256 of the file stored (or taken in)
                part_records = {record["step"]: record for record in reader.records(all_series=True)}
                part_sha = {step: record["sha256"] for step, record in part_records.items()}
                # its paths as typed by the job's ranks, relative to the folder the job ran in, not this one's
                places = _stored_places(part, reader)
                steps = sorted(part_sha)
                for step in steps:
                    ref = by_step.get(step)
                    if step in have or ref is None:
                        # settled: stored, or its file is gone (nothing will ever take it in)
                        settled += step in have or not any(
                            place.exists() for place in (places[step].candidates() if step in places
                                                         else [Path(str(part_records[step]["path"]))]))
                        continue
                    try:
                        entry = reader.entry(step)
                    except StoreError:
                        settled += 1  # damaged: analysed again
                        continue
                    if not same_reference or not unchanged(step, entry.sha256):
                        settled += 1  # computed from other files than this run's
                        continue
                    compared_steps = {item.scalars.get("prev_step") for item in entry.series}
                    if len(compared_steps) != 1:
                        continue
                    compared_step = compared_steps.pop()
                    before = None if compared_step is None else int(compared_step)
                    if before is not None and (before not in by_step or before >= step):
                        continue  # compared with a checkpoint that is not among this run's (--steps, --every)
                    between = order[(order.index(before) + 1 if before is not None else 0) : order.index(step)]
                    if any(other in have for other in between):
                        continue  # this run compares it with one stored or taken in after that one
                    if before is not None:
                        # the file its rank compared it with: the part's own, or the one before the block
                        compared = part_sha.get(before)
                        if compared is None and predecessor is not None and predecessor[0] == before:
                            compared = predecessor[1]
                        if compared is None:
                            continue
                        if before in have:
                            if have[before] != compared:
                                continue  # the store holds another file's numbers for it
                        elif not unchanged(before, compared):
                            continue  # compared with a file that has changed since
                    taken.append(replace(entry, path=shown_path(ref.path)))
                    have[step] = entry.sha256
                # durable, and the caller's to print: never one without the other (a Ctrl-C between the adds and the
                # commit had the writer's close commit some, printed by nobody)
                with signals.deferred():
                    for entry in taken:
                        writer.add(entry)
                    writer.flush()
                    into.queue_only(taken)
                if settled + len(taken) == len(steps):
                    # Still holding the part's lock: once it is released, a rank of another job on this --out may
                    # open the part afresh, and a removal then deleted its new part and sidecar.
                    _remove_rank_part(part)
                    removed = True
        except StoreError as exc:
            unopened(part, exc)
            continue
        if taken:
            ctx.reporter.note(
                f"{counted(len(taken), 'checkpoint')} that a rank of an interrupted torchrun job stored in "
                f"{part.name} {'was' if len(taken) == 1 else 'were'} added to {out.name}"
            )
        if not removed:
            left = len(steps) - settled - len(taken)
            ctx.reporter.note(
                f"{part.name} is kept: {left} of its checkpoints {'is' if left == 1 else 'are'} not in {out.name} (not "
                f"selected by this run, or analysed again); a later run takes {'it' if left == 1 else 'them'} in"
            )
            kept.append(part.name)
    _remove_orphan_sidecars(out)  # after the parts: --overwrite removes a part and its sidecar, not its lock file
    return kept


class _LocalWriter:
    """Stands in for the StoreWriter on every rank of a torchrun job: keeps this rank's entries.

    `completed` marks the steps this rank must not analyse (done in the store, or another rank's).
    """

    def __init__(self, completed: dict[int, str]) -> None:
        self._completed = completed
        self.entries: list[CheckpointEntry] = []

    def completed(self) -> dict[int, str]:
        return dict(self._completed)

    def add(self, entry: CheckpointEntry | None) -> list[CheckpointEntry]:
        if entry is not None:
            self.entries.append(entry)
        return []


class _StoringWriter(_LocalWriter):
    """Rank 0's stand-in: it also hands the checkpoints that rank 0 owns to the store as soon as they
    are analysed, so they become durable during the run (by the StoreWriter's throttled commits),
    not only when every rank is done; the other ranks' entries are written once gathered.

    It never raises: a store error here would leave rank 0's loop while the other ranks wait in a
    collective (with --shard-probe, every checkpoint is one). The first error is warned of and kept;
    the entries stay buffered in the writer, and writing the gathered rest at the end retries them.
    """

    def __init__(
        self,
        completed: dict[int, str],
        writer: Any,
        owned: set[int],
        announce: Announcer,
        reporter: Reporter,
    ) -> None:
        super().__init__(completed)
        self._writer, self._owned, self._announce, self._reporter = writer, owned, announce, reporter
        self.handed: set[int] = set()
        self.error: FdlError | None = None

    def add(self, entry: CheckpointEntry | None) -> list[CheckpointEntry]:
        super().add(entry)
        if entry is not None and entry.step in self._owned:
            self.handed.add(entry.step)  # buffered by the writer even when add() raises
            self._store(lambda: self._writer.add(entry))
        return []

    def flush(self) -> None:
        """Commit what rank 0 handed over (before it waits for the other ranks, which may take long:
        the writer's throttled commits would otherwise leave its last checkpoints buffered meanwhile)."""
        self._store(self._writer.flush)

    def tick(self) -> list[CheckpointEntry]:
        """The writer's due commit, between probe batches and while rank 0 waits for a read (`ctx.tick`)."""
        self._store(self._writer.tick)
        return []

    def _store(self, call: Callable[[], list[CheckpointEntry]]) -> None:
        try:
            self._announce.take(call)
        except FdlError as exc:
            if self.error is None:
                self.error = exc
                self._reporter.warn(f"{exc.message}; retried when the other ranks' checkpoints are written")


#: what the other ranks wait for while rank 0 opens the store and takes in the parts of an earlier job
_OPENING = "rank 0 to open the store (and take in the part stores of an interrupted job)"


def _analyze_distributed(
    ctx: _Context,
    refs: list[CheckpointRef],
    out: Path,
    summary: AnalyzeSummary,
    on_record: Callable[[dict[str, Any]], None] | None,
    provenance: dict[str, Any],
    reference: CheckpointRef,
    preloaded: tuple[LoadedCheckpoint, str],
) -> None:
    """One rank of `torchrun ... -m fdl_cli analyze`: analyse this rank's share, rank 0 writes all.

    Checkpoint sharding: the checkpoints still missing from the store are split into contiguous
    blocks in step order; a rank also analyses (and discards) the reference and the checkpoint before
    its block when they are not in the store, so cka/overlap to both are those of one process; when
    that checkpoint fails, the rank analyses the ones before it in turn until one is analysed (or
    one is stored, or is the reference), as one process skips over a file that fails (`_WalkBack`).
    With --shard-probe every rank takes every checkpoint and one slice of the probe (all-reduced).
    """
    from fdl_cli import distributed
    from fdl_cli.store import StoreWriter

    world, options = ctx.world, ctx.options
    if options.watch:
        raise distributed.alike(_watch_under_torchrun())
    # Every rank, before rank 0 opens the store (and takes in parts): each hashes its share of the
    # stored files to check, and each raises alike when one changed (from the hashes every rank gathered).
    try:
        touched = _check_stored_files(ctx, out, refs, None)
    except FdlError as exc:
        raise distributed.alike(exc) from None
    writer = None
    part = None
    stored: set[int] = set()

    def count(entry: CheckpointEntry, refreshed: bool) -> None:
        (summary.refreshed if entry.step in stored else summary.analysed).append(entry.step)

    # rank 0's; what is left queued is announced by the `finally` below
    announce = Announcer(count, on_record, record_shape(ctx))
    status: tuple[Any, ...] = ("error", "rank 0 stopped while opening the store", [])
    # One `try` from the store's opening to the end: its `finally` closes the writer and prints what was queued (the
    # records of the parts taken in, queued with each part's commit), whatever stops rank 0 and wherever. The opening
    # had a `try` of its own: a Ctrl-C as its last wait returned left the writer open (its lock file behind the
    # process) or, at the next statement, the records of the parts it took in unprinted.
    try:
        if world.writes:
            try:
                writer = StoreWriter(
                    out,
                    provenance=provenance,
                    probes=_probe_infos(ctx),
                    overwrite=not options.resume,
                    min_interval=options.min_commit_interval,
                    invocation=invocation(ctx),  # rank 0's: the other ranks computed their blocks on their own devices
                    model_imports=_recorded_imports(ctx),
                )
                _store_opened(ctx, writer)
                writer.note_file_signatures(touched)
                # before any other rank opens its part afresh
                left = _take_in_rank_parts(ctx, writer, out, provenance, refs, (reference.step, preloaded[1]),
                                           into=announce)
                status = ("ok", sorted(writer.completed()), left)
            except BaseException as exc:  # every rank waits for this status, whatever stopped rank 0
                if isinstance(exc, FdlError):
                    status = ("error", exc.message, [])
                    distributed.alike(exc)  # rank 0 says it; the others stop with it
                raise
            finally:
                # Before any print (the `finally` below): a print that waits (rank 0's stdout a full pipe nobody
                # reads) kept the other ranks waiting for this status up to FDL_TORCHRUN_TIMEOUT.
                status = distributed.broadcast_from_writer(status, world, _OPENING)
        else:
            status = distributed.broadcast_from_writer(status, world, _OPENING)
            if status[0] == "error":
                raise distributed.alike(FdlError(f"rank 0 could not open the store: {status[1]}"))
        assert writer is not None or not world.writes
        stored, kept = set(status[1]), set(status[2])
        todo = [ref for ref in refs if ref.step not in stored]
        # Stored checkpoints read back (a block's previous, the reference) checked by rank 0 for every rank,
        # before any work: one rank stopping on its own would leave the others waiting in a collective.
        problem: tuple[str, str | None, str | None] | None = None
        # not while an --overwrite store holds nothing yet: none of the file it replaces is read back (`pipeline._run_refs`)
        if world.writes and todo and (options.resume or stored):
            try:
                _check_stored_to_read(ctx, out, refs, {ref.step for ref in todo}, reference)
            except StoreError as exc:
                problem = (exc.what, exc.got, exc.fix)
        problem = distributed.broadcast_from_writer(problem, world, "rank 0 to check the stored checkpoints read back")
        if problem is not None:
            raise distributed.alike(StoreError(problem[0], got=problem[1], fix=problem[2]))
        mine = todo if options.shard_probe else distributed.block(todo, world)
        owned = {ref.step for ref in mine}
        needed = set(owned)
        chain: list[CheckpointRef] = []  # the way back from the block (`_WalkBack`)
        if mine and not options.shard_probe:
            needed.add(reference.step)
            position = [ref.step for ref in refs].index(mine[0].step)
            if position > 0:
                needed.add(refs[position - 1].step)
            for earlier in reversed(refs[:position]):
                if earlier.step in stored or earlier.step == reference.step:
                    break
                chain.append(earlier)
        needed -= stored  # what the store holds is read back from it
        skip = {ref.step: "" for ref in refs if ref.step not in needed}
        announce(())  # those taken in; a Ctrl-C in a print: the rest printed by the `finally` below
        # what this rank notes, warns of or reports from here is its own (opening its part too)
        said = {kind: len(getattr(ctx.reporter, kind, ())) for kind in _RELAYED}
        noted_once = dict(ctx.noted_once)
        with_part = writer is None and not options.shard_probe and owned and _rank_part(out, world.rank).name not in kept
        if with_part:  # never over a part kept by rank 0
            before = refs[[ref.step for ref in refs].index(mine[0].step) - 1] if refs[0].step != mine[0].step else None
            part = _open_rank_part(ctx, out, provenance, (reference.step, preloaded[1]), before)
        local: _LocalWriter
        if writer is not None:
            local = _StoringWriter(skip, writer, owned, announce, ctx.reporter)
        elif part is not None:
            local = _StoringWriter(skip, part, owned, Announcer.silent(), ctx.reporter)
        else:
            local = _LocalWriter(skip)
        local_summary = AnalyzeSummary(store=out)

        def moved(compared: tuple[int, str | None] | None) -> None:
            """The block is compared with another checkpoint than the one before it (which failed): the
            part's sidecar names that one's file, before the part holds any checkpoint."""
            if part is None:
                return
            try:
                predecessor = None
                if compared is not None:
                    step, sha = compared
                    if sha is None:  # stored, or the reference: not read by this rank
                        sha = preloaded[1] if step == reference.step else _sha256_once(ctx, ctx.refs_by_step[step].path)
                    predecessor = (step, sha)
                _write_rank_part_origin(_rank_part(out, world.rank), (reference.step, preloaded[1]), predecessor)
            except (OSError, FdlError):
                pass  # it still names the file that failed: the part's checkpoints are analysed again, not taken in

        walk = _WalkBack(chain, moved) if chain else None
        failure = None
        try:
            _run_refs(ctx, refs, local, local_summary, Announcer.silent(), reference, preloaded, out, walk)
        except distributed.WaitError:
            raise  # a collective of --shard-probe that could not complete: the gather below would wait in vain
        except FdlError as exc:
            failure = exc.message
            if writer is not None:
                writer.hold_back_chance()  # before the flushes below: the run ends in this error
        if isinstance(local, _StoringWriter):
            local.flush()
        part_file: tuple[int, ...] | None = None  # this rank's part file, to remove it and no other
        if part is not None:
            with contextlib.suppress(Exception):
                part.close()  # all of it durable before rank 0 is sent the entries
                part_file = _file_identity(_rank_part(out, world.rank))
        mine_paths = {str(ref.path) for ref in mine}
        constant = _constant_steps(ctx, owned)
        payload = (
            [entry for entry in local.entries if entry.step in owned],
            [item for item in local_summary.failed if item[0] in mine_paths],
            failure,
            # what it noted, warned of and reported on its checkpoints (a file holding an EMA copy, a clipped
            # eigenvalue, a file that failed): the other ranks show nothing, rank 0 says it
            _RankMessages() if world.speaks else _RankMessages(
                **{kind: list(getattr(ctx.reporter, kind, ())[said[kind]:]) for kind in _RELAYED},
                once={kind: message for kind, message in ctx.noted_once.items() if kind not in noted_once}),
            constant,
            # the checkpoints of its block refused for their values: rank 0 records them in the store
            [item for item in local_summary.refused if item[1] in mine_paths],
        )
        gathered = distributed.gather_to_writer(payload, world, "the other ranks to finish their checkpoints")
        if gathered is not None:
            _say_other_ranks_messages(ctx.reporter, [part[3] for part in gathered], ctx.noted_once)
            _warn_constant_steps(ctx, [part[4] for part in gathered])
        first_failure: str | None = None
        written = False
        if writer is not None and gathered is not None:
            # A rank's own failure comes first: it stopped that rank's run (as it stops one process,
            # before the successors are refreshed), and what follows from it must not hide it.
            failures = [part[2] for part in gathered if part[2] is not None]
            if failures:
                writer.hold_back_chance()  # another rank's error ends the run too
            try:
                assert isinstance(local, _StoringWriter)
                _write_gathered(writer, gathered, summary, announce, local.handed)
                written = True
                if not failures:
                    ctx.refs_by_step = {r.step: r for r in refs}
                    ctx.failed_paths = {path for path, _ in summary.failed}  # every rank's
                    _refresh_successors(ctx, writer, out, [r.step for r in refs], announce)
            except FdlError as exc:
                failures.append(exc.message)
            first_failure = failures[0] if failures else None
            summary.already.extend(ref.step for ref in refs if ref.step in stored)
        # Every rank ends with rank 0's account (the CLI prints it on each), and fails alike.
        outcome = distributed.broadcast_from_writer(
            (list(summary.analysed), list(summary.already), list(summary.failed), first_failure, written), world,
            "rank 0 to write the other ranks' checkpoints into the store",
        )
        summary.analysed[:], summary.already[:], summary.failed[:], first_failure, written = outcome
        if part_file is not None and written:  # rank 0 has them in the store: the part has served
            _remove_served_part(_rank_part(out, world.rank), part_file)
        if first_failure is not None:
            raise distributed.alike(FdlError(first_failure))  # rank 0's account, on every rank
    except BaseException:
        if writer is not None:
            writer.hold_back_chance()  # as leaving a `with` block on an error
        raise
    finally:
        if part is not None:
            with contextlib.suppress(Exception):
                part.close()  # no-op if closed above
        if writer is not None:
            try:
                # On the way out of a Ctrl-C too: what the last commit makes durable is printed and counted, as by
                # one process (its `finally`); closed alone, the writer committed it unannounced.
                announce.take(writer.flush)
            finally:
                writer.close()


def _open_rank_part(
    ctx: _Context, out: Path, provenance: dict[str, Any], reference: tuple[int, str], before: CheckpointRef | None
) -> Any:
    """A rank's part store (see `_rank_part`), fresh (rank 0 took in the last job's before this
    job's ranks started theirs), with the files its block is compared with recorded beside it (the
    reference's, and `before`'s, the checkpoint before the block; the rank records another one
    there, before its block is analysed, when `before` fails: `_WalkBack.moved`); None if it cannot
    be opened: the part only makes the rank's checkpoints durable early, they reach rank 0 at the
    end all the same."""
    from fdl_cli.store import StoreWriter

    assert ctx.world is not None
    part = _rank_part(out, ctx.world.rank)
    try:
        predecessor = (before.step, _sha256_once(ctx, before.path)) if before else None
        writer = StoreWriter(
            part,
            provenance=provenance,
            probes=_probe_infos(ctx),
            overwrite=True,
            min_interval=ctx.options.min_commit_interval,
            invocation=invocation(ctx),  # this rank's: taken in with its checkpoints (`_take_in_rank_parts`)
        )
    except Exception:  # noqa: BLE001 - a full disk, a lock that fails: the rank goes on without a part
        return None
    if os.path.lexists(part):
        # Looked for holding the part's lock: rank 0 took in (or kept, and this rank does not open) every part there
        # was, so this one was written since, by a rank of another job on this --out whose rank 0 is gone. Opened
        # afresh, it got this rank's sidecar (its checkpoints read as compared with this job's files) and was
        # replaced at the first commit (its checkpoints lost); left as it is, a later run takes it in.
        with contextlib.suppress(Exception):
            writer.close()  # given nothing: it writes nothing
        ctx.reporter.warn(
            f"{part} was written after rank 0 took in the part stores, by a rank of another torchrun job on this "
            f"--out: left as it is (a later run takes it in); rank {ctx.world.rank} keeps its checkpoints in memory "
            "until rank 0 stores them"
        )
        return None
    try:
        # Holding the part's lock (the writer's), before the part's first commit: a cleanup of another job
        # (`_remove_orphan_sidecars`) never removes the sidecar of a part about to be written.
        _write_rank_part_origin(part, reference, predecessor)
    except Exception:  # noqa: BLE001 - as above; the writer was given nothing: it writes nothing
        with contextlib.suppress(Exception):
            writer.close()
        return None
    return writer


#: what a rank says that rank 0 relays (`_RankMessages`), by the name of its list on a reporter
_RELAYED = ("notes", "warnings", "errors")


@dataclass(frozen=True)
class _RankMessages:
    """What a rank other than 0 said on its own checkpoints (its reporter shows nothing), for rank 0 to say."""

    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: of `notes`, those said once a run (`_note_once`), by kind
    once: dict[str, str] = field(default_factory=dict)


def _say_other_ranks_messages(reporter: Reporter, gathered: Sequence[_RankMessages], noted_once: dict[str, str]) -> None:
    """The notes, warnings and errors each other rank met on its own checkpoints, said by rank 0 naming that
    rank, so that a torchrun job says what one process says of the run. Each once: what rank 0 said too, or
    a lower rank, is not said again; nor a note said once a run (`_note_once`) whose kind rank 0
    (`noted_once`) or a lower rank noted already: one process says it of the first file only."""
    kinds = set(noted_once)
    unsaid: list[set[str]] = []  # each rank's once-a-run notes of a kind said before
    for part in gathered:
        unsaid.append({message for kind, message in part.once.items() if kind in kinds})
        kinds |= part.once.keys()
    for kind, say in zip(_RELAYED, (reporter.note, reporter.warn, reporter.error), strict=True):
        said = set(getattr(reporter, kind, ()))
        for rank, part in enumerate(gathered):
            for message in getattr(part, kind):
                if message not in said and message not in unsaid[rank]:
                    said.add(message)
                    say(f"rank {rank}: {message}")


#: what a rank's checkpoints warned of once a batch (`_constant_steps`): constant features, constant outputs, and
#: features moved by buffers alone (`_Context.statistics_moved`, `buffers_moved`)
_BatchWarnings = tuple[dict[str, list[int]], dict[str, dict[int, bool]], dict[str, tuple[list[int], list[str]]],
                       dict[str, list[str]]]


def _constant_steps(ctx: _Context, owned: set[int]) -> _BatchWarnings:
    """This rank's steps of `owned` at which features or outputs were constant (`_Context.constant_anchors`,
    `constant_outputs`) or features moved by buffers alone (`statistics_moved`, `buffers_moved`), taken from `ctx`: the
    others it analysed (the reference, the one before its block) are another rank's to say."""
    anchors = {where: [step for step in steps if step in owned] for where, steps in ctx.constant_anchors.items()}
    outputs = {name: {step: empty for step, empty in steps.items() if step in owned}
               for name, steps in ctx.constant_outputs.items()}
    statistics = {where: ([step for step in steps if step in owned], modules)
                  for where, (steps, modules) in ctx.statistics_moved.items()}
    ctx.constant_anchors.clear()
    ctx.constant_outputs.clear()
    buffers = dict(ctx.buffers_moved)
    ctx.statistics_moved.clear()
    ctx.buffers_moved.clear()
    return anchors, outputs, statistics, buffers


def _warn_constant_steps(ctx: _Context, gathered: Sequence[_BatchWarnings]) -> None:
    """Rank 0: one warning of constant features, one of constant outputs and one of features moved by buffers
    alone naming every rank's steps and moved buffers, as one process says them (`_warn_constant_anchors`,
    `_warn_constant_outputs`, `_warn_statistics_moved`), not one a rank."""
    for anchors, outputs, statistics, buffers in gathered:
        for where, steps in anchors.items():
            if steps:
                ctx.constant_anchors.setdefault(where, []).extend(steps)
        for name, flags in outputs.items():
            if flags:
                ctx.constant_outputs.setdefault(name, {}).update(flags)
        for where, (steps, modules) in statistics.items():
            if steps:
                _note_moved(ctx, where, steps, modules, buffers.get(where, []))
    _warn_constant_outputs(ctx)
    _warn_constant_anchors(ctx)
    _warn_statistics_moved(ctx)


def _write_gathered(
    writer: Any,
    gathered: list[Any],
    summary: AnalyzeSummary,
    announce: Announcer,
    handed: set[int],
) -> None:
    """Rank 0: the entries of every rank not yet `handed` to the writer (rank 0's own were, as they
    were analysed) into the store in step order, then everything committed; failures into the summary."""
    entries = sorted(
        (entry for part in gathered for entry in part[0] if entry.step not in handed), key=lambda entry: entry.step
    )
    seen = {path for path, _ in summary.failed}
    for part in gathered:
        for path, reason in part[1]:
            if path not in seen:
                summary.failed.append((path, reason))
                seen.add(path)
        for refused in part[5]:
            writer.refuse(*refused)  # once a step: each checkpoint is one rank's
    for entry in entries:
        announce.take(functools.partial(writer.add, entry))
    announce.take(writer.flush)


def _probe_slice(ctx: _Context, probe: Probe) -> tuple[Any, Any]:
    """This rank's contiguous slice of the probe (--shard-probe)."""
    from fdl_cli.distributed import block_bounds
    from fdl_cli.probes import row_range

    start, stop = block_bounds(int(probe.x.shape[0]), ctx.world)
    # Narrower readers where the probe is read in place: nothing of the slice is read here.
    return row_range(probe.x, start, stop), (row_range(probe.y, start, stop) if probe.y is not None else None)


def _reduce_slices(ctx: _Context, model: Any, probe: Probe, results: dict[str, Any]) -> dict[str, Any]:
    """Sum every layer's statistics over the ranks; on rank 0, the anchors of the whole probe's start."""
    from dataclasses import replace

    from fdl_cli.distributed import all_reduce_moments
    from fdl_cli.extract import anchor_features

    options = ctx.options
    reduced = {label: replace(result, moments=all_reduce_moments(result.moments, ctx.world, ctx.device))
               for label, result in results.items()}
    count = min(options.anchor_size, int(probe.x.shape[0]))
    if ctx.world.writes and any(result.anchor_features.shape[0] < count for result in reduced.values()):
        sums: dict[str, Any] = {}
        anchors = anchor_features(
            model, ctx.layers, probe.x, device=ctx.device, dtype=options.dtype,
            batch_size=options.batch_size, anchor_size=options.anchor_size, moments=sums,
        )
        reduced = {label: replace(result, anchor_features=anchors[label], anchor_moment=sums.get(label))
                   for label, result in reduced.items()}
    return reduced


def _contribute_slice(ctx: _Context, loaded: LoadedCheckpoint) -> None:
    """A rank other than 0 under --shard-probe: its probe slices' statistics into the all-reduce.

    It also computes the measures of the summed statistics (discarded), so that a checkpoint whose
    statistics are degenerate fails on every rank alike and no rank waits in a later all-reduce.
    """
    from fdl_cli.extract import extract
    from fdl_cli.spectral import measure

    options = ctx.options
    model = _prepare(ctx, loaded)
    for probe in ctx.probes:
        x, y = _probe_slice(ctx, probe)
        results = _sliced(
            ctx, True, loaded.ref, extract, model, ctx.layers, x, y, task=probe.task or "none",
            binary_logit=ctx.binary_logit, device=ctx.device,
            dtype=options.dtype,
            batch_size=options.batch_size, anchor_size=1, keep_features=_gram_route(int(probe.x.shape[0])),
            product_dtype=options.product_dtype,
        )
        results = _reduce_slices(ctx, model, probe, results)
        for spec in ctx.layers:
            moments = results[spec.label].moments
            measure(moments, center=options.center, top_k=options.top_k, dlr_energy=options.dlr_energy)


def _sliced(
    ctx: _Context, sharded: bool, ref: CheckpointRef, work: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """`work(*args, **kwargs)` (one probe slice's pass of checkpoint `ref`); under --shard-probe every rank
    learns whether any rank's pass failed and raises the same error, before the statistics are
    all-reduced (a failure on one slice alone left the other ranks waiting in the all-reduce). An
    allocation that failed there counts (`resources.memory_error`), or the others waited for ever."""
    if not sharded:
        return work(*args, **kwargs)
    from fdl_cli import resources
    from fdl_cli.distributed import agree_on_failure

    try:
        results = work(*args, **kwargs)
    except FdlError as exc:
        agree_on_failure(exc, ctx.world)
        raise
    except Exception as exc:
        if not resources.out_of_memory(exc):
            raise
        # the forward pass lets an allocation failure through (it is no error of the model's): said alike
        # on every rank, or the others waited in the all-reduce for ever
        error = resources.memory_error(exc, f"at step {ref.step} ({ref.path})")
        agree_on_failure(error, ctx.world)
        raise error from None
    agree_on_failure(None, ctx.world)
    return results
