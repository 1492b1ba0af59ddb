"""`torchrun ... -m fdl_cli analyze --json` stopped by a Ctrl-C: every checkpoint that rank 0 stored in the run is
printed once on stdout and counted in the summary, as one process does (docs/reliability.md, 48 and 51).

Rank 0 announced a commit's checkpoints in a loop that a Ctrl-C landing in a record's print stopped, the rest stored
but neither printed nor counted; and on the way out its writer committed what it still buffered, never announced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdl_cli.store import StoreReader
from tests.ranks import torchrun
from tests.test_distributed import _args, _make_run

#: `fdl analyze` as a rank of the job, rank 0 given a Ctrl-C (a real SIGINT, fdl's handler in place) at CTRL_C_AT:
#: "printing:S", as it is about to print step S's record (before a byte of it, as in a print that waits on a pipe);
#: "handed:S", once it has handed step S to the store (buffered: --commit-interval 1000), before its next checkpoint.
RANK = """
import os
import signal
import sys

from fdl_cli import cli, sharding

if os.environ["RANK"] == "0":
    where, step = os.environ["CTRL_C_AT"].split(":")
    fired = []

    def ctrl_c(at):
        if at == int(step) and not fired:
            fired.append(at)
            signal.raise_signal(signal.SIGINT)

    if where == "printing":
        emit = cli._emit_json

        def printing(obj, stream=None):
            if isinstance(obj, dict):
                ctrl_c(obj.get("step"))
            emit(obj, stream)

        cli._emit_json = printing
    else:
        add = sharding._StoringWriter.add

        def handed(self, entry):
            got = add(self, entry)
            if entry is not None:
                ctrl_c(entry.step)
            return got

        sharding._StoringWriter.add = handed

cli.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("rankjson") / "run")


@pytest.mark.parametrize(("at", "stored"), [("printing:20", [0, 10, 20, 30]), ("handed:10", [0, 10])])
def test_a_ctrl_c_of_rank_0_leaves_no_stored_checkpoint_unprinted_or_uncounted(
    run: Path, tmp_path: Path, at: str, stored: list[int]
) -> None:
    """Steps 0..30 (--commit-interval 1000): rank 0's block, 0 and 10, is one commit before it waits for rank 1's, 20
    and 30, which it writes in one more. A Ctrl-C as it printed step 20's record printed neither that one nor 30's,
    and counted 3 ("3 checkpoints analysed"), all four stored; one once it had handed step 10 to the store printed
    nothing and counted nothing ("0 checkpoints analysed"), while its writer's close stored 0 and 10."""
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(RANK, encoding="utf-8")
    out = tmp_path / "s.h5"
    args = _args(run, out, "--steps", "0,10,20,30", "--commit-interval", "1000")
    done = torchrun(str(wrapper), *args, direct=True, env={"CTRL_C_AT": at})
    assert done.returncode != 0
    with StoreReader(out) as reader:
        assert sorted(record["step"] for record in reader.records()) == stored, done.stderr[-4000:]
    printed = [json.loads(line)["step"] for line in done.stdout.splitlines()]
    assert sorted(printed) == stored, done.stderr[-4000:]  # each once
    said = done.stderr.splitlines()
    assert f"{len(stored)} checkpoints analysed → {out}" in said, done.stderr[-4000:]
    assert said.count("interrupted: what was completed is in the store; run the same command again to resume") == 1
