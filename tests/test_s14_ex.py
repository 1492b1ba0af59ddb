"""Review s14-ex: what a user meets after `analyze` (report --html/--plots, export, examples)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fdl_cli.figures import Curves, triptych_figure
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
    # make_store's probe is a regression's (task "regression"): the key says what loss is measured against
    assert "loss = mean squared error per output of the raw outputs against the targets" in page
    assert "D_LR = d_lr" in page and "CKA₀ = cka_init" in page
    key = page.index("columns: ")
    assert page.rindex("</table>", 0, key) > page.index("<table>")  # below its table


def _x_labels(ax: Any) -> list[str]:
    low, high = ax.get_xlim()
    ticks = [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)]
    return [t.get_text() for t in ticks if t.get_text() and low <= t.get_position()[0] <= high]


@pytest.mark.parametrize("rank", [4, 8])
def test_triptych_of_a_short_spectrum_labels_its_k_axis(rank: int) -> None:
    """The triptych's log k axes labelled their decades only: with fewer than 10 eigenvalues (a
    4-feature layer, `--layer 0:input` of a small MLP) the only label was '1'."""
    curves = [Curves(step=0, eigenvalues=np.arange(rank, 0, -1.0), quality=np.full(rank, 0.1),
                     utility=np.full(rank, 1.0 / rank))]
    figure = triptych_figure(curves, n_outputs=3)
    figure.canvas.draw()
    assert len(figure.axes) == 3  # the three panels: a loop over no axes would pass
    for ax in figure.axes:
        assert _x_labels(ax) == [str(k) for k in range(1, rank + 1)]


def test_triptych_of_a_long_spectrum_labels_decades_only() -> None:
    curves = [Curves(step=0, eigenvalues=np.arange(60, 0, -1.0), quality=None, utility=np.full(60, 1 / 60))]
    figure = triptych_figure(curves, n_outputs=10)
    figure.canvas.draw()
    assert _x_labels(figure.axes[2]) == ["1", "10"]


@pytest.mark.parametrize("name", ["rich_vs_lazy", "label_shuffle", "batchnorm", "grokking"])
def test_finding_examples_run_as_modules(name: str) -> None:
    """`python -m examples.calibration` is the documented form of the calibration suite, but the
    four finding scripts died on `python -m examples.NAME` with ModuleNotFoundError: _common."""
    import sys

    from tests import warm

    repo = Path(__file__).resolve().parents[1]
    done = warm.run([sys.executable, "-m", f"examples.{name}", "--help"], cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "--out" in done.stdout and "Traceback" not in done.stderr
