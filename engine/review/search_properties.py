"""Properties of the search as the rule base steers it, each with one drawn user reject rule on top
of the rule base under review (engine/review/added_rules.py):

- added-reject-keeps-a-fit: with micro_batch_size auto, an added reject rule never leaves "nothing
  fits" while some candidate passes every rule (checked at micro-batch 1, the least memory).
- proposals-pass-the-rules: every what-it-would-take proposal, judged on its hypothetical plan by the
  Python oracle over every rule, is feasible.
- memory-blame-honest: "not for lack of memory" is never said when a reject rule on the closest
  candidate stops firing once that candidate uses no memory (an independent test of "memory rule").

All three judge with the Python oracle: the backend-independent property compares the backends.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..advice.outlook import outlooks
from ..policy.oracle import PythonEvaluator
from ..search.feasibility import Feasibility
from ..search.judge import judge
from ..search.sweep import sweep
from .added_rules import added_rule
from .core import Check, Judged, Problem, ReviewContext

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..policy.rules import Rule


def _rules(ctx: ReviewContext, ex: dict[str, Any]) -> list[Rule]:
    return [*ctx.rules, added_rule(**ex["added"])]


def _judged(plan: Plan, model: ModelSpec, rules: Sequence[Rule], feasibility: Feasibility | None = None) -> list[Judged]:
    own = feasibility is None
    feasibility = feasibility or Feasibility(rules, "python")
    try:
        return judge(sweep(plan, model, feasibility), rules, PythonEvaluator(rules))
    finally:
        if own:
            feasibility.close()


def added_reject_keeps_a_fit(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    plan_dict = {**ex["plan"], "training": {**ex["plan"]["training"], "micro_batch_size": "auto"}}
    plan, model, _ = ctx.sweep(plan_dict)
    rules = _rules(ctx, ex)
    if any(not j.verdict.rejected for j in _judged(plan, model, rules)):
        return []
    one = plan.model_copy(update={"training": plan.training.model_copy(update={"micro_batch_size": 1})})
    passing = [j.key for j in _judged(one, model, rules) if not j.verdict.rejected]
    if not passing:
        return []
    return [(f"with micro_batch_size auto nothing fits under the added rule {rules[-1].id}, but {passing[0]} "
             f"passes every rule ({len(passing)} candidate(s) at micro-batch 1)", [rules[-1].id])]


def proposals_pass_the_rules(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    plan, model, _ = ctx.sweep(ex["plan"])
    rules = _rules(ctx, ex)
    problems: list[tuple[str, list[str]]] = []
    with Feasibility(rules, "python") as feasibility:
        looks = outlooks(plan, model, _judged(plan, model, rules, feasibility), rules, feasibility)
    for look in looks:
        for p in look.proposals:
            there = {j.key: j for j in _judged(p.plan, model, rules)}
            j = there.get(p.strategy.key)
            if j is None:
                problems.append((f"{look.method}: proposal {p.text!r} is not a candidate of its hypothetical plan", []))
            elif j.verdict.rejected:
                blame = [f.rule for f in j.verdict.firings if f.effect == "reject"]
                problems.append((f"{look.method}: proposal {p.text!r} is rejected by {', '.join(blame)}", blame))
    return problems


def _without_memory_use(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of the same candidate if it needed no memory at all (every usage 0, margins whole)."""
    return {**facts, "gpu_peak_gib": 0.0, "gpu_usage": 0.0, "gpu_margin": facts["gpu_budget"],
            "gpu_excess_gib": -facts["gpu_budget_gib"], "host_peak_gib": 0.0, "host_usage": 0.0,
            "host_margin": facts["host_budget"], "host_excess_gib": -facts["host_budget_gib"],
            "nvme_needed_gib": 0.0, "activation_share": 0.0, "measured_oom": False, "measured_oom_source": ""}


def memory_blame_honest(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    plan, model, _ = ctx.sweep(ex["plan"])
    rules = _rules(ctx, ex)
    with Feasibility(rules, "python") as feasibility:
        looks = outlooks(plan, model, _judged(plan, model, rules, feasibility), rules, feasibility)
    problems: list[Problem] = []
    for look in looks:
        if "not for lack of memory" not in look.text:
            continue
        rejecting = [r for r in rules if r.id in {f.rule for f in look.closest.verdict.firings if f.effect == "reject"}]
        still = set(PythonEvaluator(rejecting).fired(_without_memory_use(look.closest.facts)))
        memory = sorted({r.id for r in rejecting} - still)
        if memory:
            problems.append((f"{look.method}: says 'not for lack of memory' about {look.closest.key}, but "
                             f"{', '.join(memory)} stop(s) rejecting it when it uses no memory", memory))
    return problems


def search_property_checks(ctx: ReviewContext) -> list[tuple[str, SearchStrategy[Any], Check]]:
    """(name, hypothesis strategy, check) for the three properties."""
    from hypothesis import strategies as st

    from .added_rules import added_reject_rules
    from .generators import plan_dicts

    drawn = st.fixed_dictionaries({"plan": plan_dicts(), "added": added_reject_rules()})
    return [("added-reject-keeps-a-fit", drawn, lambda e: added_reject_keeps_a_fit(ctx, e)),
            ("proposals-pass-the-rules", drawn, lambda e: proposals_pass_the_rules(ctx, e)),
            ("memory-blame-honest", drawn, lambda e: memory_blame_honest(ctx, e))]
