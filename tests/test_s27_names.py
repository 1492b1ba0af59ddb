"""Tensor names read from a safetensors file or a `.pt` state_dict (session 27): a forged key may be megabytes long
and hold a terminal's control characters; fdl's messages about it (missing and unexpected keys against the model,
--weights' prefixes) show its first characters and its length, escaped, never the whole name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.test_analyze import fdl
from tests.test_s15_formats import MODEL, _probe, _weights

LONG = "w\x1b]0;x\x07" + "x" * 2**20  # a megabyte's name, setting the terminal's title (OSC 0 ... BEL)
START = "w\\x1b]0;x\\x07xxxx"  # how its start is shown, escaped
LINE_LIMIT = 1000  # characters of any line of a message: a few names of 80 and the words around them


def _save(weights: dict[str, torch.Tensor], folder: Path, kind: str) -> Path:
    folder.mkdir()
    if kind == "safetensors":
        save_file(weights, folder / "step_1.safetensors")
    else:
        torch.save({"model": weights}, folder / "step_1.pt")
    return folder


def _extra(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**weights, f"model.{LONG}": torch.ones(2)}


def _renamed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    first = next(iter(weights))
    return {(first + LONG if key == first else key): value for key, value in weights.items()}


def _assert_bounded(stderr: str, length: int) -> None:
    assert max(len(line) for line in stderr.splitlines()) <= LINE_LIMIT
    assert "\x1b" not in stderr and "\x07" not in stderr
    assert START in stderr and f"({length} characters)" in stderr


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
@pytest.mark.parametrize(("change", "prefix"), [(_extra, "model."), (_renamed, "0.weight")], ids=["extra", "renamed"])
def test_a_megabyte_key_the_model_lacks_is_shown_by_its_start_and_length(
        tmp_path: Path, kind: str, change: object, prefix: str) -> None:
    """"1 unexpected key: model.wxxxx..." wrote the key whole: a forged name of a megabyte made a line of a
    megabyte on stderr (and in the --json error)."""
    run = _save(change(_weights(0)), tmp_path / "run", kind)  # type: ignore[operator]
    done = fdl("analyze", run, *MODEL, "--probe", _probe(tmp_path / "probe.pt"), "--out", tmp_path / "out.h5",
               "--device", "cpu")
    assert done.code == 1
    assert "unexpected key: " + prefix + START in done.stderr
    _assert_bounded(done.stderr, len(prefix + LONG))


def test_weights_names_a_megabyte_head_by_its_start_and_length(tmp_path: Path) -> None:
    """--weights PREFIX that no key starts with listed what the keys start with, the head of a megabyte's key
    whole."""
    run = _save({f"{LONG}.{key}": value for key, value in _weights(0).items()}, tmp_path / "run", "safetensors")
    done = fdl("analyze", run, *MODEL, "--weights", "ema", "--probe", _probe(tmp_path / "probe.pt"),
               "--out", tmp_path / "out.h5", "--device", "cpu")
    assert done.code == 1
    assert "its keys start with " + START in done.stderr
    _assert_bounded(done.stderr, len(LONG))


#: characters of a name `fdl inspect`'s tensor table shows before its length (names fold over lines, never cut,
#: below this: real names are far shorter)
INSPECT_SHOWN = 1000


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_inspect_lists_a_megabyte_key_by_its_start_and_length(tmp_path: Path, kind: str) -> None:
    """`fdl inspect` folded a megabyte's key over as many lines as it took: a megabyte of table for one name."""
    run = _save(_extra(_weights(0)), tmp_path / "run", kind)
    done = fdl("inspect", next(run.iterdir()))
    assert done.code == 0, done.stderr
    listing = done.stdout + done.stderr
    assert len(listing) < 20 * INSPECT_SHOWN, len(listing)
    assert "\x1b" not in listing and "\x07" not in listing
    assert f"({len(LONG)} characters)" in listing
    assert "0.weight" in listing or "weight" in listing  # the other tensors are still listed
