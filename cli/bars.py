"""Text bars and styled lines for the terminal, without importing rich.

A rendered line is a list of (text, style) segments. `plain()` joins the text (pipes, files, NO_COLOR,
tests and the docs check all see exactly this); `echo()` hands the same segments to rich only when
stdout is a colour terminal, so the layout never depends on where the output goes and the cold path
of `advise plan.yaml | less` never imports rich.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable, Iterable, Optional, Sequence

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import CandidateResult, HardwareSummary, MemoryReport

Segment = tuple[str, str]
Line = list[Segment]

FULL, BAND, FREE, MARK = "█", "░", "·", "│"
# Eighth blocks: a bar ends on a partial cell so 74.3 and 76.6 GiB differ visibly in a 24-cell bar.
_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class Gauge:
    """One memory figure against its capacity, in GiB.

    budget_gib is capacity minus the policy's headroom; low_gib/high_gib are the estimate's error
    band when the advice carries one (None otherwise: no band is drawn).
    """

    used_gib: float
    capacity_gib: float
    budget_gib: float
    low_gib: Optional[float] = None
    high_gib: Optional[float] = None

    @property
    def fits(self) -> bool:
        return self.used_gib <= self.budget_gib


def band_of(memory: MemoryReport, side: str) -> tuple[Optional[float], Optional[float]]:
    """The error band of one side ('gpu' or 'host') of a MemoryReport, if the advice has one.

    Read in one place so the band's eventual JSON shape is adapted here only: a `<side>_band`
    attribute or a `band[side]` mapping, either holding `low` and `high` in GiB.
    """
    band = getattr(memory, f"{side}_band", None)
    if band is None:
        band = (getattr(memory, "band", None) or {}).get(side)
    if band is None:
        return None, None
    get: Callable[[str], Optional[float]] = band.get if isinstance(band, dict) else (lambda k: getattr(band, k, None))
    return get("low"), get("high")


def gauge_of(candidate: CandidateResult, side: str, hardware: HardwareSummary) -> Gauge:
    """The GPU (per device) or host (per node) gauge of a candidate against the plan's hardware."""
    m = candidate.memory
    if side == "gpu":
        used, cap, headroom = m.gpu_peak_gib, hardware.gpu_memory_gib, hardware.gpu_headroom
    else:
        used, cap, headroom = m.host_peak_gib, hardware.host_memory_gib, hardware.host_headroom
    low, high = band_of(m, side)
    return Gauge(used, cap, cap * (1 - headroom), low, high)


def bar(g: Gauge, width: int = 24) -> Line:
    """A bar of `width` cells: used (█, partial eighths), error band (░), free (·), budget mark (│).

    The scale is the capacity; anything beyond it is clipped and the bar ends with '▶'.
    """
    scale = width / g.capacity_gib if g.capacity_gib > 0 else 0.0
    used = min(g.used_gib * scale, width)
    mark = min(int(round(g.budget_gib * scale)), width - 1)
    lo = min((g.low_gib if g.low_gib is not None else g.used_gib) * scale, width)
    hi = min((g.high_gib if g.high_gib is not None else g.used_gib) * scale, width)
    cells = []
    for i in range(width):
        if i < int(used):
            cells.append((FULL, "used"))
        elif i == int(used) and used - int(used) >= 1 / 8:
            cells.append((_EIGHTHS[int((used - int(used)) * 8)], "used"))
        elif lo <= i + 0.5 <= hi:
            cells.append((BAND, "band"))
        elif i == mark:
            cells.append((MARK, "mark"))
        else:
            cells.append((FREE, "free"))
    if g.used_gib > 0 and cells[0][1] != "used":
        cells[0] = (_EIGHTHS[1], "used")  # a sliver, so 3 GiB of 693 still shows as something
    if g.used_gib > g.capacity_gib:
        cells[-1] = ("▶", "over")
    style = "ok" if g.fits else "over"
    return [(text, style if kind == "used" else kind) for text, kind in cells]


def plain(lines: Iterable[Line]) -> str:
    """The text of styled lines, newline-joined."""
    return "\n".join("".join(text for text, _ in line) for line in lines)


def color_wanted(stream: Optional[IO[str]] = None) -> bool:
    """Colour only on a terminal, never with NO_COLOR (https://no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


STYLES = {"ok": "green", "over": "bold red", "band": "yellow", "mark": "bold white", "free": "grey42",
          "head": "bold", "dim": "grey58", "key": "bold cyan", "good": "green", "bad": "red", "warn": "yellow",
          "": ""}


def echo(lines: Sequence[Line], stream: Optional[IO[str]] = None) -> None:
    """Print styled lines: through rich (imported here, lazily) on a colour terminal, else plain."""
    stream = stream or sys.stdout
    if not color_wanted(stream):
        stream.write(plain(lines) + "\n")
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False, soft_wrap=True)
    for line in lines:
        console.print(Text.assemble(*((t, STYLES.get(s, s)) for t, s in line)))
