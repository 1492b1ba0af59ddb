"""Session 17 review of the session's changes: defects found in them, each reproduced first.

- The float64 range check ran on each probe slice under `torchrun --shard-probe`: a slice whose values
  all lay below RANGE_MIN (the far inputs of an RBF-like layer, the probe in input order) refused a
  checkpoint that one process analyses, whose probe's largest |·| is of ordinary size.
- Progress lines in a log under --watch counted the time spent waiting for checkpoints as the run's:
  "elapsed" grew with the idle hours and "about ... left" with them.
- A store analysed before DataParallel's wrapper was taken off (layers `module.2:input`) is refused on
  resume as "a different run" with nothing said of why the same command now names `2:input`.
- benchmarks/steps.py imported fdl's modules before fdl's `main`, which then froze none of them: its
  `fdl analyze` process lacked the frozen imports it was measured against.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import progress
from fdl_cli.errors import NumericalError
from fdl_cli.moments import RANGE_MIN, MomentAccumulator
from fdl_cli.spectral import measure, merge_all
from tests.cli_run import REPO, fdl_in_process, model_file
from tests.ranks import torchrun

RNG = np.random.default_rng(1717)


def _slices(torch_path: bool):
    """Features (12, 4) in float64 whose last 6 rows are 2**-300 times smaller: below RANGE_MIN on their
    own, while the whole probe's largest |·| is ~1."""
    features = RNG.standard_normal((12, 4))
    features[6:] *= 2.0**-300
    outputs, labels = RNG.standard_normal((12, 3)), np.arange(12) % 3
    parts = []
    for rows in (slice(0, 6), slice(6, 12)):
        acc = MomentAccumulator(task="classes")
        batch = (features[rows], outputs[rows], labels[rows])
        acc.update(*((torch.from_numpy(np.ascontiguousarray(a)) for a in batch) if torch_path else batch))
        parts.append(acc.moments())
    whole = MomentAccumulator(task="classes")
    whole.update(features, outputs, labels)
    return parts, whole.moments()


@pytest.mark.parametrize("torch_path", [False, True])
def test_a_slice_of_tiny_values_is_judged_by_the_whole_probe(torch_path: bool) -> None:
    parts, whole = _slices(torch_path)
    assert parts[1].peaks is not None and 0.0 < parts[1].peaks[0] < RANGE_MIN
    merged = measure(merge_all(parts))  # the slice's moments() raised "the features are too small"
    expected = measure(whole)
    np.testing.assert_allclose(merged.eigenvalues, expected.eigenvalues, rtol=1e-12)
    assert merged.scalars["d_lr"] == pytest.approx(expected.scalars["d_lr"], rel=1e-12)
    # the slice alone is refused where it is measured on its own, as the whole probe of such values is
    with pytest.raises(NumericalError, match="the features are too small"):
        measure(parts[1])


SCALED = """
import torch
from torch import nn


class Scaled(nn.Module):
    # float64 features of an input-indexed table, times 2**exponent[input] (a parameter: per checkpoint)
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(12, 4))
        self.outs = nn.Parameter(torch.randn(12, 3))
        self.exponent = nn.Parameter(torch.zeros(12))
        self.feat = nn.Identity()

    def forward(self, x):
        index = x.long().reshape(-1)
        self.feat(self.table[index].double() * torch.exp2(self.exponent[index].double())[:, None])
        return self.outs[index]


def build():
    torch.manual_seed(0)
    return Scaled()
"""


def _scaled_run(tmp_path: Path) -> tuple[Path, Path]:
    """Checkpoints 0 and 2: inputs 6..11 scaled by 2**-300 (in range over the probe); checkpoint 1: every
    input (too small over the probe too)."""
    module = model_file(tmp_path, SCALED)
    runs = tmp_path / "runs"
    runs.mkdir()
    for step, tiny in ((0, slice(6, 12)), (1, slice(0, 12)), (2, slice(6, 12))):
        torch.manual_seed(step)
        model = module.Scaled()
        with torch.no_grad():
            model.exponent[tiny] = -300.0
        torch.save(model.state_dict(), runs / f"step_{step}.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.arange(12), y=np.arange(12) % 3)
    return runs, probe


def test_shard_probe_checks_the_range_on_the_whole_probe_as_one_process(tmp_path: Path) -> None:
    runs, probe = _scaled_run(tmp_path)
    args = ["analyze", runs, "--model", f"{tmp_path / 'model.py'}:build", "--layer", "feat", "--probe", probe,
            "--device", "cpu", "--json"]
    one = fdl_in_process(*args, "-o", tmp_path / "one.h5")  # the one process compared with, in this one
    assert one.returncode == 1, one.stderr
    assert "step_1.pt: the features are too small for fdl's float64 statistics" in one.stderr
    two = torchrun("-m", "fdl_cli", *map(str, args), "-o", str(tmp_path / "two.h5"), "--shard-probe", direct=True)
    # rank 1's slice (inputs 6..11) refused the reference: "largest magnitude is 1.1e-90 ... the run cannot go on"
    assert two.returncode == 1, two.stderr[-3000:]
    assert "the run cannot go on" not in two.stderr
    assert "step_1.pt: the features are too small for fdl's float64 statistics" in two.stderr
    records = [[json.loads(line) for line in done.stdout.splitlines()] for done in (one, two)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == [0, 2]
    for mine, theirs in zip(*records, strict=True):
        assert theirs["d_lr"] == pytest.approx(mine["d_lr"], rel=1e-9)
        assert theirs["rank"] == mine["rank"]


def _watch_log(monkeypatch: pytest.MonkeyPatch, interval: str, polls: tuple[tuple[int, float], ...]) -> list[str]:
    """The progress lines of --watch polls, each (checkpoints found, seconds idle before it), every
    checkpoint taking 5 s, written to a log (not a terminal) with FDL_PROGRESS_INTERVAL=`interval`."""
    from rich.console import Console

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, interval)
    out = io.StringIO()
    with progress.RichReporter(Console(file=out, force_terminal=False, width=200)) as reporter:
        for total, idle in polls:
            now[0] += idle
            reporter.start_run(total)
            for index in range(total):
                reporter.start_checkpoint(index, total, f"step {index}")
                now[0] += 5.0
                reporter.end_checkpoint()
    return out.getvalue().splitlines()


def test_watch_progress_lines_leave_out_the_wait_for_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """--watch: a poll found 2 checkpoints (5 s each), then nothing for an hour, then 3. The lines of the
    second poll said "1/3 checkpoints, ...; 1:00:15 elapsed, about 0:40:10 left" (the idle hour in both)."""
    assert _watch_log(monkeypatch, "0", ((2, 0.0), (3, 3600.0))) == [
        "progress: 1/2 checkpoints, last step 0; 0:00:05 elapsed, about 0:00:05 left",
        "progress: 2/2 checkpoints, last step 1; 0:00:10 elapsed",
        "progress: 1/3 checkpoints, last step 0; 0:00:05 elapsed, about 0:00:10 left",
        "progress: 2/3 checkpoints, last step 1; 0:00:10 elapsed, about 0:00:05 left",
        "progress: 3/3 checkpoints, last step 2; 0:00:15 elapsed",
    ]


def test_a_poll_after_a_long_wait_gets_its_line_at_its_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval still counts from the last line written: the first checkpoint a poll finds after more
    than the interval shows in the log (a watch's sign of life), with the poll's own times."""
    assert _watch_log(monkeypatch, "30", ((2, 0.0), (2, 600.0))) == [
        "progress: 1/2 checkpoints, last step 0; 0:00:05 elapsed, about 0:00:05 left",
    ]


def test_a_store_with_a_wrappers_layer_names_is_told_why_it_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before session 17 a --model factory returning nn.DataParallel (or a pickled DataParallel module) was
    hooked through its wrapper: the store names the layer `module.2:input`. The same command now names it
    `2:input` and the store is refused as "a different run", with nothing said of why. (The store is made
    here by the factory's network held as `module` by a Sequential, which fdl hooks through, as the old fdl
    hooked DataParallel.)"""
    source = ("import collections, os\nimport torch\n\ndef build():\n    torch.manual_seed(0)\n"
              "    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
              "    return torch.nn.Sequential(collections.OrderedDict(module=net)) if os.environ.get('HELD') else net\n")
    module = model_file(tmp_path, source)
    runs = tmp_path / "runs"
    runs.mkdir()
    network = module.build()
    torch.save({"model": network.state_dict(), "step": 0}, runs / "ckpt_0.pt")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32), y=np.arange(16) % 3)
    out = tmp_path / "run.h5"
    args = ("analyze", runs, "--model", f"{tmp_path / 'model.py'}:build", "--probe", probe, "-o", out)
    monkeypatch.setenv("HELD", "1")
    first = fdl_in_process(*args)
    assert first.returncode == 0, first.stderr
    stored = out.read_bytes()
    monkeypatch.delenv("HELD")
    with torch.no_grad():
        network[0].weight.mul_(1.5)
    torch.save({"model": network.state_dict(), "step": 5}, runs / "ckpt_5.pt")
    again = fdl_in_process(*args)
    assert again.returncode == 1
    assert "Traceback" not in again.stderr
    assert again.stderr.startswith(f"error: {out} holds the results of a different run\n"
                                   "  got: layers: ['module.2:input'] (store) vs ['2:input'] (this run)\n"
                                   "  fix: the store's 'module.2:input' is this run's '2:input', the same layer: fdl now "
                                   "takes DataParallel's, DDP's and torch.compile's wrappers off"), again.stderr
    assert again.stderr.rstrip().endswith("pass --overwrite to replace it, or another --out to keep both")
    assert out.read_bytes() == stored  # nothing stored is lost


def test_other_layer_changes_keep_the_plain_advice() -> None:
    from fdl_cli.store import _renamed_by_unwrapping

    assert _renamed_by_unwrapping(["module._orig_mod.body:input", "head"], ["body:input", "head"]) == (
        "module._orig_mod.body:input", "body:input")
    assert _renamed_by_unwrapping(["module.2:input"], ["1:input"]) is None
    assert _renamed_by_unwrapping(["2:input"], ["2:input", "0"]) is None
    assert _renamed_by_unwrapping(["2:input"], ["module.2:input"]) is None  # the other way: not fdl's doing


def test_the_steps_benchmark_runs_fdl_with_its_imports_frozen(tmp_path: Path) -> None:
    """benchmarks/steps.py's `fdl analyze` process imported torch and fdl's modules to wrap them in its
    timers before fdl's `main`, which then froze nothing (torch already loaded): its "process CPU"
    against the SPEC floor's (frozen) was not that of `fdl analyze` (0 frozen objects against ~260 000)."""
    code = f"""
import atexit, gc, runpy, sys
atexit.register(lambda: print("FROZEN", gc.get_freeze_count(), gc.isenabled()))
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
sys.argv = ["steps.py", "--role", "fdl", "sample_checkpoints", "--steps", "0,10", "--out", {str(tmp_path / 's.h5')!r}]
runpy.run_path({str(REPO / 'benchmarks' / 'steps.py')!r}, run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FDL_STEPS=" in done.stderr  # the timings were reported
    _, frozen, enabled = done.stdout.strip().splitlines()[-1].split()
    assert int(frozen) > 50_000 and enabled == "True"
