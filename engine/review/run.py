"""`advise review`: property-tested policy review of a rule base, with the real estimator.

Checks, each reported as a property with the number of examples tried:
- rule-examples: every rule's `tests:` under both evaluators.
- hypothesis properties over generated plans (engine/review/generators.py), each failure shrunk to a
  small plan written as YAML under out_dir so a person can run `advise FILE` on it:
  feasible-within-budget, more-hardware-keeps-feasible, bigger-workload-keeps-infeasible,
  rule-order-independent, backend-independent, engine-reuse-independent, explained,
  declared-precedence, and with one drawn user reject rule (engine/review/search_properties.py):
  added-reject-keeps-a-fit, proposals-pass-the-rules, memory-blame-honest.
- aggregates over every fact set the properties judged: every-rule-fires (a rule that never fired is
  searched for once more, directly) and no-dead-rules (removing the rule never changes a verdict,
  score, setting or advice: it is dead weight; a built-in rule that only a user rule shadows is a note).
Plans carry no logs, so the rules about real runs are exercised by measured-evidence facts drawn on
top of real candidates' facts (plan_strategies.measured_overrides) in `explained` and
`declared-precedence`. hypothesis is imported only inside functions of engine/review/core.py and
engine/review/properties.py, and in plan_strategies (test-time dependency).

This module is the entry point and keeps the public API; the checks live in engine/review/properties.py
and the shared harness and result models in engine/review/core.py (re-exported here).
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import yaml
from pydantic import BaseModel

from ..core.errors import MemfitError
from ..policy.oracle import PythonEvaluator, make_evaluator
from .core import (SHRINK_BUDGET_S, Check, ExampleCounts, Judged, PropertyResult, Violation, ReviewContext,
                          property_result, search_examples, judge, signature)
from .properties import TARGETED_EXAMPLES, every_rule_fires, no_dead_rules, property_checks
from ..policy.rules import Rule, load_rules

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["review", "ReviewReport", "differential", "judge", "signature", "Judged", "Mismatch", "Violation",
           "PropertyResult", "ExampleCounts", "DEFAULT_MAX_EXAMPLES", "SHRINK_BUDGET_S", "TARGETED_EXAMPLES"]

DEFAULT_MAX_EXAMPLES = 25


class ReviewReport(BaseModel):
    passed: bool
    seconds: float
    rules_loaded: int
    evaluator: str
    out_dir: str
    examples: ExampleCounts
    properties: list[PropertyResult]
    violations: list[Violation]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (for `advise review --json`)."""
        return self.model_dump(mode="json")



@dataclass(frozen=True)
class Mismatch:
    index: int
    facts: Mapping[str, Any]
    durable: list[str]
    python: list[str]


def differential(rules: Sequence[Rule], facts_list: Iterable[Mapping[str, Any]]) -> list[Mismatch]:
    """Fact sets on which durable-rules and the plain-Python oracle fire different rules.

    Raises:
        RuleError: durable-rules failed (or is not importable on this Python).
    """
    durable, oracle = make_evaluator(rules, "durable"), PythonEvaluator(rules)
    out = []
    try:
        for i, facts in enumerate(facts_list):
            d, p = durable.fired(facts), oracle.fired(facts)
            if d != p:
                out.append(Mismatch(i, dict(facts), d, p))
    finally:
        durable.close()
    return out


# --- checks that are not searches ----------------------------------------------------------------

def _rule_examples(rules: Sequence[Rule]) -> tuple[PropertyResult, ExampleCounts]:
    """Every rule's `tests:` examples under both evaluators (the oracle only where durable is absent)."""
    from ..policy.durable import durable_available

    t0, counts, violations = time.monotonic(), ExampleCounts(), []
    for backend in ("durable", "python") if durable_available() else ("python",):
        evaluator = make_evaluator(rules, backend)
        try:
            for r in rules:
                for i, ex in enumerate(r.tests):
                    fired = r.id in evaluator.fired(ex["facts"])
                    if fired == ex["fires"]:
                        counts.passed += 1
                        continue
                    counts.failed += 1
                    violations.append(Violation(
                        property="rule-examples", rules=[r.id], counterexample=ex["facts"],
                        message=f"{r.file}: {r.id}: tests[{i}] expects fires: {ex['fires']}, but under "
                                f"{evaluator.name} it {'fires' if fired else 'does not fire'} on {ex['facts']}"))
        finally:
            evaluator.close()
    return property_result("rule-examples", counts.passed + counts.failed, t0, violations), counts


def _write_counterexample(out: Path, name: str, example: Any, message: str) -> list[str]:
    """The counterexample's plan(s) as YAML files a person can run `advise FILE` on."""
    if not isinstance(example, dict):
        return []
    plans = {"plan": example} if "model" in example else \
        {k: v for k, v in example.items() if k in ("plan", "smaller", "larger", "first", "second")}
    extra = {k: v for k, v in example.items() if k not in plans} if "model" not in example else {}
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for role, plan in plans.items():
        path = out / f"{name}-{role}.yaml"
        header = [f"# advise review: counterexample to property '{name}' ({role})", f"# {message}"]
        header += [f"# also drawn: {json.dumps(extra, sort_keys=True)}"] if extra else []
        header.append(f"# Run: advise {path}")
        path.write_text("\n".join(header) + "\n" + yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
        files.append(str(path))
    return files


def _run_property(ctx: ReviewContext, name: str, strategy: SearchStrategy[Any], check: Check, out: Path) -> PropertyResult:
    t0 = time.monotonic()
    n, example, problems = search_examples(ctx, strategy, check)
    files = _write_counterexample(out, name, example, problems[0][0]) if problems else []
    return property_result(name, n, t0, [Violation(property=name, message=m, rules=list(r), counterexample=example,
                                           files=files) for m, r in problems])


def _judge_coverage_plans(ctx: ReviewContext) -> None:
    """Judge the written-out plans (generators.COVERAGE_PLANS): their firing sets join the sample's."""
    from .generators import COVERAGE_PLANS

    for plan in COVERAGE_PLANS:
        try:
            ctx.judge(plan)
        except MemfitError:  # a user's rule base may make one invalid; the generated sample still counts
            continue


def review(rules_dirs: Iterable[str | Path] = (), *, include_builtin: bool = True,
           max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0, out_dir: str | Path | None = None,
           backend: str = "auto", rules: Sequence[Rule] | None = None,
           progress: Callable[[int, int, str], None] | None = None) -> ReviewReport:
    """Review a rule base: its examples, then properties over generated plans with the real estimator.

    Args:
        rules_dirs: extra rule directories (added to the built-in rules unless include_builtin is False).
        max_examples: generated examples per property (the whole review takes ~1-2 s per example).
        seed: hypothesis seed: the same seed and rule base give the same report.
        out_dir: where counterexample plans are written (default: a new temporary folder).
        backend: the evaluator the properties use ('auto', 'durable' or 'python').
        rules: an already loaded rule base (overrides rules_dirs and include_builtin).
        progress: called with (steps done, steps in all, name of the step starting now) before each
            check and once at the end.
    Returns:
        ReviewReport; `passed` is False if any property found a violation.
    Raises:
        RuleError: the rule base does not load (every problem of every file).
    """
    t0 = time.monotonic()
    rules = list(rules) if rules is not None else load_rules(rules_dirs, include_builtin)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="memfit-review-"))
    ctx = ReviewContext(rules, backend, seed, max_examples)
    tell = progress or (lambda done, total, label: None)
    try:
        checks = property_checks(ctx)
        total = len(checks) + 3
        tell(0, total, "rule-examples")
        first, counts = _rule_examples(rules)
        results = [first]
        for i, p in enumerate(checks, start=1):
            tell(i, total, p[0])
            results.append(_run_property(ctx, *p, out))
        tell(total - 2, total, "every-rule-fires")
        _judge_coverage_plans(ctx)
        results.append(every_rule_fires(ctx))
        tell(total - 1, total, "no-dead-rules")
        results.append(no_dead_rules(ctx))
        tell(total, total, "done")
    finally:
        ctx.close()
    violations = [v for p in results for v in p.violations]
    return ReviewReport(passed=not violations, seconds=round(time.monotonic() - t0, 2), rules_loaded=len(rules),
                        evaluator=ctx.evaluator.name, out_dir=str(out), examples=counts, properties=results,
                        violations=violations)
