"""Mutation testing, second round: the survivors of fdl_cli/adding.py that need a real store, and fdl_cli/html.py.
Each test here failed with a mutant (a branch dropped, a bound moved) that every other test let pass: it asserts
what the user reads. One store of two checkpoints of a tiny MLP is shared by the module; the runs that use it are
refused before they write."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_analyze import analyze, run  # noqa: F401 - `run` is the module's fixture


@pytest.fixture(scope="module")
def store(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A store of steps 0 and 10 of `run`, analysed with its one probe."""
    out = tmp_path_factory.mktemp("store") / "s.h5"
    done = analyze(run, out, "--steps", "0,10")
    assert done.code == 0, done.stderr
    return out


# ------------------------------------------------------------------------------------------------ adding.py


def test_adding_a_probe_with_another_option_is_refused_as_another_run_not_for_a_missing_file(
    run: Path,  # noqa: F811
    store: Path,
) -> None:
    """A run that adds a probe but differs from the store in an option too is no resume of it
    (`adding.stored_addition` is None): it is told the option that differs, not that the file of stored step 10,
    which --glob leaves out, is missing (which, selected, would only lead to the refusal of the option)."""
    done = analyze(run, store, "--probe", f"test={run / 'test.npz'}", "--glob", "epoch_0.pt", "--top-k", "2")
    text = " ".join(done.stderr.split())
    assert done.code == 1, done.stderr
    assert f"error: {store} holds the results of a different run" in text
    assert "got: options.top_k: 64 (store) vs 2 (this run)" in text
    assert "cannot add" not in text and "adding probe" not in text


# -------------------------------------------------------------------------------------------------- html.py


def test_the_page_of_a_store_says_the_store_first_and_embeds_no_figure_when_told_not_to(store: Path) -> None:
    """`run_page`: the provenance opens with the store's path; with_figures=False draws none (no <img>); the favicon
    request is pre-empted with an empty data URI (nothing the page asks for lies outside it)."""
    from fdl_cli.html import run_page
    from fdl_cli.report import load_run

    page = run_page(load_run(store, history=True), with_figures=False)
    assert f'<p class="meta">store: {store}<br>model: ' in page
    assert "<h2>probe probe, layer 2:input</h2>" in page
    assert "<img" not in page
    assert '<link rel="icon" href="data:,">' in page
    assert '<th class="num" title="step">step</th>' in page  # an integer column is right-aligned as a number


def test_the_page_marks_the_regime_of_a_checkpoint_before_the_store_s_reference(store: Path) -> None:
    """`run_page` passes the store's reference step to the table: step 0 of a store referenced at 10 is marked."""
    from dataclasses import replace

    from fdl_cli.html import run_page
    from fdl_cli.report import load_run

    loaded = load_run(store)
    page = run_page(replace(loaded, provenance={**loaded.provenance, "reference_step": 10}), with_figures=False)
    rows = page.split("<tbody>", 1)[1].split("</tr>")
    assert '<td class="text" title="coefficient">coefficient*</td>' in rows[0]
    assert '<td class="text" title="MF">MF</td>' in rows[1]


def test_a_table_cell_s_text_is_escaped_as_its_hover_text_is() -> None:
    from fdl_cli.html import Section, render_html

    section = Section(heading="h", summary=[], records=[{"step": 1, "path": "a<b&c.pt"}], figures=[])
    page = render_html(title="t", provenance=[], warnings=[], sections=[section])
    assert '<td class="text" title="a&lt;b&amp;c.pt">a&lt;b&amp;c.pt</td>' in page
