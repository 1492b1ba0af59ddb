"""Session 18, documentation audit: examples and numbers the docs give, run as written.

Each test takes a claim of README.md or docs/*.md that no other test checked (a number the sample run
prints, a snippet, a default) and checks it against what the code does now."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests import warm
from tests.cheap_figures import cheap_figures  # noqa: F401 - a fixture
from tests.test_analyze import fdl
from tests.test_s16_docs import MEASURES, README, REGIMES, RELIABILITY, REPO, SAMPLES

BENCHMARKS = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
RUN_FILES = ("fdl.toml", "model.py", "probe.npz")


def _sample_run(folder: Path, steps: tuple[int, ...]) -> Path:
    """A folder holding the sample run's checkpoints of `steps`, its model, probe and manifest (links)."""
    folder.mkdir(parents=True)
    for name in (*RUN_FILES, *(f"step_{step}.safetensors" for step in steps)):
        (folder / name).symlink_to(SAMPLES / name)
    return folder


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_sample_run_is_the_readme_s_25_checkpoints_from_0_to_1000() -> None:
    """README: "25 checkpoints from initialisation to 1000 steps"."""
    assert "25 checkpoints from initialisation to 1000 steps" in _one_line(README)
    steps = sorted(int(path.stem.split("_")[1]) for path in SAMPLES.glob("step_*.safetensors"))
    assert len(steps) == 25 and steps[0] == 0 and steps[-1] == 1000


def test_the_sample_run_numbers_regimes_md_quotes(tmp_path: Path) -> None:
    """regimes.md: in the sample run step 5 has cka_init = 0.986 and k95_utility = 1, so the run is MF from
    its first checkpoint after initialisation; it ends at k95 = 6 with C = 10. (Step 5's numbers compare
    with step 0, the reference either way, so three checkpoints give them.)"""
    text = _one_line(REGIMES)
    assert "step 5 already has `cka_init` = 0.986 (below `cka_static`) and `k95_utility` = 1" in text
    assert "MF from step 5, its first checkpoint after initialisation (final k95 = 6, C = 10)" in text
    run = _sample_run(tmp_path / "sample", (0, 5, 1000))
    store = tmp_path / "s.h5"
    result = fdl("analyze", run, "--out", store, "--json")
    assert result.code == 0, result.stderr
    records = {record["step"]: record for record in result.records}
    assert round(records[5]["cka_init"], 3) == 0.986 and records[5]["cka_init"] < 0.99
    assert records[5]["k95_utility"] == 1
    assert records[1000]["k95_utility"] == 6 and records[1000]["n_outputs"] == 10
    verdict = fdl("classify", store, "--json")
    assert verdict.code == 0, verdict.stderr
    payload = json.loads(verdict.stdout)
    assert payload["regime"] == "MF"
    assert payload["evidence"]["first_mf_step"] == 5 and payload["evidence"]["mf_since_step"] == 5


def test_the_readme_says_where_analyze_writes_without_out(tmp_path: Path, monkeypatch) -> None:
    """README's everyday commands `fdl analyze runs/resnet/ --json` and `--watch` give no --out; the README
    said nowhere where their store goes (only `fdl analyze --help` did). Files (not one folder) go to
    ./fdl.h5, as it now says."""
    text = _one_line(README)
    assert "Without `--out`, `analyze` writes `./<folder>.fdl.h5` in the current folder" in text
    assert "`./fdl.h5` for files, `-` or several folders" in text
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = fdl("analyze", SAMPLES / "step_0.safetensors", SAMPLES / "step_5.safetensors")
    assert result.code == 0, result.stderr
    assert (here / "fdl.h5").is_file() and sorted(p.name for p in here.iterdir()) == ["fdl.h5"]


def _float32_snippet() -> str:
    """The Python of benchmarks.md's "float32 statistics products" heredoc."""
    section = BENCHMARKS.split("## float32 statistics products", 1)[1]
    found = re.search(r"```\npython - <<'PY'\n(.*?)\nPY\n```", section, flags=re.DOTALL)
    assert found, "the float32 snippet of docs/benchmarks.md is gone"
    return found.group(1)


def test_the_float32_snippet_of_benchmarks_md_runs(tmp_path: Path) -> None:
    """docs/benchmarks.md's snippet comparing float32 with float64 statistics products passed `out="a.h5"`
    to AnalyzeOptions, whose `out` is a Path: it ended in `AttributeError: 'str' object has no attribute
    'exists'`. Run as written, on 3 of the sample checkpoints, with `fdl` as `python -m fdl_cli`."""
    code = _float32_snippet()
    assert '("sample_checkpoints",)' in code and '["fdl", "report"' in code
    _sample_run(tmp_path / "sample_checkpoints", (0, 5, 1000))
    code = code.replace('["fdl", "report"', '[sys.executable, "-m", "fdl_cli", "report"')
    # a script file, as `python -` reads it from the heredoc, run by a warm process (tests/warm.py): its analyze
    # imports torch
    (tmp_path / "snippet.py").write_text("import sys\n" + code, encoding="utf-8")
    result = warm.run([sys.executable, str(tmp_path / "snippet.py")], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    worst = {line.split()[0]: float(line.split()[1]) for line in result.stdout.splitlines()}
    assert worst["d_lr"] < 1e-4 and worst["eff_dim_quality"] < 1e-3  # float32 products: small, not zero
    for name in ("rank", "k95_utility", "accuracy", "param_norm", "cross_entropy"):
        assert worst[name] == 0.0


def test_measures_md_says_the_spectrum_is_never_approximated() -> None:
    """SPEC §2 allows a randomized or Nyström-landmark approximation behind a flag; none exists, which the
    docs now say (the docs must state what is implemented), and `fdl analyze --help` offers none."""
    text = _one_line(MEASURES)
    assert "Nyström-landmark approximation that SPEC §2 allows" in text and "is not implemented" in text
    assert "`fdl analyze` takes this route for any layer wider than the whole probe" in text
    help_text = fdl("analyze", "--help").stdout.lower()
    assert "randomi" not in help_text and "approximat" not in help_text and "landmark" not in help_text


@pytest.mark.usefixtures("cheap_figures")  # which files, not their images
def test_reliability_md_says_a_missing_plots_folder_is_created(tmp_path: Path) -> None:
    """reliability.md listed "a missing folder" among the output paths refused before any output; that is
    --html's folder: a missing --plots folder is created with its parents (report's: test_output_paths.py)."""
    assert "a missing `--plots` folder is created, with the folders above it" in _one_line(RELIABILITY)
    run = _sample_run(tmp_path / "sample", (0, 5))
    store = tmp_path / "s.h5"
    assert fdl("analyze", run, "--out", store).code == 0
    plots = tmp_path / "new" / "plots"
    assert fdl("compare", store, store, "--plots", plots).code == 0
    assert sorted(path.name for path in plots.glob("*.png")) == ["compare_k95_utility.png", "compare_trajectories.png"]
    missing = fdl("report", store, "--format", "json", "--html", tmp_path / "none" / "r.html")
    assert missing.code == 1 and "create the folder" in missing.stderr and missing.stdout == ""


def test_the_damaged_store_count_of_reliability_md_is_test_fuzz_s() -> None:
    """reliability.md's table counted 14 damaged stores x 6 reading commands = 84; test_fuzz.py builds the 13
    its text lists (truncated to half, cut by 100 bytes, empty, flipped, ...) and runs 6 commands on each."""
    source = (REPO / "tests" / "test_fuzz.py").read_text(encoding="utf-8")
    builder = source.split("def _damage_cases", 1)[1].split("\ndef ", 1)[0]
    cases = set(re.findall(r'cases\["(\w+)"\] =', builder)) | set(re.findall(r'copy\("(\w+)"\)', builder))
    runner = source.split("def test_reading_commands_on_damaged_stores_never_trace_back", 1)[1].split("\ndef ", 1)[0]
    commands = re.findall(r'^\s+\["(?:report|classify|compare|export)"', runner, flags=re.MULTILINE)
    row = re.search(r"\| damaged-store cases x reading commands \| (\d+) x (\d+) = (\d+) \|", RELIABILITY)
    assert row, "the row is gone from reliability.md"
    assert (int(row[1]), int(row[2]), int(row[3])) == (len(cases), len(commands), len(cases) * len(commands))
    listed = RELIABILITY.split("### Damaged stores", 1)[1].split("Each through", 1)[0]
    assert listed.split("Inputs:", 1)[1].count(",") + 1 == len(cases)  # the inputs, listed with commas


def test_store_md_names_every_option_the_provenance_records() -> None:
    """store.md listed the provenance's `options` without `binary_logit`, which a model of one output on
    0/1 labels records there (tests/test_s17_binary.py) and a resume compares."""
    from fdl_cli.pipeline import AnalyzeOptions

    store_md = _one_line((REPO / "docs" / "store.md").read_text(encoding="utf-8"))
    paragraph = store_md.split("`options` (the analysis choices:", 1)[1].split("and `environment`", 1)[0]
    recorded = set(AnalyzeOptions(sources=("x",), cka_dtype="float32", weights="ema").numeric_options())
    for key in sorted(recorded | {"overlap_k", "binary_logit"}):
        assert f"`{key}" in paragraph, key


def test_gpu_check_imports_nothing_beyond_what_benchmarks_md_says_it_needs() -> None:
    """docs/benchmarks.md: gpu_check.sh runs "with nothing installed beyond torch, numpy, h5py, click, rich,
    safetensors (and pytest)"; the script imported scipy too (no dependency of fdl), so on such a machine
    its environment line failed and environment.txt lost the torch and CUDA versions."""
    needs = _one_line(BENCHMARKS).split("with nothing installed beyond ", 1)[1].split(":", 1)[0]
    allowed = set(re.findall(r"[a-z0-9_]+", needs)) - {"and"}
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text(encoding="utf-8")
    imported = {name.strip() for line in re.findall(r"import ([a-z0-9_, ]+);", script) for name in line.split(",")}
    assert imported and imported <= allowed, imported - allowed
