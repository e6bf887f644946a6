"""The pieces of `advise review` that both the review and its property checks use.

Result models (Violation, PropertyResult, ExampleCounts), `signature` of a ranking (the ranking itself
is advise's own: search.judge.judge, re-exported), the shared `ReviewContext` (rule base, reused
evaluator and reject-only view, sweep cache, every fact set seen) and the
hypothesis search driver `search_examples`. They sit apart from engine/review/run.py (the public entry point) and
engine/review/properties.py (the checks) so that neither imports the other: review.py calls the
properties, the properties need these. hypothesis is imported only inside `search_examples`.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel, Field

from ..core.errors import MemfitError
from ..policy.oracle import make_evaluator
from ..model.spec import resolve_model
from ..plan.load import plan_from_dict
from ..policy.rules import Rule
from ..search.feasibility import Feasibility
from ..search.judge import Judged, judge
from ..search.sweep import sweep

__all__ = ["Violation", "PropertyResult", "ExampleCounts", "Judged", "judge", "signature", "ReviewContext",
           "search_examples", "property_result", "SHRINK_BUDGET_S"]

# Seconds a property may spend shrinking a failure before it reports the smallest plan found so far.
SHRINK_BUDGET_S = 10.0


class Violation(BaseModel):
    property: str
    message: str
    rules: list[str] = Field(default_factory=list)
    counterexample: Any = None
    files: list[str] = Field(default_factory=list, description="counterexample plans written as YAML")


class PropertyResult(BaseModel):
    name: str
    passed: bool
    examples: int
    seconds: float
    violations: list[Violation] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="information that is not a failure")


class ExampleCounts(BaseModel):
    passed: int = 0
    failed: int = 0


def signature(judged: Sequence[Judged]) -> list[tuple]:
    """What a person sees, independent of firing order: ranking, verdicts, scores, rules, settings."""
    return [(j.key, j.verdict.rejected, j.verdict.score, tuple(sorted(j.fired)),
             tuple(sorted(j.verdict.settings.items()))) for j in judged]


class _Failed(Exception):
    def __init__(self, problems: list[tuple[str, list[str]]]):
        super().__init__(problems[0][0])
        self.problems = problems


class ReviewContext:
    """The rule base under review, one reused evaluator and reject-only view (sizing the sweeps as
    advise does), and caches shared by the properties. close() releases both evaluators."""

    def __init__(self, rules: list[Rule], backend: str, seed: int, max_examples: int):
        self.rules, self.backend, self.seed, self.max_examples = rules, backend, seed, max_examples
        self.evaluator = make_evaluator(rules, backend)
        self.feasibility = Feasibility(rules, backend)
        self._sweeps: dict[str, tuple] = {}
        self.fired_sets: set[tuple[str, ...]] = set()
        self.fact_sets_seen = 0

    def sweep(self, plan_dict: dict):
        key = _key(plan_dict)
        if key not in self._sweeps:
            plan = plan_from_dict(plan_dict, "<generated plan>")
            model = resolve_model(plan.model)
            self._sweeps = self._sweeps if len(self._sweeps) < 256 else {}
            self._sweeps[key] = (plan, model, sweep(plan, model, self.feasibility))
        return self._sweeps[key]

    def close(self) -> None:
        self.evaluator.close()
        self.feasibility.close()

    def judge(self, plan_dict: dict, overrides: Mapping[str, Any] | None = None, rules=None, evaluator=None):
        plan, _, candidates = self.sweep(plan_dict)
        judged = judge(candidates, rules or self.rules, evaluator or self.evaluator, overrides)
        self.fact_sets_seen += len(judged)
        self.fired_sets.update(tuple(sorted(j.fired)) for j in judged)
        return plan, judged


def _key(example: Any) -> str:
    return json.dumps(example, sort_keys=True, default=str)


def search_examples(ctx: ReviewContext, strategy, check: Callable[[Any], list]) -> tuple[int, Any, list]:
    """Run `check` over examples of `strategy`; (examples tried, shrunk failing example, problems)."""
    from hypothesis import HealthCheck, Verbosity, given, seed, settings

    seen: dict[str, list] = {}
    first_failure: list[float] = []

    def test(example) -> None:
        k = _key(example)
        if k not in seen:
            if first_failure and time.monotonic() - first_failure[0] > SHRINK_BUDGET_S:
                problems: list = []  # shrink budget spent: new examples pass, known failures still fail
            else:
                try:
                    problems = check(example)
                except MemfitError as exc:
                    problems = [(f"advise fails on this plan: {exc}", [])]
            seen[k] = problems
        if seen[k]:
            first_failure[:] = first_failure or [time.monotonic()]
            raise _Failed(seen[k])

    run = seed(ctx.seed)(settings(max_examples=ctx.max_examples, database=None, deadline=None,
                                  report_multiple_bugs=False, verbosity=Verbosity.quiet, print_blob=False,
                                  suppress_health_check=list(HealthCheck))(given(strategy)(test)))
    try:
        run()
    except _Failed as failed:
        return len(seen), _last_failing(seen, failed), failed.problems
    return len(seen), None, []


def _last_failing(seen: dict[str, list], failed: _Failed) -> Any:
    # hypothesis replays the shrunk example last; its key is the last one whose problems match.
    for k in reversed(list(seen)):
        if seen[k] is failed.problems:
            return json.loads(k)
    return None


def property_result(name: str, examples: int, t0: float, violations: list[Violation],
                    notes: Sequence[str] = ()) -> PropertyResult:
    return PropertyResult(name=name, passed=not violations, examples=examples,
                          seconds=round(time.monotonic() - t0, 2), violations=violations, notes=list(notes))
