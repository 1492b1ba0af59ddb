"""Review of the sixteenth session: the up-front memory check refuses only runs that cannot fit, and an
allocation that fails is said to be one, wherever it fails."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fdl_cli import resources
from fdl_cli.cli import main
from fdl_cli.store import StoreReader
from tests.cli_run import model_file
from tests.ranks import torchrun
from tests.test_s16_memory import _run

REPO = Path(__file__).resolve().parents[1]
ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
             "to allocate 28800960008 bytes. Error code 12 (Cannot allocate memory)")


def _analyze(tmp_path: Path, ckpts: Path, probe: Path, *extra: str) -> int:
    try:
        main(["analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--model-kwargs", '{"copies": 4}',
              "--layer", "expand", "--probe", str(probe), "-o", str(tmp_path / "run.h5"), *extra])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# The Expand layer of tests/test_s16_memory.py's model with copies = 4: p = 64 features on n = 300 inputs,
# m = 300 anchors. Its float64 statistics (the sums and their copy over the anchors), its float32 anchors and
# one float64 anchor copy (its rows padded by ANCHOR_ROW_PAD = 8 values, as it is allocated; larger than the
# 8·(2·64² + 1 + 6·64 + 2·64²) of the decomposition):
STATISTICS = 8 * (65**2 + 64**2) + 4 * 300 * 64
ANCHORS = 8 * 300 * (64 + 8)


def test_a_run_of_one_checkpoint_counts_one_copy_of_the_anchors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run of one checkpoint holds its anchors once (the reference is that checkpoint): counted twice, a
    p = 1 024, m = 60 000 run asked for 1.0 GB and peaked at 0.82 GB above what it held at the check."""
    ckpts, probe = _run(tmp_path, 300)
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: STATISTICS + ANCHORS + 4_000)
    assert _analyze(tmp_path, ckpts, probe, "--steps", "0") == 0, capsys.readouterr().err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.steps() == [0]
    capsys.readouterr()
    # a second checkpoint compared with the reference holds both copies: still refused, the store as it was
    assert _analyze(tmp_path, ckpts, probe, "--steps", "0,10", "--overwrite") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: this analysis needs at least 489 kB of memory"), err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.steps() == [0]


@pytest.mark.parametrize("layers", [(), ("--layer", "hidden")], ids=["one series", "two series"])
def test_a_run_with_nothing_left_to_analyse_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], layers: tuple[str, ...]
) -> None:
    """Two series: the stored steps were read with `reader.steps()`, which asks for one series and raised,
    taken for "nothing stored", so a resume with nothing to do was checked and refused all the same."""
    ckpts, probe = _run(tmp_path, 300)
    assert _analyze(tmp_path, ckpts, probe, "--steps", "0,10", *layers) == 0
    capsys.readouterr()
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: 1_000)
    assert _analyze(tmp_path, ckpts, probe, "--steps", "0,10", *layers) == 0  # everything stored: it needs nothing
    assert "needs at least" not in capsys.readouterr().err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert sorted({record["step"] for record in reader.records(all_series=True)}) == [0, 10]
    assert _analyze(tmp_path, ckpts, probe, "--steps", "0,10,20", *layers) == 1  # one to analyse: checked
    assert "error: this analysis needs at least" in capsys.readouterr().err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert sorted({record["step"] for record in reader.records(all_series=True)}) == [0, 10]


def _context(device: str, **options: Any) -> Any:
    warnings: list[str] = []
    settings = {"resume": True, "watch": False, "shard_probe": False, "anchor_size": 4096, "center": False, **options}
    return SimpleNamespace(
        options=SimpleNamespace(**settings), device=torch.device(device), world=None, redo=set(), probes=[], n_outputs=0,
        reporter=SimpleNamespace(warn=warnings.append), warnings=warnings,
    )


def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in torch's CUDA cache (on a machine with a GPU, whatever this process holds there)."""
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)


def _refs(folder: Path) -> list[Any]:
    from fdl_cli.checkpoints import CheckpointRef

    return [CheckpointRef(path=folder / f"step_{step}.pt", step=step, step_source="name", kind="state_dict")
            for step in (0, 10)]


def test_on_a_gpu_the_gram_route_counts_on_the_gpu_only_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer wider than the probe keeps its n×p features on the GPU (and concatenates them there once);
    the n×n Gram and its eigenvectors are computed on the host, from a host copy of the features. Counted
    on the GPU, n = 10 000, p = 12 000 asked the GPU for 2.6 GB where 1.9 GB (+ the anchors' 0.4) sit there."""
    from fdl_cli.pipeline import _check_memory

    n, p = 10_000, 12_000
    on_gpu = 2 * 8 * n * p + 2 * 4 * 4096 * p  # the kept features and their concatenation; the float32 anchors
    # host copy; the decomposition: the centered features, the Gram, its eigenvectors, syevd's workspace; this
    # checkpoint's float32 anchors, the reference's float64 ones and CKA's m×m Gram of them
    on_host = 8 * n * p + 8 * (n * p + 2 * n * n + 1 + 6 * n + 2 * n * n) + 4 * 4096 * p + 8 * (4096 * p + 4096**2)
    _no_cache(monkeypatch)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (on_gpu, 10 * on_gpu))
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: on_host)
    refs = _refs(tmp_path)
    ctx = _context("cuda")
    _check_memory(ctx, [("probe", {"wide": p}, n, 4096)], refs=refs, out=tmp_path / "run.h5", reference=refs[0])
    # the GPU holds 2·n·p float64 at least: one byte less is refused, naming the GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 8 * n * p - 1, 10 * on_gpu))
    with pytest.raises(Exception, match="of GPU memory") as caught:
        _check_memory(ctx, [("probe", {"wide": p}, n, 4096)], refs=refs, out=tmp_path / "run.h5", reference=refs[0])
    assert "the GPU (cuda) has 1.9 GB free" in str(caught.value)
    # and the host the Gram: n·p + 2n² float64 and the anchors, at least
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (on_gpu, 10 * on_gpu))
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: 8 * n * p + 16 * n * n - 1)
    with pytest.raises(Exception, match="this machine has"):
        _check_memory(ctx, [("probe", {"wide": p}, n, 4096)], refs=refs, out=tmp_path / "run.h5", reference=refs[0])


def test_a_gpu_whose_free_memory_cannot_be_read_does_not_put_its_statistics_in_host_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fdl_cli.pipeline import _check_memory

    def unknown(device: Any = None) -> tuple[int, int]:
        raise RuntimeError("CUDA driver initialization failed")

    # 6.4 GB of sums on the GPU; the host holds their 6.4 GB of copies, the 16 GB decomposition and the anchors:
    # with 34 GB available that is under the warning's 70 %, which the GPU's sums counted there would pass
    p = 20_000
    needs = resources.run_needs([("probe", {"wide": p}, 100_000, 1000)], gpu=True, uncentered=True)
    host = sum(need.bytes for need in needs if not need.on_device)
    assert host < 0.7 * 34e9 < host + 6.4e9
    _no_cache(monkeypatch)
    monkeypatch.setattr(torch.cuda, "mem_get_info", unknown)
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: 34 * 10**9)
    refs = _refs(tmp_path)
    ctx = _context("cuda", anchor_size=1000)
    _check_memory(ctx, [("probe", {"wide": p}, 100_000, 1000)], refs=refs, out=tmp_path / "run.h5",
                  reference=refs[0])
    assert ctx.warnings == []


def test_under_torchrun_a_rank_refused_for_memory_stops_every_rank_with_its_error(tmp_path: Path) -> None:
    """One rank short of memory (its GPU busier, say) stopped alone: rank 0 went on into a collective and
    died with gloo's 'Connection reset by peer' traceback (or waited for NCCL's timeout)."""
    wrapper = tmp_path / "rank_tight.py"
    wrapper.write_text(
        "import os, sys\n"
        "from fdl_cli import resources\n"
        "if os.environ.get('RANK') == '1':\n"
        "    resources.available_host_bytes = lambda root=None: 1000\n"
        "from fdl_cli.cli import main\n"
        "main(sys.argv[1:])\n",
        encoding="utf-8",
    )
    out = tmp_path / "run.h5"
    done = torchrun(str(wrapper), "analyze", "sample_checkpoints", "--steps", "0,5,10,15", "-o", str(out), "--device",
                    "cpu", direct=True)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # said once, by rank 0, naming the rank refused (every rank printed it before session 19)
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith("this machine has 1.0 kB of memory available (on rank 1)"), lines
    assert "Connection reset by peer" not in done.stderr and "[rank0]:" not in done.stderr
    assert not out.exists()


def test_an_allocation_that_fails_while_a_checkpoint_is_read_is_not_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was reported as 'cannot read the checkpoint ... the file is truncated or corrupt; re-save or re-copy
    it', the checkpoint skipped as a bad file and the run went on."""
    import safetensors.torch

    real = safetensors.torch.load_file

    def load_file(path: str, device: str = "cpu") -> Any:
        if path.endswith("step_10.safetensors"):
            raise RuntimeError(ALLOCATOR)
        return real(path, device=device)

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    out = tmp_path / "run.h5"
    with pytest.raises(SystemExit) as stopped:
        main(["analyze", str(REPO / "sample_checkpoints"), "--steps", "0,5,10,15", "-o", str(out)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"error: ran out of memory reading the checkpoint {REPO / 'sample_checkpoints' / 'step_10.safetensors'}" \
        in err, err
    assert f"got: RuntimeError: {ALLOCATOR}" in err
    assert "corrupt" not in err and "failed" not in err
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 5]


def test_an_allocation_that_fails_on_the_first_sample_is_not_a_probe_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said 'probe ... does not fit the model', fix: 'give the probe inputs the shape and dtype the model's
    forward expects' (a GPU that another program fills gives CUDA's OutOfMemoryError there)."""
    ckpts, probe = _run(tmp_path, 300, boom_at=0)
    with pytest.raises(SystemExit) as stopped:
        main(["analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--probe", str(probe),
              "-o", str(tmp_path / "run.h5")])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"error: ran out of memory at step 0 ({ckpts / 'step_0.pt'})" in err, err
    assert "does not fit the model" not in err and "shape and dtype" not in err
    assert not (tmp_path / "run.h5").exists()


def _fake_machine(root: Path, *, cgroup: str, swap_free_kb: int = 0) -> Path:
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal: 64000000 kB\nMemAvailable: 50000000 kB\nSwapFree: {swap_free_kb} kB\n"
    )
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    return root / "sys" / "fs" / "cgroup"


def test_a_batch_jobs_limit_on_a_group_above_the_process_is_read(tmp_path: Path) -> None:
    """Slurm (cgroup v2) limits the job's group; the process runs in job/step/task groups below it whose
    memory.max is 'max': the check read only the process's own group, saw no limit, and let a run the
    job could not hold go on to be killed by the kernel's OOM killer (no message, no summary)."""
    top = _fake_machine(tmp_path, cgroup="0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    job = top / "system.slice" / "slurmstepd.scope" / "job_7"
    task = job / "step_0" / "user" / "task_0"
    task.mkdir(parents=True)
    for group in (task, task.parent, task.parent.parent):
        (group / "memory.max").write_text("max\n")
    (job / "memory.max").write_text(f"{8 << 30}\n")
    (job / "memory.swap.max").write_text("0\n")
    (job / "memory.stat").write_text(f"anon {5 << 30}\nfile {1 << 30}\n")
    assert resources.available_host_bytes(tmp_path) == 3 << 30


def test_swap_that_a_cgroup_may_use_counts_as_it_does_without_one(tmp_path: Path) -> None:
    """Outside a cgroup the free swap counts (MemAvailable + SwapFree); inside one it did not, so `docker run
    --memory 8g` on a host with swap refused a run that fitted in its 8 GB and the swap Docker allows it."""
    top = _fake_machine(tmp_path, cgroup="0::/\n", swap_free_kb=16 << 20)  # 16 GiB of free swap
    (top / "memory.max").parent.mkdir(parents=True, exist_ok=True)
    (top / "memory.max").write_text(f"{8 << 30}\n")
    (top / "memory.stat").write_text(f"anon {2 << 30}\n")
    (top / "memory.swap.max").write_text(f"{8 << 30}\n")
    (top / "memory.swap.current").write_text(f"{1 << 30}\n")
    assert resources.available_host_bytes(tmp_path) == (6 << 30) + (7 << 30)
    (top / "memory.swap.max").write_text("max\n")  # as much as the host has free
    assert resources.available_host_bytes(tmp_path) == (6 << 30) + (16 << 30)
    (top / "memory.swap.max").write_text("0\n")
    assert resources.available_host_bytes(tmp_path) == 6 << 30


def test_a_cgroup_v1_limit_is_read_from_the_process_group(tmp_path: Path) -> None:
    """cgroup v1 without a namespace (Slurm's task/cgroup, a host's systemd slices): the mount's top is the
    host's root group, without a limit; the process's own group, named in /proc/self/cgroup, has it."""
    top = _fake_machine(tmp_path, cgroup="4:memory:/slurm/uid_1000/job_7/step_0\n0::/\n", swap_free_kb=4 << 20)
    (top / "memory").mkdir(parents=True)
    (top / "memory" / "memory.stat").write_text("hierarchical_memory_limit 9223372036854771712\ntotal_rss 6\n")
    step = top / "memory" / "slurm" / "uid_1000" / "job_7" / "step_0"
    step.mkdir(parents=True)
    (step / "memory.stat").write_text(
        f"hierarchical_memory_limit {8 << 30}\nhierarchical_memsw_limit {9 << 30}\ntotal_rss {6 << 30}\ntotal_swap 0\n"
    )
    assert resources.available_host_bytes(tmp_path) == (2 << 30) + (1 << 30)


def test_the_python_snippet_of_store_md_passes_the_reference_as_classify_does(tmp_path: Path) -> None:
    """tests/test_s16_python.py runs the snippet on a run whose reference is its first step, where leaving
    the reference out gives the same verdict: this one is analysed with --reference 50, a step before it."""
    import contextlib
    import io
    import json

    from tests.test_s16_python import _fdl, _snippet

    store = tmp_path / "sample.fdl.h5"
    done = _fdl("analyze", "sample_checkpoints", "--steps", "0,10,50,100,250,1000", "--reference", "50", "-o", store)
    assert done.returncode == 0, done.stderr
    scope: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(_snippet().replace('"sample.fdl.h5"', repr(str(store))), "docs/store.md", "exec"), scope)
    classify = _fdl("classify", store, "--threshold", "cka_static=0.98", "--json")
    assert classify.returncode == 0, classify.stderr
    expected = json.loads(classify.stdout)
    for key in ("probe", "layer", "note", "overlap_tie"):
        expected["evidence"].pop(key, None)
    assert expected["evidence"]["reference_step"] == 50
    assert scope["verdict"].as_json() == expected


TAGGED = '''
import os

import torch
from torch import nn


class Tagged(nn.Module):
    """Its forward pass fails as the CPU allocator does when $BOOM names the step it was saved at."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("tag", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if os.environ.get("BOOM") == str(int(self.tag)):
            raise RuntimeError(ALLOCATOR)
        return self.head(torch.relu(self.hidden(x)))


def build():
    return Tagged()
'''


def _tagged_run(tmp_path: Path) -> list[str]:
    """Checkpoints 0, 10, 20 of `TAGGED`; the analyze command line for them (without --steps)."""
    import numpy as np

    net = model_file(tmp_path, TAGGED.replace("ALLOCATOR", repr(ALLOCATOR))).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 10, 20):
        net.tag.fill_(step)
        torch.save(net.state_dict(), ckpts / f"step_{step}.pt")
        with torch.no_grad():
            net.hidden.weight.mul_(1.2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(200, 16)).astype(np.float32), y=rng.integers(0, 3, 200))
    return ["analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--probe", str(tmp_path / "probe.npz"),
            "-o", str(tmp_path / "run.h5")]


def test_an_allocation_that_fails_while_a_stored_successor_is_compared_again_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step 10 analysed into a store of 0 and 20 makes step 20's cka_prev compare with it again, after the
    loop over the checkpoints (`_refresh_successors`): an allocation failing there was a traceback."""
    command = _tagged_run(tmp_path)
    main([*command, "--steps", "0,20"])
    capsys.readouterr()
    monkeypatch.setenv("BOOM", "20")
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--steps", "0,10,20"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"error: ran out of memory at step 20 ({tmp_path / 'ckpts' / 'step_20.pt'})" in err, err
    assert "run the same command again: it resumes" in err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.steps() == [0, 10, 20]
    monkeypatch.delenv("BOOM")
    main([*command, "--steps", "0,10,20"])  # the same command: step 20 now compares with step 10
    with StoreReader(tmp_path / "run.h5") as reader:
        assert [record["prev_step"] for record in reader.records()] == [None, 0, 10]


def test_an_allocation_that_fails_while_redo_compares_a_successor_again_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--redo 10 takes step 20's cka_prev again against the new step 10 (`_redo_successors`): an allocation
    failing there was a traceback; now the error, and the store as it was (one commit holds both or none)."""
    command = _tagged_run(tmp_path)
    main(command)
    with StoreReader(tmp_path / "run.h5") as reader:
        before = reader.records()
    capsys.readouterr()
    monkeypatch.setenv("BOOM", "20")
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--redo", "10"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"error: ran out of memory at step 20 ({tmp_path / 'ckpts' / 'step_20.pt'})" in err, err
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.records() == before


RANKED = '''
import os

import torch
from torch import nn


class Net(nn.Module):
    """Rank 1's forward passes fail as the CPU allocator does: of one sample with $BOOM=first, of a batch
    with $BOOM=batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        boom = os.environ.get("BOOM")
        if os.environ.get("RANK") == "1" and (boom == "first") == (x.shape[0] == 1):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 28800960008 bytes.")
        return self.head(torch.relu(self.hidden(x)))


def build():
    return Net()
'''


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == parent:
            found.append(int(path.parent.name))
    return found


def _torchrun_ranked(tmp_path: Path, boom: str, *extra: str) -> tuple[int, str]:
    """`fdl analyze` of RANKED's three checkpoints under torchrun (2 CPU ranks): (status, stderr). A run that
    hangs is killed (its whole process group) and fails the test."""

    import numpy as np

    net = model_file(tmp_path, RANKED).build()
    (tmp_path / "ckpts").mkdir()
    for step in (0, 10, 20):
        torch.save(net.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
        with torch.no_grad():
            net.hidden.weight.mul_(1.2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(300, 16)).astype(np.float32), y=rng.integers(0, 3, 300))
    try:  # the ranks as torchrun starts them (`tests.ranks`); a rank that hangs is killed
        done = torchrun("-m", "fdl_cli", "analyze", str(tmp_path / "ckpts"), "--model", f"{tmp_path}/model.py:build",
                        "--probe", str(tmp_path / "probe.npz"), "-o", str(tmp_path / "run.h5"), "--device", "cpu",
                        *extra, direct=True, env={"BOOM": boom}, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung")
    return done.returncode, done.stderr


def test_under_shard_probe_an_allocation_failing_on_one_ranks_slice_stops_every_rank(tmp_path: Path) -> None:
    """The forward pass lets an allocation failure through since this session (it is no error of the model's):
    under --shard-probe it then skipped the ranks' agreement on a failed slice, and rank 0 waited in it for
    ever (a ModelError before, which the ranks agreed on)."""
    status, err = _torchrun_ranked(tmp_path, "batch", "--shard-probe")
    assert status != 0
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    step_0 = tmp_path / "ckpts" / "step_0.pt"
    assert said and set(said) == {f"error: ran out of memory at step 0 ({step_0}) (on rank 1's probe slice)"}, err
    assert "got: RuntimeError: DefaultCPUAllocator: can't allocate memory" in err


def test_under_torchrun_an_allocation_failing_on_one_ranks_first_sample_stops_every_rank(tmp_path: Path) -> None:
    status, err = _torchrun_ranked(tmp_path, "first")
    assert status != 0
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    at = f"error: ran out of memory at step 0 ({tmp_path / 'ckpts' / 'step_0.pt'})"
    assert said == [f"{at} (on rank 1)"], err  # once, by rank 0 (every rank printed it before session 19)
    assert "Connection reset by peer" not in err and "[rank0]:" not in err
    assert not (tmp_path / "run.h5").exists()


def test_the_gpu_memory_torch_holds_unused_in_its_cache_counts_as_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.cuda.mem_get_info's free bytes leave out what torch's caching allocator reserved and does not use
    (the first sample's pass left it there), which fdl's tensors get first."""
    from fdl_cli.pipeline import _check_memory

    p = 20_000
    need = 8 * ((p + 1) ** 2 + p * p)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need - 500_000_000, 10 * need))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 800_000_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 300_000_000)
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: 10**12)
    refs = _refs(tmp_path)
    _check_memory(_context("cuda", anchor_size=100), [("probe", {"wide": p}, 100_000, 100)], refs=refs,
                  out=tmp_path / "run.h5", reference=refs[0])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 300_000_001)
    with pytest.raises(Exception, match="of GPU memory"):
        _check_memory(_context("cuda", anchor_size=100), [("probe", {"wide": p}, 100_000, 100)], refs=refs,
                      out=tmp_path / "run.h5", reference=refs[0])
