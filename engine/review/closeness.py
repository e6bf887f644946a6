"""How close a judged candidate is to what a targeted search wants: continuous scores for hypothesis'
`target()`.

A count ("how many other rules reject") is flat: hypothesis' target phase climbs only where the score
moves, so a candidate that another rule rejects by 1 % scored the same as one it rejects by 300 %, and
the search wandered. `slack` says by how much a condition holds, so the search can walk a competing
reject towards its edge (a plan whose band top is just under capacity while the headroom rule still
fires). Only the review uses this; the evaluators decide with `Condition.holds`.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..policy.conditions import All, Any as AnyOf, Comparison, Condition, FactRef, Not
from ..policy.oracle import holds
from ..policy.rules import Rule
from .core import Judged

# Far from mattering: the rule did not fire at all, below any score a firing candidate can get.
NOT_FIRED = -100.0


def slack(cond: Condition, facts: Mapping[str, Any]) -> float:
    """By how much `cond` holds, in [-1, 1]: > 0 holds, < 0 does not, near 0 at its edge.

    An ordering comparison of two numbers gives its margin relative to the right-hand side (or to 1
    when that is 0); anything else (eq, membership, strings, absent facts) is +1 or -1. `all` takes
    its weakest part, `any` its strongest, `not` the opposite.
    """
    if isinstance(cond, All):
        return min(slack(p, facts) for p in cond.parts)
    if isinstance(cond, AnyOf):
        return max(slack(p, facts) for p in cond.parts)
    if isinstance(cond, Not):
        return -slack(cond.inner, facts)
    sign = 1.0 if holds(cond, facts) else -1.0
    if not isinstance(cond, Comparison) or cond.op not in ("lt", "le", "gt", "ge"):
        return sign
    left = facts.get(cond.fact)
    right = facts.get(cond.operand.name) if isinstance(cond.operand, FactRef) else cond.operand
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
        return sign
    margin = (float(left) - float(right)) / (abs(float(right)) or 1.0)  # type: ignore[arg-type]
    margin = margin if cond.op in ("gt", "ge") else -margin
    # keep the sign of the verdict (ge/le hold at a zero margin) and the size of the margin
    return sign * min(1.0, max(abs(margin), 1e-6))


def share_holding(when: Mapping[str, Any], facts: Mapping[str, Any]) -> float:
    """Fraction of a condition's top-level parts that hold (1.0: it fires)."""
    parts = when.get("all", [when])
    return sum(holds(c, facts) for c in parts) / len(parts)


def closeness_to_mattering(j: Judged, rule_id: str, by_id: Mapping[str, Rule]) -> float:
    """0 when `rule_id` fires as the only reject (it matters); below that by the other rejects, each
    counting 1 plus how firmly it holds, so a search can push the others towards not firing."""
    if rule_id not in j.fired:
        return NOT_FIRED
    others = {f.rule for f in j.verdict.firings if f.effect == "reject" and f.rule != rule_id}
    return -sum(1.0 + slack(by_id[r].when, j.facts) for r in others if r in by_id)
