"""durable-rules contained: one compiled ruleset per rule base, reused and freed; flat memory; threads.

Bounds come from bench/library_memory.py (see docs/reference/limits.md): before the shared ruleset,
every evaluator compiled its own and never freed it, +446 KB RSS per make_evaluator/close cycle
(127.8 MiB over 300 cycles of the 41 built-in rules); with it, RSS rose 4.1 MiB over the first 3,000
of 10,000 cycles (allocator warm-up) and not at all over the last 7,000.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from memfit.engine.policy.durable import durable_available, live_rulesets
from memfit.engine.policy.oracle import PythonEvaluator, make_evaluator
from memfit.engine.policy.rules import Rule, load_rules

pytestmark = pytest.mark.skipif(not durable_available(), reason="durable-rules does not import on this Python")

BUILTIN = load_rules()
EXAMPLES = [t["facts"] for r in BUILTIN for t in r.tests]


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _cycle(rules, facts) -> list[list[str]]:
    ev = make_evaluator(rules, "durable")
    try:
        assert ev.name == "durable-rules"
        return [ev.fired(f) for f in facts]
    finally:
        ev.close()


def test_one_ruleset_per_rule_base_reused():
    _cycle(BUILTIN, EXAMPLES[:1])
    before = live_rulesets()
    for _ in range(50):
        _cycle(BUILTIN, EXAMPLES[:3])
    assert live_rulesets() == before


def test_idle_rule_bases_are_freed():
    # 12 distinct rule bases, each used and closed: at most 4 more stay compiled than were before
    before = live_rulesets()
    for i in range(12):
        rule = Rule(id=f"r{i}", description="d", when={"fact": "zero_stage", "ge": i}, then={"score": 1},
                    because="b", source="s", tests=(), priority=0, file="<t>", topic="t")
        assert _cycle([rule], [{"zero_stage": 20}]) == [[f"r{i}"]]
    assert live_rulesets() <= before + 4


def test_evaluator_dropped_without_close_releases():
    import gc

    before = live_rulesets()
    for i in range(12):  # 12 distinct rule bases, none closed
        rule = Rule(id=f"dropped-{i}", description="d", when={"fact": "zero_stage", "ge": i}, then={"score": 1},
                    because="b", source="s", tests=(), priority=0, file="<t>", topic="t")
        make_evaluator([rule], "durable").fired({"zero_stage": 20})
    gc.collect()
    assert live_rulesets() <= before + 4


def test_close_is_idempotent_and_use_after_close_is_an_error():
    ev = make_evaluator(BUILTIN, "durable")
    ev.close()
    ev.close()
    from memfit.engine.core.errors import RuleError
    with pytest.raises(RuleError, match="used after close"):
        ev.fired(EXAMPLES[0])


def test_four_threads_match_serial_answers():
    # the oracle's answers are the reference; 4 threads share one compiled ruleset
    expected = [PythonEvaluator(BUILTIN).fired(f) for f in EXAMPLES]

    def work(_):
        return [_cycle(BUILTIN, EXAMPLES) for _ in range(5)]

    threads_before = threading.active_count()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert all(run == expected for per_thread in results for run in per_thread)
    assert threading.active_count() == threads_before


@pytest.mark.slow
def test_rss_flat_over_thousands_of_evaluator_cycles():
    for _ in range(200):  # warm-up, as bench/library_memory.py
        _cycle(BUILTIN, EXAMPLES[:5])
    start, threads = _rss_kib(), threading.active_count()
    for _ in range(3000):
        _cycle(BUILTIN, EXAMPLES[:5])
    growth_kib = _rss_kib() - start
    # measured: <= 4.1 MiB over 10,000 cycles; 2x margin for allocator noise. The old leak (446 KB per
    # cycle) would be ~1.3 GB here.
    assert growth_kib < 8 * 1024, growth_kib
    assert threading.active_count() == threads


@pytest.mark.slow
def test_four_threads_calling_advise_match_serial():
    from memfit.engine.advice.advise import advise

    plan = "examples/qwen7b-rtx4090.yaml"
    serial = advise(plan, rules=BUILTIN, backend="durable").model_dump_json()
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda _: advise(plan, rules=BUILTIN, backend="durable").model_dump_json(), range(8)))
    assert all(p == serial for p in parallel)
