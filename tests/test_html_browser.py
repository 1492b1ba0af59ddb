"""`fdl report --html`: one self-contained page, loaded in a real headless Chromium when one is installed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fdl_cli.html import Section, render_html
from tests.test_report import make_store, run_fdl

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)
#: Chromium prints page console messages (console.error, uncaught exceptions) as INFO:CONSOLE lines.
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    store = make_store(folder / "run.h5")
    html = folder / "report.html"
    result = run_fdl("report", str(store), "--html", str(html), "--format", "json")
    assert result.returncode == 0, result.stderr
    return html


def test_page_is_self_contained(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.IGNORECASE)
    assert references, "the page should embed its figures"
    assert all(ref.startswith("data:") for ref in references), [r[:40] for r in references if not r.startswith("data:")]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, flags=re.IGNORECASE)
    assert "<script" not in text and "@import" not in text and "url(" not in text
    assert text.count('src="data:image/png;base64,') == 4  # triptych, trajectories, spectrum, e_k(x)
    assert "regime: coefficient (0) → EF (100) → MF (200)" in text
    assert text.count("<tr>") == 1 + 3  # header and three checkpoints


def test_text_is_escaped() -> None:
    text = render_html(
        title="<b>run</b>", provenance=["model: a<script>"], warnings=["w & w"],
        sections=[Section(heading="h", summary=["<i>x</i>"], records=[{"step": 1, "regime": "<MF>"}], figures=[])],
    )
    assert "<b>run</b>" not in text and "&lt;b&gt;run&lt;/b&gt;" in text
    assert "<script" not in text and "w &amp; w" in text and "&lt;MF&gt;" in text


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_chromium
@pytest.mark.browser
def test_console_detector_sees_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>')
    result = _chromium("--dump-dom", bad.as_uri(), cwd=tmp_path)
    assert any(CONSOLE_LINE.search(line) and "boom" in line for line in result.stderr.splitlines())


@needs_chromium
@pytest.mark.browser
def test_page_loads_without_console_errors_and_renders(page: Path, tmp_path: Path) -> None:
    dom = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if CONSOLE_LINE.search(line)]
    assert console == []
    assert "<h1>fdl report: run.h5</h1>" in dom.stdout and "<table>" in dom.stdout

    shot = tmp_path / "shot.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    rgb = (pixels.reshape(-1, 3) * 255).round().astype(np.uint32)
    # each colour as one 24-bit number, counted by bincount: np.unique(..., axis=0) sorted 3 M rows (seconds)
    colours = np.count_nonzero(np.bincount(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2], minlength=1 << 24))
    assert colours > 500, f"only {colours} distinct colours: blank or unstyled page"
