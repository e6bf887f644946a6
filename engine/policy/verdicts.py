"""Verdicts from fired rules, and the deterministic ranking (outside the rules engine).

What `priority` means, per action kind (docs/reference/rule-format.md):
- reject: any reject rule that fires rejects; priority orders the reasons shown (highest first, ties
  in rule-base order), so the summary leads with the decisive one. It never un-rejects.
- score: none. The score is the sum of every fired score, whatever their priorities.
- set: the highest priority wins a knob; equal priorities that disagree are recorded as conflicts
  (the policy review reports them).
- advise: none; every fired advice is shown.
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .rules import Rule


@dataclass(frozen=True)
class Firing:
    rule: str
    topic: str
    effect: str          # reject | score | advise | set
    score: float
    message: str         # the rule's `because`, filled with the candidate's numbers
    advice: str | None
    settings: Mapping[str, Any]
    priority: int
    source: str


@dataclass(frozen=True)
class Verdict:
    rejected: bool
    score: float
    firings: tuple[Firing, ...]
    settings: Mapping[str, Any]
    conflicts: tuple[str, ...]

    @property
    def reject_reasons(self) -> tuple[str, ...]:
        """The reject firings' messages, highest priority first (ties in rule-base order), deduplicated."""
        rejects = sorted((f for f in self.firings if f.effect == "reject"), key=lambda f: -f.priority)
        return tuple(dict.fromkeys(f.message for f in rejects))


class _Facts(dict[str, Any]):
    def __missing__(self, key: str) -> str:  # templates are checked at load; never raise at render
        return "{" + key + "}"


def render(template: str, facts: Mapping[str, Any]) -> str:
    """Fill an explanation template with fact values (plain field names only, checked at load)."""
    try:
        return string.Formatter().vformat(template, (), _Facts(facts)).strip()
    except (ValueError, TypeError):
        return template.strip()


def _effect(then: Mapping[str, Any]) -> str:
    for key in ("reject", "set", "score", "advise"):
        if key in then:
            return key
    return "advise"


def verdict(fired_ids: Sequence[str], rules_by_id: Mapping[str, Rule], facts: Mapping[str, Any]) -> Verdict:
    """Combine the fired rules of one candidate into its verdict."""
    firings = []
    for rid in fired_ids:
        r = rules_by_id[rid]
        firings.append(Firing(rule=r.id, topic=r.topic, effect=_effect(r.then), score=float(r.then.get("score", 0)),
                              message=render(r.because, facts), advice=r.then.get("advise"),
                              settings=dict(r.then.get("set", {})), priority=r.priority, source=r.source))
    settings, conflicts = _settings(firings)
    return Verdict(rejected=any(f.effect == "reject" for f in firings),
                   score=sum(f.score for f in firings), firings=tuple(firings), settings=settings,
                   conflicts=tuple(conflicts))


def _settings(firings: Sequence[Firing]) -> tuple[dict[str, Any], list[str]]:
    chosen: dict[str, tuple[int, Any, str]] = {}
    conflicts = []
    for f in firings:
        for knob, value in f.settings.items():
            if knob not in chosen or f.priority > chosen[knob][0]:
                chosen[knob] = (f.priority, value, f.rule)
            elif f.priority == chosen[knob][0] and value != chosen[knob][1]:
                conflicts.append(f"{knob}: {chosen[knob][2]} sets {chosen[knob][1]!r}, {f.rule} sets {value!r} "
                                 f"at the same priority {f.priority}")
    return {k: v for k, (_, v, _) in chosen.items()}, conflicts


# A memory rule: the headroom topic, or a rule over the usage / peak facts (and the measured OOM).
# "What it would take" proposes hardware only when one of these rejected the closest candidate.
MEMORY_TOPIC = "memory-headroom"
MEMORY_FACTS = frozenset({"gpu_peak_gib", "gpu_usage", "gpu_margin", "gpu_excess_gib", "host_peak_gib",
                          "host_usage", "host_margin", "host_excess_gib", "nvme_needed_gib", "measured_oom"})


def is_memory_rule(rule: Rule) -> bool:
    """Whether the rule is about memory: topic memory-headroom, or it reads a usage/peak fact."""
    return rule.topic == MEMORY_TOPIC or bool(rule.facts_used & MEMORY_FACTS)


def rank_key(rejected: bool, score: float, facts: Mapping[str, Any], key: str) -> tuple[int, float, float, str]:
    """Sort key: feasible first, best score first, then least GPU memory; rejected candidates by how
    far they are over budget (closest first)."""
    if not rejected:
        return (0, -score, facts["gpu_peak_gib"], key)
    over = max(facts["gpu_usage"] / max(facts["gpu_budget"], 1e-9), facts["host_usage"] / max(facts["host_budget"], 1e-9))
    return (1, over if math.isfinite(over) else float("inf"), -score, key)
