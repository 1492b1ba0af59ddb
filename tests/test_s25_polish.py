"""Session 25's small fixes to what fdl says.

- `fdl analyze`'s summary said "1 checkpoint(s) analysed", "3 stored checkpoint(s) given the added probe/layer
  series", "taken out of the 1 checkpoint(s)", and a resumed torchrun job "1 checkpoint(s) that a rank ... were
  added": a count and its noun now agree (`errors.counted`), as fdl's other messages do.
- `errors.terminal_safe` wrote control characters `\\x1b` but let the Unicode bidirectional controls and the line
  and paragraph separators through: a file or tensor name could show its text in another order than it is
  written ("Trojan Source") or break the line. They are written `\\u202e` now; other characters stay.
- A write refused for the process's file size limit (`ulimit -f`, EFBIG) said "raise that limit ... or choose
  another --out": the limit applies to every file the process writes, so another path does not help.
"""

import errno
import resource
from pathlib import Path

import pytest
import torch

from fdl_cli.errors import no_room, terminal_safe
from fdl_cli.pipeline import AnalyzeSummary
from tests.cli_run import fdl_in_process, model_file

torch.set_num_threads(1)

_MODEL = """
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
"""


@pytest.mark.parametrize(("count", "said"), [(0, "0 checkpoints"), (1, "1 checkpoint"), (3, "3 checkpoints")])
def test_the_summary_counts_checkpoints_in_the_singular_for_one(count: int, said: str) -> None:
    summary = AnalyzeSummary(store=Path("run.h5"), analysed=list(range(count)), already=[100])
    assert summary.message() == f"{said} analysed, 1 already in the store → run.h5"


def test_the_summary_of_an_addition_and_an_abandoned_one_counts_so_too() -> None:
    added = AnalyzeSummary(store=Path("run.h5"), analysed=[5], added=[0])
    assert added.message() == ("1 checkpoint analysed, 1 stored checkpoint given the added probe/layer series "
                               "(those alone analysed) → run.h5")
    added.added = [0, 1]
    assert "2 stored checkpoints given the added" in added.message()
    given_up = AnalyzeSummary(store=Path("run.h5"), abandoned=("probe 'test'", 1))
    assert given_up.message() == ("0 checkpoints analysed, probe 'test' given up (--abandon-addition: taken out of the "
                                  "1 checkpoint that held some of it) → run.h5")
    given_up.abandoned = ("probe 'test'", 4)
    assert "taken out of the 4 checkpoints that held some of it)" in given_up.message()


def _run(tmp_path: Path, steps: tuple[int, ...], scale: float = 1.0) -> list[str]:
    """Checkpoints of `_MODEL` at `steps` (weights times `scale`) in tmp_path/run; `fdl analyze`'s arguments."""
    import numpy as np
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    net = model_file(tmp_path, _MODEL).build()
    for step in steps:
        save_file({k: (v * scale * (1 + step / 10)).contiguous() for k, v in net.state_dict().items()},
                  str(run / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "probe.npz", x=rng.normal(size=(32, 4)).astype(np.float32), y=rng.integers(0, 3, 32))
    return ["analyze", str(run), "--model", f"{tmp_path / 'model.py'}:build", "--probe", str(tmp_path / "probe.npz"),
            "--out", str(tmp_path / "run.h5")]


def test_analyze_of_one_checkpoint_says_one_checkpoint(tmp_path: Path) -> None:
    done = fdl_in_process(*_run(tmp_path, (0,)))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"1 checkpoint analysed → {tmp_path / 'run.h5'}\n", done.stderr


@pytest.mark.parametrize(("changed", "said"), [
    ((10,), ("hashing 1 stored checkpoint file whose", "1 checkpoint file changed since it was analysed",
             "the numbers of the file it replaced")),
    ((10, 20), ("hashing 2 stored checkpoint files whose", "2 checkpoint files changed since they were analysed",
                "the numbers of the files they replaced")),
])
def test_changed_checkpoint_files_are_counted_so_too(tmp_path: Path, changed: tuple[int, ...],
                                                     said: tuple[str, str, str]) -> None:
    """The same for "N checkpoint file(s) changed since they were analysed" and the note before it."""
    args = _run(tmp_path, (0, 10, 20))
    assert fdl_in_process(*args).returncode == 0
    _run(tmp_path, changed, scale=2.0)
    refused = fdl_in_process(*args)
    assert refused.returncode == 1, refused.stderr
    assert all(part in refused.stderr for part in said), refused.stderr
    assert "(s)" not in refused.stderr, refused.stderr


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                                  "\u2069", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029"])
def test_bidirectional_controls_and_line_separators_are_written_escaped(char: str) -> None:
    assert terminal_safe(f"step_1{char}tp.pt") == f"step_1\\u{ord(char):04x}tp.pt"


def test_other_characters_stay_as_they_are() -> None:
    text = "café_步骤_😀_Ω\tα\nend"
    assert terminal_safe(text) == text
    assert terminal_safe("a\x1b[2Jb\x9fc") == "a\\x1b[2Jb\\x9fc"  # as before


def test_a_tensor_name_reversing_its_text_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    """`fc\u202eLUMU\u202c.weight` showed as "fc.weight"-like text read right to left; now as its escapes."""
    from safetensors.torch import save_file

    path = tmp_path / "step_1_é.safetensors"
    save_file({"fc\u202egnp.exe\u202c.weight": torch.ones(3, 4), "couche_é.bias": torch.ones(3)}, str(path),
              metadata={"step": "1"})
    listed = fdl_in_process("inspect", path)
    assert listed.returncode == 0, listed.stderr
    said = listed.stdout + listed.stderr
    assert "\u202e" not in said and "\u202c" not in said
    assert "fc\\u202egnp.exe\\u202c" in listed.stderr, listed.stderr
    assert "couche_é" in listed.stderr and "step_1_é.safetensors" in listed.stderr


def test_a_file_size_limit_is_fixed_by_raising_it_not_by_another_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (200, resource.RLIM_INFINITY))
    exc = OSError(errno.EFBIG, "File too large")
    assert no_room(exc, another="another --out", one="an --out") == (
        ": this process may write files of at most 200 bytes (its file size limit, `ulimit -f`)",
        "raise that limit (`ulimit -f unlimited` in the shell that runs fdl)",
    )
