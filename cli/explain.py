"""`advise plan.yaml --explain KEY`: every rule that fired for one plan, with its numbers and source."""
from __future__ import annotations

import difflib

from typing import TYPE_CHECKING

from memfit.engine.core.errors import PlanError

from .bars import Line, bar, gauge_of

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.advice.results import Advice, CandidateResult, HardwareSummary


def find_candidate(advice: Advice, key: str) -> CandidateResult:
    """The candidate whose key is `key`.

    Raises:
        PlanError: no candidate has that key (the message suggests the closest keys).
    """
    keys = [c.key for c in advice.candidates]
    for c in advice.candidates:
        if c.key == key:
            return c
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(k) for k in near)}?" if near else \
        f"; the keys are in the table or `--json` (e.g. {keys[0]!r})" if keys else ""
    raise PlanError([f"--explain: no candidate strategy {key!r} for {advice.plan}{hint}"])


def _gauge_line(c: CandidateResult, side: str, hw: HardwareSummary) -> Line:
    g = gauge_of(c, side, hw)
    label = "GPU " if side == "gpu" else "host"
    per = "per device" if side == "gpu" else "per node"
    band = f", band {g.low_gib:.1f}-{g.high_gib:.1f}" if g.low_gib is not None and g.high_gib is not None else ""
    verdict = ("fits", "good") if g.fits else ("OVER BUDGET", "bad")
    return ([(f"  {label} ", "")] + bar(g, 30) +
            [(f" {g.used_gib:.1f} GiB {per}{band}; budget {g.budget_gib:.1f} of {g.capacity_gib:.1f}: ", ""), verdict])


def explain_lines(advice: Advice, key: str) -> list[Line]:
    """Styled lines: the plan's verdict, its memory against the budget, then each fired rule.

    Raises:
        PlanError: no candidate has that key.
    """
    c = find_candidate(advice, key)
    hw = advice.hardware
    verdict = f"rank {c.rank}, fits, score {c.score:+g}" if c.feasible else "REJECTED"
    lines: list[Line] = [[(c.key, "key"), (f": {verdict}; micro-batch {c.micro_batch_size} x accumulation "
                                           f"{c.gradient_accumulation_steps}", "head")],
                         _gauge_line(c, "gpu", hw), _gauge_line(c, "host", hw)]
    for side in ("gpu", "host"):
        parts = [f"{k.removesuffix('_gib')} {v:.2f}" for k, v in c.memory.breakdown[side].items() if v]
        peak = c.memory.gpu_peak_phase if side == "gpu" else c.memory.host_peak_phase
        lines.append([(f"  {side} breakdown at {peak} (GiB): " + (", ".join(parts) or "none"), "")])
    lines += [[], [(f"{len(c.explanation)} rule(s) fired:", "head")]]
    for e in c.explanation:
        effect = f"{e.effect} {e.score:+g}" if e.score else e.effect
        style = "bad" if e.effect == "reject" else "good" if e.score > 0 else "warn" if e.score < 0 else ""
        lines.append([("  ", ""), (e.rule, "key"), (f"  [{effect}]", style), (f"  topic {e.topic}", "dim")])
        lines.append([(f"      {e.message}", "")])
        if e.advice:
            lines.append([(f"      advice: {e.advice}", "")])
        lines.append([(f"      source: {e.source}", "dim")])
    lines += [[("  note: " + n, "dim")] for n in c.notes]
    return lines
