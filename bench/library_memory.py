"""RSS and thread count over many rule evaluations in one process (memfit used as a library).

Run: `.venv/bin/python bench/library_memory.py [--calls N] [--mode advise|evaluator] [--plan PLAN]`
(defaults: 10,000 calls, mode advise, examples/qwen7b-rtx4090.yaml).
- advise: N `advise(plan, rules=rules)` calls (the library entry point; rules loaded once).
- evaluator: N `make_evaluator(rules)` -> fired(facts) over every candidate -> close(), which is what
  advise() does with the rule base, without the sweep (about 50x more evaluator cycles per second).
Prints RSS (from /proc/self/status, VmRSS) and threads (threading.active_count() and /proc's
Threads) after a warm-up, then every N/10 calls, and the growth per call. Prints, does not assert:
tests/test_durable_memory.py asserts a bound derived from these numbers.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def rss_kib() -> int:
    """Resident set size of this process, KiB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def os_threads() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def _one_call(mode: str, plan, rules, facts):
    from memfit.engine.advice.advise import advise
    from memfit.engine.policy.oracle import make_evaluator

    if mode == "advise":
        return advise(plan, rules=rules, backend="durable").evaluator
    ev = make_evaluator(rules, "durable")
    try:
        for f in facts:
            ev.fired(f)
        return ev.name
    finally:
        ev.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--mode", choices=("advise", "evaluator"), default="advise")
    ap.add_argument("--plan", default="examples/qwen7b-rtx4090.yaml")
    args = ap.parse_args()
    from memfit.engine.model.spec import resolve_model
    from memfit.engine.plan.load import load_plan
    from memfit.engine.policy.rules import load_rules
    from memfit.engine.policy.vocabulary import to_message
    from memfit.engine.search.sweep import sweep

    plan = load_plan(args.plan)
    rules = load_rules([os.path.join(plan.base_dir, d) for d in plan.rules])
    facts = [to_message(c.facts) for c in sweep(plan, resolve_model(plan.model, plan.base_dir))]
    for _ in range(20):  # warm-up: imports, allocator arenas, the compiled ruleset
        name = _one_call(args.mode, plan, rules, facts)
    start, t0 = rss_kib(), time.perf_counter()
    print(f"{args.mode}: {args.calls} calls, {len(facts)} candidates each, {len(rules)} rules, evaluator {name}")
    print(f"{'calls':>7} {'rss_mib':>8} {'py_threads':>10} {'os_threads':>10} {'s':>7}")
    print(f"{0:>7} {start / 1024:>8.1f} {threading.active_count():>10} {os_threads():>10} {0:>7.1f}")
    step = max(1, args.calls // 10)
    for i in range(1, args.calls + 1):
        _one_call(args.mode, plan, rules, facts)
        if i % step == 0 or i == args.calls:
            print(f"{i:>7} {rss_kib() / 1024:>8.1f} {threading.active_count():>10} {os_threads():>10} "
                  f"{time.perf_counter() - t0:>7.1f}", flush=True)
    growth = rss_kib() - start
    print(f"growth: {growth / 1024:.1f} MiB over {args.calls} calls = {1024 * growth / args.calls:.0f} B/call")


if __name__ == "__main__":
    main()
