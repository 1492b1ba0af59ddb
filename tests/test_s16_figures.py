"""Figure text uses mathtext for Π̂: matplotlib lays out a combining circumflex (U+0302) as a glyph of
its own, so "Π̂(k)" rendered as "Π(k)" with a stray accent, and README's Π̂(k) panel read Π(k)."""

from __future__ import annotations

import unicodedata

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from fdl_cli.figures import Curves, triptych_figure  # noqa: E402


def _texts(figure) -> list[str]:  # type: ignore[no-untyped-def]
    return [artist.get_text() for artist in figure.findobj(Text) if artist.get_text()]


def test_the_triptych_titles_have_no_combining_characters() -> None:
    curves = [Curves(step=0, eigenvalues=np.arange(20, 0, -1.0), quality=np.full(20, 0.05), utility=np.full(20, 0.05))]
    texts = _texts(triptych_figure(curves, n_outputs=3))
    combining = [text for text in texts if any(unicodedata.combining(ch) for ch in text)]
    assert combining == []
    assert r"$\hat{\Pi}(k)$: use by the learned function" in texts
    assert r"$\Pi^*(k)$: target alignment" in texts

