"""`advise plan.yaml --report`: a self-contained HTML file whose charts a real browser draws to scale.

The browser test renders the report in headless Chromium (Debian's package), keeps a screenshot as a
test artefact (its path is printed) and reads back, from the DOM after the page's own script ran,
the width Chromium drew for every chart rect. The expected widths come from the advice's breakdown
numbers (GiB) and the drawn capacity frame: each term's rect must be term_gib / capacity_gib of the
frame, within 1 px.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from memfit.cli.main import main
from memfit.cli.report import report_html
from memfit.cli.svg import breakdown_svg
from memfit.engine import advise

from conftest import EXAMPLES

EXAMPLE = EXAMPLES / "qwen32b-one-h100.yaml"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


class _Rects(HTMLParser):
    """Every <svg class=chart> rect and its row's attributes, in document order."""

    def __init__(self):
        super().__init__()
        self.charts: list[list[dict]] = []
        self.row: dict = {}
        self.root: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root = a
        if tag == "svg" and "chart" in (a.get("class") or ""):
            self.charts.append([])
        elif tag == "g" and a.get("class") == "row":
            self.row = a
        elif tag == "rect" and self.charts and "data-gib" in a:
            self.charts[-1].append({**a, "side": self.row.get("data-side")})


def _parse(html: str) -> _Rects:
    p = _Rects()
    p.feed(html)
    return p


def test_report_is_self_contained(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main([str(EXAMPLE), "--report", str(out), "--quiet"]) == 0
    html = out.read_text()
    # No fetches of any kind: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(http" not in html and "<link" not in html
    assert html.count("<svg") >= 24 and "button" in html and "ds_config.json" in html
    assert "wrote report" in capsys.readouterr().err


def test_report_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("mine")
    assert main([str(EXAMPLE), "--report", str(out), "-q"]) == 2
    assert out.read_text() == "mine" and "use --force" in capsys.readouterr().err


def test_chart_markup_matches_the_breakdown():
    # The markup, before any browser: each term's width is term / capacity of the frame.
    advice = advise(EXAMPLE)
    best = advice.best
    rects = _parse(breakdown_svg(best, advice.hardware)).charts[0]
    for side, capacity in (("gpu", advice.hardware.gpu_memory_gib), ("host", advice.hardware.host_memory_gib)):
        frame = next(r for r in rects if r["side"] == side and r["class"] == "capacity")
        for part, gib in best.memory.breakdown[side].items():
            if gib > 0:
                seg = next(r for r in rects if r["side"] == side and r.get("data-part") == part.removesuffix("_gib"))
                assert float(seg["width"]) == pytest.approx(float(frame["width"]) * gib / capacity, abs=0.01)


def test_error_band_is_drawn_from_low_and_high():
    # The advice carries memory.gpu_band (engine/memory/band.py); the chart draws it from low/high alone,
    # so a hand-set band of 70-80 GiB must span exactly 10 GiB of the frame from 70 GiB on.
    advice = advise(EXAMPLE)
    best = advice.best
    assert best.memory.gpu_band is not None
    memory = SimpleNamespace(**{**best.memory.model_dump(), "gpu_band": {"low": 70.0, "high": 80.0}})
    svg = breakdown_svg(SimpleNamespace(key=best.key, memory=memory), advice.hardware)
    rects = _parse(svg).charts[0]
    band = next(r for r in rects if r["class"] == "band")
    frame = next(r for r in rects if r["side"] == "gpu" and r["class"] == "capacity")
    px = float(frame["width"]) / advice.hardware.gpu_memory_gib  # 96 GiB frame
    assert float(band["width"]) == pytest.approx(10.0 * px, abs=0.01)
    assert float(band["x"]) - float(frame["x"]) == pytest.approx(70.0 * px, abs=0.01)
    assert not [r for r in rects if r["class"] == "band" and r["side"] == "host"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium when run as root")
    pytest.skip("chromium not installed (apt-get install -y chromium); under CI=true this test fails instead")


def _run_chromium(binary: str, profile, *args) -> subprocess.CompletedProcess:
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_renders_in_chromium_with_charts_to_scale(tmp_path):
    binary = _chromium()
    advice = advise(EXAMPLE)
    page = tmp_path / "report.html"
    page.write_text(report_html(advice))
    shot = tmp_path / "report.png"
    proc = _run_chromium(binary, tmp_path / "profile-shot", "--window-size=1200,1400", f"--screenshot={shot}",
                         page.as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    print(f"\nscreenshot of the report: {shot}")
    proc = _run_chromium(binary, tmp_path / "profile-dom", "--window-size=1200,1400", "--dump-dom", page.as_uri())
    dom = _parse(proc.stdout)
    assert dom.root.get("data-measured") == "1", "the page's script did not run"
    feasible = [c for c in advice.candidates if c.feasible]
    assert len(dom.charts) >= len(feasible)
    for c, rects in zip(feasible, dom.charts):  # cards are in rank order
        for side, capacity in (("gpu", advice.hardware.gpu_memory_gib), ("host", advice.hardware.host_memory_gib)):
            frame = next(r for r in rects if r["side"] == side and r["class"] == "capacity")
            px_per_gib = float(frame["data-drawn-px"]) / capacity
            assert px_per_gib > 0.5
            for part, gib in c.memory.breakdown[side].items():
                if gib <= 0:
                    continue
                seg = next(r for r in rects if r["side"] == side and r.get("data-part") == part.removesuffix("_gib"))
                assert abs(float(seg["data-drawn-px"]) - gib * px_per_gib) <= 1.0, (c.key, side, part)
            headroom = next(r for r in rects if r["side"] == side and r["class"] == "headroom")
            kept = advice.hardware.gpu_headroom if side == "gpu" else advice.hardware.host_headroom
            assert abs(float(headroom["data-drawn-px"]) - kept * capacity * px_per_gib) <= 1.0
