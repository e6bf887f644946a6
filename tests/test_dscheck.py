"""Reviewing DeepSpeed configs: schema errors with suggestions, impossible combinations, batch arithmetic."""
from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest

from memfit.engine.deepspeed.check import knobs_from_config, check_config, deepspeed_schema, load_config, strategy_from_config
from memfit.engine.core.errors import ConfigCheckError
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

PLAN_16 = plan_from_dict({"model": {"model_type": "llama", "hidden_size": 4096},
                          "hardware": {"gpu_memory": 80, "host_memory": 512, "gpus_per_node": 8, "nodes": 2},
                          "training": {"method": "lora"}})

# A hand-written ZeRO-3 config in the shape of the HF DeepSpeed guide's example: 2 x 4 x 16 = 128.
GOOD = {
    "train_batch_size": 128, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
    "gradient_clipping": 1.0, "bf16": {"enabled": True},
    "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                          "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu", "pin_memory": True}},
}


def with_changes(**changes):
    cfg = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(last)
        else:
            node[last] = value
    return cfg


# (name, config, expected key, message regex); each is a mistake DeepSpeed 0.19 lets through or
# reports only as a bare assertion (sources.md §5).
BAD = [
    ("top-level typo", {**GOOD, "zero_optimisation": {}}, "zero_optimisation", "did you mean 'zero_optimization'"),
    ("nested typo", with_changes(zero_optimization__overlap_com=True), "zero_optimization.overlap_com",
     "did you mean 'overlap_comm'"),
    ("offload typo", with_changes(zero_optimization__offload_param__pin_memroy=True),
     "zero_optimization.offload_param.pin_memroy", "did you mean 'pin_memory'"),
    ("string for bool", with_changes(zero_optimization__overlap_comm="yes"), "zero_optimization.overlap_comm",
     "not of type 'boolean'"),
    ("stage 4", with_changes(zero_optimization__stage=4), "zero_optimization.stage", "is not one of"),
    ("device gpu", with_changes(zero_optimization__offload_optimizer__device="gpu"),
     "zero_optimization.offload_optimizer.device", "is not one of"),
    ("param offload under stage 2", with_changes(zero_optimization__stage=2), "zero_optimization.offload_param",
     "needs ZeRO stage 3"),
    ("optimizer offload under stage 0",
     with_changes(zero_optimization__stage=0, zero_optimization__offload_param=...),
     "zero_optimization.offload_optimizer", "needs ZeRO stage 1, 2 or 3"),
    ("nvme without path", with_changes(zero_optimization__offload_param__device="nvme"),
     "zero_optimization.offload_param.nvme_path", "needs nvme_path"),
    ("fp16 and bf16", with_changes(fp16={"enabled": True}), "fp16.enabled", "both enabled"),
    # 2 x 4 x 16 = 128, not 64
    ("batch arithmetic", with_changes(train_batch_size=64), "train_batch_size", r"64 != micro 2 x accumulation 4"),
]


@pytest.mark.parametrize("name,cfg,key,pattern", BAD, ids=[b[0] for b in BAD])
def test_mistakes_are_errors_with_actionable_messages(name, cfg, key, pattern):
    errors = [f for f in check_config(cfg, PLAN_16) if f.severity == "error"]
    assert [f.key for f in errors] == [key], errors
    assert re.search(pattern, errors[0].message), errors[0].message


@pytest.mark.parametrize("name,cfg,key,pattern", [b for b in BAD if b[0] != "batch arithmetic"],
                         ids=[b[0] for b in BAD if b[0] != "batch arithmetic"])
def test_the_schema_alone_rejects_them_too(name, cfg, key, pattern):
    assert not jsonschema.Draft202012Validator(deepspeed_schema()).is_valid(cfg)


def test_good_config_has_no_errors_and_names_its_strategy():
    found = check_config(GOOD, PLAN_16)
    assert not [f for f in found if f.severity != "info"], found
    assert any("lora/z3/opt=cpu/param=cpu/nogc/mb2" in f.message for f in found)


def test_without_a_plan_the_world_size_is_inferred():
    found = check_config(GOOD)
    assert any(f.key == "train_batch_size" and "16 GPUs" in f.message for f in found)  # 128 / (2 x 4)
    odd = check_config({**GOOD, "train_batch_size": 129})
    assert any(f.severity == "error" and f.key == "train_batch_size" for f in odd)


def test_auto_values_are_noted_as_hf_flavor():
    cfg = {**GOOD, "train_batch_size": "auto", "gradient_accumulation_steps": "auto"}
    found = check_config(cfg, PLAN_16)
    assert not [f for f in found if f.severity == "error"]
    note = [f for f in found if "HF-flavor" in f.message]
    assert note and "2 \"auto\"" in note[0].message


def test_plan_mismatches_are_warnings():
    plan = plan_from_dict({"model": {"model_type": "llama"}, "hardware": {"gpu_memory": 80, "host_memory": 512,
                           "gpus_per_node": 8, "nodes": 2}, "training": {"precision": "fp32", "zero_stage": 2}})
    keys = {f.key for f in check_config(GOOD, plan) if f.severity == "warning"}
    assert keys == {"bf16", "zero_optimization.stage"}


def test_strategy_from_config():
    s = strategy_from_config(GOOD, PLAN_16)
    assert s.model_copy(update={"zero_knobs": None}) == Strategy(
        method="lora", zero_stage=3, offload_optimizer="cpu", offload_param="cpu",
        gradient_checkpointing=False, micro_batch_size=2)
    assert s.zero_knobs == knobs_from_config(GOOD["zero_optimization"])
    auto_plan = plan_from_dict({"model": {"model_type": "llama"}, "hardware": {"gpu_memory": 80, "host_memory": 64}})
    s1 = strategy_from_config({"zero_optimization": {"stage": 1}}, auto_plan)
    assert s1.model_copy(update={"zero_knobs": None}) == Strategy(method="full", zero_stage=1)
    with pytest.raises(ConfigCheckError, match="zero_optimization"):
        strategy_from_config({"zero_optimization": {"stage": 7}}, auto_plan)


def test_load_config_reports_line_and_column(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text('{\n  "train_batch_size": 8,\n}\n')  # trailing comma: the '}' is at line 3, column 1
    with pytest.raises(ConfigCheckError, match=r"ds\.json: not valid JSON at line 3, column 1: "):
        load_config(p)
    with pytest.raises(ConfigCheckError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    p.write_text("[1, 2]")
    with pytest.raises(ConfigCheckError, match="must be a JSON object"):
        load_config(p)
    p.write_text(json.dumps(GOOD))
    assert load_config(p) == GOOD
