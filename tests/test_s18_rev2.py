"""Second review of the eighteenth session's usability and history changes: what a demanding user met.

- A model whose parameters are named as a probe's arrays (a factorisation's `X` and `Y`) had every
  checkpoint skipped as "a probe set", flat or under `model` beside its step, with no way round it.
- `fdl analyze run/*` (a glob that catches the probe.npz and the store beside the checkpoints) failed on
  them as "truncated or corrupt" checkpoints, exit 1; `fdl analyze probe.npz` and `fdl analyze run.h5`
  said the same of a probe and a store.
- A store of probes `train` and `test` resumed with another name for one probe and without the other got
  two alternative fixes, each saying the other's differences "remain": neither resumed.
- `AnalyzeOptions(sources="run/")` took the folder letter by letter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from fdl_cli.progress import NullReporter
from fdl_cli.store import StoreReader
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.cli_run import REPO, fdl_in_process, model_file

torch.set_num_threads(1)
SAMPLE = REPO / "sample_checkpoints"
SAMPLE_PROBE = SAMPLE / "probe.npz"

FACTOR = '''
import torch
from torch import nn


class Factor(nn.Module):
    """A two-layer network written with bare parameters, as in matrix factorisation: tanh(x X) Y."""

    def __init__(self, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.X = nn.Parameter(torch.randn(4, 6, generator=generator) * 0.5)
        self.act = nn.Tanh()
        self.Y = nn.Parameter(torch.randn(6, 3, generator=generator) * 0.5)

    def forward(self, x):
        return self.act(x @ self.X) @ self.Y


def build(seed=0):
    return Factor(seed)
'''


def _probe(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 3, n))
    return path


# -- 1. weights named as a probe's arrays are weights ------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "nested", "safetensors"])
def test_a_model_whose_parameters_are_named_x_and_y_is_analysed(tmp_path: Path, layout: str) -> None:
    """`X` (4, 6) and `Y` (6, 3): no probe has inputs and targets of different sample counts, none is
    saved under `model` beside its step, and no safetensors probe carries a step in its metadata."""
    module = model_file(tmp_path, FACTOR)
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10, 20):
        weights = module.build(step).state_dict()
        if layout == "flat":
            torch.save(weights, run / f"step_{step}.pt")
        elif layout == "nested":
            torch.save({"model": weights, "step": step}, run / f"ckpt_{step}.pt")
        else:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(run / f"ckpt_{step}.safetensors"),
                      metadata={"step": str(step)})
    out = tmp_path / "run.h5"
    done = fdl_in_process("analyze", run, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          _probe(tmp_path / "probe.npz"), "--layer", "act", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "probe set" not in done.stderr
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 10, 20]
    listed = fdl_in_process("inspect", run, "--model", f"{tmp_path / 'model.py'}:build", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["step"] == 0


def test_probe_files_are_still_told_from_weights(tmp_path: Path) -> None:
    """What the rule must still take for a probe: x alone, x with y of as many samples, one-hot y."""
    x = torch.zeros(5, 4)
    torch.save({"x": x, "y": torch.arange(5)}, tmp_path / "a.pt")
    torch.save({"inputs": x}, tmp_path / "b.pt")
    torch.save({"data": x, "labels": torch.zeros(5, 3)}, tmp_path / "c.pt")
    save_file({"x": x, "y": torch.arange(5)}, str(tmp_path / "d.safetensors"))
    torch.save({"x": x, "y": torch.arange(4)}, tmp_path / "step_1.pt")  # 5 inputs, 4 targets: no probe
    torch.save({"x": torch.tensor(1.0)}, tmp_path / "step_2.pt")  # a 0-d x holds no samples
    found = discover_checkpoints([tmp_path])
    assert [ref.path.name for ref in found.checkpoints] == ["step_1.pt", "step_2.pt"]
    for name, keys in (("a.pt", "x, y"), ("b.pt", "inputs"), ("c.pt", "data, labels"), ("d.safetensors", "x, y")):
        assert f"skipped {name}: a probe set ({keys}), not model weights" in found.notes


# -- 2. a probe .npz and a store given among the files ------------------------------------------------------------


def test_a_glob_that_takes_in_the_probe_and_the_store_analyses_the_checkpoints(tmp_path: Path) -> None:
    """`fdl analyze run/* --out run/run.h5` a second time: run.h5 and probe.npz were "bad checkpoints"."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 5):
        (run / f"step_{step}.safetensors").write_bytes((SAMPLE / f"step_{step}.safetensors").read_bytes())
    (run / "probe.npz").write_bytes(SAMPLE_PROBE.read_bytes())
    np.savez(run / "extra.npz", losses=np.zeros(3))
    model = ("--model", f"{SAMPLE / 'model.py'}:build", "--probe", run / "probe.npz")
    out = run / "run.h5"
    first = fdl_in_process("analyze", run / "step_0.safetensors", *model, "-o", out)
    assert first.returncode == 0, first.stderr
    files = sorted(run.iterdir())
    done = fdl_in_process("analyze", *files, *model, "-o", out)
    assert done.returncode == 0, done.stderr
    # the store --out names: skipped without a note, as the probe (session 41; it was noted on every run after the first)
    assert "run.h5: an HDF5 file" not in done.stderr and "skipped run.h5" not in done.stderr
    assert "probe.npz" not in done.stderr  # the file given as --probe: skipped without a note (session 19)
    assert "skipped probe.npz: a probe set (x, y), not model weights" in discover_checkpoints(files).notes
    assert "note: skipped extra.npz: a NumPy archive (.npz), not a checkpoint" in done.stderr
    assert "cannot read" not in done.stderr and "corrupt" not in done.stderr
    with StoreReader(out) as reader:
        assert reader.steps() == [0, 5]


def test_a_probe_npz_or_a_store_given_as_the_checkpoint_is_named_for_what_it_is(tmp_path: Path) -> None:
    probe = fdl_in_process("analyze", SAMPLE_PROBE)
    assert probe.returncode == 1 and "Traceback" not in probe.stderr
    assert f"error: {SAMPLE_PROBE} is a probe (tensors named only as a probe's x and y), not model weights" in probe.stderr
    assert "fix: give it as --probe" in probe.stderr and "corrupt" not in probe.stderr
    store = tmp_path / "run.h5"
    assert fdl_in_process("analyze", SAMPLE / "step_0.safetensors", "-o", store).returncode == 0
    for command in ("analyze", "inspect"):
        given = fdl_in_process(command, store)
        assert given.returncode == 1 and "Traceback" not in given.stderr
        assert f"error: {store} is an HDF5 file, not a checkpoint" in given.stderr
        assert "fix: read an fdl store with `fdl report STORE`" in given.stderr
        assert "corrupt" not in given.stderr


# -- 3. a renamed probe and a left-out one: one fix ---------------------------------------------------------------


def test_a_resume_with_one_probe_renamed_and_one_left_out_gets_one_fix_that_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    both = ("--probe", f"train={SAMPLE_PROBE}", "--probe", f"test={SAMPLE_PROBE}")
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5", *both, "-o", out).returncode == 0
    before = out.read_bytes()
    renamed = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", "--probe", f"a={SAMPLE_PROBE}", "-o", out)
    assert renamed.returncode == 1 and "Traceback" not in renamed.stderr
    fix = next(line for line in renamed.stderr.splitlines() if line.startswith("  fix: "))
    assert fix == (
        "  fix: this run's probe 'a' is the store's probe 'test' (the same file, sha256 217099c89f5a): name it so, "
        "--probe test=PATH; and the store also holds the probe 'train', analysed with this run's at each checkpoint: "
        "give it too, --probe train=PATH (sha256 217099c89f5a), to resume; else pass --overwrite to replace it, or "
        "another --out to keep both")
    assert out.read_bytes() == before
    # with another option differing as well, "to resume" is not promised (overlap_k, derived from top_k and the
    # same C here, is no difference of its own: tests/test_s24_polish.py)
    other = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", "--probe", f"a={SAMPLE_PROBE}", "--top-k", "5", "-o", out)
    assert "(sha256 217099c89f5a) (the other differences above remain: options.top_k); else" in (
        other.stderr)
    # as told, it resumes
    resumed = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", "--probe", f"test={SAMPLE_PROBE}", "--probe",
                             f"train={SAMPLE_PROBE}", "-o", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 checkpoint analysed, 2 already in the store" in resumed.stderr


# -- 4. AnalyzeOptions of one source ------------------------------------------------------------------------------


def test_analyze_options_take_one_source_probe_and_layer_as_a_str(tmp_path: Path) -> None:
    options = AnalyzeOptions(sources=str(SAMPLE), probe_specs=str(SAMPLE_PROBE), layers="4:input",
                             out=str(tmp_path / "lib.h5"), steps=(0, 5), min_commit_interval=0.0)
    assert options.sources == (str(SAMPLE),) and options.probe_specs == (str(SAMPLE_PROBE),)
    assert options.layers == ("4:input",)
    assert AnalyzeOptions(sources=SAMPLE).sources == (str(SAMPLE),)
    summary = run_analyze(options, reporter=NullReporter())
    assert summary.analysed == [0, 5]


# -- 5. the history in report and compare -------------------------------------------------------------------------


def _store_of_five_places(tmp_path: Path) -> Path:
    """The sample's steps 0..40 in a store whose history says each was computed on another GPU."""
    import h5py

    out = tmp_path / "my run.h5"
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10,15,20", "-o", out).returncode == 0
    with h5py.File(out, "r+") as store:
        row = json.loads(store.attrs["history"])[0]
        store.attrs["history"] = json.dumps([dict(row, device=f"cuda:{i} (GPU {i})", started=str(i)) for i in range(5)])
        for index, step in enumerate((0, 5, 10, 15, 20)):
            store[f"checkpoints/step_{step}"].attrs["history"] = np.int64(index)
    return out


@pytest.mark.usefixtures("cheap_figures")  # the page's text, not its images
def test_the_rest_of_many_places_is_read_with_the_stores_own_path(tmp_path: Path) -> None:
    """It said `h5dump -a /history STORE`, though the report knows the store it reads (a path to paste)."""
    out = _store_of_five_places(tmp_path)
    done = fdl_in_process("report", out)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("computed: ")]
    assert lines[:2] == [f"computed: step {step} on cuda:{i} (GPU {i}), host {json.loads(_row(out))['host']} "
                         f"(torch {torch.__version__}, fdl {_version()}, float32)" for i, step in enumerate((0, 5))]
    assert lines[2] == f"computed: 3 more checkpoints in 3 other places (the store's history: `h5dump -a /history '{out}'`)"
    page = tmp_path / "report.html"
    assert fdl_in_process("report", out, "--html", page).returncode == 0
    assert f"h5dump -a /history &#x27;{out}&#x27;" in page.read_text(encoding="utf-8")


def _row(out: Path) -> str:
    import h5py

    with h5py.File(out, "r") as store:
        return json.dumps(json.loads(store.attrs["history"])[0])


def _version() -> str:
    from fdl_cli import __version__

    return __version__


def test_compare_names_a_store_once_in_a_warning_that_names_it(tmp_path: Path) -> None:
    """A damaged history's warning begins with the store's path; compare put the path before it again."""
    import h5py

    out = tmp_path / "a.h5"
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "-o", out).returncode == 0
    with h5py.File(out, "r+") as store:
        store.attrs["history"] = "[{broken"
    done = fdl_in_process("compare", out, out)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {out}: its history attribute is damaged and was ignored (Expecting property name "
                        "enclosed in double quotes: line 1 column 3 (char 2)); where its checkpoints were computed is "
                        "unknown"]


def test_a_resume_of_a_store_whose_history_is_damaged_says_it_records_none(tmp_path: Path) -> None:
    """It resumed in silence, recording nothing, run after run; and report blamed an fdl before the history."""
    import h5py

    out = tmp_path / "a.h5"
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5", "-o", out).returncode == 0
    with h5py.File(out, "r+") as store:
        store.attrs["history"] = "[{broken"
    done = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,10", "-o", out)
    assert done.returncode == 0, done.stderr
    assert (f"warning: {out}: its history attribute is damaged, so where this run computes its checkpoints is not "
            "recorded either") in " ".join(done.stderr.split())
    with h5py.File(out, "r") as store:
        assert store.attrs["history"] == "[{broken" and "history" not in store["checkpoints/step_10"].attrs
    report = fdl_in_process("report", out)
    line = next(line for line in report.stderr.splitlines() if line.startswith("created on: "))
    assert line.endswith("where each checkpoint was computed is not recorded (its history attribute is damaged)")


# -- 6. before a mid-run reference ---------------------------------------------------------------------------------


def test_a_first_mf_before_the_reference_is_not_explained_as_an_early_mf(tmp_path: Path) -> None:
    """Steps 0–50 before `--reference 100` read MF* (they differ from the trained reference); the text also
    said "at step 0, the first MF checkpoint, the accuracy is 0.124 ...: the network's function is still nearly
    constant ...; MF means more from where the accuracy has risen", as if step 0 were an early MF."""
    out = tmp_path / "r.h5"
    done = fdl_in_process("analyze", SAMPLE, "--steps", "0,5,50,100,200,300", "--reference", "100", "-o", out)
    assert done.returncode == 0, done.stderr
    text = fdl_in_process("classify", out).stderr
    assert "trajectory (step: regime): 0–50: MF* | 100: coefficient | 200–300: MF" in text
    # first_mf_step counts the checkpoints after the reference only (session 19: it named step 0 here)
    assert "MF from step 200 to the end (first MF checkpoint after the reference: step 200)" in text
    assert "nearly constant" not in text
    # from the first checkpoint, the default reference, the line is still said of step 5 (9.6 % on ten classes)
    default = tmp_path / "d.h5"
    assert fdl_in_process("analyze", SAMPLE, "--steps", "0,5,50,100", "-o", default).returncode == 0
    assert "at step 5, the first MF checkpoint, the accuracy is 0.096" in fdl_in_process("classify", default).stderr
