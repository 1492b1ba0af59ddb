"""Review s14-ex: what a user meets after `analyze` (report --html/--plots, export, examples)."""

from __future__ import annotations

import html
from pathlib import Path

from fdl_cli.html import run_page
from fdl_cli.report import load_run
from tests.test_report import SCALARS, make_store


def test_html_page_keys_its_short_headers_and_says_loss_is_the_mse(tmp_path: Path) -> None:
    """The page's table shows `loss` (the MSE against the one-hot labels) beside `CE` (the
    cross-entropy) under short headers, but only the terminal table printed the key to them: a reader
    of the saved page took `loss` for the classifier's cross-entropy loss. Each table is keyed now."""
    scalars = {step: {**values, "accuracy": 0.5, "cross_entropy": 1.25} for step, values in SCALARS.items()}
    store = make_store(tmp_path / "run.h5", scalars=scalars, layers=("fc1", "fc2"))
    page = html.unescape(run_page(load_run(store), with_figures=False))
    assert page.count("columns: ") == 2  # one key per series' table
    assert "CE = cross_entropy (mean cross-entropy, natural log, of the raw outputs as logits)" in page
    assert "loss = mean squared error per output of the raw outputs against the one-hot labels" in page
    assert "D_LR = d_lr" in page and "CKA₀ = cka_init" in page
    key = page.index("columns: ")
    assert page.rindex("</table>", 0, key) > page.index("<table>")  # below its table
