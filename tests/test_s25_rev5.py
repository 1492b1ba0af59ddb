"""Session 25 review of the stderr escaping (e79e2ac, 2f27dbd), the counted messages and classify's reader.

- The live progress bar (stderr a terminal) read each checkpoint's label, which holds its file's name, as rich
  markup with emoji codes: `step_1[bold blink]x.pt` was shown as a blinking `step_1x.pt`, `step_2_:rocket:.pt`
  as `step_2_🚀.pt` and `step_3_<BEL>.pt` as `step_3_.pt` (rich's Text drops a BEL before the console's
  escaping sees it): names no file has, where the progress lines of a log and the summary said them as they are.
"""

from __future__ import annotations

import pytest

from fdl_cli.cli import _stderr_console
from fdl_cli.progress import RichReporter


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
