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
