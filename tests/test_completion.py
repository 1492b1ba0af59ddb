"""Shell completion (docs/usage.md, "Shell completion"): what a Tab offers for fdl's own arguments, through
click's completion machinery as the shells' scripts call it, and the bash script end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

from fdl_cli.cli import cli
from tests.test_report import make_store


def complete(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    items = ShellComplete(cli, {}, "fdl", "_FDL_COMPLETE").get_completions(args, incomplete)
    return [(item.type, item.value) for item in items]


@pytest.mark.parametrize(
    "args",
    [["analyze"], ["analyze", "runs/a"], ["analyze", "x", "--probe"], ["inspect"], ["inspect", "x", "--probe"]],
)
def test_checkpoints_and_probes_complete_as_paths(args: list[str]) -> None:
    # left to the shell's own file completion, as for click.Path (they completed to nothing)
    assert complete(args, "sam") == [("file", "sam")]


def test_model_completes_the_path_then_the_files_factories_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = tmp_path / "model.py"
    model.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('x')\n"
        "def build(width=8):\n    pass\n"
        "async def build_async():\n    pass\n"
        "class Net:\n    pass\n"
        "small: object = None\n"
        "big = medium = None\n"
        "def _private():\n    pass\n"
        "if True:\n    def nested():\n        pass\n"
    )
    for command in ("analyze", "inspect"):
        assert complete([command, "x", "--model"], str(tmp_path / "mo")) == [("file", str(tmp_path / "mo"))]
        names = complete([command, "x", "--model"], f"{model}:")
        assert names == [("plain", f"{model}:{name}") for name in ("build", "build_async", "Net", "small", "big", "medium")]
        assert complete([command, "x", "--model"], f"{model}:b") == [
            ("plain", f"{model}:build"), ("plain", f"{model}:build_async"), ("plain", f"{model}:big")
        ]
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"def broken(:\n", b"\xff\xfe\x00garbage", None])
def test_an_unreadable_model_file_completes_to_nothing(tmp_path: Path, content: bytes | None) -> None:
    model = tmp_path / "model.py"
    if content is not None:
        model.write_bytes(content)
    assert complete(["analyze", "x", "--model"], f"{model}:") == []


def test_a_module_spec_is_not_imported_on_a_tab() -> None:
    # `pkg.module:` would need an import (user code); it is left alone
    assert complete(["analyze", "x", "--model"], "torchvision.models:res") == [("file", "torchvision.models:res")]


def test_devices_and_thresholds() -> None:
    assert [value for _, value in complete(["analyze", "x", "--device"], "cu")] == ["cuda", "cuda:0", "cuda:1"]
    assert [value for _, value in complete(["analyze", "x", "--device"], "")][:2] == ["auto", "cpu"]
    from fdl_cli.regimes import Thresholds

    offered = [value for _, value in complete(["classify", "s.h5", "--threshold"], "")]
    assert offered == [f"{name}={getattr(Thresholds(), name):g}" for name in Thresholds.__dataclass_fields__]
    assert all(value.startswith("cka") for _, value in complete(["classify", "s.h5", "--threshold"], "cka"))
    # compare's own threshold (its verdict's D_LR tie) and the movement thresholds it shares with classify, not
    # classify's regime rules (mf_extra, final_window), which it refuses
    for command in ("compare", "diff"):
        offered = [value for _, value in complete([command, "a.h5", "b.h5", "--threshold"], "")]
        assert offered == ["dlr_tie=0.001", "cka_static=0.99", "overlap_static=0.95", "overlap_moved=0.8"]


def test_probes_and_layers_come_from_the_store_given_before(tmp_path: Path) -> None:
    store = make_store(tmp_path / "two.h5", layers=("fc1", "fc2"))
    other = make_store(tmp_path / "other.h5", layers=("head",))
    for command in ("report", "export", "classify"):
        assert complete([command, str(store), "--layer"], "") == [("plain", "fc1"), ("plain", "fc2")]
        assert complete([command, str(store), "--layer"], "fc2") == [("plain", "fc2")]
        assert complete([command, str(store), "--probe"], "") == [("plain", "train")]
    assert complete(["compare", str(store), str(other), "--layer"], "") == [("plain", "fc1"), ("plain", "fc2")]
    assert complete(["compare", str(store), str(other), "--layer-b"], "") == [("plain", "head")]
    assert complete(["compare", str(store), str(other), "--probe-b"], "") == [("plain", "train")]


def test_no_store_or_a_broken_one_completes_to_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5")
    assert complete(["report", "--layer"], "") == []
    assert complete(["report", str(tmp_path / "missing.h5"), "--layer"], "") == []
    assert complete(["report", str(broken), "--probe"], "") == []


def test_the_bash_script_and_a_tab_through_the_installed_entry_point(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run.h5", layers=("fc1", "fc2"))
    env = {**os.environ, "_FDL_COMPLETE": "bash_source"}
    code = "from fdl_cli.cli import main; main()"
    source = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert source.returncode == 0 and "complete -o nosort -F" in source.stdout
    env.update(_FDL_COMPLETE="bash_complete", COMP_WORDS=f"fdl report {store} --layer f", COMP_CWORD="4")
    tab = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert tab.returncode == 0 and tab.stderr == ""
    assert tab.stdout.split() == ["plain,fc1", "plain,fc2"]
