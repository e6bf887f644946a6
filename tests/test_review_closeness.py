"""The review's continuous search score (engine/review/closeness.py), from its definition.

Expected values are the margins worked out by hand from the facts each case sets: an ordering
comparison's margin relative to its right-hand side, clipped to [-1, 1], with the verdict's sign.
"""
from __future__ import annotations

import pytest

from memfit.engine.policy.parse import from_dict
from memfit.engine.policy.rules import load_rules
from memfit.engine.review.closeness import NOT_FIRED, closeness_to_mattering, share_holding, slack
from memfit.engine.review.core import ReviewContext


@pytest.mark.parametrize("when, facts, expected", [
    ({"fact": "u", "gt": 1.0}, {"u": 1.25}, 0.25),            # holds by a quarter of the bound
    ({"fact": "u", "gt": 1.0}, {"u": 0.9}, -0.1),             # misses by a tenth
    ({"fact": "u", "lt": 0.05}, {"u": 0.04}, 0.2),            # (0.05 - 0.04) / 0.05
    ({"fact": "u", "gt": {"fact": "b"}}, {"u": 0.9, "b": 0.8}, 0.125),  # fact against fact
    ({"fact": "u", "gt": 1.0}, {"u": 5.0}, 1.0),              # clipped
    ({"fact": "u", "ge": 1.0}, {"u": 1.0}, 1e-6),             # holds at its edge: positive, tiny
    ({"fact": "u", "gt": 0}, {"u": -2}, -1.0),                # bound 0: margin relative to 1, clipped
    ({"fact": "u", "gt": 1.0}, {}, -1.0),                     # absent fact: does not hold
    ({"fact": "m", "eq": "cpu"}, {"m": "cpu"}, 1.0),          # no margin on equality
    ({"all": [{"fact": "u", "gt": 1.0}, {"fact": "v", "lt": 2.0}]}, {"u": 1.5, "v": 1.8}, 0.1),
    ({"any": [{"fact": "u", "gt": 1.0}, {"fact": "v", "lt": 2.0}]}, {"u": 0.5, "v": 1.8}, 0.1),
    ({"not": {"fact": "u", "gt": 1.0}}, {"u": 1.25}, -0.25),
])
def test_slack_is_the_relative_margin_with_the_verdicts_sign(when, facts, expected):
    assert slack(from_dict(when), facts) == pytest.approx(expected)


def test_share_holding_counts_top_level_parts():
    when = from_dict({"all": [{"fact": "u", "gt": 1.0}, {"fact": "v", "lt": 2.0}, {"fact": "w", "eq": True}]})
    assert share_holding(when, {"u": 2.0, "v": 3.0, "w": True}) == pytest.approx(2 / 3)


def test_closeness_to_mattering_scores_the_competing_reject_by_its_margin(tmp_path, monkeypatch):
    # Qwen2.5-7B full fine-tuning on one 24 GiB card, nothing offloaded: the headroom rule and the
    # band's top both reject; how close the headroom rule is to deciding alone is minus (1 + the
    # band rule's margin), the margin being gpu_usage_upper - 1 over the bound 1.
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))
    rules = load_rules()
    by_id = {r.id: r for r in rules}
    ctx = ReviewContext(rules, "python", 0, 1)
    try:
        _, judged = ctx.judge({"model": "Qwen/Qwen2.5-7B",
                               "hardware": {"gpu_memory": 24, "gpus_per_node": 1, "host_memory": 256},
                               "training": {"method": "full", "seq_len": 2048, "zero_stage": 0,
                                            "offload_optimizer": "none", "offload_param": "none"}})
    finally:
        ctx.close()
    both = [j for j in judged if {"gpu-over-budget", "gpu-upper-over-capacity"} <= set(j.fired)
            and {f.rule for f in j.verdict.firings if f.effect == "reject"} == {"gpu-over-budget", "gpu-upper-over-capacity"}]
    assert both, [j.fired for j in judged]
    j = both[0]
    margin = min(1.0, j.facts["gpu_usage_upper"] - 1.0)
    assert closeness_to_mattering(j, "gpu-over-budget", by_id) == pytest.approx(-(1.0 + margin))
    unfired = next(r.id for r in rules if r.id not in j.fired)
    assert closeness_to_mattering(j, unfired, by_id) == NOT_FIRED
