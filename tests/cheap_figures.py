"""Figures saved without rendering, for tests of which figure files fdl writes, lists and removes (not of what
they show): `figures._savefig` writes a digest of what the figure holds instead of PNG or SVG, ~5 times cheaper.
The figures are still built by fdl's own code; a test of the files' images (tests/test_s26_figs.py) renders them.

`shared_mathtext`, for the tests that do render: the same pixels and bytes, with each TeX text (a log axis' tick
label, a title's $\\hat{\\Pi}$) parsed once rather than once for each renderer, i.e. for each file of each figure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.text import Text


def _artists(artist: Artist) -> Iterator[Artist]:
    """`artist` and those it holds, as `findobj` walks them, but of an axis only its label and offset text: its
    ticks are made on asking (a tick a Text and lines; most of the digest's time) and follow from the axes' limits
    and scales, hashed instead."""
    yield artist
    for child in artist.get_children():
        if isinstance(child, Axis):
            yield from (child.label, child.offsetText)
        else:
            yield from _artists(child)


def _digest(figure: Figure, options: dict[str, Any]) -> bytes:
    """The figure's texts, line data, images and collections' arrays, axes' limits and scales, and the save
    options, hashed: two figures of other series, steps or layers give other bytes, the same figure the same."""
    digest = hashlib.sha256(repr(sorted(options.items())).encode())
    digest.update(repr(figure.get_size_inches().tolist()).encode())
    for artist in _artists(figure):
        if isinstance(artist, Axes):
            digest.update(repr((artist.get_xlim(), artist.get_ylim(), artist.get_xscale(), artist.get_yscale())).encode())
        elif isinstance(artist, Text):
            digest.update(artist.get_text().encode())
        elif isinstance(artist, Line2D):
            digest.update(np.asarray(artist.get_xydata(), dtype=float).tobytes())
        elif isinstance(artist, (AxesImage, Collection)):
            array = artist.get_array()
            if array is not None:
                digest.update(np.ma.filled(np.asarray(array, dtype=float), np.nan).tobytes())
    return digest.hexdigest().encode()


def _saved(figure: Figure, target: Any, **options: Any) -> None:
    head = b"\x89PNG\r\n\x1a\n" if options.get("format") == "png" else b"<svg><!-- "
    data = head + _digest(figure, options) + (b"" if options.get("format") == "png" else b" --></svg>\n")
    if hasattr(target, "write"):
        target.write(data)
    else:
        Path(target).write_bytes(data)


@pytest.fixture
def cheap_figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`@pytest.mark.usefixtures("cheap_figures")` on a test of figure files (names, lists, removal, notes)."""
    from fdl_cli import figures

    monkeypatch.setattr(figures, "_savefig", _saved)
    yield


@pytest.fixture(scope="module")
def shared_mathtext() -> Iterator[None]:
    """matplotlib parses a TeX text anew for each renderer (its cache is a parser's, and each renderer has one): a
    figure saved as PNG, SVG and the page's PNG, and savefig's files compared with it, parsed each tick label ~6 times,
    ~15 % of a rendering test's time. Here the parses are shared among the renderers of a module's tests: the parse is
    a function of what its key holds (the parser's output type, the text, dpi, font, antialiasing, glyph loading, and
    the mathtext settings, which matplotlib's own cache leaves out), so the files are the same, byte for byte.
    `pytestmark = pytest.mark.usefixtures("shared_mathtext")` on a module of tests that render figures; where
    matplotlib's parser has no `_parse_cached` (another version) it does nothing."""
    import matplotlib
    from matplotlib.mathtext import MathTextParser

    parse = getattr(MathTextParser.__dict__.get("_parse_cached"), "__wrapped__", None)
    if parse is None:
        yield
        return
    parsed: dict[tuple[Any, ...], Any] = {}
    settings = sorted(name for name in matplotlib.rcParams if name.startswith("mathtext."))

    def shared(self: Any, s: str, dpi: float, prop: Any, antialiased: Any, load_glyph_flags: Any) -> Any:
        # read as a dict (RcParams' own lookup validates each: a parse's worth of time for all of them)
        now = tuple(repr(dict.__getitem__(matplotlib.rcParams, name)) for name in settings)
        key = (self._output_type, s, dpi, prop, antialiased, load_glyph_flags, now)
        if key not in parsed:
            parsed[key] = parse(self, s, dpi, prop, antialiased, load_glyph_flags)
        return parsed[key]

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(MathTextParser, "_parse_cached", shared)
        yield
