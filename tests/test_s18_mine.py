"""Session 18, small things the docs review found: `--plots -`, the inspect help, a str `out`."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import pytest

from fdl_cli.pipeline import AnalyzeOptions, run_analyze
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_analyze import fdl

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Steps 0 and 1000 of the sample run, as symbolic links (with its fdl.toml, model and probe)."""
    folder = tmp_path_factory.mktemp("run")
    for name in ("fdl.toml", "model.py", "probe.npz", "step_0.safetensors", "step_1000.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    return folder


@pytest.fixture(scope="module")
def store(two_step_run: Path) -> Path:
    out = two_step_run / "run.fdl.h5"
    result = fdl("analyze", two_step_run, "--out", out)
    assert result.code == 0, result.stderr
    return out


@pytest.mark.parametrize("command", ["report", "compare"])
def test_plots_dash_is_refused_and_makes_no_folder(store: Path, tmp_path: Path, command: str) -> None:
    """`--plots -` made a folder named "-" in the current one (where `--out -` and `--html -` are refused):
    refused before any work, exit 1, no traceback, nothing made."""
    stores = [store] if command == "report" else [store, store]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = fdl(command, *stores, "--plots", "-")
    finally:
        os.chdir(cwd)
    assert result.code == 1
    assert "--plots -: the figures are PNG and SVG files written into a folder" in result.stderr
    assert "fix: give it a folder" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "-").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_plots_folder_still_written(store: Path, tmp_path: Path) -> None:
    """The refusal is of "-" alone: a folder, missing with its parent, is made and filled."""
    result = fdl("report", store, "--plots", tmp_path / "a" / "figs")
    assert result.code == 0, result.stderr
    # (beside the figures, the list of them a report keeps there: .fdl-figures.json)
    assert sorted(p.suffix for p in (tmp_path / "a" / "figs").iterdir() if p.name != ".fdl-figures.json")[:1] == [".png"]


def test_inspect_help_says_a_folder_is_taken() -> None:
    text = " ".join(fdl("inspect", "--help").stdout.split())
    assert "CHECKPOINT is a checkpoint file, or a run's folder, whose first checkpoint is read" in text


def test_analyze_options_take_a_str_out(two_step_run: Path, tmp_path: Path) -> None:
    """A library caller's `out="run.h5"` ended in "'str' object has no attribute 'exists'"; it is a Path now,
    and the store is written there."""
    out = tmp_path / "lib.h5"
    options = AnalyzeOptions(sources=(str(two_step_run),), out=str(out))  # type: ignore[arg-type]
    assert options.out == out and isinstance(options.out, Path)
    summary = run_analyze(options)
    assert summary.store == out
    with h5py.File(out, "r") as handle:
        assert "trajectories" in handle


def test_a_one_sample_probe_warns_in_the_singular(tmp_path: Path) -> None:
    """A probe of one sample was warned of as "the anchor subset has 1 points" and "has only 1 samples"."""
    import numpy as np

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("model.py", "step_0.safetensors", "step_1000.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    with np.load(SAMPLES / "probe.npz") as probe:
        np.savez(tmp_path / "one.npz", x=probe["x"][:1], y=probe["y"][:1])
    result = fdl("analyze", folder, "--model", folder / "model.py:build", "--probe", tmp_path / "one.npz",
                 "--out", tmp_path / "one.h5")
    assert result.code == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert "the anchor subset has 1 point for the overlaps' k" in text
    assert "the anchor subset has 1 point: CKA on fewer than" in text
    assert "has only 1 sample for 10 outputs" in text
    assert "1 points" not in text and "1 samples" not in text


def test_a_resume_leaving_a_probe_out_says_to_give_it(two_step_run: Path, tmp_path: Path) -> None:
    """A store of `train` and `test`, resumed with `--probe train=...` alone, was told only "pass --overwrite
    to replace it, or another --out to keep both", which drops or splits what the store holds."""
    import numpy as np

    with np.load(SAMPLES / "probe.npz") as probe:
        np.savez(tmp_path / "test.npz", x=probe["x"][:50], y=probe["y"][:50])
    out = tmp_path / "two.h5"
    model = ("--model", f"{two_step_run / 'model.py'}:build")
    both = ("--probe", f"train={SAMPLES / 'probe.npz'}", "--probe", f"test={tmp_path / 'test.npz'}")
    assert fdl("analyze", two_step_run, *model, *both, "--out", out, "--steps", "0").code == 0
    before = out.read_bytes()
    alone = fdl("analyze", two_step_run, *model, "--probe", f"train={SAMPLES / 'probe.npz'}", "--out", out)
    assert alone.code == 1 and "Traceback" not in alone.stderr
    text = " ".join(alone.stderr.split())
    assert "holds the results of a different run" in text
    assert ("fix: the store also holds the probe 'test', analysed with this run's at each checkpoint: give it too, "
            "--probe test=PATH (sha256 ") in text
    assert ", to resume; else pass --overwrite to replace it, or another --out to keep both" in text
    assert out.read_bytes() == before
    # given, it resumes: step 1000 is added for both probes
    again = fdl("analyze", two_step_run, *model, *both, "--out", out)
    assert again.code == 0, again.stderr
    assert "1 checkpoint analysed, 1 already in the store" in again.stderr
    # with another option differing as well, "to resume" is not promised
    other = fdl("analyze", two_step_run, *model, "--probe", f"train={SAMPLES / 'probe.npz'}", "--out", out,
                "--top-k", "5")
    text = " ".join(other.stderr.split())
    assert other.code == 1 and "give it too, --probe test=PATH" in text
    # overlap_k's line is gone (session 24): the overlaps' k is C in both, recorded by the run only as --top-k is below C
    assert "(the other differences above remain: options.top_k); else" in text


def test_the_html_table_marks_the_checkpoints_before_the_reference() -> None:
    """The HTML page's summary marked the regimes before a mid-run --reference (`MF*`), but its table of
    checkpoints showed them plain, as the terminal table no longer does."""
    import re

    from fdl_cli.html import Section, render_html
    from tests.test_s18_ux import RECORDS

    def regimes_of(page: str) -> list[str]:
        rows = re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>", 1)[1])
        return [re.findall(r'<td class="text"[^>]*>([^<]*)</td>', row)[-1] for row in rows]

    marked = render_html(title="t", provenance=[], warnings=[], sections=[
        Section(heading="h", summary=[], records=RECORDS, figures=[], reference_step=100)])
    assert regimes_of(marked) == ["MF*", "MF*", "coefficient", "MF", "MF"]
    plain = render_html(title="t", provenance=[], warnings=[], sections=[
        Section(heading="h", summary=[], records=RECORDS, figures=[])])
    assert regimes_of(plain) == ["MF", "MF", "coefficient", "MF", "MF"]


def test_the_before_reference_line_says_a_new_store_is_needed() -> None:
    """"analyse with the first checkpoint as the reference" did not say that the store keeps its reference
    (a resume with another one is refused): another --out or --overwrite."""
    from fdl_cli.regimes import before_reference_line

    assert before_reference_line(100).endswith(
        "(to classify those too, analyse again with the first checkpoint as the reference, the default, into a new "
        "store: another --out, or --overwrite, since a store keeps the reference it was analysed with)")


def test_compare_notes_runs_computed_on_different_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs, one analysed on the CPU and one on a (faked) GPU: compare says so, in its notes (text and
    JSON), since the devices round the forward pass differently; two CPU runs get no such note."""
    import json

    from fdl_cli import pipeline as pipeline_module
    from fdl_cli.cli import main
    from tests.test_s18_hist import FAKE_GPU, _analyze, _run

    run = _run(tmp_path / "run", steps=(0, 10, 20))
    cpu, gpu, cpu2 = tmp_path / "cpu.h5", tmp_path / "gpu.h5", tmp_path / "cpu2.h5"
    _analyze(run, cpu)
    _analyze(run, cpu2)
    monkeypatch.setattr(pipeline_module, "describe_device", lambda device: FAKE_GPU)
    _analyze(run, gpu)

    def compare(*argv: object) -> tuple[str, str]:
        capsys.readouterr()
        try:
            main(["compare", *map(str, argv)])
        except SystemExit as exc:
            assert exc.code in (0, None)
        return capsys.readouterr()

    out, err = compare(cpu, gpu, "--json")
    note = (f"the runs were computed on different devices (A: cpu; B: {FAKE_GPU}): the model's forward pass rounds "
            "differently on each")
    assert any(n.startswith(note) for n in json.loads(out)["notes"])
    _, err = compare(cpu, gpu)
    assert note in " ".join(err.split())
    out, _ = compare(cpu, cpu2, "--json")
    assert not any("different devices" in n for n in json.loads(out)["notes"])


def test_the_manifest_files_linked_into_a_folder_are_not_noted(tmp_path: Path) -> None:
    """A run folder whose model.py and probe (under another name) are symbolic links to shared files, named
    by its fdl.toml: "note: skipped 2 files without a checkpoint suffix: model.py, probe.npz", where the
    folder's own files get none (read_manifest resolves the paths, which then lay elsewhere)."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("model.py", "step_0.safetensors", "step_5.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    (folder / "p.npz").symlink_to(SAMPLES / "probe.npz")
    (folder / "notes.txt").write_text("lr 0.1\n", encoding="utf-8")
    (folder / "fdl.toml").write_text('model = "model.py:build"\nprobe = "p.npz"\n', encoding="utf-8")
    result = fdl("analyze", folder, "--out", tmp_path / "run.h5")
    assert result.code == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert "(.pt, .pth, .bin, .ckpt, .safetensors, .pt2, .pth.tar, .pt.tar): notes.txt" in text  # others still are
    # the only word of model.py is the note of the code that runs (tests/test_s23_sec.py): the file it links to
    skipped = text.replace(f"note: running the model code {SAMPLES / 'model.py'}:build, named by {folder / 'fdl.toml'}", "")
    assert "model.py" not in skipped and "p.npz" not in skipped
