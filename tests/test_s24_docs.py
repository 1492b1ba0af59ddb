"""Session 24, docs audit: what the docs say of the command line, the environment and the store is what
the code does.

- usage.md named no environment variable but two (`FDL_PROGRESS_INTERVAL`, `FDL_TORCHRUN_TIMEOUT`, and the
  launcher's in passing): `OPENBLAS_THREAD_TIMEOUT`, which fdl sets, was in benchmarks.md only, and
  `XDG_CONFIG_HOME` / `XDG_CACHE_HOME`, which decide whether fdl gives matplotlib a folder, nowhere.
- The defaults of `--device`, `--dtype`, `--anchor-size`, `--cka-dtype` and report's `--format` were in
  `--help` only (usage.md named the options, not what they are when not given).
- store.md's layout is checked both ways: every name a store holds is in store.md (tests/test_s16_docs.py),
  and every name store.md's layout lists is one the store module writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import h5py

from fdl_cli import cli as cli_module
from fdl_cli import fields
from fdl_cli.cli import cli
from tests.test_analyze import fdl
from tests.test_s16_docs import REPO, STORE, USAGE

#: usage.md's section "Environment variables" ("" where there is none)
ENVIRONMENT = (USAGE.split("\n## Environment variables\n", 1) + [""])[1].split("\n## ", 1)[0]
#: variables the section names that another program reads: click's completion
FOREIGN_VARIABLES = {"_FDL_COMPLETE"}


def _variables_the_code_reads() -> set[str]:
    """The environment variables fdl_cli reads or sets: the quoted capitals on a line that touches
    `environ`/`env` or defines a `*_ENV` name, and the BLAS variables the entry point sets."""
    names: set[str] = set(cli_module.BLAS_ENVIRONMENT)
    for path in (REPO / "fdl_cli").glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(r"\benv(iron)?\b|_ENV\b", line) and not line.lstrip().startswith("#"):
                names.update(re.findall(r"[\"']([A-Z][A-Z0-9_]{2,})[\"']", line))
    return names


def test_the_scan_finds_the_variables_fdl_is_known_to_read() -> None:
    read = _variables_the_code_reads()
    assert {"FDL_PROGRESS_INTERVAL", "FDL_TORCHRUN_TIMEOUT", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT",
            "CUDA_VISIBLE_DEVICES", "MPLCONFIGDIR", "XDG_CACHE_HOME", "OPENBLAS_THREAD_TIMEOUT"} <= read


def test_every_environment_variable_the_code_reads_is_in_usage_md_s_section() -> None:
    named = set(re.findall(r"`([A-Z_][A-Z0-9_]+)(?:=[A-Z]+)?`", ENVIRONMENT))
    assert sorted(_variables_the_code_reads() - named) == []
    assert sorted(named - _variables_the_code_reads() - FOREIGN_VARIABLES) == []


def test_the_environment_section_s_defaults_are_the_code_s() -> None:
    from fdl_cli import distributed, progress

    assert "`FDL_PROGRESS_INTERVAL=SECONDS`" in ENVIRONMENT and progress.LOG_INTERVAL == 30.0
    assert "30 by default" in ENVIRONMENT
    assert distributed.WAIT_S == 7 * 24 * 3600 and "a week by default" in ENVIRONMENT
    assert f"at\n  most {distributed.MAX_WAIT_S:.0f}" in ENVIRONMENT
    assert cli_module.BLAS_ENVIRONMENT == {"OPENBLAS_THREAD_TIMEOUT": "4"} and "sets it to 4" in ENVIRONMENT


def test_an_invalid_progress_interval_is_ignored_as_usage_md_says(monkeypatch) -> None:
    from fdl_cli import progress

    for value, expected in (("abc", 30.0), ("-1", 30.0), ("nan", 30.0), ("0", 0.0), ("2.5", 2.5)):
        monkeypatch.setenv("FDL_PROGRESS_INTERVAL", value)
        assert progress.log_interval() == expected, value
    assert "a value that is no number ≥ 0 is ignored" in ENVIRONMENT


# ---------------------------------------------------------------------------------------------- defaults


def _shown(value: object) -> str:
    """A default as the docs write it: 10.0 as 10, 0.99 as 0.99."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_default_help_shows_is_said_beside_its_option_in_usage_md() -> None:
    """Each option whose `--help` shows a default has it within a sentence of one of its mentions in usage.md
    (`--anchor-size` (4096), `--device auto (the default ...)`), so a default changed in the code alone fails."""
    text = " ".join(USAGE.split())
    missing = []
    for name, command in cli.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or not param.show_default or param.default in (None, False):
                continue
            option = next(opt for opt in param.opts if opt.startswith("--"))
            value = option if param.default is True else _shown(param.default)
            near = [text[max(0, match.start() - 150):match.end() + 150]
                    for match in re.finditer(rf"{re.escape(option)}(?![-\w])", text)]
            if not any(re.search(rf"(?<![\w.-]){re.escape(value)}(?![\w.])", window, re.IGNORECASE) for window in near):
                missing.append(f"{name} {option} {value}")
    assert missing == []


def test_the_defaults_usage_md_states_are_the_options_defaults() -> None:
    params = {param.name: param for param in cli.commands["analyze"].params}
    assert params["device"].default == "auto" and "`--device auto` (the default" in USAGE
    assert params["dtype"].default == "float32" and "`--dtype` (float32 by default" in USAGE
    assert params["anchor_size"].default == 4096 and "`--anchor-size` (4096 probe points)" in USAGE
    assert params["cka_dtype"].default == "float64" and "`--cka-dtype` (float64)" in USAGE
    assert params["center"].default is False and "`--center`\n(uncentered)" in USAGE
    report = {param.name: param for param in cli.commands["report"].params}
    assert report["fmt"].default == "table" and "(`--format table`, the default)" in USAGE


# ------------------------------------------------------------------------------------------ the store


def _layout_levels() -> dict[str, tuple[set[str], dict[str, str]]]:
    """store.md's layout block by level ("/", "/probes/<probe>/", "/checkpoints/step_<step>/", "<probe>/<layer>/",
    "/trajectories/<probe>/<layer>/<field>"): the attribute names and the datasets (name -> dtype) listed there."""
    block = STORE.split("## Layout", 1)[1].split("```", 2)[1]
    levels: dict[str, tuple[set[str], dict[str, str]]] = {}
    level = ""
    for line in block.splitlines():
        head = re.match(r"^\s{0,4}(\S*/\S*)\s", line + " ")
        if head and (head.group(1).startswith("/") or head.group(1).endswith("/")):
            level = head.group(1)
            levels[level] = (set(), {})
        if not level:
            continue
        attributes, datasets = levels[level]
        if "attrs:" in line:
            part = line.split("attrs:", 1)[1].strip()
        elif re.match(r"\s{40,}\S", line):  # an attribute list's continuation
            part = line.strip()
        else:
            dataset = re.match(r"\s{4,}([a-z][a-z0-9_]*)\s+\(.*?\)\s+(float32|float64|int64)", line)
            if dataset:
                datasets[dataset.group(1)] = dataset.group(2)
            continue
        # `name = value`, `name (type ...)`, or names sharing one type: `chance_accuracy, label_entropy (float64 ...)`
        attributes.update(re.findall(r"(?:^|, )([a-z][a-z0-9_]*)(?=(?:, [a-z][a-z0-9_]*)* (?:=|\())", part))
    return levels


def _layout() -> tuple[set[str], dict[str, str]]:
    """The attribute names and the datasets (name -> dtype) of store.md's layout block, all levels together."""
    attributes: set[str] = set()
    datasets: dict[str, str] = {}
    for names, arrays in _layout_levels().values():
        attributes |= names
        datasets |= arrays
    return attributes, datasets


def test_the_layout_is_read_whole() -> None:
    attributes, datasets = _layout()
    assert {"format", "schema_version", "provenance", "history", "sha256", "x_sha256", "step", "complete"} <= attributes
    assert datasets["eigenfunctions"] == "float32" and datasets["eigenvalues"] == "float64"


def test_every_name_store_md_s_layout_lists_is_one_a_store_holds(tmp_path: Path) -> None:
    """The reverse of tests/test_s16_docs.py's check: a store of a two-output regression probe analysed with
    --center (anchors, feature_mean, quality, r2_outputs) holds every attribute and dataset the layout lists,
    with the dtype it gives; `dropped` and `pending_series`, which only a drop or an unfinished addition writes,
    are written by the store module under those names."""
    import numpy as np
    import torch

    (tmp_path / "model.py").write_text(
        "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 2))\n")
    x = np.linspace(-1, 1, 24, dtype=np.float32)[:, None]
    np.savez(tmp_path / "probe.npz", x=x, y=np.hstack([np.sin(3 * x), x**2]))
    for step in (0, 10):
        torch.manual_seed(step)
        net = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
        torch.save(net.state_dict(), tmp_path / f"step_{step}.pt")
    store = tmp_path / "run.h5"
    result = fdl("analyze", tmp_path, "--model", f"{tmp_path / 'model.py'}:build", "--probe", tmp_path / "probe.npz",
                 "--center", "--out", store)
    assert result.code == 0, result.stderr

    attributes: set[str] = set()
    datasets: dict[str, str] = {}

    def visit(name: str, node: h5py.HLObject) -> None:
        attributes.update(node.attrs)
        if isinstance(node, h5py.Dataset) and not name.startswith("trajectories/"):
            datasets[name.rsplit("/", 1)[1]] = str(node.dtype)

    with h5py.File(store, "r") as opened:
        attributes.update(opened.attrs)
        opened.visititems(visit)
        provenance = json.loads(opened.attrs["provenance"])
        history = json.loads(opened.attrs["history"])
    # the provenance's keys and options, and the history's, are each named in store.md
    keys = {*provenance, *provenance["options"], *history[0]}
    assert sorted(key for key in keys if f"`{key}`" not in STORE) == []
    listed, listed_datasets = _layout()
    source = (REPO / "fdl_cli" / "store.py").read_text(encoding="utf-8")
    # and a class-label probe's chance, which this regression probe has none of; model_changes: tests/test_s34_accept.py;
    # anchor_skew: tests/test_s39_anchors.py
    written_elsewhere = {name for name in ("dropped", "refused", "pending_series", "chance_accuracy", "label_entropy",
                                           "model_changes", "anchor_skew")
                         if f'attrs["{name}"] = ' in source or f'_new_attr(node, "{name}", ' in source}
    assert sorted(listed - attributes - written_elsewhere) == []
    assert sorted(attributes - set(fields.MEASURE_FIELDS) - listed) == []
    assert listed_datasets == datasets


# ------------------------------------------------------------------------- DESIGN.md and SPEC.md


ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
#: architecture.md's "Where fdl departs from DESIGN.md and SPEC.md" ("" where there is none)
DEPARTURES = (ARCHITECTURE.split("\n## Where fdl departs from DESIGN.md and SPEC.md\n", 1) + [""])[1].split("\n## ")[0]
#: DESIGN.md's "Per-checkpoint fields (the stable names of `--format json|csv`)", as it lists them
DESIGN_FIELDS = (
    "step, path, sha256, n_probe, n_features, n_outputs, rank, d_lr, output_rank, dlr_alignment, feature_pr, eff_dim, "
    "eff_dim_quality, eff_dim_utility, k90_quality, k95_quality, k99_quality, k90_utility, k95_utility, k99_utility, "
    "pi_star_C, pi_hat_C, cka_init, cka_prev, overlap_init, overlap_prev, nc1, param_norm, param_dist_init, accuracy, "
    "loss, regime"
).split(", ")


def test_the_fields_beyond_design_md_s_list_are_those_architecture_md_names() -> None:
    """Every record field DESIGN.md does not list is named, with its reason, among the departures; none of
    DESIGN.md's fields is missing from the records."""
    bullet = DEPARTURES.split("**Fields beyond DESIGN.md's list**", 1)[1].split("\n- ", 1)[0]
    beyond = [name for name in fields.RECORD_FIELDS if name not in DESIGN_FIELDS]
    assert beyond and sorted(name for name in beyond if f"`{name}`" not in bullet) == []
    assert [name for name in DESIGN_FIELDS if name not in fields.RECORD_FIELDS] == []


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_the_departures_point_to_pages_and_sections_that_exist() -> None:
    links = re.findall(r"\]\(([a-z]+\.md)(?:#([a-z0-9-]+))?\)", DEPARTURES)
    assert len(links) >= 8
    for page, anchor in links:
        text = (REPO / "docs" / page).read_text(encoding="utf-8")
        if anchor:
            assert anchor in {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}, (page, anchor)
    for section in ("§1", "§2", "§4", "§5", "§6", "§7", "§8"):
        assert f"- {section}:" in DEPARTURES, section


def test_the_readme_says_a_torch_export_file_loads_with_trust_pickle_as_fdl_does(tmp_path: Path) -> None:
    """README's "What fdl reads" said TorchScript and `torch.export` files "all load", where a `.pt2` is refused
    without `--trust-pickle` (torch.export.load can run code from the archive; usage.md said so)."""
    import numpy as np
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1),)), tmp_path / "step_0.pt2")
    x = np.linspace(-1, 1, 8, dtype=np.float32)[:, None]
    np.savez(tmp_path / "probe.npz", x=x, y=x)
    result = fdl("analyze", tmp_path, "--probe", tmp_path / "probe.npz", "--out", tmp_path / "run.h5")
    assert result.code == 1
    assert "a torch.export archive can run code when loaded" in result.stderr and "--trust-pickle" in result.stderr
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "`torch.export` files (with `--trust-pickle`)" in readme
