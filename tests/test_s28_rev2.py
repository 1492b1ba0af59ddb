"""What a review of the stop watcher's take-back (`signals._Stall.reclaim`) and of the DCP cover check found.

A model whose build leaves an asyncio loop open with a SIGTERM handler of its own (a library's background loop)
puts asyncio's Python handler, which does nothing, in place of fdl's: the loop acts on the signal's number that
Python writes to the wakeup fd. fdl, which takes a handler back only where the model's code left the default,
then never stopped on SIGTERM again (Slurm's, Kubernetes'): the run went on to its end, and SIGKILL came. And the
watcher counted a SIGTERM it had not taken (an embedding program's) as its own. Each test runs a real fdl analyze
on the six tiny checkpoints of `test_s27_hang`.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from test_s27_hang import (  # noqa: E402
    _argv,
    _ended,
    _env,
    _sigterm_once_stuck,
    _wait_for,
    run_dir,  # noqa: F401 - the fixture
    started,  # noqa: F401 - the fixture
)
from test_s28_dcpcover import Box, _said  # noqa: E402

from tests import warm  # noqa: E402

_LOOP_MODEL = r'''


import asyncio, signal

LOOP = None


def _wait(until, seconds):
    end = time.monotonic() + seconds
    while not until() and time.monotonic() < end:
        time.sleep(0.01)


class Slow(nn.Sequential):
    """Step 2's first forward pass waits in Python (a handler that raises nothing does not cut a sleep short): until
    the test has sent its signal and written `sent` (bounded: a test that never does fails, it does not hang), then
    `after_s` more, or less once fdl has heard the signal (`terminated`) where `until_heard`. A fixed 3 s from `stuck`
    on was a window that a loaded machine missed: the signal came once the pass was over, step 2 analysed."""

    after_s, until_heard = 3.0, False

    def forward(self, x):
        if _at_step_2(self) and not os.path.exists(os.path.join(HERE, "slept")):
            open(os.path.join(HERE, "slept"), "w").close()
            _wait(lambda: os.path.exists(os.path.join(HERE, "sent")), 120)
            fdl = sys.modules["fdl_cli.signals"]
            _wait(lambda: self.until_heard and fdl.terminated, self.after_s)
        return super().forward(x)


def slow():
    return Slow(*_layers())


def term_loop():
    """A build that leaves an asyncio loop open with a SIGTERM handler of its own; its pass waits for fdl to hear
    the SIGTERM (up to 30 s: fdl deaf to it, the pass returns and the run goes on to its end)."""
    global LOOP
    LOOP = asyncio.new_event_loop()
    LOOP.add_signal_handler(signal.SIGTERM, lambda: None)
    model = Slow(*_layers())
    model.after_s, model.until_heard = 30.0, True
    return model
'''


def test_sigterm_stops_fdl_whose_model_left_an_asyncio_loop_handling_sigterm(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811 - the fixture
    with open(run_dir / "models.py", "a") as models:
        models.write(_LOOP_MODEL)
    _sigterm_once_stuck(run_dir, started, "term_loop", FDL_STOP_GRACE="600")  # 143, steps 0 and 1 kept


_EMBEDDED = r'''
import signal, sys
from fdl_cli.cli import main

heard = []
signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))  # the embedding program's own
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("exit", code, "heard", len(heard), file=sys.stderr)
'''


def test_a_sigterm_of_a_program_running_fdl_in_process_is_its_own_not_fdls(
        run_dir: Path, started: list[warm.WarmProcess]) -> None:  # noqa: F811 - the fixture
    """A program that handles SIGTERM itself and calls fdl's `main`: fdl leaves SIGTERM to it, yet its stop watcher
    counted a SIGTERM during a forward pass as one of its own and, the pass lasting past the grace period, ended the
    whole program (`os._exit(143)`, "did not return within 0.5 s")."""
    with open(run_dir / "models.py", "a") as models:
        models.write(_LOOP_MODEL)
    (run_dir / "embedded.py").write_text(_EMBEDDED)
    argv = [sys.executable, "embedded.py", *_argv("slow")[3:]]
    with open(run_dir / "err.txt", "wb") as err:
        process = warm.spawn(argv, cwd=run_dir, stdout=subprocess.DEVNULL, stderr=err,
                             env=_env(FDL_STOP_GRACE="0.5"), start_new_session=True)
    started.append(process)
    _wait_for(process, run_dir / "stuck", run_dir)
    process.send_signal(signal.SIGTERM)
    (run_dir / "sent").touch()  # the pass goes on 3 s more: past the 0.5 s grace, fdl's watcher would have ended it
    status, err = _ended(process, run_dir)
    assert status == 0 and err.rstrip().endswith("exit 0 heard 1"), err


# --------------------------------------------------------------------------- the DCP cover check


def _greedy(rng: random.Random, size: tuple[int, ...]) -> list[Box]:
    """A random tiling of `size`, guillotine or not: at the first element no chunk holds yet, a chunk grown along
    the dimensions in a random order, each up to a random length, over elements no chunk holds."""
    free = np.ones(size, bool)
    boxes: list[Box] = []
    while free.any():
        start = tuple(int(i) for i in np.unravel_index(int(np.argmax(free)), size))
        lengths = [1] * len(size)
        for d in rng.sample(range(len(size)), len(size)):
            for _ in range(rng.randrange(size[d] - start[d])):
                lengths[d] += 1
                if not free[tuple(slice(o, o + n) for o, n in zip(start, lengths, strict=True))].all():
                    lengths[d] -= 1
                    break
        free[tuple(slice(o, o + n) for o, n in zip(start, lengths, strict=True))] = False
        boxes.append((start, tuple(lengths)))
    return boxes


def _damaged(rng: random.Random, size: tuple[int, ...], boxes: list[Box]) -> list[Box]:
    """One chunk moved by one element (as many elements held, one of them twice and one never), dropped, doubled,
    one element longer or shorter, or joined by a chunk of no elements."""
    if not boxes:
        return boxes
    boxes = list(boxes)
    i, d = rng.randrange(len(boxes)), rng.randrange(len(size))
    (offsets, lengths), kind = boxes[i], rng.randrange(5)
    step = [(1 if offsets[d] + lengths[d] < size[d] else -1) * (k == d) for k in range(len(size))]
    if kind == 0 and 0 < lengths[d] < size[d]:
        boxes[i] = (tuple(o + s for o, s in zip(offsets, step, strict=True)), lengths)
    elif kind == 1:
        del boxes[i]
    elif kind == 2:
        boxes.insert(rng.randrange(len(boxes) + 1), boxes[i])
    elif kind == 3:
        boxes[i] = (offsets, tuple(n + s for n, s in zip(lengths, step, strict=True)))
    else:
        boxes.append((offsets, tuple(0 if k == d else n for k, n in enumerate(lengths))))
    return boxes


def _stretched(rng: random.Random, size: tuple[int, ...], boxes: list[Box]) -> tuple[tuple[int, ...], list[Box]]:
    """The same layout with each dimension's element k moved to a random place, in order, up to just below 2**63:
    what covers what is unchanged, the numbers are those a forged file may give."""
    places = [[0, *sorted(rng.sample(range(1, 2**63 - 8), n - 1)), 2**63 - 1 - rng.randrange(8)] for n in size]
    return (tuple(p[-1] for p in places),
            [(tuple(p[o] for p, o in zip(places, offsets, strict=True)),
              tuple(p[o + n] - p[o] for p, o, n in zip(places, offsets, lengths, strict=True)))
             for offsets, lengths in boxes])


def test_the_cover_check_agrees_with_a_count_of_each_elements_chunks(tmp_path: Path) -> None:
    """Random tilings in 1 to 4 dimensions (any tiling, not only guillotine cuts), damaged or not, some at offsets and
    lengths up to 2**63 - 1: a layout passes exactly when each element lies in one chunk, and a damaged one is told
    an overlap where an element lies in two, else a gap."""
    rng = random.Random(28)
    told: dict[tuple[str | None, str | None], int] = {}
    for _ in range(300):
        size = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 4)))
        boxes = _greedy(rng, size)
        for _ in range(rng.choice([0, 0, 1, 2])):
            boxes = _damaged(rng, size, boxes)
        rng.shuffle(boxes)
        count = np.zeros(size, np.int64)
        for offsets, lengths in boxes:
            count[tuple(slice(o, o + n) for o, n in zip(offsets, lengths, strict=True))] += 1
        want = "overlap" if (count > 1).any() else "hold" if (count == 0).any() else None
        said = _said(tmp_path, *(_stretched(rng, size, boxes) if rng.random() < 0.5 else (size, boxes)))
        got = None if said is None else "overlap" if "overlap" in said else "hold" if " hold " in said else said
        assert got == want, (size, boxes, said)
        told[want, got] = told.get((want, got), 0) + 1
    assert set(told) == {(None, None), ("overlap", "overlap"), ("hold", "hold")}, told
