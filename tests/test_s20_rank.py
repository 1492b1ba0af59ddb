"""Under torchrun a job says what one process says of the same run, once: the notes another rank makes on
its own checkpoints too, an interrupt once, the GPU of a rank whose launcher sets no LOCAL_RANK, and only
`analyze` (the command that runs as a job) speaks through rank 0.

Twentieth session's review of the nineteenth's "each message said once": another rank's notes were never
shown (a torchrun job said fewer than one process), Ctrl-C was said by every rank, a launcher of several
machines without LOCAL_RANK put a rank on cuda:RANK, and `fdl classify` in a torchrun job's script went
quiet on every rank but 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fdl_cli import distributed
from fdl_cli.distributed import World, detect_world, device_for, voice
from fdl_cli.errors import FdlError
from tests import warm
from tests.cli_run import fdl_in_process
from tests.test_analyze import Result, fdl
from tests.test_distributed import REPO, _args, _make_run
from tests.test_s16_tty import AGAIN, Stderr, during_import, slow_torch  # noqa: F401 - a fixture
from tests.test_s18_device import _gpus
from tests.test_s19_rank import _as_rank, _no_traceback_of_fdl, _torchrun

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
    one = fdl_in_process(*_args(run, tmp_path / "one.h5"))  # one process: the messages the job must say
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


# -- an interrupt is said once --------------------------------------------------------------------------

#: A model file whose import waits, after it has marked the rank in $FDL_TEST_MARKS: every rank is then
#: before any work (the model is imported as the inputs are checked), for as long as the test needs. A quiet rank's
#: grace is 10 minutes there: a job that ends within the test's 2 minutes did not wait it out, however loaded the
#: machine (the bound was the 10 s grace itself; a torchrun job's prompt end took 11 s at load 16 on 2 cores,
#: tests/test_s22_gloo.py).
IMPORT_WAITS = """
import os
import time
from pathlib import Path

from fdl_cli import distributed
from tests.tiny_models import mlp

distributed.QUIET_EXIT_GRACE = 600.0

Path(os.environ["FDL_TEST_MARKS"], "rank" + os.environ["RANK"]).touch()
time.sleep(120)
"""


def test_a_ctrl_c_of_a_torchrun_job_is_said_once(tmp_path: Path) -> None:
    """torchrun hands the Ctrl-C it gets to every rank: each printed "interrupted" (and click's blank line)."""
    run = _make_run(tmp_path / "run")
    (tmp_path / "model.py").write_text(IMPORT_WAITS)
    (tmp_path / "marks").mkdir()
    args = _args(run, tmp_path / "s.h5")
    args[args.index("--model") + 1] = f"{tmp_path / 'model.py'}:mlp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "FDL_TEST_MARKS": str(tmp_path / "marks")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fdl_cli",
               *args]
    job = warm.spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    # (SIGINT as from a terminal: a warm child takes it as Python does, whatever the test process inherited)
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "marks").iterdir())) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert len(list((tmp_path / "marks").iterdir())) == 2
        job.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C reaches: torchrun (its ranks have sessions of their own)
        # a quiet rank does not wait for rank 0: the job ends long before its grace (600 s here)
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
        job.wait()
    lines = stderr.splitlines()
    assert lines.count("interrupted") == 1, stderr[-4000:]
    _no_traceback_of_fdl(stderr)
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize(("rank", "command", "says"), [("0", "analyze", True), ("1", "analyze", False),
                                                         ("1", "inspect", True)])
def test_a_ctrl_c_during_import_torch_is_said_by_rank_0_of_a_torchrun_job(
    tmp_path: Path, request: pytest.FixtureRequest, rank: str, command: str, says: bool
) -> None:
    """The Ctrl-C torchrun hands every rank while it imports torch: each said fdl would stop once torch had
    loaded, then "interrupted". `fdl inspect` is no rank of a job: a process of its own, it says all."""
    def once(process: subprocess.Popen[bytes], stderr: Stderr) -> None:
        process.send_signal(signal.SIGINT)
        if says:
            stderr.wait_for(AGAIN)
        else:
            time.sleep(0.5)  # the watcher takes it at once (it polls every 0.05 s), saying nothing
        (tmp_path / "release").touch()

    environ = {**request.getfixturevalue("slow_torch"), "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank,
               "LOCAL_WORLD_SIZE": "2"}
    began = time.monotonic()
    status, text, _ = during_import(environ, tmp_path, command, once)
    assert status == 130, (status, text)
    assert (AGAIN in text) == says and ("interrupted" in text) == says, text
    assert ("\n\n" in text) == says  # click's blank line, closing a terminal's "^C", came from every rank too
    assert "Traceback" not in text
    assert time.monotonic() - began < distributed.QUIET_EXIT_GRACE + 2  # rank 1 does not wait for rank 0


# -- a command other than analyze is no rank of a job ---------------------------------------------------


def test_a_command_run_in_a_torchrun_jobs_script_says_what_it_meets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun --no-python job.sh` runs `fdl classify run.h5 --expect MF` on every rank, each inheriting
    WORLD_SIZE: ranks other than 0 kept a usage error quiet (after a wait for a rank 0 that says nothing of
    theirs) and named themselves in an error ("error on rank 1: ..."), though each is a process of its own."""
    _as_rank(monkeypatch, 1)
    usage = fdl("classify", str(tmp_path / "run.h5"), "--bogus")
    assert usage.code == 2 and "No such option '--bogus'" in usage.stderr, usage
    missing = fdl("classify", str(tmp_path / "run.h5"))
    assert missing.code == 1 and missing.stderr.startswith(f"error: no fdl store at {tmp_path / 'run.h5'}"), missing
    # analyze is a rank of the job: rank 0 says its usage error
    quiet = fdl("analyze", str(tmp_path), "--bogus")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (2, "", "")


# -- the device, said as the ranks meet it --------------------------------------------------------------


def test_a_device_named_wrong_is_said_once_and_one_missing_once_a_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--device xpu` follows from the command line alone, and no CUDA GPU from the machine: each rank said
    it, naming itself ("error on rank 1: --device cuda:1: no CUDA GPU is available" for --device cuda)."""
    run = _make_run(tmp_path / "run")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def analyze(device: str) -> Result:
        return fdl("analyze", str(run), "--model", "tests.tiny_models:mlp", "--probe", str(run / "probe.npz"), "--out",
                   str(tmp_path / "s.h5"), "--device", device)

    for device, said in (("xpu", "error: --device xpu: fdl runs on the CPU or a CUDA GPU only\n"),
                         ("cuda", "error: --device cuda: no CUDA GPU is available\n")):
        _as_rank(monkeypatch, 1)
        quiet = analyze(device)
        assert (quiet.code, quiet.stdout, quiet.stderr) == (1, "", ""), (device, quiet)
        _as_rank(monkeypatch, 0)
        done = analyze(device)
        assert done.code == 1 and done.stderr.startswith(said), done
    # without LOCAL_RANK or LOCAL_WORLD_SIZE the machines are not known: each rank names itself
    _as_rank(monkeypatch, 1, {"WORLD_SIZE": "2"})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    done = analyze("cuda")
    assert done.code == 1 and done.stderr.startswith("error on rank 1: --device cuda: no CUDA GPU is available"), done
    assert not (tmp_path / "s.h5").exists()


# -- the GPU of a rank whose launcher sets no LOCAL_RANK ------------------------------------------------


def test_a_rank_without_local_rank_takes_a_gpu_of_its_machine_or_asks_for_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two machines of 4 GPUs, ranks 0..7 from a launcher that sets RANK and WORLD_SIZE only (mpirun, srun):
    rank 5 took cuda:5 and was told "rank 5 has LOCAL_RANK=5", a variable nobody had set."""
    _gpus(monkeypatch, 4)
    second = detect_world({"RANK": "5", "WORLD_SIZE": "8"})
    assert (second.local_rank, second.local_rank_known) == (5, False)
    with pytest.raises(FdlError) as caught:
        device_for(second, "cuda")
    assert caught.value.what.startswith("rank 5 cannot tell which GPU of this machine is its own: the launcher set "
                                        "RANK and WORLD_SIZE but no LOCAL_RANK")
    assert caught.value.got == "RANK=5, WORLD_SIZE=8, 4 CUDA GPUs visible"
    assert caught.value.fix is not None and "LOCAL_RANK=$SLURM_LOCALID" in caught.value.fix
    assert "LOCAL_WORLD_SIZE" in caught.value.fix and "--device cpu" in caught.value.fix
    with pytest.raises(FdlError):
        device_for(second, "auto")
    assert device_for(second, "cpu") == "cpu"
    # a rank whose RANK is a GPU of its machine takes it: distinct ranks, distinct GPUs (one machine: as before)
    assert device_for(detect_world({"RANK": "2", "WORLD_SIZE": "8"}), "cuda") == "cuda:2"
    assert device_for(detect_world({"RANK": "3", "WORLD_SIZE": "4"}), "auto") == "cuda:3"
    # LOCAL_WORLD_SIZE alone: the ranks numbered machine by machine, as torchrun numbers them
    by_size = detect_world({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})
    assert (by_size.local_rank, by_size.local_rank_known) == (1, True)
    assert device_for(by_size, "cuda") == "cuda:1"
    # ... and the machine's first rank says what every rank of it meets (no rank of the second machine did)
    assert voice("machine", detect_world({"RANK": "4", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})) == ""
    assert voice("machine", by_size) is None
    # torchrun's LOCAL_RANK, as it was
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert detect_world(torchrun) == World(rank=5, size=8, local_rank=1, local_size=4)
    assert device_for(detect_world(torchrun), "cuda") == "cuda:1"
    assert device_for(detect_world({**torchrun, "RANK": "1", "WORLD_SIZE": "4"}), "cuda") == "cuda:1"
    # no GPU: said by resolve_device as asked ("--device cuda", not the cuda:LOCAL_RANK it became)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for(detect_world(torchrun), "cuda") == "cuda"
