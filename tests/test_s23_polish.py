"""Session 23, a shell-ergonomics review's small items:

- a wrong value of a choice option (`report --format jsn`, `export --what eigenvalue`) listed the choices with no
  suggestion, and `--device cdua` none either; `--expect`'s message lacked the full stop click's others end with;
- `export --what` had no help; `classify --probe`'s help said "the first given to analyze" where a store that
  does not record that order is read by name (as classify's note says);
- `fdl analyze -` trimmed spaces around each path read from stdin (a path ending in a space was then wrong)
  and took no NUL-separated list (`find -print0`);
- `_FDL_COMPLETE=bash_source fdl > /dev/full` ended in a traceback: click writes the completion script as
  bytes, to stdout's buffer, past the guard that says a failed write in one paragraph.
"""

from __future__ import annotations

import io
from pathlib import Path

import click
import pytest
import torch

from fdl_cli.checkpoints import discover_checkpoints
from fdl_cli.cli import cli
from fdl_cli.errors import CheckpointError, ModelError
from fdl_cli.extract import named_device
from tests.test_analyze import fdl
from tests.test_checkpoints import _sd
from tests.test_s23_shell import FULL, _with_stdout, needs_full

# ------------------------------------------------------------------------------ choice suggestions

WRONG_CHOICES = {
    "report --format jsn": (["report", "run.h5", "--format", "jsn"], "'json'"),
    "compare --format mrkdown": (["compare", "a.h5", "b.h5", "--format", "mrkdown"], "'markdown'"),
    "export --what eigenvalue": (["export", "run.h5", "--what", "eigenvalue"], "'eigenvalues'"),
    "export --format jsn": (["export", "run.h5", "--what", "quality", "--format", "jsn"], "'json'"),
    "analyze --dtype flaot16": (["analyze", "run", "--dtype", "flaot16"], "'float16'"),
    "analyze --cka-dtype float": (["analyze", "run", "--cka-dtype", "float"], "'float32' or 'float64'"),
    "classify --expect mff": (["classify", "run.h5", "--expect", "mff"], "'MF'"),
}


@pytest.mark.parametrize("name", WRONG_CHOICES)
def test_a_wrong_choice_gets_the_one_meant(name: str) -> None:
    args, meant = WRONG_CHOICES[name]
    done = fdl(*args)
    assert done.code == 2, done.stderr
    assert f". Did you mean {meant}?" in done.stderr  # as click's "No such option '--formt'. Did you mean ...?"


def test_a_choice_far_from_any_lists_them_alone_with_a_full_stop() -> None:
    done = fdl("report", "run.h5", "--format", "xyzzy")
    assert done.code == 2
    assert "'xyzzy' is not one of 'table', 'json', 'csv', 'markdown'.\n" in done.stderr
    assert "Did you mean" not in done.stderr


def test_expect_ends_with_a_full_stop_as_click_s_other_messages() -> None:
    done = fdl("classify", "run.h5", "--expect", "zzz")
    assert done.code == 2
    assert "'zzz' is not one of 'coefficient', 'MF', 'EF' (any case).\n" in done.stderr


def test_every_choice_option_of_the_cli_suggests() -> None:
    """One mechanism for all: a click.Choice added later without it fails here."""
    from fdl_cli.cli import SuggestingChoice

    choices = [(command.name, param.name) for command in cli.commands.values() for param in command.params
               if isinstance(param.type, click.Choice)]
    assert len(choices) >= 7  # format (report, compare, export), what, dtype, cka-dtype, expect
    plain = [(command.name, param.name) for command in cli.commands.values() for param in command.params
             if isinstance(param.type, click.Choice) and not isinstance(param.type, SuggestingChoice)]
    assert plain == []


@pytest.mark.parametrize(("device", "meant"), [("cdua", "cuda"), ("gpu", "cuda"), ("cpus", "cpu"), ("atuo", "auto")])
def test_a_misspelt_device_gets_the_one_meant(device: str, meant: str) -> None:
    with pytest.raises(ModelError) as raised:
        named_device(device)
    assert raised.value.what == f"unknown device {device!r}"  # as tests/test_s17_gpu.py has it
    assert raised.value.fix == f"did you mean --device {meant}? use auto, cpu, cuda or cuda:i"


def test_a_device_far_from_any_lists_them() -> None:
    with pytest.raises(ModelError) as raised:
        named_device("zzzz")
    assert raised.value.fix == "use auto, cpu, cuda or cuda:i"


# ----------------------------------------------------------------------------------------- help texts


def test_export_what_has_a_help_naming_what_each_holds() -> None:
    done = fdl("export", "--help")
    assert done.code == 0
    what = done.stdout[done.stdout.index("--what"):done.stdout.index("--format")]
    for choice in ("eigenvalues: ", "quality: ", "utility: ", "eigenfunctions: ", "trajectories: "):
        assert choice in what


def test_classify_probe_help_says_the_order_its_note_says() -> None:
    """The first probe given to analyze, or by name in a store that does not record that order (classify's
    note says which); the help said the first alone."""
    probe = next(param for param in cli.commands["classify"].params if param.name == "probe")
    assert isinstance(probe, click.Option) and probe.help is not None
    assert "the first given to analyze" in probe.help and "by name" in probe.help


# ------------------------------------------------------------------------------------ paths on stdin


def _checkpoints(folder: Path, *names: str) -> list[Path]:
    paths = []
    for seed, name in enumerate(names):
        torch.save(_sd(seed), folder / name)
        paths.append(folder / name)
    return paths


def _read(text: str) -> list[tuple[int, str]]:
    found = discover_checkpoints(["-"], stdin=io.StringIO(text))
    return [(ref.step, ref.path.name) for ref in found.checkpoints]


def test_a_path_on_stdin_ending_in_a_space_is_taken_whole(tmp_path: Path) -> None:
    spaced, plain = _checkpoints(tmp_path, "s_100.pt ", "s_0.pt")
    assert _read(f"{spaced}\n{plain}\n") == [(0, "s_0.pt"), (100, "s_100.pt ")]


def test_crlf_line_endings_and_blank_lines_on_stdin(tmp_path: Path) -> None:
    first, second = _checkpoints(tmp_path, "s_0.pt", "s_100.pt")
    assert _read(f"{second}\r\n\r\n  \n{first}\r\n") == [(0, "s_0.pt"), (100, "s_100.pt")]


def test_nul_separated_paths_on_stdin_as_find_print0_writes_them(tmp_path: Path) -> None:
    first, odd, spaced = _checkpoints(tmp_path, "s_0.pt", "s\n_100.pt", " s_200.pt")
    assert _read(f"{spaced}\0{first}\0{odd}\0") == [(0, "s_0.pt"), (100, "s\n_100.pt"), (200, " s_200.pt")]


@pytest.mark.parametrize("after", ["\n", "\r\n"])
def test_a_line_ending_after_the_last_nul_is_no_path(tmp_path: Path, after: str) -> None:
    """`printf '%s\\0' *.pt; echo`: the echo's line ending was read as a path named "\n", said missing."""
    first, second = _checkpoints(tmp_path, "s_0.pt", "s_100.pt")
    assert _read(f"{second}\0{first}\0{after}") == [(0, "s_0.pt"), (100, "s_100.pt")]


def test_a_path_on_stdin_with_spaces_around_it_says_so(tmp_path: Path) -> None:
    (path,) = _checkpoints(tmp_path, "s_0.pt")
    with pytest.raises(CheckpointError) as raised:
        _read(f"  {path} \n")
    message = str(raised.value)
    assert f"no such checkpoint file or folder: '  {path} '" in message
    assert "spaces" in message and f"{path}" in message


def test_analyze_reads_nul_separated_paths_from_its_stdin(tmp_path: Path) -> None:
    """The command itself: before, the NUL made os.stat raise ValueError (embedded null byte)."""
    paths = _checkpoints(tmp_path, "s_0.pt", "s_100.pt")
    done = fdl("analyze", "-", "--out", str(tmp_path / "run.h5"), "--device", "cpu", "--steps", "7",
               stdin="\0".join(map(str, paths)) + "\0")
    assert done.code == 1, done.stderr
    assert "Traceback" not in done.stderr and "null byte" not in done.stderr
    assert "--steps" in done.stderr and "0, 100" in done.stderr  # the two checkpoints read, no step 7 among them


# ----------------------------------------------------------------------------------- shell completion


@needs_full
def test_the_completion_script_to_a_full_disk_is_an_error_said_in_one_paragraph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("_FDL_COMPLETE", "bash_source")
    with FULL.open("w") as full:
        done = _with_stdout(full)
    assert done.returncode == 1, done.stderr
    assert "error: could not write to stdout: No space left on device" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_the_completion_script_to_a_closed_stdout_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_FDL_COMPLETE", "bash_source")
    done = _with_stdout(None)
    assert done.returncode == 1, done.stderr
    assert "error: could not write to stdout: it is closed" in done.stderr


def test_the_completion_script_still_reaches_a_writable_stdout(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("_FDL_COMPLETE", "bash_source")
    with (tmp_path / "fdl.bash").open("w") as out:
        done = _with_stdout(out)
    assert done.returncode == 0, done.stderr
    assert "_fdl_completion" in (tmp_path / "fdl.bash").read_text()
