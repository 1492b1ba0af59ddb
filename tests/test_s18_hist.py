"""Which `fdl analyze` computed which checkpoint (session 18): the store's history, and two notes.

The provenance's `environment` says where the store was created only: a store resumed on another host,
on a GPU, under torchrun or by a newer fdl kept saying the first one, while float32 features differ by
~1e-4 between the CPU and a GPU. The root attribute `history` (a JSON list, one object an invocation
that stored checkpoints) and each checkpoint group's `history` attribute (its index there) say it,
committed with the checkpoints (docs/store.md, "History"). Tiny MLPs on the CPU; a GPU is faked by
replacing `pipeline.describe_device`.

And two notes: a resume that refreshes many stored successors says so once (it was a line each), and a
copy left out of two folders whose files share names names them with their folders.
"""

from __future__ import annotations

import json
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli import __version__
from fdl_cli import pipeline as pipeline_module
from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.cli import main
from fdl_cli.errors import StoreError
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.report import history_lines, load_run, provenance_lines
from fdl_cli.store import CheckpointEntry, StoreReader, StoreWriter, history_row
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.ranks import torchrun
from tests.test_store import probes, provenance, random_entry
from tests.tiny_models import mlp

torch.set_num_threads(1)
MODEL = f"{Path(__file__).resolve().parent / 'tiny_models.py'}:mlp"
REPO = Path(__file__).resolve().parents[1]
FAKE_GPU = "cuda:0 (Fake GPU)"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _run(folder: Path, steps: tuple[int, ...] = (0, 10, 20, 30, 40, 50, 60)) -> Path:
    """Checkpoints of a drifting tiny MLP at `steps` and a probe."""
    folder.mkdir(parents=True, exist_ok=True)
    start = {k: v.detach().clone() for k, v in mlp(seed=0).state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for step in steps:
        noise = {k: 0.02 * step * torch.randn(v.shape, generator=generator) for k, v in start.items()}
        save_file({k: (v + noise[k]).contiguous() for k, v in start.items()}, str(folder / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "probe.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    return folder


def _analyze(run: Path, out: Path, reporter: NullReporter | None = None, **options: Any) -> Any:
    settings: dict[str, Any] = {"top_k": 4, "anchor_size": 16, "batch_size": 16, "device": "cpu",
                                "min_commit_interval": 0.0, **options}
    return run_analyze(
        AnalyzeOptions(sources=(str(run),), model_spec=MODEL, probe_specs=(str(run / "probe.npz"),), out=out,
                       **settings),
        reporter=reporter or NullReporter(),
    )


def _history(out: Path) -> tuple[list[dict[str, Any]], dict[int | None, list[int]]]:
    with StoreReader(out) as reader:
        return reader.history, reader.history_steps()


def _strip_history(out: Path) -> None:
    """The store as an fdl before the history wrote it: no root `history`, no group attribute."""
    with h5py.File(out, "r+") as store:
        del store.attrs["history"]
        for group in store["checkpoints"].values():
            del group.attrs["history"]


# ------------------------------------------------------------------------------------------ history


def test_a_fresh_store_records_its_invocation_with_every_checkpoint(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    out = tmp_path / "run.h5"
    _analyze(run, out)
    rows, steps = _history(out)
    assert len(rows) == 1
    row = rows[0]
    assert {key: row[key] for key in ("device", "dtype", "world_size", "rank", "fdl_version", "torch_version",
                                      "host")} == {
        "device": "cpu", "dtype": "float32", "world_size": 1, "rank": 0, "fdl_version": __version__,
        "torch_version": torch.__version__, "host": socket.gethostname()}
    assert row["platform"] and row["python"]
    assert datetime.fromisoformat(row["started"]).tzinfo is not None
    assert steps == {0: [0, 10, 20, 30, 40, 50, 60]}
    # plain h5py, as docs/store.md reads it
    with h5py.File(out, "r") as store:
        history = json.loads(store.attrs["history"])
        assert history[int(store["checkpoints/step_30"].attrs["history"])]["device"] == "cpu"
    # the provenance's environment is kept as it was
    with StoreReader(out) as reader:
        assert reader.provenance["environment"]["host"] == socket.gethostname()
        assert reader.entry(30).computed_by == history_row(row)


def test_a_resume_on_another_device_is_a_second_row_with_its_own_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--every 2 on the CPU, then the rest on a (faked) GPU with another fdl: two rows, each with the steps it
    computed. Steps 20, 40 and 60, refreshed to compare with the checkpoints stored before them (cka_prev,
    overlap_prev taken again), keep the row of the run that computed their other numbers. The history is
    not compared on resume (the fdl version, the device and the host differ), and the environment stays."""
    run = _run(tmp_path / "run")
    out = tmp_path / "run.h5"
    _analyze(run, out, every=2)
    monkeypatch.setattr(pipeline_module, "describe_device", lambda device: FAKE_GPU)
    monkeypatch.setattr(pipeline_module, "__version__", "9.9.9")
    summary = _analyze(run, out)
    assert summary.analysed == [10, 30, 50] and sorted(summary.refreshed) == [20, 40, 60]
    rows, steps = _history(out)
    assert [(row["device"], row["fdl_version"]) for row in rows] == [("cpu", __version__), (FAKE_GPU, "9.9.9")]
    assert rows[0]["started"] < rows[1]["started"]
    assert steps == {0: [0, 20, 40, 60], 1: [10, 30, 50]}
    with StoreReader(out) as reader:
        assert reader.provenance["environment"]["fdl_version"] == __version__
        assert reader.records()[2]["prev_step"] == 10  # step 20 was refreshed
    # a third run that stores nothing adds no row
    _analyze(run, out)
    assert _history(out) == (rows, steps)
    # the reader's words: one line per place, in step order
    lines = provenance_lines({}, load_run(out, history=True).history)
    host = socket.gethostname()
    assert lines == [
        f"computed: 4 checkpoints from step 0 to 60 on cpu, host {host} (torch {torch.__version__}, fdl {__version__}, "
        "float32)",
        f"computed: steps 10, 30, 50 on {FAKE_GPU}, host {host} (torch {torch.__version__}, fdl 9.9.9, float32)",
    ]
    # --redo 30 elsewhere: step 30 names the run that redid it; step 40, whose cka_prev / overlap_prev it
    # took again, keeps the run that computed its other numbers
    monkeypatch.setattr(pipeline_module, "describe_device", lambda device: "cuda:1 (Other GPU)")
    _analyze(run, out, redo=(30,))
    redone_rows, redone_steps = _history(out)
    assert redone_rows[:2] == rows and redone_rows[2]["device"] == "cuda:1 (Other GPU)"
    assert redone_steps == {0: [0, 20, 40, 60], 1: [10, 50], 2: [30]}


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_fdl_report_says_where_the_checkpoints_were_computed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the provenance lines of the table and of the HTML page; before, they looked for host and versions
    at the provenance's top level, where fdl never put them, and said nothing."""
    run = _run(tmp_path / "run", steps=(0, 10, 20))
    out = tmp_path / "run.h5"
    _analyze(run, out)
    main(["report", str(out), "--html", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    said = (f"computed: all 3 checkpoints on cpu, host {socket.gethostname()} (torch {torch.__version__}, "
            f"fdl {__version__}, float32)")
    assert said in err.splitlines()
    assert said in (tmp_path / "r.html").read_text()
    main(["report", str(out), "--json"])
    assert "computed" not in capsys.readouterr().err


def test_history_lines_stay_few() -> None:
    """One line per device, host and software, never one per invocation; past HISTORY_LINES, a count."""
    row = {"device": "cpu", "host": "a", "world_size": 1, "rank": 0, "torch_version": "2", "fdl_version": "1",
           "dtype": "float32"}
    same_place = [({**row, "started": f"t{i}"}, [i]) for i in range(50)]
    assert history_lines(same_place) == ["computed: all 50 checkpoints on cpu, host a (torch 2, fdl 1, float32)"]
    places = [({**row, "host": f"h{i}"}, [i * 10, i * 10 + 5]) for i in range(5)] + [(None, [100])]
    lines = history_lines(places)
    assert lines == [
        "computed: steps 0, 5 on cpu, host h0 (torch 2, fdl 1, float32)",
        "computed: steps 10, 15 on cpu, host h1 (torch 2, fdl 1, float32)",
        "computed: 7 more checkpoints in 4 other places (the store's history: `h5dump -a /history STORE`)",
    ]
    torchrun = [({**row, "world_size": 4}, [0, 1]), ({**row, "world_size": 4, "rank": 2, "device": "cuda:2"}, [2])]
    assert history_lines(torchrun) == [
        "computed: steps 0, 1 on cpu and 3 more torchrun ranks, host a (torch 2, fdl 1, float32)",
        "computed: step 2 on cuda:2 (torchrun rank 2 of 4), host a (torch 2, fdl 1, float32)",
    ]


def test_a_store_written_before_the_history_reads_as_unknown_and_a_resume_starts_one(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", steps=(0, 10, 20, 30))
    out = tmp_path / "run.h5"
    _analyze(run, out, steps=(0, 10))
    _strip_history(out)
    rows, steps = _history(out)
    assert rows == [] and steps == {None: [0, 10]}
    with StoreReader(out) as reader:
        assert reader.warnings == [] and reader.entry(10).computed_by == ""
    host = socket.gethostname()
    assert history_lines(load_run(out, history=True).history, {"host": host, "torch_version": "2", "fdl_version": "0"}) \
        == [f"created on: host {host} (torch 2, fdl 0); where each checkpoint was computed is not recorded (the store "
            "has no history attribute)"]
    _analyze(run, out)
    rows, steps = _history(out)
    assert len(rows) == 1 and steps == {None: [0, 10], 0: [20, 30]}
    assert history_lines(load_run(out, history=True).history)[0] == (
        "computed: steps 0, 10 (their groups record no history: where is not recorded)")


def test_a_damaged_history_is_a_warning_and_is_not_written_over(tmp_path: Path) -> None:
    """Rows written anew would be read with the old groups' indices: the writer records none then."""
    run = _run(tmp_path / "run", steps=(0, 10, 20))
    out = tmp_path / "run.h5"
    _analyze(run, out, steps=(0, 10))
    with h5py.File(out, "r+") as store:
        store.attrs["history"] = "{not json"
    with StoreReader(out) as reader:
        assert reader.history == [] and any("history attribute is damaged" in w for w in reader.warnings)
    _analyze(run, out)
    with h5py.File(out, "r") as store:
        assert store.attrs["history"] == "{not json"
        assert "history" not in store["checkpoints/step_20"].attrs
    assert _history(out)[1] == {None: [0, 10, 20]}


def test_an_interrupted_run_records_exactly_what_it_stored(tmp_path: Path) -> None:
    """Ctrl-C at the third checkpoint: the row names exactly the checkpoints stored; a resume
    stopped before its first checkpoint is stored adds no row."""

    class CtrlC(NullReporter):
        def __init__(self, after: int) -> None:
            super().__init__()
            self.left = after

        def end_checkpoint(self) -> None:
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

    run = _run(tmp_path / "run")
    out = tmp_path / "run.h5"
    summary = _analyze(run, out, reporter=CtrlC(3))
    assert summary.interrupted
    with StoreReader(out) as reader:
        stored = reader.steps()
    rows, steps = _history(out)
    assert len(rows) == 1 and steps == {0: stored} and 0 < len(stored) < 7

    class AtOnce(NullReporter):
        def start_checkpoint(self, index: int, total: int, label: str) -> None:
            raise KeyboardInterrupt

    summary = _analyze(run, out, reporter=AtOnce())
    assert summary.interrupted
    assert _history(out) == (rows, steps)


def test_a_failed_commit_leaves_the_history_with_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row is written by the commit that stores the invocation's first checkpoint: a commit that fails
    (a full disk) leaves both as they were, and the retry writes the row once."""
    from fdl_cli import store as store_module

    out = tmp_path / "s.h5"
    real = store_module._write_checkpoint
    calls = {"n": 0}

    def failing(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real(*args)

    with StoreWriter(out, provenance=provenance(), probes=probes(), invocation={"started": "t", "device": "cpu"}) as w:
        w.add(random_entry(0))
    monkeypatch.setattr(store_module, "_write_checkpoint", failing)
    with StoreWriter(out, provenance=provenance(), probes=probes(), invocation={"started": "u", "device": FAKE_GPU}) as w:
        w.add(random_entry(10))
        with pytest.raises(StoreError, match="No space left"):
            w.flush()  # fails: the store keeps step 0 and its row alone
        rows, steps = _history(out)
        assert [row["started"] for row in rows] == ["t"] and steps == {0: [0]}
        w.add(random_entry(20))
        w.flush()
    rows, steps = _history(out)
    assert [row["started"] for row in rows] == ["t", "u"] and steps == {0: [0], 1: [10, 20]}


def test_a_part_store_taken_in_keeps_the_rank_that_computed_it(tmp_path: Path) -> None:
    """Checkpoints that rank 1 of a killed torchrun job stored in its part (its own row, cuda:1) keep that
    row when a later run on the CPU takes them in; what this run computes gets its own."""
    from fdl_cli.checkpoints import sha256_file
    from fdl_cli.sharding import _write_rank_part_origin

    run = _run(tmp_path / "run", steps=(0, 10, 20, 30))
    full = tmp_path / "full.h5"
    _analyze(run, full)
    out = tmp_path / "run.h5"
    part = tmp_path / "run.h5.rank-1"
    with StoreReader(full) as reader:
        entries = [reader.entry(step) for step in (0, 10)]
        provenance, probes = reader.provenance, list(reader.probes().values())
    rank_1 = {"started": "2030-01-01T00:00:00+00:00", "device": "cuda:1 (Fake GPU)", "world_size": 2, "rank": 1}
    with StoreWriter(part, provenance=provenance, probes=probes, invocation=rank_1) as writer:
        for entry in entries:
            writer.add(CheckpointEntry(step=entry.step, path=entry.path, sha256=entry.sha256, series=entry.series,
                                       file_signature=entry.file_signature))  # computed by this writer's rank
    _write_rank_part_origin(part, (0, sha256_file(run / "step_0.safetensors")), None)
    summary = _analyze(run, out)
    assert summary.analysed == [20, 30] and not part.exists()
    rows, steps = _history(out)
    assert [row["device"] for row in rows] == ["cuda:1 (Fake GPU)", "cpu"]
    assert steps == {0: [0, 10], 1: [20, 30]}


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_torchrun_records_one_row_by_the_writing_rank(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", steps=(0, 10, 20, 30))
    out = tmp_path / "two.h5"
    done = torchrun("-m", "fdl_cli", "analyze", str(run), "--model", MODEL, "--probe", str(run / "probe.npz"), "--out",
                    str(out), "--device", "cpu", "--top-k", "4", "--anchor-size", "16", "--batch-size", "16",
                    direct=True)
    assert done.returncode == 0, done.stderr[-4000:]
    rows, steps = _history(out)
    assert [(row["world_size"], row["rank"], row["device"]) for row in rows] == [(2, 0, "cpu")]
    assert steps == {0: [0, 10, 20, 30]}  # rank 1's block too: gathered and written by rank 0


# -------------------------------------------------------------------------------------------- notes


def test_a_resume_that_refreshes_many_successors_says_so_once(tmp_path: Path) -> None:
    """After --every 2, the resume gives steps 20, 40, 60 a new previous checkpoint: one note, not three."""
    run = _run(tmp_path / "run")
    out = tmp_path / "run.h5"
    _analyze(run, out, every=2)
    reporter = NullReporter()
    _analyze(run, out, reporter=reporter)
    said = [note for note in reporter.notes if "now compare with" in note]
    assert said == ["3 stored checkpoints: cka_prev / overlap_prev now compare with the checkpoint stored in "
                    "between (step 20 with step 10, step 40 with step 30, step 60 with step 50)"]
    # five and more: the first three and the last
    from fdl_cli.pipeline import _note_refreshed

    many = NullReporter()
    _note_refreshed(many, [(step - 5, step) for step in range(10, 310, 10)])
    assert many.notes == ["30 stored checkpoints: cka_prev / overlap_prev now compare with the checkpoint stored in "
                          "between (step 10 with step 5, step 20 with step 15, step 30 with step 25, …, step 300 with "
                          "step 295)"]
    one = NullReporter()
    _note_refreshed(one, [(10, 20)])
    assert one.notes == ["step 20: cka_prev / overlap_prev now compare with step 10, stored in between"]


def test_a_copy_left_out_of_two_folders_is_named_with_its_folder(tmp_path: Path) -> None:
    """`fdl analyze run1 run2 --step-offset run2=20`: run2/step_0 repeats run1/step_20; the note said
    "skipped step_0.safetensors ... as step_20.safetensors", and both folders hold a step_0."""
    for step in (0, 10, 20):
        for folder, seed in (("run1", step // 10), ("run2", step // 10 + 2)):
            (tmp_path / folder).mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in mlp(seed=seed).state_dict().items()},
                      str(tmp_path / folder / f"step_{step}.safetensors"))
    found = discover_checkpoints([tmp_path / "run1", tmp_path / "run2"], step_offsets=[(str(tmp_path / "run2"), 20)])
    assert "skipped run2/step_0.safetensors: same weights and step (20) as run1/step_20.safetensors" in found.notes


def test_a_gpu_is_named_with_its_index_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cuda` (the current GPU) and `cuda:i`, named as torch.cuda.get_device_name names them (faked here: the
    tests run on a CPU build of torch); a name torch cannot read leaves the index."""
    from fdl_cli.pipeline import describe_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    assert describe_device(torch.device("cuda")) == "cuda:3 (NVIDIA H200 #3)"
    assert describe_device("cuda:1") == "cuda:1 (NVIDIA H200 #1)"
    assert describe_device(torch.device("cpu")) == "cpu"

    def unreadable(index: int) -> str:
        raise RuntimeError("no driver")

    monkeypatch.setattr(torch.cuda, "get_device_name", unreadable)
    assert describe_device("cuda:1") == "cuda:1"
