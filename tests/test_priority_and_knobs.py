"""What `priority` means for each action kind, and where `set` knobs take effect.

Semantics under test (docs/reference/rule-format.md, engine/policy/verdicts.py): reject: any reject
rejects, priority orders the reasons; score: priority changes nothing; set: the highest priority wins,
equal priorities that disagree are conflicts. Knob targets: PyTorch reads PYTORCH_CUDA_ALLOC_CONF from
the environment (CUDA semantics docs), so an env knob must be on the launch line and in launch.sh.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from memfit.engine import advise
from memfit.engine.advice.files import advice_files
from memfit.engine.policy.rules import Rule
from memfit.engine.policy.verdicts import verdict

from conftest import EXAMPLES

FIXTURES = Path(__file__).parent / "fixtures"


def _rule(rid: str, then: dict, priority: int = 0) -> Rule:
    return Rule(id=rid, description="", when={"fact": "zero_stage", "ge": 0}, then=then, because=f"because {rid}",
                source="test", tests=(), priority=priority, file="t.yaml", topic="t")


def _verdict(rules):
    return verdict([r.id for r in rules], {r.id: r for r in rules}, {})


def test_reject_priority_orders_the_reasons_whatever_the_rule_order():
    rules = [_rule("low", {"reject": True}, 1), _rule("high", {"reject": True}, 100), _rule("mid", {"reject": True}, 50)]
    for seed in range(4):
        random.Random(seed).shuffle(rules)
        v = _verdict(rules)
        assert v.rejected and v.reject_reasons == ("because high", "because mid", "because low")


def test_score_priority_changes_nothing():
    a = _verdict([_rule("a", {"score": 3}, 0), _rule("b", {"score": -5}, 0)])
    b = _verdict([_rule("a", {"score": 3}, 200), _rule("b", {"score": -5}, -7)])
    assert a.score == b.score == -2 and not a.rejected


def test_set_highest_priority_wins_and_equal_disagreement_is_a_conflict():
    winner = _verdict([_rule("lo", {"set": {"dataset_streaming": False}}, 1),
                       _rule("hi", {"set": {"dataset_streaming": True}}, 9)])
    assert winner.settings == {"dataset_streaming": True} and winner.conflicts == ()
    tie = _verdict([_rule("x", {"set": {"dataset_streaming": False}}, 5),
                    _rule("y", {"set": {"dataset_streaming": True}}, 5)])
    assert len(tie.conflicts) == 1 and "same priority 5" in tie.conflicts[0]
    agree = _verdict([_rule("x", {"set": {"dataset_streaming": True}}, 5),
                      _rule("y", {"set": {"dataset_streaming": True}}, 5)])
    assert agree.conflicts == ()


def test_env_knob_reaches_launch_lines_launch_script_and_text():
    from memfit.cli.render import advice_text

    a = advise(EXAMPLES / "qwen32b-one-h100.yaml", rules_dirs=[FIXTURES / "alloc_conf_policy"])
    best = a.best
    assert best.settings == {"pytorch_cuda_alloc_conf": "expandable_segments:True"}
    for name in ("deepspeed", "accelerate", "llamafactory"):
        assert best.launch[name].startswith("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "), name
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in advice_files(a)["launch.sh"]
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (environment" in advice_text(a)


def test_script_knob_is_shown_in_text_and_launch_script():
    from memfit.cli.render import advice_text
    from memfit.engine import plan_from_dict

    # QLoRA under ZeRO-3 fires qlora-zero3-quant-storage (rules/compatibility.yaml).
    plan = plan_from_dict({"model": "Qwen/Qwen2.5-7B", "hardware": {"gpu_memory": 80, "gpus_per_node": 2,
                                                                    "host_memory": 512},
                           "training": {"method": "qlora", "zero_stage": 3}})
    a = advise(plan)
    assert a.best.settings["bnb_4bit_quant_storage"] == "bfloat16"
    line = "BitsAndBytesConfig(bnb_4bit_quant_storage=torch.bfloat16)"
    assert line in advice_text(a) and line in advice_files(a)["launch.sh"]


@pytest.mark.slow  # imports deepspeed (and torch)
def test_env_knob_reaches_other_nodes_through_deepspeed_env():
    # deepspeed's multi-node launcher forwards only variables in .deepspeed_env or with its
    # EXPORT_ENVS prefixes (deepspeed/launcher/runner.py); PYTORCH_ is not one of them.
    from deepspeed.launcher.runner import EXPORT_ENVS

    from memfit.engine import plan_from_dict

    plan = plan_from_dict({"model": "Qwen/Qwen2.5-7B", "hardware": {"gpu_memory": 80, "gpus_per_node": 8,
                                                                    "nodes": 2, "host_memory": 1024}})
    a = advise(plan, rules_dirs=[FIXTURES / "alloc_conf_policy"])
    assert not any(p.startswith("PYTORCH") for p in EXPORT_ENVS)
    assert advice_files(a)[".deepspeed_env"] == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n"
