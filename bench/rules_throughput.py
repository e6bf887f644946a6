"""Candidates per second through durable-rules and through the plain-Python oracle.

Run: `.venv/bin/python bench/rules_throughput.py [PLAN]` (default examples/qwen32b-one-h100.yaml).
Sweeps the plan once (estimates + facts), then times only rule evaluation + verdicts + ranking over all
candidates, 5 runs per backend, each with a fresh evaluator (as advise does); prints the medians.
Prints, does not assert.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from memfit.engine.model.spec import resolve_model  # noqa: E402
from memfit.engine.plan.load import load_plan  # noqa: E402
from memfit.engine.policy.oracle import make_evaluator  # noqa: E402
from memfit.engine.review.run import judge  # noqa: E402
from memfit.engine.policy.rules import load_rules  # noqa: E402
from memfit.engine.search.feasibility import Feasibility  # noqa: E402
from memfit.engine.search.sweep import sweep  # noqa: E402

RUNS = 5


def _time(candidates, rules, backend: str) -> float:
    evaluator = make_evaluator(rules, backend)
    try:
        t0 = time.perf_counter()
        judge(candidates, rules, evaluator)
        return time.perf_counter() - t0
    finally:
        evaluator.close()


def main(argv: list[str]) -> None:
    path = argv[0] if argv else "examples/qwen32b-one-h100.yaml"
    plan = load_plan(path)
    rules = load_rules([plan.base_dir + "/" + d for d in plan.rules])
    with Feasibility(rules) as feasibility:
        candidates = sweep(plan, resolve_model(plan.model, plan.base_dir), feasibility)
    rows = {}
    for backend in ("durable", "python"):
        secs = statistics.median(_time(candidates, rules, backend) for _ in range(RUNS))
        rows[backend] = (secs, len(candidates) / secs)
    print(f"{path}: {len(candidates)} candidates, {len(rules)} rules, median of {RUNS} runs")
    print(f"{'backend':<10} {'seconds':>9} {'candidates/s':>13} {'ms/candidate':>13}")
    for backend, (secs, rate) in rows.items():
        print(f"{backend:<10} {secs:>9.4f} {rate:>13.0f} {1000 * secs / len(candidates):>13.3f}")
    print(f"python / durable throughput: {rows['python'][1] / rows['durable'][1]:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
