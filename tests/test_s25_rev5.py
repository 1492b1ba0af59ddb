"""Session 25 review of the stderr escaping (e79e2ac, 2f27dbd), the counted messages and classify's reader.

- The live progress bar (stderr a terminal) read each checkpoint's label, which holds its file's name, as rich
  markup with emoji codes: `step_1[bold blink]x.pt` was shown as a blinking `step_1x.pt`, `step_2_:rocket:.pt`
  as `step_2_🚀.pt` and `step_3_<BEL>.pt` as `step_3_.pt` (rich's Text drops a BEL before the console's
  escaping sees it): names no file has, where the progress lines of a log and the summary said them as they are.
- The counted messages (46aca99): "hashing 1 stored checkpoint file whose ... to check they are the files that
  were analysed"; a kept torchrun part "1 of its checkpoints are not in ...; a later run takes them in".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fdl_cli.cli import _stderr_console
from fdl_cli.progress import RichReporter
from tests.cli_run import fdl_in_process
from tests.test_distributed import _part_with, _resume, _single, run_and_single  # noqa: F401 - a fixture
from tests.test_s25_polish import _run


@pytest.mark.parametrize(("name", "shown"), [
    ("step_1[bold blink]x.pt", "step_1[bold blink]x.pt"),
    ("step_2_:rocket:.pt", "step_2_:rocket:.pt"),
    ("step_3_\x07\x1b[2J.pt", "step_3_\\x07\\x1b[2J.pt"),
    ("خطوة_٣.pt", "خطوة_٣.pt"),  # a right-to-left name holds no bidi control: left as it is
])
def test_the_progress_bar_shows_a_checkpoints_name_as_it_is(name: str, shown: str) -> None:
    console = _stderr_console()
    reporter = RichReporter(console)
    reporter.start_run(1)
    reporter.start_checkpoint(0, 1, f"step 1 ({name})")
    with console.capture() as captured:
        console.print(reporter.progress.get_renderable())
    bar = captured.get().splitlines()[0]
    assert bar.startswith(f"checkpoint step 1 ({shown}) "), repr(bar)
    assert "\N{ROCKET}" not in bar


def test_hashing_one_changed_file_says_it_in_the_singular(tmp_path: Path) -> None:
    """46aca99 counted "hashing 1 stored checkpoint file whose ..." but went on "to check they are the files that
    were analysed"."""
    args = _run(tmp_path, (0, 10, 20))
    assert fdl_in_process(*args).returncode == 0
    _run(tmp_path, (10,), scale=2.0)
    said = fdl_in_process(*args).stderr
    assert "hashing 1 stored checkpoint file whose size or modification time is not the one recorded, to check it " \
           "is the file that was analysed\n" in said, said
    _run(tmp_path, (20,), scale=3.0)
    said = fdl_in_process(*args).stderr
    assert "hashing 2 stored checkpoint files whose size or modification time is not the one recorded, to check " \
           "they are the files that were analysed\n" in said, said


@pytest.mark.parametrize(("steps", "said"), [
    ([40], "1 of its checkpoints is not in a.h5 (not selected by this run, or analysed again); a later run takes it "
           "in"),
    ([40, 50], "2 of its checkpoints are not in a.h5 (not selected by this run, or analysed again); a later run "
               "takes them in"),
])
def test_a_kept_torchrun_part_counts_its_checkpoints_left(run_and_single: tuple[Path, dict[int, dict]],  # noqa: F811
                                                           tmp_path: Path, steps: list[int], said: str) -> None:
    """A part of an interrupted torchrun job that this run (--steps 0 10) takes nothing of is kept, and says so."""
    from fdl_cli.checkpoints import sha256_file
    from fdl_cli.sharding import _write_rank_part_origin

    run, _ = run_and_single
    full, out, part = tmp_path / "full.h5", tmp_path / "a.h5", tmp_path / "a.h5.rank-1"
    _single(run, full)
    _single(run, out, steps=(0,))
    _part_with(full, part, steps)
    _write_rank_part_origin(part, (0, sha256_file(run / "step_0.safetensors")),
                            (30, sha256_file(run / "step_30.safetensors")))
    summary, _, reporter = _resume(run, out, steps=(0, 10))
    assert summary.analysed == [10] and part.exists()
    assert f"a.h5.rank-1 is kept: {said}" in reporter.notes, reporter.notes


def test_right_to_left_names_hold_no_control_and_stay_as_they_are() -> None:
    """2f27dbd escapes the bidi controls alone: Hebrew, Arabic and a Persian name's zero-width non-joiner stay."""
    from fdl_cli.errors import terminal_safe

    for name in ("צעד_3.pt", "خطوة_٣.pt", "می\u200cخواهم_5.pt", "step_\U0001f469\u200d\U0001f52c.pt"):
        assert terminal_safe(name) == name
