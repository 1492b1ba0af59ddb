"""Scale-out under torchrun: rank/world from the environment, process group, sharding, reductions.

`torchrun --nproc-per-node N -m fdl_cli analyze ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK set. The checkpoints are split into N contiguous blocks (one per rank);
with `--shard-probe` every rank instead takes every checkpoint and a contiguous slice of the probe,
and the statistics of the slices are summed across ranks (all-reduce: the sums are exact, so the
result is the single-process one up to float64 addition order). Only rank 0 writes the store.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op for a single process.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn, TypeVar

import numpy as np

from fdl_cli.errors import FdlError, counted
from fdl_cli.spectral import Moments

T = TypeVar("T")
E = TypeVar("E", bound=FdlError)

#: Moments fields that are not sums: the shift points (made common before the all-reduce).
_SHIFT_FIELDS = ("shift_f", "shift_o", "shift_y")
#: Moments fields that are float64 sums (all-reduced by addition); the scalars n, n_correct and
#: sum_xent (present on every rank or on none: the ranks share the probe's task) are added too.
_SUM_FIELDS = tuple(
    item.name
    for item in fields(Moments)
    if item.name not in ("n", "task", "n_correct", "sum_xent", "features", *_SHIFT_FIELDS)
)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    #: the ranks on this machine (torchrun's LOCAL_WORLD_SIZE); None when not said: maybe all of them
    local_size: int | None = None
    #: whether the launcher said which rank of its machine this is: LOCAL_RANK (torchrun sets it), or
    #: LOCAL_WORLD_SIZE, the ranks numbered machine by machine; else `local_rank` is RANK, right on one machine
    local_rank_known: bool = True

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Whether this rank owns the store (rank 0)."""
        return self.rank == 0

    @property
    def speaks(self) -> bool:
        """Whether this rank says what every rank would say alike: the progress, the notes and warnings,
        the summary, a refusal that every rank meets (rank 0; `voice`)."""
        return self.rank == 0


def detect_world(environ: dict[str, str] | None = None) -> World:
    """RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them; a single process when they are absent.

    A launcher other than torchrun (mpirun, srun) may set no LOCAL_RANK: it is then RANK modulo
    LOCAL_WORLD_SIZE where that is set (the ranks numbered machine by machine, as torchrun numbers them),
    else RANK itself, which is right on one machine only (`World.local_rank_known`, `device_for`)."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_size = int(env["LOCAL_WORLD_SIZE"]) if env.get("LOCAL_WORLD_SIZE") else None
        if "LOCAL_RANK" in env:
            local_rank = int(env["LOCAL_RANK"])
        else:
            local_rank = rank % local_size if local_size else rank
    except ValueError:
        raise FdlError(
            "RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE are not integers",
            got=f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}, "
            f"LOCAL_WORLD_SIZE={env.get('LOCAL_WORLD_SIZE')!r}",
            fix="start fdl with torchrun, or unset those variables",
        ) from None
    if size < 1 or not 0 <= rank < size:
        raise FdlError(
            "RANK must lie in [0, WORLD_SIZE)", got=f"RANK={rank}, WORLD_SIZE={size}", fix="start fdl with torchrun"
        )
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size,
                 local_rank_known="LOCAL_RANK" in env or bool(local_size) or size == 1)


def alike(error: E, among: str = "job") -> E:
    """`error`, marked as raised alike by every rank of the job (`among="job"`: rank 0 says it, once) or
    of this machine ("machine": its local rank 0 says it); `FdlError.alike`, `voice`."""
    error.alike = among
    return error


def voice(alike: str, world: World | None = None) -> str | None:
    """How this process says a message that ends it (an error, a usage error): "" as one process says it;
    "rank N", naming this rank, for a message that may be this rank's alone (`alike` ""); None, to keep
    quiet: every rank of the job (`alike` "job") or of this machine ("machine") has the same message, and
    rank 0 (local rank 0) says it. The one place that decides which rank speaks for a torchrun job
    (every rank printed every refusal, 8 times under --nproc-per-node 8)."""
    if world is None:
        try:
            world = detect_world()
        except FdlError:
            return ""  # RANK / WORLD_SIZE unreadable: the error says so, on every process
    if not world.distributed:
        return ""
    if alike == "job":
        return "" if world.speaks else None
    if alike == "machine":
        return "" if world.local_rank == 0 else None
    return f"rank {world.rank}"


#: Seconds a rank that keeps quiet waits at most before it exits (`exit_quietly`). Under torchrun the wait
#: ends as soon as rank 0 has said the message and exited (torchrun then ends the others), so a long
#: bound costs nothing there; a short one (2 s before the nineteenth session's review) let a quiet rank
#: exit first when rank 0 was slow to speak (closing its store), and torchrun ended rank 0 unheard.
#: Only a launcher that does not end the other ranks waits it out.
QUIET_EXIT_GRACE = 10.0


def exit_quietly(status: int, grace: float | None = None) -> NoReturn:
    """End a rank that keeps quiet (`voice` None) with `status`, once rank 0 has had time to say why.

    torchrun ends every rank (SIGTERM) as soon as one has exited with an error: a quiet rank out first
    could end rank 0 before it had printed the message it says for all, leaving none at all. A quiet
    rank therefore waits up to `grace` seconds (`QUIET_EXIT_GRACE`) and exits with `status` then, or
    at once when the launcher ends it meanwhile (SIGTERM, SIGINT): every rank still exits with the
    refusal's status, and torchrun names rank 0, which said it, as the first to fail.
    """
    import contextlib
    import signal
    import time

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()

    def leave(_signum: int, _frame: Any) -> None:
        os._exit(status)

    previous: dict[signal.Signals, Any] = {}
    try:
        with contextlib.suppress(ValueError):  # not the main thread: no handler, the wait alone
            for number in (signal.SIGTERM, signal.SIGINT):
                previous[number] = signal.signal(number, leave)
        time.sleep(QUIET_EXIT_GRACE if grace is None else grace)
    finally:
        for number, handler in previous.items():  # a program that called `main` goes on as it was
            signal.signal(number, handler)
    sys.exit(status)


def device_for(world: World, requested: str) -> str:
    """Under torchrun each rank takes its own GPU: `auto`/`cuda` become `cuda:LOCAL_RANK`; an explicit
    `cuda:i` is refused where it would put several ranks on one GPU of several. Without LOCAL_RANK (nor
    LOCAL_WORLD_SIZE) a rank takes cuda:RANK where this machine has that GPU (distinct ranks take distinct
    GPUs, on one machine or several); where it has not, the rank cannot tell which GPU is its own, and the
    error asks for LOCAL_RANK (it named a LOCAL_RANK=RANK that the launcher never set)."""
    if not world.distributed:
        return requested
    import torch

    _refuse_one_gpu_for_all(world, requested)
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            return requested  # resolve_device refuses it as asked: "--device cuda", not cuda:LOCAL_RANK
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if not world.local_rank_known and world.local_rank >= count:
            raise FdlError(
                f"rank {world.rank} cannot tell which GPU of this machine is its own: the launcher set RANK and "
                "WORLD_SIZE but no LOCAL_RANK (nor LOCAL_WORLD_SIZE), and RANK is past this machine's GPUs",
                got=f"RANK={world.rank}, WORLD_SIZE={world.size}, {counted(count, 'CUDA GPU')} visible"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""),
                fix="set LOCAL_RANK to the rank's place among the ranks of its machine, as torchrun does (under srun: "
                "LOCAL_RANK=$SLURM_LOCALID; under mpirun: LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK), or LOCAL_WORLD_SIZE "
                f"to the number of ranks on each machine (ranks numbered machine by machine), at most {count} a "
                "machine (one rank per GPU); or run the ranks on the CPU with --device cpu",
            )
        if world.local_rank >= count:
            # said here, not by resolve_device: the user asked for `cuda` (or auto), not for cuda:LOCAL_RANK,
            # and "--device cuda for the current one" is what they did
            raise FdlError(
                f"under torchrun each rank takes the GPU of its LOCAL_RANK, and rank {world.rank} has "
                f"LOCAL_RANK={world.local_rank}, but this machine shows {counted(count, 'CUDA GPU')}",
                got=f"{world.size} ranks, {counted(count, 'GPU')} visible"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""),
                fix=f"start torchrun with --nproc-per-node {count} at most (one rank per GPU), or run the ranks on "
                "the CPU with --device cpu",
            )
        return f"cuda:{world.local_rank}"
    return requested


def _refuse_one_gpu_for_all(world: World, requested: str) -> None:
    """`--device cuda:0` under `torchrun --nproc-per-node 4` on a 4-GPU machine put every rank on GPU 0 (with
    the other GPUs idle), where NCCL refuses a second rank ("Duplicate GPU detected": a DistBackendError
    traceback at the first collective). Refused when this machine runs several ranks and shows several
    GPUs. With one GPU visible it is let through: a launcher that gives each rank a GPU of its own
    through CUDA_VISIBLE_DEVICES shows each rank that GPU alone, as cuda:0."""
    import torch

    try:
        index = torch.device(requested).index if requested.startswith("cuda:") else None
    except RuntimeError:
        return  # not a device: resolve_device says so
    local = world.size if world.local_size is None else world.local_size
    if index is None or local < 2 or not torch.cuda.is_available() or (count := torch.cuda.device_count()) < 2:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # From the command line and this machine's GPUs: the same on each of its ranks, said by one, where
    # the launcher says which ranks share this machine (torchrun's LOCAL_WORLD_SIZE, with LOCAL_RANK);
    # otherwise each rank says it, naming itself (`voice`).
    error = FdlError(
        f"--device {requested} under torchrun puts every rank of this machine on GPU {index}, and NCCL refuses "
        "two ranks on one GPU",
        got=f"{local} ranks on this machine" + ("" if world.local_size is not None else " (at most)")
        + f", {count} CUDA GPUs visible" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""),
        # A range only where the ranks of this machine are known: WORLD_SIZE counts every machine's ranks
        # (cuda:0 .. cuda:7 for two machines of 4 GPUs), and a launcher of one rank a machine that does not
        # set LOCAL_WORLD_SIZE is refused for the ranks of the other machines.
        fix="pass --device cuda: each rank then takes the GPU of its LOCAL_RANK"
        + (f" (cuda:0 .. cuda:{local - 1})" if world.local_size is not None else "")
        + "; choose which GPUs those are with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=2,3 torchrun "
        "--nproc-per-node 2 ...)"
        + ("" if world.local_size is not None else
           "; with one rank on each machine, set LOCAL_WORLD_SIZE=1 (as torchrun does) and --device cuda:i is kept"),
    )
    raise alike(error, among="machine") if world.local_size is not None else error


#: Environment variable: seconds a rank waits for the others (in a collective, or to join the job) before it
#: gives up; `WAIT_S` when unset.
WAIT_ENV = "FDL_TORCHRUN_TIMEOUT"
#: A rank waits legitimately as long as the others take over their blocks and rank 0 over the store (a rank
#: done with a block of small checkpoints waits for one of large ones): torch's default (30 minutes for
#: gloo, 10 for nccl) failed a long run at its end. A week: a hung job (a machine gone without closing its
#: connections) still ends some day; a rank killed or stopped is noticed at once (its connections close).
WAIT_S = 7 * 24 * 3600.0
#: The longest wait `FDL_TORCHRUN_TIMEOUT` may set (about 31 years): torch's C++ clocks overflow far below what a
#: float holds (1e10 s made gloo's rendezvous give up at once; 1e15 s overflowed datetime.timedelta).
MAX_WAIT_S = 1e9
#: the wait the process group was made with (`init_process_group`), named by a timed-out collective's error
_wait_s = WAIT_S


def wait_seconds(environ: dict[str, str] | None = None) -> float:
    """`FDL_TORCHRUN_TIMEOUT` as seconds (> 0), `WAIT_S` when unset; an error for anything else."""
    import math

    text = (os.environ if environ is None else environ).get(WAIT_ENV, "").strip()
    if not text:
        return WAIT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        # the launcher's environment: alike on every rank of this machine, said by its local rank 0
        raise alike(FdlError(
            f"{WAIT_ENV} is not a number of seconds > 0",
            got=f"{WAIT_ENV}={text!r}",
            fix=f"set it to how long a rank may wait for the others (e.g. {WAIT_ENV}=86400 for a day), or unset it "
            f"for a week",
        ), among="machine")
    if seconds > MAX_WAIT_S:
        raise alike(FdlError(
            f"{WAIT_ENV} is longer than a rank can wait: at most {MAX_WAIT_S:.0f} s "
            f"(about {MAX_WAIT_S // 31_557_600:.0f} years)",
            got=f"{WAIT_ENV}={text!r}",
            fix=f"set it to at most {MAX_WAIT_S:.0f}, or unset it for a week",
        ), among="machine")
    return seconds


def init_process_group(world: World, device: Any) -> None:
    """Join the job's process group: nccl for CUDA devices, gloo for the CPU (idempotent), every wait for
    the other ranks bounded by `wait_seconds` (not torch's default)."""
    global _wait_s
    if not world.distributed:
        return
    end_with_launcher(world)
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return
    _wait_s = wait_seconds()
    backend = "nccl" if getattr(device, "type", str(device)).startswith("cuda") else "gloo"
    if backend == "nccl":
        import torch

        torch.cuda.set_device(device)
    from fdl_cli import signals

    # A rank waits here for every other one, where a Ctrl-C's handler would not run: the signals end it at once
    # (nothing is written yet). One a Ctrl-C stopped before it joined never comes (`signals.ending_at_once`). Nor
    # does the end of a wait that torch does not bound: past the bound and its grace, the same watcher ends it.
    signals.skip_teardown()  # gloo's threads, torn down at exit, could abort the rank once its work is done
    gave_up = join_gave_up(world)
    said = f"error on {voice(gave_up.alike, world)}: {gave_up.message}\n"
    for stream in (sys.stdout, sys.stderr):  # what was said before goes out before the watcher's last word
        with contextlib.suppress(Exception):
            stream.flush()
    with signals.ending_at_once(quiet=not world.speaks, give_up=(_wait_s + JOIN_GRACE_S, said)), \
            waiting(world, "the other ranks to join the job", joining=True):
        try:
            dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size,
                                    timeout=datetime.timedelta(seconds=_wait_s))
        except ValueError:
            unset = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
            if not unset:
                raise
            # torch's env:// rendezvous needs both: its ValueError ("environment variable MASTER_ADDR expected")
            # was a traceback
            raise alike(FdlError(
                f"WORLD_SIZE={world.size} makes this `fdl analyze` rank {world.rank} of a job of {world.size} "
                f"processes, but {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set: where its rank 0 "
                "listens",
                fix=f"start the job with torchrun (torchrun --nproc-per-node {world.size} -m fdl_cli analyze ...), "
                "which sets them, or unset WORLD_SIZE and RANK to run as one process",
            ), among="machine") from None


#: prctl(2)'s PR_SET_PDEATHSIG: the signal the kernel sends this process when the thread that started it ends
_PR_SET_PDEATHSIG = 1


def end_with_launcher(world: World, environ: Mapping[str, str] | None = None) -> None:
    """Have a rank of a torchrun job end (SIGTERM) when torchrun ends, on Linux; elsewhere, or under another launcher
    (no TORCHELASTIC_RUN_ID), nothing. torchrun starts each rank in a session of its own: a SIGKILL of torchrun (the
    OOM killer, a scheduler's hard kill) reached no rank, and one waiting to join the job (at the store torchrun
    served) or in a collective waited `wait_seconds` (a week) without a parent.

    The kernel's parent-death signal (prctl PR_SET_PDEATHSIG) is sent when the *thread* that started the process
    ends: torchrun's agent starts its ranks with subprocess.Popen from its main thread (torch.distributed.elastic's
    SubprocessHandler, from the agent's run loop), whose end is torchrun's. Another launcher (srun, mpirun) may start
    ranks from a thread that ends while it runs on, which would end a working rank: not armed there.

    SIGTERM goes to what fdl does with it: a rank of `fdl analyze` leaves it at its default (`signals.installed`), so
    the rank ends at once, by the signal, wherever it waits, without a word (no Python runs to tell this SIGTERM from
    another); the store holds what was committed, as after any kill. A launcher that ended before the signal was
    asked for (between the process's start, `signals.started_by`, and here) sends none: the parent has changed, and
    the rank says so before it ends by the same SIGTERM.

    Only in a process of fdl's own (`signals.own_process`: `fdl`, `python -m fdl_cli`) that leads a session of its
    own, as torchrun starts each rank. A program that calls `main` would keep the signal after the command (the
    process's, not the command's). `fdl analyze` that a script or shell started inherits the session with
    TORCHELASTIC_RUN_ID and WORLD_SIZE (a script torchrun runs; `nohup` with a job's variables copied): its parent is
    that script or shell, whose end (or that of the thread that started it) ended fdl too."""
    env = os.environ if environ is None else environ
    if not world.distributed or not env.get("TORCHELASTIC_RUN_ID") or not sys.platform.startswith("linux"):
        return
    import signal

    from fdl_cli import signals

    launcher = signals.started_by  # None: a program that calls `main` (not its own process)
    if launcher is None or os.getsid(0) != os.getpid():
        return
    try:
        import ctypes

        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):  # no ctypes (Python built without libffi), no libc: as before
        armed = False
    if not armed or os.getppid() == launcher:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, f"rank {world.rank}: the launcher that started this rank (pid {launcher}, torchrun) has ended: this "
                 f"rank stops too\n".encode())
    # SIGTERM ignored (the user's choice): the rank goes on, as it would after the launcher's own SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)


class WaitError(FdlError):
    """A collective that could not complete (`waiting`): the job cannot go on, no rank may treat it as a failure
    of its own work and go on to the next collective (which the others never reach)."""


def _span(seconds: float) -> str:
    """A wait, as a person reads it: "3 s", "30 min", "1 day", "7 days"."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and seconds % size == 0:
            count = seconds / size
            return f"{count:g} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{seconds:g} s"


@contextlib.contextmanager
def waiting(world: World, waiting_for: str, *, joining: bool = False) -> Iterator[None]:
    """Around a collective, where this rank waits for `waiting_for` (other ranks): what the backend raises
    there, said as fdl says it (`wait_error`); `joining`: the wait to join the job's process group.

    A collective that fails on the way out of a Ctrl-C (the `finally` of a rank that still tells the
    others, whose peer has left already) is the interrupt: the backend's "Connection closed by peer"
    replaced it, a traceback instead of "interrupted" and status 130.
    """
    try:
        yield
    # torch's DistBackendError, DistStoreError and DistNetworkError are RuntimeErrors too; its env:// rendezvous
    # raises ValueError for a MASTER_ADDR unset or a MASTER_PORT that is no port
    except (RuntimeError, ValueError) as exc:
        interrupt = exc.__context__
        while interrupt is not None and not isinstance(interrupt, KeyboardInterrupt):
            interrupt = interrupt.__context__
        if interrupt is not None:
            raise interrupt from None
        error = wait_error(str(exc), waiting_for, joining=joining) if isinstance(exc, RuntimeError) else None
        if error is None and joining:
            error = join_error(str(exc), world)
        if error is None:
            raise
        # said naming this rank (`voice`): it may be this rank's alone
        raise error from None


def wait_error(message: str, waiting_for: str, *, joining: bool = False) -> WaitError | None:
    """The error fdl says for the backend's `message` where a rank waited for `waiting_for`; None for a message
    that is neither of these (left as the backend raised it):

    - A wait that ran past `wait_seconds`: an error naming what this rank waited for (torch's RuntimeError
      traceback before, after 30 minutes, at the end of a long run). Once the job has started, what is stored
      stays (rank 0's store, the other ranks' part stores), and the same command takes the parts in; a wait to
      join the job (`joining`, `init_process_group`) is for ranks that never arrived, before anything is stored.
    - A connection closed by a rank that stopped (SIGKILL, the kernel's OOM killer): the backend noticed at
      once, with a traceback (torchrun then ends the other ranks).
    """
    said = _backend_said(message)
    lowered = said.lower()
    resume = _RESUME_JOIN if joining else _RESUME
    if "timed out" in lowered or "timeout" in lowered:
        what = (f"gave up after waiting {_span(_wait_s)} for {waiting_for} (the longest a rank of a torchrun job "
                f"waits, {WAIT_ENV})")
        fix = f"{resume}; to let a rank wait longer, set {WAIT_ENV}=SECONDS (default {_span(WAIT_S)})"
        if joining:
            fix = (f"the other ranks never arrived: check that all WORLD_SIZE ranks were started and meet at the same "
                   f"rendezvous (torchrun's --nnodes, --nproc-per-node and --rdzv-endpoint on every machine; WORLD_SIZE "
                   f"and MASTER_ADDR:MASTER_PORT under another launcher), and whether one stopped before it joined "
                   f"(see what it and torchrun said); {resume}; to let a rank wait longer for the others to start, "
                   f"set {WAIT_ENV}=SECONDS (default {_span(WAIT_S)})")
    elif any(words in lowered for words in ("connection closed", "connection reset", "broken pipe")):
        what = (f"lost the connection to another rank while waiting for {waiting_for}: that rank stopped "
                "(killed, out of memory, or its machine went down)")
        fix = f"see what that rank and torchrun said of it; then {resume}"
        said = said.split(". ")[0]  # gloo's advice and "GLHF!" off
    else:
        return None
    return WaitError(what, got=said[:300], fix=fix)


def _backend_said(message: str) -> str:
    """The first line of the backend's error, gloo's source line off."""
    said = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", said)


def join_error(message: str, world: World, environ: Mapping[str, str] | None = None) -> WaitError:
    """The error fdl says where joining the job's process group failed otherwise than by a wait that ran out or
    a connection closed (`wait_error`): the rendezvous address refused (rank 0's MASTER_PORT in use by another
    job, a MASTER_PORT that is no port, MASTER_ADDR unset, a connection refused): torch's traceback before."""
    address = _rendezvous_address(os.environ if environ is None else environ)
    return WaitError(
        f"could not join the job's process group at {address} (MASTER_ADDR:MASTER_PORT) as rank {world.rank} of "
        f"{world.size}",
        got=_backend_said(message)[:300] or None,
        fix=("check the rendezvous address every rank is given (torchrun's --rdzv-endpoint, or --master-addr and "
             "--master-port; MASTER_ADDR and MASTER_PORT under another launcher): rank 0's machine must be able to "
             "listen on that port (one no other job uses: pick another, or torchrun --standalone on one machine) "
             f"and every rank must reach it; {_RESUME_JOIN}"),
    )


#: Seconds a rank waits to join the job past `wait_seconds` before fdl ends the wait itself (`join_gave_up`): torch
#: bounds its own waits there by that, but not every one: its store client waited for ever for an answer from a
#: program at MASTER_ADDR:MASTER_PORT that accepts a connection and says nothing (no torch store; an HTTP server).
#: Long enough for torch's own error (said by `wait_error`, `join_error`) to come first where it comes about the
#: bound (a second or two past it, measured); a connection refused that torch retries after a delay that grows
#: (tens of seconds past a long bound) is ended here, at the bound the user set.
JOIN_GRACE_S = 5.0


def join_gave_up(world: World, environ: Mapping[str, str] | None = None) -> WaitError:
    """The error fdl says where joining the job's process group has lasted `wait_seconds` and `JOIN_GRACE_S` without
    torch's giving up (`init_process_group`, said by `signals.ending_at_once`'s watcher as the process ends)."""
    address = _rendezvous_address(os.environ if environ is None else environ)
    return WaitError(
        f"gave up after waiting {_span(_wait_s)} for the other ranks to join the job at {address} "
        f"(MASTER_ADDR:MASTER_PORT) as rank {world.rank} of {world.size} (the longest a rank of a torchrun job waits, "
        f"{WAIT_ENV})",
        got=f"torch was still joining after {_span(_wait_s + JOIN_GRACE_S)}, waiting for the job's rendezvous store at "
        f"{address} (or another rank) to answer",
        fix=("no rendezvous store of this job answered there: check that rank 0 was started and listens at that "
             "address (torchrun's --rdzv-endpoint, or --master-addr and --master-port, the same on every machine; "
             "MASTER_ADDR and MASTER_PORT under another launcher) and that no other program listens on that port (pick "
             f"another, or torchrun --standalone on one machine); {_RESUME_JOIN}; to let a rank wait longer for the "
             f"others to start, set {WAIT_ENV}=SECONDS (default {_span(WAIT_S)})"),
    )


def _rendezvous_address(environ: Mapping[str, str]) -> str:
    """MASTER_ADDR:MASTER_PORT as the join errors name it, each said unset where it is."""
    return f"{environ.get('MASTER_ADDR', '(MASTER_ADDR unset)')}:{environ.get('MASTER_PORT', '(MASTER_PORT unset)')}"


#: how a torchrun job that stopped on the way is resumed (`wait_error`)
_RESUME = ("run the same command again: it keeps what rank 0 stored and takes in what each other rank stored in "
           "its part store (STORE.rank-K)")
#: the same, for a job that stopped before its ranks had joined: nothing was stored by it
_RESUME_JOIN = "nothing was stored yet: run the same command again"


def shutdown(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def block(items: Sequence[T], world: World) -> list[T]:
    """This rank's contiguous block of `items` (sizes differ by at most one; earlier ranks get more)."""
    start, stop = block_bounds(len(items), world)
    return list(items[start:stop])


def block_bounds(count: int, world: World) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of `count` items."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (1 if world.rank < extra else 0)


def all_reduce_moments(moments: Moments, world: World, device: Any) -> Moments:
    """Sum the statistics of the probe slices of every rank (one all-reduce of one float64 vector).

    In the Gram route (features kept, p > n) the kept features are gathered in rank order instead, so
    the result equals that of one process over the whole probe.
    """
    if not world.distributed:
        return moments
    import torch
    import torch.distributed as dist

    # Each rank's sums are about its own slice's first batch, if that was far from 0 (which one slice
    # may be and another not): every rank moves them to rank 0's shift points, near every slice's
    # means too when rank 0 shifted (precision kept), to 0 when it did not, so that they add up.
    # Always, on every rank: a collective that one rank skips leaves the others waiting for ever.
    common = broadcast_from_writer(tuple(getattr(moments, name) for name in _SHIFT_FIELDS), world)
    if not world.writes:
        moments = moments.shifted_to(*common)
    present = [name for name in _SUM_FIELDS if getattr(moments, name) is not None]
    parts = [np.asarray(getattr(moments, name), dtype=np.float64).reshape(-1) for name in present]
    scalars = [moments.n, moments.n_correct, 0.0 if moments.sum_xent is None else moments.sum_xent]
    flat = np.concatenate(parts + [np.array(scalars, dtype=np.float64)])
    tensor = torch.from_numpy(flat).to(device)
    with waiting(world, "the other ranks' probe slices"):
        dist.all_reduce(tensor)
    summed = tensor.cpu().numpy()
    values: dict[str, Any] = {}
    offset = 0
    for name, part in zip(present, parts, strict=True):
        shape = np.shape(getattr(moments, name))
        values[name] = summed[offset : offset + part.size].reshape(shape)
        offset += part.size
    values["n"], values["n_correct"] = int(round(summed[offset])), int(round(summed[offset + 1]))
    values["sum_xent"] = None if moments.sum_xent is None else float(summed[offset + 2])
    # The largest |·| over every slice (one more all-reduce, of three values; on every rank, always): the
    # range is checked on the whole probe's, as one process checks it (`spectral.feature_spectrum`).
    peaks = torch.tensor(moments.peaks or (0.0, 0.0, 0.0), dtype=torch.float64).to(device)
    with waiting(world, "the other ranks' probe slices"):
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    if moments.peaks is not None:
        largest = [float(value) for value in peaks.cpu()]
        values["peaks"] = (largest[0], largest[1], largest[2])
    if moments.features is not None:
        values["features"] = np.concatenate(all_gather(moments.features, world, "the other ranks' probe slices"))
    return replace(moments, **values)


def agree_on_failure(error: FdlError | None, world: World) -> None:
    """Raise on every rank the first rank's error of a step that each rank did on its own slice.

    A step done on one slice can fail on that rank alone (a forward pass that fails on its rows,
    NaN features there); the others would go on into the next collective and wait for it forever.
    Every rank therefore reports, and every rank raises the same error (of the same class, so a
    per-checkpoint failure stays one and a fatal one stops every rank), or none does.
    """
    if not world.distributed:
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error).__name__, error.what, error.got, error.fix)
    reports = all_gather(mine, world, "the other ranks' probe slices")
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if error is not None and failed[0][0] == world.rank and len(failed) == world.size:
        raise alike(error)  # every rank's: no rank to name (rank 0 says it; the others keep quiet)
    rank, (kind, message, got, fix) = failed[0]
    from fdl_cli import errors

    cls = getattr(errors, kind, FdlError)
    cls = cls if isinstance(cls, type) and issubclass(cls, FdlError) else FdlError
    raise alike(cls(f"{message} (on rank {rank}'s probe slice)", got=got, fix=fix))


def agree_on_refusal(error: FdlError | None, world: World) -> None:
    """Before any work every rank checks the inputs on its own (the checkpoints found, the probe, the
    model file, the store's path): raise on every rank when any refused, said once by rank 0.

    The same refusal on every rank (the usual case: one command line over the same files) is said as it
    is; one that only some ranks met (a file missing on one machine of several) names them, and the
    others exit 1 with it rather than wait in the next collective for ranks that stopped; a rank whose
    own refusal differs from the one said says its own, naming itself (`voice`).
    """
    if not world.distributed:
        if error is not None:
            raise error
        return
    mine = None if error is None else (error.what, error.got, error.fix)
    reports = all_gather(mine, world)
    failed = [rank for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    first = reports[failed[0]]
    assert first is not None
    if error is not None and mine != first:
        raise error  # this rank's own, not the one rank 0 says
    met = [rank for rank in failed if reports[rank] == first]
    if error is not None and len(met) == world.size:
        raise alike(error)
    where = f" (on rank {met[0]})" if len(met) == 1 else f" (on ranks {', '.join(map(str, met))})"
    if error is not None:
        error.what += where
        raise alike(error)
    what, got, fix = first
    raise alike(FdlError(what + where, got=got, fix=fix))


def gather_to_writer(payload: T, world: World, waiting_for: str = "the other ranks") -> list[T] | None:
    """Every rank's `payload` (picklable) on rank 0, in rank order; None on the other ranks. `waiting_for`,
    here and below: what a rank waits for there, named if the wait times out (`waiting`)."""
    if not world.distributed:
        return [payload]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * world.size if world.writes else None
    with waiting(world, waiting_for):
        dist.gather_object(payload, gathered, dst=0)
    return gathered


def all_gather(payload: T, world: World, waiting_for: str = "the other ranks") -> list[T]:
    """Every rank's `payload` (picklable) on every rank, in rank order."""
    if not world.distributed:
        return [payload]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    with waiting(world, waiting_for):
        dist.all_gather_object(gathered, payload)
    return gathered


def broadcast_from_writer(payload: T, world: World, waiting_for: str = "rank 0") -> T:
    """Rank 0's `payload` on every rank."""
    if not world.distributed:
        return payload
    import torch.distributed as dist

    box = [payload if world.writes else None]
    with waiting(world, waiting_for):
        dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]
