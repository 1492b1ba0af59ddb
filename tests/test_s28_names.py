"""Names read from a checkpoint (its keys, its dict's entries, the globals its pickle names) that fdl's notes and
errors quoted whole: a forged name of a megabyte made a line of a megabyte, and a newline in it broke the message
where the name's start was shown. Each is shown by its first characters and its length, escaped (newline and tab
too), as `errors.shown_name` shows the names of the other messages; short names as before."""

from __future__ import annotations

import contextlib
import struct
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fdl_cli.errors import shown_name
from tests.test_analyze import fdl
from tests.test_s15_formats import MODEL, _probe, _weights

LONG = "w\x1b[31m\x07\n" + "x" * 2**20  # a megabyte's name: red text, the bell, a line broken
START = "w\\x1b[31m\\x07\\x0axxxx"  # how its start is shown, escaped
LINE_LIMIT = 1000  # characters of any line of a message: a few names of 80 and the words around them


def _assert_bounded(text: str, length: int, limit: int = LINE_LIMIT) -> None:
    longest = max(len(line) for line in text.splitlines())
    assert longest <= limit, longest
    assert "\x1b" not in text and "\x07" not in text
    assert START in text and f"({length} characters)" in text, text[:2000]


def _stack_global(module: str, name: str) -> bytes:
    """A pickle (protocol 4) of a reference to `module.name`, which STACK_GLOBAL takes whatever its characters."""
    said = b""
    for text in (module, name):
        raw = text.encode()
        said += (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw
    return b"\x80\x04" + said + b"\x93."


def _analyze(run: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    done = fdl("analyze", run, *MODEL, "--probe", _probe(tmp_path / "probe.pt"), "--out", tmp_path / f"out{len(extra)}.h5",
               "--device", "cpu", *extra)
    return done.code, done.stdout + done.stderr


def _run(tmp_path: Path, save: Callable[[Path], object], *, good: bool) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    if good:
        torch.save({"model": _weights(0)}, run / "step_1.pt")
    save(run / "step_2.pt")
    return run


# ------------------------------------------------------------------------ notes of a folder's skipped files


@pytest.mark.parametrize(("save", "said", "length"), [
    (lambda path: path.write_bytes(_stack_global("evil" + LONG, "thing")), "pickled Python object (evil",
     len("evil" + LONG + ".thing")),
    (lambda path: torch.save({LONG: np.zeros((3, 3)), "b": np.ones((2, 2))}, path), "a state_dict of numpy arrays (",
     len(LONG)),
], ids=["pickled-object", "numpy-state"])
def test_a_skipped_files_note_shows_a_megabyte_name_by_its_start_and_length(
        tmp_path: Path, save: Callable[[Path], object], said: str, length: int) -> None:
    """"note: skipped step_2.pt: pickled Python object (evil...)" wrote the pickle's global (or the numpy state's
    first keys) whole: a line of a megabyte, broken by the name's newline."""
    code, text = _analyze(_run(tmp_path, save, good=True), tmp_path)
    assert code == 0, text
    assert f"note: skipped step_2.pt: {said}{START}" in text
    _assert_bounded(text, length)


@contextlib.contextmanager
def _forged_class(module: str) -> Iterator[type]:
    """A class `module.Thing` that pickle can save (its module stood in `sys.modules` meanwhile) and no later
    process can import: what a file from someone else may name."""
    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = module, "Thing"
    sys.modules[module] = types.ModuleType(module)
    sys.modules[module].Thing = Thing  # type: ignore[attr-defined]
    try:
        yield Thing
    finally:
        del sys.modules[module]


def _save_with_object(path: Path, state: dict[str, object], module: str) -> None:
    """`state` saved (pickle protocol 4, which takes any name) with an object of `module`'s class at "cfg"."""
    with _forged_class(module) as thing:
        torch.save({**state, "cfg": thing()}, path, pickle_protocol=4)


def test_a_refused_pickle_names_a_megabyte_global_by_its_start_and_length(tmp_path: Path) -> None:
    """Weights beside an object of a class from the file refused without --trust-pickle ("contains a pickled
    Python object (...)"), the class's name whole."""
    path = tmp_path / "step_2.pt"
    _save_with_object(path, {"model": _weights(0)}, "evil" + LONG)
    done = fdl("inspect", path)
    assert done.code == 1
    assert "pickled Python object (evil" + START in done.stderr
    _assert_bounded(done.stderr, len(LONG) + 10)


def test_a_placeholders_note_names_a_megabyte_class_by_its_start_and_length(tmp_path: Path) -> None:
    """--trust-pickle reads a class that cannot be imported as a placeholder, and analyze's note ("holds objects of
    classes that cannot be imported here (...)") named the class whole."""
    (tmp_path / "run").mkdir()
    _save_with_object(tmp_path / "run" / "step_2.pt", {"model": _weights(0)}, "evil" + LONG)
    code, text = _analyze(tmp_path / "run", tmp_path, "--trust-pickle")
    assert code == 0, text
    assert "cannot be imported here (evil" + START in text
    _assert_bounded(text, len(LONG) + 10)


# --------------------------------------------------------------------- errors of a file that fits no model


def test_the_renamed_modules_fix_shows_a_megabyte_module_by_its_start_and_length(tmp_path: Path) -> None:
    """"wrong --model? ... (the file's modules: ...)" listed the file's module names whole, twice."""
    def save(path: Path) -> None:
        torch.save({f"{LONG}{i}.{key.rpartition('.')[2]}": value for i, (key, value) in enumerate(_weights(0).items())},
                   path)

    code, text = _analyze(_run(tmp_path, save, good=False), tmp_path)
    assert code == 1
    assert "the file's modules: " + START in text
    _assert_bounded(text, len(LONG) + 1, 2 * LINE_LIMIT)  # its six modules, said twice (the fix's words)


def test_several_prefixes_are_shown_by_their_start_and_length(tmp_path: Path) -> None:
    """"holds the model's weights under several prefixes: 'a...', 'b...'" wrote each prefix whole, and the fix
    ("--weights a...") again."""
    def save(path: Path) -> None:
        weights = _weights(0)
        torch.save({f"{head}{LONG}.{key}": value for head in "ab" for key, value in weights.items()}, path)

    code, text = _analyze(_run(tmp_path, save, good=False), tmp_path)
    assert code == 1
    assert "under several prefixes: 'a" + START.replace("\\x0a", "\\n") in text
    assert f"e.g. --weights {shown_name('a' + LONG)})" in text
    _assert_bounded(text.replace("\\n", "\\x0a"), len(LONG) + 2)


def test_a_short_prefix_is_quoted_as_before(tmp_path: Path) -> None:
    def save(path: Path) -> None:
        torch.save({f"{head}.{key}": value for head in ("ema", "model") for key, value in _weights(0).items()}, path)

    code, text = _analyze(_run(tmp_path, save, good=False), tmp_path)
    assert code == 1
    assert "under several prefixes: 'ema.', 'model.'\n" in text
    assert "(e.g. --weights model)" in text


def test_a_dict_of_no_state_dict_shows_a_megabyte_key_by_its_start_and_length(tmp_path: Path) -> None:
    """"holds no model state_dict; got: top-level keys: ..." wrote the dict's keys whole."""
    path = tmp_path / "step_2.pt"
    _save_with_object(path, {LONG: torch.ones(2, dtype=torch.int64)}, "train")
    done = fdl("inspect", path, *MODEL, "--trust-pickle")
    assert done.code == 1, done.stderr
    assert "top-level keys: " + START in done.stderr
    _assert_bounded(done.stderr, len(LONG))


# -------------------------------------------------------------------- the entries that hold other weights


def test_weights_names_a_megabyte_entry_by_its_start_and_length(tmp_path: Path) -> None:
    """--weights NAME of no entry listed "other entries holding weights: ..." whole, and the fix "--weights ..."."""
    run = _run(tmp_path, lambda path: torch.save({"model": _weights(0), "ema" + LONG: _weights(1)}, path), good=False)
    code, text = _analyze(run, tmp_path, "--weights", "foo")
    assert code == 1
    assert "other entries holding weights: ema" + START in text
    assert "(e.g. --weights ema" + START in text
    _assert_bounded(text, len(LONG) + 3)


def test_weights_of_an_entry_without_a_state_dict_names_those_inside_by_their_start(tmp_path: Path) -> None:
    """--weights ema of a dict whose entries hold weights: "whose entry ema.inner... holds weights" whole."""
    run = _run(tmp_path, lambda path: torch.save({"model": _weights(0), "ema": {"inner" + LONG: _weights(1), "n": 1}},
                                                 path), good=False)
    code, text = _analyze(run, tmp_path, "--weights", "ema")
    assert code == 1
    assert "whose entry ema.inner" + START in text and "pass --weights ema.inner" + START in text
    _assert_bounded(text, len(LONG) + 9)


def test_the_note_and_inspect_line_on_other_weights_show_a_megabyte_entry_by_its_start(tmp_path: Path) -> None:
    """analyze's note "step_2.pt also holds weights under '...'" and `fdl inspect`'s "other weights in the file:"
    wrote the entry whole."""
    run = _run(tmp_path, lambda path: torch.save({"model": _weights(0), "ema" + LONG: _weights(1)}, path), good=False)
    code, text = _analyze(run, tmp_path)
    assert code == 0, text
    assert "also holds weights under 'ema" + START.replace("\\x0a", "\\n") in text
    _assert_bounded(text.replace("\\n", "\\x0a"), len(LONG) + 3)
    done = fdl("inspect", run / "step_2.pt")
    assert done.code == 0, done.stderr
    assert "other weights in the file: ema" + START in done.stdout + done.stderr
    _assert_bounded(done.stdout + done.stderr, len(LONG) + 3)


def test_short_entries_are_named_as_before(tmp_path: Path) -> None:
    run = _run(tmp_path, lambda path: torch.save({"model": _weights(0), "ema": _weights(1)}, path), good=False)
    code, text = _analyze(run, tmp_path)
    assert code == 0, text
    assert "step_2.pt also holds weights under 'ema' (an EMA or teacher copy?)" in text
    code, text = _analyze(run, tmp_path, "--weights", "foo")
    assert code == 1
    assert "other entries holding weights: ema; " in text and "(e.g. --weights ema)" in text


# ------------------------------------------------------------------------- a checkpoint given as the probe


@pytest.mark.parametrize(("probe", "said"), [
    ({LONG: {"w": torch.ones(2, 2)}, "step": 3}, "keys: " + START),  # no tensor at the top level
    ({LONG: torch.ones(4, 2), "y": torch.zeros(4)}, "keys: " + START),  # no inputs among its tensors
], ids=["no-tensor", "no-inputs"])
def test_a_probes_keys_are_shown_by_their_start_and_length(tmp_path: Path, probe: dict[str, object], said: str) -> None:
    """A checkpoint given as --probe (or a forged probe): "got: keys: ..." wrote its keys whole."""
    run = _run(tmp_path, lambda path: None, good=True)
    torch.save(probe, tmp_path / "forged.pt")
    done = fdl("analyze", run, *MODEL, "--probe", tmp_path / "forged.pt", "--out", tmp_path / "out.h5",
               "--device", "cpu")
    assert done.code == 1
    assert said in done.stderr
    _assert_bounded(done.stderr, len(LONG))
