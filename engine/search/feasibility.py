"""Feasibility as the rule base judges it: which reject rules fire on a set of facts.

The search never decides on its own what fits. A strategy is feasible when no reject rule of the
rule base (built-in or a user's) fires on its facts; the micro-batch search, the neighbour facts
(`feasible_without_checkpointing`, ...), the cross-candidate facts (`lora_feasible`), "what it would
take" and `estimate`'s largest micro-batch / sequence all ask this one object.

Two passes. While candidates are still being sized, the relational facts (RELATIONAL_FACTS: facts
about other candidates) do not exist yet, so they are left out of the facts and a condition on them is
false (the evaluators' rule for an absent fact). The final judgement (search/judge.py) sees every fact.
A reject rule over a relational fact therefore does not steer the sizing; it still rejects afterwards.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..policy.oracle import make_evaluator
from ..policy.rules import Rule

# Facts about other candidates (neighbours, other methods), computed from first-pass verdicts.
RELATIONAL_FACTS = frozenset({"feasible_without_checkpointing", "feasible_without_offload", "feasible_pinned",
                              "lower_stage_feasible", "lora_feasible", "deepspeed_feasible", "fsdp_feasible"})
_ABSENT = object()


def is_reject_rule(rule: Rule) -> bool:
    """Whether the rule rejects (then: {reject: true})."""
    return bool(rule.then.get("reject"))


class Feasibility:
    """The reject-only view of a rule base, with the fired sets memoised per distinct fact values.

    Only the facts some reject rule reads are part of the memo key: two strategies whose read facts
    are equal fire the same reject rules, whatever else differs. The evaluator is the rule base's own
    backend (make_evaluator over the reject rules), so sizing and judging cannot disagree.

    Args:
        rules: the whole rule base; only its reject rules are evaluated here.
        backend: 'auto', 'durable' or 'python', as for make_evaluator.
    """

    def __init__(self, rules: Sequence[Rule], backend: str = "auto"):
        self.rules = [r for r in rules if is_reject_rule(r)]
        self._reads = tuple(sorted({f for r in self.rules for f in r.facts_used}))
        self._evaluator = make_evaluator(self.rules, backend) if self.rules else None
        self._memo: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self.evaluations = 0  # calls that reached the evaluator (the rest came from the memo)

    def rejected_by(self, facts: Mapping[str, Any]) -> tuple[str, ...]:
        """Ids of the reject rules that fire on the facts (empty: feasible), in rule-base order."""
        if self._evaluator is None:
            return ()
        key = tuple(facts.get(name, _ABSENT) for name in self._reads)
        if key not in self._memo:
            self.evaluations += 1
            self._memo[key] = tuple(self._evaluator.fired(facts))
        return self._memo[key]

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()

    def __enter__(self) -> "Feasibility":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def largest_passing(lo: int, hi: int, passes: Callable[[int], bool]) -> int | None:
    """Largest n in [lo, hi] with passes(n), or None when passes(lo) is false.

    A galloping search (lo+1, lo+2, lo+4, ... until one fails, then bisection between the last pass
    and that failure): as few probes as bisection for a large answer, fewer for the small micro-batches
    of large models. It assumes rejections grow with n: once a reject rule fires at n it fires at
    every larger n (memory grows with the micro-batch and the sequence; the built-in reject rules
    compare usage with a budget). A rule that fires only on some middle range can make it miss a
    larger passing n, never return a failing one: the answer only ever moves onto values where
    passes() was true, so the result is re-checked by construction.

    Args:
        lo, hi: the search range (inclusive).
        passes: whether no reject rule fires at n.
    Returns:
        The largest passing n found, or None.
    """
    if not passes(lo):
        return None
    good, step = lo, 1
    while good < hi:
        probe = min(hi, good + step)
        if not passes(probe):
            hi = probe - 1
            break
        good, step = probe, step * 2
    while good < hi:  # good passes, hi + 1 fails (or is past the range)
        mid = (good + hi + 1) // 2
        if passes(mid):
            good = mid
        else:
            hi = mid - 1
    return good
