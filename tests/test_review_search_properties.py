"""The review's properties about the search (engine/review/search_properties.py) pass on the shipped
code and FAIL on a planted fault of their kind, each planted by putting back the old behaviour.

The examples are fixed plans (the motivating case and its full-fine-tuning variant) with one added
reject rule, so each test runs one property check directly instead of a hypothesis search.
"""
from __future__ import annotations

import pytest
import yaml

from memfit.engine.advice import outlook
from memfit.engine.policy.rules import load_rules
from memfit.engine.review import search_properties as sp
from memfit.engine.review.core import ReviewContext
from memfit.engine.search import sweep as sweep_module

from conftest import EXAMPLES

PLAN = yaml.safe_load((EXAMPLES / "qwen32b-one-h100.yaml").read_text())
FULL = {**PLAN, "training": {**PLAN["training"], "method": "full"}}
GPU_CAP = {"kind": "gpu-cap", "threshold": 0.7}
NO_NVME = {"kind": "no-nvme", "threshold": 0.0}


@pytest.fixture(scope="module")
def ctx():
    c = ReviewContext(load_rules(), "python", seed=0, max_examples=1)
    yield c
    c.close()


def _python_budget_size(self, shape):
    """The old sizing: the largest micro-batch within Python's own GPU budget, no rules asked."""
    if self.plan.training.micro_batch_size != "auto":
        return shape.model_copy(update={"micro_batch_size": self.plan.training.micro_batch_size})
    budget = self.plan.hardware.gpu_memory_gib * (1 - self.plan.policy.gpu_headroom)
    best = 1
    for mb in range(1, sweep_module.micro_batch_limit(self.plan) + 1):
        if self.estimate(shape.model_copy(update={"micro_batch_size": mb})).gpu_peak_gib <= budget:
            best = mb
    return shape.model_copy(update={"micro_batch_size": best})


def test_added_reject_keeps_a_fit_passes(ctx):
    assert sp.added_reject_keeps_a_fit(ctx, {"plan": PLAN, "added": GPU_CAP}) == []


def test_added_reject_keeps_a_fit_fails_on_python_sizing(ctx, monkeypatch):
    monkeypatch.setattr(sweep_module.PlanProbe, "size", _python_budget_size)
    (problem,) = sp.added_reject_keeps_a_fit(ctx, {"plan": PLAN, "added": GPU_CAP})
    assert "nothing fits" in problem[0] and problem[1] == ["review-added-gpu-cap"]


def test_proposals_pass_the_rules_passes(ctx):
    assert sp.proposals_pass_the_rules(ctx, {"plan": FULL, "added": NO_NVME}) == []


def test_proposals_pass_the_rules_fails_when_proposals_ignore_the_rules(ctx, monkeypatch):
    def ignoring_rules(p, model, feasibility, method, min_stage=0):  # the old search "without the rules"
        shape = next(s for s in outlook.strategy_shapes(p) if s.method == method and s.zero_stage >= min_stage)
        return shape

    monkeypatch.setattr(outlook, "first_passing", ignoring_rules)
    problems = sp.proposals_pass_the_rules(ctx, {"plan": FULL, "added": NO_NVME})
    assert any("NVMe" in m and "review-added-no-nvme" in rules for m, rules in problems)


def test_memory_blame_honest_passes(ctx):
    assert sp.memory_blame_honest(ctx, {"plan": FULL, "added": NO_NVME}) == []


def test_memory_blame_honest_fails_when_memory_rules_are_not_recognised(ctx, monkeypatch):
    monkeypatch.setattr(outlook, "is_memory_rule", lambda rule: False)
    (problem,) = sp.memory_blame_honest(ctx, {"plan": FULL, "added": NO_NVME})
    assert "not for lack of memory" in problem[0] and "host-over-budget" in problem[1]


def test_a_user_rule_shadowing_builtin_rules_is_information_not_a_dead_rule():
    from pathlib import Path

    from memfit.engine.review.properties import no_dead_rules

    rules = load_rules([Path(__file__).parent / "fixtures" / "no_nvme_policy"])
    ctx = ReviewContext(rules, "python", seed=0, max_examples=1)
    try:
        ctx.fired_sets = {("no-nvme-on-shared-nodes",), ("nvme-over-space", "no-nvme-on-shared-nodes"),
                          ("nvme-needs-path", "no-nvme-on-shared-nodes")}
        result = no_dead_rules(ctx)
    finally:
        ctx.close()
    assert result.passed, result.violations
    assert any("nvme-over-space" in n and "no-nvme-on-shared-nodes" in n for n in result.notes)
    assert any("nvme-needs-path" in n for n in result.notes)
