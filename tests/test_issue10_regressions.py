"""One regression test per bug of issue 10 ("the rule base decides"), each with the input that showed it.

Expected values come from the rules themselves (a plan fits when no reject rule fires on it, and the
how-to's policy says "over 30B parameters: at most 70% of GPU memory") and from the plan's numbers,
never from memfit's own output.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from memfit.engine import advise, estimate, plan_from_dict
from memfit.engine.advice.outlook import outlooks
from memfit.engine.model.spec import resolve_model
from memfit.engine.policy.rules import load_rules
from memfit.engine.search.feasibility import Feasibility
from memfit.engine.advice.advise import evaluate_candidates

from conftest import EXAMPLES

FIXTURES = Path(__file__).parent / "fixtures"
MOTIVATING = EXAMPLES / "qwen32b-one-h100.yaml"


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_howto_policy_on_the_motivating_case_recommends_a_plan_that_fits():
    # Was: "Nothing fits: all 70 candidates are rejected": Python sized every micro-batch up to its own
    # 80% GPU budget, so every candidate of the 32.8B model sat above the policy's 70%.
    a = advise(MOTIVATING, rules_dirs=[FIXTURES / "howto_policy"])
    best = a.best
    assert best is not None, a.summary
    assert best.memory.gpu_peak_gib <= 0.7 * a.hardware.gpu_memory_gib  # the policy's own cap
    assert best.memory.host_peak_gib <= 0.75 * a.hardware.host_memory_gib  # the plan's host headroom
    assert not any("not for lack of memory" in line for line in a.what_it_would_take)


def test_no_nvme_rule_gets_no_nvme_proposal():
    # Was: "NVMe offload with at least 366 GiB" proposed although a user rule forbids NVMe offload.
    full = plan_from_dict({**_yaml(MOTIVATING), "training": {**_yaml(MOTIVATING)["training"], "method": "full"}},
                          str(MOTIVATING))
    a = advise(full, rules_dirs=[FIXTURES / "no_nvme_policy"])
    (line,) = a.what_it_would_take
    assert "NVMe" not in line and "nodes of this kind" in line
    # Without the rule the NVMe option is still offered (the rule, not the search, removed it).
    assert "NVMe offload with at least" in advise(full).what_it_would_take[0]


def test_micro_batch_is_the_largest_no_reject_rule_forbids():
    # The how-to's 70% cap lowers the micro-batch the search picks instead of rejecting the shape. The
    # QLoRA ZeRO-3 shape is the one the cap binds on in this plan at band level 0.8 (its ZeRO band top,
    # 1.23, allows up to 81% of the card; the other shapes, and every shape at the default 0.9 level,
    # whose tops are 1.49 or more, are held below 70% by the error band already).
    raw = _yaml(MOTIVATING)
    plan = plan_from_dict({**raw, "policy": {**raw.get("policy", {}), "band_quantile": 0.8}}, str(MOTIVATING))
    base = advise(plan)
    capped = advise(plan, rules_dirs=[FIXTURES / "howto_policy"])
    key = "qlora/z3/gc/"
    mb = {c.key.rsplit("/", 1)[0] + "/": c.micro_batch_size for c in base.candidates if c.key.startswith(key)}
    shape = {c.key.rsplit("/", 1)[0] + "/": c for c in capped.candidates if c.key.startswith(key)}
    assert shape[key].micro_batch_size < mb[key] and shape[key].feasible


def test_neighbour_facts_follow_user_reject_rules():
    # A rule that rejects running without checkpointing makes feasible_without_checkpointing false
    # everywhere: the neighbour verdict is the rule base's, not a Python budget's.
    plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 80, "host_memory": 512}})
    rules = load_rules([FIXTURES / "checkpointing_policy"])
    judged, _ = evaluate_candidates(plan, resolve_model(plan.model), rules, "python")
    assert judged and all(j.facts["feasible_without_checkpointing"] is False for j in judged)
    assert all(j.verdict.rejected for j in judged if not j.candidate.strategy.gradient_checkpointing)


def test_estimate_limits_obey_user_reject_rules(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("model: Qwen/Qwen2.5-0.5B\nhardware: {gpu_memory: 80, host_memory: 512}\n"
                    "training: {method: lora, zero_stage: 0, offload_optimizer: none, offload_param: none,\n"
                    "  gradient_checkpointing: true, micro_batch_size: 1, seq_len: 1024}\n")
    free = estimate(plan)
    capped = estimate(plan, rules_dirs=[FIXTURES / "seq_cap_policy"])
    assert capped.max_seq_len == 4096 < free.max_seq_len  # the fixture rule rejects seq_len > 4096


@pytest.mark.parametrize("backend", ["python", "durable"])
def test_what_it_would_take_says_not_for_lack_of_memory_only_without_memory_rules(backend):
    from memfit.engine.policy.durable import durable_available

    if backend == "durable" and not durable_available():
        pytest.skip("durable-rules does not import on this Python")
    plan = plan_from_dict({**_yaml(MOTIVATING), "training": {**_yaml(MOTIVATING)["training"], "method": "full"}},
                          str(MOTIVATING))
    rules = load_rules()
    model = resolve_model(plan.model, plan.base_dir)
    with Feasibility(rules, backend) as feasibility:
        judged, _ = evaluate_candidates(plan, model, rules, backend, feasibility=feasibility)
        (look,) = outlooks(plan, model, judged, rules, feasibility)
    assert "host-over-budget" in look.memory_rules and "not for lack of memory" not in look.text
