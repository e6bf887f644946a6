"""`advise review`: property-tested policy review of a rule base, with the real estimator.

Checks, each reported as a property with the number of examples tried:
- rule-examples: every rule's `tests:` under both evaluators.
- hypothesis properties over generated plans (engine/plan_strategies.py), each failure shrunk to a
  small plan written as YAML under out_dir so a person can run `advise FILE` on it:
  feasible-within-budget, more-hardware-keeps-feasible, bigger-workload-keeps-infeasible,
  rule-order-independent, backend-independent, engine-reuse-independent, explained,
  declared-precedence.
- aggregates over every fact set the properties judged: every-rule-fires (a rule that never fired is
  searched for once more, directly) and no-dead-rules (removing the rule never changes a verdict,
  score, setting or advice: it is dead weight).
Plans carry no logs, so the rules about real runs are exercised by measured-evidence facts drawn on
top of real candidates' facts (plan_strategies.measured_overrides) in `explained` and
`declared-precedence`. hypothesis is imported only here and in plan_strategies (test-time dependency).
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml
from pydantic import BaseModel, Field

from .advise import evaluate_candidates
from .errors import MemfitError
from .evaluate import PythonEvaluator, holds, make_evaluator
from .facts import to_message
from .model_facts import resolve_model
from .plan import plan_from_dict
from .ranking import Verdict, rank_key, verdict
from .rules import Rule, load_rules
from .sweep import sweep, within_budget

DEFAULT_MAX_EXAMPLES = 25
# Seconds a property may spend shrinking a failure before it reports the smallest plan found so far.
SHRINK_BUDGET_S = 10.0
# Examples of the targeted search for a rule that did not fire (or never mattered) in the properties.
TARGETED_EXAMPLES = 150


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


class ExampleCounts(BaseModel):
    passed: int = 0
    failed: int = 0


class ReviewReport(BaseModel):
    passed: bool
    seconds: float
    rules_loaded: int
    evaluator: str
    out_dir: str
    examples: ExampleCounts
    properties: list[PropertyResult]
    violations: list[Violation]

    def to_dict(self) -> dict:
        """Plain JSON-ready mapping (for `advise review --json`)."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Judged:
    key: str
    facts: Mapping[str, Any]
    fired: tuple[str, ...]
    verdict: Verdict


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


def judge(candidates, rules: Sequence[Rule], evaluator, overrides: Mapping[str, Any] | None = None) -> list[Judged]:
    """Fire the rules on each candidate (facts optionally overridden) and rank as advise does."""
    by_id = {r.id: r for r in rules}
    out = []
    for c in candidates:
        facts = {**to_message(c.facts), **(overrides or {})}
        fired = tuple(evaluator.fired(facts))
        out.append(Judged(c.strategy.key, facts, fired, verdict(fired, by_id, facts)))
    out.sort(key=lambda j: rank_key(j.verdict.rejected, j.verdict.score, j.facts, j.key))
    return out


def signature(judged: Sequence[Judged]) -> list[tuple]:
    """What a person sees, independent of firing order: ranking, verdicts, scores, rules, settings."""
    return [(j.key, j.verdict.rejected, j.verdict.score, tuple(sorted(j.fired)),
             tuple(sorted(j.verdict.settings.items()))) for j in judged]


class _Failed(Exception):
    def __init__(self, problems: list[tuple[str, list[str]]]):
        super().__init__(problems[0][0])
        self.problems = problems


class _Context:
    """The rule base under review, one reused evaluator, and caches shared by the properties."""

    def __init__(self, rules: list[Rule], backend: str, seed: int, max_examples: int):
        self.rules, self.backend, self.seed, self.max_examples = rules, backend, seed, max_examples
        self.evaluator = make_evaluator(rules, backend)
        self._sweeps: dict[str, tuple] = {}
        self.fired_sets: set[tuple[str, ...]] = set()
        self.fact_sets_seen = 0

    def sweep(self, plan_dict: dict):
        key = _key(plan_dict)
        if key not in self._sweeps:
            plan = plan_from_dict(plan_dict, "<generated plan>")
            model = resolve_model(plan.model)
            self._sweeps = self._sweeps if len(self._sweeps) < 256 else {}
            self._sweeps[key] = (plan, model, sweep(plan, model))
        return self._sweeps[key]

    def judge(self, plan_dict: dict, overrides: Mapping[str, Any] | None = None, rules=None, evaluator=None):
        plan, _, candidates = self.sweep(plan_dict)
        judged = judge(candidates, rules or self.rules, evaluator or self.evaluator, overrides)
        self.fact_sets_seen += len(judged)
        self.fired_sets.update(tuple(sorted(j.fired)) for j in judged)
        return plan, judged


def _key(example: Any) -> str:
    return json.dumps(example, sort_keys=True, default=str)


def _search(ctx: _Context, strategy, check: Callable[[Any], list]) -> tuple[int, Any, list]:
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


# --- properties over generated plans -------------------------------------------------------------

def _feasible_within_budget(ctx: _Context, plan_dict: dict) -> list:
    plan, judged = ctx.judge(plan_dict)
    _, _, candidates = ctx.sweep(plan_dict)
    est = {c.strategy.key: c.estimate for c in candidates}
    return [(f"{j.key} is ranked feasible but over budget: GPU {j.facts['gpu_peak_gib']:.1f} of "
             f"{j.facts['gpu_budget_gib']:.1f} GiB, host {j.facts['host_peak_gib']:.0f} of "
             f"{j.facts['host_budget_gib']:.0f} GiB, NVMe {j.facts['nvme_needed_gib']:.0f} of "
             f"{j.facts['nvme_capacity_gib']:.0f} GiB", [])
            for j in judged if not j.verdict.rejected and not within_budget(plan, est[j.key])]


def _feasible(judged: Sequence[Judged]) -> dict[str, Judged]:
    return {j.key: j for j in judged if not j.verdict.rejected}


def _rejecters(j: Judged) -> list[str]:
    return [f.rule for f in j.verdict.firings if f.effect == "reject"]


def _monotone(ctx: _Context, pair: dict, what: str) -> list:
    """Feasible keys of pair['larger'] must include (hardware) / be within (workload) pair['smaller']'s."""
    small = {j.key: j for j in ctx.judge(pair["smaller"])[1]}
    large = {j.key: j for j in ctx.judge(pair["larger"])[1]}
    lost_from, gained_on = (small, large) if what == "hardware" else (large, small)
    lost = sorted(k for k, j in lost_from.items() if not j.verdict.rejected and k in gained_on
                  and gained_on[k].verdict.rejected)
    if not lost:
        return []
    blame = sorted({r for k in lost for r in _rejecters(gained_on[k])})
    side = "more hardware rejects" if what == "hardware" else "a bigger model / longer sequence makes feasible"
    return [(f"{side} {len(lost)} strategy shape(s), e.g. {lost[0]}; rejected by {', '.join(blame)}", blame)]


def _order_independent(ctx: _Context, ex: dict) -> list:
    ref = ctx.judge(ex["plan"])[1]
    rules = list(ctx.rules)
    random.Random(ex["shuffle"]).shuffle(rules)
    evaluator = make_evaluator(rules, ctx.backend)
    try:
        shuffled = ctx.judge(ex["plan"], rules=rules, evaluator=evaluator)[1]
    finally:
        evaluator.close()
    return _diff("shuffled rule order", signature(ref), signature(shuffled))


def _diff(what: str, a: list, b: list, fired_at: int = 3) -> list:
    """The first rank where two outputs differ; the rules fired on one side only are named."""
    if a == b:
        return []
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    x, y = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
    rules = sorted(set(x[fired_at]) ^ set(y[fired_at])) if x and y else []
    return [(f"{what} changes the output at rank {i + 1}: {x} vs {y}", rules)]


def _backend_independent(ctx: _Context, plan_dict: dict) -> list:
    """durable-rules vs the oracle on the same candidates, and the harness (`judge`) vs advise's own
    evaluate_candidates with the oracle (so the other properties test what advise does)."""
    plan, model, candidates = ctx.sweep(plan_dict)
    evaluators = {b: make_evaluator(ctx.rules, b) for b in ("durable", "python")}
    try:
        runs = {b: judge(candidates, ctx.rules, e) for b, e in evaluators.items()}
    finally:
        for e in evaluators.values():
            e.close()
    rows = {b: [(j.key, j.fired, j.verdict.rejected, j.verdict.score) for j in judged] for b, judged in runs.items()}
    advised = [(c.strategy.key, tuple(f.rule for f in v.firings), v.rejected, v.score)
               for c, v in evaluate_candidates(plan, model, ctx.rules, "python")[0]]
    return (_diff("durable-rules vs the Python oracle", rows["durable"], rows["python"], 1)
            + _diff("the review's ranking vs advise's", rows["python"], advised, 1))


def _reuse_independent(ctx: _Context, ex: dict) -> list:
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


def _explained(ctx: _Context, ex: dict) -> list:
    _, judged = ctx.judge(ex["plan"], ex["measured"])
    by_id = {r.id: r for r in ctx.rules}
    problems = []
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


def _declared_precedence(ctx: _Context, ex: dict) -> list:
    _, judged = ctx.judge(ex["plan"], ex["measured"])
    return [(f"{j.key}: {c}", [f.rule for f in j.verdict.firings if f.rule in c])
            for j in judged for c in j.verdict.conflicts]


def _properties(ctx: _Context) -> list[tuple[str, Any, Callable]]:
    from hypothesis import strategies as st

    from .plan_strategies import MODEL_LADDER, SEQ_LEN, measured_overrides, plan_dicts

    with_measured = st.fixed_dictionaries({"plan": plan_dicts(), "measured": st.none() | measured_overrides()})
    props = [
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
    ]
    from .durable_adapter import durable_available

    if durable_available():  # on Python 3.13+ there is only the oracle: nothing to compare
        props.insert(5, ("backend-independent", plan_dicts(), lambda d: _backend_independent(ctx, d)))
    return props


def _more_hardware():
    from hypothesis import strategies as st

    from .plan_strategies import plan_dicts

    @st.composite
    def pairs(draw):
        small = draw(plan_dicts(pin_micro_batch=True))
        hw = dict(small["hardware"])
        hw["gpu_memory"] += draw(st.sampled_from((40, 0, 16, 64)) | st.integers(0, 64))
        hw["host_memory"] += draw(st.sampled_from((512, 0, 128, 1024)) | st.integers(0, 1024))
        # One GPU -> several adds NCCL buffers per GPU (engine/memory.py NCCL_GIB), a real cost: more
        # nodes are compared only where the smaller plan already has several GPUs.
        if hw["gpus_per_node"] * hw["nodes"] > 1:
            hw["nodes"] += draw(st.integers(0, 3))
        return {"smaller": small, "larger": {**small, "hardware": hw}}
    return pairs()


def _bigger_workload(ladder: Sequence[str], seq_range: tuple[int, int]):
    from hypothesis import strategies as st

    from .plan_strategies import plan_dicts

    @st.composite
    def pairs(draw):
        small = draw(plan_dicts(models=ladder, pin_micro_batch=True))
        i = ladder.index(small["model"])
        training = dict(small["training"])
        training["seq_len"] = min(seq_range[1] * 2, training["seq_len"] + draw(st.integers(0, 8192)))
        larger = {**small, "model": ladder[draw(st.integers(i, len(ladder) - 1))], "training": training}
        return {"smaller": small, "larger": larger}
    return pairs()


# --- checks that are not searches ----------------------------------------------------------------

def _rule_examples(rules: Sequence[Rule]) -> tuple[PropertyResult, ExampleCounts]:
    """Every rule's `tests:` examples under both evaluators (the oracle only where durable is absent)."""
    from .durable_adapter import durable_available

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
    return _result("rule-examples", counts.passed + counts.failed, t0, violations), counts


def _result(name: str, examples: int, t0: float, violations: list[Violation]) -> PropertyResult:
    return PropertyResult(name=name, passed=not violations, examples=examples,
                          seconds=round(time.monotonic() - t0, 2), violations=violations)


def _effects(fired: Iterable[str], by_id: Mapping[str, Rule]) -> tuple:
    v = verdict(list(fired), by_id, {})
    return v.rejected, v.score, tuple(sorted(v.settings.items())), tuple(sorted(f.advice for f in v.firings if f.advice))


def _find(ctx: _Context, wanted: Callable[[Judged], bool], closeness: Callable[[Judged], float]) -> bool:
    """A targeted search for a generated plan (plus drawn measured facts) with a candidate `wanted`;
    hypothesis steers towards plans whose best candidate has the highest `closeness`."""
    from hypothesis import HealthCheck, Phase, Verbosity, find, settings, target
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    from .plan_strategies import measured_overrides, plan_dicts

    def hit(ex: dict) -> bool:
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


def _share_holding(when: dict, facts: Mapping[str, Any]) -> float:
    """Fraction of a condition's top-level parts that hold (1.0: it fires)."""
    parts = when.get("all", [when])
    return sum(holds(c, facts) for c in parts) / len(parts)


def _closeness_to_mattering(j: Judged, rule_id: str) -> float:
    """0 when the rule fires as the only reject (it matters); minus the other rejects otherwise."""
    if rule_id not in j.fired:
        return -100.0
    return -float(sum(1 for f in j.verdict.firings if f.effect == "reject" and f.rule != rule_id))


def _every_rule_fires(ctx: _Context) -> PropertyResult:
    t0 = time.monotonic()
    fired = {r for s in ctx.fired_sets for r in s}
    never = [r for r in ctx.rules if r.id not in fired and not _find(
        ctx, lambda j, rid=r.id: rid in j.fired, lambda j, when=r.when: _share_holding(when, j.facts))]
    return _result("every-rule-fires", ctx.fact_sets_seen, t0, [Violation(
        property="every-rule-fires", rules=[r.id],
        message=f"{r.file}: {r.id} never fired on {ctx.fact_sets_seen} generated candidates (nor in a targeted "
                f"search); its condition may be impossible: {r.when}") for r in never])


def _no_dead_rules(ctx: _Context) -> PropertyResult:
    """A rule that fires but whose removal never changes a verdict, score, setting or advice."""
    t0, by_id, violations = time.monotonic(), {r.id: r for r in ctx.rules}, []

    def matters(fired: Sequence[str], rid: str) -> bool:
        return rid in fired and _effects(fired, by_id) != _effects([x for x in fired if x != rid], by_id)

    for r in ctx.rules:
        sets = [s for s in ctx.fired_sets if r.id in s]
        if not sets or any(matters(s, r.id) for s in sets):
            continue
        if _find(ctx, lambda j, rid=r.id: matters(j.fired, rid), lambda j, rid=r.id: _closeness_to_mattering(j, rid)):
            continue
        violations.append(Violation(
            property="no-dead-rules", rules=[r.id],
            message=f"{r.file}: removing {r.id} changes no verdict, score, setting or advice on the "
                    f"{len(sets)} distinct firing set(s) where it fired (e.g. with {', '.join(sets[0])}), "
                    f"nor in a targeted search"))
    return _result("no-dead-rules", len(ctx.fired_sets), t0, violations)


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


def _run_property(ctx: _Context, name: str, strategy, check, out: Path) -> PropertyResult:
    t0 = time.monotonic()
    n, example, problems = _search(ctx, strategy, check)
    files = _write_counterexample(out, name, example, problems[0][0]) if problems else []
    return _result(name, n, t0, [Violation(property=name, message=m, rules=list(r), counterexample=example,
                                           files=files) for m, r in problems])


def review(rules_dirs: Iterable[str | Path] = (), *, include_builtin: bool = True,
           max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0, out_dir: str | Path | None = None,
           backend: str = "auto", rules: Sequence[Rule] | None = None) -> ReviewReport:
    """Review a rule base: its examples, then properties over generated plans with the real estimator.

    Args:
        rules_dirs: extra rule directories (added to the built-in rules unless include_builtin is False).
        max_examples: generated examples per property (the whole review takes ~1-2 s per example).
        seed: hypothesis seed: the same seed and rule base give the same report.
        out_dir: where counterexample plans are written (default: a new temporary folder).
        backend: the evaluator the properties use ('auto', 'durable' or 'python').
        rules: an already loaded rule base (overrides rules_dirs and include_builtin).
    Returns:
        ReviewReport; `passed` is False if any property found a violation.
    Raises:
        RuleError: the rule base does not load (every problem of every file).
    """
    t0 = time.monotonic()
    rules = list(rules) if rules is not None else load_rules(rules_dirs, include_builtin)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="memfit-review-"))
    ctx = _Context(rules, backend, seed, max_examples)
    try:
        first, counts = _rule_examples(rules)
        results = [first] + [_run_property(ctx, *p, out) for p in _properties(ctx)]
        results += [_every_rule_fires(ctx), _no_dead_rules(ctx)]
    finally:
        ctx.evaluator.close()
    violations = [v for p in results for v in p.violations]
    return ReviewReport(passed=not violations, seconds=round(time.monotonic() - t0, 2), rules_loaded=len(rules),
                        evaluator=ctx.evaluator.name, out_dir=str(out), examples=counts, properties=results,
                        violations=violations)
