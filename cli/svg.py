"""Stacked memory-breakdown charts as inline SVG, generated in Python (no library, no network).

One chart per plan: a GPU row (per device) and a host row (per node). Each row stacks the estimate's
breakdown terms left to right on a linear GiB scale, draws the capacity as a frame, the policy's
headroom (budget to capacity) hatched, the budget as a dashed line and, when the advice carries one,
the error band (low to high) as a translucent box with whiskers. Every drawn rect carries `data-gib`,
and each row `data-px-per-gib`, so a browser test can check drawn widths against the numbers.
"""
from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from .bars import Gauge, gauge_of

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import CandidateResult, HardwareSummary

WIDTH, LEFT, BAR_W, ROW_H, BAR_H = 920, 56, 800, 58, 24

# One colour per breakdown term (colour-blind-safe Okabe-Ito order for the big ones, greys after).
COLOURS = {"weights": "#0072B2", "gradients": "#E69F00", "optimizer_states": "#009E73", "activations": "#CC79A7",
           "logits_loss": "#D55E00", "zero_buffers": "#56B4E9", "allocator_slack": "#9E9E9E",
           "cuda_context": "#616161", "nccl": "#BDBDBD", "process_baseline": "#616161",
           "offloaded_optimizer": "#009E73", "offloaded_params": "#0072B2", "offload_slack": "#9E9E9E",
           "nvme_swap_buffers": "#56B4E9", "checkpoint_load": "#E69F00", "save_gather": "#D55E00",
           "dataset": "#CC79A7", "calibration": "#D7CCC8"}


def colour(part: str) -> str:
    """The fill colour of a breakdown term (a neutral grey for terms added later)."""
    return COLOURS.get(part, "#8D6E63")


def _f(x: float) -> str:
    return f"{x:.2f}"


def _rect(x: float, y: float, w: float, h: float, cls: str, gib: float, extra: str = "", title: str = "") -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    return (f'<rect class="{cls}" x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" '
            f'data-gib="{gib:.4f}"{extra}>{tip}</rect>')


def _row(side: str, parts: dict[str, float], g: Gauge, y: float) -> list[str]:
    top = max(g.capacity_gib, g.used_gib, g.high_gib or 0.0)
    scale = BAR_W / top if top > 0 else 0.0
    label = "GPU" if side == "gpu" else "host"
    out = [f'<g class="row" data-side="{side}" data-px-per-gib="{scale:.6f}" data-capacity-gib="{g.capacity_gib:.4f}">',
           f'<text class="side" x="0" y="{_f(y + BAR_H * 0.7)}">{label}</text>',
           _rect(LEFT, y, g.capacity_gib * scale, BAR_H, "capacity", g.capacity_gib,
                 title=f"{label} capacity {g.capacity_gib:.1f} GiB"),
           _rect(LEFT + g.budget_gib * scale, y, (g.capacity_gib - g.budget_gib) * scale, BAR_H, "headroom",
                 g.capacity_gib - g.budget_gib, ' fill="url(#hatch)"',
                 f"headroom kept free: {g.capacity_gib - g.budget_gib:.1f} GiB")]
    x: float = LEFT
    for part, gib in parts.items():
        if gib <= 0:
            continue
        out.append(_rect(x, y + 3, gib * scale, BAR_H - 6, "seg", gib, f' data-part="{part}" fill="{colour(part)}"',
                         f"{part.replace('_', ' ')}: {gib:.2f} GiB"))
        x += gib * scale
    if g.low_gib is not None and g.high_gib is not None:
        lo, hi, mid = LEFT + g.low_gib * scale, LEFT + g.high_gib * scale, y + BAR_H / 2
        out += [_rect(lo, y - 4, hi - lo, BAR_H + 8, "band", g.high_gib - g.low_gib,
                      title=f"error band {g.low_gib:.1f} to {g.high_gib:.1f} GiB"),
                f'<path class="whisker" d="M{_f(lo)} {_f(mid)}H{_f(hi)}M{_f(lo)} {_f(y - 4)}V{_f(y + BAR_H + 4)}'
                f'M{_f(hi)} {_f(y - 4)}V{_f(y + BAR_H + 4)}"/>']
    bx, cx = LEFT + g.budget_gib * scale, LEFT + g.capacity_gib * scale
    out += [f'<line class="budget" x1="{_f(bx)}" x2="{_f(bx)}" y1="{_f(y - 6)}" y2="{_f(y + BAR_H + 6)}"/>',
            f'<line class="cap" x1="{_f(cx)}" x2="{_f(cx)}" y1="{_f(y - 6)}" y2="{_f(y + BAR_H + 6)}"/>',
            f'<text class="tick" x="{_f(bx)}" y="{_f(y + BAR_H + 18)}" text-anchor="end">budget {g.budget_gib:.1f}</text>',
            f'<text class="tick" x="{_f(cx)}" y="{_f(y + BAR_H + 18)}" text-anchor="end" dx="-2" dy="12">'
            f'capacity {g.capacity_gib:.1f} GiB</text>',
            f'<text class="peak{"" if g.fits else " over"}" x="{_f(min(x + 4, cx - 4))}" y="{_f(y - 8)}"'
            f'{" text-anchor=end" if x + 60 > cx else ""}>{g.used_gib:.1f} GiB</text>', "</g>"]
    return out


def breakdown_svg(candidate: CandidateResult, hardware: HardwareSummary) -> str:
    """The GPU and host chart of one plan, as an inline <svg> element."""
    height = 2 * (ROW_H + 14) + 8
    body = ['<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fdecea"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#e57373" stroke-width="2"/></pattern></defs>']
    for i, side in enumerate(("gpu", "host")):
        parts = {k.removesuffix("_gib"): v for k, v in candidate.memory.breakdown[side].items()}
        body += _row(side, parts, gauge_of(candidate, side, hardware), 22 + i * (ROW_H + 14))
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="memory breakdown of {escape(candidate.key)}">'
            + "".join(body) + "</svg>")


def legend_items(candidate: CandidateResult) -> list[tuple[str, str, float]]:
    """(side, term, GiB) of every non-zero breakdown term, for the HTML legend under a chart."""
    return [(side, k.removesuffix("_gib"), v) for side in ("gpu", "host")
            for k, v in candidate.memory.breakdown[side].items() if v > 0]


def mini_bar(g: Gauge, width: int = 90, height: int = 10) -> str:
    """A small bar for a table cell: the peak against the capacity, the budget as a tick."""
    scale = width / g.capacity_gib if g.capacity_gib > 0 else 0.0
    used, budget = min(g.used_gib, g.capacity_gib) * scale, g.budget_gib * scale
    fill = "#2da44e" if g.fits else "#cf222e"
    return (f'<svg class="mini" width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-hidden="true">'
            f'<rect width="{width}" height="{height}" rx="2" fill="#eaeef2"/>'
            f'<rect width="{_f(used)}" height="{height}" rx="2" fill="{fill}"/>'
            f'<line x1="{_f(budget)}" x2="{_f(budget)}" y1="0" y2="{height}" stroke="#24292f" stroke-width="1.5"/></svg>')
