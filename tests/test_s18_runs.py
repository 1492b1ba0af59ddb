"""The messy checkpoint folders real training jobs leave (session 18, tiny digits MLPs run on the CPU): a
job restarted with its step count reset (into a second folder, or under other names in the same one),
files cut short while being written, an empty file, a checkpoint of another model among the run's.

`--step-offset PAT=N` adds N to the steps of the checkpoints a folder or glob takes in, so such a run is
analysed as one store; a resume with other step options than the store's refuses rather than storing a
file twice."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.errors import SameStepError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.test_prev_walkback import _arrive, _polls
from tests.test_reliability_inputs import MODEL, SMALL, _weights, _wide_terminal  # noqa: F401 (an autouse fixture)
from tests.test_reliability_inputs import fdl as _fdl
from tests.tiny_models import mlp

torch.set_num_threads(1)


def fdl(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """`fdl ARGV` in this process, as the console script runs it: (exit status, stdout, stderr)."""
    return _fdl(capsys, *(str(arg) for arg in argv))


def _save(folder: Path, name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_weights(seed), str(folder / name))


def _restarted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """run1: steps 0, 10, 20, then a crash; run2: the job restarted from step 20 with its step count reset
    (its step_0 holds step 20's weights, its step_10 and step_20 are steps 30 and 40); whole: the same
    checkpoints named by their real steps, and the probe."""
    for step in (0, 10, 20):
        _save(tmp_path / "run1", f"step_{step}.safetensors", step // 10)
        _save(tmp_path / "run2", f"step_{step}.safetensors", step // 10 + 2)
    for step in (0, 10, 20, 30, 40):
        _save(tmp_path / "whole", f"step_{step}.safetensors", step // 10)
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 3, 24))
    return tmp_path / "run1", tmp_path / "run2", probe


def _records(store: Path) -> list[dict[str, Any]]:
    """The stored records, paths left out (the same weights, other files)."""
    with StoreReader(store) as reader:
        return [{k: v for k, v in record.items() if k != "path"} for record in reader.records()]


def _whole(tmp_path: Path, capsys: pytest.CaptureFixture[str], probe: Path) -> list[dict[str, Any]]:
    status, _, err = fdl(capsys, "analyze", tmp_path / "whole", "--model", MODEL, "--probe", probe,
                         "-o", tmp_path / "whole.h5", *SMALL)
    assert status == 0, err
    return _records(tmp_path / "whole.h5")


# ------------------------------------------------------------------------------- a restarted job


def test_two_folders_at_the_same_steps_are_not_sent_to_a_folder_regex(tmp_path: Path) -> None:
    """`fdl analyze run1 run2` of a job restarted into run2 advised --step-regex 'run(\\d+)/', which read every
    file of run1 as step 1 (and then advised the names' regex, which led back). Now: two runs, or a
    restart, with the --step-offset that places run2 after run1 (found from run2/step_0 = run1/step_20)."""
    run1, run2, _ = _restarted(tmp_path)
    with pytest.raises(SameStepError) as caught:
        discover_checkpoints([run1, run2])
    message = caught.value.message
    assert "--step-regex 'run(\\d+)/'" not in message
    assert f"the folders {run1} (3 checkpoints) and {run2} (3) hold checkpoints of the same steps" in message
    assert f"--step-offset '{run2}=20' (step_0.safetensors holds the weights of {run1 / 'step_20.safetensors'})" \
        in message
    # one checkpoint a folder (DeepSpeed's global_step100/mp_rank_00_model_states.pt) keeps the folder regex
    for step in (100, 200):
        _save(tmp_path / f"global_step{step}", "mp_rank_00.safetensors", step)
    with pytest.raises(SameStepError, match="--step-regex 'global_step\\(\\\\d\\+\\)/'"):
        discover_checkpoints([tmp_path / "global_step100", tmp_path / "global_step200"])


def test_step_offset_analyses_a_restarted_folder_as_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run1, run2, probe = _restarted(tmp_path)
    expected = _whole(tmp_path, capsys, probe)
    out = tmp_path / "run.h5"
    status, stdout, err = fdl(capsys, "analyze", run1, run2, "--step-offset", f"{run2}=20", "--model", MODEL,
                              "--probe", probe, "-o", out, "--json", *SMALL)
    assert status == 0, err
    assert [json.loads(line)["step"] for line in stdout.splitlines()] == [0, 10, 20, 30, 40]
    # run2/step_0 repeats run1/step_20: one of them is kept, the one whose name holds its step
    assert "skipped run2/step_0.safetensors: same weights and step (20) as run1/step_20.safetensors" in err
    with StoreReader(out) as reader:
        assert [Path(r["path"]).relative_to(tmp_path).as_posix() for r in reader.records()] == [
            "run1/step_0.safetensors", "run1/step_10.safetensors", "run1/step_20.safetensors",
            "run2/step_10.safetensors", "run2/step_20.safetensors"]
    assert _records(out) == expected
    # a glob matched from the right, as --glob, takes the folder's files in too
    status, _, err = fdl(capsys, "analyze", run1, run2, "--step-offset", "run2/*=20", "--model", MODEL,
                         "--probe", probe, "-o", tmp_path / "glob.h5", *SMALL)
    assert status == 0, err
    assert _records(tmp_path / "glob.h5") == expected


def test_step_offset_by_glob_for_a_job_restarted_under_other_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The restarted job writes resume_step_N beside step_N in the same folder: the error names the
    --step-offset, which then analyses the folder as one run."""
    run1, run2, probe = _restarted(tmp_path)
    for step in (0, 10, 20):
        (run2 / f"step_{step}.safetensors").rename(run1 / f"resume_step_{step}.safetensors")
    expected = _whole(tmp_path, capsys, probe)
    common = ["--model", MODEL, "--probe", probe, *SMALL]
    status, _, err = fdl(capsys, "analyze", run1, *common, "-o", tmp_path / "run.h5")
    assert status == 1
    flat = " ".join(err.split())
    assert ("or, for a job restarted with its step count reset into names like resume_step_0.safetensors, "
            "--step-offset 'resume_step_*.safetensors=20' (resume_step_0.safetensors holds the weights of "
            "step_20.safetensors) to place them after the others") in flat
    status, _, err = fdl(capsys, "analyze", run1, *common, "-o", tmp_path / "run.h5",
                         "--step-offset", "resume_step_*.safetensors=20")
    assert status == 0, err
    assert _records(tmp_path / "run.h5") == expected


def test_a_resume_with_the_same_offset_completes_the_store_and_another_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--every 2 then every checkpoint, with the same --step-offset: the store of one run. A resume that
    reads run2's files at other steps (another offset) stored each file a second time, exit 0; it is
    refused, the store unchanged."""
    run1, run2, probe = _restarted(tmp_path)
    expected = _whole(tmp_path, capsys, probe)
    out = tmp_path / "run.h5"
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", out, *SMALL]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20", "--every", "2")
    assert status == 0, err
    assert [r["step"] for r in _records(out)] == [0, 20, 40]
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20")
    assert status == 0, err
    assert _records(out) == expected
    before = out.read_bytes()
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=100")
    assert status == 1
    flat = " ".join(err.split())
    assert (f"error: {run2 / 'step_10.safetensors'}, which {out} analysed as step 30, is step 110 in this run (from "
            "its name + 100, --step-offset) (and 1 more file so): the store would hold the same checkpoint at two "
            "steps") in flat
    assert "re-analyse everything with --overwrite (or another --out)" in flat
    assert out.read_bytes() == before


def test_a_resume_with_another_step_regex_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store of step_0 .. step_40, resumed with a --step-regex that reads step_10 as step 1 (and so on):
    each file was analysed again and stored at its second step too, exit 0."""
    _, _, probe = _restarted(tmp_path)
    _whole(tmp_path, capsys, probe)
    store = tmp_path / "whole.h5"
    before = store.read_bytes()
    status, _, err = fdl(capsys, "analyze", tmp_path / "whole", "--model", MODEL, "--probe", probe, "-o", store,
                         *SMALL, "--step-regex", r"step_(\d+?)0?\.safetensors")
    assert status == 1
    flat = " ".join(err.split())
    assert (f"error: {tmp_path / 'whole' / 'step_10.safetensors'}, which {store} analysed as step 10, is step 1 in "
            "this run (from its step_regex) (and 3 more files so)") in flat
    assert "hashing 4 stored checkpoint files whose step in this run is another than the stored one" in flat
    assert store.read_bytes() == before


def test_watch_with_step_offset_follows_the_restarted_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--watch over both folders while the restarted job writes run2: its checkpoints arrive at their
    offset steps, each compared with the one before (the store of one run over every file)."""
    run1, source, probe = _restarted(tmp_path)
    expected = _whole(tmp_path, capsys, probe)
    run2 = tmp_path / "live"
    run2.mkdir()
    out = tmp_path / "watch.h5"
    with _polls(monkeypatch, lambda: _arrive(source, run2, "step_0.safetensors", "step_10.safetensors"),
                lambda: _arrive(source, run2, "step_20.safetensors")):
        summary = run_analyze(
            AnalyzeOptions(sources=(str(run1), str(run2)), model_spec=MODEL, probe_specs=(str(probe),), out=out,
                           top_k=4, anchor_size=16, batch_size=16, device="cpu", watch=True, poll_seconds=0.01,
                           step_offsets=((str(run2), 20),)),
            reporter=NullReporter(),
        )
    assert summary.interrupted and not summary.failed
    assert _records(out) == expected


def test_step_offset_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run1, run2, probe = _restarted(tmp_path)
    common = [run1, run2, "--model", MODEL, "--probe", probe, "-o", tmp_path / "run.h5", *SMALL]
    for wrong in ("run2", "run2=abc", "=5"):
        status, _, err = fdl(capsys, "analyze", *common, "--step-offset", wrong)
        assert status == 2 and "Invalid value for --step-offset: give PAT=N" in err, err
    status, _, err = fdl(capsys, "analyze", *common, "--step-offset", f"{run2}=20", "--step-offset", "step_1*=5")
    assert status == 1
    assert (f"error: {run2 / 'step_10.safetensors'} matches two --step-offset patterns: '{run2}=20' and "
            "'step_1*=5'") in err
    assert not (tmp_path / "run.h5").exists()


# -------------------------------------------------------------------- files cut short, empty, another model


def test_a_checkpoint_cut_short_while_written_and_an_empty_one_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .pt cut short (torch.save not finished) said "got: [Errno 22] Invalid argument"; an empty file was
    both noted as skipped and reported as unreadable, with no fix."""
    run1, _, probe = _restarted(tmp_path)
    buffer = io.BytesIO()
    torch.save(_weights(3), buffer)
    (run1 / "step_30.pt").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (run1 / "step_40.pt").write_bytes(b"")
    status, _, err = fdl(capsys, "analyze", run1, "--model", MODEL, "--probe", probe, "-o", tmp_path / "r.h5", *SMALL)
    assert status == 1
    flat = " ".join(err.split())
    size = len(buffer.getvalue()) // 2
    fix = ("fix: re-save or re-copy it; a file a training job is still writing is analysed by the same command run "
           "again once it is written (it analyses only what the store lacks), or follow the job with --watch")
    assert (f"error: cannot read the checkpoint {run1 / 'step_30.pt'} got: a zip archive cut short ({size} bytes, "
            f"without the central directory that ends a whole one) {fix}") in flat
    assert f"error: cannot read the checkpoint {run1 / 'step_40.pt'} got: the file is empty (0 bytes) {fix}" in flat
    assert "Errno" not in err
    assert "skipped step_40.pt" not in err
    assert "3 checkpoints analysed, 2 failed" in err


def test_a_checkpoint_of_another_model_among_the_run_names_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fix said "wrong --model or --model-kwargs?" of a model that fits every other checkpoint."""
    run1, _, probe = _restarted(tmp_path)
    save_file({k: v.contiguous() for k, v in mlp(hidden=5).state_dict().items()}, str(run1 / "step_30.safetensors"))
    status, _, err = fdl(capsys, "analyze", run1, "--model", MODEL, "--probe", probe, "-o", tmp_path / "r.h5", *SMALL)
    assert status == 1
    flat = " ".join(err.split())
    assert (f"error: the weights in {run1 / 'step_30.safetensors'} do not fit the model built by --model") in flat
    assert (f"fix: the reference checkpoint {run1 / 'step_0.safetensors'} (step 0) fits this model: this file holds "
            "another model's weights (its sizes say which); leave it out (move it out of the folder, or select the "
            "run's files with --glob or --steps), or, if it is the run's, check --model / --model-kwargs") in flat


def test_optimizer_states_saved_beside_each_checkpoint_are_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loop saving optim_N.pt beside each step_N (and a rolling optimizer.pt) had a note a file: 300 lines
    for a run of 300 checkpoints. Now one line, as for the training state a Trainer saves."""
    run1, _, probe = _restarted(tmp_path)
    net = mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.zeros(2, 4)).sum().backward()
    optimizer.step()
    for step in (0, 10, 20):
        torch.save(optimizer.state_dict(), run1 / f"optim_{step}.pt")
    torch.save(optimizer.state_dict(), run1 / "optimizer.pt")
    status, _, err = fdl(capsys, "analyze", run1, "--model", MODEL, "--probe", probe, "-o", tmp_path / "r.h5", *SMALL)
    assert status == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == ["note: skipped 4 files of training state (optimizer, scheduler, RNG, arguments), not model "
                     "weights: optimizer.pt, optim_0.pt, optim_10.pt, optim_20.pt"], err
