"""The one evaluation path: fire the whole rule base on each candidate, combine, rank.

`advise` (engine/advice/advise.py) and `advise review` (engine/review/core.py) both call `judge`, so
the review tests exactly what advise does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..policy.rules import Rule
from ..policy.verdicts import Verdict, rank_key, verdict
from ..policy.vocabulary import to_message
from .sweep import Candidate

if TYPE_CHECKING:
    from ..evidence.match import Evidence
    from ..model.spec import ModelSpec
    from ..policy.oracle import Evaluator
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy


@dataclass(frozen=True)
class Judged:
    """One candidate with the facts the rules saw, the rules that fired and the verdict."""

    candidate: Candidate
    facts: Mapping[str, Any]
    fired: tuple[str, ...]
    verdict: Verdict

    @property
    def key(self) -> str:
        return self.candidate.strategy.key


def judge(candidates: Sequence[Candidate], rules: Sequence[Rule], evaluator: Evaluator,
          overrides: Mapping[str, Any] | None = None) -> list[Judged]:
    """Fire the rules on each candidate and rank them, best first.

    Args:
        candidates: from search.sweep.sweep.
        rules: the rule base the evaluator was made from (for the verdicts' messages and priorities).
        evaluator: from policy.oracle.make_evaluator(rules, backend).
        overrides: facts replacing the candidates' own (the review draws measured facts this way).
    Returns:
        Judged candidates, sorted by policy.verdicts.rank_key (feasible first).
    """
    by_id = {r.id: r for r in rules}
    out = []
    for c in candidates:
        facts = {**to_message(c.facts), **(overrides or {})}
        fired = tuple(evaluator.fired(facts))
        out.append(Judged(c, facts, fired, verdict(fired, by_id, facts)))
    out.sort(key=lambda j: rank_key(j.verdict.rejected, j.verdict.score, j.facts, j.key))
    return out


def strategy_verdict(plan: Plan, model: ModelSpec, strategy: Strategy, rules: Sequence[Rule] | None = None,
                     backend: str = "auto", evidence: Evidence | None = None) -> tuple[str, ...]:
    """The reject rules that fire on one given strategy (a config as written), by the same rule base.

    `advise check --plan` and the verdict on a foreign config ask this instead of comparing numbers
    themselves, so a user's reject rules apply to them too.

    Args:
        plan, model: the checked plan and its model.
        strategy: the concrete strategy to judge.
        rules: the rule base; the built-in rules plus the plan's `rules:` when None.
        evidence: measured facts (calibration, OOMs; evidence.match.Evidence), none by default.
    Returns:
        Ids of the reject rules that fire (empty: it passes the policy).
    """
    from pathlib import Path

    from ..evidence.match import Evidence
    from ..policy.rules import load_rules
    from .feasibility import Feasibility
    from .sweep import PlanProbe

    if rules is None:
        rules = load_rules([Path(plan.base_dir) / d for d in plan.rules])
    with Feasibility(rules, backend) as feasibility:
        return PlanProbe(plan, model, feasibility, evidence or Evidence()).rejected_by(strategy)
