"""Under torchrun a job says what one process says of the same run, once: the notes another rank makes on
its own checkpoints too, an interrupt once, the GPU of a rank whose launcher sets no LOCAL_RANK, and only
`analyze` (the command that runs as a job) speaks through rank 0.

Twentieth session's review of the nineteenth's "each message said once": another rank's notes were never
shown (a torchrun job said fewer than one process), Ctrl-C was said by every rank, a launcher of several
machines without LOCAL_RANK put a rank on cuda:RANK, and `fdl classify` in a torchrun job's script went
quiet on every rank but 0.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_run import fdl as fdl_process
from tests.test_distributed import _args, _make_run
from tests.test_s19_rank import _torchrun

# -- the messages of a torchrun job are those of one process --------------------------------------------


def _noted_run(folder: Path, copies_at: tuple[int, ...]) -> Path:
    """`_make_run`'s 7 checkpoints (steps 0..60: rank 0's block 0..30, rank 1's 40..60), the files at
    `copies_at` re-saved as training dicts that also hold an EMA copy (noted once a run), beside a README
    and an optimizer state (skipped with notes), a copy of step 60's weights (warned of) and a text file
    named as a checkpoint (an error)."""
    run = _make_run(folder)
    for step in copies_at:
        path = run / f"step_{step}.safetensors"
        weights = load_file(str(path))
        path.unlink()
        torch.save({"model": weights, "ema": {name: 0.5 * value for name, value in weights.items()}},
                   run / f"step_{step}.pt")
    (run / "README.txt").write_text("how this run was trained\n")
    torch.save({"state": {}, "param_groups": []}, run / "optimizer.pt")
    shutil.copy(run / "step_60.safetensors", run / "step_61.safetensors")
    (run / "step_70.safetensors").write_text("not a checkpoint\n")
    return run


def _said(stderr: str) -> set[str]:
    """The notes, warnings and errors of a run's stderr (first lines), the "rank K: " of a relayed one taken off."""
    return {re.sub(r"^(note|warning|error): rank \d+: ", r"\1: ", line) for line in stderr.splitlines()
            if line.startswith(("note: ", "warning: ", "error: "))}


@pytest.mark.parametrize(("copies_at", "relayed"), [((50,), True), ((20, 50), False)],
                         ids=["rank-1-alone", "both-ranks"])
def test_a_torchrun_job_says_the_notes_and_warnings_of_one_process(
    tmp_path: Path, copies_at: tuple[int, ...], relayed: bool
) -> None:
    """Rank 1's note of its step_50.pt holding an EMA copy was never shown. The note is said once a run, of
    the first file that holds one: where rank 0's step_20.pt holds one too, rank 1's is not said either."""
    run = _noted_run(tmp_path / "run", copies_at)
    one = fdl_process(*_args(run, tmp_path / "one.h5"))
    two = _torchrun(*_args(run, tmp_path / "two.h5"))
    assert one.returncode == two.returncode == 1, two.stderr[-4000:]
    expected = _said(one.stderr)
    copies = [line for line in expected if "also holds weights under 'ema'" in line]
    assert copies == [f"note: step_{copies_at[0]}.pt also holds weights under 'ema' (an EMA or teacher copy?): fdl "
                      "analyses the model's own; --weights ema analyses that copy"]
    # the folder's own notes, warning and error (every rank finds them; rank 0 says them)
    for start in ("note: skipped 1 file without a checkpoint suffix", "note: skipped 1 file of training state",
                  f"warning: {run / 'step_60.safetensors'} and {run / 'step_61.safetensors'} hold identical weights",
                  f"error: {run / 'step_70.safetensors'} is a text file"):
        assert any(line.startswith(start) for line in expected), (start, one.stderr)
    assert _said(two.stderr) == expected, two.stderr[-4000:]
    # said by rank 0 naming rank 1, whose checkpoint it is
    assert ("note: rank 1: step_50.pt also holds weights under 'ema'" in two.stderr) == relayed, two.stderr[-4000:]
    assert len([line for line in two.stderr.splitlines() if line.startswith(("note: ", "warning: ", "error: "))]) \
        == len(expected)
