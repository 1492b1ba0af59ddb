"""Memory: a layer too wide for the machine is refused before any work, with what it needs and how to
need less; an allocation that fails mid-run is explained, and the checkpoints stored before it stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli import resources
from fdl_cli.store import StoreReader
from tests.cli_run import fdl_in_process, model_file
from tests.ranks import torchrun

MODEL = '''
import torch
from torch import nn


class Expand(nn.Module):
    """No parameters: its output repeats the input `copies` times (a layer as wide as one likes, for free)."""

    def __init__(self, copies):
        super().__init__()
        self.copies = copies

    def forward(self, x):
        return x.repeat(1, self.copies)


class Wide(nn.Module):
    def __init__(self, copies=1):
        super().__init__()
        torch.manual_seed(0)
        self.expand = Expand(copies)
        self.hidden = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("boom", torch.zeros(()))

    def forward(self, x):
        wide = self.expand(x)
        if self.boom.item() > 0:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 28800960008 bytes. Error code 12 (Cannot allocate memory)")
        return self.head(torch.relu(self.hidden(x))) + 0 * wide[:, :1]


def build(copies=1):
    return Wide(copies)
'''


def _run(tmp_path: Path, n: int, boom_at: int | None = None) -> tuple[Path, Path]:
    net = model_file(tmp_path, MODEL).build()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 10, 20, 30):
        if step == boom_at:
            net.boom.fill_(1.0)
        torch.save(net.state_dict(), ckpts / f"step_{step}.pt")
        net.boom.fill_(0.0)
        with torch.no_grad():
            net.hidden.weight.mul_(1.2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(n, 16)).astype(np.float32), y=rng.integers(0, 3, n))
    return ckpts, tmp_path / "probe.npz"


@pytest.mark.parametrize(("copies", "n", "route"), [
    (12_500, 200_000, "the p×p second moment and its copy over the anchors (p = 200,000)"),  # 640 GB
    (2_500_000, 1_000, "the n×p features of the Gram route (n = 1,000, p = 40,000,000)"),  # 0.3 TB + anchors
])
def test_a_layer_too_wide_for_the_machine_is_refused_before_any_work(
    tmp_path: Path, copies: int, n: int, route: str
) -> None:
    ckpts, probe = _run(tmp_path, n)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--model-kwargs",
                          f'{{"copies": {copies}}}', "--layer", "expand", "--probe", probe, "-o", out)
    assert done.returncode == 1, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: this analysis needs at least ") and "of memory for its float64" in first
    assert route in done.stderr
    assert "hook a narrower layer with --layer (the widest is 'expand'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()


def test_an_allocation_that_fails_mid_run_is_explained_and_what_was_stored_stays(tmp_path: Path) -> None:
    ckpts, probe = _run(tmp_path, 300, boom_at=20)
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", ckpts, "--model", f"{tmp_path}/model.py:build", "--probe", probe, "-o", out)
    assert done.returncode == 1
    assert f"error: ran out of memory at step 20 ({ckpts / 'step_20.pt'})" in done.stderr
    assert "got: RuntimeError: [enforce fail at alloc_cpu.cpp:127]" in done.stderr
    assert "run the same command again: it resumes" in done.stderr
    assert "Traceback" not in done.stderr and "forward pass failed" not in done.stderr
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 10]


def test_what_is_available_is_read_from_meminfo_and_the_cgroup(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 32000000 kB\nMemAvailable: 20000000 kB\nSwapFree: 1000 kB\n")
    assert resources.available_host_bytes(tmp_path) == 20_001_000 * 1024  # no cgroup files: meminfo alone
    # cgroup v2, the process's own group: a 4 GiB limit, 1 GiB of it anonymous memory (page cache not counted)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/jobs/fdl\n")
    group = tmp_path / "sys" / "fs" / "cgroup" / "jobs" / "fdl"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(f"{4 << 30}\n")
    (group / "memory.stat").write_text(f"anon {1 << 30}\nfile {2 << 30}\n")
    # (+ the host's free swap, which a group without memory.swap.max may use: tests/test_s16_rev.py)
    assert resources.available_host_bytes(tmp_path) == (3 << 30) + 1000 * 1024
    (group / "memory.max").write_text("max\n")  # no limit: meminfo again
    assert resources.available_host_bytes(tmp_path) == 20_001_000 * 1024
    # cgroup v1
    (group / "memory.max").unlink()
    v1 = tmp_path / "sys" / "fs" / "cgroup" / "memory"
    v1.mkdir()
    (v1 / "memory.stat").write_text(f"rss 5\nhierarchical_memory_limit {8 << 30}\ntotal_rss {6 << 30}\n")
    assert resources.available_host_bytes(tmp_path) == (2 << 30) + 1000 * 1024  # no memsw limit: + free swap
    (v1 / "memory.stat").write_text("hierarchical_memory_limit 9223372036854771712\ntotal_rss 6\n")
    assert resources.available_host_bytes(tmp_path) == 20_001_000 * 1024
    assert resources.available_host_bytes(tmp_path / "nothing") is None


def test_needs_count_the_largest_pass_and_every_series_anchors() -> None:
    needs = resources.run_needs([("train", {"a": 100, "b": 2000}, 1000, 512), ("test", {"a": 100, "b": 2000}, 500, 500)])
    on_device = sum(need.bytes for need in needs if need.on_device)
    # train: a (moments) 8·(101² + 100²), b (Gram route, p > n) the n×p features 8·1000·2000; test: smaller
    assert on_device == 8 * (101**2 + 100**2) + 8 * (1000 * 2000)
    anchors = sum(need.bytes for need in needs if not need.on_device)
    # on the host, the train pass: the largest decomposition (b's n×n Gram: the centered n×p features, the Gram,
    # its eigenvectors, syevd's 1 + 6n + 2n² workspace), larger than this checkpoint's float64 anchor copies; its
    # float32 anchors; then every series' reference anchors, rows of p ≤ m padded by ANCHOR_ROW_PAD = 8 values
    # as they are allocated, p > m with CKA's m×m Gram of them
    assert anchors == (8 * (1000 * 2000 + 2 * 1000**2 + 1 + 6 * 1000 + 2 * 1000**2) + 4 * 512 * (100 + 2000)
                       + 8 * (512 * (100 + 8) + 512 * 2000 + 512**2 + 500 * (100 + 8) + 500 * 2000 + 500**2))
    assert resources.shortfall(needs, host=on_device + anchors, device=None) is None
    assert resources.shortfall(needs, host=on_device + anchors - 1, device=None) == (False, on_device + anchors,
                                                                                      on_device + anchors - 1)
    # on a GPU the statistics must fit in its free memory, the anchors in the host's
    assert resources.shortfall(needs, host=anchors, device=on_device) is None
    assert resources.shortfall(needs, host=anchors, device=on_device - 1) == (True, on_device, on_device - 1)
    assert resources.shortfall(needs, host=None, device=None) is None
    assert resources.size_text(28_800_960_008) == "28.8 GB" and resources.size_text(999) == "999 B"


def test_most_of_the_memory_taken_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from fdl_cli.cli import main

    ckpts, probe = _run(tmp_path, 300)
    # the needs of this run: the head's input, p = 8, n = 300, m = 300, C = 3 outputs, class labels
    need = sum(n.bytes for n in resources.run_needs([("probe", {"head:input": 8}, 300, 300, None, 3, "classes")]))
    monkeypatch.setattr(resources, "available_host_bytes", lambda root=None: int(need / 0.8))
    main(["analyze", str(ckpts), "--model", f"{tmp_path}/model.py:build", "--probe", str(probe),
          "-o", str(tmp_path / "run.h5"), "--steps", "0,10"])
    err = capsys.readouterr().err
    # 8·(9² + 8²) of sums, the 300×8 float32 anchors, two 300×(8 + 8) float64 anchor copies (rows padded:
    # ANCHOR_ROW_PAD; this checkpoint's larger than the 8·(2·8² + 1 + 6·8 + 2·8²) of its decomposition), and
    # the outputs' 8·(4² + 3·4) sums and 8·3·3² copies (Σŷŷᵀ, Σŷyᵀ, Σyyᵀ)
    assert need == 8 * (9**2 + 8**2) + 4 * 300 * 8 + 2 * 8 * 300 * (8 + 8) + 8 * (4**2 + 3 * 4) + 8 * 3 * 3**2
    assert "warning: this analysis needs at least 88.0 kB of memory" in err and "80 % of the 110 kB available" in err
    assert "too; if it runs out" in err  # no empty list of the arrays over 1 MB
    with StoreReader(tmp_path / "run.h5") as reader:
        assert reader.steps() == [0, 10]


def test_an_allocation_failing_on_one_ranks_probe_slice_stops_every_rank(tmp_path: Path) -> None:
    """--shard-probe: an out-of-memory error on rank 1's slice alone left rank 0 waiting in the all-reduce
    for ever (it was no FdlError, which every rank is told of); now every rank stops with it."""
    from tests.test_distributed import PICKY_MODEL, _args, _make_run

    run = _make_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x[250:, 0] = 1000.0  # in the second half: rank 1's slice
    np.savez(run / "probe.npz", x=x, y=rng.integers(0, 3, size=300))
    (tmp_path / "greedy.py").write_text(PICKY_MODEL.replace(
        'raise ValueError("input out of the range this model accepts")',
        'raise RuntimeError("DefaultCPUAllocator: can\'t allocate memory: you tried to allocate 9 bytes.")'))
    args = _args(run, tmp_path / "s.h5", "--shard-probe")
    args[args.index("--model") + 1] = f"{tmp_path / 'greedy.py'}:build"
    done = torchrun("-m", "fdl_cli", *args, direct=True, timeout=240)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "ran out of memory at step 0" in done.stderr and "(on rank 1's probe slice)" in done.stderr
    assert "can't allocate memory" in done.stderr
