"""Session 16, documentation review: the docs and the help texts say what the code does.

Each test reads README.md, docs/*.md or a `--help` text and compares it with the code or with what a
command prints, so that a field, option, module, threshold or formula added or changed without its
documentation fails here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest

from fdl_cli import fields, spectral
from fdl_cli.cli import cli
from fdl_cli.regimes import Thresholds
from tests.test_analyze import fdl

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_checkpoints"
README_MD = (REPO / "README.md").read_text(encoding="utf-8")
USAGE = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
#: the user's documentation of the commands: README.md's tour and docs/usage.md's rules, which the README
#: links for every topic (the claims the tests below check may be in either)
README = README_MD + "\n" + USAGE
MEASURES = (REPO / "docs" / "measures.md").read_text(encoding="utf-8")
STORE = (REPO / "docs" / "store.md").read_text(encoding="utf-8")
REGIMES = (REPO / "docs" / "regimes.md").read_text(encoding="utf-8")
RELIABILITY = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
READING = ("report", "compare", "classify", "export")


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample run's first and last checkpoints, analysed as the README's first command does."""
    folder = tmp_path_factory.mktemp("sample")
    for name in ("fdl.toml", "model.py", "probe.npz", "step_0.safetensors", "step_1000.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    store = folder / "sample.fdl.h5"
    result = fdl("analyze", folder, "--out", store)
    assert result.code == 0, result.stderr
    return store


# ------------------------------------------------------------------------------- fields and store


def _record_table_fields() -> set[str]:
    """The names in the first column of measures.md's "Record fields" table."""
    section = MEASURES.split("## Record fields", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z0-9_A-Z]+)`", line.split(" | ")[0]))
    return names


def test_every_measure_field_has_a_row_in_measures_md() -> None:
    """Each field of the records is named, exactly, in the first column of the table that defines it
    (`k90/k95/k99_quality` named none of the six fields it stood for), or in the section that
    defines the cross-checkpoint fields (`prev_step`)."""
    table = _record_table_fields()
    pipeline_section = MEASURES.split("## Fields computed by the pipeline", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in fields.MEASURE_FIELDS
               if name not in table and f"- `{name}`" not in pipeline_section]
    assert missing == []
    assert table <= set(fields.MEASURE_FIELDS)  # no row for a field that does not exist


def test_every_stored_name_is_defined_in_store_md(sample_store: Path) -> None:
    """Every attribute and dataset of a real store is named in docs/store.md, and the record fields that
    identify a checkpoint (`path`, `sha256`) and the centered run's `feature_mean` are defined there."""
    import h5py

    names: set[str] = set()
    with h5py.File(sample_store, "r") as store:
        names.update(store.attrs)
        store.visititems(lambda _name, obj: names.update(obj.attrs))
        group = store["checkpoints/step_0/probe/4:input"]
        names.update(group)
    names -= set(fields.MEASURE_FIELDS)  # defined in measures.md (above)
    missing = [name for name in sorted(names) if not re.search(rf"\b{re.escape(name)}\b", STORE)]
    assert missing == []
    for name in (*fields.CHECKPOINT_FIELDS, "feature_mean", "n", "task", "n_outputs"):
        assert f"`{name}`" in STORE, name


def test_the_record_of_a_checkpoint_is_what_store_md_defines(sample_store: Path) -> None:
    """`path` is the file as given and `sha256` the sha256 of its bytes (docs/store.md)."""
    result = fdl("report", sample_store, "--format", "json")
    first = json.loads(result.stdout)[0]
    assert first["path"] == str(sample_store.parent / "step_0.safetensors")
    assert first["sha256"] == hashlib.sha256((SAMPLES / "step_0.safetensors").read_bytes()).hexdigest()


# --------------------------------------------------------------------------------- options, help


def _commands() -> dict[str, click.Command]:
    return dict(cli.commands)


def test_every_option_of_every_command_is_documented() -> None:
    """An option that `--help` lists is named in README.md or the docs it links."""
    text = README + MEASURES + STORE + REGIMES + RELIABILITY
    missing = []
    for name, command in sorted(_commands().items()):
        for param in command.params:
            for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
                if opt.startswith("--") and opt != "--help" and not re.search(rf"`[^`]*{re.escape(opt)}\b", text):
                    if not re.search(rf"{re.escape(opt)}(?![-\w])", README):
                        missing.append(f"{name} {opt}")
    assert missing == []


def test_every_package_module_is_in_the_readme_layout() -> None:
    layout = README_MD.split("## Layout", 1)[1]
    line = layout.split("fdl_cli/", 1)[1].split("tests/", 1)[0]
    modules = {path.stem for path in (REPO / "fdl_cli").glob("*.py")} - {"__init__"}
    listed = set(re.findall(r"[a-z_]+", line.split("(", 1)[1]))
    assert sorted(modules - listed) == []
    assert sorted(listed - modules - {"the", "package"}) == []


def test_the_threshold_table_of_regimes_md_is_the_code_s() -> None:
    table = dict(re.findall(r"^\| `([a-z_]+)` \| ([0-9.]+) \|", REGIMES, flags=re.MULTILINE))
    assert {name: float(value) for name, value in table.items()} == {
        field.name: float(field.default) for field in dataclasses.fields(Thresholds)}
    help_text = fdl("classify", "--help").stdout
    for field in dataclasses.fields(Thresholds):
        assert f"{field.name} ({field.default:g})" in " ".join(help_text.split())


def test_the_tolerance_table_of_measures_md_is_the_code_s() -> None:
    table = dict(re.findall(r"^\| `([A-Z_]+)` \| ([0-9.e-]+) \|", MEASURES, flags=re.MULTILINE))
    assert set(table) == {"RANK_RTOL", "CANCELLATION_RTOL", "SHARE_FLOOR", "NEGATIVE_WARN_RTOL", "DLR_ENERGY", "TOP_K"}
    for name, value in table.items():
        assert float(value) == getattr(spectral, name), name


def test_analyze_defaults_named_in_the_readme_are_the_options_defaults() -> None:
    params = {param.name: param for param in _commands()["analyze"].params}
    assert params["top_k"].default == 64 and "`--top-k` (64)" in README
    assert params["poll_seconds"].default == 10.0 and "--poll 10 s" in README
    assert params["batch_size"].default == 512 and "`--batch-size` samples, 512 by default" in README
    assert params["min_commit_interval"].default == 1.0 and "`--commit-interval`, 1 s by default" in README
    assert params["anchor_size"].default == 4096 and "min(n, 4096)" in MEASURES


def test_the_top_level_help_names_the_default_store_analyze_writes(tmp_path: Path, monkeypatch) -> None:
    """`fdl --help` said `checkpoints -> CKPT_DIR.fdl.h5`, a store beside the folder; analyze writes
    ./<the folder's name>.fdl.h5 in the current folder, as its --out help says."""
    top = fdl("--help").stdout
    assert "checkpoints -> ./<folder>.fdl.h5" in top
    assert "CKPT_DIR.fdl.h5" not in top
    assert "./<folder>.fdl.h5 for one folder" in " ".join(fdl("analyze", "--help").stdout.split())
    runs = tmp_path / "runs" / "sample"
    runs.mkdir(parents=True)
    for name in ("fdl.toml", "model.py", "probe.npz", "step_0.safetensors", "step_10.safetensors"):
        (runs / name).symlink_to(SAMPLES / name)
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = fdl("analyze", runs)
    assert result.code == 0, result.stderr
    assert (cwd / "sample.fdl.h5").is_file() and not (tmp_path / "runs" / "sample.fdl.h5").exists()


@pytest.mark.parametrize("command", READING)
def test_the_reading_commands_take_a_series_by_name(command: str) -> None:
    """README writes `--probe NAME` / `--layer NAME`; the reading commands' help said `--probe TEXT`."""
    options = {line.split()[0]: line.split()[1] for line in fdl(command, "--help").stdout.splitlines()
               if line.strip().startswith(("--probe", "--layer"))}
    assert options and set(options.values()) == {"NAME"}, options


def test_batch_size_and_dtype_say_what_they_are() -> None:
    text = " ".join(fdl("analyze", "--help").stdout.split())
    assert "--batch-size INTEGER RANGE Probe samples per forward pass" in text
    assert "--dtype [float32|bfloat16|float16] dtype the model runs in" in text


def test_the_aliases_are_listed_as_such_and_read_as_their_commands(sample_store: Path) -> None:
    top = fdl("--help").stdout
    assert re.search(r"^\s+diff\s+Same as `fdl compare`\.$", top, flags=re.MULTILINE), top
    assert re.search(r"^\s+summarize\s+Same as `fdl report`\.$", top, flags=re.MULTILINE), top
    assert "`fdl summarize` and `fdl diff` are other names of `fdl report` and `fdl compare`" in README
    assert fdl("summarize", sample_store, "--format", "csv").stdout == fdl(
        "report", sample_store, "--format", "csv").stdout
    diff = fdl("diff", sample_store, sample_store, "--format", "csv")
    assert diff.code == 0 and diff.stdout == fdl("compare", sample_store, sample_store, "--format", "csv").stdout
    assert fdl("diff", "--help").stdout.splitlines()[0] == "Usage: fdl diff [OPTIONS] STORE_A STORE_B"


# ----------------------------------------------------------------------------------- formats, formulas


def test_export_formats_are_those_the_readme_gives(sample_store: Path) -> None:
    for what in ("eigenvalues", "quality", "utility"):
        assert fdl("export", sample_store, "--what", what).stdout.splitlines()[0] == f"step,k,{what}"
    rows = fdl("export", sample_store, "--what", "eigenfunctions").stdout.splitlines()
    assert rows[0] == "step,point,k,value" and rows[1].startswith("0,0,1,")
    assert fdl("export", sample_store, "--what", "trajectories").stdout == fdl(
        "report", sample_store, "--format", "csv").stdout


def test_the_recompute_by_hand_snippet_gives_the_stored_numbers(sample_store: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """measures.md's "Recompute by hand", run as written on the features and outputs of the sample run's
    last checkpoint, gives what `fdl analyze` stored."""
    import importlib.util

    import h5py
    import torch
    from safetensors.torch import load_file

    snippet = MEASURES.split("## Recompute by hand", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    spec = importlib.util.spec_from_file_location("sample_model", SAMPLES / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build()
    model.load_state_dict(load_file(str(SAMPLES / "step_1000.safetensors")))
    x = torch.from_numpy(np.load(SAMPLES / "probe.npz")["x"])
    with torch.no_grad():
        features, outputs = model[:4](x), model(x)  # the input of the head, module 4
    monkeypatch.chdir(tmp_path)
    np.save("features.npy", features.double().numpy())
    np.save("outputs.npy", outputs.double().numpy())
    names: dict = {}
    exec(compile(snippet, "measures.md", "exec"), names)  # the documentation's own code, as written
    with h5py.File(sample_store, "r") as store:
        group = store["checkpoints/step_1000/probe/4:input"]
        stored = dict(group.attrs)
        eigenvalues, utility = group["eigenvalues"][()], group["utility"][()]
    assert names["r"] == stored["rank"] and names["r_out"] == stored["output_rank"]
    assert names["k95_utility"] == stored["k95_utility"]
    for name in ("eff_dim", "d_lr", "dlr_alignment", "feature_pr"):
        assert names[name] == pytest.approx(stored[name], rel=1e-9), name
    np.testing.assert_allclose(names["rho"], eigenvalues, rtol=1e-9, atol=1e-12 * eigenvalues[0])
    np.testing.assert_allclose(names["utility"], utility, rtol=1e-8, atol=1e-12)


def test_the_readme_is_a_tour_that_links_every_section_of_usage_md() -> None:
    """README.md stays short enough to read (its reference moved to docs/usage.md in session 21, when its
    "Everyday use" had grown to 400 lines of one bullet list), and each of its links into docs/usage.md
    names a section that exists there, as does usage.md's own table of contents."""
    assert len(README_MD.splitlines()) < 200
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^##+ (.+)$", USAGE, flags=re.MULTILINE)}
    linked = re.findall(r"\(docs/usage\.md#([^)]+)\)", README_MD) + re.findall(r"^- \[.+?\]\(#([^)]+)\)", USAGE,
                                                                             flags=re.MULTILINE)
    assert len(linked) > 10
    assert sorted(set(linked) - anchors) == []
    assert "](docs/" not in USAGE  # usage.md lives in docs/: its links are relative to it
