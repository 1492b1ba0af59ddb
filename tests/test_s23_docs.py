"""Session 23, the docs run as written: every option a command's `--help` lists is described in docs/usage.md
(the reference README.md sends the reader to), every option usage.md names is one of fdl's, and the snippets
of the docs that can run on the sample run do, and print what the text around them says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from fdl_cli.cli import cli
from tests.cli_run import fdl_in_process
from tests.test_s16_docs import SAMPLES, STORE, USAGE

#: options usage.md names that are another program's: torchrun's, `python -m json.tool`'s
FOREIGN = {"--nproc-per-node", "--nnodes", "--rdzv-endpoint", "--standalone", "--json-lines"}


def _options() -> dict[str, set[str]]:
    """Each long option of fdl (its commands' and the top level's), with the commands that take it."""
    found: dict[str, set[str]] = {}
    for name, command in [("fdl", cli), *cli.commands.items()]:
        for param in command.params:
            for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
                if opt.startswith("--"):
                    found.setdefault(opt, set()).add(name)
    found["--help"] = {"fdl", *cli.commands}  # click adds it to each
    return found


def test_every_option_help_lists_is_in_usage_md() -> None:
    """`--dlr-energy`, `--every`, `--reference` (analyze), `--overlap-steps` (compare) and `--version` were
    described only in measures.md or regimes.md, or nowhere, though usage.md is "every rule the commands follow"."""
    missing = sorted(f"{sorted(commands)} {opt}" for opt, commands in _options().items()
                     if opt != "--help" and not re.search(rf"{re.escape(opt)}(?![-\w])", USAGE))
    assert missing == []


def test_every_option_usage_md_names_is_one_of_fdls() -> None:
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", USAGE))
    assert sorted(named - set(_options()) - FOREIGN) == []


# ------------------------------------------------------------------------------------ snippets, as written


def _python_block(text: str, heading: str) -> str:
    """The first ```python block after `heading` in a Markdown text."""
    match = re.search(r"```python\n(.*?)```", text.split(heading, 1)[1], re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_the_sample_fdl_toml_names_the_keys_fdl_toml_takes_and_where_their_rules_are() -> None:
    """sample_checkpoints/fdl.toml, the example usage.md points to, sent its reader to README.md's "Model",
    a three-line bullet; the rules of fdl.toml are usage.md's "fdl.toml"."""
    from fdl_cli.manifests import MANIFEST_OPTIONS

    text = (SAMPLES / "fdl.toml").read_text(encoding="utf-8")
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    listed = re.search(r"the command line wins\): (.*?)\. See", comment)
    assert listed, comment
    assert {key.strip() for key in listed.group(1).split(",")} == {*MANIFEST_OPTIONS, "layer", "weights"}
    assert 'See docs/usage.md, "fdl.toml".' in comment and "\n### fdl.toml\n" in USAGE


def test_store_md_reading_without_fdl_runs_on_a_store(tmp_path: Path) -> None:
    """docs/store.md's plain-h5py snippet reads the trajectory and the last spectrum the commands print (its
    series `train/fc2:input` renamed to the sample run's layer)."""
    store = tmp_path / "run.h5"
    done = fdl_in_process("analyze", SAMPLES, "--probe", f"train={SAMPLES / 'probe.npz'}", "--steps", "0,50,1000",
                          "-o", store)
    assert done.returncode == 0, done.stderr
    code = _python_block(STORE, "## Reading without fdl")
    assert code.count('"run.h5"') == 1 and code.count("train/fc2:input") == 2
    scope: dict[str, object] = {}
    exec(compile(code.replace('"run.h5"', repr(str(store))).replace("train/fc2:input", "train/4:input"),
                 "docs/store.md", "exec"), scope)
    records = json.loads(fdl_in_process("report", store, "--format", "json").stdout)
    assert scope["steps"].tolist() == [0, 50, 1000]  # type: ignore[attr-defined]
    assert scope["d_lr"].tolist() == [record["d_lr"] for record in records]  # type: ignore[attr-defined]
    exported = json.loads(fdl_in_process("export", store, "--what", "eigenvalues", "--format", "json").stdout)
    np.testing.assert_array_equal(scope["spectrum"], exported[-1]["eigenvalues"])


def test_usage_md_wrapper_of_a_model_of_several_inputs_analyses_a_stacked_probe(tmp_path: Path) -> None:
    """usage.md's "A model of several inputs": its wrapper (with the `Net` it wraps written out) loads the
    checkpoints of the bare `Net` as they are, runs on `np.stack([ids, mask], 1)`, and `--layer` names begin
    with `module.`, as the text says."""
    net = (
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb, self.hidden, self.head = nn.Embedding(20, 6), nn.Linear(6, 5), nn.Linear(5, 3)\n"
        "    def forward(self, ids, mask):\n"
        "        pooled = (self.emb(ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)\n"
        "        return self.head(torch.relu(self.hidden(pooled)))\n"
    )
    (tmp_path / "model.py").write_text(net + _python_block(USAGE, "### A model of several inputs"), encoding="utf-8")
    rng = np.random.default_rng(0)
    ids, mask, labels = rng.integers(0, 20, (40, 7)), (rng.random((40, 7)) > 0.3).astype(np.int64), rng.integers(0, 3, 40)
    np.savez(tmp_path / "probe.npz", x=np.stack([ids, mask], 1), y=labels)
    runs = tmp_path / "runs"
    runs.mkdir()
    for step in (0, 10):
        torch.manual_seed(step)
        net_weights = {"emb.weight": torch.randn(20, 6), "hidden.weight": torch.randn(5, 6),
                       "hidden.bias": torch.randn(5), "head.weight": torch.randn(3, 5), "head.bias": torch.randn(3)}
        torch.save(net_weights, runs / f"step_{step}.pt")
    store = tmp_path / "m.h5"
    done = fdl_in_process("analyze", runs, "--model", f"{tmp_path / 'model.py'}:build", "--probe",
                          tmp_path / "probe.npz", "-o", store)
    assert done.returncode == 0, done.stderr
    records = json.loads(fdl_in_process("report", store, "--format", "json").stdout)
    assert [record["step"] for record in records] == [0, 10] and records[0]["n_features"] == 5
    assert "layer: module.head:input" in fdl_in_process("report", store).stderr.splitlines()


def test_the_provenance_lines_usage_md_names_open_the_report(tmp_path: Path) -> None:
    """usage.md's "The report's provenance" names each header line by its label; several probes are a line
    `probes:`, which it did not name (as it names `layers:`)."""
    section = USAGE.split("### The report's provenance", 1)[1].split("\n## ", 1)[0]
    labels = set(re.findall(r"`([a-z_]+):", section))
    assert labels == {"model", "model_kwargs", "layer", "layers", "probe", "probes", "options"}
    store = tmp_path / "several.h5"
    probe = SAMPLES / "probe.npz"
    done = fdl_in_process("analyze", SAMPLES, "--steps", "0,5", "--model-kwargs", '{"hidden": 64}', "--probe",
                          f"a={probe}", "--probe", f"b={probe}", "--layer", "4:input", "--layer", "3", "-o", store)
    assert done.returncode == 0, done.stderr
    one = tmp_path / "one.h5"
    assert fdl_in_process("analyze", SAMPLES, "--steps", "0,5", "-o", one).returncode == 0
    printed = {line.split(":", 1)[0] for path in (store, one)
               for line in fdl_in_process("report", path).stderr.splitlines() if ": " in line}
    assert labels <= printed
