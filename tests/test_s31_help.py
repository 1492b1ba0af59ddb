"""`fdl --help` and `fdl COMMAND --help` as a user reads them in a terminal of 80 or 60 columns, the examples of
`fdl --help` run as given, and an option given before the command named as the command's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fdl_cli.cli import cli
from tests.cli_run import fdl_in_process

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_checkpoints"
COMMANDS = sorted(cli.commands)


def _help(monkeypatch: pytest.MonkeyPatch, columns: int, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    done = fdl_in_process(*command, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("columns", [80, 60])
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_fits_the_terminal(monkeypatch: pytest.MonkeyPatch, columns: int, command: str) -> None:
    """No line of a help is wider than the terminal: the top level's examples were 99 columns and export's second
    paragraph 100, kept from rewrapping. The one exception is an option's own name and choices, which click cannot
    break (`--what [eigenvalues|...|trajectories]`, 68 columns), alone on its line."""
    text = _help(monkeypatch, columns, *command.split())
    wide = [line for line in text.splitlines()
            if len(line) > columns and not re.fullmatch(r"  -[-\w]+(, -[-\w]+)* \[[^ ]+\]", line)]
    assert wide == []


@pytest.mark.parametrize("columns", [80, 60])
def test_the_list_of_commands_says_each_one_whole(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """`fdl --help` listed "analyze    Analyse checkpoints (a folder, files, or..." at 80 columns, cut in a
    parenthesis (at 60: "The run's regime (coefficient: lazy, MF:..."): each command's line is whole."""
    listing = _help(monkeypatch, columns).split("Commands:\n", 1)[1]
    assert "..." not in listing
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S", listing, re.MULTILINE), name


def test_every_option_says_what_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every option's line carries its meaning, not only its default: export's `--format [csv|json|npy]` showed
    `[default: csv]` alone, though csv/json and npy go to different places (stdout; a file --out must name)."""
    bare = [f"{name} {opt}" for name, command in cli.commands.items() for param in command.params
            if param.param_type_name == "option" and not getattr(param, "help", None)
            for opt in param.opts]
    assert bare == []
    text = " ".join(_help(monkeypatch, 80, "export").split())
    assert re.search(r"--format \[csv\|json\|npy\] csv, json: on stdout \(or --out\); npy: .*--out", text)


# ------------------------------------------------------------------------- an option before the command


@pytest.mark.parametrize(("args", "option", "command"), [
    (("--json", "report", "run.h5"), "--json", "report"),
    (("--format=csv", "export", "run.h5", "--what", "eigenvalues"), "--format", "export"),
    (("-o", "x.h5", "analyze", "runs/"), "-o", "analyze"),
    (("--expect", "MF", "classify", "run.h5"), "--expect", "classify"),
])
def test_an_option_before_its_command_is_named_as_the_command_s(args: tuple[str, ...], option: str,
                                                                 command: str) -> None:
    """`fdl --json report run.h5` said "No such option '--json'. Did you mean '--version'?": the user meant the
    report's --json, given before the command's name, which is where fdl's own options go."""
    done = fdl_in_process(*args)
    assert done.returncode == 2
    assert "--version" not in done.stderr
    given = " ".join(args[: args.index(command)]).replace("=", " ", 1)  # with its value, as the user gave it
    assert (f"Error: {option!r} is an option of 'fdl {command}', not of fdl: give it after the command, "
            f"as in 'fdl {command} ... {given}'") in done.stderr


def test_an_option_of_no_command_keeps_click_s_suggestion() -> None:
    done = fdl_in_process("--verbose", "report", "run.h5")
    assert done.returncode == 2
    assert "Error: No such option '--verbose'. Did you mean '--version'?" in done.stderr


# ------------------------------------------------------------------------------- the examples of --help


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample run's first and last checkpoints, with its model file and probe (its fdl.toml left out, so
    that --model and --probe are the example's)."""
    folder = tmp_path_factory.mktemp("help") / "run"
    folder.mkdir()
    for name in ("model.py", "probe.npz", "step_0.safetensors", "step_1000.safetensors"):
        (folder / name).symlink_to(SAMPLES / name)
    return folder


def _examples(text: str) -> list[list[str]]:
    """The `fdl ...` command lines of a help (a trailing backslash continues a line), without their comments."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line.strip(), comments=True) for line in joined.splitlines()
            if re.match(r"fdl [a-z]", line.strip())]


def test_the_examples_of_fdl_help_run(monkeypatch: pytest.MonkeyPatch, run_folder: Path, tmp_path: Path) -> None:
    """Each example line of `fdl --help` runs (exit 0) with its placeholders filled: CKPT_DIR a run's folder, the
    model file and probe there, STORE.h5, A.h5 and B.h5 the store it writes (--out added: the in-process runner
    works from the repository root, where the default ./run.fdl.h5 would go)."""
    examples = _examples(_help(monkeypatch, 80))
    assert [words[1] for words in examples] == ["analyze", "report", "classify", "compare"]
    store = tmp_path / "run.fdl.h5"
    fill = {"CKPT_DIR": str(run_folder), "model.py:build": f"{run_folder / 'model.py'}:build",
            "probe.npz": str(run_folder / "probe.npz"), "STORE.h5": str(store), "A.h5": str(store),
            "B.h5": str(store)}
    for words in examples:
        args = [fill.get(word, word) for word in words[1:]]
        if args[0] == "analyze":
            args += ["--out", str(store)]
        done = fdl_in_process(*args)
        assert done.returncode == 0, (words, done.stderr)
    assert store.is_file()


@pytest.mark.parametrize("args", [("help",), ("help", "report")])
def test_fdl_help_as_a_command_points_at_the_help_option(args: tuple[str, ...]) -> None:
    """`fdl help` (git's and pip's way) was "No such command 'help'." with no hint: it names --help, and the
    command's own help when one is named."""
    done = fdl_in_process(*args)
    assert done.returncode == 2
    named = args[1] if len(args) > 1 else "COMMAND"
    assert f"Error: No such command 'help'. Did you mean 'fdl --help' (or 'fdl {named} --help')?" in done.stderr


def test_a_tab_after_fdl_help_prints_no_error() -> None:
    """The hint is for a command run, not for a Tab (a completion never prints an error into the command line)."""
    from click.shell_completion import ShellComplete

    items = ShellComplete(cli, {}, "fdl", "_FDL_COMPLETE").get_completions(["help"], "re")
    assert [item.value for item in items] == ["report"]
