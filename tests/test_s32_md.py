"""Names a user chose (a checkpoint's file name, a store's, a probe's, a layer's) shown as written in the outputs
for people that are markup: a `--format markdown` cell rendered by a GFM parser shows the name's text, not
markdown made of it (a lost backslash, emphasis, a code span, a link, raw HTML, an entity), and a figure's
title shows a layer's `$` signs rather than drawing its name as TeX (or failing on it). JSON keeps the name as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from fdl_cli.store import CheckpointEntry, ProbeInfo, StoreWriter
from tests.cli_run import fdl_in_process
from tests.test_report import N_OUTPUTS, N_PROBE, SCALARS, _entry, make_store

#: A checkpoint path holding a backslash before a pipe and before a letter, emphasis, a code span, raw HTML, an
#: entity, a link, a strikethrough, GitHub's math, a leading `#` and `-` (a folder named so) and a line break
ODD_PATH = "#-runs/a\\|b\\c_x_*y*`z`<script>alert(1)</script>&amp;[l](u)~~s~~$m$\n2/step_{}.pt"
#: A layer (a probe's name is an identifier: `_p_` is its emphasis)
ODD_LAYER = "fc*1*_<b>\\"
ODD_PROBE = "_p_"


def _odd_store(path: Path) -> Path:
    x = np.linspace(-1.0, 1.0, N_PROBE)
    probe = ProbeInfo(name=ODD_PROBE, sha256="a" * 64, n=N_PROBE, task="regression", n_outputs=N_OUTPUTS,
                      anchor_x=x[:, None], anchor_y=np.sin(3 * x)[:, None])
    with StoreWriter(path, provenance={"model": "m.py:build", "layers": [ODD_LAYER]}, probes=[probe]) as writer:
        for step in (0, 100):
            entry = _entry(step, probe=ODD_PROBE, layer=ODD_LAYER, seed=0, scalars=SCALARS.get(step, {}))
            writer.add(CheckpointEntry(step=step, path=ODD_PATH.format(step), sha256=f"{step:064x}", series=(entry,)))
    return path


def _rendered_cells(markdown: str) -> list[dict[str, str]]:
    """The rows of the one table in `markdown`, each cell as GFM renders it to HTML (markdown-it's GFM table,
    strikethrough and raw HTML)."""
    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = md.parse(markdown)
    rows: list[list[str]] = []
    for index, token in enumerate(tokens):
        if token.type == "tr_open":
            rows.append([])
        elif token.type in ("th_open", "td_open"):
            rows[-1].append(md.renderer.render(tokens[index + 1].children or [], md.options, {}))
    header, *body = rows
    assert body and all(len(row) == len(header) for row in body)
    return [dict(zip(header, row, strict=True)) for row in body]


def _shown(text: str) -> str:
    """`text` as an HTML page shows it as written: escaped, a line break a `<br>`."""
    return escapeHtml(text).replace("\n", "<br>")


def _out(*args: object) -> str:
    done = fdl_in_process(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The odd store, itself named with emphasis and an entity (classify's `store` column)."""
    return _odd_store(tmp_path_factory.mktemp("md") / "_run_&lt;.h5")


def test_report_markdown_shows_each_path_as_written(odd: Path) -> None:
    records = json.loads(_out("report", odd, "--json"))
    assert [r["path"] for r in records] == [ODD_PATH.format(0), ODD_PATH.format(100)]  # JSON: as it is
    rows = _rendered_cells(_out("report", odd, "--format", "markdown"))
    assert [row["path"] for row in rows] == [_shown(ODD_PATH.format(0)), _shown(ODD_PATH.format(100))]
    assert [row["step"] for row in rows] == ["0", "100"]


def test_classify_markdown_shows_store_probe_and_layer_as_written(odd: Path) -> None:
    (row,) = _rendered_cells(_out("classify", odd, odd.parent / "." / odd.name, "--format", "markdown"))[:1]
    assert (row["store"], row["probe"], row["layer"]) == (_shown(str(odd)), _shown(ODD_PROBE), _shown(ODD_LAYER))


def test_compare_markdown_shows_probe_and_layer_as_written(odd: Path, tmp_path: Path) -> None:
    plain = make_store(tmp_path / "plain.h5", steps=(0, 100))
    rows = _rendered_cells(_out("compare", odd, plain, "--format", "markdown"))
    assert rows and all((row["a_probe"], row["a_layer"]) == (_shown(ODD_PROBE), _shown(ODD_LAYER)) for row in rows)


def test_markdown_literal_br_differs_from_a_line_break() -> None:
    """fdl writes a line break as `<br>`: a name holding the text `<br>` read as one too."""
    from fdl_cli.report import records_to_markdown

    (row,) = _rendered_cells(records_to_markdown([{"step": 0, "path": "a<br>b\nc"}]))
    assert row["path"] == "a&lt;br&gt;b<br>c"


def test_figure_titles_show_a_layers_dollar_signs(tmp_path: Path) -> None:
    """A layer's name between two `$` was drawn as TeX in each figure's title (`$\\alpha$` as `α`), and one that is
    no TeX (`$\\x$`) failed the drawing in matplotlib's traceback (`fdl report --plots`, `--html`)."""
    import matplotlib

    from fdl_cli.figures import run_figures
    from fdl_cli.report import load_run

    layer = "fc$\\alpha$_1$\\x$"
    store = make_store(tmp_path / "run.h5", layers=(layer, "fc2"))  # two series: each figure names its own
    figures = {stem.split("_")[0]: figure for stem, _title, figure in run_figures(load_run(store, layer=layer))}
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # each text an SVG <text>, not its glyphs' outlines
        figures["trajectories"].savefig(tmp_path / "f.svg")  # a title of no TeX of fdl's own: the name is one <text>
    assert f"feature change over training (train/{layer})" in (tmp_path / "f.svg").read_text()
