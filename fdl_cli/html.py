"""One self-contained HTML page of a run: summary, provenance, the full table and the figures.

Self-contained means openable offline: no script, no external stylesheet, font or image; figures are
embedded as base64 PNG data URIs and the favicon request is pre-empted with an empty data URI.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fdl_cli.fields import INT_FIELDS, RECORD_FIELDS
from fdl_cli.report import FLOAT_FIELDS, HEADERS, Record, column_key, format_value

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto;
       max-width: 1400px; color: #1d2330; background: #fbfbfd; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 2px solid #3b5bdb; padding-bottom: 0.2rem; }
.meta { color: #556; font-size: 0.9rem; }
.summary li { margin: 0.2rem 0; }
.scroll { overflow-x: auto; max-height: 32rem; overflow-y: auto; border: 1px solid #dde; }
table { border-collapse: collapse; font-size: 0.8rem; font-variant-numeric: tabular-nums; }
th { position: sticky; top: 0; background: #e7ebfa; text-align: right; padding: 0.25rem 0.5rem; }
td { padding: 0.15rem 0.5rem; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #f1f3f9; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde; background: white; }
figcaption { color: #445; font-size: 0.9rem; }
.warning { color: #a4161a; }
"""


@dataclass(frozen=True)
class Section:
    """One series of the run: its heading, summary sentences, records and (title, PNG bytes) figures."""

    heading: str
    summary: Sequence[str]
    records: Sequence[Record]
    figures: Sequence[tuple[str, bytes]]
    #: the store's reference step: the regimes of the checkpoints before it are marked, as in the text table
    reference_step: int | None = None
    #: its probe's task (`report.series_tasks`): what the key says loss is measured against
    tasks: frozenset[str] = frozenset()


def _table(records: Sequence[Record], reference_step: int | None = None, tasks: frozenset[str] = frozenset()) -> str:
    from fdl_cli.regimes import BEFORE_REFERENCE

    fields = [name for name in RECORD_FIELDS]
    head = "".join(
        f'<th class="{"num" if name in INT_FIELDS or name in FLOAT_FIELDS else "text"}" title="{name}">'
        f"{html.escape(HEADERS.get(name, name))}</th>"
        for name in fields
    )
    rows = []
    for record in records:
        cells = []
        for name in fields:
            css = "num" if name in INT_FIELDS or name in FLOAT_FIELDS else "text"
            value = record.get(name)
            full = "" if value is None else f' title="{html.escape(str(value))}"'
            text = format_value(name, value)
            if name == "regime" and value is not None and reference_step is not None \
                    and int(record["step"]) < reference_step:
                text += BEFORE_REFERENCE  # the summary above says what it means (regimes.before_reference_line)
            cells.append(f'<td class="{css}"{full}>{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # The key the terminal table prints: what each short header stands for, and that `loss` is the MSE
    # against the one-hot labels (a regression's targets), not the cross-entropy (`CE`) shown beside it.
    key = f'<p class="meta">{html.escape(column_key(fields, tasks))}</p>'
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{key}'


def _figure(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(title)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'


def render_html(
    *, title: str, provenance: Sequence[str], warnings: Sequence[str], sections: Sequence[Section],
    generator: str = "fdl",
) -> str:
    """The page as one string (UTF-8). Every text is escaped; nothing refers outside the page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{html.escape(generator)}">',
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if provenance:
        parts.append('<p class="meta">' + "<br>".join(html.escape(line) for line in provenance) + "</p>")
    for warning in warnings:
        parts.append(f'<p class="warning">{html.escape(warning)}</p>')
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts.append('<ul class="summary">' + "".join(f"<li>{html.escape(s)}</li>" for s in section.summary) + "</ul>")
        for fig_title, png in section.figures:
            parts.append(_figure(fig_title, png))
        parts.append("<h3>checkpoints</h3>")
        parts.append(_table(section.records, section.reference_step, section.tasks))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def run_page(
    run: Any, *, with_figures: bool = True, figures: Mapping[str, Sequence[tuple[str, bytes]]] | None = None
) -> str:
    """The HTML page of a `report.Run` (figures drawn here, so matplotlib loads only when asked). `figures`: the
    (title, PNG) of each series by its label, drawn already (`figures.write_run_figures(..., page=...)` for --plots)."""
    from fdl_cli import __version__
    from fdl_cli.report import (
        anchor_skew_line,
        constant_outputs_line,
        degenerate_layer_lines,
        model_change_line,
        provenance_lines,
        r2_outputs_line,
        reference_step_of,
        refused_line,
        series_tasks,
        summarize,
        summary_lines,
        targets_caveat,
    )

    sections = []
    figures_by_series: Mapping[str, Sequence[tuple[str, bytes]]] = {} if figures is None else figures
    if with_figures and figures is None:
        from fdl_cli.figures import page_figures

        figures_by_series = page_figures(run)
    for series in run.series:
        sections.append(
            Section(
                heading=f"probe {series.probe}, layer {series.layer}",
                summary=[*summary_lines(summarize(series.records, reference_step=reference_step_of(run.provenance))),
                         *filter(None, [constant_outputs_line(series)]), *degenerate_layer_lines(run, series),
                         *filter(None, [r2_outputs_line(series), targets_caveat(run, series)]),
                         *(f"note: {skew}" for skew in filter(None, [anchor_skew_line(run, series)]))],
                records=series.records,
                figures=figures_by_series.get(series.label, []),
                reference_step=reference_step_of(run.provenance),
                tasks=frozenset(series_tasks(run, [series])),
            )
        )
    return render_html(
        title=f"fdl report: {run.path.name}",
        provenance=[f"store: {run.path}", *provenance_lines(run.provenance, run.history, store=run.path,
                                                               damaged=run.history_damaged, dropped=run.dropped,
                                                               added=run.added),
                    *filter(None, [refused_line(run, "this report")]),
                    *(f"note: {mixed}" for mixed in filter(None, [model_change_line(run)]))],
        warnings=list(run.warnings),
        sections=sections,
        generator=f"fdl {__version__}",
    )
