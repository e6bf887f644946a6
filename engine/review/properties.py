"""The checks `advise review` runs: properties over generated plans and rule-coverage aggregates.

Properties (each a function from a generated example to a list of (message, rules) problems):
feasible-within-budget, more-hardware-keeps-feasible, bigger-workload-keeps-infeasible,
rule-order-independent, backend-independent, engine-reuse-independent, explained, declared-precedence
and engine/review/search_properties.py's three; `property_checks` pairs each with its hypothesis strategy. Aggregates over every fact set the properties
judged: every-rule-fires and no-dead-rules, each with a targeted search (`_find`) before it reports.
Separate from engine/review/run.py, which runs these and writes the report, to keep both small; the shared
harness is engine/review/core.py. hypothesis is imported only inside functions.
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..core.errors import MemfitError
from ..policy.oracle import holds, make_evaluator
from ..policy.rules import Rule, builtin_rule_files
from ..policy.verdicts import verdict
from ..search.feasibility import Feasibility
from ..search.sweep import sweep
from .closeness import closeness_to_mattering, share_holding
from .core import (Check, Judged, PlanDict, Problem, PropertyResult, Violation, ReviewContext, property_result, judge,
                   signature)
from .search_properties import search_property_checks

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

    from ..memory.estimate import MemoryEstimate
    from ..plan.schema import Plan

# Examples of the targeted search for a rule that did not fire (or never mattered) in the properties.
# 150 stopped being enough once the error band came from held-out runs: its wider top also rejects most
# generated NVMe-offload candidates, so plans where nvme-over-space is the only reject became rare
# (the search stops at the first hit, so a rule that matters costs no more than before).
TARGETED_EXAMPLES = 400


# --- properties over generated plans -------------------------------------------------------------

def _within_budget(plan: Plan, est: MemoryEstimate) -> bool:
    """The review's own budget check, independent of the headroom rules: peak within capacity minus
    the policy headroom on GPU and host, and NVMe within space (generated plans carry no logs, so no
    calibration applies)."""
    p = plan.policy
    return (est.gpu_peak_gib <= est.gpu_capacity_gib * (1 - p.gpu_headroom)
            and est.host_peak_gib <= est.host_capacity_gib * (1 - p.host_headroom) and est.nvme_fits)


def _feasible_within_budget(ctx: ReviewContext, plan_dict: PlanDict) -> list[Problem]:
    plan, judged = ctx.judge(plan_dict)
    return [(f"{j.key} is ranked feasible but over budget: GPU {j.facts['gpu_peak_gib']:.1f} of "
             f"{j.facts['gpu_budget_gib']:.1f} GiB, host {j.facts['host_peak_gib']:.0f} of "
             f"{j.facts['host_budget_gib']:.0f} GiB, NVMe {j.facts['nvme_needed_gib']:.0f} of "
             f"{j.facts['nvme_capacity_gib']:.0f} GiB", [])
            for j in judged if not j.verdict.rejected and not _within_budget(plan, j.candidate.estimate)]


def _feasible(judged: Sequence[Judged]) -> dict[str, Judged]:
    return {j.key: j for j in judged if not j.verdict.rejected}


def _rejecters(j: Judged) -> list[str]:
    return [f.rule for f in j.verdict.firings if f.effect == "reject"]


def _monotone(ctx: ReviewContext, pair: dict[str, PlanDict], what: str) -> list[Problem]:
    """Feasible keys of pair['larger'] must include (hardware) / be within (workload) pair['smaller']'s."""
    from hypothesis import assume

    small = {j.key: j for j in ctx.judge(pair["smaller"])[1]}
    if what == "hardware":
        # Only a feasible smaller side can lose a strategy: the others say nothing and do not count
        # towards the examples (with the error band's top at 1.5-1.8x, few generated plans fit).
        assume(any(not j.verdict.rejected for j in small.values()))
    large = {j.key: j for j in ctx.judge(pair["larger"])[1]}
    lost_from, gained_on = (small, large) if what == "hardware" else (large, small)
    lost = sorted(k for k, j in lost_from.items() if not j.verdict.rejected and k in gained_on
                  and gained_on[k].verdict.rejected)
    if not lost:
        return []
    blame = sorted({r for k in lost for r in _rejecters(gained_on[k])})
    side = "more hardware rejects" if what == "hardware" else "a bigger model / longer sequence makes feasible"
    return [(f"{side} {len(lost)} strategy shape(s), e.g. {lost[0]}; rejected by {', '.join(blame)}", blame)]


def _order_independent(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    ref = ctx.judge(ex["plan"])[1]
    rules = list(ctx.rules)
    random.Random(ex["shuffle"]).shuffle(rules)
    evaluator = make_evaluator(rules, ctx.backend)
    try:
        shuffled = ctx.judge(ex["plan"], rules=rules, evaluator=evaluator)[1]
    finally:
        evaluator.close()
    return _diff("shuffled rule order", signature(ref), signature(shuffled))


def _diff(what: str, a: Sequence[tuple[Any, ...]], b: Sequence[tuple[Any, ...]], fired_at: int = 3) -> list[Problem]:
    """The first rank where two outputs differ; the rules fired on one side only are named."""
    if a == b:
        return []
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    x, y = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
    rules = sorted(set(x[fired_at]) ^ set(y[fired_at])) if x and y else []
    return [(f"{what} changes the output at rank {i + 1}: {x} vs {y}", rules)]


def _backend_independent(ctx: ReviewContext, plan_dict: PlanDict) -> list[Problem]:
    """durable-rules vs the oracle: firing on the same candidates, and sizing the sweep (the
    micro-batches each backend's reject rules choose)."""
    plan, model, candidates = ctx.sweep(plan_dict)
    evaluators = {b: make_evaluator(ctx.rules, b) for b in ("durable", "python")}
    try:
        runs = {b: judge(candidates, ctx.rules, e) for b, e in evaluators.items()}
    finally:
        for e in evaluators.values():
            e.close()
    rows = {b: [(j.key, j.fired, j.verdict.rejected, j.verdict.score) for j in judged] for b, judged in runs.items()}
    sized = {}
    for b in ("durable", "python"):
        with Feasibility(ctx.rules, b) as feasibility:
            sized[b] = [(c.strategy.key, (), c.facts.micro_batch_size) for c in sweep(plan, model, feasibility)]
    return (_diff("durable-rules vs the Python oracle", rows["durable"], rows["python"], 1)
            + _diff("micro-batch sizing under durable-rules vs the oracle", sized["durable"], sized["python"], 1))


def _reuse_independent(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    reused = make_evaluator(ctx.rules, ctx.backend)
    fresh = make_evaluator(ctx.rules, ctx.backend)
    try:
        ctx.judge(ex["first"], evaluator=reused)
        a = ctx.judge(ex["second"], evaluator=reused)[1]
        b = ctx.judge(ex["second"], evaluator=fresh)[1]
    finally:
        reused.close()
        fresh.close()
    return _diff("an evaluator reused from another plan", signature(a), signature(b))


def _explained(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    _, judged = ctx.judge(ex["plan"], ex["measured"])
    by_id = {r.id: r for r in ctx.rules}
    problems: list[Problem] = []
    for j in judged:
        oracle = {r.id for r in ctx.rules if holds(r.when, j.facts)}
        if set(j.fired) != oracle:
            bad = sorted(set(j.fired) ^ oracle)
            problems.append((f"{j.key}: fired rules do not re-check on its facts: {', '.join(bad)}", bad))
        if j.verdict.rejected and not any(holds(by_id[r].when, j.facts) for r in _rejecters(j)):
            problems.append((f"{j.key}: rejected without a reject rule that holds", _rejecters(j)))
        for f in j.verdict.firings:
            if "{" in f.message:
                problems.append((f"{j.key}: {f.rule}'s explanation did not render: {f.message!r}", [f.rule]))
    top = judged[0] if judged and not judged[0].verdict.rejected else None
    if top is not None and not top.verdict.firings:
        problems.append((f"the recommendation {top.key} carries no explanation (no rule fired)", []))
    return problems


def _declared_precedence(ctx: ReviewContext, ex: dict[str, Any]) -> list[Problem]:
    _, judged = ctx.judge(ex["plan"], ex["measured"])
    return [(f"{j.key}: {c}", [f.rule for f in j.verdict.firings if f.rule in c])
            for j in judged for c in j.verdict.conflicts]


def property_checks(ctx: ReviewContext) -> list[tuple[str, SearchStrategy[Any], Check]]:
    from hypothesis import strategies as st

    from .generators import MODEL_LADDER, SEQ_LEN, measured_overrides, plan_dicts

    with_measured = st.fixed_dictionaries({"plan": plan_dicts(), "measured": st.none() | measured_overrides()})
    props: list[tuple[str, SearchStrategy[Any], Check]] = [
        ("feasible-within-budget", plan_dicts(), lambda d: _feasible_within_budget(ctx, d)),
        ("more-hardware-keeps-feasible", _more_hardware(), lambda p: _monotone(ctx, p, "hardware")),
        ("bigger-workload-keeps-infeasible", _bigger_workload(MODEL_LADDER, SEQ_LEN),
         lambda p: _monotone(ctx, p, "workload")),
        ("rule-order-independent", st.fixed_dictionaries({"plan": plan_dicts(), "shuffle": st.integers(0, 2**32)}),
         lambda e: _order_independent(ctx, e)),
        ("engine-reuse-independent", st.fixed_dictionaries({"first": plan_dicts(), "second": plan_dicts()}),
         lambda e: _reuse_independent(ctx, e)),
        ("explained", with_measured, lambda e: _explained(ctx, e)),
        ("declared-precedence", with_measured, lambda e: _declared_precedence(ctx, e)),
        *search_property_checks(ctx),
    ]
    from ..policy.durable import durable_available

    if durable_available():  # on Python 3.13+ there is only the oracle: nothing to compare
        props.insert(5, ("backend-independent", plan_dicts(), lambda d: _backend_independent(ctx, d)))
    return props


def _more_hardware() -> SearchStrategy[dict[str, PlanDict]]:
    from hypothesis import strategies as st

    from .generators import plan_dicts

    @st.composite
    def pairs(draw: DrawFn) -> dict[str, PlanDict]:
        small = draw(plan_dicts(pin_micro_batch=True))
        hw = dict(small["hardware"])
        hw["gpu_memory"] += draw(st.sampled_from((40, 0, 16, 64)) | st.integers(0, 64))
        hw["host_memory"] += draw(st.sampled_from((512, 0, 128, 1024)) | st.integers(0, 1024))
        # One GPU -> several adds NCCL buffers per GPU (engine/memory/estimate.py NCCL_GIB), a real cost: more
        # nodes are compared only where the smaller plan already has several GPUs.
        if hw["gpus_per_node"] * hw["nodes"] > 1:
            hw["nodes"] += draw(st.integers(0, 3))
        return {"smaller": small, "larger": {**small, "hardware": hw}}
    return pairs()


def _bigger_workload(ladder: Sequence[str], seq_range: tuple[int, int]) -> SearchStrategy[dict[str, PlanDict]]:
    from hypothesis import strategies as st

    from .generators import plan_dicts

    @st.composite
    def pairs(draw: DrawFn) -> dict[str, PlanDict]:
        small = draw(plan_dicts(models=ladder, pin_micro_batch=True))
        i = ladder.index(small["model"])
        training = dict(small["training"])
        training["seq_len"] = min(seq_range[1] * 2, training["seq_len"] + draw(st.integers(0, 8192)))
        larger = {**small, "model": ladder[draw(st.integers(i, len(ladder) - 1))], "training": training}
        return {"smaller": small, "larger": larger}
    return pairs()


# --- aggregates over every fact set the properties judged ----------------------------------------

def _effects(fired: Iterable[str], by_id: Mapping[str, Rule]) -> tuple[bool, float, tuple[tuple[str, Any], ...], tuple[str, ...]]:
    v = verdict(list(fired), by_id, {})
    return v.rejected, v.score, tuple(sorted(v.settings.items())), tuple(sorted(f.advice for f in v.firings if f.advice))


def _find(ctx: ReviewContext, wanted: Callable[[Judged], bool], closeness: Callable[[Judged], float]) -> bool:
    """A targeted search for a generated plan (plus drawn measured facts) with a candidate `wanted`;
    hypothesis steers towards plans whose best candidate has the highest `closeness`."""
    from hypothesis import HealthCheck, Phase, Verbosity, find, settings, target
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    from .generators import measured_overrides, plan_dicts

    def hit(ex: dict[str, Any]) -> bool:
        try:
            judged = ctx.judge(ex["plan"], ex["measured"])[1]
        except MemfitError:
            return False
        target(max((closeness(j) for j in judged), default=-100.0))
        return any(wanted(j) for j in judged)

    strategy = st.fixed_dictionaries({"plan": plan_dicts(), "measured": st.none() | measured_overrides()})
    try:
        # the same seed for every search: the plans repeat, and their sweeps come from the cache
        find(strategy, hit, random=random.Random(ctx.seed),
             settings=settings(max_examples=max(TARGETED_EXAMPLES, 4 * ctx.max_examples), database=None, deadline=None, phases=[Phase.generate, Phase.target],
                               verbosity=Verbosity.quiet, suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return False
    return True


def every_rule_fires(ctx: ReviewContext) -> PropertyResult:
    t0 = time.monotonic()
    fired = {r for s in ctx.fired_sets for r in s}
    # _find runs at once, so its lambdas see this r (no late-binding default arguments needed).
    never = [r for r in ctx.rules if r.id not in fired and not _find(
        ctx, lambda j: r.id in j.fired, lambda j: share_holding(r.when, j.facts))]
    return property_result("every-rule-fires", ctx.fact_sets_seen, t0, [Violation(
        property="every-rule-fires", rules=[r.id],
        message=f"{r.file}: {r.id} never fired on {ctx.fact_sets_seen} generated candidates (nor in a targeted "
                f"search); its condition may be impossible: {r.when}") for r in never])


def no_dead_rules(ctx: ReviewContext) -> PropertyResult:
    """A rule that fires but whose removal never changes a verdict, score, setting or advice.

    A built-in rule that matters only once the user's rules are set aside (a user's no-NVMe rule makes
    nvme-over-space and nvme-needs-path redundant) is shadowed, not dead: reported as a note."""
    t0, by_id, violations, notes = time.monotonic(), {r.id: r for r in ctx.rules}, [], []
    builtin = {name for name, _ in builtin_rule_files()}
    user = {r.id for r in ctx.rules if r.file not in builtin}

    def matters(fired: Sequence[str], rid: str) -> bool:
        return rid in fired and _effects(fired, by_id) != _effects([x for x in fired if x != rid], by_id)

    for r in ctx.rules:
        sets = [s for s in ctx.fired_sets if r.id in s]
        if not sets or any(matters(s, r.id) for s in sets):
            continue
        shadowing = sorted({x for s in sets if matters([y for y in s if y not in user], r.id) for x in s if x in user})
        if r.file in builtin and shadowing:
            notes.append(f"{r.file}: {r.id} is redundant under your rule(s) {', '.join(shadowing)}: wherever it "
                         f"fires they decide the same (information, not a failure)")
            continue
        if _find(ctx, lambda j: matters(j.fired, r.id), lambda j: closeness_to_mattering(j, r.id, by_id)):  # run at once
            continue
        violations.append(Violation(
            property="no-dead-rules", rules=[r.id],
            message=f"{r.file}: removing {r.id} changes no verdict, score, setting or advice on the "
                    f"{len(sets)} distinct firing set(s) where it fired (e.g. with {', '.join(sets[0])}), "
                    f"nor in a targeted search"))
    return property_result("no-dead-rules", len(ctx.fired_sets), t0, violations, notes)
