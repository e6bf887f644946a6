"""`advise plan.yaml --report report.html`: one self-contained HTML file to read and forward.

Everything is inline: CSS, the SVG charts (cli/svg.py), and a few lines of JavaScript for the copy
buttons and for recording each chart rect's drawn width (`data-drawn-px`, read by the browser test).
No network, no CDN, no web fonts: the file opens the same offline, in a mail attachment or in CI.
"""
from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Sequence

from .assets import PAGE_CSS, PAGE_JS
from .bars import gauge_of
from .svg import breakdown_svg, colour, legend_items, mini_bar

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import Advice, CandidateResult, HardwareSummary

MAX_CHARTS = 40         # cards in one report: every feasible plan (up to this), then the closest rejected
CLOSEST_WITH_FITS = 5   # rejected plans shown beside feasible ones
CLOSEST_NONE_FIT = 8    # rejected plans shown when nothing fits


def _copy_block(text: str, label: str, lang: str = "") -> str:
    return (f'<div class="code"><button class="copy" type="button" aria-label="copy {escape(label)}">copy</button>'
            f'<pre class="{lang}"><code>{escape(text)}</code></pre></div>')


def _head(advice: Advice) -> str:
    m, hw = advice.model, advice.hardware
    nvme = f", NVMe {hw.nvme_gib:.0f} GiB" if hw.nvme_gib else ""
    facts = [("model", f"{m.name}: {m.total_params / 1e9:.2f}B parameters ({m.model_type}, {m.num_layers} layers)"),
             ("hardware", f"{hw.nodes} node(s) × {hw.gpus_per_node} GPU(s) of {hw.gpu_memory_gib:.1f} GiB, "
                          f"host {hw.host_memory_gib:.1f} GiB per node{nvme}"),
             ("read as", "; ".join(hw.readings)),
             ("policy", f"keeps {hw.gpu_headroom:.0%} of GPU memory and {hw.host_headroom:.0%} of host RAM free"),
             ("rules", f"{advice.rules_loaded} rules, evaluated by {advice.evaluator}")]
    facts += [("measured", line) for line in advice.measured]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    return (f'<header><h1>memfit advice <span class="plan">{escape(advice.plan)}</span></h1>'
            f'<p class="summary">{escape(advice.summary)}</p><table class="facts">{rows}</table></header>')


def _ranked_table(shown: Sequence[CandidateResult], hw: HardwareSummary) -> str:
    head = ("<tr><th>#</th><th>strategy</th><th>micro × accum</th><th colspan=2>GPU GiB per device</th>"
            "<th colspan=2>host GiB per node</th><th>score</th><th></th></tr>")
    rows = []
    for c in shown:
        verdict = '<span class="ok">fits</span>' if c.feasible else '<span class="no">does not fit</span>'
        rows.append(f'<tr class="{"fit" if c.feasible else "rejected"}"><td>{c.rank if c.feasible else "–"}</td>'
                    f'<td><a href="#plan-{c.rank}-{_anchor(c.key)}">{escape(c.key)}</a></td>'
                    f'<td>{c.micro_batch_size} × {c.gradient_accumulation_steps}</td>'
                    f'<td class="n">{c.memory.gpu_peak_gib:.1f}</td><td>{mini_bar(gauge_of(c, "gpu", hw))}</td>'
                    f'<td class="n">{c.memory.host_peak_gib:.1f}</td><td>{mini_bar(gauge_of(c, "host", hw))}</td>'
                    f'<td class="n">{c.score:+g}</td><td>{verdict}</td></tr>')
    return f'<section><h2>Ranked plans</h2><table class="ranked">{head}{"".join(rows)}</table></section>'


def _anchor(key: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in key)


def _explanations(c: CandidateResult) -> str:
    items = []
    for e in c.explanation:
        effect = f"{e.effect} {e.score:+g}" if e.score else e.effect
        cls = "reject" if e.effect == "reject" else "plus" if e.score > 0 else "minus" if e.score < 0 else "info"
        advice = f'<div class="advice">advice: {escape(e.advice)}</div>' if e.advice else ""
        items.append(f'<li><span class="eff {cls}">{escape(effect)}</span> <b>{escape(e.rule)}</b>: '
                     f'{escape(e.message)}{advice}<div class="src">source: {escape(e.source)}</div></li>')
    notes = "".join(f"<li class='note'>note: {escape(n)}</li>" for n in c.notes)
    return f'<ul class="why">{"".join(items)}{notes}</ul>'


def _legend(c: CandidateResult) -> str:
    spans = [f'<span class="lg"><i style="background:{colour(part)}"></i>{side} {escape(part.replace("_", " "))} '
             f'{gib:.2f}</span>' for side, part, gib in legend_items(c)]
    return f'<div class="legend">{"".join(spans)} <span class="lg"><i class="hatch"></i>headroom</span></div>'


def _card(c: CandidateResult, hw: HardwareSummary, open_details: bool) -> str:
    status = ('<span class="badge ok">fits</span>' if c.feasible else '<span class="badge no">does not fit</span>')
    rank = f"#{c.rank}" if c.feasible else "rejected"
    why_not = "".join(f"<li>{escape(r)}</li>" for r in c.rejected_because)
    why_not = f'<ul class="whynot">{why_not}</ul>' if why_not else ""
    launch = "\n".join(v for k, v in c.launch.items() if k != "comment" and "\n" not in v)
    ds = _copy_block(json.dumps(c.deepspeed_config, indent=2), f"DeepSpeed JSON of {c.key}", "json")
    launch_block = _copy_block(launch, f"launch lines of {c.key}", "sh") if launch else ""
    opened = " open" if open_details else ""
    return (f'<article class="plan{"" if c.feasible else " rejected"}" id="plan-{c.rank}-{_anchor(c.key)}">'
            f'<h3><span class="rank">{rank}</span> {escape(c.key)} {status}'
            f'<span class="meta">micro-batch {c.micro_batch_size} × accumulation {c.gradient_accumulation_steps}, '
            f'score {c.score:+g}</span></h3>{why_not}'
            f'{breakdown_svg(c, hw)}{_legend(c)}'
            f'<details{opened}><summary>Why: {len(c.explanation)} rule(s) fired</summary>{_explanations(c)}</details>'
            f'<details{opened}><summary>DeepSpeed JSON and launch lines</summary>{ds}{launch_block}</details>'
            "</article>")


def report_html(advice: Advice) -> str:
    """The whole report as one HTML document (str)."""
    feasible = [c for c in advice.candidates if c.feasible]
    rejected = [c for c in advice.candidates if not c.feasible]
    shown = (feasible + rejected[:CLOSEST_WITH_FITS] if feasible else rejected[:CLOSEST_NONE_FIT])[:MAX_CHARTS]
    cards = [_card(c, advice.hardware, i == 0) for i, c in enumerate(shown)]
    take = "".join(f"<li>{escape(t)}</li>" for t in advice.what_it_would_take)
    take = f"<section><h2>What it would take</h2><ul class='take'>{take}</ul></section>" if take else ""
    if feasible:
        top = f"<section><h2>Recommended</h2>{cards[0]}</section>{take}"
    else:
        top = (f"<section><h2>Nothing fits</h2><p>No candidate fits within the policy's headroom; the closest "
               f"one is drawn below.</p></section>{take}<section><h2>Closest</h2>{cards[0] if cards else ''}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>memfit: {escape(advice.model.name)} on {escape(advice.plan)}</title>"
            f"<style>{PAGE_CSS}</style></head><body>{_head(advice)}{top}{_ranked_table(shown, advice.hardware)}"
            f"<section><h2>Every plan and where its memory goes</h2>{''.join(cards[1:])}</section>"
            f"<footer>memfit {escape(advice.memfit_version)}: estimates, not measurements; see the accuracy page "
            f"of the docs for the measured error.</footer><script>{PAGE_JS}</script></body></html>\n")
